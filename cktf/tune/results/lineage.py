"""The one trial callback: the trial index and an MLflow child run per trial, for every stage of every run.

:class:`TrialCallback` is a driver-side Ray Tune callback. For each trial of a stage (a study's search, its
confirmation, a campaign's grid) it keeps one record of the trial index (:mod:`.reader`: the truth for what the
trial did) and one MLflow child run under the run's parent run, found again by its ``cktf.trial_id`` tag, so a
resumed or retried trial logs into the same run. A trial is keyed by Ray's trial id, or by its grid point's
``_key`` (a campaign's ``pair.method.s<seed>``, which keeps its record across drivers). Only the whitelisted
metrics go to MLflow (``step = epoch``, each step once); the final status is FINISHED (ran every epoch), KILLED with
``cktf.status=pruned`` (ASHA stopped it) or FAILED; when a trial ends, its stored state shrinks
(:func:`~.retention.release_trial`).

What differs between stages (how a trial is named, tagged and numbered, what it logs when it ends, whether an early
end is a prune or a failure) is a :class:`StageLineage`, which each stage's owner defines: the study's search and
confirmation (:mod:`cktf.tune.run.study`), a campaign's runs (:mod:`cktf.campaign.run`).

The trial index is written whatever MLflow does; MLflow calls go through :class:`~.tracking.Tracking`, which
retries through a server restart and, while the server stays down, skips them: when it answers again the callback
replays what it missed from the index (:func:`~.mlflow_runs.sync_study`). Ray pickles callbacks with the experiment
(``Tuner.restore``), so the MLflow client is created lazily and left out of the pickle.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from ray.tune import Callback

from .mlflow_runs import STEP_METRIC, dataset_inputs, flat_config, rung_of, sync_study, terminate_run, trial_tags
from .mlflow_runs import trial_error_text as _error_text
from .reader import (
    BEST_EPOCH,
    FAILED,
    FAILURE_KEY,
    FINISHED,
    PRUNED,
    RUNNING,
    SCORE,
    TrialIndex,
    display,
    read_state,
    select_epoch,
    wanted_metrics,
)
from .retention import release_trial, strip_older
from .tracking import DEFAULT_BUDGET_S, DOWN, Tracking

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ParentRun:
    """Where a run's lineage goes: its tracking store, experiment, parent run and folder (the index)."""

    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    folder: str
    name: str
    budget_s: float = DEFAULT_BUDGET_S
    keep_state: bool = False  # keep_trial_state: an ended trial's resume state stays in storage


@dataclass(frozen=True)
class TrialLabels:
    """How one trial first appears: its values, the index fields it starts with, its MLflow run's name, tags and
    params."""

    config: dict[str, Any]
    record: dict[str, Any]
    name: str
    tags: dict[str, str]
    params: dict[str, Any]


@dataclass(frozen=True)
class StageLineage:
    """What the trial callback knows of one stage's trials (subclassed by each stage's owner).

    ``epochs``: a trial that reported this many epochs finished; one that ended before is ``early`` (pruned in a
    search, where ASHA stops trials; failed in a grid, where nothing may). ``metric``/``mode``/``selection``: how a
    trial's history is judged (its ``score``)."""

    stage: str
    epochs: int
    metric: str = "val_acc"
    mode: str = "max"
    selection: str = BEST_EPOCH
    early: str = PRUNED
    datasets: list[dict[str, Any]] = field(default_factory=list)
    asha: tuple[int, float] | None = None  # the search's rungs (grace, factor): a ``cktf.rung`` tag when it ends

    def key_of(self, trial: Any) -> str:
        """The trial's key in the index: its grid point's ``_key``, else Ray's trial id."""
        point = trial.config.get("_point") if isinstance(trial.config, dict) else None
        return str((point or {}).get("_key") or trial.trial_id)

    def config_of(self, trial: Any) -> dict[str, Any]:
        """The trial's values (a grid point's spread out), without the private ``_`` keys."""
        return {k: v for k, v in flat_config(dict(trial.config)).items() if not str(k).startswith("_")}

    def describe(self, key: str, trial: Any, index: TrialIndex, parent: ParentRun) -> TrialLabels:
        config = self.config_of(trial)
        tags = trial_tags(parent.parent_run_id, key, parent.name, False)
        return TrialLabels(config, {"stage": self.stage}, key, tags, config)

    def adopts_ghosts(self) -> bool:
        """Whether a new trial may take over a ghost's record (a searcher proposing a lost trial's config again)."""
        return False

    def end_metrics(self, record: dict[str, Any], status: str) -> dict[str, float]:
        """What the trial's run logs when it ends: its score (its selection metric at its selected epoch, as every
        output shows it; :data:`~.index.SCORE`), the column people sort the runs table by."""
        score = record.get("score")
        return {SCORE: display(score)} if isinstance(score, int | float) else {}

    def epochs_of(self, key: str) -> int:
        """The epochs the trial ``key`` runs when nothing stops it."""
        return self.epochs

    def ended_early(self, record: dict[str, Any]) -> tuple[str, str | None]:
        """The status (and error) of a trial that ended before its last epoch."""
        if self.early == FAILED:
            epochs = self.epochs_of(record["trial_id"])
            return FAILED, f"ended after {record.get('iterations', 0)} of {epochs} epochs"
        return self.early, None


class TrialCallback(Callback):
    """Driver-side bookkeeping of a stage's trials: the trial index first-hand, and MLflow as a view of it."""

    def __init__(self, parent: ParentRun, lineage: StageLineage, announce: Any = None):
        self.parent, self.lineage = parent, lineage
        self.announce = announce  # called with a record when a trial ends (the campaign's progress lines)
        self._client = None
        self._logged: dict[str, set[int]] = {}  # per trial, the epochs its MLflow run already holds
        self._run_params: dict[str, str] | None = None  # the run's run params, read from its state once
        self._parent_params_done = False

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_client": None, "_logged": {}, "_run_params": None, "_parent_params_done": False}

    @property
    def client(self) -> Tracking:
        if self._client is None:
            self._client = Tracking.shared(self.parent.tracking_uri, self.parent.budget_s)
            self._client.on_back = self.replay
        return self._client

    @property
    def index(self) -> TrialIndex:
        return TrialIndex(self.parent.folder)

    @property
    def run_params(self) -> dict[str, str]:
        """The run's params every trial shares (``run_params`` of its state: ``<term>/pairing``, docs/models.md)."""
        if self._run_params is None:
            found = read_state(self.index.store).get("run_params") or {}
            self._run_params = {str(k): str(v) for k, v in found.items()}
        return self._run_params

    def log_parent_params(self) -> None:
        """The run params on the parent run, once per driver: only the keys it lacks (an MLflow param is never
        changed; a resumed run whose parent run holds them already logs nothing)."""
        if self._parent_params_done or not self.run_params or not self.client.up:
            return
        from mlflow.entities import Param

        run = self.client.get_run(self.parent.parent_run_id)
        if run is DOWN or run is None:
            return
        have = run.data.params
        missing = [Param(k, v[:500]) for k, v in sorted(self.run_params.items()) if k not in have]
        if not missing or self.client.log_batch(self.parent.parent_run_id, params=missing) is not DOWN:
            self._parent_params_done = True

    def replay(self) -> dict[str, int]:
        """Give MLflow what it missed while it was down (or a killed driver never sent), from the index."""
        done = sync_study(self.client, self.index.store, self.parent.experiment_id, self.parent.parent_run_id)
        self._logged.clear()
        if any(done.values()):
            log.warning("MLflow caught up from the trial index: %s", done)
        return done

    def _logged_steps(self, key: str, run_id: str | None) -> set[int] | None:
        """The epochs the trial's run already has (read from MLflow once per driver: a driver killed between
        logging an epoch and recording it in the index must not log that epoch twice when it is re-run);
        ``None`` while MLflow is unreachable."""
        if run_id is None:
            return None
        if key not in self._logged:
            history = self.client.get_metric_history(run_id, STEP_METRIC)
            if history is DOWN:
                return None
            self._logged[key] = {int(m.step) for m in history}
        return self._logged[key]

    # -------------------------------------------------------------- runs
    def run_for(self, trial: Any) -> str | None:
        """The trial's child run: from the index, else by tag, else a new one (params logged once); ``None`` while
        MLflow is unreachable (the index record is kept all the same, and the run is made when MLflow is back)."""
        key = self.lineage.key_of(trial)
        rec = self.index.get(key)
        run_id = rec.get("mlflow_run_id")
        if not run_id:
            found = self.client.search_runs(
                [self.parent.experiment_id],
                filter_string=f"tags.`cktf.trial_id` = '{key}' and tags.`cktf.parent` = '{self.parent.parent_run_id}'",
                max_results=1,
            )
            run_id = found[0].info.run_id if found else None
        labels = None
        if not rec or not run_id:
            labels = self.lineage.describe(key, trial, self.index, self.parent)
        self.log_parent_params()
        if not run_id and self.client.up:
            tags = {**labels.tags, "cktf.status": RUNNING}
            run = self.client.create_run(self.parent.experiment_id, run_name=labels.name, tags=tags)
            if run:
                from mlflow.entities import Param

                run_id = run.info.run_id
                params = [Param(str(k), str(v)[:500]) for k, v in sorted({**self.run_params, **labels.params}.items())]
                for i in range(0, len(params), 100):
                    self.client.log_batch(run_id, params=params[i : i + 100])
                if self.lineage.datasets:
                    self.client.log_inputs(run_id, datasets=dataset_inputs(self.lineage.datasets))
        if not rec:
            self.index.update(
                key,
                created=time.time(),
                **labels.record,
                config=labels.config,
                name=labels.name,
                tags=labels.tags,
                params=labels.params,
                status=RUNNING,
                history=[],
                mlflow_run_id=run_id,
            )
        elif run_id != rec.get("mlflow_run_id"):
            self.index.update(key, mlflow_run_id=run_id)
        return run_id

    def end(self, key: str, status: str, error: str | None = None) -> None:
        """A trial ended: MLflow first (its end metrics, then the status), then the index, then its stored state
        shrinks. An index that says a trial ended implies MLflow says so too (and :func:`sync_study` repairs a
        driver killed between the two)."""
        rec = self.index.get(key)
        if rec.get("status") in (FINISHED, PRUNED) and rec.get("ended") and status != rec["status"]:
            # Ray restarted a trial that had ended (its snapshot lagged the driver it lost) and the restart went
            # wrong (its snapshot's checkpoint is gone): what the trial did stands
            log.info(
                "trial %s had ended (%s) before; its restart by Ray (%s) changes nothing", key, rec["status"], status
            )
            return
        again = rec.get("status") == status and rec.get("ended")  # a restarted trial that ended again at once
        metrics = {} if again else self.lineage.end_metrics(rec, status)
        run_id = rec.get("mlflow_run_id")
        if run_id:
            terminate_run(self.client, run_id, status, error, metrics)
        if again:
            return
        rec = self.index.update(key, status=status, error=error, ended=time.time(), end_metrics=metrics)
        release_trial(self.parent.folder, rec, self.parent.keep_state)
        if self.announce is not None:
            self.announce(rec)

    def _set_status(self, trial: Any, status: str, error: str | None = None) -> None:
        self.run_for(trial)
        self.end(self.lineage.key_of(trial), status, error)

    def adopt_ghost(self, trial: Any, trials: list) -> None:
        """A trial the index knows but Ray does not (the driver was killed after the trial started and before Ray's
        experiment snapshot recorded it): when the restored searcher proposes the same config again, the new trial
        takes over the ghost's record, MLflow run and checkpoint, so the sample runs once, from where it was."""
        if self.index.get(trial.trial_id):
            return
        known = {t.trial_id for t in trials}
        config = self.lineage.config_of(trial)
        for rec in self.index.all():
            if rec.get("status") == RUNNING and rec["trial_id"] not in known and rec.get("config") == config:
                ghost = rec["trial_id"]
                fields = {k: v for k, v in rec.items() if k != "trial_id"}
                self.index.update(trial.trial_id, **fields, adopted=ghost)
                self.index.delete(ghost)
                if rec.get("mlflow_run_id"):
                    self.client.set_tag(rec["mlflow_run_id"], "cktf.trial_id", trial.trial_id)
                    self.client.set_tag(rec["mlflow_run_id"], "cktf.adopted_from", ghost)
                return

    # -------------------------------------------------------------- Tune hooks
    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info) -> None:
        if self.lineage.adopts_ghosts():
            self.adopt_ghost(trial, trials)
        run_id = self.run_for(trial)
        key = self.lineage.key_of(trial)
        rec = self.index.get(key)
        if rec.get("status") in (FINISHED, PRUNED):
            return  # restarted from a lagging Ray snapshot: the trainable exits at once, the record stands
        if run_id:
            self.client.update_run(run_id, status="RUNNING")
        attempts = list(rec.get("trials", []))
        if trial.trial_id not in attempts:
            attempts.append(trial.trial_id)
        self.index.update(key, status=RUNNING, trials=attempts, error=None, failure=None)

    on_trial_restore = on_trial_start

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info) -> None:
        run_id = self.run_for(trial)
        retries = int(getattr(trial, "num_failures", 0))
        self.index.update(self.lineage.key_of(trial), retries=retries)
        if run_id:
            self.client.set_tag(run_id, "cktf.retries", str(retries))

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info) -> None:
        from mlflow.entities import Metric

        run_id = self.run_for(trial)
        key = self.lineage.key_of(trial)
        if result.get(FAILURE_KEY):  # its last result says why it failed; on_trial_complete records the status
            self.index.update(key, failure=str(result.get("cktf/error", "failed")))
            return
        metrics = wanted_metrics(result)
        step = int(result.get("epoch", result.get("training_iteration", 1) - 1))
        rec = self.index.get(key)
        ts = int(time.time() * 1000)
        logged = self._logged_steps(key, run_id)
        if logged is not None and step not in logged and all(h.get("epoch") != step for h in rec.get("history", [])):
            # an epoch re-run after a restart is not logged twice (the index keeps the re-run's values)
            if self.client.log_batch(run_id, metrics=[Metric(k, v, ts, step) for k, v in metrics.items()]) is not DOWN:
                logged.add(step)
        history = [h for h in rec.get("history", []) if h.get("epoch") != step] + [{"epoch": step, **metrics}]
        history.sort(key=lambda h: h["epoch"])
        extra = {k: v for k, v in result.items() if str(k).startswith("data/")}
        if "probe/curve" in result:  # the final probe's per-epoch curve (Fig. 2): its own metric series
            import json

            curve = json.loads(result["probe/curve"])
            batch = [
                Metric(f"probe_curve/{k}", float(v), ts, int(row["probe_epoch"]))
                for row in curve
                for k, v in row.items()
                if k != "probe_epoch"
            ]
            for i in range(0, len(batch) if run_id else 0, 500):
                self.client.log_batch(run_id, metrics=batch[i : i + 500])
            self.index.update(key, probe_curve=curve)
        lineage = self.lineage
        self.index.update(
            key,
            history=history,
            iterations=int(result.get("epochs_done", len(history))),
            score=select_epoch(history, lineage.metric, lineage.mode, lineage.selection).get(lineage.metric),
            data=extra or rec.get("data"),
            node_id=result.get("cktf/node_id", rec.get("node_id")),
            pid=result.get("pid", rec.get("pid")),
            gpu_ids=result.get("cktf/gpu_ids", rec.get("gpu_ids")),
            start_epochs=_starts(rec, result),
            workers=int(result.get("cktf/workers", rec.get("workers", 1))),
            worker_nodes=result.get("cktf/worker_nodes", rec.get("worker_nodes")),
        )
        if result.get("checkpoint_path"):  # a data-parallel trial's: Ray Train persisted it, the result names it
            self.record_checkpoint(key, str(result["checkpoint_path"]), str(result.get("cktf/checkpoint_fs", "")))

    def on_experiment_end(self, trials: list, **info) -> None:
        """Ray ended the experiment: a record still running that Ray never knew (a ghost nobody adopted: the
        restored searcher proposed another config) is marked failed, lost, so the index tells the truth."""
        if not self.lineage.adopts_ghosts():
            return
        known = {t.trial_id for t in trials}
        for rec in self.index.all():
            if rec.get("status") == RUNNING and rec["trial_id"] not in known and rec.get("stage") == self.lineage.stage:
                error = "lost: the driver was killed before Ray recorded this trial, and no resumed trial took it over"
                self.end(rec["trial_id"], FAILED, error)

    def on_checkpoint(self, iteration: int, trials: list, trial: Any, checkpoint: Any, **info) -> None:
        self.record_checkpoint(self.lineage.key_of(trial), checkpoint.path, type(checkpoint.filesystem).__name__)

    def record_checkpoint(self, key: str, path: str, filesystem: str) -> None:
        """The trial's latest checkpoint (Tune's, or Ray Train's for a data-parallel trial) in its record."""
        rec = self.index.update(key, checkpoint=path, checkpoint_fs=filesystem or "LocalFileSystem")
        if not self.parent.keep_state:
            strip_older(rec)  # one resume state per running trial: the latest

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info) -> None:
        key = self.lineage.key_of(trial)
        rec = self.index.get(key)
        if rec.get("failure"):
            self._set_status(trial, FAILED, rec["failure"])
            return
        if int(rec.get("iterations", 0)) >= self.lineage.epochs_of(key):
            self._set_status(trial, FINISHED)
        else:
            self._set_status(trial, *self.lineage.ended_early(rec))
        run_id = self.index.get(key).get("mlflow_run_id")
        if run_id and self.lineage.asha is not None:
            self.client.set_tag(run_id, "cktf.rung", str(rung_of(int(rec.get("iterations", 0)), *self.lineage.asha)))

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info) -> None:
        self._set_status(trial, FAILED, _error_text(trial) or "trial failed (see the Ray trial directory)")


def _starts(rec: dict[str, Any], result: dict) -> list[int]:
    """The epoch each process of the trial started from (0, then the checkpoint's epoch after each restart)."""
    starts = list(rec.get("start_epochs", []))
    start = result.get("cktf/start_epoch")
    if start is not None and int(result.get("epochs_done", 0)) == int(start) + 1:  # its first result
        starts.append(int(start))
    return starts


__all__ = ["ParentRun", "StageLineage", "TrialCallback", "TrialLabels"]
