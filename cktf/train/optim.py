"""The one SGD builder: every optimiser of the project (main stage, init stages, the linear probe) is SGD with
momentum and weight decay in a single parameter group, as RepDistiller builds it (docs/algorithm.md §6)."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from .config import OptimConfig


def build_sgd(params: Iterable[torch.nn.Parameter], cfg: OptimConfig, lr: float | None = None) -> torch.optim.SGD:
    """``SGD(params, lr or cfg.lr, momentum, weight_decay, nesterov)`` from an :class:`OptimConfig` (or a subclass,
    e.g. the probe's); the learning rate is set per epoch by the caller (``cfg.lr_at``)."""
    return torch.optim.SGD(
        params,
        lr=cfg.lr if lr is None else lr,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
        nesterov=cfg.nesterov,
    )
