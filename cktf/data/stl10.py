"""STL-10 source (paper Section 3.2, docs/algorithm.md §8: Tiny-ImageNet -> STL-10 transfer).

Reads torchvision's binary format ``<root>/stl10_binary/{train,test,unlabeled}_X.bin`` (+ ``_y.bin``).
Images are 96x96 and are fed at 64x64 (RandomResizedCrop(64) for training, Resize(64) + CenterCrop(64)
for evaluation). The ``unlabeled`` split (100,000 images) keeps target -1; unlike the official code
(docs/algorithm.md §9) the targets are not reset to 0, so contrastive negatives are drawn uniformly
from all *other* images (see :mod:`cktf.data.contrast`).

Two names are registered: ``stl10`` trains on the labeled ``train`` split (step 2, fine-tuning) and
``stl10_unlabeled`` trains on ``unlabeled`` (step 1, distillation); both test on ``test`` (8,000).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ._base import UNLABELED, ArrayDataset
from .cache import cached_split, split_key
from .spec import DATASETS, IMAGENET_MEAN, IMAGENET_STD, DatasetSpec

FOLDER = "stl10_binary"
SIDE = 96
SPLITS = ("train", "test", "unlabeled")


def _find(root: Path, split: str) -> Path | None:
    for cand in (root / FOLDER, root):
        if (cand / f"{split}_X.bin").is_file():
            return cand
    return None


def read_images(path: Path) -> np.ndarray:
    """uint8 [N, 96, 96, 3] from an STL-10 ``*_X.bin`` (stored column-major per channel)."""
    raw = np.fromfile(path, dtype=np.uint8).reshape(-1, 3, SIDE, SIDE)
    return np.ascontiguousarray(raw.transpose(0, 3, 2, 1))


def load_stl10(
    root: str | Path, split: str, download: bool = False, *, cache_dir=None, image_size=None, progress=True
) -> ArrayDataset:
    """STL-10 ``train`` (5,000), ``test`` (8,000) or ``unlabeled`` (100,000, targets -1), 96x96 RGB."""
    spec = DATASETS.get("stl10")
    if split not in SPLITS:
        raise ValueError(f"stl10 has no split {split!r}; splits: {', '.join(SPLITS)}")
    root = Path(root).expanduser()
    folder = _find(root, split)
    if folder is None and download:
        import torchvision

        torchvision.datasets.STL10(str(root), split=split, download=True)
        folder = _find(root, split)
    if folder is None:
        raise spec.not_found(root, split, root / FOLDER / f"{split}_X.bin")
    files = [folder / f"{split}_X.bin"]
    if split != "unlabeled":
        files.append(folder / f"{split}_y.bin")
    names = folder / "class_names.txt"

    def build() -> ArrayDataset:
        images = read_images(folder / f"{split}_X.bin")
        if split == "unlabeled":
            targets = np.full(len(images), UNLABELED, dtype=np.int64)
        else:
            targets = np.fromfile(folder / f"{split}_y.bin", dtype=np.uint8).astype(np.int64) - 1
        classes = [str(i) for i in range(10)]
        if names.is_file():
            classes = [c.strip() for c in names.read_text().splitlines() if c.strip()]
        return ArrayDataset(images, targets, classes)

    key = split_key("stl10", split, folder, files + ([names] if names.is_file() else []))
    return cached_split(key, build, cache_dir, info={"source": str(folder.resolve())})


_common = dict(
    num_classes=10,
    image_size=64,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    train_aug="rrc_flip",
    splits=SPLITS,
    load=load_stl10,
    how_to_get=f"extract http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz into <root>/ "
    f"(giving <root>/{FOLDER}/train_X.bin, train_y.bin, test_X.bin, test_y.bin, unlabeled_X.bin)",
    contrast_replace=True,
)
DATASETS.register("stl10")(DatasetSpec(name="stl10", **_common))
DATASETS.register("stl10_unlabeled")(DatasetSpec(name="stl10_unlabeled", train_split="unlabeled", **_common))
