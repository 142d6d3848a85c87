"""ReviewKD's two pieces: the attention-based fusion block (ABF) and the hierarchical context loss (HCL).

Chen, Liu, Zhao & Jia, "Distilling Knowledge via Knowledge Review", CVPR 2021. Copied from megvii-research/mdistiller
``mdistiller/distillers/ReviewKD.py`` (``ABF``, ``hcl_loss``), which is dvlab-research/ReviewKD
``CIFAR-100/model/reviewkd.py`` (``ABF``, ``hcl``) unchanged: the same layers, initialisation order, attribute names
(official state dicts load) and operations. The one generalisation: sizes may be ``(H, W)`` pairs as well as the
official square side ``int`` (library models at non-square inputs); for square maps it is the official code.
``tests/test_distillers_modern.py`` checks both against values the official code produced.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: the pooling levels of the hierarchical context loss, each weighted half the previous one (``for l in [4, 2, 1]``)
HCL_LEVELS = (4, 2, 1)

Size = int | Sequence[int]


def _hw(size: Size) -> tuple[int, int]:
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))


class ABF(nn.Module):
    """Attention-based fusion: ``conv1`` (1x1 conv + BN) maps the student feature to ``mid_channel``; with ``fuse``,
    the residual of the deeper level is upsampled (nearest) to this level's size and both are mixed by two sigmoid
    attention maps (``att_conv``: 1x1 conv over their concatenation); the result is resized (nearest) to the
    teacher's ``out_shape`` and ``conv2`` (3x3 conv + BN) maps it to ``out_channel``.

    ``forward(x, y, shape, out_shape)`` returns ``(output, residual)`` as upstream: the output is compared to the
    teacher, the residual (``mid_channel`` wide, at ``out_shape``) feeds the next, shallower level. ``shape`` is the
    side of ``x`` (upstream passes it from its config; ``None`` takes ``x``'s own size).
    """

    def __init__(self, in_channel: int, mid_channel: int, out_channel: int, fuse: bool):
        super().__init__()
        self.conv1 = nn.Sequential(
            nn.Conv2d(in_channel, mid_channel, kernel_size=1, bias=False),
            nn.BatchNorm2d(mid_channel),
        )
        self.conv2 = nn.Sequential(
            nn.Conv2d(mid_channel, out_channel, kernel_size=3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(out_channel),
        )
        if fuse:
            self.att_conv: nn.Module | None = nn.Sequential(nn.Conv2d(mid_channel * 2, 2, kernel_size=1), nn.Sigmoid())
        else:
            self.att_conv = None
        nn.init.kaiming_uniform_(self.conv1[0].weight, a=1)
        nn.init.kaiming_uniform_(self.conv2[0].weight, a=1)

    def forward(
        self, x: Tensor, y: Tensor | None = None, shape: Size | None = None, out_shape: Size | None = None
    ) -> tuple[Tensor, Tensor]:
        n, _, h, w = x.shape
        x = self.conv1(x)
        if self.att_conv is not None:
            if y is None:
                raise ValueError("a fusing ABF needs the deeper level's residual")
            y = F.interpolate(y, _hw(shape) if shape is not None else (h, w), mode="nearest")
            z = self.att_conv(torch.cat([x, y], dim=1))
            x = x * z[:, 0].view(n, 1, h, w) + y * z[:, 1].view(n, 1, h, w)
        if out_shape is not None and tuple(x.shape[-2:]) != _hw(out_shape):
            x = F.interpolate(x, _hw(out_shape), mode="nearest")
        return self.conv2(x), x


def hcl_loss(fstudent: Sequence[Tensor], fteacher: Sequence[Tensor]) -> Tensor:
    """Hierarchical context loss: per pair of maps, the MSE at full size plus the MSEs after adaptive average pooling
    to 4x4, 2x2 and 1x1 (only the levels smaller than the map's height), weighted 1, 1/2, 1/4, 1/8 and divided by
    the sum of the weights used; summed over the pairs. Teacher maps are detached."""
    total: Tensor | float = 0.0
    for fs, ft in zip(fstudent, fteacher, strict=True):
        ft = ft.detach()
        h = fs.shape[2]
        loss = F.mse_loss(fs, ft, reduction="mean")
        cnt, tot = 1.0, 1.0
        for level in HCL_LEVELS:
            if level >= h:
                continue
            cnt /= 2.0
            loss = loss + F.mse_loss(F.adaptive_avg_pool2d(fs, level), F.adaptive_avg_pool2d(ft, level)) * cnt
            tot += cnt
        total = total + loss / tot
    return total  # type: ignore[return-value]
