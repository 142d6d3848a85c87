"""Reading a campaign file: YAML, ``${VAR}`` expansion (the study rules: docs/security.md), ``--set`` overrides
(dotted paths that may index lists: ``methods.2.params.nce_k=256``), then the schema (one pass, no data read)."""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..tune.plan.load import expand_env
from .schema import CampaignConfig


def apply_overrides(raw: Any, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``raw`` with dotted ``overrides`` written in; a numeric part indexes a list (``pairs.0.student``)."""
    if not isinstance(raw, Mapping):
        raise ConfigError("campaign", f"the file must hold a mapping of fields, got {type(raw).__name__}")
    out = copy.deepcopy(dict(raw))
    for dotted, value in overrides.items():
        node: Any = out
        *parents, leaf = dotted.split(".")
        for i, part in enumerate(parents):
            where = ".".join(parents[: i + 1])
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError(where, f"has {len(node)} entries, so --set {dotted} cannot address it")
                node = node[int(part)]
                continue
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, (dict, list)):
                raise ConfigError(where, f"is {child!r}, so --set {dotted}=... cannot set a field inside it")
            node = child
        if isinstance(node, list):
            if not leaf.isdigit() or int(leaf) >= len(node):
                raise ConfigError(dotted, f"the list has {len(node)} entries")
            node[int(leaf)] = value
        else:
            node[leaf] = value
    return out


def read_yaml(path: str | os.PathLike) -> Any:
    """The parsed file; a missing, binary or malformed file is a :class:`ConfigError` naming it."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError("campaign", f"no such campaign file: {path}", "e.g. studies/campaigns/offline.yaml")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError("campaign", f"{path} is not a text file (not UTF-8)") from None
    except yaml.YAMLError as exc:
        raise ConfigError("campaign", f"{path} is not valid YAML: {exc}") from None


def _declared(raw: Mapping[str, Any]) -> set[str]:
    env = raw.get("env") or []
    if not isinstance(env, list) or not all(isinstance(v, str) for v in env):
        raise ConfigError("env", f"must be a list of variable names, got {env!r}", "e.g. env: [DATA_DIR]")
    return set(env)


def campaign_from_dict(raw: Any, source: str | None = None, overrides: Mapping[str, Any] | None = None):
    """Typed, validated campaign from a parsed YAML mapping (plus dotted ``overrides``); every bad key is named."""
    raw = apply_overrides(raw, overrides or {})
    raw, sources = expand_env(raw, _declared(raw))
    if source is not None:
        raw["source"] = source
    cfg = CampaignConfig.parse(raw)
    cfg.set_env_sources(sources)
    return cfg


def load_campaign(path: str | os.PathLike, overrides: Mapping[str, Any] | None = None) -> CampaignConfig:
    """Read and validate a campaign file. ``overrides``: dotted keys, e.g. ``{"train.epochs": 2}``."""
    return campaign_from_dict(read_yaml(path), source=str(Path(path).resolve()), overrides=overrides)


__all__ = ["apply_overrides", "campaign_from_dict", "load_campaign", "read_yaml"]
