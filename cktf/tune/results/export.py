"""``cktf export``: the best finished trial's student as safetensors + JSON; ``load_student`` rebuilds it.

"Best" is the study results reader's (:class:`~cktf.tune.results.reader.StudyResults`): the finished trial (ran every
epoch; ASHA-pruned and failed trials are not candidates) with the best ``search.metric`` in ``search.mode`` order at
its selected epoch; its checkpoint's ``model_best.safetensors`` holds exactly that epoch's weights. Checkpoints and the
study's state are read through pyarrow's filesystem layer, so a study stored on ``s3://`` or ``gs://`` exports the same
way.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ...errors import ConfigError
from ...models import DistillModel
from .reader import StudyResults, checkpoint_filesystem, resolve_study_dir

WEIGHTS = "model_best.safetensors"


def fetch_checkpoint_file(rec: dict[str, Any], name: str, dest: Path) -> Path:
    """Copy the file ``name`` of a trial record's latest checkpoint (local, ``s3://`` or ``gs://``) to ``dest``."""
    fs, base = checkpoint_filesystem(rec)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with fs.open_input_stream(f"{base.rstrip('/')}/{name}") as src, open(dest, "wb") as out:
        shutil.copyfileobj(src, out)
    return dest


def export_best(study: str | Path, out: str | Path, onnx: bool = False) -> dict[str, Any]:
    """Write ``out`` (weights) and ``out.json`` (metadata); returns the metadata."""
    from ...train.checkpoint import read_weights_meta

    results = StudyResults(resolve_study_dir(study))
    best = results.best(required=True)
    rec = best.record
    out = Path(out)
    with tempfile.TemporaryDirectory() as tmp:
        weights = fetch_checkpoint_file(rec, WEIGHTS, Path(tmp) / WEIGHTS)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(weights, out)
    meta = read_weights_meta(out, "checkpoint")
    info = {
        "architecture": meta["arch"],
        "num_classes": meta["num_classes"],
        "dataset": meta.get("dataset"),
        "image_size": meta.get("image_size"),
        "normalization": {"mean": meta.get("mean"), "std": meta.get("std")},
        "classes": meta.get("classes"),
        "distiller": meta.get("distiller"),
        "config": best.config,
        "metric": {"name": results.metric, "mode": results.mode, "value": best.score, "epoch": best.epoch},
        "test_metric": {"name": results.test_metric, "value": best.test},
        "study": results.name,
        "study_dir": results.study_dir,
        "study_status": results.state.get("status"),
        "trial": best.trial_id,
        "mlflow_run_id": rec.get("mlflow_run_id"),
        "weights": out.name,
    }
    meta_path = out.with_suffix(".json")
    if onnx:
        export_onnx(out, out.with_suffix(".onnx"))
        info["onnx"] = out.with_suffix(".onnx").name
    meta_path.write_text(json.dumps(info, indent=1))
    return info


def load_student(path: str | Path, device: str = "cpu") -> DistillModel:
    """A ready (eval-mode) student from an exported ``.safetensors``; ``model.cktf_meta`` holds its JSON."""
    from ...train.checkpoint import load_model

    path = Path(path)
    model, meta = load_model(path, "path")
    side = path.with_suffix(".json")
    model.cktf_meta = json.loads(side.read_text()) if side.exists() else meta
    return model.to(device).eval()


def export_onnx(weights: Path, dest: Path) -> None:
    import torch

    model = load_student(weights)
    size = int(model.cktf_meta.get("image_size") or 32)
    try:
        torch.onnx.export(
            model,
            torch.zeros(1, 3, size, size),
            str(dest),
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
            dynamo=False,
        )
    except (ImportError, torch.onnx.OnnxExporterError) as exc:
        if "not installed" not in str(exc) and not isinstance(exc, ImportError):
            raise
        dest.unlink(missing_ok=True)
        raise ConfigError("--onnx", f"ONNX export needs the onnx package ({exc})", "pip install onnx") from None
