"""A campaign expanded into its runs and checked against its data, resolved once into a :class:`CampaignPlan`.

:func:`expand` turns the file into columns (methods, then ``tuned`` cells) and runs: one per (pair, column, seed),
seed-major, so that every cell has its first seed before any has its second (a partial table is a fair one).
:func:`plan_campaign` also reads each tuned cell's study (its confirmed best configuration, through
:class:`~cktf.tune.results.reader.StudyResults`), decodes every distinct data once, and checks each cell against
it the way a study is checked (docs/studies.md, "How a file is checked"): input sizes, a dry step of the cell's
distiller on freshly initialised models, the negatives against the label-aware pool. Nothing here starts Ray.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from typing import Any

from ..data import DataConfig, Splits
from ..errors import CKTFError, ConfigError
from ..tune.plan.schema import StudyConfig
from ..tune.results.anchors import anchor_column
from .schema import CampaignConfig, MethodSpec, build_cell, slug, tuned_label

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Column:
    """A column of the table: a method, or a tuned cell (one pair only)."""

    label: str
    slug: str
    distiller: str
    anchor: str | None
    tuned_pair: str | None = None  # a tuned cell: the one pair it has
    source: str = ""  # a tuned cell: the study it came from
    point: dict[str, Any] = field(default_factory=dict)  # a tuned cell: the configuration it runs
    evidence: str = ""  # a tuned cell: how its configuration was chosen
    where: str = ""  # the campaign field it comes from (``methods.2``, ``tuned.0.study``): errors name it

    @property
    def tuned(self) -> bool:
        return self.tuned_pair is not None


@dataclass(frozen=True)
class RunSpec:
    """One run: a cell and a seed. ``key`` names it in the index, in Ray and in MLflow (``pair.method.s<seed>``)."""

    key: str
    pair: str
    label: str
    seed: int
    cell: str  # ``pair/slug``: the cell study's id
    data: str  # the data key of the pair
    point: dict[str, Any]  # the configuration's values (a tuned cell's), applied over the cell's fixed params

    def trial_point(self) -> dict[str, Any]:
        """What the trial receives as ``config["_point"]`` (cktf.tune.run.trainable.run_trial's protocol)."""
        return {
            **self.point,
            "_key": self.key,
            "_cell": self.cell,
            "_data": self.data,
            "_pair": self.pair,
            "_seed": self.seed,
        }


@dataclass(frozen=True)
class TeacherNeed:
    """The teacher a pair needs: an architecture to train (``study`` holds its recipe) or a checkpoint."""

    pair: str
    arch: str
    checkpoint: str | None
    study: StudyConfig  # a cell of the pair that needs the teacher (its teacher section is the recipe)
    data: str  # the data key


@dataclass
class CampaignPlan:
    """Everything a campaign run needs, checked; the driver executes it and decides nothing else."""

    campaign: CampaignConfig
    columns: list[Column]
    runs: list[RunSpec]
    cells: dict[str, StudyConfig]
    pair_data: dict[str, str]  # pair -> data key
    data_configs: dict[str, DataConfig]  # data key -> config
    teachers: dict[str, TeacherNeed]
    splits: dict[str, Splits] = field(default_factory=dict)  # data key -> decoded splits (empty: not read)
    notes: list[str] = field(default_factory=list)  # what a lenient plan (dry run) could not resolve

    @property
    def num_runs(self) -> int:
        return len(self.runs)

    @property
    def labels(self) -> list[str]:
        """The table's columns, in order (tuned cells of several pairs under one label are one column)."""
        return list(dict.fromkeys(c.label for c in self.columns))

    def columns_of(self, pair: str) -> list[Column]:
        return [c for c in self.columns if c.tuned_pair in (None, pair)]


def data_key(cfg: DataConfig) -> str:
    """A short key of a data config (pairs with equal data share one decoded copy and one object in the store)."""
    text = json.dumps(cfg.to_dict(), sort_keys=True, default=str)
    return f"{cfg.dataset}-{hashlib.sha256(text.encode()).hexdigest()[:10]}"


def cell_id(pair: str, column_slug: str) -> str:
    return f"{pair}/{column_slug}"


def run_key(pair: str, column_slug: str, seed: int) -> str:
    return f"{pair}.{column_slug}.s{seed}"


def resolve_tuned(cfg: CampaignConfig, k: int) -> Column:
    """A tuned cell's column from its study: the confirmed best configuration (``use: confirmed``) or the search's
    best trial; every problem is a :class:`ConfigError` on ``tuned.<k>.study``."""
    from ..tune.results.reader import StudyResults, resolve_study_dir

    t, where = cfg.tuned[k], f"tuned.{k}.study"
    try:
        study_dir = resolve_study_dir(t.study)
    except ConfigError as exc:
        raise ConfigError(where, exc.problem, exc.fix) from None
    results = StudyResults(study_dir)
    meta = results.store.read_json("study.resolved.json", default={}) or {}
    status = results.state.get("status", "unknown")
    if status != "complete":
        raise ConfigError(where, f"study {results.name} is {status}, not complete", "finish it: cktf tune --resume")
    pair = cfg.pair(t.pair)
    data = cfg.pair_data(pair)
    want = {"student": pair.student, "dataset": data.dataset, "teacher": pair.teacher}
    have = {
        "student": meta.get("student"),
        "dataset": (meta.get("data") or {}).get("dataset"),
        "teacher": (meta.get("teacher") or {}).get("arch"),
    }
    for name, value in want.items():
        if value is not None and have.get(name) not in (None, value):
            raise ConfigError(where, f"study {results.name} tuned {name} {have[name]!r}, pair {t.pair!r} has {value!r}")
    if t.use == "confirmed":
        confs = [c for c in results.confirmation() if c.spread is not None]
        if not confs:
            raise ConfigError(
                where, f"study {results.name} has no confirmation runs", "add confirm: {top_k: 3, seeds: 3} and resume"
            )
        config, evidence = confs[0].config, f"confirmed best of {results.name}: {confs[0].spread}"
    else:
        best = results.search_best(required=True)
        config, evidence = best.config, f"search best of {results.name} (trial {best.trial_id}, one seed, unconfirmed)"
    distiller = meta.get("distiller") or ""
    label = tuned_label(cfg, k, distiller)
    column = Column(
        label=label,
        slug=slug(label),
        distiller=distiller,
        anchor=t.anchor if t.anchor is not None else anchor_column(distiller),
        tuned_pair=t.pair,
        source=study_dir,
        point={k2: v for k2, v in config.items() if k2 != "train.seed"},  # the campaign's seeds decide
        evidence=evidence,
        where=where,
    )
    return column


def _tuned_params(study_dir: str) -> dict[str, Any]:
    from ..tune.results.store import StudyStore

    meta = StudyStore(study_dir).read_json("study.resolved.json", default={}) or {}
    return dict(meta.get("params") or {})


def expand(cfg: CampaignConfig, strict: bool = True) -> CampaignPlan:
    """Columns, cells and runs of ``cfg`` (no data read). ``strict=False`` (the dry run): a tuned cell whose study
    cannot be read yet is counted with its label and no configuration, and the reason is kept in ``notes``."""
    columns = [
        Column(m.name, slug(m.name), m.distiller, m.anchor_column(), where=f"methods.{i}")
        for i, m in enumerate(cfg.methods)
    ]
    cells: dict[str, StudyConfig] = {}
    notes: list[str] = []
    index = {p.label: j for j, p in enumerate(cfg.pairs)}
    for p in cfg.pairs:
        for c in columns:
            cells[cell_id(p.label, c.slug)] = cfg.cell(p.label, c.label)
    for k, t in enumerate(cfg.tuned):
        try:
            col = resolve_tuned(cfg, k)
            params = _tuned_params(col.source)
        except ConfigError as exc:
            if strict:
                raise
            notes.append(f"tuned.{k}: {exc}")
            label = tuned_label(cfg, k)
            col, params = Column(label, slug(label), "", None, tuned_pair=t.pair, where=f"tuned.{k}.study"), {}
        clash = [c for c in columns if c.slug == col.slug and c.tuned_pair in (None, t.pair)]
        if clash:
            what = "a method's label" if not clash[0].tuned else f"the label of another tuned cell of {t.pair}"
            raise ConfigError(f"tuned.{k}.label", f"{col.label!r} is {what}", "give it a label: of its own")
        if col.distiller:
            method = MethodSpec(distiller=col.distiller, params=params)
            cells[cell_id(t.pair, col.slug)] = build_cell(cfg, index[t.pair], method, f"tuned.{k}.study", "_tuned")
        columns.append(col)
    known = list(dict.fromkeys(c.label for c in columns))
    for i, comp in enumerate(cfg.table.compare):
        for where, label in [("ours", comp.ours), *((f"baselines.{j}", b) for j, b in enumerate(comp.baselines or []))]:
            if label not in known:
                exc = ConfigError(f"table.compare.{i}.{where}", f"no column labelled {label!r}", f"use one of {known}")
                if strict:
                    raise exc
                notes.append(str(exc))
    pair_data = {p.label: data_key(cfg.pair_data(p)) for p in cfg.pairs}
    data_configs = {pair_data[p.label]: cfg.pair_data(p) for p in cfg.pairs}
    runs = [
        RunSpec(
            run_key(p.label, c.slug, seed),
            p.label,
            c.label,
            seed,
            cell_id(p.label, c.slug),
            pair_data[p.label],
            dict(c.point),
        )
        for seed in cfg.seeds
        for p in cfg.pairs
        for c in columns
        if c.tuned_pair in (None, p.label) and cell_id(p.label, c.slug) in cells
    ]
    teachers: dict[str, TeacherNeed] = {}
    for p in cfg.pairs:
        needing = [cells[cell_id(p.label, c.slug)] for c in columns if cell_id(p.label, c.slug) in cells]
        needing = [s for s in needing if s.objective.needs_teacher]
        if needing:
            arch = p.teacher or ""
            if p.teacher_checkpoint:
                from ..train.checkpoint import read_weights_meta

                arch = read_weights_meta(p.teacher_checkpoint, f"pairs.{index[p.label]}.teacher_checkpoint")["arch"]
            teachers[p.label] = TeacherNeed(p.label, arch, p.teacher_checkpoint, needing[0], pair_data[p.label])
    return CampaignPlan(cfg, columns, runs, cells, pair_data, data_configs, teachers, notes=notes)


def plan_campaign(cfg: CampaignConfig, progress: bool = True, data: str = "require") -> CampaignPlan:
    """:func:`expand`, then decode each distinct data once and check every cell against it.

    ``data``: ``require`` (a run: missing data is an error naming the field), ``optional`` (the dry run: missing data
    is a note, the plan goes on without it) or ``skip``."""
    plan = expand(cfg, strict=data == "require")
    if data == "skip":
        return plan
    from ..data import load_splits

    first_pair = {}
    for j, p in enumerate(cfg.pairs):
        first_pair.setdefault(plan.pair_data[p.label], j)
    for key, dcfg in plan.data_configs.items():
        j = first_pair[key]
        where = f"pairs.{j}.data" if cfg.pairs[j].data is not None else "data"
        try:
            plan.splits[key] = load_splits(dcfg, progress=progress)
        except ConfigError as exc:
            field_ = exc.field.replace("data", where, 1) if exc.field.startswith("data") else exc.field
            if data == "require":
                raise ConfigError(field_, exc.problem, exc.fix) from None
            plan.notes.append(f"{where}: {exc.problem}")
        except CKTFError as exc:  # the files are not there
            if data == "require":
                raise ConfigError(f"{where}.root", str(exc)) from None
            plan.notes.append(f"{where}.root: {str(exc).split(';')[0]}")
    for j, p in enumerate(cfg.pairs):
        splits = plan.splits.get(plan.pair_data[p.label])
        if splits is None:
            continue
        for c in plan.columns_of(p.label):
            study = plan.cells.get(cell_id(p.label, c.slug))
            if study is None:
                continue
            try:
                check_cell(plan, j, c, study, splits)
            except ConfigError as exc:
                if data == "require":
                    raise
                plan.notes.append(f"{p.label} / {c.label} would fail: {exc}")
    return plan


def check_cell(plan: CampaignPlan, j: int, column: Column, study: StudyConfig, splits) -> None:
    """The study checks of one cell against its data: sizes, one dry step, negatives, the table's needs."""
    cfg = plan.campaign
    from ..train.runner import check_arch
    from ..tune.plan.validate import check_negatives, dry_step

    pair = cfg.pairs[j]
    need = plan.teachers.get(pair.label)
    teacher_arch = need.arch if need is not None and study.objective.needs_teacher else None
    size = splits.image_size
    check_arch(pair.student, size, f"pairs.{j}.student")
    if teacher_arch:
        check_arch(teacher_arch, size, f"pairs.{j}.teacher")
    try:
        dry_step(study, splits, teacher_arch, column.point)
        check_negatives(study, splits, {}, column.point)
    except ConfigError as exc:
        head = exc.field.partition(".")[0]
        if head in ("params", "distiller"):  # the method's own fields: named where the campaign sets them
            field_ = column.where if column.tuned else f"{column.where}.{exc.field}"
        else:
            field_ = exc.field
        raise ConfigError(field_, exc.problem, exc.fix) from None
    if cfg.table.score == "selected" and (splits.val is None or len(splits.val) == 0):
        field_ = f"pairs.{j}.data.val_fraction" if pair.data is not None else "data.val_fraction"
        raise ConfigError(
            field_,
            "table.score 'selected' picks each run's epoch on a validation split, and there is none",
            "set val_fraction > 0, or table.score: last",
        )


__all__ = ["CampaignPlan", "Column", "RunSpec", "TeacherNeed", "data_key", "expand", "plan_campaign", "run_key"]
