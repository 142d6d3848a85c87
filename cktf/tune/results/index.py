"""A study's stores as files: the trial index and ``state.json`` (read and written atomically through the study's
:class:`~.store.StudyStore`), and the vocabulary every reader shares: trial statuses, stages, how a trial's history is
judged (:func:`select_epoch`), which metrics reach the index and MLflow, the name of a trial's score.

* :class:`TrialIndex` -- ``trials/<trial_id>.json``, one small file per trial (config, status, per-epoch history,
  latest checkpoint, MLflow run id). The driver's trial callback writes it; everything else reads it without Ray. It
  is the source of truth for what each trial did (docs/architecture.md).
* ``state.json`` -- the study's own facts: the selection metric and mode, how a trial's history is judged (its best
  epoch, or its last in transfer studies), the plan's size, the baseline point, the MLflow parent run, its status.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

from .store import StudyStore

RUNNING, FINISHED, PRUNED, FAILED = "running", "finished", "pruned", "failed"
#: a trial in one of these has ended for good (failed: after its retries)
TERMINAL = (FINISHED, PRUNED, FAILED)
#: a trial's MLflow run status: ASHA's early stop is a normal end (FINISHED, with ``cktf.status = pruned``); KILLED is
#: a trial a stopped driver left unfinished (``cktf.status = interrupted``, reopened on ``--resume``)
MLFLOW_STATUS = {FINISHED: "FINISHED", PRUNED: "FINISHED", FAILED: "FAILED", RUNNING: "RUNNING"}
#: the name of a trial's score (its selection metric at its selected epoch) in the live view, the report, MLflow and
#: the exported metadata; the per-epoch curves keep their own names (``val_acc``, ``loss/total``)
SCORE = "score"


def score_rule(metric: str, selection: str) -> str:
    """What a trial's score is, in words: ``val_acc at its best epoch``."""
    return f"{metric} at its {'last' if selection == LAST_EPOCH else 'best'} epoch"


def display(value: float | None) -> float | None:
    """A number as every output shows it: four significant digits (``34.67``, ``0.01234``)."""
    return None if value is None else float(f"{float(value):.4g}")


STATE_FILE = "state.json"
#: how a trial's history is judged: its best epoch by the metric, or (transfer studies) its last epoch
BEST_EPOCH, LAST_EPOCH = "best_epoch", "last_epoch"

#: the key of a study over methods' sampled configs that names the trial's method (its fields: ``<method>.<field>``)
METHOD_KEY = "distiller"

#: the stage of a record: the search (Optuna + ASHA) or the confirmation over new seeds
SEARCH, CONFIRM = "search", "confirm"

#: a trial's last result carries this key when it failed for a reason a retry cannot fix (a non-finite loss)
FAILURE_KEY = "cktf/failure"

#: metric names (prefixes) that reach the index and MLflow; Ray's bookkeeping keys (pid, timestamp, config/...) do not
METRIC_PREFIXES = ("loss/", "train_acc", "val_", "test_", "probe_", "lr", "epoch_time_s", "eval_time_s", "images_per_s")


def wanted_metrics(result: Mapping[str, Any]) -> dict[str, float]:
    out = {}
    for k, v in result.items():
        if k.startswith(METRIC_PREFIXES) and isinstance(v, (int, float)) and not isinstance(v, bool):
            out[k] = float(v)
    return out


def as_store(study: StudyStore | str | os.PathLike) -> StudyStore:
    return study if isinstance(study, StudyStore) else StudyStore(study)


def select_epoch(history: list[dict[str, Any]], metric: str, mode: str = "max", selection: str = BEST_EPOCH) -> dict:
    """The epoch a trial is judged by: its best ``metric`` epoch in ``mode`` order, or its last epoch
    (``LAST_EPOCH``: transfer studies, whose last epoch carries the full probe of the exported weights)."""
    rows = [h for h in history if finite(h.get(metric))]
    if not rows:
        return {}
    if selection == LAST_EPOCH:
        return rows[-1]
    pick = max if mode == "max" else min
    return pick(rows, key=lambda h: h[metric])


def finite(v: Any) -> bool:
    """A real, finite number (not a bool, not NaN)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def checkpoint_filesystem(rec: dict[str, Any]):
    """``(filesystem, path)`` of a trial record's latest checkpoint (its scheme from the recorded filesystem type)."""
    import pyarrow.fs as pafs

    scheme = {"S3FileSystem": "s3://", "GcsFileSystem": "gs://"}.get(rec.get("checkpoint_fs", ""), "")
    if not scheme:
        return pafs.LocalFileSystem(), rec["checkpoint"]
    return pafs.FileSystem.from_uri(scheme + rec["checkpoint"])


def test_split_metric(metric: str) -> str:
    """The test-split counterpart of a selection metric (``val_acc`` -> ``test_acc``; else ``test_acc``)."""
    return metric.replace("val_", "test_", 1) if "val_" in metric else "test_acc"


class TrialIndex:
    """``trials/<trial_id>.json`` in a study's store: what cktf knows about each trial (atomic rewrites)."""

    def __init__(self, study: StudyStore | str | os.PathLike):
        self.store = as_store(study)

    def get(self, trial_id: str) -> dict[str, Any]:
        return self.store.read_json("trials", f"{trial_id}.json", default={})

    def update(self, trial_id: str, **fields: Any) -> dict[str, Any]:
        rec = self.get(trial_id)
        rec.update(fields, trial_id=trial_id)
        self.store.write_json(rec, "trials", f"{trial_id}.json")
        return rec

    def delete(self, trial_id: str) -> None:
        self.store.delete("trials", f"{trial_id}.json")

    def all(self) -> list[dict[str, Any]]:
        recs = [self.store.read_json("trials", name, default={}) for name in self.store.list("trials", suffix=".json")]
        return sorted((r for r in recs if r), key=lambda r: r.get("created", 0))


def read_state(study: StudyStore | str | os.PathLike) -> dict[str, Any]:
    return as_store(study).read_json(STATE_FILE, default={}) or {}


def write_state(study: StudyStore | str | os.PathLike, **fields: Any) -> dict[str, Any]:
    store = as_store(study)
    state = {**read_state(store), **fields}
    store.write_json(state, STATE_FILE)
    return state


__all__ = [
    "BEST_EPOCH",
    "CONFIRM",
    "FAILED",
    "FAILURE_KEY",
    "FINISHED",
    "LAST_EPOCH",
    "METRIC_PREFIXES",
    "MLFLOW_STATUS",
    "PRUNED",
    "RUNNING",
    "SCORE",
    "SEARCH",
    "STATE_FILE",
    "TERMINAL",
    "TrialIndex",
    "as_store",
    "checkpoint_filesystem",
    "display",
    "finite",
    "score_rule",
    "read_state",
    "select_epoch",
    "test_split_metric",
    "wanted_metrics",
    "write_state",
]
