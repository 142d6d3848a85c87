"""CIFAR ResNets (He et al., CVPR 2016, section 4.2) as used by CRD and CKTF.

Source: RepDistiller ``models/resnet.py`` (Tian, Krishnan & Isola, ICLR 2020) and its CKTF fork
``kaiqi123/CKTF`` ``models/resnet.py`` (Zhao, Chen & Zhao, ICASSP 2023), which adds ``flatGroupOut``.
Same layers, widths, strides, initialisation and state-dict keys (``conv1``, ``bn1``, ``layer{1,2,3}.{i}``,
``downsample``, ``fc``), so official checkpoints load unchanged.

Architecture: 3x3 stem conv (no stride) + BN + ReLU, three stages of ``n = (depth - 2) / 6`` basic blocks
(strides 1, 2, 2), ``AvgPool2d(8)`` and a linear classifier. ``resnet8..110`` use widths [16, 16, 32, 64],
``resnet8x4`` / ``resnet32x4`` use [32, 64, 128, 256].

Features (``forward_distill``), M = 4 modules:

* ``feats``: [stem (conv1 + BN + ReLU), layer1, layer2, layer3], all post-ReLU (``is_feat=True``);
* ``preact_feats``: the stem output (it has no pre-activation version in the official code), then each
  stage's last block *before* its final ReLU (``preact=True``, i.e. the residual sum);
* ``stage_blocks``: every basic block's post-ReLU output (CKTF's ``block.out``); the last one is ``feats[k+1]``;
* ``pooled``: ``AvgPool2d(8)`` of layer3, flattened (64 or 256 wide);
* ``feature_pool = "avg8"``: CKTF pools intermediate features with the same fixed ``AvgPool2d(8)``.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ._base import DistillModel, DistillOutput, FeatureInfo, run_stages
from ._registry import MODELS

__all__ = ["BasicBlock", "CifarResNet"]


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers and a residual connection (1x1 conv + BN shortcut when the shape changes)."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward_preact(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Return ``(relu(z), z)`` where ``z`` is the residual sum."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        residual = x if self.downsample is None else self.downsample(x)
        preact = out + residual
        return F.relu(preact), preact

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_preact(x)[0]


class CifarResNet(DistillModel):
    """CIFAR ResNet with basic blocks (RepDistiller ``ResNet(depth, num_filters, 'basicblock')``).

    Args:
        depth: total depth ``6n + 2``.
        num_filters: widths of [stem, layer1, layer2, layer3].
        num_classes: classifier outputs.
    """

    def __init__(self, depth: int, num_filters: list[int], num_classes: int = 100):
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"depth should be 6n+2 (e.g. 20, 32, 44, 56, 110), got {depth}")
        n = (depth - 2) // 6
        self.inplanes = num_filters[0]
        self.conv1 = nn.Conv2d(3, num_filters[0], kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(num_filters[0])
        self.layer1 = self._make_layer(num_filters[1], n)
        self.layer2 = self._make_layer(num_filters[2], n, stride=2)
        self.layer3 = self._make_layer(num_filters[3], n, stride=2)
        self.avgpool = nn.AvgPool2d(8)
        self.fc = nn.Linear(num_filters[3] * BasicBlock.expansion, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

        self.num_classes = num_classes
        self.num_features = num_filters[3] * BasicBlock.expansion
        self.input_sizes = (32,)
        self.feature_pool = "avg8"
        self.cktf_official = True
        self.feature_info = (
            FeatureInfo("stem", num_filters[0], 1, 1),
            FeatureInfo("layer1", num_filters[1], 1, n),
            FeatureInfo("layer2", num_filters[2], 2, n),
            FeatureInfo("layer3", num_filters[3], 4, n),
        )

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * BasicBlock.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * BasicBlock.expansion, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * BasicBlock.expansion),
            )
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * BasicBlock.expansion
        layers += [BasicBlock(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def _stem(self, x: Tensor) -> Tensor:
        return F.relu(self.bn1(self.conv1(x)))

    def _head(self, x: Tensor) -> tuple[Tensor, Tensor]:
        pooled = self.avgpool(x).flatten(1)
        return pooled, self.fc(pooled)

    def forward(self, x: Tensor) -> Tensor:
        x = self.layer3(self.layer2(self.layer1(self._stem(x))))
        return self._head(x)[1]

    def forward_distill(self, x: Tensor) -> DistillOutput:
        stem = self._stem(x)
        x, feats, preacts, stage_blocks = run_stages(stem, (self.layer1, self.layer2, self.layer3))
        pooled, logits = self._head(x)
        return DistillOutput((stem, *feats), (stem, *preacts), tuple(stage_blocks), pooled, logits)

    def classifier_module(self) -> nn.Linear:
        return self.fc


_NARROW = [16, 16, 32, 64]
_WIDE = [32, 64, 128, 256]


@MODELS.register("resnet8", family="resnet_cifar", input_sizes=(32,))
def resnet8(num_classes: int) -> CifarResNet:
    """ResNet-8, widths [16, 16, 32, 64]."""
    return CifarResNet(8, _NARROW, num_classes)


@MODELS.register("resnet14", family="resnet_cifar", input_sizes=(32,))
def resnet14(num_classes: int) -> CifarResNet:
    """ResNet-14, widths [16, 16, 32, 64]."""
    return CifarResNet(14, _NARROW, num_classes)


@MODELS.register("resnet20", family="resnet_cifar", input_sizes=(32,))
def resnet20(num_classes: int) -> CifarResNet:
    """ResNet-20, widths [16, 16, 32, 64]."""
    return CifarResNet(20, _NARROW, num_classes)


@MODELS.register("resnet32", family="resnet_cifar", input_sizes=(32,))
def resnet32(num_classes: int) -> CifarResNet:
    """ResNet-32, widths [16, 16, 32, 64]."""
    return CifarResNet(32, _NARROW, num_classes)


@MODELS.register("resnet44", family="resnet_cifar", input_sizes=(32,))
def resnet44(num_classes: int) -> CifarResNet:
    """ResNet-44, widths [16, 16, 32, 64]."""
    return CifarResNet(44, _NARROW, num_classes)


@MODELS.register("resnet56", family="resnet_cifar", input_sizes=(32,))
def resnet56(num_classes: int) -> CifarResNet:
    """ResNet-56, widths [16, 16, 32, 64]."""
    return CifarResNet(56, _NARROW, num_classes)


@MODELS.register("resnet110", family="resnet_cifar", input_sizes=(32,))
def resnet110(num_classes: int) -> CifarResNet:
    """ResNet-110, widths [16, 16, 32, 64]."""
    return CifarResNet(110, _NARROW, num_classes)


@MODELS.register("resnet8x4", family="resnet_cifar", input_sizes=(32,))
def resnet8x4(num_classes: int) -> CifarResNet:
    """ResNet-8x4, widths [32, 64, 128, 256]."""
    return CifarResNet(8, _WIDE, num_classes)


@MODELS.register("resnet32x4", family="resnet_cifar", input_sizes=(32,))
def resnet32x4(num_classes: int) -> CifarResNet:
    """ResNet-32x4, widths [32, 64, 128, 256]."""
    return CifarResNet(32, _WIDE, num_classes)
