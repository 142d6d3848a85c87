"""Data contracts shared by every dataset, loader and distiller.

A split is decoded once into an :class:`ArrayDataset` (uint8 NHWC images plus int64 targets);
loaders yield batches as plain dicts with the keys below, so there is one training loop for
every method (torchdistill's ``supp_dict`` idea; no per-method batch tuples).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

#: keys of a batch dict
IMAGE, TARGET, INDEX, CONTRAST_IDX = "image", "target", "index", "contrast_idx"
#: target value of unlabeled images (STL-10 unlabeled split)
UNLABELED = -1


@dataclass
class ArrayDataset:
    """One decoded split. ``images``: uint8 [N, H, W, 3]; ``targets``: int64 [N] (-1 = unlabeled)."""

    images: np.ndarray
    targets: np.ndarray
    classes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.images.dtype != np.uint8 or self.images.ndim != 4 or self.images.shape[-1] != 3:
            raise ValueError(f"images must be uint8 [N,H,W,3], got {self.images.dtype} {self.images.shape}")
        if len(self.images) != len(self.targets):
            raise ValueError(f"{len(self.images)} images but {len(self.targets)} targets")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def image_size(self) -> int:
        return int(self.images.shape[1])

    @property
    def labeled(self) -> bool:
        return bool(len(self.targets)) and bool((self.targets >= 0).all())

    def subset(self, indices: np.ndarray) -> ArrayDataset:
        return ArrayDataset(self.images[indices], self.targets[indices], self.classes)
