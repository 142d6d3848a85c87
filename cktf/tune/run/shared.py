"""What the driver shares with every trial through the Ray object store: the data and the teacher.

Both travel as dicts of numpy arrays. Ray stores numpy buffers out of band, so each trial's
``ray.get`` is a read-only view of the node's shared-memory object store: the dataset is decoded
once on the driver and held once per node, however many trials run there (Ray serialization
docs; ``tune.with_parameters`` does the single ``ray.put``). Torch tensors would be copied per
worker, which is why nothing here is a tensor.

A split too large to decode once (a :class:`~cktf.data.StreamDataset`, docs/models.md) travels as its file list,
targets, classes and storage side, no images: each trial's loader reads the files from shared storage.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...data import Splits, StreamDataset
from ...data._base import ArrayDataset
from ...models import DistillModel, create_model

_SPLITS = ("train", "val", "test")


def splits_to_shared(splits: Splits) -> dict[str, Any]:
    """``Splits`` -> plain dict of numpy arrays plus the (small, picklable) dataset spec."""
    out: dict[str, Any] = {"spec": splits.spec, "contrast_replace": splits.contrast_replace}
    for name in _SPLITS:
        ds = getattr(splits, name)
        if ds is None:
            continue
        if isinstance(ds, StreamDataset):  # streamed: the trial decodes the files
            out[f"{name}/files"] = list(ds.files)
            out[f"{name}/side"] = int(ds.side)
        else:
            out[f"{name}/images"] = np.ascontiguousarray(ds.images)
        out[f"{name}/targets"] = np.ascontiguousarray(ds.targets, dtype=np.int64)
        out[f"{name}/classes"] = list(ds.classes)
    return out


def splits_from_shared(shared: dict[str, Any]) -> Splits:
    """The inverse; the arrays are used as they arrive (zero-copy views, never written)."""
    parts = {}
    for name in _SPLITS:
        if f"{name}/images" in shared:
            parts[name] = ArrayDataset(shared[f"{name}/images"], shared[f"{name}/targets"], shared[f"{name}/classes"])
        elif f"{name}/files" in shared:
            files, targets, classes = shared[f"{name}/files"], shared[f"{name}/targets"], shared[f"{name}/classes"]
            parts[name] = StreamDataset(list(files), targets, list(classes), int(shared[f"{name}/side"]))
        else:
            parts[name] = None
    return Splits(shared["spec"], parts["train"], parts["val"], parts["test"], bool(shared["contrast_replace"]))


def shared_bytes(shared: dict[str, Any]) -> int:
    return sum(v.nbytes for v in shared.values() if isinstance(v, np.ndarray))


def teacher_to_shared(model: DistillModel, meta: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """A teacher's weights as numpy (shared like the data) with its metadata and file path (lineage)."""
    state = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    return {"state": state, "meta": dict(meta), "path": str(path)}


def teacher_from_shared(shared: dict[str, Any]) -> tuple[DistillModel, str]:
    """Rebuild the teacher in the trial (its weights are copied into the module, a few MB)."""
    meta = shared["meta"]
    model = create_model(meta["arch"], num_classes=int(meta["num_classes"]))
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in shared["state"].items()})
    return model, meta["arch"]


def zero_copy_report(shared: dict[str, Any]) -> dict[str, float]:
    """Evidence that the trial reads the node's single copy: the arrays are read-only views that do
    not own their memory, they lie in a *shared* memory mapping (the object store's, ``/proc/self/maps``
    permission ``s``; a copy would sit in private anonymous memory), and reading every page adds
    (almost) nothing to the process's private memory (``Private_*`` of ``/proc/self/smaps_rollup``)."""
    arrays = [v for v in shared.values() if isinstance(v, np.ndarray)]
    views = all(not a.flags.owndata and not a.flags.writeable for a in arrays)
    before = private_memory_bytes()
    checksum = 0
    for a in arrays:
        checksum += int(a.reshape(-1)[:: 4096 // max(a.itemsize, 1)].sum())  # touch every page
    after = private_memory_bytes()
    return {
        "data/zero_copy_views": float(views),
        "data/in_shared_memory": float(all(in_shared_mapping(a) for a in arrays if a.nbytes)),
        "data/bytes": float(sum(a.nbytes for a in arrays)),
        "data/private_growth_bytes": float(max(after - before, 0)) if before >= 0 else -1.0,
        "data/touch_checksum": float(checksum % 1_000_003),
    }


def in_shared_mapping(array: np.ndarray) -> bool:
    """Whether ``array``'s first byte lies in a shared (``s``) mapping of this process (Linux only)."""
    addr = array.__array_interface__["data"][0]
    try:
        lines = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return False
    for line in lines:
        parts = line.split()
        lo, hi = (int(x, 16) for x in parts[0].split("-"))
        if lo <= addr < hi:
            return parts[1].endswith("s")
    return False


def private_memory_bytes() -> int:
    """This process's private (unshared) resident memory, Linux only; -1 elsewhere."""
    try:
        text = Path("/proc/self/smaps_rollup").read_text()
    except OSError:
        return -1
    total = 0
    for line in text.splitlines():
        if line.startswith(("Private_Clean:", "Private_Dirty:")):
            total += int(line.split()[1]) * 1024
    return total
