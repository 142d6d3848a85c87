"""Reading a study file: YAML, ``${VAR}`` expansion, ``--set`` overrides, then the schema (one pass).

``load_study(path, overrides)`` reads nothing but the file itself and the teacher checkpoint's header: milliseconds.
What needs the decoded data is :func:`cktf.tune.plan.validate.plan_study`.

Strings may reference environment variables as ``${VAR}`` or ``${VAR:-default}`` (e.g. the data root), but only
variables the study declares under ``env:`` and a small documented set (``CKTF_*``, ``MLFLOW_TRACKING_URI``): a
study file from someone else cannot read ``${AWS_SECRET_ACCESS_KEY}``. Values read from the environment are logged
in their ``${VAR}`` form, never expanded (:meth:`StudyConfig.logged`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from ...config import apply_overrides
from ...errors import ConfigError
from .schema import StudyConfig

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
#: variables any study may read without declaring them (documented in docs/studies.md)
ALWAYS_ALLOWED = re.compile(r"^(CKTF_[A-Z0-9_]+|MLFLOW_TRACKING_URI)$")
#: fields that name things in MLflow and on disk: never taken from the environment
NO_ENV_FIELDS = ("name", "mlflow.experiment")


def expand_env(value: Any, declared: set[str] = frozenset(), path: str = "") -> tuple[Any, dict[str, str]]:
    """``${VAR}`` / ``${VAR:-default}`` expanded in every string of a nested structure, for variables the study
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
                        f"reads ${{{var}}} from the environment, which the study does not declare",
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


def _declared(raw: dict[str, Any]) -> set[str]:
    env = raw.get("env") or []
    if not isinstance(env, list) or not all(isinstance(v, str) for v in env):
        raise ConfigError("env", f"must be a list of variable names, got {env!r}", "e.g. env: [DATA_DIR]")
    return set(env)


def study_from_dict(raw: Any, source: str | None = None, overrides: dict[str, Any] | None = None) -> StudyConfig:
    """Typed, validated study from a parsed YAML mapping (plus dotted ``overrides``); every bad key is named."""
    raw = apply_overrides(raw, overrides or {})
    raw, sources = expand_env(raw, _declared(raw))
    if source is not None:
        raw["source"] = source
    cfg = StudyConfig.parse(raw)
    cfg.set_env_sources(sources)
    check_files(cfg)
    return cfg


def read_yaml(path: str | os.PathLike) -> Any:
    """The parsed file; a missing, binary or malformed file is a :class:`ConfigError` naming it."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError("study", f"no such study file: {path}", "pass a YAML file, e.g. studies/quickstart.yaml")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError("study", f"{path} is not a text file (not UTF-8)", "pass a YAML study file") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError("study", f"{path} is not valid YAML: {exc}") from None


def load_study(path: str | os.PathLike, overrides: dict[str, Any] | None = None) -> StudyConfig:
    """Read and validate a study file. ``overrides``: dotted keys, e.g. ``{"data.root": "/datasets"}``."""
    return study_from_dict(read_yaml(path), source=str(Path(path).resolve()), overrides=overrides)


def check_files(cfg: StudyConfig) -> None:
    """The files a study names, read as far as their headers: the teacher checkpoint's architecture."""
    if cfg.teacher.checkpoint:
        from ...config import lookup
        from ...models import MODELS
        from ...train.checkpoint import read_weights_meta

        meta = read_weights_meta(cfg.teacher.checkpoint, "teacher.checkpoint")
        lookup("teacher.checkpoint", MODELS.get, meta["arch"])
