"""Linear probe (paper Section 3.2, step 2 of the official transfer script; docs/algorithm.md §8).

A new linear classifier on the student's penultimate features (``DistillOutput.pooled``) is
trained on the target's labeled train split while the backbone stays frozen; accuracy on the
target's test split is recorded every epoch (the curve of the paper's Fig. 2).

Differences from the official step (each a documented choice):

* ``bn_mode="eval"`` (default): BN running statistics stay frozen too, so the backbone is exactly
  unchanged by probing (a linear probe in the usual sense). The official ``train_teacher.py
  --fine_tune`` leaves the model in ``.train()`` so BN statistics drift on the target data;
  ``bn_mode="train"`` reproduces that (weights still frozen).
* A class-stratified ``val_fraction`` of the target's train split is held out, and the reported test
  accuracy is the one at the best validation epoch (the official script reports the best test
  epoch; that number is kept as ``test_acc_max_over_epochs``).
* ``augment=False`` computes the frozen features once (test transform) and trains the head on them:
  the same optimisation, orders of magnitude faster; it is what the per-epoch quick probe of a
  study uses. With ``bn_mode="train"`` features change while training, so it requires ``augment``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from ..data import BatchLoader, Splits, make_loader
from ..errors import ConfigError
from ..models import DistillModel
from ..train.config import OptimConfig
from ..train.optim import build_sgd

#: what a transfer study's trial reports each epoch from its quick probe (the last epoch: the full probe)
QUICK_PROBE_METRICS = ("probe_val_acc", "probe_test_acc", "probe_test_acc_max_over_epochs", "probe_epochs")


class ProbeConfig(OptimConfig):
    """The probe's schedule: the optimiser fields (:class:`~cktf.train.OptimConfig`) plus the loop's; the defaults
    are the official step 2 (SGD 0.05, wd 5e-4, batch 64, 240 epochs, x0.1 at 150/180/210)."""

    section = "probe"

    epochs: int = Field(240, ge=1)
    """probe epochs"""
    batch_size: int = Field(64, ge=1)
    """training batch size of the probe"""
    bn_mode: Literal["eval", "train"] = "eval"
    """eval: backbone fully frozen (incl. BN stats); train: the official BN drift"""
    augment: bool = True
    """train-time augmentation through the frozen backbone (official); false: cached features"""
    seed: int = 0
    """seed of the head's initialisation and the batch order"""
    eval_batch_size: int = Field(256, ge=1)
    """evaluation batch size"""

    @model_validator(mode="after")
    def _check_probe(self) -> ProbeConfig:
        if self.bn_mode == "train" and not self.augment:
            raise ConfigError("augment", "bn_mode=train changes features as it trains", "set augment: true")
        return self


class ProbedModel(nn.Module):
    """Frozen backbone + new linear head: ``forward(x)`` gives target-class logits."""

    def __init__(self, backbone: DistillModel, head: nn.Linear):
        super().__init__()
        self.backbone, self.head = backbone, head

    def features(self, x: Tensor) -> Tensor:
        return self.backbone.forward_distill(x).pooled

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def _freeze(backbone: DistillModel, bn_mode: str) -> None:
    for p in backbone.parameters():
        p.requires_grad_(False)
    backbone.train(bn_mode == "train")


@torch.no_grad()
def _features(model: ProbedModel, loader: BatchLoader) -> tuple[Tensor, Tensor]:
    feats, targets = [], []
    for batch in loader:
        feats.append(model.features(batch["image"]).float())
        targets.append(batch["target"])
    return torch.cat(feats), torch.cat(targets)


@torch.no_grad()
def _accuracy(model: ProbedModel, loader: BatchLoader, cached: tuple[Tensor, Tensor] | None) -> float:
    model.backbone.eval()
    if cached is not None:
        logits, targets = model.head(cached[0]), cached[1]
    else:
        outs = [(model(b["image"]), b["target"]) for b in loader]
        logits, targets = torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])
    return 100.0 * float((logits.argmax(1) == targets).float().mean())


def linear_probe(
    backbone: DistillModel,
    splits: Splits,
    cfg: ProbeConfig,
    device: torch.device,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> tuple[ProbedModel, dict[str, Any]]:
    """Train a new linear head on ``splits.train`` (labeled), frozen ``backbone``; returns the model and
    ``{"history": [...], "val_acc", "test_acc" (at the best val epoch), "test_acc_max_over_epochs"}``."""
    if not splits.train.labeled or len(splits.train) == 0:
        raise ConfigError("probe.data", "the probe needs the target's labeled train split", "drop drop_labels there")
    num_classes = splits.num_classes
    backbone = backbone.to(device)
    _freeze(backbone, cfg.bn_mode)
    torch.manual_seed(cfg.seed)
    head = nn.Linear(backbone.num_features, num_classes).to(device)
    model = ProbedModel(backbone, head)
    common = dict(device=device)
    train = make_loader(
        splits.train, splits.spec, batch_size=cfg.batch_size, train=cfg.augment, seed=cfg.seed, **common
    )
    evals = {
        name: make_loader(ds, splits.spec, batch_size=cfg.eval_batch_size, train=False, **common)
        for name, ds in (("val", splits.val), ("test", splits.test))
        if ds is not None and len(ds)
    }
    cache = {}
    if not cfg.augment:
        backbone.eval()
        cache = {name: _features(model, loader) for name, loader in evals.items()}
        plain = make_loader(splits.train, splits.spec, batch_size=cfg.eval_batch_size, train=False, **common)
        cache["train"] = _features(model, plain)
    opt = build_sgd(head.parameters(), cfg)
    gen = torch.Generator().manual_seed(cfg.seed)
    history: list[dict[str, float]] = []
    key = "probe_val_acc" if "val" in evals else "probe_test_acc"
    best, best_state = 0, None
    for epoch in range(cfg.epochs):
        for group in opt.param_groups:
            group["lr"] = cfg.lr_at(epoch)
        head.train()
        backbone.train(cfg.bn_mode == "train")
        if cfg.augment:
            train.set_epoch(epoch)
            batches = ((b["image"], b["target"], True) for b in train)
        else:
            x, y = cache["train"]
            order = torch.randperm(len(y), generator=gen).to(device)
            batches = ((x[i], y[i], False) for i in order.split(cfg.batch_size))
        total, n = 0.0, 0
        for inputs, targets, raw in batches:
            with torch.no_grad():
                feats = model.features(inputs) if raw else inputs
            loss = nn.functional.cross_entropy(head(feats.float()), targets)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(targets)
            n += len(targets)
        row = {"probe_epoch": epoch + 1, "probe_loss": total / max(n, 1)}
        for name, loader in evals.items():
            row[f"probe_{name}_acc"] = _accuracy(model, loader, cache.get(name))
        history.append(row)
        if best_state is None or row.get(key, 0.0) > history[best][key]:
            best, best_state = epoch, {k: v.detach().clone() for k, v in head.state_dict().items()}
        if on_epoch is not None:
            on_epoch(epoch, row)
    head.load_state_dict(best_state)  # the returned model is the val-selected epoch's
    summary = {
        "history": history,
        "best_epoch": best + 1,
        "val_acc": history[best].get("probe_val_acc"),
        "test_acc": history[best].get("probe_test_acc"),
        "test_acc_last": history[-1].get("probe_test_acc"),
        "test_acc_max_over_epochs": max((h.get("probe_test_acc", 0.0) for h in history), default=None),
    }
    model.eval()
    return model, summary


__all__ = ["ProbeConfig", "ProbedModel", "linear_probe"]
