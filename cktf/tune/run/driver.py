"""``cktf tune STUDY.yaml``: the study driver. It executes a checked :class:`~cktf.tune.plan.StudyPlan` and decides
nothing the plan has not already settled (docs/architecture.md).

Order of work:

1. Ray starts (or joins ``RAY_ADDRESS``). The dataset goes into the object store once; the teacher is loaded, or
   trained once as a Ray task on the shared data and saved to the study's store (reused on resume).
2. The study's MLflow parent run is created (or, on ``--resume``, reopened) and ``state.json`` records how trials
   are judged (metric, mode, selection) before the first trial starts.
3. A Tuner with :class:`PersistentASHA` and :class:`PrunedAwareOptunaSearch` (the baseline point enqueued first)
   runs the trials; data and teacher reach them through ``tune.with_parameters``.
4. :func:`finish_study` gives every run its final status, then writes the report and the best student when the
   study is complete; an incomplete study is marked so and ``--resume`` continues it.
"""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from dataclasses import dataclass
from typing import Any

from ...errors import ConfigError
from ..plan.schema import StudyConfig
from ..plan.validate import StudyPlan
from ..results.lineage import MLflowStudyCallback, git_commit, parent_run, reconcile
from ..results.reader import RUNNING, StudyResults, TrialIndex, TrialResult, read_state, write_state
from ..results.store import StudyStore

log = logging.getLogger(__name__)
#: ASHA's time axis, reported by every epoch (a restored trial keeps counting epochs, not reports)
TIME_ATTR = "epochs_done"


@dataclass
class StudyOutcome:
    complete: bool
    study_dir: str
    num_trials: int
    counts: dict[str, int]
    best: TrialResult | None
    metric: str
    wall_s: float


def experiment_path(cfg: StudyConfig) -> str:
    return cfg.ray_storage.rstrip("/") + "/" + cfg.name


def parent_params(plan: StudyPlan) -> dict[str, Any]:
    """What the MLflow parent run records about the study (the search's settings, not its results)."""
    cfg = plan.study
    return {
        "dataset": cfg.data.dataset,
        "student": cfg.student,
        "teacher": plan.teacher_arch or "",
        "distiller": cfg.distiller,
        "num_samples": cfg.search.num_samples,
        "metric": f"{cfg.search.metric}:{cfg.search.mode}",
        "max_t": cfg.max_t,
        "resources": json.dumps(cfg.resources.to_dict()),
        "max_concurrent": cfg.max_concurrent,
        **{f"asha.{k}": v for k, v in cfg.asha.to_dict().items()},
        **{f"sampler.{k}": v for k, v in cfg.sampler.to_dict().items()},
        **{f"space.{k}": json.dumps(v.to_dict()) for k, v in plan.space.items()},
        **{f"fixed.{k}": v for k, v in cfg.params.items()},
    }


def _searcher(plan: StudyPlan):
    import optuna

    from ...space import make_space_fn
    from .searcher import PrunedAwareOptunaSearch

    cfg, baseline = plan.study, dict(plan.baseline)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    if cfg.sampler.name == "random":
        sampler = optuna.samplers.RandomSampler(seed=cfg.sampler.seed)
    elif cfg.sampler.name == "grid":  # ablations: every combination once (the baseline is one of them)
        grid = {k: list(v.choices) for k, v in plan.space.items()}
        sampler = optuna.samplers.GridSampler(grid, seed=cfg.sampler.seed)
        baseline = {}
    else:
        sampler = optuna.samplers.TPESampler(
            seed=cfg.sampler.seed, n_startup_trials=cfg.sampler.n_startup_trials, multivariate=cfg.sampler.multivariate
        )
    points = [baseline] if cfg.search.enqueue_baseline and baseline else None
    return PrunedAwareOptunaSearch(
        space=make_space_fn(plan.space),
        metric=cfg.search.metric,
        mode=cfg.search.mode,
        points_to_evaluate=points,
        sampler=sampler,
        max_t=cfg.max_t,
    )


def run_study(plan: StudyPlan, resume: bool = False, progress: bool = True) -> StudyOutcome:
    """Run (or resume) a planned study; returns whether it completed and its best trial."""
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")  # trials keep the driver's working directory
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0" if not progress else "1")
    t0 = time.perf_counter()
    cfg = plan.study
    store = StudyStore(cfg.study_dir)
    state = read_state(store)
    if state.get("parent_run_id") and not resume:
        raise ConfigError(
            "name", f"study {cfg.name!r} already exists in {store.uri}", "pass --resume to continue it, or a new name"
        )

    import mlflow
    import ray
    from ray import tune

    from .scheduler import PersistentASHA
    from .shared import shared_bytes, splits_to_shared
    from .teacher import obtain_teacher
    from .trainable import run_trial

    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS") or None
        ray.init(address=address, include_dashboard=False, log_to_driver=progress, configure_logging=False)
    data = splits_to_shared(plan.splits)
    data_ref = ray.put(data)
    log.info("dataset in the object store: %.1f MB (once per node)", shared_bytes(data) / 2**20)
    probe_ref = ray.put(splits_to_shared(plan.probe_splits)) if plan.probe_splits is not None else None
    teacher = obtain_teacher(plan, store, data_ref, progress)

    client = mlflow.MlflowClient(tracking_uri=cfg.mlflow.tracking_uri)
    tags = {
        "cktf.study": cfg.name,
        "cktf.kind": "study",
        "cktf.study_dir": store.uri,
        "cktf.ray_storage": experiment_path(cfg),
        "cktf.study_status": "running",
        "mlflow.source.git.commit": git_commit(),
    }
    exp_id, parent_id = parent_run(client, cfg.experiment, state, tags, parent_params(plan))
    if not state.get("parent_run_id"):
        store.write_json(cfg.to_dict(), "study.resolved.json")
        with_resolved = store.local_path("study.resolved.json")
        if with_resolved is not None:
            client.log_artifact(parent_id, str(with_resolved), "study")
        if cfg.source:
            client.log_artifact(parent_id, cfg.source, "study")
    write_state(
        store,
        parent_run_id=parent_id,
        experiment_id=exp_id,
        baseline=dict(plan.baseline),
        experiment_path=experiment_path(cfg),
        metric=cfg.search.metric,
        mode=cfg.search.mode,
        selection=plan.selection,
        num_trials=plan.num_trials,
    )

    callback = MLflowStudyCallback(
        cfg.mlflow.tracking_uri,
        exp_id,
        parent_id,
        store.uri,
        cfg.name,
        cfg.max_t,
        dict(plan.baseline),
        cfg.search.metric,
        cfg.search.mode,
        plan.selection,
    )
    resources = {"cpu": cfg.resources.cpu, "gpu": cfg.resources.gpu}
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, study=cfg, store=store, data=data_ref, teacher=teacher, probe_data=probe_ref),
        resources,
    )
    path = experiment_path(cfg)
    if resume and tune.Tuner.can_restore(path):
        log.info("resuming study %s from %s", cfg.name, path)
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_errored=True)
    else:
        protect = dict(plan.baseline) if cfg.search.enqueue_baseline and cfg.search.protect_baseline else None
        tuner = tune.Tuner(
            trainable,
            param_space={},
            tune_config=tune.TuneConfig(
                metric=cfg.search.metric,
                mode=cfg.search.mode,
                search_alg=_searcher(plan),
                scheduler=PersistentASHA(
                    time_attr=TIME_ATTR,
                    max_t=cfg.max_t,
                    grace_period=cfg.asha.grace_period,
                    reduction_factor=cfg.asha.reduction_factor,
                    brackets=cfg.asha.brackets,
                    store=store,
                    protect=protect,
                ),
                num_samples=cfg.search.num_samples,
                max_concurrent_trials=cfg.max_concurrent or None,
                reuse_actors=False,
            ),
            run_config=tune.RunConfig(
                name=cfg.name,
                storage_path=cfg.ray_storage,
                callbacks=[callback],
                checkpoint_config=tune.CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
                failure_config=tune.FailureConfig(max_failures=cfg.max_failures),
                verbose=1 if progress else 0,
            ),
        )
    grid = tuner.fit()
    complete = len(grid) >= cfg.search.num_samples and grid.num_terminated + grid.num_errors >= len(grid)
    return finish_study(cfg, store, complete, len(grid), time.perf_counter() - t0)


def finish_study(cfg: StudyConfig, store: StudyStore, complete: bool, num_trials: int, wall_s: float) -> StudyOutcome:
    """Final statuses in MLflow and the trial index; the best trial, the report and its weights to the parent run."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=cfg.mlflow.tracking_uri)
    parent_id = read_state(store)["parent_run_id"]
    index = TrialIndex(store)
    repaired = reconcile(client, index, cfg.search.metric)
    if repaired:
        log.info("MLflow: %d trial run(s) had not been given their final status; fixed", repaired)
    for rec in index.all():  # trials the driver left running (interrupted): visible as such, reopened on resume
        if rec.get("status") == RUNNING and rec.get("mlflow_run_id"):
            client.set_tag(rec["mlflow_run_id"], "cktf.status", "interrupted")
            client.set_terminated(rec["mlflow_run_id"], "KILLED")
    results = StudyResults(store)
    counts = results.counts()
    best = results.best()
    if best is not None:
        client.log_metric(parent_id, f"best/{results.metric}", float(best.score))
        if best.test is not None:
            client.log_metric(parent_id, f"best/{results.test_metric}", float(best.test))
        client.set_tag(parent_id, "cktf.best_trial", best.trial_id)
    for name, n in counts.items():
        client.log_metric(parent_id, f"trials_{name}", n)
    status = "complete" if complete else "incomplete"
    if complete:
        from ..results.export import export_best
        from ..results.report import write_report

        report_dir = write_report(results)
        client.log_artifacts(parent_id, str(report_dir), "report")
        if best is not None:
            import tempfile
            from pathlib import Path

            best_dir = store.local_path("best") or Path(tempfile.mkdtemp(prefix="cktf-best-"))
            export_best(store.uri, best_dir / "student.safetensors")
            store.upload(best_dir, "best")
            client.log_artifacts(parent_id, str(best_dir), "best_student")
    write_state(store, status=status, counts=counts, finished_at=time.time())
    client.set_tag(parent_id, "cktf.study_status", status)
    client.set_terminated(parent_id, "FINISHED" if complete else "KILLED")
    return StudyOutcome(complete, store.uri, num_trials, counts, best, results.metric, wall_s)


__all__ = ["StudyOutcome", "finish_study", "run_study"]
