"""A study's folder on any filesystem: a local path, a shared mount, or object storage (``s3://``, ``gs://``).

Every state store of a study (state, trial index, ASHA rungs, teacher, report, best student) is a file under one
folder, read and written only through :class:`StudyStore` (pyarrow's filesystem layer), so nothing assumes a local
path. Writes are atomic: a local file is written beside its target and renamed into place; an object store's PUT
is atomic by itself.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from ...io import atomic_write_bytes


def is_uri(path: str | os.PathLike) -> bool:
    return "://" in str(path)


class StudyStore:
    """The folder ``uri`` (``/abs/path``, ``runs/x``, ``s3://bucket/prefix/name``) with small-file helpers."""

    def __init__(self, uri: str | os.PathLike):
        import pyarrow.fs as pafs

        text = str(uri)
        if not is_uri(text):
            text = str(Path(text).expanduser().resolve())
        self.uri = text.rstrip("/")
        self.fs, self.root = pafs.FileSystem.from_uri(self.uri)
        self.local = isinstance(self.fs, pafs.LocalFileSystem)

    def __repr__(self) -> str:
        return f"StudyStore({self.uri!r})"

    def __reduce__(self):  # the filesystem object is rebuilt from the URI (Ray ships stores to workers)
        return (type(self), (self.uri,))

    # ------------------------------------------------------------------ paths
    def path(self, *parts: str) -> str:
        return "/".join([self.root, *(p.strip("/") for p in parts if p)])

    def uri_of(self, *parts: str) -> str:
        return "/".join([self.uri, *(p.strip("/") for p in parts if p)])

    def local_path(self, *parts: str) -> Path | None:
        """The file's local path when the store is local (``None`` on object storage)."""
        return Path(self.path(*parts)) if self.local else None

    # ------------------------------------------------------------------ reads
    def exists(self, *parts: str) -> bool:
        import pyarrow.fs as pafs

        return self.fs.get_file_info(self.path(*parts)).type != pafs.FileType.NotFound

    def read_bytes(self, *parts: str) -> bytes | None:
        try:
            with self.fs.open_input_stream(self.path(*parts)) as f:
                return f.read()
        except (FileNotFoundError, OSError) as exc:
            if self.exists(*parts):
                raise
            del exc
            return None

    def read_text(self, *parts: str) -> str | None:
        data = self.read_bytes(*parts)
        return None if data is None else data.decode("utf-8")

    def read_json(self, *parts: str, default: Any = None) -> Any:
        """The parsed file (``default`` when missing). A file caught mid-write by a store without atomic writes is
        read again a few times before its error stands."""
        import time

        for attempt in range(4):
            text = self.read_text(*parts)
            if text is None:
                return default
            try:
                return json.loads(text)
            except json.JSONDecodeError:
                if attempt == 3:
                    raise
                time.sleep(0.05 * (attempt + 1))

    def list(self, *parts: str, suffix: str = "") -> list[str]:
        """File names (not paths) directly under the folder ``parts``, sorted; ``[]`` when it does not exist."""
        import pyarrow.fs as pafs

        sel = pafs.FileSelector(self.path(*parts), allow_not_found=True, recursive=False)
        names = [i.base_name for i in self.fs.get_file_info(sel) if i.type == pafs.FileType.File]
        return sorted(n for n in names if n.endswith(suffix) and not n.startswith("."))

    # ------------------------------------------------------------------ writes
    def write_bytes(self, data: bytes, *parts: str) -> None:
        if self.local:
            atomic_write_bytes(self.path(*parts), data)
            return
        with self.fs.open_output_stream(self.path(*parts)) as f:
            f.write(data)

    def write_text(self, text: str, *parts: str) -> None:
        self.write_bytes(text.encode("utf-8"), *parts)

    def write_json(self, obj: Any, *parts: str, indent: int | None = 1) -> None:
        self.write_text(json.dumps(obj, indent=indent, default=str), *parts)

    def upload(self, local: str | os.PathLike, *parts: str) -> None:
        """Copy a local file (or every file of a local folder) into the store at ``parts``."""
        local = Path(local)
        if local.is_dir():
            for child in sorted(local.rglob("*")):
                if child.is_file():
                    self.upload(child, *parts, str(child.relative_to(local)))
            return
        if self.local:
            dest = Path(self.path(*parts))
            if dest.resolve() != local.resolve():
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(local, dest)
            return
        with open(local, "rb") as src, self.fs.open_output_stream(self.path(*parts)) as dst:
            shutil.copyfileobj(src, dst, 1 << 22)

    def download(self, dest: str | os.PathLike, *parts: str) -> Path:
        """Copy the store's file at ``parts`` to the local ``dest``."""
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        with self.fs.open_input_stream(self.path(*parts)) as src, open(dest, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 22)
        return dest

    def delete(self, *parts: str) -> None:
        import pyarrow.fs as pafs

        info = self.fs.get_file_info(self.path(*parts))
        if info.type == pafs.FileType.File:
            self.fs.delete_file(info.path)
        elif info.type == pafs.FileType.Directory:
            self.fs.delete_dir(info.path)
