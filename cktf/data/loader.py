"""Device-resident batch loader (docs/algorithm.md §6; §3 for ``contrast_idx``).

The whole split is one uint8 NHWC tensor on the training device (GPU-resident under CUDA, as in
airbench) when it takes at most half of the GPU's free memory (:func:`fits_on_device`; CIFAR-100 is 154 MB,
STL-10's 100k unlabeled images 2.8 GB), else it stays in host memory and each batch's rows are copied over;
each batch is a gather of rows followed by the batched augmentation of :mod:`cktf.data.augment`, on the
training device. No DataLoader workers, no per-sample Python, no PIL.

Batches are dicts (keys of :mod:`cktf.data._base`): ``image`` float32 [B, 3, S, S] normalised,
``target`` int64 [B], ``index`` int64 [B] (row in the split) and, for a train loader with a
:class:`ContrastConfig`, ``contrast_idx`` int64 [B, K+1]. Epoch ``e`` draws its shuffle and
augmentation from a generator seeded with ``(seed, e)`` only, so a resumed run repeats them exactly.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor

from ._base import CONTRAST_IDX, IMAGE, INDEX, TARGET, ArrayDataset
from .augment import normalize, random_crop_flip, random_resized_crop_flip, resize_center_crop
from .contrast import ContrastConfig, ContrastSampler
from .spec import DatasetSpec

#: zero padding of RandomCrop (CIFAR recipe)
CROP_PADDING = 4
#: a split is moved to the GPU when it takes at most this share of the free GPU memory
RESIDENT_SHARE = 0.5

log = logging.getLogger("cktf")


def fits_on_device(nbytes: int, free_bytes: int, share: float = RESIDENT_SHARE) -> bool:
    """Whether a split of ``nbytes`` should live on the GPU: at most ``share`` of its free memory, the rest being
    left to activations, memory banks and the trials sharing the GPU (a fractional trial sees the whole GPU's free
    memory, so half is the conservative rule)."""
    return nbytes <= share * free_bytes


def epoch_seed(seed: int, epoch: int) -> int:
    """A 63-bit generator seed determined by ``(seed, epoch)`` alone (negative epochs allowed)."""
    ss = np.random.SeedSequence([seed % 2**32, seed // 2**32 % 2**32, epoch % 2**32, 0x636B7466])
    return int(ss.generate_state(1, np.uint64)[0] >> np.uint64(1))


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
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.spec, self.batch_size, self.train = spec, int(batch_size), bool(train)
        self.device = torch.device(device)
        self.seed, self.drop_last, self.channels_last = int(seed), bool(drop_last), bool(channels_last)
        self.size = spec.image_size or ds.image_size
        self.n = len(ds)
        self.sampler = ContrastSampler(ds.targets, contrast, self.device) if contrast is not None and train else None
        arr = ds.images
        if type(arr) is not np.ndarray or not arr.flags.c_contiguous:
            arr = np.array(arr)  # a memory-mapped cache entry is read into memory once
        with warnings.catch_warnings():
            # a read-only array is the Ray object store's zero-copy view: shared, never written (no copy)
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            images = torch.from_numpy(arr)  # [N, H, W, 3] uint8
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            if fits_on_device(images.numel(), free):
                images = images.to(self.device)
            else:
                log.info(
                    "split of %.1f GB kept in host memory (%.1f GB free on %s): rows are copied per batch",
                    images.numel() / 1e9,
                    free / 1e9,
                    self.device,
                )
        self.images = images
        self.targets = torch.from_numpy(np.asarray(ds.targets, dtype=np.int64).copy()).to(self.device)
        self.mean = torch.tensor(spec.mean, dtype=torch.float32, device=self.device)
        self.std = torch.tensor(spec.std, dtype=torch.float32, device=self.device)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration use epoch ``epoch``'s shuffle and augmentation (for resume)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        if self.drop_last:
            return self.n // self.batch_size
        return (self.n + self.batch_size - 1) // self.batch_size

    def _generator(self, epoch: int) -> torch.Generator:
        gen = torch.Generator(device=self.device if self.device.type == "cuda" else "cpu")
        gen.manual_seed(epoch_seed(self.seed, epoch))
        return gen

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        epoch = self.epoch
        self.epoch += 1  # a loop that never calls set_epoch still gets a new shuffle every epoch
        gen = self._generator(epoch)
        if self.train:
            order = torch.randperm(self.n, generator=gen, device=gen.device).to(self.device)
        else:
            order = torch.arange(self.n, device=self.device)
        # host-resident images: the epoch's order crosses to the host once, not once per batch
        rows = order.to(self.images.device) if self.images.device != self.device else order
        for i in range(len(self)):
            sl = slice(i * self.batch_size, (i + 1) * self.batch_size)
            yield self.batch(order[sl], gen, rows=rows[sl])

    def batch(
        self, idx: Tensor, generator: torch.Generator | None = None, rows: Tensor | None = None
    ) -> dict[str, Tensor]:
        """The batch of rows ``idx`` (augmented when ``train``), as yielded by iteration; ``rows`` is ``idx`` on the
        images' device when that differs (host-resident splits)."""
        idx = idx.to(self.device)
        rows = idx.to(self.images.device) if rows is None else rows
        x = self.images.index_select(0, rows).to(self.device, non_blocking=True)
        x = x.permute(0, 3, 1, 2)  # NCHW view of NHWC memory
        x = self.transform(x, generator)
        x = normalize(x, self.mean, self.std)
        x = x.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)
        out = {IMAGE: x, TARGET: self.targets[idx], INDEX: idx}
        if self.sampler is not None:
            out[CONTRAST_IDX] = self.sampler.sample(idx, generator)
        return out

    def transform(self, x: Tensor, generator: torch.Generator | None) -> Tensor:
        """Train augmentation (``spec.train_aug``) or the test transform, on a uint8 NCHW batch."""
        if not self.train:
            return resize_center_crop(x, self.size)
        if self.spec.train_aug == "crop_flip":
            if x.shape[-1] != self.size or x.shape[-2] != self.size:
                x = resize_center_crop(x, self.size)
            return random_crop_flip(x, self.size, CROP_PADDING, generator)
        if self.spec.train_aug == "rrc_flip":
            return random_resized_crop_flip(x, self.size, generator=generator)
        raise ValueError(f"unknown train_aug {self.spec.train_aug!r}")
