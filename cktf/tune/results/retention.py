"""What a trial keeps in storage once it has ended (docs/architecture.md, "Where a trial's files live").

While a trial trains, Ray's storage holds its latest reported checkpoint (``keep_checkpoints``, 1 by default) plus
the one being written: ``last.pt`` (student, adapters, memory banks, optimiser: the resume state), the student's
weights (``model_best``/``model_last``), ``metrics.jsonl`` and ``config.json``. Once it has ended (finished, pruned,
or failed after its retries) nothing resumes it, so its stored state shrinks to what the study can still use: the
latest checkpoint's weights, metrics and config; older checkpoints and ``last.pt`` go. ``keep_trial_state: true``
keeps everything (to continue a trial by hand).

Works on any filesystem the checkpoint lies on (local, ``s3://``, ``gs://``) through pyarrow, from the record's
``checkpoint`` and ``checkpoint_fs`` (:func:`~.reader.checkpoint_filesystem`).
"""

from __future__ import annotations

import logging
from typing import Any

from ...train.checkpoint import PREVIOUS_FILE, RESUME_FILE
from .reader import checkpoint_filesystem

log = logging.getLogger(__name__)

#: files of an ended trial's checkpoint that nothing reads again (the resume state)
RESUME_ONLY = (RESUME_FILE, PREVIOUS_FILE)
#: Ray's checkpoint folders are named checkpoint_000003
CHECKPOINT_PREFIX = "checkpoint_"


def strip_older(record: dict[str, Any]) -> int:
    """While a trial runs: its checkpoints before the latest keep their weights, metrics and config, not their resume
    state (``last.pt``), so the trial stores one resume state plus the one being written. Ray keeps them (its
    experiment snapshot may name one after a driver is killed: a trial restored from it goes on from the latest
    checkpoint the index records, :func:`cktf.tune.run.trainable.run_trial`). Returns the bytes freed."""
    return _shrink(record, delete_older=False)


def shrink_trial(record: dict[str, Any]) -> int:
    """Reduce an ended trial's stored checkpoints to its latest one without the resume state; returns the bytes
    freed. A record without a checkpoint, or storage that cannot be reached, frees nothing (logged, never raised:
    it is housekeeping)."""
    return _shrink(record, delete_older=True)


def _shrink(record: dict[str, Any], delete_older: bool) -> int:
    if not record.get("checkpoint"):
        return 0
    try:
        import pyarrow.fs as pafs

        fs, latest = checkpoint_filesystem(record)
        latest = latest.rstrip("/")
        trial_dir = latest.rsplit("/", 1)[0]
        freed = 0
        older = []
        for info in fs.get_file_info(pafs.FileSelector(trial_dir, allow_not_found=True)):
            name = info.path.rstrip("/").rsplit("/", 1)[-1]
            if info.type == pafs.FileType.Directory and name.startswith(CHECKPOINT_PREFIX) and info.path != latest:
                older.append(info.path)
        if delete_older:
            for path in older:
                freed += _size(fs, path)
                fs.delete_dir(path)
            targets = [latest]
        else:
            targets = older
        for folder in targets:
            for name in RESUME_ONLY:
                info = fs.get_file_info(f"{folder}/{name}")
                if info.type == pafs.FileType.File:
                    freed += int(info.size or 0)
                    fs.delete_file(info.path)
        return freed
    except Exception as exc:  # housekeeping: never fail a study for it
        log.info("trial %s: stored state not reduced (%s)", record.get("trial_id"), exc)
        return 0


def release_trial(study_uri: str, record: dict[str, Any], keep_state: bool = False) -> int:
    """An ended trial gives back what it no longer needs: its stored state shrinks (:func:`shrink_trial`, unless
    ``keep_state``) and its working folder goes when it lies on this node (the driver's; an ASHA stop ends the
    trial's process before it can remove it). Returns the stored bytes freed."""
    from .scratch import remove_trial_workdir

    if record.get("node_id") in (None, "", _this_node()):
        remove_trial_workdir(study_uri, record["trial_id"])
    return 0 if keep_state else shrink_trial(record)


def _this_node() -> str | None:
    try:
        import ray

        return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
    except Exception:  # no Ray here: only the node-less records match
        return None


def _size(fs: Any, path: str) -> int:
    import pyarrow.fs as pafs

    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    return sum(int(i.size or 0) for i in infos if i.type == pafs.FileType.File)


__all__ = ["release_trial", "shrink_trial", "strip_older"]
