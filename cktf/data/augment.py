"""Batched augmentation on uint8 image tensors, on any device (docs/algorithm.md §6; §8 for STL-10).

Each random transform comes in two halves: a ``*_params`` function draws the per-sample parameters of ``n``
images from a ``torch.Generator`` (a few numbers per image), and an apply function transforms a whole batch
``[B, C, H, W]`` (any strides: a channels-last view of NHWC storage is fine) given its parameters, with no
per-sample Python and no PIL. The loader draws a whole epoch's parameters at once on the CPU and moves them to
the training device once, so the same seed gives the same crops and flips on every device; the
``random_*`` functions draw and apply in one call.

* :func:`crop_flip` (:func:`crop_flip_params`, :func:`random_crop_flip`): ``RandomCrop(size, padding=4)`` +
  ``RandomHorizontalFlip`` (CIFAR); the batch is zero-padded once and the crop and flip are one gather with
  per-sample index arithmetic.
* :func:`resized_crop_flip` (:func:`rrc_params`, :func:`random_resized_crop_flip`): ``RandomResizedCrop(size,
  scale=(0.08, 1), ratio=(3/4, 4/3))`` + flip (Tiny-ImageNet, STL-10); the boxes follow torchvision's 10-attempt
  rule (vectorised) and are resampled bilinearly (row gathers plus one batched matmul with per-sample
  interpolation matrices when every box is enlarged, else ``torchvision.ops.roi_align`` with adaptive sampling,
  which averages when shrinking, i.e. antialiases like PIL).
* :func:`resize_center_crop`: ``Resize(size)`` (or ``Resize(resize)``) + ``CenterCrop(size)`` for evaluation, with
  antialiasing.
* :func:`normalize`: ``ToTensor`` + ``Normalize`` in one fused multiply-add.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

#: attempts per sample before RandomResizedCrop falls back to a centre crop (torchvision's value)
RRC_ATTEMPTS = 10


def _rand(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> Tensor:
    gdev = generator.device if generator is not None else torch.device("cpu")
    return torch.rand(shape, generator=generator, device=gdev).to(device, non_blocking=True)


def crop_flip_params(
    n: int,
    height: int,
    width: int,
    size: int,
    padding: int = 4,
    generator: torch.Generator | None = None,
    flip: bool = True,
) -> Tensor:
    """``n`` draws of ``RandomCrop(size, padding)`` + ``RandomHorizontalFlip``: int64 ``[n, 3]`` = (top, left, flip)
    in the padded image, on the generator's device."""
    gdev = generator.device if generator is not None else torch.device("cpu")
    u = torch.rand((3, n), generator=generator, device=gdev)
    oy = (u[0] * (height + 2 * padding - size + 1)).long()
    ox = (u[1] * (width + 2 * padding - size + 1)).long()
    fl = (u[2] < 0.5).long() if flip else torch.zeros(n, dtype=torch.long, device=gdev)
    return torch.stack([oy, ox, fl], dim=1)


def crop_flip(x: Tensor, params: Tensor, size: int, padding: int = 4) -> Tensor:
    """Apply :func:`crop_flip_params` draws (``params`` on ``x``'s device) to a batch: a crop of the zero-padded batch
    and a horizontal flip, as one gather with per-sample index arithmetic.

    Args:
        x: uint8 (or any dtype) ``[B, C, H, W]``.
        params: int64 ``[B, 3]`` (top, left, flip).
        size: output side (32 for CIFAR).
        padding: zero padding on each border before cropping (4 for CIFAR).

    Returns:
        ``[B, C, size, size]`` of ``x``'s dtype, in channels-last memory layout.
    """
    b, c, h, w = x.shape
    dev = x.device
    xp = F.pad(x.permute(0, 2, 3, 1), (0, 0, padding, padding, padding, padding))  # [B, H+2p, W+2p, C] contiguous
    oy, ox, fl = params.unbind(1)
    ar = torch.arange(size, device=dev)
    rows = oy[:, None] + ar  # [B, S]
    cols = torch.where(fl.bool()[:, None], size - 1 - ar, ar)
    cols = ox[:, None] + cols
    hp, wp = h + 2 * padding, w + 2 * padding
    flat = (torch.arange(b, device=dev)[:, None, None] * hp + rows[:, :, None]) * wp + cols[:, None, :]  # [B, S, S]
    out = xp.reshape(b * hp * wp, c).index_select(0, flat.reshape(-1)).view(b, size, size, c)
    return out.permute(0, 3, 1, 2)


def random_crop_flip(
    x: Tensor, size: int, padding: int = 4, generator: torch.Generator | None = None, flip: bool = True
) -> Tensor:
    """Random ``size`` x ``size`` crop of the zero-padded batch, then a random horizontal flip (p = 0.5): draws
    :func:`crop_flip_params` from ``generator`` and applies :func:`crop_flip`."""
    b, _, h, w = x.shape
    params = crop_flip_params(b, h, w, size, padding, generator, flip).to(x.device, non_blocking=True)
    return crop_flip(x, params, size, padding)


def rrc_boxes(
    n: int,
    height: int,
    width: int,
    scale: Sequence[float] = (0.08, 1.0),
    ratio: Sequence[float] = (3 / 4, 4 / 3),
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> Tensor:
    """``n`` RandomResizedCrop boxes ``(top, left, h, w)`` as float [n, 4], torchvision's rule vectorised.

    Each sample tries ``RRC_ATTEMPTS`` (area, aspect) draws and keeps the first that fits; if none fits
    it takes the centre crop with the aspect ratio clamped to ``ratio`` (``RandomResizedCrop.get_params``).
    """
    device = torch.device(device)
    u = _rand((4, n, RRC_ATTEMPTS), generator, device).double()
    area = height * width
    target = area * (scale[0] + u[0] * (scale[1] - scale[0]))
    log_r = math.log(ratio[0]) + u[1] * (math.log(ratio[1]) - math.log(ratio[0]))
    aspect = torch.exp(log_r)
    w = torch.round(torch.sqrt(target * aspect))
    h = torch.round(torch.sqrt(target / aspect))
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    top = torch.floor(u[2] * (height - h + 1))
    left = torch.floor(u[3] * (width - w + 1))
    first = ok.long().argmax(dim=1, keepdim=True)  # index of the first fitting attempt (0 if none)
    pick = lambda t: t.gather(1, first).squeeze(1)  # noqa: E731
    boxes = torch.stack([pick(top), pick(left), pick(h), pick(w)], dim=1)
    # fallback: centre crop with the aspect ratio clamped into `ratio`
    in_ratio = width / height
    if in_ratio < min(ratio):
        fw, fh = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        fh, fw = height, int(round(height * max(ratio)))
    else:
        fw, fh = width, height
    fallback = torch.tensor([(height - fh) // 2, (width - fw) // 2, fh, fw], dtype=boxes.dtype, device=device)
    return torch.where(ok.any(dim=1)[:, None], boxes, fallback).float()


def rrc_params(
    n: int,
    height: int,
    width: int,
    scale: Sequence[float] = (0.08, 1.0),
    ratio: Sequence[float] = (3 / 4, 4 / 3),
    generator: torch.Generator | None = None,
    flip: bool = True,
) -> Tensor:
    """``n`` draws of ``RandomResizedCrop`` + flip: float ``[n, 5]`` = (top, left, h, w, flip), on the generator's
    device (:func:`rrc_boxes`, then one flip draw per sample)."""
    gdev = generator.device if generator is not None else torch.device("cpu")
    boxes = rrc_boxes(n, height, width, scale, ratio, generator, gdev)
    flips = (torch.rand((n,), generator=generator, device=gdev) < 0.5) if flip else torch.zeros(n, device=gdev)
    return torch.cat([boxes, flips.float()[:, None]], dim=1)


def resized_crop_flip(x: Tensor, params: Tensor, size: int) -> Tensor:
    """Apply :func:`rrc_params` draws (``params`` on ``x``'s device) to a batch.

    Args:
        x: uint8 or float ``[B, C, H, W]`` (pixel values 0..255; a channels-last view of NHWC storage is
            read without a copy).
        params: float ``[B, 5]`` (top, left, h, w, flip).
        size: output side (64 for Tiny-ImageNet and STL-10).

    Returns:
        float32 ``[B, C, size, size]`` (values 0..255). Boxes are resampled bilinearly like torchvision's resize
        (pixel centres, ``align_corners=False``); when a box is larger than ``size`` several samples per output
        pixel are averaged (``roi_align``, antialiasing). Unlike crop-then-resize, border pixels may interpolate up
        to half a pixel into the image outside the box.
    """
    _, _, h, w = x.shape
    boxes, flips = params[:, :4], params[:, 4] > 0.5
    if h <= size and w <= size:  # every box is enlarged: one bilinear sample per pixel, flip folded in
        return _resample_separable(x, boxes, size, flips)
    out = _resample_roi(x.to(torch.float32, memory_format=torch.contiguous_format), boxes, size)
    return torch.where(flips[:, None, None, None], out.flip(3), out)


def random_resized_crop_flip(
    x: Tensor,
    size: int,
    scale: Sequence[float] = (0.08, 1.0),
    ratio: Sequence[float] = (3 / 4, 4 / 3),
    generator: torch.Generator | None = None,
    flip: bool = True,
) -> Tensor:
    """RandomResizedCrop(``size``) + random horizontal flip of a batch: draws :func:`rrc_params` from ``generator``
    and applies :func:`resized_crop_flip` (see there for the arguments and the resampling)."""
    b, _, h, w = x.shape
    params = rrc_params(b, h, w, scale, ratio, generator, flip).to(x.device, non_blocking=True)
    return resized_crop_flip(x, params, size)


def _resample_roi(x: Tensor, boxes: Tensor, size: int) -> Tensor:
    """Boxes ``(top, left, h, w)`` of ``x`` resized to ``size`` with ``roi_align`` (averages when shrinking)."""
    from torchvision.ops import roi_align

    top, left, bh, bw = boxes.unbind(1)
    idx = torch.arange(x.shape[0], device=x.device, dtype=x.dtype)
    rois = torch.stack([idx, left, top, left + bw, top + bh], dim=1)
    return roi_align(x, rois, output_size=(size, size), spatial_scale=1.0, sampling_ratio=-1, aligned=True)


def _sample_positions(start: Tensor, length: Tensor, size: int, n_in: int, flip: Tensor | None = None) -> Tensor:
    """float64 ``[B, size]``: output pixel ``j`` samples input coordinate ``start + length (j + 1/2) / size - 1/2``
    (pixel centres, ``align_corners=False``), clamped to the image (``padding_mode="border"``), reversed where
    ``flip``."""
    j = torch.arange(size, dtype=torch.float64, device=start.device)
    pos = start.double()[:, None] + length.double()[:, None] * (2 * j + 1) / (2 * size) - 0.5
    if flip is not None:
        pos = torch.where(flip[:, None], pos.flip(1), pos)
    return pos.clamp(0, n_in - 1)


def _interp_matrix(start: Tensor, length: Tensor, size: int, n_in: int, flip: Tensor | None = None) -> Tensor:
    """``[B, size, n_in]`` bilinear weights at :func:`_sample_positions`; coordinates in float64, so the weights are
    exact to fp32 rounding."""
    pos = _sample_positions(start, length, size, n_in, flip)
    i0 = pos.floor()
    w1 = (pos - i0).float()[..., None]
    i0 = i0.long()[..., None]
    m = torch.zeros(start.shape[0], size, n_in, device=start.device)
    m.scatter_add_(2, i0, 1 - w1)
    return m.scatter_add_(2, (i0 + 1).clamp(max=n_in - 1), w1)


def _resample_separable(x: Tensor, boxes: Tensor, size: int, flips: Tensor) -> Tensor:
    """Same as :func:`_resample_roi` for boxes no larger than ``size`` (one sample per pixel), separably.

    Bilinear sampling of an axis-aligned box factorises into a row and a column interpolation. Rows: each output
    row is a blend of two input rows, i.e. two row gathers of the NHWC storage (whole ``W x C`` rows, memory
    copies) and a multiply-add. Columns: one batched matmul with the per-sample interpolation matrix ``Wx``, whose
    rows are reversed where ``flips``. No ``[B, S, S, 2]`` sampling grid (where ``affine_grid`` + ``grid_sample``
    spent most of their time) and no float copy of the whole input.
    """
    b, c, h, w = x.shape
    top, left, bh, bw = boxes.unbind(1)
    r0, r1, a0, a1 = _taps(top, bh, size, h)
    nhwc = x.permute(0, 2, 3, 1).contiguous()  # a view when x is a channels-last view of NHWC storage
    rows = nhwc.reshape(b * h, w * c)
    base = (torch.arange(b, device=x.device) * h)[:, None]
    t = rows.index_select(0, (base + r0).view(-1)).view(b, size, w, c).float().mul_(a0.view(b, size, 1, 1))
    t.addcmul_(rows.index_select(0, (base + r1).view(-1)).view(b, size, w, c).float(), a1.view(b, size, 1, 1))
    wx = _interp_matrix(left, bw, size, w, flips)  # [B, S, W]
    out = torch.bmm(wx, t.permute(0, 2, 1, 3).reshape(b, w, size * c))  # [B, S (cols), S (rows) * C]
    return out.view(b, size, size, c).permute(0, 3, 2, 1)  # [B, C, rows, cols]


def _taps(start: Tensor, length: Tensor, size: int, n_in: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The two bilinear taps of each output pixel along one axis: indices ``i0, i1`` [B, size] and weights
    ``w0, w1`` (the non-zeros of a row of :func:`_interp_matrix`)."""
    pos = _sample_positions(start, length, size, n_in)
    i0 = pos.floor()
    w1 = (pos - i0).float()
    i0 = i0.long()
    return i0, (i0 + 1).clamp(max=n_in - 1), 1 - w1, w1


def resize_center_crop(x: Tensor, size: int, resize: int | None = None) -> Tensor:
    """``Resize(resize or size)`` (shorter side, bilinear, antialias) + ``CenterCrop(size)``, batched (evaluation
    transform; ``resize=256, size=224`` is torchvision's ImageNet evaluation).

    Returns ``x`` unchanged (same dtype) when ``H == W == size``; a crop of ``x`` (same dtype) when ``resize`` is
    given and is already its shorter side; else float32 values 0..255.
    """
    b, c, h, w = x.shape
    target = int(resize or size)
    if h == size and w == size:
        return x
    if resize is not None and min(h, w) == target:
        nh, nw, y = h, w, x
    else:
        if h <= w:
            nh, nw = target, int(target * w / h)
        else:
            nh, nw = int(target * h / w), target
        y = F.interpolate(x.float(), size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
    top, left = int(round((nh - size) / 2.0)), int(round((nw - size) / 2.0))
    return y[:, :, top : top + size, left : left + size]


def normalize(x: Tensor, mean: Sequence[float] | Tensor, std: Sequence[float] | Tensor) -> Tensor:
    """``(x / 255 - mean) / std`` as float32 (``ToTensor`` + ``Normalize``); keeps ``x``'s memory layout."""
    m = torch.as_tensor(mean, dtype=torch.float32, device=x.device)
    s = torch.as_tensor(std, dtype=torch.float32, device=x.device)
    scale = (1.0 / (255.0 * s)).view(1, -1, 1, 1)
    bias = (-m / s).view(1, -1, 1, 1)
    return x.to(dtype=torch.float32, copy=True).mul_(scale).add_(bias)
