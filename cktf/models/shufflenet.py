"""ShuffleNet V1 (Zhang et al., CVPR 2018) and V2 (Ma et al., ECCV 2018), the CIFAR variants used by CRD.

Source: RepDistiller ``models/ShuffleNetv1.py`` (``ShuffleV1``: groups 3, widths 240/480/960, blocks 4/8/4) and
``models/ShuffleNetv2.py`` (``ShuffleV2``: net size 1, widths 116/232/464, head 1024, blocks 3/7/3); Tian,
Krishnan & Isola, ICLR 2020. CKTF (Zhao, Chen & Zhao, ICASSP 2023) keeps them but has no stage features for
them (``ST.determine_avgpool`` raises ``NotImplementedError``), hence ``cktf_official = False``. Same layers,
widths, strides, (PyTorch default) initialisation and state-dict keys as RepDistiller.

Both use a 1x1 stem conv (24) + BN + ReLU at full resolution and three stages that each halve the resolution,
then ``avg_pool2d(4)`` (32x32 inputs only) and a linear classifier.

Features (``forward_distill``), M = 4 modules, as RepDistiller's ``is_feat``:

* ``feats``: [stem, layer1, layer2, layer3], post-ReLU (V2: the shuffled concatenation);
* ``preact_feats``: the stem output, then each stage's last block before its final ReLU (RepDistiller's
  ``preact=True``). V1: the residual sum / concatenation. V2: ``cat([x1, bn3(conv3(.))])`` *before* the channel
  shuffle, so its channel order differs from ``feats`` (kept as in the official code);
* ``stage_blocks``: every block's output; for V2 the stage's leading ``DownBlock`` counts as a block
  (4, 8, 4 entries). The last entry is ``feats[k+1]``;
* ``pooled``: V1: layer3 average-pooled (960); V2: ``relu(bn2(conv2(layer3)))`` average-pooled (1024);
* ``feature_pool = "global"``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._base import DistillModel, DistillOutput, FeatureInfo, run_stages
from ._registry import MODELS

__all__ = ["ShuffleV1Block", "ShuffleNetV1", "ShuffleV2DownBlock", "ShuffleV2Block", "ShuffleNetV2"]


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """[N, C, H, W] -> [N, g, C/g, H, W] -> [N, C/g, g, H, W] -> [N, C, H, W]."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).permute(0, 2, 1, 3, 4).reshape(n, c, h, w)


# ----------------------------------------------------------------------------------------------------- ShuffleNet V1


class ShuffleV1Block(nn.Module):
    """Grouped 1x1, shuffle, 3x3 depthwise (strided), grouped 1x1; add, or concat with a 3x3 avg-pooled input."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, groups: int):
        super().__init__()
        self.stride = stride
        mid_planes = int(out_planes / 4)
        g = 1 if in_planes == 24 else groups
        self.shuffle_groups = g
        self.conv1 = nn.Conv2d(in_planes, mid_planes, kernel_size=1, groups=g, bias=False)
        self.bn1 = nn.BatchNorm2d(mid_planes)
        self.conv2 = nn.Conv2d(
            mid_planes, mid_planes, kernel_size=3, stride=stride, padding=1, groups=mid_planes, bias=False
        )
        self.bn2 = nn.BatchNorm2d(mid_planes)
        self.conv3 = nn.Conv2d(mid_planes, out_planes, kernel_size=1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = nn.Sequential(nn.AvgPool2d(3, stride=2, padding=1)) if stride == 2 else nn.Sequential()

    def forward_preact(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Return ``(relu(z), z)``."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = channel_shuffle(out, self.shuffle_groups)
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        res = self.shortcut(x)
        preact = torch.cat([out, res], 1) if self.stride == 2 else out + res
        return F.relu(preact), preact

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_preact(x)[0]


class ShuffleNetV1(DistillModel):
    """RepDistiller's CIFAR ShuffleNet (V1).

    Args:
        out_planes: widths of the three stages.
        num_blocks: blocks per stage.
        groups: group count of the grouped 1x1 convs.
        num_classes: classifier outputs.
    """

    def __init__(self, out_planes: list[int], num_blocks: list[int], groups: int, num_classes: int = 100):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 24, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        self.in_planes = 24
        self.layer1 = self._make_layer(out_planes[0], num_blocks[0], groups)
        self.layer2 = self._make_layer(out_planes[1], num_blocks[1], groups)
        self.layer3 = self._make_layer(out_planes[2], num_blocks[2], groups)
        self.linear = nn.Linear(out_planes[2], num_classes)

        self.num_classes = num_classes
        self.num_features = out_planes[2]
        self.input_sizes = (32,)
        self.feature_pool = "global"
        self.cktf_official = False
        self.feature_info = (
            FeatureInfo("stem", 24, 1, 1),
            FeatureInfo("layer1", out_planes[0], 2, num_blocks[0]),
            FeatureInfo("layer2", out_planes[1], 4, num_blocks[1]),
            FeatureInfo("layer3", out_planes[2], 8, num_blocks[2]),
        )

    def _make_layer(self, out_planes: int, num_blocks: int, groups: int) -> nn.Sequential:
        layers = []
        for i in range(num_blocks):
            cat_planes = self.in_planes if i == 0 else 0
            layers.append(ShuffleV1Block(self.in_planes, out_planes - cat_planes, 2 if i == 0 else 1, groups))
            self.in_planes = out_planes
        return nn.Sequential(*layers)

    def _stem(self, x: Tensor) -> Tensor:
        return F.relu(self.bn1(self.conv1(x)))

    def _head(self, x: Tensor) -> tuple[Tensor, Tensor]:
        pooled = F.avg_pool2d(x, 4).flatten(1)
        return pooled, self.linear(pooled)

    def forward(self, x: Tensor) -> Tensor:
        x = self.layer3(self.layer2(self.layer1(self._stem(x))))
        return self._head(x)[1]

    def forward_distill(self, x: Tensor) -> DistillOutput:
        stem = self._stem(x)
        x, feats, preacts, stage_blocks = run_stages(stem, (self.layer1, self.layer2, self.layer3))
        pooled, logits = self._head(x)
        return DistillOutput((stem, *feats), (stem, *preacts), tuple(stage_blocks), pooled, logits)

    def classifier_module(self) -> nn.Linear:
        return self.linear


# ----------------------------------------------------------------------------------------------------- ShuffleNet V2


class ShuffleV2Block(nn.Module):
    """Split channels in half; 1x1, 3x3 depthwise, 1x1 on the second half; concat and shuffle."""

    def __init__(self, in_channels: int, split_ratio: float = 0.5):
        super().__init__()
        self.split_ratio = split_ratio
        c = int(in_channels * split_ratio)
        self.conv1 = nn.Conv2d(c, c, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, kernel_size=3, stride=1, padding=1, groups=c, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.conv3 = nn.Conv2d(c, c, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(c)

    def forward_preact(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Return ``(output, cat([x1, bn3(conv3(.))]))``; the second is RepDistiller's (unshuffled) preact."""
        c = int(x.size(1) * self.split_ratio)
        x1, x2 = x[:, :c], x[:, c:]
        out = F.relu(self.bn1(self.conv1(x2)))
        out = self.bn2(self.conv2(out))
        pre = self.bn3(self.conv3(out))
        out = channel_shuffle(torch.cat([x1, F.relu(pre)], 1), 2)
        return out, torch.cat([x1, pre], 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_preact(x)[0]


class ShuffleV2DownBlock(nn.Module):
    """Stride-2 block: both branches downsample, concat and shuffle (doubles the width)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        mid = out_channels // 2
        # left
        self.conv1 = nn.Conv2d(in_channels, in_channels, 3, stride=2, padding=1, groups=in_channels, bias=False)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv2 = nn.Conv2d(in_channels, mid, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        # right
        self.conv3 = nn.Conv2d(in_channels, mid, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = nn.Conv2d(mid, mid, kernel_size=3, stride=2, padding=1, groups=mid, bias=False)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = nn.Conv2d(mid, mid, kernel_size=1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid)

    def forward(self, x: Tensor) -> Tensor:
        out1 = self.bn1(self.conv1(x))
        out1 = F.relu(self.bn2(self.conv2(out1)))
        out2 = F.relu(self.bn3(self.conv3(x)))
        out2 = self.bn4(self.conv4(out2))
        out2 = F.relu(self.bn5(self.conv5(out2)))
        return channel_shuffle(torch.cat([out1, out2], 1), 2)


class ShuffleNetV2(DistillModel):
    """RepDistiller's CIFAR ShuffleNetV2.

    Args:
        out_channels: widths of the three stages and of the 1x1 head conv.
        num_blocks: basic blocks per stage (after the stage's down-sampling block).
        num_classes: classifier outputs.
    """

    def __init__(self, out_channels: list[int], num_blocks: list[int], num_classes: int = 100):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 24, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        self.in_channels = 24
        self.layer1 = self._make_layer(out_channels[0], num_blocks[0])
        self.layer2 = self._make_layer(out_channels[1], num_blocks[1])
        self.layer3 = self._make_layer(out_channels[2], num_blocks[2])
        self.conv2 = nn.Conv2d(out_channels[2], out_channels[3], kernel_size=1, stride=1, padding=0, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels[3])
        self.linear = nn.Linear(out_channels[3], num_classes)

        self.num_classes = num_classes
        self.num_features = out_channels[3]
        self.input_sizes = (32,)
        self.feature_pool = "global"
        self.cktf_official = False
        self.feature_info = (
            FeatureInfo("stem", 24, 1, 1),
            FeatureInfo("layer1", out_channels[0], 2, num_blocks[0] + 1),
            FeatureInfo("layer2", out_channels[1], 4, num_blocks[1] + 1),
            FeatureInfo("layer3", out_channels[2], 8, num_blocks[2] + 1),
        )

    def _make_layer(self, out_channels: int, num_blocks: int) -> nn.Sequential:
        layers: list[nn.Module] = [ShuffleV2DownBlock(self.in_channels, out_channels)]
        layers += [ShuffleV2Block(out_channels) for _ in range(num_blocks)]
        self.in_channels = out_channels
        return nn.Sequential(*layers)

    def _stem(self, x: Tensor) -> Tensor:
        return F.relu(self.bn1(self.conv1(x)))

    def _head(self, x: Tensor) -> tuple[Tensor, Tensor]:
        pooled = F.avg_pool2d(F.relu(self.bn2(self.conv2(x))), 4).flatten(1)
        return pooled, self.linear(pooled)

    def forward(self, x: Tensor) -> Tensor:
        x = self.layer3(self.layer2(self.layer1(self._stem(x))))
        return self._head(x)[1]

    def forward_distill(self, x: Tensor) -> DistillOutput:
        x = self._stem(x)
        feats, preacts, stage_blocks = [x], [x], []
        for layer in (self.layer1, self.layer2, self.layer3):
            x = layer[0](x)
            outs = [x]
            for block in layer[1:]:
                x, pre = block.forward_preact(x)
                outs.append(x)
            feats.append(x)
            preacts.append(pre)
            stage_blocks.append(tuple(outs))
        pooled, logits = self._head(x)
        return DistillOutput(tuple(feats), tuple(preacts), tuple(stage_blocks), pooled, logits)

    def classifier_module(self) -> nn.Linear:
        return self.linear


@MODELS.register("shufflev1", family="shufflenet", input_sizes=(32,))
def shufflev1(num_classes: int) -> ShuffleNetV1:
    """ShuffleNet V1, groups 3, widths 240/480/960, blocks 4/8/4 (RepDistiller ``ShuffleV1``)."""
    return ShuffleNetV1([240, 480, 960], [4, 8, 4], groups=3, num_classes=num_classes)


@MODELS.register("shufflev2", family="shufflenet", input_sizes=(32,))
def shufflev2(num_classes: int) -> ShuffleNetV2:
    """ShuffleNet V2, net size 1: widths 116/232/464, head 1024, blocks 3/7/3 (RepDistiller ``ShuffleV2``)."""
    return ShuffleNetV2([116, 232, 464, 1024], [3, 7, 3], num_classes=num_classes)
