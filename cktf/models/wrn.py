"""Wide residual networks (Zagoruyko & Komodakis, BMVC 2016) as used by CRD and CKTF.

Source: RepDistiller ``models/wrn.py`` (Tian, Krishnan & Isola, ICLR 2020) and its CKTF fork ``kaiqi123/CKTF``
``models/wrn.py`` (Zhao, Chen & Zhao, ICASSP 2023). Same layers, widths, strides, initialisation, dropout 0
and state-dict keys (``conv1``, ``block{1,2,3}.layer.{i}``, ``convShortcut``, ``bn1``, ``fc``).

Architecture (WRN-d-k): 3x3 conv to 16 channels (no BN), three stages of ``n = (d - 4) / 6`` pre-activation
basic blocks with widths 16k, 32k, 64k (strides 1, 2, 2), a final BN + ReLU, ``avg_pool2d(8)`` and a linear
classifier.

Features (``forward_distill``), M = 4 modules:

* ``feats``: [conv1 output (no BN), block1, block2, block3]: the residual sums, i.e. *pre*-activation
  tensors (``is_feat=True``);
* ``preact_feats`` (RepDistiller ``preact=True``): the stem output, then ``block2.layer[0].bn1(f1)``,
  ``block3.layer[0].bn1(f2)`` and ``self.bn1(f3)``: each stage output after the next BN, before its ReLU.
  These tensors are taken from inside the next block / the head, where the network computes them anyway,
  instead of calling the BNs a second time as RepDistiller does (values are identical, and BN running
  statistics are updated once per step instead of twice);
* ``stage_blocks``: every basic block's output (the residual sum, CKTF's ``block.out``); the last is ``feats[k+1]``;
* ``pooled``: ``relu(bn1(f3))`` average-pooled over 8x8 and flattened (64k wide);
* ``feature_pool = "avg8"``: CKTF pools intermediate features with ``F.avg_pool2d(t, 8)``.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

from ._base import DistillModel, DistillOutput, FeatureInfo
from ._registry import MODELS

__all__ = ["WideBasicBlock", "NetworkBlock", "WideResNet"]


class WideBasicBlock(nn.Module):
    """Pre-activation block: BN-ReLU-conv3x3-BN-ReLU-conv3x3 plus (1x1 conv when widths differ) shortcut."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = nn.Conv2d(out_planes, out_planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.drop_rate = drop_rate
        self.equal_in_out = in_planes == out_planes
        self.convShortcut = (  # the official state-dict key
            None
            if self.equal_in_out
            else nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, padding=0, bias=False)
        )

    def forward_bn(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Return ``(block output, bn1(x))``; ``bn1(x)`` is the previous stage's pre-activation feature."""
        pre = self.bn1(x)
        act = F.relu(pre)
        out = F.relu(self.bn2(self.conv1(act)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        out = self.conv2(out)
        shortcut = x if self.convShortcut is None else self.convShortcut(act)
        return shortcut + out, pre

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_bn(x)[0]


class NetworkBlock(nn.Module):
    """One stage: ``nb_layers`` blocks in ``self.layer`` (an ``nn.Sequential``, official key layout)."""

    def __init__(self, nb_layers: int, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0):
        super().__init__()
        self.layer = nn.Sequential(
            *[
                WideBasicBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1, drop_rate)
                for i in range(nb_layers)
            ]
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


class WideResNet(DistillModel):
    """WRN-depth-widen_factor for 32x32 inputs (RepDistiller ``WideResNet``).

    Args:
        depth: ``6n + 4``.
        num_classes: classifier outputs.
        widen_factor: k.
        drop_rate: dropout between the two convs of a block (0 in RepDistiller/CKTF).
    """

    def __init__(self, depth: int, num_classes: int = 100, widen_factor: int = 1, drop_rate: float = 0.0):
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"depth should be 6n+4, got {depth}")
        n = (depth - 4) // 6
        ch = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(3, ch[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.block1 = NetworkBlock(n, ch[0], ch[1], 1, drop_rate)
        self.block2 = NetworkBlock(n, ch[1], ch[2], 2, drop_rate)
        self.block3 = NetworkBlock(n, ch[2], ch[3], 2, drop_rate)
        self.bn1 = nn.BatchNorm2d(ch[3])
        self.fc = nn.Linear(ch[3], num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

        self.num_classes = num_classes
        self.num_features = ch[3]
        self.input_sizes = (32,)
        self.feature_pool = "avg8"
        self.cktf_official = True
        self.feature_info = (
            FeatureInfo("stem", ch[0], 1, 1),
            FeatureInfo("block1", ch[1], 1, n),
            FeatureInfo("block2", ch[2], 2, n),
            FeatureInfo("block3", ch[3], 4, n),
        )

    def _head(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        pre = self.bn1(x)
        pooled = F.avg_pool2d(F.relu(pre), 8).flatten(1)
        return pre, pooled, self.fc(pooled)

    def forward(self, x: Tensor) -> Tensor:
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        return self._head(x)[2]

    def forward_distill(self, x: Tensor) -> DistillOutput:
        x = self.conv1(x)
        feats, preacts, stage_blocks = [x], [x], []
        for k, stage in enumerate((self.block1, self.block2, self.block3)):
            outs = []
            for i, block in enumerate(stage.layer):
                x, pre = block.forward_bn(x)
                if i == 0 and k > 0:  # bn1 of the first block of stage k+1 = preact of stage k
                    preacts.append(pre)
                outs.append(x)
            feats.append(x)
            stage_blocks.append(tuple(outs))
        pre, pooled, logits = self._head(x)
        preacts.append(pre)
        return DistillOutput(tuple(feats), tuple(preacts), tuple(stage_blocks), pooled, logits)

    def classifier_module(self) -> nn.Linear:
        return self.fc


@MODELS.register("wrn_16_1", family="wrn", input_sizes=(32,))
def wrn_16_1(num_classes: int) -> WideResNet:
    """WRN-16-1."""
    return WideResNet(16, num_classes, widen_factor=1)


@MODELS.register("wrn_16_2", family="wrn", input_sizes=(32,))
def wrn_16_2(num_classes: int) -> WideResNet:
    """WRN-16-2."""
    return WideResNet(16, num_classes, widen_factor=2)


@MODELS.register("wrn_40_1", family="wrn", input_sizes=(32,))
def wrn_40_1(num_classes: int) -> WideResNet:
    """WRN-40-1."""
    return WideResNet(40, num_classes, widen_factor=1)


@MODELS.register("wrn_40_2", family="wrn", input_sizes=(32,))
def wrn_40_2(num_classes: int) -> WideResNet:
    """WRN-40-2."""
    return WideResNet(40, num_classes, widen_factor=2)
