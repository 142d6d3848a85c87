"""CIFAR-100 and CIFAR-10 sources (docs/algorithm.md §6: RandomCrop(32, pad 4) + flip, CIFAR mean/std).

CIFAR-100 is read from torchvision's pickle format (``<root>/cifar-100-python/{train,test,meta}``)
without the md5 check, so the offline prefix subset works. CIFAR-10 is read from the pickle format
(``cifar-10-batches-py``) or from an ImageFolder tree ``{train,test}/<class>/*``, whichever is found.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from ..errors import UnsafeDataError
from ._base import ArrayDataset
from .cache import cached_split, split_key
from .folders import decode_cached, list_tree
from .spec import DATASETS, DatasetSpec

CIFAR100_DIR = "cifar-100-python"
CIFAR10_DIR = "cifar-10-batches-py"
CIFAR10_BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
CIFAR10_TREES = ("", "cifar10-jpeg", "cifar10")


#: the only globals the CIFAR python format refers to: numpy's array reconstruction (numpy 1 and 2 module names)
_CIFAR_GLOBALS = frozenset(
    (module, name)
    for module in ("numpy.core.multiarray", "numpy._core.multiarray")
    for name in ("_reconstruct", "scalar")
) | {("numpy", "ndarray"), ("numpy", "dtype")}


class _CifarUnpickler(pickle.Unpickler):
    """Reads the CIFAR batches (dicts of lists, strings and numpy arrays) and refuses every other global, so a
    crafted file in a data root cannot run code (``pickle.load`` would call whatever the file names)."""

    def __init__(self, fh, path: Path):
        super().__init__(fh, encoding="latin1")
        self.path = path

    def find_class(self, module: str, name: str):
        if (module, name) in _CIFAR_GLOBALS:
            return super().find_class(module, name)
        raise UnsafeDataError(
            f"{self.path} is not a CIFAR batch: it asks to load {module}.{name}, which a CIFAR file never does",
            "replace it with the official file (or delete it and pass --download)",
        )


def _unpickle(path: Path) -> dict:
    with open(path, "rb") as fh:
        try:
            return _CifarUnpickler(fh, path).load()
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
            raise UnsafeDataError(
                f"{path} is not a readable CIFAR batch ({exc})", "replace it with the official file"
            ) from None


def _rows_to_nhwc(data: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(data, dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))


def _check_split(spec: DatasetSpec, split: str) -> None:
    if split not in spec.splits:
        raise ValueError(f"{spec.name} has no split {split!r}; splits: {', '.join(spec.splits)}")


# ----------------------------------------------------------------------------- CIFAR-100


def _find_cifar100(root: Path, split: str) -> Path | None:
    for cand in (root / CIFAR100_DIR, root, root / "cifar-100-python-subset" / CIFAR100_DIR):
        if (cand / split).is_file() and (cand / "meta").is_file():
            return cand
    return None


def load_cifar100(
    root: str | Path, split: str, download: bool = False, *, cache_dir=None, image_size=None, progress=True
) -> ArrayDataset:
    """CIFAR-100 ``train`` (50,000) or ``test`` (10,000) images with their 100 fine labels."""
    spec = DATASETS.get("cifar100")
    _check_split(spec, split)
    root = Path(root).expanduser()
    folder = _find_cifar100(root, split)
    if folder is None and download:
        import torchvision

        torchvision.datasets.CIFAR100(str(root), train=split == "train", download=True)
        folder = _find_cifar100(root, split)
    if folder is None:
        raise spec.not_found(root, split, root / CIFAR100_DIR / split)
    files = [folder / split, folder / "meta"]

    def build() -> ArrayDataset:
        entry = _unpickle(folder / split)
        classes = list(_unpickle(folder / "meta")["fine_label_names"])
        return ArrayDataset(_rows_to_nhwc(entry["data"]), np.asarray(entry["fine_labels"], dtype=np.int64), classes)

    key = split_key("cifar100", split, folder, files)
    return cached_split(key, build, cache_dir, info={"source": str(folder.resolve())})


# ----------------------------------------------------------------------------- CIFAR-10


def _find_cifar10(root: Path, split: str) -> tuple[str, Path] | None:
    for cand in (root / CIFAR10_DIR, root):
        if all((cand / b).is_file() for b in CIFAR10_BATCHES[split]) and (cand / "batches.meta").is_file():
            return "pickle", cand
    for sub in CIFAR10_TREES:
        cand = root / sub / split if sub else root / split
        if cand.is_dir() and any(p.is_dir() for p in cand.iterdir()):
            return "tree", cand
    return None


def load_cifar10(
    root: str | Path, split: str, download: bool = False, *, cache_dir=None, image_size=None, progress=True
) -> ArrayDataset:
    """CIFAR-10 ``train``/``test`` from the pickle batches or an ImageFolder tree (auto-detected)."""
    spec = DATASETS.get("cifar10")
    _check_split(spec, split)
    root = Path(root).expanduser()
    found = _find_cifar10(root, split)
    if found is None and download:
        import torchvision

        torchvision.datasets.CIFAR10(str(root), train=split == "train", download=True)
        found = _find_cifar10(root, split)
    if found is None:
        raise spec.not_found(root, split, root / CIFAR10_DIR, f"nor an image tree at {root.absolute() / split}")
    kind, folder = found
    if kind == "tree":
        files, targets, classes = list_tree(folder)
        return decode_cached("cifar10", split, folder, files, targets, classes, 32, cache_dir, progress)
    files = [folder / b for b in CIFAR10_BATCHES[split]] + [folder / "batches.meta"]

    def build() -> ArrayDataset:
        entries = [_unpickle(folder / b) for b in CIFAR10_BATCHES[split]]
        images = _rows_to_nhwc(np.concatenate([e["data"] for e in entries]))
        targets = np.concatenate([np.asarray(e["labels"], dtype=np.int64) for e in entries])
        return ArrayDataset(images, targets, list(_unpickle(folder / "batches.meta")["label_names"]))

    key = split_key("cifar10", split, folder, files)
    return cached_split(key, build, cache_dir, info={"source": str(folder.resolve())})


DATASETS.register("cifar100")(
    DatasetSpec(
        name="cifar100",
        num_classes=100,
        image_size=32,
        mean=(0.5071, 0.4867, 0.4408),
        std=(0.2675, 0.2565, 0.2761),
        train_aug="crop_flip",
        splits=("train", "test"),
        load=load_cifar100,
        how_to_get="put torchvision's CIFAR-100 files (train, test, meta from "
        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz) in <root>/cifar-100-python/",
        contrast_replace=False,
    )
)

DATASETS.register("cifar10")(
    DatasetSpec(
        name="cifar10",
        num_classes=10,
        image_size=32,
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
        train_aug="crop_flip",
        splits=("train", "test"),
        load=load_cifar10,
        how_to_get="put torchvision's <root>/cifar-10-batches-py/ (from "
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz) or an image tree <root>/{train,test}/<class>/*.png",
        contrast_replace=False,
    )
)
