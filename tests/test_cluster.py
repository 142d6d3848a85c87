"""Studies on a real multi-node Ray cluster on this machine (a head and worker nodes, each with its own raylet and
object store, all on 127.0.0.1): trials spread over the nodes, the dataset and the teacher held once per node,
token authentication on, the study submitted as a Ray job, a worker node lost mid-study, fractional GPUs."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import (
    TEACHER,
    TERMINAL,
    VENV_BIN,
    assert_mlflow_matches_index,
    cli_env,
    records,
    start_driver,
    study_runs,
    tiny_study,
    write_study,
)
from stack import RayCluster

pytestmark = [pytest.mark.slow, pytest.mark.cluster]


def _study(tmp: Path, data_root: Path, name: str, **over) -> tuple[dict, Path]:
    fields = {
        "name": name,
        "train__epochs": 2,
        "search": {"num_samples": 4, "space": {"alpha1": {"type": "uniform", "low": 0.0, "high": 1.0}}},
        "params": {"nce_k": 64},
        "max_concurrent": 4,
        **over,
    }
    study = tiny_study(tmp, data_root, **fields)
    return study, write_study(tmp / f"{name}.yaml", study)


def _check_lineage(study: dict, recs: dict[str, dict]) -> None:
    """One parent (finished), one child run per trial (none RUNNING), each epoch logged once, as in the index."""
    uri, experiment = study["mlflow"]["tracking_uri"], f"cktf-{study['name']}"
    assert all(r["status"] in TERMINAL for r in recs.values())
    assert_mlflow_matches_index(uri, experiment, recs)
    assert study_runs(uri, experiment)[0][0].info.status == "FINISHED"


@pytest.fixture(scope="module")
def token() -> str:
    return secrets.token_hex(16)


@pytest.fixture(scope="module")
def token_cluster(token):
    """Two worker nodes of 2 CPUs, the dashboard on (jobs), token authentication on, as infra/ deploys it."""
    env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, "PATH": cli_env()["PATH"]}
    with RayCluster(workers=2, cpus=2, dashboard=True, env=env) as cluster:
        yield cluster


def test_a_client_without_the_token_is_refused(token_cluster, token):
    probe = f"import ray; ray.init(address='{token_cluster.address}'); print('connected', len(ray.nodes()))"
    for bad in ({"RAY_AUTH_TOKEN": "not-the-token"}, {"RAY_AUTH_TOKEN": ""}):
        out = subprocess.run(
            [sys.executable, "-c", probe],
            env=cli_env(RAY_AUTH_MODE="token", **bad),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode != 0 and "connected" not in out.stdout, (bad, out.stdout[-500:], out.stderr[-1500:])
    ok = subprocess.run(
        [sys.executable, "-c", probe],
        env=cli_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ok.returncode == 0 and "connected 3" in ok.stdout, ok.stderr[-2000:]


def test_a_study_submitted_as_a_ray_job_spreads_over_the_nodes(token_cluster, token, tmp_path, data_root):
    # the study trains its teacher (not the test run's cached one): it gets a whole node's CPUs
    study, path = _study(
        tmp_path, data_root, "job", teacher={**TEACHER, "cache": False}, resources={"cpu": 1, "gpu": 0}
    )
    # the runbook's command (infra/README.md), the study file on storage every node reads
    submit = [str(VENV_BIN / "ray"), "job", "submit", "--address", token_cluster.dashboard_url]
    submit += ["--", "cktf", "tune", str(path), "--quiet"]
    for _ in range(6):  # the head's job agent can still be starting on a busy machine ("No available agent")
        done = subprocess.run(
            submit,
            env=cli_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=1200,
        )
        if "No available agent" not in done.stderr + done.stdout:
            break
        time.sleep(5)
    assert done.returncode == 0 and "succeeded" in done.stdout.lower(), done.stdout[-3000:] + done.stderr[-2000:]
    study_dir = tmp_path / "studies" / "job"
    recs = records(study_dir)
    assert len(recs) == 4 and all(r["status"] in TERMINAL for r in recs.values())
    nodes = {r["node_id"] for r in recs.values()}
    assert len(nodes) >= 2, f"every trial ran on one node: {nodes}"
    state = json.loads((study_dir / "state.json").read_text())
    data = state["object_transfers"]["data"]
    assert data["bytes"] > 1_000_000 and nodes <= set(data["nodes"]), data  # a copy on each trial's node ...
    assert data["copies"] == len(set(data["nodes"])) <= 3  # ... one per node (head + 2 workers), not per trial
    assert state["object_transfers"]["teacher"]["copies"] <= 3
    for r in recs.values():  # each trial read the node's single copy: views in shared memory, no private copy
        assert r["data"]["data/in_shared_memory"] == 1.0
        assert r["data"]["data/private_growth_bytes"] < 0.2 * r["data"]["data/bytes"]
    assert state["teacher_resources"] == {"cpu": 2.0, "gpu": 0.0}  # all of a node's CPUs, not one trial's share
    _check_lineage(study, recs)
    out = tmp_path / "student.safetensors"  # export from another process, after the job
    exported = subprocess.run(
        [str(VENV_BIN / "cktf"), "export", str(study_dir), "--out", str(out)],
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert exported.returncode == 0 and out.exists(), exported.stderr[-2000:]
    assert json.loads(out.with_suffix(".json").read_text())["trial"] in recs


def test_a_worker_node_lost_mid_study(tmp_path, data_root):
    """SIGKILL-like loss of a whole node (its raylet and workers): its trials go on from their last checkpoint on
    the other node; every trial runs to its end once, no MLflow run is duplicated, none is left RUNNING."""
    with RayCluster(workers=2, cpus=2) as cluster:
        victim = cluster.node_ids[1]
        study, path = _study(
            tmp_path,
            data_root,
            "nodeloss",
            train__epochs=3,
            asha={"grace_period": 3, "reduction_factor": 2},
            max_failures=3,
        )
        proc = start_driver(path, tmp_path, RAY_ADDRESS=cluster.address)
        study_dir = tmp_path / "studies" / "nodeloss"
        before: dict = {}
        deadline = time.time() + 900
        while time.time() < deadline:
            recs = records(study_dir)
            on_victim = [
                r
                for r in recs.values()
                if r.get("node_id") == victim
                and r["status"] == "running"
                and r.get("checkpoint")
                and len(r.get("history", [])) >= 1
            ]
            if on_victim:
                before = recs
                break
            assert proc.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
            time.sleep(0.2)
        assert before, "no trial ran on the second worker"
        cluster.remove(1)
        assert proc.wait(timeout=900) == 0, (tmp_path / "driver.log").read_text()[-3000:]
    after = records(study_dir)
    moved = [t for t, r in before.items() if r.get("node_id") == victim and r["status"] == "running"]
    assert len(after) == 4 and len(before) <= 4 and all(r["status"] in TERMINAL for r in after.values())
    assert all(r["status"] == "finished" for r in after.values())  # grace = epochs: none stopped early
    for tid in moved:
        rec = after[tid]
        assert rec["node_id"] != victim and rec.get("retries", 0) >= 1
        assert max(rec["start_epochs"]) >= 1, "the moved trial started over instead of going on from its checkpoint"
        assert [h["epoch"] for h in rec["history"]] == [0, 1, 2]
    _check_lineage(study, after)
    (tmp_path / "node_loss.json").write_text(json.dumps({"before": len(before), "after": len(after), "moved": moved}))


def test_fractional_gpus_pack_four_trials_per_declared_gpu(tmp_path, data_root):
    """A node that declares one GPU (no CUDA here: Ray schedules by declared resources): trials asking for 0.25 run
    four at a time and no more, each sees the device Ray assigned it, and a trial that ends frees its share."""
    with RayCluster(workers=1, cpus=8, gpus=1) as cluster:
        study, path = _study(
            tmp_path,
            data_root,
            "gpus",
            distiller="ce",
            teacher={},
            params={},
            search={"num_samples": 6, "space": {"optim.lr": {"type": "log", "low": 0.01, "high": 0.1}}},
            # long enough that four trials started one after another overlap on a busy machine
            train={"epochs": 3, "batch_size": 64, "device": "cpu", "max_steps_per_epoch": 8},
            resources={"cpu": 1, "gpu": 0.25},
            max_concurrent=0,
        )
        done = subprocess.run(
            [str(VENV_BIN / "cktf"), "tune", str(path), "--quiet"],
            env=cli_env(RAY_ADDRESS=cluster.address),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=900,
        )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    recs = records(tmp_path / "studies" / "gpus")
    assert len(recs) == 6
    assert all(r["gpu_ids"] == "0" for r in recs.values()), {r["trial_id"]: r["gpu_ids"] for r in recs.values()}
    spans = sorted((r["created"], r["ended"]) for r in recs.values())
    overlap = max(sum(1 for s, e in spans if s <= t < e) for t, _ in spans)
    assert overlap == 4, f"{overlap} trials ran at once on one GPU at 0.25 each"
    first_end = min(e for _, e in spans[:4])
    assert all(s >= first_end - 0.5 for s, _ in spans[4:]), "a fifth trial started before a share was free"
