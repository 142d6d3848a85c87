"""One schema for every config: the study file's JSON Schema, field paths in every error, ``--set`` overrides,
and the selection metric checked before Ray starts against what the trials report."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml
from helpers import tiny_study, write_study

from cktf.cli import main
from cktf.config import apply_overrides, parse_assignments
from cktf.errors import ConfigError
from cktf.train import OptimConfig, TrainConfig
from cktf.tune.plan import load_study, study_from_dict, study_json_schema

ROOT = Path(__file__).resolve().parents[1]
STUDIES = ROOT / "studies"
SCHEMA_FILE = STUDIES / "study.schema.json"


def test_cktf_schema_prints_the_shipped_schema(capsys):
    assert main(["schema"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == study_json_schema()
    assert json.loads(SCHEMA_FILE.read_text()) == printed, "regenerate: cktf schema > studies/study.schema.json"
    jsonschema.Draft202012Validator.check_schema(printed)


SHIPPED = sorted(p for p in STUDIES.rglob("*.yaml") if "campaigns" not in p.parts)  # campaign files: test_campaign


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(STUDIES)))
def test_every_shipped_study_validates_against_the_schema_and_points_editors_at_it(path: Path):
    text = path.read_text()
    first = text.splitlines()[0]
    assert first.startswith("# yaml-language-server: $schema="), "the first line points editors at the schema"
    target = (path.parent / first.split("=", 1)[1].strip()).resolve()
    assert target == SCHEMA_FILE.resolve()
    jsonschema.validate(yaml.safe_load(text), json.loads(SCHEMA_FILE.read_text()))


def test_the_schema_catches_typos_and_wrong_types_like_the_loader():
    schema = study_json_schema()
    raw = yaml.safe_load((STUDIES / "quickstart.yaml").read_text())
    for bad in ({**raw, "sampeler": {}}, {**raw, "search": {**raw["search"], "mode": "maximise"}}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)


def test_fields_carry_their_descriptions_into_the_schema():
    props = study_json_schema()["properties"]
    assert "method" in props["distiller"]["description"]
    defs = study_json_schema()["$defs"]
    assert "learning rate" in defs["OptimConfig"]["properties"]["lr"]["description"]


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: OptimConfig(lr=0), "optim.lr"),
        (lambda: OptimConfig(milestones=(5, 3)), "optim.milestones"),
        (lambda: TrainConfig(epochs="ten"), "train.epochs"),
        (lambda: TrainConfig(epochs=2.5), "train.epochs"),
        (lambda: TrainConfig(batch_sz=64), "train.batch_sz"),
    ],
)
def test_direct_construction_names_the_field(make, field):
    with pytest.raises(ConfigError) as exc:
        make()
    assert exc.value.field == field


def test_nested_errors_keep_their_full_path(tmp_path):
    study = tiny_study(tmp_path, Path("/nonexistent"), teacher={"arch": "resnet8", "train": {"epochs": 0}})
    with pytest.raises(ConfigError) as exc:
        study_from_dict(study)
    assert exc.value.field == "teacher.train.epochs"
    study = tiny_study(tmp_path, Path("/nonexistent"), teacher={"arch": "resnet8", "optim": {"lrr": 1}})
    with pytest.raises(ConfigError) as exc:
        study_from_dict(study)
    assert exc.value.field == "teacher.optim.lrr" and "known fields: lr" in exc.value.fix


def test_set_overrides_go_through_the_schema(tmp_path):
    study = tiny_study(tmp_path, Path("/nonexistent"))
    over = parse_assignments(["search.num_samples=3", 'params={"nce_m": 0.6}', "data.root=/elsewhere"])
    cfg = study_from_dict(study, overrides=over)
    assert (cfg.search.num_samples, cfg.params, cfg.data.root) == (3, {"nce_m": 0.6}, "/elsewhere")
    with pytest.raises(ConfigError) as exc:
        study_from_dict(study, overrides=parse_assignments(["search.num_samples=zero"]))
    assert exc.value.field == "search.num_samples"
    with pytest.raises(ConfigError) as exc:
        apply_overrides({"name": "x"}, {"name.inner": 1})
    assert exc.value.field == "name"
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_assignments(["novalue"])


def test_loaded_study_keeps_its_source(tmp_path):
    path = write_study(tmp_path / "s.yaml", tiny_study(tmp_path, Path("/nonexistent")))
    assert load_study(path).source == str(path.resolve())


@pytest.mark.parametrize(
    ("metric", "mode", "expect"),
    [
        ("val_accuracy", "max", "is not reported by the trials"),
        ("test_acc", "max", "test split"),
    ],
)
def test_a_bad_selection_metric_fails_before_ray_listing_the_metrics(tmp_path, data_root, capsys, metric, mode, expect):
    study = tiny_study(tmp_path, data_root, search__metric=metric, search__mode=mode)
    path = write_study(tmp_path / "metric.yaml", study)
    assert main(["tune", str(path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cktf: error: search.metric:") and expect in err
    for listed in ("val_acc", "val_loss", "loss/total", "loss/cktf_final", "train_acc"):
        assert listed in err
    assert "test_acc," not in err.split("use one of", 1)[1]  # the test split is never offered for selection
    assert not (tmp_path / "studies").exists() and not (tmp_path / "mlflow.db").exists()


def test_a_loss_metric_with_mode_min_is_accepted(tmp_path, data_root):
    from cktf.tune.plan import plan_study

    cfg = study_from_dict(tiny_study(tmp_path, data_root, search__metric="val_loss", search__mode="min"))
    plan = plan_study(cfg, progress=False)
    assert "val_loss" in plan.metrics and plan.study.search.mode == "min"
