"""``cktf export``: the best finished trial's student as safetensors + JSON; ``load_student`` rebuilds it.

The best trial is the finished one (ran every epoch; ASHA-pruned and failed trials are not
candidates) with the highest validation accuracy at its best epoch; its checkpoint's
``model_best.safetensors`` holds exactly that epoch's weights. Checkpoints are read through
pyarrow's filesystem layer, so a study stored on ``s3://`` or ``gs://`` exports the same way.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..models import DistillModel
from .index import FINISHED, TrialIndex, selected

WEIGHTS = "model_best.safetensors"


def resolve_study_dir(study: str | Path, workdir: str = "runs/studies") -> Path:
    """A study directory, a study YAML (its workdir/name) or a bare study name under ``workdir``."""
    p = Path(study)
    if p.is_file() and p.suffix in (".yaml", ".yml"):
        from .study import load_study

        return load_study(p).study_dir
    for cand in (p, Path(workdir) / str(study)):
        if (cand / "trials").is_dir() or (cand / "state.json").exists():
            return cand.resolve()
    raise ConfigError("study", f"no study found at {study} (nor under {workdir}/)", "pass a study dir, YAML or name")


def best_trial(study_dir: str | Path, required: bool = True) -> dict[str, Any] | None:
    """The index record of the best finished trial (by the study's metric at its selected epoch, see
    :func:`cktf.tune.index.selected`), with that epoch's test accuracy."""
    val_key, test_key = metric_keys(study_dir)
    scored = []
    for r in TrialIndex(study_dir).all():
        at = selected(r.get("history", []), val_key)
        if r.get("status") == FINISHED and at.get(val_key) is not None and r.get("checkpoint"):
            scored.append((at[val_key], r, at))
    if not scored:
        if required:
            raise ConfigError(
                "study", f"no trial of {study_dir} has finished yet", "run or resume the study (cktf tune ... --resume)"
            )
        return None
    value, best, at = max(scored, key=lambda x: x[0])
    return {
        **best,
        "best_val_acc": value,
        "best_epoch": at.get("epoch"),
        "test_acc": at.get(test_key),
        "metric_name": val_key,
    }


def metric_keys(study_dir: str | Path) -> tuple[str, str]:
    """The study's selection metric and its test counterpart (``val_acc``/``test_acc``, or the probe's)."""
    state = Path(study_dir) / "state.json"
    metric = json.loads(state.read_text()).get("metric", "val_acc") if state.exists() else "val_acc"
    return metric, metric.replace("val", "test")


def _uri(rec: dict[str, Any]) -> str:
    path, fs = rec["checkpoint"], rec.get("checkpoint_fs", "LocalFileSystem")
    scheme = {"S3FileSystem": "s3://", "GcsFileSystem": "gs://"}.get(fs, "")
    return scheme + path


def fetch_checkpoint_file(rec: dict[str, Any], name: str, dest: Path) -> Path:
    import pyarrow.fs as pafs

    fs, base = pafs.FileSystem.from_uri(_uri(rec))
    dest.parent.mkdir(parents=True, exist_ok=True)
    with fs.open_input_stream(f"{base.rstrip('/')}/{name}") as src, open(dest, "wb") as out:
        shutil.copyfileobj(src, out)
    return dest


def export_best(study: str | Path, out: str | Path, onnx: bool = False) -> dict[str, Any]:
    """Write ``out`` (weights) and ``out.json`` (metadata); returns the metadata."""
    from ..train.checkpoint import read_weights_meta

    study_dir = resolve_study_dir(study)
    rec = best_trial(study_dir)
    out = Path(out)
    with tempfile.TemporaryDirectory() as tmp:
        weights = fetch_checkpoint_file(rec, WEIGHTS, Path(tmp) / WEIGHTS)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(weights, out)
    meta = read_weights_meta(out, "checkpoint")
    state = json.loads((study_dir / "state.json").read_text()) if (study_dir / "state.json").exists() else {}
    info = {
        "architecture": meta["arch"],
        "num_classes": meta["num_classes"],
        "dataset": meta.get("dataset"),
        "image_size": meta.get("image_size"),
        "normalization": {"mean": meta.get("mean"), "std": meta.get("std")},
        "classes": meta.get("classes"),
        "distiller": meta.get("distiller"),
        "config": rec.get("config"),
        "metric": {"name": rec.get("metric_name"), "value": rec.get("best_val_acc"), "epoch": rec.get("best_epoch")},
        "test_acc": rec.get("test_acc"),
        "study": study_dir.name,
        "study_dir": str(study_dir),
        "study_status": state.get("status"),
        "trial": rec["trial_id"],
        "mlflow_run_id": rec.get("mlflow_run_id"),
        "weights": out.name,
    }
    meta_path = out.with_suffix(".json")
    meta_path.write_text(json.dumps(info, indent=1))
    if onnx:
        export_onnx(out, out.with_suffix(".onnx"))
        info["onnx"] = out.with_suffix(".onnx").name
        meta_path.write_text(json.dumps(info, indent=1))
    return info


def load_student(path: str | Path, device: str = "cpu") -> DistillModel:
    """A ready (eval-mode) student from an exported ``.safetensors``; ``model.cktf_meta`` holds its JSON."""
    from ..train.checkpoint import load_model

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
