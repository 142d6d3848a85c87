"""Like What You Like: Knowledge Distill via Neuron Selectivity Transfer (Huang & Wang, 2017).

RepDistiller ``distiller_zoo/NST.py`` (``NSTLoss``) and the ``nst`` branch of ``helper/loops.py``: polynomial-kernel
MMD on every stage output (``feat[1:-1]``, our ``feats[1:]``), summed.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

from ..losses import nst_loss
from ..models import DistillOutput
from ..space import log_uniform
from ._base import LOSS_TERMS, LossTerm, TermConfig, Weight


class NSTConfig(TermConfig):
    """RepDistiller ``scripts/run_cifar_distill.sh``: ``--distill nst -a 0 -b 50``."""

    beta: Weight = 50.0
    """NST (MMD) weight (-b)"""


@LOSS_TERMS.register("nst", summary="NST: polynomial-kernel MMD of channel activations, every stage")
class NST(LossTerm):
    """Neuron Selectivity Transfer: match the distributions of channel activation maps of every stage.

    Stages are paired in order; a model with more stages has its extra ones ignored (upstream ``zip``).
    """

    config_cls = NSTConfig
    #: a decade either side of the official weight (50)
    search_space = {"beta": log_uniform(5.0, 500.0)}

    def forward(self, s: DistillOutput, t: DistillOutput | None, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        assert t is not None
        return {"nst": self.cfg.beta * sum(nst_loss(f_s, f_t) for f_s, f_t in zip(s.feats[1:], t.feats[1:]))}
