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


def load_state(path: str | os.PathLike) -> dict[str, Any]:
    """Load a resume checkpoint without unpickling arbitrary objects."""
    return torch.load(path, map_location="cpu", weights_only=True)


#: a run directory's resume checkpoint and the complete one before it (kept until the new one is in place)
RESUME_FILE, PREVIOUS_FILE = "last.pt", "last.prev.pt"


def save_resume_state(state: dict[str, Any], run_dir: str | os.PathLike, keep_previous: bool = True) -> None:
    """Write ``last.pt`` atomically; the previous ``last.pt`` becomes ``last.prev.pt`` only once the new one is
    complete, so a crash at any point leaves at least one loadable checkpoint.

    ``keep_previous=False`` (study trials, whose reported checkpoint in Ray's storage is the fallback): the new file
    replaces ``last.pt`` in one rename and no ``last.prev.pt`` is kept, so the folder holds one resume state plus,
    while writing, the one being written."""
    run_dir = Path(run_dir)
    with atomic_path(run_dir / RESUME_FILE, durable=True) as tmp:
        torch.save(state, tmp)
        if keep_previous and (run_dir / RESUME_FILE).exists():
            os.replace(run_dir / RESUME_FILE, run_dir / PREVIOUS_FILE)
    if not keep_previous:
        (run_dir / PREVIOUS_FILE).unlink(missing_ok=True)


def has_resume_state(run_dir: str | os.PathLike) -> bool:
    return any((Path(run_dir) / name).exists() for name in (RESUME_FILE, PREVIOUS_FILE))


def load_resume_state(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The newest loadable resume checkpoint of ``run_dir``: ``last.pt``, else (with a warning) ``last.prev.pt``;
    ``None`` (with a warning) when neither loads."""
    import logging

    log = logging.getLogger(__name__)
    for name in (RESUME_FILE, PREVIOUS_FILE):
        path = Path(run_dir) / name
        if not path.exists():
            continue
        try:
            state = load_state(path)
            if not isinstance(state, dict) or "epoch" not in state or "distiller" not in state:
                raise ValueError("not a cktf resume checkpoint")
        except Exception as exc:  # truncated or corrupt: torch raises several types for it
            log.warning("cannot load %s (%s: %s); trying the checkpoint before it", path, type(exc).__name__, exc)
            continue
        if name == PREVIOUS_FILE:
            log.warning("resuming %s from the previous checkpoint (epoch %d)", run_dir, int(state["epoch"]) + 1)
        return state
    if has_resume_state(run_dir):
        log.warning("no loadable checkpoint in %s: the run starts again", run_dir)
    return None


def save_model_weights(path: str | os.PathLike, model: DistillModel, meta: dict[str, Any]) -> None:
    """Write ``model``'s weights as safetensors; ``meta`` (must include ``arch``) goes in the header."""
    save_weights(path, model.state_dict(), {"num_classes": model.num_classes, **meta})


def save_weights(path: str | os.PathLike, tensors: dict[str, Any], meta: dict[str, Any]) -> None:
    """Write a model state dict as safetensors with ``meta`` (``arch`` and ``num_classes`` at least) in the header."""
    if "arch" not in meta:
        raise ValueError("meta must name the architecture ('arch')")
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
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
