"""MLflow as the driver talks to it: calls that survive a tracking server's restart, a study that survives its
absence, and the replay of what MLflow missed from the trial index (``cktf mlflow-sync``).

The trial index is the source of truth (docs/architecture.md); MLflow is a view of it. So:

* :class:`Tracking` wraps an ``MlflowClient``: a call that fails for a transient reason (the server is unreachable,
  restarting, answers 5xx) is retried with backoff for up to ``budget_s`` seconds. A server that stays down longer
  is reported once, clearly; the study goes on (its results stay in the index) and later calls are skipped, except
  one attempt every :data:`RECHECK_S` seconds. When the server answers again, ``on_back`` replays what it missed.
* :func:`sync_study` makes MLflow equal to the index: every trial's run (created if missing), its params, every
  epoch's metrics (each step once), its final status, and the parent run's status, best trial and artifacts.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
#: while the server is down, one call in this many seconds tries it again
RECHECK_S = 15.0
#: how long a call keeps retrying before the server counts as down
DEFAULT_BUDGET_S = 60.0


def quiet_mlflow_retries() -> None:
    """Our own budget decides how long a call retries: MLflow's client would block the Tune loop for minutes."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")


def transient(exc: BaseException) -> bool:
    """The server could not be reached or answered an error of its own (not a bad request)."""
    import requests
    from mlflow.exceptions import MlflowException

    if isinstance(exc, (requests.exceptions.ConnectionError, requests.exceptions.Timeout, ConnectionError)):
        return True
    if isinstance(exc, MlflowException):
        text = str(exc)
        return "API request to" in text or exc.error_code in ("TEMPORARILY_UNAVAILABLE", "INTERNAL_ERROR")
    return False


class Tracking:
    """An ``MlflowClient`` whose calls retry through a restart and degrade to no-ops while the server is down.

    ``client.log_batch(...)`` etc. return the client's result, or :data:`DOWN` (falsy) when the server is down.
    """

    def __init__(self, tracking_uri: str, budget_s: float = DEFAULT_BUDGET_S):
        self.tracking_uri, self.budget_s = tracking_uri, float(budget_s)
        self.down_since: float | None = None
        self.missed = 0
        self.on_back: Callable[[], None] | None = None
        self._client = None
        self._last_try = 0.0

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_client": None, "on_back": None}

    @classmethod
    def shared(cls, tracking_uri: str, budget_s: float = DEFAULT_BUDGET_S) -> Tracking:
        """The process's one :class:`Tracking` for ``tracking_uri``: the driver's callback and its final steps see
        the same outage (reported once) and the same recovery."""
        found = _SHARED.get(tracking_uri)
        if found is None:
            found = _SHARED[tracking_uri] = cls(tracking_uri, budget_s)
        found.budget_s = float(budget_s)
        return found

    @property
    def client(self):
        if self._client is None:
            import mlflow

            quiet_mlflow_retries()
            self._client = mlflow.MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    @property
    def up(self) -> bool:
        return self.down_since is None

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if name.startswith("_"):
            raise AttributeError(name)
        method = getattr(self.client, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            return self._call(name, method, args, kwargs)

        return call

    def _call(self, name: str, method: Callable, args: tuple, kwargs: dict) -> Any:
        if self.down_since is not None and time.time() - self._last_try < RECHECK_S:
            self.missed += 1
            return DOWN
        deadline = time.time() + (self.budget_s if self.down_since is None else 0.0)
        delay = 0.5
        while True:
            try:
                result = method(*args, **kwargs)
            except Exception as exc:
                if not transient(exc):
                    raise
                if time.time() + delay <= deadline:
                    time.sleep(delay)
                    delay = min(2 * delay, 8.0)
                    continue
                self._went_down(name, exc)
                return DOWN
            if self.down_since is not None:
                self._came_back()
            return result

    def _went_down(self, name: str, exc: BaseException) -> None:
        self._last_try = time.time()
        self.missed += 1
        if self.down_since is None:
            self.down_since = time.time()
            log.warning(
                "MLflow at %s has not answered for %.0f s (%s: %s). Training goes on and the trial index keeps every "
                "result; they reach MLflow when it is back, or with `cktf mlflow-sync STUDY`.",
                self.tracking_uri,
                self.budget_s,
                name,
                str(exc).splitlines()[0][:200],
            )

    def _came_back(self) -> None:
        gone = time.time() - (self.down_since or time.time())
        self.down_since = None
        log.warning("MLflow at %s answers again after %.0f s; replaying what it missed", self.tracking_uri, gone)
        if self.on_back is not None:
            self.on_back()


_SHARED: dict[str, Tracking] = {}


class _Down:
    """What a call returns while the tracking server is down: falsy, and nothing to read."""

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return "DOWN"


DOWN = _Down()


# ------------------------------------------------------------------------------------------ replay


def sync_study(tracking: Any, store: Any, experiment_id: str, parent_id: str, metric: str) -> dict[str, int]:
    """Make MLflow hold exactly what the study's trial index holds; returns what it had to add or fix.

    Idempotent: a second call adds nothing. Each epoch is logged once (steps already in the run are skipped)."""
    from mlflow.entities import Metric, Param

    from .lineage import terminate_run, trial_tags
    from .reader import MLFLOW_STATUS, TERMINAL, TrialIndex

    index = TrialIndex(store)
    done = {"runs_created": 0, "epochs_logged": 0, "statuses_fixed": 0}
    for rec in index.all():
        run_id = rec.get("mlflow_run_id")
        if run_id:
            try:
                run = tracking.get_run(run_id)
            except Exception as exc:  # deleted, or another store: find or create it again
                log.info("trial %s: its run %s is not found (%s)", rec["trial_id"], run_id, exc)
                run = None
        else:
            run = None
        if run is DOWN:
            return done
        if run is None:
            found = tracking.search_runs(
                [experiment_id],
                filter_string=f"tags.`cktf.trial_id` = '{rec['trial_id']}' and tags.`cktf.parent` = '{parent_id}'",
                max_results=1,
            )
            if found is DOWN:
                return done
            if found:
                run = found[0]
            else:
                tags = trial_tags(parent_id, rec["trial_id"], store.uri.rsplit("/", 1)[-1], bool(rec.get("baseline")))
                run = tracking.create_run(experiment_id, run_name=rec["trial_id"], tags=tags)
                params = [Param(str(k), str(v)[:500]) for k, v in sorted(rec.get("config", {}).items())]
                for i in range(0, len(params), 100):
                    tracking.log_batch(run.info.run_id, params=params[i : i + 100])
                done["runs_created"] += 1
            index.update(rec["trial_id"], mlflow_run_id=run.info.run_id)
        run_id = run.info.run_id
        history = tracking.get_metric_history(run_id, metric)
        if history is DOWN:
            return done
        logged = {int(m.step) for m in history}
        ts = int(time.time() * 1000)
        for row in rec.get("history", []):
            if int(row["epoch"]) in logged:
                continue
            values = [Metric(k, float(v), ts, int(row["epoch"])) for k, v in row.items() if k != "epoch"]
            tracking.log_batch(run_id, metrics=values)
            done["epochs_logged"] += 1
        status = rec.get("status")
        if status in TERMINAL and (
            run.info.status != MLFLOW_STATUS[status] or run.data.tags.get("cktf.status") != status
        ):
            terminate_run(tracking, run_id, status, rec.get("error"), rec.get("score"), metric)
            done["statuses_fixed"] += 1
    return done


def sync_parent(tracking: Any, results: Any, parent_id: str) -> None:
    """The parent run's final status, best trial and artifacts, from the study's state (after a complete study)."""
    import tempfile

    status = results.state.get("status")
    if status not in ("complete", "failed", "incomplete"):
        return
    run = tracking.get_run(parent_id)
    if run is DOWN:
        return
    best = results.best() if status == "complete" else None
    if best is not None and run.data.tags.get("cktf.best_trial") != best.trial_id:
        tracking.log_metric(parent_id, f"best/{results.metric}", float(best.score))
        if best.test is not None:
            tracking.log_metric(parent_id, f"best/{results.test_metric}", float(best.test))
        tracking.set_tag(parent_id, "cktf.best_trial", best.trial_id)
    have = {a.path for a in (tracking.list_artifacts(parent_id) or [])}
    for folder, name in (("report", "report"), ("best", "best_student")):
        if name in have or not results.store.list(folder):
            continue
        local = results.store.local_path(folder)
        if local is None:
            local = Path(tempfile.mkdtemp(prefix="cktf-sync-"))
            for f in results.store.list(folder):
                results.store.download(local / f, folder, f)
        tracking.log_artifacts(parent_id, str(local), name)
    want = {"complete": "FINISHED", "failed": "FAILED"}.get(status, "KILLED")
    if run.info.status != want or run.data.tags.get("cktf.study_status") != status:
        tracking.set_tag(parent_id, "cktf.study_status", status)
        tracking.set_terminated(parent_id, want)
