"""Every objective that `cktf distillers` lists honours the distiller contract on tiny CPU models.

Per objective (single methods, presets and every combination): the loss terms are finite and the
total is positive; gradients reach the student and the method's trainable heads/adapters, never the
teacher; the teacher stays in eval mode and its BN statistics do not move. Method-specific checks
(golden values, memory banks, init stages) live in test_distillers_contrastive/baselines.py.
"""

from __future__ import annotations

import json

import pytest
import torch

from cktf.cli import main
from cktf.distillers import DistillContext, build_distiller, objective, objective_names
from cktf.models import create_model

N_TRAIN, K, B = 64, 16, 8
SMALL = {"nce_k": K}  # a tiny negative count so contrastive terms run on 64 samples


def _params(name: str) -> dict:
    obj = objective(name)
    fields = obj.primary.config_cls.model_fields
    return {k: v for k, v in SMALL.items() if k in fields}


def _batch(generator: torch.Generator) -> dict:
    index = torch.randperm(N_TRAIN, generator=generator)[:B]
    others = torch.randint(0, N_TRAIN, (B, K), generator=generator)
    return {
        "image": torch.randn(B, 3, 32, 32, generator=generator),
        "target": torch.randint(0, 10, (B,), generator=generator),
        "index": index,
        "contrast_idx": torch.cat([index[:, None], others], 1),
    }


def _build(name: str):
    torch.manual_seed(0)
    student, teacher = create_model("resnet8", 10), create_model("resnet14", 10)
    ctx = DistillContext(num_classes=10, num_train_samples=N_TRAIN, image_size=32)
    return build_distiller(name, student, teacher, _params(name), ctx)


def test_listing_has_every_method_and_combination():
    names = set(objective_names())
    methods = {"kd", "fitnet", "at", "sp", "cc", "vid", "rkd", "pkt", "ab", "ft", "fsp", "nst", "crd", "cktf"}
    missing = methods - names
    if missing:
        pytest.fail(f"methods not registered: {sorted(missing)}")
    assert {f"cktf+{m}" for m in methods - {"cktf", "crd"}} <= names
    assert {"crd+kd", "cktf-paper"} <= names


@pytest.mark.parametrize("name", [n for n in objective_names() if n != "ce"])
def test_objective_contract(name):
    distiller = _build(name)
    distiller.train()
    assert not distiller.teacher.training
    bn_before = {k: v.clone() for k, v in distiller.teacher.state_dict().items()}
    opt = torch.optim.SGD(distiller.trainable_parameters(), lr=0.01, momentum=0.9)
    gen = torch.Generator().manual_seed(1)
    for _ in range(2):
        out = distiller(_batch(gen))
        assert out.losses, name
        for key, value in out.losses.items():
            assert torch.isfinite(value), (name, key)
        total = sum(out.losses.values())
        assert total > 0
        opt.zero_grad()
        total.backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in distiller.student.parameters())
        assert all(p.grad is None for p in distiller.teacher.parameters())
        opt.step()
    assert not distiller.teacher.training
    for k, v in distiller.teacher.state_dict().items():
        assert torch.equal(v, bn_before[k]), (name, k)
    student_ids = {id(p) for p in distiller.student.parameters()}
    teacher_ids = {id(p) for p in distiller.teacher.parameters()}
    trainable_ids = {id(p) for p in distiller.trainable_parameters()}
    assert student_ids <= trainable_ids and not (teacher_ids & trainable_ids)


@pytest.mark.slow
def test_contrastive_run_through_trainer(data_root, tmp_path):
    """CRD through the real loader and trainer: contrast_idx batches, banks updated, resume restores them."""
    from cktf.data import DataConfig, load_splits
    from cktf.train import OptimConfig, RunConfig, TrainConfig, fit, load_state, prepare_run

    data = DataConfig(dataset="cifar10", root=str(data_root), train_subset=600, test_subset=200)
    splits = load_splits(data)
    teacher_cfg = RunConfig(
        student="resnet8",
        data=data,
        optim=OptimConfig(milestones=()),
        out_dir=str(tmp_path / "t"),
        train=TrainConfig(epochs=1, progress=False, max_steps_per_epoch=3),
    )
    teacher = fit(prepare_run(teacher_cfg, splits=splits))
    cfg = teacher_cfg.replace(
        distiller="crd",
        distill_params={"nce_k": 32},
        teacher_checkpoint=teacher["weights_last"],
        out_dir=str(tmp_path / "crd"),
    )
    prepared = prepare_run(cfg, splits=splits)
    fit(prepared)
    state = load_state(tmp_path / "crd" / "last.pt")["distiller"]
    banks = {k: v for k, v in state.items() if k.endswith(("memory_s", "memory_t"))}
    assert banks and all(v.shape[0] == len(splits.train) for v in banks.values())
    line = json.loads(open(tmp_path / "crd" / "metrics.jsonl").readline())
    assert line["loss/crd"] > 0


@pytest.mark.slow
def test_cli_distill_with_combination(data_root, tmp_path, capsys):
    """`cktf distill --distiller cktf+kd --set theta=...` parses prefixed fields and trains."""
    common = [
        "--dataset",
        "cifar10",
        "--data-root",
        str(data_root),
        "--data-train-subset",
        "300",
        "--data-test-subset",
        "100",
        "--epochs",
        "1",
        "--max-steps-per-epoch",
        "2",
        "--no-progress",
    ]
    assert main(["train-teacher", "--model", "resnet8", "--out-dir", str(tmp_path / "t"), *common]) == 0
    capsys.readouterr()
    code = main(
        [
            "distill",
            "--model",
            "resnet8",
            "--teacher-ckpt",
            str(tmp_path / "t" / "model_last.safetensors"),
            "--distiller",
            "cktf+kd",
            "--set",
            "nce_k=16",
            "--set",
            "theta=0.5",
            "--set",
            "kd.temperature=2",
            "--out-dir",
            str(tmp_path / "s"),
            *common,
        ]
    )
    assert code == 0
    line = json.loads(open(tmp_path / "s" / "metrics.jsonl").readline())
    assert line["loss/kd"] > 0 and line["loss/cktf_final"] > 0
    code = main(
        [
            "distill",
            "--model",
            "resnet8",
            "--teacher-ckpt",
            str(tmp_path / "t" / "model_last.safetensors"),
            "--distiller",
            "cktf+kd",
            "--set",
            "fitnet.beta=1",
            "--out-dir",
            str(tmp_path / "x"),
            *common,
        ]
    )
    assert code == 2 and "distill.fitnet.beta" in capsys.readouterr().err
