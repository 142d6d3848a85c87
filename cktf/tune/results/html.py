"""The study report as one self-contained HTML page (plots inline as PNG data, no external assets), from the same
summary as ``summary.md`` (:func:`~.report.summarize`)."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from .anchors import published_groups
from .markdown import best_line
from .reader import SCORE

STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:1.8em;border-bottom:1px solid #ddd}
.headline{background:#f4f7fb;border-left:4px solid #3b6fb6;padding:.7em 1em}
table{border-collapse:collapse;margin:.5em 0;font-size:13px}td,th{border:1px solid #ddd;padding:3px 8px}
th{background:#fafafa}tr.best td{font-weight:600}figure{display:inline-block;margin:.5em}img{max-width:100%}
.muted{color:#666}
"""

PLOT_TITLES = {
    "metric_vs_epoch.png": "Metric against epoch per trial (x: stopped by ASHA)",
    "confirmation.png": "Confirmation over seeds (mean ± std)",
    "param_importances.png": "Parameter importances",
    "parallel_coordinate.png": "Parallel coordinates",
    "history.png": "Optimisation history",
}


def _e(v: Any) -> str:
    if isinstance(v, float):
        return html.escape(f"{v:.4g}")
    return "-" if v is None else html.escape(str(v))


def _table(head: list[str], rows: list[list[Any]], best_row: int | None = None) -> str:
    out = ["<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"]
    for i, r in enumerate(rows):
        cls = ' class="best"' if i == best_row else ""
        out.append(f"<tr{cls}>" + "".join(f"<td>{_e(c)}</td>" for c in r) + "</tr>")
    return "".join(out) + "</table>"


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    title = PLOT_TITLES.get(path.name, path.stem)
    return (
        f'<figure><img class="plot" alt="{html.escape(title)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{html.escape(title)}</figcaption></figure>"
    )


def to_html(s: dict[str, Any], folder: Path) -> str:
    test = s["test_metric"]
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>cktf study {html.escape(s['study'])}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>Study {html.escape(s['study'])} <span class='muted'>({html.escape(str(s['status']))})</span></h1>",
        f"<p class='headline' id='headline'>{html.escape(s['headline'])}</p>",
        "<p class='muted'>trials: "
        + ", ".join(f"{k} {v}" for k, v in s["counts"].items())
        + f"; {SCORE}: {html.escape(s['score']['rule'])}</p>",
    ]
    if s.get("best"):
        parts.append(f"<p id='best'>{html.escape(best_line(s).replace('**', ''))}</p>")
    if s.get("confirmation"):
        rows = []
        for c in s["confirmation"]:
            name = f"c{c['group']}" + (" (defaults)" if c["baseline"] else "")
            per = ", ".join(f"s{k}: {v:.2f}" for k, v in sorted(c["scores"].items()))
            ms = f"{c['mean']:.2f} ± {c['std']:.2f}" if c["mean"] is not None else None
            cfg = ", ".join(f"{k}={_e(v)}" for k, v in sorted(c["config"].items()))
            rows.append([name, c["source_trial"], ms, c["n"], per, cfg])
        parts += [
            "<h2>Confirmation over seeds</h2>",
            _table(["config", "source", f"{SCORE} mean ± std", "n", "per seed", "values"], rows, 0),
        ]
        for c in s.get("comparisons") or []:
            g = c["diff"]
            parts.append(
                f"<p class='comparison'>best vs {html.escape(c['against'])}, paired over seeds: {g['mean']:+.2f}, "
                f"{round(g['level'] * 100)}% CI [{g['low']:+.2f}, {g['high']:+.2f}], {html.escape(g['test'])} "
                f"p = {g['p_value']:.3g} (n = {g['n']}){': within noise' if g['within_noise'] else ''}</p>"
            )
    if s.get("anchor"):
        a = s["anchor"]
        for source, cells in published_groups(a):
            parts += [
                f"<h2>Published results ({html.escape(source)})</h2>",
                _table(
                    ["dataset", "teacher", "student", *cells],
                    [[a["dataset"], a["teacher"], a["student"], *cells.values()]],
                ),
            ]
    keys = sorted({k for x in s["top"] for k in x["config"]})
    rows = [
        [
            f"{x.get('name', '')} {x['trial']}".strip() + (" (defaults)" if x["baseline"] else ""),
            x["status"],
            x["epochs"],
            x["score"],
            x["test_at_selected"],
            *[x["config"].get(k) for k in keys],
        ]
        for x in s["top"]
    ]
    parts += ["<h2>Trials</h2>", _table(["trial", "status", "epochs", SCORE, test, *keys], rows, 0 if rows else None)]
    parts.append("<h2>Plots</h2>")
    if s.get("caution"):
        parts.append(f"<p class='muted caution'>{html.escape(s['caution'])}.</p>")
    for name in s.get("plots", []):
        if (folder / name).exists():
            parts.append(_img(folder / name))
    parts.append("</body></html>")
    return "\n".join(parts)


__all__ = ["to_html"]
