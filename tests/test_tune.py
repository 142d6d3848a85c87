"""The study layer: validation before Ray, the searcher/scheduler fixes, and one real study end to end.

The end-to-end study (6 tiny CKTF trials, 2 at a time, ASHA grace 1 / halving) runs once per module
on the local Ray; its MLflow store, trial index, export and report are checked by the tests below.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import study_runs, tiny_study, write_study

from cktf.cli import main
from cktf.errors import ConfigError
from cktf.space import categorical, make_space_fn, parse_space, uniform
from cktf.tune.plan import baseline_point, study_from_dict
from cktf.tune.plan.baseline import baseline_deviations
from cktf.tune.results.store import StudyStore

# ----------------------------------------------------------------------------- validation (no Ray)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"student": "resnet9000"}, "resnet9000"),
        ({"distiller": "cktf+nope"}, "nope"),
        ({"search__space__alpha1": {"type": "uniform", "low": -0.1, "high": 1.0}}, "search.space.alpha1"),
        ({"search__space__mapping": {"type": "categorical", "choices": ["last", "diagonal"]}}, "search.space.mapping"),
        ({"search__space__tau": {"type": "log", "low": 0.0, "high": 0.2}}, "search.space.tau.low"),
        ({"params": {"scoring": "fused", "alpha2": -1.0}}, "params.alpha2"),
        ({"asha__grace_period": 10}, "asha.grace_period"),
        ({"resources__gpu": 1.5}, "resources.gpu"),
        ({"search__space__optim.lr": {"type": "log", "low": -1.0, "high": 0.1}}, "search.space.optim.lr.low"),
        ({"search__baseline": {"beta": 1.0}}, "search.baseline.beta"),
        ({"teacher": {}}, "teacher"),
        ({"bogus": 1}, "bogus"),
    ],
)
def test_invalid_study_names_the_field(tmp_path, change, field):
    study = tiny_study(tmp_path, Path("/nonexistent"), **change)
    with pytest.raises(ConfigError) as info:
        study_from_dict(study)
    assert field in str(info.value)


def test_cli_rejects_bad_studies_before_ray_starts(tmp_path, data_root, capsys):
    """Exit 2 with the field named, and nothing written: no Ray storage, no MLflow store."""
    cases = {
        "unknown model": ({"student": "resnet9000"}, "resnet9000"),
        "negative weight": (
            {"search__space__alpha2": {"type": "uniform", "low": -1, "high": 1}},
            "search.space.alpha2",
        ),
        "unknown mapping": ({"search__space__mapping": {"type": "categorical", "choices": ["zigzag"]}}, "mapping"),
        "N too large": ({"search__space__nce_k": {"type": "categorical", "choices": [64, 5000]}}, "search.space.nce_k"),
        "missing data": ({"data__root": str(tmp_path / "nowhere")}, "nowhere"),
    }
    for name, (change, field) in cases.items():
        path = write_study(tmp_path / f"{name.replace(' ', '_')}.yaml", tiny_study(tmp_path, data_root, **change))
        assert main(["tune", str(path), "--quiet"]) == 2, name
        err = capsys.readouterr().err
        assert field in err and err.startswith("cktf: error:"), (name, err)
    assert not (tmp_path / "studies").exists()
    assert not (tmp_path / "mlflow.db").exists()


def test_space_specs():
    space = parse_space(
        {"tau": {"type": "log", "low": 0.05, "high": 0.2}, "m": {"type": "categorical", "choices": [1]}}
    )
    assert space["tau"].contains(0.1) and not space["tau"].contains(0.3)
    with pytest.raises(ConfigError, match="search.space.x"):
        parse_space({"x": {"type": "uniform", "low": 1.0, "high": 1.0}})
    with pytest.raises(ConfigError, match="search.space.x.type"):
        parse_space({"x": {"type": "gaussian", "low": 0, "high": 1}})


def test_baseline_is_the_official_defaults_inside_the_space(tmp_path):
    space = {
        "alpha1": {"type": "uniform", "low": 0.0, "high": 1.0},
        "alpha2": {"type": "uniform", "low": 0.0, "high": 1.0},
        "tau": {"type": "log", "low": 0.03, "high": 0.3},
        "nce_k": {"type": "categorical", "choices": [64, 128]},  # 16384 is not in the space: the nearest, named
        "mapping": {"type": "categorical", "choices": ["first", "last"]},
        "optim.lr": {"type": "log", "low": 0.01, "high": 0.1},
    }
    cfg = study_from_dict(tiny_study(tmp_path, Path("/nonexistent"), search__space=space, optim={"milestones": []}))
    official = {"alpha1": 0.1, "alpha2": 0.8, "tau": 0.1, "mapping": "last", "optim.lr": 0.05}
    assert baseline_point(cfg, 32) == {**official, "nce_k": 128}
    assert baseline_deviations(cfg, 32) == {"nce_k": {"official": 16384, "used": 128}}
    assert baseline_point(cfg, 64)["tau"] == 0.07
    paper = study_from_dict(tiny_study(tmp_path, Path("/nonexistent"), distiller="cktf-paper", search__space=space))
    assert baseline_point(paper, 32)["alpha1"] == 0.8


# ----------------------------------------------------------------------------- searcher and scheduler


def test_asha_stopped_trials_are_told_pruned():
    import optuna

    from cktf.tune.run.searcher import PrunedAwareOptunaSearch

    s = PrunedAwareOptunaSearch(space=make_space_fn({"x": uniform(0.0, 1.0)}), metric="val_acc", mode="max", max_t=4)
    for tid in ("a", "b", "c"):
        s.suggest(tid)
    s.on_trial_result("a", {"val_acc": 10.0, "training_iteration": 1})
    s.on_trial_complete("a", {"val_acc": 12.0, "training_iteration": 2})  # stopped by ASHA at epoch 2 of 4
    s.on_trial_complete("b", {"val_acc": 30.0, "training_iteration": 4})
    s.on_trial_complete("c", None, error=True)
    states = [t.state for t in s._ot_study.trials]
    TS = optuna.trial.TrialState
    assert states == [TS.PRUNED, TS.COMPLETE, TS.FAIL]
    assert s._ot_study.trials[0].intermediate_values == {1: 10.0, 2: 12.0}
    assert s._ot_study.trials[1].value == 30.0


def _asha(state_path, time_attr="training_iteration", **kw):
    """A 4-epoch, grace-1, halving PersistentASHA on val_acc (max), its rungs in ``state_path``."""
    from cktf.tune.run.scheduler import PersistentASHA

    store = StudyStore(state_path.parent)
    sched = PersistentASHA(
        time_attr=time_attr, max_t=4, grace_period=1, reduction_factor=2, store=store, state_name=state_path.name, **kw
    )
    sched.set_search_properties("val_acc", "max")
    return sched


def test_asha_rungs_survive_a_restart(tmp_path):
    from ray.tune.schedulers import TrialScheduler

    first = _asha(tmp_path / "asha.json")
    trials = [SimpleNamespace(trial_id=f"t{i}") for i in range(4)]
    for t, acc in zip(trials, (50.0, 60.0, 70.0, 80.0)):
        first.on_trial_add(None, t)
        first.on_trial_result(None, t, {"training_iteration": 1, "val_acc": acc})
    restored = _asha(
        tmp_path / "asha.json"
    )  # what Tuner.restore gives back: the pickled scheduler, rungs empty in memory
    late = SimpleNamespace(trial_id="late")
    restored.on_trial_add(None, late)
    assert dict(restored.rungs())[1] == {"t0": 50.0, "t1": 60.0, "t2": 70.0, "t3": 80.0}
    # below the rung's cutoff (median of 50..80): stopped, exactly as before the restart
    assert restored.on_trial_result(None, late, {"training_iteration": 1, "val_acc": 55.0}) == TrialScheduler.STOP
    fresh = _asha(tmp_path / "none.json")
    fresh.on_trial_add(None, late)
    assert fresh.on_trial_result(None, late, {"training_iteration": 1, "val_acc": 55.0}) == TrialScheduler.CONTINUE


# ----------------------------------------------------------------------------- one real study


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory, data_root):
    import ray

    tmp = tmp_path_factory.mktemp("study")
    study = tiny_study(tmp, data_root)
    path = write_study(tmp / "tiny.yaml", study)
    rc = main(["tune", str(path), "--quiet"])
    yield SimpleNamespace(rc=rc, tmp=tmp, path=path, study=study, dir=tmp / "studies" / "tiny")
    if ray.is_initialized():
        ray.shutdown()


@pytest.mark.slow
def test_study_completes_with_pruned_and_finished_trials(finished_study):
    assert finished_study.rc == 0
    state = json.loads((finished_study.dir / "state.json").read_text())
    assert state["status"] == "complete"
    recs = [json.loads(p.read_text()) for p in (finished_study.dir / "trials").glob("*.json")]
    assert len(recs) == 6
    statuses = sorted(r["status"] for r in recs)
    assert set(statuses) <= {"finished", "pruned"}
    assert statuses.count("pruned") >= 1 and statuses.count("finished") >= 1  # ASHA stopped some early
    for r in recs:
        epochs = [h["epoch"] for h in r["history"]]
        assert epochs == list(range(len(epochs)))
        assert (len(epochs) == 3) == (r["status"] == "finished")
    baseline = [r for r in recs if r["baseline"]]
    assert len(baseline) == 1 and baseline[0]["config"]["alpha1"] == 0.1 and baseline[0]["config"]["mapping"] == "last"


@pytest.mark.slow
def test_mlflow_holds_one_parent_and_one_child_per_trial(finished_study):
    import mlflow

    uri = finished_study.study["mlflow"]["tracking_uri"]
    parents, children = study_runs(uri, "cktf-tiny")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 6
    assert len({c.data.tags["cktf.trial_id"] for c in children}) == 6
    assert all(c.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for c in children)
    client = mlflow.MlflowClient(tracking_uri=uri)
    index = {p.stem: json.loads(p.read_text()) for p in (finished_study.dir / "trials").glob("*.json")}
    for c in children:
        rec = index[c.data.tags["cktf.trial_id"]]
        expected = {"finished": ("FINISHED", "finished"), "pruned": ("FINISHED", "pruned")}[rec["status"]]
        assert (c.info.status, c.data.tags["cktf.status"]) == expected
        hist = client.get_metric_history(c.info.run_id, "val_acc")
        assert [m.step for m in sorted(hist, key=lambda m: m.step)] == list(range(len(rec["history"])))
        assert not any(k.startswith(("config", "pid", "timestamp", "time_", "data/")) for k in c.data.metrics)
        assert {"alpha1", "tau", "feat_dim", "nce_k", "mapping"} <= set(c.data.params)
    artifacts = {a.path for a in client.list_artifacts(parents[0].info.run_id)}
    assert {"best_student", "report", "study"} <= artifacts


@pytest.mark.slow
def test_data_is_shared_not_copied_per_trial(finished_study):
    """Each trial (2 ran at a time) saw read-only views lying in the object store's shared memory
    mapping, and reading every page of the dataset grew its private memory by far less than the
    dataset's size."""
    for p in (finished_study.dir / "trials").glob("*.json"):
        data = json.loads(p.read_text())["data"]
        assert data["data/zero_copy_views"] == 1.0
        assert data["data/in_shared_memory"] == 1.0  # the object store's shared mapping, not a private copy
        assert data["data/bytes"] > 2_000_000
        assert 0 <= data["data/private_growth_bytes"] < 0.2 * data["data/bytes"]


@pytest.mark.slow
def test_export_loads_and_scores_the_reported_accuracy(finished_study, tmp_path):
    import cktf
    from cktf.data import BatchLoader, DataConfig, load_splits
    from cktf.train.engine import evaluate

    out = tmp_path / "student.safetensors"
    assert main(["export", str(finished_study.dir), "--out", str(out)]) == 0
    info = json.loads(out.with_suffix(".json").read_text())
    model = cktf.load_student(out)
    assert not model.training and info["architecture"] == "resnet8" and info["study"] == "tiny"
    d = finished_study.study["data"]
    splits = load_splits(DataConfig(**d), progress=False)
    loader = BatchLoader(splits.test, splits.spec, batch_size=256, train=False)
    acc = evaluate(model, loader, torch.device("cpu"))["acc"]
    assert math.isclose(acc, info["test_metric"]["value"], abs_tol=1e-6) and info["test_metric"]["name"] == "test_acc"
    assert info["metric"]["value"] == max(
        json.loads(p.read_text())["score"]
        for p in (finished_study.dir / "trials").glob("*.json")
        if json.loads(p.read_text())["status"] == "finished"
    )


@pytest.mark.slow
def test_report_and_rerun_guard(finished_study, capsys):
    assert main(["report", str(finished_study.dir)]) == 0
    out = capsys.readouterr().out
    assert "**best**" in out and "**baseline**" in out
    for name in ("summary.md", "summary.json", "metric_vs_epoch.png", "history.png"):
        assert (finished_study.dir / "report" / name).exists()
    # the same study again: refused, nothing overwritten; it is complete, so the way on is its report or a new name
    assert main(["tune", str(finished_study.path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "is complete" in err and "cktf report" in err and "--set name=tiny-2" in err


@pytest.mark.slow
def test_nan_loss_fails_the_trial_and_the_study_goes_on(finished_study, tmp_path):
    teacher = finished_study.dir / "teacher.safetensors"
    study = tiny_study(
        tmp_path,
        Path(finished_study.study["data"]["root"]),
        name="nan",
        teacher={"checkpoint": str(teacher)},
        search={
            "num_samples": 3,
            "space": {"optim.lr": {"type": "categorical", "choices": [0.05, 1.0e12]}},
            "baseline": {"optim.lr": 1.0e12},
        },
        train__epochs=1,
        params={"nce_k": 64},
        max_failures=0,
    )
    path = write_study(tmp_path / "nan.yaml", study)
    assert main(["tune", str(path), "--quiet"]) == 0
    recs = [json.loads(p.read_text()) for p in (tmp_path / "studies" / "nan" / "trials").glob("*.json")]
    by_lr = {lr: [r for r in recs if r["config"]["optim.lr"] == lr] for lr in (0.05, 1.0e12)}
    assert by_lr[1.0e12] and all(r["status"] == "failed" and "non-finite" in r["error"] for r in by_lr[1.0e12])
    assert by_lr[0.05] and all(r["status"] == "finished" for r in by_lr[0.05])  # the study went on
    _, children = study_runs(study["mlflow"]["tracking_uri"], "cktf-nan")
    assert sorted(c.info.status for c in children) == sorted(
        "FAILED" if r["status"] == "failed" else "FINISHED" for r in recs
    )


def test_the_baseline_trial_is_never_stopped_early(tmp_path):
    from ray.tune.schedulers import TrialScheduler

    sched = _asha(tmp_path / "asha.json", "epochs_done", protect={"alpha1": 0.1, "mapping": "last"})
    good = SimpleNamespace(trial_id="good", config={"alpha1": 0.5, "mapping": "first"})
    base = SimpleNamespace(trial_id="base", config={"alpha1": 0.1, "mapping": "last"})
    other = SimpleNamespace(trial_id="other", config={"alpha1": 0.2, "mapping": "last"})
    for t in (good, base, other):
        sched.on_trial_add(None, t)
    sched.on_trial_result(None, good, {"epochs_done": 1, "val_acc": 60.0})
    assert sched.on_trial_result(None, base, {"epochs_done": 1, "val_acc": 10.0}) == TrialScheduler.CONTINUE
    assert sched.on_trial_result(None, other, {"epochs_done": 1, "val_acc": 10.0}) == TrialScheduler.STOP
    assert dict(sched.rungs())[1]["base"] == 10.0  # its value still counts for the others' cutoffs


def test_sync_repairs_what_a_killed_driver_left_undone(tmp_path):
    """The index says a trial ended (or has epochs) but the driver died before MLflow was told: the next finish (or
    ``cktf mlflow-sync``) makes MLflow match the index, and a second sync finds nothing to do."""
    import mlflow

    from cktf.tune.results.mlflow_runs import sync_study
    from cktf.tune.results.reader import TrialIndex
    from cktf.tune.results.tracking import Tracking

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("x")
    parent = client.create_run(exp).info.run_id
    runs = {s: client.create_run(exp).info.run_id for s in ("pruned", "finished", "running")}
    index = TrialIndex(tmp_path)
    history = [{"epoch": 0, "val_acc": 10.0}, {"epoch": 1, "val_acc": 12.5}]
    for status, run_id in runs.items():
        index.update(status, status=status, mlflow_run_id=run_id, score=12.5, history=history)
    index.update("unlogged", status="finished", history=history, config={"alpha1": 0.3}, score=12.5)
    done = sync_study(Tracking(uri), index.store, exp, parent)
    assert done == {"runs_created": 1, "epochs_logged": 8, "statuses_fixed": 3}
    got = {s: client.get_run(r) for s, r in runs.items()}
    assert got["pruned"].info.status == "FINISHED" and got["pruned"].data.tags["cktf.status"] == "pruned"
    assert got["finished"].info.status == "FINISHED" and got["finished"].data.metrics["score"] == 12.5
    assert got["running"].info.status == "RUNNING"
    made = client.get_run(index.get("unlogged")["mlflow_run_id"])
    assert made.data.tags["cktf.trial_id"] == "unlogged" and made.data.params == {"alpha1": "0.3"}
    assert [m.step for m in client.get_metric_history(made.info.run_id, "val_acc")] == [0, 1]
    assert sync_study(Tracking(uri), index.store, exp, parent) == dict.fromkeys(done, 0)


def test_every_shipped_study_round_trips_through_the_trial_dict(monkeypatch):
    """The study is logged (and can be rebuilt) from ``to_dict()``: the result must be the same study."""
    monkeypatch.setenv("CKTF_DATA_ROOT", "data")
    from cktf.tune.plan import StudyConfig, load_study

    for path in sorted(Path(__file__).resolve().parents[1].joinpath("studies").rglob("*.yaml")):
        if "campaigns" in path.parts:  # campaign files have their own schema (test_campaign)
            continue
        cfg = load_study(path)
        again = StudyConfig.parse(cfg.to_dict())
        assert again.model_dump() == cfg.model_dump() and again.to_dict() == cfg.to_dict(), path


def test_grid_sampler_runs_every_ablation_arm_once():
    import optuna

    from cktf.tune.run.searcher import PrunedAwareOptunaSearch

    space = {"mapping": categorical("first", "last", "min_cos"), "train.seed": categorical(0, 1)}
    grid = optuna.samplers.GridSampler({k: list(v.choices) for k, v in space.items()}, seed=0)
    s = PrunedAwareOptunaSearch(space=make_space_fn(space), metric="val_acc", mode="max", sampler=grid, max_t=1)
    seen = []
    for i in range(6):
        cfg = s.suggest(f"t{i}")
        seen.append((cfg["mapping"], cfg["train.seed"]))
        s.on_trial_complete(f"t{i}", {"val_acc": 1.0, "training_iteration": 1})
    assert sorted(seen) == sorted((m, k) for m in ("first", "last", "min_cos") for k in (0, 1))


def test_checkpoint_snapshot_links_replaced_files_and_copies_appended_ones(tmp_path):
    from cktf.tune.run.trial import snapshot_file

    run, snap = tmp_path / "run", tmp_path / "snap"
    run.mkdir(), snap.mkdir()
    (run / "last.pt").write_bytes(b"banks v1")
    (run / "metrics.jsonl").write_text('{"epoch": 0}\n')
    for name in ("last.pt", "metrics.jsonl"):
        snapshot_file(run / name, snap / name)
    assert (snap / "last.pt").stat().st_ino == (run / "last.pt").stat().st_ino  # no copy of the large file
    assert (snap / "metrics.jsonl").stat().st_ino != (run / "metrics.jsonl").stat().st_ino
    with open(run / "metrics.jsonl", "a") as f:  # the trainer appends next epoch's line ...
        f.write('{"epoch": 1}\n')
    (run / "last.pt.tmp").write_bytes(b"banks v2")
    (run / "last.pt.tmp").replace(run / "last.pt")  # ... and replaces last.pt whole
    assert (snap / "metrics.jsonl").read_text() == '{"epoch": 0}\n' and (snap / "last.pt").read_bytes() == b"banks v1"


def test_ablation_table_compares_each_choice_over_its_finished_trials():
    from cktf.tune.results.markdown import to_markdown
    from cktf.tune.results.reader import FINISHED, PRUNED
    from cktf.tune.results.report import ablation_tables

    def row(mapping, seed, status, val, test):
        cfg = {"mapping": mapping, "train.seed": seed}
        return {"config": cfg, "status": status, "score": val, "test_at_selected": test}

    rows = [
        row("last", 0, FINISHED, 70.0, 69.0),
        row("last", 1, FINISHED, 72.0, 71.5),
        row("min_cos", 0, FINISHED, 71.0, 70.0),
        row("min_cos", 1, PRUNED, 75.0, 74.0),  # stopped early: not compared
        row("first", 0, PRUNED, 60.0, 59.0),
    ]
    space = {"mapping": {"type": "categorical", "choices": ["first", "last", "min_cos"]}, "alpha1": {"type": "log"}}
    tables = ablation_tables(rows, space)
    assert list(tables) == ["mapping"]  # one table per categorical parameter
    by = {t["choice"]: t for t in tables["mapping"]}
    assert (by["last"]["trials"], by["last"]["finished"], by["last"]["best"], by["last"]["mean"]) == (2, 2, 72.0, 71.0)
    assert by["last"]["test_at_best"] == 71.5
    assert (by["min_cos"]["finished"], by["min_cos"]["best"]) == (1, 71.0)
    assert by["first"]["best"] is None and by["first"]["trials"] == 1
    summary = {"study": "s", "status": "complete", "counts": {}, "metric": "val_acc", "mode": "max", "best": None}
    summary.update(baseline=None, test_metric="test_acc", headline="h", score={"rule": "val_acc at its best epoch"})
    summary.update(gain_over_baseline=None, anchor=None, ablations=tables, top=[])
    assert "| last | 2 | 2 | 72 | 71 | 71.5 |" in to_markdown(summary)
