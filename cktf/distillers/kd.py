"""Distilling the Knowledge in a Neural Network (Hinton, Vinyals & Dean, 2015)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch.nn.functional as F
from pydantic import model_validator
from torch import Tensor

from ..errors import ConfigError
from ..models import DistillOutput
from ..space import log_uniform, uniform
from ._base import LOSS_TERMS, LossTerm, TermConfig, Weight


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """KL(p_t^T || p_s^T) * T^2, summed over classes and averaged over the batch.

    RepDistiller ``DistillKL``: ``kl_div(log_softmax(s/T), softmax(t/T), reduction="sum") * T**2 / B``.
    """
    log_p_s = F.log_softmax(student_logits.float() / temperature, dim=1)
    p_t = F.softmax(teacher_logits.float() / temperature, dim=1)
    return F.kl_div(log_p_s, p_t, reduction="sum") * temperature**2 / student_logits.shape[0]


class KDConfig(TermConfig):
    """RepDistiller's KD row: ``-r 0.1 -a 0.9 -b 0``, T = 4 (docs/algorithm.md §7)."""

    gamma: Weight = 0.1
    """CE weight (-r)"""
    alpha: Weight = 0.9
    """KD weight (-a)"""
    temperature: float = 4.0
    """softmax temperature T"""

    @model_validator(mode="after")
    def _check_kdconfig(self) -> KDConfig:
        if self.temperature <= 0:
            raise ConfigError("temperature", f"must be > 0, got {self.temperature}", "e.g. 4")
        return self


@LOSS_TERMS.register("kd", summary="Hinton KD: KL between softened logits (T=4)")
class KD(LossTerm):
    """Distilling the Knowledge in a Neural Network: soft-target KL on the logits."""

    config_cls = KDConfig
    #: the KD weight and the temperature around the official 0.9 and 4
    search_space = {"alpha": uniform(0.0, 2.0), "temperature": log_uniform(1.0, 8.0)}
    needs_features = False

    @classmethod
    def combo_defaults_as_secondary(cls, primary: str) -> dict[str, Any]:
        """CRD+KD and CKTF+KD (Table 1) run KD at ``-a 1``."""
        return {"alpha": 1.0}

    def forward(self, s: DistillOutput, t: DistillOutput | None, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        assert t is not None
        return {"kd": self.cfg.alpha * kd_loss(s.logits, t.logits, self.cfg.temperature)}
