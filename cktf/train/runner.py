"""A single training run, end to end: validate, load data, build models, train, checkpoint.

Teacher training and student distillation are the same code path; they differ only in the
distiller (``ce`` with no teacher vs any other registered method). Every check that can fail
on user input runs before the dataset is decoded or a step is taken.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data import DATASETS, BatchLoader, ContrastConfig, Splits, load_splits, make_loader
from ..data.loader import SHARD_BATCHES, SHARD_ROWS
from ..distillers import DistillContext, Distiller, objective
from ..distributed import DistContext, convert_sync_batchnorm
from ..errors import ConfigError
from ..models import MODELS, DistillModel, create_model
from .callbacks import Callback
from .checkpoint import (
    has_resume_state,
    load_model,
    load_resume_state,
    read_weights_meta,
)
from .config import RunConfig
from .engine import autocast, evaluate, train_one_epoch
from .optim import build_sgd
from .writer import CheckpointWriter

log = logging.getLogger(__name__)

#: config fields that may change when a run is resumed (everything else must match)
RESUMABLE_CHANGES = {
    "train.epochs",
    "train.progress",
    "train.device",
    "train.compile",
    "resume",
    "out_dir",
    "teacher_checkpoint",
    "train.allow_long",
    "download",  # where library weights come from, not what they are
    "data.object_store_gb",  # decoded once or streamed: the same tensors (docs/models.md)
    "data.decode_workers",
    "train.keep_previous_checkpoint",  # how many resume files the run folder keeps, not what they hold
}


@dataclass
class Prepared:
    """What :func:`prepare_run` checked and built; :func:`fit` consumes it. ``dist``: the data-parallel context
    (rank 0 of 1 without a process group)."""

    cfg: RunConfig
    splits: Splits
    distiller: Distiller
    device: torch.device
    dist: DistContext = field(default_factory=DistContext)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("train.device", f"{name} requested but CUDA is not available", "use --device cpu or auto")
    return torch.device(name)


def worker_device(device: torch.device, dist: DistContext) -> torch.device:
    """A data-parallel worker's device: ``cuda`` without an index becomes the worker's GPU (``LOCAL_RANK``, as
    torchrun sets it, else the rank, modulo the visible GPUs; Ray Train shows each worker its own GPU as
    ``cuda:0``)."""
    if device.type == "cuda" and device.index is None:
        local = int(os.environ.get("LOCAL_RANK", dist.rank)) % max(torch.cuda.device_count(), 1)
        device = torch.device("cuda", local)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def check_data_parallel(cfg: RunConfig, dist: DistContext) -> None:
    """What a data-parallel run refuses before it loads anything: a global batch that W workers cannot share."""
    b, w = cfg.train.batch_size, dist.world_size
    if b % w:
        raise ConfigError(
            "train.batch_size",
            f"the global batch of {b} cannot be split evenly over {w} workers",
            f"pick a multiple of {w} (e.g. {max(w, b - b % w)} or {b + w - b % w}): each worker takes batch_size / "
            "workers rows of every step",
        )


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def validate_names(cfg: RunConfig, image_size: int | None = None, teacher_arch: str | None = None) -> None:
    """Cheap checks of every name, size and field the typed config cannot check alone; raises ConfigError.

    ``image_size`` is the loaded data's side; before loading it comes from the dataset spec
    (0 for ``imagefolder`` data, whose size is only known once read: then sizes are checked after loading).
    ``teacher_arch``: the teacher is given in memory (a Tune trial), so its checkpoint file is not read.
    """
    spec = DATASETS.get(cfg.data.dataset)
    size = image_size or cfg.data.image_size or spec.image_size
    method = objective(cfg.distiller)
    method.parse(cfg.distill_params, size or 32)
    check_arch(cfg.student, size, "student")
    if cfg.student_weights:
        check_weights_file(cfg.student_weights, "student_weights")
    if method.needs_teacher and teacher_arch is not None:
        check_arch(teacher_arch, size, "teacher")
    elif method.needs_teacher:
        if not cfg.teacher_checkpoint:
            raise ConfigError(
                "teacher_checkpoint", f"distiller {cfg.distiller!r} needs a teacher", "pass --teacher-ckpt PATH"
            )
        meta = read_weights_meta(cfg.teacher_checkpoint)
        check_arch(meta["arch"], size, "teacher_checkpoint")
    elif cfg.teacher_checkpoint:
        raise ConfigError("teacher_checkpoint", f"distiller {cfg.distiller!r} trains without a teacher", "drop it")


def check_arch(name: str, size: int, field: str) -> None:
    MODELS.get(name)
    if not size:  # not known before the data is read
        return
    try:
        create_model(name, num_classes=10).check_input_size(size)
    except ValueError as exc:
        raise ConfigError(field, f"{name}: {exc}", "pick a model built for this dataset's image size") from None


def check_weights_file(weights: str, field: str) -> None:
    """A ``weights`` value that names a file must exist (a library tag is checked when the model is built)."""
    from ..models.sources.weights import is_weights_file

    if is_weights_file(weights) and not Path(weights).expanduser().is_file():
        raise ConfigError(field, f"no such weights file: {weights}", "pass a local .safetensors or .pth file")


def build_student(cfg: RunConfig, num_classes: int) -> DistillModel:
    """The run's student, randomly initialised (seeded by the caller) or from ``cfg.student_weights``."""
    from ..models.sources import load_weights

    student = create_model(cfg.student, num_classes=num_classes)
    if cfg.student_weights:
        load_weights(student, cfg.student_weights, cfg.download, field="student_weights")
    return student


def _check_resume(cfg: RunConfig, out: Path) -> bool:
    """True when out_dir holds a resumable run of the same config; refuses to overwrite another run."""
    saved = out / "config.json"
    if not has_resume_state(out) or not saved.exists():
        return False
    from .callbacks import flatten

    raw = json.loads(saved.read_text())
    try:  # fields added to the config since that run was written are at their defaults in it
        raw = RunConfig.parse(raw, "out_dir/config.json").to_dict()
    except ConfigError:
        pass
    old, new = flatten(raw), flatten(cfg.to_dict())
    diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k) and k not in RESUMABLE_CHANGES)
    if diff:
        raise ConfigError(
            "out_dir",
            f"{out} already holds a run with a different config ({', '.join(diff[:5])})",
            "pass a new --out-dir, or the same settings to resume it",
        )
    if not cfg.resume:
        raise ConfigError("out_dir", f"{out} already holds checkpoints", "pass a new --out-dir or --resume")
    return True


def cap_gpu_memory(share: float, device: torch.device) -> bool:
    """Cap this process's CUDA caching allocator at ``share`` of the GPU (``train.gpu_memory_share`` < 1; Ray's GPU
    fractions are logical only, ray#41432); True when a cap was applied. A CPU run has nothing to cap."""
    if not 0 < share < 1 or device.type != "cuda":
        return False
    torch.cuda.set_per_process_memory_fraction(float(share), device)
    return True


def prepare_run(
    cfg: RunConfig,
    splits: Splits | None = None,
    teacher: DistillModel | None = None,
    teacher_arch: str | None = None,
) -> Prepared:
    """Validate, load the data (unless given, e.g. from the Ray object store) and build the distiller.

    ``teacher`` (with its registered ``teacher_arch``) replaces reading ``cfg.teacher_checkpoint``.
    """
    if teacher is not None and teacher_arch is None:
        raise ValueError("pass teacher_arch with an in-memory teacher")
    validate_names(cfg, teacher_arch=teacher_arch)
    device = resolve_device(cfg.train.device)
    dist = DistContext.from_torch(device)  # data parallel when the caller initialised a process group of W > 1
    if dist.active:
        check_data_parallel(cfg, dist)
        device = dist.device = worker_device(device, dist)
    cap_gpu_memory(cfg.train.gpu_memory_share, device)
    _check_resume(cfg, Path(cfg.out_dir))
    splits = splits if splits is not None else load_splits(cfg.data)
    validate_names(cfg, splits.image_size, teacher_arch)  # sizes of imagefolder data are known only now
    num_classes = splits.spec.num_classes or len(splits.train.classes)
    seed_everything(cfg.train.seed)
    method = objective(cfg.distiller)
    if method.needs_teacher and teacher is None:
        teacher, meta = load_model(cfg.teacher_checkpoint)
        mismatch = meta.get("dataset") not in (None, cfg.data.dataset) or teacher.num_classes != num_classes
        if mismatch and splits.train.labeled:
            log.warning(
                "teacher was trained on %s (%d classes), this run uses %s (%d classes)",
                meta.get("dataset"),
                teacher.num_classes,
                cfg.data.dataset,
                num_classes,
            )
    if teacher is not None and not splits.train.labeled:
        # no labels (transfer, Section 3.2): the student's head mirrors the teacher's (official: 200-way)
        num_classes = teacher.num_classes
    seed_everything(cfg.train.seed)  # the student's initialisation does not depend on how the teacher came
    student = build_student(cfg, num_classes)
    ctx = DistillContext(num_classes=num_classes, num_train_samples=len(splits.train), image_size=splits.image_size)
    distiller = method.build(student, teacher, cfg.distill_params, ctx)
    if distiller.gamma > 0 and not splits.train.labeled:
        raise ConfigError(
            "distill.gamma",
            f"cross-entropy weight {distiller.gamma} but the train split has no labels",
            "set gamma=0 for distillation on unlabeled images (transfer, Section 3.2)",
        )
    if distiller.needs_labels and not splits.train.labeled:
        raise ConfigError(
            "distiller",
            f"{cfg.distiller!r} reads the labels (its loss splits at the target class) but the train split has none",
            "pick a method that distils without labels (kd, crd, cktf, ...) for unlabeled images",
        )
    if dist.active and cfg.train.sync_bn:  # the student's and the adapters' BN, never the (eval-mode) teacher's
        convert_sync_batchnorm(distiller.student)
        for term in distiller.terms.values():
            convert_sync_batchnorm(term)
    memory_format = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
    distiller.to(device=device, memory_format=memory_format)
    if cfg.train.compile:
        distiller.compile_models(cfg.train.compile)
    return Prepared(cfg, splits, distiller, device, dist)


def decode_workers(cfg: RunConfig) -> int:
    """Decoding processes of a streamed split's loader: ``data.decode_workers``, else this process's torch threads
    (a trial's ``resources.cpu``: the trainable sets them), at most 8."""
    if cfg.data.decode_workers is not None:
        return cfg.data.decode_workers
    return max(1, min(8, torch.get_num_threads()))


def _loaders(p: Prepared) -> tuple[BatchLoader, BatchLoader | None, BatchLoader]:
    cfg, spec = p.cfg, p.splits.spec
    k = p.distiller.contrast_negatives()
    contrast = None
    if k is not None:
        contrast = ContrastConfig(
            k=k, mode=cfg.data.contrast_mode, draw=cfg.data.contrast_draw, replace=p.splits.contrast_replace
        )
    common = dict(
        spec=spec,
        device=p.device,
        channels_last=cfg.train.channels_last,
        memory_share=cfg.train.gpu_memory_share,
        workers=decode_workers(cfg),  # these two apply to streamed splits only (make_loader)
        decode=cfg.data.decode,
    )
    train = make_loader(
        p.splits.train, batch_size=cfg.train.batch_size, train=True, seed=cfg.train.seed, contrast=contrast, **common
    )
    ev = dict(batch_size=cfg.train.eval_batch_size, train=False, **common)
    val = make_loader(p.splits.val, **ev) if p.splits.val is not None and len(p.splits.val) else None
    test = make_loader(p.splits.test, **ev)
    dist = getattr(p, "dist", None)
    if dist is not None and dist.active:  # each worker its rows of every global batch; every W-th batch of the evals
        train.set_shard(dist.rank, dist.world_size, SHARD_ROWS)
        for loader in (val, test):
            if loader is not None:
                loader.set_shard(dist.rank, dist.world_size, SHARD_BATCHES)
    return train, val, test


def _weights_meta(p: Prepared, epoch: int, metrics: dict[str, float]) -> dict[str, Any]:
    spec = p.splits.spec
    return {
        "arch": p.cfg.student,
        "num_classes": p.distiller.student.num_classes,
        "dataset": p.cfg.data.dataset,
        "image_size": p.splits.image_size,
        "mean": list(spec.mean),
        "std": list(spec.std),
        "classes": list(p.splits.train.classes),
        "distiller": p.cfg.distiller,
        "epoch": epoch,
        "val_acc": metrics.get("val_acc"),
        "test_acc": metrics.get("test_acc"),
    }


def run_init_stage(p: Prepared, loader: BatchLoader) -> None:
    """AB/FT/FSP initialisation (RepDistiller ``helper/pretrain.py``): only the stage's modules train."""
    stage = p.distiller.init_stage()
    if stage is None:
        return
    opt = build_sgd(stage.params, p.cfg.optim, lr=stage.lr)
    max_steps = p.cfg.train.max_steps_per_epoch or len(loader)
    dist = getattr(p, "dist", None)
    parallel = dist is not None and dist.active
    for epoch in range(stage.epochs):
        p.distiller.eval()
        for m in stage.modules:
            m.train()
        loader.set_epoch(-1 - epoch)  # its own shuffles, distinct from the main stage's
        total, steps = torch.zeros((), device=p.device), 0
        for batch in loader:
            if steps >= max_steps:
                break
            if parallel:  # a data-parallel step, as train_step takes it (docs/algorithm.md §12)
                share = batch["image"].shape[0] / loader.global_batch_rows(steps)
                with dist.step(loader.global_batch_rows(steps)):
                    with autocast(p.device, p.cfg.train.bf16):
                        loss = sum(stage.loss(batch).values())
                    opt.zero_grad(set_to_none=True)
                    (loss * share).backward()
                    dist.all_reduce_grads(stage.params)
                opt.step()
                total += loss.detach() * share
                steps += 1
                continue
            with autocast(p.device, p.cfg.train.bf16):
                loss = sum(stage.loss(batch).values())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach()
            steps += 1
        if parallel:
            dist.all_reduce_(total, "all_reduce/metrics")
            dist.average_batchnorm_stats(p.distiller)
        mean = float(total) / steps if steps else float("nan")
        log.info("init stage epoch %d/%d: mean loss %.4f over %d steps", epoch + 1, stage.epochs, mean, steps)


def fit(p: Prepared, callbacks: Sequence[Callback] = ()) -> dict[str, Any]:
    """Train ``p.distiller`` for ``cfg.train.epochs`` epochs, resuming from ``out_dir/last.pt`` if present.

    Data parallel (``p.dist`` active, docs/algorithm.md §12): every worker runs this loop in lockstep on its rows of
    each global batch, and the metrics every worker records are the global ones. Rank 0 alone reads and writes
    ``out_dir`` (the resume state, checkpoints, weights, ``metrics.jsonl``, ``config.json``, ``summary.json``) and calls
    the callbacks; a callback whose class sets ``all_ranks = True`` is called on every worker (on the others,
    ``on_checkpoint`` comes when the epoch ends: they write nothing). At the start rank 0's state (its resume state,
    or its fresh initialisation) is broadcast to every worker, and the run returns on every worker once rank 0's
    files are on disk.
    """
    cfg, distiller, device = p.cfg, p.distiller, p.device
    dist = getattr(p, "dist", None) or DistContext(device=device)
    lead = dist.lead
    out = Path(cfg.out_dir)
    if lead:
        out.mkdir(parents=True, exist_ok=True)
    train_loader, val_loader, test_loader = _loaders(p)
    writer = None
    if lead:
        writer = CheckpointWriter(
            out, background=cfg.train.checkpoint_in_background, keep_previous=cfg.train.keep_previous_checkpoint
        )
    optimizer = build_sgd(distiller.trainable_parameters(), cfg.optim)
    history: list[dict[str, float]] = []
    start, init_done = 0, False
    state = load_resume_state(out) if lead and _check_resume(cfg, out) else None
    if state is not None:
        distiller.load_checkpoint_state(state["distiller"])
        optimizer.load_state_dict(state["optimizer"])
        history, start, init_done = list(state["history"]), int(state["epoch"]) + 1, bool(state["init_done"])
        log.info("resuming %s from epoch %d", out, start)
    if dist.active:
        history, start, init_done = _sync_workers(p, optimizer, history, start, init_done, state is not None)
    if lead:
        (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    info = {
        "num_train": len(p.splits.train),
        "num_val": len(p.splits.val) if p.splits.val is not None else 0,
        "num_test": len(p.splits.test),
        "device": str(device),
        "student_params": sum(x.numel() for x in distiller.student.parameters()),
        **distiller.run_params(),  # <term>/pairing: official | generalised (docs/models.md)
    }
    if dist.active:
        info["world_size"] = dist.world_size
    callbacks = [cb for cb in callbacks if lead or getattr(cb, "all_ranks", False)]
    parallel = dist if dist.active else None
    progress = cfg.train.progress and lead
    try:
        for cb in callbacks:
            cb.on_run_start(cfg.to_dict(), info)
        if not init_done:
            run_init_stage(p, train_loader)
            init_done = True
        distiller.on_train_start()
        if lead:
            with open(out / "metrics.jsonl", "w") as f:  # rewritten so a resumed run has no duplicate epochs
                f.writelines(json.dumps(m) + "\n" for m in history)
        epochs = range(start, cfg.train.epochs)
        if progress:
            from tqdm.auto import tqdm

            epochs = tqdm(epochs, initial=start, total=cfg.train.epochs, desc=f"{cfg.distiller}:{cfg.student}")
        for epoch in epochs:
            lr = cfg.optim.lr_at(epoch)
            for group in optimizer.param_groups:
                group["lr"] = lr
            train_loader.set_epoch(epoch)
            metrics: dict[str, float] = {"epoch": epoch, "lr": lr}
            metrics.update(
                train_one_epoch(
                    distiller,
                    train_loader,
                    optimizer,
                    device,
                    epoch=epoch,
                    bf16=cfg.train.bf16,
                    max_steps=cfg.train.max_steps_per_epoch,
                    progress=progress,
                    dist=parallel,
                )
            )
            dist.average_batchnorm_stats(distiller)  # per-worker BN: every worker evaluates and saves the same model
            t0 = time.perf_counter()
            if val_loader is not None:
                val = evaluate(distiller.student, val_loader, device, cfg.train.bf16, parallel)
                metrics.update({f"val_{k}": v for k, v in val.items()})
            if cfg.train.eval_test:
                test = evaluate(distiller.student, test_loader, device, cfg.train.bf16, parallel)
                metrics.update({f"test_{k}": v for k, v in test.items()})
            metrics["eval_time_s"] = time.perf_counter() - t0
            snap = None
            if writer is not None:
                t0 = time.perf_counter()
                writer.wait()  # the previous epoch's write (normally long done)
                metrics["checkpoint_wait_s"] = time.perf_counter() - t0  # > 0: writing is slower than an epoch
                t0 = time.perf_counter()
                snap = writer.snapshot(_resume_tensors(p, optimizer))  # before any callback can touch the student
                metrics["checkpoint_snapshot_s"] = time.perf_counter() - t0  # what a checkpoint costs this thread
            for cb in callbacks:
                cb.on_epoch_end(epoch, metrics)  # may add metrics (the linear probe's)
            history.append(metrics)
            if writer is not None:
                _write_epoch(p, writer, snap, history, epoch, init_done, callbacks)
            else:  # a worker other than rank 0: nothing to write, its all-ranks callbacks hear of the epoch now
                for cb in callbacks:
                    cb.on_checkpoint(epoch, dict(metrics))
            if progress:
                epochs.set_postfix(
                    {k: f"{metrics[k]:.2f}" for k in ("loss/total", "val_acc", "test_acc") if k in metrics}
                )
        if writer is not None:
            writer.wait()
        dist.barrier()  # every worker returns once rank 0's files are on disk
    except BaseException as exc:
        try:
            if writer is not None:
                writer.wait()  # what is already snapshotted still reaches the disk
        except BaseException:  # noqa: BLE001 - the first error is the one to report
            log.exception("checkpoint write failed while %s was raised", type(exc).__name__)
        for cb in callbacks:
            cb.on_run_error(exc)
        raise
    summary = summarize(history, out)
    if lead:
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
    for cb in callbacks:
        cb.on_run_end(summary)
    return summary


def _sync_workers(
    p: Prepared, optimizer: torch.optim.Optimizer, history: list, start: int, init_done: bool, resumed: bool
) -> tuple[list, int, bool]:
    """Start every data-parallel worker from rank 0's state: the distiller (student, adapters, memory banks; its
    fresh initialisation, or the resume state rank 0 read), the optimiser's when resuming, and where the run is
    (history, first epoch, init stage done). Every worker then holds bitwise the same state."""
    dist, distiller = p.dist, p.distiller  # an active context (fit calls this only then)
    header = dist.broadcast_object((history, start, init_done, resumed) if dist.lead else None)
    history, start, init_done, resumed = header
    state = dist.broadcast_tensors(distiller.checkpoint_state())
    if not dist.lead:
        distiller.load_checkpoint_state(state)
    if resumed:
        cpu = _to_cpu(optimizer.state_dict()) if dist.lead else None
        opt_state = dist.broadcast_object(cpu)
        if not dist.lead:
            optimizer.load_state_dict(opt_state)
    coupled = distiller.batch_coupled_terms()
    if coupled and dist.lead:
        log.warning(
            "%s relate the samples of a batch: over %d workers each computes them on its own rows, not on the global "
            "batch (docs/algorithm.md §12)",
            ", ".join(coupled),
            dist.world_size,
        )
    return list(history), int(start), bool(init_done)


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def _best_epoch(history: list[dict[str, float]]) -> int:
    """Model selection on the held-out validation split; the last epoch when there is none."""
    if history and "val_acc" in history[0]:
        return max(range(len(history)), key=lambda i: history[i]["val_acc"])
    return len(history) - 1


def _resume_tensors(p: Prepared, optimizer) -> dict[str, Any]:
    """The tensor part of the resume state: the distiller (student, adapters, banks; banks in bf16 with
    ``train.checkpoint_banks: bf16``) and the optimizer."""
    compact = p.cfg.train.checkpoint_banks == "bf16"
    return {"distiller": p.distiller.checkpoint_state(compact=compact), "optimizer": optimizer.state_dict()}


def _write_epoch(
    p: Prepared,
    writer: CheckpointWriter,
    snap,
    history: list[dict[str, float]],
    epoch: int,
    init_done: bool,
    callbacks: Sequence[Callback],
) -> None:
    """Hand epoch ``epoch``'s snapshot to ``writer`` with the weights files due; the callbacks' ``on_checkpoint``
    runs once it is on disk."""
    meta = _weights_meta(p, epoch, history[-1])
    weights = [("model_last.safetensors", meta)]
    if _best_epoch(history) == len(history) - 1:
        weights.append(("model_best.safetensors", meta))
    frozen = [dict(h) for h in history]  # the writer thread reads these while this one goes on
    line = frozen[-1]

    def reported() -> None:
        for cb in callbacks:
            cb.on_checkpoint(epoch, line)

    writer.write(snap, {"epoch": epoch, "init_done": init_done, "history": frozen}, weights, line, after=reported)


def summarize(history: list[dict[str, float]], out: Path) -> dict[str, Any]:
    """Final numbers: the val-selected epoch's test accuracy, plus the paper's best-test-epoch protocol."""
    best = _best_epoch(history)
    last = history[-1]
    summary: dict[str, Any] = {
        "epochs": len(history),
        "best_epoch": int(history[best]["epoch"]),
        "weights_best": str(out / "model_best.safetensors"),
        "weights_last": str(out / "model_last.safetensors"),
    }
    if "val_acc" in last:
        summary["val_acc"] = history[best]["val_acc"]
    if "test_acc" in last:
        summary["test_acc"] = history[best]["test_acc"]  # reported for the val-selected epoch
        summary["test_acc_last"] = last["test_acc"]
        summary["test_acc_max_over_epochs"] = max(h["test_acc"] for h in history)  # RepDistiller's reported number
    return summary


def train(cfg: RunConfig, callbacks: Sequence[Callback] = ()) -> dict[str, Any]:
    """Validate, prepare and fit: the function behind ``cktf train-teacher`` and ``cktf distill``."""
    return fit(prepare_run(cfg), callbacks)
