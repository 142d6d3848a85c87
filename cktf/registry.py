"""A tiny name -> object registry (timm/torchdistill style).

One instance each for models, datasets and distillers. Lookups of unknown names raise
:class:`UnknownNameError` listing what is available, so the CLI can turn it into a clear error.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError):
    """Raised when a name is not registered; the message lists the registered names."""

    def __init__(self, kind: str, name: str, available: list[str]):
        from .errors import did_you_mean

        self.kind, self.name, self.available = kind, name, available
        hint = did_you_mean(name, available)
        super().__init__(f"unknown {kind} {name!r}{hint}; available: {', '.join(available)}")

    def __str__(self) -> str:  # KeyError quotes its message otherwise
        return self.args[0]

    def __reduce__(self):  # copy/pickle (Ray ships a trial's exception to the driver)
        return (type(self), (self.kind, self.name, self.available))


class Registry(Generic[T]):
    """Maps names to objects (classes or factory functions) plus free-form metadata."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}
        self._meta: dict[str, dict[str, Any]] = {}

    def register(self, name: str, **meta: Any) -> Callable[[T], T]:
        """Decorator: ``@MODELS.register("resnet20", family="resnet_cifar")``."""

        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            self._meta[name] = dict(meta)
            return obj

        return deco

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise UnknownNameError(self.kind, name, self.names()) from None

    def meta(self, name: str) -> dict[str, Any]:
        self.get(name)
        return self._meta[name]

    def names(self, pattern: str = "*") -> list[str]:
        return [n for n in self._items if fnmatch.fnmatch(n, pattern)]

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)


def import_plugins(modules: Iterable[str], field: str = "plugins") -> None:
    """Import each named module (a user's own methods, models or datasets register themselves on import).

    Raises:
        ConfigError: on ``field`` when a module cannot be imported, naming it and the import error.
    """
    import importlib

    from .errors import ConfigError

    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as exc:  # the module's own import errors, whatever they are, are the user's to see
            raise ConfigError(
                field, f"cannot import {name!r}: {type(exc).__name__}: {exc}", "put the module on PYTHONPATH"
            ) from None
