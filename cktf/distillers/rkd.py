"""Relational Knowledge Distillation (Park et al., CVPR 2019).

RepDistiller ``distiller_zoo/RKD.py`` (``RKDLoss(w_d=25, w_a=50)``) and the ``rkd`` branch of ``helper/loops.py``:
distance and angle relations of the pooled features (``feat[-1]``).
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

from ..losses import rkd_loss
from ..models import DistillOutput
from ..space import log_uniform
from ._base import LOSS_TERMS, LossTerm, TermConfig, Weight


class RKDConfig(TermConfig):
    """RepDistiller ``scripts/run_cifar_distill.sh``: ``--distill rkd -a 0 -b 1``; ``RKDLoss`` defaults."""

    beta: Weight = 1.0
    """RKD weight (-b)"""
    w_d: Weight = 25.0
    """distance-wise term weight (RKDLoss w_d)"""
    w_a: Weight = 50.0
    """angle-wise term weight (RKDLoss w_a)"""


@LOSS_TERMS.register("rkd", summary="RKD: distance + angle relations of the pooled features")
class RKD(LossTerm):
    """Relational Knowledge Distillation: pairwise distances and triplet angles of the pooled features."""

    config_cls = RKDConfig
    batch_coupled = True  # relates the samples of a batch (docs/algorithm.md §12)
    #: a decade either side of the official weight (1)
    search_space = {"beta": log_uniform(0.1, 10.0)}

    def forward(self, s: DistillOutput, t: DistillOutput | None, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        assert t is not None
        return {"rkd": self.cfg.beta * rkd_loss(s.pooled, t.pooled, self.cfg.w_d, self.cfg.w_a)}
