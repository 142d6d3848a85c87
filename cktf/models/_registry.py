"""The model registry and factory.

Zoo names (``resnet20``) are registered entries; a name with a source prefix (``tv:resnet50``,
``timm:convnext_tiny``, ``module:pkg.mod:factory``; docs/models.md) is built by :mod:`cktf.models.sources`. Both
kinds go through :data:`MODELS` (``MODELS.get(name)`` gives a factory taking ``num_classes``), so every check that
looks a model up (the study schema, ``check_arch``, the CLI) accepts both.
"""

from __future__ import annotations

import functools
from typing import Any

from ..registry import Registry
from ._base import DistillModel


class ModelRegistry(Registry):
    """The zoo's registry, also answering for ``source:name`` models (never listed by :meth:`names`)."""

    def get(self, name: str) -> Any:
        from .sources import build_source_model, check_source_name, is_source_name

        if isinstance(name, str) and is_source_name(name):
            check_source_name(name)
            return functools.partial(build_source_model, name)
        return super().get(name)

    def meta(self, name: str) -> dict[str, Any]:
        from .sources import check_source_name, is_source_name

        if is_source_name(name):
            check_source_name(name)
            return {"source": name.partition(":")[0]}
        return super().meta(name)


MODELS: ModelRegistry = ModelRegistry("model")


def create_model(name: str, num_classes: int, weights: str | None = None, download: bool = False) -> DistillModel:
    """Build a model: ``create_model("resnet20", num_classes=100)``, ``create_model("tv:resnet50", 10)``.

    Args:
        weights: ``None`` (random initialisation), a local ``.safetensors`` / ``.pth`` file (read weights-only), or,
            for a library model, its named weights (``DEFAULT``, ``IMAGENET1K_V2``) from the library's cache.
        download: fetch library weights the cache lacks (otherwise nothing is downloaded).
    """
    model = MODELS.get(name)(num_classes=num_classes)
    if weights:
        from .sources import load_weights

        load_weights(model, weights, download)
    return model
