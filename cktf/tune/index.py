"""The study's trial index: ``<study_dir>/trials/<trial_id>.json``, one small file per trial.

Written by the driver's callback (:mod:`cktf.tune.lineage`), read by ``cktf report`` / ``cktf export``
without Ray. Records: config, status, per-epoch metrics, latest checkpoint, MLflow run id.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

#: metric names (prefixes) that reach MLflow; Ray's bookkeeping keys (pid, timestamp, config/...) do not
METRIC_PREFIXES = (
    "loss/",
    "train_acc",
    "val_",
    "test_",
    "best_val_acc",
    "probe_",
    "lr",
    "epoch_time_s",
    "images_per_s",
)
RUNNING, FINISHED, PRUNED, FAILED = "running", "finished", "pruned", "failed"
MLFLOW_STATUS = {FINISHED: "FINISHED", PRUNED: "KILLED", FAILED: "FAILED", RUNNING: "RUNNING"}


def wanted_metrics(result: dict[str, Any]) -> dict[str, float]:
    out = {}
    for k, v in result.items():
        if k.startswith(METRIC_PREFIXES) and isinstance(v, (int, float)) and not isinstance(v, bool):
            out[k] = float(v)
    return out


def selected(history: list[dict[str, Any]], metric: str) -> dict[str, Any]:
    """The epoch a trial is judged by: the best ``metric`` epoch, except in transfer studies
    (``probe_*``), where it is the last epoch: its full probe, on the weights that are exported
    (earlier epochs only carry the quick probe that steers ASHA)."""
    rows = [h for h in history if metric in h]
    if not rows:
        return {}
    return rows[-1] if metric.startswith("probe_") else max(rows, key=lambda h: h[metric])


class TrialIndex:
    """``<study_dir>/trials/<trial_id>.json``: what cktf knows about each trial (atomic rewrites)."""

    def __init__(self, study_dir: str | Path):
        self.dir = Path(study_dir) / "trials"

    def get(self, trial_id: str) -> dict[str, Any]:
        path = self.dir / f"{trial_id}.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def update(self, trial_id: str, **fields: Any) -> dict[str, Any]:
        rec = self.get(trial_id)
        rec.update(fields, trial_id=trial_id)
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / f"{trial_id}.json"
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(rec, indent=1, default=str))
        os.replace(tmp, path)
        return rec

    def all(self) -> list[dict[str, Any]]:
        if not self.dir.exists():
            return []
        recs = [json.loads(p.read_text()) for p in sorted(self.dir.glob("*.json"))]
        return sorted(recs, key=lambda r: r.get("created", 0))
