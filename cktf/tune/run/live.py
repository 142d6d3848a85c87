"""The live view in the terminal (docs/studies.md, "Watching a study"), for every stage of a study or a campaign.

A header (the run, its size, resources, where results go, the MLflow run), then one row per trial as it ends
(status, epochs, the metric, the searched values, short), and a progress line: finished, pruned, failed and running
counts, elapsed time, an ETA and the best so far. On a terminal the progress line is redrawn in place; elsewhere (CI
logs, a pipe) it is printed after each row, so a log reads top to bottom. Ray's own output and the diagnostics go to
the study's log file (``cktf tune --verbose`` brings Ray's view back instead).
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from ray.tune import Callback

from ..results.mlflow_runs import run_name, short_params
from ..results.reader import CONFIRM, FAILED, FINISHED, PRUNED, RUNNING, SCORE, SEARCH, TrialIndex, score_rule


def clock(seconds: float) -> str:
    s = int(max(seconds, 0))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class LiveView(Callback):
    """A Tune callback that prints the compact view; it reads each trial's final status from the trial index
    (written by the MLflow callback, which runs first)."""

    def __init__(self, folder: str, stage: Any, concurrency: int = 1, stream: TextIO | None = None):
        lineage = stage.lineage
        self.study_dir, self.metric, self.mode = folder, lineage.metric, lineage.mode
        self.num_trials, self.max_t, self.stage = int(stage.count), int(lineage.epochs), lineage.stage
        self.searched = list(stage.searched) or None
        self.key_of = lineage.key_of
        self.concurrency = max(int(concurrency), 1)
        self._stream = stream
        self.t0 = time.time()
        self._last_draw = 0.0
        self._running: dict[str, int] = {}
        self._ended_s: list[float] = []
        self._started: dict[str, float] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_stream": None}

    @property
    def stream(self) -> TextIO:
        return self._stream or sys.stdout

    @property
    def tty(self) -> bool:
        return bool(getattr(self.stream, "isatty", lambda: False)())

    # ------------------------------------------------------------------ what is printed
    def records(self) -> list[dict[str, Any]]:
        return [r for r in TrialIndex(self.study_dir).all() if r.get("stage", SEARCH) == self.stage]

    def counts(self, recs: list[dict[str, Any]]) -> dict[str, int]:
        out = {FINISHED: 0, PRUNED: 0, FAILED: 0, RUNNING: 0}
        for r in recs:
            out[r.get("status", RUNNING)] = out.get(r.get("status", RUNNING), 0) + 1
        return out

    def best(self, recs: list[dict[str, Any]]) -> dict[str, Any] | None:
        scored = [r for r in recs if r.get("status") == FINISHED and r.get("score") is not None]
        if not scored:
            return None
        return (max if self.mode == "max" else min)(scored, key=lambda r: r["score"])

    def row(self, rec: dict[str, Any]) -> str:
        head = rec.get("head") or run_name({**rec, "config": {}, "baseline": False}).split(" ")[0]
        if rec.get("stage") == CONFIRM and not rec.get("head"):
            head = f"{head} s{int(rec.get('seed', 0))}"
        score = rec.get("score")
        value = f"{score:7.2f}" if isinstance(score, int | float) else "      -"
        config = rec.get("config", {})
        method = f"{config['distiller']} " if "distiller" in config else ""  # a study over methods
        params = f"{method}defaults" if rec.get("baseline") else short_params(config, self.searched, 64)
        if rec.get("baseline") and rec.get("deviations"):  # not quite: the fields outside the space say what they took
            used = ", ".join(f"{k}={v['used']}" for k, v in sorted(rec["deviations"].items()))
            params += f" ({used}, not official)"
        epochs = f"{int(rec.get('iterations', len(rec.get('history', []))))}/{self.max_t} ep"
        workers = f" x{int(rec['workers'])}w" if int(rec.get("workers") or 1) > 1 else ""  # a data-parallel trial
        return f"  {head:<9} {rec.get('status', RUNNING):<8} {epochs:>8}{workers}  {SCORE} {value}  {params}"

    def progress(self, recs: list[dict[str, Any]]) -> str:
        c = self.counts(recs)
        elapsed = time.time() - self.t0
        ended = c[FINISHED] + c[PRUNED] + c[FAILED]
        left = max(self.num_trials - ended, 0)
        eta = ""
        if self._ended_s and left:
            per = sum(self._ended_s) / len(self._ended_s)
            eta = f" · ETA ~{clock(per * left / self.concurrency)}"
        best = self.best(recs)
        top = ""
        if best is not None:
            top = f" · best {SCORE} {best['score']:.2f} ({self.row(best).split()[0]})"
        return (
            f"  [{c[FINISHED]} finished · {c[PRUNED]} pruned · {c[FAILED]} failed · {c[RUNNING]} running"
            f" · {ended}/{self.num_trials}] {clock(elapsed)} elapsed{eta}{top}"
        )

    def _write(self, line: str, transient: bool = False) -> None:
        if self.tty:
            self.stream.write("\r\x1b[K" + line + ("" if transient else "\n"))
        elif not transient:
            self.stream.write(line + "\n")
        self.stream.flush()

    # ------------------------------------------------------------------ Tune hooks
    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info) -> None:
        self._started.setdefault(trial.trial_id, time.time())

    def on_step_end(self, iteration: int, trials: list, **info) -> None:
        if self.tty and time.time() - self._last_draw > 1.0:
            self._last_draw = time.time()
            self._write(self.progress(self.records()), transient=True)

    def _ended(self, trial: Any) -> None:
        rec = TrialIndex(self.study_dir).get(self.key_of(trial))
        if not rec:
            return
        start = self._started.pop(trial.trial_id, None)
        if start is not None:
            self._ended_s.append(time.time() - start)
        self._write(self.row(rec))
        recs = self.records()
        if self.tty:
            self._write(self.progress(recs), transient=True)
        else:
            self._write(self.progress(recs))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info) -> None:
        self._ended(trial)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info) -> None:
        self._ended(trial)

    def on_experiment_end(self, trials: list, **info) -> None:
        if self.tty:
            self._write(self.progress(self.records()))


def header(plan: Any, store_uri: str, log_path: str, mlflow_line: str) -> str:
    """The study's header: what runs, on what, where its results go."""
    cfg = plan.study
    teacher = plan.teacher_arch or (cfg.teacher.arch if cfg.teacher else None)
    pair = f"{teacher} -> {cfg.student}" if teacher else cfg.student
    res = cfg.resources
    at_once = f"{cfg.max_concurrent} at once" if cfg.max_concurrent else "as many at once as fit"
    confirm, methods = "", " | ".join(cfg.method_names)
    per_trial = f"{res.cpu:g} CPU, {res.gpu:g} GPU"
    if res.parallel:
        per_trial = (
            f"{res.workers} workers (data parallel, Ray Train) of {res.cpu_per_worker:g} CPU, "
            f"{res.gpu_per_worker:g} GPU"
        )
    if cfg.confirm is not None:
        confirm = f"; then the top {cfg.confirm.top_k} + defaults over {cfg.confirm.seeds} new seeds"
    return "\n".join(
        [
            f"cktf study {cfg.name}: {plan.num_trials} trials of {methods} ({pair}, {cfg.data.dataset}), "
            f"ASHA + {cfg.sampler.name} on {cfg.search.metric} ({cfg.search.mode}){confirm}",
            f"  per trial {per_trial}, {at_once} · up to {cfg.train.epochs} epochs"
            f" · {SCORE} = {score_rule(cfg.search.metric, plan.selection)}",
            f"  results: {store_uri} · log: {log_path}",
            f"  MLflow: {mlflow_line}",
        ]
    )


__all__ = ["LiveView", "clock", "header"]
