"""The quick-start study run as a user runs it (``cktf tune studies/quickstart.yaml``, the live view in a terminal;
made small: conftest.QUICKSTART_SETS), and everything it leaves: the terminal (a compact view, no traceback), the
confirmation's k x n runs, the report's intervals, the registered champion, MLflow's runs, and one answer in every
output (docs/studies.md, "One answer everywhere")."""

from __future__ import annotations

import json
import math
import re
import statistics

import pytest
import torch
from helpers import records, study_runs

pytestmark = pytest.mark.slow

SEEDS = 2  # the quick start confirms the top 1 and the defaults over 2 new seeds


def _state(d) -> dict:
    return json.loads((d / "state.json").read_text())


def _by_group(recs: dict) -> dict[int, dict[int, float]]:
    out: dict[int, dict[int, float]] = {}
    for r in recs.values():
        if r.get("stage") == "confirm":
            out.setdefault(r["group"], {})[r["seed"]] = r["score"]
    return out


def test_the_terminal_shows_a_compact_view_and_no_traceback(quickstart):
    out = quickstart.proc.stdout + quickstart.proc.stderr
    assert quickstart.proc.returncode == 0, out[-4000:]
    assert "Traceback" not in out and "Error" not in out, out  # a successful run prints no traceback
    lines = [x for x in quickstart.proc.stdout.split("\n") + quickstart.proc.stderr.split("\n") if x.strip()]
    # header and teacher (6), one row and one progress line per run (6 search + 4 confirmation runs), final lines
    assert len(lines) <= 6 + 2 * 10 + 1 + 12, "\n".join(lines)
    assert lines[0].startswith("cktf study quickstart: 6 trials of cktf")
    assert "Checkpoint successfully created" not in out and "UserWarning" not in out and "Trial status" not in out
    rows = [x for x in lines if re.match(r"^\s+t\d\d\s+(finished|pruned|failed)", x)]
    assert len(rows) == 6 and all(" score " in r for r in rows)
    assert any("defaults (nce_k=128, not official)" in r for r in rows)  # its official 16384 lies outside the space
    assert any(re.match(r"^\s+c\d s\d+\s+finished", x) for x in lines)
    assert re.search(r"\[\d+ finished · \d+ pruned · 0 failed · \d+ running · \d+/6\]", out)
    assert (quickstart.dir / "driver.log").stat().st_size > 0  # Ray's and our diagnostics went there


def test_the_confirmation_makes_k_times_n_runs_from_scratch(quickstart):
    recs, state = records(quickstart.dir), _state(quickstart.dir)
    search = [r for r in recs.values() if r.get("stage") == "search"]
    conf = [r for r in recs.values() if r.get("stage") == "confirm"]
    assert state["status"] == "complete" and len(search) == 6
    groups = {r["group"] for r in conf}
    assert groups == {0, 1}  # the defaults (0) and the search's best other configuration (1)
    assert len(conf) == len(groups) * SEEDS == len(state["confirm_points"])
    for g in groups:
        runs = [r for r in conf if r["group"] == g]
        assert sorted(r["seed"] for r in runs) == [1000, 1001]
        assert all(r["status"] == "finished" and r["start_epochs"] == [0] for r in runs)  # trained from scratch
        assert len({json.dumps(r["config"], sort_keys=True) for r in runs}) == 1
    finished = sorted((r for r in search if r["status"] == "finished"), key=lambda r: (-r["score"], r["trial_id"]))
    top = next(r for r in finished if not r["baseline"])
    assert any(c["config"] == top["config"] and c["group"] == 1 for c in conf)
    # no trial read the test split: only the final pick was scored on it, once
    assert not any("test_acc" in h for r in recs.values() for h in r["history"])
    assert "test_acc" in state["final_test"]


def test_the_report_intervals_are_computed_from_the_runs(quickstart):
    from scipy import stats

    recs = records(quickstart.dir)
    s = json.loads((quickstart.dir / "report" / "summary.json").read_text())
    groups = _by_group(recs)
    means = {g: statistics.mean(v.values()) for g, v in groups.items()}
    winner = max(means, key=lambda g: (means[g], -g))
    assert s["confirmation"][0]["group"] == winner
    assert math.isclose(s["confirmation"][0]["mean"], means[winner], abs_tol=1e-9)
    assert math.isclose(s["confirmation"][0]["std"], statistics.stdev(groups[winner].values()), abs_tol=1e-9)
    # the paired interval of the best against the other confirmed configuration, whichever won (the defaults too)
    other = next(g for g in groups if g != winner)
    (c,) = s["comparisons"]
    assert c["group"] == other
    d = [groups[winner][k] - groups[other][k] for k in sorted(groups[winner])]
    half = stats.t.ppf(0.975, len(d) - 1) * statistics.stdev(d) / math.sqrt(len(d)) if len(d) > 1 else 0.0
    g = c["diff"]
    assert math.isclose(g["mean"], statistics.mean(d), abs_tol=1e-9)
    assert math.isclose(g["low"], statistics.mean(d) - half, abs_tol=1e-9)
    assert g["within_noise"] == (g["low"] <= 0 <= g["high"])
    assert c["against"] in s["headline"]
    n_val = int(0.1 * 600)  # the quick start holds out 10%
    assert s["num_val"] == n_val
    best = s["best"]["score"]
    assert math.isclose(s["binomial_se"], 100 * math.sqrt(best / 100 * (1 - best / 100) / n_val), rel_tol=1e-9)
    assert s["caution"] and "indicative only" in s["caution"]  # 6 trials: importances from too few
    page = (quickstart.dir / "report" / "report.html").read_text()
    assert "data:image/png;base64," in page and "Confirmation over seeds" in page and "indicative only" in page


def test_the_champion_loads_from_the_registry_and_scores_what_the_report_says(quickstart):
    import mlflow
    import mlflow.pytorch

    from cktf.cli import main
    from cktf.data import DataConfig, load_splits, make_loader
    from cktf.train.engine import evaluate
    from cktf.tune.results.export import load_student

    mlflow.set_tracking_uri(quickstart.uri)
    model = mlflow.pytorch.load_model("models:/quickstart@champion", map_location="cpu")
    resolved = json.loads((quickstart.dir / "study.resolved.json").read_text())
    splits = load_splits(DataConfig(**resolved["data"]), progress=False)
    acc = evaluate(
        model.eval(), make_loader(splits.test, splits.spec, batch_size=256, train=False), torch.device("cpu")
    )
    s = json.loads((quickstart.dir / "report" / "summary.json").read_text())
    assert math.isclose(acc["acc"], s["final_test"]["test_acc"], abs_tol=1e-6)
    info = mlflow.models.get_model_info("models:/quickstart@champion")
    assert json.loads(info.metadata["preprocessing"])["normalize"]["mean"] and info.signature is not None
    out = quickstart.tmp / "from_registry.safetensors"  # cktf export starts from the registered model too
    assert main(["export", "models:/quickstart@champion", "--out", str(out), "--tracking-uri", quickstart.uri]) == 0
    again = load_student(out)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(again(x), model(x))


def test_mlflow_runs_carry_datasets_names_statuses_and_the_training_view(quickstart):
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=quickstart.uri)
    parents, children = study_runs(quickstart.uri, quickstart.experiment)
    exp = client.get_experiment(parents[0].info.experiment_id)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    for run in [parents[0], *children]:
        inputs = client.get_run(run.info.run_id).inputs.dataset_inputs
        assert {i.dataset.name for i in inputs} == {"cifar10/train", "cifar10/val", "cifar10/test"}
        contexts = {t.value for i in inputs for t in i.tags if t.key == "mlflow.data.context"}
        assert contexts == {"training", "validation", "test"}
    names = [c.info.run_name for c in children]
    assert all(re.match(r"^(t\d\d|c\d s\d+) (defaults|\S+=)", n) for n in names), names
    assert all(c.data.tags.get("cktf.status") in ("finished", "pruned") for c in children)
    assert all(c.info.status == "FINISHED" for c in children)  # an ASHA stop is a normal end, not a failure
    assert all("cktf.rung" in c.data.tags for c in children if c.data.tags["cktf.stage"] == "search")
    base = [c for c in children if c.data.tags.get("cktf.baseline") == "true"]
    assert base and all("not official" in c.info.run_name for c in base)  # the defaults outside the space, named
    assert "cktf.baseline_deviations" in parents[0].data.tags


def test_one_answer_in_every_output(quickstart, tmp_path):
    """The study's best and each trial's score are the same numbers in the terminal, the report (markdown, JSON,
    HTML), MLflow (each run's score, the parent's best/*), the registry's tags, and the student's metadata whichever
    way it is exported (the study's best/, cktf export, the registry, the Python API)."""
    import mlflow

    import cktf
    from cktf.cli import main

    d, recs = quickstart.dir, records(quickstart.dir)
    s = json.loads((d / "report" / "summary.json").read_text())
    best = s["best"]
    score, std, test = best["score"], best["std"], best["test"]
    # the terminal: the headline and each trial's row
    out = quickstart.proc.stdout
    assert s["headline"] in out and f"score {score:.2f} ± {std:.2f} over 2 seeds" in s["headline"]
    for r in recs.values():
        if r.get("stage") == "search":
            row = next(x for x in out.splitlines() if re.match(rf"^\s+{r['head']}\s", x))
            assert f"score {r['score']:7.2f}" in row, (row, r["score"])
    # the report
    md = (d / "report" / "summary.md").read_text()
    assert f"score {score:.2f} ± {std:.2f} over 2 seeds" in md and f"test_acc {test:.4g}" in md
    assert s["headline"] in (d / "report" / "report.html").read_text().replace("&#x27;", "'")
    # MLflow: every trial's score, the parent's best/*
    parents, children = study_runs(quickstart.uri, quickstart.experiment)
    for c in children:
        rec = recs[c.data.tags["cktf.trial_id"]]
        assert c.data.metrics["score"] == float(f"{rec['score']:.4g}")
    p = parents[0].data
    assert p.metrics["best/score"] == float(f"{score:.4g}") and p.metrics["best/score_std"] == float(f"{std:.4g}")
    assert p.metrics["best/seeds"] == 2 and p.metrics["best/test_acc"] == float(f"{test:.4g}")
    assert p.tags["cktf.best_trial"] == best["trial"]
    # the registry's tags
    client = mlflow.MlflowClient(tracking_uri=quickstart.uri)
    version = client.get_model_version_by_alias("quickstart", "champion")
    assert version.tags["cktf.score"] == str(float(f"{score:.4g}")) and version.tags["cktf.trial"] == best["trial"]
    assert version.tags["cktf.study_status"] == "complete"
    # every export route gives the same metadata
    routes = {"best/": json.loads((d / "best" / "student.json").read_text())}
    assert main(["export", str(d), "--out", str(tmp_path / "a.safetensors")]) == 0
    routes["cktf export"] = json.loads((tmp_path / "a.json").read_text())
    reg = ["export", "models:/quickstart@champion", "--out", str(tmp_path / "b.safetensors"), "--tracking-uri"]
    assert main([*reg, quickstart.uri]) == 0
    routes["registry"] = json.loads((tmp_path / "b.json").read_text())
    assert routes["registry"]["model_version"] == str(version.version)
    cktf.open_study(d).export(tmp_path / "c.safetensors")
    routes["api"] = json.loads((tmp_path / "c.json").read_text())
    skip = {"weights", "source", "model_version", "onnx"}  # where the file went and which route
    first = {k: v for k, v in routes["best/"].items() if k not in skip}
    assert first["study_status"] == "complete" and first["test_metric"]["value"] == test
    assert first["score"]["value"] == score and first["trial"] == best["trial"]
    for name, info in routes.items():
        assert {k: v for k, v in info.items() if k not in skip} == first, name
    # the Python API's view
    api = cktf.open_study(d)
    assert api.best["score"] == score and api.best["trial"] == best["trial"] and api.status == "complete"
