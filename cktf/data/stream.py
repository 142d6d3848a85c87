"""Streaming a split that is too large to decode once: files decoded per batch by parallel workers (docs/models.md).

A :class:`StreamDataset` is a split's file list, targets and classes, and the side every image is decoded to (the
storage side of :mod:`cktf.data.imagenet_style`). It is small, so it travels to every trial as it is; each trial's
:class:`StreamLoader` reads the files from shared storage.

:class:`StreamLoader` is a :class:`~cktf.data.loader.BatchLoader` whose rows are decoded on the fly: the epoch plan
(shuffle, RandomResizedCrop boxes and flips, drawn from ``(seed, epoch)`` alone), the batched augmentation on the
training device, the normalisation and the negatives are the decode-once loader's own code, and each image is
decoded with the same :func:`~cktf.data.decode.load_rgb` at the same side. So a streamed split gives the very
tensors the decoded-once split gives, for training and evaluation alike (``tests/test_imagefolder224.py``); only
where the uint8 rows come from differs.

Decoding runs in ``workers`` processes of a ``torch.utils.data.DataLoader``, one batch per item, ``prefetch``
batches ahead per worker. ``decode="device"`` decodes JPEGs on the training device instead (``torchvision.io``'s
batched ``decode_jpeg``, on CUDA when the loader's device is): the workers only read the bytes, and the resize to the
storage side runs there too (antialiased bilinear; the pixels differ from PIL's by rounding, so that mode gives close,
not identical, tensors).
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ._base import UNLABELED, ArrayDataset
from .contrast import ContrastConfig, ContrastSampler
from .decode import load_rgb
from .loader import SHARD_ROWS, BatchLoader
from .spec import DatasetSpec

log = logging.getLogger("cktf")

DECODES = ("cpu", "device")


@dataclass
class StreamDataset:
    """A split read from its files while training (images are never held in memory as a whole).

    Attributes:
        files: image paths, one per row.
        targets: int64 [N] (-1 = unlabeled).
        classes: class names.
        side: the square side each image is decoded to (resize of the shorter side + centre crop).
    """

    files: list[str]
    targets: np.ndarray
    classes: list[str]
    side: int

    def __post_init__(self) -> None:
        self.targets = np.asarray(self.targets, dtype=np.int64)
        if len(self.files) != len(self.targets):
            raise ValueError(f"{len(self.files)} files but {len(self.targets)} targets")

    def __len__(self) -> int:
        return len(self.files)

    @property
    def image_size(self) -> int:
        return int(self.side)

    @property
    def nbytes(self) -> int:
        """What the split would take decoded once (uint8 ``N x side x side x 3``)."""
        return len(self) * self.side * self.side * 3

    @property
    def labeled(self) -> bool:
        return bool(len(self.targets)) and bool((self.targets >= 0).all())

    def subset(self, indices: np.ndarray) -> StreamDataset:
        rows = np.asarray(indices, dtype=np.int64)
        return StreamDataset([self.files[i] for i in rows], self.targets[rows], list(self.classes), self.side)

    def with_targets(self, targets: np.ndarray) -> StreamDataset:
        """The same files with other targets (all ``-1``: images only, and no classes)."""
        targets = np.asarray(targets, dtype=np.int64)
        classes = [] if len(targets) and bool((targets == UNLABELED).all()) else list(self.classes)
        return StreamDataset(list(self.files), targets, classes, self.side)


class _Rows(torch.utils.data.Dataset):
    """One item per batch: the decoded uint8 ``[B, side, side, 3]`` rows (or, ``raw``, the files' bytes)."""

    def __init__(self, files: Sequence[str], side: int, raw: bool = False):
        self.files, self.side, self.raw = list(files), int(side), raw

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, rows: list[int]) -> Tensor | list[Tensor]:
        if self.raw:
            with _quiet():
                from torchvision.io import read_file

                return [read_file(self.files[i]) for i in rows]
        return torch.from_numpy(np.stack([load_rgb(self.files[i], self.side) for i in rows]))


def decode_on_device(raw: Sequence[Tensor], side: int, device: torch.device) -> Tensor:
    """Encoded images -> uint8 ``[B, side, side, 3]`` on ``device``: JPEGs batch-decoded there (``decode_jpeg``),
    anything else decoded on the CPU; each resized (shorter side, antialiased bilinear) and centre-cropped there."""
    with _quiet():
        from torchvision.io import ImageReadMode, decode_image, decode_jpeg

        try:
            imgs = decode_jpeg(list(raw), mode=ImageReadMode.RGB, device=device)
        except RuntimeError:  # not all JPEGs: one at a time, on the CPU
            imgs = [decode_image(r, mode=ImageReadMode.RGB).to(device) for r in raw]
    out = torch.empty((len(imgs), side, side, 3), dtype=torch.uint8, device=device)
    for i, im in enumerate(imgs):
        _, h, w = im.shape
        if (h, w) != (side, side):
            scale = side / min(h, w)
            nh, nw = max(side, round(h * scale)), max(side, round(w * scale))
            y = F.interpolate(im[None].float(), size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
            top, left = (nh - side) // 2, (nw - side) // 2
            im = y[0, :, top : top + side, left : left + side].round_().clamp_(0, 255).to(torch.uint8)
        out[i] = im.permute(1, 2, 0)
    return out


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """torchvision 0.29 deprecates its ``io`` decoders in favour of TorchCodec; they are what offers batched GPU
    JPEG decoding here, so the warning is silenced where they are called."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="torchvision")
        yield


def default_workers() -> int:
    """Decoding processes: the CPU count, at most 8."""
    return max(1, min(os.cpu_count() or 1, 8))


class StreamLoader(BatchLoader):
    """Iterates a :class:`StreamDataset` in batches like :class:`~cktf.data.loader.BatchLoader` (same plan, same
    augmentation, same batch dict), decoding each batch's files in ``workers`` processes.

    Args:
        ds: the streamed split.
        spec, batch_size, train, device, seed, contrast, drop_last, channels_last, sampler_backend: as
            :class:`~cktf.data.loader.BatchLoader` (``residency`` and ``memory_share`` are accepted and ignored: the
            rows are always read per batch).
        workers: decoding processes; 0 decodes in this process. Default: :func:`default_workers`.
        prefetch: batches decoded ahead per worker.
        decode: ``cpu`` (PIL in the workers, the decode-once pixels) or ``device`` (:func:`decode_on_device`).
    """

    def __init__(
        self,
        ds: StreamDataset,
        spec: DatasetSpec,
        batch_size: int,
        train: bool,
        device: torch.device | str = "cpu",
        seed: int = 0,
        contrast: ContrastConfig | None = None,
        drop_last: bool = False,
        channels_last: bool = False,
        workers: int | None = None,
        prefetch: int = 2,
        decode: str = "cpu",
        sampler_backend: str = "auto",
        **_ignored: object,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if decode not in DECODES:
            raise ValueError(f"decode must be one of {', '.join(DECODES)}, got {decode!r}")
        self.ds = ds
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
        self.workers = default_workers() if workers is None else int(workers)
        self.prefetch, self.decode = int(prefetch), decode
        self.resident = False
        self.copied_bytes = 0
        self.stored_hw, self.rows_device = (ds.side, ds.side), torch.device("cpu")
        self.targets = torch.from_numpy(ds.targets.copy()).to(self.device)
        self.mean = torch.tensor(spec.mean, dtype=torch.float32, device=self.device)
        self.std = torch.tensor(spec.std, dtype=torch.float32, device=self.device)
        self.epoch = 0
        self.shard = (0, 1, SHARD_ROWS)

    def _rows(self) -> _Rows:
        return _Rows(self.ds.files, self.ds.side, raw=self.decode == "device")

    def _to_device(self, got: Tensor | list[Tensor]) -> Tensor:
        """A decoded batch (or, ``decode="device"``, its files' bytes) as uint8 NHWC rows on the training device."""
        if self.decode == "device":
            x = decode_on_device(got, self.ds.side, self.device)  # type: ignore[arg-type]
        else:
            x = got.to(self.device, non_blocking=True)  # type: ignore[union-attr]
        self.copied_bytes += x.numel()
        return x

    def _decoded(self, row_lists: list[Tensor]) -> Iterator[Tensor]:
        """The decoded rows of each list, in order, on the training device (``workers`` processes decode ahead)."""
        rows, items = self._rows(), [r.tolist() for r in row_lists]
        if self.workers <= 0:
            batches: Iterator = (rows[i] for i in items)
        else:
            batches = iter(
                torch.utils.data.DataLoader(
                    rows,
                    batch_size=None,
                    sampler=items,
                    num_workers=self.workers,
                    prefetch_factor=self.prefetch,
                    pin_memory=self.device.type == "cuda" and self.decode == "cpu",
                    collate_fn=_identity,
                )
            )
        for got in batches:
            yield self._to_device(got)

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        epoch = self.epoch
        self.epoch += 1
        plan = self.plan(epoch)
        neg = self.negatives_generator(epoch) if self.sampler is not None else None
        steps = self.steps()
        for (sl, g), x in zip(steps, self._decoded([plan.rows[sl] for sl, _ in steps])):
            params = plan.params[sl] if plan.params is not None else None
            anchors = (plan.order[g], sl.start - g.start) if sl != g else None
            yield self.finish(x, plan.order[sl], params, neg, anchors)

    def batch(
        self,
        idx: Tensor,
        params: Tensor | None = None,
        generator: torch.Generator | None = None,
        rows: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """The batch of rows ``idx``, decoded in this process (as :meth:`BatchLoader.batch`)."""
        x = self._to_device(self._rows()[(idx if rows is None else rows).cpu().tolist()])
        return self.finish(x, idx.to(self.device), params, generator)


def make_loader(ds: ArrayDataset | StreamDataset, spec: DatasetSpec, **kwargs) -> BatchLoader:
    """The loader of a split: a :class:`StreamLoader` for a streamed one, else a
    :class:`~cktf.data.loader.BatchLoader` (same arguments; ``workers``/``prefetch``/``decode`` only stream)."""
    if isinstance(ds, StreamDataset):
        return StreamLoader(ds, spec, **kwargs)
    for key in ("workers", "prefetch", "decode"):
        kwargs.pop(key, None)
    return BatchLoader(ds, spec, **kwargs)


def _identity(x):  # the items are whole batches already (a module-level function: picklable for workers)
    return x
