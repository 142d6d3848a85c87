"""Objectives from names: ``kd``, ``cktf``, and combinations ``cktf+X`` / ``crd+kd`` (Eq. 1 of the paper).

``L = gamma * CE + L_primary + theta * L_X``. Parameters come as one flat dict (a CLI ``--set`` list or
a Ray Tune config): the primary method's fields unprefixed, the secondary's prefixed with its name
(``fitnet.beta``), and ``theta``. For ``cktf+X`` the primary may change its defaults for that partner
(:meth:`LossTerm.combo_defaults`; e.g. the official Table 2 mode weights both CKTF parts 0.8).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import ConfigError
from ..models import DistillModel
from ._base import DISTILLERS, DistillContext, Distiller, LossTerm, TermConfig

#: named presets: name -> (method, parameter overrides); user parameters still win
PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    # the paper text's weights (Section 3.1: alpha1 = 0.8, alpha2 = 0.2); the released code runs 0.1 / 0.8
    "cktf-paper": ("cktf", {"alpha1": 0.8, "alpha2": 0.2}),
}

#: methods that can be the primary of ``A+B`` (the contrastive ones; the paper's "CKTF + X" and CRD+KD)
PRIMARIES = ("cktf", "crd")
THETA = "theta"


def resolve_preset(name: str, params: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """``("cktf-paper", {...})`` -> ``("cktf", {alpha1: 0.8, alpha2: 0.2, ...})``; other names pass through."""
    if name in PRESETS:
        method, overrides = PRESETS[name]
        return method, {**overrides, **params}
    return name, dict(params)


def split_name(name: str) -> tuple[str, str | None]:
    """``"cktf+fitnet"`` -> ``("cktf", "fitnet")``; checks both names."""
    name = PRESETS[name][0] if name in PRESETS else name
    if "+" not in name:
        DISTILLERS.get(name)
        return name, None
    primary, _, secondary = name.partition("+")
    if primary not in PRIMARIES:
        raise ConfigError("distiller", f"{name!r}: only {' / '.join(PRIMARIES)} can come first in a combination")
    DISTILLERS.get(primary)
    DISTILLERS.get(secondary)
    if secondary == primary or "+" in secondary or secondary == "ce" or secondary in PRIMARIES:
        raise ConfigError("distiller", f"{name!r} is not a valid combination", "use e.g. cktf+kd or cktf+fitnet")
    return primary, secondary


def parse_params(
    name: str, params: Mapping[str, Any], image_size: int = 32
) -> tuple[TermConfig, TermConfig | None, float]:
    """Typed configs of the primary and secondary methods plus ``theta``; every bad field is named."""
    name, params = resolve_preset(name, params)
    primary, secondary = split_name(name)
    p_cls: type[LossTerm] = DISTILLERS.get(primary)
    if secondary is None:
        if THETA in params and THETA not in {f for f in p_cls.config_cls.__dataclass_fields__}:
            raise ConfigError(f"distill.{THETA}", f"only combinations take {THETA}", "e.g. --distiller cktf+kd")
        return p_cls.config_cls.from_dict(params), None, 0.0
    s_cls: type[LossTerm] = DISTILLERS.get(secondary)
    own: dict[str, Any] = dict(p_cls.combo_defaults(secondary, image_size))
    other: dict[str, Any] = {}
    theta = 1.0
    for key, value in params.items():
        if key == THETA:
            theta = float(value)
        elif key.startswith(secondary + "."):
            other[key[len(secondary) + 1 :]] = value
        elif "." in key:
            raise ConfigError(
                f"distill.{key}", f"unknown prefix in {name!r}", f"prefix {secondary} fields with {secondary}."
            )
        else:
            own[key] = value
    if theta < 0:
        raise ConfigError(f"distill.{THETA}", f"loss weight must be >= 0, got {theta}", "use a value >= 0")
    other = {**s_cls.combo_defaults_as_secondary(primary), **other}
    return p_cls.config_cls.from_dict(own), s_cls.config_cls.from_dict(other, prefix=f"distill.{secondary}"), theta


def build_distiller(
    name: str,
    student: DistillModel,
    teacher: DistillModel | None,
    params: Mapping[str, Any],
    ctx: DistillContext,
) -> Distiller:
    """Build the objective ``name`` (``kd``, ``cktf``, ``cktf+fitnet``, ...) from a flat parameter dict."""
    p_cfg, s_cfg, theta = parse_params(name, params, ctx.image_size)
    primary, secondary = split_name(name)
    terms: dict[str, LossTerm] = {primary: DISTILLERS.get(primary)(p_cfg, student, teacher, ctx)}
    weights = {primary: 1.0}
    if secondary is not None:
        terms[secondary] = DISTILLERS.get(secondary)(s_cfg, student, teacher, ctx)
        weights[secondary] = theta
    return Distiller(student, teacher, terms, gamma=p_cfg.gamma, weights=weights, name=name)


def needs_teacher(name: str) -> bool:
    primary, secondary = split_name(name)
    return any(DISTILLERS.get(n).needs_teacher for n in (primary, secondary) if n is not None)


def objective_names() -> list[str]:
    """Every single method, then every supported combination (``cktf distillers``)."""
    singles = DISTILLERS.names()
    combos = [f"{p}+{x}" for p in PRIMARIES if p in DISTILLERS for x in singles if x not in (*PRIMARIES, "ce")]
    presets = [p for p, (method, _) in PRESETS.items() if method in DISTILLERS]
    return singles + presets + [c for c in combos if not c.startswith("crd+") or c == "crd+kd"]
