"""The search-space vocabulary: one searched parameter (:class:`ParamSpec`) and the define-by-run function.

It sits below both the methods (each declares its own default space, ``LossTerm.search_space``) and the study
layer (which samples it through Optuna), so neither imports the other. Types: ``uniform`` / ``log`` floats,
``int`` / ``int_log`` integers and ``categorical`` choices (``docs/studies.md``, ``search.space``).

The define-by-run function is a module-level function bound with :func:`functools.partial`, so Ray's searcher
checkpoint (stdlib pickle) can store it by reference.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any, Literal

from pydantic import model_validator

from .config import Config
from .errors import ConfigError

TYPES = ("uniform", "log", "int", "int_log", "categorical")
SpaceType = Literal["uniform", "log", "int", "int_log", "categorical"]


class ParamSpec(Config):
    """One searched parameter: ``{type: log, low: 0.03, high: 0.3}`` or ``{type: categorical, choices: [...]}``."""

    type: SpaceType
    """uniform | log (floats), int | int_log (integers), categorical (a list of choices)"""
    low: float | None = None
    """lower bound (inclusive) of a numeric range"""
    high: float | None = None
    """upper bound (inclusive) of a numeric range"""
    step: float | None = None
    """optional step of a numeric range (int ranges: default 1)"""
    choices: tuple[Any, ...] | None = None
    """the values of a categorical parameter"""

    @model_validator(mode="after")
    def _check(self) -> ParamSpec:
        if self.type == "categorical":
            if not self.choices:
                raise ConfigError("choices", "a categorical parameter needs a non-empty list of choices")
            if self.low is not None or self.high is not None:
                raise ConfigError("", "categorical takes choices, not low/high")
            return self
        if self.choices is not None:
            raise ConfigError("", f"{self.type} takes low/high, not choices")
        if self.low is None or self.high is None:
            raise ConfigError("", f"{self.type} needs low and high")
        if not self.low < self.high:
            raise ConfigError("", f"low must be < high, got {self.low} >= {self.high}")
        if self.type in ("log", "int_log") and self.low <= 0:
            raise ConfigError("low", f"a log-scaled range needs low > 0, got {self.low}")
        if self.type in ("int", "int_log") and (self.low != int(self.low) or self.high != int(self.high)):
            raise ConfigError("", "integer ranges need integer low/high")
        return self

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

    def nearest(self, value: Any) -> Any:
        """The value of the space closest to ``value`` (itself when the space holds it): a range clamps it (integers
        rounded), a categorical takes the numerically closest choice (its first when the choices are not numbers)."""
        if self.contains(value):
            return value
        if self.type == "categorical":
            numeric = [c for c in self.choices if isinstance(c, int | float) and not isinstance(c, bool)]
            if numeric and isinstance(value, int | float) and not isinstance(value, bool):
                return min(numeric, key=lambda c: (abs(c - value), c))
            return self.choices[0]
        low, high = float(self.low), float(self.high)
        clamped = min(max(float(value), low), high)
        return int(round(clamped)) if self.type in ("int", "int_log") else clamped

    def suggest(self, trial: Any, name: str) -> Any:
        """Ask an ``optuna.Trial`` for this parameter."""
        if self.type == "categorical":
            return trial.suggest_categorical(name, list(self.choices))
        if self.type in ("int", "int_log"):
            step = int(self.step or 1)
            return trial.suggest_int(name, int(self.low), int(self.high), step=step, log=self.type == "int_log")
        return trial.suggest_float(name, float(self.low), float(self.high), step=self.step, log=self.type == "log")

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in super().to_dict().items() if v is not None}


def uniform(low: float, high: float) -> ParamSpec:
    return ParamSpec(type="uniform", low=low, high=high)


def log_uniform(low: float, high: float) -> ParamSpec:
    return ParamSpec(type="log", low=low, high=high)


def int_range(low: int, high: int, log: bool = False) -> ParamSpec:
    return ParamSpec(type="int_log" if log else "int", low=low, high=high)


def categorical(*choices: Any) -> ParamSpec:
    return ParamSpec(type="categorical", choices=tuple(choices))


def parse_space(raw: Any, where: str = "search.space") -> dict[str, ParamSpec]:
    """``{"tau": {"type": "log", "low": 0.02, "high": 0.5}, ...}`` -> typed specs (each checked)."""
    if not isinstance(raw, Mapping):
        raise ConfigError(where, "must be a mapping of parameter name -> {type, low, high | choices}")
    return {str(name): ParamSpec.parse(spec, f"{where}.{name}") for name, spec in raw.items()}


def define_by_run(trial: Any, specs: tuple[tuple[str, ParamSpec], ...]) -> None:
    """Optuna define-by-run space; bind with :func:`make_space_fn` (picklable)."""
    for name, spec in specs:
        spec.suggest(trial, name)


def make_space_fn(space: Mapping[str, ParamSpec]) -> Callable[[Any], None]:
    return functools.partial(define_by_run, specs=tuple(sorted(space.items())))


def define_by_run_methods(
    trial: Any, key: str, methods: tuple[tuple[str, tuple[tuple[str, ParamSpec], ...]], ...]
) -> None:
    """A conditional space (a study over methods): the method first (``key``), then its own fields, named
    ``<method>.<field>`` (two methods' fields of the same name keep their own ranges); bind with
    :func:`make_methods_space_fn`."""
    chosen = trial.suggest_categorical(key, [m for m, _ in methods])
    for name, spec in dict(methods)[chosen]:
        spec.suggest(trial, f"{chosen}.{name}")


def make_methods_space_fn(key: str, spaces: Mapping[str, Mapping[str, ParamSpec]]) -> Callable[[Any], None]:
    specs = tuple((m, tuple(sorted(space.items()))) for m, space in spaces.items())
    return functools.partial(define_by_run_methods, key=key, methods=specs)


#: the default space of a method that declares none: the learning rate
LR_SPACE: dict[str, ParamSpec] = {"optim.lr": log_uniform(0.01, 0.1)}
