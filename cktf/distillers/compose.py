"""Objectives from names: ``kd``, ``cktf``, presets (``cktf-paper``) and combinations ``cktf+X`` / ``crd+kd``.

Eq. 1 of the paper, ``L = gamma * CE + L_primary + theta * L_X`` (docs/algorithm.md §1, §5). Parameters come as
one flat dict (a CLI ``--set`` list, a study's ``params`` or a Ray Tune config): the primary method's fields
unprefixed, the secondary's prefixed with its name (``fitnet.beta``), and ``theta``.

:class:`Objective` is the one interface the trainer and the study layer use to ask about a method: it parses and
checks the parameters, builds the :class:`Distiller`, and answers what a study needs (the default search space,
the defaults enqueued as trial 0, whether a teacher is needed, how many negatives a config draws). What it answers
comes from the methods' own classes (:class:`LossTerm` class attributes), never from a test on a method's name.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from ..config import lookup
from ..errors import ConfigError
from ..models import DistillModel
from ..space import ParamSpec, log_uniform
from ._base import LOSS_TERMS, DistillContext, Distiller, LossTerm, TermConfig

THETA = "theta"
#: default range of ``theta`` (the secondary's weight) in a combination's default space
THETA_SPACE = log_uniform(0.01, 10.0)


class ObjectiveConfig(NamedTuple):
    """The typed fields of an objective: the primary's config, the secondary's (if any) and ``theta``."""

    primary: TermConfig
    secondary: TermConfig | None
    theta: float

    def negatives(self) -> int | None:
        ks = {k for c in (self.primary, self.secondary) if c is not None and (k := c.negatives()) is not None}
        if len(ks) > 1:
            raise ConfigError("nce_k", f"the two methods ask for different numbers of negatives {sorted(ks)}")
        return ks.pop() if ks else None

    def memory_bytes(self, n_data: int, n_stages: int) -> int:
        """Bytes of the contrastive memory (banks or queues) both methods hold on each worker, for ``n_data``
        training images and a student of ``n_stages`` stages (:meth:`TermConfig.memory_bytes`)."""
        return sum(c.memory_bytes(n_data, n_stages) for c in (self.primary, self.secondary) if c is not None)

    def check_memory_fits(self, n_data: int, n_stages: int, budget_bytes: int, where: str = "params") -> None:
        """Refuse a contrastive memory larger than ``budget_bytes`` (a worker's share of a GPU) with a
        :class:`ConfigError` naming the fixes: ``memory: queue`` (an extension) or the largest ``feat_dim`` whose banks
        fit."""
        need = self.memory_bytes(n_data, n_stages)
        if need <= budget_bytes:
            return
        fixes = []
        for cfg in (self.primary, self.secondary):
            if cfg is None or cfg.memory_bytes(n_data, n_stages) == 0 or not hasattr(cfg, "memory"):
                continue
            if cfg.memory != "queue":
                queue = self.memory_bytes(n_data, n_stages) - cfg.memory_bytes(n_data, n_stages)
                queue += cfg.replace(memory="queue").memory_bytes(n_data, n_stages)
                fixes.append(f"memory: queue ({queue / 2**20:,.0f} MiB; an extension, not the paper's memory)")
            others = need - cfg.memory_bytes(n_data, n_stages)
            per_dim = cfg.memory_bytes(n_data, n_stages) / cfg.feat_dim
            fit = int((budget_bytes - others) // per_dim) if budget_bytes > others else 0
            fixes.append(f"feat_dim <= {fit}" if fit >= 1 else "a smaller nce_k or train_subset")
        raise ConfigError(
            f"{where}.memory",
            f"the contrastive memory takes {need / 2**20:,.0f} MiB on each worker ({n_data:,} training images), more "
            f"than the {budget_bytes / 2**20:,.0f} MiB it may use",
            "set " + " or ".join(fixes) if fixes else "use fewer training images",
        )


@dataclass(frozen=True)
class Objective:
    """A distiller name resolved: its primary method, an optional secondary one, and a preset's overrides."""

    name: str
    primary_name: str
    primary: type[LossTerm]
    secondary_name: str | None = None
    secondary: type[LossTerm] | None = None
    preset: tuple[tuple[str, Any], ...] = ()

    # ------------------------------------------------------------------ parsing
    def parse(self, params: Mapping[str, Any], image_size: int = 32, where: str = "distill") -> ObjectiveConfig:
        """Typed configs of both methods plus ``theta``; every bad field is named ``<where>.<field>``."""
        params = {**dict(self.preset), **dict(params)}
        if self.secondary is None:
            if THETA in params and THETA not in self.primary.config_cls.model_fields:
                raise ConfigError(f"{where}.{THETA}", f"only combinations take {THETA}", "e.g. --distiller cktf+kd")
            return ObjectiveConfig(self.primary.config_cls.parse(params, where), None, 0.0)
        prefix = self.secondary_name + "."
        own: dict[str, Any] = dict(self.primary.combo_defaults(self.secondary_name, image_size))
        other: dict[str, Any] = dict(self.secondary.combo_defaults_as_secondary(self.primary_name))
        theta: Any = 1.0
        for key, value in params.items():
            if key == THETA:
                theta = value
            elif key.startswith(prefix):
                other[key[len(prefix) :]] = value
            elif "." in key:
                raise ConfigError(
                    f"{where}.{key}",
                    f"unknown prefix in {self.name!r}",
                    f"prefix {self.secondary_name} fields with {prefix}",
                )
            else:
                own[key] = value
        try:
            theta = float(theta)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}.{THETA}", f"must be a number, got {theta!r}") from None
        if not theta >= 0:
            raise ConfigError(f"{where}.{THETA}", f"loss weight must be >= 0, got {theta}", "use a value >= 0")
        return ObjectiveConfig(
            self.primary.config_cls.parse(own, where),
            self.secondary.config_cls.parse(other, f"{where}.{self.secondary_name}"),
            theta,
        )

    def build(
        self, student: DistillModel, teacher: DistillModel | None, params: Mapping[str, Any], ctx: DistillContext
    ) -> Distiller:
        """The :class:`Distiller` of this objective for a (student, teacher) pair."""
        cfg = self.parse(params, ctx.image_size)
        terms: dict[str, LossTerm] = {self.primary_name: self.primary(cfg.primary, student, teacher, ctx)}
        weights = {self.primary_name: 1.0}
        if self.secondary is not None:
            terms[self.secondary_name] = self.secondary(cfg.secondary, student, teacher, ctx)
            weights[self.secondary_name] = cfg.theta
        return Distiller(student, teacher, terms, gamma=cfg.primary.gamma, weights=weights, name=self.name)

    def memory_bytes(self, params: Mapping[str, Any], n_data: int, n_stages: int, image_size: int = 32) -> int:
        """Bytes of the contrastive memory of this objective under ``params`` on each worker
        (:meth:`ObjectiveConfig.memory_bytes`); ``n_stages``: the student's stages (``len(feature_info) - 1``)."""
        return self.parse(params, image_size).memory_bytes(n_data, n_stages)

    # ------------------------------------------------------------------ what a study asks
    @property
    def methods(self) -> tuple[type[LossTerm], ...]:
        return (self.primary,) if self.secondary is None else (self.primary, self.secondary)

    @property
    def needs_teacher(self) -> bool:
        return any(m.needs_teacher for m in self.methods)

    def default_space(self) -> dict[str, ParamSpec]:
        """The primary method's own space, plus ``theta`` for a combination (the secondary keeps its defaults)."""
        space = dict(self.primary.search_space)
        space.update(self.primary.preset_spaces.get(self.name, {}))  # a preset searched around its own values
        if self.secondary is not None:
            space[THETA] = THETA_SPACE
        return space

    def defaults(self, params: Mapping[str, Any], image_size: int) -> dict[str, Any]:
        """Every field's value under ``params`` with the methods' defaults and image-size rules applied, flat
        (``alpha1``, ``fitnet.beta``, ``theta``): the point a study enqueues as trial 0 comes from here."""
        cfg = self.parse(params, image_size)
        out = dict(cfg.primary.at_image_size(image_size).to_dict())
        if cfg.secondary is not None:
            out.update(
                {f"{self.secondary_name}.{k}": v for k, v in cfg.secondary.at_image_size(image_size).to_dict().items()}
            )
            out[THETA] = cfg.theta
        return out

    def fields(self) -> dict[str, Any]:
        """Flat field names with their defaults (a preset's own values where it sets them)."""
        out = {**self.primary.config_cls().to_dict(), **dict(self.preset)}
        if self.secondary is not None:
            out.update({f"{self.secondary_name}.{k}": v for k, v in self.secondary.config_cls().to_dict().items()})
            out[THETA] = 1.0
        return out


@functools.cache
def objective(name: str) -> Objective:
    """The objective called ``name``; an unknown or invalid name is a :class:`ConfigError` on ``distiller``."""
    if not isinstance(name, str) or not name:
        raise ConfigError("distiller", f"must name a method, got {name!r}", "see `cktf distillers`")
    for method in LOSS_TERMS:
        cls = LOSS_TERMS.get(method)
        if name in cls.presets:
            return Objective(name, method, cls, preset=tuple(sorted(cls.presets[name].items())))
    if "+" not in name:
        return Objective(name, name, lookup("distiller", LOSS_TERMS.get, name))
    primary, _, secondary = name.partition("+")
    p_cls = lookup("distiller", LOSS_TERMS.get, primary)
    s_cls = lookup("distiller", LOSS_TERMS.get, secondary) if "+" not in secondary else None
    if not p_cls.leads_combinations:
        leaders = " / ".join(n for n in LOSS_TERMS if LOSS_TERMS.get(n).leads_combinations)
        raise ConfigError("distiller", f"{name!r}: only {leaders} can come first in a combination")
    if s_cls is None or secondary == primary or not s_cls.joins_combinations:
        raise ConfigError("distiller", f"{name!r} is not a valid combination", "use e.g. cktf+kd or cktf+fitnet")
    return Objective(name, primary, p_cls, secondary, s_cls)


def build_distiller(
    name: str, student: DistillModel, teacher: DistillModel | None, params: Mapping[str, Any], ctx: DistillContext
) -> Distiller:
    """Build the objective ``name`` (``kd``, ``cktf``, ``cktf+fitnet``, ...) from a flat parameter dict."""
    return objective(name).build(student, teacher, params, ctx)


def objective_names() -> list[str]:
    """Every single method, its presets, then every listed combination (``cktf distillers``)."""
    singles = list(LOSS_TERMS)
    presets = [p for n in singles for p in LOSS_TERMS.get(n).presets]
    combos = []
    for lead in singles:
        cls = LOSS_TERMS.get(lead)
        if not cls.leads_combinations:
            continue
        partners = [x for x in singles if LOSS_TERMS.get(x).joins_combinations and x != lead]
        combos += [f"{lead}+{x}" for x in partners if cls.listed_partners is None or x in cls.listed_partners]
    return singles + presets + combos
