"""``cktf tune FILE --dry-run``: a checked study described before anything runs (no Ray, nothing written).

What it shows: the pair and the data as decoded, the search (trials, epochs, sampler, scheduler, what a trial's score
is), the space with trial 0 (the official defaults, and which of their fields lie outside the space), the
confirmation, the resources, where the results go, and the cost: an upper bound of the trials' training (every
trial to its last epoch; ASHA stops some), the teacher's, the confirmation's, as FLOPs and GPU-hours at a documented
throughput (:mod:`.cost`).
"""

from __future__ import annotations

import math
from typing import Any

from ...distillers import SUPERVISED
from .cost import DataShape, StepSpec, effective_throughput, gpu_hours_text, si, step_flops
from .validate import StudyPlan


def _space_lines(plan: StudyPlan) -> list[str]:
    out = []
    defaults = {k: v for b in plan.baselines for k, v in b.items() if k != "distiller"}
    for name, spec in sorted(plan.space.items()):
        what = (
            f"{spec.type} {list(spec.choices)}"
            if spec.type == "categorical"
            else f"{spec.type} [{spec.low:g}, {spec.high:g}]"
        )
        base = defaults.get(name, "(each method's)" if name == "distiller" else "(sampled)")
        dev = plan.baseline_deviations.get(name)
        note = f"  (official {dev['official']}: outside the space)" if dev else ""
        out.append(f"    {name:<18} {what:<40} {base}{note}")
    return out


def _methods(plan: StudyPlan) -> str:
    return " | ".join(plan.methods) + " (the method searched too)" if plan.methods else str(plan.study.distiller)


def cost(plan: StudyPlan) -> dict[str, Any]:
    """The study's FLOPs: trials (to their last epoch), teacher (when it trains), confirmation runs. A study over
    methods is bounded by its dearest method's trial (the sampler may choose it every time), its confirmation by
    each method's runs."""
    if plan.methods:
        each = [cost(sub) for sub in plan.methods.values()]
        out = max(each, key=lambda c: c["trial_flops"])
        runs = sum(c["confirm_runs"] for c in each)
        return {
            **out,
            "search_flops": out["trial_flops"] * plan.num_trials,
            "confirm_runs": runs,
            "confirm_flops": sum(c["confirm_flops"] for c in each),
            "teacher_flops": max(c["teacher_flops"] for c in each),
        }
    cfg, splits = plan.study, plan.splits
    n_train = len(splits.train)
    evals = (len(splits.val) if splits.val is not None else 0) + (len(splits.test) if cfg.train.eval_test else 0)
    data = DataShape(splits.image_size, splits.num_classes or 1, n_train)
    params = {**cfg.params, **{k: v for k, v in plan.baseline.items() if k.partition(".")[0] not in ("optim", "train")}}
    train, ev, init = step_flops(
        StepSpec(cfg.student, plan.teacher_arch, cfg.distiller, params, cfg.train.batch_size), data
    )
    steps = math.ceil(n_train / cfg.train.batch_size)
    if cfg.train.max_steps_per_epoch:
        steps = min(steps, cfg.train.max_steps_per_epoch)
    per_trial = (cfg.max_t + init) * steps * train + cfg.max_t * evals * ev
    confirm_runs = 0
    if cfg.confirm is not None:
        confirm_runs = (cfg.confirm.top_k + int(cfg.confirm.defaults)) * cfg.confirm.seeds
    teacher = 0.0
    trains_teacher = bool(cfg.teacher.arch) and not (cfg.teacher.weights and not cfg.teacher.finetune)
    if cfg.objective.needs_teacher and trains_teacher:
        t = cfg.teacher.train
        tt, te, _ = step_flops(StepSpec(cfg.teacher.arch, None, SUPERVISED, {}, t.batch_size), data)
        t_steps = math.ceil(n_train / t.batch_size)
        if t.max_steps_per_epoch:
            t_steps = min(t_steps, t.max_steps_per_epoch)
        teacher = t.epochs * (t_steps * tt + evals * te)
    return {
        "step_flops": train,
        "steps_per_epoch": steps,
        "trial_flops": per_trial,
        "search_flops": per_trial * plan.num_trials,
        "confirm_runs": confirm_runs,
        "confirm_flops": per_trial * confirm_runs,
        "teacher_flops": teacher,
    }


def describe(plan: StudyPlan, gpu: str = "a100") -> str:
    """The dry run's printout."""
    cfg, splits = plan.study, plan.splits
    teacher = plan.teacher_arch or "no teacher"
    val = len(splits.val) if splits.val is not None else 0
    lines = [
        f"study {cfg.name}: a dry run (checked against the data; nothing ran, Ray was not started, nothing written)",
        f"  pair: {teacher} -> {cfg.student} on {cfg.data.dataset} "
        f"({len(splits.train):,} train, {val:,} val, {len(splits.test):,} test images, {splits.image_size} px)",
        f"  search: {plan.num_trials} trials of {_methods(plan)}, {cfg.sampler.name} (seed {cfg.sampler.seed}), ASHA "
        f"(grace {cfg.asha.grace_period}, x{cfg.asha.reduction_factor:g}), up to {cfg.max_t} epochs each; "
        f"score = {cfg.search.metric} at its {'last' if plan.selection == 'last_epoch' else 'best'} epoch "
        f"({cfg.search.mode})",
        "  space (name, range, trial 0: the official defaults, run first"
        + (")" if not plan.baseline_deviations else "; not quite: the fields marked lie outside the space)"),
        *_space_lines(plan),
    ]
    if cfg.confirm is not None:
        c = cfg.confirm
        lines.append(
            f"  confirmation: the top {c.top_k}{' + the defaults' if c.defaults else ''}"
            f"{' of each method' if plan.methods else ''} over {c.seeds} new seeds "
            f"(seeds {c.seed_base}..{c.seed_base + c.seeds - 1})"
        )
    r = cfg.resources
    lines.append(
        f"  resources: per trial {r.cpu:g} CPU, {r.gpu:g} GPU, "
        f"{cfg.max_concurrent or 'as many as fit'} at once; retries {cfg.max_failures}"
    )
    lines.append(
        f"  results: {cfg.folder}; Ray storage {cfg.ray_storage}; MLflow {cfg.mlflow.tracking_uri} "
        f"(experiment {cfg.experiment})"
    )
    c = cost(plan)
    tflops, text = effective_throughput(gpu, cfg.train.bf16)
    total = c["search_flops"] + c["confirm_flops"] + c["teacher_flops"]
    hours = total / (tflops * 1e12) / 3600.0
    lines += [
        f"  cost: {si(c['step_flops'])}FLOP per training step x {c['steps_per_epoch']} steps per epoch; search "
        f"{si(c['search_flops'])}FLOP at most (every trial to its last epoch; ASHA stops some), confirmation "
        f"{c['confirm_runs']} runs {si(c['confirm_flops'])}FLOP, teacher {si(c['teacher_flops'])}FLOP",
        f"  estimate: {gpu_hours_text(hours)} GPU-hours at {text}",
        "    an ESTIMATE from a documented throughput, not a measurement: small models use a GPU less well than "
        "ResNet-50, so expect more",
    ]
    return "\n".join(lines)


__all__ = ["cost", "describe"]
