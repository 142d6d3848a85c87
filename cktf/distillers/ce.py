"""Plain supervised training: cross-entropy only (teachers, and the "student w/o KD" baseline)."""

from __future__ import annotations

from ._base import DISTILLERS, LossTerm, TermConfig


@DISTILLERS.register("ce", summary="cross-entropy only (teacher training, student baseline)")
class CE(LossTerm):
    """Supervised training with labels; no teacher, no extra term (the Distiller adds ``gamma * CE``)."""

    config_cls = TermConfig
    needs_teacher = False
    needs_features = False
