"""Decoupled Knowledge Distillation (Zhao, Cui, Song, Qiu & Liang, CVPR 2022), optionally with logit standardization
(Sun et al., CVPR 2024).

megvii-research/mdistiller ``mdistiller/distillers/DKD.py`` (``DKD.forward_train``, ``dkd_loss``) with the defaults
of ``mdistiller/engine/cfg.py`` (``CFG.DKD``: CE_WEIGHT 1.0, ALPHA 1.0, BETA 8.0, T 4.0, WARMUP 20). The loss math is
:func:`~cktf.losses.dkd_loss`; this term adds the linear warm-up ``min(epoch / WARMUP, 1)`` (1-based epochs upstream,
:func:`~._base.linear_warmup`) and, with ``logit_std``, z-scores both sides' logits first, as
sunshangquan/logit-standardization-KD ``mdistiller/distillers/DKD.py`` (``dkd_loss(..., logit_stand=True)``).

The per-pair BETA of ``configs/cifar100/dkd/*.yaml`` (2 for resnet56/110 -> resnet20/32, 6 for the VGG and WRN
pairs, 8 otherwise) is a field to set (``--set beta=2``); docs/algorithm.md §11 lists them.
"""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import model_validator
from torch import Tensor

from ..errors import ConfigError
from ..losses import dkd_loss, standardize_logits
from ..models import DistillModel, DistillOutput
from ..space import log_uniform
from ._base import LOSS_TERMS, DistillContext, LossTerm, TermConfig, Weight, linear_warmup


class DKDConfig(TermConfig):
    """mdistiller ``CFG.DKD`` (``mdistiller/engine/cfg.py``); the ``dkd-ls`` preset is the logit-standardization recipe.

    Loss: ``gamma * CE + min(epoch / warmup, 1) * (alpha * TCKD + beta * NCKD)``, epochs counted from 1 as upstream.
    """

    gamma: Weight = 1.0
    """CE weight (CE_WEIGHT)"""
    alpha: Weight = 1.0
    """target-class (TCKD) weight (ALPHA)"""
    beta: Weight = 8.0
    """non-target-class (NCKD) weight (BETA; per pair upstream: 2, 6 or 8)"""
    temperature: float = 4.0
    """softmax temperature T (T; the base temperature with logit_std)"""
    warmup: int = 20
    """epochs of the linear warm-up of the DKD term, min(epoch / warmup, 1) with 1-based epochs (WARMUP); 0 = none"""
    logit_std: bool = False
    """logit standardization (CVPR 2024): z-score each sample's logits, student and teacher, before the temperature"""

    @model_validator(mode="after")
    def _check_dkdconfig(self) -> DKDConfig:
        if self.temperature <= 0:
            raise ConfigError("temperature", f"must be > 0, got {self.temperature}", "e.g. 4")
        if self.warmup < 0:
            raise ConfigError("warmup", f"must be >= 0 (0 = no warm-up), got {self.warmup}", "e.g. 20")
        return self


@LOSS_TERMS.register("dkd", summary="DKD: decoupled target / non-target class KD (alpha 1, beta 8, T=4, warm-up 20)")
class DKD(LossTerm):
    """Decoupled KD on the logits, warmed up linearly over ``warmup`` epochs. Loss key: ``dkd``."""

    config_cls = DKDConfig
    needs_features = False
    needs_labels = True  # the target class splits the distributions: refused on unlabeled data
    #: around the official weights (the per-pair betas 2..8 and the ``dkd-ls`` 9 / 72) and temperature
    search_space = {
        "alpha": log_uniform(0.25, 16.0),
        "beta": log_uniform(1.0, 80.0),
        "temperature": log_uniform(1.0, 8.0),
    }
    #: ``dkd-ls``: DKD with logit standardization, sunshangquan/logit-standardization-KD ``tools/train.py``
    #: ``--logit-stand --base-temp 2 --kd-weight 9``: ALPHA and BETA times 9, T the base temperature
    presets = {"dkd-ls": {"logit_std": True, "alpha": 9.0, "beta": 72.0, "temperature": 2.0}}

    def __init__(self, cfg: DKDConfig, student: DistillModel, teacher: DistillModel | None, ctx: DistillContext):
        super().__init__(cfg, student, teacher, ctx)
        self.cfg: DKDConfig = cfg

    @property
    def warmup_factor(self) -> float:
        """``min(epoch / warmup, 1)`` of the epoch being trained (1-based, as mdistiller's ``kwargs["epoch"]``)."""
        return linear_warmup(self.epoch, self.cfg.warmup)

    def forward(self, s: DistillOutput, t: DistillOutput | None, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        assert t is not None
        c = self.cfg
        z_s, z_t = s.logits.float(), t.logits.detach().float()
        if c.logit_std:
            z_s, z_t = standardize_logits(z_s), standardize_logits(z_t)
        loss = dkd_loss(z_s, z_t, batch["target"], c.alpha, c.beta, c.temperature)
        return {"dkd": self.warmup_factor * loss}
