"""The Ray Tune trainable: one trial = one :func:`cktf.train.fit` run of the study's recipe.

The trial reads the data and the teacher from the object store (``tune.with_parameters``), never
from disk, and reports once per epoch (one Tune iteration = one epoch, so ASHA's ``max_t`` is the
recipe's epoch count) together with a checkpoint of the run directory: ``last.pt`` (student,
heads, memory banks, optimiser, history), ``model_best.safetensors`` (the val-selected weights
so far) and ``metrics.jsonl``. A retried or resumed trial copies its last checkpoint back and
:func:`cktf.train.fit` continues from the next epoch.

With a GPU fraction below one the trial caps its CUDA caching allocator to that share
(``torch.cuda.set_per_process_memory_fraction``; Ray's fractions are logical only, ray#41432).
Actors are not reused, so a trial ASHA stops exits and frees its GPU memory.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray import tune

from ...registry import import_plugins
from ...train.callbacks import Callback
from ...train.checkpoint import has_resume_state
from ...train.config import RunConfig
from ...train.engine import NonFiniteLossError
from ...train.runner import fit, prepare_run, resolve_device
from ..plan.schema import METHOD_KEY, StudyConfig
from ..results.reader import FAILURE_KEY, FINISHED, PRUNED, TERMINAL, TrialIndex, checkpoint_filesystem
from ..results.scratch import collect_ended, remove_trial_workdir, trial_workdir
from ..results.store import StudyStore
from .shared import splits_from_shared, teacher_from_shared, zero_copy_report

log = logging.getLogger(__name__)

#: files of a run directory that make up a trial checkpoint
CHECKPOINT_FILES = ("last.pt", "model_best.safetensors", "model_last.safetensors", "metrics.jsonl", "config.json")
#: those only ever replaced whole (``os.replace``), so a hard link is a faithful snapshot; the others are appended to
REPLACED_WHOLE = frozenset({"last.pt", "model_best.safetensors", "model_last.safetensors"})


def snapshot_file(src: Path, dst: Path) -> None:
    """``dst`` = ``src`` as of now: a hard link for files written only by atomic replace (no copy of a multi-100 MB
    ``last.pt`` holding CKTF's memory banks on every epoch), else a copy."""
    if src.name in REPLACED_WHOLE:
        try:
            os.link(src, dst)
            return
        except OSError:  # another filesystem, or no hard links there
            pass
    shutil.copy2(src, dst)


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


def trial_run_config(
    cfg: StudyConfig, sampled: dict[str, Any], out_dir: str, teacher: str | None, seed: int | None = None
) -> RunConfig:
    """The trial's single-run config: the study's fixed recipe plus the sampled values.

    Sampled names are the method's fields (``alpha1``, ``fitnet.beta``, ``theta``) or ``optim.<field>`` /
    ``train.<field>``; in a study over methods, ``distiller`` names the trial's method and its fields come as
    ``<method>.<field>``. ``seed``: a confirmation run's own seed. With a confirmation stage no trial reads the test
    split: the final pick is evaluated on it once, by the driver (docs/studies.md)."""
    cfg, sampled = method_study(cfg, sampled)
    # no last.prev.pt in a trial's folder: its reported checkpoint in Ray's storage is the fallback
    params, optim, train = dict(cfg.params), {}, {"progress": False, "keep_previous_checkpoint": False}
    if seed is not None:
        train["seed"] = int(seed)
    if cfg.confirm is not None:
        train["eval_test"] = False
    if 0 < cfg.resources.gpu < 1:  # a fraction of a GPU: the run keeps to its share of the memory
        train["gpu_memory_share"] = min(float(cfg.resources.gpu), cfg.train.gpu_memory_share)
    for key, value in sampled.items():
        section, _, name = key.partition(".")
        if section == "optim":
            optim[name] = value
        elif section == "train":
            train[name] = value
        else:
            params[key] = value
    return RunConfig(
        student=cfg.student,
        student_weights=cfg.student_weights,
        distiller=cfg.distiller,
        distill_params=params,
        teacher_checkpoint=teacher,
        data=cfg.data,
        optim=cfg.optim.replace(**optim),
        train=cfg.train.replace(**train),
        out_dir=out_dir,
    )


def method_study(cfg: StudyConfig, sampled: dict[str, Any]) -> tuple[StudyConfig, dict[str, Any]]:
    """The single-method study and sampled values of a trial: the study itself, or, in a study over methods, the
    study of the trial's method (``sampled["distiller"]``) with its ``<method>.`` prefixes taken off."""
    if not cfg.methods:
        return cfg, sampled
    method = str(sampled[METHOD_KEY])
    prefix = f"{method}."
    own = {k[len(prefix) :]: v for k, v in sampled.items() if k.startswith(prefix)}
    own.update({k: v for k, v in sampled.items() if k.partition(".")[0] in ("optim", "train")})
    return cfg.study_for(method), own


def epochs_done(run_dir: Path) -> int:
    """Epochs a run directory has completed (its ``metrics.jsonl`` lines; 0 without a resume checkpoint)."""
    if not has_resume_state(run_dir) or not (run_dir / "metrics.jsonl").exists():
        return 0
    return sum(1 for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip())


class ProbeCallback(Callback):
    """Transfer trials: probe a frozen copy of the student on the target's labeled data (Section 3.2).

    A quick probe (cached features, ``quick_epochs``) every ``every`` epochs gives ASHA its metric; the
    last epoch runs the full probe recipe and adds its per-epoch curve (``probe/curve``, JSON) so the
    driver logs it to MLflow (the paper's Fig. 2). Metrics go into the epoch's dict before it is reported.
    """

    def __init__(self, student, splits, spec, epochs: int, device):
        self.student, self.splits, self.spec, self.epochs, self.device = student, splits, spec, epochs, device

    def on_epoch_end(self, epoch: int, metrics: dict[str, Any]) -> None:
        import copy
        import json

        from ...transfer import linear_probe

        last = epoch == self.epochs - 1
        if not last and (not self.spec.every or (epoch + 1) % self.spec.every):
            return
        recipe = self.spec.recipe
        if not last:
            recipe = recipe.replace(epochs=self.spec.quick_epochs, augment=False, milestones=())
        backbone = copy.deepcopy(self.student)  # the live student keeps training; the probe freezes a copy
        _, summary = linear_probe(backbone, self.splits, recipe, self.device)
        metrics["probe_val_acc"] = summary["val_acc"] if summary["val_acc"] is not None else summary["test_acc"]
        metrics["probe_test_acc"] = summary["test_acc"]
        metrics["probe_test_acc_max_over_epochs"] = summary["test_acc_max_over_epochs"]
        metrics["probe_epochs"] = float(recipe.epochs)
        if last:
            metrics["probe/curve"] = json.dumps(summary["history"])


class TuneReporter(Callback):
    """Reports each epoch's metrics to Tune with the run directory as the checkpoint, once the checkpoint is complete
    on disk (from the checkpoint writer's thread: training goes on while Ray persists it and the driver answers)."""

    def __init__(self, out_dir: Path, extra: dict[str, float]):
        self.out_dir, self.extra = out_dir, extra

    def on_checkpoint(self, epoch: int, metrics: dict[str, float]) -> None:
        self.report(epoch, metrics)

    def report(self, epoch: int, metrics: dict[str, Any], checkpoint: bool = True) -> None:
        """One epoch's result (with the run directory as its checkpoint unless ``checkpoint`` is false)."""
        result: dict[str, Any] = {
            k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        if "probe/curve" in metrics:
            result["probe/curve"] = metrics["probe/curve"]
        result["epochs_done"] = epoch + 1  # ASHA's time axis: epochs, not Tune's per-process report count
        result.update(self.extra)
        if not checkpoint:
            tune.report(result)
            return
        with tempfile.TemporaryDirectory(prefix="cktf-ckpt-") as tmp:
            for name in CHECKPOINT_FILES:
                src = self.out_dir / name
                if src.exists():
                    snapshot_file(src, Path(tmp) / name)
            tune.report(result, checkpoint=tune.Checkpoint.from_directory(tmp))

    def replay(self, rows: list[dict[str, Any]]) -> None:
        """Epochs this node trained that no driver saw (it was stopped before they were reported): reported now, in
        order, the last with the checkpoint, so the index and the scheduler see every epoch once."""
        for i, row in enumerate(rows):
            self.report(int(row["epoch"]), row, checkpoint=i == len(rows) - 1)


def unreported(run_dir: Path, reported: int) -> list[dict[str, Any]]:
    """The epochs of ``run_dir`` (its ``metrics.jsonl``, covered by its resume state) after the first ``reported``."""
    import json

    done = epochs_done(run_dir)
    if done <= reported:
        return []
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return rows[reported:done]


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

    def resolve(self, config: dict[str, Any]) -> tuple[StudyConfig, dict[str, Any], dict[str, Any] | None, Any]:
        """``(study, data, teacher, probe data)`` of the trial with ``config``, fetched from the object store."""
        import ray

        def get(ref: Any) -> Any:
            return ray.get(ref) if isinstance(ref, ray.ObjectRef) else ref

        if self.cells is None:
            return self.study, get(self.data), get(self.teacher), get(self.probe_data)
        study = self.cells[config["_cell"]]
        teacher = get(self.teacher[config["_pair"]]) if study.objective.needs_teacher else None
        return study, get(self.data[config["_data"]]), teacher, None


def run_trial(config: dict[str, Any], inputs: TrialInputs) -> None:
    """Function trainable of every stage; ``config`` holds the sampled values (flat names, e.g. ``alpha1``,
    ``optim.lr``), or a grid point ``_point`` (a confirmation run's configuration and ``_seed``; a campaign run's
    ``_key``, ``_cell``, ``_data``, ``_pair`` and ``_seed``)."""
    import torch

    from ..results.mlflow_runs import flat_config

    config = flat_config(config)
    study, data, teacher, probe_data = inputs.resolve(config)
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
    out = trial_workdir(store.uri, key)  # node-local, outside what Ray syncs as experiment state
    collect_ended(store.uri, ended_trials(store), keep=key)
    record = TrialIndex(store).get(key)
    for ckpt in resume_candidates(tune.get_checkpoint(), record):
        try:
            with ckpt.as_directory() as d:
                # whichever is furthest along: this node's working folder (a driver killed before it saw the last
                # epochs), Ray's restored checkpoint, or the latest the index records (Ray's snapshot can lag it)
                if epochs_done(Path(d)) > epochs_done(out):
                    for name in CHECKPOINT_FILES:
                        if (Path(d) / name).exists():
                            shutil.copy2(Path(d) / name, out / name)
        except (OSError, ValueError) as exc:  # gone (cleaned up): the next candidate, or from scratch
            log.warning("trial %s: a checkpoint is unreadable (%s)", key, exc)
    if epochs_done(out):
        log.info("trial %s resumes after epoch %d", key, epochs_done(out))
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
    callbacks: list[Callback] = [reporter]
    if cfg.probe is not None:
        probe = ProbeCallback(
            prepared.distiller.student, splits_from_shared(probe_data), cfg.probe, run_cfg.train.epochs, prepared.device
        )
        callbacks.insert(0, probe)
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
