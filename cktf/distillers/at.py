"""Paying More Attention to Attention (Zagoruyko & Komodakis, ICLR 2017).

RepDistiller ``distiller_zoo/AT.py`` (``Attention(p=2)``) and the ``attention`` branch of ``helper/loops.py``:
every stage output (``feat[1:-1]``, our ``feats[1:]``), one loss per stage, summed.
"""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import model_validator
from torch import Tensor

from ..errors import ConfigError
from ..losses import at_loss
from ..models import DistillOutput
from ..space import log_uniform
from ._base import LOSS_TERMS, LossTerm, TermConfig, Weight


class ATConfig(TermConfig):
    """RepDistiller ``scripts/run_cifar_distill.sh``: ``--distill attention -a 0 -b 1000``."""

    beta: Weight = 1000.0
    """attention-transfer weight (-b; the paper's beta/2 is folded in)"""
    p: float = 2.0
    """attention map exponent: mean_c |f|^p (Attention(p=2))"""

    @model_validator(mode="after")
    def _check_atconfig(self) -> ATConfig:
        if self.p <= 0:
            raise ConfigError("p", f"must be > 0, got {self.p}", "e.g. 2")
        return self


@LOSS_TERMS.register("at", summary="AT: attention maps of every stage, summed")
class AT(LossTerm):
    """Paying More Attention to Attention: match normalised spatial attention maps of every stage.

    Stages are paired in order; a model with more stages has its extra ones ignored (upstream ``zip``).
    """

    config_cls = ATConfig
    #: a decade either side of the official weight (1000)
    search_space = {"beta": log_uniform(100.0, 10000.0)}

    def forward(self, s: DistillOutput, t: DistillOutput | None, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        assert t is not None
        loss = sum(at_loss(f_s, f_t, self.cfg.p) for f_s, f_t in zip(s.feats[1:], t.feats[1:]))
        return {"at": self.cfg.beta * loss}
