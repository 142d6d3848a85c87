"""The stages a run is made of, each one Ray Tune experiment (docs/architecture.md, "One engine").

* :class:`SearchStage` -- a searcher (Optuna, through Ray's ``OptunaSearch``) proposes ``num_samples`` trials over a
  space and a scheduler (ASHA) stops the weaker ones early: a study's search.
* :class:`GridStage` -- a list of points, each run once to its last epoch, no scheduler: a study's confirmation
  (the best configurations over new seeds), a campaign's runs.

A stage names its Ray experiment, its trainable and what the trainable receives (object references, the run's
config), and its :class:`~cktf.tune.results.lineage.StageLineage` (how the trial callback keys, names and judges its
trials). :meth:`~.context.RunContext.fit` runs it with the run's resources, retries and checkpoint settings.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ...settings import ResourceSpec, RunSettings
from ..results.lineage import StageLineage


@dataclass(frozen=True, kw_only=True)
class Stage:
    """What every stage has (see the module docstring)."""

    name: str  # the Ray experiment's name, under the run's storage
    trainable: Callable[..., None]
    shared: Mapping[str, Any]  # the trainable's keyword arguments (tune.with_parameters)
    lineage: StageLineage
    count: int  # the trials it runs (the live view's total)
    searched: tuple[str, ...] = ()  # the searched names, shown in run names and the live view
    restorable: bool = True  # a resumed driver restores the Ray experiment (False: a new one over what is left)

    def param_space(self) -> dict[str, Any]:
        return {}

    def tune_config(self, settings: RunSettings) -> Any:
        raise NotImplementedError


@dataclass(frozen=True, kw_only=True)
class SearchStage(Stage):
    """A search: ``num_samples`` trials proposed by ``searcher``, stopped early by ``scheduler``."""

    searcher: Any
    scheduler: Any
    num_samples: int
    metric: str
    mode: str

    def tune_config(self, settings: RunSettings) -> Any:
        from ray import tune

        return tune.TuneConfig(
            metric=self.metric,
            mode=self.mode,
            search_alg=self.searcher,
            scheduler=self.scheduler,
            num_samples=self.num_samples,
            max_concurrent_trials=settings.max_concurrent or None,
            reuse_actors=False,
        )


@dataclass(frozen=True, kw_only=True)
class GridStage(Stage):
    """Each point once, to its last epoch (no scheduler); a point's ``_key`` names its trial in the index."""

    points: tuple[Mapping[str, Any], ...]
    metric: str | None = None
    mode: str | None = None
    dirname: Callable[[Any], str] | None = field(default=None)  # a trial folder's name from the trial

    def param_space(self) -> dict[str, Any]:
        from ray import tune

        return {"_point": tune.grid_search([dict(p) for p in self.points])}

    def tune_config(self, settings: RunSettings) -> Any:
        from ray import tune

        return tune.TuneConfig(
            metric=self.metric,
            mode=self.mode,
            max_concurrent_trials=settings.max_concurrent or None,
            reuse_actors=False,
            trial_dirname_creator=self.dirname,
        )


def point_dirname(trial: Any) -> str:
    """A grid trial's folder: its point's key and Ray's trial id (``pair.kd.s0_1a2b3_00001``)."""
    return f"{trial.config['_point']['_key']}_{trial.trial_id}"


def trial_resources(spec: ResourceSpec) -> dict[str, float]:
    """What Ray reserves for one trial's own process (its workers, if several, reserve theirs: ResourceSpec.trial)."""
    return spec.trial()


def capacity_problem(spec: ResourceSpec, nodes: list[dict[str, float]]) -> str | None:
    """Why no trial could start on ``nodes`` (each node's Ray resources), or None: a one-process trial needs one node
    with its CPUs and GPUs; a trial of W workers needs each worker's share on some node and W of them in all."""
    if not spec.parallel:
        fits = any(n.get("CPU", 0) >= spec.cpu and n.get("GPU", 0) >= spec.gpu for n in nodes)
        if fits:
            return None
        return f"a trial asks for {spec.cpu:g} CPU and {spec.gpu:g} GPU on one node; no node of the cluster has them"
    per_node = [
        int(
            min(
                n.get("CPU", 0) // spec.cpu_per_worker,
                n.get("GPU", 0) // spec.gpu_per_worker if spec.gpu_per_worker else float("inf"),
            )
        )
        for n in nodes
    ]
    if sum(per_node) >= spec.workers:
        return None
    return (
        f"a trial's {spec.workers} workers ask for {spec.cpu_per_worker:g} CPU and {spec.gpu_per_worker:g} GPU each; "
        f"the cluster holds {sum(per_node)} such workers"
    )


def run_config(settings: RunSettings, name: str, callbacks: list, view: str) -> Any:
    """Ray's run settings of one of the run's experiments."""
    from ray import tune

    return tune.RunConfig(
        name=name,
        storage_path=settings.ray_storage,
        callbacks=callbacks,
        checkpoint_config=tune.CheckpointConfig(num_to_keep=settings.keep_checkpoints),
        failure_config=tune.FailureConfig(max_failures=settings.max_failures),
        verbose=1 if view == "ray" else 0,
    )


__all__ = ["GridStage", "SearchStage", "Stage", "capacity_problem", "point_dirname", "run_config", "trial_resources"]
