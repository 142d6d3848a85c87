"""Reading a study file: YAML, ``${VAR}`` expansion, ``--set`` overrides, then the schema (one pass).

``load_study(path, overrides)`` reads nothing but the file itself and the teacher checkpoint's header: milliseconds.
What needs the decoded data is :func:`cktf.tune.plan.validate.plan_study`.

Strings may reference environment variables as ``${VAR}`` or ``${VAR:-default}`` (e.g. the data root).
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


def expand_env(value: Any) -> Any:
    """``${VAR:-default}`` in every string of a nested structure."""
    if isinstance(value, str):
        return _ENV.sub(lambda m: os.environ.get(m.group(1), m.group(2) if m.group(2) is not None else ""), value)
    if isinstance(value, dict):
        return {k: expand_env(v) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v) for v in value]
    return value


def study_from_dict(raw: Any, source: str | None = None, overrides: dict[str, Any] | None = None) -> StudyConfig:
    """Typed, validated study from a parsed YAML mapping (plus dotted ``overrides``); every bad key is named."""
    raw = apply_overrides(raw, overrides or {})
    raw = expand_env(raw)
    if source is not None:
        raw["source"] = source
    cfg = StudyConfig.parse(raw)
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
