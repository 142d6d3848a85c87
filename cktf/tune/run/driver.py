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
from ..results.lineage import MLflowStudyCallback, git_commit, parent_run
from ..results.reader import RUNNING, StudyResults, TrialIndex, TrialResult, read_state, write_state
from ..results.store import StudyStore
from ..results.tracking import Tracking, sync_study
from .lock import StudyLock

log = logging.getLogger(__name__)
#: ASHA's time axis, reported by every epoch (a restored trial keeps counting epochs, not reports)
TIME_ATTR = "epochs_done"


@dataclass
class StudyOutcome:
    status: str  # complete | failed (every trial failed) | incomplete
    study_dir: str
    num_trials: int
    counts: dict[str, int]
    best: TrialResult | None
    metric: str
    wall_s: float
    interrupted: bool = False
    mlflow_synced: bool = True  # False: MLflow was down at the end (cktf mlflow-sync replays the index)

    @property
    def complete(self) -> bool:
        return self.status == "complete"


def experiment_path(cfg: StudyConfig) -> str:
    return cfg.ray_storage.rstrip("/") + "/" + cfg.name


def parent_params(plan: StudyPlan) -> dict[str, Any]:
    """What the MLflow parent run records about the study (the search's settings, not its results), from the
    study as it may be logged: a value read from the environment appears as ``${VAR}``."""
    cfg, logged = plan.study, plan.study.logged()
    teacher = (logged["teacher"] or {}).get("arch") or plan.teacher_arch or ""
    return {
        "dataset": logged["data"]["dataset"],
        "student": logged["student"],
        "teacher": teacher,
        "distiller": logged["distiller"],
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


def run_study(
    plan: StudyPlan,
    resume: bool = False,
    progress: bool = True,
    lock: StudyLock | None = None,
    break_lock: bool = False,
    overrides: dict[str, Any] | None = None,
) -> StudyOutcome:
    """Run (or resume) a planned study under its lock; returns whether it completed and its best trial.

    ``lock``: the study's lease when the caller took it already (the CLI takes it before planning);
    ``overrides``: the ``--set`` values the study was loaded with, stored so that ``--resume`` alone reuses them.
    A Ctrl-C at any stage leaves the study incomplete and resumable (its MLflow parent run KILLED)."""
    cfg = plan.study
    store = StudyStore(cfg.study_dir)
    if read_state(store).get("parent_run_id") and not resume:
        raise ConfigError(
            "name", f"study {cfg.name!r} already exists in {store.uri}", "pass --resume to continue it, or a new name"
        )
    own_lock = lock is None
    lock = lock or StudyLock(store, cfg.name).acquire(break_lock)
    try:
        return _run_locked(plan, store, lock, resume, progress, overrides or {})
    finally:
        if own_lock:
            lock.release()


def _start_ray(progress: bool, lock: StudyLock) -> bool:
    """Join ``RAY_ADDRESS``, or start a local Ray bound to 127.0.0.1 (recorded in the lock); True if started here."""
    import ray

    if ray.is_initialized():
        return False
    address = os.environ.get("RAY_ADDRESS") or None
    kwargs: dict[str, Any] = dict(include_dashboard=False, log_to_driver=progress, configure_logging=False)
    if address is None:
        kwargs["_node_ip_address"] = "127.0.0.1"  # with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (the CLI sets it)
    ray.init(address=address, **kwargs)
    if address is None:
        lock.track_ray_processes()
    return address is None


def _run_locked(
    plan: StudyPlan, store: StudyStore, lock: StudyLock, resume: bool, progress: bool, overrides: dict[str, Any]
) -> StudyOutcome:
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")  # trials keep the driver's working directory
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0" if not progress else "1")
    # Ray's experiment snapshot at least every second (its default, "auto", lets it lag up to 10 s): a driver
    # killed right after a trial started then finds it on resume instead of a ghost
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")
    # with a searcher, Tune keeps one trial pending by default, so a cluster's slots fill one trial at a time
    os.environ.setdefault("TUNE_MAX_PENDING_TRIALS_PG", str(max(2, plan.study.max_concurrent or 8)))
    t0 = time.perf_counter()
    cfg = plan.study
    state = read_state(store)

    import ray
    from ray import tune

    from .scheduler import PersistentASHA
    from .shared import shared_bytes, splits_to_shared
    from .teacher import obtain_teacher
    from .trainable import run_trial

    started_ray = _start_ray(progress, lock)
    client = Tracking.shared(cfg.mlflow.tracking_uri, cfg.mlflow.retry_s)
    tags = {
        "cktf.study": cfg.name,
        "cktf.kind": "study",
        "cktf.study_dir": cfg.logged_study_dir(),
        "cktf.ray_storage": cfg.logged_ray_experiment(),
        "cktf.study_status": "running",
        "mlflow.source.git.commit": git_commit(),
    }
    try:
        exp_id, parent_id = parent_run(client, cfg.experiment, state, tags, parent_params(plan))
    except AttributeError:  # a DOWN answer has no experiment_id / info
        exp_id = parent_id = None
    if not client.up or not parent_id:
        if started_ray:
            ray.shutdown()
        raise ConfigError(
            "mlflow.tracking_uri",
            f"the tracking server at {cfg.mlflow.tracking_uri} does not answer (tried for {cfg.mlflow.retry_s:.0f} s)",
            "start it, or point mlflow.tracking_uri at one that runs",
        )
    if not state.get("parent_run_id"):
        import tempfile
        from pathlib import Path

        store.write_json(cfg.logged(), "study.resolved.json")  # ${VAR} values stay ${VAR}
        with tempfile.TemporaryDirectory() as tmp:
            logged = Path(tmp) / "study.resolved.json"
            logged.write_text(json.dumps(cfg.logged(), indent=1, default=str))
            client.log_artifact(parent_id, str(logged), "study")
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
        overrides=state.get("overrides", overrides),
        status="running",
        stage="teacher",
    )
    try:
        data = splits_to_shared(plan.splits)
        data_ref = ray.put(data)
        log.info("dataset in the object store: %.1f MB (once per node)", shared_bytes(data) / 2**20)
        probe_ref = ray.put(splits_to_shared(plan.probe_splits)) if plan.probe_splits is not None else None
        teacher = obtain_teacher(plan, store, data_ref, progress)
        teacher_ref = ray.put(teacher) if teacher is not None else None  # once per node, like the data
        if read_state(store).get("teacher_resources"):
            client.set_tag(parent_id, "cktf.teacher_resources", json.dumps(read_state(store)["teacher_resources"]))
        write_state(store, stage="trials")
        tuner = _tuner(
            plan,
            store,
            tune,
            client_ids=(exp_id, parent_id),
            trainable=run_trial,
            resume=resume,
            refs=(data_ref, teacher_ref, probe_ref),
            scheduler_cls=PersistentASHA,
        )
        _fit(tuner)  # Ray's own view of the outcome is not trusted: the trial index decides (finish_study)
        write_state(store, object_transfers=object_transfers(data=data_ref, teacher=teacher_ref, probe=probe_ref))
        return finish_study(
            cfg, store, StudyResults(store).complete(plan.num_trials), plan.num_trials, time.perf_counter() - t0
        )
    except KeyboardInterrupt:
        log.warning("interrupted: the study stays incomplete and resumable")
        return finish_study(cfg, store, False, plan.num_trials, time.perf_counter() - t0, interrupted=True)
    finally:
        if started_ray:
            ray.shutdown()  # the local Ray ends with its driver


def object_transfers(**refs: Any) -> dict[str, dict[str, Any]]:
    """Where each shared object lies now: its size and the nodes holding a copy (one per node that ran a trial,
    however many trials ran there); the bytes that crossed between nodes are ``bytes * (copies - 1)``."""
    import ray

    live = {name: ref for name, ref in refs.items() if ref is not None}
    try:
        found = ray.experimental.get_object_locations(list(live.values()))
    except Exception as exc:  # a diagnostic only: never fail a study for it
        log.info("object locations unavailable: %s", exc)
        return {}
    out = {}
    for name, ref in live.items():
        info = found.get(ref) or {}
        nodes = sorted(info.get("node_ids") or [])
        size = int(info.get("object_size") or 0)
        out[name] = {"bytes": size, "nodes": nodes, "copies": len(nodes), "bytes_moved": size * max(len(nodes) - 1, 0)}
    return out


def _fit(tuner: Any) -> None:
    """``tuner.fit()``, then Ctrl-C is ours again: Tune's own SIGINT handler (a graceful stop of the trials) stays
    installed after ``fit`` returns, and would swallow an interrupt of the report or the export."""
    import signal
    import threading

    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGINT) if main else None
    try:
        tuner.fit()
    finally:
        if main:
            signal.signal(signal.SIGINT, previous)


def _tuner(plan: StudyPlan, store: StudyStore, tune: Any, client_ids, trainable, resume: bool, refs, scheduler_cls):
    cfg = plan.study
    exp_id, parent_id = client_ids
    data_ref, teacher, probe_ref = refs
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
        cfg.mlflow.retry_s,
    )
    resources = {"cpu": cfg.resources.cpu, "gpu": cfg.resources.gpu}
    wrapped = tune.with_resources(
        tune.with_parameters(trainable, study=cfg, store=store, data=data_ref, teacher=teacher, probe_data=probe_ref),
        resources,
    )
    path = experiment_path(cfg)
    if resume and tune.Tuner.can_restore(path):
        log.info("resuming study %s from %s", cfg.name, path)
        return tune.Tuner.restore(path, trainable=wrapped, resume_errored=True)
    protect = dict(plan.baseline) if cfg.search.enqueue_baseline and cfg.search.protect_baseline else None
    return tune.Tuner(
        wrapped,
        param_space={},
        tune_config=tune.TuneConfig(
            metric=cfg.search.metric,
            mode=cfg.search.mode,
            search_alg=_searcher(plan),
            scheduler=scheduler_cls(
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
            verbose=1 if os.environ.get("RAY_AIR_NEW_OUTPUT") != "0" else 0,
        ),
    )


def finish_study(
    cfg: StudyConfig,
    store: StudyStore,
    complete: bool,
    num_trials: int,
    wall_s: float,
    interrupted: bool = False,
) -> StudyOutcome:
    """Final statuses in MLflow and the trial index; for a complete study the report and the best student, then
    ``complete`` last. An incomplete study reports no best: its parent run is KILLED and stays resumable."""
    client = Tracking.shared(cfg.mlflow.tracking_uri, cfg.mlflow.retry_s)
    state = read_state(store)
    parent_id = state["parent_run_id"]
    index = TrialIndex(store)
    replayed = sync_study(client, store, state.get("experiment_id"), parent_id, cfg.search.metric)
    if any(replayed.values()):
        log.info("MLflow was behind the trial index; caught up: %s", replayed)
    for rec in index.all():  # trials the driver left running (interrupted): visible as such, reopened on resume
        if rec.get("status") == RUNNING and rec.get("mlflow_run_id"):
            client.set_tag(rec["mlflow_run_id"], "cktf.status", "interrupted")
            client.set_terminated(rec["mlflow_run_id"], "KILLED")
    results = StudyResults(store)
    counts = results.counts()
    for name, n in counts.items():
        client.log_metric(parent_id, f"trials_{name}", n)
    best = results.best() if complete else None
    if complete and results.all_failed():
        status = "failed"
    elif complete:
        status = "complete"
    else:
        status = "incomplete"
    if complete:
        from ..results.export import export_best
        from ..results.report import write_report

        write_state(store, stage="report")
        report_dir = write_report(results)
        client.log_artifacts(parent_id, str(report_dir), "report")
        if best is not None:
            import tempfile
            from pathlib import Path

            write_state(store, stage="export")
            best_dir = store.local_path("best") or Path(tempfile.mkdtemp(prefix="cktf-best-"))
            export_best(store.uri, best_dir / "student.safetensors")
            store.upload(best_dir, "best")
            client.log_artifacts(parent_id, str(best_dir), "best_student")
            client.log_metric(parent_id, f"best/{results.metric}", float(best.score))
            if best.test is not None:
                client.log_metric(parent_id, f"best/{results.test_metric}", float(best.test))
            client.set_tag(parent_id, "cktf.best_trial", best.trial_id)
    client.set_tag(parent_id, "cktf.study_status", status)
    client.set_terminated(parent_id, {"complete": "FINISHED", "failed": "FAILED"}.get(status, "KILLED"))
    write_state(store, status=status, stage="done" if complete else "stopped", counts=counts, finished_at=time.time())
    if not client.up:
        log.warning(
            "MLflow at %s is still down: the study's results are in its trial index (%s); send them to MLflow with: "
            "cktf mlflow-sync %s",
            cfg.mlflow.tracking_uri,
            store.uri,
            store.uri,
        )
    return StudyOutcome(
        status, store.uri, num_trials, counts, best, results.metric, wall_s, interrupted, mlflow_synced=client.up
    )


__all__ = ["StudyOutcome", "finish_study", "run_study"]
