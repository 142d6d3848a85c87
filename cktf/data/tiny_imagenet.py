"""Tiny-ImageNet-200 source (docs/algorithm.md §6: RandomResizedCrop(64) + flip, ImageNet mean/std).

Reads the official layout ``<root>/tiny-imagenet-200/`` (``train/<wnid>/images/*.JPEG``, ``val/images``
+ ``val/val_annotations.txt``); ``val/<wnid>/`` ImageFolder trees (what CKTF's code expects) work too.
The ``test`` split is the labeled validation split, on which the paper reports. Classes are the sorted
wnids; grayscale images become RGB.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ._base import ArrayDataset
from .folders import class_dirs, decode_cached, list_tree
from .spec import DATASETS, IMAGENET_MEAN, IMAGENET_STD, DatasetSpec

URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
MD5 = "90528d7ca1a48142e341f4ef8d21d0de"
FOLDER = "tiny-imagenet-200"
SIDE = 64


def _find(root: Path) -> Path | None:
    for cand in (root / FOLDER, root, root / "tiny-imagenet-200-mini" / FOLDER):
        if (cand / "train").is_dir() and (cand / "val").is_dir():
            return cand
    return None


def _val_files(folder: Path, classes: list[str]) -> tuple[list[str], np.ndarray]:
    val = folder / "val"
    ann = val / "val_annotations.txt"
    if not ann.is_file():  # val re-arranged as an ImageFolder tree
        files, targets, _ = list_tree(val, classes)
        return files, targets
    index = {c: i for i, c in enumerate(classes)}
    rows = sorted(line.split("\t")[:2] for line in ann.read_text().splitlines() if line.strip())
    files = [str(val / "images" / name) for name, _ in rows]
    try:
        targets = np.asarray([index[wnid] for _, wnid in rows], dtype=np.int64)
    except KeyError as exc:
        raise ValueError(f"{ann} names wnid {exc} that has no train folder") from None
    return files, targets


def load_tiny_imagenet(
    root: str | Path, split: str, download: bool = False, *, cache_dir=None, image_size=None, progress=True
) -> ArrayDataset:
    """Tiny-ImageNet ``train`` (500 per class) or ``test`` (= the labeled val split, 50 per class)."""
    spec = DATASETS.get("tiny_imagenet")
    if split == "val":
        split = "test"
    if split not in spec.splits:
        raise ValueError(f"tiny_imagenet has no split {split!r}; splits: train, test (= the official val)")
    root = Path(root).expanduser()
    folder = _find(root)
    if folder is None and download:
        from torchvision.datasets.utils import download_and_extract_archive

        download_and_extract_archive(URL, download_root=str(root), md5=MD5)
        folder = _find(root)
    if folder is None:
        raise spec.not_found(root, split, root / FOLDER, "expected train/ and val/ there")
    classes = class_dirs(folder / "train")
    if split == "train":
        files, targets, _ = list_tree(folder / "train", classes)
        source = folder / "train"
    else:
        files, targets = _val_files(folder, classes)
        source = folder / "val"
    if not files:
        raise spec.not_found(root, split, source, "no images there")
    return decode_cached("tiny_imagenet", split, source, files, targets, classes, SIDE, cache_dir, progress)


DATASETS.register("tiny_imagenet")(
    DatasetSpec(
        name="tiny_imagenet",
        num_classes=200,
        image_size=SIDE,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        train_aug="rrc_flip",
        splits=("train", "test"),
        load=load_tiny_imagenet,
        how_to_get=f"unzip {URL} into <root>/ (giving <root>/{FOLDER}/train/<wnid>/images/*.JPEG, "
        f"<root>/{FOLDER}/val/images/ and val/val_annotations.txt)",
        contrast_replace=True,
    )
)
