"""``cktf tune STUDY.yaml``: the study driver. It executes a checked :class:`~cktf.tune.plan.StudyPlan` and decides
nothing the plan has not already settled (docs/architecture.md).

Order of work:

1. Ray starts (or joins ``RAY_ADDRESS``). The dataset goes into the object store once; the teacher is loaded, or
   trained once as a Ray task on the shared data and saved to the study's store (reused on resume).
2. The study's MLflow parent run is created (or, on ``--resume``, reopened) and ``state.json`` records how trials
   are judged (metric, mode, selection) before the first trial starts.
3. A Tuner with :class:`PersistentASHA` and :class:`PrunedAwareOptunaSearch` (the baseline point enqueued first)
   runs the trials; data and teacher reach them through ``tune.with_parameters``.
4. With ``confirm``, the confirmation stage: the top-k finished configurations and the official defaults trained
   again from scratch over new seeds, as Ray trials of a second Tuner (no pruning); "best" becomes the best mean.
5. :func:`finish_study` gives every run its final status; for a complete study it exports the best student, scores
   it on the test split (once, when trials did not), writes the report, and logs the student as an MLflow Model
   registered under the study's name with the alias ``champion``. An incomplete study is marked so and
   ``--resume`` continues it.

The terminal shows :mod:`.live`'s compact view; Ray's output and the diagnostics go to ``driver.log`` in the study
folder (``view="ray"``, ``cktf tune --verbose``, shows Ray's own).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import ConfigError
from ..plan.schema import StudyConfig
from ..plan.validate import StudyPlan
from ..results.lineage import MLflowStudyCallback, dataset_inputs, git_commit, parent_run
from ..results.reader import (
    CONFIRM,
    FINISHED,
    RUNNING,
    SEARCH,
    TERMINAL,
    StudyResults,
    TrialIndex,
    TrialResult,
    read_state,
    write_state,
)
from ..results.retention import release_trial
from ..results.scratch import remove_study_scratch
from ..results.store import StudyStore
from ..results.tracking import Tracking, sync_study
from .lock import StudyLock

log = logging.getLogger(__name__)

#: the top-level package, whose loggers' warnings the live view keeps
PACKAGE = __name__.split(".")[0]
#: ASHA's time axis, reported by every epoch (a restored trial keeps counting epochs, not reports)
TIME_ATTR = "epochs_done"
#: how the driver talks: the compact live view, Ray's own tables, or nothing but the final lines
VIEWS = ("live", "ray", "quiet")
LOG_FILE = "driver.log"


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
    headline: str = ""  # the report's one sentence: the pick, its uncertainty, the gain over the defaults
    model_uri: str = ""  # the registered champion (models:/NAME@champion)

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
    optuna.logging.set_verbosity(optuna.logging.WARNING)
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
    view: str | None = None,
) -> StudyOutcome:
    """Run (or resume) a planned study under its lock; returns whether it completed and its best trial.

    ``view``: ``live`` (the compact view), ``ray`` (Ray's own output) or ``quiet``; default ``live`` with
    ``progress``, else ``quiet``.

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
        view = view or ("live" if progress else "quiet")
        if view not in VIEWS:
            raise ValueError(f"view must be one of {VIEWS}, got {view!r}")
        with study_log(store, view) as log_path:
            return _run_locked(plan, store, lock, resume, view, overrides or {}, log_path)
    finally:
        if own_lock:
            lock.release()


class ConsoleFilter(logging.Filter):
    """What the terminal handlers show under the live view: cktf's warnings and errors. Everything else goes to the
    study's log file; another library's errors reach the terminal as one line (:class:`ErrorSummary`)."""

    def __init__(self, others_errors: bool = False):
        super().__init__()
        self.others_errors = others_errors  # before the study's log exists, another library's errors are shown

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.split(".")[0] == PACKAGE:
            return record.levelno >= logging.WARNING
        return self.others_errors and record.levelno >= logging.ERROR


class ErrorSummary(logging.StreamHandler):
    """Another library's error (Ray's, MLflow's) in the terminal as one line pointing at ``driver.log``, where the
    record is whole with its traceback: the terminal shows what may need acting on, not a library's internals."""

    def __init__(self, log_path: str):
        super().__init__(sys.stderr)
        self.setLevel(logging.ERROR)
        self.log_path = log_path
        self.addFilter(lambda record: record.name.split(".")[0] != PACKAGE)

    def format(self, record: logging.LogRecord) -> str:
        first = (record.getMessage().strip().splitlines() or [""])[0].rstrip(" :")
        return f"{record.name}: {first[:200]} (details in {self.log_path})"


def quiet_console() -> ConsoleFilter:
    """Put a :class:`ConsoleFilter` on the root logger's terminal handlers (``cktf tune``'s live view)."""
    flt = ConsoleFilter(others_errors=True)
    for h in logging.getLogger().handlers:
        if type(h) is logging.StreamHandler:
            h.addFilter(flt)
    return flt


#: imported before the study's log is set up: each adds a terminal handler of its own when imported
LIBRARIES = ("ray", "ray.tune", "mlflow", "optuna")


class study_log:
    """Send the driver's log records (cktf's, Ray's, MLflow's, Optuna's) to ``driver.log`` in the study folder (a
    local temporary file for a remote study, uploaded at the end); under the live view the terminal keeps cktf's
    warnings and anyone's errors (:class:`ConsoleFilter`)."""

    OWN_HANDLERS = ("ray", "mlflow", "optuna")  # libraries that log through handlers of their own

    def __init__(self, store: StudyStore, view: str = "live"):
        self.store, self.view = store, view

    def __enter__(self) -> str:
        import importlib
        import tempfile

        for name in LIBRARIES:  # their import adds their own terminal handlers, which the filter must see
            importlib.import_module(name)

        local = self.store.local_path(LOG_FILE)
        if local is None:
            local = Path(tempfile.mkdtemp(prefix="cktf-log-")) / LOG_FILE
        local.parent.mkdir(parents=True, exist_ok=True)
        self.path = local
        self.handler = logging.FileHandler(local)
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self.handler.setLevel(logging.INFO)
        self.filter = ConsoleFilter()
        self.filtered: list[logging.Handler] = []
        logging.getLogger().addHandler(self.handler)
        for name in self.OWN_HANDLERS:
            lg = logging.getLogger(name)
            lg.addHandler(self.handler)
            if lg.level == logging.NOTSET or lg.level > logging.INFO:
                self.filtered.append(lg)  # remembered only to restore its level
        self._levels = {lg.name: lg.level for lg in self.filtered}
        for lg in self.filtered:
            lg.setLevel(logging.INFO)
        self.summary: ErrorSummary | None = None
        if self.view != "ray":
            for h in self.console_handlers():
                h.addFilter(self.filter)
            self.summary = ErrorSummary(str(local))
            for name in ("", *self.OWN_HANDLERS):
                logging.getLogger(name).addHandler(self.summary)
        return str(local)

    def console_handlers(self) -> list[logging.Handler]:
        """Every terminal handler of every logger (Ray's, MLflow's, the root's)."""
        loggers = [logging.getLogger()] + [
            lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)
        ]
        return [
            h
            for lg in loggers
            for h in lg.handlers
            if isinstance(h, logging.StreamHandler)
            and not isinstance(h, (logging.FileHandler, ErrorSummary))
            and not type(h).__module__.startswith("_pytest")  # a test's log capture sees everything
        ]

    def __exit__(self, *exc: Any) -> None:
        for lg in (logging.getLogger(), *(logging.getLogger(n) for n in self.OWN_HANDLERS)):
            lg.removeHandler(self.handler)
            if self.summary is not None:
                lg.removeHandler(self.summary)
        for h in self.console_handlers():
            h.removeFilter(self.filter)
        for lg in self.filtered:
            lg.setLevel(self._levels[lg.name])
        self.handler.close()
        if self.store.local_path(LOG_FILE) is None:
            try:
                self.store.upload(self.path.parent, "logs")
            except Exception as err:  # the log is a diagnostic: never fail a study for it
                log.info("driver log not uploaded: %s", err)


@contextlib.contextmanager
def _stderr_to(path: str | None):
    """Point file descriptor 2 at ``path`` for the block: the processes Ray starts inherit it, so what they print
    at start-up (token hints, warnings) goes to the study's log, not to the live view."""
    if not path:
        yield
        return
    sys.stderr.flush()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    saved = os.dup(2)
    os.dup2(fd, 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(fd)


def start_ray(progress: bool, lock: StudyLock, log_path: str | None = None) -> bool:
    """Join ``RAY_ADDRESS``, or start a local Ray bound to 127.0.0.1 (recorded in the lock); True if started here.
    ``log_path``: where Ray's start-up output goes (None: the terminal)."""
    import ray

    if ray.is_initialized():
        return False
    address = os.environ.get("RAY_ADDRESS") or None
    kwargs: dict[str, Any] = dict(include_dashboard=False, log_to_driver=progress, configure_logging=False)
    if address is None:
        kwargs["_node_ip_address"] = "127.0.0.1"  # with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (the CLI sets it)
    with _stderr_to(log_path):
        ray.init(address=address, **kwargs)
    if address is None:
        lock.track_ray_processes()
    return address is None


def _run_locked(
    plan: StudyPlan,
    store: StudyStore,
    lock: StudyLock,
    resume: bool,
    view: str,
    overrides: dict[str, Any],
    log_path: str = "",
) -> StudyOutcome:
    progress = view != "quiet"
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")  # trials keep the driver's working directory
    os.environ["RAY_AIR_NEW_OUTPUT"] = "1" if view == "ray" else "0"
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

    started_ray = start_ray(view == "ray", lock, log_path if view != "ray" else None)
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
    from ..results.champion import mark_model_training, split_datasets

    datasets = split_datasets(plan.splits, cfg.data)
    if not state.get("parent_run_id"):
        import tempfile

        mark_model_training(client, exp_id)
        client.log_inputs(parent_id, datasets=dataset_inputs(datasets))
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
        num_val=len(plan.splits.val) if plan.splits.val is not None else 0,
    )
    if view == "live":
        from .live import header

        print(header(plan, store.uri, log_path, mlflow_line(cfg, exp_id, parent_id)), flush=True)
    try:
        data = splits_to_shared(plan.splits)
        data_ref = ray.put(data)
        log.info("dataset in the object store: %.1f MB (once per node)", shared_bytes(data) / 2**20)
        probe_ref = ray.put(splits_to_shared(plan.probe_splits)) if plan.probe_splits is not None else None
        notify = (lambda line: print(line, flush=True)) if view == "live" else None
        teacher = obtain_teacher(plan, store, data_ref, progress, notify)
        teacher_ref = ray.put(teacher) if teacher is not None else None  # once per node, like the data
        if read_state(store).get("teacher_resources"):
            client.set_tag(parent_id, "cktf.teacher_resources", json.dumps(read_state(store)["teacher_resources"]))
        refs = (data_ref, teacher_ref, probe_ref)
        extra = dict(view=view, datasets=datasets)
        if not (resume and StudyResults(store).complete(plan.num_trials)):  # a finished search is not run again
            write_state(store, stage="trials")
            tuner = _tuner(
                plan,
                store,
                tune,
                client_ids=(exp_id, parent_id),
                trainable=run_trial,
                resume=resume,
                refs=refs,
                scheduler_cls=PersistentASHA,
                **extra,
            )
            fit_tuner(tuner)  # Ray's own view of the outcome is not trusted: the trial index decides (finish_study)
        write_state(store, object_transfers=object_transfers(data=data_ref, teacher=teacher_ref, probe=probe_ref))
        complete = StudyResults(store).complete(plan.num_trials)
        if complete and cfg.confirm is not None:
            points = read_state(store).get("confirm_points") or confirm_points(plan, StudyResults(store))
            write_state(store, stage="confirm", confirm_points=points)
            if points and not StudyResults(store).confirm_complete(len(points)):
                fit_tuner(
                    _confirm_tuner(plan, store, tune, (exp_id, parent_id), run_trial, resume, refs, points, **extra)
                )
            complete = not points or StudyResults(store).confirm_complete(len(points))
        return finish_study(cfg, store, complete, plan.num_trials, time.perf_counter() - t0, splits=plan.splits)
    except KeyboardInterrupt:
        log.warning("interrupted: the study stays incomplete and resumable")
        return finish_study(cfg, store, False, plan.num_trials, time.perf_counter() - t0, interrupted=True)
    finally:
        if started_ray:
            ray.shutdown()  # the local Ray ends with its driver


def _withdraw_best(client: Any, parent_id: str) -> None:
    """An incomplete study reports no best: a stop that came while MLflow's best was being published (after the
    report) takes back what had reached the parent run; ``--resume`` publishes it again at the end."""
    run = client.get_run(parent_id)
    tags = getattr(getattr(run, "data", None), "tags", None) or {}
    for key in ("cktf.best_trial", "cktf.model"):
        if key in tags:
            client.delete_tag(parent_id, key)


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


def fit_tuner(tuner: Any) -> None:
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


def mlflow_line(cfg: StudyConfig, exp_id: str | None, parent_id: str | None) -> str:
    """Where the study's runs are, for the header: the UI's link to the parent run when the tracking URI is a server
    (``cktf ui`` serves a local store and prints the links). Credentials in the URI are never printed."""
    from urllib.parse import urlsplit, urlunsplit

    raw = str(cfg.mlflow.tracking_uri)
    parts = urlsplit(raw)
    uri = raw
    if parts.password or parts.username:
        uri = urlunsplit(parts._replace(netloc=parts.hostname + (f":{parts.port}" if parts.port else "")))
    if raw.startswith(("http://", "https://")):
        return f"{uri.rstrip('/')}/#/experiments/{exp_id}/runs/{parent_id}"
    return f"{uri} (experiment {cfg.experiment}; open it with: cktf ui --tracking-uri {uri} --study {cfg.name})"


def confirm_points(plan: StudyPlan, results: StudyResults) -> list[dict[str, Any]]:
    """The confirmation's runs: the ``top_k`` best finished configurations (groups 1..k, best first) and the
    official defaults (group 0, unless it is one of the top k), each with ``seeds`` new seeds."""
    spec = plan.study.confirm
    ranked = [t for t in results.ranked(FINISHED) if t.score is not None]
    groups: list[tuple[int, dict[str, Any], bool, str]] = []
    seen: list[dict[str, Any]] = []
    for t in ranked:
        if t.config in seen:
            continue
        seen.append(t.config)
        groups.append((len(groups) + 1, t.config, t.baseline, t.trial_id))
        if len(groups) == spec.top_k:
            break
    base = results.baseline()
    if spec.defaults and base is not None and not any(g[2] for g in groups):
        groups.insert(0, (0, base.config, True, base.trial_id))
    return [
        {**config, "_group": g, "_seed": spec.seed_base + i, "_baseline": is_base, "_source": source}
        for g, config, is_base, source in groups
        for i in range(spec.seeds)
    ]


def _callbacks(plan: StudyPlan, store: StudyStore, client_ids, view: str, datasets, stage: str, num: int) -> list:
    cfg = plan.study
    exp_id, parent_id = client_ids
    searched = sorted(plan.space)
    mlflow_cb = MLflowStudyCallback(
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
        stage=stage,
        datasets=datasets,
        searched=searched,
        asha=(cfg.asha.grace_period, cfg.asha.reduction_factor),
        keep_state=cfg.keep_trial_state,
    )
    if view != "live":
        return [mlflow_cb]
    from .live import LiveView

    at_once = cfg.max_concurrent or 1
    live = LiveView(store.uri, cfg.search.metric, cfg.search.mode, num, cfg.max_t, searched, stage, at_once)
    return [mlflow_cb, live]


def _confirm_tuner(plan, store, tune, client_ids, trainable, resume: bool, refs, points, view="live", datasets=()):
    """The confirmation stage's Tuner: one trial per (configuration, seed), run to the end (no scheduler prunes)."""
    cfg = plan.study
    wrapped = wrapped_trainable(cfg, store, tune, trainable, refs)
    path = experiment_path(cfg) + "-confirm"
    if view == "live":
        print(f"confirming: {len(points)} runs ({cfg.confirm.seeds} seeds per configuration)", flush=True)
    callbacks = _callbacks(plan, store, client_ids, view, list(datasets), CONFIRM, len(points))
    if resume and tune.Tuner.can_restore(path):
        return tune.Tuner.restore(path, trainable=wrapped, resume_errored=True)
    return tune.Tuner(
        wrapped,
        param_space={"_point": tune.grid_search(points)},
        tune_config=tune.TuneConfig(
            metric=cfg.search.metric,
            mode=cfg.search.mode,
            max_concurrent_trials=cfg.max_concurrent or None,
            reuse_actors=False,
        ),
        run_config=run_config(cfg, tune, cfg.name + "-confirm", callbacks, view),
    )


def wrapped_trainable(cfg: StudyConfig, store: StudyStore, tune: Any, trainable: Any, refs) -> Any:
    """The trainable with the study's per-trial resources and the shared data, teacher and probe references."""
    data_ref, teacher, probe_ref = refs
    return tune.with_resources(
        tune.with_parameters(trainable, study=cfg, store=store, data=data_ref, teacher=teacher, probe_data=probe_ref),
        {"cpu": cfg.resources.cpu, "gpu": cfg.resources.gpu},
    )


def run_config(cfg: StudyConfig, tune: Any, name: str, callbacks: list, view: str) -> Any:
    """Ray's run settings of one of the study's experiments (the search, the confirmation)."""
    return tune.RunConfig(
        name=name,
        storage_path=cfg.ray_storage,
        callbacks=callbacks,
        checkpoint_config=tune.CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
        failure_config=tune.FailureConfig(max_failures=cfg.max_failures),
        verbose=1 if view == "ray" else 0,
    )


def _tuner(
    plan: StudyPlan,
    store: StudyStore,
    tune: Any,
    client_ids,
    trainable,
    resume: bool,
    refs,
    scheduler_cls,
    view: str = "quiet",
    datasets=(),
):
    cfg = plan.study
    callbacks = _callbacks(plan, store, client_ids, view, list(datasets), SEARCH, plan.num_trials)
    wrapped = wrapped_trainable(cfg, store, tune, trainable, refs)
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
        run_config=run_config(cfg, tune, cfg.name, callbacks, view),
    )


def finish_study(
    cfg: StudyConfig,
    store: StudyStore,
    complete: bool,
    num_trials: int,
    wall_s: float,
    interrupted: bool = False,
    splits: Any = None,
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
    if not interrupted and not complete and cfg.confirm is not None:
        complete = StudyResults(store).complete(num_trials) and StudyResults(store).confirm_complete()
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

        # files first (the student, its one test read), then the report, then MLflow's "best" (the registered
        # model, the best metrics and tags): a study stopped before the end has no best in MLflow
        champion, best_dir, test = None, None, None
        if best is not None:
            import tempfile

            write_state(store, stage="export")
            best_dir = store.local_path("best") or Path(tempfile.mkdtemp(prefix="cktf-best-"))
            weights = best_dir / "student.safetensors"
            info = export_best(store.uri, weights)
            test = best.test
            if test is None and splits is not None:  # trials did not read the test split: the final pick, once
                from ..results.champion import test_once

                scores = test_once(weights, splits)
                test = scores.get(results.test_metric)
                info["test_metric"] = {"name": results.test_metric, "value": test, "read": "once, for the final pick"}
                weights.with_suffix(".json").write_text(json.dumps(info, indent=1))
                write_state(store, final_test={**scores, "trial": best.trial_id})
            store.upload(best_dir, "best")
        write_state(store, stage="report")
        report_dir = write_report(StudyResults(store))
        headline = json.loads((report_dir / "summary.json").read_text()).get("headline", "")
        client.log_artifacts(parent_id, str(report_dir), "report")
        client.set_tag(parent_id, "cktf.report", "report/report.html")
        if best is not None:
            write_state(store, stage="publish")
            champion = _register(cfg, client, parent_id, best_dir / "student.safetensors")
            client.log_artifacts(parent_id, str(best_dir), "best_student")
            client.log_metric(parent_id, f"best/{results.metric}", float(best.score))
            if test is not None:
                client.log_metric(parent_id, f"best/{results.test_metric}", float(test))
            client.set_tag(parent_id, "cktf.best_trial", best.trial_id)
            if champion:
                client.set_tag(parent_id, "cktf.model", champion["uri"])
    else:
        headline, champion = "", None
        _withdraw_best(client, parent_id)
    client.set_tag(parent_id, "cktf.study_status", status)
    client.set_terminated(parent_id, {"complete": "FINISHED", "failed": "FAILED"}.get(status, "KILLED"))
    for rec in TrialIndex(store).all():  # a driver killed between a trial's end and its release left it whole
        if rec.get("status") in TERMINAL:
            release_trial(store.uri, rec, cfg.keep_trial_state)
    if complete:
        remove_study_scratch(store.uri)  # this node's working folders: nothing there is needed again
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
        status,
        store.uri,
        num_trials,
        counts,
        best,
        results.metric,
        wall_s,
        interrupted,
        mlflow_synced=client.up,
        headline=headline,
        model_uri=(champion or {}).get("uri", ""),
    )


def _register(cfg: StudyConfig, client: Any, parent_id: str, weights: Path) -> dict[str, Any] | None:
    """The best student as an MLflow Model in the parent run, registered as the study's name @champion; a
    registry that refuses is a warning (the exported files stand)."""
    if not client.up:
        return None
    from ..results.champion import log_champion

    try:
        return log_champion(cfg.mlflow.tracking_uri, parent_id, cfg.name, weights)
    except Exception as exc:  # never lose a finished study for the registry
        log.warning("the best student was exported but not registered in MLflow: %s", str(exc).splitlines()[0][:300])
        return None


__all__ = ["StudyOutcome", "confirm_points", "finish_study", "fit_tuner", "run_study", "start_ray", "study_log"]
