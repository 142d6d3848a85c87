"""Distillers: one registered class per method (see ``cktf distillers``)."""

from . import ce, kd  # noqa: F401  (registration)
from ._base import DISTILLERS, DistillContext, Distiller, DistillerConfig, InitStage, StepOutput, build_distiller

__all__ = [
    "DISTILLERS",
    "DistillContext",
    "Distiller",
    "DistillerConfig",
    "InitStage",
    "StepOutput",
    "build_distiller",
]
