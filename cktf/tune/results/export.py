"""``cktf export``: the study's student as safetensors + JSON; ``load_student`` rebuilds it.

The student is the study's best as :meth:`~.reader.StudyResults.pick` gives it: after a confirmation, the best run of
the configuration with the best mean over its seeds; without one, the search's best finished trial. Its checkpoint's
``model_best.safetensors`` holds the weights of its selected epoch. :func:`student_info` is the one description of
it (its score, its test accuracy, the study's status): a complete study writes it once, into ``best/student.json``,
and every route gives that same file (``cktf export STUDY``, the registered model's ``cktf export models:/...``, the
Python API); a study still running or stopped is described from its index as it stands. Checkpoints and the study's
state are read through pyarrow's filesystem layer, so a study on ``s3://`` or ``gs://`` exports the same way.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ...errors import ConfigError
from ...models import DistillModel
from .reader import SCORE, StudyResults, checkpoint_filesystem, display, resolve_study_dir, score_rule

WEIGHTS = "model_best.safetensors"
#: where a complete study keeps its student (``best/student.safetensors`` + ``best/student.json``)
BEST_DIR, BEST_FILE = "best", "student.safetensors"


def fetch_checkpoint_file(rec: dict[str, Any], name: str, dest: Path) -> Path:
    """Copy the file ``name`` of a trial record's latest checkpoint (local, ``s3://`` or ``gs://``) to ``dest``."""
    fs, base = checkpoint_filesystem(rec)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with fs.open_input_stream(f"{base.rstrip('/')}/{name}") as src, open(dest, "wb") as out:
        shutil.copyfileobj(src, out)
    return dest


def student_info(results: StudyResults, weights: Path, status: str | None = None) -> dict[str, Any]:
    """The student's metadata (``student.json``): its architecture and preprocessing, the study's best as every
    output gives it (``score``: the mean over the confirmation's seeds, or the trial's own), its test accuracy, the
    study's status (``status``: the one the study is about to end with; default: the state's)."""
    from ...train.checkpoint import read_weights_meta

    pick = results.pick()
    meta = read_weights_meta(weights, "checkpoint")
    test = results.pick_test()
    once = (results.state.get("final_test") or {}).get("trial") == pick.trial.trial_id
    return {
        "architecture": meta["arch"],
        "num_classes": meta["num_classes"],
        "dataset": meta.get("dataset"),
        "image_size": meta.get("image_size"),
        "normalization": {"mean": meta.get("mean"), "std": meta.get("std")},
        "classes": meta.get("classes"),
        "distiller": meta.get("distiller"),
        "config": pick.config,
        "best": pick.describe(),
        SCORE: {
            "value": pick.score,
            "display": display(pick.score),
            "std": pick.std,
            "seeds": pick.n,
            "confirmed": pick.confirmed,
            "rule": score_rule(results.metric, results.selection),
            "trial_value": pick.trial.score,
        },
        "metric": {"name": results.metric, "mode": results.mode, "value": pick.score, "epoch": pick.trial.epoch},
        "test_metric": {
            "name": results.test_metric,
            "value": test,
            "read": "once, for the final pick" if once else "at the trial's selected epoch",
        },
        "study": results.name,
        "study_dir": results.study_dir,
        "study_status": status or results.state.get("status", "running"),
        "trial": pick.trial.trial_id,
        "mlflow_run_id": pick.trial.record.get("mlflow_run_id"),
        "weights": weights.name,
    }


def write_student(results: StudyResults, out: Path) -> None:
    """The pick's weights (its checkpoint's ``model_best.safetensors``) at ``out``."""
    pick = results.pick()
    if pick is None:
        results.search_best(required=True)  # the error naming what is missing
    with tempfile.TemporaryDirectory() as tmp:
        weights = fetch_checkpoint_file(pick.trial.record, WEIGHTS, Path(tmp) / WEIGHTS)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(weights, out)


def export_best(study: str | Path, out: str | Path, onnx: bool = False) -> dict[str, Any]:
    """Write ``out`` (weights) and ``out.json`` (metadata); returns the metadata. A complete study gives the files it
    wrote when it ended; another is described from its index as it stands."""
    results = StudyResults(resolve_study_dir(study))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    store = results.store
    if results.state.get("status") in ("complete", "failed") and store.exists(BEST_DIR, "student.json"):
        info = json.loads(store.read_text(BEST_DIR, "student.json"))
        store.download(out, BEST_DIR, BEST_FILE)
    else:
        write_student(results, out)
        info = student_info(results, out)
    info["weights"] = out.name
    if onnx:
        export_onnx(out, out.with_suffix(".onnx"))
        info["onnx"] = out.with_suffix(".onnx").name
    out.with_suffix(".json").write_text(json.dumps(info, indent=1))
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


__all__ = ["BEST_DIR", "BEST_FILE", "export_best", "export_onnx", "load_student", "student_info", "write_student"]
