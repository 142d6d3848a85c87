"""Paraphrasing Complex Network: Network Compression via Factor Transfer (Kim, Park & Kwak, NeurIPS 2018).

RepDistiller ``distiller_zoo/FT.py`` (``FactorTransfer``), ``models/util.py`` (``Paraphraser``, ``Translator``),
``helper/pretrain.py`` and the ``factor`` branches of ``train_student.py`` / ``helper/loops.py``. Init stage: the
paraphraser is trained for 30 epochs as an MSE autoencoder of the teacher's last stage (``feat[-2]``, our
``feats[-1]``). Main stage: the paraphraser is frozen in eval mode and gives the teacher factor; the translator
(trained with the student) gives the student factor; FactorTransfer L1 loss between them.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from pydantic import model_validator
from torch import Tensor

from ..errors import ConfigError
from ..losses import ft_factor_loss
from ..models import DistillModel, DistillOutput
from ..space import categorical, log_uniform
from ._base import LOSS_TERMS, DistillContext, InitStage, LossTerm, Weight
from .adapters import InitStageConfig, Paraphraser, Translator


class FTConfig(InitStageConfig):
    """RepDistiller ``--distill factor -a 0 -b 200``; init lr 0.01 for CIFAR ResNet/WRN students (pretrain.py)."""

    beta: Weight = 200.0
    """factor-transfer weight (-b)"""
    rate: float = 0.5
    """paraphrase rate k: factor channels = k * teacher channels (Paraphraser/Translator k=0.5)"""

    @model_validator(mode="after")
    def _check_ftconfig(self) -> FTConfig:
        if not 0 < self.rate <= 1:
            raise ConfigError("rate", f"must be in (0, 1], got {self.rate}", "e.g. 0.5")
        return self


def official_init_lr(student: DistillModel) -> float | None:
    """The init-stage learning rate of RepDistiller ``helper/pretrain.py`` for FT: 0.01 with a CIFAR ResNet / WRN
    student; otherwise ``opt.learning_rate``, i.e. the main stage's (``None`` here: the trainer uses ``optim.lr``;
    the official scripts run 0.01 for MobileNetV2 / ShuffleNet students, which their studies set explicitly)."""
    from ..models.resnet_cifar import CifarResNet
    from ..models.wrn import WideResNet

    return 0.01 if isinstance(student, (CifarResNet, WideResNet)) else None


@LOSS_TERMS.register("ft", summary="FT: init stage trains a teacher paraphraser, then L1 between factors")
class FT(LossTerm):
    """Paraphrasing Complex Network: Network Compression via Factor Transfer."""

    config_cls = FTConfig
    #: a decade either side of the official weight (200), and the init stage's length
    search_space = {"beta": log_uniform(20.0, 2000.0), "init_epochs": categorical(10, 20, 30)}

    def __init__(self, cfg: FTConfig, student: DistillModel, teacher: DistillModel, ctx: DistillContext):
        super().__init__(cfg, student, teacher, ctx)
        s_c, t_c = student.feature_info[-1].num_chs, teacher.feature_info[-1].num_chs
        if int(t_c * cfg.rate) < 1:
            raise ConfigError("distill.rate", f"gives no factor channels for a {t_c}-channel teacher stage")
        self.paraphraser = Paraphraser(t_c, cfg.rate)
        self.translator = Translator(s_c, t_c, cfg.rate)
        self.paraphraser.requires_grad_(False)  # trained only inside the init stage (not in trainable_list)
        self.init_lr = cfg.init_lr or official_init_lr(student)

    def forward(self, s: DistillOutput, t: DistillOutput | None, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        assert t is not None
        with torch.no_grad():
            factor_t = self.paraphraser.encoder(t.feats[-1])
        return {"ft": self.cfg.beta * ft_factor_loss(self.translator(s.feats[-1]), factor_t)}

    def init_stage(self, student: DistillModel, teacher: DistillModel) -> InitStage | None:
        if self.cfg.init_epochs == 0:
            return None
        self.paraphraser.requires_grad_(True)  # unfrozen for the stage only; on_train_start freezes it again

        def loss(batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
            with torch.no_grad():
                f_t = teacher.forward_distill(batch["image"]).feats[-1]
            return {"ft_init": F.mse_loss(self.paraphraser(f_t)[1], f_t)}

        params = list(self.paraphraser.parameters())
        return InitStage([self.paraphraser], params, self.cfg.init_epochs, self.init_lr, loss)

    def on_train_start(self, student: DistillModel) -> None:
        """Main stage: the paraphraser is frozen and in eval mode (upstream ``module_list[2].eval()``)."""
        self.paraphraser.requires_grad_(False)
        self.paraphraser.eval()

    def train(self, mode: bool = True) -> FT:
        super().train(mode)
        self.paraphraser.eval()  # only the init stage puts it in train mode (directly, via InitStage.modules)
        return self
