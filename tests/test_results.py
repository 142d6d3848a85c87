"""The one results reader: "best" by ``search.metric`` and ``search.mode``, read the same way by export, report and
the MLflow parent run -- checked on a synthetic trial index, so each trial's score is known exactly."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
from helpers import tiny_study

from cktf.errors import ConfigError
from cktf.models import create_model
from cktf.train.checkpoint import save_model_weights
from cktf.tune.plan import study_from_dict
from cktf.tune.results.reader import (
    FINISHED,
    LAST_EPOCH,
    PRUNED,
    StudyResults,
    TrialIndex,
    select_epoch,
    write_state,
)

#: (trial, status, val_loss per epoch, test_loss per epoch): t2 has the lowest val_loss of the finished trials;
#: t3 is lower still but was pruned, t4 has no checkpoint yet
TRIALS = [
    ("t0", FINISHED, [2.0, 1.5, 1.4], [2.1, 1.6, 1.5]),
    ("t1", FINISHED, [1.9, 1.3, 1.35], [2.0, 1.4, 1.45]),
    ("t2", FINISHED, [1.8, 1.1, 1.2], [1.9, 1.2, 1.3]),
    ("t3", PRUNED, [0.9], [1.0]),
    ("t4", FINISHED, [0.5, 0.4, 0.3], [0.6, 0.5, 0.4]),
]


def _index(study_dir: Path, metric: str = "val_loss", mode: str = "min") -> None:
    write_state(study_dir, metric=metric, mode=mode, selection="best_epoch", num_trials=len(TRIALS))
    index = TrialIndex(study_dir)
    for i, (tid, status, val, test) in enumerate(TRIALS):
        ckpt = study_dir / "ckpt" / tid
        if tid != "t4":
            model = create_model("resnet8", num_classes=10)
            save_model_weights(ckpt / "model_best.safetensors", model, {"arch": "resnet8", "dataset": "cifar10"})
        history = [
            {"epoch": e, "val_loss": v, "test_loss": t, "val_acc": 50 + e} for e, (v, t) in enumerate(zip(val, test))
        ]
        index.update(
            tid,
            created=i,
            status=status,
            config={"alpha1": i / 10},
            baseline=tid == "t0",
            history=history,
            checkpoint=str(ckpt) if tid != "t4" else None,
        )


def test_mode_min_picks_the_lowest_finished_trial(tmp_path):
    _index(tmp_path)
    results = StudyResults(tmp_path)
    best = results.best()
    assert (best.trial_id, best.score, best.epoch, best.test) == ("t2", 1.1, 1, 1.2)
    assert [t.trial_id for t in results.ranked()] == ["t4", "t3", "t2", "t1", "t0"]
    assert results.baseline().trial_id == "t0" and results.baseline().score == 1.4
    assert results.gain_over_baseline() == pytest.approx(1.4 - 1.1)  # positive: lower is better here
    assert results.counts() == {"finished": 4, "pruned": 1, "failed": 0, "running": 0}
    maxed = StudyResults(tmp_path, metric="val_loss", mode="max")  # the same index read the other way
    assert maxed.best().trial_id == "t0" and maxed.best().score == 2.0


def test_selection_epochs():
    history = [{"epoch": 0, "m": 3.0}, {"epoch": 1, "m": float("nan")}, {"epoch": 2, "m": 1.0}, {"epoch": 3}]
    assert select_epoch(history, "m", "max")["epoch"] == 0
    assert select_epoch(history, "m", "min")["epoch"] == 2
    assert select_epoch(history, "m", "max", LAST_EPOCH)["epoch"] == 2  # the last epoch that has the metric
    assert select_epoch([], "m") == {}


def test_export_report_and_parent_run_agree_on_the_minimum(tmp_path):
    from types import SimpleNamespace

    from cktf.tune.results.export import export_best
    from cktf.tune.results.report import summarize, write_report
    from cktf.tune.run.context import RunContext, RunOptions
    from cktf.tune.run.study import finish_study

    cfg = study_from_dict(
        tiny_study(tmp_path, Path("/nonexistent"), search__metric="val_loss", search__mode="min", name="minstudy")
    )
    study_dir = Path(cfg.study_dir)
    _index(study_dir)
    client = mlflow.MlflowClient(tracking_uri=cfg.mlflow.tracking_uri)
    exp = client.create_experiment(cfg.experiment)
    parent = client.create_run(exp, tags={"cktf.kind": "study"}).info.run_id
    write_state(study_dir, parent_run_id=parent, experiment_id=exp)

    info = export_best(study_dir, tmp_path / "out" / "student.safetensors")
    assert info["trial"] == "t2" and info["metric"] == {"name": "val_loss", "mode": "min", "value": 1.1, "epoch": 1}
    assert info["test_metric"] == {"name": "test_loss", "value": 1.2, "read": "at the trial's selected epoch"}
    summary = summarize(study_dir)
    assert summary["best"]["trial"] == "t2" and summary["best"]["score"] == 1.1 and summary["mode"] == "min"
    assert [r["trial"] for r in summary["top"]][:3] == ["t4", "t3", "t2"]
    report = write_report(study_dir)
    assert "**best** trial t2 (its student: trial t2): score 1.10" in (report / "summary.md").read_text()

    plan = SimpleNamespace(study=cfg, num_trials=len(TRIALS), splits=None)
    with RunContext(cfg, RunOptions(view="quiet", resume=True)) as ctx:
        ctx.open_parent({}, {})
        outcome = finish_study(ctx, plan, complete=True)
    assert outcome.best.trial.trial_id == "t2" and outcome.best.score == 1.1
    run = client.get_run(parent)
    assert run.data.tags["cktf.best_trial"] == "t2"
    assert run.data.metrics["best/score"] == 1.1 and run.data.metrics["best/test_loss"] == 1.2
    exported = json.loads((study_dir / "best" / "student.json").read_text())
    assert exported["trial"] == "t2"


def test_no_finished_trial_is_a_clear_error(tmp_path):
    TrialIndex(tmp_path).update("a", status=PRUNED, history=[{"epoch": 0, "val_acc": 1.0}], checkpoint="x")
    assert StudyResults(tmp_path).best() is None
    with pytest.raises(ConfigError, match="no trial .* has finished"):
        StudyResults(tmp_path).best(required=True)
