"""The campaign's Ray Tune trainable: one run = one study trial (:func:`cktf.tune.run.trainable.run_trial`) of its
cell's one-trial study, with the run's seed.

Every cell's study travels once (``tune.with_parameters``); the data and the teachers are object references, one
per distinct data and per teacher, so a run fetches only its own pair's, as read-only views of the node's object
store. A run that an earlier driver had started goes on from the checkpoint its index record names: its files are
copied into the new trial's run folder, and ``run_trial`` resumes from them (it keeps whichever of that and Ray's
own checkpoint is further along).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from ray import tune

from ..tune.plan.schema import StudyConfig
from ..tune.results.reader import TrialIndex, checkpoint_filesystem
from ..tune.results.scratch import trial_workdir
from ..tune.results.store import StudyStore
from ..tune.run.trainable import CHECKPOINT_FILES, epochs_done, run_trial

log = logging.getLogger(__name__)


def seed_run_dir(out: Path, record: dict[str, Any]) -> int:
    """Copy the checkpoint ``record`` names into ``out`` when it is further along; returns its epochs."""
    fs, path = checkpoint_filesystem(record)
    ckpt = tune.Checkpoint(path, filesystem=fs)
    out.mkdir(parents=True, exist_ok=True)
    with ckpt.as_directory() as d:
        done = epochs_done(Path(d))
        if done > epochs_done(out):
            for name in CHECKPOINT_FILES:
                if (Path(d) / name).exists():
                    shutil.copy2(Path(d) / name, out / name)
    return done


def campaign_trial(
    config: dict[str, Any],
    cells: dict[str, StudyConfig] | None = None,
    store: StudyStore | None = None,
    data: dict[str, Any] | None = None,
    teachers: dict[str, Any] | None = None,
) -> None:
    """Function trainable; ``config["_point"]`` names the run (``_key``), its cell, data, pair and seed."""
    import ray

    point = config["_point"]
    study = cells[point["_cell"]]
    shared_data = ray.get(data[point["_data"]])
    teacher = ray.get(teachers[point["_pair"]]) if study.objective.needs_teacher else None
    record = TrialIndex(store).get(point["_key"])
    if tune.get_checkpoint() is None and record.get("checkpoint"):
        out = trial_workdir(store.uri, point["_key"])
        try:
            done = seed_run_dir(out, record)
            log.info("run %s goes on after epoch %d (its last checkpoint)", point["_key"], done)
        except (OSError, ValueError) as exc:  # gone (cleaned up): the run starts again, from scratch
            log.warning("run %s: its last checkpoint is unreadable (%s); it starts again", point["_key"], exc)
    run_trial(config, study=study, store=store, data=shared_data, teacher=teacher)


__all__ = ["campaign_trial", "seed_run_dir"]
