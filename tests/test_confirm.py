"""A study with a confirmation stage, run for real (local Ray, MLflow in sqlite), as a user runs it: the live view
in the terminal, the confirmation's k x n runs, the report's paired interval, the registered champion, MLflow
datasets and readable run names (docs/studies.md)."""

from __future__ import annotations

import json
import math
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import study_runs, tiny_study, write_study

pytestmark = pytest.mark.slow

TOP_K, SEEDS = 2, 2


@pytest.fixture(scope="module")
def confirmed(tmp_path_factory, data_root):
    tmp = tmp_path_factory.mktemp("confirm")
    study = tiny_study(tmp, data_root, name="conf")
    study["search"]["num_samples"] = 4
    study["train"]["epochs"] = 2
    study["confirm"] = {"top_k": TOP_K, "seeds": SEEDS, "seed_base": 500}
    path = write_study(tmp / "conf.yaml", study)
    env = {**os.environ, "COLUMNS": "160"}
    proc = subprocess.run(
        [sys.executable, "-c", "import sys; from cktf.cli import main; sys.exit(main())", "tune", str(path)],
        cwd=tmp,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    d = tmp / "studies" / "conf"
    recs = [json.loads(p.read_text()) for p in (d / "trials").glob("*.json")]
    yield SimpleNamespace(proc=proc, tmp=tmp, study=study, dir=d, recs=recs, uri=study["mlflow"]["tracking_uri"])


def _state(d: Path) -> dict:
    return json.loads((d / "state.json").read_text())


def test_the_terminal_shows_a_compact_view(confirmed):
    out = confirmed.proc.stdout + confirmed.proc.stderr
    assert confirmed.proc.returncode == 0, out[-4000:]
    # lines as a terminal shows them: a progress bar redrawn with \r is one line
    lines = [x for x in confirmed.proc.stdout.split("\n") + confirmed.proc.stderr.split("\n") if x.strip()]
    # header, one row and one progress line per run (4 search + up to 6 confirmation runs), the final lines
    assert len(lines) <= 40, "\n".join(lines)
    assert lines[0].startswith("cktf study conf: 4 trials of cktf")
    assert "Checkpoint successfully created" not in out and "UserWarning" not in out and "Trial status" not in out
    rows = [x for x in lines if re.match(r"^\s+t\d\d\s+(finished|pruned|failed)", x)]
    assert len(rows) == 4 and all("val_acc" in r and "tau=" in r or "defaults" in r for r in rows)
    assert any(re.match(r"^\s+c\d s\d+\s+finished", x) for x in lines)
    assert re.search(r"\[\d+ finished · \d+ pruned · 0 failed · \d+ running · \d+/4\]", out)
    assert (confirmed.dir / "driver.log").stat().st_size > 0  # Ray's and our diagnostics went there


def test_the_confirmation_makes_k_times_n_runs_from_scratch(confirmed):
    state = _state(confirmed.dir)
    search = [r for r in confirmed.recs if r.get("stage") == "search"]
    conf = [r for r in confirmed.recs if r.get("stage") == "confirm"]
    assert state["status"] == "complete" and len(search) == 4
    groups = {r["group"] for r in conf}
    defaults_in_top = any(r["baseline"] and r["group"] > 0 for r in conf)  # group 0: the defaults added to the top k
    assert groups == set(range(1, TOP_K + 1)) | (set() if defaults_in_top else {0})
    assert len(conf) == len(groups) * SEEDS == len(state["confirm_points"])
    for g in groups:
        runs = [r for r in conf if r["group"] == g]
        assert sorted(r["seed"] for r in runs) == [500, 501]
        assert all(r["status"] == "finished" and r["start_epochs"] == [0] for r in runs)  # trained from scratch
        assert len({json.dumps(r["config"], sort_keys=True) for r in runs}) == 1
    finished = sorted((r for r in search if r["status"] == "finished"), key=lambda r: (-r["score"], r["trial_id"]))
    top = [r["config"] for r in finished[:TOP_K]]
    assert all(any(c["config"] == t for c in conf) for t in top)
    # no trial read the test split: only the final pick was scored on it, once
    assert not any("test_acc" in h for r in confirmed.recs for h in r["history"])
    assert "test_acc" in state["final_test"]


def _by_group(recs):
    out = {}
    for r in recs:
        if r.get("stage") == "confirm":
            out.setdefault(r["group"], {})[r["seed"]] = r["score"]
    return out


def test_the_report_interval_is_computed_from_the_runs(confirmed):
    from scipy import stats

    s = json.loads((confirmed.dir / "report" / "summary.json").read_text())
    groups = _by_group(confirmed.recs)
    means = {g: statistics.mean(v.values()) for g, v in groups.items()}
    winner = max(means, key=lambda g: (means[g], -g))
    assert s["confirmation"][0]["group"] == winner
    assert math.isclose(s["confirmation"][0]["mean"], means[winner], abs_tol=1e-9)
    assert math.isclose(s["confirmation"][0]["std"], statistics.stdev(groups[winner].values()), abs_tol=1e-9)
    base = next(r["group"] for r in confirmed.recs if r.get("stage") == "confirm" and r["baseline"])
    if base == winner:
        assert s["confirmed_gain"] is None and "defaults" in s["headline"]
    else:
        d = [groups[winner][k] - groups[base][k] for k in sorted(groups[winner])]
        half = stats.t.ppf(0.975, len(d) - 1) * statistics.stdev(d) / math.sqrt(len(d))
        g = s["confirmed_gain"]
        assert math.isclose(g["mean"], statistics.mean(d), abs_tol=1e-9)
        assert math.isclose(g["low"], statistics.mean(d) - half, abs_tol=1e-9)
        assert math.isclose(g["high"], statistics.mean(d) + half, abs_tol=1e-9)
        assert g["within_noise"] == (g["low"] <= 0 <= g["high"])
        assert ("within noise" in s["headline"]) == g["within_noise"]
    n_val = int(0.2 * confirmed.study["data"]["train_subset"])
    assert s["num_val"] == n_val
    best = s["best"]["score"]
    assert math.isclose(s["binomial_se"], 100 * math.sqrt(best / 100 * (1 - best / 100) / n_val), rel_tol=1e-9)
    page = (confirmed.dir / "report" / "report.html").read_text()
    assert "data:image/png;base64," in page and "Confirmation over seeds" in page


def test_the_exported_student_is_the_confirmed_best(confirmed):
    groups = _by_group(confirmed.recs)
    means = {g: statistics.mean(v.values()) for g, v in groups.items()}
    winner = max(means, key=lambda g: (means[g], -g))
    runs = [r for r in confirmed.recs if r.get("stage") == "confirm" and r["group"] == winner]
    pick = sorted(runs, key=lambda r: (-r["score"], r["trial_id"]))[0]
    exported = json.loads((confirmed.dir / "best" / "student.json").read_text())
    assert exported["trial"] == pick["trial_id"]
    parents, _ = study_runs(confirmed.uri, "cktf-conf")
    assert parents[0].data.tags["cktf.best_trial"] == pick["trial_id"]


def test_the_champion_loads_from_the_registry_and_scores_what_the_report_says(confirmed):
    import mlflow
    import mlflow.pytorch

    from cktf.data import BatchLoader, DataConfig, load_splits
    from cktf.train.engine import evaluate

    mlflow.set_tracking_uri(confirmed.uri)
    model = mlflow.pytorch.load_model("models:/conf@champion", map_location="cpu")
    splits = load_splits(DataConfig(**confirmed.study["data"]), progress=False)
    acc = evaluate(model.eval(), BatchLoader(splits.test, splits.spec, 256, False), torch.device("cpu"))["acc"]
    s = json.loads((confirmed.dir / "report" / "summary.json").read_text())
    assert math.isclose(acc, s["final_test"]["test_acc"], abs_tol=1e-6)
    parents, _ = study_runs(confirmed.uri, "cktf-conf")
    assert math.isclose(parents[0].data.metrics["best/test_acc"], acc, abs_tol=1e-6)
    info = mlflow.models.get_model_info("models:/conf@champion")
    pre = json.loads(info.metadata["preprocessing"])
    assert pre["normalize"]["mean"] and info.signature is not None
    # cktf export starts from the registered model too, and gives the same weights
    from cktf.cli import main

    out = confirmed.tmp / "from_registry.safetensors"
    assert main(["export", "models:/conf@champion", "--out", str(out), "--tracking-uri", confirmed.uri]) == 0
    from cktf.tune.results.export import load_student

    again = load_student(out)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(again(x), model(x))


def test_mlflow_runs_carry_datasets_names_and_the_training_view(confirmed):
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=confirmed.uri)
    parents, children = study_runs(confirmed.uri, "cktf-conf")
    exp = client.get_experiment(parents[0].info.experiment_id)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    for run in [parents[0], *children]:
        inputs = client.get_run(run.info.run_id).inputs.dataset_inputs
        names = {i.dataset.name for i in inputs}
        assert names == {"cifar10/train", "cifar10/val", "cifar10/test"}, names
        contexts = {t.value for i in inputs for t in i.tags if t.key == "mlflow.data.context"}
        assert contexts == {"training", "validation", "test"}
        assert all(len(i.dataset.digest) == 16 for i in inputs)
    names = [c.info.run_name for c in children]
    assert all(re.match(r"^(t\d\d|c\d s\d+) (defaults|\S+=)", n) for n in names), names
    assert all(c.data.tags.get("cktf.status") in ("finished", "pruned") for c in children)
    assert all("cktf.rung" in c.data.tags for c in children if c.data.tags["cktf.stage"] == "search")
    assert sum(c.data.tags["cktf.stage"] == "confirm" for c in children) == len(_state(confirmed.dir)["confirm_points"])


# ----------------------------------------------------------------------------- the MLflow UI in a real browser
CHROMIUM, DRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


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


def _wait_for_text(drv, texts, timeout: float = 60.0) -> str:
    import time

    deadline = time.time() + timeout
    while time.time() < deadline:
        page = drv.page_source
        if all(t in page for t in texts):
            return page
        time.sleep(0.5)
    missing = [t for t in texts if t not in drv.page_source]
    raise AssertionError(f"the page never showed {missing}")


def test_the_mlflow_ui_shows_the_study_in_a_real_browser(confirmed, browser, tmp_path):
    from stack import MlflowServer

    parents, children = study_runs(confirmed.uri, "cktf-conf")
    parent = parents[0]
    exp = parent.info.experiment_id
    child = next(c for c in children if c.data.tags["cktf.stage"] == "confirm")
    with MlflowServer(confirmed.uri, str(confirmed.tmp / "mlruns")) as server:
        browser.get(f"{server.url}/#/experiments/{exp}/runs")
        _wait_for_text(browser, ["study:conf", children[0].info.run_name.split(" ")[0]])
        browser.save_screenshot(str(tmp_path / "runs_table.png"))
        browser.get(f"{server.url}/#/experiments/{exp}/runs/{child.info.run_id}")
        _wait_for_text(browser, [child.info.run_name, "val_acc", "alpha1", "cifar10/train"])
        browser.save_screenshot(str(tmp_path / "child_run.png"))
        browser.get(f"{server.url}/#/models/conf")
        _wait_for_text(browser, ["conf", "champion"])
        browser.save_screenshot(str(tmp_path / "registered_model.png"))
    # the report, opened the same way: every plot decoded and drawn
    browser.get((confirmed.dir / "report" / "report.html").as_uri())
    _wait_for_text(browser, ["Confirmation over seeds", "Trials"])
    sizes = browser.execute_script(
        "return Array.from(document.querySelectorAll('img.plot')).map(i => [i.complete, i.naturalWidth]);"
    )
    assert len(sizes) >= 3 and all(done and width > 100 for done, width in sizes), sizes
    browser.save_screenshot(str(tmp_path / "report.png"))
    for name in ("runs_table", "child_run", "registered_model", "report"):
        assert (tmp_path / f"{name}.png").stat().st_size > 10_000
