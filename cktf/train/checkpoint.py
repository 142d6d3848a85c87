"""Checkpoints (resume state) and model weights (safetensors plus metadata).

* ``last.pt``: everything needed to resume (student, adapters, memory banks, optimiser, epoch,
  metrics history). Only tensors and plain containers, so ``torch.load(weights_only=True)`` loads it.
* ``<name>.safetensors``: a model's weights with JSON metadata (architecture, classes,
  normalisation, ...) stored in the file header, so :func:`load_model` rebuilds the model alone.

Writes go to a temporary file first and are renamed into place, so an interrupted write never
destroys the previous checkpoint.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ..errors import ConfigError
from ..io import atomic_path
from ..models import DistillModel, create_model

META_KEY = "cktf"


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    with atomic_path(path, durable=True) as tmp:
        torch.save(obj, tmp)


def load_state(path: str | os.PathLike) -> dict[str, Any]:
    """Load a resume checkpoint without unpickling arbitrary objects."""
    return torch.load(path, map_location="cpu", weights_only=True)


def save_model_weights(path: str | os.PathLike, model: DistillModel, meta: dict[str, Any]) -> None:
    """Write ``model``'s weights as safetensors; ``meta`` (must include ``arch``) goes in the header."""
    if "arch" not in meta:
        raise ValueError("meta must name the architecture ('arch')")
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    meta = {"num_classes": model.num_classes, **meta}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={META_KEY: json.dumps(meta)})


def read_weights_meta(path: str | os.PathLike, field: str = "teacher_checkpoint") -> dict[str, Any]:
    """The metadata of a cktf weights file; clear errors for missing or foreign files."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(field, f"no such file: {path}", "train a teacher first with `cktf train-teacher`")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types for non-safetensors files
        raise ConfigError(
            field, f"{path} is not a safetensors file ({exc})", "pass a .safetensors written by cktf"
        ) from None
    if META_KEY not in header:
        raise ConfigError(field, f"{path} has no cktf metadata (architecture unknown)", "pass a file written by cktf")
    return json.loads(header[META_KEY])


def load_model(path: str | os.PathLike, field: str = "teacher_checkpoint") -> tuple[DistillModel, dict[str, Any]]:
    """Rebuild a model from a cktf safetensors file: ``model, meta = load_model("runs/t/best.safetensors")``."""
    meta = read_weights_meta(path, field)
    model = create_model(meta["arch"], num_classes=int(meta["num_classes"]))
    model.load_state_dict(load_file(str(path)))
    return model, meta
