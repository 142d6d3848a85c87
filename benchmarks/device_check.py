"""One prepared check of the GPU path that needs torch alone (BENCHMARKS.md section 5).

It imports torch and the project, never Ray, MLflow or Optuna, installs nothing and runs from the repository with
``PYTHONPATH`` set, so it works on a bare GPU machine (torch, torchvision, numpy) in a few minutes. Two steps:

    # here, with the data and a package index: a CIFAR-10 slice (<= 30 MB of uint8) and the pure-Python
    # dependencies the project needs beyond torch (pydantic and its parts, as wheels for the GPU's Python)
    .venv/bin/python benchmarks/device_check.py prepare --cifar10 DATA_ROOT --out .device

    # on the GPU machine (the .device folder travels with the repository)
    PYTHONPATH=. python benchmarks/device_check.py run --data .device --out OUT

    # the same on the CPU at toy sizes, in about a minute (CI)
    PYTHONPATH=. python benchmarks/device_check.py run --data .device --out OUT --cpu-smoke

``run`` writes ``device_check.json`` and ``device_check.md`` into ``--out``:

* **env**: GPU, memory, torch, CUDA, cuDNN, Python, CPU count;
* **throughput**: training-step images/s (the whole step: resident batch gather, augmentation, negatives, forward,
  backward, SGD) of KD, CRD and CKTF on resnet32x4 -> resnet8x4 and resnet56 -> resnet20, in fp32, bf16 autocast,
  bf16 + channels_last and bf16 + channels_last + torch.compile; plus the host-to-device copies per step
  (CUDA profiler);
* **concurrency**: 1, 2 and 4 processes training CKTF on one GPU at once, each capping its allocator at 1/k
  (``train.gpu_memory_share``), aggregate images/s against one;
* **train**: a teacher (resnet56) and a 2-epoch CKTF student (resnet20) trained with the project's runner on the
  CIFAR-10 slice, their test accuracy, and what each epoch's checkpoint cost the training thread;
* **checkpoint**: a full-size CKTF checkpoint (ten 50,000 x 128 banks) written inline against in the background
  (and with bf16 banks), as a share of a training step and of a 782-step epoch;
* **loader**: one epoch of the official-style loader (PIL transforms plus per-sample ``np.random.choice``
  negatives, through a DataLoader) against ours, on the slice;
* **data_parallel**: one CKTF run (resnet32x4 -> resnet8x4, global batch 64, ``sync_bn``) at 1 worker and, on a
  machine with two GPUs, 2 workers (DDP over NCCL, one GPU each; gloo on the CPU), images/s and the bytes the workers
  exchange per step (``benchmarks/distributed_step.py``, BENCHMARKS.md section 8).

Every part runs under one time budget (``--budget-s``, 390 s by default); a cell that would start after it is
recorded as skipped, never silently dropped.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

#: what this script must never import (tests/test_device_check.py checks it)
FORBIDDEN = ("ray", "mlflow", "optuna")
#: the slice written by ``prepare`` (9,000 images: 27.6 MB of uint8)
SLICE = "cifar10_slice.npz"
#: pure-Python dependencies of the project beyond torch, vendored by ``prepare`` for a bare GPU machine
VENDORED = ("pydantic", "pydantic-core", "annotated-types", "typing-extensions", "typing-inspection")
PAIRS = (("resnet32x4", "resnet8x4"), ("resnet56", "resnet20"))
METHODS = ("kd", "crd", "cktf")
MODES = ("fp32", "bf16", "bf16+channels_last", "bf16+channels_last+compile")


@dataclass
class Sizes:
    """How big each part runs: the paper's sizes, or toy ones for ``--cpu-smoke``."""

    batch: int = 64
    n_data: int = 50_000
    nce_k: int = 16_384
    pairs: tuple = PAIRS
    steps: int = 20
    min_seconds: float = 1.5
    concurrency: tuple = (1, 2, 4)
    concurrency_seconds: float = 20.0
    train_images: int = 0  # 0 = the whole slice
    teacher_epochs: int = 15
    student_epochs: int = 2
    loader_workers: int = min(8, os.cpu_count() or 1)  # the official scripts use 8
    compile_backend: str = "inductor"
    checkpoint_steps: int = 10


SMOKE = Sizes(
    batch=16,
    n_data=2048,
    nce_k=256,
    pairs=(("resnet20", "resnet8"),),
    steps=2,
    min_seconds=0.0,
    concurrency=(1, 2),
    concurrency_seconds=3.0,
    train_images=640,
    teacher_epochs=1,
    student_epochs=2,
    loader_workers=0,
    compile_backend="eager",  # dynamo tracing without code generation: the same code path, quickly
    checkpoint_steps=2,
)


@dataclass
class Budget:
    """One deadline for the whole check."""

    seconds: float
    start: float = field(default_factory=time.perf_counter)

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.start)


def use_vendored(data: Path) -> bool:
    """Put ``data/site`` (the wheels ``prepare`` unpacked) on ``sys.path`` when pydantic is not installed."""
    site = data / "site"
    if importlib.util.find_spec("pydantic") is None and site.is_dir():
        sys.path.insert(0, str(site))
        return True
    return False


# ----------------------------------------------------------------------------- prepare


def prepare(cifar10_root: Path, out: Path, train: int, test: int, vendor: bool) -> dict[str, Any]:
    """Write the class-stratified CIFAR-10 slice and (``vendor``) the dependency wheels into ``out``."""
    from cktf.data import DATASETS

    out.mkdir(parents=True, exist_ok=True)
    spec = DATASETS.get("cifar10")
    arrays = {}
    for split, n in (("train", train), ("test", test)):
        ds = spec.load(cifar10_root, split)
        rng = np.random.default_rng(0)
        per_class = n // 10
        rows = np.concatenate([rng.permutation(np.flatnonzero(ds.targets == c))[:per_class] for c in range(10)])
        rows = rng.permutation(rows)
        arrays[f"{split}_x"] = np.ascontiguousarray(ds.images[rows])
        arrays[f"{split}_y"] = ds.targets[rows].astype(np.int64)
        classes = ds.classes
    np.savez(out / SLICE, classes=np.array(classes), **arrays)
    info = {"slice": str(out / SLICE), "bytes": (out / SLICE).stat().st_size}
    if vendor:
        info["vendored"] = vendor_wheels(out / "site")
    return info


def vendor_wheels(site: Path, python: str = "3.12") -> list[str]:
    """Download the pydantic wheels matching this environment's versions for the GPU machine's Python and unpack
    them into ``site`` (a wheel is a zip of importable files; nothing is installed)."""
    from importlib.metadata import version

    pins = [f"{name}=={version(name)}" for name in VENDORED]
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:", "-d", tmp]
        cmd += ["--python-version", python, "--implementation", "cp"]
        cmd += ["--platform", "manylinux2014_x86_64", "--platform", "manylinux_2_17_x86_64", *pins]
        subprocess.run(cmd, check=True)
        site.mkdir(parents=True, exist_ok=True)
        names = sorted(os.listdir(tmp))
        for name in names:
            with zipfile.ZipFile(Path(tmp) / name) as z:
                z.extractall(site)
    return names


# ----------------------------------------------------------------------------- parts


def env(device: torch.device) -> dict[str, Any]:
    out: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "device": str(device),
        "forbidden_imported": sorted(m for m in FORBIDDEN if sys.modules.get(m) is not None),
        "project": str(Path(importlib.import_module("cktf").__file__).parent),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        out.update(
            gpu=props.name,
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
            capability=f"{props.major}.{props.minor}",
        )
    return out


def _synthetic_split(n: int, seed: int = 0):
    """A CIFAR-100-shaped split of ``n`` random images (throughput does not depend on pixel values)."""
    from cktf.data import ArrayDataset

    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    return ArrayDataset(images, np.arange(n, dtype=np.int64) % 100, [str(c) for c in range(100)])


def _params(method: str, sizes: Sizes) -> dict[str, Any]:
    return {"nce_k": sizes.nce_k} if method in ("crd", "cktf") else {}


def _build(pair, method: str, mode: str, sizes: Sizes, device: torch.device, n_data: int | None = None):
    """A distiller, its optimizer and a device-resident train loader over a synthetic split, as a run builds them."""
    from cktf.data import DATASETS, BatchLoader, ContrastConfig
    from cktf.distillers import DistillContext, build_distiller
    from cktf.models import create_model
    from cktf.train import OptimConfig
    from cktf.train.optim import build_sgd

    n = n_data or sizes.n_data
    torch.manual_seed(0)
    teacher, student = (create_model(name, num_classes=100) for name in pair)
    ctx = DistillContext(num_classes=100, num_train_samples=n, image_size=32)
    distiller = build_distiller(method, student, teacher, _params(method, sizes), ctx)
    channels_last = "channels_last" in mode
    distiller.to(device=device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    if "compile" in mode:
        distiller.compile_models(sizes.compile_backend)
    k = distiller.contrast_negatives()
    contrast = ContrastConfig(k=k) if k is not None else None
    loader = BatchLoader(
        _synthetic_split(n), DATASETS.get("cifar100"), sizes.batch, True, device, contrast=contrast,
        drop_last=True, channels_last=channels_last,
    )  # fmt: skip
    optimizer = build_sgd(distiller.trainable_parameters(), OptimConfig())
    return distiller, optimizer, loader


def _batches(loader):
    while True:
        yield from loader


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rate(distiller, optimizer, loader, device, bf16: bool, steps: int, min_seconds: float, warmup: int = 3):
    """images/s of whole training steps, after ``warmup`` steps (compilation happens there)."""
    from cktf.train.engine import train_step

    distiller.train()
    it = _batches(loader)
    for _ in range(warmup):
        train_step(distiller, optimizer, next(it), device, bf16)
    _sync(device)
    n, t0 = 0, time.perf_counter()
    while True:
        batch = next(it)
        train_step(distiller, optimizer, batch, device, bf16)
        n += 1
        if n >= steps and time.perf_counter() - t0 >= min_seconds:
            break
    _sync(device)
    elapsed = time.perf_counter() - t0
    return n * loader.batch_size / elapsed, elapsed / n


def h2d_per_step(distiller, optimizer, loader, device, steps: int = 10) -> dict[str, Any]:
    """Host-to-device copies per training step, counted by the CUDA profiler (a resident split needs none)."""
    from torch.profiler import ProfilerActivity, profile

    from cktf.train.engine import train_step

    if device.type != "cuda":
        return {"h2d_copies_per_step": None, "note": "CUDA only"}
    it = _batches(loader)
    for _ in range(3):
        train_step(distiller, optimizer, next(it), device, True)
    _sync(device)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            train_step(distiller, optimizer, next(it), device, True)
        _sync(device)
    names = [e.name for e in prof.events() if "HtoD" in e.name or "Memcpy HtoD" in e.name]
    return {"h2d_copies_per_step": len(names) / steps, "h2d_kinds": sorted(set(names))[:5]}


def throughput(sizes: Sizes, device: torch.device, budget: Budget) -> list[dict[str, Any]]:
    rows = []
    for mode in MODES:  # compile last: it is the slowest to start
        for pair in sizes.pairs:
            for method in METHODS:
                cell = {"pair": " -> ".join(pair), "method": method, "mode": mode}
                if budget.left() < (60 if "compile" in mode and device.type == "cuda" else 10):
                    rows.append({**cell, "skipped": "time budget"})
                    continue
                try:
                    distiller, opt, loader = _build(pair, method, mode, sizes, device)
                    rate, step_s = _rate(distiller, opt, loader, device, "bf16" in mode, sizes.steps, sizes.min_seconds)
                    cell.update(images_per_s=round(rate, 1), step_ms=round(1e3 * step_s, 2))
                    if method == "cktf" and mode == "bf16+channels_last" and pair == sizes.pairs[0]:
                        cell.update(h2d_per_step(distiller, opt, loader, device))
                except Exception as exc:  # a mode that fails here (e.g. compile) is a finding, not a crash
                    cell["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
                rows.append(cell)
                print(json.dumps(cell), flush=True)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    return rows


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """One of k concurrent trial processes: cap the allocator at ``share``, warm up, wait for the common start,
    train for ``seconds``, report images."""
    from cktf.train.engine import train_step
    from cktf.train.runner import cap_gpu_memory

    device = torch.device(spec["device"])
    sizes = Sizes(**spec["sizes"])
    torch.set_num_threads(max(1, spec.get("threads", 1)))
    capped = cap_gpu_memory(spec["share"], device)
    distiller, opt, loader = _build(tuple(spec["pair"]), "cktf", spec["mode"], sizes, device)
    bf16 = "bf16" in spec["mode"]
    it = _batches(loader)
    for _ in range(3):
        train_step(distiller, opt, next(it), device, bf16)
    _sync(device)
    while time.time() < spec["start_at"]:
        time.sleep(0.01)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < spec["seconds"]:
        train_step(distiller, opt, next(it), device, bf16)
        n += 1
    _sync(device)
    elapsed = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
    return {"images": n * sizes.batch, "seconds": elapsed, "capped": capped, "peak_bytes": peak}


def concurrency(sizes: Sizes, device: torch.device, budget: Budget, data: Path) -> list[dict[str, Any]]:
    rows = []
    pair = sizes.pairs[0]
    mode = "bf16+channels_last"
    base = None
    for k in sizes.concurrency:
        need = sizes.concurrency_seconds + 45
        if budget.left() < need:
            rows.append({"processes": k, "skipped": "time budget"})
            continue
        start_at = time.time() + (30 if device.type == "cuda" else 8 + 4 * k)
        spec = {
            "device": str(device),
            "pair": list(pair),
            "mode": mode,
            "share": 1.0 / k,
            "seconds": sizes.concurrency_seconds,
            "start_at": start_at,
            "sizes": {f: getattr(sizes, f) for f in ("batch", "n_data", "nce_k")},
            "threads": 1 if device.type == "cpu" else 2,
            "data": str(data),
        }
        procs = [
            subprocess.Popen(
                [sys.executable, __file__, "worker", json.dumps(spec)], stdout=subprocess.PIPE, text=True, env=_env()
            )
            for _ in range(k)
        ]
        results, errors = [], []
        for p in procs:
            out, _ = p.communicate(timeout=need + 120)
            lines = [ln for ln in out.splitlines() if ln.startswith("{")]
            if p.returncode == 0 and lines:
                results.append(json.loads(lines[-1]))
            else:
                errors.append(f"exit {p.returncode}")
        row: dict[str, Any] = {"processes": k, "share": round(1 / k, 3), "pair": " -> ".join(pair), "mode": mode}
        if errors:
            row["error"] = ", ".join(errors)
        if results:
            agg = sum(r["images"] / r["seconds"] for r in results)
            base = agg if k == 1 else base
            row.update(
                aggregate_images_per_s=round(agg, 1),
                vs_one=round(agg / base, 2) if base else None,
                capped=all(r["capped"] for r in results),
                peak_gib=round(max(r["peak_bytes"] for r in results) / 2**30, 2),
            )
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def _env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), e.get("PYTHONPATH", "")) if p)
    return e


def _slice_splits(data: Path, sizes: Sizes):
    from cktf.data import DATASETS, ArrayDataset, Splits

    z = np.load(data / SLICE)
    classes = [str(c) for c in z["classes"]]
    train = ArrayDataset(z["train_x"], z["train_y"], classes)
    test = ArrayDataset(z["test_x"], z["test_y"], classes)
    if sizes.train_images:
        train = train.subset(np.arange(sizes.train_images))
        test = test.subset(np.arange(min(len(test), sizes.train_images // 4)))
    return Splits(DATASETS.get("cifar10"), train, None, test, False)


def train_run(data: Path, sizes: Sizes, device: torch.device, budget: Budget, out: Path) -> dict[str, Any]:
    """Teacher then a 2-epoch CKTF student on the slice, through the project's runner (``prepare_run``/``fit``)."""
    from cktf.data import DataConfig
    from cktf.train import OptimConfig, RunConfig, TrainConfig, fit, prepare_run

    if budget.left() < 60:
        return {"skipped": "time budget"}
    splits = _slice_splits(data, sizes)
    dev = "cuda" if device.type == "cuda" else "cpu"
    train = TrainConfig(epochs=1, batch_size=64, progress=False, device=dev, bf16=dev == "cuda", channels_last=True)
    data_cfg = DataConfig(dataset="cifar10", root=str(data), val_fraction=0.0)
    teacher_cfg = RunConfig(
        student="resnet56",
        distiller="ce",
        data=data_cfg,
        optim=OptimConfig(lr=0.05, milestones=(int(0.7 * sizes.teacher_epochs),)),
        train=train.replace(epochs=sizes.teacher_epochs),
        out_dir=str(out / "teacher"),
    )
    t0 = time.perf_counter()
    teacher = fit(prepare_run(teacher_cfg, splits=splits))
    teacher_s = time.perf_counter() - t0
    pool = len(splits.train) - int(np.bincount(splits.train.targets).max())  # the smallest other-class pool
    k = min(4096, pool)
    student_cfg = RunConfig(
        student="resnet20",
        distiller="cktf",
        distill_params={"nce_k": k},
        teacher_checkpoint=teacher["weights_last"],
        data=data_cfg,
        optim=OptimConfig(lr=0.05, milestones=()),
        train=train.replace(epochs=sizes.student_epochs),
        out_dir=str(out / "student"),
    )
    student = fit(prepare_run(student_cfg, splits=splits))
    lines = [json.loads(x) for x in open(out / "student" / "metrics.jsonl")]
    epoch_s = [m["epoch_time_s"] for m in lines]
    snap = [m["checkpoint_snapshot_s"] for m in lines]
    wait = [m["checkpoint_wait_s"] for m in lines]
    return {
        "train_images": len(splits.train),
        "test_images": len(splits.test),
        "teacher": {"arch": "resnet56", "epochs": sizes.teacher_epochs, "test_acc": teacher["test_acc_last"],
                    "seconds": round(teacher_s, 1)},
        "student": {"arch": "resnet20", "method": "cktf", "nce_k": k, "epochs": sizes.student_epochs,
                    "test_acc": student["test_acc_last"], "epoch_s": [round(x, 2) for x in epoch_s]},
        "checkpoint_snapshot_s": [round(x, 4) for x in snap],
        "checkpoint_wait_s": [round(x, 4) for x in wait],
        "checkpoint_share_of_epoch": round(max((s + w) / e for s, w, e in zip(snap, wait, epoch_s)), 4),
    }  # fmt: skip


def checkpoint_cost(sizes: Sizes, device: torch.device, budget: Budget) -> list[dict[str, Any]]:
    """A full-size CKTF checkpoint (ten ``n_data x 128`` banks) inline against in the background, and with bf16
    banks: what it costs the training thread, as a share of a step and of an epoch (``n_data / batch`` steps)."""
    from cktf.train.engine import train_step
    from cktf.train.writer import CheckpointWriter

    if budget.left() < 45:
        return [{"skipped": "time budget"}]
    pair = sizes.pairs[0]
    mode = "bf16+channels_last" if device.type == "cuda" else "fp32"
    bf16 = "bf16" in mode
    distiller, opt, loader = _build(pair, "cktf", mode, sizes, device)
    it = _batches(loader)

    def steps(n: int) -> float:
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(n):
            train_step(distiller, opt, next(it), device, bf16)
        _sync(device)
        return time.perf_counter() - t0

    steps(3)
    n = sizes.checkpoint_steps
    epoch_steps = sizes.n_data // sizes.batch
    rows = []
    reps = 3
    with tempfile.TemporaryDirectory() as tmp:
        for label, background, compact in (
            ("before: inline write", False, False),
            ("after: background write", True, False),
            ("after: background write, bf16 banks", True, True),
        ):
            writer = CheckpointWriter(tmp, background=background)
            state = {"distiller": distiller.checkpoint_state(compact=compact), "optimizer": opt.state_dict()}
            meta = {"arch": pair[1], "num_classes": 100}
            writer.snapshot(state)  # the first snapshot allocates (pins) the host buffers, reused every epoch after
            writer.wait()
            thread, slowed, plain_s, left = [], [], [], []
            for _ in range(reps):  # interleaved with plain steps: the machine's drift hits both alike
                plain = steps(n)
                t0 = time.perf_counter()
                snap = writer.snapshot(state)
                writer.write(snap, {"epoch": 0, "history": []}, [("model_last.safetensors", meta)], {"epoch": 0})
                thread.append(time.perf_counter() - t0)  # inline: the whole write; background: the snapshot
                overlapped = steps(n)  # training while the write runs beside it
                t1 = time.perf_counter()
                writer.wait()
                left.append(time.perf_counter() - t1)
                plain_s.append(plain)
                slowed.append(overlapped - plain)
            med = lambda xs: float(np.median(xs))  # noqa: E731
            step_s = med(plain_s) / n
            # what the training thread loses: the snapshot (inline: the whole write) plus the steps slowed while
            # the write runs beside them (negative = noise, shown as measured)
            cost = med(thread) + med(slowed)
            size = os.path.getsize(Path(tmp) / "last.pt")
            rows.append(
                {
                    "checkpoint": label,
                    "mib": round(size / 2**20, 1),
                    "training_thread_s": round(med(thread), 4),
                    "steps_slowed_s": round(med(slowed), 4),
                    "write_left_after_steps_s": round(med(left), 3),
                    "cost_s": round(cost, 4),
                    "share_of_step": round(cost / step_s, 3),
                    "share_of_epoch": round(cost / (step_s * epoch_steps), 5),
                    "step_s": round(step_s, 4),
                    "epoch_steps": epoch_steps,
                    "repeats": reps,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def loader_epoch(data: Path, sizes: Sizes, device: torch.device, budget: Budget) -> list[dict[str, Any]]:
    """One epoch over the slice: the official-style loader (PIL transforms, per-sample negatives, DataLoader, copy
    to the device) against ours (resident split, batched augmentation, window negatives), both with K negatives."""
    from cktf.data import BatchLoader, ContrastConfig

    if budget.left() < 30:
        return [{"skipped": "time budget"}]
    splits = _slice_splits(data, sizes)
    ds, spec = splits.train, splits.spec
    k = min(sizes.nce_k, len(ds) - int(np.bincount(ds.targets).max()))
    rows = []
    official = _official_loader(ds, spec, k, sizes.batch, sizes.loader_workers, device.type == "cuda")
    for label, run in (
        ("official-style: PIL + np.random.choice per sample", lambda: _drain(official, device)),
        ("cktf: resident split, batched augmentation", lambda: _drain(
            BatchLoader(ds, spec, sizes.batch, True, device, contrast=ContrastConfig(k=k)), device)),
    ):  # fmt: skip
        run()  # warm: worker start-up, first allocation
        t0 = time.perf_counter()
        n = run()
        elapsed = time.perf_counter() - t0
        rows.append({"loader": label, "images": n, "seconds": round(elapsed, 3), "images_per_s": round(n / elapsed)})
        print(json.dumps(rows[-1]), flush=True)
    rows[-1]["vs_official"] = round(rows[-1]["images_per_s"] / rows[0]["images_per_s"], 1)
    rows[0]["workers"] = sizes.loader_workers
    return rows


class _OfficialStyle(torch.utils.data.Dataset):
    """RepDistiller ``CIFAR100InstanceSample`` in outline: a PIL image through torchvision transforms, and ``K``
    negatives from the other classes by ``np.random.choice(..., replace=False)``, one sample at a time."""

    def __init__(self, images, targets, transform, k):
        from PIL import Image

        self.images = [Image.fromarray(im) for im in images]
        self.targets, self.transform, self.k = targets, transform, k
        self.cls_negative = [np.flatnonzero(targets != c) for c in range(int(targets.max()) + 1)]

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        neg = np.random.choice(self.cls_negative[self.targets[i]], self.k, replace=False)
        return self.transform(self.images[i]), int(self.targets[i]), i, np.hstack(([i], neg))


def _official_loader(ds, spec, k, batch, workers, pin):
    from torchvision import transforms as T

    tf = T.Compose(
        [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(spec.mean, spec.std)]
    )
    return torch.utils.data.DataLoader(
        _OfficialStyle(ds.images, ds.targets, tf, k), batch_size=batch, shuffle=True, num_workers=workers,
        pin_memory=pin, persistent_workers=workers > 0, drop_last=True,
    )  # fmt: skip


def _drain(loader, device) -> int:
    n = 0
    for b in loader:
        x = b["image"] if isinstance(b, dict) else b[0]
        if x.device != device:
            x = x.to(device, non_blocking=True)
            if not isinstance(b, dict):
                b[3].to(device, non_blocking=True)
        n += x.shape[0]
    _sync(device)
    return n


# ----------------------------------------------------------------------------- report


def data_parallel(sizes: Sizes, device: torch.device, budget: Budget) -> list[dict[str, Any]]:
    """One CKTF run's training steps at 1 and 2 workers (2 only where there are two GPUs, or on the CPU): images/s,
    seconds per step, and the payload bytes per step of every collective (docs/algorithm.md §12)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import distributed_step

    from cktf.distributed import launch

    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    worlds = (1, 2) if device.type == "cpu" else tuple(w for w in (1, 2) if w <= gpus)
    backend = "nccl" if device.type == "cuda" else "gloo"
    teacher, student = sizes.pairs[0]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        a = {
            "teacher": teacher,
            "student": student,
            "batch": sizes.batch,
            "n_data": sizes.n_data,
            "nce_k": min(sizes.nce_k, sizes.n_data // 2),
            "steps": max(2, sizes.steps // 2),
            "warmup": 2,
            "tmp": tmp,
            "device": device.type,
        }
        for w in worlds:
            if budget.left() < 60:
                rows.append({"workers": w, "skipped": "time budget"})
                continue
            try:
                r = launch(distributed_step.run, w, a, 1 if device.type == "cpu" else 4, True, backend=backend)[0]
            except Exception as exc:  # a cell's failure is recorded, the check goes on
                rows.append({"workers": w, "error": f"{type(exc).__name__}: {str(exc)[:200]}"})
                continue
            rows.append(
                {
                    "workers": w,
                    "backend": backend,
                    "pair": f"{teacher} -> {student}",
                    "images_per_s": round(r["images_per_s"], 1),
                    "step_s": round(r["step_s"], 4),
                    "bytes_per_step": int(sum(r["bytes"].values())),
                    "memory_bytes_per_step": int(r["bytes"].get("all_gather/memory", 0)),
                    "memory_mib_per_worker": round(r["memory_mb"], 1),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    if 2 not in worlds:
        rows.append({"workers": 2, "skipped": f"needs two GPUs ({gpus} here)"})
    return rows


def markdown(res: dict[str, Any]) -> str:
    e = res["env"]
    lines = [f"# device check, {e['date']}", ""]
    what = e.get("gpu", "CPU") + (f" ({e['gpu_memory_gib']} GiB), CUDA {e['cuda']}" if "gpu" in e else "")
    lines += [f"{what}; torch {e['torch']}, Python {e['python']}, {e['cpus']} CPUs; smoke: {res['smoke']}", ""]
    if res.get("throughput"):
        lines += ["| pair | method | mode | images/s | ms/step | note |", "|---|---|---|---|---|---|"]
        for r in res["throughput"]:
            note = (
                r.get("skipped")
                or r.get("error")
                or (f"H2D copies/step: {r['h2d_copies_per_step']}" if r.get("h2d_copies_per_step") is not None else "")
            )
            lines.append(f"| {r['pair']} | {r['method']} | {r['mode']} | {r.get('images_per_s', '-')} | "
                         f"{r.get('step_ms', '-')} | {note} |")  # fmt: skip
        lines.append("")
    if res.get("concurrency"):
        lines += [
            "| processes | share each | aggregate images/s | vs one | peak GiB each | note |",
            "|---|---|---|---|---|---|",
        ]
        for r in res["concurrency"]:
            note = r.get("skipped") or r.get("error") or ""
            cells = [r.get(k, "-") for k in ("share", "aggregate_images_per_s", "vs_one", "peak_gib")]
            lines.append(f"| {r['processes']} | " + " | ".join(str(c) for c in cells) + f" | {note} |")
        lines.append("")
    t = res.get("train") or {}
    if "teacher" in t:
        lines += [
            f"Train run on {t['train_images']} / {t['test_images']} CIFAR-10 images: teacher {t['teacher']['arch']} "
            f"{t['teacher']['epochs']} epochs, test {t['teacher']['test_acc']:.2f}%; CKTF student "
            f"{t['student']['arch']} {t['student']['epochs']} epochs (N={t['student']['nce_k']}), test "
            f"{t['student']['test_acc']:.2f}%, epochs of {t['student']['epoch_s']} s; checkpoint cost at most "
            f"{100 * t['checkpoint_share_of_epoch']:.2f}% of an epoch.",
            "",
        ]
    if res.get("checkpoint"):
        lines += ["| checkpoint | MiB | training thread s | steps slowed s | share of a step | share of an epoch |",
                  "|---|---|---|---|---|---|"]  # fmt: skip
        for r in res["checkpoint"]:
            if "skipped" in r:
                lines.append(f"| skipped: {r['skipped']} | | | | | |")
                continue
            lines.append(f"| {r['checkpoint']} | {r['mib']} | {r['training_thread_s']} | {r['steps_slowed_s']} | "
                         f"{r['share_of_step']} | {100 * r['share_of_epoch']:.3f}% |")  # fmt: skip
        lines.append("")
    if res.get("loader"):
        lines += ["| loader (one epoch of the slice) | images/s | seconds | vs official |", "|---|---|---|---|"]
        for r in res["loader"]:
            if "skipped" in r:
                lines.append(f"| skipped: {r['skipped']} | | | |")
                continue
            lines.append(f"| {r['loader']} | {r['images_per_s']:,} | {r['seconds']} | {r.get('vs_official', '-')} |")
        lines.append("")
    if res.get("data_parallel"):
        lines += ["| data parallel | images/s | s/step | bytes/step | of it the banks' keys | note |",
                  "|---|---|---|---|---|---|"]  # fmt: skip
        for r in res["data_parallel"]:
            note = r.get("skipped") or r.get("error") or r.get("backend", "")
            cells = [r.get(k, "-") for k in ("images_per_s", "step_s", "bytes_per_step", "memory_bytes_per_step")]
            lines.append(f"| {r['workers']} worker(s) | " + " | ".join(str(c) for c in cells) + f" | {note} |")
        lines.append("")
    lines.append(f"Total {res['seconds']:.0f} s.")
    return "\n".join(lines) + "\n"


PARTS = ("throughput", "concurrency", "train", "checkpoint", "loader", "data_parallel")


def run(args) -> int:
    data = Path(args.data)
    vendored = use_vendored(data)
    device = torch.device("cpu" if args.cpu_smoke else args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: run with --cpu-smoke for the CPU version", file=sys.stderr)
        return 2
    if not (data / SLICE).exists():
        print(f"{data / SLICE} not found: run `benchmarks/device_check.py prepare --out {data}` first", file=sys.stderr)
        return 2
    sizes = SMOKE if args.cpu_smoke else Sizes()
    if device.type == "cpu":
        torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    budget = Budget(args.budget_s)
    parts = args.parts.split(",") if args.parts else list(PARTS)
    res: dict[str, Any] = {"env": env(device), "smoke": bool(args.cpu_smoke), "vendored": vendored, "parts": parts}
    with tempfile.TemporaryDirectory() as tmp:
        if "throughput" in parts:
            res["throughput"] = throughput(sizes, device, budget)
        if "train" in parts:
            res["train"] = train_run(data, sizes, device, budget, Path(tmp))
            print(json.dumps(res["train"]), flush=True)
        if "checkpoint" in parts:
            res["checkpoint"] = checkpoint_cost(sizes, device, budget)
        if "loader" in parts:
            res["loader"] = loader_epoch(data, sizes, device, budget)
        if "concurrency" in parts:
            res["concurrency"] = concurrency(sizes, device, budget, data)
        if "data_parallel" in parts:
            res["data_parallel"] = data_parallel(sizes, device, budget)
    res["env"]["forbidden_imported"] = sorted(m for m in FORBIDDEN if sys.modules.get(m) is not None)
    res["seconds"] = round(time.perf_counter() - budget.start, 1)
    (out / "device_check.json").write_text(json.dumps(res, indent=1))
    (out / "device_check.md").write_text(markdown(res))
    print(markdown(res))
    return 0 if not res["env"]["forbidden_imported"] else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    pr = sub.add_parser("prepare", help="write the CIFAR-10 slice and the vendored wheels")
    pr.add_argument("--cifar10", type=Path, default=Path(os.environ.get("CKTF_DATA_ROOT", "data")),
                    help="a CIFAR-10 root the project reads (cifar10-jpeg/ or the python pickles)")  # fmt: skip
    pr.add_argument("--out", type=Path, default=ROOT / ".device")
    pr.add_argument("--train", type=int, default=8000)
    pr.add_argument("--test", type=int, default=1000)
    pr.add_argument("--no-vendor", action="store_true", help="skip downloading the pydantic wheels")
    r = sub.add_parser("run", help="run the check (on a GPU, or --cpu-smoke)")
    r.add_argument("--data", type=Path, default=ROOT / ".device")
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--device", default="cuda")
    r.add_argument("--cpu-smoke", action="store_true", help="toy sizes on the CPU, about a minute")
    r.add_argument("--parts", default="", help=f"comma-separated subset of {','.join(PARTS)}")
    r.add_argument("--budget-s", type=float, default=390.0, help="no part starts after this many seconds")
    w = sub.add_parser("worker", help=argparse.SUPPRESS)
    w.add_argument("spec")
    args = p.parse_args(argv)
    if args.cmd == "prepare":
        print(json.dumps(prepare(args.cifar10, args.out, args.train, args.test, not args.no_vendor), indent=1))
        return 0
    if args.cmd == "worker":
        spec = json.loads(args.spec)
        use_vendored(Path(spec["data"]))
        print(json.dumps(worker(spec)), flush=True)
        return 0
    return run(args)


if __name__ == "__main__":
    raise SystemExit(main())
