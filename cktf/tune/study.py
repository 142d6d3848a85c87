"""Study files: YAML validated into typed configs before Ray starts.

A study is one search over a distiller's hyper-parameters for a fixed (dataset, teacher, student)
pair and a fixed training recipe (spec section 4). Everything a trial needs is derived from the
:class:`StudyConfig` plus the trial's sampled values (:meth:`StudyConfig.run_config`).

Validation runs in two steps, both before Ray or any training starts:

* :func:`load_study` -- structure, names (models, distiller, dataset, mapping), bounds of the
  search space and of every fixed field, the teacher checkpoint's header. Milliseconds.
* :func:`validate_with_data` -- what needs the decoded dataset (cached, so about a second): image
  size vs the models, and the largest searched ``nce_k`` vs the label-aware negative pool.

Strings may reference environment variables as ``${VAR}`` or ``${VAR:-default}`` (e.g. the data root).
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data import DATASETS, DataConfig
from ..distillers import needs_teacher, parse_params
from ..distillers.compose import resolve_preset, split_name
from ..errors import ConfigError
from ..models import MODELS
from ..registry import UnknownNameError
from ..train.config import OptimConfig, RunConfig, TrainConfig, section_from_dict
from ..transfer.probe import ProbeConfig
from .space import ParamSpec, baseline_point, default_space, parse_space

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


@dataclass
class TeacherSpec:
    """The study's teacher: an existing cktf checkpoint, or an architecture trained once per study."""

    checkpoint: str | None = None  # a .safetensors written by cktf (architecture in its header)
    arch: str | None = None  # trained once on the study's train split when no checkpoint is given
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig | None = None  # the source domain (transfer); default: the study's data


@dataclass
class ProbeSpec:
    """Transfer studies (Section 3.2): after distilling on the target's unlabeled images, a linear probe
    on the target's labeled data. ``every`` distillation epochs a quick probe (cached features,
    ``quick_epochs``) gives ASHA its metric; after the last epoch the full probe (``recipe``) runs and
    its per-epoch curve is logged (Fig. 2)."""

    data: DataConfig = field(default_factory=DataConfig)  # labeled target: train (+ held-out val) and test
    recipe: ProbeConfig = field(default_factory=ProbeConfig)
    every: int = 1  # quick probe every epoch (ASHA and Optuna need the metric at each report)
    quick_epochs: int = 10


@dataclass
class SearchSpec:
    """What is searched and how trials are compared."""

    metric: str = "val_acc"  # reported every epoch; tuning never looks at the test split
    mode: str = "max"
    space: dict[str, ParamSpec] = field(default_factory=dict)  # empty = the distiller's default space
    num_samples: int = 16
    enqueue_baseline: bool = True  # the paper-default config runs first, so the report compares against it
    baseline: dict[str, Any] = field(default_factory=dict)  # overrides of that first config (default: defaults)
    protect_baseline: bool = True  # ASHA never stops the baseline early: it is compared fully trained


@dataclass
class AshaSpec:
    """ASHA settings; ``max_t`` is ``train.epochs`` (one Tune iteration = one epoch)."""

    grace_period: int = 1
    reduction_factor: float = 2.0
    brackets: int = 1


@dataclass
class SamplerSpec:
    name: str = "tpe"  # tpe | random | grid (every combination of categorical choices once: ablations)
    seed: int = 0
    n_startup_trials: int = 5
    multivariate: bool = True


@dataclass
class ResourceSpec:
    """Per-trial resources; a GPU fraction below 1 packs trials on one GPU (each keeps to its memory share)."""

    cpu: float = 1.0
    gpu: float = 0.0


@dataclass
class MlflowSpec:
    tracking_uri: str = "sqlite:///mlflow.db"
    experiment: str | None = None  # default: cktf-<study name>


@dataclass
class StudyConfig:
    """One study file. ``workdir/name`` holds the study's own state (teacher, trial index, report);
    ``storage_path`` is Ray's (trial checkpoints): local, a shared mount, ``s3://`` or ``gs://``."""

    name: str
    student: str
    distiller: str
    data: DataConfig = field(default_factory=DataConfig)
    teacher: TeacherSpec = field(default_factory=TeacherSpec)
    params: dict[str, Any] = field(default_factory=dict)  # fixed distiller fields (not searched)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    search: SearchSpec = field(default_factory=SearchSpec)
    asha: AshaSpec = field(default_factory=AshaSpec)
    sampler: SamplerSpec = field(default_factory=SamplerSpec)
    resources: ResourceSpec = field(default_factory=ResourceSpec)
    max_concurrent: int = 0  # 0 = as many as the resources allow
    max_failures: int = 2  # retries of a failed trial, each from its last checkpoint
    keep_checkpoints: int = 2
    workdir: str = "runs/studies"
    storage_path: str | None = None  # default: <workdir>/<name>/ray
    mlflow: MlflowSpec = field(default_factory=MlflowSpec)
    probe: ProbeSpec | None = None  # transfer studies: distil unlabeled, then probe (metric probe_val_acc)
    source: str | None = None  # the YAML file this came from (set by load_study)

    # ------------------------------------------------------------------ derived
    @property
    def study_dir(self) -> Path:
        return Path(self.workdir).expanduser().resolve() / self.name

    @property
    def ray_storage(self) -> str:
        if self.storage_path:
            return self.storage_path if "://" in self.storage_path else str(Path(self.storage_path).resolve())
        return str(self.study_dir / "ray")

    @property
    def experiment(self) -> str:
        return self.mlflow.experiment or f"cktf-{self.name}"

    @property
    def max_t(self) -> int:
        return self.train.epochs

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["search"]["space"] = {k: v.to_dict() for k, v in self.search.space.items()}
        return d

    def run_config(self, sampled: dict[str, Any], out_dir: str, teacher_checkpoint: str | None) -> RunConfig:
        """The trial's single-run config: the fixed recipe plus the sampled values.

        Sampled names are distiller fields (``alpha1``, ``fitnet.beta``, ``theta``) or
        ``optim.<field>`` / ``train.batch_size``.
        """
        params = dict(self.params)
        optim, train = dataclasses.replace(self.optim), dataclasses.replace(self.train, progress=False)
        for key, value in sampled.items():
            section, _, name = key.partition(".")
            if section == "optim":
                setattr(optim, name, value)
            elif section == "train":
                setattr(train, name, value)
            else:
                params[key] = value
        return RunConfig(
            student=self.student,
            distiller=self.distiller,
            distill_params=params,
            teacher_checkpoint=teacher_checkpoint,
            data=dataclasses.replace(self.data),
            optim=optim,
            train=train,
            out_dir=out_dir,
        )

    @property
    def unlabeled(self) -> bool:
        """Whether distillation sees images only (no CE, no val accuracy)."""
        return self.data.drop_labels or DATASETS.get(self.data.dataset).train_split == "unlabeled"

    def teacher_run_config(self, out_dir: str) -> RunConfig:
        return RunConfig(
            student=self.teacher.arch or "",
            distiller="ce",
            data=dataclasses.replace(self.teacher.data or self.data),
            optim=dataclasses.replace(self.teacher.optim),
            train=dataclasses.replace(self.teacher.train, progress=False),
            out_dir=out_dir,
        )


# ---------------------------------------------------------------------------- loading

SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "teacher": TeacherSpec,
    "optim": OptimConfig,
    "train": TrainConfig,
    "search": SearchSpec,
    "asha": AshaSpec,
    "sampler": SamplerSpec,
    "resources": ResourceSpec,
    "mlflow": MlflowSpec,
    "probe": ProbeSpec,
}
SEARCHABLE_TRAIN = {"batch_size", "seed"}  # seed: repeats of an ablation arm


def expand_env(value: Any) -> Any:
    """``${VAR:-default}`` in every string of a nested structure."""
    if isinstance(value, str):
        return _ENV.sub(lambda m: os.environ.get(m.group(1), m.group(2) if m.group(2) is not None else ""), value)
    if isinstance(value, dict):
        return {k: expand_env(v) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v) for v in value]
    return value


def study_from_dict(raw: dict[str, Any], source: str | None = None, validate: bool = True) -> StudyConfig:
    """Typed config from a parsed YAML mapping; every unknown or badly typed key is named.

    ``validate=False`` skips the name/bound checks (a trial rebuilding the driver's validated config).
    """
    if not isinstance(raw, dict):
        raise ConfigError("study", "the file must hold a mapping of fields", "see studies/quickstart.yaml")
    raw = expand_env(raw)
    source = raw.pop("source", None) or source
    known = {f.name for f in dataclasses.fields(StudyConfig)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(unknown[0], "unknown study field", f"known fields: {', '.join(sorted(known - {'source'}))}")
    for required in ("name", "student", "distiller"):
        if not raw.get(required):
            raise ConfigError(required, "missing", "every study names its name, student and distiller")
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        if key in SECTIONS and value is None:
            continue  # the section's default (e.g. no probe)
        if key in SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(key, f"must be a mapping, got {type(value).__name__}")
            kwargs[key] = _section(key, value)
        else:
            kwargs[key] = value
    if not isinstance(kwargs.get("params", {}), dict):
        raise ConfigError("params", "must be a mapping of distiller fields", "e.g. params: {nce_k: 4096}")
    try:
        cfg = StudyConfig(**kwargs, source=source)
    except TypeError as exc:
        raise ConfigError("study", str(exc)) from None
    if validate:
        validate_study(cfg)
    return cfg


def _section(key: str, value: dict[str, Any]) -> Any:
    if key == "teacher":
        value = dict(value)
        for sub, cls in (("optim", OptimConfig), ("train", TrainConfig), ("data", DataConfig)):
            if value.get(sub) is not None:
                if not isinstance(value[sub], dict):
                    raise ConfigError(f"teacher.{sub}", "must be a mapping")
                value[sub] = _typed(cls, value[sub], f"teacher.{sub}")
        return _typed(TeacherSpec, value, "teacher")
    if key == "probe":
        value = dict(value)
        if value.get("data") is not None:
            value["data"] = _typed(DataConfig, _mapping(value["data"], "probe.data"), "probe.data")
        if value.get("recipe") is not None:
            value["recipe"] = _typed(ProbeConfig, _mapping(value["recipe"], "probe.recipe"), "probe.recipe")
        return _typed(ProbeSpec, value, "probe")
    if key == "search":
        value = dict(value)
        if "space" in value:
            value["space"] = parse_space(value["space"])
        return _typed(SearchSpec, value, "search")
    return _typed(SECTIONS[key], value, key)


def _typed(cls: type, value: dict[str, Any], prefix: str) -> Any:
    """A section dataclass; numbers given as strings (YAML reads ``5e-4`` as one) are converted,
    anything else that is not a number where one is expected is named."""
    kinds = {f.name: str(f.type).split("|")[0].strip() for f in dataclasses.fields(cls)}
    value = dict(value)
    for name, v in value.items():
        kind = kinds.get(name)
        if kind in ("int", "float") and v is not None:
            if isinstance(v, str):
                try:
                    v = float(v) if kind == "float" else int(float(v))
                except ValueError:
                    raise ConfigError(f"{prefix}.{name}", f"must be a number, got {v!r}") from None
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ConfigError(f"{prefix}.{name}", f"must be a number, got {v!r}")
            if kind == "int" and float(v) != int(v):
                raise ConfigError(f"{prefix}.{name}", f"must be a whole number, got {v!r}")
            value[name] = int(v) if kind == "int" else float(v)
    try:
        return section_from_dict(cls, value, prefix)
    except TypeError as exc:
        raise ConfigError(prefix, str(exc)) from None


def _mapping(value: Any, prefix: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(prefix, "must be a mapping")
    return value


def _name(field_: str, get, name: str) -> Any:
    """Registry lookup whose error names the study field."""
    try:
        return get(name)
    except UnknownNameError as exc:
        raise ConfigError(field_, str(exc)) from None


def load_study(path: str | os.PathLike, overrides: dict[str, Any] | None = None) -> StudyConfig:
    """Read and validate a study file. ``overrides``: dotted keys, e.g. ``{"data.root": "../shared/data"}``."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError("study", f"no such study file: {path}", "pass a YAML file, e.g. studies/quickstart.yaml")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError("study", f"{path} is not valid YAML: {exc}") from None
    for dotted, value in (overrides or {}).items():
        node = raw
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return study_from_dict(raw, source=str(path.resolve()))


def recipe_of(cfg: StudyConfig) -> dict[str, Any]:
    """The study's fixed recipe as dotted ``optim.*`` / ``train.*`` values."""
    out = {f"optim.{k}": v for k, v in dataclasses.asdict(cfg.optim).items()}
    out.update({f"train.{k}": v for k, v in dataclasses.asdict(cfg.train).items()})
    return out


def baseline_of(cfg: StudyConfig, image_size: int) -> dict[str, Any]:
    """The trial enqueued first: the paper defaults (or ``search.baseline``) inside the space."""
    return baseline_point(cfg.distiller, cfg.params, cfg.search.baseline, cfg.search.space, image_size, recipe_of(cfg))


# ---------------------------------------------------------------------------- validation


def validate_study(cfg: StudyConfig) -> None:
    """Every check that needs no data: names, bounds, the space, the teacher, the search settings."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", str(cfg.name)):
        raise ConfigError("name", f"{cfg.name!r} is not a usable directory name", "letters, digits, _ . -")
    _name("data.dataset", DATASETS.get, cfg.data.dataset)
    cfg.data.validate()
    cfg.optim.validate()
    cfg.train.validate()
    _name("student", MODELS.get, cfg.student)
    _name("distiller", split_name, cfg.distiller)
    spec = _name("data.dataset", DATASETS.get, cfg.data.dataset)
    size = cfg.data.image_size or spec.image_size or 32
    if not cfg.search.space:
        cfg.search.space = default_space(cfg.distiller)
    _validate_teacher(cfg)
    _validate_search(cfg, size)
    _validate_transfer(cfg)
    if cfg.asha.grace_period < 1 or cfg.asha.grace_period > cfg.max_t:
        raise ConfigError("asha.grace_period", f"must be in [1, train.epochs={cfg.max_t}], got {cfg.asha.grace_period}")
    if cfg.asha.reduction_factor <= 1:
        raise ConfigError("asha.reduction_factor", f"must be > 1, got {cfg.asha.reduction_factor}", "e.g. 2 or 4")
    if cfg.asha.brackets < 1:
        raise ConfigError("asha.brackets", "must be >= 1")
    if cfg.sampler.name not in ("tpe", "random", "grid"):
        raise ConfigError("sampler.name", f"unknown sampler {cfg.sampler.name!r}", "use tpe, random or grid")
    if cfg.sampler.name == "grid":
        loose = sorted(k for k, v in cfg.search.space.items() if v.type != "categorical")
        if loose:
            raise ConfigError(f"search.space.{loose[0]}", "a grid needs categorical parameters", "list its choices")
        size = 1
        for v in cfg.search.space.values():
            size *= len(v.choices or ())
        if cfg.search.num_samples != size:
            raise ConfigError("search.num_samples", f"the grid has {size} points", f"set num_samples: {size}")
    if cfg.sampler.n_startup_trials < 0:
        raise ConfigError("sampler.n_startup_trials", "must be >= 0")
    if cfg.resources.cpu <= 0:
        raise ConfigError("resources.cpu", f"must be > 0, got {cfg.resources.cpu}")
    if cfg.resources.gpu < 0 or (cfg.resources.gpu > 1 and cfg.resources.gpu != int(cfg.resources.gpu)):
        raise ConfigError("resources.gpu", f"must be a fraction in [0, 1] or a whole number, got {cfg.resources.gpu}")
    if cfg.max_concurrent < 0 or cfg.max_failures < 0 or cfg.keep_checkpoints < 1:
        bad = (
            "max_concurrent"
            if cfg.max_concurrent < 0
            else "max_failures"
            if cfg.max_failures < 0
            else "keep_checkpoints"
        )
        raise ConfigError(bad, "out of range", "max_concurrent >= 0, max_failures >= 0, keep_checkpoints >= 1")
    if not cfg.mlflow.tracking_uri:
        raise ConfigError("mlflow.tracking_uri", "must not be empty", "e.g. sqlite:///mlflow.db")


def _validate_transfer(cfg: StudyConfig) -> None:
    metric = cfg.search.metric
    if cfg.probe is None:
        if cfg.unlabeled:
            raise ConfigError(
                "probe", "the distillation data has no labels, so trials need a probe to be compared", "add probe:"
            )
        return
    p = cfg.probe
    _name("probe.data.dataset", DATASETS.get, p.data.dataset)
    p.data.validate()
    if p.data.drop_labels or DATASETS.get(p.data.dataset).train_split == "unlabeled":
        raise ConfigError("probe.data", "the probe trains on labels", "point it at the target's labeled split")
    p.recipe.validate("probe.recipe")
    if p.quick_epochs < 1:
        raise ConfigError("probe.quick_epochs", f"must be >= 1, got {p.quick_epochs}")
    if p.every != 1:
        raise ConfigError("probe.every", "ASHA and Optuna need the probe metric every epoch", "set every: 1")
    if not metric.startswith("probe_"):
        raise ConfigError("search.metric", f"{metric!r} is not measured in a transfer study", "use probe_val_acc")
    if cfg.teacher.arch and cfg.teacher.data is None and cfg.unlabeled:
        raise ConfigError("teacher.data", "a teacher cannot be trained on unlabeled images", "give the source data")


def _validate_teacher(cfg: StudyConfig) -> None:
    if not needs_teacher(cfg.distiller):
        if cfg.teacher.checkpoint or cfg.teacher.arch:
            raise ConfigError("teacher", f"distiller {cfg.distiller!r} trains without a teacher", "drop the teacher")
        return
    t = cfg.teacher
    if bool(t.checkpoint) == bool(t.arch):
        raise ConfigError(
            "teacher",
            "give exactly one of teacher.checkpoint (a cktf .safetensors) or teacher.arch (trained once per study)",
            "e.g. teacher: {arch: resnet32x4, train: {epochs: 240}}",
        )
    if t.checkpoint:
        from ..train.checkpoint import read_weights_meta

        meta = read_weights_meta(t.checkpoint, "teacher.checkpoint")
        _name("teacher.checkpoint", MODELS.get, meta["arch"])
    else:
        _name("teacher.arch", MODELS.get, t.arch)
        t.optim.validate()
        t.train.validate()


def _validate_search(cfg: StudyConfig, size: int) -> None:
    s = cfg.search
    if s.mode not in ("max", "min"):
        raise ConfigError("search.mode", f"must be max or min, got {s.mode!r}")
    if s.num_samples < 1:
        raise ConfigError("search.num_samples", f"must be >= 1, got {s.num_samples}")
    for name, spec in s.space.items():
        section, _, sub = name.partition(".")
        if section == "optim":
            if sub not in {f.name for f in dataclasses.fields(OptimConfig)}:
                raise ConfigError(f"search.space.{name}", "unknown optimiser field")
            for v in spec.probe_values():
                try:
                    dataclasses.replace(cfg.optim, **{sub: v}).validate()
                except ConfigError as exc:
                    raise ConfigError(f"search.space.{name}", exc.problem, exc.fix) from None
        elif section == "train":
            if sub not in SEARCHABLE_TRAIN:
                raise ConfigError(f"search.space.{name}", "not searchable", f"train fields: {sorted(SEARCHABLE_TRAIN)}")
        if name in cfg.params:
            raise ConfigError(f"search.space.{name}", "is also fixed in params", "keep it in one of the two")
    try:
        parse_params(cfg.distiller, cfg.params, size)
    except ConfigError as exc:
        raise ConfigError(f"params.{exc.field.split('.', 1)[-1]}", exc.problem, exc.fix) from None
    distill_space = {k: v for k, v in s.space.items() if k.partition(".")[0] not in ("optim", "train")}
    base = baseline_point(cfg.distiller, cfg.params, s.baseline, s.space, size, recipe_of(cfg))
    for name, spec in distill_space.items():
        for v in spec.probe_values():
            try:
                parse_params(
                    cfg.distiller,
                    {**cfg.params, **{k: x for k, x in base.items() if k in distill_space}, name: v},
                    size,
                )
            except ConfigError as exc:
                raise ConfigError(f"search.space.{name}", f"value {v!r}: {exc.problem}", exc.fix) from None


def validate_with_data(cfg: StudyConfig, splits: Any, teacher_arch: str | None) -> None:
    """Checks that need the decoded data: model input sizes and the negatives each trial may ask for."""
    from ..data import ContrastConfig, ContrastSampler
    from ..train.runner import check_arch

    size = splits.image_size
    check_arch(cfg.student, size, "student")
    if teacher_arch:
        check_arch(teacher_arch, size, "teacher")
    dry_build(cfg, splits, teacher_arch)
    method, params = resolve_preset(cfg.distiller, cfg.params)
    primary, _ = split_name(method)
    if primary not in ("crd", "cktf"):
        return
    p_cfg, _, _ = parse_params(cfg.distiller, cfg.params, size)
    ks = {"params.nce_k": int(p_cfg.nce_k)}
    if "nce_k" in cfg.search.space:
        ks = {"search.space.nce_k": int(max(cfg.search.space["nce_k"].probe_values()))}
    ((where, k),) = ks.items()
    try:
        ContrastSampler(
            splits.train.targets,
            ContrastConfig(k=k, mode=cfg.data.contrast_mode, replace=splits.contrast_replace),
            "cpu",
        )
    except ConfigError as exc:
        raise ConfigError(where, exc.problem, exc.fix) from None


def dry_build(cfg: StudyConfig, splits: Any, teacher_arch: str | None) -> None:
    """Build the baseline trial's distiller on freshly initialised models (small memory banks):
    catches pairs the method cannot handle (e.g. FSP channel mismatches, VGG vs ResNet stage
    pairings) now, instead of in every trial after the teacher has trained."""
    from ..distillers import DistillContext, build_distiller
    from ..models import create_model

    num_classes = splits.num_classes
    student = create_model(cfg.student, num_classes=num_classes)
    teacher = create_model(teacher_arch, num_classes=num_classes) if teacher_arch else None
    base = baseline_of(cfg, splits.image_size)
    params = {**cfg.params, **{k: v for k, v in base.items() if k.partition(".")[0] not in ("optim", "train")}}
    p_cfg, _, _ = parse_params(cfg.distiller, params, splits.image_size)
    if hasattr(p_cfg, "nce_k"):
        params["nce_k"] = 8  # structure only: tiny banks
    ctx = DistillContext(num_classes=num_classes, num_train_samples=64, image_size=splits.image_size)
    try:
        build_distiller(cfg.distiller, student, teacher, params, ctx)
    except ConfigError as exc:
        raise ConfigError(exc.field.replace("distill.", "params."), exc.problem, exc.fix) from None
    except (ValueError, RuntimeError) as exc:
        raise ConfigError(
            "distiller", f"{cfg.distiller} cannot pair teacher {teacher_arch} with student {cfg.student}: {exc}"
        ) from None
