"""``cktf tune STUDY.yaml``: the study driver.

Order of work (every user error surfaces before Ray starts or a step is taken):

1. :func:`load_study` validates the file; an existing study needs ``--resume``.
2. The dataset is decoded once here (cached) and the data-dependent checks run.
3. Ray starts (or joins ``RAY_ADDRESS``). The teacher is loaded, or trained once as a Ray task on
   the shared data and saved to ``<study_dir>/teacher.safetensors`` (reused on resume).
4. A Tuner with :class:`PersistentASHA` and :class:`PrunedAwareOptunaSearch` (the baseline point
   enqueued first) runs the trials; data and teacher reach them through ``tune.with_parameters``.
5. The study is complete only if every sample ran to a terminal state; otherwise the parent MLflow
   run is marked KILLED (``cktf.study_status=incomplete``) and ``--resume`` continues it.
6. A complete study logs the best trial's weights and the Optuna plots to the parent run.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .index import FAILED, FINISHED, MLFLOW_STATUS, PRUNED, RUNNING, TrialIndex
from .lineage import MLflowStudyCallback, reconcile
from .study import StudyConfig, baseline_of, validate_with_data

log = logging.getLogger("cktf")
STATE_FILE = "state.json"
#: ASHA's time axis, reported by every epoch (a restored trial keeps counting epochs, not reports)
TIME_ATTR = "epochs_done"


@dataclass
class StudyOutcome:
    complete: bool
    study_dir: Path
    num_trials: int
    counts: dict[str, int]
    best: dict[str, Any] | None
    wall_s: float


def read_state(study_dir: Path) -> dict[str, Any]:
    path = study_dir / STATE_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def write_state(study_dir: Path, **fields: Any) -> dict[str, Any]:
    state = {**read_state(study_dir), **fields}
    study_dir.mkdir(parents=True, exist_ok=True)
    tmp = study_dir / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(state, indent=1))
    os.replace(tmp, study_dir / STATE_FILE)
    return state


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def experiment_path(cfg: StudyConfig) -> str:
    return cfg.ray_storage.rstrip("/") + "/" + cfg.name


# ----------------------------------------------------------------------------- teacher


def _train_teacher_task(study: dict[str, Any], data: dict[str, Any], out_dir: str) -> tuple[dict[str, Any], dict]:
    """Ray task: train the study's teacher once on the shared train split (resumable in ``out_dir``)."""
    from ..train.checkpoint import load_model
    from ..train.runner import fit, prepare_run
    from .shared import splits_from_shared, teacher_to_shared
    from .study import study_from_dict

    cfg = study_from_dict(dict(study), validate=False)
    summary = fit(prepare_run(cfg.teacher_run_config(out_dir), splits=splits_from_shared(data)))
    model, meta = load_model(summary["weights_best"])
    return teacher_to_shared(model, meta, summary["weights_best"]), summary


def obtain_teacher(cfg: StudyConfig, data_ref: Any, progress: bool = True) -> dict[str, Any] | None:
    """The shared teacher: the given checkpoint, the study's saved one, or trained now (once)."""
    import ray

    from ..distillers import needs_teacher
    from ..train.checkpoint import load_model, save_model_weights
    from .shared import teacher_to_shared

    if not needs_teacher(cfg.distiller):
        return None
    if cfg.teacher.checkpoint:
        model, meta = load_model(cfg.teacher.checkpoint, "teacher.checkpoint")
        return teacher_to_shared(model, meta, Path(cfg.teacher.checkpoint).resolve())
    saved = cfg.study_dir / "teacher.safetensors"
    if saved.exists():
        model, meta = load_model(saved, "teacher")
        log.info("teacher: reusing %s", saved)
        return teacher_to_shared(model, meta, saved)
    log.info("teacher: training %s for %d epochs (once per study)", cfg.teacher.arch, cfg.teacher.train.epochs)
    gpu = 1 if cfg.resources.gpu > 0 else 0
    task = ray.remote(_train_teacher_task).options(num_cpus=cfg.resources.cpu, num_gpus=gpu, max_retries=0)
    if cfg.teacher.data is not None:  # the source domain (transfer): decoded here, shared with the task only
        from ..data import load_splits
        from .shared import splits_to_shared

        data_ref = ray.put(splits_to_shared(load_splits(cfg.teacher.data, progress=progress)))
    shared, summary = ray.get(task.remote(cfg.to_dict(), data_ref, str(cfg.study_dir / "teacher")))
    from .shared import teacher_from_shared

    model, _ = teacher_from_shared(shared)
    meta = {**shared["meta"], "teacher_summary": summary}
    save_model_weights(saved, model, meta)
    write_state(cfg.study_dir, teacher={k: summary.get(k) for k in ("val_acc", "test_acc", "epochs")})
    return {**shared, "path": str(saved)}


# ----------------------------------------------------------------------------- MLflow parent


def parent_run(cfg: StudyConfig, resume: bool) -> tuple[str, str]:
    """``(experiment_id, parent_run_id)``: created once per study, reused on resume."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=cfg.mlflow.tracking_uri)
    exp = client.get_experiment_by_name(cfg.experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(cfg.experiment)
    state = read_state(cfg.study_dir)
    if state.get("parent_run_id"):
        client.update_run(state["parent_run_id"], status="RUNNING")
        client.set_tag(state["parent_run_id"], "cktf.study_status", "running")
        return exp_id, state["parent_run_id"]
    tags = {
        "cktf.study": cfg.name,
        "cktf.kind": "study",
        "cktf.study_dir": str(cfg.study_dir),
        "cktf.ray_storage": experiment_path(cfg),
        "cktf.study_status": "running",
        "mlflow.source.git.commit": git_commit(),
    }
    run = client.create_run(exp_id, run_name=f"study:{cfg.name}", tags=tags)
    from mlflow.entities import Param

    params = {
        "dataset": cfg.data.dataset,
        "student": cfg.student,
        "teacher": cfg.teacher.arch or cfg.teacher.checkpoint or "",
        "distiller": cfg.distiller,
        "num_samples": cfg.search.num_samples,
        "metric": f"{cfg.search.metric}:{cfg.search.mode}",
        "max_t": cfg.max_t,
        "resources": json.dumps(dataclasses.asdict(cfg.resources)),
        "max_concurrent": cfg.max_concurrent,
        **{f"asha.{k}": v for k, v in dataclasses.asdict(cfg.asha).items()},
        **{f"sampler.{k}": v for k, v in dataclasses.asdict(cfg.sampler).items()},
        **{f"space.{k}": json.dumps(v.to_dict()) for k, v in cfg.search.space.items()},
        **{f"fixed.{k}": v for k, v in cfg.params.items()},
    }
    client.log_batch(run.info.run_id, params=[Param(k, str(v)[:500]) for k, v in params.items()])
    cfg.study_dir.mkdir(parents=True, exist_ok=True)
    resolved = cfg.study_dir / "study.resolved.json"
    resolved.write_text(json.dumps(cfg.to_dict(), indent=1, default=str))
    client.log_artifact(run.info.run_id, str(resolved), "study")
    if cfg.source:
        client.log_artifact(run.info.run_id, cfg.source, "study")
    write_state(cfg.study_dir, parent_run_id=run.info.run_id, experiment_id=exp_id)
    return exp_id, run.info.run_id


# ----------------------------------------------------------------------------- the study


def _searcher(cfg: StudyConfig, baseline: dict[str, Any]):
    import optuna

    from .searcher import PrunedAwareOptunaSearch
    from .space import make_space_fn

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    if cfg.sampler.name == "random":
        sampler = optuna.samplers.RandomSampler(seed=cfg.sampler.seed)
    elif cfg.sampler.name == "grid":  # ablations: every combination once (the baseline is one of them)
        grid = {k: list(v.choices) for k, v in cfg.search.space.items()}
        sampler = optuna.samplers.GridSampler(grid, seed=cfg.sampler.seed)
        baseline = {}
    else:
        sampler = optuna.samplers.TPESampler(
            seed=cfg.sampler.seed, n_startup_trials=cfg.sampler.n_startup_trials, multivariate=cfg.sampler.multivariate
        )
    points = [baseline] if cfg.search.enqueue_baseline and baseline else None
    return PrunedAwareOptunaSearch(
        space=make_space_fn(cfg.search.space),
        metric=cfg.search.metric,
        mode=cfg.search.mode,
        points_to_evaluate=points,
        sampler=sampler,
        max_t=cfg.max_t,
    )


def run_study(cfg: StudyConfig, resume: bool = False, progress: bool = True) -> StudyOutcome:
    """Run (or resume) a validated study; returns whether it completed and its best trial."""
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")  # trials keep the driver's working directory
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0" if not progress else "1")
    t0 = time.perf_counter()
    study_dir = cfg.study_dir
    if read_state(study_dir).get("parent_run_id") and not resume:
        raise ConfigError(
            "name", f"study {cfg.name!r} already exists in {study_dir}", "pass --resume to continue it, or a new name"
        )
    from ..data import load_splits

    splits = load_splits(cfg.data, progress=progress)
    teacher_arch = None
    if cfg.teacher.checkpoint:
        from ..train.checkpoint import read_weights_meta

        teacher_arch = read_weights_meta(cfg.teacher.checkpoint, "teacher.checkpoint")["arch"]
    validate_with_data(cfg, splits, teacher_arch or cfg.teacher.arch)
    probe_splits = None
    if cfg.probe is not None:  # the target's labeled splits for the linear probe (transfer studies)
        probe_splits = load_splits(cfg.probe.data, progress=progress)
        if not probe_splits.train.labeled:
            raise ConfigError("probe.data", "its train split has no labels", "point it at the labeled target split")
    baseline = baseline_of(cfg, splits.image_size)

    import ray
    from ray import tune

    from .scheduler import PersistentASHA
    from .shared import shared_bytes, splits_to_shared
    from .trainable import run_trial

    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS") or None
        ray.init(address=address, include_dashboard=False, log_to_driver=progress, configure_logging=False)
    data = splits_to_shared(splits)
    del splits
    data_ref = ray.put(data)
    log.info("dataset in the object store: %.1f MB (once per node)", shared_bytes(data) / 2**20)
    probe_ref = ray.put(splits_to_shared(probe_splits)) if probe_splits is not None else None
    teacher = obtain_teacher(cfg, data_ref, progress)
    exp_id, parent_id = parent_run(cfg, resume)
    write_state(study_dir, baseline=baseline, experiment_path=experiment_path(cfg), metric=cfg.search.metric)

    callback = MLflowStudyCallback(
        cfg.mlflow.tracking_uri, exp_id, parent_id, str(study_dir), cfg.name, cfg.max_t, baseline, cfg.search.metric
    )
    resources = {"cpu": cfg.resources.cpu, "gpu": cfg.resources.gpu}
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, study=cfg.to_dict(), data=data_ref, teacher=teacher, probe_data=probe_ref),
        resources,
    )
    path = experiment_path(cfg)
    if resume and tune.Tuner.can_restore(path):
        log.info("resuming study %s from %s", cfg.name, path)
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space={},
            tune_config=tune.TuneConfig(
                metric=cfg.search.metric,
                mode=cfg.search.mode,
                search_alg=_searcher(cfg, baseline),
                scheduler=PersistentASHA(
                    time_attr=TIME_ATTR,
                    max_t=cfg.max_t,
                    grace_period=cfg.asha.grace_period,
                    reduction_factor=cfg.asha.reduction_factor,
                    brackets=cfg.asha.brackets,
                    state_path=str(study_dir / "asha_state.json"),
                    protect=baseline if cfg.search.enqueue_baseline and cfg.search.protect_baseline else None,
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
    return finish_study(cfg, complete, len(grid), time.perf_counter() - t0)


def finish_study(cfg: StudyConfig, complete: bool, num_trials: int, wall_s: float) -> StudyOutcome:
    """Final statuses in MLflow and the trial index; best trial, plots and weights to the parent run."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=cfg.mlflow.tracking_uri)
    state = read_state(cfg.study_dir)
    parent_id = state["parent_run_id"]
    index = TrialIndex(cfg.study_dir)
    repaired = reconcile(client, index)
    if repaired:
        log.info("MLflow: %d trial run(s) had not been given their final status; fixed", repaired)
    for rec in index.all():  # trials the driver left running (interrupted): visible as such, reopened on resume
        if rec.get("status") == RUNNING:
            run_id = rec.get("mlflow_run_id")
            if run_id:
                client.set_tag(run_id, "cktf.status", "interrupted")
                client.set_terminated(run_id, "KILLED")
    counts = {s: 0 for s in (FINISHED, PRUNED, FAILED, RUNNING)}
    for rec in index.all():
        counts[rec.get("status", RUNNING)] = counts.get(rec.get("status", RUNNING), 0) + 1
    from .export import best_trial
    from .report import write_report

    best = best_trial(cfg.study_dir, required=False)
    if best is not None:
        client.log_metric(parent_id, "best_val_acc", float(best["best_val_acc"]))
        if best.get("test_acc") is not None:
            client.log_metric(parent_id, "best_test_acc", float(best["test_acc"]))
        client.set_tag(parent_id, "cktf.best_trial", best["trial_id"])
    for name, n in counts.items():
        client.log_metric(parent_id, f"trials_{name}", n)
    status = "complete" if complete else "incomplete"
    write_state(cfg.study_dir, status=status, counts=counts, finished_at=time.time())
    if complete:
        report_dir = write_report(cfg.study_dir, cfg)
        client.log_artifacts(parent_id, str(report_dir), "report")
        if best is not None:
            from .export import export_best

            best_dir = cfg.study_dir / "best"
            export_best(cfg.study_dir, best_dir / "student.safetensors")
            client.log_artifacts(parent_id, str(best_dir), "best_student")
    client.set_tag(parent_id, "cktf.study_status", status)
    client.set_terminated(parent_id, "FINISHED" if complete else "KILLED")
    return StudyOutcome(complete, cfg.study_dir, num_trials, counts, best, wall_s)


__all__ = ["run_study", "StudyOutcome", "MLFLOW_STATUS"]
