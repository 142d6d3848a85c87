"""The campaign's table as files: ``table.md``, ``table.csv`` (one line per cell), ``comparisons.csv`` (one line
per row marker), ``table.tex`` (booktabs), ``table.json`` and ``table.html`` (one self-contained page in the study
report's style, :mod:`cktf.tune.results.html`)."""

from __future__ import annotations

import csv
import html
import io
import json
from pathlib import Path

from ..tune.results.html import STYLE
from .table import Cell, Table, table_dict


def _num(v: float | None, d: int, signed: bool = False) -> str:
    if v is None:
        return "—"
    return f"{v:+.{d}f}" if signed else f"{v:.{d}f}"


def cell_text(c: Cell | None, d: int) -> tuple[str, str]:
    """``("73.41 ± 0.22 (n=2)", "paper 73.33, Δ +0.08")`` (the second part empty without a published number)."""
    if c is None:
        return "", ""
    if c.spread is None:
        main = "—" + (f" ({c.failed} failed)" if c.failed else "")
    else:
        main = f"{c.spread.mean:.{d}f} ± {c.spread.std:.{d}f} (n={c.spread.n})"
        if c.failed:
            main += f", {c.failed} failed"
    ref = f"paper {c.published:.{d}f}, Δ {_num(c.diff, d, True)}" if c.published is not None else ""
    return main, ref


def teacher_text(t: Table, i: int) -> tuple[str, str]:
    r, d = t.pairs[i], t.decimals
    main = f"{r.teacher} {_num(r.teacher_score, d)}" if r.teacher else "—"
    ref = ""
    if r.teacher_published is not None:
        diff = r.teacher_score - r.teacher_published if r.teacher_score is not None else None
        ref = f"paper {r.teacher_published:.{d}f}, Δ {_num(diff, d, True)}"
    return main, ref


def _markers(t: Table, pair: str) -> list[str]:
    out = []
    for c in t.comparisons:
        if c.pair != pair:
            continue
        if c.diff is None:
            out.append(f"{c.mark} {c.verdict}" + (f" (vs {c.baseline})" if c.baseline else ""))
        else:
            out.append(f"{c.mark} {c.diff.mean:+.{t.decimals}f} vs {c.baseline} (p={c.diff.p_value:.2g}, n={c.diff.n})")
    return out


def grid(t: Table, joiner: str = " · ") -> tuple[list[str], list[list[str]]]:
    """The table's header and rows as text (rows are pairs or methods, per ``table.rows``)."""

    def join(parts: tuple[str, str]) -> str:
        return joiner.join(p for p in parts if p)

    if t.rows == "methods":
        head = ["method", *[f"{r.name} ({r.dataset})" for r in t.pairs]]
        body = [["teacher", *[join(teacher_text(t, i)) for i in range(len(t.pairs))]]]
        for label in t.columns:
            body.append([label, *[join(cell_text(t.cell(r.name, label), t.decimals)) for r in t.pairs]])
        return head, body
    head = ["pair", "dataset", "teacher", *t.columns, *t.compare_heads]
    body = []
    for i, r in enumerate(t.pairs):
        body.append(
            [
                r.name,
                r.dataset,
                join(teacher_text(t, i)),
                *[join(cell_text(t.cell(r.name, label), t.decimals)) for label in t.columns],
                *_markers(t, r.name),
            ]
        )
    return head, body


def to_markdown(t: Table) -> str:
    head, body = grid(t)
    esc = lambda s: s.replace("|", "\\|")  # noqa: E731
    lines = [f"# Campaign {t.campaign} ({t.status})", ""]
    lines.append("| " + " | ".join(esc(h) for h in head) + " |")
    lines.append("|" + "|".join("---" for _ in head) + "|")
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in body]
    if t.comparisons:
        lines += ["", "## Does it beat the best baseline?", ""]
        lines += [f"- {c.pair}: {c.mark} {c.sentence(t.decimals)}" for c in t.comparisons]
    lines += ["", "## Notes", ""] + [f"- {n}" for n in t.notes]
    return "\n".join(lines) + "\n"


def to_csv(t: Table) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(
        [
            "pair",
            "dataset",
            "teacher",
            "student",
            "method",
            "distiller",
            "n",
            "mean",
            "std",
            "failed",
            "missing",
            "published",
            "diff",
            "scores_by_seed",
            "tuned",
        ]
    )
    rows = {r.name: r for r in t.pairs}
    for (pair, _), c in t.cells.items():
        r = rows[pair]
        w.writerow(
            [
                pair,
                r.dataset,
                r.teacher,
                r.student,
                c.label,
                c.distiller,
                c.spread.n if c.spread else 0,
                _round(c.spread.mean if c.spread else None),
                _round(c.spread.std if c.spread else None),
                c.failed,
                c.missing,
                _round(c.published),
                _round(c.diff),
                json.dumps({str(k): v for k, v in sorted(c.scores.items())}),
                c.tuned,
            ]
        )
    return buf.getvalue()


def comparisons_csv(t: Table) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(
        ["pair", "ours", "best_baseline", "verdict", "mean_diff", "ci_low", "ci_high", "level", "p_value", "n", "test"]
    )
    for c in t.comparisons:
        d = c.diff
        w.writerow(
            [
                c.pair,
                c.ours,
                c.baseline or "",
                c.verdict,
                _round(d.mean if d else None),
                _round(d.low if d else None),
                _round(d.high if d else None),
                t.level,
                _round(d.p_value if d else None, 6),
                d.n if d else 0,
                d.test if d else "paired t-test",
            ]
        )
    return buf.getvalue()


def _round(v: float | None, nd: int = 6) -> str:
    return "" if v is None else f"{v:.{nd}f}"


_TEX = {
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "\\": r"\textbackslash{}",
}


def tex(s: str) -> str:
    return "".join(_TEX.get(ch, ch) for ch in s)


def to_latex(t: Table) -> str:
    """A booktabs tabular: per cell ``mean $\\pm$ std`` and, below it in small type, the published number and Δ."""
    d = t.decimals

    def two(parts: tuple[str, str]) -> tuple[str, str]:
        main, ref = parts
        main = main.replace("±", r"$\pm$").replace("Δ", r"$\Delta$").replace("—", "--")
        ref = ref.replace("Δ", r"$\Delta$").replace("—", "--")
        return tex_keep(main), tex_keep(ref)

    if t.rows == "methods":
        head = ["Method", *[f"{r.name} ({r.dataset})" for r in t.pairs]]
        rows = [("Teacher", [two(teacher_text(t, i)) for i in range(len(t.pairs))])]
        rows += [(label, [two(cell_text(t.cell(r.name, label), d)) for r in t.pairs]) for label in t.columns]
    else:
        head = ["Pair", "Teacher", *t.columns]
        rows = [
            (
                f"{r.name} ({r.dataset})",
                [two(teacher_text(t, i))] + [two(cell_text(t.cell(r.name, c), d)) for c in t.columns],
            )
            for i, r in enumerate(t.pairs)
        ]
    out = [
        f"% cktf campaign {t.campaign} ({t.status}), score {t.score}: mean +- std over seeds; published, delta below",
        r"\begin{tabular}{l" + "c" * (len(head) - 1) + "}",
        r"\toprule",
        " & ".join(tex(h) for h in head) + r" \\",
        r"\midrule",
    ]
    for name, cells in rows:
        out.append(tex(name) + " & " + " & ".join(c[0] for c in cells) + r" \\")
        if any(c[1] for c in cells):
            out.append(" & " + " & ".join(r"{\scriptsize " + c[1] + "}" if c[1] else "" for c in cells) + r" \\")
    out += [r"\bottomrule", r"\end{tabular}"]
    if t.comparisons:
        out.append("% " + "; ".join(f"{c.pair}: {c.sentence(d)}" for c in t.comparisons))
    return "\n".join(out) + "\n"


def tex_keep(s: str) -> str:
    """Escape text for LaTeX, keeping the math already written (``$\\pm$``, ``$\\Delta$``)."""
    parts = s.split("$")
    return "$".join(p if i % 2 else tex(p) for i, p in enumerate(parts))


def to_html(t: Table) -> str:
    head, body = grid(t, joiner="<br>")

    def cell(v: str) -> str:
        return "<br>".join(html.escape(x) for x in v.split("<br>"))

    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>cktf campaign {html.escape(t.campaign)}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>Campaign {html.escape(t.campaign)} <span class='muted'>({html.escape(t.status)})</span></h1>",
        "<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>",
        *["<tr>" + "".join(f"<td>{cell(c)}</td>" for c in row) + "</tr>" for row in body],
        "</table>",
    ]
    if t.comparisons:
        parts.append("<h2>Does it beat the best baseline?</h2><ul>")
        parts += [
            f"<li>{html.escape(c.pair)}: {html.escape(c.mark + ' ' + c.sentence(t.decimals))}</li>"
            for c in t.comparisons
        ]
        parts.append("</ul>")
    parts.append("<h2>Notes</h2><ul class='muted'>" + "".join(f"<li>{html.escape(n)}</li>" for n in t.notes) + "</ul>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_table(t: Table, folder: str | Path) -> Path:
    """Every format into ``folder``; returns it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "table.md").write_text(to_markdown(t))
    (folder / "table.csv").write_text(to_csv(t))
    (folder / "comparisons.csv").write_text(comparisons_csv(t))
    (folder / "table.tex").write_text(to_latex(t))
    (folder / "table.json").write_text(json.dumps(table_dict(t), indent=1, default=str))
    (folder / "table.html").write_text(to_html(t))
    return folder


__all__ = ["cell_text", "comparisons_csv", "to_csv", "to_html", "to_latex", "to_markdown", "write_table"]
