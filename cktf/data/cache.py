"""Decode once, cache on disk (docs/algorithm.md §6; every split is read from its source once).

A split is stored as ``<key>.images.npy`` (uint8 NHWC), ``<key>.targets.npy`` (int64) and
``<key>.json`` (classes and the key's inputs) in the cache dir: ``cache_dir``, else
``$CKTF_CACHE_DIR``, else ``~/.cache/cktf``. Data roots are never written to (they may be read-only).

The key hashes the dataset name, the split, the resolved source path, any extra options and the
sorted list of source files with their size and ``mtime_ns``, so a changed or touched source file
is re-read. The JSON is written last and atomically; a half-written entry is never loaded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from ..io import atomic_path, atomic_write_json
from ._base import ArrayDataset

log = logging.getLogger("cktf")

FORMAT_VERSION = 2  # 2: entries carry a content checksum


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """The cache directory: the argument, else ``$CKTF_CACHE_DIR``, else ``~/.cache/cktf``."""
    if cache_dir is None:
        cache_dir = os.environ.get("CKTF_CACHE_DIR") or Path.home() / ".cache" / "cktf"
    return Path(cache_dir).expanduser()


def file_fingerprints(files: Iterable[str | Path]) -> list[tuple[str, int, int]]:
    """``(path, size, mtime_ns)`` of every file, sorted by path."""
    out = []
    for f in files:
        st = os.stat(f)
        out.append((str(f), st.st_size, st.st_mtime_ns))
    out.sort()
    return out


def split_key(
    name: str, split: str, source: str | Path, files: Iterable[str | Path], extra: dict[str, Any] | None = None
) -> str:
    """Hex key of one decoded split (see the module docstring for what it covers)."""
    source = Path(source).expanduser().resolve()
    h = hashlib.sha256()
    head = {"v": FORMAT_VERSION, "name": name, "split": split, "source": str(source), "extra": extra or {}}
    h.update(json.dumps(head, sort_keys=True).encode())
    for path, size, mtime in file_fingerprints(files):
        rel = os.path.relpath(path, source)
        h.update(f"{rel}\0{size}\0{mtime}\n".encode())
    return f"{name}-{split}-{h.hexdigest()[:20]}"


def _paths(root: Path, key: str) -> tuple[Path, Path, Path]:
    return root / f"{key}.images.npy", root / f"{key}.targets.npy", root / f"{key}.json"


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, array)


def content_digest(*arrays: np.ndarray) -> str:
    """SHA-256 of the arrays' bytes (C order), what a cache entry's JSON records and a load verifies."""
    h = hashlib.sha256()
    for a in arrays:
        h.update(memoryview(np.ascontiguousarray(a)).cast("B"))
    return h.hexdigest()


def load_cached(key: str, cache_dir: str | Path | None = None, mmap: bool = True) -> ArrayDataset | None:
    """The cached split ``key`` (images memory-mapped read-only when ``mmap``), or ``None`` on a miss.

    An entry whose JSON is unreadable or incomplete, whose arrays do not match its recorded shape, or whose content
    digest differs (the arrays were changed after they were written) is a miss, with a warning: it is rebuilt.
    """
    root = cache_root(cache_dir)
    images_p, targets_p, meta_p = _paths(root, key)
    if not meta_p.exists():
        return None
    try:
        meta = json.loads(meta_p.read_text())
        n, digest, classes = int(meta["n"]), str(meta["sha256"]), list(meta["classes"])
        images = np.load(images_p, mmap_mode="r" if mmap else None, allow_pickle=False)
        targets = np.load(targets_p, allow_pickle=False)
    except (OSError, ValueError, KeyError, TypeError) as exc:  # removed, truncated or written by an older version
        log.warning("rebuilding the cache entry %s: it is unreadable or incomplete (%s)", key, exc)
        return None
    if images.shape[0] != n or targets.shape[0] != n or list(images.shape) != list(meta.get("shape", images.shape)):
        log.warning("rebuilding the cache entry %s: its arrays do not match its record", key)
        return None
    if content_digest(images, targets) != digest:
        log.warning("rebuilding the cache entry %s: its content changed after it was written (checksum mismatch)", key)
        return None
    return ArrayDataset(images, targets.astype(np.int64, copy=False), classes)


def save_cached(key: str, ds: ArrayDataset, cache_dir: str | Path | None = None, info: dict[str, Any] | None = None):
    """Write ``ds`` under ``key`` (arrays first, JSON last, each atomically) and drop stale entries of the split."""
    root = cache_root(cache_dir)
    root.mkdir(parents=True, exist_ok=True)
    images_p, targets_p, meta_p = _paths(root, key)
    images, targets = np.ascontiguousarray(ds.images), np.ascontiguousarray(ds.targets, dtype=np.int64)
    _save_npy(images_p, images)
    _save_npy(targets_p, targets)
    meta = {"key": key, "n": len(ds), "shape": list(images.shape), "classes": list(ds.classes), **(info or {})}
    meta["sha256"] = content_digest(images, targets)
    atomic_write_json(meta_p, meta)
    _drop_stale(root, key, (info or {}).get("source"))


def _drop_stale(root: Path, key: str, source: str | None) -> None:
    """Remove older entries of the same dataset/split/source (a changed source leaves its old arrays behind)."""
    prefix = key.rsplit("-", 1)[0] + "-"
    for meta_p in root.glob(f"{prefix}*.json"):
        other = meta_p.name[: -len(".json")]
        if other == key or other.rsplit("-", 1)[0] + "-" != prefix:
            continue
        try:
            meta = json.loads(meta_p.read_text())
            if meta.get("key") != other or meta.get("source") != source:
                continue
        except (OSError, ValueError):
            continue
        for p in _paths(root, other):
            p.unlink(missing_ok=True)
        log.info("removed stale cache entry %s", other)


def cached_split(
    key: str,
    build: Callable[[], ArrayDataset],
    cache_dir: str | Path | None = None,
    info: dict[str, Any] | None = None,
) -> ArrayDataset:
    """Load split ``key`` from the cache, or ``build()`` it (decode the source), save it and return it."""
    hit = load_cached(key, cache_dir)
    if hit is not None:
        log.debug("cache hit %s", key)
        return hit
    start = time.perf_counter()
    ds = build()
    log.info("decoded %s: %d images in %.1f s", key, len(ds), time.perf_counter() - start)
    try:
        save_cached(key, ds, cache_dir, info)
    except OSError as exc:  # a read-only or full cache dir costs speed, not correctness
        log.warning("could not write the data cache at %s (%s); set CKTF_CACHE_DIR", cache_root(cache_dir), exc)
    return ds


def cached_json(name: str, compute: Callable[[], dict[str, Any]], cache_dir: str | Path | None = None) -> dict:
    """A small JSON result (e.g. channel statistics) computed once and kept in the cache dir as ``<name>.json``."""
    path = cache_root(cache_dir) / f"{name}.json"
    if path.exists():
        try:
            return json.loads(path.read_text())
        except ValueError:
            pass
    value = compute()
    try:
        atomic_write_json(path, value, indent=None)
    except OSError as exc:
        log.warning("could not write %s (%s)", path, exc)
    return value
