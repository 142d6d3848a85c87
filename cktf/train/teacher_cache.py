"""A content-addressed teacher cache: each teacher is trained once and reused by every campaign and study that asks
for the same one (docs/campaigns.md, "The teacher cache").

A teacher is addressed by a key, the SHA-256 of what decides its weights:

* ``arch`` -- the architecture;
* ``data`` -- a digest of the pixels and labels it trains and selects on (train and val splits, after subsets and the
  hold-out), so the data root's path does not matter and a changed slice is a new key;
* ``recipe`` -- the optimiser and every loop setting that changes the weights (not ``progress``, ``device``,
  ``eval_batch_size``, ...: :data:`NEUTRAL_TRAIN_FIELDS`);
* ``seed`` -- the teacher's training seed;
* ``code`` -- the package version and a hash of the sources that train it (models, data, the training loop,
  cross-entropy), so an edit of the training code gives new keys and the old entries are never served for it.

An entry is ``<root>/<key>/teacher.safetensors`` plus ``<root>/<key>/entry.json`` (written last: the key's inputs,
the weights' SHA-256 and size, the training summary). :meth:`TeacherCache.lookup` verifies an entry before serving
it: an entry whose ``entry.json`` does not parse, does not hash back to its key (written under other rules: stale),
or whose weights are missing or do not match their recorded SHA-256 (corrupt) is logged, removed and reported as a
miss, so the caller retrains it. Every training is counted in ``<root>/ledger/`` (one small file per training:
object stores cannot append), which is how "trained exactly once" is checked.

The root is a local path or an ``s3://`` / ``gs://`` URI (pyarrow's filesystem layer, as the study store). By
default it lies beside the workdir: ``<workdir>/../teachers`` (so ``runs/studies`` and ``runs/campaigns`` share
``runs/teachers``), or ``$CKTF_TEACHER_CACHE``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..io import atomic_write_bytes
from .config import OptimConfig, TrainConfig

log = logging.getLogger(__name__)

#: bump when the layout or the key's inputs change (an entry of another format is stale)
FORMAT = 1
WEIGHTS_FILE = "teacher.safetensors"
ENTRY_FILE = "entry.json"
LEDGER = "ledger"
#: ``train.*`` fields that do not change a teacher's weights (left out of the key)
NEUTRAL_TRAIN_FIELDS = frozenset(
    {
        "progress",
        "device",
        "eval_batch_size",
        "eval_test",
        "gpu_memory_share",
        "checkpoint_in_background",
        "checkpoint_banks",
        "allow_long",
        "compile",
    }
)
#: the sources whose code trains a teacher, relative to the package (a change gives new keys)
TRAINING_SOURCES = (
    "models",
    "data",
    "train/config.py",
    "train/engine.py",
    "train/optim.py",
    "train/runner.py",
    "train/checkpoint.py",
    "distillers/_base.py",
    "distillers/ce.py",
    "distillers/compose.py",
)


def default_root(workdir: str | os.PathLike) -> str:
    """``$CKTF_TEACHER_CACHE``, else the folder ``teachers`` beside ``workdir`` (a path or a URI)."""
    env = os.environ.get("CKTF_TEACHER_CACHE")
    if env:
        return env
    text = str(workdir).rstrip("/")
    if "://" in text:
        scheme, _, rest = text.partition("://")
        parent = rest.rsplit("/", 1)[0] if "/" in rest else rest
        return f"{scheme}://{parent}/teachers"
    return str(Path(text).expanduser().resolve().parent / "teachers")


@functools.cache
def code_version() -> str:
    """``<cktf version>+<12 hex>``: the package version and a hash of :data:`TRAINING_SOURCES`."""
    import cktf

    pkg = Path(cktf.__file__).parent
    h = hashlib.sha256()
    for rel in TRAINING_SOURCES:
        target = pkg / rel
        files = sorted(target.rglob("*.py")) if target.is_dir() else [target]
        for f in files:
            h.update(str(f.relative_to(pkg)).encode() + b"\0" + f.read_bytes() + b"\0")
    return f"{cktf.__version__}+{h.hexdigest()[:12]}"


def data_digest(splits: Any) -> str:
    """SHA-256 of what a teacher trains and selects on: the train and val splits' pixels and labels (a streamed
    split, which holds no pixels: its files' path, size and mtime, and its storage side)."""
    h = hashlib.sha256()
    for name in ("train", "val"):
        ds = getattr(splits, name)
        if ds is None:
            h.update(f"{name}:none".encode())
            continue
        streamed = not hasattr(ds, "images")  # a StreamDataset (cktf.data.stream): its files stand for the pixels
        if streamed:
            h.update(f"{name}:stream:{int(ds.side)}".encode())
            for path in ds.files:  # in row order: row i is file i
                st = os.stat(path)
                h.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        for a in (ds.targets,) if streamed else (ds.images, ds.targets):
            arr = np.ascontiguousarray(a)
            h.update(f"{name}:{arr.dtype}:{arr.shape}".encode())
            h.update(memoryview(arr).cast("B"))
    return h.hexdigest()


@dataclass(frozen=True)
class TeacherKey:
    """A teacher's address: ``digest`` (hex) and the inputs it hashes (``spec``, kept in the entry)."""

    digest: str
    spec: dict[str, Any]

    @property
    def short(self) -> str:
        return self.digest[:12]


def _spec_digest(spec: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()


def teacher_key(
    arch: str,
    data: str,
    optim: OptimConfig,
    train: TrainConfig,
    dataset: str = "",
    code: str | None = None,
    init: str | None = None,
) -> TeacherKey:
    """The key of a teacher ``arch`` trained with ``optim`` / ``train`` on data whose :func:`data_digest` is
    ``data`` (``dataset``: its name, for people reading the entry; ``init``: the weights it is trained from, see
    :func:`init_digest`; a teacher trained from scratch has none, so its key does not change)."""
    recipe = {f"optim.{k}": v for k, v in optim.to_dict().items()}
    skip = NEUTRAL_TRAIN_FIELDS | {"seed"}
    recipe.update({f"train.{k}": v for k, v in train.to_dict().items() if k not in skip})
    spec = {
        "format": FORMAT,
        "arch": arch,
        "data": {"digest": data, "dataset": dataset},
        "recipe": recipe,
        "seed": int(train.seed),
        "code": code or code_version(),
    }
    if init:
        spec["init"] = init
    return TeacherKey(_spec_digest(spec), spec)


def init_digest(weights: str | None) -> str | None:
    """What ``teacher.weights`` contributes to a key: a local file's SHA-256 (its path does not matter, an edited
    file is a new teacher), else the library's tag as written (``DEFAULT``, ``IMAGENET1K_V2``, ...)."""
    if not weights:
        return None
    path = Path(weights).expanduser()
    if path.is_file():
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return f"file:{h.hexdigest()}"
    return f"tag:{weights}"


def same_but_code(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Two keys' inputs that differ at most in the code version (the same teacher, trained by other code)."""
    return {k: v for k, v in a.items() if k != "code"} == {k: v for k, v in b.items() if k != "code"}


def key_for_splits(
    arch: str, splits: Any, optim: OptimConfig, train: TrainConfig, weights: str | None = None
) -> TeacherKey:
    """:func:`teacher_key` of a teacher trained on ``splits`` (a :class:`~cktf.data.Splits`), from ``weights``
    (``teacher.weights`` with ``finetune``) or from scratch."""
    init = init_digest(weights)
    return teacher_key(arch, data_digest(splits), optim, train, dataset=splits.spec.name, init=init)


@dataclass(frozen=True)
class CacheEntry:
    """A verified entry: its key, where its weights are, and what was recorded when it was trained."""

    key: str
    uri: str  # the weights' URI (or absolute path)
    record: dict[str, Any]

    @property
    def summary(self) -> dict[str, Any]:
        return self.record.get("summary", {})


class _Files:
    """The few file operations the cache needs, on a local path or an object store (pyarrow)."""

    def __init__(self, root: str):
        import pyarrow.fs as pafs

        text = str(root)
        if "://" not in text:
            text = str(Path(text).expanduser().resolve())
        self.uri = text.rstrip("/")
        self.fs, self.base = pafs.FileSystem.from_uri(self.uri)
        self.local = isinstance(self.fs, pafs.LocalFileSystem)

    def path(self, *parts: str) -> str:
        return "/".join([self.base, *parts])

    def uri_of(self, *parts: str) -> str:
        return "/".join([self.uri, *parts]) if not self.local else self.path(*parts)

    def exists(self, *parts: str) -> bool:
        import pyarrow.fs as pafs

        return self.fs.get_file_info(self.path(*parts)).type != pafs.FileType.NotFound

    def read(self, *parts: str) -> bytes | None:
        if not self.exists(*parts):
            return None
        with self.fs.open_input_stream(self.path(*parts)) as f:
            return f.read()

    def write(self, data: bytes, *parts: str) -> None:
        if self.local:
            atomic_write_bytes(self.path(*parts), data)
            return
        with self.fs.open_output_stream(self.path(*parts)) as f:
            f.write(data)

    def upload(self, local: Path, *parts: str) -> None:
        if self.local:
            dest = Path(self.path(*parts))
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
            shutil.copyfile(local, tmp)
            os.replace(tmp, dest)
            return
        with open(local, "rb") as src, self.fs.open_output_stream(self.path(*parts)) as dst:
            shutil.copyfileobj(src, dst, 1 << 22)

    def sha256(self, *parts: str) -> str:
        h = hashlib.sha256()
        with self.fs.open_input_stream(self.path(*parts)) as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)
        return h.hexdigest()

    def size(self, *parts: str) -> int:
        return int(self.fs.get_file_info(self.path(*parts)).size or 0)

    def list(self, *parts: str) -> list[str]:
        import pyarrow.fs as pafs

        sel = pafs.FileSelector(self.path(*parts), allow_not_found=True, recursive=False)
        return sorted(i.base_name for i in self.fs.get_file_info(sel) if not i.base_name.startswith("."))

    def delete_dir(self, *parts: str) -> None:
        import pyarrow.fs as pafs

        info = self.fs.get_file_info(self.path(*parts))
        if info.type == pafs.FileType.Directory:
            self.fs.delete_dir(info.path)


class TeacherCache:
    """The cache at ``root`` (a local path or a URI); see the module docstring."""

    def __init__(self, root: str | os.PathLike):
        self.files = _Files(str(root))

    @property
    def uri(self) -> str:
        return self.files.uri

    def __repr__(self) -> str:
        return f"TeacherCache({self.uri!r})"

    def __reduce__(self):
        return (type(self), (self.uri,))

    # ------------------------------------------------------------------ reading
    def lookup(self, key: TeacherKey) -> CacheEntry | None:
        """The verified entry of ``key``, or ``None`` (a miss; a stale or corrupt entry is logged and removed)."""
        d = key.digest
        raw = self.files.read(d, ENTRY_FILE)
        if raw is None:
            return None
        problem = self._verify(d, raw)
        if problem:
            log.warning(
                "teacher cache: entry %s in %s is %s; removing it, the teacher is trained again",
                key.short,
                self.uri,
                problem,
            )
            self.files.delete_dir(d)
            return None
        record = json.loads(raw)
        return CacheEntry(d, self.files.uri_of(d, WEIGHTS_FILE), record)

    def _verify(self, digest: str, raw: bytes) -> str:
        """Why the entry ``digest`` may not be served ("" when it may)."""
        try:
            record = json.loads(raw)
            spec = record["spec"]
        except (ValueError, KeyError, TypeError):
            return "corrupt (entry.json does not parse)"
        if record.get("key") != digest or _spec_digest(spec) != digest:
            return "stale (its recorded inputs do not hash to its key: written under other rules)"
        if not self.files.exists(digest, WEIGHTS_FILE):
            return "corrupt (its weights are missing)"
        actual = self.files.sha256(digest, WEIGHTS_FILE)
        if actual != record.get("sha256"):
            return f"corrupt (weights sha256 {actual[:12]} != recorded {str(record.get('sha256'))[:12]})"
        return ""

    def stored_key(self, digest: str) -> TeacherKey | None:
        """The key of the entry ``digest`` as recorded in it (``None`` without a readable entry); verified by
        :meth:`lookup` like any other."""
        raw = self.files.read(digest, ENTRY_FILE)
        try:
            return TeacherKey(digest, json.loads(raw)["spec"]) if raw is not None else None
        except (ValueError, KeyError, TypeError):
            return None

    def local_weights(self, entry: CacheEntry, scratch: str | os.PathLike | None = None) -> Path:
        """A local path of the entry's weights (downloaded into ``scratch`` from an object store)."""
        if self.files.local:
            return Path(entry.uri)
        dest = Path(scratch or tempfile.mkdtemp(prefix="cktf-teacher-")) / f"{entry.key[:12]}-{WEIGHTS_FILE}"
        data = self.files.read(entry.key, WEIGHTS_FILE)
        dest.write_bytes(data or b"")
        return dest

    def entries(self) -> list[str]:
        return [n for n in self.files.list() if n != LEDGER]

    def trainings(self, key: TeacherKey | str | None = None) -> list[dict[str, Any]]:
        """The ledger: one record per teacher trained into this cache (``key``: only that teacher's)."""
        digest = key.digest if isinstance(key, TeacherKey) else key
        out = []
        for name in self.files.list(LEDGER):
            if digest and not name.startswith(digest):
                continue
            raw = self.files.read(LEDGER, name)
            if raw:
                out.append(json.loads(raw))
        return sorted(out, key=lambda r: r.get("at", 0))

    # ------------------------------------------------------------------ writing
    def put(
        self, key: TeacherKey, weights: str | os.PathLike, summary: dict[str, Any] | None = None, by: str = ""
    ) -> CacheEntry:
        """Store a freshly trained teacher under ``key`` and count its training in the ledger. When a valid entry
        appeared meanwhile (another driver trained the same teacher), that one is kept: the first one wins."""
        weights = Path(weights)
        existing = self.lookup(key)
        self._count(key, summary or {}, by, kept=existing is None)
        if existing is not None:
            log.warning("teacher cache: %s was stored meanwhile by another driver; keeping that one", key.short)
            return existing
        d = key.digest
        self.files.upload(weights, d, WEIGHTS_FILE)
        record = {
            "format": FORMAT,
            "key": d,
            "spec": key.spec,
            "sha256": self.files.sha256(d, WEIGHTS_FILE),
            "bytes": self.files.size(d, WEIGHTS_FILE),
            "summary": {k: v for k, v in (summary or {}).items() if isinstance(v, (int, float, str)) or v is None},
            "created": time.time(),
            "by": by,
        }
        self.files.write(json.dumps(record, indent=1, default=str).encode(), d, ENTRY_FILE)  # last: the commit
        log.info("teacher cache: stored %s %s in %s", key.spec.get("arch"), key.short, self.uri)
        return CacheEntry(d, self.files.uri_of(d, WEIGHTS_FILE), record)

    def _count(self, key: TeacherKey, summary: dict[str, Any], by: str, kept: bool) -> None:
        now = time.time()
        rec = {
            "key": key.digest,
            "arch": key.spec.get("arch"),
            "at": now,
            "by": by,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "stored": kept,
            "wall_s": summary.get("wall_s"),
        }
        name = f"{key.digest}.{int(now * 1e6)}.{os.getpid()}.json"
        self.files.write(json.dumps(rec).encode(), LEDGER, name)


__all__ = [
    "CacheEntry",
    "TeacherCache",
    "TeacherKey",
    "code_version",
    "data_digest",
    "default_root",
    "init_digest",
    "key_for_splits",
    "same_but_code",
    "teacher_key",
]
