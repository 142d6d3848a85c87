"""The study file's schema: one typed model per section, validated in one pass (``cktf schema`` prints it).

A study is one search over a distiller's hyper-parameters for a fixed (dataset, teacher, student) pair and a fixed
training recipe. :class:`StudyConfig` is the whole file; its sections reuse the trainer's own configs
(:class:`~cktf.data.DataConfig`, :class:`~cktf.train.OptimConfig`, :class:`~cktf.train.TrainConfig`,
:class:`~cktf.transfer.ProbeConfig`) and the method's config (``params``, checked by the method itself through
:func:`~cktf.distillers.objective`). Every error carries its field path (``search.space.alpha1``).

What needs no data is checked here (names, bounds, the space against the method, the teacher's shape of spec,
ASHA and sampler settings); what needs the decoded data or a dry build is checked by :mod:`.validate`.
``docs/studies.md`` describes every field.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator
from pydantic.json_schema import SkipJsonSchema

from ...config import Config, lookup
from ...data import DATASETS, DataConfig
from ...distillers import Objective, objective
from ...errors import ConfigError, did_you_mean
from ...models import MODELS
from ...registry import import_plugins
from ...settings import ResourceSpec, RunSettings
from ...space import ParamSpec
from ...train.config import OptimConfig, TrainConfig
from ...transfer.probe import ProbeConfig
from ..results.index import METHOD_KEY
from .baseline import baseline_deviations, baseline_point  # noqa: F401  (read through here too)
from .checks import (
    RECIPE_SECTIONS,  # noqa: F401
    SEARCHABLE_TRAIN,
    _check_methods,
    _check_space,
    _check_teacher,
    _check_transfer,
    _check_workers,
)

#: the most trials a study accepts without ``search.allow_large`` (``--i-mean-it``)
MAX_TRIALS = 1000


class TeacherSpec(Config):
    """The study's teacher: an existing cktf checkpoint, or an architecture trained once per study."""

    checkpoint: str | None = None
    """a .safetensors written by cktf (its architecture is in the header)"""
    arch: str | None = None
    """trained once on the study's train split (or teacher.data) when no checkpoint is given: a zoo name or a
    library or user model (tv:NAME, timm:NAME, module:pkg.mod:factory; docs/models.md)"""
    weights: str | None = None
    """with arch: start from these weights: a local .safetensors/.pth (read weights-only) or the library's named
    weights (tv: DEFAULT, IMAGENET1K_V2; timm: DEFAULT or a tag), from its cache (docs/models.md)"""
    download: bool = False
    """fetch library weights the cache lacks (nothing is downloaded otherwise)"""
    finetune: bool = False
    """with weights: train the teacher from them with this section's recipe; false: use them as they are (their
    class count must be the data's)"""
    optim: OptimConfig = Field(default_factory=OptimConfig)
    """the teacher's optimiser (paper recipe by default)"""
    train: TrainConfig = Field(default_factory=TrainConfig)
    """the teacher's loop settings"""
    data: DataConfig | None = None
    """the source domain (transfer studies); default: the study's data"""
    resources: ResourceSpec | None = None
    """the teacher task's resources; default: a whole GPU where trials get GPUs, else every CPU of a node"""
    cache: bool = True
    """a trained teacher is stored in the teacher cache (beside workdir, or $CKTF_TEACHER_CACHE) and reused by every
    study and campaign that trains the same one (architecture, data, recipe, seed, code); false: train it here"""

    @model_validator(mode="after")
    def _weights(self) -> TeacherSpec:
        if self.weights and self.checkpoint:
            raise ConfigError("weights", "teacher.checkpoint carries its own weights", "drop one of the two")
        if self.weights and not self.arch:
            raise ConfigError(
                "weights", "needs teacher.arch", "name the weights' architecture, e.g. teacher.arch: tv:resnet50"
            )
        if self.finetune and not self.weights:
            raise ConfigError("finetune", "needs teacher.weights", "drop it, or give the weights to start from")
        return self


class ProbeSpec(Config):
    """Transfer studies (Section 3.2): after distilling on the target's unlabeled images, a linear probe on the
    target's labeled data. Every epoch a quick probe (cached features, ``quick_epochs``) gives ASHA its metric;
    after the last epoch the full probe (``recipe``) runs and its per-epoch curve is logged (Fig. 2)."""

    data: DataConfig = Field(default_factory=DataConfig)
    """labeled target: train (a seeded val split is held out) and test"""
    recipe: ProbeConfig = Field(default_factory=ProbeConfig)
    """the full probe after the last epoch (official: 240 epochs of SGD)"""
    every: Literal[1] = 1
    """quick probe every epoch (ASHA and Optuna need the metric at each report)"""
    quick_epochs: int = Field(10, ge=1)
    """epochs of the per-epoch quick probe on cached features"""


class SearchSpec(Config):
    """What is searched and how trials are compared."""

    metric: str = "val_acc"
    """a metric every trial reports each epoch (checked before Ray starts); tuning never looks at test_*"""
    mode: Literal["max", "min"] = "max"
    """max for accuracies, min for losses"""
    space: dict[str, ParamSpec] = Field(default_factory=dict)
    """searched parameters (empty: the method's own default space)"""
    num_samples: int = Field(16, ge=1)
    """trials of the search"""
    enqueue_baseline: bool = True
    """the official defaults run first (trial 0), so the report compares the best against them"""
    baseline: dict[str, Any] = Field(default_factory=dict)
    """overrides of that first point (default: the method's official defaults)"""
    protect_baseline: bool = True
    """ASHA never stops the baseline early: it is compared fully trained"""
    allow_large: bool = False
    """accept more than 1000 trials (a guard against a typo; --i-mean-it sets it)"""


class ConfirmSpec(Config):
    """The confirmation stage (docs/studies.md, "Winners confirmed"): after the search, the ``top_k`` best finished
    configurations and the official defaults are trained again from scratch with ``seeds`` new seeds each; "best"
    is then the best mean over those seeds."""

    top_k: int = Field(3, ge=1, le=20)
    """how many of the search's best finished configurations are trained again"""
    seeds: int = Field(3, ge=2, le=20)
    """new seeds per configuration (>= 2: a spread needs two runs)"""
    seed_base: int = Field(1000, ge=0)
    """the new seeds are seed_base, seed_base + 1, ... (never a seed of the search, which uses train.seed)"""
    defaults: bool = True
    """also confirm the official defaults (the baseline), so the report gives the paired difference from them"""


class AshaSpec(Config):
    """ASHA settings; ``max_t`` is ``train.epochs`` (one Tune iteration = one epoch)."""

    grace_period: int = Field(1, ge=1)
    """epochs every trial runs before ASHA may stop it (<= train.epochs)"""
    reduction_factor: float = Field(2.0, gt=1)
    """keep the top 1/reduction_factor at each rung"""
    brackets: int = Field(1, ge=1)
    """ASHA brackets"""


class SamplerSpec(Config):
    """Optuna's sampler."""

    name: Literal["tpe", "random", "grid"] = "tpe"
    """tpe | random | grid (every combination of categorical choices once: ablations)"""
    seed: int = 0
    """sampler seed"""
    n_startup_trials: int = Field(5, ge=0)
    """random trials before TPE models the space"""
    multivariate: bool = True
    """multivariate TPE"""


class MethodEntry(Config):
    """One method of a study over methods (``methods``): its name, and its own space and fixed fields if it does not
    take its default space."""

    distiller: str
    """a method, preset or combination (cktf distillers)"""
    space: dict[str, ParamSpec] = Field(default_factory=dict)
    """its searched fields (empty: the method's own default space)"""
    params: dict[str, Any] = Field(default_factory=dict)
    """its fixed fields (not searched)"""

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        return {"distiller": data} if isinstance(data, str) else data


class StudyConfig(RunSettings):
    """One study file. ``workdir/name`` holds the study's own state (teacher, trial index, report);
    ``storage_path`` is Ray's (trial checkpoints): local, a shared mount, ``s3://`` or ``gs://``."""

    kind: ClassVar[str] = "study"

    student: str
    """the student architecture: a zoo name (cktf models) or a library or user model (tv:NAME, timm:NAME,
    module:pkg.mod:factory; docs/models.md)"""
    student_weights: str | None = None
    """initial weights of the student (a local file or the library's tag, from its cache; docs/models.md)"""
    distiller: str | None = None
    """a method, preset or combination (cktf distillers); ``{choice: [kd, dkd, cktf]}`` searches the method too (the
    same as listing them under methods)"""
    methods: list[MethodEntry] = Field(default_factory=list)
    """a study over methods (instead of distiller): the method is searched with its hyper-parameters, each method in
    its own default space (or the one given here), the official defaults of every method run first and to the end,
    and the confirmation confirms the best configuration of each method"""
    data: DataConfig = Field(default_factory=DataConfig)
    """the data distilled on (and the val split trials are compared on)"""
    params: dict[str, Any] = Field(default_factory=dict)
    """fixed fields of the method (not searched): alpha1, fitnet.beta, theta, ..."""
    optim: OptimConfig = Field(default_factory=OptimConfig)
    """the students' optimiser"""
    train: TrainConfig = Field(default_factory=TrainConfig)
    """the students' loop settings (train.epochs is ASHA's max_t)"""
    teacher: TeacherSpec = Field(default_factory=TeacherSpec)
    """an existing checkpoint, or an architecture trained once per study"""
    search: SearchSpec = Field(default_factory=SearchSpec)
    """what is searched and how trials are compared"""
    asha: AshaSpec = Field(default_factory=AshaSpec)
    """the early-stopping scheduler (one rung per grace_period * reduction_factor^k epochs)"""
    sampler: SamplerSpec = Field(default_factory=SamplerSpec)
    """Optuna's sampler"""
    confirm: ConfirmSpec | None = None
    """train the top configurations again over new seeds after the search (null: no confirmation stage)"""
    probe: ProbeSpec | None = None
    """transfer studies: distil on unlabeled images, then probe (metric probe_val_acc)"""
    source: SkipJsonSchema[str | None] = None
    """set by the loader: the YAML file this came from"""

    # ------------------------------------------------------------------ derived
    @property
    def objective(self) -> Objective:
        if self.methods:
            raise ConfigError("distiller", "a study over methods has one objective per method", "use study_for(name)")
        return objective(self.distiller)

    @property
    def method_names(self) -> list[str]:
        """The study's method, or the methods of a study over methods."""
        return [m.distiller for m in self.methods] if self.methods else [str(self.distiller)]

    @property
    def needs_teacher(self) -> bool:
        return any(objective(m).needs_teacher for m in self.method_names)

    def study_for(self, method: str) -> StudyConfig:
        """The single-method study of ``method`` in a study over methods: its distiller, space and fixed fields, the
        rest the study's (checked as a study of its own)."""
        entry = next(m for m in self.methods if m.distiller == method)
        raw = self.to_dict()
        raw.update(distiller=method, methods=[], params=dict(entry.params))
        raw["search"] = {**raw["search"], "space": {k: v.to_dict() for k, v in entry.space.items()}}
        sub = StudyConfig.parse(raw)
        sub.set_env_sources(self._env_sources)
        return sub

    @property
    def space(self) -> dict[str, ParamSpec]:
        """The searched space: the file's, or the method's own default when the file names none; in a study over
        methods, the method itself (``distiller``) and each method's fields as ``<method>.<field>``."""
        if self.methods:
            out: dict[str, ParamSpec] = {METHOD_KEY: ParamSpec(type="categorical", choices=tuple(self.method_names))}
            for m in self.method_names:
                out.update({f"{m}.{k}": v for k, v in self.study_for(m).space.items()})
            return out
        return dict(self.search.space) if self.search.space else self.objective.default_space()

    @property
    def image_size(self) -> int:
        """Side of the model input as far as known without data (0 for imagefolder data until read)."""
        return self.data.image_size or DATASETS.get(self.data.dataset).image_size

    @property
    def study_dir(self) -> str:
        """The study's own folder (:attr:`folder`)."""
        return self.folder

    @property
    def max_t(self) -> int:
        return self.train.epochs

    @property
    def unlabeled(self) -> bool:
        """Whether distillation sees images only (no CE, no val accuracy)."""
        return self.data.drop_labels or DATASETS.get(self.data.dataset).train_split == "unlabeled"

    def recipe(self) -> dict[str, Any]:
        """The study's fixed recipe as dotted ``optim.*`` / ``train.*`` values."""
        out = {f"optim.{k}": v for k, v in self.optim.model_dump().items()}
        out.update({f"train.{k}": v for k, v in self.train.model_dump().items()})
        return out

    # ------------------------------------------------------------------ validation (no data needed)
    def check_files(self) -> None:
        """The teacher checkpoint's header: its architecture must be known."""
        if self.teacher.checkpoint:
            from ...train.checkpoint import read_weights_meta

            meta = read_weights_meta(self.teacher.checkpoint, "teacher.checkpoint")
            lookup("teacher.checkpoint", MODELS.get, meta["arch"])

    @model_validator(mode="before")
    @classmethod
    def _space_names(cls, data: Any) -> Any:
        """Every searched name is a field of the method (``tau``), of the optimiser (``optim.lr``) or a searchable
        ``train`` field, checked before the space's entries are parsed: a misspelt ``search.space.tua.low`` is named
        as the field it is not (and the one it probably is), not as a parameter with no ``type``."""
        if isinstance(data, dict) and isinstance(data.get("distiller"), dict):  # distiller: {choice: [kd, dkd]}
            choice = data["distiller"].get("choice")
            if not isinstance(choice, list) or set(data["distiller"]) != {"choice"}:
                raise ConfigError("distiller", "a study over methods names them as {choice: [kd, dkd, ...]}")
            data = {**data, "distiller": None, "methods": choice}
        if not isinstance(data, dict) or not isinstance(data.get("search"), dict):
            return data
        space = data["search"].get("space")
        if not isinstance(space, dict) or not space or not isinstance(data.get("distiller"), str):
            return data
        if isinstance(data.get("plugins"), list):
            import_plugins(str(m) for m in data["plugins"])
        try:
            method = objective(data["distiller"])
        except ConfigError:
            return data  # the distiller itself is named by its own check
        known = [*method.fields(), *(f"optim.{k}" for k in OptimConfig.model_fields)]
        known += [f"train.{k}" for k in SEARCHABLE_TRAIN]
        for name in space:
            if name not in known:
                raise ConfigError(
                    f"search.space.{name}",
                    f"{name!r} is not a field of {data['distiller']}, of optim or a searchable train field"
                    + did_you_mean(name, known),
                    f"known: {', '.join(known)} (cktf distillers --fields)",
                )
        return data

    @model_validator(mode="after")
    def _check_study(self) -> StudyConfig:
        lookup("student", MODELS.get, self.student)
        _check_workers(self)
        if self.methods or self.distiller is None:
            return _check_methods(self)
        method = self.objective
        size = self.image_size or 32
        _check_teacher(self, method)
        method.parse(self.params, size, where="params")
        _check_space(self, method, size)
        _check_transfer(self)
        n = self.search.num_samples
        if n > MAX_TRIALS and not self.search.allow_large:
            raise ConfigError(
                "search.num_samples",
                f"{n} trials is more than {MAX_TRIALS}: up to {n * self.max_t:,} trial-epochs of training",
                "lower it, or pass --i-mean-it (search.allow_large: true) if you mean it",
            )
        if self.asha.grace_period > self.max_t:
            raise ConfigError(
                "asha.grace_period", f"must be in [1, train.epochs={self.max_t}], got {self.asha.grace_period}"
            )
        if self.sampler.name == "grid":
            loose = sorted(k for k, v in self.space.items() if v.type != "categorical")
            if loose:
                raise ConfigError(f"search.space.{loose[0]}", "a grid needs categorical parameters", "list its choices")
            size = 1
            for v in self.space.values():
                size *= len(v.choices or ())
            if self.search.num_samples != size:
                raise ConfigError("search.num_samples", f"the grid has {size} points", f"set num_samples: {size}")
        return self


def study_json_schema() -> dict[str, Any]:
    """The JSON Schema of a study file (``cktf schema``), for editors (yaml-language-server) and checks."""
    schema = StudyConfig.model_json_schema()
    # the shorthands the loader accepts: a method by its name, the method searched as distiller: {choice: [...]}
    props = schema["properties"]
    props["methods"]["items"] = {"anyOf": [{"type": "string"}, {"$ref": "#/$defs/MethodEntry"}]}
    choice = {
        "type": "object",
        "properties": {"choice": {"type": "array", "items": {"type": "string"}, "minItems": 1}},
        "required": ["choice"],
        "additionalProperties": False,
    }
    props["distiller"]["anyOf"] = [*props["distiller"].get("anyOf", [{"type": "string"}, {"type": "null"}]), choice]
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "cktf study"
    schema["description"] = (
        "A cktf hyper-parameter study (cktf tune FILE). Every field is described in docs/studies.md; strings may "
        "use ${VAR} or ${VAR:-default} for variables the study lists under env (and CKTF_*, MLFLOW_TRACKING_URI)."
    )
    return schema
