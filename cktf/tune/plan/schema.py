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

#: the most trials a study accepts without ``search.allow_large`` (``--i-mean-it``)
MAX_TRIALS = 1000
#: ``train.*`` fields a study may search (``seed``: repeats of an ablation arm)
SEARCHABLE_TRAIN = ("batch_size", "seed")
#: sections of the recipe a search-space name may address besides the method's own fields
RECIPE_SECTIONS = ("optim", "train")


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


class StudyConfig(RunSettings):
    """One study file. ``workdir/name`` holds the study's own state (teacher, trial index, report);
    ``storage_path`` is Ray's (trial checkpoints): local, a shared mount, ``s3://`` or ``gs://``."""

    kind: ClassVar[str] = "study"

    student: str
    """the student architecture: a zoo name (cktf models) or a library or user model (tv:NAME, timm:NAME,
    module:pkg.mod:factory; docs/models.md)"""
    student_weights: str | None = None
    """initial weights of the student (a local file or the library's tag, from its cache; docs/models.md)"""
    distiller: str
    """a method, preset or combination (cktf distillers)"""
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
        return objective(self.distiller)

    @property
    def space(self) -> dict[str, ParamSpec]:
        """The searched space: the file's, or the method's own default when the file names none."""
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


def _check_teacher(cfg: StudyConfig, method: Objective) -> None:
    t = cfg.teacher
    if not method.needs_teacher:
        if t.checkpoint or t.arch:
            raise ConfigError("teacher", f"distiller {cfg.distiller!r} trains without a teacher", "drop the teacher")
        return
    if bool(t.checkpoint) == bool(t.arch):
        raise ConfigError(
            "teacher",
            "give exactly one of teacher.checkpoint (a cktf .safetensors) or teacher.arch (trained once per study)",
            "e.g. teacher: {arch: resnet32x4, train: {epochs: 240}}",
        )
    if t.arch:
        lookup("teacher.arch", MODELS.get, t.arch)


def _check_space(cfg: StudyConfig, method: Objective, size: int) -> None:
    """Every searched name exists, and every extreme value of the space gives a valid config."""
    space = cfg.space
    for name, spec in space.items():
        section, _, sub = name.partition(".")
        if section == "optim":
            if sub not in OptimConfig.model_fields:
                raise ConfigError(
                    f"search.space.{name}", "unknown optimiser field", f"known: {', '.join(OptimConfig.model_fields)}"
                )
            for v in spec.probe_values():
                try:
                    cfg.optim.replace(**{sub: v})
                except ConfigError as exc:
                    raise ConfigError(f"search.space.{name}{exc.field[len(sub) :]}", exc.problem, exc.fix) from None
        elif section == "train":
            if sub not in SEARCHABLE_TRAIN:
                raise ConfigError(f"search.space.{name}", "not searchable", f"train fields: {list(SEARCHABLE_TRAIN)}")
        if name in cfg.params:
            raise ConfigError(f"search.space.{name}", "is also fixed in params", "keep it in one of the two")
    base = baseline_point(cfg, size)
    distill_space = {k: v for k, v in space.items() if k.partition(".")[0] not in RECIPE_SECTIONS}
    for name, spec in distill_space.items():
        for v in spec.probe_values():
            point = {**cfg.params, **{k: x for k, x in base.items() if k in distill_space}, name: v}
            try:
                method.parse(point, size)
            except ConfigError as exc:
                raise ConfigError(f"search.space.{name}", f"value {v!r}: {exc.problem}", exc.fix) from None


def _check_transfer(cfg: StudyConfig) -> None:
    metric = cfg.search.metric
    if cfg.probe is None:
        if cfg.unlabeled:
            raise ConfigError(
                "probe", "the distillation data has no labels, so trials need a probe to be compared", "add probe:"
            )
        return
    p = cfg.probe
    if p.data.drop_labels or DATASETS.get(p.data.dataset).train_split == "unlabeled":
        raise ConfigError("probe.data", "the probe trains on labels", "point it at the target's labeled split")
    if not metric.startswith("probe_"):
        raise ConfigError("search.metric", f"{metric!r} is not measured in a transfer study", "use probe_val_acc")
    trained = cfg.teacher.arch and not (cfg.teacher.weights and not cfg.teacher.finetune)  # else used as it is
    if trained and cfg.teacher.data is None and cfg.unlabeled:
        raise ConfigError("teacher.data", "a teacher cannot be trained on unlabeled images", "give the source data")


def baseline_point(cfg: StudyConfig, image_size: int) -> dict[str, Any]:
    """The trial enqueued first: each searched field at the method's default (the official code's value), unless
    ``search.baseline`` sets it; the study's fixed recipe wins over the paper's. A default that lies outside the
    space takes the space's nearest value, and :func:`baseline_deviations` names it (every output that calls this
    trial "the official defaults" says so)."""
    return {name: v["used"] for name, v in _baseline(cfg, image_size).items()}


def baseline_deviations(cfg: StudyConfig, image_size: int) -> dict[str, dict[str, Any]]:
    """The baseline's fields that could not take their official value: ``{field: {"official": x, "used": y}}``."""
    found = _baseline(cfg, image_size)
    return {k: {"official": v["official"], "used": v["used"]} for k, v in found.items() if v["off"]}


def _baseline(cfg: StudyConfig, image_size: int) -> dict[str, dict[str, Any]]:
    import math

    space, overrides = cfg.space, cfg.search.baseline
    defaults = cfg.objective.defaults(cfg.params, image_size)
    defaults.update(cfg.recipe())
    for name, value in overrides.items():
        if name not in space:
            hint = did_you_mean(name, space)
            raise ConfigError(f"search.baseline.{name}", f"not a searched parameter{hint}", "list it in search.space")
        if not space[name].contains(value):
            raise ConfigError(f"search.baseline.{name}", f"{value!r} lies outside the searched range", "fix either")
    out: dict[str, dict[str, Any]] = {}
    for name, spec in space.items():
        value = overrides[name] if name in overrides else defaults.get(name)
        if value is None or isinstance(value, float) and math.isnan(value):
            continue
        used = spec.nearest(value)
        out[name] = {"official": value, "used": used, "off": used != value}
    return out


def study_json_schema() -> dict[str, Any]:
    """The JSON Schema of a study file (``cktf schema``), for editors (yaml-language-server) and checks."""
    schema = StudyConfig.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "cktf study"
    schema["description"] = (
        "A cktf hyper-parameter study (cktf tune FILE). Every field is described in docs/studies.md; strings may "
        "use ${VAR} or ${VAR:-default} for variables the study lists under env (and CKTF_*, MLFLOW_TRACKING_URI)."
    )
    return schema
