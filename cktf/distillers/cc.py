"""Correlation Congruence for Knowledge Distillation (Peng et al., ICCV 2019).

RepDistiller ``distiller_zoo/CC.py`` (``Correlation``, the code the CC authors sent), ``models/util.py``
(``LinearEmbed``) and the ``correlation`` branches of ``train_student.py`` / ``helper/loops.py``: a trained 128-d
linear embedding on each side's pooled feature (``feat[-1]``); both embeddings are in the optimiser.
"""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import model_validator
from torch import Tensor

from ..errors import ConfigError
from ..losses import cc_loss
from ..models import DistillModel, DistillOutput
from ..space import log_uniform
from ._base import LOSS_TERMS, DistillContext, LossTerm, TermConfig, Weight
from .adapters import LinearEmbed


class CCConfig(TermConfig):
    """RepDistiller ``scripts/run_cifar_distill.sh``: ``--distill correlation -a 0 -b 0.02``."""

    beta: Weight = 0.02
    """correlation congruence weight (-b)"""
    feat_dim: int = 128
    """embedding width of both LinearEmbeds (--feat_dim 128)"""

    @model_validator(mode="after")
    def _check_ccconfig(self) -> CCConfig:
        if self.feat_dim < 1:
            raise ConfigError("feat_dim", f"must be >= 1, got {self.feat_dim}", "e.g. 128")
        return self


@LOSS_TERMS.register("cc", summary="CC: correlation congruence of trained 128-d embeddings of the pooled features")
class CC(LossTerm):
    """Correlation Congruence for Knowledge Distillation, as RepDistiller runs it."""

    config_cls = CCConfig
    batch_coupled = True  # relates the samples of a batch (docs/algorithm.md §12)
    #: a decade either side of the official weight (0.02)
    search_space = {"beta": log_uniform(0.002, 0.2)}

    def __init__(self, cfg: CCConfig, student: DistillModel, teacher: DistillModel, ctx: DistillContext):
        super().__init__(cfg, student, teacher, ctx)
        self.embed_s = LinearEmbed(student.num_features, cfg.feat_dim)
        self.embed_t = LinearEmbed(teacher.num_features, cfg.feat_dim)

    def forward(self, s: DistillOutput, t: DistillOutput | None, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        assert t is not None
        return {"cc": self.cfg.beta * cc_loss(self.embed_s(s.pooled), self.embed_t(t.pooled))}
