"""The one feature contract every model of the zoo follows.

``forward(x)`` returns logits only (plain path, ``torch.compile`` friendly).
``forward_distill(x)`` always returns a :class:`DistillOutput` with the same fields, whatever
the family, so distillers never depend on flags or tuple positions (docs/algorithm.md §4).

Terminology (docs/algorithm.md §4; the paper's Section 2):

* the *M intermediate modules* are the stem followed by every stage; ``feature_info`` has one
  entry per module, in that order;
* ``feats[i]`` is the module output the official code exposes with ``is_feat=True``
  (post-ReLU for CIFAR ResNet / VGG / ResNet-64, the residual sum for WRN);
* ``preact_feats[i]`` is the pre-activation version (``preact=True`` in RepDistiller; for the
  stem and for families without one it is the same tensor as ``feats[i]``);
* ``stage_blocks[k]`` lists the output of every block of stage ``k`` (``block.out`` in CKTF's
  ``flatGroupOut``); its last element is ``feats[k + 1]``;
* ``pooled`` is the penultimate vector fed to the classifier (``num_features`` wide);
* ``pool_feature(t)`` is the family's own pooling used by CKTF on intermediate features
  (the fixed ``AvgPool2d(8)`` for CIFAR ResNet/WRN, global average pooling otherwise).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class FeatureInfo:
    """Static description of one intermediate module's output."""

    name: str  # e.g. "stem", "layer1", "block2"
    num_chs: int  # channels of feats[i] (and of every block in stage_blocks[i-1])
    reduction: int  # input side / feature side, e.g. 1, 2, 4 for CIFAR ResNet at 32x32
    num_blocks: int  # number of blocks in the stage (1 for the stem)


class DistillOutput(NamedTuple):
    """Everything a distiller may read from one forward pass."""

    feats: tuple[Tensor, ...]  # M module outputs [B, C_i, H_i, W_i]
    preact_feats: tuple[Tensor, ...]  # M pre-activation outputs, same shapes
    stage_blocks: tuple[tuple[Tensor, ...], ...]  # M-1 stages, each: every block's output
    pooled: Tensor  # [B, num_features]
    logits: Tensor  # [B, num_classes]


class DistillModel(nn.Module):
    """Base class: subclasses set the static attributes in ``__init__`` and implement both forwards."""

    #: one entry per intermediate module (stem + stages)
    feature_info: tuple[FeatureInfo, ...]
    #: width of the penultimate vector
    num_features: int
    num_classes: int
    #: input side lengths the architecture is built for (checked before training starts)
    input_sizes: tuple[int, ...] = (32,)
    #: "avg8" (fixed AvgPool2d(8), CIFAR ResNet/WRN) or "global" (adaptive average pooling)
    feature_pool: str = "global"
    #: False where the official CKTF code has no stage features (MobileNetV2, ShuffleNet)
    cktf_official: bool = True
    #: where the model comes from: ``""`` for the zoo, else ``tv:NAME``, ``timm:NAME`` or ``module:pkg.mod:factory``
    #: (docs/models.md)
    source: str = ""
    #: the family CKTF's official pairing stays within; ``""``: the zoo class (:meth:`family_name`)
    family: str = ""

    def family_name(self) -> str:
        """The model's family: ``family`` when set (library models: ``tv:resnet``), else ``zoo:<class>``."""
        return self.family or f"zoo:{type(self).__name__}"

    def forward(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward_distill(self, x: Tensor) -> DistillOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def pool_feature(self, t: Tensor) -> Tensor:
        """Pool and flatten an intermediate feature the way CKTF's ``flatGroupOut`` does."""
        if self.feature_pool == "avg8":
            return F.avg_pool2d(t, 8).flatten(1) if t.shape[-1] >= 8 else t.flatten(1)
        return F.adaptive_avg_pool2d(t, 1).flatten(1)

    def classifier_module(self) -> nn.Module:
        """The final linear layer (replaced by the linear probe in transfer learning)."""
        raise NotImplementedError

    def check_input_size(self, size: int) -> None:
        if size not in self.input_sizes:
            raise ValueError(
                f"{type(self).__name__} expects {'/'.join(map(str, self.input_sizes))}x"
                f"{'/'.join(map(str, self.input_sizes))} inputs, got {size}x{size}"
            )

    def feature_shapes(self, size: int) -> list[tuple[int, int, int]]:
        """(C, H, W) of every module output for a ``size`` x ``size`` input, from ``feature_info``.

        ``reduction`` is exact for ``input_sizes[0]``; a family whose layout depends on the input size
        overrides this (VGG pools block3 only for 64x64 inputs, so block4 is reduced 16x there, not 8x).
        """
        return [(fi.num_chs, size // fi.reduction, size // fi.reduction) for fi in self.feature_info]


def run_stages(
    x: Tensor, stages: Sequence[nn.Module]
) -> tuple[Tensor, list[Tensor], list[Tensor], list[tuple[Tensor, ...]]]:
    """Run stages of blocks that expose ``forward_preact(x) -> (out, preact)``, collecting the contract's lists.

    Returns the last output and, per stage, its output (``feats``), its last block's pre-activation
    (``preact_feats``) and every block's output (``stage_blocks``).
    """
    feats, preacts, stage_blocks = [], [], []
    for stage in stages:
        outs = []
        for block in stage:
            x, pre = block.forward_preact(x)
            outs.append(x)
        feats.append(x)
        preacts.append(pre)
        stage_blocks.append(tuple(outs))
    return x, feats, preacts, stage_blocks


def init_vgg_style(model: nn.Module) -> None:
    """The initialisation of RepDistiller's VGG and MobileNetV2: He-normal convs (fan-out), N(0, 0.01) linears."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)
