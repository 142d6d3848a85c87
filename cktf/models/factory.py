"""Building a model by name: ``create_model("resnet20", num_classes=100)``, ``create_model("tv:resnet50", 10)``.

The names live in the registry (:mod:`._registry`); building, and loading weights into what was built, here.
"""

from __future__ import annotations

from ._base import DistillModel
from ._registry import MODELS
from .sources import load_weights


def create_model(name: str, num_classes: int, weights: str | None = None, download: bool = False) -> DistillModel:
    """Build a model.

    Args:
        weights: ``None`` (random initialisation), a local ``.safetensors`` / ``.pth`` file (read weights-only), or,
            for a library model, its named weights (``DEFAULT``, ``IMAGENET1K_V2``) from the library's cache.
        download: fetch library weights the cache lacks (otherwise nothing is downloaded).
    """
    model = MODELS.get(name)(num_classes=num_classes)
    if weights:
        load_weights(model, weights, download)
    return model


__all__ = ["create_model"]
