"""The Python API (docs/python-api.md): the notebook example runs as written and returns a DataFrame with one row per
trial; the API refuses a bad input before anything runs, as the command line does."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _example() -> str:
    text = (ROOT / "docs" / "python-api.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "docs/python-api.md has no python example"
    return blocks[-1]


@pytest.mark.slow
def test_the_notebook_example_runs_and_gives_one_row_per_trial(tmp_path, data_root, monkeypatch):
    import pandas as pd
    import ray

    monkeypatch.chdir(ROOT)  # the example names studies/quickstart.yaml as a notebook beside the checkout would
    scope: dict = {"DATA_ROOT": str(data_root), "WORKDIR": str(tmp_path)}
    try:
        exec(compile(_example(), "docs/python-api.md", "exec"), scope)
    finally:
        if ray.is_initialized():
            ray.shutdown()
    results, table = scope["results"], scope["table"]
    assert results.status == "complete" and isinstance(table, pd.DataFrame)
    assert len(table) == 3 == len(list((tmp_path / "notebook" / "trials").glob("*.json")))  # one row per trial
    assert {"name", "status", "score", "alpha1", "tau", "epochs", "mlflow_run_id"} <= set(table.columns)
    assert set(table["status"]) <= {"finished", "pruned"} and table["mlflow_run_id"].notna().all()
    best = results.best
    assert table.iloc[0]["trial"] == best["trial"] and table.iloc[0]["score"] == best["score"]
    assert scope["info"]["trial"] == best["trial"] and not scope["student"].training
    assert "best:" in results.headline and repr(results).startswith("<cktf study notebook: complete")


def test_the_api_refuses_a_bad_study_before_anything_runs(tmp_path):
    import cktf
    from cktf.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        cktf.run_study(
            ROOT / "studies" / "quickstart.yaml",
            overrides={"workdir": str(tmp_path), "search.space.tua": {"type": "log", "low": 0.1, "high": 1}},
        )
    assert err.value.field == "search.space.tua" and "did you mean tau?" in err.value.problem
    assert not any(tmp_path.iterdir())  # nothing written


@pytest.mark.parametrize("kind", ["study", "campaign"])
def test_a_resume_merges_the_set_values_it_started_with_and_the_new_ones(tmp_path, kind):
    """The one rule (docs/studies.md, "--resume and --set"), for both kinds through the one entry of the engine: the
    values a run started with stay, those given again replace theirs, new ones are added; --resume alone changes
    nothing. Checked on the run's settings as the engine enters it (nothing trains)."""
    import json

    from helpers import tiny_study
    from test_campaign import offline_raw

    from cktf.api import _enter
    from cktf.campaign.schema import CampaignConfig
    from cktf.tune.plan import StudyConfig
    from cktf.tune.run.context import RunOptions

    if kind == "study":
        cls, raw = StudyConfig, tiny_study(tmp_path, Path("/nonexistent"), name="resumed")
        started = {"search.num_samples": 4, "max_concurrent": 1}
    else:
        cls, raw = CampaignConfig, offline_raw(tmp_path, "/nonexistent")
        started = {"seeds": [0], "max_concurrent": 1}
    folder = Path(raw["workdir"]) / raw["name"]
    folder.mkdir(parents=True)
    (folder / "state.json").write_text(json.dumps({"status": "incomplete", "overrides": started}))

    def settings(given: dict) -> tuple:
        ctx = _enter(cls, raw, RunOptions(view="quiet", resume=True, overrides=given))
        try:
            return ctx.settings, dict(ctx.options.overrides)
        finally:
            ctx.__exit__(None, None, None)

    cfg, used = settings({"max_concurrent": 2, "max_failures": 5})
    assert used == {**started, "max_concurrent": 2, "max_failures": 5}
    assert (cfg.max_concurrent, cfg.max_failures) == (2, 5)
    if kind == "study":
        assert cfg.search.num_samples == 4  # kept from the start
    else:
        assert cfg.seeds == [0]
    cfg, used = settings({})  # --resume alone: exactly as it started
    assert used == started and cfg.max_concurrent == 1
