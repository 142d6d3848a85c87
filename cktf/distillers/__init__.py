"""Distillers: one registered loss term per method, combined into objectives (see ``cktf distillers``)."""

from . import ab, at, cc, ce, cktf, crd, fitnet, fsp, ft, kd, nst, pkt, rkd, sp, vid  # noqa: F401  (registration)
from ._base import (
    DISTILLERS,
    DistillContext,
    Distiller,
    DistillerConfig,
    InitStage,
    LossTerm,
    StepOutput,
    TermConfig,
)
from .compose import build_distiller, needs_teacher, objective_names, parse_params, split_name

__all__ = [
    "DISTILLERS",
    "DistillContext",
    "Distiller",
    "DistillerConfig",
    "InitStage",
    "LossTerm",
    "StepOutput",
    "TermConfig",
    "build_distiller",
    "needs_teacher",
    "objective_names",
    "parse_params",
    "split_name",
]
