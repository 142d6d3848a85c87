"""Correlation Congruence for Knowledge Distillation (Peng et al., ICCV 2019).

RepDistiller ``distiller_zoo/CC.py`` (``Correlation``, the code the CC authors sent), ``models/util.py``
(``LinearEmbed``) and the ``correlation`` branches of ``train_student.py`` / ``helper/loops.py``: a trained 128-d
linear embedding on each side's pooled feature (``feat[-1]``); both embeddings are in the optimiser.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from torch import Tensor

from ..errors import ConfigError
from ..losses import cc_loss
from ..models import DistillModel, DistillOutput
from ._base import DISTILLERS, DistillContext, LossTerm, TermConfig
from .adapters import LinearEmbed


@dataclass
class CCConfig(TermConfig):
    """RepDistiller ``scripts/run_cifar_distill.sh``: ``--distill correlation -a 0 -b 0.02``."""

    beta: float = 0.02  # correlation congruence weight (-b)
    feat_dim: int = 128  # embedding width of both LinearEmbeds (--feat_dim 128)

    def validate(self, prefix: str = "distill") -> None:
        super().validate(prefix)
        if self.feat_dim < 1:
            raise ConfigError(f"{prefix}.feat_dim", f"must be >= 1, got {self.feat_dim}", "e.g. 128")


@DISTILLERS.register("cc", summary="CC: correlation congruence of trained 128-d embeddings of the pooled features")
class CC(LossTerm):
    """Correlation Congruence for Knowledge Distillation, as RepDistiller runs it."""

    config_cls = CCConfig

    def __init__(self, cfg: CCConfig, student: DistillModel, teacher: DistillModel, ctx: DistillContext):
        super().__init__(cfg, student, teacher, ctx)
        self.embed_s = LinearEmbed(student.num_features, cfg.feat_dim)
        self.embed_t = LinearEmbed(teacher.num_features, cfg.feat_dim)

    def forward(self, s: DistillOutput, t: DistillOutput | None, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        assert t is not None
        return {"cc": self.cfg.beta * cc_loss(self.embed_s(s.pooled), self.embed_t(t.pooled))}
