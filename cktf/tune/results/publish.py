"""A complete study's results made public, in order: the student's files, then the report, then MLflow's best.

1. **export**: the best student (:func:`~.export.export_best`) into the study's ``best/``, scored on the test split
   once when no trial read it (the final pick: docs/studies.md, "Winners confirmed");
2. **report**: ``report/`` (markdown, HTML, plots), logged to the parent run;
3. **publish**: the student as an MLflow Model registered under the study's name with the alias ``champion``, the
   ``best/*`` metrics and the ``cktf.best_trial`` / ``cktf.model`` tags on the parent run.

A study stopped before the end has no best in MLflow: an interrupted finish withdraws what had reached the parent
run (:func:`withdraw_best`), and ``--resume`` publishes it again.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .reader import SCORE, StudyResults, display, write_state

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Published:
    headline: str = ""  # the report's one sentence: the pick, its uncertainty, the gain over the defaults
    model_uri: str = ""  # the registered champion (models:/NAME@champion)


def publish_study(results: StudyResults, client: Any, parent: Any, splits: Any, status: str):
    """Export, report and publish a complete study (see the module docstring); ``parent``: its MLflow parent run
    (a :class:`~.lineage.ParentRun`: tracking store and run id); ``splits``: the study's data, for
    the test split's single read (``None``: not read); ``status``: the one the study ends with (``complete``, or
    ``failed`` when every trial failed), written in ``student.json`` as every route gives it."""
    from .export import BEST_DIR, BEST_FILE, student_info, write_student
    from .report import write_report

    store, pick = results.store, results.pick()
    parent_id, tracking_uri = parent.parent_run_id, parent.tracking_uri
    best_dir = None
    if pick is not None:
        write_state(store, stage="export")
        best_dir = store.local_path(BEST_DIR) or Path(tempfile.mkdtemp(prefix="cktf-best-"))
        weights = best_dir / BEST_FILE
        write_student(results, weights)
        if results.pick_test() is None and splits is not None:  # trials did not read the test split: the pick, once
            from .champion import test_once

            write_state(store, final_test={**test_once(weights, splits), "trial": pick.trial.trial_id})
        results = StudyResults(store)
        info = student_info(results, weights, status)
        weights.with_suffix(".json").write_text(json.dumps(info, indent=1))
        store.upload(best_dir, BEST_DIR)
    write_state(store, stage="report")
    report_dir = write_report(StudyResults(store))
    headline = json.loads((report_dir / "summary.json").read_text()).get("headline", "")
    client.log_artifacts(parent_id, str(report_dir), "report")
    client.set_tag(parent_id, "cktf.report", "report/report.html")
    champion = None
    if pick is not None:
        write_state(store, stage="publish")
        champion = register(client, tracking_uri, parent_id, results.name, best_dir / BEST_FILE)
        client.log_artifacts(parent_id, str(best_dir), "best_student")
        for key, value in best_metrics(info).items():
            client.log_metric(parent_id, key, value)
        client.set_tag(parent_id, "cktf.best_trial", info["trial"])
        client.set_tag(parent_id, "cktf.best", info["best"])
        if champion:
            client.set_tag(parent_id, "cktf.model", champion["uri"])
    return Published(headline, (champion or {}).get("uri", ""))


def best_metrics(info: dict[str, Any]) -> dict[str, float]:
    """The parent run's ``best/*`` metrics, from the student's metadata (the numbers every output gives)."""
    score, test = info[SCORE], info["test_metric"]
    out = {f"best/{SCORE}": score["display"], "best/seeds": float(score["seeds"])}
    if score.get("std") is not None:
        out[f"best/{SCORE}_std"] = display(score["std"])
    if test.get("value") is not None:
        out[f"best/{test['name']}"] = display(test["value"])
    return out


def register(client: Any, tracking_uri: str, parent_id: str, name: str, weights: Path) -> dict[str, Any] | None:
    """The best student as an MLflow Model in the parent run, registered as ``name@champion``; a registry that
    refuses is a warning (the exported files stand)."""
    if not client.up:
        return None
    from .champion import log_champion

    try:
        return log_champion(tracking_uri, parent_id, name, weights)
    except Exception as exc:  # never lose a finished study for the registry
        log.warning("the best student was exported but not registered in MLflow: %s", str(exc).splitlines()[0][:300])
        return None


def withdraw_best(client: Any, parent_id: str) -> None:
    """An incomplete study reports no best: a stop that came while MLflow's best was being published (after the
    report) takes back what had reached the parent run; ``--resume`` publishes it again at the end."""
    run = client.get_run(parent_id)
    tags = getattr(getattr(run, "data", None), "tags", None) or {}
    for key in ("cktf.best_trial", "cktf.model"):
        if key in tags:
            client.delete_tag(parent_id, key)


__all__ = ["Published", "best_metrics", "publish_study", "register", "withdraw_best"]
