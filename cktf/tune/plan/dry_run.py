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

from ...data import DATASETS
from ...distillers import SUPERVISED
from ...errors import ConfigError, DataNotFoundError
from .cost import (
    OFFICIAL_CLASSES,
    OFFICIAL_SIZES,
    DataShape,
    StepSpec,
    effective_throughput,
    gpu_hours_text,
    si,
    step_flops,
)
from .schema import StudyConfig
from .validate import StudyPlan, gpu_memory_budget, plan_study

#: the dry run's note when the data is not on this machine
UNREAD = "data.unread"


def dry_plan(cfg: StudyConfig) -> StudyPlan:
    """The study checked against its data; when the data is not on this machine (a GPU cluster's dataset described
    from a laptop), planned at the dataset's official split sizes instead: the space, defaults and cost, not the
    checks that read images (said so in the printout)."""
    try:
        return plan_study(cfg, progress=False)
    except DataNotFoundError as exc:
        return unread_plan(cfg, str(exc).split(";")[0])


def unread_plan(cfg: StudyConfig, why: str) -> StudyPlan:
    """A plan without the data: the splits' sizes from :data:`~.cost.OFFICIAL_SIZES` (``train_subset``,
    ``val_fraction`` and ``test_subset`` applied), its image size and class count from the study and the registry."""
    from types import SimpleNamespace

    from ...models import create_model
    from ..results.reader import BEST_EPOCH
    from .baseline import baseline_point
    from .validate import check_contrast_memory

    d = cfg.data
    if d.dataset not in OFFICIAL_SIZES:
        raise ConfigError(
            "data.root", f"{why}; the dry run needs the data, or a dataset of known size", "point data.root at it"
        )
    n, test = OFFICIAL_SIZES[d.dataset]
    n = min(n, d.train_subset) if d.train_subset else n
    test = min(test, d.test_subset) if d.test_subset else test
    val = int(round(n * d.val_fraction))
    size = cfg.image_size or 224
    classes = DATASETS.get(d.dataset).num_classes or OFFICIAL_CLASSES.get(d.dataset, 1000)
    splits = SimpleNamespace(
        train=range(n - val), val=range(val), test=range(test), image_size=size, num_classes=classes
    )
    subs = {}
    for m in cfg.method_names:
        sub = cfg.study_for(m) if cfg.methods else cfg
        stages = len(create_model(sub.student, num_classes=classes).feature_info) - 1
        baseline = baseline_point(sub, size)
        subs[m] = StudyPlan(
            study=sub,
            splits=splits,
            probe_splits=None,
            teacher_arch=sub.teacher.arch,
            image_size=size,
            space=sub.space,
            baseline=baseline,
            metrics=(),
            selection=BEST_EPOCH,
            run_params={UNREAD: why},
            memory_bytes=check_contrast_memory(sub, splits, sub.space, baseline, stages),
        )
    if not cfg.methods:
        return subs[cfg.method_names[0]]
    first = next(iter(subs.values()))
    return StudyPlan(
        study=cfg,
        splits=splits,
        probe_splits=None,
        teacher_arch=first.teacher_arch,
        image_size=size,
        space=cfg.space,
        baseline={},
        metrics=(),
        selection=BEST_EPOCH,
        run_params={UNREAD: why},
        memory_bytes=max(p.memory_bytes for p in subs.values()),
        methods=subs,
    )


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
    unread = plan.run_params.get(UNREAD)
    checked = (
        f"the data is not on this machine ({unread}): counted at {cfg.data.dataset}'s official split sizes, the "
        "checks that read images not run"
        if unread
        else "checked against the data"
    )
    lines = [
        f"study {cfg.name}: a dry run ({checked}; nothing ran, Ray was not started, nothing written)",
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
    per_trial = f"{r.cpu:g} CPU, {r.gpu:g} GPU"
    if r.parallel:
        per_trial = (
            f"{r.workers} data-parallel workers (Ray Train; {r.cpu_per_worker:g} CPU, {r.gpu_per_worker:g} GPU each; "
            f"global batch {cfg.train.batch_size} = {cfg.train.batch_size // r.workers} per worker)"
        )
    lines.append(
        f"  resources: per trial {per_trial}, {cfg.max_concurrent or 'as many as fit'} at once; "
        f"retries {cfg.max_failures}"
    )
    if plan.memory_bytes:
        budget = gpu_memory_budget(cfg)
        fits = f" of the {budget / 2**30:,.1f} GiB it may use" if budget else " (no GPU size known: not checked)"
        lines.append(
            f"  contrastive memory: {plan.memory_bytes / 2**30:,.2f} GiB on each "
            f"{'worker' if r.parallel else 'trial'} at the space's largest feat_dim and nce_k{fits}"
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
        f"  estimate: {gpu_hours_text(hours)} GPU-hours at {text}"
        + (
            f"; with {r.workers} workers per trial a trial's wall time is about 1/{r.workers} of its GPU time "
            "(less the all-reduce)"
            if r.parallel
            else ""
        ),
        "    an ESTIMATE from a documented throughput, not a measurement: small models use a GPU less well than "
        "ResNet-50, so expect more",
    ]
    return "\n".join(lines)


__all__ = ["cost", "describe"]
