"""benchmarks/device_check.py: torch alone, no install, and its CPU smoke run end to end (what CI runs)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "device_check.py"
FORBIDDEN = ("ray", "mlflow", "optuna")

# runs the script with Ray, MLflow and Optuna made unimportable (as on a bare GPU machine)
_BLOCKED = (
    "import runpy, sys\n"
    f"for m in {FORBIDDEN!r}: sys.modules[m] = None\n"
    "sys.argv = sys.argv[1:]\n"
    "runpy.run_path(sys.argv[0], run_name='__main__')\n"
)


@pytest.fixture(scope="module")
def device_data(data_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("device")
    subprocess.run(
        [sys.executable, str(SCRIPT), "prepare", "--cifar10", str(data_root), "--out", str(out), "--no-vendor"],
        check=True,
        cwd=REPO,
    )
    return out


def test_the_slice_is_small_enough_to_travel_and_stratified(device_data):
    path = device_data / "cifar10_slice.npz"
    assert path.stat().st_size <= 30 * 10**6
    z = np.load(path)
    assert z["train_x"].shape == (8000, 32, 32, 3) and z["train_x"].dtype == np.uint8
    assert np.bincount(z["train_y"]).tolist() == [800] * 10 and np.bincount(z["test_y"]).tolist() == [100] * 10


def test_importing_the_script_imports_no_ray_mlflow_or_optuna():
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('dc', {str(SCRIPT)!r})\n"
        "mod = importlib.util.module_from_spec(spec); sys.modules['dc'] = mod; spec.loader.exec_module(mod)\n"
        "import cktf.data, cktf.train, cktf.distillers, cktf.models, cktf.train.writer\n"
        f"print(sorted(m for m in {FORBIDDEN!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_cpu_smoke_runs_every_part_without_ray_mlflow_optuna_or_an_install(device_data, tmp_path):
    """The smoke run, from a copy of the repository on PYTHONPATH (not the installed package), with Ray, MLflow and
    Optuna unimportable: every part produces its figures and the JSON and markdown land in --out."""
    copy = tmp_path / "repo"
    shutil.copytree(REPO / "cktf", copy / "cktf", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "benchmarks", copy / "benchmarks", ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(copy)}
    cmd = [sys.executable, "-c", _BLOCKED, str(copy / "benchmarks" / "device_check.py"), "run"]
    cmd += ["--data", str(device_data), "--out", str(out), "--cpu-smoke"]
    done = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    res = json.loads((out / "device_check.json").read_text())
    assert (out / "device_check.md").read_text().startswith("# device check")
    assert res["env"]["forbidden_imported"] == [] and res["smoke"] is True
    assert Path(res["env"]["project"]) == copy / "cktf"  # ran from the copy, no install involved
    cells = res["throughput"]
    assert {(c["method"], c["mode"]) for c in cells} == {
        (m, mode) for m in ("kd", "crd", "cktf") for mode in ("fp32", "bf16", "bf16+channels_last",
                                                               "bf16+channels_last+compile")
    }  # fmt: skip
    assert all(c.get("images_per_s", 0) > 0 for c in cells), [c for c in cells if "images_per_s" not in c]
    train = res["train"]
    assert train["student"]["epochs"] == 2 and 0 <= train["student"]["test_acc"] <= 100
    assert len(train["checkpoint_snapshot_s"]) == 2 and train["checkpoint_share_of_epoch"] >= 0
    labels = [r["checkpoint"] for r in res["checkpoint"]]
    assert labels == ["before: inline write", "after: background write", "after: background write, bf16 banks"]
    mib = [r["mib"] for r in res["checkpoint"]]
    assert mib[2] < mib[1] == mib[0]
    assert res["loader"][1]["vs_official"] > 0
    assert [r["processes"] for r in res["concurrency"]] == [1, 2]
    assert all(r.get("aggregate_images_per_s", 0) > 0 for r in res["concurrency"])
    dp = {r["workers"]: r for r in res["data_parallel"]}  # gloo here: the same cell runs NCCL on two GPUs
    assert dp[1]["images_per_s"] > 0 and dp[1]["bytes_per_step"] == 0  # one worker exchanges nothing
    assert dp[2]["images_per_s"] > 0 and 0 < dp[2]["memory_bytes_per_step"] < dp[2]["bytes_per_step"]
