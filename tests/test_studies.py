"""The study files under ``studies/``: each one validates, Table 1 covers the paper's pairs, bad edits are named.

``load_study`` reads no data, so these tests run anywhere (no datasets, no GPU, no /work/shared).
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from cktf.distillers import objective
from cktf.errors import ConfigError
from cktf.registry import UnknownNameError
from cktf.tune.plan import baseline_point, load_study, study_from_dict

ROOT = Path(__file__).resolve().parents[1]
STUDIES = ROOT / "studies"
STUDY_FILES = sorted(p for p in STUDIES.rglob("*.yaml") if "campaigns" not in p.parts)  # campaigns: test_campaign
TABLE1_FILES = sorted((STUDIES / "table1").glob("*.yaml"))
ABLATION_FILES = sorted((STUDIES / "ablations").glob("*.yaml"))
BASE = STUDIES / "table1" / "cifar100_resnet32x4_resnet8x4.yaml"

#: (dataset, teacher, student) of the 11 rows of the CKTF paper's Table 1 (spec accuracy-anchors.csv)
TABLE1_PAIRS = {
    ("cifar100", "wrn_40_2", "wrn_16_2"),
    ("cifar100", "wrn_40_2", "wrn_40_1"),
    ("cifar100", "resnet56", "resnet20"),
    ("cifar100", "resnet110", "resnet20"),
    ("cifar100", "resnet110", "resnet32"),
    ("cifar100", "resnet32x4", "resnet8x4"),
    ("cifar100", "vgg13", "vgg8"),
    ("tiny_imagenet", "vgg19", "vgg8"),
    ("tiny_imagenet", "vgg16", "vgg11"),
    ("tiny_imagenet", "resnet34", "resnet10"),
    ("tiny_imagenet", "resnet50", "resnet10"),
}
RECIPE = {"lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4, "milestones": (150, 180, 210), "lr_decay": 0.1}
ENV_VARS = ("CKTF_DATA_ROOT", "CKTF_STORAGE", "CKTF_WORKDIR", "MLFLOW_TRACKING_URI")


@pytest.fixture(autouse=True)
def _default_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The studies' ``${VAR:-default}`` fields resolve to their defaults, whatever the caller's shell sets."""
    for var in ENV_VARS:
        monkeypatch.delenv(var, raising=False)


def _rel(path: Path) -> str:
    return str(path.relative_to(STUDIES))


def _base() -> dict[str, Any]:
    return yaml.safe_load(BASE.read_text())


def _pair(path: Path) -> tuple[str, str, str]:
    cfg = load_study(path)
    return cfg.data.dataset, cfg.teacher.arch, cfg.student


def _image_size(dataset: str) -> int:
    return 64 if dataset == "tiny_imagenet" else 32


# ----------------------------------------------------------------------------- every file


def test_the_study_files_are_there() -> None:
    assert len(TABLE1_FILES) == len(TABLE1_PAIRS)
    assert {p.name for p in ABLATION_FILES} == {"projection.yaml", "feat_dim.yaml", "mapping.yaml"}


@pytest.mark.parametrize("path", STUDY_FILES, ids=_rel)
def test_study_loads(path: Path) -> None:
    cfg = load_study(path)
    assert cfg.source == str(path.resolve())
    assert cfg.space, "a study without a space searches its method's default space"
    assert "${" not in str(cfg.to_dict()), "every ${VAR:-default} is expanded"


def test_study_names_are_unique() -> None:
    names = [load_study(p).name for p in STUDY_FILES]
    assert len(names) == len(set(names)), "studies share workdir/storage_path: a repeated name would collide"


@pytest.mark.parametrize("path", TABLE1_FILES + ABLATION_FILES, ids=_rel)
def test_paper_study_settings(path: Path) -> None:
    cfg = load_study(path)
    assert cfg.distiller == "cktf"
    assert cfg.data.root == "data" and cfg.data.val_fraction == 0.1
    assert cfg.storage_path == "runs/ray" and cfg.workdir == "runs/studies"
    assert cfg.mlflow.tracking_uri == "sqlite:///mlflow.db"
    for optim, train in ((cfg.optim, cfg.train), (cfg.teacher.optim, cfg.teacher.train)):
        assert {k: getattr(optim, k) for k in RECIPE} == RECIPE
        assert (train.epochs, train.batch_size) == (240, 64)
    assert cfg.teacher.arch and not cfg.teacher.checkpoint
    assert cfg.sampler.name == ("grid" if "ablations" in str(path) else "tpe") and cfg.sampler.seed == 0
    assert cfg.asha.reduction_factor == 4
    assert cfg.resources.cpu == 4 and cfg.max_concurrent == 8
    if path.parent.name == "table1":
        assert cfg.name == f"table1_{path.stem}"
    else:
        assert cfg.name == f"ablation_{path.stem}_cifar100_resnet32x4_resnet8x4"


def test_env_vars_redirect_the_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {
        "CKTF_DATA_ROOT": "/datasets",
        "CKTF_STORAGE": "s3://bucket/cktf",
        "CKTF_WORKDIR": "/shared/studies",
        "MLFLOW_TRACKING_URI": "http://mlflow:5000",
    }
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    cfg = load_study(BASE)
    assert (cfg.data.root, cfg.storage_path, cfg.workdir, cfg.mlflow.tracking_uri) == tuple(env.values())
    assert cfg.ray_storage == "s3://bucket/cktf"


# ----------------------------------------------------------------------------- Table 1


def test_table1_covers_every_anchor_pair() -> None:
    assert {_pair(p) for p in TABLE1_FILES} == TABLE1_PAIRS


@pytest.mark.parametrize("path", TABLE1_FILES, ids=_rel)
def test_table1_study(path: Path) -> None:
    cfg = load_study(path)
    dataset, teacher, student = _pair(path)
    assert (dataset, teacher, student) in TABLE1_PAIRS
    assert path.stem == f"{dataset}_{teacher}_{student}"
    assert cfg.search.space == objective("cktf").default_space(), "the default CKTF space, written out"
    assert cfg.params == {}
    assert cfg.search.num_samples == 32 and cfg.asha.grace_period == 20
    assert cfg.resources.gpu == (0.5 if teacher in ("resnet34", "resnet50") else 0.25)
    text = path.read_text()
    assert f"cktf tune studies/table1/{path.name}" in text, "the header gives the command"
    assert re.search(r"published CKTF \d+\.\d+%", text), "the header gives the anchor accuracy"


@pytest.mark.parametrize("path", TABLE1_FILES, ids=_rel)
def test_table1_baseline_is_the_released_setting(path: Path) -> None:
    cfg = load_study(path)
    base = baseline_point(cfg, _image_size(cfg.data.dataset))
    tau = 0.07 if cfg.data.dataset == "tiny_imagenet" else 0.1  # official nce_t per dataset
    assert base == {"alpha1": 0.1, "alpha2": 0.8, "tau": tau, "feat_dim": 128, "nce_k": 16384, "mapping": "last"}


# ----------------------------------------------------------------------------- ablations


@pytest.mark.parametrize(
    ("stem", "field", "choices"),
    [
        ("projection", "head", ("linear", "mlp")),
        ("feat_dim", "feat_dim", (16, 32, 64, 128)),
        ("mapping", "mapping", ("first", "last", "random", "max_cos", "min_cos")),
    ],
)
def test_ablation_study(stem: str, field: str, choices: tuple) -> None:
    cfg = load_study(STUDIES / "ablations" / f"{stem}.yaml")
    assert _pair(STUDIES / "ablations" / f"{stem}.yaml") == ("cifar100", "resnet32x4", "resnet8x4")
    assert list(cfg.search.space) == [field, "train.seed"]
    assert cfg.search.space["train.seed"].choices == (0, 1, 2)  # three seeds per arm, run as a grid
    spec = cfg.search.space[field]
    assert spec.type == "categorical" and spec.choices == choices
    assert cfg.search.num_samples == 3 * len(choices)
    assert cfg.asha.grace_period == cfg.train.epochs == cfg.max_t, "no early stopping: every arm trains fully"
    released = {"alpha1": 0.1, "alpha2": 0.8, "tau": 0.1, "feat_dim": 128, "nce_k": 16384, "nce_m": 0.5}
    released.update(mapping="last", head="linear")
    assert cfg.params == {k: v for k, v in released.items() if k != field}


def test_grace_period_may_equal_epochs_but_not_exceed_them() -> None:
    raw = _base()
    raw["asha"]["grace_period"] = raw["train"]["epochs"]
    assert study_from_dict(raw).asha.grace_period == 240
    raw["asha"]["grace_period"] = raw["train"]["epochs"] + 1
    with pytest.raises(ConfigError) as exc:
        study_from_dict(raw)
    assert exc.value.field == "asha.grace_period"


# ----------------------------------------------------------------------------- every pair builds


@pytest.mark.parametrize(
    ("dataset", "teacher", "student"),
    sorted(TABLE1_PAIRS),
    ids=["_".join(p) for p in sorted(TABLE1_PAIRS)],
)
def test_pair_builds_a_cktf_distiller(dataset: str, teacher: str, student: str) -> None:
    """``load_study`` does not build models; a pair CKTF refuses would fail only after the teacher trained."""
    import torch

    from cktf.distillers import DistillContext, build_distiller
    from cktf.models import create_model

    torch.manual_seed(0)
    ctx = DistillContext(num_classes=10, num_train_samples=64, image_size=_image_size(dataset))
    params = {"nce_k": 16, "feat_dim": 16, "mapping": "max_cos", "head": "mlp"}
    distiller = build_distiller("cktf", create_model(student, 10), create_model(teacher, 10), params, ctx)
    assert "cktf" in distiller.terms


# ----------------------------------------------------------------------------- bad edits are named


def _set(raw: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = raw
    for p in parents:
        node = node.setdefault(p, {})
    node[leaf] = value


@pytest.mark.parametrize(
    ("dotted", "value", "field"),
    [
        ("search.space.alpha1.low", -0.1, "search.space.alpha1"),
        ("search.space.alpha2.high", -0.5, "search.space.alpha2"),
        ("search.space.mapping.choices", ["last", "diagonal"], "search.space.mapping"),
        ("search.space.tau.low", 0.0, "search.space.tau.low"),  # log scale needs low > 0
        ("search.space.tau.type", "loguniform", "search.space.tau.type"),
        ("search.space.feat_dim.choices", [0, 128], "search.space.feat_dim"),
        ("search.space.nce_k.choices", [], "search.space.nce_k.choices"),
        ("search.space.head", {"type": "categorical", "choices": ["linear", "conv"]}, "search.space.head"),
        ("search.space.bogus", {"type": "uniform", "low": 0.0, "high": 1.0}, "search.space.bogus"),
        ("params.alpha1", 0.1, "search.space.alpha1"),  # fixed and searched at once
        ("params.bogus", 1, "params.bogus"),
        ("search.baseline", {"theta": 1.0}, "search.baseline.theta"),
        ("search.num_samples", 0, "search.num_samples"),
        ("asha.grace_period", 0, "asha.grace_period"),
        ("asha.reduction_factor", 1, "asha.reduction_factor"),
        ("sampler.name", "hyperband", "sampler.name"),
        ("sampler.name", "grid", "search.space.alpha1"),  # a grid needs categorical parameters only
        ("resources.gpu", 1.5, "resources.gpu"),
        ("optim.weight_decay", "five", "optim.weight_decay"),
        ("teacher.optim.weight_decay", "5e-4x", "teacher.optim.weight_decay"),
        ("train.epochs", 0, "train.epochs"),
        ("data.val_fraction", 1.0, "data.val_fraction"),
        ("teacher.checkpoint", "t.safetensors", "teacher"),  # both checkpoint and arch
        ("name", "has space", "name"),
    ],
)
def test_bad_edit_names_the_field(dotted: str, value: Any, field: str) -> None:
    raw = _base()
    _set(raw, dotted, copy.deepcopy(value))
    with pytest.raises(ConfigError) as exc:
        study_from_dict(raw)
    assert exc.value.field == field, str(exc.value)


@pytest.mark.parametrize("key", ["student", "teacher.arch", "data.dataset", "distiller"])
def test_unknown_name_is_refused(key: str) -> None:
    """Names are checked before any data is read; the error lists the registered names."""
    raw = _base()
    _set(raw, key, "resnet9000")
    with pytest.raises((ConfigError, UnknownNameError)) as exc:
        study_from_dict(raw)
    assert "resnet9000" in str(exc.value)


def test_unknown_names_are_config_errors_naming_the_field() -> None:
    for key, field in (("student", "student"), ("distiller", "distiller"), ("teacher.arch", "teacher.arch")):
        raw = _base()
        _set(raw, key, "resnet9000")
        with pytest.raises(ConfigError) as exc:
            study_from_dict(raw)
        assert exc.value.field == field and "resnet9000" in str(exc.value)


def test_numbers_written_as_yaml_strings_are_read_as_numbers() -> None:
    """YAML 1.1 reads ``5e-4`` (no dot) as a string; the study loader converts it, in every section."""
    raw = _base()
    raw["optim"]["weight_decay"] = "5e-4"
    raw["teacher"]["optim"]["weight_decay"] = "5e-4"
    cfg = study_from_dict(raw)
    assert cfg.optim.weight_decay == 5e-4 and cfg.teacher.optim.weight_decay == 5e-4


# ----------------------------------------------------------------------------- README


def test_docs_example_is_a_valid_study() -> None:
    text = (ROOT / "docs" / "studies.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", text, re.S)
    assert blocks, "docs/studies.md has a commented example"
    cfg = study_from_dict(yaml.safe_load(blocks[0]))
    assert cfg.name == "my_study" and "optim.lr" in cfg.space


def test_docs_field_reference_is_current() -> None:
    from cktf.tune.plan.reference import schema_markdown

    assert schema_markdown() in (ROOT / "docs" / "studies.md").read_text(), "regenerate: cktf schema --markdown"


def test_readme_lists_every_study() -> None:
    text = (STUDIES / "README.md").read_text()
    for path in TABLE1_FILES + ABLATION_FILES:
        assert f"`{_rel(path)}`" in text


# ----------------------------------------------------------------------------- transfer (Section 3.2)
PAPER_TRANSFER = {
    "vgg19_vgg19": ("vgg19", "vgg19"),
    "vgg19_vgg8": ("vgg19", "vgg8"),
    "resnet18_resnet18": ("resnet18",) * 2,
}


@pytest.mark.parametrize("pair", sorted(PAPER_TRANSFER))
def test_paper_transfer_studies_use_the_official_settings(pair: str) -> None:
    """Tiny-ImageNet -> STL-10 (run_transfer_from_tinyimagenet_to_stl10.sh): unlabeled 100k, CE off, the official
    CKTF weights as trial 0, the official 240-epoch probe on STL-10's labeled train split, selection on the probe."""
    import torch

    from cktf.distillers import DistillContext, build_distiller
    from cktf.models import create_model

    cfg = load_study(STUDIES / "transfer" / f"tiny_to_stl10_{pair}.yaml")
    teacher, student = PAPER_TRANSFER[pair]
    assert (cfg.teacher.arch, cfg.student, cfg.distiller) == (teacher, student, "cktf")
    assert cfg.data.dataset == "stl10_unlabeled" and cfg.params["gamma"] == 0
    assert cfg.teacher.data.dataset == "tiny_imagenet"
    assert cfg.search.baseline == {"alpha1": 0.04, "alpha2": 1.0, "tau": 0.07, "nce_k": 16384}  # --theta 0.04 -b 1
    assert cfg.probe.data.dataset == "stl10" and cfg.search.metric == "probe_val_acc"
    recipe = cfg.probe.recipe
    assert (recipe.epochs, recipe.lr, recipe.batch_size, recipe.milestones, recipe.augment) == (
        240,
        0.05,
        64,
        (150, 180, 210),
        True,
    )
    torch.manual_seed(0)  # the pair runs CKTF at 64x64 with a 200-way (Tiny-ImageNet) head
    ctx = DistillContext(num_classes=200, num_train_samples=64, image_size=64)
    params = {"nce_k": 16, "feat_dim": 16, "gamma": 0}
    distiller = build_distiller("cktf", create_model(student, 200), create_model(teacher, 200), params, ctx)
    assert distiller.gamma == 0 and distiller.terms["cktf"].tau == 0.07
