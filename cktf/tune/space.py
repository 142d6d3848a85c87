"""Search spaces: typed parameter specs, the define-by-run function Optuna calls, the baseline point.

The default CKTF space is the paper's (Section 3.3 ablations and Table 2): the two weights
alpha1/alpha2, the temperature tau, the embedding size d (``feat_dim``), the number of negatives
N (``nce_k``) and the layer mapping. The baseline point (the distiller's defaults, i.e. the
official code's settings) is enqueued as trial 0 so every study reports it next to the best.

The define-by-run function is a module-level function bound with :func:`functools.partial`, so
Ray's searcher checkpoint (stdlib pickle) can store it by reference.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError

TYPES = ("uniform", "log", "int", "int_log", "categorical")


@dataclass(frozen=True)
class ParamSpec:
    """One searched parameter: ``uniform``/``log`` floats, ``int``/``int_log`` integers, or ``categorical``."""

    type: str
    low: float | None = None
    high: float | None = None
    step: float | None = None
    choices: tuple[Any, ...] | None = None

    def validate(self, name: str) -> None:
        where = f"search.space.{name}"
        if self.type not in TYPES:
            raise ConfigError(f"{where}.type", f"unknown type {self.type!r}", f"use one of {', '.join(TYPES)}")
        if self.type == "categorical":
            if not self.choices:
                raise ConfigError(f"{where}.choices", "a categorical parameter needs a non-empty list of choices")
            if self.low is not None or self.high is not None:
                raise ConfigError(where, "categorical takes choices, not low/high")
            return
        if self.choices is not None:
            raise ConfigError(where, f"{self.type} takes low/high, not choices")
        if self.low is None or self.high is None:
            raise ConfigError(where, f"{self.type} needs low and high")
        if not (isinstance(self.low, (int, float)) and isinstance(self.high, (int, float))):
            raise ConfigError(where, f"low/high must be numbers, got {self.low!r}, {self.high!r}")
        if not self.low < self.high:
            raise ConfigError(where, f"low must be < high, got {self.low} >= {self.high}")
        if self.type in ("log", "int_log") and self.low <= 0:
            raise ConfigError(f"{where}.low", f"a log-scaled range needs low > 0, got {self.low}")
        if self.type in ("int", "int_log") and (self.low != int(self.low) or self.high != int(self.high)):
            raise ConfigError(where, "integer ranges need integer low/high")

    def probe_values(self) -> list[Any]:
        """The extreme values (or every choice): what validation tries."""
        if self.type == "categorical":
            return list(self.choices or ())
        if self.type in ("int", "int_log"):
            return [int(self.low), int(self.high)]
        return [float(self.low), float(self.high)]

    def contains(self, value: Any) -> bool:
        if self.type == "categorical":
            return value in (self.choices or ())
        try:
            return self.low <= value <= self.high
        except TypeError:
            return False

    def suggest(self, trial: Any, name: str) -> Any:
        """Ask an ``optuna.Trial`` for this parameter."""
        if self.type == "categorical":
            return trial.suggest_categorical(name, list(self.choices))
        if self.type in ("int", "int_log"):
            step = int(self.step or 1)
            return trial.suggest_int(name, int(self.low), int(self.high), step=step, log=self.type == "int_log")
        return trial.suggest_float(name, float(self.low), float(self.high), step=self.step, log=self.type == "log")

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in dataclasses.asdict(self).items() if v is not None}
        if "choices" in d:
            d["choices"] = list(d["choices"])
        return d


def parse_space(raw: Any) -> dict[str, ParamSpec]:
    """``{"tau": {"type": "log", "low": 0.02, "high": 0.5}, ...}`` -> typed specs (each checked)."""
    if not isinstance(raw, Mapping):
        raise ConfigError("search.space", "must be a mapping of parameter name -> {type, low, high | choices}")
    out: dict[str, ParamSpec] = {}
    known = {f.name for f in dataclasses.fields(ParamSpec)}
    for name, spec in raw.items():
        if not isinstance(spec, Mapping):
            raise ConfigError(f"search.space.{name}", "must be a mapping like {type: log, low: 0.01, high: 1}")
        unknown = sorted(set(spec) - known)
        if unknown:
            raise ConfigError(f"search.space.{name}.{unknown[0]}", "unknown key", f"known: {', '.join(sorted(known))}")
        spec = dict(spec)
        if "choices" in spec and isinstance(spec["choices"], list):
            spec["choices"] = tuple(spec["choices"])
        ps = ParamSpec(**spec)
        ps.validate(str(name))
        out[str(name)] = ps
    return out


#: the paper's search space for CKTF (Section 3.3): weights, temperature, d, N, layer mapping
CKTF_SPACE: dict[str, ParamSpec] = {
    "alpha1": ParamSpec("uniform", 0.0, 1.0),
    "alpha2": ParamSpec("uniform", 0.0, 1.0),
    "tau": ParamSpec("log", 0.03, 0.3),
    "feat_dim": ParamSpec("categorical", choices=(16, 32, 64, 128, 256)),
    "nce_k": ParamSpec("categorical", choices=(4096, 8192, 16384)),
    "mapping": ParamSpec("categorical", choices=("first", "last", "random", "max_cos", "min_cos")),
}
#: CRD has no layer mapping and one weight
CRD_SPACE: dict[str, ParamSpec] = {
    "beta": ParamSpec("uniform", 0.0, 2.0),
    "tau": ParamSpec("log", 0.03, 0.3),
    "feat_dim": ParamSpec("categorical", choices=(32, 64, 128, 256)),
    "nce_k": ParamSpec("categorical", choices=(4096, 8192, 16384)),
}
#: everything else: the learning rate (weights are method specific; list them in the study)
OPTIM_SPACE: dict[str, ParamSpec] = {"optim.lr": ParamSpec("log", 0.01, 0.1)}


def default_space(distiller: str) -> dict[str, ParamSpec]:
    from ..distillers.compose import resolve_preset, split_name

    primary, secondary = split_name(resolve_preset(distiller, {})[0])
    space = dict(CKTF_SPACE if primary == "cktf" else CRD_SPACE if primary == "crd" else OPTIM_SPACE)
    if secondary is not None:
        space["theta"] = ParamSpec("log", 0.01, 10.0)
    return space


def define_by_run(trial: Any, specs: tuple[tuple[str, ParamSpec], ...]) -> None:
    """Optuna define-by-run space; bind with :func:`make_space_fn` (picklable)."""
    for name, spec in specs:
        spec.suggest(trial, name)


def make_space_fn(space: Mapping[str, ParamSpec]) -> Callable[[Any], None]:
    return functools.partial(define_by_run, specs=tuple(sorted(space.items())))


def baseline_point(
    distiller: str,
    params: Mapping[str, Any],
    overrides: Mapping[str, Any],
    space: Mapping[str, ParamSpec],
    image_size: int,
    recipe: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The first trial: each searched field at the distiller's default (the official code's value),
    unless ``overrides`` set it; fields whose default lies outside the space are left to the sampler.
    ``recipe``: the study's fixed ``optim.*`` / ``train.*`` values (they win over the paper's)."""
    from ..distillers import parse_params

    p_cfg, s_cfg, theta = parse_params(distiller, params, image_size)
    defaults: dict[str, Any] = dict(p_cfg.to_dict())
    if s_cfg is not None:
        from ..distillers.compose import resolve_preset, split_name

        _, secondary = split_name(resolve_preset(distiller, {})[0])
        defaults.update({f"{secondary}.{k}": v for k, v in s_cfg.to_dict().items()})
        defaults["theta"] = theta
    from ..train.config import OptimConfig, TrainConfig

    defaults.update({f"optim.{k}": v for k, v in dataclasses.asdict(OptimConfig()).items()})
    defaults.update({f"train.{k}": v for k, v in dataclasses.asdict(TrainConfig()).items()})
    defaults.update(recipe or {})  # the study's fixed recipe wins over the paper's
    if defaults.get("tau", 0) is None:  # CKTF's per-input-size default
        from ..distillers.cktf import resolve_tau

        defaults["tau"] = resolve_tau(None, image_size)
    for name, value in overrides.items():
        if name in space and not space[name].contains(value):
            raise ConfigError(f"search.baseline.{name}", f"{value!r} lies outside the searched range", "fix either")
    point: dict[str, Any] = {}
    for name, spec in space.items():
        value = overrides[name] if name in overrides else defaults.get(name)
        if value is None or isinstance(value, float) and math.isnan(value):
            continue
        if spec.contains(value):
            point[name] = value
    unknown = sorted(set(overrides) - set(space))
    if unknown:
        raise ConfigError(f"search.baseline.{unknown[0]}", "is not a searched parameter", "list it in search.space")
    return point
