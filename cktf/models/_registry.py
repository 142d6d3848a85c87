"""The model registry and factory."""

from __future__ import annotations

from ..registry import Registry
from ._base import DistillModel

MODELS: Registry = Registry("model")


def create_model(name: str, num_classes: int) -> DistillModel:
    """Build a registered model: ``create_model("resnet20", num_classes=100)``."""
    return MODELS.get(name)(num_classes=num_classes)
