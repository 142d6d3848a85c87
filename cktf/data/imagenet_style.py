"""``imagenet_style``: your own images at ImageNet-style resolution (docs/models.md, "Data").

The images are an ImageFolder (``<root>/train/<class>/*``, ``<root>/val/`` or ``test/``), manifests of
``(path, label)`` (``<root>/train.csv`` + ``val.csv``, ``.tsv`` or ``.parquet``; or ``root`` itself a manifest with a
``split`` column: :mod:`cktf.data.manifest`), or Tiny-ImageNet's ``val/images`` + ``val/val_annotations.txt``.
``data.image_size`` is the model's input side (default 224), and the recipe is torchvision's ImageNet one:

* every image is stored at a square ``storage_side`` = 8/7 (about 1.14) x the input side (256 for 224): its shorter
  side resized (bilinear, antialiased) and centre-cropped, uint8 (:func:`~cktf.data.decode.load_rgb`);
* training: ``RandomResizedCrop(size, scale=(0.08, 1))`` of the stored image + horizontal flip (on the device,
  :mod:`cktf.data.augment`);
* evaluation: ``Resize(storage_side)`` + ``CenterCrop(size)`` (a centre crop of the stored image);
* ImageNet's mean and std.

Where the decoded rows come from is decided per dataset by :func:`choose_path`: when the train and test splits
decoded at the storage side fit the object-store budget (``budget_bytes``; default ``$CKTF_OBJECT_STORE_GB`` GB,
else 30% of this machine's memory, Ray's default object store), they are decoded once into the cache
(:mod:`cktf.data.cache`) and shared as every dataset is; otherwise each split is a
:class:`~cktf.data.stream.StreamDataset`, decoded per batch from the files by each trial's
:class:`~cktf.data.stream.StreamLoader` in parallel workers. The log says which path was taken and why. Both paths
give the same tensors (same decode, same plan, same augmentation code).
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ._base import ArrayDataset
from .folders import class_dirs, decode_cached, list_tree
from .manifest import MANIFEST_SUFFIXES, read_manifest
from .spec import DATASETS, IMAGENET_MEAN, IMAGENET_STD, DatasetSpec
from .stream import StreamDataset

log = logging.getLogger("cktf")

#: input side when ``data.image_size`` is unset
DEFAULT_SIZE = 224
#: storage side / input side: torchvision's ImageNet evaluation (Resize(256) + CenterCrop(224))
STORAGE_RATIO = 256 / 224
#: the object-store share of memory Ray takes by default
OBJECT_STORE_SHARE = 0.3
EVAL_SPLITS = ("val", "test")


def storage_side(size: int, ratio: float = STORAGE_RATIO) -> int:
    """The stored side for an input side ``size``: ``round(ratio * size)`` (224 -> 256, 64 -> 73, 96 -> 110)."""
    return max(int(size), int(round(ratio * size)))


def object_store_budget() -> int:
    """Bytes a decoded dataset may take in the object store: ``$CKTF_OBJECT_STORE_GB`` GB, else 30% of memory."""
    env = os.environ.get("CKTF_OBJECT_STORE_GB")
    if env:
        return int(float(env) * 1e9)
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not POSIX: a conservative 8 GB machine
        total = 8 * 10**9
    return int(OBJECT_STORE_SHARE * total)


@dataclass(frozen=True)
class DataPath:
    """How a dataset's rows reach the trials: ``decode_once`` (shared arrays) or ``stream`` (files per batch)."""

    mode: str
    nbytes: int
    budget_bytes: int
    reason: str

    @property
    def stream(self) -> bool:
        return self.mode == "stream"


def choose_path(n_images: int, side: int, budget_bytes: int) -> DataPath:
    """Decode once when ``n_images`` uint8 images of ``side`` x ``side`` x 3 fit ``budget_bytes``, else stream."""
    nbytes = int(n_images) * side * side * 3
    gb = lambda b: f"{b / 1e9:.2f} GB"  # noqa: E731
    what = f"{n_images} images x {side}x{side}x3 uint8 = {gb(nbytes)}"
    if nbytes <= budget_bytes:
        return DataPath(
            "decode_once", nbytes, budget_bytes, f"{what} fit the object-store budget of {gb(budget_bytes)}"
        )
    return DataPath("stream", nbytes, budget_bytes, f"{what} exceed the object-store budget of {gb(budget_bytes)}")


# ------------------------------------------------------------------------------------------------ listing
def _manifest_in(folder: Path, stem: str) -> Path | None:
    return next((folder / f"{stem}{s}" for s in MANIFEST_SUFFIXES if (folder / f"{stem}{s}").is_file()), None)


def list_split(
    root: str | Path, split: str, classes: list[str] | None = None
) -> tuple[list[str], np.ndarray, list[str], Path]:
    """Files, targets, classes and source folder of one split (``train``, or ``test`` = ``val`` / ``test``).

    Raises:
        DataNotFoundError: no layout of the module docstring holds the split.
    """
    root = Path(root).expanduser()
    names = ("train",) if split == "train" else EVAL_SPLITS
    if root.is_file() and root.suffix.lower() in MANIFEST_SUFFIXES:
        for name in names:
            files, targets, classes_out = read_manifest(root, classes=classes, split=name)
            if files:
                return files, targets, classes_out, root.parent
        raise SPEC.not_found(root, split, root, f"no rows with split {' or '.join(names)}")
    for name in names:
        folder = root / name
        annotations = folder / f"{name}_annotations.txt"
        if annotations.is_file() and (folder / "images").is_dir():  # Tiny-ImageNet's val layout
            files, targets, classes_out = read_manifest(annotations, base=folder / "images", classes=classes)
            return files, targets, classes_out, folder
        if folder.is_dir() and class_dirs(folder):
            files, targets, classes_out = list_tree(folder, classes)
            return files, targets, classes_out, folder
        manifest = _manifest_in(root, name)
        if manifest is not None:
            files, targets, classes_out = read_manifest(manifest, classes=classes)
            return files, targets, classes_out, root
    raise SPEC.not_found(root, split, root / names[0], f"no {' or '.join(names)} folder or manifest")


@functools.lru_cache(maxsize=8)
def _listing(root: str, mtime: float) -> dict[str, tuple[list[str], np.ndarray, list[str], Path]]:
    train = list_split(root, "train")
    return {"train": train, "test": list_split(root, "test", train[2])}


def listing(root: str | Path) -> dict[str, tuple[list[str], np.ndarray, list[str], Path]]:
    """Both splits of ``root`` (listed once per change of ``root``)."""
    path = Path(root).expanduser().resolve()
    return _listing(str(path), path.stat().st_mtime if path.exists() else 0.0)


# ------------------------------------------------------------------------------------------------ loading
def load_imagenet_style(
    root: str | Path,
    split: str,
    download: bool = False,
    *,
    cache_dir: str | Path | None = None,
    image_size: int | None = None,
    progress: bool = True,
    name: str = "imagenet_style",
    budget_bytes: int | None = None,
) -> ArrayDataset | StreamDataset:
    """One split at the storage side of ``image_size``: decoded once, or streamed (module docstring)."""
    spec = DATASETS.get(name)
    split = "train" if split == "train" else "test"
    if not Path(root).expanduser().exists():
        raise spec.not_found(root, split, root)
    splits = listing(root)
    files, targets, classes, source = splits[split]
    if not files:
        raise spec.not_found(root, split, source, "no images there")
    side = storage_side(int(image_size or DEFAULT_SIZE))
    budget = object_store_budget() if budget_bytes is None else int(budget_bytes)
    path = choose_path(sum(len(s[0]) for s in splits.values()), side, budget)
    if path.stream:
        # a warning: the live view of a study shows it (decoding every epoch is every trial's cost)
        log.warning(
            "%s %s: streamed from %s by each trial's loader (parallel decoding): %s", name, split, source, path.reason
        )
        return StreamDataset(files, targets, classes, side)
    log.info("%s %s: decoded once at %d px and shared: %s", name, split, side, path.reason)
    return decode_cached(name, split, source, files, targets, classes, side, cache_dir, progress)


def resolve_imagenet_style(
    spec: DatasetSpec, root: str | Path, train: ArrayDataset | StreamDataset, *, cache_dir=None, image_size=None
) -> DatasetSpec:
    """``spec`` for the data at hand: the classes, the input side and the evaluation resize (the storage side)."""
    size = int(image_size or DEFAULT_SIZE)
    return replace(
        spec, num_classes=len(train.classes), image_size=size, eval_resize=train.image_size, train_aug="rrc_flip"
    )


def imagenet_style_spec(name: str = "imagenet_style") -> DatasetSpec:
    """Register (and return) a named ``imagenet_style`` dataset."""
    spec = DatasetSpec(
        name=name,
        num_classes=0,
        image_size=0,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        train_aug="rrc_flip",
        splits=("train", "test"),
        load=functools.partial(load_imagenet_style, name=name),  # picklable (Splits travel through Ray)
        how_to_get=(
            "arrange the images as <root>/train/<class>/* and <root>/val/<class>/* (or test/), or give manifests "
            "<root>/train.csv and <root>/val.csv of path,label rows"
        ),
        contrast_replace=True,
        resolve=resolve_imagenet_style,
        downloadable=False,
    )
    DATASETS.register(name)(spec)
    return spec


SPEC = imagenet_style_spec()
