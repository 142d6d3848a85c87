"""Every distillation objective side by side: step time relative to KD, and a short real run of each.

Part 1 (timing): one optimiser step (teacher forward, student forward with features, every loss term,
backward, SGD) at the paper's batch 64 on real CIFAR-10 batches, for each objective, interleaved in
rounds so machine noise hits every method alike; prints median ms/step and the ratio to ``kd``.
Part 2 (runs, ``--epochs > 0``): trains a teacher once, then every objective for a few epochs through
the normal trainer on a CIFAR-10 slice, and prints each one's test accuracy and wall time.

    .venv/bin/python benchmarks/distill_methods.py --root ../shared/data                # timing only
    .venv/bin/python benchmarks/distill_methods.py --root ../shared/data --epochs 1     # + short runs
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from pathlib import Path

import torch

from cktf.data import BatchLoader, ContrastConfig, DataConfig, load_splits
from cktf.distillers import DISTILLERS, DistillContext, build_distiller, objective_names, split_name
from cktf.models import create_model
from cktf.train import OptimConfig, RunConfig, TrainConfig, fit, prepare_run


def method_params(name: str, nce_k: int, init_epochs: int) -> dict:
    """Small-run overrides: the negative count of contrastive primaries, short init stages."""
    primary, secondary = split_name(name)
    out: dict = {}
    for method, prefix in ((primary, ""), (secondary, f"{secondary}.")):
        if method is None:
            continue
        fields = DISTILLERS.get(method).config_cls.__dataclass_fields__
        if "nce_k" in fields:
            out[prefix + "nce_k"] = nce_k
        if "init_epochs" in fields:
            out[prefix + "init_epochs"] = init_epochs
    return out


#: exact alternatives to the official gathered scoring of CRD/CKTF, timed next to it with --scoring-variants
SCORING_VARIANTS = {"low_memory": {"low_memory": True}, "dense": {"dense_scores": True}}


def timing_variants(names: list[str], with_scoring: bool) -> list[tuple[str, str, dict]]:
    """(label, objective, extra primary params): each objective, plus its scoring variants when contrastive."""
    out = []
    for name in names:
        out.append((name, name, {}))
        primary, _ = split_name(name)
        if with_scoring and "dense_scores" in DISTILLERS.get(primary).config_cls.__dataclass_fields__:
            out += [(f"{name} [{label}]", name, extra) for label, extra in SCORING_VARIANTS.items()]
    return out


def time_steps(args, splits, names: list[str]) -> None:
    device = torch.device(args.device)
    ctx = DistillContext(num_classes=splits.num_classes, num_train_samples=len(splits.train), image_size=32)
    builds = {}
    variants = timing_variants(names, args.scoring_variants)
    for label, name, extra in variants:
        torch.manual_seed(0)
        student = create_model(args.student, splits.num_classes)
        teacher = create_model(args.teacher, splits.num_classes).eval()
        params = {**method_params(name, args.timing_nce_k, 1), **extra}
        d = build_distiller(name, student, teacher, params, ctx).to(device)
        k = d.contrast_negatives()
        loader = BatchLoader(
            splits.train,
            spec=splits.spec,
            batch_size=64,
            train=True,
            device=device,
            contrast=ContrastConfig(k=k, replace=True) if k else None,  # N may exceed a slice's pool; not timed
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
                loss = sum(d(batch).losses.values())
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                if step >= args.warmup:
                    times[name].append(time.perf_counter() - t0)
    base = statistics.median(times["kd"]) if "kd" in times else None
    print(
        f"\nstep time, batch 64, {args.teacher} -> {args.student}, N={args.timing_nce_k}, device {device}, "
        f"{args.rounds} rounds x {args.steps} steps (median)"
    )
    print("| objective | ms/step | x KD |\n|---|---|---|")
    for label in builds:
        med = statistics.median(times[label]) * 1000
        ratio = f"{med / (base * 1000):.2f}" if base else "-"
        print(f"| {label} | {med:.1f} | {ratio} |")


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
        cfg = dataclasses.replace(
            base,
            student=args.student,
            distiller=name,
            teacher_checkpoint=teacher["weights_best"],
            distill_params=method_params(name, args.nce_k, 1),
            out_dir=str(out / name),
            train=dataclasses.replace(base.train, epochs=args.epochs),
        )
        t0 = time.perf_counter()
        summary = fit(prepare_run(cfg, splits=splits))
        print(f"| {name} | {summary['test_acc']:.2f} | {time.perf_counter() - t0:.0f} |", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default="../shared/data", help="data root holding cifar10-jpeg/")
    p.add_argument("--teacher", default="resnet14")
    p.add_argument("--student", default="resnet8")
    p.add_argument("--methods", default="", help="comma-separated objectives (default: every one listed)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--train-subset", type=int, default=5000)
    p.add_argument("--timing-nce-k", type=int, default=16384, help="negatives for the timing part (paper: 16384)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--epochs", type=int, default=0, help="short-run epochs per objective (0 = timing only)")
    p.add_argument("--teacher-epochs", type=int, default=3)
    p.add_argument("--nce-k", type=int, default=4096, help="negatives for the short runs")
    p.add_argument("--out-dir", default="runs/bench-methods")
    p.add_argument("--scoring-variants", action="store_true", help="also time CRD/CKTF with low_memory / dense_scores")
    args = p.parse_args()
    names = [n for n in (args.methods.split(",") if args.methods else objective_names()) if n and n != "ce"]
    data = DataConfig(dataset="cifar10", root=args.root, train_subset=args.train_subset, test_subset=2000)
    splits = load_splits(data)
    time_steps(args, splits, names)
    if args.epochs > 0:
        short_runs(args, data, splits, names)


if __name__ == "__main__":
    main()
