"""Distilling the Knowledge in a Neural Network (Hinton, Vinyals & Dean, 2015), with the optional logit
standardization of Sun et al., "Logit Standardization in Knowledge Distillation", CVPR 2024 (``logit_std``).

The KD loss is RepDistiller ``distiller_zoo/KD.py`` (``DistillKL``); with ``logit_std`` both sides' logits are first
z-scored per sample (:func:`~cktf.losses.standardize_logits`), as sunshangquan/logit-standardization-KD
``mdistiller/distillers/KD.py`` (``kd_loss(..., logit_stand=True)``; its ``reduction="none"`` then ``.sum(1).mean()``
times ``T^2`` is this ``sum * T^2 / B``). The preset ``kd-ls`` is that repository's CIFAR-100 recipe (``tools/train.py
--logit-stand --base-temp 2 --kd-weight 9`` on its ``mdistiller/engine/cfg.py``, CE weight 1): docs/algorithm.md §11.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch.nn.functional as F
from pydantic import model_validator
from torch import Tensor

from ..errors import ConfigError
from ..losses import standardize_logits
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
    """softmax temperature T (the base temperature with logit_std)"""
    logit_std: bool = False
    """logit standardization (CVPR 2024): z-score each sample's logits, student and teacher, before the temperature"""

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
    #: ``kd-ls``: KD with logit standardization at the official CIFAR-100 setting (base temperature 2, KD weight 9,
    #: CE weight 1; sunshangquan/logit-standardization-KD ``tools/train.py``, ``mdistiller/engine/cfg.py``)
    presets = {"kd-ls": {"logit_std": True, "temperature": 2.0, "alpha": 9.0, "gamma": 1.0}}
    #: ``kd-ls`` searches its KD weight around 9 (standardised logits carry less scale than raw ones)
    preset_spaces = {"kd-ls": {"alpha": log_uniform(1.0, 27.0), "temperature": log_uniform(1.0, 8.0)}}

    @classmethod
    def combo_defaults_as_secondary(cls, primary: str) -> dict[str, Any]:
        """CRD+KD and CKTF+KD (Table 1) run KD at ``-a 1``."""
        return {"alpha": 1.0}

    def forward(self, s: DistillOutput, t: DistillOutput | None, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        assert t is not None
        z_s, z_t = s.logits, t.logits.detach()
        if self.cfg.logit_std:
            z_s, z_t = standardize_logits(z_s.float()), standardize_logits(z_t.float())
        return {"kd": self.cfg.alpha * kd_loss(z_s, z_t, self.cfg.temperature)}
