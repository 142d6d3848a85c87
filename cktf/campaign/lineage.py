"""The campaign's index and MLflow lineage: one record and one MLflow child run per *run* (pair, method, seed).

The index is ``<campaign>/trials/<run key>.json`` (the study's :class:`~cktf.tune.results.reader.TrialIndex`
format, keyed by the run instead of Ray's trial id, so a run keeps its record, its MLflow run and its checkpoint
across drivers): status, per-epoch history, latest checkpoint, the Ray trials that ran it, its scores. It is the
truth for what ran (docs/architecture.md); MLflow is a view of it, replayed from it by
:func:`~cktf.tune.results.tracking.sync_study` when MLflow missed something.

:class:`CampaignCallback` (driver side, a Ray Tune callback) writes both: the child run is created under the
campaign's parent run and tagged ``cktf.pair``, ``cktf.method``, ``cktf.seed`` (and ``cktf.trial_id`` = the run key,
how a resumed driver or ``sync_study`` finds it again); every epoch's whitelisted metrics go to it at
``step = epoch``, once; when the run ends its scores (``campaign/score``, the table's number, and
``campaign/test_acc_selected``, ``campaign/test_acc_last``, ``campaign/test_acc_max_over_epochs``) and its final
status. MLflow is written before the index, so an index that says "finished" implies MLflow says so too.
"""

from __future__ import annotations

import time
from typing import Any

from ray.tune import Callback

from ..tune.results.lineage import terminate_run
from ..tune.results.reader import (
    BEST_EPOCH,
    FAILED,
    FAILURE_KEY,
    FINISHED,
    RUNNING,
    TrialIndex,
    select_epoch,
    wanted_metrics,
)
from ..tune.results.retention import release_trial
from ..tune.results.tracking import DEFAULT_BUDGET_S, DOWN, Tracking

#: the metric every run reports each epoch (the index of logged steps reads it back from MLflow)
STEP_METRIC = "lr"
SCORE_METRIC = "campaign/score"


def run_scores(history: list[dict[str, Any]], selection_metric: str = "val_acc") -> dict[str, float]:
    """A run's test accuracies by protocol: at the epoch of its best ``selection_metric`` (``selected``), at its last
    epoch (``last``), and the best test epoch (``max_over_epochs``: the official code's number), plus the selected
    epoch. Missing pieces (no val split, no test metric) are left out."""
    rows = [h for h in history if isinstance(h.get("test_acc"), (int, float))]
    if not rows:
        return {}
    out: dict[str, float] = {"last": float(rows[-1]["test_acc"]), "max_over_epochs": max(h["test_acc"] for h in rows)}
    chosen = select_epoch(history, selection_metric, "max", BEST_EPOCH)
    if chosen and isinstance(chosen.get("test_acc"), (int, float)):
        out["selected"] = float(chosen["test_acc"])
        out["selected_epoch"] = float(chosen["epoch"])
    return out


def child_tags(parent_id: str, campaign: str, run: dict[str, Any]) -> dict[str, str]:
    return {
        "mlflow.parentRunId": parent_id,
        "cktf.parent": parent_id,
        "cktf.kind": "campaign_run",
        "cktf.campaign": campaign,
        "cktf.trial_id": run["key"],
        "cktf.run_key": run["key"],
        "cktf.pair": run["pair"],
        "cktf.method": run["label"],
        "cktf.distiller": run["distiller"],
        "cktf.seed": str(run["seed"]),
        "cktf.status": RUNNING,
    }


class CampaignCallback(Callback):
    """Driver-side bookkeeping of a campaign's runs (see the module docstring)."""

    def __init__(
        self,
        tracking_uri: str,
        experiment_id: str,
        parent_run_id: str,
        campaign_dir: str,
        campaign: str,
        runs: dict[str, dict[str, Any]],
        score: str = "selected",
        budget_s: float = DEFAULT_BUDGET_S,
        progress: bool = False,
        keep_state: bool = False,
    ):
        self.keep_state = keep_state  # keep_trial_state: an ended run's resume state stays in storage
        self.tracking_uri, self.experiment_id, self.parent_run_id = tracking_uri, experiment_id, parent_run_id
        self.campaign_dir, self.campaign, self.runs, self.score = campaign_dir, campaign, runs, score
        self.budget_s, self.progress = float(budget_s), progress
        self._client = None
        self._logged: dict[str, set[int]] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_client": None, "_logged": {}}

    @property
    def client(self) -> Tracking:
        if self._client is None:
            self._client = Tracking.shared(self.tracking_uri, self.budget_s)
        return self._client

    @property
    def index(self) -> TrialIndex:
        return TrialIndex(self.campaign_dir)

    @staticmethod
    def key_of(trial: Any) -> str:
        return str(trial.config["_point"]["_key"])

    # ------------------------------------------------------------------ runs
    def run_for(self, key: str) -> str | None:
        """The run's MLflow child run: from the index, else by its tags, else a new one (params logged once);
        ``None`` while MLflow is down (the index record is kept all the same)."""
        rec = self.index.get(key)
        run = self.runs[key]
        run_id = rec.get("mlflow_run_id")
        if not run_id:
            found = self.client.search_runs(
                [self.experiment_id],
                filter_string=f"tags.`cktf.run_key` = '{key}' and tags.`cktf.parent` = '{self.parent_run_id}'",
                max_results=1,
            )
            run_id = found[0].info.run_id if found else None
        if not run_id and self.client.up:
            name = f"{run['pair']} {run['label']} s{run['seed']}"
            created = self.client.create_run(
                self.experiment_id, run_name=name, tags=child_tags(self.parent_run_id, self.campaign, run)
            )
            if created:
                from mlflow.entities import Param

                run_id = created.info.run_id
                params = [Param(str(k), str(v)[:500]) for k, v in sorted(run["params"].items())]
                for i in range(0, len(params), 100):
                    self.client.log_batch(run_id, params=params[i : i + 100])
        if not rec:
            self.index.update(
                key,
                created=time.time(),
                **{k: run[k] for k in ("pair", "label", "distiller", "seed", "cell")},
                config=run["params"],
                status=RUNNING,
                history=[],
                trials=[],
                mlflow_run_id=run_id,
            )
        elif run_id and run_id != rec.get("mlflow_run_id"):
            self.index.update(key, mlflow_run_id=run_id)
        return run_id

    def _logged_steps(self, key: str, run_id: str | None) -> set[int] | None:
        if run_id is None:
            return None
        if key not in self._logged:
            history = self.client.get_metric_history(run_id, STEP_METRIC)
            if history is DOWN:
                return None
            self._logged[key] = {int(m.step) for m in history}
        return self._logged[key]

    def finish(self, key: str, status: str, error: str | None = None) -> None:
        """MLflow first (scores, then the status), then the index."""
        from mlflow.entities import Metric

        run_id = self.run_for(key)
        rec = self.index.get(key)
        scores = run_scores(rec.get("history", [])) if status == FINISHED else {}
        if run_id:
            ts = int(time.time() * 1000)
            metrics = [
                Metric(
                    f"campaign/test_acc_{k}" if k != "selected_epoch" else "campaign/selected_epoch", float(v), ts, 0
                )
                for k, v in scores.items()
            ]
            if self.score in scores:
                metrics.append(Metric(SCORE_METRIC, float(scores[self.score]), ts, 0))
            if metrics:
                self.client.log_batch(run_id, metrics=metrics)
            terminate_run(self.client, run_id, status, error, None, STEP_METRIC)
        rec = self.index.update(key, status=status, error=error, scores=scores, ended=time.time())
        release_trial(self.campaign_dir, rec, self.keep_state)
        if self.progress:
            done = sum(1 for r in self.index.all() if r.get("status") in (FINISHED, FAILED))
            got = f"{self.score} test_acc {scores[self.score]:.2f}" if self.score in scores else (error or "")[:120]
            print(f"[{done}/{len(self.runs)}] {key}: {status} {got}", flush=True)

    # ------------------------------------------------------------------ Tune hooks
    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info) -> None:
        key = self.key_of(trial)
        run_id = self.run_for(key)
        if run_id:
            self.client.update_run(run_id, status="RUNNING")
        rec = self.index.get(key)
        attempts = list(rec.get("trials", []))
        if trial.trial_id not in attempts:
            attempts.append(trial.trial_id)
        self.index.update(key, status=RUNNING, trials=attempts, error=None, failure=None)  # --retry-failed

    on_trial_restore = on_trial_start

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info) -> None:
        key = self.key_of(trial)
        retries = int(getattr(trial, "num_failures", 0))
        self.index.update(key, retries=retries)
        run_id = self.index.get(key).get("mlflow_run_id")
        if run_id:
            self.client.set_tag(run_id, "cktf.retries", str(retries))

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info) -> None:
        from mlflow.entities import Metric

        key = self.key_of(trial)
        run_id = self.run_for(key)
        if result.get(FAILURE_KEY):
            self.index.update(key, failure=str(result.get("cktf/error", "failed")))
            return
        metrics = wanted_metrics(result)
        step = int(result.get("epoch", result.get("training_iteration", 1) - 1))
        rec = self.index.get(key)
        logged = self._logged_steps(key, run_id)
        if logged is not None and step not in logged and all(h.get("epoch") != step for h in rec.get("history", [])):
            ts = int(time.time() * 1000)
            if self.client.log_batch(run_id, metrics=[Metric(k, v, ts, step) for k, v in metrics.items()]) is not DOWN:
                logged.add(step)
        history = [h for h in rec.get("history", []) if h.get("epoch") != step] + [{"epoch": step, **metrics}]
        history.sort(key=lambda h: h["epoch"])
        self.index.update(
            key,
            history=history,
            iterations=int(result.get("epochs_done", len(history))),
            node_id=result.get("cktf/node_id", rec.get("node_id")),
            pid=result.get("pid", rec.get("pid")),
            gpu_ids=result.get("cktf/gpu_ids", rec.get("gpu_ids")),
            data={k: v for k, v in result.items() if str(k).startswith("data/")} or rec.get("data"),
            start_epochs=_starts(rec, result),
        )

    def on_checkpoint(self, iteration: int, trials: list, trial: Any, checkpoint: Any, **info) -> None:
        self.index.update(
            self.key_of(trial), checkpoint=checkpoint.path, checkpoint_fs=type(checkpoint.filesystem).__name__
        )

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info) -> None:
        key = self.key_of(trial)
        rec = self.index.get(key)
        if rec.get("failure"):
            self.finish(key, FAILED, rec["failure"])
            return
        epochs = int(self.runs[key]["epochs"])
        if int(rec.get("iterations", 0)) >= epochs:
            self.finish(key, FINISHED)
        else:
            self.finish(key, FAILED, f"ended after {rec.get('iterations', 0)} of {epochs} epochs")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info) -> None:
        from ..tune.results.lineage import trial_error_text

        self.finish(self.key_of(trial), FAILED, trial_error_text(trial) or "run failed (see the Ray trial directory)")


def _starts(rec: dict[str, Any], result: dict) -> list[int]:
    """The epoch each process of the run started from (0, then a checkpoint's epoch after each restart or resume)."""
    starts = list(rec.get("start_epochs", []))
    start = result.get("cktf/start_epoch")
    if start is not None and int(result.get("epochs_done", 0)) == int(start) + 1:  # the process's first result
        starts.append(int(start))
    return starts


__all__ = ["SCORE_METRIC", "CampaignCallback", "child_tags", "run_scores"]
