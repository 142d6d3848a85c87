"""Listing and cached decoding of ImageFolder-style trees (``<split>/<class>/**/<image>``).

Shared by the CIFAR-10 JPEG tree, Tiny-ImageNet and ``imagefolder`` sources (docs/algorithm.md
§6). Classes are the sorted sub-folder names, as torchvision's ``ImageFolder`` orders them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ._base import ArrayDataset
from .cache import cached_split, split_key
from .decode import decode_files

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def is_image(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS)


def list_images(folder: Path) -> list[str]:
    """Every image file under ``folder`` (recursive), sorted."""
    out = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames.sort()
        out.extend(os.path.join(dirpath, f) for f in sorted(filenames) if is_image(f))
    return out


def class_dirs(split_dir: Path) -> list[str]:
    """Sorted names of the class sub-folders of ``split_dir`` (hidden folders skipped)."""
    return sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith("."))


def list_tree(split_dir: Path, classes: Sequence[str] | None = None) -> tuple[list[str], np.ndarray, list[str]]:
    """Files and int64 targets of an ImageFolder tree; ``classes`` fixes the label order (default: its folders).

    Raises:
        ValueError: the tree has a class folder not in ``classes``.
    """
    found = class_dirs(split_dir)
    classes = list(classes) if classes is not None else found
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted(set(found) - set(index))
    if unknown:
        raise ValueError(f"{split_dir} has class folders not in the train split: {unknown[:5]}")
    files: list[str] = []
    targets: list[int] = []
    for c in found:
        imgs = list_images(split_dir / c)
        files += imgs
        targets += [index[c]] * len(imgs)
    return files, np.asarray(targets, dtype=np.int64), classes


def decode_cached(
    name: str,
    split: str,
    source: Path,
    files: Sequence[str],
    targets: np.ndarray,
    classes: Sequence[str],
    side: int,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> ArrayDataset:
    """Decode ``files`` to ``side`` x ``side`` RGB once and cache them (keyed as in :mod:`cktf.data.cache`)."""
    key = split_key(name, split, source, files, extra={"side": side, "classes": list(classes)})

    def build() -> ArrayDataset:
        images = decode_files(files, side, desc=f"decode {name}/{split}", progress=progress)
        return ArrayDataset(images, np.asarray(targets, dtype=np.int64), list(classes))

    return cached_split(key, build, cache_dir, info={"source": str(Path(source).resolve()), "side": side})
