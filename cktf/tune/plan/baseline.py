"""The trial a study runs first: the official defaults of its method (docs/studies.md, "The baseline"), and the
fields of them that lie outside the searched space (every output that calls the trial "the official defaults"
names those, with the value the trial used instead)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ...errors import ConfigError, did_you_mean

if TYPE_CHECKING:
    from .schema import StudyConfig


def baseline_point(cfg: StudyConfig, image_size: int) -> dict[str, Any]:
    """The trial enqueued first: each searched field at the method's default (the official code's value), unless
    ``search.baseline`` sets it; the study's fixed recipe wins over the paper's. A default that lies outside the
    space takes the space's nearest value, and :func:`baseline_deviations` names it (every output that calls this
    trial "the official defaults" says so)."""
    return {name: v["used"] for name, v in _baseline(cfg, image_size).items()}


def baseline_deviations(cfg: StudyConfig, image_size: int) -> dict[str, dict[str, Any]]:
    """The baseline's fields that could not take their official value: ``{field: {"official": x, "used": y}}``."""
    found = _baseline(cfg, image_size)
    return {k: {"official": v["official"], "used": v["used"]} for k, v in found.items() if v["off"]}


def _baseline(cfg: StudyConfig, image_size: int) -> dict[str, dict[str, Any]]:
    import math

    space, overrides = cfg.space, cfg.search.baseline
    defaults = cfg.objective.defaults(cfg.params, image_size)
    defaults.update(cfg.recipe())
    for name, value in overrides.items():
        if name not in space:
            hint = did_you_mean(name, space)
            raise ConfigError(f"search.baseline.{name}", f"not a searched parameter{hint}", "list it in search.space")
        if not space[name].contains(value):
            raise ConfigError(f"search.baseline.{name}", f"{value!r} lies outside the searched range", "fix either")
    out: dict[str, dict[str, Any]] = {}
    for name, spec in space.items():
        value = overrides[name] if name in overrides else defaults.get(name)
        if value is None or isinstance(value, float) and math.isnan(value):
            continue
        used = spec.nearest(value)
        out[name] = {"official": value, "used": used, "off": used != value}
    return out
