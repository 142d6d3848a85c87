"""Plain supervised training: cross-entropy only (teachers, and the "student w/o KD" baseline)."""

from __future__ import annotations

from ._base import DISTILLERS, Distiller, DistillerConfig


@DISTILLERS.register("ce", summary="cross-entropy only (teacher training, student baseline)")
class CE(Distiller):
    """Supervised training with labels; no teacher."""

    config_cls = DistillerConfig
    needs_teacher = False
    needs_features = False
