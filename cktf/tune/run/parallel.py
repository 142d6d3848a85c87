"""A trial of several workers: one data-parallel run through Ray Train inside its Tune trial.

Ray's documented way to tune data-parallel jobs (Ray Train V2, "Hyperparameter Tuning with Ray Tune"): the Tune
trial's function starts a ``TorchTrainer`` of ``resources.workers`` workers and waits for it; Ray Train's
``TuneReportCallback`` relays rank 0's report of each epoch to the trial, so ASHA, Optuna, the trial index, the live
view and MLflow see one trial with one result per epoch, as for a one-process trial (docs/architecture.md, "Trials of
several workers").

Each worker (:func:`worker_loop`) fetches the shared data and the teacher from the object store (Ray keeps one copy
per node), builds the run and trains its rows of every global batch (``cktf/distributed.py``, docs/algorithm.md
§12); Ray Train has initialised the process group (NCCL on GPUs, gloo on CPUs). Rank 0 alone writes: its working
folder in its node's scratch, and each epoch's checkpoint, reported to Ray Train, which persists it under the study's
Ray storage (``<storage>/<study>-workers/<trial>/checkpoint_*``); the path reaches the trial index through the relayed
result (``checkpoint_path``). After a failure (a lost node, a worker killed) Ray Train starts the worker group again
(``max_failures``) and rank 0 goes on from Ray Train's latest checkpoint; a trial Tune starts again goes on from the
latest checkpoint the index records. Every worker calls ``ray.train.report`` once per epoch (Ray Train V2 waits for
all), rank 0 with the checkpoint.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...distributed import DistContext
from ...registry import import_plugins
from ..plan.schema import StudyConfig
from ..results.reader import FAILURE_KEY
from ..results.scratch import remove_trial_workdir, trial_workdir

log = logging.getLogger(__name__)

#: the folder (beside the trials' experiment in the Ray storage) that holds the Ray Train runs of a study's trials
WORKERS_SUFFIX = "-workers"


def checkpoint_fs_name(storage: str) -> str:
    """The filesystem type the index records for a checkpoint under ``storage`` (``checkpoint_filesystem``)."""
    scheme = str(storage).partition("://")[0] if "://" in str(storage) else ""
    return {"s3": "S3FileSystem", "gs": "GcsFileSystem"}.get(scheme, "LocalFileSystem")


@dataclass(frozen=True)
class TrialJob:
    """One data-parallel trial, as its workers receive it: the study, its store's URI, the trial's key in the index,
    its sampled values and seed (a confirmation run's), object references to the data, the teacher and the probe
    data, and the checkpoints it may go on from (Tune's restored one, the index's latest), read by rank 0."""

    study: StudyConfig
    store: str
    key: str
    sampled: dict[str, Any]
    seed: int | None
    refs: tuple[Any, Any, Any]
    resume: list[Any]


def run_workers(job: TrialJob) -> None:
    """Run the trial as a data-parallel job of ``resources.workers`` workers and wait for it."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    cfg = job.study
    r = cfg.resources
    storage = workers_storage(cfg)
    trainer = TorchTrainer(
        worker_loop,
        train_loop_config={"job": job},
        torch_config=TorchConfig(backend="nccl" if r.gpu_per_worker else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=r.workers,
            use_gpu=bool(r.gpu_per_worker),
            resources_per_worker={"CPU": r.cpu_per_worker, **({"GPU": r.gpu_per_worker} if r.gpu_per_worker else {})},
        ),
        run_config=ray.train.RunConfig(
            name=job.key,
            storage_path=storage,
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
            callbacks=[TuneReportCallback()],
        ),
    )
    trainer.fit()


def workers_storage(cfg: StudyConfig) -> str:
    """Where Ray Train keeps the study's data-parallel runs (their checkpoints): beside its trials' experiment."""
    return cfg.ray_storage.rstrip("/") + "/" + cfg.name + WORKERS_SUFFIX


def worker_loop(c: dict[str, Any]) -> None:
    """One worker of a data-parallel trial (module docstring)."""
    import ray
    import ray.train
    import torch

    from ...train.engine import NonFiniteLossError
    from ...train.runner import fit, prepare_run
    from .shared import splits_from_shared, teacher_from_shared
    from .trial import TrainReporter, epochs_done, restore_latest, trial_callbacks, trial_run_config

    job: TrialJob = c["job"]
    cfg = job.study
    import_plugins(cfg.plugins)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    lead = rank == 0
    torch.set_num_threads(max(1, int(cfg.resources.cpu_per_worker)))
    data_ref, teacher_ref, probe_ref = job.refs
    data = ray.get(data_ref)  # one copy per node in the object store, zero-copy here
    teacher = ray.get(teacher_ref) if teacher_ref is not None else None
    key, store_uri = job.key, job.store
    if lead:
        out = trial_workdir(store_uri, key)
        for name in list(out.iterdir()):  # only what was reported counts: the candidates below hold it
            if name.is_file():
                name.unlink()
        restore_latest(out, [ray.train.get_checkpoint(), *job.resume], key)
    else:
        out = Path(tempfile.mkdtemp(prefix="cktf-worker-"))  # never written: rank 0 alone writes
    run_cfg = trial_run_config(cfg, job.sampled, str(out), teacher["path"] if teacher else None, job.seed)
    t_model, t_arch = teacher_from_shared(teacher) if teacher else (None, None)
    prepared = prepare_run(run_cfg, splits=splits_from_shared(data), teacher=t_model, teacher_arch=t_arch)
    nodes = _worker_nodes(prepared.dist)
    extra: dict[str, Any] = {
        "cktf/node_id": ray.get_runtime_context().get_node_id(),
        "cktf/workers": float(world),
        "cktf/worker_nodes": ",".join(nodes),
        "cktf/gpu_share": float(cfg.resources.gpu_per_worker),
        "cktf/start_epoch": float(epochs_done(out)) if lead else 0.0,
        "cktf/checkpoint_fs": checkpoint_fs_name(workers_storage(cfg)),
    }
    reporter = TrainReporter(out, extra, lead)
    probe = cfg.probe if lead else None  # rank 0 probes; its report is the one relayed
    callbacks = trial_callbacks(reporter, probe, prepared, lambda: ray.get(probe_ref), run_cfg.train.epochs)
    try:
        fit(prepared, callbacks)
    except NonFiniteLossError as exc:  # every worker sees it (the check is on the global sums): reported, not retried
        message = f"trial stopped: {exc} (lower optim.lr or the loss weights in search.space)"
        if lead:
            log.warning("trial %s: %s", key, message)
        ray.train.report({cfg.search.metric: float("nan"), FAILURE_KEY: 1.0, "cktf/error": message})
    finally:
        if not lead:
            shutil.rmtree(out, ignore_errors=True)
    if lead:
        remove_trial_workdir(store_uri, key)  # everything it holds was reported


def _worker_nodes(ctx: DistContext) -> list[str]:
    """The node of every worker, in rank order (one all-gather of strings at the start)."""
    import ray
    import torch.distributed as td

    node = ray.get_runtime_context().get_node_id()
    if not ctx.active:
        return [node]
    nodes: list[Any] = [None] * ctx.world_size
    td.all_gather_object(nodes, node)
    return [str(n) for n in nodes]


__all__ = ["WORKERS_SUFFIX", "TrialJob", "checkpoint_fs_name", "run_workers", "worker_loop", "workers_storage"]
