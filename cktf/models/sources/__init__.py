"""Models from libraries and from your own code, behind the zoo's feature contract (docs/models.md).

``tv:NAME`` (torchvision), ``timm:NAME`` (timm, optional: ``pip install cktf[timm]``) and
``module:pkg.mod:factory`` (your own ``nn.Module``) are built by :func:`build_source_model`, which
:func:`cktf.models.create_model` calls for every name with a ``source:`` prefix. Each source says which names it
has (:func:`list_source_models`, ``cktf models --source tv``), checks a name cheaply (:func:`check_source_name`)
and builds the model randomly initialised; weights come from :func:`load_weights`: a local ``.safetensors`` /
``.pth`` file, or the library's named weights from its cache (downloaded only when asked).
"""

from __future__ import annotations

import fnmatch
import logging
from typing import Protocol

from torch import Tensor

from .._base import DistillModel
from .._registry import MODELS
from .hooked import HookedModel, StageLayout, block_paths, layout_by_pools, layout_by_reduction
from .module import ModuleSource
from .naming import SourceNameError, split_name
from .timm_models import TimmSource
from .tv import TorchvisionSource
from .weights import apply_weights, is_weights_file, load_state_file, weights_num_classes

log = logging.getLogger("cktf")


class _Names:
    """The sources' names as the registry asks for them (:meth:`~cktf.models._registry.ModelRegistry.add_source`)."""

    def matches(self, name: str) -> bool:
        return is_source_name(name)

    def check(self, name: str) -> None:
        check_source_name(name)

    def factory(self, name: str):
        import functools

        return functools.partial(build_source_model, name)


MODELS.add_source(_Names())


__all__ = [
    "SOURCES",
    "HookedModel",
    "SourceNameError",
    "StageLayout",
    "apply_weights",
    "block_paths",
    "build_source_model",
    "check_source_name",
    "describe_source_models",
    "is_source_name",
    "layout_by_pools",
    "layout_by_reduction",
    "list_source_models",
    "load_state_file",
    "load_weights",
    "pretrained_model",
    "weights_num_classes",
    "weights_state",
]


class Source(Protocol):
    prefix: str
    library: str

    def names(self) -> list[str]: ...

    def rows(self) -> list[tuple[str, str]]: ...

    def check(self, name: str) -> None: ...

    def build(self, name: str, num_classes: int) -> DistillModel: ...


#: prefix -> source
SOURCES: dict[str, Source] = {s.prefix: s for s in (TorchvisionSource(), TimmSource(), ModuleSource())}


def is_source_name(name: str) -> bool:
    """Whether ``name`` has a known ``source:`` prefix (``tv:resnet50``)."""
    parts = split_name(name)
    return parts is not None and parts[0] in SOURCES


def _source(name: str) -> tuple[Source, str]:
    parts = split_name(name)
    if parts is None or parts[0] not in SOURCES:
        raise SourceNameError(name, f"{name!r} names no model source", f"prefix it with one of {', '.join(SOURCES)}")
    return SOURCES[parts[0]], parts[1]


def check_source_name(name: str) -> None:
    """Raise :class:`SourceNameError` unless ``name`` can be built (imports the library, builds nothing).

    A ``timm:`` name is accepted unchecked when timm is not installed: building it says how to install it.
    """
    source, rest = _source(name)
    if source.prefix == "timm":
        try:
            import timm  # noqa: F401
        except ImportError:
            return
    source.check(rest)


def build_source_model(name: str, num_classes: int, weights: str | None = None, download: bool = False) -> DistillModel:
    """Build ``name`` (``tv:resnet50``, ``timm:convnext_tiny``, ``module:pkg.mod:factory``) for ``num_classes``.

    Args:
        weights: ``None`` (random initialisation), a local ``.safetensors`` / ``.pth`` file, or the library's
            weights tag (``DEFAULT``, ``IMAGENET1K_V2``; timm: ``DEFAULT`` or a pretrained tag) read from its cache.
        download: fetch library weights the cache lacks (nothing is ever downloaded otherwise).
    """
    source, rest = _source(name)
    model = source.build(rest, num_classes)
    if weights:
        load_weights(model, weights, download)
    return model


def weights_state(
    model: DistillModel, weights: str, download: bool = False, field: str = "weights"
) -> tuple[dict[str, Tensor], str]:
    """The state dict ``weights`` names for ``model`` (a file, or a library tag for a sourced model) and where it
    came from.

    Raises:
        ConfigError: on ``field``: a missing file, a tag for a zoo model or an unknown tag, weights the cache lacks
            without ``download``.
        UnsafeDataError: a ``.pth`` that is a pickle naming code to run.
    """
    from ...errors import ConfigError

    if is_weights_file(weights):
        return load_state_file(weights, field), str(weights)
    source = SOURCES.get(model.source.partition(":")[0]) if model.source else None
    if source is None or not hasattr(source, "library_state"):
        raise ConfigError(
            field,
            f"{weights!r} is not a .safetensors/.pth file, and {model.source or type(model).__name__} has no "
            "library weights",
            "give a path to a local weights file",
        )
    try:
        return source.library_state(model.source.partition(":")[2], weights, download)  # type: ignore[attr-defined]
    except ConfigError as exc:  # the sources name the field ``weights``: the caller's field instead
        raise ConfigError(field, exc.problem, exc.fix) from None


def load_weights(
    model: DistillModel, weights: str, download: bool = False, field: str = "weights", same_head: bool = False
) -> str:
    """Load ``weights`` (a file, or a library tag for a sourced model) into ``model``; returns where they came from.

    ``same_head``: the weights' classifier must fit ``model``'s (weights used as they are); by default a classifier
    of another class count is left at its initialisation (:func:`~.weights.apply_weights`).

    Raises:
        ConfigError: on ``field``: a missing file, a tag for a zoo model or an unknown tag, weights the cache lacks
            without ``download``, keys or shapes that do not fit.
        UnsafeDataError: a ``.pth`` that is a pickle naming code to run.
    """
    state, where = weights_state(model, weights, download, field)
    apply_weights(model, state, where, field, same_head=same_head)
    log.info("%s: weights from %s", model.source or type(model).__name__, where)
    return where


def pretrained_model(
    name: str, weights: str, num_classes: int | None = None, download: bool = False, field: str = "weights"
) -> DistillModel:
    """``name`` with ``weights`` used as they are, classifier included: as many classes as the weights have
    (``num_classes`` None), else exactly ``num_classes`` (another count is a :class:`ConfigError` on ``field``)."""
    probe = MODELS.get(name)(num_classes=num_classes or 1)
    state, where = weights_state(probe, weights, download, field)
    if num_classes is None:
        num_classes = weights_num_classes(probe, state)
        if num_classes is None:
            from ...errors import ConfigError

            raise ConfigError(field, f"{where} holds no classifier of {name}", "pass weights saved from that model")
        probe = MODELS.get(name)(num_classes=num_classes)
    apply_weights(probe, state, where, field, same_head=True)
    log.info("%s: weights from %s (%d classes)", name, where, num_classes)
    return probe


def list_source_models(prefix: str, pattern: str = "*") -> list[str]:
    """``source:name`` of every model of source ``prefix`` whose name matches ``pattern`` (``cktf models --source``).

    Raises:
        SourceNameError: an unknown prefix, or ``timm`` without timm installed.
    """
    if prefix not in SOURCES:
        raise SourceNameError(prefix, f"no model source {prefix!r}", f"use one of {', '.join(SOURCES)}")
    return [name for name, _ in describe_source_models(prefix, pattern)]


def describe_source_models(prefix: str, pattern: str = "*") -> list[tuple[str, str]]:
    """``(source:name, family)`` of every model of source ``prefix`` matching ``pattern``, nothing built (the rows of
    ``cktf models --source``; ``module`` lists none: any importable factory is a model).

    Raises:
        SourceNameError: an unknown prefix, or ``timm`` without timm installed.
    """
    if prefix not in SOURCES:
        raise SourceNameError(prefix, f"no model source {prefix!r}", f"use one of {', '.join(SOURCES)}")
    return [(f"{prefix}:{n}", fam) for n, fam in SOURCES[prefix].rows() if fnmatch.fnmatch(n, pattern)]
