"""The model registry: the names (building is :mod:`.factory`'s).

Zoo names (``resnet20``) are registered entries; a name with a source prefix (``tv:resnet50``,
``timm:convnext_tiny``, ``module:pkg.mod:factory``; docs/models.md) is answered by the source that
:mod:`cktf.models.sources` registers here. Both kinds go through :data:`MODELS` (``MODELS.get(name)`` gives a
factory taking ``num_classes``), so every check that looks a model up (the study schema, ``check_arch``, the CLI)
accepts both.
"""

from __future__ import annotations

from typing import Any, Protocol

from ..registry import Registry


class SourceNames(Protocol):
    """What the registry asks of the library and user models (:mod:`cktf.models.sources` registers one)."""

    def matches(self, name: str) -> bool: ...

    def check(self, name: str) -> None: ...

    def factory(self, name: str) -> Any: ...


class ModelRegistry(Registry):
    """The zoo's registry, also answering for ``source:name`` models (never listed by :meth:`names`) through the
    sources registered with :meth:`add_source` (names here, building there, as timm splits them)."""

    def __init__(self, kind: str):
        super().__init__(kind)
        self._sources: list[SourceNames] = []

    def add_source(self, source: SourceNames) -> None:
        self._sources.append(source)

    def _source(self, name: Any) -> SourceNames | None:
        return next((s for s in self._sources if isinstance(name, str) and s.matches(name)), None)

    def get(self, name: str) -> Any:
        source = self._source(name)
        if source is not None:
            source.check(name)
            return source.factory(name)
        return super().get(name)

    def meta(self, name: str) -> dict[str, Any]:
        source = self._source(name)
        if source is not None:
            source.check(name)
            return {"source": name.partition(":")[0]}
        return super().meta(name)


MODELS: ModelRegistry = ModelRegistry("model")
