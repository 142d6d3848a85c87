"""Distilling the Knowledge in a Neural Network (Hinton, Vinyals & Dean, 2015)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError
from ..models import DistillOutput
from ._base import DISTILLERS, LossTerm, TermConfig


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """KL(p_t^T || p_s^T) * T^2, summed over classes and averaged over the batch.

    RepDistiller ``DistillKL``: ``kl_div(log_softmax(s/T), softmax(t/T), reduction="sum") * T**2 / B``.
    """
    log_p_s = F.log_softmax(student_logits.float() / temperature, dim=1)
    p_t = F.softmax(teacher_logits.float() / temperature, dim=1)
    return F.kl_div(log_p_s, p_t, reduction="sum") * temperature**2 / student_logits.shape[0]


@dataclass
class KDConfig(TermConfig):
    """RepDistiller's KD row: ``-r 0.1 -a 0.9 -b 0``, T = 4 (spec section 4)."""

    gamma: float = 0.1  # CE weight (-r)
    alpha: float = 0.9  # KD weight (-a)
    temperature: float = 4.0  # softmax temperature T

    def validate(self, prefix: str = "distill") -> None:
        super().validate(prefix)
        if self.temperature <= 0:
            raise ConfigError(f"{prefix}.temperature", f"must be > 0, got {self.temperature}", "e.g. 4")


@DISTILLERS.register("kd", summary="Hinton KD: KL between softened logits (T=4)")
class KD(LossTerm):
    """Distilling the Knowledge in a Neural Network: soft-target KL on the logits."""

    config_cls = KDConfig
    needs_features = False

    @classmethod
    def combo_defaults_as_secondary(cls, primary: str) -> dict[str, Any]:
        """CRD+KD and CKTF+KD (Table 1) run KD at ``-a 1``."""
        return {"alpha": 1.0}

    def forward(self, s: DistillOutput, t: DistillOutput | None, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        assert t is not None
        return {"kd": self.cfg.alpha * kd_loss(s.logits, t.logits, self.cfg.temperature)}
