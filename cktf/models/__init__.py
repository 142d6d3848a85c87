"""The model zoo: every architecture of RepDistiller / CKTF behind one feature contract.

Importing this package registers all families in :data:`MODELS`; build one with
``create_model("resnet20", num_classes=100)`` and list them with :func:`list_models`. The contract
(``forward`` -> logits, ``forward_distill`` -> :class:`DistillOutput`) is described in ``_base.py``.
Library and user models (``tv:resnet50``, ``timm:convnext_tiny``, ``module:pkg.mod:factory``) are built through
the same ``create_model`` (:mod:`cktf.models.sources`, docs/models.md); :func:`list_source_models` lists a source.
"""

from __future__ import annotations

from . import mobilenetv2, resnet_cifar, resnet_imagenet, shufflenet, vgg, wrn  # noqa: F401 - registration
from ._base import DistillModel, DistillOutput, FeatureInfo
from ._registry import MODELS
from .factory import create_model
from .sources import StageLayout, list_source_models

__all__ = [
    "MODELS",
    "DistillModel",
    "DistillOutput",
    "FeatureInfo",
    "StageLayout",
    "create_model",
    "list_models",
    "list_source_models",
]


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style ``pattern``, in registration order."""
    return MODELS.names(pattern)
