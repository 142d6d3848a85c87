"""Data-parallel training steps of one CKTF run on this machine: images/s at 1 and 2 workers, and the bytes the
workers exchange per step (docs/algorithm.md §12).

Each configuration runs in fresh processes started by :func:`cktf.distributed.launch` (gloo on the CPU, the default
process group of W workers; W = 1 is the single-process path): the real ``prepare_run``, the sharded loader, and
``train_one_epoch`` with its ``train_step`` (a warm-up epoch of ``--warmup`` steps, then ``--steps`` timed steps), on
a synthetic CIFAR-100-shaped split with a random teacher (throughput does not depend on pixel values or weights).

    .venv/bin/python benchmarks/distributed_step.py                       # resnet32x4 -> resnet8x4, B = 64
    .venv/bin/python benchmarks/distributed_step.py --teacher resnet14 --student resnet8 --steps 4

Every configuration runs ``--repeats`` times, the configurations interleaved (a shared machine's load then falls on
all of them alike); the table gives the median and the best images/s, and the time rank 0 spent in collectives
(with gloo: the transfer plus the wait for the other worker). Bytes are payloads (``DistContext.bytes``): the
gathered output of an all-gather, the tensor of an all-reduce; a ring sends about (W-1)/W of the first and
2 (W-1)/W of the second per worker. Prints markdown tables.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cktf.data import DATASETS, ArrayDataset, Splits  # noqa: E402
from cktf.distributed import launch  # noqa: E402
from cktf.models import create_model  # noqa: E402


def _splits(n: int) -> Splits:
    rng = np.random.default_rng(0)
    classes = [str(c) for c in range(100)]
    train = ArrayDataset(rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), np.arange(n) % 100, classes)
    test = ArrayDataset(rng.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8), np.arange(64) % 100, classes)
    return Splits(DATASETS.get("cifar100"), train, None, test, False)


def run(rank: int, world: int, a: dict, threads: int, sync_bn: bool) -> dict:
    """One worker: build the run, a warm-up epoch, then the timed one; what it measured."""
    from cktf.train import OptimConfig, RunConfig, TrainConfig, prepare_run
    from cktf.train.engine import train_one_epoch
    from cktf.train.optim import build_sgd
    from cktf.train.runner import _loaders

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    teacher = create_model(a["teacher"], num_classes=100)
    cfg = RunConfig(
        student=a["student"],
        distiller="cktf",
        distill_params={"nce_k": a["nce_k"]},
        optim=OptimConfig(),
        train=TrainConfig(batch_size=a["batch"], progress=False, sync_bn=sync_bn, device=a.get("device", "cpu")),
        out_dir=str(Path(a["tmp"]) / f"w{world}-t{threads}-{sync_bn}"),
    )
    p = prepare_run(cfg, splits=_splits(a["n_data"]), teacher=teacher, teacher_arch=a["teacher"])
    loader = _loaders(p)[0]
    opt = build_sgd(p.distiller.trainable_parameters(), cfg.optim)
    dist = p.dist if p.dist.active else None
    train_one_epoch(p.distiller, loader, opt, p.device, epoch=0, max_steps=a["warmup"], dist=dist)
    p.dist.reset_counters()
    t0 = time.perf_counter()
    m = train_one_epoch(p.distiller, loader, opt, p.device, epoch=1, max_steps=a["steps"], dist=dist)
    wall = time.perf_counter() - t0
    critics = len(p.distiller.terms["cktf"].critics)
    return {
        "images_per_s": m["images_per_s"],
        "step_s": wall / a["steps"],
        "bytes": {k: v / a["steps"] for k, v in p.dist.bytes.items()},
        "comm_s": sum(p.dist.seconds.values()) / a["steps"],
        "critics": critics,
        "memory_mb": objective_memory(cfg, a["n_data"], p),
    }


def objective_memory(cfg, n_data: int, p) -> float:
    from cktf.distillers import objective

    n_stages = len(p.distiller.student.feature_info) - 1
    return objective(cfg.distiller).memory_bytes(cfg.distill_params, n_data, n_stages) / 2**20


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--student", default="resnet8x4")
    ap.add_argument("--teacher", default="resnet32x4")
    ap.add_argument("--batch", type=int, default=64, help="the global batch (each of W workers takes batch / W)")
    ap.add_argument("--n-data", type=int, default=5000, help="training images (bank rows)")
    ap.add_argument("--nce-k", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=5, help="timed steps")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2, help="runs of every configuration, interleaved")
    a = vars(ap.parse_args(argv))
    import statistics
    import tempfile

    configs = (
        (1, 1, False, "1 worker x 1 thread"),
        (1, 2, False, "1 worker x 2 threads"),
        (2, 1, False, "2 workers x 1 thread, per-worker BN"),
        (2, 1, True, "2 workers x 1 thread, sync BN"),
    )
    runs: dict[str, list[dict]] = {c[3]: [] for c in configs}
    with tempfile.TemporaryDirectory() as tmp:
        a["tmp"] = tmp
        for rep in range(a["repeats"]):
            for world, threads, sync_bn, label in configs:
                got = launch(run, world, a, threads, sync_bn)
                runs[label].append(got[0])
                print(f"run {rep + 1}: {label}: {got[0]['images_per_s']:.1f} images/s", file=sys.stderr)
    rows = [(label, world, runs[label]) for world, _, _, label in configs]
    first = rows[0][2][0]
    base = statistics.median(r["images_per_s"] for r in rows[0][2])
    print(
        f"\nCKTF {a['teacher']} -> {a['student']}, global batch {a['batch']}, N = {a['n_data']:,}, K = {a['nce_k']:,}, "
        f"d = 128, {first['critics']} critics, CPU (gloo), {a['steps']} timed steps after {a['warmup']}, "
        f"{a['repeats']} runs each; memory per worker {first['memory_mb']:.1f} MiB\n"
    )
    print("| workers | images/s, median | best | median vs 1 worker x 1 thread | s/step, median | in collectives |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, _, rs in rows:
        ips = statistics.median(r["images_per_s"] for r in rs)
        best = max(r["images_per_s"] for r in rs)
        step = statistics.median(r["step_s"] for r in rs)
        comm = statistics.median(r["comm_s"] for r in rs)
        print(f"| {label} | {ips:.1f} | {best:.1f} | {ips / base:.2f}x | {step:.3f} | {comm:.3f} s |")
    for label, world, rs in rows:
        r = rs[0]
        if world == 1:
            continue
        print(f"\nBytes per step, {label} (payload per worker; per critic = memory / {r['critics']}):\n")
        print("| collective | bytes/step | KiB/step |")
        print("|---|---:|---:|")
        for tag, v in sorted(r["bytes"].items()):
            print(f"| {tag} | {v:,.0f} | {v / 1024:,.1f} |")
        total = sum(r["bytes"].values())
        memory = r["bytes"].get("all_gather/memory", 0)
        print(f"| **all** | {total:,.0f} | {total / 1024:,.1f} |")
        print(f"| memory keys, per critic | {memory / r['critics']:,.0f} | {memory / r['critics'] / 1024:,.1f} |")


if __name__ == "__main__":
    main()
