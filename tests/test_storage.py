"""What a trial stores (docs/architecture.md, "Where a trial's files live"): an ended trial's stored checkpoints
shrink to its weights, metrics and config; its node-local working folder goes; a trial writes one resume state."""

from __future__ import annotations

import torch

from cktf.train.checkpoint import PREVIOUS_FILE, RESUME_FILE, save_resume_state
from cktf.tune.results.retention import release_trial, shrink_trial
from cktf.tune.results.scratch import collect_ended, study_scratch, trial_workdir

KEPT = ("model_best.safetensors", "model_last.safetensors", "metrics.jsonl", "config.json")


def _trial(tmp_path, checkpoints: int = 2):
    trial = tmp_path / "ray" / "tiny" / "run_trial_0001"
    for i in range(checkpoints):
        ckpt = trial / f"checkpoint_{i:06d}"
        ckpt.mkdir(parents=True)
        (ckpt / RESUME_FILE).write_bytes(b"x" * 1000)
        for name in KEPT:
            (ckpt / name).write_bytes(b"w" * 10)
    (trial / "result.json").write_text("{}")
    return trial, {"trial_id": "t1", "checkpoint": str(trial / f"checkpoint_{checkpoints - 1:06d}")}


def test_an_ended_trial_keeps_its_latest_weights_metrics_and_config_only(tmp_path):
    trial, rec = _trial(tmp_path)
    freed = shrink_trial(rec)
    assert freed == 2 * 1000 + len(KEPT) * 10  # the older checkpoint whole, the latest one's last.pt
    assert sorted(p.name for p in trial.iterdir()) == ["checkpoint_000001", "result.json"]
    assert sorted(p.name for p in (trial / "checkpoint_000001").iterdir()) == sorted(KEPT)
    assert shrink_trial(rec) == 0  # idempotent


def test_keep_trial_state_keeps_everything(tmp_path):
    trial, rec = _trial(tmp_path)
    assert release_trial(str(tmp_path / "study"), rec, keep_state=True) == 0
    assert len(list(trial.glob("checkpoint_*"))) == 2 and (trial / "checkpoint_000001" / RESUME_FILE).exists()


def test_a_missing_or_unreadable_checkpoint_is_not_an_error(tmp_path):
    assert shrink_trial({"trial_id": "t"}) == 0
    assert shrink_trial({"trial_id": "t", "checkpoint": str(tmp_path / "gone" / "checkpoint_000000")}) == 0


def test_working_folders_live_outside_ray_and_go_when_their_trial_ended(tmp_path, monkeypatch):
    monkeypatch.setenv("CKTF_SCRATCH", str(tmp_path / "scratch"))
    study = str(tmp_path / "studies" / "tiny")
    a, b = trial_workdir(study, "a"), trial_workdir(study, "b")
    assert a.parent == study_scratch(study) and str(a).startswith(str(tmp_path / "scratch"))
    assert study_scratch(study) != study_scratch(str(tmp_path / "other" / "tiny"))  # same name, another study
    assert collect_ended(study, {"a", "b"}, keep="b") == ["a"]
    assert not a.exists() and b.exists()
    release_trial(study, {"trial_id": "b", "node_id": None})  # ran on this node
    assert not b.exists()


def test_a_trial_writes_one_resume_state_without_a_previous_copy(tmp_path):
    state = {"epoch": 0, "distiller": {"w": torch.zeros(3)}}
    save_resume_state(state, tmp_path)
    save_resume_state({**state, "epoch": 1}, tmp_path)
    assert (tmp_path / PREVIOUS_FILE).exists()  # a plain run keeps the one before (a truncated file falls back)
    save_resume_state({**state, "epoch": 2}, tmp_path, keep_previous=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == [RESUME_FILE]
    assert torch.load(tmp_path / RESUME_FILE, weights_only=True)["epoch"] == 2
