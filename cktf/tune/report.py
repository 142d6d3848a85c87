"""``cktf report STUDY``: what a study found, from its trial index (no Ray needed).

Writes ``<study_dir>/report/``: ``summary.md`` and ``summary.json`` (best config and metric, the
top-k table, the baseline (paper-default) trial next to the best, the matching row of the published
accuracy anchors), ``metric_vs_epoch.png`` (validation accuracy per trial, pruned trials dashed)
and the Optuna plots (``param_importances.png``, ``parallel_coordinate.png``, ``history.png``)
computed on an Optuna study rebuilt from the index (finished trials COMPLETE, ASHA-stopped PRUNED).
"""

from __future__ import annotations

import csv
import json
import logging
import warnings
from importlib import resources
from pathlib import Path
from typing import Any

from .index import FAILED, FINISHED, PRUNED, TrialIndex, selected

log = logging.getLogger("cktf")


def anchor_row(dataset: str, teacher: str | None, student: str) -> dict[str, str] | None:
    """The published accuracies for this pair (``accuracy-anchors.csv``: CKTF paper Table 1)."""
    text = resources.files("cktf.tune").joinpath("resources/accuracy-anchors.csv").read_text()
    for row in csv.DictReader(text.splitlines()):
        if row["dataset"] == dataset and row["teacher"] == teacher and row["student"] == student:
            return row
    return None


def _study_meta(study_dir: Path) -> dict[str, Any]:
    path = study_dir / "study.resolved.json"
    return json.loads(path.read_text()) if path.exists() else {}


def summarize(study_dir: str | Path, top_k: int = 10) -> dict[str, Any]:
    study_dir = Path(study_dir)
    recs = TrialIndex(study_dir).all()
    meta = _study_meta(study_dir)
    state = json.loads((study_dir / "state.json").read_text()) if (study_dir / "state.json").exists() else {}

    from .export import metric_keys

    val_key, test_key = metric_keys(study_dir)

    def row(r: dict[str, Any]) -> dict[str, Any]:
        at = selected(r.get("history", []), val_key)
        return {
            "trial": r["trial_id"],
            "status": r.get("status"),
            "epochs": len(r.get("history", [])),
            "best_val_acc": at.get(val_key),
            "test_acc_at_best_val": at.get(test_key),
            "probe_curve": r.get("probe_curve"),
            "baseline": bool(r.get("baseline")),
            "config": r.get("config", {}),
        }

    rows = sorted((row(r) for r in recs), key=lambda x: -(x["best_val_acc"] if x["best_val_acc"] is not None else -1))
    finished = [x for x in rows if x["status"] == FINISHED]
    best = finished[0] if finished else None
    baseline = next((x for x in rows if x["baseline"]), None)
    teacher = (meta.get("teacher") or {}).get("arch")
    return {
        "study": study_dir.name,
        "status": state.get("status", "running"),
        "counts": {s: sum(x["status"] == s for x in rows) for s in (FINISHED, PRUNED, FAILED, "running")},
        "metric": f"{val_key} (max); {test_key} reported at the selected epoch",
        "best": best,
        "baseline": baseline,
        "gain_over_baseline": (
            best["best_val_acc"] - baseline["best_val_acc"]
            if best and baseline and baseline["best_val_acc"] is not None
            else None
        ),
        "top": rows[:top_k],
        "anchor": anchor_row((meta.get("data") or {}).get("dataset", ""), teacher, meta.get("student", "")),
        "teacher": state.get("teacher"),
        "ablations": ablation_tables(rows, (meta.get("search") or {}).get("space") or {}),
    }


def ablation_tables(rows: list[dict[str, Any]], space: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Section 3.3 comparisons: for each categorical searched parameter, one row per choice (trials,
    finished, best and mean of the selection metric over finished trials, test at the best one)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for name, spec in space.items():
        if spec.get("type") != "categorical":
            continue
        table = []
        for choice in spec.get("choices", []):
            arm = [x for x in rows if x["config"].get(name) == choice]
            done = [x for x in arm if x["status"] == FINISHED and x["best_val_acc"] is not None]
            best = max(done, key=lambda x: x["best_val_acc"]) if done else None
            table.append(
                {
                    "choice": choice,
                    "trials": len(arm),
                    "finished": len(done),
                    "best": best["best_val_acc"] if best else None,
                    "mean": sum(x["best_val_acc"] for x in done) / len(done) if done else None,
                    "test_at_best": best["test_acc_at_best_val"] if best else None,
                }
            )
        out[name] = table
    return out


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "-" if v is None else str(v)


def to_markdown(s: dict[str, Any]) -> str:
    lines = [f"# Study {s['study']} ({s['status']})", ""]
    lines.append("trials: " + ", ".join(f"{k} {v}" for k, v in s["counts"].items()) + f"; metric: {s['metric']}")
    for label in ("best", "baseline"):
        x = s[label]
        if x:
            cfg = ", ".join(f"{k}={_fmt(v)}" for k, v in sorted(x["config"].items()))
            lines.append(
                f"\n**{label}** {x['trial']}: val {_fmt(x['best_val_acc'])}, test {_fmt(x['test_acc_at_best_val'])}"
                f" ({x['status']}, {x['epochs']} epochs): {cfg}"
            )
    if s["gain_over_baseline"] is not None:
        lines.append(f"\nbest - baseline (val): {s['gain_over_baseline']:+.2f} points")
    if s["anchor"]:
        a = s["anchor"]
        lines.append(
            f"\npublished ({a['source']}): teacher {a['teacher_acc']}, student CE {a['student_ce_acc']}, KD {a['kd']},"
            f" CRD {a['crd']}, CRD+KD {a['crd_kd']}, CKTF {a['cktf']}, CKTF+KD {a['cktf_kd']}"
        )
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
    lines += ["", "| trial | status | epochs | val | test | " + " | ".join(keys) + " |"]
    lines.append("|" + "---|" * (5 + len(keys)))
    for x in s["top"]:
        cells = [x["trial"] + (" (baseline)" if x["baseline"] else ""), x["status"], x["epochs"]]
        cells += [_fmt(x["best_val_acc"]), _fmt(x["test_acc_at_best_val"])]
        cells += [_fmt(x["config"].get(k)) for k in keys]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def optuna_study(study_dir: Path):
    """An in-memory Optuna study rebuilt from the index (for importances and plots)."""
    import optuna

    from .export import metric_keys
    from .space import parse_space

    val_key, _ = metric_keys(study_dir)
    meta = _study_meta(study_dir)
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
    study = optuna.create_study(direction="maximize")
    for r in TrialIndex(study_dir).all():
        params = {k: v for k, v in r.get("config", {}).items() if k in dists}
        if set(params) != set(dists) or r.get("best_val_acc") is None:
            continue
        state = {FINISHED: "COMPLETE", PRUNED: "PRUNED"}.get(r.get("status"))
        if state is None:
            continue
        inter = {int(h["epoch"]) + 1: h[val_key] for h in r.get("history", []) if val_key in h}
        study.add_trial(
            optuna.trial.create_trial(
                params=params,
                distributions={k: dists[k] for k in params},
                value=r["history"][-1].get(val_key) if state == "COMPLETE" else None,
                state=getattr(optuna.trial.TrialState, state),
                intermediate_values=inter,
            )
        )
    return study


def write_plots(study_dir: Path, out: Path) -> list[str]:
    import matplotlib
    import optuna

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .export import metric_keys

    val_key, _ = metric_keys(study_dir)
    written = []
    recs = TrialIndex(study_dir).all()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in recs:
        hist = [h for h in r.get("history", []) if val_key in h]
        if not hist:
            continue
        style = "-" if r.get("status") == FINISHED else "--"
        label = r["trial_id"] + (" baseline" if r.get("baseline") else "")
        ax.plot([h["epoch"] + 1 for h in hist], [h[val_key] for h in hist], style, marker=".", label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"{val_key} (%)")
    ax.set_title(f"{study_dir.name}: validation accuracy per trial (dashed: pruned)")
    if len(recs) <= 16:
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out / "metric_vs_epoch.png", dpi=110)
    plt.close(fig)
    written.append("metric_vs_epoch.png")

    import optuna.visualization.matplotlib as ovm

    study = optuna_study(study_dir)
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


def write_report(study_dir: str | Path, cfg: Any = None, top_k: int = 10) -> Path:
    """Write the report folder and return it."""
    study_dir = Path(study_dir)
    out = study_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    s = summarize(study_dir, top_k)
    (out / "summary.json").write_text(json.dumps(s, indent=1, default=str))
    (out / "summary.md").write_text(to_markdown(s))
    s["plots"] = write_plots(study_dir, out)
    (out / "summary.json").write_text(json.dumps(s, indent=1, default=str))
    return out
