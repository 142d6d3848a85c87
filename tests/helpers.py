"""One helper per job for the tests that run studies and campaigns: the study builder, the trial-index reader, the
MLflow-vs-index check, the environment and command line of a driver started as a process, and the processes it
leaves. Every orchestration test builds its study here, so they all share one teacher (one data slice, one teacher
recipe: trained once per test run through the teacher cache, ``conftest.py``) and cap their steps per epoch (the
epoch counts that checkpoints, ASHA and resume need are kept)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import yaml

VENV_BIN = Path(sys.executable).parent
TERMINAL = {"finished", "pruned", "failed"}
#: an ended trial's MLflow status: ASHA's stop is a normal end (FINISHED with cktf.status = pruned)
MLFLOW_STATUS = {"finished": "FINISHED", "pruned": "FINISHED", "failed": "FAILED"}
#: steps per epoch of an orchestration test's trials (they are about the study, not the training)
STEPS = 3


def small_data(data_root: Path | str) -> dict[str, Any]:
    """The slice every orchestration test trains on: 480 train + 120 val CIFAR-10 images, 200 test."""
    return {"dataset": "cifar10", "root": str(data_root), "train_subset": 600, "test_subset": 200, "val_fraction": 0.2}


#: the one teacher of the test run (trained once, then served by the teacher cache)
TEACHER = {"arch": "resnet8", "optim": {"milestones": []}, "train": {"epochs": 1}}


def tiny_study(tmp: Path, data_root: Path, name: str = "tiny", **over: Any) -> dict[str, Any]:
    """A 6-trial CKTF study on :func:`small_data`: the shared resnet8 teacher -> resnet8, 3 epochs of
    :data:`STEPS` steps. ``over``: ``field=value`` or ``section__field=value`` replacements."""
    study: dict[str, Any] = {
        "name": name,
        "student": "resnet8",
        "distiller": "cktf",
        "data": small_data(data_root),
        "teacher": json.loads(json.dumps(TEACHER)),
        "params": {},
        "optim": {"lr": 0.05, "milestones": []},
        "train": {"epochs": 3, "batch_size": 64, "max_steps_per_epoch": STEPS},
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


def records(folder: Path | str) -> dict[str, dict]:
    """The trial index of a study or campaign (local or ``s3://``), by key; a record caught mid-write is skipped."""
    from cktf.tune.results.reader import TrialIndex

    out = {}
    try:
        recs = TrialIndex(str(folder)).all()
    except (OSError, ValueError):  # the folder is being created, or a file is half-renamed
        return {}
    for rec in recs:
        out[rec["trial_id"]] = rec
    return out


def state(folder: Path | str) -> dict[str, Any]:
    from cktf.tune.results.reader import read_state

    try:
        return read_state(str(folder))
    except (OSError, ValueError):
        return {}


def study_runs(tracking_uri: str, experiment: str) -> tuple[list, list]:
    """``(parents, children)`` MLflow runs of an experiment (a study's or a campaign's)."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("cktf.kind") in ("study", "campaign")]
    children = [r for r in runs if "cktf.trial_id" in r.data.tags]
    return parents, children


def assert_mlflow_matches_index(
    tracking_uri: str, experiment: str, recs: dict[str, dict], metrics: tuple[str, ...] = ("val_acc",)
) -> dict[str, int]:
    """One parent run; one child run per index record, with the record's status and run id, none RUNNING; every
    epoch of ``metrics`` logged once with the index's value. Returns the run and metric-value counts."""
    import mlflow

    parents, children = study_runs(tracking_uri, experiment)
    assert len(parents) == 1, [p.info.run_id for p in parents]
    assert len(children) == len(recs) and {c.data.tags["cktf.trial_id"] for c in children} == set(recs)
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    values = 0
    for c in children:
        rec = recs[c.data.tags["cktf.trial_id"]]
        assert c.info.run_id == rec["mlflow_run_id"] and c.info.status != "RUNNING"
        if rec["status"] in TERMINAL:
            assert (c.info.status, c.data.tags["cktf.status"]) == (MLFLOW_STATUS[rec["status"]], rec["status"])
        for name in metrics:
            hist = client.get_metric_history(c.info.run_id, name)
            steps = [m.step for m in hist]
            assert len(steps) == len(set(steps)), f"a step of {name} was logged twice: {steps}"
            assert sorted(steps) == [h["epoch"] for h in rec["history"]] == list(range(len(rec["history"])))
            assert {m.step: m.value for m in hist} == {h["epoch"]: h[name] for h in rec["history"]}
            values += len(hist)
    return {"runs": len(parents) + len(children), "metric_values": values}


def cli_env(**extra: str) -> dict[str, str]:
    """The environment of a driver started as a process: a local Ray on loopback without a token, ``cktf`` on the
    PATH, one thread per library (the tests share 2 cores); ``RAY_ADDRESS`` only when given."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(
        RAY_AUTH_MODE="disabled",
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    env.update(extra)
    return env


def cktf_cmd(*args: str) -> list[str]:
    """``cktf ARGS`` run by this interpreter."""
    return [sys.executable, "-c", "import sys; from cktf.cli import main; sys.exit(main())", *args]


def alive(pids: list) -> list[int]:
    """Which of ``[(pid, create_time)]`` (a lease's ``ray_pids``) are still the same processes."""
    import psutil

    out = []
    for pid, created in pids:
        try:
            if abs(psutil.Process(int(pid)).create_time() - float(created)) < 1.0:
                out.append(int(pid))
        except psutil.Error:
            pass
    return out


def start_driver(path: Path, cwd: Path, **env: str):
    """``cktf tune PATH --quiet`` as a process (its output in ``cwd/driver.log``), with ``env`` added to
    :func:`cli_env` (``RAY_ADDRESS`` to join a cluster)."""
    import subprocess

    log = open(Path(cwd) / "driver.log", "w")
    return subprocess.Popen(
        [str(VENV_BIN / "cktf"), "tune", str(path), "--quiet"], env=cli_env(**env), cwd=cwd, stdout=log, stderr=log
    )
