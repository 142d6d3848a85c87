"""Names of sourced models (``tv:resnet50``, ``timm:convnext_tiny``, ``module:pkg.mod:factory``) and their errors.

A bad name raises :class:`SourceNameError`, an :class:`~cktf.registry.UnknownNameError`, so every place that looks
a model up (``cktf.config.lookup`` in the study schema, the CLI) turns it into one clear error on its field.
"""

from __future__ import annotations

from ...registry import UnknownNameError


class SourceNameError(UnknownNameError):
    """A sourced model name that cannot be built, with what is wrong and how to fix it."""

    def __init__(self, name: str, problem: str, fix: str = ""):
        self.problem, self.fix = problem, fix
        super().__init__("model", name, [])
        self.args = (problem + (f" (fix: {fix})" if fix else ""),)

    def __reduce__(self):
        return (type(self), (self.name, self.problem, self.fix))


def split_name(name: str) -> tuple[str, str] | None:
    """``("tv", "resnet50")`` for ``tv:resnet50``; ``None`` for a zoo name (no ``source:`` prefix)."""
    prefix, sep, rest = name.partition(":")
    return (prefix, rest) if sep and prefix and rest else None
