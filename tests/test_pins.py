"""Canaries: one per private attribute of a dependency the code reads or writes (docs/architecture.md, "Dependencies
that cannot move under us"). A failure names the installed version and the file that needs adapting before a pin in
``pyproject.toml`` may move."""

from __future__ import annotations

from types import SimpleNamespace

import optuna
import pytest
import ray
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from cktf.space import make_space_fn, uniform

SEARCHER = "cktf/tune/run/searcher.py"
SCHEDULER = "cktf/tune/run/scheduler.py"


def _moved(what: str, owner: str, user: str) -> str:
    return (
        f"{what} is not there in {owner}; {user} relies on it. Adapt {user} before moving the pin "
        "in pyproject.toml (docs/architecture.md)"
    )


@pytest.fixture(scope="module")
def searcher() -> OptunaSearch:
    s = OptunaSearch(space=make_space_fn({"x": uniform(0.0, 1.0)}), metric="val_acc", mode="max")
    s.suggest("t0")
    return s


@pytest.mark.parametrize("attr", ["_ot_trials", "_ot_study", "_completed_trials"])
def test_ray_optuna_search_private_state(searcher, attr):
    ray_v = f"ray {ray.__version__}"
    assert hasattr(searcher, attr), _moved(f"OptunaSearch.{attr}", ray_v, SEARCHER)
    kinds = {"_ot_trials": dict, "_ot_study": optuna.Study, "_completed_trials": set}
    assert isinstance(getattr(searcher, attr), kinds[attr]), _moved(
        f"OptunaSearch.{attr} as a {kinds[attr]}", ray_v, SEARCHER
    )


def test_optuna_trial_private_id_and_storage(searcher):
    ot_trial = searcher._ot_trials["t0"]
    opt_v = f"optuna {optuna.__version__}"
    assert isinstance(getattr(ot_trial, "_trial_id", None), int), _moved("Trial._trial_id", opt_v, SEARCHER)
    frozen = ot_trial.storage.get_trial(ot_trial._trial_id)
    assert isinstance(frozen.intermediate_values, dict), _moved(
        "storage.get_trial().intermediate_values", opt_v, SEARCHER
    )


@pytest.fixture(scope="module")
def asha() -> ASHAScheduler:
    sched = ASHAScheduler(time_attr="epochs_done", max_t=4, grace_period=1, reduction_factor=2)
    sched.set_search_properties("val_acc", "max")
    sched.on_trial_add(None, SimpleNamespace(trial_id="a"))
    return sched


@pytest.mark.parametrize(("attr", "kind"), [("_brackets", list), ("_num_stopped", int)])
def test_ray_asha_private_state(asha, attr, kind):
    assert isinstance(getattr(asha, attr, None), kind), _moved(
        f"ASHAScheduler.{attr}", f"ray {ray.__version__}", SCHEDULER
    )


def test_ray_asha_time_attr_and_max_t(asha):
    ray_v = f"ray {ray.__version__}"
    assert getattr(asha, "_time_attr", None) == "epochs_done", _moved("ASHAScheduler._time_attr", ray_v, SCHEDULER)
    assert getattr(asha, "_max_t", None) == 4, _moved("ASHAScheduler._max_t", ray_v, SCHEDULER)


def test_ray_asha_bracket_rungs_are_milestone_records(asha):
    rungs = getattr(asha._brackets[0], "_rungs", None)
    ray_v = f"ray {ray.__version__}"
    assert isinstance(rungs, list) and rungs, _moved("the bracket's _rungs list", ray_v, SCHEDULER)
    milestone, records = rungs[0]
    assert isinstance(milestone, (int, float)) and isinstance(records, dict), _moved(
        "_rungs entries as (milestone, {trial_id: value})", ray_v, SCHEDULER
    )
