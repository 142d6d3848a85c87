"""Throughput of cktf's tensor data pipeline vs torchvision's per-sample PIL pipeline (docs/algorithm.md §6).

Measures, in one run, images/s of:

* CIFAR-10 (``cifar10-jpeg``, decoded cache): our ``BatchLoader`` train pipeline (RandomCrop(32, pad 4)
  + flip + normalise, batched on tensors) at batch 64 and 256, vs torchvision ``RandomCrop(32,
  padding=4)``, ``RandomHorizontalFlip``, ``ToTensor``, ``Normalize`` on PIL images through a
  ``DataLoader`` with 0 and 2 workers;
* Tiny-ImageNet (``tiny-imagenet-200-mini``): our batched RandomResizedCrop(64) + flip vs torchvision's
  ``RandomResizedCrop(64)`` the same way;
* the cache: time to load a decoded split (and, with ``--cold``, the first decode into a fresh cache);
* contrastive negatives: ms per batch of ``contrast_idx`` at B=64, K=16384, N=50,000, side by side: the window
  draw (default) and the independent draw against the per-row ``Generator.choice`` this project used before
  (commit 8c3fccc) and the official per-sample ``np.random.choice`` (``CIFAR100InstanceSample``);
* RandomResizedCrop resampling of 64 Tiny-ImageNet-sized images: the row-gather + one matmul path against the
  two-matmul path it replaced (commit 8c3fccc).

Usage: ``.venv/bin/python benchmarks/data_pipeline.py [--root DATA_ROOT] [--seconds 2.5] [--cold]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cktf.data import DATASETS, BatchLoader, ContrastConfig, ContrastSampler, prepare  # noqa: E402

DEFAULT_ROOT = Path(os.environ.get("CKTF_DATA_ROOT", "data"))  # a folder holding cifar10-jpeg/


class PILDataset(torch.utils.data.Dataset):
    """Images kept as PIL, transformed one at a time (the classic torchvision recipe)."""

    def __init__(self, images: np.ndarray, targets: np.ndarray, transform):
        from PIL import Image

        self.images = [Image.fromarray(im) for im in images]
        self.targets = targets
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.transform(self.images[i]), int(self.targets[i])


def rate(batches, seconds: float, warmup: int = 2) -> float:
    """Images/s of an iterable of batches (dicts or (x, y) tuples), after ``warmup`` batches."""
    n, start = 0, None
    for i, b in enumerate(batches):
        x = b["image"] if isinstance(b, dict) else b[0]
        if i == warmup:
            start = time.perf_counter()
        elif i > warmup:
            n += x.shape[0]
            if time.perf_counter() - start >= seconds:
                break
    return n / (time.perf_counter() - start) if start and n else float("nan")


def ours(ds, spec, batch: int, seconds: float) -> float:
    loader = BatchLoader(ds, spec, batch_size=batch, train=True, device=torch.device("cpu"), seed=0)

    def forever():
        while True:
            yield from loader

    return rate(forever(), seconds)


def torchvision_rate(pil: PILDataset, batch: int, workers: int, seconds: float) -> float:
    loader = torch.utils.data.DataLoader(
        pil, batch_size=batch, shuffle=True, num_workers=workers, persistent_workers=workers > 0, drop_last=True
    )

    def forever():
        while True:
            yield from loader

    return rate(forever(), seconds, warmup=2 + 2 * workers)


def tv_transform(kind: str, spec):
    from torchvision import transforms as T

    crop = T.RandomCrop(32, padding=4) if kind == "crop_flip" else T.RandomResizedCrop(64)
    return T.Compose([crop, T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(spec.mean, spec.std)])


def bench_dataset(name: str, root: Path, cache_dir, seconds: float, rows: list) -> None:
    spec = DATASETS.get(name)
    t = time.perf_counter()
    ds = spec.load(root, "train", cache_dir=cache_dir)
    ds = type(ds)(np.array(ds.images), ds.targets, ds.classes)
    print(f"{name}: train split {ds.images.shape} loaded in {time.perf_counter() - t:.2f} s", flush=True)
    aug = "RandomCrop(32,pad4)+flip" if spec.train_aug == "crop_flip" else "RandomResizedCrop(64)+flip"
    pil = PILDataset(ds.images, ds.targets, tv_transform(spec.train_aug, spec))
    base = {}
    default_threads = torch.get_num_threads()
    for threads in sorted({1, default_threads}):
        torch.set_num_threads(threads)
        for batch in (64, 256):
            r = ours(ds, spec, batch, seconds)
            base.setdefault(batch, r)  # ratios are against the 1-thread run (same CPU as workers=0)
            rows.append((name, aug, f"cktf BatchLoader, {threads} torch thread(s)", batch, "-", r, None))
            print(f"  ours  batch {batch} threads {threads}: {r:,.0f} img/s", flush=True)
    torch.set_num_threads(default_threads)
    for batch in (64, 256):
        for workers in (0, 2):
            r = torchvision_rate(pil, batch, workers, seconds)
            rows.append((name, aug, "torchvision PIL + DataLoader", batch, workers, r, base[batch] / r))
            print(f"  tv    batch {batch} workers {workers}: {r:,.0f} img/s", flush=True)


def before_rowwise(sampler: ContrastSampler, index: torch.Tensor, generator: torch.Generator) -> np.ndarray:
    """The sampler before the window draw (commit 8c3fccc): ``Generator.choice(m, K, replace=False)`` per row, then
    the class-block offset and the sort order."""
    seed = int(torch.randint(0, 2**63 - 1, (1,), generator=generator).item())
    rng = np.random.default_rng(seed)
    order, start, count = (t.numpy() for t in sampler._cpu)
    idx = index.numpy()
    k = sampler.cfg.k
    st, ct = start[idx], count[idx]
    pos = np.empty((len(idx), k + 1), dtype=np.int64)
    neg = pos[:, 1:]
    for row, m in zip(neg, (sampler.n - ct).tolist()):
        row[:] = rng.choice(m, size=k, replace=False, shuffle=False)
    neg += (neg >= st[:, None]) * ct[:, None]
    pos[:, 0] = np.argsort(order)[idx]  # the anchor itself (exact mode)
    return np.take(order, pos)


def official_per_sample(cls_negative: list[np.ndarray], targets: np.ndarray, index: np.ndarray, k: int) -> np.ndarray:
    """RepDistiller ``CIFAR100InstanceSample.__getitem__``: ``np.random.choice(cls_negative[target], K,
    replace=False)`` for one sample at a time (legacy ``RandomState``: a full permutation of the pool each)."""
    return np.stack([np.hstack(([i], np.random.choice(cls_negative[targets[i]], k, replace=False))) for i in index])


def _median_ms(fn, reps: int = 20) -> tuple[float, float]:
    for _ in range(3):
        fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * float(np.median(times)), 1e3 * float(np.min(times))


def bench_contrast(rows_out: list) -> None:
    """ms per ``contrast_idx`` batch (B=64, K=16384, N=50,000, 100 classes), every draw in one run, 1 thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    targets = np.random.default_rng(0).permutation(np.repeat(np.arange(100), 500))
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, 50000, (64,), generator=g)
    window = ContrastSampler(targets, ContrastConfig(k=16384))
    independent = ContrastSampler(targets, ContrastConfig(k=16384, draw="independent"))
    replaced = ContrastSampler(targets, ContrastConfig(k=16384, replace=True))
    cls_negative = [np.flatnonzero(targets != c) for c in range(100)]
    cases = [
        (
            "without replacement",
            "official: np.random.choice per sample",
            lambda: official_per_sample(cls_negative, targets, idx.numpy(), 16384),
            5,
        ),
        ("without replacement", "before: Generator.choice per row", lambda: before_rowwise(window, idx, g), 20),
        (
            "without replacement",
            "independent: Generator.choice per row",
            lambda: independent.sample(idx, g),
            10,
        ),
        ("without replacement", "window (default)", lambda: window.sample(idx, g), 20),
        (
            "with replacement",
            "uniform integers",
            lambda: replaced.sample(idx, g),
            20,
        ),
    ]
    for kind, draw, fn, reps in cases:
        med, best = _median_ms(fn, reps)
        rows_out.append((kind, draw, med, best))
        print(f"  contrast {kind}, {draw}: {med:.2f} ms", flush=True)
    torch.set_num_threads(threads)


def before_rrc_resample(x: torch.Tensor, boxes: torch.Tensor, size: int, flips: torch.Tensor) -> torch.Tensor:
    """RandomResizedCrop resampling before (commit 8c3fccc): the float copy of the whole batch, then two batched
    matmuls with dense per-sample interpolation matrices (``out = Wy @ x @ Wx.T``)."""
    from cktf.data.augment import _interp_matrix

    x = x.to(torch.float32, memory_format=torch.contiguous_format)
    b, c, h, w = x.shape
    top, left, bh, bw = boxes.unbind(1)
    wy = _interp_matrix(top, bh, size, h)
    wx = _interp_matrix(left, bw, size, w, flips)
    t = torch.bmm(x.reshape(b, c * h, w), wx.transpose(1, 2))
    t = t.view(b, c, h, size).transpose(2, 3).reshape(b, c * size, h)
    return torch.bmm(t, wy.transpose(1, 2)).view(b, c, size, size).transpose(2, 3)


def bench_rrc(rows_out: list) -> None:
    """ms per 64 RandomResizedCrop(64) resamples of 64x64 uint8 NHWC images, before and after, 1 thread."""
    from cktf.data.augment import _resample_separable, rrc_params

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (64, 64, 64, 3), dtype=torch.uint8, generator=g).permute(0, 3, 1, 2)
    params = rrc_params(64, 64, 64, generator=g)
    boxes, flips = params[:, :4], params[:, 4] > 0.5
    same = (before_rrc_resample(x, boxes, 64, flips) - _resample_separable(x, boxes, 64, flips)).abs().max()
    for name, fn in [
        ("before: float copy + two bmm", lambda: before_rrc_resample(x, boxes, 64, flips)),
        ("after: row gathers + one bmm", lambda: _resample_separable(x, boxes, 64, flips)),
    ]:
        med, best = _median_ms(fn, 40)
        rows_out.append((name, med, best, float(same)))
        print(f"  rrc {name}: {med:.2f} ms", flush=True)
    torch.set_num_threads(threads)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="has cifar10-jpeg/, tiny-imagenet-200-mini/")
    p.add_argument("--cache-dir", default=None, help="decoded-array cache (default $CKTF_CACHE_DIR or ~/.cache/cktf)")
    p.add_argument("--seconds", type=float, default=2.5, help="time per measurement")
    p.add_argument("--cold", action="store_true", help="also time the first decode of CIFAR-10 into a fresh cache")
    args = p.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs", flush=True)

    if args.cold:
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            sizes = prepare("cifar10", args.root, cache_dir=tmp)
            first = time.perf_counter() - t
            t = time.perf_counter()
            prepare("cifar10", args.root, cache_dir=tmp)
            print(f"cifar10 {sizes}: first decode {first:.1f} s, cached load {time.perf_counter() - t:.2f} s")
    t = time.perf_counter()
    sizes = prepare("cifar10", args.root, cache_dir=args.cache_dir)
    t_c10 = time.perf_counter() - t
    t = time.perf_counter()
    sizes_tiny = prepare("tiny_imagenet", args.root, cache_dir=args.cache_dir)
    t_tiny = time.perf_counter() - t
    print(
        f"prepare (decode on a cold cache, load on a warm one): cifar10 {sizes} {t_c10:.1f} s, "
        f"tiny_imagenet {sizes_tiny} {t_tiny:.1f} s",
        flush=True,
    )

    rows: list = []
    bench_dataset("cifar10", args.root, args.cache_dir, args.seconds, rows)
    bench_dataset("tiny_imagenet", args.root, args.cache_dir, args.seconds, rows)
    contrast: list = []
    bench_contrast(contrast)
    rrc: list = []
    bench_rrc(rrc)

    print("\n| dataset | augmentation | pipeline | batch | workers | img/s | cktf (1 thread) / this |")
    print("|---|---|---|---|---|---|---|")
    for name, aug, pipe, batch, workers, r, ratio in rows:
        shown = "-" if ratio is None else f"{ratio:.1f}x"
        print(f"| {name} | {aug} | {pipe} | {batch} | {workers} | {r:,.0f} | {shown} |")
    window = next(med for kind, draw, med, _ in contrast if draw.startswith("window"))
    print("\n| contrast_idx B=64 K=16384 N=50,000 | draw | median ms/batch | min ms/batch | this / window |")
    print("|---|---|---|---|---|")
    for kind, draw, med, best in contrast:
        print(f"| {kind} | {draw} | {med:.2f} | {best:.2f} | {med / window:.1f}x |")
    after = rrc[-1][1]
    print("\n| RandomResizedCrop(64) resample, 64 images | median ms | min ms | this / after | max abs diff |")
    print("|---|---|---|---|---|")
    for name, med, best, diff in rrc:
        print(f"| {name} | {med:.2f} | {best:.2f} | {med / after:.2f}x | {diff:.1e} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
