"""Kill a running study's driver (SIGKILL to its whole process group: driver, local Ray, trials),
resume it with ``--resume``, and check that nothing was lost or done twice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tune_helpers import study_runs, tiny_study, write_study

TERMINAL = {"finished", "pruned", "failed"}


def _records(study_dir: Path) -> dict[str, dict]:
    out = {}
    for p in (study_dir / "trials").glob("*.json"):
        try:
            rec = json.loads(p.read_text())
        except json.JSONDecodeError:  # mid-rename on another process: read it next time
            continue
        out[rec["trial_id"]] = rec
    return out


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-c", "import sys; from cktf.cli import main; sys.exit(main())", *args]


@pytest.mark.slow
def test_killed_driver_resumes_without_loss_or_duplicates(tmp_path, data_root):
    study = tiny_study(tmp_path, data_root, name="resume")
    path = write_study(tmp_path / "resume.yaml", study)
    study_dir = tmp_path / "studies" / "resume"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    log = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen(_cli("tune", str(path), "--quiet"), env=env, stdout=log, stderr=log, start_new_session=True)
    before: dict[str, dict] = {}
    deadline = time.time() + 600
    try:
        while time.time() < deadline:
            recs = _records(study_dir) if (study_dir / "trials").exists() else {}
            done = [r for r in recs.values() if r.get("status") in TERMINAL]
            midway = [
                r for r in recs.values() if r.get("status") == "running" and r.get("history") and r.get("checkpoint")
            ]
            if done and midway:
                before = recs
                break
            assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray it started, mid-study
        proc.wait(timeout=60)
        log.close()
    assert before, "the study never reached a state with a finished and a checkpointed running trial"
    finished_before = {k: r for k, r in before.items() if r["status"] in TERMINAL}
    interrupted = {k for k, r in before.items() if r["status"] == "running"}
    assert json.loads((study_dir / "state.json").read_text()).get("status") != "complete"

    resumed = subprocess.run(
        _cli("tune", str(path), "--resume", "--quiet"), env=env, capture_output=True, text=True, timeout=900
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert json.loads((study_dir / "state.json").read_text())["status"] == "complete"

    after = _records(study_dir)
    assert len(after) == study["search"]["num_samples"]
    assert all(r["status"] in TERMINAL for r in after.values())
    for tid, rec in finished_before.items():  # finished work is kept as it was
        assert after[tid]["status"] == rec["status"]
        assert after[tid]["mlflow_run_id"] == rec["mlflow_run_id"]
        diffs = [
            (a["epoch"], k, a.get(k), b.get(k))
            for a, b in zip(after[tid]["history"], rec["history"])
            for k in set(a) | set(b)
            if a.get(k) != b.get(k)
        ]
        assert len(after[tid]["history"]) == len(rec["history"]) and not diffs, (tid, diffs)
    for tid in interrupted:  # resumed from its checkpoint: every epoch once, in order
        epochs = [h["epoch"] for h in after[tid]["history"]]
        assert epochs == list(range(len(epochs)))

    import mlflow

    uri = study["mlflow"]["tracking_uri"]
    parents, children = study_runs(uri, "cktf-resume")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == len(after)  # no duplicated run for a resumed trial
    assert {c.data.tags["cktf.trial_id"] for c in children} == set(after)
    client = mlflow.MlflowClient(tracking_uri=uri)
    for c in children:
        rec = after[c.data.tags["cktf.trial_id"]]
        assert c.info.run_id == rec["mlflow_run_id"]
        assert c.info.status == {"finished": "FINISHED", "pruned": "KILLED", "failed": "FAILED"}[rec["status"]]
        steps = [m.step for m in client.get_metric_history(c.info.run_id, "val_acc")]
        assert sorted(steps) == list(range(len(rec["history"]))), (c.data.tags["cktf.trial_id"], steps)
