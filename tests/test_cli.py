"""The command line: listings, and bad input rejected with exit code 2 before any training starts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cktf.cli import main
from cktf.distillers import LOSS_TERMS
from cktf.models import MODELS


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_models_lists_the_whole_zoo(capsys):
    code, out, _ = run_cli(capsys, "models")
    assert code == 0
    listed = {line.split()[0] for line in out.splitlines()[1:]}
    expected = {
        "resnet8",
        "resnet14",
        "resnet20",
        "resnet32",
        "resnet44",
        "resnet56",
        "resnet110",
        "resnet8x4",
        "resnet32x4",
        "wrn_16_1",
        "wrn_16_2",
        "wrn_40_1",
        "wrn_40_2",
        "vgg8",
        "vgg11",
        "vgg13",
        "vgg16",
        "vgg19",
        "resnet10",
        "resnet18",
        "resnet34",
        "resnet50",
        "mobilenetv2",
        "shufflev1",
        "shufflev2",
    }
    assert expected <= listed
    assert listed == set(MODELS.names())


def test_distillers_lists_registry(capsys):
    code, out, _ = run_cli(capsys, "distillers", "--fields")
    assert code == 0
    for name in LOSS_TERMS.names():
        assert name in out
    assert "temperature = 4.0" in out


def test_console_script_help():
    exe = Path(sys.executable).with_name("cktf")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "cktf.cli"]
    for sub in ([], ["distill"], ["train-teacher"], ["data", "prepare"], ["models"], ["quickstart"]):
        res = subprocess.run(cmd + sub + ["--help"], capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr
        assert "usage: cktf" in res.stdout


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["train-teacher", "--model", "resnet_nope"], "unknown model 'resnet_nope'"),
        (["train-teacher", "--model", "resnet8", "--dataset", "imagenet_nope"], "unknown dataset 'imagenet_nope'"),
        (
            ["distill", "--model", "resnet8", "--teacher-ckpt", "x.safetensors", "--distiller", "nope"],
            "unknown distiller 'nope'",
        ),
        (["train-teacher", "--model", "resnet20", "--dataset", "tiny_imagenet"], "expects 32x32 inputs, got 64x64"),
        (["train-teacher", "--model", "resnet8", "--epochs", "0"], "train.epochs"),
        (["train-teacher", "--model", "resnet8", "--lr", "-1"], "optim.lr"),
        (["train-teacher", "--model", "resnet8", "--set", "gamma=-1"], "distill.gamma"),
        (["distill", "--model", "resnet8", "--teacher-ckpt", "missing.safetensors"], "no such file"),
        (["distill", "--model", "resnet8", "--teacher-ckpt", "t.safetensors", "--set", "nope=1"], "distill.nope"),
    ],
)
def test_bad_input_exits_2_before_training(capsys, tmp_path, monkeypatch, argv, needle):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "t.safetensors").write_bytes(b"")  # exists, so the distiller field is checked first
    code, _, err = run_cli(capsys, *argv, "--data-root", str(tmp_path / "data"), "--out-dir", str(tmp_path / "run"))
    assert code == 2
    assert needle in err
    assert err.count("\n") == 1  # one line, no traceback
    assert not (tmp_path / "run").exists()


def test_missing_data_root_names_path_and_fix(capsys, tmp_path):
    root = tmp_path / "nowhere"
    code, _, err = run_cli(
        capsys,
        "train-teacher",
        "--model",
        "resnet8",
        "--dataset",
        "cifar100",
        "--data-root",
        str(root),
        "--out-dir",
        str(tmp_path / "run"),
    )
    assert code == 2
    assert str(root) in err
    assert "cktf data prepare" in err
    assert not (tmp_path / "run" / "last.pt").exists()


def test_data_prepare_reports_split_sizes(capsys, data_root, tmp_path):
    code, out, _ = run_cli(capsys, "data", "prepare", "cifar100", "--root", str(data_root / "cifar-100-python-subset"))
    assert code == 0
    assert "train: 1117 images" in out and "test: 916 images" in out
