"""What a trial's process does with its run, whether it is a one-process trial or a worker of a data-parallel one:
its single-run config from the study and the sampled values, where it goes on from, and how each epoch is reported
(to Tune, or to Ray Train, which relays rank 0's report to Tune: :mod:`.parallel`), with the transfer probe.

A report carries a checkpoint of the run directory: ``last.pt`` (student, heads, memory banks, optimiser, history),
``model_best.safetensors`` (the val-selected weights so far) and ``metrics.jsonl``. A retried or resumed trial copies
its last checkpoint back and :func:`cktf.train.fit` continues from the next epoch.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ...train.callbacks import Callback
from ...train.checkpoint import has_resume_state
from ...train.config import RunConfig
from ..plan.schema import METHOD_KEY, StudyConfig

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

    def __init__(self, out_dir: Path, extra: dict[str, Any]):
        self.out_dir, self.extra = out_dir, extra

    def on_checkpoint(self, epoch: int, metrics: dict[str, float]) -> None:
        self.report(epoch, metrics)

    def result(self, epoch: int, metrics: dict[str, Any]) -> dict[str, Any]:
        """One epoch's result as it is reported: its numbers, the probe's curve, ``epochs_done`` and the extras."""
        result: dict[str, Any] = {
            k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        if "probe/curve" in metrics:
            result["probe/curve"] = metrics["probe/curve"]
        result["epochs_done"] = epoch + 1  # ASHA's time axis: epochs, not Tune's per-process report count
        result.update(self.extra)
        return result

    def report(self, epoch: int, metrics: dict[str, Any], checkpoint: bool = True) -> None:
        """One epoch's result (with the run directory as its checkpoint unless ``checkpoint`` is false)."""
        from ray import tune

        result = self.result(epoch, metrics)
        if not checkpoint:
            tune.report(result)
            return
        with self.snapshot() as tmp:
            tune.report(result, checkpoint=tune.Checkpoint.from_directory(tmp))

    @contextlib.contextmanager
    def snapshot(self):
        """A folder holding the run directory's checkpoint files as of now (removed afterwards)."""
        with tempfile.TemporaryDirectory(prefix="cktf-ckpt-") as tmp:
            for name in CHECKPOINT_FILES:
                src = self.out_dir / name
                if src.exists():
                    snapshot_file(src, Path(tmp) / name)
            yield tmp

    def replay(self, rows: list[dict[str, Any]]) -> None:
        """Epochs this node trained that no driver saw (it was stopped before they were reported): reported now, in
        order, the last with the checkpoint, so the index and the scheduler see every epoch once."""
        for i, row in enumerate(rows):
            self.report(int(row["epoch"]), row, checkpoint=i == len(rows) - 1)


class TrainReporter(TuneReporter):
    """A worker's reports in a data-parallel trial (:mod:`.parallel`): every worker reports each epoch to Ray Train
    (which waits for all of them), rank 0 with the checkpoint; Ray Train relays rank 0's to Tune."""

    all_ranks = True  # called on every worker (cktf.train.fit)

    def __init__(self, out_dir: Path, extra: dict[str, Any], lead: bool):
        super().__init__(out_dir, extra)
        self.lead = lead

    def report(self, epoch: int, metrics: dict[str, Any], checkpoint: bool = True) -> None:
        import ray.train

        result = self.result(epoch, metrics)
        if not (checkpoint and self.lead):
            ray.train.report(result)
            return
        with self.snapshot() as tmp:
            ray.train.report(result, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def unreported(run_dir: Path, reported: int) -> list[dict[str, Any]]:
    """The epochs of ``run_dir`` (its ``metrics.jsonl``, covered by its resume state) after the first ``reported``."""
    import json

    done = epochs_done(run_dir)
    if done <= reported:
        return []
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return rows[reported:done]


def restore_latest(out: Path, candidates: list[Any], key: str) -> int:
    """Copy into ``out`` the checkpoint furthest along of ``out`` itself and ``candidates`` (Ray checkpoints: the one
    Ray restored, the latest the index records; None entries are skipped); returns the epochs ``out`` now holds."""
    for ckpt in candidates:
        if ckpt is None:
            continue
        try:
            with ckpt.as_directory() as d:
                if epochs_done(Path(d)) > epochs_done(out):
                    for name in CHECKPOINT_FILES:
                        if (Path(d) / name).exists():
                            shutil.copy2(Path(d) / name, out / name)
        except (OSError, ValueError) as exc:  # gone (cleaned up): the next candidate, or from scratch
            log.warning("trial %s: a checkpoint is unreadable (%s)", key, exc)
    if epochs_done(out):
        log.info("trial %s resumes after epoch %d", key, epochs_done(out))
    return epochs_done(out)


def trial_callbacks(reporter: Callback, probe: Any, prepared: Any, probe_data: Any, epochs: int) -> list[Callback]:
    """A trial's callbacks: its reporter, after the transfer probe when the study has one (``probe``: its spec; its
    metrics go into the epoch's report). ``probe_data``: a function giving the target's shared splits, called only
    then."""
    if probe is None:
        return [reporter]
    from .shared import splits_from_shared

    student, device = prepared.distiller.student, prepared.device
    return [ProbeCallback(student, splits_from_shared(probe_data()), probe, epochs, device), reporter]
