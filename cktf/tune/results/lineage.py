"""Study lineage in MLflow: the study's parent run and the driver-side callback that keeps the trial index.

* :func:`parent_run` -- one parent run per study (study file, space, scheduler and sampler settings, git commit),
  created once and reused only on ``--resume``.
* :class:`MLflowStudyCallback` -- writes the trial index (:mod:`.reader`) and one child run per
  trial found again by its ``cktf.trial_id`` tag, so a resumed or retried trial logs into the same
  run. Only the whitelisted metrics go to MLflow (``step = epoch``); the final status is FINISHED
  (ran ``max_t`` epochs), KILLED with tag ``cktf.status=pruned`` (ASHA stopped it) or FAILED. The study's run
  params (the ``StudyPlan``'s, from its dry step, kept in the study's state: ``<term>/pairing`` official |
  generalised, docs/models.md) are params of every child run and of the parent run.

The trial index is written whatever MLflow does; MLflow calls go through :class:`~.tracking.Tracking`, which
retries through a server restart and, while the server stays down, skips them: when it answers again the
callback replays what it missed from the index (:func:`~.tracking.sync_study`).

Ray pickles callbacks with the experiment (``Tuner.restore``), so the MLflow client is created lazily
and left out of the pickle.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ray.tune import Callback

from .reader import (
    BEST_EPOCH,
    CONFIRM,
    FAILED,
    FAILURE_KEY,
    FINISHED,
    MLFLOW_STATUS,
    PRUNED,
    RUNNING,
    SEARCH,
    TrialIndex,
    read_state,
    select_epoch,
    wanted_metrics,
)
from .retention import release_trial
from .tracking import DEFAULT_BUDGET_S, DOWN, Tracking, sync_study


def flat_config(config: dict[str, Any]) -> dict[str, Any]:
    """A trial's config with a confirmation run's ``_point`` (its configuration, group and seed) spread out."""
    point = config.get("_point")
    return {**{k: v for k, v in config.items() if k != "_point"}, **(point or {})}


def trial_config(trial: Any) -> dict[str, Any]:
    return {k: v for k, v in flat_config(dict(trial.config)).items() if not str(k).startswith("_")}


def trial_tags(parent_run_id: str, trial_id: str, study: str, baseline: bool) -> dict[str, str]:
    """The tags of a trial's child run (how a resumed driver, or ``cktf mlflow-sync``, finds it again)."""
    return {
        "mlflow.parentRunId": parent_run_id,
        "cktf.parent": parent_run_id,
        "cktf.trial_id": trial_id,
        "cktf.study": study,
        "cktf.baseline": str(baseline).lower(),
    }


#: short names of common searched parameters in run names (``t03 tau=0.07 d=128``)
SHORT = {"feat_dim": "d", "nce_k": "N", "alpha1": "a1", "alpha2": "a2", "mapping": "map", "optim.lr": "lr"}


def short_value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.2g}" if abs(v) < 1000 else f"{v:.3g}"
    return str(v)


def short_params(config: dict[str, Any], keys: list[str] | None = None, width: int = 70) -> str:
    """``tau=0.07 d=128 ...``: the searched values, short, at most ``width`` characters."""
    parts = [f"{SHORT.get(k, k.rsplit('.', 1)[-1])}={short_value(config[k])}" for k in keys or sorted(config)]
    out = ""
    for p in parts:
        if len(out) + len(p) + 1 > width:
            return out + " …"
        out = f"{out} {p}" if out else p
    return out


def run_name(record: dict[str, Any], keys: list[str] | None = None) -> str:
    """A child run's name a person can read: ``t03 tau=0.07 d=128``, ``t01 defaults``, ``c2 s1001 tau=0.07``."""
    if record.get("stage") == CONFIRM:
        head = f"c{int(record.get('group', 0))} s{int(record.get('seed', 0))}"
    else:
        head = f"t{int(record.get('number', 0)):02d}"
    body = "defaults" if record.get("baseline") else short_params(record.get("config", {}), keys, 60)
    return f"{head} {body}".strip()


def rung_of(epochs: int, grace: int, factor: float) -> int:
    """ASHA's rung a trial reached: 0 below the grace period, then 1 + floor(log_factor(epochs / grace))."""
    import math

    if epochs < grace:
        return 0
    return 1 + int(math.floor(math.log(epochs / grace, factor) + 1e-9))


def dataset_inputs(datasets: list[dict[str, Any]]) -> list:
    """MLflow ``DatasetInput`` entities for the study's splits (``name``, ``digest``, ``source``, ``context``,
    ``profile``): what ``mlflow.log_input`` logs, built without a pandas/numpy copy of the images."""
    import json

    from mlflow.entities import Dataset, DatasetInput, InputTag

    return [
        DatasetInput(
            Dataset(
                name=d["name"],
                digest=d["digest"],
                source_type="local",
                source=json.dumps({"uri": d["source"]}),
                profile=json.dumps(d.get("profile", {})),
            ),
            tags=[InputTag("mlflow.data.context", d["context"])],
        )
        for d in datasets
    ]


class MLflowStudyCallback(Callback):
    """Driver-side MLflow logging of a study: child run per trial under the study's parent run."""

    def __init__(
        self,
        tracking_uri: str,
        experiment_id: str,
        parent_run_id: str,
        study_dir: str,
        study_name: str,
        max_t: int,
        baseline: dict[str, Any],
        metric: str = "val_acc",
        mode: str = "max",
        selection: str = BEST_EPOCH,
        budget_s: float = DEFAULT_BUDGET_S,
        stage: str = SEARCH,
        datasets: list[dict[str, Any]] | None = None,
        searched: list[str] | None = None,
        asha: tuple[int, float] | None = None,
        keep_state: bool = False,
    ):
        self.keep_state = keep_state  # keep_trial_state: an ended trial's resume state stays in storage
        self.stage, self.datasets, self.searched, self.asha = stage, list(datasets or []), searched, asha
        self.tracking_uri, self.experiment_id, self.parent_run_id = tracking_uri, experiment_id, parent_run_id
        self.study_dir, self.study_name, self.max_t, self.baseline = study_dir, study_name, int(max_t), baseline
        self.metric, self.mode, self.selection = metric, mode, selection  # how a trial's history is judged
        self.budget_s = float(budget_s)
        self._client = None
        self._logged: dict[str, set[int]] = {}  # per trial, the epochs its MLflow run already holds
        self._run_params: dict[str, str] | None = None  # the study's run params, read from its state once
        self._parent_params_done = False

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_client": None, "_logged": {}, "_run_params": None, "_parent_params_done": False}

    @property
    def run_params(self) -> dict[str, str]:
        """The study's run params (``run_params`` of its state, written when the driver obtains the teacher)."""
        if self._run_params is None:
            self._run_params = {
                str(k): str(v) for k, v in (read_state(self.index.store).get("run_params") or {}).items()
            }
        return self._run_params

    def log_parent_params(self) -> None:
        """The run params on the parent run, once per driver: only the keys it lacks (an MLflow param is never
        changed; a resumed study whose parent run holds them already logs nothing)."""
        if self._parent_params_done or not self.run_params or not self.client.up:
            return
        from mlflow.entities import Param

        run = self.client.get_run(self.parent_run_id)
        if run is DOWN or run is None:
            return
        have = run.data.params
        missing = [Param(k, v[:500]) for k, v in sorted(self.run_params.items()) if k not in have]
        if not missing or self.client.log_batch(self.parent_run_id, params=missing) is not DOWN:
            self._parent_params_done = True

    def replay(self) -> dict[str, int]:
        """Give MLflow what it missed while it was down (or a killed driver never sent), from the index."""
        done = sync_study(self.client, self.index.store, self.experiment_id, self.parent_run_id, self.metric)
        self._logged.clear()
        if any(done.values()):
            import logging

            logging.getLogger(__name__).warning("MLflow caught up from the trial index: %s", done)
        return done

    def _logged_steps(self, trial_id: str, run_id: str | None) -> set[int] | None:
        """The epochs the trial's run already has (read from MLflow once per driver: a driver killed between
        logging an epoch and recording it in the index must not log that epoch twice when it is re-run);
        ``None`` while MLflow is unreachable."""
        if run_id is None:
            return None
        if trial_id not in self._logged:
            history = self.client.get_metric_history(run_id, self.metric)
            if history is DOWN:
                return None
            self._logged[trial_id] = {int(m.step) for m in history}
        return self._logged[trial_id]

    @property
    def client(self) -> Tracking:
        if self._client is None:
            self._client = Tracking.shared(self.tracking_uri, self.budget_s)
            self._client.on_back = self.replay
        return self._client

    @property
    def index(self) -> TrialIndex:
        return TrialIndex(self.study_dir)

    # -------------------------------------------------------------- runs
    def run_for(self, trial: Any) -> str | None:
        """The trial's child run: from the index, else by tag, else a new one (params logged once); ``None`` while
        MLflow is unreachable (the index record is kept all the same, and the run is made when MLflow is back)."""
        rec = self.index.get(trial.trial_id)
        run_id = rec.get("mlflow_run_id")
        if not run_id:
            found = self.client.search_runs(
                [self.experiment_id],
                filter_string=(
                    f"tags.`cktf.trial_id` = '{trial.trial_id}' and tags.`cktf.parent` = '{self.parent_run_id}'"
                ),
                max_results=1,
            )
            run_id = found[0].info.run_id if found else None
            if found is DOWN:
                run_id = None
        config = trial_config(trial)
        raw = flat_config(dict(trial.config))
        if self.stage == CONFIRM:
            is_baseline = bool(raw.get("_baseline"))
            facts = {"stage": CONFIRM, "group": int(raw["_group"]), "seed": int(raw["_seed"])}
            facts["source_trial"] = raw.get("_source")
        else:
            is_baseline = bool(self.baseline) and all(config.get(k) == v for k, v in self.baseline.items())
            facts = {"stage": SEARCH}
        if not rec:
            facts["number"] = 1 + sum(1 for r in self.index.all() if r.get("stage", SEARCH) == facts["stage"])
        else:
            facts["number"] = rec.get("number", 0)
        self.log_parent_params()
        if not run_id and self.client.up:
            tags = trial_tags(self.parent_run_id, trial.trial_id, self.study_name, is_baseline)
            tags.update({"cktf.stage": facts["stage"], "cktf.status": RUNNING})
            if self.stage == CONFIRM:
                tags.update({"cktf.confirm_group": str(facts["group"]), "cktf.seed": str(facts["seed"])})
            name = run_name({**facts, "config": config, "baseline": is_baseline}, self.searched)
            run = self.client.create_run(self.experiment_id, run_name=name, tags=tags)
            if run:
                run_id = run.info.run_id
                from mlflow.entities import Param

                logged = {**self.run_params, **config, **({"seed": facts["seed"]} if self.stage == CONFIRM else {})}
                params = [Param(str(k), str(v)[:500]) for k, v in sorted(logged.items())]
                for i in range(0, len(params), 100):
                    self.client.log_batch(run_id, params=params[i : i + 100])
                if self.datasets:
                    self.client.log_inputs(run_id, datasets=dataset_inputs(self.datasets))
        if not rec:
            self.index.update(
                trial.trial_id,
                created=time.time(),
                config=config,
                baseline=is_baseline,
                status=RUNNING,
                history=[],
                mlflow_run_id=run_id,
                **facts,
            )
        elif run_id != rec.get("mlflow_run_id"):
            self.index.update(trial.trial_id, mlflow_run_id=run_id)
        return run_id

    def _set_status(self, trial: Any, status: str, error: str | None = None) -> None:
        """MLflow first, then the index: an index that says a trial ended implies MLflow says so too
        (and :func:`reconcile` repairs a driver killed between the two)."""
        run_id = self.run_for(trial)
        rec = self.index.get(trial.trial_id)
        again = rec.get("status") == status and rec.get("ended")  # a restarted trial that ended again at once
        score = None if again else rec.get("score")
        if run_id:
            terminate_run(self.client, run_id, status, error, score, self.metric)
        if not again:
            rec = self.index.update(trial.trial_id, status=status, error=error, ended=time.time())
            release_trial(self.study_dir, rec, self.keep_state)

    def adopt_ghost(self, trial: Any, trials: list) -> None:
        """A trial the index knows but Ray does not (the driver was killed after the trial started and before Ray's
        experiment snapshot recorded it): when the restored searcher proposes the same config again, the new trial
        takes over the ghost's record, MLflow run and checkpoint, so the sample runs once, from where it was."""
        if self.index.get(trial.trial_id):
            return
        known = {t.trial_id for t in trials}
        config = trial_config(trial)
        for rec in self.index.all():
            if rec.get("status") == RUNNING and rec["trial_id"] not in known and rec.get("config") == config:
                ghost = rec["trial_id"]
                self.index.update(trial.trial_id, **{k: v for k, v in rec.items() if k != "trial_id"}, adopted=ghost)
                self.index.delete(ghost)
                if rec.get("mlflow_run_id"):
                    self.client.set_tag(rec["mlflow_run_id"], "cktf.trial_id", trial.trial_id)
                    self.client.set_tag(rec["mlflow_run_id"], "cktf.adopted_from", ghost)
                return

    # -------------------------------------------------------------- Tune hooks
    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info) -> None:
        self.adopt_ghost(trial, trials)
        run_id = self.run_for(trial)
        if self.index.get(trial.trial_id).get("status") in (FINISHED, PRUNED):
            return  # restarted from a lagging Ray snapshot: the trainable exits at once, the record stands
        if run_id:
            self.client.update_run(run_id, status="RUNNING")
        self.index.update(trial.trial_id, status=RUNNING)

    on_trial_restore = on_trial_start

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info) -> None:
        run_id = self.run_for(trial)
        retries = int(getattr(trial, "num_failures", 0))
        self.index.update(trial.trial_id, retries=retries)
        if run_id:
            self.client.set_tag(run_id, "cktf.retries", str(retries))

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info) -> None:
        from mlflow.entities import Metric

        run_id = self.run_for(trial)
        if result.get(FAILURE_KEY):  # its last result says why it failed; on_trial_complete records the status
            self.index.update(trial.trial_id, failure=str(result.get("cktf/error", "failed")))
            return
        metrics = wanted_metrics(result)
        step = int(result.get("epoch", result.get("training_iteration", 1) - 1))
        rec = self.index.get(trial.trial_id)
        ts = int(time.time() * 1000)
        logged = self._logged_steps(trial.trial_id, run_id)
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
            self.index.update(trial.trial_id, probe_curve=curve)
        self.index.update(
            trial.trial_id,
            history=history,
            iterations=int(result.get("epochs_done", len(history))),
            score=select_epoch(history, self.metric, self.mode, self.selection).get(self.metric),
            data=extra or rec.get("data"),
            node_id=result.get("cktf/node_id", rec.get("node_id")),
            pid=result.get("pid", rec.get("pid")),
            gpu_ids=result.get("cktf/gpu_ids", rec.get("gpu_ids")),
            start_epochs=_starts(rec, result),
        )

    def on_experiment_end(self, trials: list, **info) -> None:
        """Ray ended the experiment: a record still running that Ray never knew (a ghost nobody adopted: the
        restored searcher proposed another config) is marked failed, lost, so the index tells the truth."""
        known = {t.trial_id for t in trials}
        for rec in self.index.all():
            if rec.get("status") == RUNNING and rec["trial_id"] not in known:
                error = "lost: the driver was killed before Ray recorded this trial, and no resumed trial took it over"
                if rec.get("mlflow_run_id"):
                    terminate_run(self.client, rec["mlflow_run_id"], FAILED, error, None, self.metric)
                self.index.update(rec["trial_id"], status=FAILED, error=error, ended=time.time())

    def on_checkpoint(self, iteration: int, trials: list, trial: Any, checkpoint: Any, **info) -> None:
        self.index.update(
            trial.trial_id, checkpoint=checkpoint.path, checkpoint_fs=type(checkpoint.filesystem).__name__
        )

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info) -> None:
        rec = self.index.get(trial.trial_id)
        if rec.get("failure"):
            self._set_status(trial, FAILED, rec["failure"])
            return
        done = int(rec.get("iterations", 0)) >= self.max_t
        self._set_status(trial, FINISHED if done else PRUNED)
        run_id = self.index.get(trial.trial_id).get("mlflow_run_id")
        if run_id and self.asha is not None and self.stage == SEARCH:
            self.client.set_tag(run_id, "cktf.rung", str(rung_of(int(rec.get("iterations", 0)), *self.asha)))

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info) -> None:
        self._set_status(trial, FAILED, trial_error_text(trial) or "trial failed (see the Ray trial directory)")


def trial_error_text(trial: Any) -> str | None:
    """The error a failed Ray trial left in its error file, or ``None`` (best effort: the status is what matters)."""
    try:
        if trial.error_file and Path(trial.error_file).exists():
            return Path(trial.error_file).read_text()
    except Exception:
        return None
    return None


def _starts(rec: dict[str, Any], result: dict) -> list[int]:
    """The epoch each process of the trial started from (0, then the checkpoint's epoch after each restart)."""
    starts = list(rec.get("start_epochs", []))
    start = result.get("cktf/start_epoch")
    if start is not None and int(result.get("epochs_done", 0)) == int(start) + 1:  # its first result
        starts.append(int(start))
    return starts


def terminate_run(
    client: Any, run_id: str, status: str, error: str | None = None, score: float | None = None, metric: str = ""
) -> None:
    """Set a trial run's final status in MLflow (idempotent); ``score``: the ``metric`` at its selected epoch,
    logged as ``selected_<metric>``."""
    client.set_tag(run_id, "cktf.status", status)
    if error:
        client.set_tag(run_id, "cktf.error", error[-4000:])
    if score is not None:
        client.log_metric(run_id, f"selected_{metric or 'score'}", float(score))
    client.set_terminated(run_id, MLFLOW_STATUS[status])


def git_commit() -> str:
    """The commit of the installed cktf checkout (``unknown`` outside a git checkout)."""
    import subprocess

    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def parent_run(
    client: Any, experiment: str, state: dict[str, Any], tags: dict[str, str], params: dict[str, Any]
) -> tuple[str, str]:
    """``(experiment_id, parent_run_id)``: the run named in the study's ``state`` (a resumed study), else a new one
    tagged ``tags`` with ``params`` logged once."""
    from mlflow.entities import Param

    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(experiment)
    if state.get("parent_run_id"):
        client.update_run(state["parent_run_id"], status="RUNNING")
        client.set_tag(state["parent_run_id"], "cktf.study_status", "running")
        return exp_id, state["parent_run_id"]
    run = client.create_run(exp_id, run_name=f"study:{tags.get('cktf.study', '')}", tags=tags)
    items = [Param(k, str(v)[:500]) for k, v in params.items()]
    for i in range(0, len(items), 100):
        client.log_batch(run.info.run_id, params=items[i : i + 100])
    return exp_id, run.info.run_id
