"""A study's summary (:func:`~.report.summarize`) as markdown: ``summary.md`` and what ``cktf report`` prints."""

from __future__ import annotations

from typing import Any

from .anchors import published_groups
from .reader import SCORE


def fmt(v: Any) -> str:
    """A value as the tables show it (four significant digits)."""
    if isinstance(v, float):
        return f"{v:.4g}"
    return "-" if v is None else str(v)


def best_line(s: dict[str, Any]) -> str:
    """The study's best, as every output gives it: its number (over its seeds after a confirmation), its test
    accuracy and its configuration."""
    b, test = s["best"], s["test_metric"]
    cfg = ", ".join(f"{k}={fmt(v)}" for k, v in sorted(b["config"].items()))
    number = f"{SCORE} {b['score']:.2f}" + (f" ± {b['std']:.2f} over {b['seeds']} seeds" if b["confirmed"] else "")
    return f"**best** {b['describe']} (its student: trial {b['trial']}): {number}, {test} {fmt(b['test'])}: {cfg}"


def to_markdown(s: dict[str, Any]) -> str:
    metric, test = s["metric"], s["test_metric"]
    lines = [f"# Study {s['study']} ({s['status']})", "", f"**{s['headline']}**", ""]
    lines.append(
        "trials: " + ", ".join(f"{k} {v}" for k, v in s["counts"].items()) + f"; {SCORE}: {s['score']['rule']} "
        f"({metric}, {s['mode']}); {test} at the selected epoch"
    )
    if s["best"]:
        lines.append("\n" + best_line(s))
    x = s["baseline"]
    if x:
        cfg = ", ".join(f"{k}={fmt(v)}" for k, v in sorted(x["config"].items()))
        dev = s.get("baseline_deviations") or {}
        note = (
            ""
            if not dev
            else " (not official: "
            + ", ".join(f"{k} {v['used']} instead of {v['official']}" for k, v in sorted(dev.items()))
            + ")"
        )
        lines.append(
            f"\n**baseline** (the official defaults{note}) {x['trial']}: {SCORE} {fmt(x['score'])} (one seed), "
            f"{test} {fmt(x['test_at_selected'])} ({x['status']}, {x['epochs']} epochs): {cfg}"
        )
    if s["gain_over_baseline"] is not None and not s.get("confirmation"):
        lines.append(f"\nsearch's best vs baseline ({SCORE}, one seed each): {s['gain_over_baseline']:+.2f}")
    if s.get("methods"):
        lines += methods_markdown(s)
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
            cells = [t["choice"], t["trials"], t["finished"], fmt(t["best"]), fmt(t["mean"]), fmt(t["test_at_best"])]
            lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    keys = sorted({k for x in s["top"] for k in x["config"]})
    lines += ["", f"| trial | status | epochs | {SCORE} | {test} | " + " | ".join(keys) + " |"]
    lines.append("|" + "---|" * (5 + len(keys)))
    for x in s["top"]:
        cells = [f"{x['name']} {x['trial']}" + (" (baseline)" if x["baseline"] else ""), x["status"], x["epochs"]]
        cells += [fmt(x["score"]), fmt(x["test_at_selected"])]
        cells += [fmt(x["config"].get(k)) for k in keys]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    if s.get("caution"):
        lines += ["", f"_{s['caution']}._"]
    return "\n".join(lines) + "\n"


def methods_markdown(s: dict[str, Any]) -> list[str]:
    """A study over methods: the methods ranked by their best confirmed configuration's mean over the seeds, each
    with the best method's paired difference against it."""
    lines = ["", f"**methods** (ranked by their best confirmed configuration; {SCORE} mean over the seeds)", ""]
    lines += [
        f"| rank | method | trials (finished) | search best | confirmed {SCORE} | defaults | best - it, 95% CI | "
        "configuration |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for i, m in enumerate(s["methods"]):
        ms = f"{m['mean']:.2f} ± {m['std']:.2f} (n={m['n']})" if m["mean"] is not None else "-"
        d = m["vs_best"]
        if i == 0:
            diff = "(best)"
        elif d is None:
            diff = "-"
        else:
            diff = f"{d['mean']:+.2f} [{d['low']:+.2f}, {d['high']:+.2f}]"
            diff += " within noise" if d["within_noise"] else ""
        conf = "defaults" if m["defaults"] else ", ".join(f"{k}={fmt(v)}" for k, v in sorted(m["config"].items()))
        cells = [i + 1, m["method"], f"{m['trials']} ({m['finished']})", fmt(m["search_best"]), ms]
        cells += [fmt(m["defaults_mean"]), diff, f"c{m['group']} {conf}" if m["group"] is not None else "-"]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return lines


def confirmation_markdown(s: dict[str, Any]) -> list[str]:
    lines = ["", f"**confirmation** (trained again from scratch over new seeds; {SCORE} = {s['score']['rule']})"]
    lines += ["", f"| config | source | {SCORE} mean ± std | n | per seed | values |", "|---|---|---|---|---|---|"]
    for c in s["confirmation"]:
        name = f"c{c['group']}" + (" (defaults)" if c["baseline"] else "")
        per = ", ".join(f"s{k}: {v:.2f}" for k, v in sorted(c["scores"].items()))
        vals = ", ".join(f"{k}={fmt(v)}" for k, v in sorted(c["config"].items()))
        ms = f"{c['mean']:.2f} ± {c['std']:.2f}" if c["mean"] is not None else "-"
        lines.append(f"| {name} | {c['source_trial'] or '-'} | {ms} | {c['n']} | {per} | {vals} |")
    for c in s.get("comparisons") or []:
        g = c["diff"]
        lines.append(
            "\n"
            f"best vs {c['against']}, paired over seeds: {g['mean']:+.2f}, {round(g['level'] * 100)}% CI "
            f"[{g['low']:+.2f}, {g['high']:+.2f}], {g['test']} p = {g['p_value']:.3g} (n = {g['n']})"
            + (": within noise" if g["within_noise"] else "")
        )
    return lines


__all__ = ["best_line", "confirmation_markdown", "fmt", "methods_markdown", "to_markdown"]
