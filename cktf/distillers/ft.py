"""Paraphrasing Complex Network: Network Compression via Factor Transfer (Kim, Park & Kwak, NeurIPS 2018).

RepDistiller ``distiller_zoo/FT.py`` (``FactorTransfer``), ``models/util.py`` (``Paraphraser``, ``Translator``),
``helper/pretrain.py`` and the ``factor`` branches of ``train_student.py`` / ``helper/loops.py``. Init stage: the
paraphraser is trained for 30 epochs as an MSE autoencoder of the teacher's last stage (``feat[-2]``, our
``feats[-1]``). Main stage: the paraphraser is frozen in eval mode and gives the teacher factor; the translator
(trained with the student) gives the student factor; FactorTransfer L1 loss between them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError
from ..losses import ft_factor_loss
from ..models import DistillModel, DistillOutput
from ._base import DISTILLERS, DistillContext, InitStage, LossTerm
from .adapters import InitStageConfig, Paraphraser, Translator, official_init_lr


@dataclass
class FTConfig(InitStageConfig):
    """RepDistiller ``--distill factor -a 0 -b 200``; init lr 0.01 for CIFAR ResNet/WRN students (pretrain.py)."""

    beta: float = 200.0  # factor-transfer weight (-b)
    rate: float = 0.5  # paraphrase rate k: factor channels = k * teacher channels (Paraphraser/Translator k=0.5)

    def validate(self, prefix: str = "distill") -> None:
        super().validate(prefix)
        if not 0 < self.rate <= 1:
            raise ConfigError(f"{prefix}.rate", f"must be in (0, 1], got {self.rate}", "e.g. 0.5")


@DISTILLERS.register("ft", summary="FT: init stage trains a teacher paraphraser, then L1 between factors")
class FT(LossTerm):
    """Paraphrasing Complex Network: Network Compression via Factor Transfer."""

    config_cls = FTConfig

    def __init__(self, cfg: FTConfig, student: DistillModel, teacher: DistillModel, ctx: DistillContext):
        super().__init__(cfg, student, teacher, ctx)
        s_c, t_c = student.feature_info[-1].num_chs, teacher.feature_info[-1].num_chs
        if int(t_c * cfg.rate) < 1:
            raise ConfigError("distill.rate", f"gives no factor channels for a {t_c}-channel teacher stage")
        self.paraphraser = Paraphraser(t_c, cfg.rate)
        self.translator = Translator(s_c, t_c, cfg.rate)
        self.paraphraser.requires_grad_(False)  # trained only inside the init stage (not in trainable_list)
        self.init_lr = cfg.init_lr or official_init_lr(student, "ft")

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
