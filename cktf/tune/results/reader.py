"""The one reader of a study's results: its trial index and state (:mod:`.index`), and what "best" means.

* :class:`StudyResults` -- one object over both, used by export, report, the MLflow callback and the CLI: trials,
  statuses and counts, the selected epoch and score of each trial, the best finished trial by ``search.metric``
  and ``search.mode``, the baseline (official defaults) trial.
* The confirmation stage's runs (records with ``stage: confirm``, a ``group`` per configuration and a ``seed``) are
  kept apart from the search's trials: :meth:`StudyResults.confirmation` groups them, and once they exist "best" is
  the configuration with the best mean over its seeds (docs/studies.md, "Winners confirmed").
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import ConfigError
from .index import (  # noqa: F401  (the vocabulary, read through this module too)
    BEST_EPOCH,
    CONFIRM,
    FAILED,
    FAILURE_KEY,
    FINISHED,
    LAST_EPOCH,
    METHOD_KEY,
    MLFLOW_STATUS,
    PRUNED,
    RUNNING,
    SCORE,
    SEARCH,
    STATE_FILE,
    TERMINAL,
    TrialIndex,
    as_store,
    checkpoint_filesystem,
    display,
    finite,
    read_state,
    score_rule,
    select_epoch,
    test_split_metric,
    wanted_metrics,
    write_state,
)
from .store import StudyStore, is_uri


@dataclass(frozen=True)
class TrialResult:
    """One trial as the study judges it: its index record, its selected epoch and that epoch's score."""

    record: dict[str, Any]
    epoch_row: dict[str, Any]
    score: float | None
    test: float | None

    @property
    def trial_id(self) -> str:
        return self.record["trial_id"]

    @property
    def status(self) -> str:
        return self.record.get("status", RUNNING)

    @property
    def config(self) -> dict[str, Any]:
        return self.record.get("config", {})

    @property
    def baseline(self) -> bool:
        return bool(self.record.get("baseline"))

    @property
    def epochs(self) -> int:
        return len(self.record.get("history", []))

    @property
    def epoch(self) -> int | None:
        return self.epoch_row.get("epoch")


@dataclass(frozen=True)
class Pick:
    """The study's best, as every output gives it: after a confirmation, the configuration with the best mean over
    its seeds (``score`` is that mean, ``trial`` its best run, whose weights are the study's student); without one,
    the search's best finished trial (one seed)."""

    trial: TrialResult
    score: float
    std: float | None
    n: int
    confirmed: bool
    group: int | None = None
    baseline: bool = False

    @property
    def config(self) -> dict[str, Any]:
        """The configuration's values (a confirmation run's seed left out)."""
        return {k: v for k, v in self.trial.config.items() if k != "train.seed"}

    def describe(self) -> str:
        """``c1`` / ``the official defaults`` / ``trial t03`` (``dkd configuration c3`` in a study over methods): how
        the outputs name it."""
        method = self.trial.config.get(METHOD_KEY)
        if self.baseline:
            return "the official defaults" + (f" of {method}" if method else "")
        head = self.trial.record.get("head") or self.trial.trial_id
        what = f"configuration c{self.group}" if self.confirmed else f"trial {head}"
        return f"{method} {what}" if method else what


@dataclass(frozen=True)
class ConfirmedConfig:
    """One configuration of the confirmation stage: its runs over the new seeds and their spread."""

    group: int
    config: dict[str, Any]
    baseline: bool
    source_trial: str | None
    runs: list[TrialResult]
    spread: Any  # stats.Spread of the finished runs' scores, None if none finished

    def scores_by_seed(self) -> dict[int, float]:
        return {
            int(r.record["seed"]): float(r.score) for r in self.runs if r.status == FINISHED and r.score is not None
        }


class StudyResults:
    """A study's results as one object: trials, statuses, per-epoch histories, the best and the baseline trial.

    ``metric``/``mode``/``selection`` come from the study's ``state.json`` (written by the driver before the first
    trial); arguments override them (a synthetic index in a test, a reader before the state exists).
    """

    def __init__(
        self,
        study: StudyStore | str | os.PathLike,
        metric: str | None = None,
        mode: str | None = None,
        selection: str | None = None,
    ):
        self.store = as_store(study)
        self.state = read_state(self.store)
        self.metric = metric or self.state.get("metric", "val_acc")
        self.mode = mode or self.state.get("mode", "max")
        self.selection = selection or self.state.get("selection", BEST_EPOCH)
        self.test_metric = test_split_metric(self.metric)
        self.index = TrialIndex(self.store)
        self._records: list[dict[str, Any]] | None = None

    @property
    def study_dir(self) -> str:
        return self.store.uri

    @property
    def name(self) -> str:
        return self.store.uri.rstrip("/").rsplit("/", 1)[-1]

    def records(self) -> list[dict[str, Any]]:
        if self._records is None:
            self._records = self.index.all()
        return self._records

    def judge(self, record: dict[str, Any]) -> TrialResult:
        row = select_epoch(record.get("history", []), self.metric, self.mode, self.selection)
        score = row.get(self.metric)
        return TrialResult(record, row, float(score) if finite(score) else None, row.get(self.test_metric))

    def trials(self) -> list[TrialResult]:
        """The search's trials (not the confirmation runs)."""
        return [self.judge(r) for r in self.records() if r.get("stage", SEARCH) != CONFIRM]

    def confirm_trials(self) -> list[TrialResult]:
        """The confirmation stage's runs, by group then seed."""
        rows = [self.judge(r) for r in self.records() if r.get("stage") == CONFIRM]
        return sorted(rows, key=lambda t: (int(t.record.get("group", 0)), int(t.record.get("seed", 0))))

    def counts(self, stage: str = SEARCH) -> dict[str, int]:
        counts = {s: 0 for s in (FINISHED, PRUNED, FAILED, RUNNING)}
        for t in self.trials() if stage == SEARCH else self.confirm_trials():
            counts[t.status] = counts.get(t.status, 0) + 1
        return counts

    def confirm_complete(self, num_runs: int | None = None) -> bool:
        """Every run the confirmation stage planned (``num_runs``, default: the state's) has ended."""
        n = int(num_runs if num_runs is not None else len(self.state.get("confirm_points") or []))
        runs = self.confirm_trials()
        return n > 0 and len(runs) >= n and all(t.status in TERMINAL for t in runs)

    def confirmation(self) -> list[ConfirmedConfig]:
        """One entry per confirmed configuration (the official defaults flagged), best mean first."""
        from .stats import spread

        groups: dict[int, list[TrialResult]] = {}
        for t in self.confirm_trials():
            groups.setdefault(int(t.record.get("group", 0)), []).append(t)
        out = []
        for group, runs in groups.items():
            scored = [r for r in runs if r.status == FINISHED and r.score is not None]
            first = runs[0].record
            out.append(
                ConfirmedConfig(
                    group=group,
                    config=first.get("config", {}),
                    baseline=bool(first.get("baseline")),
                    source_trial=first.get("source_trial"),
                    runs=runs,
                    spread=spread([r.score for r in scored]) if scored else None,
                )
            )
        sign = -1.0 if self.mode == "max" else 1.0
        out.sort(key=lambda c: (c.spread is None, sign * c.spread.mean if c.spread else 0.0, c.group))
        return out

    def complete(self, num_trials: int | None = None) -> bool:
        """Every trial of the plan (``num_trials``, default: the state's) is in the index with a final status:
        finished, pruned, or failed after its retries. Ray's own view (a ResultGrid after Ctrl-C) is not trusted."""
        n = int(num_trials if num_trials is not None else self.state.get("num_trials", 0))
        trials = self.trials()
        return n > 0 and len(trials) >= n and all(t.status in TERMINAL for t in trials)

    def all_failed(self) -> bool:
        trials = self.trials()
        return bool(trials) and all(t.status == FAILED for t in trials)

    def better(self, a: float, b: float) -> bool:
        return a > b if self.mode == "max" else a < b

    def sort_key(self, t: TrialResult) -> tuple[int, float, str]:
        """Best first in the study's mode; trials without a score last; a tie goes to the smaller trial id, so that
        every reader (report, export, MLflow tag) names the same trial."""
        if t.score is None:
            return (1, 0.0, t.trial_id)
        return (0, -t.score if self.mode == "max" else t.score, t.trial_id)

    def ranked(self, status: str | None = None) -> list[TrialResult]:
        """Trials best first (``status``: only those)."""
        rows = [t for t in self.trials() if status is None or t.status == status]
        return sorted(rows, key=self.sort_key)

    def best(self, required: bool = False) -> TrialResult | None:
        """The best *finished* trial (ran every epoch; pruned and failed trials are not candidates) that has a
        checkpoint, by ``metric`` in ``mode`` order at its selected epoch. After a confirmation stage: the best seed
        run of the configuration with the best mean over its seeds (:meth:`confirmed_best`)."""
        confirmed = self.confirmed_best()
        if confirmed is not None:
            return confirmed
        return self.search_best(required)

    def confirmed_best(self) -> TrialResult | None:
        """The confirmation's pick: of the configuration with the best mean, its best finished run with a
        checkpoint; ``None`` without confirmation runs."""
        for conf in self.confirmation():
            runs = sorted(
                (r for r in conf.runs if r.status == FINISHED and r.score is not None and r.record.get("checkpoint")),
                key=self.sort_key,
            )
            if runs:
                return runs[0]
        return None

    def search_best(self, required: bool = False) -> TrialResult | None:
        """The search's best finished trial (before any confirmation)."""
        scored = [t for t in self.ranked(FINISHED) if t.score is not None and t.record.get("checkpoint")]
        if scored:
            return scored[0]
        if required:
            raise ConfigError(
                "study",
                f"no trial of {self.study_dir} has finished yet",
                "run or resume the study (cktf tune ... --resume)",
            )
        return None

    def pick(self) -> Pick | None:
        """The study's best (:class:`Pick`): the one answer of the headline, the report, MLflow's ``best/*``, the
        registry and every export."""
        for conf in self.confirmation():
            if conf.spread is None:
                continue
            runs = sorted(
                (r for r in conf.runs if r.status == FINISHED and r.score is not None and r.record.get("checkpoint")),
                key=self.sort_key,
            )
            if runs:
                s = conf.spread
                return Pick(runs[0], s.mean, s.std, s.n, True, conf.group, conf.baseline)
        best = self.search_best()
        if best is None:
            return None
        return Pick(best, float(best.score), None, 1, False, None, best.baseline)

    def pick_test(self) -> float | None:
        """The test accuracy of the study's student: read once for the final pick (a study with a confirmation),
        else at its trial's selected epoch."""
        pick = self.pick()
        if pick is None:
            return None
        once = self.state.get("final_test") or {}
        if once.get("trial") == pick.trial.trial_id and once.get(self.test_metric) is not None:
            return float(once[self.test_metric])
        return pick.trial.test

    def baseline(self) -> TrialResult | None:
        return next((t for t in self.trials() if t.baseline), None)

    def gain_over_baseline(self) -> float | None:
        """The search's ``best - baseline`` (one seed each) in the metric's units, signed so that a positive value is
        an improvement; :meth:`confirmed_gain` is the paired one over the confirmation's seeds."""
        best, base = self.search_best(), self.baseline()
        if best is None or base is None or base.score is None or best.score is None:
            return None
        return best.score - base.score if self.mode == "max" else base.score - best.score

    def paired(self, a: ConfirmedConfig, b: ConfirmedConfig, level: float = 0.95):
        """``a - b`` paired over their shared seeds, signed so that positive means ``a`` is better: a
        :class:`~.stats.PairedDiff`, or ``None`` with fewer than two shared seeds."""
        from .stats import paired_diff

        x, y = a.scores_by_seed(), b.scores_by_seed()
        seeds = sorted(set(x) & set(y))
        if len(seeds) < 2:
            return None
        va, vb = [x[s] for s in seeds], [y[s] for s in seeds]
        return paired_diff(va, vb, level) if self.mode == "max" else paired_diff(vb, va, level)

    def confirmed_gain(self, level: float = 0.95):
        """The winner's paired difference from the confirmed defaults (same seeds), signed so that positive is an
        improvement: a :class:`~.stats.PairedDiff`, or ``None`` without both (or with fewer than two shared seeds)."""
        confs = self.confirmation()
        base = next((c for c in confs if c.baseline), None)
        if not confs or base is None or confs[0] is base or confs[0].spread is None:
            return None
        return self.paired(confs[0], base, level)


def resolve_study_dir(study: str | os.PathLike, workdir: str = "runs/studies") -> str:
    """A study folder (local or ``s3://``), a study YAML (its workdir/name) or a bare study name under ``workdir``."""
    text = str(study)
    if is_uri(text):
        store = StudyStore(text)
        if store.exists(STATE_FILE) or store.list("trials"):
            return store.uri
        raise ConfigError("study", f"no study found at {text}", "pass the study's folder, YAML file or name")
    p = Path(text)
    if p.is_file() and p.suffix in (".yaml", ".yml"):
        from ..plan.load import load_study

        return str(load_study(p).study_dir)
    for cand in (p, Path(workdir) / text):
        if (cand / "trials").is_dir() or (cand / STATE_FILE).exists():
            return str(cand.resolve())
    raise ConfigError("study", f"no study found at {study} (nor under {workdir}/)", "pass a study dir, YAML or name")


__all__ = [
    "SCORE",
    "BEST_EPOCH",
    "FAILURE_KEY",
    "FAILED",
    "FINISHED",
    "LAST_EPOCH",
    "MLFLOW_STATUS",
    "PRUNED",
    "Pick",
    "RUNNING",
    "TERMINAL",
    "StudyResults",
    "TrialIndex",
    "TrialResult",
    "read_state",
    "resolve_study_dir",
    "select_epoch",
    "display",
    "wanted_metrics",
    "write_state",
]
