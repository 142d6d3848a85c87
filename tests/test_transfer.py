"""Transfer learning (Section 3.2): unlabeled distillation never reads a label; the probe trains only its head."""

from __future__ import annotations

import pytest
import torch

from cktf.data import DataConfig, load_splits
from cktf.errors import ConfigError
from cktf.models import create_model
from cktf.train import OptimConfig, RunConfig, TrainConfig
from cktf.train.runner import fit, prepare_run
from cktf.transfer import ProbeConfig, linear_probe

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def target(data_root):
    """CIFAR-10 jpegs as a 64x64 ImageFolder target (a Tiny-ImageNet teacher's input size)."""
    cfg = DataConfig(
        dataset="imagefolder",
        root=str(data_root / "cifar10-jpeg"),
        image_size=64,
        train_subset=400,
        test_subset=200,
        val_fraction=0.2,
    )
    return cfg, load_splits(cfg, progress=False)


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.slow
@pytest.mark.parametrize("augment", [True, False])
def test_probe_trains_only_the_new_linear_layer(target, augment):
    _, splits = target
    backbone = create_model("vgg8", num_classes=200)
    before = _state(backbone)
    model, summary = linear_probe(backbone, splits, ProbeConfig(epochs=3, augment=augment, batch_size=64), CPU)
    after = _state(model.backbone)
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before), "the backbone changed while probing"
    assert model.head.out_features == 10 and model.head.in_features == backbone.num_features
    assert len(summary["history"]) == 3 and all("probe_test_acc" in h for h in summary["history"])
    assert summary["test_acc"] == summary["history"][summary["best_epoch"] - 1]["probe_test_acc"]
    # the probe learned something: far from a frozen random head on a 10-way problem is not required,
    # but its loss must fall
    assert summary["history"][-1]["probe_loss"] < summary["history"][0]["probe_loss"]


@pytest.mark.slow
def test_probe_official_bn_drift_is_opt_in(target):
    """bn_mode=train is the official script's behaviour: weights frozen, BN running stats drift."""
    _, splits = target
    backbone = create_model("vgg8", num_classes=200)
    before = _state(backbone)
    model, _ = linear_probe(backbone, splits, ProbeConfig(epochs=1, bn_mode="train"), CPU)
    after = _state(model.backbone)
    weights = [k for k in before if "running" not in k and "num_batches" not in k]
    assert all(torch.equal(before[k], after[k]) for k in weights)
    assert any(not torch.equal(before[k], after[k]) for k in before if "running_mean" in k)
    with pytest.raises(ConfigError, match="probe.augment"):
        ProbeConfig(bn_mode="train", augment=False)


class NoLabels(dict):
    """A batch that fails the test if anything reads its labels."""

    def __getitem__(self, key):
        if key == "target":
            raise AssertionError("a label was read during unlabeled distillation")
        return super().__getitem__(key)

    def get(self, key, default=None):
        if key == "target":
            raise AssertionError("a label was read during unlabeled distillation")
        return super().get(key, default)

    def __contains__(self, key):
        return key != "target" and super().__contains__(key)


@pytest.mark.slow
@pytest.mark.parametrize("distiller", ["cktf", "crd", "kd"])
def test_unlabeled_distillation_never_reads_a_label(target, tmp_path, distiller):
    cfg, _ = target
    data = cfg.replace(drop_labels=True)
    splits = load_splits(data, progress=False)
    assert (splits.train.targets == -1).all() and splits.val is None
    teacher = create_model("vgg8", num_classes=200)  # a source-domain teacher (200 Tiny-ImageNet classes)
    params = {"gamma": 0.0, "nce_k": 64} if distiller != "kd" else {"gamma": 0.0, "alpha": 1.0}
    run = RunConfig(
        student="vgg8",
        distiller=distiller,
        distill_params=params,
        data=data,
        optim=OptimConfig(milestones=()),
        train=TrainConfig(epochs=1, batch_size=32, max_steps_per_epoch=3, eval_test=False, progress=False),
        out_dir=str(tmp_path / distiller),
    )
    p = prepare_run(run, splits=splits, teacher=teacher, teacher_arch="vgg8")
    assert p.distiller.student.num_classes == 200  # the student's head mirrors the teacher's
    from cktf.train.runner import _loaders

    train_loader, val_loader, _ = _loaders(p)
    assert val_loader is None
    batch = NoLabels(next(iter(train_loader)))
    out = p.distiller(batch)
    assert all(torch.isfinite(v) for v in out.losses.values()) and "ce" not in out.losses
    if distiller != "kd":  # uniform negatives over the other images: never the anchor itself
        idx, neg = batch["index"], batch["contrast_idx"][:, 1:]
        assert not (neg == idx[:, None]).any()
    summary = fit(p)
    assert summary["epochs"] == 1


@pytest.mark.slow
def test_labels_are_required_when_cross_entropy_is_on(target, tmp_path):
    cfg, _ = target
    data = cfg.replace(drop_labels=True)
    run = RunConfig(
        student="vgg8",
        distiller="kd",
        distill_params={"gamma": 0.1},
        data=data,
        train=TrainConfig(epochs=1, progress=False, eval_test=False),
        out_dir=str(tmp_path / "kd"),
    )
    with pytest.raises(ConfigError, match="distill.gamma"):
        prepare_run(run, teacher=create_model("vgg8", num_classes=200), teacher_arch="vgg8")


@pytest.mark.slow
def test_probe_cli_writes_the_curve(target, tmp_path):
    from cktf.cli import main
    from cktf.train.checkpoint import save_model_weights

    cfg, _ = target
    weights = tmp_path / "w.safetensors"
    save_model_weights(weights, create_model("vgg8", num_classes=200), {"arch": "vgg8"})
    out = tmp_path / "probe.json"
    args = ["probe", "--weights", str(weights), "--dataset", "imagefolder", "--data-root", cfg.root]
    args += ["--data-image-size", "64", "--data-train-subset", "400", "--data-test-subset", "200"]
    assert main([*args, "--epochs", "2", "--no-augment", "--milestones", "--out", str(out), "--quiet"]) == 0
    import json

    summary = json.loads(out.read_text())
    assert [h["probe_epoch"] for h in summary["history"]] == [1, 2] and summary["test_acc"] is not None
