"""A study on the run context: a search stage, then its confirmation as a grid stage, then its results published.

:func:`run_study` executes a checked :class:`~cktf.tune.plan.StudyPlan` and decides nothing the plan has not
already settled (docs/architecture.md, "One engine"):

1. In a :class:`~.context.RunContext`: the MLflow parent run (created, or reopened on ``--resume``) and
   ``state.json`` recording how trials are judged (metric, mode, selection) before the first trial starts.
2. The dataset goes into the object store once; the teacher is loaded, or trained once as a Ray task
   (:mod:`.teacher`, through the teacher cache).
3. The search: a :class:`~.stages.SearchStage` with :class:`PersistentASHA` and :class:`PrunedAwareOptunaSearch`
   (the baseline point enqueued first).
4. With ``confirm``, the confirmation: the top-k finished configurations and the official defaults trained again
   from scratch over new seeds, a :class:`~.stages.GridStage`; "best" becomes the best mean.
5. :func:`finish_study`: MLflow reconciled with the index; for a complete study the student, the report and
   MLflow's best (:mod:`cktf.tune.results.publish`); an incomplete one is marked so and ``--resume`` continues it.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass, field
from typing import Any

from ..plan.schema import METHOD_KEY
from ..plan.validate import StudyPlan
from ..results.lineage import ParentRun, StageLineage, TrialLabels
from ..results.mlflow_runs import dataset_inputs, flat_config, run_name, trial_tags
from ..results.reader import CONFIRM, FINISHED, SEARCH, Pick, StudyResults, TrialIndex
from ..results.ui import publish_study_views
from .context import TIME_ATTR, RunContext, RunOptions
from .stages import GridStage, SearchStage

log = logging.getLogger(__name__)


@dataclass
class StudyOutcome:
    status: str  # complete | failed (every trial failed) | incomplete
    study_dir: str
    num_trials: int
    counts: dict[str, int]
    best: Pick | None  # the study's best (its score over the confirmation's seeds where there is one)
    metric: str
    wall_s: float
    interrupted: bool = False
    mlflow_synced: bool = True  # False: MLflow was down at the end (cktf mlflow-sync replays the index)
    headline: str = ""  # the report's one sentence: the pick, its uncertainty, the gain over the defaults
    model_uri: str = ""  # the registered champion (models:/NAME@champion)

    @property
    def complete(self) -> bool:
        return self.status == "complete"


# ---------------------------------------------------------------------------------------------- the trials


def _number(index: TrialIndex, stage: str) -> int:
    return 1 + sum(1 for r in index.all() if r.get("stage", SEARCH) == stage)


@dataclass(frozen=True)
class SearchLineage(StageLineage):
    """The search's trials: keyed by Ray's trial id, numbered ``t01``.., the official defaults flagged."""

    baselines: tuple[dict[str, Any], ...] = ()  # the official defaults (of each method in a study over methods)
    searched: tuple[str, ...] = ()
    deviations: dict[str, Any] = field(default_factory=dict)  # the defaults' fields outside the space

    def adopts_ghosts(self) -> bool:
        return True

    def describe(self, key: str, trial: Any, index: TrialIndex, parent: ParentRun) -> TrialLabels:
        config = self.config_of(trial)
        is_baseline = any(b and all(config.get(k) == v for k, v in b.items()) for b in self.baselines)
        number = _number(index, SEARCH)
        record = {"stage": SEARCH, "number": number, "baseline": is_baseline, "head": f"t{number:02d}"}
        tags = {**trial_tags(parent.parent_run_id, key, parent.name, is_baseline), "cktf.stage": SEARCH}
        if METHOD_KEY in config:  # a study over methods: each trial's method, as a tag the UI can group by
            tags["cktf.method"] = str(config[METHOD_KEY])
            record["method"] = config[METHOD_KEY]
        name = run_name({**record, "config": config}, list(self.searched) or None)
        if is_baseline:
            name, record = _mark_deviations(name, record, tags, self.deviations)
        return TrialLabels(config, record, name, tags, config)


def _mark_deviations(name: str, record: dict, tags: dict, deviations: dict) -> tuple[str, dict]:
    """The official defaults' run says which fields could not take their official value (outside the space)."""
    if not deviations:
        return name, record
    tags["cktf.baseline_deviations"] = json.dumps(deviations, default=str)
    short = ", ".join(f"{k}={v['used']}" for k, v in sorted(deviations.items()))
    return f"{name} ({short}, not official)", {**record, "deviations": deviations}


@dataclass(frozen=True)
class ConfirmLineage(StageLineage):
    """The confirmation's runs: a configuration's group and a new seed each (``c1 s1000``)."""

    searched: tuple[str, ...] = ()
    deviations: dict[str, Any] = field(default_factory=dict)  # the defaults' fields outside the space

    def describe(self, key: str, trial: Any, index: TrialIndex, parent: ParentRun) -> TrialLabels:
        config, raw = self.config_of(trial), flat_config(dict(trial.config))
        group, seed, is_baseline = int(raw["_group"]), int(raw["_seed"]), bool(raw.get("_baseline"))
        record = {
            "stage": CONFIRM,
            "group": group,
            "seed": seed,
            "source_trial": raw.get("_source"),
            "number": _number(index, CONFIRM),
            "baseline": is_baseline,
            "head": f"c{group} s{seed}",
        }
        tags = {
            **trial_tags(parent.parent_run_id, key, parent.name, is_baseline),
            "cktf.stage": CONFIRM,
            "cktf.confirm_group": str(group),
            "cktf.seed": str(seed),
        }
        if METHOD_KEY in config:
            tags["cktf.method"] = str(config[METHOD_KEY])
            record["method"] = config[METHOD_KEY]
        name = run_name({**record, "config": config}, list(self.searched) or None)
        if is_baseline:
            name, record = _mark_deviations(name, record, tags, self.deviations)
        return TrialLabels(config, record, name, tags, {**config, "seed": seed})


def confirm_points(plan: StudyPlan, results: StudyResults) -> list[dict[str, Any]]:
    """The confirmation's runs: the official defaults (group 0) and the ``top_k`` best finished configurations other
    than them (groups 1..k, best first), each with ``seeds`` new seeds; so the report always has the best to compare
    with the defaults and the search's best, whichever wins. In a study over methods, that for each method (its
    defaults, then its best; groups numbered 1, 2, ... across the methods)."""
    spec = plan.study.confirm
    ranked = [t for t in results.ranked(FINISHED) if t.score is not None]
    groups: list[tuple[dict[str, Any], bool, str]] = []
    for method in list(plan.methods) or [None]:

        def mine(t: Any, method: Any = method) -> bool:
            return method is None or t.config.get(METHOD_KEY) == method

        if spec.defaults:
            base = next((t for t in results.trials() if t.baseline and mine(t)), None)
            if base is not None:
                groups.append((base.config, True, base.trial_id))
        taken = 0
        for t in ranked:
            if not mine(t) or (spec.defaults and t.baseline) or any(t.config == g[0] for g in groups):
                continue
            groups.append((t.config, t.baseline, t.trial_id))
            taken += 1
            if taken == spec.top_k:
                break
    first = 0 if spec.defaults and not plan.methods else 1  # one method: the defaults are c0, its best c1..ck
    numbered = [(first + i, *g) for i, g in enumerate(groups)]
    return [
        {**config, "_group": g, "_seed": spec.seed_base + i, "_baseline": is_base, "_source": source}
        for g, config, is_base, source in numbered
        for i in range(spec.seeds)
    ]


def searcher(plan: StudyPlan) -> Any:
    """Optuna's sampler (TPE, random, or a grid for ablations) behind Ray's searcher, the baseline enqueued first."""
    import optuna

    from ...space import make_methods_space_fn, make_space_fn
    from .searcher import PrunedAwareOptunaSearch

    cfg, baselines = plan.study, plan.baselines
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if cfg.sampler.name == "random":
        sampler = optuna.samplers.RandomSampler(seed=cfg.sampler.seed)
    elif cfg.sampler.name == "grid":  # ablations: every combination once (the baseline is one of them)
        grid = {k: list(v.choices) for k, v in plan.space.items()}
        sampler = optuna.samplers.GridSampler(grid, seed=cfg.sampler.seed)
        baselines = []
    else:
        sampler = optuna.samplers.TPESampler(
            seed=cfg.sampler.seed, n_startup_trials=cfg.sampler.n_startup_trials, multivariate=cfg.sampler.multivariate
        )
    points = baselines if cfg.search.enqueue_baseline and baselines else None
    space = make_space_fn(plan.space)
    if plan.methods:  # the method first, then its own fields (Optuna's define-by-run)
        space = make_methods_space_fn(METHOD_KEY, {m: sub.space for m, sub in plan.methods.items()})
    return PrunedAwareOptunaSearch(
        space=space,
        metric=cfg.search.metric,
        mode=cfg.search.mode,
        points_to_evaluate=points,
        sampler=sampler,
        max_t=cfg.max_t,
    )


def search_stage(plan: StudyPlan, ctx: RunContext, shared: dict[str, Any], datasets: list) -> SearchStage:
    from .scheduler import PersistentASHA
    from .trainable import run_trial

    cfg = plan.study
    protect = plan.baselines if cfg.search.enqueue_baseline and cfg.search.protect_baseline else None
    searched = tuple(sorted(plan.space))
    return SearchStage(
        name=cfg.name,
        trainable=run_trial,
        shared=shared,
        lineage=SearchLineage(
            stage=SEARCH,
            epochs=cfg.max_t,
            metric=cfg.search.metric,
            mode=cfg.search.mode,
            selection=plan.selection,
            datasets=datasets,
            asha=(cfg.asha.grace_period, cfg.asha.reduction_factor),
            baselines=tuple(plan.baselines),
            searched=searched,
            deviations=dict(plan.baseline_deviations),
        ),
        count=plan.num_trials,
        searched=searched,
        searcher=searcher(plan),
        scheduler=PersistentASHA(
            time_attr=TIME_ATTR,
            max_t=cfg.max_t,
            grace_period=cfg.asha.grace_period,
            reduction_factor=cfg.asha.reduction_factor,
            brackets=cfg.asha.brackets,
            store=ctx.store,
            protect=protect,
        ),
        num_samples=cfg.search.num_samples,
        metric=cfg.search.metric,
        mode=cfg.search.mode,
    )


def confirm_stage(plan: StudyPlan, shared: dict[str, Any], datasets: list, points: list) -> GridStage:
    from .trainable import run_trial

    cfg = plan.study
    searched = tuple(sorted(plan.space))
    return GridStage(
        name=cfg.name + "-confirm",
        trainable=run_trial,
        shared=shared,
        lineage=ConfirmLineage(
            stage=CONFIRM,
            epochs=cfg.max_t,
            metric=cfg.search.metric,
            mode=cfg.search.mode,
            selection=plan.selection,
            datasets=datasets,
            searched=searched,
            deviations=dict(plan.baseline_deviations),
        ),
        count=len(points),
        searched=searched,
        points=tuple(points),
        metric=cfg.search.metric,
        mode=cfg.search.mode,
    )


# ---------------------------------------------------------------------------------------------- the study


def parent_params(plan: StudyPlan) -> dict[str, Any]:
    """What the MLflow parent run records about the study (the search's settings, not its results), from the
    study as it may be logged: a value read from the environment appears as ``${VAR}``."""
    cfg, logged = plan.study, plan.study.logged()
    teacher = (logged["teacher"] or {}).get("arch") or plan.teacher_arch or ""
    return {
        "dataset": logged["data"]["dataset"],
        "student": logged["student"],
        "teacher": teacher,
        "distiller": logged["distiller"] or " | ".join(cfg.method_names),
        "num_samples": logged["search"]["num_samples"],
        "metric": f"{logged['search']['metric']}:{logged['search']['mode']}",
        "max_t": logged["train"]["epochs"],
        "resources": json.dumps(logged["resources"]),
        "max_concurrent": logged["max_concurrent"],
        **{f"asha.{k}": v for k, v in logged["asha"].items()},
        **{f"sampler.{k}": v for k, v in logged["sampler"].items()},
        **{f"space.{k}": json.dumps(v.to_dict()) for k, v in plan.space.items() if not cfg.search.space},
        **{
            f"space.{k}": json.dumps({a: b for a, b in v.items() if b is not None})
            for k, v in logged["search"]["space"].items()
        },
        **{f"fixed.{k}": v for k, v in logged["params"].items()},
        **{f"fixed.{m['distiller']}.{k}": v for m in logged["methods"] for k, v in m["params"].items()},
    }


def run_study(plan: StudyPlan, options: RunOptions | None = None, lock: Any = None) -> StudyOutcome:
    """Run (or resume) a planned study under its lease; see the module docstring. ``lock``: the study's lease when
    the caller took it already (the CLI takes it before planning). A Ctrl-C at any stage leaves the study
    incomplete and resumable (its MLflow parent run KILLED)."""
    with RunContext(plan.study, options, lock) as ctx:
        return run_in(ctx, plan)


def run_in(ctx: RunContext, plan: StudyPlan) -> StudyOutcome:
    """The study's stages in an entered run context (the command line enters it before planning)."""
    ctx.begin()
    try:
        return _stages(ctx, plan)
    except KeyboardInterrupt:
        log.warning("interrupted: the study stays incomplete and resumable")
        return finish_study(ctx, plan, complete=False, interrupted=True)


def _stages(ctx: RunContext, plan: StudyPlan) -> StudyOutcome:
    from ..results.champion import split_datasets
    from .live import header
    from .shared import splits_to_shared
    from .teacher import obtain_teacher
    from .trainable import TrialInputs

    cfg = plan.study
    ctx.start_ray()
    datasets = split_datasets(plan.splits, cfg.data)
    if ctx.open_parent({}, parent_params(plan)):
        ctx.client.log_inputs(ctx.parent.parent_run_id, datasets=dataset_inputs(datasets))
    state = ctx.state
    if plan.baseline_deviations:
        ctx.client.set_tag(ctx.parent.parent_run_id, "cktf.baseline_deviations", json.dumps(plan.baseline_deviations))
    ctx.write_state(
        baseline=dict(plan.baseline),
        methods=list(plan.methods),
        baseline_deviations=dict(plan.baseline_deviations),
        experiment_path=cfg.ray_storage.rstrip("/") + "/" + cfg.name,
        metric=cfg.search.metric,
        mode=cfg.search.mode,
        selection=plan.selection,
        num_trials=plan.num_trials,
        overrides=dict(ctx.options.overrides) or state.get("overrides", {}),
        status="running",
        num_val=len(plan.splits.val) if plan.splits.val is not None else 0,
    )
    publish_study_views(ctx.client, StudyResults(ctx.store))  # the UI's links work while the study runs
    ctx.write_state(stage="teacher")
    ctx.say(header(plan, ctx.store.uri, ctx.log_path, ctx.mlflow_line()))
    data_ref = ctx.share("data", splits_to_shared(plan.splits), "the dataset")
    probe_ref = ctx.share("probe", splits_to_shared(plan.probe_splits)) if plan.probe_splits is not None else None
    teacher = obtain_teacher(plan, ctx.store, data_ref, ctx.options.view != "quiet", ctx.say if ctx.live else None)
    teacher_ref = ctx.share("teacher", teacher) if teacher is not None else None
    if ctx.state.get("teacher_resources"):
        resources = json.dumps(ctx.state["teacher_resources"])
        ctx.client.set_tag(ctx.parent.parent_run_id, "cktf.teacher_resources", resources)
    inputs = TrialInputs(ctx.store, study=cfg, data=data_ref, teacher=teacher_ref, probe_data=probe_ref)
    shared = {"inputs": inputs}
    results = StudyResults(ctx.store)
    if not (ctx.options.resume and results.complete(plan.num_trials)):  # a finished search is not run again
        ctx.write_state(stage="trials")
        ctx.fit(search_stage(plan, ctx, shared, datasets))
    ctx.record_transfers()
    complete = StudyResults(ctx.store).complete(plan.num_trials)
    if complete and cfg.confirm is not None:
        points = ctx.state.get("confirm_points") or confirm_points(plan, StudyResults(ctx.store))
        ctx.write_state(stage="confirm", confirm_points=points)
        if points and not StudyResults(ctx.store).confirm_complete(len(points)):
            ctx.say(f"confirming: {len(points)} runs ({cfg.confirm.seeds} seeds per configuration)")
            ctx.fit(confirm_stage(plan, shared, datasets, points))
        complete = not points or StudyResults(ctx.store).confirm_complete(len(points))
    return finish_study(ctx, plan, complete)


def finish_study(ctx: RunContext, plan: StudyPlan, complete: bool, interrupted: bool = False) -> StudyOutcome:
    """Final statuses in MLflow and the trial index; a complete study's student, report and best (in that order),
    then ``complete`` last. An incomplete study reports no best: its parent run is KILLED and stays resumable."""
    from ..results.publish import Published, publish_study, withdraw_best

    cfg = plan.study
    ctx.reconcile()
    if not interrupted and not complete and cfg.confirm is not None:
        done = StudyResults(ctx.store)
        complete = done.complete(plan.num_trials) and done.confirm_complete()
    results = StudyResults(ctx.store)
    counts = results.counts()
    client, parent_id = ctx.client, ctx.parent.parent_run_id
    for name, n in counts.items():
        client.log_metric(parent_id, f"trials_{name}", n)
    status = ("failed" if results.all_failed() else "complete") if complete else "incomplete"
    published = Published()
    if complete:
        published = publish_study(results, client, ctx.parent, plan.splits, status)
    else:
        withdraw_best(client, parent_id)
    publish_study_views(client, results)  # the final top N and the defaults
    ctx.close(status, counts, f"send them to MLflow with: cktf mlflow-sync {ctx.store.uri}")
    return StudyOutcome(
        status,
        ctx.store.uri,
        plan.num_trials,
        counts,
        results.pick() if complete else None,
        results.metric,
        ctx.wall_s,
        interrupted,
        mlflow_synced=client.up,
        headline=published.headline,
        model_uri=published.model_uri,
    )


__all__ = ["StudyOutcome", "confirm_points", "finish_study", "parent_params", "run_in", "run_study"]
