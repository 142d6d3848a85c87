"""Epoch checkpoints written in the background, compact memory banks, and a kill in the middle of a write."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cktf.data import DataConfig, load_splits
from cktf.models import create_model
from cktf.train import OptimConfig, RunConfig, TrainConfig, fit, load_model, prepare_run
from cktf.train.callbacks import Callback
from cktf.train.checkpoint import load_resume_state, load_state, save_model_weights

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def small(data_root):
    cfg = DataConfig(dataset="cifar10", root=str(data_root), train_subset=2000, test_subset=200, val_fraction=0.1)
    return cfg, load_splits(cfg)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("teacher") / "teacher.safetensors"
    torch.manual_seed(0)
    save_model_weights(path, create_model("resnet8", num_classes=10), {"arch": "resnet8", "dataset": "cifar10"})
    return path


def _cktf(data: DataConfig, teacher: Path, out: Path, feat_dim: int = 64, **train) -> RunConfig:
    """CKTF resnet8 -> resnet8: five critics (stem, three stages, penultimate), ten banks of 1,800 x feat_dim."""
    return RunConfig(
        student="resnet8",
        distiller="cktf",
        distill_params={"nce_k": 64, "feat_dim": feat_dim},
        teacher_checkpoint=str(teacher),
        data=data,
        optim=OptimConfig(milestones=()),
        train=TrainConfig(epochs=3, batch_size=64, progress=False, max_steps_per_epoch=2, eval_test=False, **train),
        out_dir=str(out),
    )


class _Seen(Callback):
    """Records, when each checkpoint is reported, what ``last.pt`` on disk holds."""

    def __init__(self, out: Path):
        self.out, self.seen = out, []

    def on_checkpoint(self, epoch, metrics):
        self.seen.append((epoch, int(load_state(self.out / "last.pt")["epoch"]), metrics["epoch"]))


def test_a_checkpoint_is_reported_only_once_it_is_on_disk(small, teacher, tmp_path):
    data, splits = small
    seen = _Seen(tmp_path / "run")
    cfg = _cktf(data, teacher, tmp_path / "run")
    fit(prepare_run(cfg, splits=splits), [seen])
    assert seen.seen == [(0, 0, 0), (1, 1, 1), (2, 2, 2)]
    lines = [json.loads(x) for x in open(tmp_path / "run" / "metrics.jsonl")]
    assert [m["epoch"] for m in lines] == [0, 1, 2]
    assert all(m["checkpoint_snapshot_s"] >= 0 and m["checkpoint_wait_s"] >= 0 for m in lines)


def test_compact_banks_halve_the_banks_and_resume(small, teacher, tmp_path):
    data, splits = small
    full = fit(prepare_run(_cktf(data, teacher, tmp_path / "fp32", feat_dim=512), splits=splits))
    compact_cfg = _cktf(data, teacher, tmp_path / "bf16", feat_dim=512, checkpoint_banks="bf16")
    fit(prepare_run(compact_cfg.replace(train=compact_cfg.train.replace(epochs=2)), splits=splits))
    a, b = load_state(tmp_path / "fp32" / "last.pt"), load_state(tmp_path / "bf16" / "last.pt")
    banks = [k for k in b["distiller"] if k.endswith(("memory_s", "memory_t"))]
    assert len(banks) == 10 and all(b["distiller"][k].dtype == torch.bfloat16 for k in banks)
    assert all(a["distiller"][k].dtype == torch.float32 for k in banks)
    others = [k for k in b["distiller"] if k not in banks and b["distiller"][k].is_floating_point()]
    assert others and all(b["distiller"][k].dtype == torch.float32 for k in others)  # weights stay fp32
    size_a, size_b = (os.path.getsize(tmp_path / d / "last.pt") for d in ("fp32", "bf16"))
    bank_bytes = sum(a["distiller"][k].numel() * 4 for k in banks)
    assert size_a - size_b == pytest.approx(bank_bytes / 2, rel=0.02)
    # resuming the bf16 checkpoint loads the banks back into fp32 buffers and finishes the run
    resumed = fit(prepare_run(compact_cfg, splits=splits))
    assert resumed["epochs"] == 3
    state = load_state(tmp_path / "bf16" / "last.pt")
    assert state["epoch"] == 2 and full["epochs"] == 3


_CHILD = """
import json, sys
from cktf.data import load_splits
from cktf.train import RunConfig, fit, prepare_run
cfg = RunConfig.model_validate(json.loads(sys.argv[1]))
fit(prepare_run(cfg))
"""


def test_a_kill_during_a_background_write_keeps_the_previous_checkpoint(small, teacher, tmp_path):
    """SIGKILL while the writer thread is inside epoch 1's ``last.pt`` (a 295 MB file: ten 1,800 x 4,096 banks):
    the epoch-0 checkpoint is intact, it is the one a resumed run goes on from, and the resumed run ends with the
    same weights as an uninterrupted one."""
    data, splits = small
    out = tmp_path / "killed"
    cfg = _cktf(data, teacher, out, feat_dim=4096)
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, json.dumps(cfg.to_dict())])
    caught = False
    deadline = time.time() + 600
    try:
        while time.time() < deadline and proc.poll() is None:
            writing = [p for p in out.glob(".last.pt.*.tmp")] if out.exists() else []
            if writing and (out / "last.pt").exists():  # a write in flight, with a checkpoint before it
                os.kill(proc.pid, signal.SIGKILL)
                caught = True
                break
            time.sleep(0.002)
    finally:
        if proc.poll() is None and not caught:
            proc.kill()
        proc.wait()
    assert caught, "the run ended before a second checkpoint write could be caught"
    leftover = list(out.glob(".last.pt.*.tmp"))
    assert leftover, "the kill landed after the rename: no write was interrupted"
    state = load_resume_state(out)
    assert state is not None and state["epoch"] == 0  # the previous checkpoint, intact
    assert len(open(out / "metrics.jsonl").read().splitlines()) == 1
    resumed = fit(prepare_run(cfg, splits=splits))
    assert resumed["epochs"] == 3
    history = [json.loads(x) for x in open(out / "metrics.jsonl")]
    assert [m["epoch"] for m in history] == [0, 1, 2]
    straight = fit(prepare_run(cfg.replace(out_dir=str(tmp_path / "straight")), splits=splits))
    a = load_model(straight["weights_last"])[0].state_dict()
    b = load_model(resumed["weights_last"])[0].state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=k)
