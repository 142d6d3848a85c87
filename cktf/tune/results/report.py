"""``cktf report STUDY``: what a study found, from its trial index (no Ray needed).

:func:`summarize` is the one summary every output of a finished study shows (the headline, ``cktf report``, the
HTML page, the Python API's results): the study's best as :meth:`~.reader.StudyResults.pick` gives it (after a
confirmation, the configuration with the best mean over its seeds), each trial's score (its selection metric at its
selected epoch), the paired intervals of the best against the official defaults and against the search's best trial,
the noise floor of the validation split, the published numbers of the pair, and what the plots may and may not say.

:func:`write_report` writes ``<study_dir>/report/``: ``summary.md`` and ``summary.json``, ``report.html`` (one
self-contained page, plots inline) and the plots (:mod:`.plots`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from .anchors import anchor_row
from .compare import comparisons, method_ranking
from .mlflow_runs import run_name
from .reader import (
    FINISHED,
    METHOD_KEY,
    RUNNING,
    SCORE,
    Pick,
    StudyResults,
    TrialResult,
    display,
    resolve_study_dir,
    score_rule,
)
from .stats import binomial_se

log = logging.getLogger(__name__)

#: importances and parallel coordinates from fewer finished trials than this are indicative only
MIN_TRIALS_FOR_STATISTICS = 10


def _study_meta(results: StudyResults) -> dict[str, Any]:
    return results.store.read_json("study.resolved.json", default={}) or {}


def row(t: TrialResult) -> dict[str, Any]:
    return {
        "trial": t.trial_id,
        "name": t.record.get("head") or run_name(t.record).split(" ")[0],  # t03 / c1 s1000: its run and terminal row
        "status": t.status,
        "epochs": t.epochs,
        "score": t.score,
        "selected_epoch": t.epoch,
        "test_at_selected": t.test,
        "probe_curve": t.record.get("probe_curve"),
        "baseline": t.baseline,
        "config": t.config,
    }


def pick_row(results: StudyResults, pick: Pick) -> dict[str, Any]:
    """The study's best as the outputs give it: its run's row, with the study's number for it."""
    return {
        **row(pick.trial),
        "score": pick.score,
        "score_display": display(pick.score),
        "std": pick.std,
        "seeds": pick.n,
        "confirmed": pick.confirmed,
        "group": pick.group,
        "baseline": pick.baseline,
        "describe": pick.describe(),
        "trial_score": pick.trial.score,
        "config": pick.config,
        "test": results.pick_test(),
    }


def _diff(d: Any) -> dict[str, Any]:
    return {
        "mean": d.mean,
        "low": d.low,
        "high": d.high,
        "n": d.n,
        "level": d.level,
        "p_value": d.p_value,
        "test": d.test,
        "within_noise": d.within_noise,
    }


def summarize(study: Any, top_k: int = 10) -> dict[str, Any]:
    results = study if isinstance(study, StudyResults) else StudyResults(study)
    meta = _study_meta(results)
    rows = [row(t) for t in results.ranked()]
    pick, baseline = results.pick(), results.baseline()
    methods = method_ranking(results)
    if methods:  # one baseline per method: the methods table shows each
        baseline = None
    teacher = (meta.get("teacher") or {}).get("arch")
    num_val = results.state.get("num_val")
    se = binomial_se(pick.score, int(num_val)) if pick and num_val else None
    confirmation = [
        {
            "group": c.group,
            "baseline": c.baseline,
            "source_trial": c.source_trial,
            "config": c.config,
            "mean": c.spread.mean if c.spread else None,
            "std": c.spread.std if c.spread else None,
            "n": c.spread.n if c.spread else 0,
            "scores": c.scores_by_seed(),
        }
        for c in results.confirmation()
    ]
    gain = results.confirmed_gain()
    finished = sum(1 for t in results.trials() if t.status == FINISHED and t.score is not None)
    out = {
        "study": results.name,
        "status": results.state.get("status", RUNNING),
        "counts": results.counts(),
        "metric": results.metric,
        "mode": results.mode,
        "score": {"name": SCORE, "rule": score_rule(results.metric, results.selection)},
        "test_metric": results.test_metric,
        "best": pick_row(results, pick) if pick else None,
        "baseline": row(baseline) if baseline else None,
        "baseline_deviations": results.state.get("baseline_deviations") or {},
        "gain_over_baseline": None if methods else results.gain_over_baseline(),
        "top": rows[:top_k],
        "anchor": anchor_row((meta.get("data") or {}).get("dataset", ""), teacher, meta.get("student", "")),
        "teacher": results.state.get("teacher"),
        "ablations": ablation_tables(rows, (meta.get("search") or {}).get("space") or {}, results.mode),
        "num_val": num_val,
        "binomial_se": se,
        "confirmation": confirmation,
        "confirmed_gain": _diff(gain) if gain else None,
        "comparisons": [{**c, "diff": _diff(c["diff"])} for c in comparisons(results)],
        "methods": [{**m, "vs_best": _diff(m["vs_best"]) if m["vs_best"] else None} for m in methods],
        "final_test": results.state.get("final_test"),
        "finished_trials": finished,
        "caution": (
            f"importances and parallel coordinates come from {finished} finished trial(s), fewer than "
            f"{MIN_TRIALS_FOR_STATISTICS}: indicative only"
            if finished < MIN_TRIALS_FOR_STATISTICS
            else ""
        ),
    }
    confirm_done = not meta.get("confirm") or results.confirm_complete()
    if out["status"] == RUNNING and results.complete() and confirm_done:
        out["status"] = "complete"  # every run has ended: only the study's bookkeeping (written after this) is left
    out["headline"] = headline(out)
    return out


def defaults_text(deviations: dict[str, Any], method: str | None = None) -> str:
    """``the official defaults`` (``of dkd``, in a study over methods: then only that method's fields count) and,
    where a field could not take its official value, the value it took."""
    who = "the official defaults" + (f" of {method}" if method else "")
    if method:
        deviations = {k.split(".", 1)[1]: v for k, v in deviations.items() if k.startswith(f"{method}.")}
    if not deviations:
        return who
    parts = ", ".join(f"{k}={v['used']} (official {v['official']})" for k, v in sorted(deviations.items()))
    return f"{who} except {parts}"


def headline(s: dict[str, Any]) -> str:
    """One sentence: the pick, its number with its uncertainty, and whether it beats the alternatives by more than
    noise."""
    best = s["best"]
    if not best:
        return f"no finished trial yet ({s['status']})"
    se = s.get("binomial_se")
    noise = f"one binomial SE on the {s['num_val']}-image validation split is {se:.2f} points" if se else ""
    test = best.get("test")
    test_txt = f"; {s['test_metric']} {test:.2f}" if test is not None else ""
    if best.get("confirmed"):
        deviations = s.get("baseline_deviations") or {}
        who = defaults_text(deviations, best["config"].get(METHOD_KEY)) if best["baseline"] else best["describe"]
        text = f"best: {who}, {SCORE} {best['score']:.2f} ± {best['std']:.2f} over {best['seeds']} seeds{test_txt}"
        if best["baseline"]:
            text += "; no searched configuration" + (" of any method" if s.get("methods") else "")
            text += " beat them on average"
        for c in s.get("comparisons") or []:
            g = c["diff"]
            verdict = "within noise" if g["within_noise"] else "the interval excludes 0"
            text += (
                f"; vs {c['against']} {g['mean']:+.2f} [{g['low']:+.2f}, {g['high']:+.2f}] "
                f"({round(g['level'] * 100)}% CI, {g['n']} paired seeds): {verdict}"
            )
        return text + (f"; {noise}" if noise else "")
    text = f"best: {best['describe']}, {SCORE} {best['score']:.2f} (one seed, not confirmed){test_txt}"
    gain = s.get("gain_over_baseline")
    if gain is not None:
        text += f"; {gain:+.2f} vs the defaults"
        if se and abs(gain) < 2 * se:
            text += " (within two binomial SEs: noise until confirmed over seeds)"
    return text + (f"; {noise}" if noise else "")


def ablation_tables(rows: list[dict[str, Any]], space: dict[str, Any], mode: str = "max") -> dict[str, list[dict]]:
    """Section 3.3 comparisons: for each categorical searched parameter, one row per choice (trials, finished, best
    and mean of the score over finished trials, test at the best one)."""
    pick = max if mode == "max" else min
    out: dict[str, list[dict[str, Any]]] = {}
    for name, spec in space.items():
        if spec.get("type") != "categorical":
            continue
        table = []
        for choice in spec.get("choices", []):
            arm = [x for x in rows if x["config"].get(name) == choice]
            done = [x for x in arm if x["status"] == FINISHED and x["score"] is not None]
            best = pick(done, key=lambda x: x["score"]) if done else None
            table.append(
                {
                    "choice": choice,
                    "trials": len(arm),
                    "finished": len(done),
                    "best": best["score"] if best else None,
                    "mean": sum(x["score"] for x in done) / len(done) if done else None,
                    "test_at_best": best["test_at_selected"] if best else None,
                }
            )
        out[name] = table
    return out


def write_report(study: Any, top_k: int = 10, out: Path | None = None) -> Path:
    """Write the report (``summary.md``, ``summary.json``, plots) to ``out`` (default: a local temporary folder for
    a remote study, else ``<study>/report``), copy it into the study's ``report/`` and return the local folder."""
    import tempfile

    from .html import to_html
    from .markdown import to_markdown
    from .plots import write_plots

    results = study if isinstance(study, StudyResults) else StudyResults(resolve_study_dir(study))
    local = results.store.local_path("report")
    if out is None:
        out = local if local is not None else Path(tempfile.mkdtemp(prefix="cktf-report-"))
    out.mkdir(parents=True, exist_ok=True)
    s = summarize(results, top_k)
    s["plots"] = write_plots(results, out, s["caution"])
    (out / "summary.md").write_text(to_markdown(s))
    (out / "report.html").write_text(to_html(s, out))
    (out / "summary.json").write_text(json.dumps(s, indent=1, default=str))
    if local is None or out.resolve() != local.resolve():
        results.store.upload(out, "report")
    return out


__all__ = ["MIN_TRIALS_FOR_STATISTICS", "ablation_tables", "headline", "row", "summarize", "write_report"]
