"""One driver per study: an exclusive lease on the study, taken before any work and renewed by a heartbeat.

``lock.json`` in the study's store holds the owner (host, pid, start time), its heartbeat and the pids of the
local Ray processes it started. A second driver refuses at once, naming the holder. A lease whose owner is a dead
process on this host (a driver killed with SIGKILL) is taken over at once, and the Ray processes that driver left
running are ended. A lease from another host whose heartbeat is older than :data:`STALE_S` is *stale*:
``--break-lock`` takes it; it is refused while the heartbeat is fresh.

On a local or shared file system the lease is created with an exclusive create (``O_EXCL``), which two drivers
cannot both win. On object storage the lease is written and read back after a settling delay; the store's own
consistency decides ties (docs/security.md).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

from ...errors import CKTFError
from ..results.store import StudyStore

log = logging.getLogger(__name__)
LOCK_FILE = "lock.json"
HEARTBEAT_S = 10.0
#: a heartbeat older than this means the owner is gone (three missed beats)
STALE_S = 3 * HEARTBEAT_S


class StudyLockedError(CKTFError):
    """Another driver holds the study."""


def _process_alive(pid: int, create_time: float | None = None) -> bool:
    try:
        import psutil

        proc = psutil.Process(pid)
        return create_time is None or abs(proc.create_time() - create_time) < 1.0
    except Exception:  # no such process, or no permission to see it: not ours to count on
        return False


@dataclass
class StudyLock:
    """The lease of one driver on one study (a context manager)."""

    store: StudyStore
    study: str

    def __post_init__(self) -> None:
        self.owner = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "create_time": _own_create_time(),
            "started": time.time(),
            "heartbeat": time.time(),
            "ray_pids": [],
        }
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._held = False
        self._track = False
        self._made: list = []

    # ------------------------------------------------------------------ state of a lease
    def read(self) -> dict[str, Any] | None:
        try:
            return self.store.read_json(LOCK_FILE)
        except ValueError:  # a half-written lease on a store without atomic writes: treat as present
            return {"host": "?", "pid": -1, "heartbeat": time.time(), "started": time.time()}

    @staticmethod
    def dead_owner(lease: dict[str, Any]) -> bool:
        """The owner ran on this host and its process is gone."""
        if lease.get("host") != socket.gethostname():
            return False
        return not _process_alive(int(lease.get("pid", -1)), lease.get("create_time"))

    @staticmethod
    def stale(lease: dict[str, Any]) -> bool:
        return time.time() - float(lease.get("heartbeat", 0)) > STALE_S

    def describe(self, lease: dict[str, Any]) -> str:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(lease.get("started", 0))))
        beat = time.time() - float(lease.get("heartbeat", 0))
        return f"host {lease.get('host')}, pid {lease.get('pid')}, started {started}, last heartbeat {beat:.0f} s ago"

    # ------------------------------------------------------------------ acquire / release
    def acquire(self, break_lock: bool = False) -> StudyLock:
        lease = self.read()
        if lease is not None:
            if self.dead_owner(lease):
                end_processes(lease.get("ray_pids", []))
                log.warning("took over study %s from a driver that is gone (%s)", self.study, self.describe(lease))
            elif not self.stale(lease):
                raise StudyLockedError(
                    f"study {self.study!r} is being run by another driver ({self.describe(lease)}); one driver per "
                    f"study (fix: wait for it to end; a lock whose heartbeat is older than {STALE_S:.0f} s can be "
                    "broken with --break-lock)"
                )
            elif not break_lock:
                raise StudyLockedError(
                    f"study {self.study!r} has a stale lock ({self.describe(lease)}): its driver stopped beating "
                    "(fix: if that driver is gone, pass --break-lock to take the study over)"
                )
            else:
                log.warning("broke the stale lock of study %s (%s)", self.study, self.describe(lease))
            self.store.delete(LOCK_FILE)
        if not self._create():
            theirs = self.read() or {}
            raise StudyLockedError(
                f"study {self.study!r} was just locked by another driver ({self.describe(theirs)}) (fix: run one "
                "driver per study)"
            )
        self._held = True
        self._thread = threading.Thread(target=self._beat, name="cktf-lock-heartbeat", daemon=True)
        self._thread.start()
        return self

    def _create(self) -> bool:
        if self.store.local:
            path = self.store.local_path(LOCK_FILE)
            self._made = [d for d in (path.parent, *path.parent.parents) if not d.exists()]
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "w") as f:
                json.dump(self.owner, f)
            return True
        if self.store.exists(LOCK_FILE):
            return False
        self.store.write_json(self.owner, LOCK_FILE)
        time.sleep(1.0)  # let a concurrent writer land, then see whose lease stands
        lease = self.read() or {}
        return lease.get("pid") == self.owner["pid"] and lease.get("started") == self.owner["started"]

    def track_ray_processes(self) -> None:
        """Remember the local Ray processes this driver started (refreshed at every heartbeat: trial workers come
        and go), so that a later driver can end them if this one dies."""
        self._track = True
        self._write()

    def _write(self) -> None:
        if self._held:
            if self._track:
                self.owner["ray_pids"] = [list(p) for p in local_ray_processes()]
            self.owner["heartbeat"] = time.time()
            self.store.write_json(self.owner, LOCK_FILE)

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                self._write()
            except OSError as exc:  # a store hiccup: the next beat tries again
                log.warning("lock heartbeat failed: %s", exc)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._held:
            self._held = False
            lease = self.read() or {}
            if lease.get("pid") == self.owner["pid"]:
                self.store.delete(LOCK_FILE)
            for d in self._made:  # folders made only to hold the lock (a study refused before it wrote anything)
                try:
                    d.rmdir()
                except OSError:  # not empty: the study wrote there
                    break

    def __enter__(self) -> StudyLock:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _own_create_time() -> float | None:
    try:
        import psutil

        return psutil.Process().create_time()
    except Exception:
        return None


def local_ray_processes() -> list[tuple[int, float]]:
    """``(pid, create_time)`` of every process this driver started (the local Ray: GCS, raylet, agents, workers)."""
    import psutil

    out = []
    for child in psutil.Process().children(recursive=True):
        try:
            out.append((child.pid, child.create_time()))
        except psutil.Error:
            continue
    return out


def end_processes(pids: list[list[float]] | list[tuple[int, float]], timeout: float = 10.0) -> int:
    """SIGTERM, then SIGKILL, the recorded processes that still run with the same start time; returns how many."""
    import psutil

    procs = []
    for pid, create_time in pids:
        try:
            proc = psutil.Process(int(pid))
            if abs(proc.create_time() - float(create_time)) < 1.0:
                procs.append(proc)
        except psutil.Error:
            continue
    for proc in procs:
        try:
            proc.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass
    if procs:
        log.warning("ended %d Ray process(es) a previous driver left running", len(procs))
    return len(procs)
