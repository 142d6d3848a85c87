"""What every long-running command shares, below the commands that use it: the run settings of a study or a campaign
(its name, where its state lives, the resources of each trial, retries, MLflow), the exit codes, and the rule that a
local Ray binds loopback only (docs/architecture.md, "One engine").

:class:`RunSettings` is the base of :class:`~cktf.tune.plan.StudyConfig` and
:class:`~cktf.campaign.schema.CampaignConfig`: the fields are declared once, and the run context
(:mod:`cktf.tune.run.context`) reads them from either.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field, PrivateAttr, model_validator

from .config import Config, as_written
from .errors import ConfigError
from .registry import import_plugins

#: exit codes of ``cktf tune`` and ``cktf campaign``: complete, a bad input (nothing ran), incomplete (resumable),
#: every trial failed
EXIT_COMPLETE, EXIT_USAGE, EXIT_INCOMPLETE, EXIT_ALL_FAILED = 0, 2, 3, 4
#: a name: a directory name (letters, digits, _ . -)
NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


def keep_ray_local() -> None:
    """Without ``RAY_ADDRESS``, a Ray this process starts binds 127.0.0.1 only (docs/security.md). Ray reads the
    variable when it is imported, so every entry point calls this first, before anything imports Ray."""
    if not os.environ.get("RAY_ADDRESS"):
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


def resume_command(command: str, path: str, sets: list[str] | None = None, data_root: str | None = None) -> str:
    """The command that continues a run, as typed (the ``--set`` values are also stored with the run)."""
    import shlex

    parts = ["cktf", command, path, "--resume"]
    for item in sets or []:
        parts += ["--set", item]
    if data_root:
        parts += ["--data-root", data_root]
    return " ".join(shlex.quote(p) for p in parts)


#: what the process of a trial of several workers reserves itself (no CPU: it only starts them and relays their
#: reports; Ray needs a bundle of some resource, so a MiB of memory)
PARALLEL_TRIAL = {"cpu": 0.0, "gpu": 0.0, "memory": float(2**20)}


class ResourceSpec(Config):
    """Per-trial resources; a GPU fraction below 1 packs trials on one GPU (each keeps to its memory share). With
    ``workers > 1`` a trial is one data-parallel run of that many workers through Ray Train, each with
    ``cpu_per_worker`` cores and ``gpu_per_worker`` GPUs, placed by Ray on one node or several
    (docs/architecture.md, "Trials of several workers")."""

    cpu: float = Field(1.0, gt=0)
    """CPU cores per trial (also its torch thread count)"""
    gpu: float = Field(0.0, ge=0)
    """GPUs per trial: a fraction in (0, 1] or a whole number"""
    workers: int = Field(1, ge=1)
    """data-parallel workers per trial (1: one process, today's trial; W > 1: DDP over W workers, NCCL on GPUs, gloo
    on CPUs; train.batch_size is the global batch, split evenly)"""
    cpu_per_worker: float = Field(1.0, gt=0)
    """CPU cores per worker (workers > 1)"""
    gpu_per_worker: float = Field(0.0, ge=0)
    """GPUs per worker (workers > 1): 0 (CPU workers, gloo) or 1 (one GPU each, NCCL)"""
    gpu_memory_gib: float | None = Field(None, gt=0)
    """memory of one of the cluster's GPUs, for the check that a trial's contrastive memory fits its share (default:
    the driver's GPU when it has one; without either the need is printed, not checked)"""

    @model_validator(mode="after")
    def _fraction(self) -> ResourceSpec:
        if self.gpu > 1 and self.gpu != int(self.gpu):
            raise ConfigError("gpu", f"must be a fraction in [0, 1] or a whole number, got {self.gpu}")
        if self.gpu_per_worker not in (0, 1):
            raise ConfigError(
                "gpu_per_worker",
                f"must be 0 or 1, got {self.gpu_per_worker:g}",
                "one GPU per worker (NCCL shares no GPU between two ranks); more GPUs: more workers",
            )
        if self.workers > 1 and self.gpu:
            raise ConfigError(
                "gpu",
                f"with workers: {self.workers}, each worker's GPUs are gpu_per_worker (gpu is a one-process trial's)",
                f"set gpu_per_worker: 1 and drop gpu (a trial then takes {self.workers} GPUs)",
            )
        return self

    @property
    def parallel(self) -> bool:
        """Whether a trial is a data-parallel run of several workers."""
        return self.workers > 1

    @property
    def device_share(self) -> float:
        """The GPU share one training process of a trial has (a worker's, or the trial's)."""
        return self.gpu_per_worker if self.parallel else self.gpu

    def trial(self) -> dict[str, float]:
        """What Ray reserves for the trial's own process: all of it, or (workers > 1) almost nothing: its workers
        reserve theirs through Ray Train."""
        if self.parallel:
            return dict(PARALLEL_TRIAL)
        return {"cpu": self.cpu, "gpu": self.gpu}

    def total(self) -> dict[str, float]:
        """What one trial takes of the cluster in all (for capacity and cost)."""
        if self.parallel:
            return {"cpu": self.workers * self.cpu_per_worker, "gpu": self.workers * self.gpu_per_worker}
        return {"cpu": self.cpu, "gpu": self.gpu}


class MlflowSpec(Config):
    """Where the lineage goes."""

    tracking_uri: str = Field("sqlite:///mlflow.db", min_length=1)
    """sqlite:///mlflow.db, or a tracking server (http://host:5000)"""
    experiment: str | None = None
    """experiment name (default: cktf-<name>, or cktf-campaign-<name> for a campaign)"""
    retry_s: float = Field(60.0, gt=0)
    """how long a call to the tracking server retries before the run goes on without it (and replays later)"""


class RunSettings(Config):
    """The fields a study and a campaign share: their name, the environment they may read, plugins, each trial's
    resources, retries, checkpoints, where their state lives and MLflow. ``workdir/name`` is the run's own folder."""

    #: the experiment's default name is this prefix and the run's name
    experiment_prefix: ClassVar[str] = "cktf-"
    #: what the run is called in messages (``study``, ``campaign``)
    kind: ClassVar[str] = "run"

    name: str = Field(pattern=NAME)
    """the name: a directory name (letters, digits, _ . -)"""
    env: list[str] = Field(default_factory=list)
    """environment variables the file may read as ${VAR} besides CKTF_* and MLFLOW_TRACKING_URI (docs/security.md)"""
    plugins: list[str] = Field(default_factory=list)
    """modules imported before the file is checked and in every trial: your own methods, models or datasets, which
    register themselves on import (e.g. my_lab.methods)"""
    resources: ResourceSpec = Field(default_factory=ResourceSpec)
    """what each trial gets"""
    max_concurrent: int = Field(0, ge=0)
    """trials at once (0: as many as the resources allow)"""
    max_failures: int = Field(2, ge=0)
    """retries of a failed trial, each from its last checkpoint (infrastructure failures)"""
    keep_checkpoints: int = Field(2, ge=1)
    """checkpoints Ray keeps per trial while it runs: the latest whole (what a retry resumes from), those before it
    with their weights and metrics only"""
    keep_trial_state: bool = False
    """keep an ended trial's resume state (last.pt: memory banks, optimiser) and every kept checkpoint in storage;
    by default an ended trial keeps its weights (best and last), metrics and config only"""
    workdir: str = "runs/studies"
    """the run's own folder is workdir/name: a local path, a shared mount, or s3:// / gs:// (state, trial index,
    teacher, report); every node of a cluster must reach it"""
    storage_path: str | None = None
    """Ray's storage (trial checkpoints): local path, shared mount, s3:// or gs:// (default: workdir/name/ray)"""
    mlflow: MlflowSpec = Field(default_factory=MlflowSpec)
    """where the lineage goes"""

    _env_sources: dict[str, str] = PrivateAttr(default_factory=dict)

    # ------------------------------------------------------------------ derived
    @property
    def folder(self) -> str:
        """The run's own folder, ``workdir/name``: an absolute local path, or a URI (``s3://bucket/studies/x``) when
        ``workdir`` is one; read and written only through :class:`~cktf.tune.results.store.StudyStore`."""
        if "://" in self.workdir:
            return self.workdir.rstrip("/") + "/" + self.name
        return str(Path(self.workdir).expanduser().resolve() / self.name)

    @property
    def ray_storage(self) -> str:
        """Ray's storage (trial checkpoints, experiment state): ``storage_path``, else the run folder's ``ray/``."""
        if self.storage_path:
            return self.storage_path if "://" in self.storage_path else str(Path(self.storage_path).resolve())
        return self.folder + "/ray"

    @property
    def experiment(self) -> str:
        return self.mlflow.experiment or f"{self.experiment_prefix}{self.name}"

    # ------------------------------------------------------------------ what may be logged
    def set_env_sources(self, sources: dict[str, str]) -> None:
        """Record which fields were read from the environment (``{dotted path: the string as written}``)."""
        self._env_sources = dict(sources)

    def logged(self) -> dict[str, Any]:
        """The file as it may be logged: every value read from the environment in its ``${VAR}`` form."""
        return as_written(self.to_dict(), self._env_sources)

    def logged_value(self, path: str, value: Any) -> Any:
        """``value`` of the field ``path`` as it may be logged (its ``${VAR}`` form when read from the environment)."""
        return self._env_sources.get(path, value)

    def logged_folder(self) -> str:
        """The run's folder as it may be logged (``${VAR}`` kept when ``workdir`` read the environment)."""
        if "workdir" in self._env_sources:
            return self._env_sources["workdir"].rstrip("/") + "/" + self.name
        return str(self.folder)

    def logged_ray_experiment(self) -> str:
        """Ray's experiment folder as it may be logged."""
        if self.storage_path:
            return self.logged_value("storage_path", self.storage_path).rstrip("/") + "/" + self.name
        return self.logged_folder() + "/ray/" + self.name

    def check_files(self) -> None:
        """The files the config names, read as far as their headers (after loading); none by default."""

    # ------------------------------------------------------------------ validation
    @model_validator(mode="before")
    @classmethod
    def _import_plugins(cls, data: Any) -> Any:
        """The plugins register their methods and models before any name of the file is looked up."""
        if isinstance(data, dict) and isinstance(data.get("plugins"), list):
            import_plugins(str(m) for m in data["plugins"])
        return data


__all__ = [
    "EXIT_ALL_FAILED",
    "EXIT_COMPLETE",
    "EXIT_INCOMPLETE",
    "EXIT_USAGE",
    "MlflowSpec",
    "NAME",
    "ResourceSpec",
    "RunSettings",
    "keep_ray_local",
    "resume_command",
]
