"""Knowledge Transfer via Distillation of Activation Boundaries Formed by Hidden Neurons (Heo et al., AAAI 2019).

RepDistiller ``distiller_zoo/AB.py`` (``ABLoss``), ``models/util.py`` (``Connector``), ``helper/pretrain.py`` and the
``abound`` branches of ``train_student.py`` / ``helper/loops.py``. AB is an *initialisation* method: for 30 epochs
the connectors and the student's feature modules (not its classifier) are trained with ABLoss on the stage
pre-activations (``preact=True``, ``feat[1:-1]``: our ``preact_feats[1:]``); the main stage is then CE only
(upstream ``loss_kd = 0``, so the script's ``-b 1`` multiplies zero).

Generalised pairing (an extension, docs/models.md; only for pairs :func:`~.pairing.may_generalise` allows): stage
lists of unequal length pair by relative depth (:func:`~.pairing.depth_map`), and a stage ConvReg cannot map gets a
:class:`~.adapters.ResizeReg` connector.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from ..errors import ConfigError
from ..losses import ab_loss
from ..models import DistillModel, DistillOutput
from ..space import categorical, log_uniform
from ._base import LOSS_TERMS, DistillContext, InitStage, LossTerm, Weight
from .adapters import Connector, InitStageConfig, feature_modules
from .pairing import GENERALISED, depth_map, may_generalise


class ABConfig(InitStageConfig):
    """RepDistiller ``--distill abound``: 30 init epochs at the main lr (0.05), then CE only."""

    beta: Weight = 0.0
    """main-stage AB weight: 0 = official (loss_kd = 0 in train_distill; -b 1 has no effect)"""
    margin: float = 1.0
    """activation-boundary margin m (ABLoss margin)"""


@LOSS_TERMS.register("ab", summary="AB: init stage matching activation boundaries of every stage, then CE")
class AB(LossTerm):
    """Knowledge Transfer via Distillation of Activation Boundaries Formed by Hidden Neurons."""

    config_cls = ABConfig
    #: the boundary margin and the init stage's length (the main stage is CE only, as upstream)
    search_space = {"margin": log_uniform(0.25, 4.0), "init_epochs": categorical(10, 20, 30)}

    def __init__(self, cfg: ABConfig, student: DistillModel, teacher: DistillModel, ctx: DistillContext):
        super().__init__(cfg, student, teacher, ctx)
        s_shapes = student.feature_shapes(ctx.image_size)[1:]
        t_shapes = teacher.feature_shapes(ctx.image_size)[1:]
        generalise = may_generalise(student, teacher)
        #: teacher stage (index into preact_feats) of each student stage; None: in order (official)
        self.t_index: list[int] | None = None
        if generalise and len(s_shapes) != len(t_shapes):
            self.t_index = depth_map(len(s_shapes), len(t_shapes))
            t_shapes = [t_shapes[j - 1] for j in self.t_index]
        t_info = [teacher.feature_info[j] for j in self.t_index] if self.t_index else teacher.feature_info[1:]
        names = [f"student {s.name} vs teacher {t.name}" for s, t in zip(student.feature_info[1:], t_info)]
        try:
            self.connector = Connector(s_shapes, t_shapes, names, generalise=generalise)
        except ValueError as e:
            raise ConfigError("distiller", f"ab: {e}", "use a student and teacher with compatible stages") from None
        if self.t_index is not None or self.connector.pairing == GENERALISED:
            self.pairing = GENERALISED
        self.init_lr = cfg.init_lr or None  # None: the main stage's optim.lr (RepDistiller opt.learning_rate)

    def _loss(self, s: DistillOutput, t: DistillOutput) -> Tensor:
        t_feats = [t.preact_feats[j] for j in self.t_index] if self.t_index else t.preact_feats[1:]
        return sum(ab_loss(self.connector(s.preact_feats[1:]), t_feats, self.cfg.margin))

    def forward(self, s: DistillOutput, t: DistillOutput | None, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        assert t is not None
        return {"ab": self.cfg.beta * self._loss(s, t)} if self.cfg.beta > 0 else {}

    def init_stage(self, student: DistillModel, teacher: DistillModel) -> InitStage | None:
        if self.cfg.init_epochs == 0:
            return None
        modules = [self.connector, *feature_modules(student)]

        def loss(batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
            s = student.forward_distill(batch["image"])
            with torch.no_grad():
                t = teacher.forward_distill(batch["image"])
            return {"ab_init": self._loss(s, t)}

        params = [p for m in modules for p in m.parameters()]
        return InitStage(modules, params, self.cfg.init_epochs, self.init_lr, loss)
