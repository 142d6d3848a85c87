"""The checks of a study file that need no data (run by :class:`~.schema.StudyConfig`'s validator): the teacher
against the method, the searched space against the method (every extreme value gives a valid config), transfer
studies, and a study over methods (each method checked as the study of its own it runs as)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...config import lookup
from ...data import DATASETS
from ...distillers import Objective
from ...errors import ConfigError
from ...models import MODELS
from ...train.config import OptimConfig
from .baseline import baseline_deviations, baseline_point

if TYPE_CHECKING:
    from .schema import StudyConfig

#: ``train.*`` fields a study may search (``seed``: repeats of an ablation arm)
SEARCHABLE_TRAIN = ("batch_size", "seed")
#: sections of the recipe a search-space name may address besides the method's own fields
RECIPE_SECTIONS = ("optim", "train")


def _check_workers(cfg: StudyConfig) -> None:
    """A data-parallel trial splits every global batch evenly over its workers: each batch size it may train with
    (the fixed one, every searched choice) must be a multiple of ``resources.workers``."""
    w = cfg.resources.workers
    if w <= 1:
        return
    spec = cfg.search.space.get("train.batch_size")
    sizes = [("train.batch_size", cfg.train.batch_size)]
    if spec is not None:
        sizes = [("search.space.train.batch_size", int(b)) for b in spec.probe_values()]
    for field, b in sizes:
        if b % w:
            raise ConfigError(
                field,
                f"a global batch of {b} cannot be split evenly over resources.workers={w}",
                f"use a multiple of {w} (e.g. {b - b % w or w} or {b + w - b % w}): each worker takes batch_size / "
                "workers images of every step, and the recipe's learning rate is the global batch's",
            )


def _check_methods(cfg: StudyConfig) -> StudyConfig:
    """A study over methods: each method checked as the study of its own it runs as (its errors named under
    ``methods.<i>``); what a single-method study sets for its method is refused here, with where it goes instead."""
    if cfg.distiller is not None and cfg.methods:
        raise ConfigError("methods", "give the study's distiller or its methods, not both", "drop one of the two")
    if not cfg.methods:
        raise ConfigError("distiller", "missing", "name a method (cktf distillers), or several under methods")
    if cfg.search.space or cfg.params:
        where = "search.space" if cfg.search.space else "params"
        raise ConfigError(
            where, "a study over methods sets each method's own", f"move it under methods.<i>.{where.split('.')[-1]}"
        )
    if cfg.sampler.name == "grid":
        raise ConfigError("sampler.name", "a grid does not search over methods", "use tpe or random")
    names = cfg.method_names
    for i, m in enumerate(cfg.methods):
        if m.distiller in names[:i]:
            raise ConfigError(f"methods.{i}", f"{m.distiller!r} appears twice", "list each method once")
        try:
            cfg.study_for(m.distiller)
        except ConfigError as exc:
            raise under_method(exc, i) from None
    return cfg


def under_method(exc: ConfigError, i: int, method: str | None = None) -> ConfigError:
    """An error of a study over methods' ``i``-th method (checked as the study of its own it runs as), named where
    the file sets it: ``search.space.tau`` -> ``methods.<i>.space.tau``, ``params.x`` -> ``methods.<i>.params.x``,
    ``distiller`` -> ``methods.<i>.distiller``, in its field and in its fix (a ``--set`` the user can paste)."""
    field, fix = exc.field, exc.fix or ""
    for old, new in (("search.space", f"methods.{i}.space"), ("params", f"methods.{i}.params")):
        if field == old or field.startswith(old + "."):
            field = new + field[len(old) :]
    if field == "distiller":
        field = f"methods.{i}.distiller"
    fix = fix.replace("search.space.", f"methods.{i}.space.")
    return ConfigError(field, f"{method}: {exc.problem}" if method else exc.problem, fix)


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
    moved = baseline_deviations(cfg, size)  # a default outside the space took the space's value: not official
    base = {k: v for k, v in baseline_point(cfg, size).items() if k not in moved}
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
