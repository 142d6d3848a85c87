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
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ray import tune

from ..train.callbacks import Callback
from ..train.engine import NonFiniteLossError
from ..train.runner import fit, prepare_run
from .shared import splits_from_shared, teacher_from_shared, zero_copy_report
from .study import study_from_dict

log = logging.getLogger("cktf")

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


def already_ended(study_dir: Path, trial_id: str) -> dict[str, Any] | None:
    """The trial's index record when the study's index (on the driver's workdir, shared on a cluster)
    records it as finished or pruned: a restored study whose Ray snapshot lagged restarts such trials."""
    import json

    path = study_dir / "trials" / f"{trial_id}.json"
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return rec if rec.get("status") in ("finished", "pruned") and rec.get("history") else None


def epochs_done(run_dir: Path) -> int:
    """Epochs a run directory has completed (its ``metrics.jsonl`` lines; 0 without ``last.pt``)."""
    if not (run_dir / "last.pt").exists() or not (run_dir / "metrics.jsonl").exists():
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
        import dataclasses
        import json

        from ..transfer import linear_probe

        last = epoch == self.epochs - 1
        if not last and (not self.spec.every or (epoch + 1) % self.spec.every):
            return
        recipe = self.spec.recipe
        if not last:
            recipe = dataclasses.replace(recipe, epochs=self.spec.quick_epochs, augment=False, milestones=())
        backbone = copy.deepcopy(self.student)  # the live student keeps training; the probe freezes a copy
        _, summary = linear_probe(backbone, self.splits, recipe, self.device)
        metrics["probe_val_acc"] = summary["val_acc"] if summary["val_acc"] is not None else summary["test_acc"]
        metrics["probe_test_acc"] = summary["test_acc"]
        metrics["probe_test_acc_max_over_epochs"] = summary["test_acc_max_over_epochs"]
        metrics["probe_epochs"] = float(recipe.epochs)
        if last:
            metrics["probe/curve"] = json.dumps(summary["history"])


class TuneReporter(Callback):
    """Reports each epoch's metrics to Tune with the run directory as the checkpoint."""

    def __init__(self, out_dir: Path, extra: dict[str, float]):
        self.out_dir, self.extra = out_dir, extra
        self.best: float | None = None

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        result: dict[str, Any] = {
            k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        if "probe/curve" in metrics:
            result["probe/curve"] = metrics["probe/curve"]
        if "val_acc" in result:
            self.best = result["val_acc"] if self.best is None else max(self.best, result["val_acc"])
            result["best_val_acc"] = self.best
        result["epochs_done"] = epoch + 1  # ASHA's time axis: epochs, not Tune's per-process report count
        result.update(self.extra)
        with tempfile.TemporaryDirectory(prefix="cktf-ckpt-") as tmp:
            for name in CHECKPOINT_FILES:
                src = self.out_dir / name
                if src.exists():
                    snapshot_file(src, Path(tmp) / name)
            tune.report(result, checkpoint=tune.Checkpoint.from_directory(tmp))


def run_trial(
    config: dict[str, Any],
    study: dict[str, Any] | None = None,
    data: dict[str, Any] | None = None,
    teacher: dict[str, Any] | None = None,
    probe_data: dict[str, Any] | None = None,
) -> None:
    """Function trainable; ``config`` holds the sampled values (flat names, e.g. ``alpha1``, ``optim.lr``)."""
    import torch

    cfg = study_from_dict(dict(study), validate=False)
    trial_id = tune.get_context().get_trial_id()
    ended = already_ended(cfg.study_dir, trial_id)
    if ended is not None:
        # report the recorded last epoch once more (Tune requires a result with the metric), train nothing
        log.info("trial %s already ended before the driver restarted; nothing to do", trial_id)
        history = ended.get("history") or [{}]
        tune.report({**history[-1], "epochs_done": int(ended.get("iterations", len(history)))})
        return
    trial_dir = Path(tune.get_context().get_trial_dir())
    out = trial_dir / "run"
    out.mkdir(parents=True, exist_ok=True)
    ckpt = tune.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            # the run directory on this node may be newer than the checkpoint Ray restored (the driver's
            # experiment snapshot can lag its last checkpoint when it is killed): keep the newer one
            if epochs_done(Path(d)) > epochs_done(out):
                for name in CHECKPOINT_FILES:
                    if (Path(d) / name).exists():
                        shutil.copy2(Path(d) / name, out / name)
    if epochs_done(out):
        log.info("trial %s resumes after epoch %d", tune.get_context().get_trial_id(), epochs_done(out))
    sampled = {k: v for k, v in config.items() if not k.startswith("_")}
    t_model, t_arch = teacher_from_shared(teacher) if teacher else (None, None)
    run_cfg = cfg.run_config(sampled, str(out), teacher["path"] if teacher else None)
    torch.set_num_threads(max(1, int(cfg.resources.cpu)))  # trials share the node's cores
    gpu = cfg.resources.gpu
    if torch.cuda.is_available() and 0 < gpu < 1:
        torch.cuda.set_per_process_memory_fraction(float(gpu))
    extra = zero_copy_report(data)
    prepared = prepare_run(run_cfg, splits=splits_from_shared(data), teacher=t_model, teacher_arch=t_arch)
    reporter = TuneReporter(out, extra)
    callbacks: list[Callback] = [reporter]
    if cfg.probe is not None:
        probe = ProbeCallback(
            prepared.distiller.student, splits_from_shared(probe_data), cfg.probe, run_cfg.train.epochs, prepared.device
        )
        callbacks.insert(0, probe)
    if (out / "last.pt").exists() and (out / "metrics.jsonl").exists():  # keep best_val_acc across restarts
        import json

        vals = [json.loads(line).get("val_acc") for line in (out / "metrics.jsonl").read_text().splitlines() if line]
        vals = [v for v in vals if v is not None and not math.isnan(v)]
        reporter.best = max(vals) if vals else None
    try:
        fit(prepared, callbacks)
    except NonFiniteLossError as exc:
        raise RuntimeError(f"trial stopped: {exc} (lower optim.lr or the loss weights in search.space)") from exc
