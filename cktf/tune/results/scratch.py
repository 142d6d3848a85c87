"""Where a trial's working files live while it trains: a node-local scratch folder, outside Ray's trial folder.

A trial trains into its own folder (``last.pt``, the weights, ``metrics.jsonl``) and reports a snapshot of it to Ray
at the end of each epoch; Ray copies that snapshot once into its storage (docs/architecture.md, "Where a trial's
files live"). The folder itself is not under Ray's trial directory: what lies there is synced by Ray as part of the
experiment's state, a second copy of every checkpoint, copied while the checkpoint writer replaces ``last.pt``.

``<scratch>/<study name>-<digest of the study's folder>/<trial id>``, with ``<scratch>`` from ``$CKTF_SCRATCH``
(default: the system's temporary folder, ``cktf-work``). A trial removes its folder when it ends on its own; the
driver removes the folders of trials that ended on its node (an ASHA stop ends a trial's process without warning)
and a trial starting on a node removes those of the study's trials that the index records as ended.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

ENV = "CKTF_SCRATCH"


def scratch_root() -> Path:
    """The node-local folder under which trials work (``$CKTF_SCRATCH``, else ``<tmp>/cktf-work``)."""
    return Path(os.environ.get(ENV) or Path(tempfile.gettempdir()) / "cktf-work")


def study_scratch(study_uri: str) -> Path:
    """The scratch folder of one study (or campaign) on this node."""
    name = study_uri.rstrip("/").rsplit("/", 1)[-1] or "study"
    digest = hashlib.sha1(study_uri.encode()).hexdigest()[:10]
    return scratch_root() / f"{name}-{digest}"


def trial_workdir(study_uri: str, trial_id: str) -> Path:
    """The working folder of one trial on this node (created)."""
    path = study_scratch(study_uri) / trial_id
    path.mkdir(parents=True, exist_ok=True)
    return path


def remove_trial_workdir(study_uri: str, trial_id: str) -> bool:
    """Remove a trial's working folder on this node; True if there was one."""
    path = study_scratch(study_uri) / trial_id
    if not path.exists():
        return False
    shutil.rmtree(path, ignore_errors=True)
    return True


def remove_study_scratch(study_uri: str) -> None:
    """Remove every trial folder of a study on this node (the study ended: nothing there is needed again)."""
    shutil.rmtree(study_scratch(study_uri), ignore_errors=True)


def collect_ended(study_uri: str, ended: set[str], keep: str = "") -> list[str]:
    """Remove this node's working folders of the study's trials in ``ended`` (besides ``keep``); returns their ids."""
    root = study_scratch(study_uri)
    if not root.is_dir():
        return []
    removed = []
    for child in root.iterdir():
        if child.name in ended and child.name != keep:
            shutil.rmtree(child, ignore_errors=True)
            removed.append(child.name)
    if removed:
        log.info("removed the working folders of %d ended trial(s) on this node", len(removed))
    return removed


__all__ = [
    "collect_ended",
    "remove_study_scratch",
    "remove_trial_workdir",
    "scratch_root",
    "study_scratch",
    "trial_workdir",
]
