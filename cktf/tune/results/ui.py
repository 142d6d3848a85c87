"""What a study writes so that MLflow's UI opens on its trials (docs/studies.md, "Results in MLflow").

MLflow 3.17's experiment page keeps its layout (columns, charts, which runs a chart shows) in the browser's local
storage, and no URL parameter sets it; what a link *can* carry is ``viewStateShareKey``: the page then loads the view
stored in the experiment tag ``mlflow.sharedViewState.<key>`` (a "saved view": ``{name, createdAt, state}``, the
state being the search facets and the UI state as JSON) and lists it under "Saved views" too. So a study stores two
saved views in its experiment and :mod:`.links` links to them:

* ``cktf-trials`` -- the search's trials as rows (the confirmation runs and the parent run filtered out, so no row is
  hidden under a collapsed parent), best ``score`` first, the ``score``, the searched parameters and each trial's
  ``cktf.status`` / ``cktf.baseline`` as columns, and charts of ``score`` against the searched values (a parallel
  coordinates plot of every listed trial, one scatter plot per numeric parameter) over all of them, not the newest 10.
* ``cktf-top`` -- the same, narrowed to the best ``top`` trials and the official-defaults trial (``score`` at least
  the worse of the two), once the study has scores (:func:`publish_study_views`).

The page's view (model training rather than GenAI) is the URL's ``workflowType=machine_learning``, its mode (table or
chart) the URL's ``compareRunsMode``; MLflow reads both from the link (:func:`view_url`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from .index import SCORE, SEARCH, display

log = logging.getLogger(__name__)

#: MLflow's prefix of a saved (shared) view's experiment tag, and the URL parameter that opens one
#: (``EXPERIMENT_PAGE_VIEW_STATE_SHARE_TAG_PREFIX`` / ``..._URL_PARAM_KEY`` in mlflow/server/js/src/.../constants.ts)
SHARED_VIEW_PREFIX = "mlflow.sharedViewState."
SHARE_KEY_PARAM = "viewStateShareKey"
#: the saved views a study writes
TRIALS_VIEW, TOP_VIEW = "cktf-trials", "cktf-top"
#: the experiment page's workflow: MLflow 3.17 picks the model-training or the GenAI view from this URL parameter (or
#: the browser's last choice), not from the experiment's ``mlflow.experimentKind`` tag
WORKFLOW_PARAM, MODEL_TRAINING_WORKFLOW = "workflowType", "machine_learning"
#: the experiment page's mode: the runs table or the charts
MODE_PARAM, TABLE, CHART = "compareRunsMode", "TABLE", "CHART"
#: the parent run's description (markdown, shown on its page)
NOTE_TAG = "mlflow.note.content"
#: a trial's tags shown as columns
TAG_COLUMNS = ("cktf.status", "cktf.baseline")
#: the chart sections the views open with: the parallel coordinates plot alone (full width), then the scatter plots
SECTION_ID, SCATTER_SECTION_ID = "cktf-search", "cktf-search-each"


def column(kind: str, key: str) -> str:
    """MLflow's canonical key of a runs-table column (``metrics.`score```): ``makeCanonicalSortKey``."""
    return f"{kind}.`{key}`"


def number(value: float) -> str:
    """A float as MLflow's search syntax takes it (no exponent)."""
    return format(Decimal(repr(float(value))), "f")


def trials_filter(mode: str = "max", threshold: float | None = None) -> str:
    """The search's trials (not the confirmation runs, not the parent run), with ``score`` at least ``threshold``
    (in the study's mode) when one is given."""
    out = f"tags.`cktf.stage` = '{SEARCH}'"
    if threshold is not None:
        out += f" AND metrics.`{SCORE}` {'>=' if mode == 'max' else '<='} {number(threshold)}"
    return out


def charts(names: list[str], numeric: Iterable[str]) -> list[dict[str, Any]]:
    """The charts of ``score`` against the searched values: a parallel coordinates plot over every listed trial (not
    only the visible ones), then one scatter plot per numeric parameter."""
    parallel = {
        "uuid": f"{SECTION_ID}-parallel",
        "type": "PARALLEL",
        "displayName": f"{SCORE} vs the searched values",
        "metricSectionId": SECTION_ID,
        "runsCountToCompare": 100,
        "deleted": False,
        "isGenerated": False,
        "selectedParams": list(names),
        "selectedMetrics": [SCORE],
        "showAllRuns": True,
    }
    scatters = [
        {
            "uuid": f"{SCATTER_SECTION_ID}-{name}",
            "type": "SCATTER",
            "displayName": f"{SCORE} vs {name}",
            "metricSectionId": SCATTER_SECTION_ID,
            "runsCountToCompare": 100,
            "deleted": False,
            "isGenerated": False,
            "xaxis": {"key": name, "type": "PARAM"},
            "yaxis": {"key": SCORE, "type": "METRIC"},
        }
        for name in numeric
    ]
    return [parallel, *scatters]


def section(uuid: str, name: str, columns: int = 3, card_height: int = 360) -> dict[str, Any]:
    """A chart section (``ChartSectionConfig``): its cards ``columns`` to a row, ``card_height`` pixels high."""
    return {
        "uuid": uuid,
        "name": name,
        "display": True,
        "isReordered": False,
        "deleted": False,
        "isGenerated": False,
        "columns": columns,
        "cardHeight": card_height,
    }


def view_state(
    names: list[str], mode: str = "max", threshold: float | None = None, numeric: Iterable[str] = ()
) -> dict[str, Any]:
    """The experiment page's state for a study's trials: its search facets (filter, order) and its UI state
    (columns, charts, which runs the charts show), the fields of MLflow's ``ExperimentPageSearchFacetsState`` and
    ``ExperimentPageUIState``."""
    numeric = list(numeric)
    return {
        # search facets (EXPERIMENT_PAGE_QUERY_PARAM_KEYS)
        "searchFilter": trials_filter(mode, threshold),
        "orderByKey": column("metrics", SCORE),
        "orderByAsc": mode != "max",
        # UI state (EXPERIMENT_PAGE_UI_STATE_FIELDS)
        "selectedColumns": [
            column("metrics", SCORE),
            *(column("params", n) for n in names),
            *(column("tags", t) for t in TAG_COLUMNS),
            column("attributes", "Duration"),
        ],
        "runsHiddenMode": "SHOW_ALL",  # charts: every listed run (MLflow's default is the first 10)
        "compareRunCharts": charts(names, numeric),
        "compareRunSections": [
            section(SECTION_ID, f"cktf: {SCORE} vs the searched values", columns=1, card_height=480),
            *([section(SCATTER_SECTION_ID, f"cktf: {SCORE} vs each numeric value")] if numeric else []),
        ],
        "isAccordionReordered": True,  # the study's section stays first; MLflow's own sections follow
        "hideEmptyCharts": True,
    }


def envelope(name: str, state: dict[str, Any], now_ms: int | None = None) -> str:
    """A saved view's tag value as MLflow 3.17 reads it (``decodeSavedViewEnvelope``): its name, times and the
    state as a JSON string (MLflow also reads a deflate-compressed one)."""
    now = int(time.time() * 1000) if now_ms is None else int(now_ms)
    return json.dumps({"name": name, "createdAt": now, "updatedAt": now, "state": json.dumps(state)})


def view_url(base_url: str, experiment_id: str, key: str | None = None, mode: str = TABLE) -> str:
    """The experiment page in the model-training view, in ``mode`` (``TABLE`` or ``CHART``), opening the saved view
    ``key``. The search facets (filter, order) travel in the view, not the URL: MLflow ignores a saved view whose
    link also names one of them. ``base_url`` empty: a link relative to the page that shows it (``#/...``)."""
    query = {WORKFLOW_PARAM: MODEL_TRAINING_WORKFLOW, MODE_PARAM: mode}
    if key:
        query[SHARE_KEY_PARAM] = key
    return f"{_base(base_url)}#/experiments/{experiment_id}/runs?{urlencode(query)}"


def run_url(base_url: str, experiment_id: str, run_id: str) -> str:
    """A run's page, in the model-training view."""
    return f"{_base(base_url)}#/experiments/{experiment_id}/runs/{run_id}?{WORKFLOW_PARAM}={MODEL_TRAINING_WORKFLOW}"


def model_url(base_url: str, name: str) -> str:
    """A registered model's page."""
    return f"{_base(base_url)}#/models/{quote(name, safe='')}"


def _base(base_url: str) -> str:
    return base_url.rstrip("/") + "/" if base_url else ""


#: the first words of the description cktf writes (a description a person wrote is left alone)
NOTE_MARK = "**cktf study**"


def parent_note(experiment_id: str, top: int | None = None) -> str:
    """The parent run's description: links (relative to the UI that shows it) to the study's views."""
    lines = [
        f"{NOTE_MARK} -- each search trial is a child run of this run; its `{SCORE}` (the selection metric at its "
        "selected epoch) is the column to sort by, and `cktf.status` says how it ended (a pruned trial's run is "
        "FINISHED).",
        "",
        f"* [The search's trials, best {SCORE} first]({view_url('', experiment_id, TRIALS_VIEW)})",
        f"* [{SCORE} vs the searched values, every trial]({view_url('', experiment_id, TRIALS_VIEW, CHART)})",
    ]
    if top:
        lines.append(
            f"* [{SCORE} vs the searched values, the top {top} and the defaults]"
            f"({view_url('', experiment_id, TOP_VIEW, CHART)})"
        )
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class StudyViews:
    """What the study's saved views show: ``names``, the searched parameters; ``mode``, the study's (``max``: best
    score first); ``numeric``, the names whose values are numbers (a scatter plot each); ``top`` and ``threshold``,
    the top view's size and the score its trials reach (``None``: the top view lists every search trial, as before
    any trial has a score)."""

    names: list[str]
    mode: str = "max"
    numeric: tuple[str, ...] = ()
    top: int | None = None
    threshold: float | None = None


def publish_views(client: Any, experiment_id: str, parent_run_id: str | None, views: StudyViews) -> None:
    """Store the study's saved views in its experiment (the tags ``mlflow.sharedViewState.cktf-trials`` and
    ``...cktf-top``) and the links to them as the parent run's description (unless a person wrote one).

    ``client``: an MLflow client, or cktf's ``Tracking`` wrapper (``set_experiment_tag``, ``set_tag``, ``get_run``).
    Rewrites the views each time."""
    names, mode = views.names, views.mode
    numeric = [n for n in views.numeric if n in names]
    trials = view_state(names, mode, None, numeric)
    client.set_experiment_tag(
        experiment_id, SHARED_VIEW_PREFIX + TRIALS_VIEW, envelope(f"cktf: trials by {SCORE}", trials)
    )
    ranked = views.top if views.threshold is not None else None
    label = f"cktf: top {views.top} trials and the defaults" if ranked else "cktf: top trials (every trial so far)"
    top_state = view_state(names, mode, views.threshold, numeric)
    client.set_experiment_tag(experiment_id, SHARED_VIEW_PREFIX + TOP_VIEW, envelope(label, top_state))
    if parent_run_id:
        run = client.get_run(parent_run_id)
        note = (getattr(getattr(run, "data", None), "tags", None) or {}).get(NOTE_TAG)
        if not note or note.startswith(NOTE_MARK):
            client.set_tag(parent_run_id, NOTE_TAG, parent_note(experiment_id, ranked))


# ----------------------------------------------------------------------------- from a study's folder
def _space(results: Any) -> dict[str, Any]:
    meta = results.store.read_json("study.resolved.json", default={}) or {}
    return (meta.get("search") or {}).get("space") or {}


def searched_names(results: Any) -> list[str]:
    """The study's searched parameters, in its space's order: ``study.resolved.json``'s ``search.space``, else the
    baseline point's names (``state.json``), else the names in the search trials' configurations."""
    space = _space(results)
    if space:
        return list(space)
    if results.state.get("baseline"):
        return list(results.state["baseline"])
    names: list[str] = []
    for t in results.trials():
        names += [k for k in t.config if k not in names]
    return names


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def numeric_names(results: Any, names: list[str]) -> list[str]:
    """The searched parameters whose values are numbers: a range in the space, or choices that are all numbers
    (without a space: the trials' values)."""
    space, out = _space(results), []
    for name in names:
        spec = space.get(name)
        if spec:
            values = spec.get("choices") if spec.get("type") == "categorical" else [spec.get("low"), spec.get("high")]
        else:
            values = [t.config.get(name) for t in results.trials()]
        values = [v for v in values or [] if v is not None]
        if values and all(_is_number(v) for v in values):
            out.append(name)
    return out


def mlflow_score(trial: Any) -> float | None:
    """A trial's ``score`` as its MLflow run holds it (four significant digits)."""
    score = trial.record.get(SCORE, trial.score)
    return display(score) if _is_number(score) else None


def top_threshold(results: Any, top: int) -> float | None:
    """The score the top view's trials reach: the worse of the ``top``-th best search trial's and the official
    defaults trial's (as MLflow holds them), so that the view lists the best ``top`` trials and the defaults (and any
    trial between the two); ``None`` before any trial has a score."""
    scored = [(s, t) for t in results.trials() if (s := mlflow_score(t)) is not None]
    if not scored:
        return None
    best_first = sorted((s for s, _ in scored), reverse=results.mode == "max")
    chosen = best_first[: max(int(top), 1)]
    chosen += [s for s, t in scored if t.baseline]
    return min(chosen) if results.mode == "max" else max(chosen)


def publish_study_views(client: Any, results: Any, top: int = 5) -> bool:
    """:func:`publish_views` for a study's folder (a :class:`~.reader.StudyResults`): its experiment and parent run
    from ``state.json``, its searched names and mode, the top view's threshold from its trial index. Only into the
    store that holds the study's parent run (another store's experiment of the same id is left alone). Never raises:
    a store that refuses is a warning, and False (also before the study has an MLflow experiment)."""
    state = results.state
    exp, parent = state.get("experiment_id"), state.get("parent_run_id")
    if not exp or not parent:
        return False
    try:
        run = client.get_run(parent)
        if str(getattr(getattr(run, "info", None), "experiment_id", "")) != str(exp):
            return False
        names = searched_names(results)
        views = StudyViews(names, results.mode, tuple(numeric_names(results, names)), top, top_threshold(results, top))
        publish_views(client, str(exp), parent, views)
    except Exception as exc:  # the views are a convenience: never fail a study or the UI for them
        log.warning("the study's MLflow views were not stored: %s", str(exc).splitlines()[0][:300] if str(exc) else exc)
        return False
    return True


def _store_exists(tracking_uri: str) -> bool:
    """A local store that is there (a client would create an empty one where none is); a server is asked."""
    uri = str(tracking_uri)
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///") :]).is_file()
    if uri.startswith("file:"):
        return Path(uri[len("file:") :].removeprefix("//")).is_dir()
    if "://" not in uri:
        return Path(uri).is_dir()
    return True


def publish_to_store(tracking_uri: str, study: str, top: int = 5) -> bool:
    """:func:`publish_study_views` into the tracking store at ``tracking_uri`` for the study ``study`` (a folder, a
    study file or a name): what ``cktf ui --study`` does before it starts the UI, so that a study that ran before
    cktf stored views, or a different ``--top``, opens as its links say. False when nothing was stored."""
    from .reader import StudyResults, resolve_study_dir

    if not _store_exists(tracking_uri):
        return False
    from mlflow import MlflowClient

    try:
        results = StudyResults(resolve_study_dir(study))
    except Exception as exc:  # no such study: the links say so
        log.warning("no study to store views for: %s", exc)
        return False
    return publish_study_views(MlflowClient(str(tracking_uri)), results, top)


__all__ = [
    "SHARED_VIEW_PREFIX",
    "TOP_VIEW",
    "TRIALS_VIEW",
    "model_url",
    "publish_study_views",
    "publish_to_store",
    "StudyViews",
    "publish_views",
    "run_url",
    "searched_names",
    "top_threshold",
    "view_state",
    "view_url",
]
