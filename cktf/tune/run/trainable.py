"""The Ray Tune trainable: one trial = one :func:`cktf.train.fit` run of the study's recipe (:mod:`.trial`), in the
trial's own process, or (``resources.workers > 1``) as a data-parallel job of several workers (:mod:`.parallel`).

The trial reads the data and the teacher from the object store (``tune.with_parameters``), never from disk, and
reports once per epoch (one Tune iteration = one epoch, so ASHA's ``max_t`` is the recipe's epoch count) together with
a checkpoint of the run directory. With a GPU fraction below one the trial caps its CUDA caching allocator to that
share (``torch.cuda.set_per_process_memory_fraction``; Ray's fractions are logical only, ray#41432). Actors are not
reused, so a trial ASHA stops exits and frees its GPU memory.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from ray import tune

from ...registry import import_plugins
from ...train.engine import NonFiniteLossError
from ...train.runner import fit, prepare_run, resolve_device
from ..plan.schema import StudyConfig
from ..results.reader import FAILURE_KEY, FINISHED, PRUNED, TERMINAL, TrialIndex, checkpoint_filesystem
from ..results.scratch import collect_ended, remove_trial_workdir, trial_workdir
from ..results.store import StudyStore
from .shared import splits_from_shared, teacher_from_shared, zero_copy_report
from .trial import TuneReporter, epochs_done, restore_latest, trial_callbacks, trial_run_config, unreported

log = logging.getLogger(__name__)


def already_ended(store: StudyStore, trial_id: str) -> dict[str, Any] | None:
    """The trial's index record when the study's index (in the study's store, shared on a cluster) records it as
    finished or pruned: a restored study whose Ray snapshot lagged restarts such trials."""
    try:
        rec = TrialIndex(store).get(trial_id)
    except (OSError, ValueError):
        return None
    return rec if rec.get("status") in (FINISHED, PRUNED) and rec.get("history") else None


def resume_candidates(restored: Any, record: dict[str, Any]) -> list[Any]:
    """The checkpoints a starting trial may go on from: the one Ray restored, and the latest its index record names
    (its own, a ghost's it took over, or a grid point's from an earlier driver) when that is another one."""
    out = [restored] if restored is not None else []
    if record.get("checkpoint") and (restored is None or str(restored.path) != str(record["checkpoint"])):
        fs, path = checkpoint_filesystem(record)
        out.append(tune.Checkpoint(path, filesystem=fs))
    return out


def ended_trials(store: StudyStore) -> set[str]:
    """Ids of the study's trials the index records as ended (their working folders are not needed again)."""
    try:
        return {r["trial_id"] for r in TrialIndex(store).all() if r.get("status") in TERMINAL}
    except (OSError, ValueError):
        return set()


@dataclass(frozen=True)
class TrialInputs:
    """What every trial of a stage receives (once, through the object store): the study, the run's folder, and
    object references to the shared data, teacher and probe data. With ``cells`` (a campaign), each grid point names
    its one-trial study (``_cell``), and ``data`` and ``teacher`` map the point's data key and pair to references,
    so a trial fetches only its own."""

    store: StudyStore
    study: StudyConfig | None = None
    data: Any = None
    teacher: Any = None
    probe_data: Any = None
    cells: dict[str, StudyConfig] | None = None

    def refs(self, config: dict[str, Any]) -> tuple[StudyConfig, Any, Any, Any]:
        """``(study, data, teacher, probe data)`` of the trial with ``config``: object references (or values)."""
        if self.cells is None:
            return self.study, self.data, self.teacher, self.probe_data
        study = self.cells[config["_cell"]]
        teacher = self.teacher[config["_pair"]] if study.objective.needs_teacher else None
        return study, self.data[config["_data"]], teacher, None


def fetch(ref: Any) -> Any:
    """A value from the object store (zero-copy for numpy arrays), or the value itself."""
    import ray

    return ray.get(ref) if isinstance(ref, ray.ObjectRef) else ref


def run_trial(config: dict[str, Any], inputs: TrialInputs) -> None:
    """Function trainable of every stage; ``config`` holds the sampled values (flat names, e.g. ``alpha1``,
    ``optim.lr``), or a grid point ``_point`` (a confirmation run's configuration and ``_seed``; a campaign run's
    ``_key``, ``_cell``, ``_data``, ``_pair`` and ``_seed``)."""
    import torch

    from ..results.mlflow_runs import flat_config

    config = flat_config(config)
    study, data_ref, teacher_ref, probe_ref = inputs.refs(config)
    store = inputs.store
    cfg = study
    import_plugins(cfg.plugins)  # the user's own methods and models, registered in this worker too
    trial_id = tune.get_context().get_trial_id()
    key = str(config.get("_key") or trial_id)  # the index's key: the trial, or a grid point's (a campaign's run)
    ended = already_ended(store, key)
    if ended is not None:
        # report the recorded last epoch once more (Tune requires a result with the metric), train nothing
        log.info("trial %s already ended before the driver restarted; nothing to do", key)
        history = ended.get("history") or [{}]
        tune.report({**history[-1], "epochs_done": int(ended.get("iterations", len(history)))})
        return
    collect_ended(store.uri, ended_trials(store), keep=key)
    record = TrialIndex(store).get(key)
    candidates = resume_candidates(tune.get_checkpoint(), record)
    if cfg.resources.parallel:  # W workers through Ray Train; rank 0 goes on from the candidates
        from .parallel import TrialJob, run_workers

        sampled = {k: v for k, v in config.items() if not k.startswith("_")}
        refs = (data_ref, teacher_ref, probe_ref)
        run_workers(TrialJob(cfg, store.uri, key, sampled, config.get("_seed"), refs, candidates))
        return
    data, teacher = fetch(data_ref), fetch(teacher_ref)
    out = trial_workdir(store.uri, key)  # node-local, outside what Ray syncs as experiment state
    # whichever is furthest along: this node's working folder (a driver killed before it saw the last epochs), Ray's
    # restored checkpoint, or the latest the index records (Ray's snapshot can lag it)
    restore_latest(out, candidates, key)
    sampled = {k: v for k, v in config.items() if not k.startswith("_")}
    t_model, t_arch = teacher_from_shared(teacher) if teacher else (None, None)
    run_cfg = trial_run_config(cfg, sampled, str(out), teacher["path"] if teacher else None, config.get("_seed"))
    torch.set_num_threads(max(1, int(cfg.resources.cpu)))  # trials share the node's cores
    import ray

    gpu_ids = [str(g) for g in ray.get_gpu_ids()]  # the devices Ray assigned (CUDA_VISIBLE_DEVICES is set to them)
    capped = run_cfg.train.gpu_memory_share < 1 and resolve_device(run_cfg.train.device).type == "cuda"
    extra: dict[str, Any] = {
        **zero_copy_report(data),
        "cktf/node_id": ray.get_runtime_context().get_node_id(),
        "cktf/gpu_ids": ",".join(gpu_ids),
        "cktf/gpu_share": float(cfg.resources.gpu),
        "cktf/gpu_memory_capped": float(capped),
    }
    backlog = unreported(out, int(record.get("iterations", 0)))
    # > 0: this process went on from a checkpoint (its first result is the epoch after this one)
    extra["cktf/start_epoch"] = float(epochs_done(out) - len(backlog))
    prepared = prepare_run(run_cfg, splits=splits_from_shared(data), teacher=t_model, teacher_arch=t_arch)
    reporter = TuneReporter(out, extra)
    reporter.replay(backlog)
    callbacks = trial_callbacks(reporter, cfg.probe, prepared, lambda: fetch(probe_ref), run_cfg.train.epochs)
    try:
        fit(prepared, callbacks)
        remove_trial_workdir(store.uri, key)  # everything it holds was reported (a retry restores from Ray)
    except NonFiniteLossError as exc:
        # deterministic: a retry would fail the same way, so the trial ends now, reported as failed (never retried;
        # retries are for infrastructure failures)
        message = f"trial stopped: {exc} (lower optim.lr or the loss weights in search.space)"
        log.warning("trial %s: %s", key, message)
        tune.report(
            {cfg.search.metric: float("nan"), "epochs_done": epochs_done(out), FAILURE_KEY: 1.0, "cktf/error": message}
        )
        remove_trial_workdir(store.uri, key)
