"""DIST: Knowledge Distillation from A Stronger Teacher (Huang, You, Wang, Qian & Xu, NeurIPS 2022).

hunto/image_classification_sota ``lib/models/losses/dist_kd.py`` (``DIST``; hunto/DIST_KD's README points there)
and its ``lib/models/losses/kd_loss.py`` (``KDLoss``: ``ori_loss_weight * CE + kd_loss_weight * DIST``, both 1, on
the logits). The loss math is :func:`~cktf.losses.dist_loss`: Pearson-correlation relations of the softened
predictions, inter-class (per sample) and intra-class (per class across the batch), each times ``tau^2``.
"""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import model_validator
from torch import Tensor

from ..errors import ConfigError
from ..losses import dist_loss
from ..models import DistillOutput
from ..space import log_uniform
from ._base import LOSS_TERMS, LossTerm, TermConfig, Weight


class DISTConfig(TermConfig):
    """``DIST(beta=1, gamma=1, tau=1)`` beside CE at weight 1 (``KDLoss`` with ``kd_method="dist"``).

    Field names: the paper's and the official class's ``gamma`` (intra-class weight) is ``gamma_intra`` here, because
    ``gamma`` is Eq. 1's cross-entropy weight in every method's config. ``beta`` is the inter-class weight, as
    upstream. Loss: ``gamma * CE + beta * tau^2 * inter + gamma_intra * tau^2 * intra``.
    """

    gamma: Weight = 1.0
    """CE weight (ori_loss_weight)"""
    beta: Weight = 1.0
    """inter-class relation weight (the paper's and DIST's beta)"""
    gamma_intra: Weight = 1.0
    """intra-class relation weight (the paper's and DIST's gamma; renamed: gamma is the CE weight)"""
    tau: float = 1.0
    """softmax temperature (DIST's tau; both relations are multiplied by tau^2)"""

    @model_validator(mode="after")
    def _check_distconfig(self) -> DISTConfig:
        if self.tau <= 0:
            raise ConfigError("tau", f"must be > 0, got {self.tau}", "e.g. 1 or 4")
        return self


@LOSS_TERMS.register("dist", summary="DIST: inter- and intra-class Pearson relations of the predictions (tau=1)")
class DIST(LossTerm):
    """DIST on the logits: ``beta * inter + gamma_intra * intra``. Loss key: ``dist``."""

    config_cls = DISTConfig
    batch_coupled = True  # relates the samples of a batch (docs/algorithm.md §12)
    needs_features = False
    #: both weights and the temperature around the official 1, 1, 1
    search_space = {
        "beta": log_uniform(0.25, 4.0),
        "gamma_intra": log_uniform(0.25, 4.0),
        "tau": log_uniform(1.0, 8.0),
    }

    def forward(self, s: DistillOutput, t: DistillOutput | None, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        assert t is not None
        c = self.cfg
        return {"dist": dist_loss(s.logits, t.logits, c.beta, c.gamma_intra, c.tau)}
