"""A Gift from Knowledge Distillation: Fast Optimization, Network Minimization and Transfer Learning (Yim et al.,
CVPR 2017).

RepDistiller ``distiller_zoo/FSP.py`` (``FSP``), ``helper/pretrain.py`` and the ``fsp`` branches of
``train_student.py`` / ``helper/loops.py``. FSP is an *initialisation* method: for 30 epochs the student's feature
modules (not its classifier) are trained to match the FSP matrices of consecutive pairs of ``feat[:-1]`` (our
``feats``: (stem, stage1), (stage1, stage2), ...); the main stage is then CE only (upstream ``loss_kd = 0``, so the
script's ``-b 50`` multiplies zero). The matrices are ``C_top x C_bottom``, so every layer needs equal student and
teacher channel counts ("N/A" in the paper's tables, e.g. WRN-40-2 -> WRN-40-1).

Generalised pairing (an extension, docs/models.md; only for pairs :func:`~.pairing.may_generalise` allows, and only
when the official rule refuses them): each student layer is paired with the teacher layer at its relative depth
(the stems together, stages by :func:`~.pairing.depth_map`) and, where the channels differ, projected onto the
teacher layer's channels by a 1x1 conv trained with the student (in the init stage too).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..losses import fsp_loss
from ..models import DistillModel, DistillOutput
from ..space import categorical, log_uniform
from ._base import LOSS_TERMS, DistillContext, InitStage, LossTerm, Weight
from .adapters import InitStageConfig, feature_modules
from .pairing import GENERALISED, depth_map, may_generalise


class FSPConfig(InitStageConfig):
    """RepDistiller ``--distill fsp``: 30 init epochs at the main lr (0.05), then CE only."""

    beta: Weight = 0.0
    """main-stage FSP weight: 0 = official (loss_kd = 0 in train_distill; -b 50 has no effect)"""


def _label(model: DistillModel) -> str:
    return f"{type(model).__name__}[{'/'.join(str(fi.num_chs) for fi in model.feature_info)}]"


def _check_official(student: DistillModel, teacher: DistillModel) -> None:
    """RepDistiller's rule: as many layers, and equal channel counts position by position."""
    s_info, t_info = student.feature_info, teacher.feature_info
    what = f"FSP needs equal layers and channel counts in student {_label(student)} and teacher {_label(teacher)}"
    if len(s_info) != len(t_info):
        raise ConfigError("distiller", f"{what}: {len(s_info)} vs {len(t_info)} layers", "use another method")
    for s, t in zip(s_info, t_info):
        if s.num_chs != t.num_chs:
            raise ConfigError(
                "distiller",
                f"{what}: student {s.name} has {s.num_chs} channels, teacher {t.name} has {t.num_chs} "
                "(N/A in the paper's tables)",
                "use another method or a teacher of the same width",
            )


@LOSS_TERMS.register("fsp", summary="FSP: init stage matching flow (FSP) matrices of consecutive layers, then CE")
class FSP(LossTerm):
    """A Gift from Knowledge Distillation: match the flow-of-solution-procedure matrices between layers."""

    config_cls = FSPConfig
    #: the init stage's length and the learning rate (the main stage is CE only, as upstream)
    search_space = {"init_epochs": categorical(10, 20, 30), "optim.lr": log_uniform(0.01, 0.1)}

    def __init__(self, cfg: FSPConfig, student: DistillModel, teacher: DistillModel, ctx: DistillContext):
        super().__init__(cfg, student, teacher, ctx)
        s_info, t_info = student.feature_info, teacher.feature_info
        #: teacher layer of each student layer (generalised pairing), None: position by position (official)
        self.t_index: list[int] | None = None
        self.connectors: nn.ModuleList | None = None
        fits = len(s_info) == len(t_info) and all(s.num_chs == t.num_chs for s, t in zip(s_info, t_info))
        if not fits and may_generalise(student, teacher):
            self.pairing = GENERALISED
            self.t_index = [0] + depth_map(len(s_info) - 1, len(t_info) - 1)
            self.connectors = nn.ModuleList(
                nn.Identity() if s.num_chs == t_info[j].num_chs else nn.Conv2d(s.num_chs, t_info[j].num_chs, 1)
                for s, j in zip(s_info, self.t_index)
            )
        else:
            _check_official(student, teacher)
        self.init_lr = cfg.init_lr or None  # None: the main stage's optim.lr (RepDistiller opt.learning_rate)

    def _pairs(self, s: DistillOutput, t: DistillOutput) -> tuple[list[Tensor], list[Tensor]]:
        """The student and teacher maps FSP compares (the generalised pairing projects and maps them)."""
        if self.t_index is None or self.connectors is None:
            return list(s.feats), list(t.feats)
        return [c(f) for c, f in zip(self.connectors, s.feats)], [t.feats[j] for j in self.t_index]

    def forward(self, s: DistillOutput, t: DistillOutput | None, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        assert t is not None
        return {"fsp": self.cfg.beta * sum(fsp_loss(*self._pairs(s, t)))} if self.cfg.beta > 0 else {}

    def init_stage(self, student: DistillModel, teacher: DistillModel) -> InitStage | None:
        if self.cfg.init_epochs == 0:
            return None
        modules = feature_modules(student) + ([self.connectors] if self.connectors is not None else [])

        def loss(batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
            s = student.forward_distill(batch["image"])
            with torch.no_grad():
                t = teacher.forward_distill(batch["image"])
            return {"fsp_init": sum(fsp_loss(*self._pairs(s, t)))}

        params = [p for m in modules for p in m.parameters()]
        return InitStage(modules, params, self.cfg.init_epochs, self.init_lr, loss)
