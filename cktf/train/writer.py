"""Epoch checkpoints written off the training thread (docs/architecture.md, "Checkpoints").

At the end of an epoch the training thread only *snapshots* the resume state: every tensor is copied into a host
buffer (pinned memory under CUDA, enqueued on the current stream with ``non_blocking``, so the copy runs behind the
next step's kernels but before any of them can change the weights; a plain memory copy on the CPU). A writer
thread then waits for the copies, writes ``last.pt`` atomically and durably (:func:`save_resume_state`), the
``model_last`` / ``model_best`` weights, appends the epoch's line to ``metrics.jsonl`` and only then calls the
callbacks' :meth:`~cktf.train.callbacks.Callback.on_checkpoint` (the Tune reporter), so a checkpoint is reported
only once it is complete.

* One write is in flight at a time: the next snapshot first waits for the previous write. Host buffers are reused
  across epochs (pinning is paid once).
* A crash or ``SIGKILL`` during a write leaves the previous ``last.pt`` (or ``last.prev.pt``) intact; resuming
  uses it (:func:`~cktf.train.checkpoint.load_resume_state`), and Tune restores only what was reported.
* An error in the writer thread is raised in the training thread at the next snapshot or at :meth:`wait`.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .checkpoint import save_resume_state, save_weights


class HostSnapshot:
    """Copies nested containers of tensors into reused host buffers (pinned for CUDA tensors)."""

    def __init__(self) -> None:
        self._buffers: dict[tuple, Tensor] = {}
        self.bytes = 0

    def take(self, tree: Any) -> tuple[Any, torch.cuda.Event | None]:
        """``(copy, event)``: ``tree`` with every tensor replaced by a host copy; ``event`` (CUDA only) completes when
        the copies have landed."""
        self.bytes = 0
        cuda = [False]
        out = self._copy(tree, (), cuda)
        event = None
        if cuda[0]:
            event = torch.cuda.Event()
            event.record()
        return out, event

    def _copy(self, obj: Any, key: tuple, cuda: list[bool]) -> Any:
        if isinstance(obj, Tensor):
            t = obj.detach()
            buf = self._buffers.get(key)
            if buf is None or buf.shape != t.shape or buf.dtype != t.dtype:
                buf = torch.empty(t.shape, dtype=t.dtype, pin_memory=t.is_cuda)
                self._buffers[key] = buf
            buf.copy_(t, non_blocking=t.is_cuda)
            cuda[0] |= t.is_cuda
            self.bytes += buf.numel() * buf.element_size()
            return buf
        if isinstance(obj, dict):
            return {k: self._copy(v, (*key, k), cuda) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return type(obj)(self._copy(v, (*key, i), cuda) for i, v in enumerate(obj))
        return obj


class CheckpointWriter:
    """Writes a run directory's epoch checkpoints, in a background thread or (``background=False``) inline.

    Args:
        run_dir: where ``last.pt``, the weights and ``metrics.jsonl`` go.
        background: write off the training thread.
        keep_previous: keep ``last.prev.pt`` beside ``last.pt`` (:func:`save_resume_state`).
    """

    def __init__(self, run_dir: str | Path, background: bool = True, keep_previous: bool = True):
        self.run_dir = Path(run_dir)
        self.background = bool(background)
        self.keep_previous = bool(keep_previous)
        self._snapshot = HostSnapshot()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self.last_snapshot_bytes = 0

    def snapshot(self, tensors: dict[str, Any]) -> tuple[dict[str, Any], torch.cuda.Event | None]:
        """Wait for the write in flight, then copy ``tensors`` (nested; the distiller and optimizer states) to host
        buffers: the part of a checkpoint the training thread pays for."""
        self.wait()
        snap, event = self._snapshot.take(tensors)
        self.last_snapshot_bytes = self._snapshot.bytes
        return snap, event

    def write(
        self,
        snapshot: tuple[dict[str, Any], torch.cuda.Event | None],
        extra: dict[str, Any],
        weights: list[tuple[str, dict[str, Any]]],
        metrics: dict[str, Any],
        after: Callable[[], None] | None = None,
    ) -> None:
        """Write one epoch's checkpoint (in the background unless ``background=False``).

        Args:
            snapshot: from :meth:`snapshot`.
            extra: plain (non-tensor) entries of the resume state (``epoch``, ``history``, ...); not copied, so
                pass values the caller will not change.
            weights: ``(file name, metadata)`` of the student weights files to write from the snapshot's
                ``distiller`` entry.
            metrics: the epoch's line of ``metrics.jsonl``.
            after: called once everything is on disk (reports the checkpoint).
        """
        snap, event = snapshot
        job = ({**snap, **extra}, event, weights, metrics, after)
        if not self.background:
            self._write(*job)
            return
        self._thread = threading.Thread(target=self._run, args=job, name="cktf-checkpoint", daemon=True)
        self._thread.start()

    def wait(self) -> None:
        """Block until the write in flight is on disk; raise its error, if any."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            err, self._error = self._error, None
            raise err

    def _run(self, *job) -> None:
        try:
            self._write(*job)
        except BaseException as exc:  # noqa: BLE001 - handed to the training thread (SystemExit: Tune stopped us)
            self._error = exc

    def _write(self, snap, event, weights, metrics, after) -> None:
        if event is not None:
            event.synchronize()
        save_resume_state(snap, self.run_dir, self.keep_previous)
        student = {k[len("student.") :]: v for k, v in snap["distiller"].items() if k.startswith("student.")}
        for name, meta in weights:
            save_weights(self.run_dir / name, student, meta)
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(metrics) + "\n")
        if after is not None:
            after()
