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


# ----------------------------------------------------------------------------- a command line that behaves


def _cktf(*args: str, **kw) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("cktf")
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=300, **kw)


def test_version_and_help_written_for_users():
    from cktf import __version__

    done = _cktf("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"cktf {__version__}"
    top = _cktf("--help").stdout
    assert "Knowledge distillation" in top and "``" not in top and "Start with: cktf tune" in top


@pytest.mark.parametrize("command", ["schema", "models", "distillers --fields"])
def test_output_piped_into_head_ends_quietly(command):
    exe = Path(sys.executable).with_name("cktf")
    line = f"set -o pipefail; {exe} {command} | head -1"
    done = subprocess.run(line, shell=True, executable="/bin/bash", capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip(), done.stderr
    assert "BrokenPipeError" not in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_a_dry_run_checks_and_prints_the_plan_without_ray_or_files(tmp_path, data_root):
    quick = Path(__file__).resolve().parents[1] / "studies" / "quickstart.yaml"
    done = _cktf(
        "tune", str(quick), "--dry-run", "--data-root", str(data_root), "--set", f"workdir={tmp_path / 'studies'}"
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "8 trials of cktf" in out and "up to 4 epochs" in out and "score = val_acc at its best epoch" in out
    assert "nce_k" in out and "(official 16384: outside the space)" in out  # the defaults as they run, said so
    assert "confirmation: the top 1 + the defaults over 2 new seeds" in out and "per trial 1 CPU" in out
    assert str(tmp_path / "studies" / "quickstart") in out and "GPU-hours" in out and "ESTIMATE" in out
    assert not (tmp_path / "studies").exists()  # nothing written


@pytest.mark.parametrize(
    ("sets", "needle"),
    [
        (["search.space.tua.low=0.1"], "search.space.tua: 'tua' is not a field of cktf"),  # names tau
        (["studnet=resnet8"], "did you mean student?"),
        (["student=resnet88"], "did you mean resnet8?"),
        (["distiller=ckft"], "did you mean cktf?"),
        (["data.dataset=cifar11"], "did you mean cifar10?"),
    ],
)
def test_every_unknown_name_says_what_was_probably_meant(tmp_path, capsys, sets, needle):
    quick = Path(__file__).resolve().parents[1] / "studies" / "quickstart.yaml"
    argv = ["tune", str(quick), "--dry-run", "--set", f"workdir={tmp_path}"]
    for s in sets:
        argv += ["--set", s]
    code, _, err = run_cli(capsys, *argv)
    assert code == 2 and needle in err, err
    if sets[0].startswith("search.space.tua"):
        assert "did you mean tau?" in err


def test_a_searched_value_that_cannot_work_shows_the_set_that_fixes_it(tmp_path, data_root, capsys):
    quick = Path(__file__).resolve().parents[1] / "studies" / "quickstart.yaml"
    argv = ["tune", str(quick), "--dry-run", "--data-root", str(data_root), "--set", "data.train_subset=600"]
    code, _, err = run_cli(capsys, *argv, "--set", f"workdir={tmp_path}")
    assert code == 2 and err.startswith("cktf: error: search.space.nce_k:"), err
    assert "--set 'search.space.nce_k.choices=[256]'" in err  # the choices a 540-image slice allows
