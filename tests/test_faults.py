"""The fault matrix of a study's life: SIGKILL and SIGINT of the driver at each stage, a trial worker killed, two
drivers at once, a study whose trials all fail. After each (and ``--resume`` where it applies) the study must tell
the truth: the exit code (0 only when complete, 3 when incomplete, 4 when every trial failed), one parent run, one
child run per trial, no run left RUNNING, no metric step logged twice, the trial index equal to MLflow, and "best"
equal to the true best among the finished trials.

SIGKILL goes to the driver alone (``kill -9 PID``), so its local Ray outlives it; the resumed driver must end
those processes (their pids are in the study's lock) before it starts its own.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
from tune_helpers import study_runs, tiny_study, write_study

pytestmark = pytest.mark.slow

TERMINAL = {"finished", "pruned", "failed"}
MLFLOW = {"finished": "FINISHED", "pruned": "KILLED", "failed": "FAILED"}
N = 3  # trials per study


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-c", "import sys; from cktf.cli import main; sys.exit(main())", *args]


def _env() -> dict[str, str]:
    return {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def _records(study_dir: Path) -> dict[str, dict]:
    out = {}
    for p in (study_dir / "trials").glob("*.json") if (study_dir / "trials").exists() else []:
        try:
            rec = json.loads(p.read_text())
        except json.JSONDecodeError:  # mid-rename: read it next time
            continue
        out[rec["trial_id"]] = rec
    return out


def _state(study_dir: Path) -> dict:
    try:
        return json.loads((study_dir / "state.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}


class Study:
    """One small study file in its own folder, run through the real CLI in subprocesses."""

    def __init__(self, tmp: Path, data_root: Path, name: str, teacher_ckpt: Path | None, **over):
        self.tmp, self.name, self.started = tmp, name, 0
        data = {"dataset": "cifar10", "root": str(data_root), "train_subset": 600, "test_subset": 200}
        fields = {
            "name": name,
            "data": {**data, "val_fraction": 0.2},
            "train": {"epochs": 2, "batch_size": 64},
            "search": {
                "num_samples": N,
                "space": {
                    "alpha1": {"type": "uniform", "low": 0.0, "high": 1.0},
                    "nce_k": {"type": "categorical", "choices": [32, 64]},
                },
            },
            "sampler": {"name": "tpe", "seed": 0, "n_startup_trials": 2},
            **over,
        }
        study = tiny_study(tmp, data_root, **fields)
        if teacher_ckpt is not None:
            study["teacher"] = {"checkpoint": str(teacher_ckpt)}
        self.study = study
        self.path = write_study(tmp / f"{name}.yaml", study)
        self.dir = tmp / "studies" / name
        self.uri = study["mlflow"]["tracking_uri"]

    def start(self, *args: str) -> subprocess.Popen:
        self.started += 1
        log = open(self.tmp / f"{self.name}-{self.started}.log", "w")
        return subprocess.Popen(
            _cli("tune", str(self.path), "--quiet", *args),
            env=_env(),
            cwd=self.tmp,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )

    def run(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
        return subprocess.run(
            _cli("tune", str(self.path), "--quiet", *args),
            env=_env(),
            cwd=self.tmp,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def wait_for(self, proc: subprocess.Popen, what: str, cond, timeout: float = 600) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if cond(_records(self.dir), _state(self.dir)):
                return
            if proc.poll() is not None:
                pytest.fail(f"the driver ended (rc {proc.returncode}) before {what}")
            time.sleep(0.02)
        pytest.fail(f"timed out waiting for {what}")

    # ------------------------------------------------------------------ what must hold afterwards
    def check(self, status: str) -> dict[str, dict]:
        recs = _records(self.dir)
        parents, children = study_runs(self.uri, f"cktf-{self.name}")
        assert len(parents) == 1, [p.info.run_id for p in parents]
        parent = parents[0]
        client = mlflow.MlflowClient(tracking_uri=self.uri)
        assert _state(self.dir).get("status") == status
        assert parent.data.tags["cktf.study_status"] == status
        assert parent.info.status == {"complete": "FINISHED", "failed": "FAILED"}.get(status, "KILLED")
        assert len(children) == len(recs) and {c.data.tags["cktf.trial_id"] for c in children} == set(recs)
        for c in children:
            rec = recs[c.data.tags["cktf.trial_id"]]
            assert c.info.run_id == rec["mlflow_run_id"] and c.info.status != "RUNNING"
            if rec["status"] in TERMINAL:
                assert (c.info.status, c.data.tags["cktf.status"]) == (MLFLOW[rec["status"]], rec["status"])
            steps = [m.step for m in client.get_metric_history(c.info.run_id, "val_acc")]
            assert len(steps) == len(set(steps)), f"a metric step was logged twice: {steps}"
            assert sorted(steps) == [h["epoch"] for h in rec["history"]] == list(range(len(rec["history"])))
        finished = {t: max(h["val_acc"] for h in r["history"]) for t, r in recs.items() if r["status"] == "finished"}
        if status == "complete":
            assert len(recs) == N and all(r["status"] in TERMINAL for r in recs.values())
            best = max(sorted(finished), key=finished.get)  # a tie goes to the smaller trial id
            assert parent.data.tags["cktf.best_trial"] == best
            assert parent.data.metrics["best/val_acc"] == finished[best]
            exported = json.loads((self.dir / "best" / "student.json").read_text())
            assert exported["trial"] == best and (self.dir / "report" / "summary.md").exists()
        else:
            assert "cktf.best_trial" not in parent.data.tags, "an incomplete study reports no best"
        return recs


def _alive(pids: list) -> list[int]:
    import psutil

    out = []
    for pid, created in pids:
        try:
            if abs(psutil.Process(int(pid)).create_time() - float(created)) < 1.0:
                out.append(int(pid))
        except psutil.Error:
            pass
    return out


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, data_root) -> Path:
    """One resnet8 teacher (1 epoch) shared by the scenarios that do not test the teacher stage."""
    from cktf.data import DataConfig
    from cktf.train import OptimConfig, RunConfig, TrainConfig, train

    out = tmp_path_factory.mktemp("teacher")
    cfg = RunConfig(
        student="resnet8",
        data=DataConfig(dataset="cifar10", root=str(data_root), train_subset=600, test_subset=200, val_fraction=0.2),
        optim=OptimConfig(milestones=()),
        train=TrainConfig(epochs=1, progress=False),
        out_dir=str(out),
    )
    return Path(train(cfg)["weights_best"])


STAGES = {
    "teacher": lambda recs, st: st.get("stage") == "teacher",
    "mid-trials": lambda recs, st: (
        any(r["status"] in TERMINAL for r in recs.values())
        and any(r["status"] == "running" and r.get("history") and r.get("checkpoint") for r in recs.values())
    ),
    "last-trial": lambda recs, st: (
        len(recs) == N
        and any(r["status"] == "running" and r.get("history") for r in recs.values())
        and any(r["status"] in TERMINAL for r in recs.values())
    ),
    "report": lambda recs, st: st.get("stage") == "report",
}


@pytest.mark.parametrize("sig", ["SIGINT", "SIGKILL"])
@pytest.mark.parametrize("stage", list(STAGES))
def test_the_driver_interrupted_at_each_stage(tmp_path, data_root, teacher, stage, sig):
    over = {"teacher": {"arch": "resnet8", "optim": {"milestones": []}, "train": {"epochs": 3}}}
    study = Study(
        tmp_path,
        data_root,
        f"{stage}-{sig.lower()}",
        None if stage == "teacher" else teacher,
        **(over if stage == "teacher" else {}),
    )
    proc = study.start()
    study.wait_for(proc, f"the {stage} stage", STAGES[stage])
    ray_pids = json.loads((study.dir / "lock.json").read_text()).get("ray_pids", [])
    os.kill(proc.pid, getattr(signal, sig))
    rc = proc.wait(timeout=300)
    if sig == "SIGINT":
        assert rc == 3, f"a study interrupted at the {stage} stage must exit 3 (incomplete), got {rc}"
        study.check("incomplete")
        assert not _alive(ray_pids), "the local Ray outlived its driver"
    else:
        assert rc == -signal.SIGKILL
        assert _state(study.dir).get("status") != "complete"
    before = {t: r for t, r in _records(study.dir).items() if r["status"] in TERMINAL}
    resumed = study.run("--resume")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert not _alive(ray_pids), "the resumed driver must end the Ray processes its killed predecessor left"
    after = study.check("complete")
    for tid, rec in before.items():  # what had ended is kept as it was, never run again
        assert after[tid]["status"] == rec["status"] and after[tid]["history"] == rec["history"]
        assert after[tid]["mlflow_run_id"] == rec["mlflow_run_id"]


def test_a_killed_trial_worker_is_retried_from_its_checkpoint(tmp_path, data_root, teacher):
    study = Study(tmp_path, data_root, "worker", teacher, max_failures=2, train={"epochs": 3, "batch_size": 64})
    proc = study.start()
    victim: dict = {}

    def running_with_pid(recs, st):
        for tid, r in recs.items():
            if r["status"] == "running" and r.get("pid") and len(r.get("history", [])) == 1:
                victim.update(tid=tid, pid=r["pid"])
                return True
        return False

    study.wait_for(proc, "a trial worker with one epoch done", running_with_pid)
    os.kill(int(victim["pid"]), signal.SIGKILL)
    assert proc.wait(timeout=600) == 0
    recs = study.check("complete")
    assert recs[victim["tid"]]["status"] in TERMINAL
    run = mlflow.MlflowClient(tracking_uri=study.uri).get_run(recs[victim["tid"]]["mlflow_run_id"])
    assert int(run.data.tags.get("cktf.retries", "0")) >= 1


def test_two_drivers_at_once(tmp_path, data_root, teacher):
    study = Study(tmp_path, data_root, "twice", teacher)
    first, second = study.start(), study.start()
    rcs = {first.wait(timeout=600), second.wait(timeout=600)}
    assert rcs == {0, 2}, rcs
    logs = sorted(tmp_path.glob("twice-*.log"))
    refused = next(p.read_text() for p in logs if "another driver" in p.read_text())
    assert "one driver per study" in refused and "pid" in refused and "started" in refused
    study.check("complete")  # one parent, N children, no duplicated run or epoch


def test_a_study_whose_trials_all_fail_says_so(tmp_path, data_root, teacher):
    study = Study(tmp_path, data_root, "allfail", teacher, optim={"lr": 1.0e12, "milestones": []}, max_failures=2)
    done = study.run()
    assert done.returncode == 4, done.stdout[-2000:] + done.stderr[-2000:]
    assert "every trial failed" in done.stderr and "non-finite" in done.stderr
    recs = study.check("failed")
    assert len(recs) == N and all(r["status"] == "failed" for r in recs.values())
    parents, children = study_runs(study.uri, "cktf-allfail")
    assert all(c.data.tags.get("cktf.retries") is None for c in children), "a deterministic NaN is not retried"
