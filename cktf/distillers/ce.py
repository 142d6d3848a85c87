"""Plain supervised training: cross-entropy only (teachers, and the "student w/o KD" baseline)."""

from __future__ import annotations

from ._base import LOSS_TERMS, LossTerm, TermConfig

#: the plain supervised objective (teachers are trained with it)
SUPERVISED = "ce"


@LOSS_TERMS.register(SUPERVISED, summary="cross-entropy only (teacher training, student baseline)")
class CE(LossTerm):
    """Supervised training with labels; no teacher, no extra term (the Distiller adds ``gamma * CE``)."""

    config_cls = TermConfig
    needs_teacher = False
    needs_features = False
    joins_combinations = False
