"""``cktf report STUDY``: what a study found, from its trial index (no Ray needed).

Writes ``<study_dir>/report/``: ``summary.md`` and ``summary.json`` (best config and metric, the
top-k table, the baseline (paper-default) trial next to the best, the matching row of the published
accuracy anchors), ``metric_vs_epoch.png`` (validation accuracy per trial, pruned trials dashed)
and the Optuna plots (``param_importances.png``, ``parallel_coordinate.png``, ``history.png``)
computed on an Optuna study rebuilt from the index (finished trials COMPLETE, ASHA-stopped PRUNED); with a
confirmation stage, the mean ± std per confirmed configuration, the paired difference from the defaults with its 95%
interval, and ``confirmation.png`` (error bars). Every headline carries its uncertainty: the validation split's size
and one binomial standard error on it. ``report.html`` is the same as one self-contained page (plots inline).
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any

from .anchors import anchor_row, published_groups
from .mlflow_runs import run_name
from .reader import FINISHED, PRUNED, RUNNING, StudyResults, TrialResult, resolve_study_dir
from .stats import binomial_se

log = logging.getLogger(__name__)


def _study_meta(results: StudyResults) -> dict[str, Any]:
    return results.store.read_json("study.resolved.json", default={}) or {}


def row(t: TrialResult) -> dict[str, Any]:
    return {
        "trial": t.trial_id,
        "name": run_name(t.record).split(" ")[0],  # t03 / c1 s1000: the name of its MLflow run and terminal row
        "status": t.status,
        "epochs": t.epochs,
        "score": t.score,
        "selected_epoch": t.epoch,
        "test_at_selected": t.test,
        "probe_curve": t.record.get("probe_curve"),
        "baseline": t.baseline,
        "config": t.config,
    }


def summarize(study: Any, top_k: int = 10) -> dict[str, Any]:
    results = study if isinstance(study, StudyResults) else StudyResults(study)
    meta = _study_meta(results)
    rows = [row(t) for t in results.ranked()]
    best, baseline = results.best(), results.baseline()
    teacher = (meta.get("teacher") or {}).get("arch")
    num_val = results.state.get("num_val")
    se = binomial_se(best.score, int(num_val)) if best and best.score is not None and num_val else None
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
    out = {
        "study": results.name,
        "status": results.state.get("status", RUNNING),
        "counts": results.counts(),
        "metric": results.metric,
        "mode": results.mode,
        "test_metric": results.test_metric,
        "best": row(best) if best else None,
        "baseline": row(baseline) if baseline else None,
        "gain_over_baseline": results.gain_over_baseline(),
        "top": rows[:top_k],
        "anchor": anchor_row((meta.get("data") or {}).get("dataset", ""), teacher, meta.get("student", "")),
        "teacher": results.state.get("teacher"),
        "ablations": ablation_tables(rows, (meta.get("search") or {}).get("space") or {}, results.mode),
        "num_val": num_val,
        "binomial_se": se,
        "confirmation": confirmation,
        "confirmed_gain": (
            {
                "mean": gain.mean,
                "low": gain.low,
                "high": gain.high,
                "n": gain.n,
                "level": gain.level,
                "p_value": gain.p_value,
                "test": gain.test,
                "within_noise": gain.within_noise,
            }
            if gain
            else None
        ),
        "final_test": results.state.get("final_test"),
    }
    confirm_done = not meta.get("confirm") or results.confirm_complete()
    if out["status"] == RUNNING and results.complete() and confirm_done:
        out["status"] = "complete"  # every run has ended: only the study's bookkeeping (written after this) is left
    out["headline"] = headline(out)
    return out


def headline(s: dict[str, Any]) -> str:
    """One sentence: the pick, its number with its uncertainty, and whether the gain over the defaults is more than
    noise."""
    metric, best = s["metric"], s["best"]
    if not best:
        return f"no finished trial yet ({s['status']})"
    se = s.get("binomial_se")
    noise = f"one binomial SE on the {s['num_val']}-image validation split is {se:.2f} points" if se else ""
    conf = s.get("confirmation") or []
    test = (s.get("final_test") or {}).get(s["test_metric"], best.get("test_at_selected"))
    test_txt = f"; {s['test_metric']} {test:.2f} (the final pick, read once)" if test is not None else ""
    if conf and conf[0]["mean"] is not None:
        win = conf[0]
        who = "the official defaults" if win["baseline"] else f"configuration c{win['group']}"
        text = f"best: {who}, {metric} {win['mean']:.2f} ± {win['std']:.2f} over {win['n']} seeds{test_txt}"
        g = s.get("confirmed_gain")
        if win["baseline"]:
            text += "; no searched configuration beat the defaults on average"
        elif g:
            verdict = (
                "within noise: the seeds do not tell it from the defaults"
                if g["within_noise"]
                else "the interval excludes 0"
            )
            text += (
                f"; vs the defaults {g['mean']:+.2f} [{g['low']:+.2f}, {g['high']:+.2f}] "
                f"({round(g['level'] * 100)}% CI, {g['n']} paired seeds, {g['test']}): {verdict}"
            )
        return text + (f"; {noise}" if noise else "")
    text = f"best trial {best['trial']}: {metric} {best['score']:.2f} (one seed, not confirmed){test_txt}"
    gain = s.get("gain_over_baseline")
    if gain is not None:
        text += f"; {gain:+.2f} vs the defaults"
        if se and abs(gain) < 2 * se:
            text += " (within two binomial SEs: noise until confirmed over seeds)"
    return text + (f"; {noise}" if noise else "")


def ablation_tables(rows: list[dict[str, Any]], space: dict[str, Any], mode: str = "max") -> dict[str, list[dict]]:
    """Section 3.3 comparisons: for each categorical searched parameter, one row per choice (trials, finished, best
    and mean of the selection metric over finished trials, test at the best one)."""
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


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "-" if v is None else str(v)


def to_markdown(s: dict[str, Any]) -> str:
    metric, test = s["metric"], s["test_metric"]
    lines = [f"# Study {s['study']} ({s['status']})", "", f"**{s.get('headline') or headline(s)}**", ""]
    lines.append(
        "trials: " + ", ".join(f"{k} {v}" for k, v in s["counts"].items()) + f"; metric: {metric} ({s['mode']}), "
        f"{test} reported at the selected epoch"
    )
    for label in ("best", "baseline"):
        x = s[label]
        if x:
            cfg = ", ".join(f"{k}={_fmt(v)}" for k, v in sorted(x["config"].items()))
            lines.append(
                f"\n**{label}** {x['trial']}: {metric} {_fmt(x['score'])}, {test} {_fmt(x['test_at_selected'])}"
                f" ({x['status']}, {x['epochs']} epochs): {cfg}"
            )
    if s["gain_over_baseline"] is not None:
        lines.append(f"\nsearch's best vs baseline ({metric}, one seed each): {s['gain_over_baseline']:+.2f}")
    if s.get("confirmation"):
        lines += confirmation_markdown(s)
    if s["anchor"]:
        for source, cells in published_groups(s["anchor"]):
            lines.append(f"\npublished ({source}): " + ", ".join(f"{k} {v}" for k, v in cells.items()))
    for name, table in s.get("ablations", {}).items():
        lines += [
            "",
            f"**{name}** (finished trials only)",
            "",
            "| choice | trials | finished | best | mean | test at best |",
        ]
        lines.append("|---|---|---|---|---|---|")
        for t in table:
            cells = [t["choice"], t["trials"], t["finished"], _fmt(t["best"]), _fmt(t["mean"]), _fmt(t["test_at_best"])]
            lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    keys = sorted({k for x in s["top"] for k in x["config"]})
    lines += ["", f"| trial | status | epochs | {metric} | {test} | " + " | ".join(keys) + " |"]
    lines.append("|" + "---|" * (5 + len(keys)))
    for x in s["top"]:
        cells = [f"{x['name']} {x['trial']}" + (" (baseline)" if x["baseline"] else ""), x["status"], x["epochs"]]
        cells += [_fmt(x["score"]), _fmt(x["test_at_selected"])]
        cells += [_fmt(x["config"].get(k)) for k in keys]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def confirmation_markdown(s: dict[str, Any]) -> list[str]:
    metric = s["metric"]
    lines = ["", f"**confirmation** (trained again from scratch over new seeds; {metric} at each run's selected epoch)"]
    lines += ["", f"| config | source | {metric} mean ± std | n | per seed | values |", "|---|---|---|---|---|---|"]
    for c in s["confirmation"]:
        name = f"c{c['group']}" + (" (defaults)" if c["baseline"] else "")
        per = ", ".join(f"s{k}: {v:.2f}" for k, v in sorted(c["scores"].items()))
        vals = ", ".join(f"{k}={_fmt(v)}" for k, v in sorted(c["config"].items()))
        ms = f"{c['mean']:.2f} ± {c['std']:.2f}" if c["mean"] is not None else "-"
        lines.append(f"| {name} | {c['source_trial'] or '-'} | {ms} | {c['n']} | {per} | {vals} |")
    g = s.get("confirmed_gain")
    if g:
        lines.append(
            "\n"
            f"best vs defaults, paired over seeds: {g['mean']:+.2f}, {round(g['level'] * 100)}% CI "
            f"[{g['low']:+.2f}, {g['high']:+.2f}], {g['test']} p = {g['p_value']:.3g} (n = {g['n']})"
            + (": within noise" if g["within_noise"] else "")
        )
    return lines


def optuna_study(results: StudyResults):
    """An in-memory Optuna study rebuilt from the index (for importances and plots)."""
    import optuna

    from ...space import parse_space

    meta = _study_meta(results)
    space = parse_space((meta.get("search") or {}).get("space") or {})
    dists = {}
    for name, spec in space.items():
        if spec.type == "categorical":
            dists[name] = optuna.distributions.CategoricalDistribution(list(spec.choices))
        elif spec.type in ("int", "int_log"):
            dists[name] = optuna.distributions.IntDistribution(
                int(spec.low), int(spec.high), log=spec.type == "int_log", step=int(spec.step or 1)
            )
        else:
            dists[name] = optuna.distributions.FloatDistribution(
                spec.low, spec.high, log=spec.type == "log", step=spec.step
            )
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize" if results.mode == "max" else "minimize")
    for t in results.trials():
        params = {k: v for k, v in t.config.items() if k in dists}
        state = {FINISHED: "COMPLETE", PRUNED: "PRUNED"}.get(t.status)
        if set(params) != set(dists) or t.score is None or state is None:
            continue
        metric = results.metric
        inter = {int(h["epoch"]) + 1: h[metric] for h in t.record.get("history", []) if metric in h}
        study.add_trial(
            optuna.trial.create_trial(
                params=params,
                distributions={k: dists[k] for k in params},
                value=t.score if state == "COMPLETE" else None,
                state=getattr(optuna.trial.TrialState, state),
                intermediate_values=inter,
            )
        )
    return study


def write_plots(results: StudyResults, out: Path) -> list[str]:
    import matplotlib
    import optuna

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = results.metric
    written = []
    trials = results.trials()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for t in trials:
        hist = [h for h in t.record.get("history", []) if metric in h]
        if not hist:
            continue
        style = "-" if t.status == FINISHED else "--"
        label = f"t{int(t.record.get('number', 0)):02d}" + (" defaults" if t.baseline else "")
        xs, ys = [h["epoch"] + 1 for h in hist], [h[metric] for h in hist]
        (line,) = ax.plot(xs, ys, style, marker=".", label=label)
        if t.status == PRUNED:  # where ASHA stopped it
            ax.plot(xs[-1:], ys[-1:], "x", color=line.get_color(), markersize=9, markeredgewidth=2)
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.set_title(f"{results.name}: {metric} per trial (dashed, x: pruned by ASHA)")
    if len(trials) <= 16:
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out / "metric_vs_epoch.png", dpi=110)
    plt.close(fig)
    written.append("metric_vs_epoch.png")

    confirmation = results.confirmation()
    if confirmation:
        fig, ax = plt.subplots(figsize=(7, 4))
        names, means, stds = [], [], []
        for c in confirmation:
            if c.spread is None:
                continue
            names.append(f"c{c.group}" + (" defaults" if c.baseline else ""))
            means.append(c.spread.mean)
            stds.append(c.spread.std)
            ax.plot([len(names) - 1] * len(c.scores_by_seed()), list(c.scores_by_seed().values()), "o", alpha=0.4)
        ax.errorbar(range(len(names)), means, yerr=stds, fmt="s", color="black", capsize=6, label="mean ± std")
        ax.set_xticks(range(len(names)), names)
        ax.set_ylabel(metric)
        ax.set_title(f"{results.name}: confirmation over seeds (dots: single runs)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "confirmation.png", dpi=110)
        plt.close(fig)
        written.append("confirmation.png")

    import optuna.visualization.matplotlib as ovm

    study = optuna_study(results)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    plots = {"history.png": ovm.plot_optimization_history, "parallel_coordinate.png": ovm.plot_parallel_coordinate}
    if len(complete) >= 2:
        plots["param_importances.png"] = ovm.plot_param_importances
    for name, fn in plots.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = fn(study)
            fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
            fig.set_size_inches(8, 5)
            fig.tight_layout()
            fig.savefig(out / name, dpi=110)
            plt.close(fig)
            written.append(name)
        except (ValueError, RuntimeError) as exc:  # e.g. importances need two distinct completed configs
            log.info("skipping %s: %s", name, exc)
    return written


def write_report(study: Any, top_k: int = 10, out: Path | None = None) -> Path:
    """Write the report (``summary.md``, ``summary.json``, plots) to ``out`` (default: a local temporary folder for
    a remote study, else ``<study>/report``), copy it into the study's ``report/`` and return the local folder."""
    import tempfile

    results = study if isinstance(study, StudyResults) else StudyResults(resolve_study_dir(study))
    local = results.store.local_path("report")
    if out is None:
        out = local if local is not None else Path(tempfile.mkdtemp(prefix="cktf-report-"))
    out.mkdir(parents=True, exist_ok=True)
    s = summarize(results, top_k)
    s["plots"] = write_plots(results, out)
    (out / "summary.md").write_text(to_markdown(s))
    from .html import to_html

    (out / "report.html").write_text(to_html(s, out))
    (out / "summary.json").write_text(json.dumps(s, indent=1, default=str))
    if local is None or out.resolve() != local.resolve():
        results.store.upload(out, "report")
    return out
