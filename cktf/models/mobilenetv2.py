"""MobileNetV2 (Sandler et al., CVPR 2018), the half-width CIFAR variant used by CRD (``mobile_half``).

Source: RepDistiller ``models/mobilenetv2.py`` (``mobile_half = mobilenetv2_T_w(6, 0.5)``, from "Knowledge
Distillation via Route Constrained Optimization"; Tian, Krishnan & Isola, ICLR 2020). CKTF (Zhao, Chen & Zhao,
ICASSP 2023) registers it as ``MobileNetV2`` but has no stage features for it (``ST.determine_avgpool`` raises
``NotImplementedError``), hence ``cktf_official = False``. Same layers, widths, strides, initialisation and
state-dict keys (``conv1``, ``blocks.{g}.{i}.conv``, ``conv2``, ``classifier.0``) as RepDistiller.

Architecture (expansion t = 6, width 0.5, 32x32 inputs): 3x3 stride-2 conv (16) + BN + ReLU; seven groups of
inverted residuals (t, c, n, s) = (1, 8, 1, 1), (6, 12, 2, 1), (6, 16, 3, 2), (6, 32, 4, 2), (6, 48, 3, 1),
(6, 80, 3, 2), (6, 160, 1, 1); 1x1 conv to 1280 + BN + ReLU; ``AvgPool2d(2, ceil_mode=True)``; linear classifier.

Features (``forward_distill``), M = 5 modules, grouped as RepDistiller's ``is_feat`` does:

* ``feats``: [stem (conv1), stage1 = groups 0-1, stage2 = group 2, stage3 = groups 3-4, stage4 = groups 5-6];
  the stage outputs are linear-bottleneck outputs (no ReLU);
* ``preact_feats``: the same tensors as ``feats`` (RepDistiller ignores ``preact`` for this model);
* ``stage_blocks``: the outputs of the inverted residuals of the stage's *last* group (groups 1, 2, 4, 6: 2, 3, 3
  and 1 units), i.e. the units that have the stage's output width; the earlier groups of stages 1, 3 and 4 change
  the width and are left out so every entry has ``num_chs`` channels. The last entry is ``feats[k+1]``;
* ``pooled``: the 1280-channel head output, average-pooled and flattened;
* ``feature_pool = "global"``.
"""

from __future__ import annotations

from torch import Tensor, nn

from ._base import DistillModel, DistillOutput, FeatureInfo, init_vgg_style
from ._registry import MODELS

__all__ = ["InvertedResidual", "MobileNetV2"]

#: (expansion t, channels c, units n, stride s) before the width multiplier; ``expansion`` replaces t = 6
_SETTING = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
#: RepDistiller's stages: the groups whose last output is f1..f4
_STAGES = ((0, 1), (2,), (3, 4), (5, 6))


def _conv_bn(inp: int, oup: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(inp, oup, 3, stride, 1, bias=False), nn.BatchNorm2d(oup), nn.ReLU(inplace=True))


def _conv_1x1_bn(inp: int, oup: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(inp, oup, 1, 1, 0, bias=False), nn.BatchNorm2d(oup), nn.ReLU(inplace=True))


class InvertedResidual(nn.Module):
    """1x1 expand + BN + ReLU, 3x3 depthwise + BN + ReLU, 1x1 linear projection + BN; residual when shapes match."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        self.use_res_connect = stride == 1 and inp == oup
        hidden = inp * expand_ratio
        self.conv = nn.Sequential(
            nn.Conv2d(inp, hidden, 1, 1, 0, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, oup, 1, 1, 0, bias=False),
            nn.BatchNorm2d(oup),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(DistillModel):
    """RepDistiller's CIFAR MobileNetV2.

    Args:
        expansion: T, the expansion ratio of every group but the first.
        width_mult: channel multiplier (the head stays 1280 wide for multipliers <= 1).
        num_classes: classifier outputs.
        input_size: input side (a multiple of 32); sets the final average-pooling kernel.
    """

    def __init__(self, expansion: int = 6, width_mult: float = 0.5, num_classes: int = 100, input_size: int = 32):
        super().__init__()
        if input_size % 32 != 0:
            raise ValueError(f"input_size must be a multiple of 32, got {input_size}")
        input_channel = int(32 * width_mult)
        self.conv1 = _conv_bn(3, input_channel, 2)
        self.blocks = nn.ModuleList()
        widths, strides = [], []
        for t, c, n, s in _SETTING:
            ratio = expansion if t != 1 else 1
            output_channel = int(c * width_mult)
            layers = []
            for stride in [s] + [1] * (n - 1):
                layers.append(InvertedResidual(input_channel, output_channel, stride, ratio))
                input_channel = output_channel
            self.blocks.append(nn.Sequential(*layers))
            widths.append(output_channel)
            strides.append(s)
        self.last_channel = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.conv2 = _conv_1x1_bn(input_channel, self.last_channel)
        self.classifier = nn.Sequential(nn.Linear(self.last_channel, num_classes))
        self.avgpool = nn.AvgPool2d(input_size // 16, ceil_mode=True)

        init_vgg_style(self)

        self.num_classes = num_classes
        self.num_features = self.last_channel
        self.input_sizes = (input_size,)
        self.feature_pool = "global"
        self.cktf_official = False
        info = [FeatureInfo("stem", int(32 * width_mult), 2, 1)]
        reduction = 2
        for k, groups in enumerate(_STAGES, start=1):
            for g in groups:
                reduction *= strides[g]
            last = groups[-1]
            info.append(FeatureInfo(f"stage{k}", widths[last], reduction, _SETTING[last][2]))
        self.feature_info = tuple(info)

    def _head(self, x: Tensor) -> tuple[Tensor, Tensor]:
        pooled = self.avgpool(self.conv2(x)).flatten(1)
        return pooled, self.classifier(pooled)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(x)
        for group in self.blocks:
            x = group(x)
        return self._head(x)[1]

    def forward_distill(self, x: Tensor) -> DistillOutput:
        x = self.conv1(x)
        feats, stage_blocks = [x], []
        for groups in _STAGES:
            for g in groups[:-1]:
                x = self.blocks[g](x)
            outs = []
            for unit in self.blocks[groups[-1]]:
                x = unit(x)
                outs.append(x)
            feats.append(x)
            stage_blocks.append(tuple(outs))
        pooled, logits = self._head(x)
        return DistillOutput(tuple(feats), tuple(feats), tuple(stage_blocks), pooled, logits)

    def classifier_module(self) -> nn.Linear:
        return self.classifier[0]


@MODELS.register("mobilenetv2", family="mobilenetv2", input_sizes=(32,))
def mobilenetv2(num_classes: int) -> MobileNetV2:
    """MobileNetV2 with T = 6 and width 0.5 (RepDistiller ``mobile_half``, CKTF ``MobileNetV2``)."""
    return MobileNetV2(expansion=6, width_mult=0.5, num_classes=num_classes)
