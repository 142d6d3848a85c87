"""One training epoch and one evaluation pass: the single loop shared by teachers and students.

Loss terms and accuracy are accumulated on the device; the host only synchronises every
``sync_every`` steps (progress bar, non-finite check) and at the end of the epoch.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterable, Mapping

import torch
from torch import Tensor, nn

from ..distillers import Distiller
from ..distributed import DistContext

SYNC_EVERY = 25


class NonFiniteLossError(RuntimeError):
    """A loss term became NaN/inf: the run stops with the terms' names and the epoch."""


def autocast(device: torch.device, bf16: bool):
    if bf16 and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _progress(iterable: Iterable, total: int, desc: str, enabled: bool):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True)


def _check_finite(sums: Mapping[str, Tensor], where: str) -> dict[str, float]:
    values = {k: float(v) for k, v in sums.items()}
    bad = [k for k, v in values.items() if not math.isfinite(v)]
    if bad:
        raise NonFiniteLossError(
            f"non-finite loss term(s) {', '.join(bad)} {where}; lower the learning rate or the term's weight"
        )
    return values


def train_step(
    distiller: Distiller,
    optimizer: torch.optim.Optimizer,
    batch,
    device: torch.device,
    bf16: bool = False,
    dist: DistContext | None = None,
    global_rows: int | None = None,
):
    """One optimiser step on ``batch`` (forward under optional bf16 autocast, summed loss terms, backward, step);
    returns the distiller's :class:`~cktf.distillers.StepOutput`.

    Data parallel (``dist`` active; docs/algorithm.md §12): ``batch`` is this worker's rows of a global batch of
    ``global_rows``; the step runs inside :meth:`DistContext.step` (the loss code's collectives), the loss is weighted
    by the worker's share of the global batch and the gradients are summed over the workers before the step, so every
    worker takes the step one process takes on the global batch. The returned losses are this worker's."""
    if dist is not None and dist.active:
        rows = batch["image"].shape[0]
        global_rows = rows * dist.world_size if global_rows is None else int(global_rows)
        with dist.step(global_rows):
            with autocast(device, bf16):
                out = distiller(batch)
            loss = sum(out.losses.values())
            optimizer.zero_grad(set_to_none=True)
            (loss * (rows / global_rows)).backward()
            dist.all_reduce_grads(p for group in optimizer.param_groups for p in group["params"])
        optimizer.step()
        return out
    with autocast(device, bf16):
        out = distiller(batch)
    loss = sum(out.losses.values())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return out


def _global_sums(sums: Mapping[str, Tensor], extra: list[Tensor], dist: DistContext) -> tuple[dict[str, Tensor], list]:
    """``sums`` and ``extra`` summed over the workers in one all-reduce (every worker gets the same values)."""
    keys = list(sums)
    flat = torch.stack([torch.as_tensor(sums[k]).float().reshape(()) for k in keys] + [x.float() for x in extra])
    dist.all_reduce_(flat, "all_reduce/metrics")
    return {k: flat[i] for i, k in enumerate(keys)}, list(flat[len(keys) :])


def train_one_epoch(
    distiller: Distiller,
    loader,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    *,
    epoch: int,
    bf16: bool = False,
    max_steps: int = 0,
    progress: bool = False,
    dist: DistContext | None = None,
) -> dict[str, float]:
    """Train for one epoch; returns mean loss terms (``loss/<term>``), ``train_acc``, timing and throughput.

    ``epoch`` (0-based) reaches the loss terms first (:meth:`~cktf.distillers.Distiller.on_epoch_start`: DKD's and
    ReviewKD's warm-up), so a run resumed at epoch ``k`` weights its terms as an uninterrupted one does.

    Data parallel (``dist`` active): ``loader`` yields this worker's rows (:meth:`~cktf.data.BatchLoader.set_shard`);
    the metrics are the global ones (every worker's samples; the same on every worker), and the non-finite check
    runs on the global sums so that all workers stop together."""
    parallel = dist is not None and dist.active
    distiller.on_epoch_start(epoch)
    distiller.train()
    total = len(loader) if not max_steps else min(max_steps, len(loader))
    sums: dict[str, Tensor] = {}
    correct = torch.zeros((), device=device)
    seen = 0
    start = time.perf_counter()
    bar = _progress(loader, total, f"epoch {epoch}", progress)
    for step, batch in enumerate(bar):
        if step >= total:
            break
        if parallel:
            out = train_step(distiller, optimizer, batch, device, bf16, dist, loader.global_batch_rows(step))
        else:
            out = train_step(distiller, optimizer, batch, device, bf16)
        n = batch["image"].shape[0]
        seen += n
        for k, v in out.losses.items():
            sums[k] = sums.get(k, 0) + v.detach().float() * n
        if "target" in batch and distiller.gamma > 0:
            correct += (out.logits.detach().argmax(1) == batch["target"]).sum()
        if (step + 1) % SYNC_EVERY == 0:
            checked = _global_sums(sums, [], dist)[0] if parallel else sums
            vals = _check_finite(checked, f"at epoch {epoch}, step {step}")
            if progress:
                bar.set_postfix(loss=f"{sum(vals.values()) / seen:.3f}")
    if parallel:
        sums, (correct, seen_all) = _global_sums(sums, [correct, torch.tensor(float(seen), device=device)], dist)
        seen = int(round(float(seen_all)))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - start
    vals = _check_finite(sums, f"at the end of epoch {epoch}")
    metrics = {f"loss/{k}": v / max(seen, 1) for k, v in vals.items()}
    metrics["loss/total"] = sum(metrics.values())
    if distiller.gamma > 0:
        metrics["train_acc"] = 100.0 * float(correct) / max(seen, 1)
    metrics["epoch_time_s"] = elapsed
    metrics["images_per_s"] = seen / elapsed if elapsed > 0 else 0.0
    return metrics


def epoch_metric_names(loss_terms: Iterable[str], train_acc: bool, val: bool, test: bool) -> tuple[str, ...]:
    """The names :func:`cktf.train.fit` reports each epoch for a distiller whose steps return ``loss_terms``
    (:func:`train_one_epoch`'s and :func:`evaluate`'s keys): what a study may select on."""
    names = ["epoch", "lr", *(f"loss/{k}" for k in loss_terms), "loss/total"]
    if train_acc:
        names.append("train_acc")
    names += ["epoch_time_s", "images_per_s"]
    for split, on in (("val", val), ("test", test)):
        if on:
            names += [f"{split}_{k}" for k in EVAL_KEYS]
    names.append("eval_time_s")
    return tuple(names)


#: what :func:`evaluate` returns
EVAL_KEYS = ("acc", "acc5", "loss")


@torch.no_grad()
def evaluate(
    model: nn.Module, loader, device: torch.device, bf16: bool = False, dist: DistContext | None = None
) -> dict[str, float]:
    """Top-1/top-5 accuracy (%) and mean cross-entropy of ``model`` on a labeled split.

    Data parallel (``dist`` active): ``loader`` yields this worker's batches of the split (every W-th,
    :meth:`~cktf.data.BatchLoader.set_shard`) and the counts are summed over the workers: every worker returns the
    metrics of the whole split."""
    model.eval()
    correct1 = torch.zeros((), device=device)
    correct5 = torch.zeros((), device=device)
    loss = torch.zeros((), device=device)
    n = 0
    for batch in loader:
        with autocast(device, bf16):
            logits = model(batch["image"]).float()
        target = batch["target"]
        loss += nn.functional.cross_entropy(logits, target, reduction="sum")
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        correct1 += (top[:, 0] == target).sum()
        correct5 += (top == target[:, None]).any(1).sum()
        n += target.shape[0]
    if dist is not None and dist.active:
        total = torch.stack([correct1, correct5, loss, torch.tensor(float(n), device=device)]).float()
        dist.all_reduce_(total, "all_reduce/eval")
        correct1, correct5, loss, n = total[0], total[1], total[2], int(round(float(total[3])))
    return {"acc": 100.0 * float(correct1) / n, "acc5": 100.0 * float(correct5) / n, "loss": float(loss) / n}
