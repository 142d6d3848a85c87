"""Every distillation objective side by side: step time relative to plain CE training and to KD, and short runs.

Part 1 (timing): one optimiser step (teacher forward, student forward with features, every loss term,
backward, SGD) at the paper's batch 64 and N = 16384 negatives on real CIFAR-10 batches (the whole 50k
train split, so the memory banks have CIFAR-100's N_data), for each objective and for plain CE training of
the same student (no teacher), interleaved in rounds so machine noise hits every method alike; prints the
median ms/step, the ratio to ``ce`` and to ``kd``, and whether CKTF meets its target (<= 1.25x KD).
``--scoring-variants`` also times CRD/CKTF with the reference scoring (``gather``: the official op order) next to the
default ``fused``.
Part 2 (runs, ``--epochs > 0``): trains a teacher once, then every objective for a few epochs through
the normal trainer on a CIFAR-10 slice, and prints each one's test accuracy and wall time.

Every objective ``cktf distillers`` lists is included by default (the later methods too: ``dkd``, ``dist``,
``reviewkd``, ``kd-ls``, ``dkd-ls`` and their ``cktf+X``); ``--methods`` picks some.

    .venv/bin/python benchmarks/distill_methods.py --root DATA_ROOT                     # timing, Table 1 pair
    .venv/bin/python benchmarks/distill_methods.py --methods kd,crd,cktf --scoring-variants
    .venv/bin/python benchmarks/distill_methods.py --methods kd,dkd,dist,reviewkd,kd-ls,dkd-ls   # the later methods
    .venv/bin/python benchmarks/distill_methods.py --teacher resnet14 --student resnet8 --epochs 1   # + short runs
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch

from cktf.data import BatchLoader, ContrastConfig, DataConfig, load_splits
from cktf.distillers import DistillContext, build_distiller, objective, objective_names
from cktf.models import create_model
from cktf.train import OptimConfig, RunConfig, TrainConfig, fit, prepare_run
from cktf.train.engine import train_step


def method_params(name: str, nce_k: int, init_epochs: int) -> dict:
    """Small-run overrides: the negative count of contrastive primaries, short init stages."""
    obj = objective(name)
    out: dict = {}
    for method, prefix in ((obj.primary, ""), (obj.secondary, f"{obj.secondary_name}.")):
        if method is None:
            continue
        fields = method.config_cls.model_fields
        if "nce_k" in fields:
            out[prefix + "nce_k"] = nce_k
        if "init_epochs" in fields:
            out[prefix + "init_epochs"] = init_epochs
    return out


#: the official op order of CRD/CKTF (the reference path), timed next to the default ``fused`` with --scoring-variants
SCORING_VARIANTS = ("gather",)
#: the target of issue 6: a CKTF step costs at most this many KD steps on the same pair
CKTF_VS_KD_TARGET = 1.25


def timing_variants(names: list[str], with_scoring: bool) -> list[tuple[str, str, dict]]:
    """(label, objective, extra primary params): plain CE first, each objective, plus its scoring variants."""
    out = [("ce", "ce", {})]
    for name in names:
        out.append((name, name, {}))
        if with_scoring and "scoring" in objective(name).primary.config_cls.model_fields:
            out += [(f"{name} [{sc}]", name, {"scoring": sc}) for sc in SCORING_VARIANTS]
    return out


def time_steps(args, splits, names: list[str]) -> None:
    device = torch.device(args.device)
    ctx = DistillContext(num_classes=splits.num_classes, num_train_samples=len(splits.train), image_size=32)
    builds = {}
    variants = timing_variants(names, args.scoring_variants)
    for label, name, extra in variants:
        torch.manual_seed(0)
        student = create_model(args.student, splits.num_classes)
        teacher = create_model(args.teacher, splits.num_classes).eval() if name != "ce" else None
        params = {**method_params(name, args.timing_nce_k, 1), **extra}
        d = build_distiller(name, student, teacher, params, ctx).to(device)
        k = d.contrast_negatives()
        loader = BatchLoader(
            splits.train,
            spec=splits.spec,
            batch_size=64,
            train=True,
            device=device,
            contrast=ContrastConfig(k=k, replace=k > len(splits.train) // 2) if k else None,  # not timed
        )
        opt = torch.optim.SGD(d.trainable_parameters(), lr=0.01, momentum=0.9)
        builds[label] = (d, iter(_forever(loader)), opt)
    times: dict[str, list[float]] = {label: [] for label in builds}
    for _ in range(args.rounds):
        for name, (d, batches, opt) in builds.items():
            d.train()
            for step in range(args.warmup + args.steps):
                batch = next(batches)  # data time excluded: measure the step itself
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                train_step(d, opt, batch, device)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                if step >= args.warmup:
                    times[name].append(time.perf_counter() - t0)
    best = {label: min(ts) * 1000 for label, ts in times.items()}
    med = {label: statistics.median(ts) * 1000 for label, ts in times.items()}
    n = args.rounds * args.steps
    print(
        f"\nstep time, batch 64, {args.teacher} -> {args.student}, N={args.timing_nce_k}, N_data={len(splits.train)}, "
        f"device {device}, {torch.get_num_threads()} threads, {args.rounds} rounds x {args.steps} steps; "
        "ce = the student alone, every other row includes the teacher forward; ratios use the fastest of the "
        f"{n} steps (what the step costs when the machine does not interfere), the median is shown beside it"
    )
    print("| objective | ms/step (min) | ms/step (median) | x CE | x KD |\n|---|---|---|---|---|")
    for label in builds:
        x_kd = f"{best[label] / best['kd']:.2f}" if "kd" in best else "-"
        print(f"| {label} | {best[label]:.1f} | {med[label]:.1f} | {best[label] / best['ce']:.2f} | {x_kd} |")
    if "kd" in best and "cktf" in best:
        ratio, ratio_med = best["cktf"] / best["kd"], med["cktf"] / med["kd"]
        verdict = "met" if ratio <= CKTF_VS_KD_TARGET else "NOT met"
        print(f"\nCKTF / KD = {ratio:.2f} (median {ratio_med:.2f}; target <= {CKTF_VS_KD_TARGET}): {verdict}")


def _forever(loader):
    while True:
        yield from loader


def short_runs(args, data: DataConfig, splits, names: list[str]) -> None:
    out = Path(args.out_dir)
    base = RunConfig(
        student=args.teacher,
        data=data,
        optim=OptimConfig(lr=0.05, milestones=()),
        out_dir=str(out / "teacher"),
        train=TrainConfig(epochs=args.teacher_epochs, batch_size=64, progress=False, device=args.device),
    )
    teacher = fit(prepare_run(base, splits=splits))
    print(f"\nteacher {args.teacher}: test {teacher['test_acc']:.2f}% after {args.teacher_epochs} epochs")
    print(
        f"\nshort runs: {args.student} student, {args.epochs} epoch(s), {len(splits.train)} train images, "
        f"N={args.nce_k}\n| objective | test acc % | wall s |\n|---|---|---|"
    )
    for name in names:
        cfg = base.replace(
            student=args.student,
            distiller=name,
            teacher_checkpoint=teacher["weights_best"],
            distill_params=method_params(name, args.nce_k, 1),
            out_dir=str(out / name),
            train=base.train.replace(epochs=args.epochs),
        )
        t0 = time.perf_counter()
        summary = fit(prepare_run(cfg, splits=splits))
        print(f"| {name} | {summary['test_acc']:.2f} | {time.perf_counter() - t0:.0f} |", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default=os.environ.get("CKTF_DATA_ROOT", "data"), help="data root holding cifar10-jpeg/")
    p.add_argument("--teacher", default="resnet32x4", help="Table 1's resnet32x4 -> resnet8x4 by default")
    p.add_argument("--student", default="resnet8x4")
    p.add_argument("--methods", default="", help="comma-separated objectives (default: every one listed)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--train-subset", type=int, default=0, help="train images (0 = all 50k: CIFAR-100's N_data)")
    p.add_argument("--timing-nce-k", type=int, default=16384, help="negatives for the timing part (paper: 16384)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--epochs", type=int, default=0, help="short-run epochs per objective (0 = timing only)")
    p.add_argument("--teacher-epochs", type=int, default=3)
    p.add_argument("--nce-k", type=int, default=4096, help="negatives for the short runs")
    p.add_argument("--out-dir", default="runs/bench-methods")
    p.add_argument("--scoring-variants", action="store_true", help="also time CRD/CKTF with gather scoring")
    args = p.parse_args()
    names = [n for n in (args.methods.split(",") if args.methods else objective_names()) if n and n != "ce"]
    data = DataConfig(
        dataset="cifar10", root=args.root, train_subset=args.train_subset or None, test_subset=2000, val_fraction=0
    )
    splits = load_splits(data)
    time_steps(args, splits, names)
    if args.epochs > 0:
        short_runs(args, data, splits, names)


if __name__ == "__main__":
    main()
