"""A study over methods: the method searched with its hyper-parameters (Optuna's define-by-run: the method first,
then its own fields), every method's official defaults run first and to the end, and a confirmation that confirms
each method's best configuration, so the report can rank the methods with paired intervals (docs/studies.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import TERMINAL, records, tiny_study, write_study

from cktf.cli import main
from cktf.errors import ConfigError
from cktf.tune.plan import study_from_dict

#: CKTF's own space, small enough for the test's 480 training images (its default nce_k needs more)
CKTF_SPACE = {
    "alpha1": {"type": "uniform", "low": 0.0, "high": 1.0},
    "feat_dim": {"type": "categorical", "choices": [16, 32]},
    "nce_k": {"type": "categorical", "choices": [64, 128]},
}


def methods_study(tmp: Path, data_root: Path, **over):
    study = tiny_study(tmp, data_root, name="methods", **over)
    study.pop("distiller")
    study["search"].pop("space", None)
    study["methods"] = ["kd", "dkd", "dist", {"distiller": "cktf", "space": CKTF_SPACE}]
    return study


# ----------------------------------------------------------------------------- the file (no data, no Ray)


def test_choice_shorthand_and_the_combined_space(tmp_path):
    raw = tiny_study(tmp_path, Path("/nonexistent"))
    raw["search"].pop("space")
    raw["distiller"] = {"choice": ["kd", "dkd"]}
    cfg = study_from_dict(raw)
    assert cfg.method_names == ["kd", "dkd"] and cfg.distiller is None
    space = cfg.space
    assert space["distiller"].choices == ("kd", "dkd")
    # each method's own default space, its fields named <method>.<field>: kd's and dkd's temperature apart
    assert {"kd.alpha", "kd.temperature", "dkd.alpha", "dkd.beta", "dkd.temperature"} <= set(space)
    assert space["dkd.beta"].high == 80.0
    assert cfg.study_for("dkd").distiller == "dkd" and cfg.study_for("dkd").methods == []


@pytest.mark.parametrize(
    "change, field, says",
    [
        ({"methods": ["kd", "dkdd"]}, "methods.1.distiller", "dkd"),  # did you mean
        (
            {"methods": ["kd", {"distiller": "dkd", "space": {"bta": {"type": "log", "low": 1, "high": 8}}}]},
            "methods.1.space.bta",
            "beta",
        ),
        ({"methods": ["kd", "kd"]}, "methods.1", "twice"),
        ({"methods": ["kd"], "distiller": "kd"}, "methods", "not both"),
        ({"methods": ["kd"], "params": {"alpha": 1.0}}, "params", "methods.<i>.params"),
        ({"methods": ["kd", "dkd"], "sampler": {"name": "grid"}}, "sampler.name", "grid"),
    ],
)
def test_a_bad_study_over_methods_names_the_field(tmp_path, change, field, says):
    raw = tiny_study(tmp_path, Path("/nonexistent"))
    raw["search"].pop("space")
    raw.pop("distiller")
    raw.update(change)
    with pytest.raises(ConfigError) as err:
        study_from_dict(raw)
    assert err.value.field == field, str(err.value)
    assert says in str(err.value)


def test_define_by_run_samples_only_the_chosen_methods_fields(tmp_path):
    import optuna

    from cktf.space import make_methods_space_fn
    from cktf.tune.run.trial import trial_run_config

    raw = tiny_study(tmp_path, Path("/nonexistent"))
    raw["search"].pop("space")
    raw.pop("distiller")
    raw["methods"] = ["kd", "dkd", {"distiller": "cktf", "space": CKTF_SPACE}]
    cfg = study_from_dict(raw)
    fn = make_methods_space_fn("distiller", {m: cfg.study_for(m).space for m in cfg.method_names})
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(30):
        trial = study.ask()
        fn(trial)
        method = trial.params["distiller"]
        seen.add(method)
        assert all(k == "distiller" or k.startswith(f"{method}.") for k in trial.params), trial.params
        run = trial_run_config(cfg, dict(trial.params), str(tmp_path / "run"), None)
        # the trial runs as its method's own study: its distiller, its fields without the prefix
        assert run.distiller == method
        assert set(run.distill_params) == {k.split(".", 1)[1] for k in trial.params if k != "distiller"}
        study.tell(trial, 0.0)
    assert seen == {"kd", "dkd", "cktf"}


# ----------------------------------------------------------------------------- one real study over four methods


@pytest.fixture(scope="module")
def methods_run(tmp_path_factory, data_root):
    import ray

    tmp = tmp_path_factory.mktemp("methods")
    study = methods_study(
        tmp, data_root, search__num_samples=6, train={"epochs": 2, "batch_size": 64, "max_steps_per_epoch": 3}
    )
    study["confirm"] = {"top_k": 1, "seeds": 2}
    path = write_study(tmp / "methods.yaml", study)
    rc = main(["tune", str(path), "--quiet"])
    yield rc, tmp / "studies" / "methods", tmp
    if ray.is_initialized():
        ray.shutdown()


@pytest.mark.slow
def test_every_methods_defaults_run_first_and_each_method_is_confirmed(methods_run):
    rc, folder, _ = methods_run
    assert rc == 0
    recs = list(records(folder).values())
    search = [r for r in recs if r.get("stage") == "search"]
    confirm = [r for r in recs if r.get("stage") == "confirm"]
    assert len(search) == 6 and all(r["status"] in TERMINAL for r in recs)
    # the four methods' official defaults are the first four trials and train to the end (never pruned)
    defaults = sorted(search, key=lambda r: r["number"])[:4]
    assert {r["method"] for r in defaults} == {"kd", "dkd", "dist", "cktf"}
    assert all(r["baseline"] and r["status"] == "finished" for r in defaults)
    for r in search:  # a trial holds its method and only that method's fields
        assert all(k == "distiller" or k.startswith(r["method"] + ".") for k in r["config"]), r["config"]
    # each method confirmed: its defaults over two new seeds (and its best other configuration, if it had one)
    by_method: dict[str, set[int]] = {}
    for r in confirm:
        by_method.setdefault(r["method"], set()).add(int(r["seed"]))
    assert set(by_method) == {"kd", "dkd", "dist", "cktf"} and all(len(s) == 2 for s in by_method.values())


@pytest.mark.slow
def test_the_report_ranks_the_methods_with_paired_intervals(methods_run, capsys):
    from cktf.tune.results.report import summarize

    rc, folder, _ = methods_run
    summary = summarize(folder)
    ranking = summary["methods"]
    assert [m["method"] for m in ranking] and {m["method"] for m in ranking} == {"kd", "dkd", "dist", "cktf"}
    means = [m["mean"] for m in ranking]
    assert means == sorted(means, reverse=True)  # best method first, by its confirmed mean
    assert ranking[0]["vs_best"] is None
    for m in ranking[1:]:  # the best against each other method, paired over the two shared seeds
        d = m["vs_best"]
        assert d["n"] == 2 and d["low"] <= d["mean"] <= d["high"] and d["mean"] >= 0
        assert d["within_noise"] == (d["low"] <= 0 <= d["high"])
    # the study's best is the best method's configuration, named with its method in every output
    best = summary["best"]
    assert best["config"]["distiller"] == ranking[0]["method"]
    assert ranking[0]["method"] in summary["headline"]
    assert main(["report", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "**methods**" in out and "| 1 | " + ranking[0]["method"] in out
    state = json.loads((folder / "state.json").read_text())
    assert state["methods"] == ["kd", "dkd", "dist", "cktf"]
    print("\n".join(line for line in out.splitlines() if line.startswith("| ") and "method" in out))


@pytest.mark.slow
def test_mlflow_tags_each_run_with_its_method(methods_run):
    from helpers import study_runs

    _, folder, tmp = methods_run
    parent, children = study_runs(f"sqlite:///{tmp / 'mlflow.db'}", "cktf-methods")
    assert parent[0].data.params["distiller"] == "kd | dkd | dist | cktf"
    tagged = {c.data.tags.get("cktf.method") for c in children}
    assert tagged == {"kd", "dkd", "dist", "cktf"}
    for c in children:  # the run's name holds its method: t03 dkd alpha=1 ..., t01 kd defaults, c2 s1000 dkd ...
        assert c.data.tags["cktf.method"] in c.data.tags["mlflow.runName"].split(" "), c.data.tags["mlflow.runName"]
