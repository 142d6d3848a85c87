"""Data layer: dataset sources, decode-once cache, splits, batched GPU-friendly augmentation, loaders
and label-aware contrastive negatives (docs/algorithm.md §3, §6 and §8).

Typical use::

    splits = load_splits(DataConfig(dataset="cifar100", root="data"))
    loader = BatchLoader(splits.train, splits.spec, batch_size=64, train=True, device=device,
                         contrast=ContrastConfig(k=16384))
    for batch in loader:  # {"image", "target", "index", "contrast_idx"}
        ...
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from . import cifar, imagefolder, imagenet_style, stl10, tiny_imagenet  # noqa: F401  (register the sources)
from ._base import CONTRAST_IDX, IMAGE, INDEX, TARGET, UNLABELED, ArrayDataset
from .contrast import ContrastConfig, ContrastSampler
from .imagefolder import imagefolder_spec
from .loader import BatchLoader
from .spec import DATASETS, DatasetSpec
from .splits import DataConfig, Splits, load_splits
from .stream import StreamDataset, StreamLoader, make_loader

__all__ = [
    "CONTRAST_IDX",
    "DATASETS",
    "IMAGE",
    "INDEX",
    "TARGET",
    "UNLABELED",
    "ArrayDataset",
    "BatchLoader",
    "ContrastConfig",
    "ContrastSampler",
    "DataConfig",
    "DatasetSpec",
    "Splits",
    "StreamDataset",
    "StreamLoader",
    "imagefolder_spec",
    "load_splits",
    "make_loader",
    "prepare",
]


def prepare(
    name: str, root: str | Path, download: bool = False, cache_dir: str | Path | None = None, progress: bool = True
) -> dict[str, int]:
    """Download (optionally) and decode every split of dataset ``name`` into the cache (``cktf data prepare``).

    Returns:
        ``{split: number of images}``.

    Raises:
        UnknownNameError: ``name`` is not registered.
        DataNotFoundError: a split is missing and ``download`` is off (or the download failed to produce it).
    """
    spec = DATASETS.get(name)
    sizes = {}
    train = None
    for split in spec.splits:
        start = time.perf_counter()
        ds = spec.load(root, split, download, cache_dir=cache_dir, progress=progress)
        sizes[split] = len(ds)
        logging.getLogger("cktf").info(
            "%s %s: %d images ready in %.2f s", name, split, len(ds), time.perf_counter() - start
        )
        if split == spec.train_split:
            train = ds
    if spec.resolve is not None and train is not None:
        spec.resolve(spec, root, train, cache_dir=cache_dir)  # computes and caches mean/std
    return sizes
