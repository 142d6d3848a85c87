"""Reading a study or campaign file: YAML, ``${VAR}`` expansion, ``--set`` overrides, then the schema (one pass).

One loader for every file kind (:func:`load_config` with the config's class): it reads nothing but the file itself
and the headers of the files it names (a teacher checkpoint's): milliseconds. What needs the decoded data is
:func:`cktf.tune.plan.validate.plan_study` (or the campaign's plan).

Strings may reference environment variables as ``${VAR}`` or ``${VAR:-default}`` (e.g. the data root), but only
variables the file declares under ``env:`` and a small documented set (``CKTF_*``, ``MLFLOW_TRACKING_URI``): a file
from someone else cannot read ``${AWS_SECRET_ACCESS_KEY}``. Values read from the environment are logged in their
``${VAR}`` form, never expanded (:meth:`~cktf.settings.RunSettings.logged`).

``--set`` on ``--resume`` (:func:`resume_overrides`, docs/studies.md, "--resume and --set"): the values the run was
started with are kept, and those given again replace theirs; the merged set is what the run records and reuses next
time.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from ...config import apply_overrides
from ...errors import ConfigError
from ...settings import RunSettings
from .schema import StudyConfig

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
#: variables any file may read without declaring them (documented in docs/studies.md)
ALWAYS_ALLOWED = re.compile(r"^(CKTF_[A-Z0-9_]+|MLFLOW_TRACKING_URI)$")
#: fields that name things in MLflow and on disk: never taken from the environment
NO_ENV_FIELDS = ("name", "mlflow.experiment")

C = TypeVar("C", bound=RunSettings)


def expand_env(value: Any, declared: set[str] = frozenset(), path: str = "") -> tuple[Any, dict[str, str]]:
    """``${VAR}`` / ``${VAR:-default}`` expanded in every string of a nested structure, for variables the file
    declares (``env:``) or that are always allowed (:data:`ALWAYS_ALLOWED`).

    Returns the expanded structure and ``{dotted path: the string as written}`` for every string that read the
    environment, so what is logged can show ``${VAR}`` instead of the value.

    Raises:
        ConfigError: on the field that reads an undeclared variable, or that may not read any (``name``).
    """
    sources: dict[str, str] = {}

    def walk(v: Any, where: str) -> Any:
        if isinstance(v, str):
            found = _ENV.findall(v)
            if not found:
                return v
            if where in NO_ENV_FIELDS:
                raise ConfigError(where, f"{v!r} reads the environment, which this field may not", "write the name")
            for var, _ in found:
                if var not in declared and not ALWAYS_ALLOWED.match(var):
                    raise ConfigError(
                        where,
                        f"reads ${{{var}}} from the environment, which the file does not declare",
                        f"if you trust this file, list the variable under env: [{var}]",
                    )
            sources[where] = v
            return _ENV.sub(lambda m: os.environ.get(m.group(1), m.group(2) if m.group(2) is not None else ""), v)
        if isinstance(v, dict):
            return {k: walk(x, f"{where}.{k}" if where else str(k)) for k, x in v.items()}
        if isinstance(v, list):
            return [walk(x, f"{where}.{i}") for i, x in enumerate(v)]
        return v

    return walk(value, path), sources


def _declared(raw: Mapping[str, Any]) -> set[str]:
    env = raw.get("env") or []
    if not isinstance(env, list) or not all(isinstance(v, str) for v in env):
        raise ConfigError("env", f"must be a list of variable names, got {env!r}", "e.g. env: [DATA_DIR]")
    return set(env)


def config_from_dict(
    cls: type[C], raw: Any, source: str | None = None, overrides: Mapping[str, Any] | None = None
) -> C:
    """Typed, validated config of class ``cls`` from a parsed YAML mapping (plus dotted ``overrides``); every bad
    key is named; the files it names are read as far as their headers."""
    raw = apply_overrides(raw, overrides or {})
    raw, sources = expand_env(raw, _declared(raw))
    if source is not None:
        raw["source"] = source
    cfg = cls.parse(raw)
    cfg.set_env_sources(sources)
    cfg.check_files()
    return cfg


def read_yaml(path: str | os.PathLike, kind: str = "study") -> Any:
    """The parsed file; a missing, binary or malformed file is a :class:`ConfigError` naming it."""
    import yaml

    path = Path(path)
    if not path.is_file():
        example = "studies/quickstart.yaml" if kind == "study" else "studies/campaigns/offline.yaml"
        raise ConfigError(kind, f"no such {kind} file: {path}", f"pass a YAML file, e.g. {example}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(kind, f"{path} is not a text file (not UTF-8)", f"pass a YAML {kind} file") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(kind, f"{path} is not valid YAML: {exc}") from None


def load_config(cls: type[C], path: str | os.PathLike, overrides: Mapping[str, Any] | None = None) -> C:
    """Read and validate a file of kind ``cls`` (:class:`StudyConfig`, ``CampaignConfig``). ``overrides``: dotted
    keys, e.g. ``{"data.root": "/datasets"}``."""
    raw = read_yaml(path, cls.kind)
    return config_from_dict(cls, raw, source=str(Path(path).resolve()), overrides=overrides)


def resume_overrides(stored: Mapping[str, Any] | None, given: Mapping[str, Any]) -> dict[str, Any]:
    """The ``--set`` values a resumed run goes on with: those it was started with (``stored``), each replaced by the
    value given again now (``given``), plus the new ones. ``--resume`` alone continues the run exactly as it was."""
    return {**dict(stored or {}), **dict(given)}


def study_from_dict(raw: Any, source: str | None = None, overrides: dict[str, Any] | None = None) -> StudyConfig:
    """Typed, validated study from a parsed YAML mapping (plus dotted ``overrides``)."""
    return config_from_dict(StudyConfig, raw, source, overrides)


def load_study(path: str | os.PathLike, overrides: dict[str, Any] | None = None) -> StudyConfig:
    """Read and validate a study file. ``overrides``: dotted keys, e.g. ``{"data.root": "/datasets"}``."""
    return load_config(StudyConfig, path, overrides)


__all__ = [
    "config_from_dict",
    "expand_env",
    "load_config",
    "load_study",
    "read_yaml",
    "resume_overrides",
    "study_from_dict",
]
