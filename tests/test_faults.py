"""The fault matrix of a study's life: SIGINT and SIGKILL of the driver at each stage (the teacher, mid-trials, the
last trial, the report), a trial worker killed, two drivers at once, a study whose trials all fail. After each (and
``--resume`` where it applies) the study must tell the truth: the exit code (0 only when complete, 3 when incomplete,
4 when every trial failed), one parent run, one child run per trial, no run left RUNNING, no metric step logged twice,
the trial index equal to MLflow, and "best" equal to the true best among the finished trials.

Each signal runs as one chain over the four stages: the driver is stopped at the teacher, resumed and stopped
mid-trials, resumed and stopped during the last trial, resumed and stopped during the report, then resumed to the
end; every stop is checked as it happens and the end as a whole (nothing that had ended is run again).

SIGKILL goes to the driver alone (``kill -9 PID``), so its local Ray outlives it; the next driver must end those
processes (their pids are in the study's lock) before it starts its own.
"""

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
    alive,
    assert_mlflow_matches_index,
    cktf_cmd,
    cli_env,
    records,
    state,
    study_runs,
    tiny_study,
    write_study,
)

pytestmark = pytest.mark.slow

N = 3  # trials per study


class Study:
    """One small study file in its own folder, run through the real CLI in processes the test owns."""

    def __init__(self, tmp: Path, data_root: Path, name: str, processes, **over):
        self.tmp, self.name, self.started, self.processes = tmp, name, 0, processes
        fields = {
            "name": name,
            "train": {"epochs": 2, "batch_size": 64, "max_steps_per_epoch": 3},
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
        self.study = tiny_study(tmp, data_root, **fields)
        self.path = write_study(tmp / f"{name}.yaml", self.study)
        self.dir = tmp / "studies" / name
        self.uri = self.study["mlflow"]["tracking_uri"]

    def start(self, *args: str) -> subprocess.Popen:
        self.started += 1
        log = open(self.tmp / f"{self.name}-{self.started}.log", "w")
        cmd = cktf_cmd("tune", str(self.path), "--quiet", *args)
        return self.processes.start(cmd, env=cli_env(), cwd=self.tmp, stdout=log, stderr=log)

    def run(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        cmd = cktf_cmd("tune", str(self.path), "--quiet", *args)
        return subprocess.run(cmd, env=cli_env(), cwd=self.tmp, capture_output=True, text=True, timeout=timeout)

    def wait_for(self, proc: subprocess.Popen, what: str, cond, timeout: float = 300) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if cond(records(self.dir), state(self.dir)):
                return
            if proc.poll() is not None:
                pytest.fail(f"the driver ended (rc {proc.returncode}) before {what}: {self.log_tail()}")
            time.sleep(0.02)
        pytest.fail(f"timed out waiting for {what}")

    def log_tail(self) -> str:
        return (self.tmp / f"{self.name}-{self.started}.log").read_text()[-2000:]

    # ------------------------------------------------------------------ what must hold afterwards
    def check(self, status: str) -> dict[str, dict]:
        recs = records(self.dir)
        parents, _ = study_runs(self.uri, f"cktf-{self.name}")
        assert_mlflow_matches_index(self.uri, f"cktf-{self.name}", recs)
        parent = parents[0]
        assert state(self.dir).get("status") == status
        assert parent.data.tags["cktf.study_status"] == status
        assert parent.info.status == {"complete": "FINISHED", "failed": "FAILED"}.get(status, "KILLED")
        finished = {t: max(h["val_acc"] for h in r["history"]) for t, r in recs.items() if r["status"] == "finished"}
        if status == "complete":
            assert len(recs) == N and all(r["status"] in TERMINAL for r in recs.values())
            best = max(sorted(finished), key=finished.get)  # a tie goes to the smaller trial id
            assert parent.data.tags["cktf.best_trial"] == best
            assert parent.data.metrics["best/score"] == float(f"{finished[best]:.4g}")  # one seed: its score
            exported = json.loads((self.dir / "best" / "student.json").read_text())
            assert exported["trial"] == best and (self.dir / "report" / "summary.md").exists()
        else:
            assert "cktf.best_trial" not in parent.data.tags, "an incomplete study reports no best"
        return recs


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


@pytest.mark.timeout(900)
@pytest.mark.parametrize("sig", ["SIGINT", "SIGKILL"])
def test_the_driver_stopped_at_each_stage_then_resumed(tmp_path, data_root, processes, sig):
    # the study trains its own teacher (3 epochs: a stage to stop in), not the test run's cached one
    teacher = {"arch": "resnet8", "optim": {"milestones": []}, "train": {"epochs": 3}}
    study = Study(tmp_path, data_root, f"chain-{sig.lower()}", processes, teacher={**teacher, "cache": False})
    ended: dict[str, dict] = {}  # every trial that had ended at some stop, as it was then
    previous_ray: list = []
    for i, stage in enumerate(STAGES):
        proc = study.start(*(["--resume"] if i else []))
        study.wait_for(proc, f"the {stage} stage", STAGES[stage])
        assert not alive(previous_ray), "the next driver must end the Ray processes its killed predecessor left"
        ray_pids = json.loads((study.dir / "lock.json").read_text()).get("ray_pids", [])
        os.kill(proc.pid, getattr(signal, sig))
        rc = proc.wait(timeout=300)
        if sig == "SIGINT":
            assert rc == 3, f"a study interrupted at the {stage} stage must exit 3 (incomplete), got {rc}"
            study.check("incomplete")
            assert not alive(ray_pids), "the local Ray outlived its driver"
        else:
            assert rc == -signal.SIGKILL
            assert state(study.dir).get("status") != "complete"
            previous_ray = ray_pids
        for tid, rec in records(study.dir).items():
            if rec["status"] in TERMINAL:
                ended.setdefault(tid, rec)
    resumed = study.run("--resume")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert not alive(previous_ray), "the resumed driver must end the Ray processes its killed predecessor left"
    after = study.check("complete")
    assert ended, "some trial had ended before a stop"
    for tid, rec in ended.items():  # what had ended is kept as it was, never run again
        assert after[tid]["status"] == rec["status"] and after[tid]["history"] == rec["history"]
        assert after[tid]["mlflow_run_id"] == rec["mlflow_run_id"]


def test_a_killed_trial_worker_is_retried_from_its_checkpoint(tmp_path, data_root, processes):
    study = Study(tmp_path, data_root, "worker", processes, max_failures=2)
    study.study["train"]["epochs"] = 3
    write_study(study.path, study.study)
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
    assert proc.wait(timeout=600) == 0, study.log_tail()
    recs = study.check("complete")
    assert recs[victim["tid"]]["status"] in TERMINAL
    run = mlflow.MlflowClient(tracking_uri=study.uri).get_run(recs[victim["tid"]]["mlflow_run_id"])
    assert int(run.data.tags.get("cktf.retries", "0")) >= 1


def test_two_drivers_at_once(tmp_path, data_root, processes):
    study = Study(tmp_path, data_root, "twice", processes)
    first, second = study.start(), study.start()
    rcs = {first.wait(timeout=600), second.wait(timeout=600)}
    assert rcs == {0, 2}, rcs
    logs = sorted(tmp_path.glob("twice-*.log"))
    refused = next(p.read_text() for p in logs if "another driver" in p.read_text())
    assert "one driver per study" in refused and "pid" in refused and "started" in refused
    study.check("complete")  # one parent, N children, no duplicated run or epoch


def test_a_study_whose_trials_all_fail_says_so(tmp_path, data_root, processes):
    study = Study(tmp_path, data_root, "allfail", processes, optim={"lr": 1.0e12, "milestones": []}, max_failures=2)
    done = study.run()
    assert done.returncode == 4, done.stdout[-2000:] + done.stderr[-2000:]
    assert "every trial failed" in done.stderr and "non-finite" in done.stderr
    recs = study.check("failed")
    assert len(recs) == N and all(r["status"] == "failed" for r in recs.values())
    parents, children = study_runs(study.uri, "cktf-allfail")
    assert all(c.data.tags.get("cktf.retries") is None for c in children), "a deterministic NaN is not retried"
