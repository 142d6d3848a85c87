"""The single-run trainer on real offline data: learning, checkpoints, resume, selection, failures."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from cktf.data import DataConfig, load_splits
from cktf.errors import ConfigError
from cktf.models import create_model
from cktf.train import NonFiniteLossError, OptimConfig, RunConfig, TrainConfig, fit, load_model, prepare_run, train
from cktf.train.engine import evaluate


@pytest.fixture(scope="module")
def cifar10_small(data_root):
    cfg = DataConfig(dataset="cifar10", root=str(data_root), train_subset=2000, test_subset=500, val_fraction=0.1)
    return cfg, load_splits(cfg)


def _cfg(data: DataConfig, out, **kw) -> RunConfig:
    base = RunConfig(
        student="resnet8",
        distiller="ce",
        data=data,
        optim=OptimConfig(lr=0.05, milestones=(2,)),
        train=TrainConfig(epochs=2, batch_size=64, progress=False),
        out_dir=str(out),
    )
    return base.replace(**kw)


@pytest.fixture(scope="module")
def teacher_run(cifar10_small, tmp_path_factory):
    data, splits = cifar10_small
    cfg = _cfg(data, tmp_path_factory.mktemp("teacher"), train=TrainConfig(epochs=3, batch_size=64, progress=False))
    summary = fit(prepare_run(cfg, splits=splits))
    return cfg, summary


@pytest.mark.slow
def test_teacher_learns_above_chance(teacher_run):
    cfg, summary = teacher_run
    assert summary["epochs"] == 3
    assert summary["test_acc"] > 20.0  # 10 classes: chance is 10%
    lines = [json.loads(x) for x in open(f"{cfg.out_dir}/metrics.jsonl")]
    assert [m["epoch"] for m in lines] == [0, 1, 2]
    for m in lines:
        assert {"loss/ce", "loss/total", "train_acc", "val_acc", "test_acc", "epoch_time_s", "images_per_s"} <= set(m)
    assert lines[-1]["loss/ce"] < lines[0]["loss/ce"]
    assert [m["lr"] for m in lines] == pytest.approx([0.05, 0.05, 0.005])


@pytest.mark.slow
def test_weights_reload_and_reproduce_accuracy(teacher_run, cifar10_small):
    from cktf.data import BatchLoader

    cfg, summary = teacher_run
    _, splits = cifar10_small
    model, meta = load_model(summary["weights_best"])
    assert meta["arch"] == "resnet8" and meta["dataset"] == "cifar10" and meta["epoch"] == summary["best_epoch"]
    loader = BatchLoader(splits.test, spec=splits.spec, batch_size=256, train=False, device=torch.device("cpu"))
    assert evaluate(model, loader, torch.device("cpu"))["acc"] == pytest.approx(summary["test_acc"], abs=1e-6)
    state = torch.load(f"{cfg.out_dir}/last.pt", weights_only=True)  # no pickle needed to resume
    assert state["epoch"] == 2 and len(state["history"]) == 3


@pytest.mark.slow
def test_kd_student_end_to_end_and_teacher_frozen(teacher_run, cifar10_small, tmp_path):
    data, splits = cifar10_small
    _, t_summary = teacher_run
    cfg = _cfg(
        data,
        tmp_path / "kd",
        distiller="kd",
        teacher_checkpoint=t_summary["weights_best"],
        train=TrainConfig(epochs=1, batch_size=64, progress=False, max_steps_per_epoch=10),
    )
    prepared = prepare_run(cfg, splits=splits)
    teacher_before = {k: v.clone() for k, v in prepared.distiller.teacher.state_dict().items()}
    summary = fit(prepared)
    assert summary["epochs"] == 1
    m = json.loads(open(tmp_path / "kd" / "metrics.jsonl").readline())
    assert m["loss/kd"] > 0 and m["loss/ce"] > 0
    assert not prepared.distiller.teacher.training
    for k, v in prepared.distiller.teacher.state_dict().items():
        assert torch.equal(v, teacher_before[k]), k  # BN statistics included
    assert all(not p.requires_grad for p in prepared.distiller.teacher.parameters())


@pytest.mark.slow
def test_resume_matches_uninterrupted_run(cifar10_small, tmp_path):
    data, splits = cifar10_small
    small = data  # same data, fewer steps
    steps = TrainConfig(epochs=2, batch_size=64, progress=False, max_steps_per_epoch=8)
    full = fit(prepare_run(_cfg(small, tmp_path / "full", train=steps), splits=splits))
    first = _cfg(small, tmp_path / "cut", train=steps.replace(epochs=1))
    fit(prepare_run(first, splits=splits))
    resumed = fit(prepare_run(first.replace(train=steps), splits=splits))
    assert resumed["epochs"] == 2
    a = load_model(full["weights_last"])[0].state_dict()
    b = load_model(resumed["weights_last"])[0].state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=k)
    lines = open(tmp_path / "cut" / "metrics.jsonl").read().splitlines()
    assert len(lines) == 2


@pytest.mark.slow
def test_resume_refuses_a_different_config(cifar10_small, tmp_path):
    data, splits = cifar10_small
    cfg = _cfg(data, tmp_path / "r", train=TrainConfig(epochs=1, batch_size=64, progress=False, max_steps_per_epoch=2))
    fit(prepare_run(cfg, splits=splits))
    with pytest.raises(ConfigError, match="out_dir"):
        prepare_run(cfg.replace(optim=OptimConfig(lr=0.1)), splits=splits)
    with pytest.raises(ConfigError, match="already holds checkpoints"):
        prepare_run(cfg.replace(resume=False), splits=splits)
    assert (tmp_path / "r" / "last.pt").exists()  # nothing already written is lost


@pytest.mark.slow
def test_nan_loss_fails_with_clear_message(cifar10_small, tmp_path):
    data, splits = cifar10_small
    cfg = _cfg(
        data,
        tmp_path / "nan",
        optim=OptimConfig(lr=1e12, milestones=()),
        train=TrainConfig(epochs=1, batch_size=64, progress=False, max_steps_per_epoch=30),
    )
    with pytest.raises(NonFiniteLossError, match="non-finite loss term.*ce"):
        fit(prepare_run(cfg, splits=splits))


@pytest.mark.slow
def test_kd_without_labels_never_reads_target(teacher_run, cifar10_small):
    _, t_summary = teacher_run
    data, splits = cifar10_small
    cfg = _cfg(
        data, "unused", distiller="kd", teacher_checkpoint=t_summary["weights_best"], distill_params={"gamma": 0}
    )
    distiller = prepare_run(cfg, splits=splits).distiller
    batch = {"image": torch.randn(4, 3, 32, 32)}  # no "target" key at all
    out = distiller(batch)
    assert set(out.losses) == {"kd"}
    out.losses["kd"].backward()
    assert distiller.student.classifier_module().weight.grad is not None


def test_train_wrapper_validates_before_loading(tmp_path):
    cfg = RunConfig(
        student="resnet8",
        data=DataConfig(dataset="cifar10", root=str(tmp_path / "none")),
        out_dir=str(tmp_path / "o"),
        train=TrainConfig(epochs=1, progress=False),
    )
    from cktf.errors import DataNotFoundError

    with pytest.raises(DataNotFoundError):
        train(cfg)
    assert not (tmp_path / "o" / "last.pt").exists()


def test_compile_models_gives_the_same_losses_and_bad_backends_are_named():
    from cktf.distillers import DistillContext, build_distiller

    torch.manual_seed(0)
    ctx = DistillContext(num_classes=10, num_train_samples=64, image_size=32)
    d = build_distiller("cktf", create_model("resnet8", 10), create_model("resnet14", 10), {"nce_k": 16}, ctx)
    gen = torch.Generator().manual_seed(1)
    batch = {
        "image": torch.randn(8, 3, 32, 32, generator=gen),
        "target": torch.randint(0, 10, (8,), generator=gen),
        "index": torch.arange(8),
        "contrast_idx": torch.randint(8, 64, (8, 17), generator=gen),
    }
    batch["contrast_idx"][:, 0] = batch["index"]
    twin = copy.deepcopy(d)
    ref = twin(batch).losses
    d.compile_models("eager")  # dynamo traces the forwards; the eager backend runs them without codegen
    assert set(d._forwards) == {"student", "teacher"}
    out = d(batch).losses
    assert out.keys() == ref.keys()
    for key in ref:
        torch.testing.assert_close(out[key], ref[key])
    assert type(copy.deepcopy(d.student)) is type(d.student)  # the module itself is not wrapped
    with pytest.raises(ConfigError, match="train.compile"):
        TrainConfig(compile="no-such-backend")
