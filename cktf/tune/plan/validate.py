"""A study checked against its data and models, resolved once into an immutable :class:`StudyPlan`.

:func:`plan_study` decodes the data (cached, so about a second), checks what needs it -- the models' input sizes,
the negatives each trial may ask for against the label-aware pool, a dry build *and one dry step* of the baseline
trial's distiller on freshly initialised models (pairs a method cannot handle fail now, not in every trial after the
teacher has trained), the selection metric against what a trial reports -- and returns the plan the driver only
executes: the study, the resolved search space and baseline point, the data, and the facts derived from them.
Nothing here starts Ray or trains.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ...data import Splits, load_splits
from ...distillers import DistillContext, Distiller
from ...errors import ConfigError
from ...models import create_model
from ...space import ParamSpec
from ...train.checkpoint import read_weights_meta
from ...train.engine import epoch_metric_names
from ...transfer.probe import QUICK_PROBE_METRICS
from ..results.reader import BEST_EPOCH, LAST_EPOCH
from .baseline import baseline_deviations, baseline_point
from .checks import RECIPE_SECTIONS, under_method
from .schema import METHOD_KEY, StudyConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StudyPlan:
    """Everything a study run needs, checked: the driver reads this and decides nothing else."""

    study: StudyConfig
    splits: Splits
    probe_splits: Splits | None
    teacher_arch: str | None
    image_size: int
    space: Mapping[str, ParamSpec]
    baseline: Mapping[str, Any]
    metrics: tuple[str, ...]  # what every trial reports each epoch (the selection metric is one of them)
    selection: str  # BEST_EPOCH or LAST_EPOCH
    #: what every trial's distiller says about itself besides its config (``<term>/pairing``: official |
    #: generalised, docs/models.md), from the dry step: the pairing depends on the pair and the method, never on a
    #: searched value; logged on the MLflow parent run and every child run
    run_params: Mapping[str, str] = dataclasses.field(default_factory=dict)
    #: the baseline's fields that could not take their official value (outside the space): field -> official, used
    baseline_deviations: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)

    #: the contrastive memory (banks or queues) each worker holds, at the space's largest feat_dim and nce_k
    memory_bytes: int = 0
    #: a study over methods: each method's own plan (its space, baseline, run params), by method
    methods: Mapping[str, StudyPlan] = dataclasses.field(default_factory=dict)

    @property
    def num_trials(self) -> int:
        return self.study.search.num_samples

    @property
    def baselines(self) -> list[dict[str, Any]]:
        """The trials run first: the official defaults (of every method, in a study over methods: ``distiller``
        and its fields as ``<method>.<field>``)."""
        if not self.methods:
            return [dict(self.baseline)] if self.baseline else []
        return [{METHOD_KEY: m, **{f"{m}.{k}": v for k, v in sub.baseline.items()}} for m, sub in self.methods.items()]


def plan_study(cfg: StudyConfig, progress: bool = True) -> StudyPlan:
    """Decode the data, check the study against it and the models, and resolve the plan (see the module doc); a
    study over methods is each method's plan (on the data decoded once) under one."""
    splits = load_splits(cfg.data, progress=progress)
    probe_splits = None
    if cfg.probe is not None:  # the target's labeled splits for the linear probe (transfer studies)
        probe_splits = load_splits(cfg.probe.data, progress=progress)
        if not probe_splits.train.labeled:
            raise ConfigError("probe.data", "its train split has no labels", "point it at the labeled target split")
    if not cfg.methods:
        return _plan_one(cfg, splits, probe_splits)
    subs = {}
    for i, m in enumerate(cfg.method_names):
        try:
            subs[m] = _plan_one(cfg.study_for(m), splits, probe_splits)
        except ConfigError as exc:  # named where the file sets it: methods.<i>
            raise under_method(exc, i, m) from None
    first = next(iter(subs.values()))
    shared = set.intersection(*(set(p.metrics) for p in subs.values()))
    return dataclasses.replace(
        first,
        study=cfg,
        space=cfg.space,
        baseline={},
        metrics=tuple(x for x in first.metrics if x in shared),
        run_params={},
        baseline_deviations={f"{m}.{k}": v for m, p in subs.items() for k, v in p.baseline_deviations.items()},
        memory_bytes=max(p.memory_bytes for p in subs.values()),
        methods=subs,
    )


def _plan_one(cfg: StudyConfig, splits: Splits, probe_splits: Splits | None) -> StudyPlan:
    from ...train.runner import check_arch

    teacher_arch = cfg.teacher.arch
    if cfg.teacher.checkpoint:
        teacher_arch = read_weights_meta(cfg.teacher.checkpoint, "teacher.checkpoint")["arch"]
    size = splits.image_size
    check_arch(cfg.student, size, "student")
    if teacher_arch:
        check_arch(teacher_arch, size, "teacher")
    check_weights(cfg, splits)
    space = cfg.space
    baseline = baseline_point(cfg, size)
    deviations = baseline_deviations(cfg, size) if cfg.search.enqueue_baseline else {}
    for name, dev in deviations.items():  # said before Ray starts; every output that names the defaults says it too
        log.warning(
            "the official defaults: %s=%r lies outside search.space.%s; trial 0 runs with %r instead (widen the space "
            "to include it, or set search.baseline.%s)",
            name,
            dev["official"],
            name,
            dev["used"],
            name,
        )
    distiller, losses = dry_build(cfg, splits, teacher_arch, baseline)
    metrics = epoch_metric_names(
        losses,
        train_acc=_gamma(cfg, baseline, size) > 0,
        val=splits.val is not None and len(splits.val) > 0,
        test=cfg.train.eval_test,
    )
    if cfg.probe is not None:
        metrics += tuple(QUICK_PROBE_METRICS)
    check_metric(cfg, metrics)
    check_negatives(cfg, splits, space, baseline)
    memory = check_contrast_memory(cfg, splits, space, baseline, len(distiller.student.feature_info) - 1)
    return StudyPlan(
        study=cfg,
        splits=splits,
        probe_splits=probe_splits,
        teacher_arch=teacher_arch,
        image_size=size,
        space=space,
        baseline=baseline,
        metrics=metrics,
        selection=LAST_EPOCH if cfg.probe is not None else BEST_EPOCH,
        run_params=distiller.run_params(),
        baseline_deviations=deviations,
        memory_bytes=memory,
    )


def teacher_classes(cfg: StudyConfig, splits: Splits) -> int | None:
    """The class count a teacher used as its weights come (``teacher.weights`` without ``finetune``) must have:
    the data's when the study's data is labeled (logits are compared), else ``None`` (the weights' own; the student's
    head mirrors it, Section 3.2)."""
    return splits.num_classes if splits.train.labeled else None


def check_weights(cfg: StudyConfig, splits: Splits) -> None:
    """The teacher's and the student's weights load here, on the driver, before Ray starts: a missing file, weights
    the library's cache lacks (fetched now with ``teacher.download``), keys that do not fit, or a teacher used as
    it is with another class count than the data's, is a :class:`ConfigError` on ``teacher.weights`` or
    ``student_weights``."""
    from ...models.sources import load_weights, pretrained_model

    t = cfg.teacher
    if t.arch and t.weights and cfg.needs_teacher:
        if t.finetune:
            load_weights(
                create_model(t.arch, num_classes=splits.num_classes or 1),
                t.weights,
                t.download,
                field="teacher.weights",
            )
        else:
            pretrained_model(t.arch, t.weights, teacher_classes(cfg, splits), t.download, field="teacher.weights")
    if cfg.student_weights:
        n = splits.num_classes or 1
        load_weights(create_model(cfg.student, num_classes=n), cfg.student_weights, field="student_weights")


def _method_point(baseline: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in baseline.items() if k.partition(".")[0] not in RECIPE_SECTIONS}


def _gamma(cfg: StudyConfig, baseline: Mapping[str, Any], size: int) -> float:
    return cfg.objective.parse({**cfg.params, **_method_point(baseline)}, size).primary.gamma


def check_metric(cfg: StudyConfig, metrics: tuple[str, ...]) -> None:
    """``search.metric`` must be reported by every trial, and never be a test-split metric."""
    metric = cfg.search.metric
    selectable = [m for m in metrics if "test" not in m.split("_")]
    if metric in metrics and metric not in selectable:
        raise ConfigError(
            "search.metric",
            f"{metric!r} is measured on the test split, which is never used to select",
            f"use one of {', '.join(selectable)}",
        )
    if metric not in metrics:
        raise ConfigError(
            "search.metric", f"{metric!r} is not reported by the trials", f"use one of {', '.join(selectable)}"
        )


def dry_step(
    cfg: StudyConfig, splits: Splits, teacher_arch: str | None, baseline: Mapping[str, Any]
) -> tuple[str, ...]:
    """Build the baseline trial's distiller on freshly initialised models and run one forward step on two random
    images; returns the names of the loss terms it reports. Pair errors (FSP channel mismatches, VGG vs ResNet stage
    pairings, adapters that cannot map a shape) surface here as a :class:`ConfigError` on ``distiller``."""
    return dry_build(cfg, splits, teacher_arch, baseline)[1]


def dry_build(
    cfg: StudyConfig, splits: Splits, teacher_arch: str | None, baseline: Mapping[str, Any]
) -> tuple[Distiller, tuple[str, ...]]:
    """:func:`dry_step`, also returning the distiller it built (its :meth:`~cktf.distillers.Distiller.run_params`
    are every trial's)."""
    num_classes = splits.num_classes
    size = splits.image_size
    student = create_model(cfg.student, num_classes=num_classes)
    teacher = create_model(teacher_arch, num_classes=num_classes) if teacher_arch else None
    params = {**cfg.params, **_method_point(baseline)}
    n_rows = 64
    ctx = DistillContext(num_classes=num_classes, num_train_samples=n_rows, image_size=size)
    method = cfg.objective
    try:
        distiller = method.build(student, teacher, params, ctx)
        batch: dict[str, torch.Tensor] = {
            "image": torch.randn(2, 3, size, size),
            "target": torch.zeros(2, dtype=torch.long),
            "index": torch.arange(2),
        }
        k = distiller.contrast_negatives()
        if k is not None:
            batch["contrast_idx"] = torch.randint(0, n_rows, (2, k + 1))
        with torch.no_grad():
            out = distiller(batch)
    except ConfigError as exc:
        raise ConfigError(exc.field.replace("distill.", "params."), exc.problem, exc.fix) from None
    except (ValueError, RuntimeError) as exc:
        raise ConfigError(
            "distiller", f"{cfg.distiller} cannot pair teacher {teacher_arch} with student {cfg.student}: {exc}"
        ) from None
    return distiller, tuple(out.losses)


def gpu_memory_budget(cfg: StudyConfig) -> float | None:
    """The bytes of GPU memory one training process of a trial may use: its share of a GPU (``resources.gpu``, or
    ``gpu_per_worker`` with several workers) times the memory of one GPU (``resources.gpu_memory_gib``, else this
    machine's first GPU); None for CPU trials or when the GPU's size is unknown."""
    r = cfg.resources
    if r.device_share <= 0:
        return None
    gib = r.gpu_memory_gib
    if gib is None and torch.cuda.is_available():
        gib = torch.cuda.get_device_properties(0).total_memory / 2**30
    return None if gib is None else min(r.device_share, 1.0) * gib * 2**30


def check_contrast_memory(
    cfg: StudyConfig, splits: Splits, space: Mapping[str, ParamSpec], baseline: Mapping[str, Any], n_stages: int
) -> int:
    """The contrastive memory every worker holds (every worker holds all of it: docs/algorithm.md §13) at the
    space's largest ``feat_dim`` and ``nce_k``, refused before Ray starts when it exceeds the GPU share a trial's
    process is given (:func:`gpu_memory_budget`), naming ``memory: queue`` and the largest ``feat_dim`` that fits;
    returns the bytes."""
    method, size = cfg.objective, splits.image_size
    point = {**cfg.params, **_method_point(baseline)}
    for name in ("feat_dim", "nce_k"):
        spec = space.get(name)
        if spec is not None:
            point[name] = max(spec.probe_values())
    parsed = method.parse(point, size)
    n_data = len(splits.train)
    need = parsed.memory_bytes(n_data, n_stages)
    budget = gpu_memory_budget(cfg)
    if need and budget is not None:
        parsed.check_memory_fits(n_data, n_stages, int(budget), where="params")
    return need


def check_negatives(cfg: StudyConfig, splits: Splits, space: Mapping[str, ParamSpec], baseline: Mapping[str, Any]):
    """The most negatives any trial may draw (over the space's extreme values) must fit the label-aware pool."""
    from ...data import ContrastConfig, ContrastSampler

    method, size = cfg.objective, splits.image_size
    searched = {k: v for k, v in space.items() if k.partition(".")[0] not in RECIPE_SECTIONS}
    # every searched field at a value of its range (the baseline's, else its first extreme), the rest fixed
    base = {**cfg.params, **{k: v.probe_values()[0] for k, v in searched.items()}, **_method_point(baseline)}
    k, where = method.parse(base, size).negatives(), "params"
    if k is None:
        return
    for name, spec in searched.items():
        values = [method.parse({**base, name: v}, size).negatives() for v in spec.probe_values()]
        if any(kv is not None and kv > k for kv in values):
            k, where = max(kv for kv in values if kv is not None), f"search.space.{name}"
        elif where == "params" and any(kv != k for kv in values):  # the baseline's value of a searched field
            where = f"search.space.{name}"
    try:
        ContrastSampler(
            splits.train.targets,
            ContrastConfig(
                k=k, mode=cfg.data.contrast_mode, draw=cfg.data.contrast_draw, replace=splits.contrast_replace
            ),
            "cpu",
        )
    except ConfigError as exc:
        field = where if where != "params" else exc.field.replace("distill.", "params.")
        fix = exc.fix
        allowed = negative_pool(splits.train.targets) if not splits.contrast_replace else None
        if allowed is not None and field.startswith("search.space."):  # the --set that makes every value fit
            fix = f"{space_fix(field, space[field.split('.', 2)[2]], allowed)}, or {fix}"
        elif allowed is not None and field.startswith("params."):
            fix = f"--set {field}={allowed}, or {fix}"
        raise ConfigError(field, exc.problem, fix) from None


def negative_pool(targets: Any) -> int | None:
    """The most negatives an anchor can draw without replacement: the images outside the largest class."""
    import numpy as np

    t = np.asarray(targets)
    if t.size == 0 or (t < 0).all():
        return int(t.size) - 1 if t.size else None
    return int(t.size - np.bincount(t[t >= 0]).max())


def space_fix(field: str, spec: ParamSpec, allowed: int) -> str:
    """``--set 'search.space.nce_k.choices=[256, 1024]'``: the searched values that fit under ``allowed``."""
    if spec.type == "categorical":
        fit = [c for c in spec.choices if isinstance(c, int | float) and c <= allowed] or [allowed]
        return f"--set '{field}.choices={json.dumps(fit)}'"
    return f"--set {field}.high={allowed}"
