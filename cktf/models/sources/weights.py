"""Weights for any model: a local file, read as weights only (docs/models.md, "Weights").

``.safetensors`` files are read with safetensors (tensors and nothing else); ``.pth`` / ``.pt`` / ``.bin`` /
``.ckpt`` files with ``torch.load(weights_only=True)``, which refuses a pickle that names code to run (a whole
pickled ``nn.Module``, an optimizer with custom classes): that is an :class:`~cktf.errors.UnsafeDataError`, never
loaded. A checkpoint that nests its state dict (``{"state_dict": ...}``, ``{"model": ...}``) or was saved from
``DataParallel`` (``module.`` prefixes) is unwrapped.

:func:`apply_weights` loads a state dict into a model, library key names (``layer1.0.conv1.weight``) or cktf's
(``model.layer1.0.conv1.weight``) alike. A classifier whose class count differs from the run's (ImageNet weights
for a 100-class dataset) is left at its fresh initialisation, with a log line; any other mismatch is an error that
names the keys.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from ...errors import ConfigError, UnsafeDataError

log = logging.getLogger("cktf")

SAFETENSORS = (".safetensors",)
TORCH_FILES = (".pth", ".pt", ".bin", ".ckpt")
#: keys under which checkpoints commonly nest their state dict
NESTED = ("state_dict", "model_state_dict", "model", "module", "net")


def is_weights_file(spec: str) -> bool:
    """Whether a ``weights`` value names a file (by its suffix) rather than a library's weights tag."""
    return str(spec).lower().endswith(SAFETENSORS + TORCH_FILES)


def load_state_file(path: str | Path, field: str = "weights") -> dict[str, Tensor]:
    """The tensors of a local weights file, read weights-only (see the module docstring).

    Raises:
        ConfigError: on ``field`` when the file is missing or of an unknown kind.
        UnsafeDataError: the file is a pickle that names code to run.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(field, f"no such weights file: {path}", "pass a local .safetensors or .pth file")
    suffix = path.suffix.lower()
    if suffix in SAFETENSORS:
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(path)))
        except Exception as exc:  # safetensors raises its own error types for foreign files
            raise ConfigError(field, f"{path} is not a safetensors file ({exc})") from None
    if suffix not in TORCH_FILES:
        raise ConfigError(
            field, f"{path}: unknown weights format {suffix!r}", f"use one of {', '.join(SAFETENSORS + TORCH_FILES)}"
        )
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise UnsafeDataError(
            f"{path} is a pickle that names code to run, not plain weights; it is not loaded ({first[:200]})",
            "save model.state_dict() with torch.save, or convert the file to .safetensors",
        ) from None
    except (RuntimeError, EOFError, OSError) as exc:
        raise ConfigError(field, f"{path} is not a torch weights file ({exc})") from None
    return unwrap_state(obj, str(path), field)


def unwrap_state(obj: object, where: str, field: str = "weights") -> dict[str, Tensor]:
    """The flat ``{name: tensor}`` state dict inside a loaded checkpoint object."""
    for _ in range(3):
        if isinstance(obj, Mapping) and obj and all(isinstance(v, Tensor) for v in obj.values()):
            break
        if isinstance(obj, Mapping):
            inner = next((obj[k] for k in NESTED if isinstance(obj.get(k), Mapping)), None)
            if inner is not None:
                obj = inner
                continue
        raise ConfigError(field, f"{where} holds no state dict of tensors", "save model.state_dict()")
    state = {str(k): v for k, v in obj.items()}  # type: ignore[union-attr]
    if state and all(k.startswith("module.") for k in state):  # DataParallel / DDP
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def _head_name(module: nn.Module, head: nn.Module) -> str:
    return next(n for n, m in module.named_modules() if m is head)


def _target(model: nn.Module, state: Mapping[str, Tensor]) -> tuple[nn.Module, dict[str, Tensor]]:
    """The module ``state`` is loaded into (a library model's ``model``) and ``state`` in its key names."""
    inner = getattr(model, "model", None)
    target = inner if isinstance(inner, nn.Module) and getattr(model, "source", "") else model
    if target is not model and state and all(k.startswith("model.") for k in state):
        state = {k[len("model.") :]: v for k, v in state.items()}  # a cktf checkpoint of the same library model
    return target, dict(state)


def weights_num_classes(model: nn.Module, state: Mapping[str, Tensor]) -> int | None:
    """How many classes the classifier held in ``state`` has (``None``: it holds none of ``model``'s)."""
    if not hasattr(model, "classifier_module"):
        return None
    target, state = _target(model, state)
    weight = state.get(f"{_head_name(target, model.classifier_module())}.weight")
    return int(weight.shape[0]) if weight is not None and weight.dim() >= 1 else None


def apply_weights(
    model: nn.Module, state: Mapping[str, Tensor], where: str, field: str = "weights", same_head: bool = False
) -> None:
    """Load ``state`` into ``model`` (a cktf model; library models are loaded into their ``model``).

    Raises:
        ConfigError: on ``field`` for missing, unexpected or misshaped keys (other than a classifier of another
            class count, unless ``same_head``), naming the first few.
    """
    target, state = _target(model, state)
    own = target.state_dict()
    head = _head_name(target, model.classifier_module()) if hasattr(model, "classifier_module") else None
    if same_head and head is not None:
        n_w, n_m = weights_num_classes(model, state), getattr(model, "num_classes", None)
        if n_w is not None and n_m is not None and n_w != n_m:
            raise ConfigError(
                field,
                f"{where} has a {n_w}-way classifier, and the model is built for {n_m} classes",
                "use weights of that class count, or train from them (a study's teacher.finetune: true)",
            )
    skipped = []
    for k in list(state):
        if k in own and tuple(state[k].shape) != tuple(own[k].shape):
            if head is not None and k.startswith(f"{head}."):
                skipped.append(k)
                del state[k]
    mism = [k for k in state if k in own and tuple(state[k].shape) != tuple(own[k].shape)]
    missing = [k for k in own if k not in state and k not in skipped]
    unexpected = [k for k in state if k not in own]
    if mism or missing or unexpected:
        parts = []
        if mism:
            parts.append(f"shapes differ for {mism[:3]} ({tuple(state[mism[0]].shape)} vs {tuple(own[mism[0]].shape)})")
        if missing:
            parts.append(f"missing {len(missing)} keys, e.g. {missing[:3]}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} keys, e.g. {unexpected[:3]}")
        raise ConfigError(
            field,
            f"{where} does not fit {getattr(model, 'source', '') or type(model).__name__}: {'; '.join(parts)}",
            "pass weights saved from the same architecture",
        )
    target.load_state_dict(state, strict=not skipped)
    if skipped:
        log.info("%s: classifier %s left at its initialisation (the weights have another class count)", where, head)
