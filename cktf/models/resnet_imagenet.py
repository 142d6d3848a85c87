"""ResNet-10/18/34/50 for small inputs (He et al., CVPR 2016), as used by CRD and CKTF on CIFAR and Tiny-ImageNet.

Source: RepDistiller ``models/resnetv2.py`` (``ResNet50``, Tian, Krishnan & Isola, ICLR 2020) and its CKTF fork
``kaiqi123/CKTF`` ``models/resnetv2.py`` (adds ResNet10/18/34 and ``flatGroupOut``; Zhao, Chen & Zhao,
ICASSP 2023). Same layers, widths, strides, initialisation and state-dict keys (``conv1``, ``bn1``,
``layer{1..4}.{i}``, ``shortcut``, ``linear``), so official checkpoints load unchanged.

Architecture: 3x3 stride-1 stem conv (64) + BN + ReLU, no max pooling; layer1..4 with widths 64, 128, 256, 512
(times the block expansion) and strides 1, 2, 2, 2; adaptive global average pooling and a linear classifier.
Blocks: basic [1, 1, 1, 1] (resnet10), [2, 2, 2, 2] (resnet18), [3, 4, 6, 3] (resnet34); bottleneck
[3, 4, 6, 3] (resnet50). The names are lowercase and distinct from the CIFAR ResNets (``resnet8..110``).

Features (``forward_distill``), M = 5 modules:

* ``feats``: [stem (conv1 + BN + ReLU), layer1, layer2, layer3, layer4], post-ReLU;
* ``preact_feats``: the stem output, then each stage's last block before its final ReLU (the residual sum);
* ``stage_blocks``: every block's post-ReLU output (CKTF ``block.out``); the last is ``feats[k+1]``;
* ``pooled``: layer4 globally average-pooled and flattened (512, or 2048 for resnet50);
* ``feature_pool = "global"`` (CKTF pools intermediate features with the same ``AdaptiveAvgPool2d(1)``).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ._base import DistillModel, DistillOutput, FeatureInfo, run_stages
from ._registry import MODELS

__all__ = ["BasicBlock", "Bottleneck", "ResNetV2"]


def _shortcut(in_planes: int, out_planes: int, stride: int) -> nn.Sequential:
    """Identity (an empty ``nn.Sequential``, as in the official code) or 1x1 conv + BN."""
    if stride == 1 and in_planes == out_planes:
        return nn.Sequential()
    return nn.Sequential(
        nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(out_planes)
    )


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers plus shortcut."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _shortcut(in_planes, self.expansion * planes, stride)

    def forward_preact(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Return ``(relu(z), z)`` where ``z`` is the residual sum."""
        out = F.relu(self.bn1(self.conv1(x)))
        preact = self.bn2(self.conv2(out)) + self.shortcut(x)
        return F.relu(preact), preact

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_preact(x)[0]


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand (x4), each with BN, plus shortcut."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, self.expansion * planes, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(self.expansion * planes)
        self.shortcut = _shortcut(in_planes, self.expansion * planes, stride)

    def forward_preact(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Return ``(relu(z), z)`` where ``z`` is the residual sum."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        preact = self.bn3(self.conv3(out)) + self.shortcut(x)
        return F.relu(preact), preact

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_preact(x)[0]


class ResNetV2(DistillModel):
    """The RepDistiller/CKTF ``resnetv2.ResNet`` (no max pooling, stride-1 3x3 stem).

    Args:
        block: :class:`BasicBlock` or :class:`Bottleneck`.
        num_blocks: blocks per stage (4 entries).
        num_classes: classifier outputs.
        zero_init_residual: zero the last BN of every residual branch (off in the official runs).
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        num_blocks: list[int],
        num_classes: int = 100,
        zero_init_residual: bool = False,
    ):
        super().__init__()
        self.in_planes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1 = self._make_layer(block, 64, num_blocks[0], stride=1)
        self.layer2 = self._make_layer(block, 128, num_blocks[1], stride=2)
        self.layer3 = self._make_layer(block, 256, num_blocks[2], stride=2)
        self.layer4 = self._make_layer(block, 512, num_blocks[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.linear = nn.Linear(512 * block.expansion, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.constant_(m.bn3.weight, 0)
                elif isinstance(m, BasicBlock):
                    nn.init.constant_(m.bn2.weight, 0)

        e = block.expansion
        self.num_classes = num_classes
        self.num_features = 512 * e
        self.input_sizes = (32, 64)
        self.feature_pool = "global"
        self.cktf_official = True
        self.feature_info = (
            FeatureInfo("stem", 64, 1, 1),
            FeatureInfo("layer1", 64 * e, 1, num_blocks[0]),
            FeatureInfo("layer2", 128 * e, 2, num_blocks[1]),
            FeatureInfo("layer3", 256 * e, 4, num_blocks[2]),
            FeatureInfo("layer4", 512 * e, 8, num_blocks[3]),
        )

    def _make_layer(
        self, block: type[BasicBlock] | type[Bottleneck], planes: int, num_blocks: int, stride: int
    ) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (num_blocks - 1):
            layers.append(block(self.in_planes, planes, s))
            self.in_planes = planes * block.expansion
        return nn.Sequential(*layers)

    def _stem(self, x: Tensor) -> Tensor:
        return F.relu(self.bn1(self.conv1(x)))

    def _head(self, x: Tensor) -> tuple[Tensor, Tensor]:
        pooled = self.avgpool(x).flatten(1)
        return pooled, self.linear(pooled)

    def forward(self, x: Tensor) -> Tensor:
        x = self.layer4(self.layer3(self.layer2(self.layer1(self._stem(x)))))
        return self._head(x)[1]

    def forward_distill(self, x: Tensor) -> DistillOutput:
        stem = self._stem(x)
        x, feats, preacts, stage_blocks = run_stages(stem, (self.layer1, self.layer2, self.layer3, self.layer4))
        pooled, logits = self._head(x)
        return DistillOutput((stem, *feats), (stem, *preacts), tuple(stage_blocks), pooled, logits)

    def classifier_module(self) -> nn.Linear:
        return self.linear


@MODELS.register("resnet10", family="resnet_imagenet", input_sizes=(32, 64))
def resnet10(num_classes: int) -> ResNetV2:
    """ResNet-10: basic blocks [1, 1, 1, 1] (CKTF ``ResNet10``)."""
    return ResNetV2(BasicBlock, [1, 1, 1, 1], num_classes)


@MODELS.register("resnet18", family="resnet_imagenet", input_sizes=(32, 64))
def resnet18(num_classes: int) -> ResNetV2:
    """ResNet-18: basic blocks [2, 2, 2, 2] (CKTF ``ResNet18``)."""
    return ResNetV2(BasicBlock, [2, 2, 2, 2], num_classes)


@MODELS.register("resnet34", family="resnet_imagenet", input_sizes=(32, 64))
def resnet34(num_classes: int) -> ResNetV2:
    """ResNet-34: basic blocks [3, 4, 6, 3] (CKTF ``ResNet34``)."""
    return ResNetV2(BasicBlock, [3, 4, 6, 3], num_classes)


@MODELS.register("resnet50", family="resnet_imagenet", input_sizes=(32, 64))
def resnet50(num_classes: int) -> ResNetV2:
    """ResNet-50: bottleneck blocks [3, 4, 6, 3] (RepDistiller/CKTF ``ResNet50``)."""
    return ResNetV2(Bottleneck, [3, 4, 6, 3], num_classes)
