"""The campaign's table, computed from its index: per cell the mean ± std over seeds and n, the published number
with the difference, and per row whether a method beats the best baseline, paired over seeds.

Statistics (docs/campaigns.md, "The table's statistics"; :mod:`cktf.tune.results.stats`):

* a cell's spread is the mean and the sample standard deviation (n - 1) of its finished runs' scores; ``n`` counts
  them (a failed or unfinished seed lowers ``n``, it is never imputed);
* a row's marker compares ``ours`` with the baseline of the best mean, paired over the seeds both finished (the same
  seed gives both runs the same initialisation and batch order): the mean difference, its two-sided t interval at
  ``table.level`` and the paired t-test's p value. ``better`` when the interval lies above 0, ``worse`` below,
  ``within noise`` when it holds 0, ``n/a`` with fewer than two paired seeds;
* the published number is the accuracy anchors' (docs/algorithm.md §10), a best-test-epoch figure: with another
  ``table.score`` the difference also holds the protocol's optimism, and the table says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..tune.results.anchors import anchor_row
from ..tune.results.reader import BEST_EPOCH, FAILED, FINISHED, select_epoch
from ..tune.results.stats import PairedDiff, Spread, paired_diff, spread
from .plan import CampaignPlan

#: the teacher summary's accuracy for each table score
TEACHER_SCORE = {"selected": "test_acc", "last": "test_acc_last", "max_over_epochs": "test_acc_max_over_epochs"}
#: what each score means, for the table's notes
SCORE_TEXT = {
    "selected": "test top-1 (%) at each run's best validation epoch",
    "last": "test top-1 (%) at each run's last epoch",
    "max_over_epochs": "best test top-1 (%) over epochs (the official code's protocol, as the published numbers)",
}
VERDICTS = {"better": "✓", "worse": "✗", "within noise": "≈", "n/a": "–"}


#: a finished run's score in MLflow (the table's number for it)
SCORE_METRIC = "campaign/score"


def run_scores(history: list[dict[str, Any]], selection_metric: str = "val_acc") -> dict[str, float]:
    """A run's test accuracies by protocol: at the epoch of its best ``selection_metric`` (``selected``), at its last
    epoch (``last``), and the best test epoch (``max_over_epochs``: the official code's number), plus the selected
    epoch. Missing pieces (no val split, no test metric) are left out."""
    rows = [h for h in history if isinstance(h.get("test_acc"), (int, float))]
    if not rows:
        return {}
    out: dict[str, float] = {"last": float(rows[-1]["test_acc"]), "max_over_epochs": max(h["test_acc"] for h in rows)}
    chosen = select_epoch(history, selection_metric, "max", BEST_EPOCH)
    if chosen and isinstance(chosen.get("test_acc"), (int, float)):
        out["selected"] = float(chosen["test_acc"])
        out["selected_epoch"] = float(chosen["epoch"])
    return out


@dataclass(frozen=True)
class Cell:
    pair: str
    label: str
    slug: str
    distiller: str
    scores: dict[int, float]  # seed -> score of its finished run
    failed: int
    missing: int  # not started or still running
    spread: Spread | None
    published: float | None
    tuned: bool = False
    evidence: str = ""

    @property
    def diff(self) -> float | None:
        if self.spread is None or self.published is None:
            return None
        return self.spread.mean - self.published


@dataclass(frozen=True)
class Comparison:
    pair: str
    ours: str
    baseline: str | None  # the best baseline by mean (None: no baseline has a finished run)
    diff: PairedDiff | None
    verdict: str  # better | worse | within noise | n/a

    @property
    def mark(self) -> str:
        return VERDICTS[self.verdict]

    def sentence(self, decimals: int = 2) -> str:
        if self.baseline is None:
            return f"{self.ours}: no baseline has a finished run"
        if self.diff is None:
            return f"{self.ours} vs {self.baseline} (best baseline): fewer than two paired seeds, no test"
        d, f = self.diff, f"{{:+.{decimals}f}}"
        return (
            f"{self.ours} vs {self.baseline} (best baseline): {f.format(d.mean)} "
            f"[{f.format(d.low)}, {f.format(d.high)}] ({round(d.level * 100)}% CI), {d.test} p = {d.p_value:.3g}, "
            f"n = {d.n} paired seeds: {self.verdict}"
        )


@dataclass(frozen=True)
class PairRow:
    name: str
    dataset: str
    teacher: str
    student: str
    teacher_score: float | None
    teacher_published: float | None
    teacher_source: str


@dataclass
class Table:
    campaign: str
    status: str
    score: str
    level: float
    decimals: int
    rows: str  # pairs | methods
    pairs: list[PairRow]
    columns: list[str]
    cells: dict[tuple[str, str], Cell]
    comparisons: list[Comparison]
    notes: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    compare_heads: list[str] = field(default_factory=list)  # one per marker (``table.compare``), in order

    def cell(self, pair: str, label: str) -> Cell | None:
        return self.cells.get((pair, label))


def _published(row: dict[str, str] | None, column: str | None) -> float | None:
    if not row or not column or not row.get(column):
        return None
    try:
        return float(row[column])
    except ValueError:
        return None


def default_baselines(plan: CampaignPlan, ours: str) -> list[str]:
    """Every column except ``ours``, plain training (CE) and the CKTF variants (``cktf``, ``cktf+X``, tuned CKTF)."""
    from ..distillers import SUPERVISED

    out = []
    for c in plan.columns:
        if c.label == ours or c.distiller == SUPERVISED or c.distiller.startswith("cktf") or not c.distiller:
            continue
        if c.label not in out:
            out.append(c.label)
    return out


def comparisons_of(plan: CampaignPlan) -> list[tuple[str, list[str]]]:
    """``(ours, baselines)`` per marker: the file's ``table.compare``, else CKTF against the best baseline."""
    cfg = plan.campaign
    if cfg.table.compare:
        return [(c.ours, c.baselines or default_baselines(plan, c.ours)) for c in cfg.table.compare]
    ours = next((c.label for c in plan.columns if c.distiller == "cktf" and not c.tuned), None)
    return [(ours, default_baselines(plan, ours))] if ours else []


def compare(pair: str, ours: Cell | None, baselines: list[Cell], level: float) -> Comparison:
    """``ours`` against the baseline with the best mean, paired over their common finished seeds."""
    scored = [b for b in baselines if b.spread is not None]
    label = ours.label if ours is not None else "?"
    if not scored:
        return Comparison(pair, label, None, None, "n/a")
    best = max(scored, key=lambda b: (b.spread.mean, b.label))
    if ours is None or ours.spread is None:
        return Comparison(pair, label, best.label, None, "n/a")
    seeds = sorted(set(ours.scores) & set(best.scores))
    if len(seeds) < 2:
        return Comparison(pair, label, best.label, None, "n/a")
    d = paired_diff([ours.scores[s] for s in seeds], [best.scores[s] for s in seeds], level)
    verdict = "within noise" if d.within_noise else "better" if d.low > 0 else "worse"
    return Comparison(pair, label, best.label, d, verdict)


def build_table(
    plan: CampaignPlan, records: dict[str, dict[str, Any]], teachers: dict[str, dict[str, Any]], status: str = ""
) -> Table:
    """The table of ``plan`` from its index ``records`` (``{run key: record}``) and its teachers' facts."""
    cfg = plan.campaign
    score = cfg.table.score
    columns = plan.labels
    cells: dict[tuple[str, str], Cell] = {}
    rows: list[PairRow] = []
    notes: list[str] = [
        f"cells (table.score: {score}): {SCORE_TEXT[score]}, each run's `{SCORE_METRIC}` in MLflow; mean ± sample std "
        "over seeds, n = finished seeds. A run's `score` in the live view and MLflow is what selects its epoch (its "
        "validation accuracy there), not a test accuracy"
    ]
    any_published = False
    for p in cfg.pairs:
        data = cfg.pair_data(p)
        need = plan.teachers.get(p.label)
        teacher = need.arch if need is not None else (p.teacher or "")
        anchors = anchor_row(data.dataset, teacher, p.student)
        facts = teachers.get(p.label) or {}
        rows.append(
            PairRow(
                p.label,
                data.dataset,
                teacher,
                p.student,
                facts.get(TEACHER_SCORE[score]),
                _published(anchors, "teacher_acc"),
                facts.get("source", ""),
            )
        )
        for run_col in plan.columns_of(p.label):
            runs = [r for r in plan.runs if r.pair == p.label and r.label == run_col.label]
            got: dict[int, float] = {}
            failed = missing = 0
            for r in runs:
                rec = records.get(r.key) or {}
                if rec.get("status") == FINISHED:
                    value = run_scores(rec.get("history", [])).get(score)
                    if value is not None:
                        got[r.seed] = float(value)
                elif rec.get("status") == FAILED:
                    failed += 1
                else:
                    missing += 1
            published = _published(anchors, run_col.anchor)
            any_published = any_published or published is not None
            cells[(p.label, run_col.label)] = Cell(
                p.label,
                run_col.label,
                run_col.slug,
                run_col.distiller,
                got,
                failed,
                missing,
                spread(list(got.values())) if got else None,
                published,
                run_col.tuned,
                run_col.evidence,
            )
    comparisons, heads = [], []
    for ours, baselines in comparisons_of(plan):
        heads.append(f"{ours} vs best baseline")
        for p in cfg.pairs:
            base = [cells[(p.label, b)] for b in baselines if (p.label, b) in cells]
            comparisons.append(compare(p.label, cells.get((p.label, ours)), base, cfg.table.level))
    if any_published:
        notes.append(
            "published: the accuracy anchors (docs/algorithm.md §10: the CKTF paper's Table 1, and the DKD, DIST, "
            "ReviewKD and logit standardization papers for their columns); Δ = mean - published"
        )
        if score != "max_over_epochs":
            notes.append(
                "the published numbers are best-test-epoch figures; this table's score is not, so Δ also holds that "
                "protocol's optimism (table.score: max_over_epochs compares like with like)"
            )
    for c in plan.columns:
        if c.tuned:
            notes.append(f"{c.label} for {c.tuned_pair}: {c.evidence or 'study not read (dry run)'}")
    short = [k for k, v in cells.items() if v.spread is None or v.spread.n < len(cfg.seeds)]
    if short:
        notes.append(f"{len(short)} cell(s) have fewer finished seeds than the {len(cfg.seeds)} planned")
    if comparisons:
        notes.append(
            "marker: ours against the baseline of the best mean, paired over common seeds, two-sided "
            f"{round(cfg.table.level * 100)}% t interval ({VERDICTS['better']} better, {VERDICTS['worse']} worse, "
            f"{VERDICTS['within noise']} within noise, {VERDICTS['n/a']} fewer than two paired seeds); choosing the "
            "best baseline after the fact favours the baseline"
        )
    return Table(
        cfg.name,
        status,
        score,
        cfg.table.level,
        cfg.table.decimals,
        cfg.table.rows,
        rows,
        columns,
        cells,
        comparisons,
        notes,
        list(cfg.seeds),
        heads,
    )


def table_dict(t: Table) -> dict[str, Any]:
    """The table as plain JSON (``table.json``)."""
    return {
        "campaign": t.campaign,
        "status": t.status,
        "score": t.score,
        "level": t.level,
        "seeds": t.seeds,
        "columns": t.columns,
        "pairs": [vars(r) for r in t.pairs],
        "cells": [
            {
                "pair": c.pair,
                "method": c.label,
                "distiller": c.distiller,
                "n": c.spread.n if c.spread else 0,
                "mean": c.spread.mean if c.spread else None,
                "std": c.spread.std if c.spread else None,
                "scores": {str(k): v for k, v in sorted(c.scores.items())},
                "failed": c.failed,
                "missing": c.missing,
                "published": c.published,
                "diff": c.diff,
                "tuned": c.tuned,
                "evidence": c.evidence,
            }
            for c in t.cells.values()
        ],
        "comparisons": [
            {
                "pair": c.pair,
                "ours": c.ours,
                "baseline": c.baseline,
                "verdict": c.verdict,
                "mean": c.diff.mean if c.diff else None,
                "low": c.diff.low if c.diff else None,
                "high": c.diff.high if c.diff else None,
                "p_value": c.diff.p_value if c.diff else None,
                "n": c.diff.n if c.diff else 0,
                "test": c.diff.test if c.diff else "paired t-test",
            }
            for c in t.comparisons
        ],
        "notes": t.notes,
    }


__all__ = ["Cell", "Comparison", "PairRow", "Table", "build_table", "compare", "table_dict"]
