"""Tiny study files for the tune tests (CPU, seconds per trial) and MLflow queries."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


def tiny_study(tmp: Path, data_root: Path, name: str = "tiny", **over: Any) -> dict[str, Any]:
    """A 6-trial CKTF study on a 900-image CIFAR-10 slice: resnet8 teacher (1 epoch) -> resnet8, 3 epochs."""
    study: dict[str, Any] = {
        "name": name,
        "student": "resnet8",
        "distiller": "cktf",
        "data": {
            "dataset": "cifar10",
            "root": str(data_root),
            "train_subset": 900,
            "test_subset": 300,
            "val_fraction": 0.2,
        },
        "teacher": {"arch": "resnet8", "optim": {"milestones": []}, "train": {"epochs": 1}},
        "params": {},
        "optim": {"lr": 0.05, "milestones": []},
        "train": {"epochs": 3, "batch_size": 64},
        "search": {
            "num_samples": 6,
            "space": {
                "alpha1": {"type": "uniform", "low": 0.0, "high": 1.0},
                "tau": {"type": "log", "low": 0.05, "high": 0.2},
                "feat_dim": {"type": "categorical", "choices": [16, 32]},
                "nce_k": {"type": "categorical", "choices": [64, 128]},
                "mapping": {"type": "categorical", "choices": ["first", "last", "min_cos"]},
            },
        },
        "asha": {"grace_period": 1, "reduction_factor": 2},
        "sampler": {"name": "tpe", "seed": 0, "n_startup_trials": 3},
        "resources": {"cpu": 1, "gpu": 0},
        "max_concurrent": 2,
        "max_failures": 1,
        "workdir": str(tmp / "studies"),
        "mlflow": {"tracking_uri": f"sqlite:///{tmp / 'mlflow.db'}"},
    }
    for key, value in over.items():
        node = study
        *parents, leaf = key.split("__")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return study


def write_study(path: Path, study: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def study_runs(tracking_uri: str, experiment: str) -> tuple[list, list]:
    """``(parents, children)`` MLflow runs of a study's experiment."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("cktf.kind") == "study"]
    children = [r for r in runs if "cktf.trial_id" in r.data.tags]
    return parents, children
