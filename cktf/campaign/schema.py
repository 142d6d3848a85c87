"""The campaign file's schema: pairs x methods x seeds (plus ``tuned`` cells), validated in one pass.

A campaign reproduces a comparison table (the paper's Table 1: CKTF against KD, CRD, CRD+KD per teacher/student
pair; Table 2: CKTF combined with each classic method). Every (pair, method) is a *cell*, run once per seed with
the campaign's fixed recipe; a ``tuned`` cell takes a finished study's confirmed best configuration instead of the
method's defaults. Each cell is checked here as the one-trial study it runs as (:class:`~cktf.tune.plan.StudyConfig`,
so every name, method field and teacher rule is the study's), and its errors are named by the campaign's own field
path (``methods.2.params.nce_k``, ``pairs.0.teacher``). ``docs/campaigns.md`` describes every field.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, PrivateAttr, model_validator
from pydantic.json_schema import SkipJsonSchema

from ..config import Config, lookup
from ..data import DataConfig
from ..distillers import objective
from ..errors import ConfigError
from ..models import MODELS
from ..settings import NAME, ResourceSpec, RunSettings
from ..train.config import OptimConfig, TrainConfig
from ..tune.plan.schema import StudyConfig
from ..tune.results.anchors import anchor_column, anchor_fields

#: what a cell's score is: test accuracy at the val-selected epoch, at the last epoch, or the best test epoch
SCORES = ("selected", "last", "max_over_epochs")
#: the most runs a campaign accepts without ``allow_large`` (a guard against a typo in ``seeds``)
MAX_RUNS = 2000


def slug(label: str) -> str:
    """A label as a file- and tag-safe name: ``CRD+KD`` -> ``crd_kd``, ``CKTF (tuned)`` -> ``cktf_tuned``."""
    return re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_") or "method"


def display(distiller: str) -> str:
    """The default column label of a method: its name in capitals (``crd+kd`` -> ``CRD+KD``)."""
    return distiller.upper()


class PairSpec(Config):
    """One teacher/student pair: a row of the table."""

    name: str | None = Field(None, pattern=NAME)
    """the row's name (default: <teacher>-<student>); names the runs, their folders and MLflow tags"""
    student: str
    """the student architecture (cktf models)"""
    teacher: str | None = None
    """the teacher architecture, trained once through the teacher cache with the campaign's teacher recipe"""
    teacher_checkpoint: str | None = None
    """or an existing cktf teacher (.safetensors; its architecture is read from the header)"""
    data: DataConfig | None = None
    """this pair's data (default: the campaign's data)"""
    optim: OptimConfig | None = None
    """this pair's student optimiser (default: the campaign's optim)"""
    train: TrainConfig | None = None
    """this pair's student loop settings (default: the campaign's train)"""

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        teacher = self.teacher or (Path(self.teacher_checkpoint).stem if self.teacher_checkpoint else "none")
        return f"{teacher}-{self.student}"


class MethodSpec(Config):
    """One method: a column of the table (a plain string is the distiller's name)."""

    distiller: str
    """a method, preset or combination (cktf distillers)"""
    label: str | None = None
    """the column's label (default: the distiller's name in capitals)"""
    params: dict[str, Any] = Field(default_factory=dict)
    """fixed fields of the method (the official defaults otherwise): alpha1, nce_k, fitnet.beta, theta, ..."""
    anchor: str | None = None
    """the accuracy-anchors column holding its published number (default by distiller: ce, kd, crd, crd+kd, cktf,
    cktf+kd, reviewkd, dkd, dist, kd-ls, dkd-ls; none: no published number)"""

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        return {"distiller": data} if isinstance(data, str) else data

    @property
    def name(self) -> str:
        return self.label or display(self.distiller)

    def anchor_column(self) -> str | None:
        if self.anchor is not None:
            return None if self.anchor == "none" else self.anchor
        return anchor_column(self.distiller)


class TunedSpec(Config):
    """A cell whose configuration comes from a finished study: its confirmed best (docs/studies.md)."""

    pair: str
    """the pair (its name) the study tuned"""
    study: str
    """the study's folder, YAML file or name under its workdir"""
    label: str | None = None
    """the column's label (default: <METHOD> (tuned); tuned cells of several pairs share a label's column)"""
    use: Literal["confirmed", "search_best"] = "confirmed"
    """confirmed: the best mean over the confirmation's seeds (the study needs confirm:); search_best: the search's
    best single trial (weaker evidence, marked so in the table)"""
    anchor: str | None = None
    """the accuracy-anchors column of its published number (default: by the study's distiller)"""


class TeacherRecipe(Config):
    """How the pairs' teachers are trained (plain cross-entropy), once each, through the teacher cache."""

    optim: OptimConfig = Field(default_factory=OptimConfig)
    """the teachers' optimiser (paper recipe by default)"""
    train: TrainConfig = Field(default_factory=TrainConfig)
    """the teachers' loop settings"""
    resources: ResourceSpec | None = None
    """a teacher task's resources; default: a whole GPU where runs get GPUs, else every CPU of a node"""


class CompareSpec(Config):
    """One marker per row: does ``ours`` beat the best of ``baselines``, paired over seeds?"""

    ours: str
    """the label of the method (or tuned cell) under test"""
    baselines: list[str] | None = None
    """the labels it is compared with (default: every method except ours, CE and the CKTF variants)"""


class TableSpec(Config):
    """What the table shows and how it is judged (docs/campaigns.md, "The table's statistics")."""

    score: Literal["selected", "last", "max_over_epochs"] = "selected"
    """a run's number: test accuracy at the val-selected epoch (selected), at the last epoch (last), or the best test
    epoch (max_over_epochs: the official code's protocol, which the published anchors follow)"""
    compare: list[CompareSpec] = Field(default_factory=list)
    """the per-row markers (default: CKTF against the best baseline, when the campaign has a cktf method)"""
    level: float = Field(0.95, gt=0.5, lt=1.0)
    """confidence level of the paired interval (the marker needs it to exclude 0)"""
    rows: Literal["pairs", "methods"] = "pairs"
    """the grid's rows: pairs (Table 1) or methods (wide tables such as Table 2)"""
    decimals: int = Field(2, ge=0, le=4)
    """decimals of the accuracies"""


class EstimateSpec(Config):
    """The dry run's GPU-hours estimate (docs/campaigns.md, "Cost before launch")."""

    gpu: Literal["a100", "v100"] = "a100"
    """the throughput table's GPU"""
    effective_tflops: float | None = Field(None, gt=0)
    """replace the table's figure with a measured one (TFLOP/s of training achieved by these models)"""


class CampaignConfig(RunSettings):
    """One campaign file. ``workdir/name`` holds its state (index, table); teachers go to the teacher cache."""

    kind: ClassVar[str] = "campaign"
    experiment_prefix: ClassVar[str] = "cktf-campaign-"

    data: DataConfig = Field(default_factory=DataConfig)
    """the data every pair uses unless it names its own"""
    optim: OptimConfig = Field(default_factory=OptimConfig)
    """the students' optimiser (every cell, every seed)"""
    train: TrainConfig = Field(default_factory=TrainConfig)
    """the students' loop settings; train.seed is replaced by each of seeds"""
    teacher: TeacherRecipe = Field(default_factory=TeacherRecipe)
    """the teachers' recipe"""
    pairs: list[PairSpec] = Field(min_length=1)
    """the rows: teacher/student pairs"""
    methods: list[MethodSpec] = Field(min_length=1)
    """the columns: methods, each run with its official defaults unless params says otherwise"""
    seeds: list[int] = Field(min_length=1)
    """the training seeds every cell is run with (model initialisation, batch order, augmentation)"""
    tuned: list[TunedSpec] = Field(default_factory=list)
    """extra cells with a finished study's confirmed best configuration"""
    table: TableSpec = Field(default_factory=TableSpec)
    """what the table shows and how rows are judged"""
    estimate: EstimateSpec = Field(default_factory=EstimateSpec)
    """the dry run's GPU-hours estimate"""
    workdir: str = "runs/campaigns"
    """the campaign's folder is workdir/name (run index, state, table); a local path, shared mount or s3:// / gs://"""
    teacher_cache: str | None = None
    """the teacher cache (default: $CKTF_TEACHER_CACHE, else teachers/ beside workdir, shared with studies)"""
    allow_large: bool = False
    """accept more than 2000 runs (a guard against a typo in seeds)"""
    source: SkipJsonSchema[str | None] = None
    """set by the loader: the YAML file this came from"""

    _cells: dict[tuple[str, str], StudyConfig] = PrivateAttr(default_factory=dict)

    # ------------------------------------------------------------------ derived
    @property
    def campaign_dir(self) -> str:
        """The campaign's own folder (:attr:`folder`)."""
        return self.folder

    @property
    def cache_root(self) -> str:
        from ..train.teacher_cache import default_root

        return self.teacher_cache or default_root(self.workdir)

    def pair(self, name: str) -> PairSpec:
        for p in self.pairs:
            if p.label == name:
                return p
        raise KeyError(name)

    def pair_data(self, pair: PairSpec) -> DataConfig:
        return pair.data or self.data

    def cell(self, pair: str, label: str) -> StudyConfig:
        """The one-trial study a (pair, method) cell runs as (built and checked when the file is parsed)."""
        return self._cells[(pair, label)]

    # ------------------------------------------------------------------ validation
    @model_validator(mode="after")
    def _check_campaign(self) -> CampaignConfig:
        _unique("pairs", [p.label for p in self.pairs], "give the pairs distinct name: fields")
        labels = [m.name for m in self.methods]
        _unique("methods", labels, "give the methods distinct label: fields")
        _unique("methods", [slug(x) for x in labels], "labels must differ in more than case and punctuation")
        for i, t in enumerate(self.tuned):
            if t.label is not None and slug(t.label) in {slug(x) for x in labels}:
                raise ConfigError(f"tuned.{i}.label", f"{t.label!r} is a method's label", "give the tuned cell its own")
        _unique("seeds", [str(s) for s in self.seeds], "list each seed once")
        for i, m in enumerate(self.methods):
            if m.anchor not in (None, "none") and m.anchor not in anchor_fields():
                fields = ", ".join(anchor_fields())
                raise ConfigError(f"methods.{i}.anchor", f"unknown column {m.anchor!r}", f"use one of {fields}")
        for j, pair in enumerate(self.pairs):
            lookup(f"pairs.{j}.student", MODELS.get, pair.student)
            if pair.teacher and pair.teacher_checkpoint:
                raise ConfigError(f"pairs.{j}", "give teacher (an architecture) or teacher_checkpoint, not both")
            if pair.teacher:
                lookup(f"pairs.{j}.teacher", MODELS.get, pair.teacher)
            for i, method in enumerate(self.methods):
                self._cells[(pair.label, method.name)] = build_cell(self, j, method, i)
        names = {p.label for p in self.pairs}
        for i, t in enumerate(self.tuned):
            if t.pair not in names:
                raise ConfigError(f"tuned.{i}.pair", f"no pair named {t.pair!r}", f"pairs: {', '.join(sorted(names))}")
        for i, c in enumerate(self.table.compare):
            for where, label in [("ours", c.ours), *((f"baselines.{k}", b) for k, b in enumerate(c.baselines or []))]:
                known = labels + [t.label for t in self.tuned if t.label]
                if label not in known and not (self.tuned and label.endswith("(tuned)")):  # plan time checks those
                    raise ConfigError(f"table.compare.{i}.{where}", f"no method labelled {label!r}", f"use {known}")
        n = len(self.pairs) * len(self.methods) * len(self.seeds) + len(self.tuned) * len(self.seeds)
        if n > MAX_RUNS and not self.allow_large:
            raise ConfigError("seeds", f"{n} runs is more than {MAX_RUNS}", "lower it, or set allow_large: true")
        return self


def tuned_label(cfg: CampaignConfig, i: int, distiller: str = "") -> str:
    """A tuned cell's column label: its own, else ``<METHOD> (tuned)`` (tuned cells of several pairs with the same
    method share the column, each pair's cell from its own study)."""
    t = cfg.tuned[i]
    return t.label or f"{display(distiller) if distiller else Path(t.study.rstrip('/')).stem} (tuned)"


def _unique(field: str, values: list[str], fix: str) -> None:
    seen: set[str] = set()
    for i, v in enumerate(values):
        if v in seen:
            raise ConfigError(f"{field}.{i}", f"{v!r} appears twice", fix)
        seen.add(v)


def _where(cfg: CampaignConfig, j: int, where: int | str, field: str) -> str:
    """The campaign field a cell study's error ``field`` comes from: pair ``j``, method ``where`` (its index), or the
    field ``where`` names (a tuned cell: ``tuned.<k>.study``)."""
    pair = cfg.pairs[j]
    head, _, rest = field.partition(".")
    tail = f".{rest}" if rest else ""
    if head == "teacher":
        if rest.partition(".")[0] in ("optim", "train", "resources"):
            return field  # the campaign's teacher recipe: the same path
        return f"pairs.{j}.teacher_checkpoint" if pair.teacher_checkpoint else f"pairs.{j}.teacher"
    if head in ("distiller", "params"):
        return f"methods.{where}.{head}{tail}" if isinstance(where, int) else str(where)
    if head == "student":
        return f"pairs.{j}.student"
    if head in ("data", "optim", "train"):
        return (f"pairs.{j}.{head}" if getattr(pair, head) is not None else head) + tail
    return field


def build_cell(cfg: CampaignConfig, j: int, method: MethodSpec, where: int | str, suffix: str = "") -> StudyConfig:
    """The one-trial study of pair ``j`` with ``method`` (its distiller and params): the campaign's recipe, the pair's
    data and teacher, the run's seed given per trial. ``where``: the method's index (errors name ``methods.<i>``) or
    a field path (a tuned cell: ``tuned.<k>.study``)."""
    pair, distiller, params = cfg.pairs[j], method.distiller, method.params
    try:
        method = objective(distiller)
    except ConfigError as exc:
        raise ConfigError(_where(cfg, j, where, "distiller"), exc.problem, exc.fix) from None
    teacher: dict[str, Any] = {}
    if method.needs_teacher:
        if pair.teacher_checkpoint:
            teacher = {"checkpoint": pair.teacher_checkpoint}
        elif pair.teacher:
            teacher = {
                "arch": pair.teacher,
                "optim": cfg.teacher.optim.to_dict(),
                "train": cfg.teacher.train.to_dict(),
                "resources": cfg.teacher.resources.to_dict() if cfg.teacher.resources else None,
            }
        else:
            raise ConfigError(
                f"pairs.{j}.teacher",
                f"{distiller} needs a teacher and pair {pair.label!r} has none",
                "give teacher: ARCH or teacher_checkpoint: FILE",
            )
    label = slug(f"{distiller}{suffix}")
    raw = {
        "name": f"{cfg.name}.{pair.label}.{label}",
        "plugins": list(cfg.plugins),
        "student": pair.student,
        "distiller": distiller,
        "data": cfg.pair_data(pair).to_dict(),
        "params": dict(params),
        "optim": (pair.optim or cfg.optim).to_dict(),
        "train": (pair.train or cfg.train).to_dict(),
        "teacher": teacher,
        # one fixed trial; the space names train.seed only so that no method field is searched (the seed of each run
        # is given per trial)
        "search": {"num_samples": 1, "space": {"train.seed": {"type": "categorical", "choices": [cfg.seeds[0]]}}},
        "resources": cfg.resources.to_dict(),
        "max_failures": cfg.max_failures,
        "keep_checkpoints": cfg.keep_checkpoints,
        "keep_trial_state": cfg.keep_trial_state,
        "workdir": cfg.campaign_dir,
        "storage_path": cfg.ray_storage,
        "mlflow": cfg.mlflow.to_dict(),
    }
    try:
        study = StudyConfig.parse(raw)
        study.check_files()
    except ConfigError as exc:
        raise ConfigError(_where(cfg, j, where, exc.field), exc.problem, exc.fix) from None
    return study


def campaign_from_dict(raw: Any, source: str | None = None, overrides: dict[str, Any] | None = None) -> CampaignConfig:
    """Typed, validated campaign from a parsed YAML mapping (plus dotted ``overrides``, which may index lists:
    ``methods.2.params.nce_k``); every bad key is named by its campaign field path."""
    from ..tune.plan.load import config_from_dict

    return config_from_dict(CampaignConfig, raw, source, overrides)


def load_campaign(path: str, overrides: dict[str, Any] | None = None) -> CampaignConfig:
    """Read and validate a campaign file (the study loader: YAML, ``${VAR}``, ``--set``, then the schema)."""
    from ..tune.plan.load import load_config

    return load_config(CampaignConfig, path, overrides)


def campaign_json_schema() -> dict[str, Any]:
    """The JSON Schema of a campaign file, for editors."""
    schema = CampaignConfig.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "cktf campaign"
    schema["description"] = "A cktf campaign (cktf campaign FILE): pairs x methods x seeds; see docs/campaigns.md."
    return schema


__all__ = [
    "SCORES",
    "CampaignConfig",
    "CompareSpec",
    "EstimateSpec",
    "MethodSpec",
    "PairSpec",
    "TableSpec",
    "TeacherRecipe",
    "TunedSpec",
    "build_cell",
    "campaign_from_dict",
    "campaign_json_schema",
    "display",
    "load_campaign",
    "slug",
    "tuned_label",
]
