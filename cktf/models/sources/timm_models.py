"""``timm:NAME``: PyTorch Image Models behind the feature contract (the optional extra ``pip install cktf[timm]``).

timm is imported only when a ``timm:`` model is named. The stages are timm's own ``feature_info`` (what
``features_only=True`` returns): its first entry is the stem when it reduces the input at most 2x (``act1`` of
ResNet, ``bn1`` of MobileNetV3, ``stem`` of RegNet), otherwise the trunk child that runs before it is (``stem`` of
ConvNeXt); each later entry is a stage, whose blocks are the blocks of every sibling module since the previous entry
(``blocks.2`` and ``blocks.3`` for MobileNetV3's ``blocks.3``). Token models (ViT, DeiT, ...) give no ``[C, H, W]``
maps and are refused.

Weights: a tag of the model's pretrained configs (``DEFAULT`` = timm's default tag, or e.g. ``a1_in1k``) is read
from the Hugging Face hub cache when it holds the file, weights-only; it is downloaded only with ``download=True``.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from ...errors import ConfigError
from .hooked import PRIMITIVE, HookedModel, StageLayout, block_paths
from .naming import SourceNameError
from .weights import load_state_file

INSTALL = "pip install cktf[timm]"
HUB_FILES = ("model.safetensors", "pytorch_model.bin")
#: siblings of a stage module that are never blocks of it
NOT_BLOCKS = (*PRIMITIVE, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d)


def import_timm() -> Any:
    """The ``timm`` module, or a clear error saying how to install it."""
    try:
        import timm
    except ImportError:
        raise SourceNameError("timm", "timm: models need the optional package timm (not installed)", INSTALL) from None
    return timm


def timm_layout(model: nn.Module) -> StageLayout:
    """Stem and stages of a timm model from its ``feature_info`` (module docstring)."""
    info = getattr(model, "feature_info", None)
    if not info:
        raise ValueError(f"{type(model).__name__} has no feature_info")
    entries = [(str(d["module"]), int(d["reduction"])) for d in info]
    if entries[0][1] <= 2 or len(entries) == 1:
        stem, stage_entries = entries[0][0], [p for p, _ in entries[1:]]
    else:
        top = entries[0][0].split(".")[0]
        names = [n for n, _ in model.named_children()]
        if names.index(top) == 0:
            raise ValueError(f"{type(model).__name__}: no module runs before its first feature stage {top}")
        stem, stage_entries = names[names.index(top) - 1], [p for p, _ in entries]
    stages = []
    prev = stem
    for path in stage_entries:
        stages.append((path, _blocks_since(model, prev, path)))
        prev = path
    return StageLayout(stem, tuple(stages))


def _blocks_since(model: nn.Module, prev: str, path: str) -> tuple[str, ...]:
    """The blocks of ``path`` and of its siblings after ``prev`` (same parent container), in order."""
    parent, _, leaf = path.rpartition(".")
    p_parent, _, p_leaf = prev.rpartition(".")
    container = model.get_submodule(parent) if parent else model
    names = [n for n, _ in container.named_children()]
    start = names.index(p_leaf) + 1 if p_parent == parent and p_leaf in names else names.index(leaf)
    out: list[str] = []
    for n in names[start : names.index(leaf) + 1]:
        if n != leaf and isinstance(container.get_submodule(n), NOT_BLOCKS):
            continue  # a pool or a lone layer between the stem and a stage is no block
        out += block_paths(model, f"{parent}.{n}" if parent else n)
    return tuple(out)


class TimmSource:
    """The ``timm`` source (PyTorch Image Models; optional)."""

    prefix = "timm"
    library = "timm"

    def names(self) -> list[str]:
        return list(import_timm().list_models())

    def rows(self) -> list[tuple[str, str]]:
        """``(name, family)`` of every timm model (its timm module; token models among them are refused when built)."""
        timm = import_timm()
        return sorted((n, f"timm:{m}") for m in timm.list_modules() for n in timm.list_models(module=m))

    def family(self, model: nn.Module) -> str:
        return f"timm:{type(model).__module__.rsplit('.', 1)[-1]}"

    def check(self, name: str) -> None:
        timm = import_timm()
        if not timm.is_model(name.split(".")[0]):
            raise SourceNameError(
                f"timm:{name}", f"timm has no model {name!r}", "`cktf models --source timm` lists them"
            )

    def build_library(self, name: str, num_classes: int) -> nn.Module:
        """timm's own model, randomly initialised (``pretrained=False``: nothing is downloaded)."""
        return import_timm().create_model(name, pretrained=False, num_classes=num_classes)

    def wrap(self, name: str, model: nn.Module) -> HookedModel:
        try:
            return HookedModel(model, timm_layout(model), f"timm:{name}", self.family(model))
        except ValueError as exc:
            raise SourceNameError(f"timm:{name}", str(exc), "pick a convolutional timm model") from None

    def build(self, name: str, num_classes: int) -> HookedModel:
        self.check(name)
        return self.wrap(name, self.build_library(name, num_classes))

    def library_state(self, name: str, tag: str, download: bool) -> tuple[dict[str, Tensor], str]:
        """timm's pretrained weights ``tag`` of ``name`` from the Hugging Face hub cache (downloaded only when
        ``download``), read weights-only, and where they came from.

        Raises:
            ConfigError: on ``weights`` for a model without hub weights, or weights the cache lacks without
                ``download``.
        """
        timm = import_timm()
        full = name if tag.upper() == "DEFAULT" else f"{name.split('.')[0]}.{tag}"
        cfg = timm.models.get_pretrained_cfg(full)
        repo = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
        if not repo:
            raise ConfigError("weights", f"timm:{full} has no weights on the Hugging Face hub", "give weights: PATH")
        from huggingface_hub import try_to_load_from_cache

        for fname in HUB_FILES:
            hit = try_to_load_from_cache(repo_id=repo, filename=fname)
            if isinstance(hit, str):
                return load_state_file(hit), hit
        if not download:
            raise ConfigError(
                "weights",
                f"timm weights {repo} of timm:{name} are not in the Hugging Face hub cache and nothing is downloaded "
                "unless asked",
                "pass --download (download=True) on a machine with internet, or give weights: PATH to a local "
                ".safetensors/.pth file",
            )
        from huggingface_hub import hf_hub_download

        path = hf_hub_download(repo_id=repo, filename=HUB_FILES[0])
        return load_state_file(path), path
