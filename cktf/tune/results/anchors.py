"""The published accuracies beside which studies and campaigns show their own (``accuracy-anchors.csv``, with the
source of each column in ``accuracy-sources.csv``; docs/algorithm.md §10)."""

from __future__ import annotations

import csv
from importlib import resources


def _resource_rows(name: str) -> list[dict[str, str]]:
    text = resources.files("cktf.tune").joinpath(f"resources/{name}").read_text()
    return list(csv.DictReader(text.splitlines()))


def anchor_row(dataset: str, teacher: str | None, student: str) -> dict[str, str] | None:
    """The published accuracies for this pair (``accuracy-anchors.csv``, docs/algorithm.md §10)."""
    for row in _resource_rows("accuracy-anchors.csv"):
        if row["dataset"] == dataset and row["teacher"] == teacher and row["student"] == student:
            return row
    return None


#: columns of an anchor row that are not accuracies
ANCHOR_KEYS = ("dataset", "teacher", "student", "source")


def anchor_fields() -> tuple[str, ...]:
    """The accuracy columns of ``accuracy-anchors.csv`` (its header less :data:`ANCHOR_KEYS`)."""
    header = next(iter(_resource_rows("accuracy-anchors.csv")))
    return tuple(k for k in header if k not in ANCHOR_KEYS)


def anchor_column(distiller: str) -> str | None:
    """The column holding a method's published number: its name with ``+``/``-`` as ``_`` (``crd+kd`` ->
    ``crd_kd``, ``kd-ls`` -> ``kd_ls``), or ``student_<name>_acc`` where the CSV names it so (the student trained
    alone: ``student_ce_acc``); None when the CSV has no such column."""
    name = distiller.replace("+", "_").replace("-", "_")
    fields = anchor_fields()
    return next((c for c in (name, f"student_{name}_acc") if c in fields), None)


def anchor_sources() -> dict[str, str]:
    """Where an accuracy column's numbers come from when not from its row's ``source`` (``accuracy-sources.csv``:
    the columns added from other papers than the row's, docs/algorithm.md §10)."""
    return {r["column"]: r["source"] for r in _resource_rows("accuracy-sources.csv")}


def published_groups(row: dict[str, str]) -> list[tuple[str, dict[str, str]]]:
    """The row's published numbers grouped by source, in column order: ``[(source, {column: value}), ...]``; a
    column takes its own source (:func:`anchor_sources`) or else the row's ``source``; empty cells are left out."""
    own = anchor_sources()
    groups: dict[str, dict[str, str]] = {}
    for k, v in row.items():
        if k not in ANCHOR_KEYS and v:
            groups.setdefault(own.get(k, row.get("source", "")), {})[k] = v
    return list(groups.items())


__all__ = ["ANCHOR_KEYS", "anchor_row", "anchor_sources", "published_groups"]
