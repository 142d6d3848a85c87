"""Device-resident batch loader (docs/algorithm.md §6; §3 for ``contrast_idx``).

The whole split is one uint8 NHWC tensor on the training device (GPU-resident under CUDA, as in airbench) when
it fits the run's share of the GPU (:func:`fits_on_device`: at most half of the memory the run may use, and of
what is free; CIFAR-100 is 154 MB, STL-10's 100k unlabeled images 2.8 GB), else it stays in host memory and each
batch's rows are copied over; each batch is a gather of rows followed by the batched augmentation of
:mod:`cktf.data.augment`, on the training device. No DataLoader workers, no per-sample Python, no PIL.

Randomness, per epoch ``e`` and seeded with ``(seed, e)`` only (a resumed run repeats it exactly):

* the shuffle and every image's augmentation parameters are drawn at the start of the epoch on the CPU, for the
  whole epoch, and moved to the device once (:class:`EpochPlan`, a few numbers per image). So the crops and flips
  do not depend on the device, and a resident split costs no host-to-device copy per step;
* ``contrast_idx`` is drawn per batch on the training device from its own generator (one ``randperm`` of the
  negative pool per batch, :mod:`cktf.data.contrast`); on the CPU the same seed gives the same indices through
  either sampler backend.

Batches are dicts (keys of :mod:`cktf.data._base`): ``image`` float32 [B, 3, S, S] normalised,
``target`` int64 [B], ``index`` int64 [B] (row in the split) and, for a train loader with a
:class:`ContrastConfig`, ``contrast_idx`` int64 [B, K+1].
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..distributed import shard_bounds
from ._base import CONTRAST_IDX, IMAGE, INDEX, TARGET, ArrayDataset
from .augment import crop_flip, crop_flip_params, normalize, resize_center_crop, resized_crop_flip, rrc_params
from .contrast import ContrastConfig, ContrastSampler
from .spec import DatasetSpec

#: zero padding of RandomCrop (CIFAR recipe)
CROP_PADDING = 4
#: a split is moved to the GPU when it takes at most this share of the memory the run may use
RESIDENT_SHARE = 0.5
#: where a split lives: ``auto`` decides by :func:`fits_on_device`
RESIDENCIES = ("auto", "device", "host")
#: how a data-parallel worker shares a split (:meth:`BatchLoader.set_shard`): rows of every global batch (training)
#: or every W-th batch (evaluation)
SHARD_ROWS, SHARD_BATCHES = "rows", "batches"
SHARD_MODES = (SHARD_ROWS, SHARD_BATCHES)

log = logging.getLogger("cktf")


def fits_on_device(
    nbytes: int, free_bytes: int, share: float = RESIDENT_SHARE, budget_bytes: int | None = None
) -> bool:
    """Whether a split of ``nbytes`` should live on the GPU: at most ``share`` of the memory this run may use, i.e.
    of ``budget_bytes`` (its fraction of the GPU, ``train.gpu_memory_share`` x total) and of what is free now. The
    rest is left to activations, memory banks and score buffers."""
    usable = free_bytes if budget_bytes is None else min(free_bytes, budget_bytes)
    return nbytes <= share * usable


def epoch_seed(seed: int, epoch: int, stream: int = 0) -> int:
    """A 63-bit generator seed determined by ``(seed, epoch, stream)`` alone (negative epochs allowed)."""
    ss = np.random.SeedSequence([seed % 2**32, seed // 2**32 % 2**32, epoch % 2**32, 0x636B7466, stream])
    return int(ss.generate_state(1, np.uint64)[0] >> np.uint64(1))


#: generator streams of one epoch: the plan (shuffle + augmentation, CPU) and the negatives (training device)
PLAN_STREAM, NEGATIVES_STREAM = 0, 1


@dataclass
class EpochPlan:
    """One epoch's shuffle and augmentation parameters, drawn on the CPU and held on the device.

    Attributes:
        order: int64 [n] rows in epoch order (on the device).
        rows: the same on the images' device (the host for a host-resident split).
        params: per-position augmentation parameters [n, P] (``crop_flip_params`` / ``rrc_params``), or None.
    """

    order: Tensor
    rows: Tensor
    params: Tensor | None


class BatchLoader:
    """Iterates a split in batches of augmented, normalised images on ``device``.

    Args:
        ds: the split (its rows are ``batch["index"]``).
        spec: normalisation, train augmentation and model input side.
        batch_size: images per batch.
        train: shuffle + augment (``spec.train_aug``); else in order with the test transform
            (Resize + CenterCrop to the input side when the stored size differs).
        device: where the split lives and batches are produced.
        seed: base seed of the per-epoch generators.
        contrast: add ``contrast_idx`` (train loaders only).
        drop_last: drop the last incomplete batch.
        channels_last: yield images in channels-last memory format.
        residency: ``auto`` (on the device when :func:`fits_on_device`), ``device`` or ``host``.
        memory_share: the fraction of the GPU this run may use (``train.gpu_memory_share``), for ``auto``.
        sampler_backend: ``auto`` (numpy on the CPU, torch on a GPU), ``numpy`` or ``torch``
            (:class:`ContrastSampler`).

    A :class:`~cktf.data.stream.StreamDataset` (a split too large to decode once) is iterated by
    :class:`~cktf.data.stream.StreamLoader`, the subclass that decodes its rows per batch;
    :func:`~cktf.data.stream.make_loader` picks the loader a split needs.

    Attributes:
        resident: the split is held on the training device.
        copied_bytes: bytes this loader copied from host memory into batches or plans so far (a resident split
            copies only its epoch plans; a host-resident one every batch's rows as well).
    """

    def __init__(
        self,
        ds: ArrayDataset,
        spec: DatasetSpec,
        batch_size: int,
        train: bool,
        device: torch.device | str = "cpu",
        seed: int = 0,
        contrast: ContrastConfig | None = None,
        drop_last: bool = False,
        channels_last: bool = False,
        residency: str = "auto",
        memory_share: float = 1.0,
        sampler_backend: str = "auto",
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if residency not in RESIDENCIES:
            raise ValueError(f"residency must be one of {', '.join(RESIDENCIES)}, got {residency!r}")
        self.spec, self.batch_size, self.train = spec, int(batch_size), bool(train)
        self.device = torch.device(device)
        self.seed, self.drop_last, self.channels_last = int(seed), bool(drop_last), bool(channels_last)
        self.size = spec.image_size or ds.image_size
        self.n = len(ds)
        self.sampler = (
            ContrastSampler(ds.targets, contrast, self.device, backend=sampler_backend)  # type: ignore[arg-type]
            if contrast is not None and train
            else None
        )
        arr = ds.images
        if type(arr) is not np.ndarray or not arr.flags.c_contiguous:
            arr = np.array(arr)  # a memory-mapped cache entry is read into memory once
        with warnings.catch_warnings():
            # a read-only array is the Ray object store's zero-copy view: shared, never written (no copy)
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            images = torch.from_numpy(arr)  # [N, H, W, 3] uint8
        if residency == "auto" and self.device.type == "cuda":
            free, total = torch.cuda.mem_get_info(self.device)
            residency = (
                "device" if fits_on_device(images.numel(), free, budget_bytes=int(memory_share * total)) else "host"
            )
            if residency == "host":
                log.info(
                    "split of %.1f GB kept in host memory (%.1f GB free on %s, this run may use %.0f%% of %.1f GB): "
                    "rows are copied per batch",
                    images.numel() / 1e9,
                    free / 1e9,
                    self.device,
                    100 * memory_share,
                    total / 1e9,
                )
        self.resident = residency != "host"
        self.copied_bytes = 0
        self.images = images.to(self.device) if self.resident else images
        #: stored (H, W) and the device the rows are read on: what an epoch plan needs of the split
        self.stored_hw, self.rows_device = (int(images.shape[1]), int(images.shape[2])), self.images.device
        if self.resident and self.device.type != "cpu":
            self.copied_bytes += images.numel()
        self.targets = torch.from_numpy(np.asarray(ds.targets, dtype=np.int64).copy()).to(self.device)
        self.mean = torch.tensor(spec.mean, dtype=torch.float32, device=self.device)
        self.std = torch.tensor(spec.std, dtype=torch.float32, device=self.device)
        self.epoch = 0
        self.shard = (0, 1, SHARD_ROWS)

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration use epoch ``epoch``'s shuffle and augmentation (for resume)."""
        self.epoch = int(epoch)

    def set_shard(self, rank: int, world_size: int, by: str = SHARD_ROWS) -> None:
        """Iterate worker ``rank``'s share of the split (exact data parallelism, docs/algorithm.md §12).

        ``by="rows"`` (training): every step is one *global* batch of ``batch_size`` rows of the same epoch plan on
        every worker, of which this worker builds rows :func:`~cktf.distributed.shard_bounds` (``batch_size / W``
        each); ``contrast_idx`` is drawn for the whole global batch from the epoch's generator, as one process draws
        it, and this worker keeps its rows. A last global batch of fewer rows than workers is skipped.
        ``by="batches"`` (evaluation): worker ``rank`` takes batches ``rank, rank + W, ...``.
        """
        if by not in SHARD_MODES:
            raise ValueError(f"by must be one of {', '.join(SHARD_MODES)}, got {by!r}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in a world of {world_size}")
        self.shard = (int(rank), int(world_size), by)

    def _global_len(self) -> int:
        if self.drop_last:
            return self.n // self.batch_size
        return (self.n + self.batch_size - 1) // self.batch_size

    def __len__(self) -> int:
        return self._global_len() if self.shard[1] == 1 else len(self.steps())

    def global_batch_rows(self, step: int) -> int:
        """Rows of the global batch of step ``step`` (all workers together; this loader's own when not sharded)."""
        rank, world, by = self.shard
        i = step if by == SHARD_ROWS else rank + step * world
        return min(self.batch_size, self.n - i * self.batch_size)

    def steps(self) -> list[tuple[slice, slice]]:
        """Per step: ``(the epoch-plan positions this loader builds, those of the global batch they belong to)``."""
        rank, world, by = self.shard
        out = []
        for i in range(self._global_len()):
            g = slice(i * self.batch_size, min((i + 1) * self.batch_size, self.n))
            if world == 1:
                out.append((g, g))
            elif by == SHARD_BATCHES:
                if i % world == rank:
                    out.append((g, g))
            else:
                rows = g.stop - g.start
                if rows < world:  # a worker would get no row: the whole step is skipped on every worker
                    continue
                a, b = shard_bounds(rows, rank, world)
                out.append((slice(g.start + a, g.start + b), g))
        return out

    def plan(self, epoch: int) -> EpochPlan:
        """Epoch ``epoch``'s shuffle and augmentation parameters (CPU draws, moved to the device once)."""
        gen = torch.Generator().manual_seed(epoch_seed(self.seed, epoch, PLAN_STREAM))
        if not self.train:
            order = torch.arange(self.n)
            return EpochPlan(order.to(self.device), order.to(self.rows_device), None)
        order = torch.randperm(self.n, generator=gen)
        h, w = self.stored_hw
        if self.spec.train_aug == "crop_flip":
            h = w = self.size  # a stored size other than the input side is resized first (resize_center_crop)
            params = crop_flip_params(self.n, h, w, self.size, CROP_PADDING, gen)
        elif self.spec.train_aug == "rrc_flip":
            params = rrc_params(self.n, h, w, generator=gen)
        else:
            raise ValueError(f"unknown train_aug {self.spec.train_aug!r}")
        if self.device.type != "cpu":
            self.copied_bytes += order.numel() * 8 + params.numel() * params.element_size()
        return EpochPlan(order.to(self.device), order.to(self.rows_device), params.to(self.device))

    def negatives_generator(self, epoch: int) -> torch.Generator:
        """The generator of epoch ``epoch``'s ``contrast_idx`` draws, on the training device."""
        gen = torch.Generator(device=self.device if self.device.type == "cuda" else "cpu")
        return gen.manual_seed(epoch_seed(self.seed, epoch, NEGATIVES_STREAM))

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        epoch = self.epoch
        self.epoch += 1  # a loop that never calls set_epoch still gets a new shuffle every epoch
        plan = self.plan(epoch)
        neg = self.negatives_generator(epoch) if self.sampler is not None else None
        for sl, g in self.steps():
            params = plan.params[sl] if plan.params is not None else None
            anchors = (plan.order[g], sl.start - g.start) if sl != g else None
            yield self.batch(plan.order[sl], params, neg, rows=plan.rows[sl], anchors=anchors)

    def batch(
        self,
        idx: Tensor,
        params: Tensor | None = None,
        generator: torch.Generator | None = None,
        rows: Tensor | None = None,
        anchors: tuple[Tensor, int] | None = None,
    ) -> dict[str, Tensor]:
        """The batch of rows ``idx`` with augmentation ``params`` (rows of an :class:`EpochPlan`; None for
        evaluation), as yielded by iteration; ``generator`` draws ``contrast_idx``; ``rows`` is ``idx`` on the
        images' device when that differs (host-resident splits); ``anchors``: see :meth:`finish`."""
        idx = idx.to(self.device)
        rows = idx.to(self.images.device) if rows is None else rows
        x = self.images.index_select(0, rows)
        if not self.resident:
            self.copied_bytes += x.numel()
            x = x.to(self.device, non_blocking=True)
        return self.finish(x, idx, params, generator, anchors)

    def finish(
        self,
        x: Tensor,
        idx: Tensor,
        params: Tensor | None = None,
        generator: torch.Generator | None = None,
        anchors: tuple[Tensor, int] | None = None,
    ) -> dict[str, Tensor]:
        """The batch of the uint8 NHWC rows ``x`` (on the device) of split rows ``idx``: transform, normalise and
        the batch dict (a streaming loader decodes ``x`` itself and ends here too, :mod:`cktf.data.stream`).

        ``anchors = (global, offset)``: ``idx`` are rows ``offset ..`` of the global batch ``global`` (a worker's
        share, :meth:`set_shard`); ``contrast_idx`` is drawn for the whole global batch and sliced."""
        x = x.permute(0, 3, 1, 2)  # NCHW view of NHWC memory
        x = self.transform(x, params)
        x = normalize(x, self.mean, self.std)
        x = x.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)
        out = {IMAGE: x, TARGET: self.targets[idx], INDEX: idx}
        if self.sampler is not None:
            if anchors is None:
                out[CONTRAST_IDX] = self.sampler.sample(idx, generator)
            else:
                full, offset = anchors
                out[CONTRAST_IDX] = self.sampler.sample(full, generator)[offset : offset + idx.shape[0]]
        return out

    def transform(self, x: Tensor, params: Tensor | None) -> Tensor:
        """Train augmentation (``spec.train_aug``, given its ``params``) or, without params, the test transform,
        on a uint8 NCHW batch."""
        if params is None:
            return resize_center_crop(x, self.size, getattr(self.spec, "eval_resize", 0) or None)
        if self.spec.train_aug == "crop_flip":
            if x.shape[-1] != self.size or x.shape[-2] != self.size:
                x = resize_center_crop(x, self.size)
            return crop_flip(x, params, self.size, CROP_PADDING)
        return resized_crop_flip(x, params, self.size)
