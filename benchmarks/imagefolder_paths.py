"""An ImageFolder at 224 px (docs/models.md, "Decode once or stream"): images/s of the two data paths, side by side.

From one folder of Tiny-ImageNet-mini JPEGs (``--classes`` x ``--per-class`` train images, copied into a temporary
ImageFolder tree), in one run:

* **decode once**: ``load_splits`` into a fresh cache (the JPEGs decoded once at the storage side, 8/7 x 224 = 256 px,
  by ``data.decode_workers`` processes); images/s of that decode;
* **epoch, decoded**: one training epoch of the loader (RandomResizedCrop(224) + flip + normalise, batched) over the
  decoded split;
* **epoch, streamed**: the same epoch from the files (``StreamLoader``: each batch decoded by ``--workers`` worker
  processes), and with 0 workers (decoded in the loop's own process).

Each epoch also runs a forward of a torchvision MobileNetV3-Small per batch with ``--model`` (off by default: the data
path alone). One torch thread per process, as a trial with ``resources.cpu: 1`` has.

Usage: ``.venv/bin/python benchmarks/imagefolder_paths.py [--root DATA_ROOT] [--classes 12] [--per-class 96]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cktf.data import DataConfig, StreamDataset, StreamLoader, load_splits, make_loader  # noqa: E402

DEFAULT_ROOT = Path(os.environ.get("CKTF_DATA_ROOT", "data"))
TINY = Path("tiny-imagenet-200-mini") / "tiny-imagenet-200"


def build_folder(root: Path, classes: int, per_class: int, out: Path) -> int:
    src = root / TINY / "train"
    if not src.is_dir():
        raise SystemExit(f"no Tiny-ImageNet mini at {src}: pass --root (the folder holding {TINY.parts[0]}/)")
    n = 0
    for wnid in sorted(p.name for p in src.iterdir())[:classes]:
        (out / "train" / wnid).mkdir(parents=True)
        (out / "val" / wnid).mkdir(parents=True)  # a small test split: the folder is a complete ImageFolder dataset
        files = sorted((src / wnid / "images").iterdir())
        for f in files[:per_class]:
            shutil.copy(f, out / "train" / wnid / f.name)
            n += 1
        for f in files[per_class : per_class + 4]:
            shutil.copy(f, out / "val" / wnid / f.name)
    return n


def epoch(loader, model=None) -> tuple[int, float]:
    t0, n = time.perf_counter(), 0
    for batch in loader:
        if model is not None:
            with torch.no_grad():
                model(batch["image"])
        n += len(batch["index"])
    return n, time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    ap.add_argument("--classes", type=int, default=12)
    ap.add_argument("--per-class", type=int, default=96, help="train images a class (the mini has 100)")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2, help="decoding processes (decode once and streaming)")
    ap.add_argument("--model", action="store_true", help="also run a MobileNetV3-Small forward per batch")
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="cktf-bench-") as tmp:
        folder, cache = Path(tmp) / "folder", Path(tmp) / "cache"
        n = build_folder(args.root, args.classes, args.per_class, folder)
        base = dict(dataset="imagenet_style", root=str(folder), image_size=args.size, val_fraction=0.0)
        cfg = DataConfig(**base, cache_dir=str(cache), decode_workers=args.workers, object_store_gb=100.0)
        t0 = time.perf_counter()
        decoded = load_splits(cfg, progress=False)
        decode_s = time.perf_counter() - t0
        streamed = load_splits(cfg.replace(object_store_gb=1e-9), progress=False)
        assert not isinstance(decoded.train, StreamDataset) and isinstance(streamed.train, StreamDataset)
        model = None
        if args.model:
            from cktf.models import create_model

            model = create_model("tv:mobilenet_v3_small", args.classes).eval()
        common = dict(batch_size=args.batch, train=True)
        epoch(make_loader(decoded.train, decoded.spec, **common), model)  # warm-up: torch's first calls, untimed
        rows = [("decode once (into the cache)", len(decoded.train) + len(decoded.test), decode_s)]
        rows.append(("epoch, decoded split", *epoch(make_loader(decoded.train, decoded.spec, **common), model)))
        for w in (args.workers, 0):
            loader = StreamLoader(streamed.train, streamed.spec, workers=w, **common)
            rows.append((f"epoch, streamed ({w} decoding workers)", *epoch(loader, model)))
    side = decoded.train.images.shape[1]
    print(
        f"{n} train JPEGs of Tiny-ImageNet-mini ({args.classes} classes), stored at {side} px, trained at "
        f"{args.size} px, batch {args.batch}, 1 torch thread{', + MobileNetV3-Small forward' if model else ''}"
    )
    print(f"{'path':<40} {'images':>7} {'seconds':>8} {'img/s':>8}")
    for name, count, secs in rows:
        print(f"{name:<40} {count:>7} {secs:>8.2f} {count / secs:>8.1f}")
    ref = rows[1][1] / rows[1][2]
    for name, count, secs in rows[2:]:
        print(f"{name} / decoded: {count / secs / ref:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
