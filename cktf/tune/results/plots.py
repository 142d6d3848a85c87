"""A study's plots, drawn from its trial index: the score per epoch of every trial (pruned ones dashed), the
confirmation's spread over seeds, and Optuna's optimisation history, importances and parallel coordinates on an
Optuna study rebuilt from the index (finished trials COMPLETE, ASHA-stopped ones PRUNED). Importances and parallel
coordinates from few finished trials say so on the plot."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

from .reader import FINISHED, PRUNED, StudyResults

log = logging.getLogger(__name__)

#: plots whose statistics need many finished trials (marked indicative when they have few)
CAUTIONED = ("param_importances.png", "parallel_coordinate.png")


def _study_meta(results: StudyResults) -> dict:
    return results.store.read_json("study.resolved.json", default={}) or {}


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


def write_plots(results: StudyResults, out: Path, caution: str = "") -> list[str]:
    """The report's plots; ``caution``: said on the plots whose statistics need more finished trials than there
    are (importances, parallel coordinates)."""
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
    if 0 < len(ax.get_lines()) and len(trials) <= 16:  # no curve (no trial reported an epoch): no legend
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
            if caution and name in CAUTIONED:
                fig.suptitle(caution, fontsize=8, color="firebrick")
            fig.set_size_inches(8, 5)
            fig.tight_layout()
            fig.savefig(out / name, dpi=110)
            plt.close(fig)
            written.append(name)
        except (ValueError, RuntimeError) as exc:  # e.g. importances need two distinct completed configs
            log.info("skipping %s: %s", name, exc)
    return written


__all__ = ["CAUTIONED", "optuna_study", "write_plots"]
