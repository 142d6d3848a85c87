"""Distilling Knowledge via Knowledge Review (Chen, Liu, Zhao & Jia, CVPR 2021): ReviewKD.

megvii-research/mdistiller ``mdistiller/distillers/ReviewKD.py`` (``ReviewKD``), itself dvlab-research/ReviewKD
``CIFAR-100/model/reviewkd.py`` (``ReviewKD``, ``build_review_kd``). The student's stage outputs ``feats[1:]`` (the
official ``feats`` without the stem; ``preact_feats[1:]`` with ``student_preact``, mdistiller's STU_PREACT) and its
pooled vector as a 1x1 map are fused from the deepest up by :class:`~cktf.losses.ABF` blocks; each level's output is
compared with the teacher's pre-activation stage output (``preact_feats``) and the deepest with the teacher's pooled
vector, by :func:`~cktf.losses.hcl_loss`. Loss: ``gamma * CE + beta * min(epoch / warmup, 1) * HCL`` (mdistiller's
CE_WEIGHT 1, REVIEWKD_WEIGHT 1, WARMUP_EPOCHS 20; epochs counted from 1 upstream, :func:`~._base.linear_warmup`).

**Sizes from the models** (the official rule). Upstream lists ``IN_CHANNELS``, ``OUT_CHANNELS``, ``SHAPES`` and
``OUT_SHAPES`` per pair (``build_review_kd``; mdistiller's config). They are the student's stage widths and the
pooled width, the teacher's, the student's map sides and the teacher's, and ``mid_channel = min(512, in_channels[-1])``;
here they are read from both models' ``feature_shapes`` and ``num_features``, which gives the official lists for
every pair upstream ships (``resnet32x4 -> resnet8x4``: ``[64, 128, 256, 256]``, sides ``[1, 8, 16, 32]``; ``vgg13 ->
MobileNetV2``: in ``[12, 16, 48, 160, 1280]``, out ``[128, 256, 512, 512, 512]``, sides ``[1, 2, 4, 8, 16]`` to
``[1, 4, 4, 8, 16]``; ``wrn_40_2 -> ShuffleV1``; ...). Stages pair one to one whenever both models have as many
(``pairing`` ``official``).

**Generalised pairing** (an extension, not in the paper or the official code; docs/models.md, :mod:`.pairing`): for
a pair across families with a library or user model (:func:`~.pairing.may_generalise`) whose stage counts differ,
student stage ``k`` is compared with the teacher stage at the same relative depth (:func:`~.pairing.depth_map`)
and its ABF is sized for that stage (``pairing`` ``generalised``). The zoo keeps the official refusal: a zoo pair
with different stage counts, which upstream cannot build (its ``hcl_loss`` would compare mismatched maps), is a
:class:`~cktf.errors.ConfigError` at construction.
"""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import model_validator
from torch import Tensor, nn

from ..errors import ConfigError
from ..losses import ABF, hcl_loss
from ..models import DistillModel, DistillOutput
from ..space import log_uniform
from ._base import LOSS_TERMS, DistillContext, LossTerm, TermConfig, Weight, linear_warmup
from .pairing import GENERALISED, OFFICIAL, depth_map, may_generalise

#: the widest fusion (``mid_channel = min(512, in_channels[-1])``; mdistiller's MAX_MID_CHANNEL, hard-coded upstream)
MAX_MID_CHANNEL = 512


class ReviewKDConfig(TermConfig):
    """mdistiller ``CFG.REVIEWKD`` (``mdistiller/engine/cfg.py``). Upstream's per-pair weight: 5 for resnet32x4 ->
    resnet8x4 (``configs/cifar100/reviewkd.yaml``) and, in dvlab-research/ReviewKD ``CIFAR-100/script/reviewKD.sh``,
    5 for the WRN and ShuffleV1 pairs, 8 for ShuffleV2, 0.6 for resnet56 -> resnet20, 1 for resnet110 -> resnet32."""

    gamma: Weight = 1.0
    """CE weight (CE_WEIGHT)"""
    beta: Weight = 1.0
    """HCL weight (REVIEWKD_WEIGHT; per pair upstream: 0.6 to 8, 5 for resnet32x4 -> resnet8x4)"""
    warmup: int = 20
    """epochs of the linear warm-up, min(epoch / warmup, 1) with 1-based epochs (WARMUP_EPOCHS); 0 = none"""
    student_preact: bool = False
    """fuse the student's pre-activation stage outputs instead of its outputs (STU_PREACT)"""

    @model_validator(mode="after")
    def _check_reviewkdconfig(self) -> ReviewKDConfig:
        if self.warmup < 0:
            raise ConfigError("warmup", f"must be >= 0 (0 = no warm-up), got {self.warmup}", "e.g. 20")
        return self


def review_layout(
    student: DistillModel, teacher: DistillModel, image_size: int
) -> tuple[list[int], list[tuple[int, int, int]], list[tuple[int, int, int]], str]:
    """``(teacher stages, student shapes, teacher shapes, pairing)`` of the ABF chain, shallow to deep.

    The shapes are ``(C, H, W)`` of every student stage and its paired teacher stage, then ``(num_features, 1, 1)``
    of each pooled vector; the teacher stages are 1-based indices into ``preact_feats``.
    """
    n_s, n_t = len(student.feature_info) - 1, len(teacher.feature_info) - 1
    if n_s < 1 or n_t < 1:
        raise ConfigError("student", "ReviewKD needs at least one stage on each side", "pick models with stages")
    if n_s == n_t:
        t_stage, pairing = list(range(1, n_s + 1)), OFFICIAL
    elif may_generalise(student, teacher):
        t_stage, pairing = depth_map(n_s, n_t), GENERALISED
    else:
        raise ConfigError(
            "student",
            f"ReviewKD pairs stage k with stage k, but student {type(student).__name__} and teacher "
            f"{type(teacher).__name__} have {n_s} and {n_t} stages (the official code cannot build this pair)",
            "pick models with as many stages (e.g. resnet8x4 <- resnet32x4, vgg8 <- vgg13, shufflev2 <- wrn_40_2)",
        )
    s_all, t_all = student.feature_shapes(image_size), teacher.feature_shapes(image_size)
    s_shapes = [tuple(s_all[k]) for k in range(1, n_s + 1)] + [(student.num_features, 1, 1)]
    t_shapes = [tuple(t_all[j]) for j in t_stage] + [(teacher.num_features, 1, 1)]
    return t_stage, s_shapes, t_shapes, pairing


@LOSS_TERMS.register("reviewkd", summary="ReviewKD: ABF fusion of student stages, HCL to teacher (warm-up 20)")
class ReviewKD(LossTerm):
    """Knowledge review: ABF blocks from the deepest student level up, the hierarchical context loss to the teacher's
    pre-activation stages and pooled vector. Loss key: ``reviewkd``.

    ``abfs[0]`` is the deepest block (the pooled vector's, no fusion) and ``abfs[-1]`` the shallowest, as upstream's
    reversed ``ModuleList``, so state-dict keys are mdistiller's (``abfs.<i>.conv1.0.weight``, ...). The blocks are
    built shallow to deep before the reversal, as upstream, so a seeded build draws the same initial weights.
    """

    config_cls = ReviewKDConfig
    #: the loss weight around the official per-pair 0.6 .. 8
    search_space = {"beta": log_uniform(0.1, 10.0)}

    def __init__(self, cfg: ReviewKDConfig, student: DistillModel, teacher: DistillModel | None, ctx: DistillContext):
        super().__init__(cfg, student, teacher, ctx)
        self.cfg: ReviewKDConfig = cfg
        self.t_stage, s_shapes, t_shapes, self.pairing = review_layout(student, teacher, ctx.image_size)
        in_channels = [c for c, _, _ in s_shapes]
        mid_channel = min(MAX_MID_CHANNEL, in_channels[-1])
        abfs = [ABF(c_in, mid_channel, t_shapes[i][0], i < len(in_channels) - 1) for i, c_in in enumerate(in_channels)]
        self.abfs = nn.ModuleList(abfs[::-1])
        #: the teacher side (H, W) each block's output is brought to, deepest first (upstream's OUT_SHAPES)
        self.out_shapes = [tuple(int(v) for v in t_shapes[i][1:]) for i in range(len(t_shapes))][::-1]

    @property
    def warmup_factor(self) -> float:
        """``min(epoch / warmup, 1)`` of the epoch being trained (1-based, as mdistiller's ``kwargs["epoch"]``)."""
        return linear_warmup(self.epoch, self.cfg.warmup)

    def student_features(self, s: DistillOutput) -> list[Tensor]:
        """Deepest first: the pooled vector as a 1x1 map, then the stage outputs from the last to the first."""
        stages = s.preact_feats if self.cfg.student_preact else s.feats
        x = list(stages[1:]) + [s.pooled[:, :, None, None]]
        return x[::-1]

    def fuse(self, s: DistillOutput) -> list[Tensor]:
        """The ABF outputs, shallow to deep (the order of the teacher's features)."""
        x = self.student_features(s)
        out, res = self.abfs[0](x[0], out_shape=self.out_shapes[0])
        results = [out]
        for feature, abf, out_shape in zip(x[1:], self.abfs[1:], self.out_shapes[1:]):
            out, res = abf(feature, res, tuple(feature.shape[-2:]), out_shape)
            results.insert(0, out)
        return results

    def teacher_features(self, t: DistillOutput) -> list[Tensor]:
        """Shallow to deep: the paired pre-activation stage outputs, then the pooled vector as a 1x1 map."""
        return [t.preact_feats[j].detach() for j in self.t_stage] + [t.pooled.detach()[:, :, None, None]]

    def forward(self, s: DistillOutput, t: DistillOutput | None, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        assert t is not None
        loss = hcl_loss(self.fuse(s), self.teacher_features(t))
        return {"reviewkd": self.cfg.beta * self.warmup_factor * loss}
