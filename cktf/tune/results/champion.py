"""MLflow-native results of a study (docs/studies.md, "Results in MLflow").

* :func:`split_datasets` -- the study's train/val/test splits as MLflow datasets (name, content digest, source,
  profile), logged with the parent and every child run (``log_inputs``, what ``mlflow.log_input`` does).
* :func:`mark_model_training` -- the experiment tag that makes MLflow's UI open the experiment on its model-training
  view (runs, models) instead of GenAI traces.
* :func:`test_once` -- the final pick scored on the test split, once (no trial of a confirmed study reads it).
* :func:`log_champion` -- the best student as an MLflow Model (signature, input example, pre-processing in its
  metadata) in the parent run, registered under the study's name with the alias ``champion``, so that
  ``mlflow.pytorch.load_model("models:/NAME@champion")`` gives the ready model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: read by MLflow's UI: which view an experiment opens on
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"
CHAMPION = "champion"


def _digest(images: Any, targets: Any) -> str:
    h = hashlib.blake2b(digest_size=8)
    h.update(memoryview(images).cast("B"))
    h.update(memoryview(targets).cast("B"))
    return h.hexdigest()


def split_datasets(splits: Any, data_cfg: Any, probe: Any = None) -> list[dict[str, Any]]:
    """One descriptor per split: ``name`` (dataset/split), ``digest`` (a hash of its pixels and labels, so two runs
    on the same images show the same dataset), ``source`` (the data root), ``context`` (training / validation /
    test) and a small ``profile`` (rows, side, classes)."""
    import numpy as np

    out = []
    root = str(getattr(data_cfg, "root", "") or "")
    name = splits.spec.name
    for split, context in (("train", "training"), ("val", "validation"), ("test", "test")):
        ds = getattr(splits, split)
        if ds is None:
            continue
        targets = np.ascontiguousarray(ds.targets)
        if hasattr(ds, "images"):
            images = np.ascontiguousarray(ds.images)
            digest, side = _digest(images, targets), int(images.shape[1])
        else:  # a streamed split: its files (path, size, mtime) stand for the pixels
            h = hashlib.blake2b(digest_size=8)
            for path in ds.files:
                st = os.stat(path)
                h.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
            h.update(memoryview(targets).cast("B"))
            digest, side = h.hexdigest(), int(ds.side)
        out.append(
            {
                "name": f"{name}/{split}",
                "digest": digest,
                "source": f"{root}#{name}/{split}",
                "context": context,
                "profile": {"num_rows": len(ds), "image_size": side, "classes": splits.num_classes},
            }
        )
    return out


def mark_model_training(client: Any, experiment_id: str) -> None:
    """Tag the experiment as model training (MLflow 3's UI otherwise may open an empty experiment on GenAI traces);
    an experiment a person has already typed is left alone."""
    exp = client.get_experiment(experiment_id)
    if exp and not (exp.tags or {}).get(EXPERIMENT_KIND_TAG):
        client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING)


def test_once(weights: Path, splits: Any, device: str = "cpu") -> dict[str, float]:
    """The exported student's accuracy on the test split (``test_acc``, ``test_acc5``, ``test_loss``)."""
    import torch

    from ...data import make_loader
    from ...train.engine import evaluate
    from .export import load_student

    model = load_student(weights, device)
    loader = make_loader(splits.test, splits.spec, batch_size=256, train=False, device=device)
    with torch.no_grad():
        return {f"test_{k}": float(v) for k, v in evaluate(model, loader, torch.device(device)).items()}


def preprocessing(meta: dict[str, Any]) -> dict[str, Any]:
    """What a caller must do to an image before the model (stored in the MLflow Model's metadata)."""
    size = int(meta.get("image_size") or 32)
    return {
        "input": f"float32 [B, 3, {size}, {size}], RGB, channels first",
        "scale": "divide uint8 pixels by 255",
        "normalize": {"mean": meta["normalization"]["mean"], "std": meta["normalization"]["std"]},
        "eval_transform": "resize and centre crop to image_size (as the study's evaluation)",
        "output": f"logits [B, {meta['num_classes']}]",
        "classes": meta.get("classes"),
    }


def log_champion(tracking_uri: str, parent_run_id: str, model_name: str, weights: Path) -> dict[str, Any]:
    """Log the exported student (``weights`` + its ``.json``) as an MLflow Model in the parent run, register it as
    ``model_name`` and point the alias ``champion`` at the new version; returns ``{name, version, uri}``."""
    import mlflow
    import mlflow.pytorch
    import numpy as np
    import torch
    from mlflow.models import infer_signature

    from .export import load_student

    model = load_student(weights)
    meta = dict(model.cktf_meta)
    size = int(meta.get("image_size") or 32)
    example = np.zeros((1, 3, size, size), dtype=np.float32)
    with torch.no_grad():
        logits = model(torch.from_numpy(example)).numpy()
    signature = infer_signature(example, logits)
    del model.cktf_meta  # plain nn.Module state travels; the facts go to the model's metadata
    info = {k: meta.get(k) for k in ("architecture", "num_classes", "dataset", "distiller", "study", "trial")}
    mlflow.set_tracking_uri(tracking_uri)
    with mlflow.start_run(run_id=parent_run_id, log_system_metrics=False):
        logged = mlflow.pytorch.log_model(
            model,
            name="student",
            signature=signature,
            input_example=example,
            metadata={
                "study": json.dumps(info, default=str),
                "cktf_export": json.dumps(meta, default=str),  # what `cktf export models:/...` writes back
                "preprocessing": json.dumps(preprocessing(meta)),
            },
            # pickled (cktf must be importable where it is loaded): torch.export would fix the batch size at 1
            serialization_format="pickle",
        )
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(model_name, description=f"cktf study {model_name}: its confirmed best student")
    except MlflowException as exc:
        if "already exists" not in str(exc).lower() and "RESOURCE_ALREADY_EXISTS" not in str(exc):
            raise
    mv = client.create_model_version(model_name, logged.model_uri, run_id=parent_run_id)
    version = str(mv.version)
    client.set_registered_model_alias(model_name, CHAMPION, version)
    for key, value in registry_tags(meta).items():
        client.set_model_version_tag(model_name, version, key, value)
    return {"name": model_name, "version": version, "uri": f"models:/{model_name}@{CHAMPION}"}


def registry_tags(meta: dict[str, Any]) -> dict[str, str]:
    """The registered version's tags, from the student's metadata (the numbers every output gives)."""
    score, test = meta.get("score") or {}, meta.get("test_metric") or {}
    tags = {
        "cktf.trial": str(meta.get("trial")),
        "cktf.best": str(meta.get("best", "")),
        "cktf.study_status": str(meta.get("study_status", "")),
    }
    if score.get("display") is not None:
        tags["cktf.score"] = str(score["display"])
        tags["cktf.seeds"] = str(score.get("seeds"))
    if score.get("std") is not None:
        tags["cktf.score_std"] = f"{score['std']:.4g}"
    if test.get("value") is not None:
        tags[f"cktf.{test['name']}"] = f"{test['value']:.4g}"
    return tags


def export_registered(model_uri: str, out: str | Path, tracking_uri: str) -> dict[str, Any]:
    """``cktf export models:/NAME@champion``: the registered student back as ``.safetensors`` + ``.json``, the same
    files an export from the study folder writes."""
    import mlflow
    import mlflow.pytorch

    from ...errors import ConfigError
    from ...train.checkpoint import save_model_weights

    mlflow.set_tracking_uri(tracking_uri)
    try:
        info = mlflow.models.get_model_info(model_uri)
    except Exception as exc:
        raise ConfigError(
            "study",
            f"{model_uri} is not a model in the registry at {tracking_uri} ({str(exc).splitlines()[0]})",
            "check the name and alias (cktf ui lists them), or pass --tracking-uri",
        ) from None
    meta = json.loads((info.metadata or {}).get("cktf_export") or "{}")
    if not meta.get("architecture"):
        raise ConfigError(
            "study",
            f"{model_uri} was not logged by cktf (no cktf_export metadata)",
            "export it with mlflow.pytorch.load_model instead",
        )
    model = mlflow.pytorch.load_model(model_uri, map_location="cpu")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    norm = meta.get("normalization") or {}
    save_model_weights(
        out,
        model,
        {
            "arch": meta["architecture"],
            "dataset": meta.get("dataset"),
            "image_size": meta.get("image_size"),
            "mean": norm.get("mean"),
            "std": norm.get("std"),
            "classes": meta.get("classes"),
            "distiller": meta.get("distiller"),
        },
    )
    meta.update(weights=out.name, source=model_uri, model_version=_version(model_uri, tracking_uri, info))
    out.with_suffix(".json").write_text(json.dumps(meta, indent=1, default=str))
    return meta


def _version(model_uri: str, tracking_uri: str, info: Any) -> str | None:
    """The registry version a ``models:/NAME@alias`` or ``models:/NAME/VERSION`` URI names."""
    if getattr(info, "registered_model_version", None):
        return str(info.registered_model_version)
    import mlflow

    name, _, rest = model_uri[len("models:/") :].partition("@")
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    if rest:
        return str(client.get_model_version_by_alias(name, rest).version)
    name, _, version = name.partition("/")
    return version or None


__all__ = ["CHAMPION", "export_registered", "log_champion", "mark_model_training", "split_datasets", "test_once"]
