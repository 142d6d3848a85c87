"""FitNets: Hints for Thin Deep Nets (Romero et al., ICLR 2015).

RepDistiller ``distiller_zoo/FitNet.py`` (``HintLoss``), ``models/util.py`` (``ConvReg``) and the ``hint`` branches of
``train_student.py`` / ``helper/loops.py``. One stage, as RepDistiller (no hint pre-training, docs/algorithm.md §7).
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

from ..errors import ConfigError
from ..losses import hint_loss
from ..models import DistillModel, DistillOutput
from ..space import log_uniform
from ._base import LOSS_TERMS, DistillContext, LossTerm, TermConfig, Weight
from .adapters import build_regressor
from .pairing import may_generalise


class FitNetConfig(TermConfig):
    """RepDistiller ``scripts/run_cifar_distill.sh``: ``--distill hint -a 0 -b 100``."""

    beta: Weight = 100.0
    """hint loss weight (-b)"""
    hint_layer: int = 2
    """index into feats = [stem, stage1, ...] (--hint_layer 2: RepDistiller's feat[2], stage 2)"""


@LOSS_TERMS.register("fitnet", summary="FitNet: ConvReg(student stage 2) -> MSE to teacher stage 2")
class FitNet(LossTerm):
    """FitNets: Hints for Thin Deep Nets. A trained ConvReg maps the student's hint layer onto the teacher's."""

    config_cls = FitNetConfig
    #: a decade either side of the official weight (100)
    search_space = {"beta": log_uniform(10.0, 1000.0)}

    def __init__(self, cfg: FitNetConfig, student: DistillModel, teacher: DistillModel, ctx: DistillContext):
        super().__init__(cfg, student, teacher, ctx)
        n = min(len(student.feature_info), len(teacher.feature_info))
        if not -n <= cfg.hint_layer < n:
            raise ConfigError("distill.hint_layer", f"must index the {n} feature maps, got {cfg.hint_layer}")
        self.layer = cfg.hint_layer
        s_shape = student.feature_shapes(ctx.image_size)[self.layer]
        t_shape = teacher.feature_shapes(ctx.image_size)[self.layer]
        try:  # ConvReg; a ResizeReg only for a shape it cannot map in a generalised pair (docs/models.md)
            self.regressor, self.pairing = build_regressor(s_shape, t_shape, True, may_generalise(student, teacher))
        except ValueError as e:
            s_name, t_name = student.feature_info[self.layer].name, teacher.feature_info[self.layer].name
            raise ConfigError(
                "distill.hint_layer", f"student {s_name} {s_shape} vs teacher {t_name} {t_shape}: {e}", "pick another"
            ) from None

    def forward(self, s: DistillOutput, t: DistillOutput | None, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        assert t is not None
        return {"fitnet": self.cfg.beta * hint_loss(self.regressor(s.feats[self.layer]), t.feats[self.layer])}
