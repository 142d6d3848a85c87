"""The run context: what every long-running command (a study, a campaign) does around its stages.

One :class:`RunContext` per run (docs/architecture.md, "One engine"). Entered, it holds the run's lease (one driver
per folder) and refuses to overwrite a run that exists unless resumed; :meth:`begin` (once the run is planned) sends
the logs to ``driver.log`` (:class:`~.console.RunLog`) and prepares Ray Tune's environment; then, as the run asks:

* :meth:`start_ray` -- joins ``RAY_ADDRESS`` or starts a local Ray bound to 127.0.0.1 (its start-up output to the
  log, its processes recorded in the lease);
* :meth:`open_parent` -- the MLflow parent run, created once and reopened on ``--resume`` (a tracking server that
  does not answer is a configuration error: nothing has run yet);
* :meth:`write_state` / :attr:`state` -- ``state.json``, the run's facts and the stage it is at;
* :meth:`share` -- an object in Ray's object store once (data, teachers), recorded for :meth:`record_transfers`;
* :meth:`fit` -- one stage (:mod:`.stages`: a search or a grid) as a Ray Tune experiment, with the one trial
  callback (:class:`~cktf.tune.results.lineage.TrialCallback`) and, under the live view, :class:`~.live.LiveView`;
* :meth:`reconcile` and :meth:`close` -- MLflow made equal to the trial index, trials a stopped driver left running
  marked so, ended trials' stored state shrunk, the run's status set.

Leaving the context ends a Ray it started, closes the log and gives the lease back.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ...errors import ConfigError
from ...settings import RunSettings
from ..results.lineage import ParentRun, TrialCallback
from ..results.mlflow_runs import sync_study
from ..results.reader import RUNNING, TERMINAL, TrialIndex, read_state, write_state
from ..results.retention import release_trial
from ..results.scratch import remove_study_scratch
from ..results.store import StudyStore
from ..results.tracking import Tracking
from .console import VIEWS, RunLog, stderr_to
from .lock import StudyLock
from .stages import Stage, run_config, trial_resources

log = logging.getLogger(__name__)

#: ASHA's time axis, reported by every epoch (a restored trial keeps counting epochs, not reports)
TIME_ATTR = "epochs_done"


@dataclass(frozen=True)
class RunOptions:
    """How a run is driven (the command's flags): the view, whether it resumes, the ``--set`` values it runs with."""

    view: str = "live"  # live | ray | quiet
    resume: bool = False
    break_lock: bool = False
    overrides: Mapping[str, Any] = field(default_factory=dict)
    retry_failed: bool = False  # a campaign's failed runs run again on --resume

    def __post_init__(self) -> None:
        if self.view not in VIEWS:
            raise ValueError(f"view must be one of {VIEWS}, got {self.view!r}")


def refuse_existing(settings: RunSettings, store: StudyStore, resume: bool) -> None:
    """A run that exists is continued only with ``--resume``; a complete one is not run again: the error says which,
    and offers what the user may have meant (``--resume``, a new name, the results)."""
    state = read_state(store)
    if resume or not state.get("parent_run_id"):
        return
    kind, name = settings.kind, settings.name
    if state.get("status") == "complete":
        results = f"cktf report {store.uri}" if kind == "study" else f"{store.uri}/table/table.md"
        raise ConfigError(
            "name",
            f"{kind} {name!r} is complete (in {store.uri})",
            f"see its results ({results}), or run it again under a new name: --set name={name}-2",
        )
    raise ConfigError(
        "name",
        f"{kind} {name!r} already exists in {store.uri} ({state.get('status', 'started')})",
        f"continue it with --resume, or start a new one with --set name={name}-2",
    )


class RunContext:
    """One run's lease, log, Ray, MLflow parent run, state and stages (see the module docstring)."""

    def __init__(self, settings: RunSettings, options: RunOptions | None = None, lock: StudyLock | None = None):
        self.settings = settings
        self.options = options or RunOptions()
        self.store = StudyStore(settings.folder)
        self.lock, self._own_lock = lock, lock is None
        self.parent: ParentRun | None = None
        self.log_path = ""
        self.started_ray = False
        self.t0 = time.perf_counter()
        self._log: RunLog | None = None
        self._shared: dict[str, Any] = {}

    # ------------------------------------------------------------------ enter / exit
    def __enter__(self) -> RunContext:
        if self.lock is None:  # first: a second driver learns at once who runs this
            self.lock = StudyLock(self.store, self.settings.name).acquire(self.options.break_lock)
        try:
            refuse_existing(self.settings, self.store, self.options.resume)
        except BaseException:
            self._release()
            raise
        return self

    def begin(self) -> None:
        """The run starts: from here its log goes to ``driver.log`` (nothing is written to its folder before, so a
        file refused while it is planned leaves nothing behind) and Ray Tune's environment is set."""
        if self._log is None:
            self._log = RunLog(self.store, self.options.view)
            self.log_path = self._log.__enter__()
        os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")  # trials keep the driver's working directory
        os.environ["RAY_AIR_NEW_OUTPUT"] = "1" if self.options.view == "ray" else "0"
        # Ray's experiment snapshot at least every second (its default, "auto", lets it lag up to 10 s): a driver
        # killed right after a trial started then finds it on resume instead of a ghost
        os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")
        # with a searcher, Tune keeps one trial pending by default, so a cluster's slots fill one trial at a time
        os.environ.setdefault("TUNE_MAX_PENDING_TRIALS_PG", str(max(2, self.settings.max_concurrent or 8)))

    def __exit__(self, *exc: Any) -> None:
        try:
            if self.started_ray:
                import ray

                ray.shutdown()  # the local Ray ends with its driver
                self.started_ray = False
        finally:
            if self._log is not None:
                self._log.__exit__(*exc)
            self._release()

    def _release(self) -> None:
        if self._own_lock and self.lock is not None:
            self.lock.release()

    @property
    def live(self) -> bool:
        return self.options.view == "live"

    def say(self, line: str) -> None:
        """A line for the terminal under the live view."""
        if self.live:
            print(line, flush=True)

    @property
    def wall_s(self) -> float:
        return time.perf_counter() - self.t0

    # ------------------------------------------------------------------ state
    @property
    def state(self) -> dict[str, Any]:
        return read_state(self.store)

    def write_state(self, **fields: Any) -> dict[str, Any]:
        return write_state(self.store, **fields)

    # ------------------------------------------------------------------ Ray
    def start_ray(self) -> None:
        """Join ``RAY_ADDRESS``, or start a local Ray bound to 127.0.0.1 (recorded in the lease); once."""
        import ray

        if ray.is_initialized():
            return
        address = os.environ.get("RAY_ADDRESS") or None
        kwargs: dict[str, Any] = dict(
            include_dashboard=False, log_to_driver=self.options.view == "ray", configure_logging=False
        )
        if address is None:
            kwargs["_node_ip_address"] = "127.0.0.1"  # with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (keep_ray_local)
            if self.settings.resources.parallel:
                from ...distributed import free_port

                # Ray Train frees the workers of a trial Tune stopped (ASHA, the last epoch) through the state API,
                # which the dashboard serves: on, on loopback, for trials of several workers
                kwargs.update(include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=free_port())
        with stderr_to(self.log_path if self.options.view != "ray" else None):
            ray.init(address=address, **kwargs)
        if self._log is not None:
            self._log.reattach()  # ray.init cleared the "ray" logger's handlers
        if address is None:
            self.lock.track_ray_processes()
            self.started_ray = True
        self.check_capacity()

    def check_capacity(self) -> None:
        """A trial that no node (or, for several workers, the cluster) could ever hold would wait for ever: refused
        when this run started its own Ray (its nodes are all it will have); on a joined cluster, whose autoscaler may
        add nodes, a warning."""
        import ray

        from .stages import capacity_problem

        problem = capacity_problem(self.settings.resources, [n["Resources"] for n in ray.nodes() if n.get("Alive")])
        if problem is None:
            return
        if self.started_ray:
            raise ConfigError("resources", problem, "lower the resources a trial asks for, or join a larger cluster")
        log.warning("%s: its trials wait until the cluster grows (an autoscaler, more nodes)", problem)

    def share(self, name: str, obj: Any, what: str = "") -> Any:
        """``obj`` in the object store once (each node that needs it fetches one copy); returns its reference."""
        import ray

        ref = ray.put(obj)
        self._shared[name] = ref
        if what:
            log.info("%s in the object store (once per node)", what)
        return ref

    def record_transfers(self) -> None:
        """Where each shared object lies now (``state.json``, ``object_transfers``): its size, the nodes holding a
        copy (one per node that ran a trial) and the bytes that crossed between nodes, ``bytes * (copies - 1)``."""
        import ray

        live = {name: ref for name, ref in self._shared.items() if ref is not None}
        try:
            found = ray.experimental.get_object_locations(list(live.values()))
        except Exception as exc:  # a diagnostic only: never fail a run for it
            log.info("object locations unavailable: %s", exc)
            return
        out = {}
        for name, ref in live.items():
            info = found.get(ref) or {}
            nodes = sorted(info.get("node_ids") or [])
            size = int(info.get("object_size") or 0)
            moved = size * max(len(nodes) - 1, 0)
            out[name] = {"bytes": size, "nodes": nodes, "copies": len(nodes), "bytes_moved": moved}
        self.write_state(object_transfers=out)

    # ------------------------------------------------------------------ MLflow
    @property
    def client(self) -> Tracking:
        return Tracking.shared(self.settings.mlflow.tracking_uri, self.settings.mlflow.retry_s)

    @property
    def status_tag(self) -> str:
        return f"cktf.{self.settings.kind}_status"

    def open_parent(self, tags: dict[str, str], params: dict[str, Any]) -> bool:
        """The run's MLflow parent run (created, or reopened on resume); True when it was created now. A tracking
        server that does not answer is a :class:`ConfigError` (nothing has run yet)."""
        from ..results.champion import mark_model_training
        from ..results.mlflow_runs import git_commit

        s, state = self.settings, self.state
        tags = {
            f"cktf.{s.kind}": s.name,
            "cktf.kind": s.kind,
            f"cktf.{s.kind}_dir": s.logged_folder(),
            "cktf.ray_storage": s.logged_ray_experiment(),
            self.status_tag: "running",
            "mlflow.source.git.commit": git_commit(),
            **tags,
        }
        client = self.client
        try:
            exp_id, parent_id = self._parent_run(state, tags, params)
        except AttributeError:  # a DOWN answer has no experiment_id / info
            exp_id = parent_id = None
        if not client.up or not parent_id:
            raise ConfigError(
                "mlflow.tracking_uri",
                f"the tracking server at {s.mlflow.tracking_uri} does not answer (tried for {s.mlflow.retry_s:.0f} s)",
                "start it, or point mlflow.tracking_uri at one that runs",
            )
        self.parent = ParentRun(
            s.mlflow.tracking_uri, exp_id, parent_id, self.store.uri, s.name, s.mlflow.retry_s, s.keep_trial_state
        )
        created = not state.get("parent_run_id")
        if created:
            mark_model_training(client, exp_id)
            self._log_file()
        self.write_state(kind=s.kind, parent_run_id=parent_id, experiment_id=exp_id)
        return created

    def _parent_run(self, state: dict[str, Any], tags: dict[str, str], params: dict[str, Any]) -> tuple[str, str]:
        """``(experiment_id, parent_run_id)``: the run named in ``state`` (a resumed run, set running again), else a
        new one called ``<kind>:<name>``, tagged ``tags``, with ``params`` logged once."""
        from mlflow.entities import Param

        client, s = self.client, self.settings
        exp = client.get_experiment_by_name(s.experiment)
        exp_id = exp.experiment_id if exp else client.create_experiment(s.experiment)
        if state.get("parent_run_id"):
            client.update_run(state["parent_run_id"], status="RUNNING")
            client.set_tag(state["parent_run_id"], self.status_tag, "running")
            return exp_id, state["parent_run_id"]
        run = client.create_run(exp_id, run_name=f"{s.kind}:{s.name}", tags=tags)
        items = [Param(k, str(v)[:500]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            client.log_batch(run.info.run_id, params=items[i : i + 100])
        return exp_id, run.info.run_id

    def _log_file(self) -> None:
        """The file as run (``${VAR}`` values kept as written) in the folder and on the parent run, with its source."""
        import tempfile
        from pathlib import Path

        s, name = self.settings, f"{self.settings.kind}.resolved.json"
        self.store.write_json(s.logged(), name)
        with tempfile.TemporaryDirectory() as tmp:
            resolved = Path(tmp) / name
            resolved.write_text(json.dumps(s.logged(), indent=1, default=str))
            self.client.log_artifact(self.parent.parent_run_id, str(resolved), s.kind)
        source = getattr(s, "source", None)
        if source:
            self.client.log_artifact(self.parent.parent_run_id, source, s.kind)

    def mlflow_line(self) -> str:
        """Where the runs are, for the header: the UI's link to the parent run when the tracking URI is a server
        (``cktf ui`` serves a local store and prints the links). Credentials in the URI are never printed."""
        from urllib.parse import urlsplit, urlunsplit

        raw = str(self.settings.mlflow.tracking_uri)
        parts = urlsplit(raw)
        uri = raw
        if parts.password or parts.username:
            uri = urlunsplit(parts._replace(netloc=parts.hostname + (f":{parts.port}" if parts.port else "")))
        if raw.startswith(("http://", "https://")):
            from ..results.ui import run_url

            return run_url(uri, self.parent.experiment_id, self.parent.parent_run_id)
        s = self.settings
        return f"{uri} (experiment {s.experiment}; open it with: cktf ui --tracking-uri {uri} --study {s.name})"

    # ------------------------------------------------------------------ stages
    def callbacks(self, stage: Stage, announce: Any = None) -> list:
        """The stage's Tune callbacks: the trial callback, then (live view) the live view, which reads the index the
        trial callback has just written."""
        out: list = [TrialCallback(self.parent, stage.lineage, announce)]
        if self.live:
            from .live import LiveView

            out.append(LiveView(self.store.uri, stage, self.settings.max_concurrent or 1))
        return out

    def fit(self, stage: Stage, announce: Any = None) -> None:
        """Run one stage as a Ray Tune experiment (restored when resuming and the stage allows it). Ray's own view
        of the outcome is not trusted: the trial index decides."""
        from ray import tune

        s = self.settings
        wrapped = tune.with_resources(
            tune.with_parameters(stage.trainable, **stage.shared), trial_resources(s.resources)
        )
        path = s.ray_storage.rstrip("/") + "/" + stage.name
        if self.options.resume and stage.restorable and tune.Tuner.can_restore(path):
            log.info("resuming %s from %s", stage.name, path)
            tuner = tune.Tuner.restore(path, trainable=wrapped, resume_errored=True)
        else:
            tuner = tune.Tuner(
                wrapped,
                param_space=stage.param_space(),
                tune_config=stage.tune_config(s),
                run_config=run_config(s, stage.name, self.callbacks(stage, announce), self.options.view),
            )
        fit_tuner(tuner)

    # ------------------------------------------------------------------ the end
    def reconcile(self) -> dict[str, int]:
        """MLflow made equal to the index; trials a stopped driver left running marked interrupted (reopened on
        resume); every ended trial's stored state shrunk (a driver killed between a trial's end and its release left
        it whole)."""
        p, client = self.parent, self.client
        replayed = sync_study(client, self.store, p.experiment_id, p.parent_run_id)
        if any(replayed.values()):
            log.info("MLflow was behind the trial index; caught up: %s", replayed)
        for rec in TrialIndex(self.store).all():
            if rec.get("status") == RUNNING and rec.get("mlflow_run_id"):
                client.set_tag(rec["mlflow_run_id"], "cktf.status", "interrupted")
                client.set_terminated(rec["mlflow_run_id"], "KILLED")
            elif rec.get("status") in TERMINAL:
                release_trial(self.store.uri, rec, self.settings.keep_trial_state)
        return replayed

    def close(self, status: str, counts: dict[str, int], replay_hint: str) -> None:
        """The run's final status: on the parent run (FINISHED complete, FAILED every trial failed, KILLED
        incomplete) and in ``state.json``; a complete run's working folders on this node go."""
        client, parent_id = self.client, self.parent.parent_run_id
        complete = status in ("complete", "failed")
        client.set_tag(parent_id, self.status_tag, status)
        client.set_terminated(parent_id, {"complete": "FINISHED", "failed": "FAILED"}.get(status, "KILLED"))
        if complete:
            remove_study_scratch(self.store.uri)  # this node's working folders: nothing there is needed again
        self.write_state(status=status, stage="done" if complete else "stopped", counts=counts, finished_at=time.time())
        if not client.up:
            log.warning(
                "MLflow at %s is still down: the results are in the trial index (%s); %s",
                self.settings.mlflow.tracking_uri,
                self.store.uri,
                replay_hint,
            )


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


__all__ = ["TIME_ATTR", "RunContext", "RunOptions", "fit_tuner", "refuse_existing"]
