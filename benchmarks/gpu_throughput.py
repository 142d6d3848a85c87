"""GPU throughput of a CKTF trial (resnet32x4 -> resnet8x4, batch 64, N = 16384, CIFAR-sized data), side by side.

Parts (``--parts a,b,c``):

a. images/s of one trial's training step (GPU-resident loader + augmentation + contrastive negatives, teacher
   forward, CKTF, backward, SGD) in fp32 vs bf16 autocast vs channels_last vs both (``--compile`` adds
   ``torch.compile`` rows), measured after warm-up with the device synchronised.
b. aggregate images/s of 1, 2 and 4 trials sharing one GPU through Ray's fractional resources
   (``num_gpus = 1/k`` per task, each capping its allocator at its share as ``cktf tune`` trials do), over the
   window in which all of them run.
c. one CIFAR-100-sized epoch (50k images, 782 steps) with this framework's best settings vs the paper's setup as
   the official code runs it: a PIL/torchvision DataLoader (``--workers`` processes) whose ``__getitem__`` draws
   the 16384 label-aware negatives per sample with ``np.random.choice(replace=False)`` (RepDistiller
   ``CIFAR100InstanceSample``), the official gathered NCE (``scoring=gather``), fp32.

Data: the 50k CIFAR-10 train jpegs (CIFAR-100 has the same size and shape; ``--root``).

    .venv/bin/python benchmarks/gpu_throughput.py --root DATA_ROOT                   # on a GPU machine
    .venv/bin/python benchmarks/gpu_throughput.py --device cpu --steps 2 --parts a --student resnet8 --teacher resnet14
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cktf.data import BatchLoader, ContrastConfig, DataConfig, load_splits  # noqa: E402
from cktf.distillers import DistillContext, build_distiller  # noqa: E402
from cktf.models import create_model  # noqa: E402
from cktf.train.engine import train_step as step  # noqa: E402

K = 16384


def build(args, splits, device, channels_last=False, scoring="fused", compile_backend=""):
    torch.manual_seed(0)
    ctx = DistillContext(num_classes=splits.num_classes, num_train_samples=len(splits.train), image_size=32)
    params = {"nce_k": args.nce_k, "scoring": scoring}
    teacher = create_model(args.teacher, splits.num_classes)
    d = build_distiller("cktf", create_model(args.student, splits.num_classes), teacher, params, ctx)
    d.to(device=device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    if compile_backend:
        d.compile_models(compile_backend)
    opt = torch.optim.SGD(d.trainable_parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    return d.train(), opt


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def loop(args, splits, device, bf16, channels_last, compile_backend="", steps=None) -> tuple[float, float, float]:
    """(images/s, start, end) of ``steps`` full steps, the loader included, after ``args.warmup`` steps."""
    d, opt = build(args, splits, device, channels_last, compile_backend=compile_backend)
    contrast = ContrastConfig(k=args.nce_k, replace=False)
    loader = BatchLoader(splits.train, splits.spec, 64, True, device, contrast=contrast, channels_last=channels_last)
    it = iter(_forever(loader))
    for _ in range(args.warmup):
        step(d, opt, next(it), device, bf16)
    sync(device)
    steps = steps or args.steps
    t0 = time.perf_counter()
    for _ in range(steps):
        step(d, opt, next(it), device, bf16)
    sync(device)
    t1 = time.perf_counter()
    return 64 * steps / (t1 - t0), t0, t1


def _forever(loader):
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        yield from loader
        epoch += 1


def part_a(args, splits, device) -> None:
    rows = [("fp32", False, False, ""), ("bf16 autocast", True, False, ""), ("channels_last", False, True, "")]
    rows.append(("bf16 + channels_last", True, True, ""))
    if args.compile:
        rows += [
            ("fp32 + compile", False, False, "inductor"),
            ("bf16 + channels_last + compile", True, True, "inductor"),
        ]
    results = []
    for label, bf16, cl, comp in rows:
        ips, _, _ = loop(args, splits, device, bf16, cl, comp)
        results.append((label, ips))
        print(f"  {label}: {ips:,.0f} img/s", flush=True)
    base = results[0][1]
    print(f"\n(a) one CKTF trial, {args.teacher} -> {args.student}, batch 64, N={args.nce_k}, device {device}")
    print("| precision / layout | img/s | vs fp32 |\n|---|---|---|")
    for label, ips in results:
        print(f"| {label} | {ips:,.0f} | {ips / base:.2f}x |")


def _shared_trial(args_dict, share, bf16, cl):
    import ray  # noqa: F401  (inside a Ray task)

    args = argparse.Namespace(**args_dict)
    device = torch.device("cuda")
    torch.cuda.set_per_process_memory_fraction(share)
    splits = load_splits(data_config(args), progress=False)
    return loop(args, splits, device, bf16, cl)


def part_b(args) -> None:
    import ray

    ray.init(num_gpus=1, include_dashboard=False, log_to_driver=False)
    results = []
    try:
        for k in (1, 2, 4):
            task = ray.remote(num_gpus=1 / k, num_cpus=1)(_shared_trial)
            outs = ray.get([task.remote(vars(args), 1 / k, True, True) for _ in range(k)])
            start, end = max(o[1] for o in outs), min(o[2] for o in outs)  # the window where all k ran
            each = [o[0] for o in outs]
            # images each trial did inside the common window, at its own measured rate
            agg = sum(each) if end <= start else sum(r * (end - start) for r in each) / (end - start)
            results.append((k, agg, each))
            print(f"  {k} trial(s): aggregate {agg:,.0f} img/s, each {[f'{r:,.0f}' for r in each]}", flush=True)
    finally:
        ray.shutdown()
    base = results[0][1]
    print("\n(b) trials sharing one GPU (num_gpus=1/k, bf16 + channels_last)")
    print("| trials | aggregate img/s | vs 1 trial | per trial img/s |\n|---|---|---|---|")
    for k, agg, each in results:
        print(f"| {k} | {agg:,.0f} | {agg / base:.2f}x | {', '.join(f'{r:,.0f}' for r in each)} |")


class OfficialCIFARSample(torch.utils.data.Dataset):
    """RepDistiller ``CIFAR100InstanceSample`` (exact mode): PIL transforms and per-sample negatives."""

    def __init__(self, images: np.ndarray, targets: np.ndarray, k: int, mean, std):
        from PIL import Image
        from torchvision import transforms as T

        self.images = [Image.fromarray(im) for im in images]
        self.targets = targets
        self.k = k
        classes = np.unique(targets)
        self.cls_negative = [np.where(targets != c)[0] for c in classes]
        self.transform = T.Compose(
            [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(mean, std)]
        )

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        target = int(self.targets[i])
        neg = np.random.choice(self.cls_negative[target], self.k, replace=False)
        return self.transform(self.images[i]), target, i, np.hstack(([i], neg))


def part_c(args, splits, device) -> None:
    steps = len(splits.train) // 64
    ours, _, _ = loop(args, splits, device, bf16=device.type == "cuda", channels_last=True, steps=steps)
    d, opt = build(args, splits, device, scoring="gather")
    ds = OfficialCIFARSample(splits.train.images, splits.train.targets, args.nce_k, splits.spec.mean, splits.spec.std)
    loader = torch.utils.data.DataLoader(
        ds, batch_size=64, shuffle=True, num_workers=args.workers, pin_memory=device.type == "cuda", drop_last=True
    )
    t0, n = None, 0
    for i, (x, y, idx, cidx) in enumerate(loader):
        if i == args.warmup:
            sync(device)
            t0 = time.perf_counter()
        batch = {"image": x.to(device, non_blocking=True), "target": y.to(device), "index": idx.to(device)}
        batch["contrast_idx"] = cidx.to(device)
        step(d, opt, batch, device, bf16=False)
        n += 64 if t0 is not None else 0
        if args.max_official_steps and i >= args.warmup + args.max_official_steps:
            break
    sync(device)
    official = n / (time.perf_counter() - t0)
    print(f"\n(c) one epoch of {len(splits.train)} images ({steps} steps), {args.teacher} -> {args.student} CKTF")
    print("| setup | img/s | epoch s | vs official |\n|---|---|---|---|")
    for label, ips in (
        (f"official: PIL DataLoader ({args.workers} workers), per-sample negatives, gather NCE, fp32", official),
        ("cktf: GPU-resident batched loader, fused NCE, bf16 + channels_last", ours),
    ):
        print(f"| {label} | {ips:,.0f} | {len(splits.train) / ips:.1f} | {ips / official:.2f}x |")


def data_config(args) -> DataConfig:
    return DataConfig(dataset="cifar10", root=str(args.root), val_fraction=0, train_subset=args.train_subset or None)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default=os.environ.get("CKTF_DATA_ROOT", "data"))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--student", default="resnet8x4")
    p.add_argument("--teacher", default="resnet32x4")
    p.add_argument("--nce-k", type=int, default=K)
    p.add_argument("--train-subset", type=int, default=0, help="0 = all 50k train images")
    p.add_argument("--steps", type=int, default=50, help="timed steps per measurement (parts a, b)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--workers", type=int, default=8, help="DataLoader workers of the official setup (part c)")
    p.add_argument("--max-official-steps", type=int, default=0, help="cap part c's official epoch (0 = whole)")
    p.add_argument("--compile", action="store_true", help="part a: also time torch.compile (inductor)")
    p.add_argument("--parts", default="a,b,c")
    args = p.parse_args()
    device = torch.device(args.device)
    parts = set(args.parts.split(","))
    print(json.dumps({"torch": torch.__version__, "device": str(device), "gpu": _gpu_name(device)}), flush=True)
    splits = load_splits(data_config(args), progress=False)
    if "a" in parts:
        part_a(args, splits, device)
    if "b" in parts and device.type == "cuda":
        part_b(args)
    if "c" in parts:
        part_c(args, splits, device)


def _gpu_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "-"


if __name__ == "__main__":
    main()
