"""Manifests: a table of ``(path, label)`` rows naming a split's images (docs/models.md, "Data").

A manifest is a CSV (``.csv``, comma-separated, with a header naming ``path`` and ``label``; other columns are
ignored), a TSV (``.tsv`` / ``.txt``, tab-separated, first column the file, second the label; a header is optional)
or a parquet file (``.parquet``, columns ``path`` and ``label``). Relative paths are taken from ``base`` (the
manifest's folder by default). Labels are class names (the classes are their sorted set) or integers (the classes
are ``"0" .. "K-1"``). A manifest may also carry a ``split`` column; :func:`read_manifest` then keeps the rows of one
split.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from ..errors import ConfigError

MANIFEST_SUFFIXES = (".csv", ".tsv", ".txt", ".parquet")


def _read_rows(path: Path) -> tuple[list[str], list[str], list[str] | None]:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        cols = set(table.column_names)
        if not {"path", "label"} <= cols:
            raise ConfigError("data.root", f"{path} needs columns path and label, has {sorted(cols)}")
        split = table.column("split").to_pylist() if "split" in cols else None
        files = [str(v) for v in table.column("path").to_pylist()]
        labels = [str(v) for v in table.column("label").to_pylist()]
        return files, labels, [str(v) for v in split] if split is not None else None
    delimiter = "," if suffix == ".csv" else "\t"
    with open(path, newline="") as fh:
        rows = [r for r in csv.reader(fh, delimiter=delimiter) if r and any(c.strip() for c in r)]
    if not rows:
        return [], [], None
    head = [c.strip().lower() for c in rows[0]]
    if "path" in head and "label" in head:
        ip, il = head.index("path"), head.index("label")
        isplit = head.index("split") if "split" in head else None
        body = rows[1:]
    elif suffix == ".csv":
        raise ConfigError("data.root", f"{path}: the CSV header must name the columns path and label, got {rows[0]}")
    else:  # a TSV without a header: file, label, anything
        ip, il, isplit, body = 0, 1, None, rows
    if any(len(r) <= max(ip, il) for r in body):
        raise ConfigError("data.root", f"{path}: a row has fewer than two columns")
    split = [r[isplit].strip() for r in body] if isplit is not None else None
    return [r[ip].strip() for r in body], [r[il].strip() for r in body], split


def read_manifest(
    path: str | Path, base: str | Path | None = None, classes: list[str] | None = None, split: str | None = None
) -> tuple[list[str], np.ndarray, list[str]]:
    """Files (absolute), int64 targets and classes of a manifest (module docstring).

    Args:
        base: folder relative paths start from (default: the manifest's folder).
        classes: the label order to use (the train split's); default: from this manifest.
        split: keep only the rows whose ``split`` column equals it (needs that column).

    Raises:
        ConfigError: on ``data.root`` for a malformed manifest, a label not among ``classes``, or a missing file.
    """
    path = Path(path).expanduser()
    files, labels, splits = _read_rows(path)
    if split is not None:
        if splits is None:
            raise ConfigError("data.root", f"{path} has no split column to pick {split!r} from")
        keep = [i for i, s in enumerate(splits) if s == split]
        files, labels = [files[i] for i in keep], [labels[i] for i in keep]
    root = Path(base).expanduser() if base is not None else path.parent
    files = [str(p if Path(p).is_absolute() else root / p) for p in files]
    if classes is None:
        if labels and all(v.lstrip("-").isdigit() for v in labels):
            classes = [str(i) for i in range(max(int(v) for v in labels) + 1)]
        else:
            classes = sorted(set(labels))
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted(set(labels) - set(index))
    if unknown:
        raise ConfigError("data.root", f"{path} has labels not among the train split's classes: {unknown[:5]}")
    missing = next((f for f in files if not Path(f).is_file()), None)
    if missing is not None:
        raise ConfigError("data.root", f"{path} names a file that does not exist: {missing}")
    return files, np.asarray([index[v] for v in labels], dtype=np.int64), list(classes)
