"""Similarity-Preserving Knowledge Distillation (Tung & Mori, ICCV 2019).

RepDistiller ``distiller_zoo/SP.py`` (``Similarity``) and the ``similarity`` branch of ``helper/loops.py``: the last
stage output only (``feat[-2]``, our ``feats[-1]``).
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

from ..losses import sp_loss
from ..models import DistillOutput
from ..space import log_uniform
from ._base import LOSS_TERMS, LossTerm, TermConfig, Weight


class SPConfig(TermConfig):
    """RepDistiller ``scripts/run_cifar_distill.sh``: ``--distill similarity -a 0 -b 3000``."""

    beta: Weight = 3000.0
    """similarity-preserving loss weight (-b)"""


@LOSS_TERMS.register("sp", summary="SP: batch Gram matrices of the last stage")
class SP(LossTerm):
    """Similarity-Preserving Knowledge Distillation: match the batch similarity (Gram) matrices of the last stage."""

    config_cls = SPConfig
    batch_coupled = True  # relates the samples of a batch (docs/algorithm.md §12)
    #: a decade either side of the official weight (3000)
    search_space = {"beta": log_uniform(300.0, 30000.0)}

    def forward(self, s: DistillOutput, t: DistillOutput | None, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        assert t is not None
        return {"sp": self.cfg.beta * sp_loss(s.feats[-1], t.feats[-1])}
