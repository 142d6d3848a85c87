"""Generic ImageFolder source: any ``<root>/{train,test|val}/<class>/*`` tree (docs/algorithm.md §6).

Images are decoded at one side: ``image_size`` when given, else the shorter side of the first train
image; images of another size are resized (shorter side) and centre-cropped. Mean and std are computed
from the train split once and cached next to it, unless a registered spec fixes them
(:func:`imagefolder_spec`). Train augmentation: RandomCrop(side, pad 4) + flip for sides <= 32,
RandomResizedCrop(side) + flip above. Negatives are sampled with replacement by default, as the
official ``ImageFolderSample`` does (docs/algorithm.md §3).
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import numpy as np

from ._base import ArrayDataset
from .cache import cached_json, split_key
from .decode import image_side
from .folders import class_dirs, decode_cached, list_images, list_tree
from .spec import DATASETS, DatasetSpec, TrainAug

#: largest side fed with RandomCrop(pad 4) instead of RandomResizedCrop
CROP_MAX_SIDE = 32


def _split_dir(root: Path, split: str) -> Path:
    if split == "train":
        return root / "train"
    if split in ("test", "val"):
        for name in ("test", "val"):
            if (root / name).is_dir():
                return root / name
        return root / split
    raise ValueError(f"imagefolder has no split {split!r}; splits: train, test (or val)")


def _side(train_dir: Path, image_size: int | None) -> int:
    if image_size:
        return int(image_size)
    for c in class_dirs(train_dir):
        files = list_images(train_dir / c)
        if files:
            return image_side(files[0])
    raise ValueError(f"{train_dir} has no images")


def load_imagefolder(
    root: str | Path,
    split: str,
    download: bool = False,
    *,
    cache_dir=None,
    image_size: int | None = None,
    progress: bool = True,
    name: str = "imagefolder",
) -> ArrayDataset:
    """One split of an ImageFolder tree, decoded at a single side (see the module docstring)."""
    spec = DATASETS.get(name)
    root = Path(root).expanduser()
    folder = _split_dir(root, split)
    train_dir = root / "train"
    if not folder.is_dir() or not train_dir.is_dir():
        missing = folder if not folder.is_dir() else train_dir
        raise spec.not_found(root, split, missing, "need train/ and test/ or val/ with one folder per class")
    classes = class_dirs(train_dir)
    files, targets, classes = list_tree(folder, classes)
    if not files:
        raise spec.not_found(root, split, folder, "no images there")
    side = _side(train_dir, image_size)
    return decode_cached(name, split, folder, files, targets, classes, side, cache_dir, progress)


def channel_stats(images: np.ndarray, chunk: int = 4096) -> tuple[list[float], list[float]]:
    """Per-channel mean and std in [0, 1] of uint8 NHWC images (float64 sums over chunks)."""
    s = np.zeros(3)
    s2 = np.zeros(3)
    n = 0
    for i in range(0, len(images), chunk):
        x = np.asarray(images[i : i + chunk], dtype=np.float64) / 255.0
        s += x.sum(axis=(0, 1, 2))
        s2 += (x * x).sum(axis=(0, 1, 2))
        n += x.shape[0] * x.shape[1] * x.shape[2]
    mean = s / max(n, 1)
    std = np.sqrt(np.maximum(s2 / max(n, 1) - mean**2, 0.0))
    return [round(float(v), 6) for v in mean], [round(float(max(v, 1e-6)), 6) for v in std]


def resolve_imagefolder(
    spec: DatasetSpec, root: str | Path, train: ArrayDataset, *, cache_dir=None, image_size: int | None = None
) -> DatasetSpec:
    """``spec`` with num_classes, image_size, train_aug and (unless fixed) mean/std taken from the data."""
    side = train.image_size
    mean, std = spec.mean, spec.std
    if mean is None or std is None:
        train_dir = Path(root).expanduser() / "train"
        files, _, _ = list_tree(train_dir)
        key = split_key(spec.name, "train", train_dir, files, extra={"side": side, "stats": 1})

        def compute() -> dict:
            m, s = channel_stats(train.images)
            return {"mean": m, "std": s}

        stats = cached_json(f"{key}.stats", compute, cache_dir)
        mean = mean or tuple(stats["mean"])
        std = std or tuple(stats["std"])
    aug: TrainAug = "crop_flip" if side <= CROP_MAX_SIDE else "rrc_flip"
    return dataclasses.replace(
        spec, num_classes=len(train.classes), image_size=side, mean=tuple(mean), std=tuple(std), train_aug=aug
    )


def imagefolder_spec(
    name: str,
    mean: tuple[float, float, float] | None = None,
    std: tuple[float, float, float] | None = None,
    contrast_replace: bool = True,
) -> DatasetSpec:
    """Register (and return) a named ImageFolder dataset, optionally with a fixed mean/std."""
    load = functools.partial(load_imagefolder, name=name)  # picklable (Splits travel through Ray's object store)
    spec = DatasetSpec(
        name=name,
        num_classes=0,
        image_size=0,
        mean=mean,
        std=std,
        train_aug="rrc_flip",
        splits=("train", "test"),
        load=load,
        how_to_get="arrange the images as <root>/train/<class>/* and <root>/test/<class>/* (or val/)",
        contrast_replace=contrast_replace,
        resolve=resolve_imagefolder,
        downloadable=False,
    )
    DATASETS.register(name)(spec)
    return spec


imagefolder_spec("imagefolder")
