"""Distillers: one registered loss term per method (``LOSS_TERMS``), composed into objectives (``cktf distillers``)."""

from . import ab, at, cc, ce, cktf, crd, dist, dkd, fitnet, fsp, ft, kd, nst, pkt, reviewkd, rkd, sp, vid  # noqa: F401
from ._base import LOSS_TERMS, DistillContext, Distiller, InitStage, LossTerm, StepOutput, TermConfig, Weight
from .ce import SUPERVISED
from .compose import Objective, ObjectiveConfig, build_distiller, objective, objective_names

__all__ = [
    "LOSS_TERMS",
    "SUPERVISED",
    "DistillContext",
    "Distiller",
    "InitStage",
    "LossTerm",
    "Objective",
    "ObjectiveConfig",
    "StepOutput",
    "TermConfig",
    "Weight",
    "build_distiller",
    "objective",
    "objective_names",
]
