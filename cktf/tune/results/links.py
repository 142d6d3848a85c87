"""Links into MLflow's UI for a study (``cktf ui --study``): its runs table, its parent run, the compare view of
its top trials and its registered model."""

from __future__ import annotations

import json
from urllib.parse import quote

from .reader import StudyResults, resolve_study_dir


def study_links(study: str, base_url: str, top: int = 5) -> list[tuple[str, str]]:
    results = StudyResults(resolve_study_dir(study))
    state = results.state
    exp, parent = state.get("experiment_id"), state.get("parent_run_id")
    if not exp or not parent:
        return []
    base = base_url.rstrip("/")
    links = [
        ("runs table", f"{base}/#/experiments/{exp}/runs"),
        ("parent run", f"{base}/#/experiments/{exp}/runs/{parent}"),
    ]
    confirmed = [r for c in results.confirmation() for r in c.runs if r.record.get("mlflow_run_id")]
    ranked = confirmed or [t for t in results.ranked() if t.record.get("mlflow_run_id")]
    ids = [t.record["mlflow_run_id"] for t in ranked[:top]]
    if len(ids) >= 2:
        runs, exps = quote(json.dumps(ids, separators=(",", ":"))), quote(json.dumps([exp]))
        links.append((f"compare top {len(ids)}", f"{base}/#/compare-runs?runs={runs}&experiments={exps}"))
    links.append(("registered model", f"{base}/#/models/{results.name}"))
    return links


__all__ = ["study_links"]
