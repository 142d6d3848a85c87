"""Learning Deep Representations with Probabilistic Knowledge Transfer (Passalis & Tefas, ECCV 2018).

RepDistiller ``distiller_zoo/PKT.py`` (``PKT``, the author's code) and the ``pkt`` branch of ``helper/loops.py``:
cosine-kernel conditional probabilities of the pooled features (``feat[-1]``).
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

from ..losses import pkt_loss
from ..models import DistillOutput
from ..space import log_uniform
from ._base import LOSS_TERMS, LossTerm, TermConfig, Weight


class PKTConfig(TermConfig):
    """RepDistiller ``scripts/run_cifar_distill.sh``: ``--distill pkt -a 0 -b 30000``."""

    beta: Weight = 30000.0
    """PKT weight (-b)"""


@LOSS_TERMS.register("pkt", summary="PKT: KL between cosine-kernel sample distributions of the pooled features")
class PKT(LossTerm):
    """Probabilistic Knowledge Transfer: match the batch's cosine-similarity distributions of the pooled features."""

    config_cls = PKTConfig
    batch_coupled = True  # relates the samples of a batch (docs/algorithm.md §12)
    #: a decade either side of the official weight (30000)
    search_space = {"beta": log_uniform(3000.0, 300000.0)}

    def forward(self, s: DistillOutput, t: DistillOutput | None, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        assert t is not None
        return {"pkt": self.cfg.beta * pkt_loss(s.pooled, t.pooled)}
