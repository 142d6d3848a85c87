"""Methods own what a study needs to know about them: a method registered from this file alone (a plugin) runs a
real study over its own default space, and the study layer never tests a method's name.

``toy_l2`` is defined here, not in ``cktf/distillers/``: the study names this module under ``plugins``, so the
driver and every Ray worker import it (and so register the method) before anything looks the name up.
"""

from __future__ import annotations

import ast
import json
import os
from collections.abc import Mapping
from pathlib import Path

import pytest
import torch.nn.functional as F
from helpers import study_runs, tiny_study, write_study
from torch import Tensor

from cktf.cli import main
from cktf.distillers import LOSS_TERMS, LossTerm, TermConfig, Weight, objective, objective_names
from cktf.errors import ConfigError
from cktf.models import DistillOutput
from cktf.space import log_uniform
from cktf.tune.plan import baseline_point, study_from_dict

ROOT = Path(__file__).resolve().parents[1]


class ToyConfig(TermConfig):
    """A toy method's fields: a weight with a default inside its own space."""

    beta: Weight = 1.0
    """weight of the logit MSE"""


if "toy_l2" not in LOSS_TERMS:  # this file may be imported by pytest and again by name (plugins)

    @LOSS_TERMS.register("toy_l2", summary="toy: MSE between student and teacher logits")
    class ToyL2(LossTerm):
        """A method defined outside the package: MSE between the logits, weighted ``beta``."""

        config_cls = ToyConfig
        needs_features = False
        search_space = {"beta": log_uniform(0.1, 10.0)}

        def forward(self, s: DistillOutput, t: DistillOutput | None, batch: Mapping[str, Tensor]) -> dict:
            return {"toy": self.cfg.beta * F.mse_loss(s.logits, t.logits)}


def test_a_plugin_method_is_a_method_like_any_other(tmp_path):
    obj = objective("toy_l2")
    assert obj.needs_teacher and obj.default_space() == {"beta": log_uniform(0.1, 10.0)}
    assert "toy_l2" in objective_names() and "cktf+toy_l2" in objective_names()  # every joinable method combines
    study = tiny_study(tmp_path, Path("/nonexistent"), distiller="toy_l2", search__space={})
    cfg = study_from_dict(study)
    assert cfg.space == {"beta": log_uniform(0.1, 10.0)}
    assert baseline_point(cfg, 32) == {"beta": 1.0}  # the official default is trial 0
    with pytest.raises(ConfigError, match="params.beta"):
        study_from_dict({**study, "params": {"beta": -1}})


def test_an_unimportable_plugin_is_named(tmp_path):
    study = tiny_study(tmp_path, Path("/nonexistent"), plugins=["no_such_module_xyz"])
    with pytest.raises(ConfigError) as exc:
        study_from_dict(study)
    assert exc.value.field == "plugins" and "no_such_module_xyz" in str(exc.value)


def _string_constants(path: Path) -> list[tuple[int, str]]:
    """Every string literal of a module except docstrings (a test on a method's name needs one)."""
    tree = ast.parse(path.read_text())
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = getattr(node, "body", [])
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                docstrings.add(id(body[0].value))
    return [
        (n.lineno, n.value)
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings
    ]


def test_the_study_layer_never_tests_a_method_name():
    """No string literal in ``cktf/tune/`` is a method's name (``cktf``, ``crd``, ``kd``, ``fitnet``, ...), and
    no identifier there is one: what a study needs comes from the method's class."""
    names = set(LOSS_TERMS.names()) | {p for n in LOSS_TERMS.names() for p in LOSS_TERMS.get(n).presets}
    found = []
    for path in sorted((ROOT / "cktf" / "tune").rglob("*.py")):
        for line, value in _string_constants(path):
            if value.strip().lower() in names or any(value.startswith(f"{n}+") for n in names):
                found.append(f"{path.relative_to(ROOT)}:{line}: {value!r}")
        idents = {n.id for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Name)}
        found += [f"{path.relative_to(ROOT)}: identifier {i}" for i in sorted(idents & names)]
    assert not found, "method names in the study layer:\n" + "\n".join(found)


@pytest.mark.slow
def test_a_plugin_method_runs_a_study_over_its_own_default_space(tmp_path, data_root, monkeypatch):
    import ray

    if ray.is_initialized():
        ray.shutdown()  # the study's Ray must start with this environment (its workers import the plugin)
    here = str(Path(__file__).resolve().parent)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p))
    study = tiny_study(
        tmp_path,
        data_root,
        name="toy",
        distiller="toy_l2",
        plugins=[Path(__file__).stem],
        search={"num_samples": 2},  # no space: the method's own
        train__epochs=2,
        asha={"grace_period": 2, "reduction_factor": 2},
    )
    path = write_study(tmp_path / "toy.yaml", study)
    try:
        assert main(["tune", str(path), "--quiet"]) == 0
    finally:
        if ray.is_initialized():
            ray.shutdown()
    recs = [json.loads(p.read_text()) for p in (tmp_path / "studies" / "toy" / "trials").glob("*.json")]
    assert len(recs) == 2 and all(r["status"] == "finished" for r in recs)
    assert all(set(r["config"]) == {"beta"} and 0.1 <= r["config"]["beta"] <= 10.0 for r in recs)
    assert sorted(r["baseline"] for r in recs) == [False, True]
    assert next(r for r in recs if r["baseline"])["config"] == {"beta": 1.0}
    assert all("loss/toy" in h for r in recs for h in r["history"])
    _, children = study_runs(study["mlflow"]["tracking_uri"], "cktf-toy")
    assert len(children) == 2
