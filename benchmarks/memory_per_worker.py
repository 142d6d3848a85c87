"""The contrastive memory every worker holds: ``memory: bank`` (the official code's: N_data x d per side and critic)
against ``memory: queue`` (the last K keys per side and critic, docs/algorithm.md §13), computed at CIFAR-100's and
ImageNet-1k's sizes, and measured on distillers built here (the bytes of their buffers, and the process's resident
memory before and after building them).

    .venv/bin/python benchmarks/memory_per_worker.py           # prints a markdown table

Every worker of a data-parallel trial holds all of it (the banks are identical on every worker): the study
validation checks it against a worker's GPU share before Ray starts (docs/architecture.md).
"""

from __future__ import annotations

import argparse
import resource
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cktf.distillers import DistillContext, build_distiller, objective  # noqa: E402
from cktf.losses.contrastive import built_memory_bytes, contrast_memory_bytes  # noqa: E402
from cktf.models import create_model  # noqa: E402

#: (setting, teacher, student, N_data, classes, image size): CIFAR-100's train split, ImageNet-1k's
CASES = (
    ("CIFAR-100, resnet32x4 -> resnet8x4", "resnet32x4", "resnet8x4", 50_000, 100, 32),
    ("ImageNet-1k, tv:resnet50 -> tv:mobilenet_v3_small", "tv:resnet50", "tv:mobilenet_v3_small", 1_281_167, 1000, 224),
)


def _rss_mib() -> float:
    """The process's resident memory now (Linux ``/proc/self/statm``)."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize() / 2**20


def built_bytes(teacher: str, student: str, n: int, classes: int, size: int, params: dict) -> tuple[int, float]:
    """The bytes of the memory buffers of a CKTF distiller built for ``n`` images, and how much the process's
    resident memory grew with it (MiB; the models' weights included)."""
    before = _rss_mib()
    ctx = DistillContext(num_classes=classes, num_train_samples=n, image_size=size)
    d = build_distiller("cktf", create_model(student, classes), create_model(teacher, classes), params, ctx)
    total = built_memory_bytes(d)
    grown = _rss_mib() - before
    del d
    return total, grown


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--feat-dim", type=int, default=128)
    ap.add_argument("--nce-k", type=int, default=16_384)
    ap.add_argument("--measure-n", type=int, default=50_000, help="N_data of the distillers built here")
    a = ap.parse_args(argv)
    d, k = a.feat_dim, a.nce_k
    print(f"CKTF, d = {d}, K = {k}, fp32, both sides (student and teacher keys) of every critic\n")
    print("| setting | critics | N_data | bank per worker | queue per worker | bank / queue |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, _teacher, student, n, classes, _size in CASES:
        critics = len(create_model(student, classes).feature_info) + 1  # stem + stages + the final critic
        bank = contrast_memory_bytes("bank", d, n, k, critics)
        queue = contrast_memory_bytes("queue", d, n, k, critics)
        assert bank == objective("cktf").memory_bytes({"feat_dim": d, "nce_k": k}, n, critics - 2)
        sizes = f"{bank / 2**20:,.0f} MiB | {queue / 2**20:,.0f} MiB | {bank / queue:.1f}x"
        print(f"| {label} | {critics} | {n:,} | {sizes} |")
    label, teacher, student, _, classes, size = CASES[0]
    n = a.measure_n
    print(f"\nMeasured here: CKTF distillers built for {label} at N_data = {n:,}\n")
    print("| memory | computed | buffers built | resident memory growth (models too) |")
    print("|---|---:|---:|---:|")
    for memory in ("bank", "queue"):
        params = {"feat_dim": d, "nce_k": k, "memory": memory}
        got, rss = built_bytes(teacher, student, n, classes, size, params)
        critics = len(create_model(student, classes).feature_info) + 1
        want = contrast_memory_bytes(memory, d, n, k, critics)
        print(f"| {memory} | {want / 2**20:,.1f} MiB | {got / 2**20:,.1f} MiB | {rss:,.0f} MiB |")


if __name__ == "__main__":
    main()
