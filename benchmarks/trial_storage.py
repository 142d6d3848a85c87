"""What a study stores: bytes per finished trial and per study, in the study's folder and in Ray's working folder.

Each case runs a real study through the command line (``cktf tune FILE --quiet``, a fresh local Ray, MLflow in a
temporary sqlite file) and measures, side by side with the student's own weights:

* the study's folder (``workdir/name``): in all, and Ray's storage in it (``ray/<name>*/<trial>/``: the trials'
  checkpoints) per trial once the study has ended, and the most any one trial held while the study ran (sampled
  every 0.2 s: checkpoints kept, bytes);
* Ray's working folder: the ``/tmp/ray/session_*`` folders this study's Ray created;
* the trials' node-local working folders (``$CKTF_SCRATCH``) at the end.

Cases:

* ``quickstart``: ``studies/quickstart.yaml`` as shipped (8 CKTF trials and a 4-run confirmation on a 3k-image
  CIFAR-10 slice);
* ``cifar100``: 2 CKTF trials of resnet32x4 -> resnet8x4 with memory banks of CIFAR-100's size (N_data = 50,000: the
  whole CIFAR-10 train split, no val split, selected on train_acc), one epoch capped at ``--steps`` steps; the
  teacher is a freshly initialised checkpoint (nothing is trained but the students' few steps).

Run with any checkout's interpreter to compare versions (the script only drives the command line)::

    .venv/bin/python benchmarks/trial_storage.py --root ../shared/data
    OTHER/.venv/bin/python benchmarks/trial_storage.py --root ../shared/data --cases cifar100   # another checkout
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
MB = 1e6


def du(path: Path) -> int:
    total = 0
    if not path.exists():
        return 0
    for p in path.rglob("*"):
        try:
            if p.is_file() and not p.is_symlink():
                total += p.stat().st_size
        except OSError:
            pass
    return total


def ray_sessions() -> set[Path]:
    base = Path(tempfile.gettempdir()) / "ray"
    return {p for p in base.glob("session_2*") if p.is_dir()} if base.is_dir() else set()


def trial_dirs(study_dir: Path) -> list[Path]:
    """Ray's per-trial folders in the study's storage (the search's and the confirmation's experiments)."""
    out = []
    for exp in sorted((study_dir / "ray").glob("*")):
        if exp.is_dir():
            out += [
                t
                for t in sorted(exp.iterdir())
                if t.is_dir() and ((t / "params.json").exists() or any(t.glob("checkpoint_*")))
            ]
    return out


class Peak:
    """Samples the trials' stored checkpoints while the study runs: the most checkpoints and bytes one trial held."""

    def __init__(self, study_dir: Path, scratch: Path):
        self.study_dir, self.scratch = study_dir, scratch
        self.checkpoints = self.trial_bytes = self.scratch_bytes = 0
        self._stop = threading.Event()

    def __enter__(self) -> Peak:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            for t in trial_dirs(self.study_dir):
                self.checkpoints = max(self.checkpoints, len(list(t.glob("checkpoint_*"))))
                self.trial_bytes = max(self.trial_bytes, du(t))
            if self.scratch.is_dir():
                for w in self.scratch.glob("*/*"):
                    self.scratch_bytes = max(self.scratch_bytes, du(w))
            time.sleep(0.2)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def cifar100_sized(tmp: Path, root: Path, steps: int) -> dict:
    """The study of the ``cifar100`` case; writes its teacher checkpoint."""
    from cktf.models import create_model
    from cktf.train.checkpoint import save_model_weights

    teacher = tmp / "resnet32x4.safetensors"
    save_model_weights(teacher, create_model("resnet32x4", num_classes=10), {"arch": "resnet32x4"})
    return {
        "name": "cifar100-sized",
        "student": "resnet8x4",
        "distiller": "cktf",
        "data": {"dataset": "cifar10", "root": str(root), "val_fraction": 0.0, "test_subset": 200},
        "teacher": {"checkpoint": str(teacher)},
        "optim": {"milestones": []},
        "train": {"epochs": 1, "batch_size": 64, "max_steps_per_epoch": steps},
        "search": {
            "metric": "train_acc",
            "num_samples": 2,
            "space": {"alpha1": {"type": "uniform", "low": 0.0, "high": 1.0}},
        },
        "resources": {"cpu": 1, "gpu": 0},
        "max_concurrent": 1,
        "workdir": str(tmp / "studies"),
        "mlflow": {"tracking_uri": f"sqlite:///{tmp / 'mlflow.db'}"},
    }


def run_case(name: str, args) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix=f"cktf-storage-{name}-"))
    scratch = tmp / "scratch"
    env = {
        **os.environ,
        "CKTF_WORKDIR": str(tmp / "studies"),
        "CKTF_SCRATCH": str(scratch),
        "CKTF_TEACHER_CACHE": str(tmp / "teachers"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}",
        "RAY_AUTH_MODE": "disabled",
    }
    if name == "quickstart":
        path, study_name = ROOT / "studies" / "quickstart.yaml", "quickstart"
        extra = ["--data-root", str(args.root)]
    else:
        study = cifar100_sized(tmp, args.root, args.steps)
        path, study_name = tmp / "study.yaml", study["name"]
        path.write_text(yaml.safe_dump(study, sort_keys=False))
        extra = []
    study_dir = tmp / "studies" / study_name
    before = ray_sessions()
    t0 = time.perf_counter()
    cmd = [
        sys.executable,
        "-c",
        "import sys; from cktf.cli import main; sys.exit(main())",
        "tune",
        str(path),
        "--quiet",
    ]
    with Peak(study_dir, scratch) as peak:
        proc = subprocess.run(cmd + extra, env=env, cwd=tmp, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{name}: the study failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
    trials = trial_dirs(study_dir)
    weights = max((p.stat().st_size for p in study_dir.rglob("model_best.safetensors")), default=0)
    per_trial = [du(t) for t in trials]
    sessions = ray_sessions() - before
    return {
        "case": name,
        "wall_s": round(wall, 1),
        "trials": len(trials),
        "student_weights_bytes": weights,
        "study_folder_bytes": du(study_dir),
        "ray_storage_bytes": du(study_dir / "ray"),
        "per_finished_trial_bytes": round(sum(per_trial) / max(len(per_trial), 1)),
        "max_finished_trial_bytes": max(per_trial, default=0),
        "peak_trial_bytes_while_running": peak.trial_bytes,
        "peak_checkpoints_per_trial": peak.checkpoints,
        "peak_scratch_bytes_per_trial": peak.scratch_bytes,
        "ray_working_folder_bytes": sum(du(s) for s in sessions),
        "scratch_bytes_at_end": du(scratch),
        "tmp": str(tmp),
    }


def show(rows: list[dict]) -> None:
    for r in rows:
        w = r["student_weights_bytes"] or 1
        print(f"\n## {r['case']}: {r['trials']} trials, {r['wall_s']} s, student weights {w / MB:.2f} MB")
        print("| what | MB | x student |")
        print("| --- | ---: | ---: |")
        for key in (
            "study_folder_bytes",
            "ray_storage_bytes",
            "per_finished_trial_bytes",
            "max_finished_trial_bytes",
            "peak_trial_bytes_while_running",
            "peak_scratch_bytes_per_trial",
            "ray_working_folder_bytes",
            "scratch_bytes_at_end",
        ):
            print(f"| {key.replace('_bytes', '').replace('_', ' ')} | {r[key] / MB:.2f} | {r[key] / w:.1f} |")
        print(f"| peak checkpoints kept per trial | {r['peak_checkpoints_per_trial']} | |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", type=Path, default=Path(os.environ.get("CKTF_DATA_ROOT", "data")))
    p.add_argument("--cases", default="quickstart,cifar100")
    p.add_argument("--steps", type=int, default=3, help="steps of the cifar100 case's one epoch")
    p.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    args = p.parse_args()
    args.root = args.root.resolve()
    rows = [run_case(c, args) for c in args.cases.split(",")]
    show(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
