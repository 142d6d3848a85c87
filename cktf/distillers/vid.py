"""Variational Information Distillation for Knowledge Transfer (Ahn et al., CVPR 2019).

RepDistiller ``distiller_zoo/VID.py`` (``VIDLoss``, the author's code) and the ``vid`` branches of
``train_student.py`` / ``helper/loops.py``: one ``VIDLoss(s_C, t_C, t_C)`` per stage output (``feat[1:-1]``, our
``feats[1:]``); regressors and variances are trained with the student. Losses of the stages are summed.
"""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import model_validator
from torch import Tensor, nn

from ..errors import ConfigError
from ..losses import match_spatial, vid_loss
from ..models import DistillModel, DistillOutput
from ..space import log_uniform
from ._base import LOSS_TERMS, DistillContext, LossTerm, TermConfig, Weight
from .adapters import VIDRegressor


class VIDConfig(TermConfig):
    """RepDistiller ``scripts/run_cifar_distill.sh``: ``--distill vid -a 0 -b 1``; ``VIDLoss`` defaults."""

    beta: Weight = 1.0
    """VID weight (-b)"""
    init_pred_var: float = 5.0
    """initial predicted variance softplus(log_scale) + eps (VIDLoss init_pred_var)"""
    eps: float = 1e-5
    """variance floor (VIDLoss eps)"""

    @model_validator(mode="after")
    def _check_vidconfig(self) -> VIDConfig:
        for name in ("init_pred_var", "eps"):
            if getattr(self, name) <= 0:
                raise ConfigError(name, f"must be > 0, got {getattr(self, name)}")
        if self.init_pred_var <= self.eps:
            raise ConfigError("init_pred_var", "must be larger than eps", "e.g. 5.0")
        return self


@LOSS_TERMS.register("vid", summary="VID: Gaussian NLL of teacher stages given student stages (learned variance)")
class VID(LossTerm):
    """Variational Information Distillation: a 1x1-conv regressor per stage predicts the teacher map's mean."""

    config_cls = VIDConfig
    #: a decade either side of the official weight (1)
    search_space = {"beta": log_uniform(0.1, 10.0)}

    def __init__(self, cfg: VIDConfig, student: DistillModel, teacher: DistillModel, ctx: DistillContext):
        super().__init__(cfg, student, teacher, ctx)
        s_c = [fi.num_chs for fi in student.feature_info[1:]]
        t_c = [fi.num_chs for fi in teacher.feature_info[1:]]
        self.regressors = nn.ModuleList(
            VIDRegressor(s, t, t, cfg.init_pred_var, cfg.eps) for s, t in zip(s_c, t_c)
        )  # paired in order; extra stages of the deeper model are ignored (upstream zip)

    def forward(self, s: DistillOutput, t: DistillOutput | None, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        assert t is not None
        loss = 0
        for reg, f_s, f_t in zip(self.regressors, s.feats[1:], t.feats[1:]):
            f_s, f_t = match_spatial(f_s, f_t)
            loss = loss + vid_loss(reg(f_s), f_t, reg.log_scale, self.cfg.eps)
        return {"vid": self.cfg.beta * loss}
