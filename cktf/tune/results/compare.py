"""Configurations compared over the confirmation's seeds: the study's winner against its rivals (the official
defaults, the search's best trial; in a study over methods, its method's defaults and every other method's best), and
a study over methods' ranking. Every difference is paired over the shared seeds (:meth:`.reader.StudyResults.paired`),
signed so that positive means the first is better, with its interval (:mod:`.stats`)."""

from __future__ import annotations

from typing import Any

from .index import FINISHED, METHOD_KEY
from .reader import ConfirmedConfig, StudyResults


def method_ranking(results: StudyResults, level: float = 0.95) -> list[dict[str, Any]]:
    """A study over methods: one row per method, best first by the mean of its best confirmed configuration
    over the confirmation's seeds; each with its search trials, its best single trial, its defaults' mean and
    the paired difference of the best method's configuration against its own (positive: the best is better;
    ``within_noise`` when the interval holds 0). Empty for a study of one method."""
    trials = results.trials()
    methods = list(dict.fromkeys(str(t.config[METHOD_KEY]) for t in trials if METHOD_KEY in t.config))
    if not methods:
        return []
    confs = [c for c in results.confirmation() if c.spread is not None]
    best: dict[str, ConfirmedConfig] = {}
    for c in confs:  # best mean first: each method's first is its best
        best.setdefault(str(c.config.get(METHOD_KEY)), c)
    order = sorted(methods, key=lambda m: (m not in best, confs.index(best[m]) if m in best else 0))
    if not best:  # no confirmation yet: by the best single trial
        order = list(dict.fromkeys(str(t.config[METHOD_KEY]) for t in results.ranked(FINISHED) if t.score is not None))
        order += [m for m in methods if m not in order]
    top = best.get(order[0])
    rows = []
    for m in order:
        mine = [t for t in trials if t.config.get(METHOD_KEY) == m]
        finished = [t for t in mine if t.status == FINISHED and t.score is not None]
        c = best.get(m)
        defaults = next((d for d in confs if d.baseline and d.config.get(METHOD_KEY) == m), None)
        rows.append(
            {
                "method": m,
                "trials": len(mine),
                "finished": len(finished),
                "search_best": max((t.score for t in finished), default=None)
                if results.mode == "max"
                else min((t.score for t in finished), default=None),
                "group": c.group if c else None,
                "defaults": c.baseline if c else None,
                "mean": c.spread.mean if c else None,
                "std": c.spread.std if c else None,
                "n": c.spread.n if c else 0,
                "defaults_mean": defaults.spread.mean if defaults else None,
                "config": {k.split(".", 1)[1]: v for k, v in (c.config if c else {}).items() if k != METHOD_KEY},
                "vs_best": results.paired(top, c, level) if c is not None and top not in (None, c) else None,
            }
        )
    return rows


def comparisons(results: StudyResults, level: float = 0.95) -> list[dict[str, Any]]:
    """The confirmed winner against the official defaults and against the search's best single trial (its
    configuration), whichever of them it is not: when the defaults win, they are compared with the search's
    best. In a study over methods: against its own method's defaults and the best of every other method. Each:
    the other's name, the paired difference (winner - other, positive = the winner is better)."""
    confs = [c for c in results.confirmation() if c.spread is not None]
    if len(confs) < 2:
        return []
    win, out = confs[0], []
    others = _method_rivals(confs) if METHOD_KEY in win.config else _rivals(confs)
    for other, label in others:
        if other is None or other is win:
            continue
        diff = results.paired(win, other, level)
        if diff is not None:
            out.append({"against": label, "group": other.group, "diff": diff})
    return out


def _rivals(confs: list[ConfirmedConfig]) -> list[tuple[ConfirmedConfig | None, str]]:
    base = next((c for c in confs if c.baseline), None)
    search = next((c for c in confs if not c.baseline and c.group == 1), None)  # the search's best trial
    return [(base, "the official defaults"), (search, "the search's best trial (c1)")]


def _method_rivals(confs: list[ConfirmedConfig]) -> list[tuple[ConfirmedConfig | None, str]]:
    """The winner's own method's defaults, then the best configuration of every other method."""
    method = confs[0].config.get(METHOD_KEY)
    base = next((c for c in confs if c.baseline and c.config.get(METHOD_KEY) == method), None)
    out: list[tuple[ConfirmedConfig | None, str]] = [(base, f"the official defaults of {method}")]
    seen = {method}
    for c in confs:
        m = c.config.get(METHOD_KEY)
        if m not in seen:
            seen.add(m)
            out.append((c, f"the best of {m} (c{c.group})"))
    return out


__all__ = ["comparisons", "method_ranking"]
