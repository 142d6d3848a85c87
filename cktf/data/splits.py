"""Data config and train/val/test splits (docs/algorithm.md §6; §3 for the contrastive index space).

:func:`load_splits` reads the dataset's train and test splits (decoded once, cached), draws the
seeded stratified subsets, and holds out a seeded class-stratified validation split from train.
Order: ``train_subset`` is drawn first, then ``val_fraction`` of it is held out, so
``train_subset=2000, val_fraction=0.1`` trains on 1,800 images and validates on 200. The rows of the
final ``Splits.train`` are the index space of ``batch["index"]`` and of the contrastive memory.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from ..config import Config, lookup
from ..errors import ConfigError
from ._base import UNLABELED, ArrayDataset
from .spec import DATASETS, DatasetSpec
from .stream import StreamDataset

log = logging.getLogger("cktf")


class DataConfig(Config):
    """Which data a run uses and how it is split (every field is a ``--data-*`` CLI flag)."""

    section = "data"

    dataset: str = "cifar100"
    """registered dataset name (cifar100, cifar10, tiny_imagenet, stl10, stl10_unlabeled, imagefolder,
    imagenet_style)"""
    root: str = Field("./data", min_length=1)
    """data root; see each dataset's expected layout"""
    download: bool = False
    """download into root when missing (needs internet)"""
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    """fraction of train held out (class-stratified) for model selection; 0 = no val split"""
    split_seed: int = Field(0, ge=0)
    """seed of the subset draws and the val hold-out (independent of the training seed)"""
    train_subset: int | None = Field(None, ge=1)
    """use this many train images (seeded, stratified; before the val hold-out); unset = all"""
    test_subset: int | None = Field(None, ge=1)
    """use this many test images (seeded, stratified); unset = all"""
    cache_dir: str | None = None
    """decoded-array cache; default $CKTF_CACHE_DIR or ~/.cache/cktf"""
    image_size: int | None = Field(None, ge=8)
    """decode side for imagefolder datasets (default: the first train image's side); the model's input side for
    imagenet_style (default 224; stored at 8/7 of it)"""
    contrast_mode: Literal["exact", "relax"] = "exact"
    """CRD/CKTF positive: exact (the sample itself) or relax (a same-class sample)"""
    contrast_replace: bool | None = None
    """draw negatives with replacement; unset = the dataset's default (docs/algorithm.md §3: without for CIFAR,
    with for Tiny-ImageNet, STL-10 and ImageFolder data)"""
    contrast_draw: Literal["window", "independent"] = "window"
    """negatives without replacement: window (one permutation per batch, each anchor a window of it: exact uniform
    per anchor, anchors of a batch dependent) or independent (each anchor drawn on its own, ~10x the time); see
    docs/algorithm.md §3"""
    drop_labels: bool = False
    """use the images only (transfer learning, Section 3.2): every train target becomes -1, no validation split is
    held out, and contrastive negatives are drawn uniformly from the other images (never the anchor itself)"""
    object_store_gb: float | None = Field(None, gt=0)
    """imagenet_style: decode once when the decoded splits fit this many GB, else stream (default:
    $CKTF_OBJECT_STORE_GB, else 30% of memory)"""
    decode_workers: int | None = Field(None, ge=0)
    """imagenet_style streaming: decoding processes per loader (default: the run's CPU threads, a trial's
    resources.cpu, at most 8; 0 = in the run's process)"""
    decode: Literal["cpu", "device"] = "cpu"
    """imagenet_style streaming: decode JPEGs with PIL in the workers, or on the training device (torchvision.io)"""

    @model_validator(mode="after")
    def _check_data(self) -> DataConfig:
        spec = lookup("dataset", DATASETS.get, self.dataset)
        if self.image_size is not None and spec.resolve is None:
            raise ConfigError(
                "image_size",
                f"{self.dataset} has a fixed input size ({spec.image_size})",
                "drop it; it only applies to imagefolder datasets",
            )
        if not streams(spec):
            for name, unset in (("object_store_gb", None), ("decode_workers", None), ("decode", "cpu")):
                if getattr(self, name) != unset:
                    raise ConfigError(
                        name,
                        f"{self.dataset} is always decoded once (only imagenet_style data may stream)",
                        "drop it",
                    )
        return self

    def resolved_contrast_replace(self) -> bool:
        """``contrast_replace``, or the dataset's default when unset."""
        if self.contrast_replace is not None:
            return bool(self.contrast_replace)
        return DATASETS.get(self.dataset).contrast_replace


def streams(spec: DatasetSpec) -> bool:
    """Whether the dataset's loader chooses between decoding once and streaming (it takes ``budget_bytes``:
    ``imagenet_style``, :mod:`cktf.data.imagenet_style`)."""
    try:
        return "budget_bytes" in inspect.signature(spec.load).parameters
    except (TypeError, ValueError):  # a builtin or C callable: no budget
        return False


@dataclass
class Splits:
    """The data of one run. ``spec`` is resolved (imagefolder: classes, size and mean/std filled in).

    Attributes:
        spec: the dataset description (normalisation, augmentation, input side).
        train: training rows; their positions are ``batch["index"]`` and the memory-bank rows.
        val: held-out part of train (``None`` when ``val_fraction == 0``).
        test: test split (Tiny-ImageNet: the official val split).
        contrast_replace: whether contrastive negatives are drawn with replacement.
    """

    spec: DatasetSpec
    train: ArrayDataset
    val: ArrayDataset | None
    test: ArrayDataset
    contrast_replace: bool = False

    @property
    def image_size(self) -> int:
        """Side of the model input (32 or 64)."""
        return self.spec.image_size

    @property
    def num_classes(self) -> int:
        return self.spec.num_classes or len(self.train.classes)


def stratified_pick(targets: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of ``n`` rows drawn without replacement, class proportions kept (largest remainder).

    Unlabeled rows (target -1) form one group, so a fully unlabeled split is a uniform draw.
    """
    total = len(targets)
    n = min(n, total)
    classes, inverse, counts = np.unique(targets, return_inverse=True, return_counts=True)
    exact = counts * (n / total)
    quota = np.floor(exact).astype(np.int64)
    short = n - int(quota.sum())
    if short:
        order = np.lexsort((rng.random(len(classes)), -(exact - quota)))  # largest remainders, ties at random
        quota[order[:short]] += 1
    picked = []
    for c in range(len(classes)):
        rows = np.flatnonzero(inverse == c)
        picked.append(rng.choice(rows, size=int(quota[c]), replace=False))
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, dtype=np.int64)


def holdout(targets: np.ndarray, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``(train_rows, val_rows)``: a class-stratified ``fraction`` of the rows held out, both sorted.

    Every class with at least two rows keeps at least one in train.
    """
    if fraction <= 0:
        return np.arange(len(targets)), np.zeros(0, dtype=np.int64)
    n_val = int(round(len(targets) * fraction))
    val = stratified_pick(targets, n_val, rng)
    mask = np.ones(len(targets), dtype=bool)
    mask[val] = False
    # a class whose every row went to val (tiny classes) gives one back
    for c in np.unique(targets[val]):
        if c >= 0 and not (mask & (targets == c)).any() and (targets == c).sum() > 1:
            back = val[targets[val] == c][0]
            mask[back] = True
    train_rows = np.flatnonzero(mask)
    return train_rows, np.flatnonzero(~mask)


def _materialise(ds: ArrayDataset, rows: np.ndarray | None = None) -> ArrayDataset:
    """In-memory (not memory-mapped) copy of ``ds`` or of its ``rows`` (a streamed split keeps its file list)."""
    if isinstance(ds, StreamDataset):
        return ds if rows is None else ds.subset(rows)
    if rows is None:
        return ArrayDataset(np.array(ds.images), np.array(ds.targets, dtype=np.int64), list(ds.classes))
    return ArrayDataset(np.asarray(ds.images[rows]), np.asarray(ds.targets[rows], dtype=np.int64), list(ds.classes))


def load_splits(cfg: DataConfig, progress: bool = True) -> Splits:
    """Validate ``cfg``, read the train/test splits (cached) and cut the subsets and the val split.

    Raises:
        ConfigError: a bad field (named ``data.<field>``).
        UnknownNameError: ``cfg.dataset`` is not registered.
        DataNotFoundError: the files are not under ``cfg.root`` (the message says where and how to get them).
    """
    spec = DATASETS.get(cfg.dataset)
    opts = dict(cache_dir=cfg.cache_dir, image_size=cfg.image_size, progress=progress)
    if cfg.object_store_gb is not None and streams(spec):
        opts["budget_bytes"] = int(cfg.object_store_gb * 1e9)  # decode once or stream (imagenet_style)
    train_full = spec.load(cfg.root, spec.train_split, cfg.download, **opts)
    test_full = spec.load(cfg.root, spec.test_split, cfg.download, **opts)
    if spec.resolve is not None:
        spec = spec.resolve(spec, cfg.root, train_full, cache_dir=cfg.cache_dir, image_size=cfg.image_size)
    rng = np.random.default_rng(cfg.split_seed)
    rows = None
    if cfg.train_subset is not None:
        if cfg.train_subset > len(train_full):
            log.warning("data.train_subset=%d > %d train images; using all", cfg.train_subset, len(train_full))
        rows = stratified_pick(train_full.targets, cfg.train_subset, rng)
    pool = train_full.targets if rows is None else train_full.targets[rows]
    # an images-only split (stl10_unlabeled) has no labels to validate on: nothing is held out from it
    fraction = 0.0 if cfg.drop_labels or (len(pool) and bool((pool == UNLABELED).all())) else cfg.val_fraction
    train_rows, val_rows = holdout(pool, fraction, rng)
    if rows is not None:
        train_rows, val_rows = rows[train_rows], rows[val_rows]
    whole = rows is None and len(val_rows) == 0
    train = _materialise(train_full, None if whole else train_rows)
    val = _materialise(train_full, val_rows) if fraction > 0 else None
    test_rows = None
    if cfg.test_subset is not None:
        if cfg.test_subset > len(test_full):
            log.warning("data.test_subset=%d > %d test images; using all", cfg.test_subset, len(test_full))
        test_rows = stratified_pick(test_full.targets, cfg.test_subset, np.random.default_rng([cfg.split_seed, 1]))
    test = _materialise(test_full, test_rows)
    if cfg.drop_labels:  # images only: nothing downstream can read a label
        unlabeled = np.full(len(train), UNLABELED, dtype=np.int64)
        if isinstance(train, StreamDataset):
            train = train.with_targets(unlabeled)
        else:
            train = ArrayDataset(train.images, unlabeled, [])
        val = None
    return Splits(spec, train, val, test, contrast_replace=cfg.resolved_contrast_replace())
