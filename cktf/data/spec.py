"""Dataset descriptions and the ``DATASETS`` registry (docs/algorithm.md §6; §8 for STL-10).

A :class:`DatasetSpec` says how a dataset is fed to a model (input side, normalisation, train
augmentation, default negative sampling) and how to read it from disk (``load``). The sources
(``cifar``, ``tiny_imagenet``, ``stl10``, ``imagefolder``) register one spec each.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from ..errors import DataNotFoundError
from ..registry import Registry
from ._base import ArrayDataset

#: normalisation used for every ImageNet-derived dataset (Tiny-ImageNet, STL-10)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

TrainAug = Literal["crop_flip", "rrc_flip"]


class Loader(Protocol):
    """``load(root, split, download=False, *, cache_dir=None, image_size=None, progress=True) -> ArrayDataset``."""

    def __call__(
        self,
        root: str | Path,
        split: str,
        download: bool = False,
        *,
        cache_dir: str | Path | None = None,
        image_size: int | None = None,
        progress: bool = True,
    ) -> ArrayDataset: ...


@dataclass(frozen=True)
class DatasetSpec:
    """How one dataset is read and fed to a model.

    Attributes:
        name: registry name (``cifar100``).
        num_classes: number of classes; 0 = taken from the data (``imagefolder``).
        image_size: side of the model input (32 or 64); 0 = taken from the data (``imagefolder``).
        mean: per-channel normalisation mean in [0, 1]; ``None`` = computed from the train split.
        std: per-channel normalisation std in [0, 1]; ``None`` = computed from the train split.
        train_aug: ``"crop_flip"`` (RandomCrop(side, padding=4) + flip, CIFAR) or ``"rrc_flip"``
            (RandomResizedCrop(side) + flip, Tiny-ImageNet/STL-10).
        splits: the splits ``load`` can read.
        load: the reader, see :class:`Loader`.
        how_to_get: one sentence on the expected layout / where to get the files, used in errors.
        contrast_replace: default of ``DataConfig.contrast_replace`` (docs/algorithm.md §3: the official code
            samples CIFAR negatives without replacement and ImageFolder ones with replacement).
        train_split: split used as the training set (``unlabeled`` for the STL-10 transfer step 1).
        test_split: split used as the test set (Tiny-ImageNet reports on ``val``, exposed as ``test``).
        resolve: for sources whose statistics come from the data (``imagefolder``):
            ``resolve(spec, root, train, cache_dir=..., image_size=...) -> DatasetSpec`` with every field filled.
        downloadable: ``load(..., download=True)`` can fetch the files.
        eval_resize: the evaluation transform's ``Resize`` side: 0 resizes the stored image to the input side (then a
            centre crop); ``N > image_size`` is torchvision's ImageNet evaluation, ``Resize(N)`` +
            ``CenterCrop(image_size)`` (``imagenet_style`` data stores its images at N already: a crop alone).
    """

    name: str
    num_classes: int
    image_size: int
    mean: tuple[float, float, float] | None
    std: tuple[float, float, float] | None
    train_aug: TrainAug
    splits: tuple[str, ...]
    load: Callable[..., ArrayDataset]
    how_to_get: str
    contrast_replace: bool = False
    train_split: str = "train"
    test_split: str = "test"
    resolve: Callable[..., DatasetSpec] | None = None
    downloadable: bool = True
    eval_resize: int = 0

    def not_found(self, root: str | Path, split: str, checked: Path | str, what: str = "") -> DataNotFoundError:
        """The one-line error raised when a split is missing (says where we looked and how to get it)."""
        where = Path(checked).expanduser().absolute()
        found = f" ({what})" if what else ""
        if self.downloadable:
            fix = (
                f"with internet run `cktf data prepare {self.name} --root {root} --download`, "
                f"otherwise {self.how_to_get}"
            )
        else:
            fix = f"{self.how_to_get}, then `cktf data prepare {self.name} --root {root}` decodes it once"
        return DataNotFoundError(f"{self.name} split {split!r} not found at {where}{found}; {fix}")


#: every dataset the CLI and configs can name
DATASETS: Registry[DatasetSpec] = Registry("dataset")
