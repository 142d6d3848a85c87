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
