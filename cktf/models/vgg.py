"""VGG with batch normalisation (Simonyan & Zisserman, ICLR 2015), CIFAR/Tiny-ImageNet variant of CRD and CKTF.

Source: RepDistiller ``models/vgg.py`` (``vgg*_bn``, Tian, Krishnan & Isola, ICLR 2020) with the module layout of
its CKTF fork ``kaiqi123/CKTF`` ``models/vgg.py`` (Zhao, Chen & Zhao, ICASSP 2023): every conv-BN-ReLU is a
``VGGBlock`` sub-module, so the state-dict keys are CKTF's (``block{0..4}.{j}.conv2d`` / ``.bn``,
``classifier``) and CKTF checkpoints load unchanged. RepDistiller's keys (``block{0..4}.{0,1,3,4,...}``) differ;
the layers, widths and parameter counts are the same.

Architecture: five blocks of 3x3 conv (with bias) + BN + ReLU layers, configurations (per block)

* ``vgg8``  (S): [64], [128], [256], [512], [512]
* ``vgg11`` (A): [64], [128], [256, 256], [512, 512], [512, 512]
* ``vgg13`` (B): [64, 64], [128, 128], [256, 256], [512, 512], [512, 512]
* ``vgg16`` (D): [64, 64], [128, 128], [256] * 3, [512] * 3, [512] * 3
* ``vgg19`` (E): [64, 64], [128, 128], [256] * 4, [512] * 4, [512] * 4

with 2x2 max pooling after blocks 0, 1 and 2, after block 3 only for 64x64 inputs (the official
``if h == 64: x = self.pool3(x)``), global average pooling after block 4 and ``Linear(512, num_classes)``.

Features (``forward_distill``), M = 5 modules:

* ``feats``: [block0, block1, block2, block3, block4], each post-ReLU and before its max pooling. ``block0`` is the
  stem even when it holds two convs (vgg13/16/19), as in the official code, so it has no ``stage_blocks`` entry;
* ``preact_feats``: the stem output, then each block's last conv-BN before its ReLU (RepDistiller ``preact=True``;
  CKTF's VGG returns post-ReLU tensors there);
* ``stage_blocks``: for block1..4, the output of every conv-BN-ReLU sub-block (CKTF ``blockX.Y.out``); the last is
  ``feats[k+1]``;
* ``pooled``: block4 globally average-pooled and flattened (512);
* ``feature_pool = "global"`` (CKTF pools intermediate features with the same ``AdaptiveAvgPool2d(1)``).

``FeatureInfo.reduction`` is given for 32x32 inputs; with 64x64 inputs block4 is reduced 16x instead of 8x
(the extra ``pool3``), which :meth:`VGG.feature_shapes` accounts for.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ._base import DistillModel, DistillOutput, FeatureInfo, init_vgg_style
from ._registry import MODELS

__all__ = ["VGGBlock", "VGG", "CFGS"]

CFGS: dict[str, list[list[int]]] = {
    "S": [[64], [128], [256], [512], [512]],
    "A": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "B": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "D": [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    "E": [[64, 64], [128, 128], [256, 256, 256, 256], [512, 512, 512, 512], [512, 512, 512, 512]],
}


class VGGBlock(nn.Module):
    """One 3x3 conv (with bias) + BN + ReLU layer (CKTF ``VGGBlock`` with ``batch_norm=True``)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv2d = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward_preact(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Return ``(relu(z), z)`` with ``z = bn(conv(x))``."""
        pre = self.bn(self.conv2d(x))
        return F.relu(pre), pre

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_preact(x)[0]


class VGG(DistillModel):
    """VGG-BN with five conv blocks and a single linear classifier.

    Args:
        cfg: channels of every conv layer, per block (one of :data:`CFGS`).
        num_classes: classifier outputs.
    """

    def __init__(self, cfg: list[list[int]], num_classes: int = 100):
        super().__init__()
        in_chs = [3] + [c[-1] for c in cfg[:-1]]
        self.block0, self.block1, self.block2, self.block3, self.block4 = (
            self._make_layers(c, i) for c, i in zip(cfg, in_chs)
        )
        self.pool0 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool1 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool2 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool3 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool4 = nn.AdaptiveAvgPool2d((1, 1))
        self.classifier = nn.Linear(512, num_classes)

        init_vgg_style(self)

        self.num_classes = num_classes
        self.num_features = 512
        self.input_sizes = (32, 64)
        self.feature_pool = "global"
        self.cktf_official = True
        self.feature_info = (
            FeatureInfo("stem", cfg[0][-1], 1, 1),
            FeatureInfo("block1", cfg[1][-1], 2, len(cfg[1])),
            FeatureInfo("block2", cfg[2][-1], 4, len(cfg[2])),
            FeatureInfo("block3", cfg[3][-1], 8, len(cfg[3])),
            FeatureInfo("block4", cfg[4][-1], 8, len(cfg[4])),  # 16 for 64x64 inputs, see feature_shapes
        )

    @staticmethod
    def _make_layers(cfg: list[int], in_channels: int) -> nn.Sequential:
        layers = []
        for v in cfg:
            layers.append(VGGBlock(in_channels, v))
            in_channels = v
        return nn.Sequential(*layers)

    def _pool(self, k: int, x: Tensor, h: int) -> Tensor:
        """The pooling after block ``k`` (0..3); none after block3 unless the input is 64x64 (official code)."""
        if k == 3 and h != 64:
            return x
        return (self.pool0, self.pool1, self.pool2, self.pool3)[k](x)

    def _head(self, x: Tensor) -> tuple[Tensor, Tensor]:
        pooled = self.pool4(x).flatten(1)
        return pooled, self.classifier(pooled)

    def forward(self, x: Tensor) -> Tensor:
        h = x.shape[2]
        for k, block in enumerate((self.block0, self.block1, self.block2, self.block3)):
            x = self._pool(k, block(x), h)
        x = self.block4(x)
        return self._head(x)[1]

    def forward_distill(self, x: Tensor) -> DistillOutput:
        h = x.shape[2]
        x = self.block0(x)
        feats, preacts, stage_blocks = [x], [x], []
        x = self._pool(0, x, h)
        for k, block in enumerate((self.block1, self.block2, self.block3, self.block4), start=1):
            outs = []
            for sub in block:
                x, pre = sub.forward_preact(x)
                outs.append(x)
            feats.append(x)
            preacts.append(pre)
            stage_blocks.append(tuple(outs))
            if k < 4:
                x = self._pool(k, x, h)
        pooled, logits = self._head(x)
        return DistillOutput(tuple(feats), tuple(preacts), tuple(stage_blocks), pooled, logits)

    def feature_shapes(self, size: int) -> list[tuple[int, int, int]]:
        """(C, H, W) of every module output; block4 is pooled once more for 64x64 inputs."""
        shapes = super().feature_shapes(size)
        if size == 64:
            c, h, w = shapes[-1]
            shapes[-1] = (c, h // 2, w // 2)
        return shapes

    def classifier_module(self) -> nn.Linear:
        return self.classifier


@MODELS.register("vgg8", family="vgg", input_sizes=(32, 64))
def vgg8(num_classes: int) -> VGG:
    """VGG-8 with BN (configuration S, RepDistiller ``vgg8_bn``)."""
    return VGG(CFGS["S"], num_classes)


@MODELS.register("vgg11", family="vgg", input_sizes=(32, 64))
def vgg11(num_classes: int) -> VGG:
    """VGG-11 with BN (configuration A, RepDistiller ``vgg11_bn``)."""
    return VGG(CFGS["A"], num_classes)


@MODELS.register("vgg13", family="vgg", input_sizes=(32, 64))
def vgg13(num_classes: int) -> VGG:
    """VGG-13 with BN (configuration B, RepDistiller ``vgg13_bn``)."""
    return VGG(CFGS["B"], num_classes)


@MODELS.register("vgg16", family="vgg", input_sizes=(32, 64))
def vgg16(num_classes: int) -> VGG:
    """VGG-16 with BN (configuration D, RepDistiller ``vgg16_bn``)."""
    return VGG(CFGS["D"], num_classes)


@MODELS.register("vgg19", family="vgg", input_sizes=(32, 64))
def vgg19(num_classes: int) -> VGG:
    """VGG-19 with BN (configuration E, RepDistiller ``vgg19_bn``)."""
    return VGG(CFGS["E"], num_classes)
