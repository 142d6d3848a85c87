"""The cost of a campaign before it is launched (``cktf campaign FILE --dry-run``): it informs, it refuses nothing
(the counting and the throughput figures are a study's too: :mod:`cktf.tune.plan.cost`).

* **Runs**: pairs x methods x seeds, plus each tuned cell x seeds; and the teachers still to train (teachers shared
  by several pairs, or already in the teacher cache, are counted once or not at all).
* **Images x epochs** per run: the train split's size (after ``train_subset`` and the validation hold-out; the
  official size when the data is not on this machine, said so) times the epochs.
* **FLOPs per training step** of every cell: one real step of the cell's distiller (teacher forward, student forward
  and backward, heads and critics) counted by ``torch.utils.flop_counter.FlopCounterMode`` on the CPU at a batch of
  2, scaled to ``train.batch_size`` (convolutions and the contrastive scores are linear in the batch). Evaluation (a
  student forward on the val and test splits per epoch) and the AB/FT/FSP initialisation epochs are added.
* **GPU-hours**: the FLOPs over an *effective* training throughput from :data:`THROUGHPUT`, a documented figure: the
  PyTorch ResNet-50 v1.5 training throughput NVIDIA publishes for one GPU, times ResNet-50's training FLOPs per
  image counted the same way (:data:`RESNET50_TRAIN_GFLOP`). It is an estimate, labelled so: no GPU measurement of
  these models exists yet, and small 32x32 models at batch 64 use a GPU less well than ResNet-50 at batch 256, so a
  real campaign takes longer. ``estimate.effective_tflops`` replaces the figure with a measured one (e.g. from
  ``benchmarks/device_check.py``).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from ..data import DATASETS
from ..tune.plan.cost import (  # noqa: F401  (RESNET50_TRAIN_GFLOP, StepSpec, DataShape: read through here too)
    OFFICIAL_SIZES,
    RESNET50_TRAIN_GFLOP,
    THROUGHPUT,
    DataShape,
    StepSpec,
    effective_throughput,
    gpu_hours_text,
    si,
    step_flops,
)
from .plan import CampaignPlan, cell_id


@dataclass(frozen=True)
class Sizes:
    train: int
    val: int
    test: int
    measured: bool  # from the decoded data (else the official sizes)


@dataclass
class CellCost:
    pair: str
    label: str
    distiller: str
    step_flops: float  # one training step at train.batch_size
    eval_flops_per_image: float
    steps_per_epoch: int
    epochs: int
    init_epochs: int
    runs: int

    @property
    def run_flops(self) -> float:
        return (self.epochs + self.init_epochs) * self.steps_per_epoch * self.step_flops

    def eval_flops(self, images: int) -> float:
        return self.epochs * images * self.eval_flops_per_image


@dataclass
class CostReport:
    campaign: str
    num_runs: int
    shape: str  # how the count comes about
    sizes: dict[str, Sizes]  # pair -> sizes
    epochs: dict[str, int]  # pair -> student epochs
    cells: list[CellCost]
    teachers: list[dict[str, Any]]  # per teacher to train: pairs, arch, flops, status
    effective_tflops: float
    throughput_text: str
    notes: list[str] = field(default_factory=list)

    @property
    def images_x_epochs(self) -> int:
        return sum(self.sizes[c.pair].train * c.epochs * c.runs for c in self.cells)

    @property
    def run_flops(self) -> float:
        return sum(
            (c.run_flops + c.eval_flops(self.sizes[c.pair].val + self.sizes[c.pair].test)) * c.runs for c in self.cells
        )

    @property
    def teacher_flops(self) -> float:
        return sum(t["flops"] for t in self.teachers if t["status"] == "to train")

    def gpu_hours(self, flops: float) -> float:
        return flops / (self.effective_tflops * 1e12) / 3600.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "campaign": self.campaign,
            "num_runs": self.num_runs,
            "images_x_epochs": self.images_x_epochs,
            "run_flops": self.run_flops,
            "teacher_flops": self.teacher_flops,
            "gpu_hours_runs": self.gpu_hours(self.run_flops),
            "gpu_hours_teachers": self.gpu_hours(self.teacher_flops),
            "effective_tflops": self.effective_tflops,
            "cells": [{**vars(c), "run_flops": c.run_flops} for c in self.cells],
            "teachers": self.teachers,
            "sizes": {k: vars(v) for k, v in self.sizes.items()},
            "notes": self.notes,
        }


def split_sizes(plan: CampaignPlan, pair: str) -> Sizes:
    """The pair's train/val/test sizes: from its decoded splits, else from the official sizes and the data config."""
    key = plan.pair_data[pair]
    splits = plan.splits.get(key)
    if splits is not None:
        val = len(splits.val) if splits.val is not None else 0
        return Sizes(len(splits.train), val, len(splits.test), True)
    dcfg = plan.data_configs[key]
    n, test = OFFICIAL_SIZES.get(dcfg.dataset, (0, 0))
    if dcfg.train_subset:
        n = min(n, dcfg.train_subset) if n else dcfg.train_subset
    if dcfg.test_subset:
        test = min(test, dcfg.test_subset) if test else dcfg.test_subset
    val = 0 if dcfg.drop_labels else int(round(n * dcfg.val_fraction))
    return Sizes(n - val, val, test, False)


def _num_classes(plan: CampaignPlan, pair: str) -> int:
    splits = plan.splits.get(plan.pair_data[pair])
    if splits is not None:
        return splits.num_classes
    return DATASETS.get(plan.data_configs[plan.pair_data[pair]].dataset).num_classes or 10


def _image_size(plan: CampaignPlan, pair: str) -> int:
    splits = plan.splits.get(plan.pair_data[pair])
    if splits is not None:
        return splits.image_size
    dcfg = plan.data_configs[plan.pair_data[pair]]
    return dcfg.image_size or DATASETS.get(dcfg.dataset).image_size or 32


def throughput(plan: CampaignPlan) -> tuple[float, str]:
    """Effective training TFLOP/s and the sentence saying where it comes from."""
    cfg = plan.campaign
    return effective_throughput(cfg.estimate.gpu, bool(cfg.train.bf16), cfg.estimate.effective_tflops)


def estimate(plan: CampaignPlan, cache: Any = None) -> CostReport:
    """The :class:`CostReport` of ``plan`` (``cache``: a TeacherCache to tell teachers already trained)."""
    cfg = plan.campaign
    sizes = {p.label: split_sizes(plan, p.label) for p in cfg.pairs}
    notes = list(plan.notes)
    unread = sorted({cfg.pair_data(p).dataset for p in cfg.pairs if not sizes[p.label].measured})
    if unread:
        notes.append(f"{', '.join(unread)}: not read here, so counted at the official split sizes")
    memo: dict[str, tuple[float, float, int]] = {}
    cells: list[CellCost] = []
    epochs: dict[str, int] = {}
    for p in cfg.pairs:
        size, classes, n = _image_size(plan, p.label), _num_classes(plan, p.label), sizes[p.label].train
        for c in plan.columns_of(p.label):
            study = plan.cells.get(cell_id(p.label, c.slug))
            runs = [r for r in plan.runs if r.pair == p.label and r.label == c.label]
            if study is None:
                notes.append(f"{p.label} / {c.label}: not built (its study is not finished), not counted")
                continue
            teacher = plan.teachers[p.label].arch if study.objective.needs_teacher else None
            params = {
                **study.params,
                **{k: v for k, v in c.point.items() if "." not in k or k.split(".")[0] not in ("optim", "train")},
            }
            batch = int(c.point.get("train.batch_size", study.train.batch_size))
            step, shape = StepSpec(study.student, teacher, study.distiller, params, batch), DataShape(size, classes, n)
            sig = json.dumps([asdict(step), asdict(shape)], default=str)
            if sig not in memo:
                memo[sig] = step_flops(step, shape)
            train, ev, init = memo[sig]
            steps = math.ceil(n / batch)
            if study.train.max_steps_per_epoch:
                steps = min(steps, study.train.max_steps_per_epoch)
            epochs[p.label] = study.train.epochs
            cells.append(
                CellCost(p.label, c.label, study.distiller, train, ev, steps, study.train.epochs, init, len(runs))
            )
    teachers = _teachers(plan, sizes, cache)
    tflops, text = throughput(plan)
    shape = f"{len(cfg.pairs)} pairs x {len(cfg.methods)} methods x {len(cfg.seeds)} seeds"
    if cfg.tuned:
        shape += f" + {len(cfg.tuned)} tuned cells x {len(cfg.seeds)} seeds"
    return CostReport(cfg.name, plan.num_runs, shape, sizes, epochs, cells, teachers, tflops, text, notes)


def _teachers(plan: CampaignPlan, sizes: dict[str, Sizes], cache: Any) -> list[dict[str, Any]]:
    """One entry per distinct teacher to obtain: its pairs, FLOPs to train it and whether it must be trained."""
    from ..tune.run.teacher import teacher_keys

    keys = teacher_keys(plan) if all(n.data in plan.splits for n in plan.teachers.values()) else {}
    groups: dict[str, list[str]] = {}
    for pair, need in plan.teachers.items():
        if need.checkpoint:
            continue
        ident = (
            keys[pair].digest
            if pair in keys
            else json.dumps(
                [need.arch, need.data, need.study.teacher.optim.to_dict(), need.study.teacher.train.to_dict()],
                default=str,
            )
        )
        groups.setdefault(ident, []).append(pair)
    out = []
    for pairs in groups.values():
        need = plan.teachers[pairs[0]]
        tr = need.study.teacher.train
        n = sizes[pairs[0]]
        train, ev, _ = step_flops(
            StepSpec(need.arch, None, "ce", {}, tr.batch_size),
            DataShape(_image_size(plan, pairs[0]), _num_classes(plan, pairs[0]), n.train),
        )
        steps = math.ceil(n.train / tr.batch_size)
        flops = tr.epochs * (steps * train + (n.val + n.test) * ev)
        status = "to train"
        if cache is not None and pairs[0] in keys and cache.lookup(keys[pairs[0]]) is not None:
            status = "in the cache"
        elif not keys:
            status = "to train"  # the key needs the data; without it the cache cannot be asked
        out.append(
            {
                "pairs": pairs,
                "arch": need.arch,
                "epochs": tr.epochs,
                "step_flops": train,
                "flops": flops,
                "status": status,
                "key": keys[pairs[0]].short if pairs[0] in keys else "",
            }
        )
    return out


def format_cost(r: CostReport) -> str:
    """The dry run's printout."""
    lines = [f"campaign {r.campaign}: {r.num_runs} runs ({r.shape})"]
    to_train = [t for t in r.teachers if t["status"] == "to train"]
    lines.append(
        f"teachers: {len(r.teachers)} distinct, {len(to_train)} to train, "
        f"{len(r.teachers) - len(to_train)} in the cache"
    )
    lines.append("")
    labels: list[str] = []
    for c in r.cells:
        if c.label not in labels:
            labels.append(c.label)
    wide = len(labels) > 8  # one line per pair and method instead of a column per method
    head = f"{'pair':<28} {'train imgs':>10} {'epochs':>6} {'imgs x epochs':>13}  "
    head += f"{'method':<14} {'FLOP/step':>11}" if wide else " ".join(f"{x[:10]:>10}" for x in labels)
    lines.append("FLOPs per training step (batch as trained; torch.utils.flop_counter on the CPU at batch 2, scaled)")
    lines.append(head)
    for pair, s in r.sizes.items():
        row = {c.label: c for c in r.cells if c.pair == pair}
        ep = r.epochs.get(pair, 0)
        mark = "" if s.measured else "*"
        lead = f"{pair[:28]:<28} {s.train:>9,}{mark:1} {ep:>6} {s.train * ep:>13,}  "
        if wide:
            for i, (label, c) in enumerate(row.items()):
                lines.append(
                    (lead if i == 0 else " " * len(lead)) + f"{label[:14]:<14} {si(c.step_flops) + 'FLOP':>11}"
                )
            continue
        cells = " ".join(f"{(si(row[x].step_flops) + 'FLOP') if x in row else '-':>10}" for x in labels)
        lines.append(lead + cells)
    if any(not s.measured for s in r.sizes.values()):
        lines.append("  * the official split size (the data is not on this machine)")
    for t in r.teachers:
        lines.append(
            f"teacher {t['arch']} ({', '.join(t['pairs'])}): {t['epochs']} epochs, {si(t['step_flops'])}FLOP/step, "
            f"{si(t['flops'])}FLOP in all, {t['status']}"
        )
    lines.append("")
    lines.append(f"runs: {r.images_x_epochs:,} images x epochs, {si(r.run_flops)}FLOP (training + evaluation)")
    lines.append(f"teachers to train: {si(r.teacher_flops)}FLOP")
    total = r.run_flops + r.teacher_flops
    lines.append(
        f"estimate: {gpu_hours_text(r.gpu_hours(total))} GPU-hours ({gpu_hours_text(r.gpu_hours(r.run_flops))} runs + "
        f"{gpu_hours_text(r.gpu_hours(r.teacher_flops))} teachers) at {r.throughput_text}"
    )
    lines.append(
        "  an ESTIMATE from a documented throughput, not a measurement: no GPU measurement of these models exists "
        "yet, and small models at batch 64 use a GPU less well than ResNet-50, so expect more"
    )
    for n in r.notes:
        lines.append(f"note: {n}")
    return "\n".join(lines)


__all__ = ["OFFICIAL_SIZES", "THROUGHPUT", "CostReport", "estimate", "format_cost", "step_flops", "throughput"]
