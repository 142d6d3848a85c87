"""A transfer study end to end (Section 3.2): unlabeled distillation, per-epoch quick probe as the metric,
the final probe's curve in MLflow."""

from __future__ import annotations

import json

import pytest
from helpers import study_runs, write_study

from cktf.cli import main


@pytest.mark.slow
def test_transfer_study_logs_the_probe_curve(tmp_path, data_root):
    import mlflow
    import ray

    from cktf.models import create_model
    from cktf.train.checkpoint import save_model_weights

    teacher = tmp_path / "teacher.safetensors"  # a (random) 200-class source teacher: the mechanics, not accuracy
    save_model_weights(teacher, create_model("vgg8", num_classes=200), {"arch": "vgg8", "dataset": "tiny_imagenet"})
    target = {"dataset": "imagefolder", "root": str(data_root / "cifar10-jpeg"), "image_size": 64}
    study = {
        "name": "transfer",
        "student": "vgg8",
        "distiller": "cktf",
        "data": {**target, "train_subset": 256, "drop_labels": True, "val_fraction": 0},
        "teacher": {"checkpoint": str(teacher)},
        "params": {"gamma": 0},
        "optim": {"milestones": []},
        "train": {"epochs": 2, "batch_size": 64, "eval_test": False},
        "probe": {
            "data": {**target, "train_subset": 300, "test_subset": 200, "val_fraction": 0.2},
            "recipe": {"epochs": 4, "augment": False, "milestones": []},
            "quick_epochs": 2,
        },
        "search": {
            "metric": "probe_val_acc",
            "num_samples": 2,
            "space": {
                "alpha1": {"type": "log", "low": 0.01, "high": 1.0},
                "nce_k": {"type": "categorical", "choices": [32, 64]},
            },
            "baseline": {"alpha1": 0.04},
        },
        "asha": {"grace_period": 2},
        "resources": {"cpu": 1},
        "max_concurrent": 2,
        "workdir": str(tmp_path / "studies"),
        "mlflow": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
    }
    path = write_study(tmp_path / "transfer.yaml", study)
    try:
        assert main(["tune", str(path), "--quiet"]) == 0
    finally:
        if ray.is_initialized():
            ray.shutdown()
    recs = [json.loads(p.read_text()) for p in (tmp_path / "studies" / "transfer" / "trials").glob("*.json")]
    assert len(recs) == 2 and all(r["status"] == "finished" for r in recs)
    for r in recs:
        assert [("probe_val_acc" in h, "val_acc" in h) for h in r["history"]] == [(True, False)] * 2
        assert [row["probe_epoch"] for row in r["probe_curve"]] == [1, 2, 3, 4]
        assert r["score"] == r["history"][-1]["probe_val_acc"]  # judged by its last epoch: the full probe
    uri = study["mlflow"]["tracking_uri"]
    _, children = study_runs(uri, "cktf-transfer")
    client = mlflow.MlflowClient(tracking_uri=uri)
    for c in children:
        curve = client.get_metric_history(c.info.run_id, "probe_curve/probe_test_acc")
        assert sorted(m.step for m in curve) == [1, 2, 3, 4]
        assert len(client.get_metric_history(c.info.run_id, "probe_val_acc")) == 2  # one quick probe per epoch
    out = tmp_path / "s.safetensors"
    assert main(["export", str(tmp_path / "studies" / "transfer"), "--out", str(out)]) == 0
    info = json.loads(out.with_suffix(".json").read_text())
    assert info["metric"]["name"] == "probe_val_acc" and info["num_classes"] == 200
