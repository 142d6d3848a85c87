"""The quick-start study in MLflow's UI and in its HTML report, opened in a real browser (headless Chromium) as a
user opens them: the links ``cktf ui --study`` prints, on a real ``mlflow server`` over the study's tracking store.
What is asserted is what the page shows (its rendered grid, chart and text), not the URL: the runs table lists the
search's trials one per row, best ``score`` first, with the score and the searched values as columns and pruned
trials as finished; the compare link plots ``score`` against every searched value for the top trials and the
defaults; the parent run, the registered model and the report open (docs/studies.md, "Results in MLflow").

Every screenshot checked is kept in ``test-artifacts/browser/``."""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from helpers import records

pytestmark = pytest.mark.slow

CHROMIUM, DRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
SHOTS = Path(__file__).resolve().parents[1] / "test-artifacts" / "browser"
TOP = 3  # the compare link: the best 3 search trials and the defaults

# the runs grid as the page renders it (ag-grid draws only the columns in view: the caller scrolls it)
GRID_JS = """
const out = {headers: {}, rows: {}};
for (const h of document.querySelectorAll('.ag-header-cell[col-id]')) {
  out.headers[h.getAttribute('col-id')] = h.innerText.trim();
}
for (const r of document.querySelectorAll('.ag-row[row-id]')) {
  const id = r.getAttribute('row-id');
  const row = out.rows[id] || (out.rows[id] = {index: Number(r.getAttribute('row-index')), cells: {}});
  for (const c of r.querySelectorAll('[role=gridcell][col-id]')) {
    row.cells[c.getAttribute('col-id')] = c.innerText.trim();
    const icon = c.getAttribute('col-id') === 'runDateAndNestInfo' && c.querySelector('svg');
    if (icon) {
      row.icon = Array.from(icon.querySelectorAll('path')).map(p => p.getAttribute('d')).join('|');
      row.color = getComputedStyle(icon).color;
    }
  }
}
const bar = document.querySelector('.ag-body-horizontal-scroll-viewport');
out.scrollMax = bar ? bar.scrollWidth - bar.clientWidth : 0;
return out;
"""
SCROLL_JS = """
const bar = document.querySelector('.ag-body-horizontal-scroll-viewport');
if (bar) { bar.scrollLeft = arguments[0]; bar.dispatchEvent(new Event('scroll')); }
"""


def _wait(check, what: str, timeout: float = 60.0):
    """Poll ``check`` (a value that is truthy when the page is ready) until a deadline."""
    deadline, last = time.time() + timeout, None
    while time.time() < deadline:
        try:
            last = check()
        except Exception as exc:  # the page is still building
            last = exc
        if last and not isinstance(last, Exception):
            return last
        time.sleep(0.3)
    raise AssertionError(f"the page never showed {what} (last seen: {str(last)[:2000]})")


def _shot(drv, name: str) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    drv.save_screenshot(str(path))
    assert path.stat().st_size > 10_000, f"{path} is not a real screenshot"
    return path


def _text(drv) -> str:
    return drv.find_element("tag name", "body").text


def _grid(drv, shot: str) -> dict:
    """The whole grid: its headers and cells, read while scrolling it across (as a user scrolls it); the screenshot
    ``shot`` shows it scrolled to its right end."""
    first = drv.execute_script(GRID_JS)
    headers, rows = dict(first["headers"]), {k: dict(v) for k, v in first["rows"].items()}
    for x in range(0, int(first["scrollMax"]) + 300, 300):
        drv.execute_script(SCROLL_JS, x)
        time.sleep(0.2)
        seen = drv.execute_script(GRID_JS)
        headers.update(seen["headers"])
        for k, v in seen["rows"].items():
            row = rows.setdefault(k, {"index": v["index"], "cells": {}})
            row["cells"].update(v["cells"])
            for key in ("icon", "color"):
                if v.get(key):
                    row[key] = v[key]
    _shot(drv, shot)
    drv.execute_script(SCROLL_JS, 0)
    return {"headers": headers, "first_headers": first["headers"], "rows": rows}


def _green(css_color: str) -> bool:
    r, g, b = (int(v) for v in re.findall(r"\d+", css_color)[:3])
    return g > r and g > b


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM.exists() and DRIVER.exists()):
        pytest.skip("Debian's chromium and chromium-driver are not installed (.ci/run installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1500,1000"):
        opts.add_argument(a)
    opts.binary_location = str(CHROMIUM)
    drv = webdriver.Chrome(service=Service(str(DRIVER)), options=opts)
    yield drv
    drv.quit()


@pytest.fixture(scope="module")
def ui(quickstart):
    """The study's views stored in its tracking store (what the study and ``cktf ui --study`` store), a real MLflow
    server on that store, the links ``cktf ui --study`` prints, and the trial index to check the pages against."""
    from stack import MlflowServer

    from cktf.tune.results.index import display
    from cktf.tune.results.links import study_links
    from cktf.tune.results.reader import StudyResults
    from cktf.tune.results.ui import publish_to_store, searched_names, top_threshold

    assert quickstart.proc.returncode == 0, (quickstart.proc.stdout + quickstart.proc.stderr)[-4000:]
    # the study stored its views when it ended (the engine's job); the links must open them as they are
    import mlflow

    state = json.loads((quickstart.dir / "state.json").read_text())
    tags = mlflow.MlflowClient(quickstart.uri).get_experiment(state["experiment_id"]).tags
    assert {"mlflow.sharedViewState.cktf-trials", "mlflow.sharedViewState.cktf-top"} <= set(tags)
    if TOP != 5:  # the study stores the top 5; another --top is what cktf ui --study stores
        assert publish_to_store(quickstart.uri, str(quickstart.dir), TOP)
    results = StudyResults(quickstart.dir)
    search = [r for r in records(quickstart.dir).values() if r.get("stage") == "search"]
    assert search and all(r.get("mlflow_run_id") for r in search)
    for r in search:
        r["mlflow_score"] = display(r["score"]) if isinstance(r.get("score"), int | float) else None
    with MlflowServer(quickstart.uri, str(quickstart.tmp / "mlruns")) as server:
        links = study_links(str(quickstart.dir), server.url, TOP)
        yield SimpleNamespace(
            url=server.url,
            links=links,
            link=lambda prefix: next(u for label, u in links if label.startswith(prefix)),
            names=searched_names(results),
            search=search,
            threshold=top_threshold(results, TOP),
        )


def _open_runs_page(drv, url: str, rows: int) -> None:
    drv.get(url)
    _wait(lambda: "You're viewing a shared view" in _text(drv), "the study's saved view")
    _wait(
        lambda: len({r.get_attribute("row-id") for r in drv.find_elements("css selector", ".ag-row[row-id]")}) == rows,
        f"{rows} run rows",
    )


def test_the_runs_table_lists_the_trials_best_score_first_with_their_values(ui, browser):
    drv = browser
    _open_runs_page(drv, ui.link("runs table"), len(ui.search))
    text = _text(drv)
    assert "cktf: trials by score" in text and "Sort: score" in text
    assert "Observability" not in text and "Evaluation runs" not in text  # the model-training view, not GenAI's
    _shot(drv, "runs_table")
    grid = _grid(drv, "runs_table_scrolled_right")
    cols = {cid: name for cid, name in grid["headers"].items()}
    # score and every searched value are columns as the page opens (score is in view without scrolling)
    assert cols.get("metrics.`score`") == "score" and "metrics.`score`" in grid["first_headers"], cols
    for name in ui.names:
        assert cols.get(f"params.`{name}`") == name, (name, cols)
    assert cols.get("tags.`cktf.status`") == "cktf.status", cols
    # one row per search trial: no parent row to expand, no confirmation run
    by_run = {r["mlflow_run_id"]: r for r in ui.search}
    assert set(grid["rows"]) == set(by_run), (set(grid["rows"]), set(by_run))
    order = sorted(grid["rows"], key=lambda k: grid["rows"][k]["index"])
    shown = [float(grid["rows"][k]["cells"]["metrics.`score`"]) for k in order]  # as MLflow formats it
    expected = [by_run[k]["mlflow_score"] for k in order]
    assert all(math.isclose(a, b, rel_tol=1e-3, abs_tol=1e-3) for a, b in zip(shown, expected, strict=True)), shown
    assert expected == sorted(expected, reverse=True), expected
    best = max(r["mlflow_score"] for r in ui.search)
    assert by_run[order[0]]["mlflow_score"] == best  # the best trial is the first row
    for name in ui.names:  # the row shows the trial's value
        assert grid["rows"][order[0]]["cells"][f"params.`{name}`"] == str(by_run[order[0]]["config"][name])
    # a pruned trial reads as finished: the same green check as a finished one, its cktf.status "pruned"
    finished = [grid["rows"][k] for k in order if by_run[k]["status"] == "finished"]
    assert finished and all(r["icon"] == finished[0]["icon"] and _green(r["color"]) for r in finished)
    for k in order:
        row, rec = grid["rows"][k], by_run[k]
        assert row["cells"]["tags.`cktf.status`"] == rec["status"]
        if rec["status"] in ("finished", "pruned"):
            assert row["icon"] == finished[0]["icon"] and _green(row["color"]), (rec["status"], row)
            assert not re.search(r"fail|error|killed", " ".join(row["cells"].values()), re.I), row


def test_the_compare_link_plots_score_against_every_searched_value(ui, browser):
    drv = browser
    top = {r["mlflow_run_id"] for r in ui.search if r["mlflow_score"] is not None and r["mlflow_score"] >= ui.threshold}
    base = [r["mlflow_run_id"] for r in ui.search if r.get("baseline")]
    best_first = sorted((r["mlflow_score"] for r in ui.search if r["mlflow_score"] is not None), reverse=True)
    assert base and set(base) <= top and len(top) >= min(TOP, len(best_first))  # the defaults and the top 3
    assert all(s >= ui.threshold for s in best_first[:TOP])
    _open_runs_page(drv, ui.link("compare top"), len(top))
    assert {r.get_attribute("row-id") for r in drv.find_elements("css selector", ".ag-row[row-id]")} == top

    def axes():
        labels = [e.text for e in drv.find_elements("css selector", ".parcoords g.dimension text.label")]
        return labels if set(labels) == {*ui.names, "score"} else None

    labels = _wait(axes, "a parallel coordinates plot of score and every searched value")
    assert labels[-1] == "score", labels
    text = _text(drv)
    assert "Parallel Coordinates" in text and "Showing all runs" in text
    assert f"{len(top)} matching runs" in text
    _shot(drv, "compare_top_chart")
    # the same charts over every search trial
    _open_runs_page(drv, ui.link("score vs the searched values"), len(ui.search))
    _wait(axes, "the parallel coordinates plot over every trial")
    assert f"{len(ui.search)} matching runs" in _text(drv)
    _shot(drv, "trials_chart")


def test_the_parent_run_and_the_registered_model_open(ui, browser, quickstart):
    drv = browser
    drv.get(ui.link("parent run"))
    _wait(lambda: "study:quickstart" in _text(drv) and "best/score" in _text(drv), "the parent run")
    text = _text(drv)
    assert "The search's trials, best score first" in text and "Observability" not in text
    hrefs = [a.get_attribute("href") for a in drv.find_elements("css selector", "a[href*='viewStateShareKey=']")]
    assert any("viewStateShareKey=cktf-trials" in h for h in hrefs), hrefs
    _shot(drv, "parent_run")
    drv.get(ui.link("registered model"))
    _wait(lambda: "champion" in _text(drv) and quickstart.name in _text(drv), "the registered model")
    _shot(drv, "registered_model")


def test_the_report_shows_its_headline_and_its_plots(quickstart, browser):
    drv = browser
    headline = re.search(r"^best: .+$", quickstart.proc.stdout, re.M)
    assert headline, quickstart.proc.stdout[-3000:]
    drv.get((quickstart.dir / "report" / "report.html").as_uri())
    _wait(lambda: "Confirmation over seeds" in _text(drv), "the report")
    text = " ".join(_text(drv).split())
    assert "Study quickstart" in text and " ".join(headline.group(0).split()) in text, (headline.group(0), text[:2000])

    def plots():
        sizes = drv.execute_script(
            "return Array.from(document.querySelectorAll('img.plot')).map(i => [i.complete, i.naturalWidth]);"
        )
        return sizes if len(sizes) >= 3 and all(done and width > 100 for done, width in sizes) else None

    _shot(drv, "report")
    _wait(plots, "every plot decoded", timeout=30)
    drv.execute_script("document.querySelector('img.plot').scrollIntoView();")
    _shot(drv, "report_plots")


def test_cktf_ui_prints_the_links(quickstart, capsys):
    from cktf.cli import main

    assert main(["ui", "--study", str(quickstart.dir), "--dry-run", "--tracking-uri", quickstart.uri]) == 0
    out = capsys.readouterr().out
    for label in ("runs table", "score vs the searched values", "compare top 5", "parent run", "registered model"):
        assert f"\n{label}" in out, out
    assert "workflowType=machine_learning" in out and "viewStateShareKey=cktf-trials" in out
