"""MLflow runs as cktf writes them, without Ray: the tags, names and final statuses of trial runs, the parent run,
and the replay that makes MLflow equal to the trial index (:func:`sync_study`, ``cktf mlflow-sync``).

The trial index is the truth (docs/architecture.md); MLflow is a view of it, written by the trial callback
(:mod:`.lineage`) as trials run, and caught up from the index by :func:`sync_study` when it missed something: every
trial's run (created if missing, with the name, tags and params the callback gave it), every epoch's metrics (each
step once), its final status; :func:`sync_parent` does the same for the parent run's status, best and artifacts.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from .reader import CONFIRM
from .tracking import DOWN

log = logging.getLogger(__name__)

#: the metric every trial reports each epoch: the steps an MLflow run already holds are read back from it
STEP_METRIC = "lr"


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
    keys = [k for k in keys or sorted(config) if k in config]  # a study over methods: the trial's method's fields
    if "distiller" in keys:  # the method first, as its name alone (``dkd beta=8``)
        keys.remove("distiller")
        keys.insert(0, "distiller")
    parts = [
        str(config[k]) if k == "distiller" else f"{SHORT.get(k, k.rsplit('.', 1)[-1])}={short_value(config[k])}"
        for k in keys
    ]
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
    config = record.get("config", {})
    method = f"{config['distiller']} " if "distiller" in config else ""  # a study over methods: ``t01 dkd defaults``
    body = f"{method}defaults" if record.get("baseline") else short_params(config, keys, 60)
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


def trial_error_text(trial: Any) -> str | None:
    """The error a failed Ray trial left in its error file, or ``None`` (best effort: the status is what matters)."""
    try:
        if trial.error_file and Path(trial.error_file).exists():
            return Path(trial.error_file).read_text()
    except Exception:
        return None
    return None


def terminate_run(
    client: Any, run_id: str, status: str, error: str | None = None, metrics: dict[str, float] | None = None
) -> None:
    """Set a trial run's final status in MLflow (idempotent); ``metrics``: what is logged when it ends (its
    score at the selected epoch; a campaign run's test accuracies by protocol), at step 0."""
    from mlflow.entities import Metric

    from .reader import MLFLOW_STATUS

    client.set_tag(run_id, "cktf.status", status)
    if error:
        client.set_tag(run_id, "cktf.error", error[-4000:])
    if metrics:
        ts = int(time.time() * 1000)
        client.log_batch(run_id, metrics=[Metric(k, float(v), ts, 0) for k, v in metrics.items()])
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


def sync_study(tracking: Any, store: Any, experiment_id: str, parent_id: str) -> dict[str, int]:
    """Make MLflow hold exactly what a study's (or campaign's) trial index holds; returns what it had to add or fix.

    Idempotent: a second call adds nothing. Each epoch is logged once (steps already in the run are skipped)."""
    from mlflow.entities import Metric, Param

    from .reader import MLFLOW_STATUS, SCORE, TERMINAL, TrialIndex, display

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
                tags = {
                    **trial_tags(parent_id, rec["trial_id"], store.uri.rsplit("/", 1)[-1], bool(rec.get("baseline"))),
                    **(rec.get("tags") or {}),  # what the trial callback tagged it with (stage, pair, seed, ...)
                }
                run = tracking.create_run(experiment_id, run_name=rec.get("name") or rec["trial_id"], tags=tags)
                params = [
                    Param(str(k), str(v)[:500]) for k, v in sorted((rec.get("params") or rec.get("config", {})).items())
                ]
                for i in range(0, len(params), 100):
                    tracking.log_batch(run.info.run_id, params=params[i : i + 100])
                done["runs_created"] += 1
            index.update(rec["trial_id"], mlflow_run_id=run.info.run_id)
        run_id = run.info.run_id
        rows = rec.get("history", [])
        step_metric = (
            STEP_METRIC
            if all(STEP_METRIC in r for r in rows)
            else next((k for k in (rows[0] if rows else {}) if k != "epoch"), STEP_METRIC)
        )
        history = tracking.get_metric_history(run_id, step_metric)
        if history is DOWN:
            return done
        logged = {int(m.step) for m in history}
        ts = int(time.time() * 1000)
        for row in rows:
            if int(row["epoch"]) in logged:
                continue
            values = [Metric(k, float(v), ts, int(row["epoch"])) for k, v in row.items() if k != "epoch"]
            tracking.log_batch(run_id, metrics=values)
            done["epochs_logged"] += 1
        status = rec.get("status")
        if status in TERMINAL and (
            run.info.status != MLFLOW_STATUS[status] or run.data.tags.get("cktf.status") != status
        ):
            metrics = rec.get("end_metrics")
            if metrics is None and isinstance(rec.get("score"), int | float):  # a record of an older driver
                metrics = {SCORE: display(rec["score"])}
            terminate_run(tracking, run_id, status, rec.get("error"), metrics)
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


__all__ = [
    "STEP_METRIC",
    "dataset_inputs",
    "flat_config",
    "git_commit",
    "rung_of",
    "run_name",
    "short_params",
    "short_value",
    "sync_parent",
    "sync_study",
    "terminate_run",
    "trial_config",
    "trial_error_text",
    "trial_tags",
]
