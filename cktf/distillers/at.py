"""Paying More Attention to Attention (Zagoruyko & Komodakis, ICLR 2017).

RepDistiller ``distiller_zoo/AT.py`` (``Attention(p=2)``) and the ``attention`` branch of ``helper/loops.py``:
every stage output (``feat[1:-1]``, our ``feats[1:]``), one loss per stage, summed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from torch import Tensor

from ..errors import ConfigError
from ..losses import at_loss
from ..models import DistillOutput
from ._base import DISTILLERS, LossTerm, TermConfig


@dataclass
class ATConfig(TermConfig):
    """RepDistiller ``scripts/run_cifar_distill.sh``: ``--distill attention -a 0 -b 1000``."""

    beta: float = 1000.0  # attention-transfer weight (-b; the paper's beta/2 is folded in)
    p: float = 2.0  # attention map exponent: mean_c |f|^p (Attention(p=2))

    def validate(self, prefix: str = "distill") -> None:
        super().validate(prefix)
        if self.p <= 0:
            raise ConfigError(f"{prefix}.p", f"must be > 0, got {self.p}", "e.g. 2")


@DISTILLERS.register("at", summary="AT: attention maps of every stage, summed")
class AT(LossTerm):
    """Paying More Attention to Attention: match normalised spatial attention maps of every stage.

    Stages are paired in order; a model with more stages has its extra ones ignored (upstream ``zip``).
    """

    config_cls = ATConfig

    def forward(self, s: DistillOutput, t: DistillOutput | None, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        assert t is not None
        loss = sum(at_loss(f_s, f_t, self.cfg.p) for f_s, f_t in zip(s.feats[1:], t.feats[1:]))
        return {"at": self.cfg.beta * loss}
