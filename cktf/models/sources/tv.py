"""``tv:NAME``: every torchvision classification model with a convolutional trunk (docs/models.md).

The stages are named per family (ResNet/ResNeXt/Wide-ResNet ``layer1..4``, RegNet ``trunk_output.block1..4``,
ShuffleNetV2 ``stage2..4``), split at the max-pools of a plain conv trunk (VGG, AlexNet:
:func:`~.hooked.layout_by_pools`) or found from the output strides of the family's sequential trunk (``features`` of
MobileNetV2/V3, EfficientNet(V2), ConvNeXt, DenseNet; ``layers`` of MNASNet: :func:`~.hooked.layout_by_reduction`).
Token models (ViT, Swin, MaxViT), GoogLeNet/Inception (auxiliary heads) and SqueezeNet (a convolutional classifier)
have no such trunk and are refused with the list of families that work.

Weights (:meth:`TorchvisionSource.library_state`): torchvision's named weights (``DEFAULT``, ``IMAGENET1K_V2``, ...)
are read from the torch hub cache (``$TORCH_HOME/hub/checkpoints``) when it holds them, weights-only; they are
downloaded only with ``download=True``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from ...errors import ConfigError
from .hooked import HookedModel, StageLayout, block_paths, layout_by_pools, layout_by_reduction
from .naming import SourceNameError


def _resnet(m: nn.Module) -> StageLayout:
    return StageLayout("relu", tuple((f"layer{i}", block_paths(m, f"layer{i}")) for i in range(1, 5)))


def _regnet(m: nn.Module) -> StageLayout:
    return StageLayout(
        "stem", tuple((f"trunk_output.block{i}", block_paths(m, f"trunk_output.block{i}")) for i in range(1, 5))
    )


def _shufflenet(m: nn.Module) -> StageLayout:
    stages = [(f"stage{i}", block_paths(m, f"stage{i}")) for i in (2, 3, 4)]
    stages[-1] = ("conv5", stages[-1][1] + ("conv5",))  # the last 1x1 conv closes the last stage
    return StageLayout("conv1", tuple(stages))


def _trunk(name: str) -> Callable[[nn.Module], StageLayout]:
    return lambda m: layout_by_reduction(m, name)


def _pools(name: str) -> Callable[[nn.Module], StageLayout]:
    return lambda m: layout_by_pools(m, name)


#: family -> (name prefixes, layout); the first family whose prefix matches a name wins
FAMILIES: dict[str, tuple[tuple[str, ...], Callable[[nn.Module], StageLayout]]] = {
    "resnet": (("resnet", "resnext", "wide_resnet"), _resnet),
    "regnet": (("regnet",), _regnet),
    "shufflenet_v2": (("shufflenet_v2",), _shufflenet),
    "mobilenet_v2": (("mobilenet_v2",), _trunk("features")),
    "mobilenet_v3": (("mobilenet_v3",), _trunk("features")),
    "efficientnet_v2": (("efficientnet_v2",), _trunk("features")),
    "efficientnet": (("efficientnet",), _trunk("features")),
    "convnext": (("convnext",), _trunk("features")),
    "vgg": (("vgg",), _pools("features")),
    "densenet": (("densenet",), _trunk("features")),
    "alexnet": (("alexnet",), _pools("features")),
    "mnasnet": (("mnasnet",), _trunk("layers")),
}

#: torchvision's own fix of its old DenseNet checkpoints (``torchvision.models.densenet._load_state_dict``)
_DENSENET_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)


def family_of(name: str) -> str | None:
    for family, (prefixes, _) in FAMILIES.items():
        if name.startswith(prefixes):
            return family
    return None


def hub_checkpoints() -> Path:
    """torch hub's weights cache: ``$TORCH_HOME/hub/checkpoints`` (default ``~/.cache/torch/hub/checkpoints``)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


class TorchvisionSource:
    """The ``tv`` source (torchvision's classification models)."""

    prefix = "tv"
    library = "torchvision"

    def names(self) -> list[str]:
        import torchvision.models as tvm

        return [n for n in tvm.list_models(module=tvm) if family_of(n) is not None]

    def family(self, name: str) -> str:
        return f"tv:{family_of(name)}"

    def rows(self) -> list[tuple[str, str]]:
        """``(name, family)`` of every model (``cktf models --source tv``), nothing built."""
        return [(n, self.family(n)) for n in self.names()]

    def check(self, name: str) -> None:
        import torchvision.models as tvm

        if name not in tvm.list_models(module=tvm):
            raise SourceNameError(
                f"tv:{name}",
                f"torchvision has no classification model {name!r}",
                "`cktf models --source tv` lists them",
            )
        if family_of(name) is None:
            raise SourceNameError(
                f"tv:{name}",
                f"tv:{name} has no convolutional stage trunk cktf can read (token, Inception and SqueezeNet models)",
                f"use one of the families {', '.join(FAMILIES)} (`cktf models --source tv`)",
            )

    def build_library(self, name: str, num_classes: int) -> nn.Module:
        """The library's own model, randomly initialised (``weights=None``: nothing is downloaded)."""
        import torchvision.models as tvm

        return tvm.get_model(name, weights=None, num_classes=num_classes)

    def wrap(self, name: str, model: nn.Module) -> HookedModel:
        family = family_of(name)
        assert family is not None
        return HookedModel(model, FAMILIES[family][1](model), f"tv:{name}", self.family(name))

    def build(self, name: str, num_classes: int) -> HookedModel:
        self.check(name)
        return self.wrap(name, self.build_library(name, num_classes))

    def library_state(self, name: str, tag: str, download: bool) -> tuple[dict[str, Tensor], str]:
        """torchvision's weights ``tag`` of ``name`` and where they came from: the hub cache, or a download when
        ``download`` (checked against torchvision's hash), read weights-only either way.

        Raises:
            ConfigError: on ``weights`` for an unknown tag, or weights the cache lacks without ``download``.
        """
        import torchvision.models as tvm

        enum = tvm.get_model_weights(name)
        members = [w.name for w in enum]
        try:
            w = enum.DEFAULT if tag.upper() == "DEFAULT" else enum[tag]
        except KeyError:
            raise ConfigError(
                "weights", f"tv:{name} has no weights {tag!r}", f"use DEFAULT or one of {', '.join(members)}"
            ) from None
        file = hub_checkpoints() / os.path.basename(w.url)
        if not file.is_file() and not download:
            raise ConfigError(
                "weights",
                f"torchvision weights {w} of tv:{name} are not in the torch hub cache ({file}) and nothing is "
                "downloaded unless asked",
                "pass --download (download=True) on a machine with internet, copy the file there "
                f"({os.path.basename(w.url)}), or give weights: PATH to a local .safetensors/.pth file",
            )
        state = torch.hub.load_state_dict_from_url(
            w.url,
            model_dir=str(hub_checkpoints()),
            map_location="cpu",
            progress=False,
            check_hash=True,
            weights_only=True,
        )
        if name.startswith("densenet"):
            state = {(_DENSENET_KEY.sub(r"\1\2", k)): v for k, v in state.items()}
        return dict(state), str(file)
