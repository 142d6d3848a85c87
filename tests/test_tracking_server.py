"""Studies against the tracking stack users share: an MLflow server over HTTP on PostgreSQL with its artifacts
proxied to object storage, and the study itself (state, trial index, checkpoints) on an S3-compatible endpoint.
The server is restarted mid-study, kept down past the retry budget, and the study stays truthful throughout."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import mlflow
import pytest
from helpers import (
    TERMINAL,
    VENV_BIN,
    assert_mlflow_matches_index,
    cli_env,
    records,
    study_runs,
    tiny_study,
    write_study,
)
from stack import MlflowServer, Moto, Postgres

pytestmark = [pytest.mark.slow, pytest.mark.cluster]


@pytest.fixture(scope="module")
def moto():
    with Moto(buckets=("studies", "mlart")) as m:
        yield m


@pytest.fixture(scope="module")
def postgres():
    with Postgres(databases=("mlflow", "mlflow_auth", "mlflow2")) as pg:
        yield pg


@pytest.fixture
def s3_env(moto, monkeypatch):
    for k, v in moto.env.items():
        monkeypatch.setenv(k, v)
    return moto.env


def _study(tmp: Path, data_root: Path, name: str, tracking_uri: str, workdir: str, **over) -> tuple[dict, Path]:
    fields = {
        "name": name,
        "search": {"num_samples": 3, "space": {"alpha1": {"type": "uniform", "low": 0.0, "high": 1.0}}},
        "params": {"nce_k": 64},
        "workdir": workdir,
        "mlflow": {"tracking_uri": tracking_uri, "retry_s": 90},
        **over,
    }
    study = tiny_study(tmp, data_root, **fields)
    return study, write_study(tmp / f"{name}.yaml", study)


def _matches(uri: str, experiment: str, recs: dict[str, dict]) -> dict[str, int]:
    """MLflow equals the index (every epoch of three metrics, once), and the study's parent run says complete."""
    parents, _ = study_runs(uri, experiment)
    assert parents[0].info.status == "FINISHED" and parents[0].data.tags["cktf.study_status"] == "complete"
    assert "cktf.best_trial" in parents[0].data.tags
    return assert_mlflow_matches_index(uri, experiment, recs, ("val_acc", "loss/total", "train_acc"))


def _logged_at(line: str) -> float:
    """The time of a ``driver.log`` line (its ``asctime``, local time)."""
    import datetime

    return datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()


def test_a_study_over_http_survives_a_tracking_server_restart(tmp_path, data_root, postgres, moto, s3_env, monkeypatch):
    """PostgreSQL store, MLflow's basic-auth on, artifacts proxied to S3, the study's own folder on S3; the server
    is stopped for 10 s while trials report: the callback's retries bridge it and MLflow ends up with every epoch,
    once."""
    auth = postgres.uri("mlflow_auth")
    with MlflowServer(postgres.uri("mlflow"), "s3://mlart/", env=moto.env, auth_db=auth) as server:
        import requests

        search = f"{server.url}/api/2.0/mlflow/experiments/search"
        assert requests.get(search, params={"max_results": 1}, timeout=10).status_code == 401  # no login, no access
        for k, v in server.client_env.items():
            monkeypatch.setenv(k, v)
        study, path = _study(tmp_path, data_root, "restart", server.url, "s3://studies/cktf")
        store_uri = "s3://studies/cktf/restart"
        log = open(tmp_path / "driver.log", "w")
        proc = subprocess.Popen(
            [str(VENV_BIN / "cktf"), "tune", str(path), "--quiet"],
            env=cli_env(**moto.env, **server.client_env),
            cwd=tmp_path,
            stdout=log,
            stderr=log,
        )
        deadline = time.time() + 900
        while time.time() < deadline and not any(r.get("history") for r in records(store_uri).values()):
            assert proc.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
            time.sleep(0.3)
        before = _mlflow_counts(server.url, "cktf-restart")
        stopped = time.time()
        server.stop()
        time.sleep(10)
        server.start()
        restarted = time.time()
        assert proc.wait(timeout=900) == 0, (tmp_path / "driver.log").read_text()[-3000:]
        # a report fell inside the outage: the trial callback's MLflow call failed then and was retried
        from cktf.tune.results.store import StudyStore

        text = StudyStore(store_uri).read_text("logs", "driver.log") or ""
        failed = [line for line in text.splitlines() if "did not go through" in line and "MLflow call" in line]
        assert any(stopped <= _logged_at(line) <= restarted for line in failed), failed
        recs = records(store_uri)
        assert len(recs) == 3 and all(r["status"] in TERMINAL for r in recs.values())
        after = _matches(server.url, "cktf-restart", recs)
        client = mlflow.MlflowClient(tracking_uri=server.url)
        (parent,), _ = study_runs(server.url, "cktf-restart")
        artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
        assert {"study", "report", "best_student"} <= artifacts
        local = client.download_artifacts(parent.info.run_id, "best_student", str(tmp_path / "dl"))
        assert (Path(local) / "student.safetensors").exists()  # through the server's proxy
    assert any(k.endswith("student.safetensors") for k in moto.objects("mlart")), "the artifact is in the bucket"
    keys = moto.objects("studies", "cktf/restart/")
    assert (
        "cktf/restart/state.json" in keys
        and any("/trials/" in k for k in keys)
        and any("checkpoint" in k for k in keys)
    )
    (tmp_path / "restart.json").write_text(json.dumps({"before_restart": before, "after": after}))


def _mlflow_counts(uri: str, experiment: str) -> dict[str, int]:
    parents, children = study_runs(uri, experiment)
    client = mlflow.MlflowClient(tracking_uri=uri)
    values = sum(len(client.get_metric_history(c.info.run_id, "val_acc")) for c in children)
    return {"runs": len(parents) + len(children), "val_acc_values": values}


def test_a_server_down_past_the_budget_then_mlflow_sync(tmp_path, data_root, postgres):
    """The server goes down and stays down: the study says so once, trains on, and completes; the results are in
    the trial index, and ``cktf mlflow-sync`` replays them once the server is back."""
    with MlflowServer(postgres.uri("mlflow2"), str(tmp_path / "artifacts")) as server:
        study, path = _study(
            tmp_path,
            data_root,
            "outage",
            server.url,
            str(tmp_path / "studies"),
            mlflow={"tracking_uri": server.url, "retry_s": 3},
        )
        study_dir = tmp_path / "studies" / "outage"
        log = open(tmp_path / "driver.log", "w")
        proc = subprocess.Popen(
            [str(VENV_BIN / "cktf"), "tune", str(path), "--quiet"], env=cli_env(), cwd=tmp_path, stdout=log, stderr=log
        )
        deadline = time.time() + 900
        while time.time() < deadline and not any(r.get("history") for r in records(study_dir).values()):
            assert proc.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
            time.sleep(0.3)
        server.stop()
        rc = proc.wait(timeout=900)
        text = (tmp_path / "driver.log").read_text()
        assert rc == 0, text[-3000:]
        assert text.count("has not answered for") == 1, "the outage is reported once"
        assert "cktf mlflow-sync" in text
        recs = records(study_dir)
        assert len(recs) == 3 and all(r["status"] in TERMINAL for r in recs.values())
        assert all(len(r["history"]) >= 1 for r in recs.values())  # training went on without MLflow
        server.start()
        synced = subprocess.run(
            [str(VENV_BIN / "cktf"), "mlflow-sync", str(path)],
            env=cli_env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert synced.returncode == 0, synced.stderr[-3000:]
        _matches(server.url, "cktf-outage", records(study_dir))  # the runs it made are in the index now
        again = subprocess.run(
            [str(VENV_BIN / "cktf"), "mlflow-sync", str(path)],
            env=cli_env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert "'epochs_logged': 0" in again.stdout and "'runs_created': 0" in again.stdout  # idempotent


def test_a_study_on_s3_resumes_and_exports_from_s3(tmp_path, data_root, moto, s3_env):
    """The study's folder and Ray's storage on S3 (MLflow in sqlite): a driver killed mid-trials is resumed from
    S3, and export and report read the study from S3."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    study, path = _study(tmp_path, data_root, "ons3", uri, "s3://studies/cktf")
    store_uri = "s3://studies/cktf/ons3"
    log = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen(
        [str(VENV_BIN / "cktf"), "tune", str(path), "--quiet"],
        env=cli_env(**moto.env),
        cwd=tmp_path,
        stdout=log,
        stderr=log,
    )
    deadline = time.time() + 900
    while time.time() < deadline:
        recs = records(store_uri)
        if any(r["status"] in TERMINAL for r in recs.values()) and any(
            r["status"] == "running" and r.get("checkpoint") for r in recs.values()
        ):
            break
        assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        time.sleep(0.3)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    resumed = subprocess.run(
        [str(VENV_BIN / "cktf"), "tune", str(path), "--resume", "--quiet"],
        env=cli_env(**moto.env),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    recs = records(store_uri)
    assert len(recs) == 3 and all(r["status"] in TERMINAL for r in recs.values())
    for r in recs.values():
        assert [h["epoch"] for h in r["history"]] == list(range(len(r["history"])))
        assert r["checkpoint_fs"] == "S3FileSystem"
    out = tmp_path / "student.safetensors"
    exported = subprocess.run(
        [str(VENV_BIN / "cktf"), "export", store_uri, "--out", str(out)],
        env=cli_env(**moto.env),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert exported.returncode == 0 and out.exists(), exported.stderr[-2000:]
    report = subprocess.run(
        [str(VENV_BIN / "cktf"), "report", store_uri],
        env=cli_env(**moto.env),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert report.returncode == 0 and "**best**" in report.stdout, report.stderr[-2000:]
    assert "cktf/ons3/report/summary.md" in moto.objects("studies", "cktf/ons3/report/")
