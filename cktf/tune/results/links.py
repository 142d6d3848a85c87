"""Links into MLflow's UI for a study (``cktf ui --study``), each opening in the model-training view:

* the runs table of the search's trials, one row each, best ``score`` first, with the ``score``, the searched
  parameters and ``cktf.status`` as columns (the saved view ``cktf-trials`` the study stores, :mod:`.ui`);
* the charts of ``score`` against the searched values over every search trial (the same view, chart mode): a
  parallel coordinates plot and a scatter plot per numeric parameter;
* the same charts over the best ``top`` trials and the official-defaults trial (the view ``cktf-top``);
* the parent run and the registered model.

Read from the study's folder only (``state.json``: the experiment and the parent run); the views themselves are
experiment tags written by the study and by ``cktf ui`` (:func:`.ui.publish_study_views`).
"""

from __future__ import annotations

from .reader import StudyResults, resolve_study_dir
from .ui import CHART, TABLE, TOP_VIEW, TRIALS_VIEW, model_url, run_url, view_url


def study_links(study: str, base_url: str, top: int = 5) -> list[tuple[str, str]]:
    """``(label, url)`` for the study's views in the MLflow UI at ``base_url``; empty before the study has an MLflow
    experiment."""
    results = StudyResults(resolve_study_dir(study))
    state = results.state
    exp, parent = state.get("experiment_id"), state.get("parent_run_id")
    if not exp or not parent:
        return []
    exp = str(exp)
    return [
        ("runs table (search trials, best score first)", view_url(base_url, exp, TRIALS_VIEW, TABLE)),
        ("score vs the searched values (every search trial)", view_url(base_url, exp, TRIALS_VIEW, CHART)),
        (f"compare top {top} and the defaults", view_url(base_url, exp, TOP_VIEW, CHART)),
        ("parent run", run_url(base_url, exp, parent)),
        ("registered model", model_url(base_url, results.name)),
    ]


__all__ = ["study_links"]
