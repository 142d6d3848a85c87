"""``module:pkg.mod:factory``: a user's own ``nn.Module`` behind the feature contract (docs/models.md).

``factory`` is called with ``num_classes=`` when it accepts it (else with no arguments) and returns one of:

* a :class:`~cktf.models.DistillModel` (already on the contract: used as it is);
* ``(model, layout)``: any ``nn.Module`` whose forward returns logits, with its stage modules named by a
  :class:`~.hooked.StageLayout`, a dict ``{"stem": PATH, "stages": [PATH, ...]}`` or a list ``[STEM, STAGE, ...]``
  (``model.get_submodule`` paths);
* a model carrying that layout as its ``cktf_stages`` attribute;
* a model with a sequential ``features`` trunk (stages found from its strides, as torchvision's MobileNets).

Optional attributes of the model: ``cktf_family`` (models of one family pair officially in CKTF; default: the
model's class) and ``cktf_input_size`` (the side its feature shapes are measured at; default 224).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from .._base import DistillModel
from .hooked import HookedModel, StageLayout, layout_by_reduction
from .naming import SourceNameError

HOW = (
    "return (model, {'stem': 'conv1', 'stages': ['layer1', 'layer2', ...]}) from the factory, or set "
    "model.cktf_stages to that (docs/models.md)"
)


class ModuleSource:
    """The ``module`` source: ``module:pkg.mod:factory``."""

    prefix = "module"
    library = "your module"

    def names(self) -> list[str]:
        return []  # any importable factory

    def rows(self) -> list[tuple[str, str]]:
        return []

    def _factory(self, name: str) -> Callable[..., Any]:
        mod_name, sep, attr = name.rpartition(":")
        if not sep or not mod_name or not attr:
            raise SourceNameError(
                f"module:{name}", f"module:{name} is not of the form module:pkg.mod:factory", "module:my_lab.nets:small"
            )
        try:
            mod = importlib.import_module(mod_name)
        except Exception as exc:  # the user's import errors, whatever they are
            raise SourceNameError(
                f"module:{name}", f"cannot import {mod_name!r}: {type(exc).__name__}: {exc}", "put it on PYTHONPATH"
            ) from None
        factory = getattr(mod, attr, None)
        if not callable(factory):
            raise SourceNameError(f"module:{name}", f"{mod_name} has no callable {attr!r}", "name a function or class")
        return factory

    def check(self, name: str) -> None:
        self._factory(name)

    def build(self, name: str, num_classes: int) -> DistillModel:
        factory = self._factory(name)
        try:
            params = inspect.signature(factory).parameters
        except (TypeError, ValueError):
            params = {}
        takes = "num_classes" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        made = factory(num_classes=num_classes) if takes else factory()
        layout: Any = None
        if isinstance(made, tuple) and len(made) == 2 and isinstance(made[0], nn.Module):
            made, layout = made
        if not isinstance(made, nn.Module):
            raise SourceNameError(f"module:{name}", f"{name} returned {type(made).__name__}, not an nn.Module", HOW)
        if isinstance(made, DistillModel):
            made.source = made.source or f"module:{name}"
            return made
        layout = layout if layout is not None else getattr(made, "cktf_stages", None)
        probe = int(getattr(made, "cktf_input_size", 224))
        try:
            if layout is None:
                if not isinstance(getattr(made, "features", None), nn.Sequential):
                    raise SourceNameError(f"module:{name}", f"{name}: the model's stage modules are not named", HOW)
                layout = layout_by_reduction(made, "features", probe)
            family = getattr(made, "cktf_family", None) or f"module:{type(made).__module__}.{type(made).__qualname__}"
            model = HookedModel(made, StageLayout.of(made, layout), f"module:{name}", str(family), probe)
        except (ValueError, RuntimeError) as exc:
            raise SourceNameError(
                f"module:{name}", f"{name}: {exc}", f"{HOW}; set cktf_input_size if not 224"
            ) from None
        if "cktf_input_size" in vars(made) or hasattr(type(made), "cktf_input_size"):
            model.input_sizes = (probe,)
        if model.num_classes != num_classes:
            raise SourceNameError(
                f"module:{name}",
                f"{name} built a {model.num_classes}-way classifier for a {num_classes}-class run",
                "let the factory take num_classes=",
            )
        return model
