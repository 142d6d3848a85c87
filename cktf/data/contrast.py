"""Label-aware contrastive sample indices, batched in torch (docs/algorithm.md §3).

For every anchor (row ``index`` of the train split) the sampler returns ``contrast_idx`` of shape
``[B, K+1]``: column 0 is the positive, columns 1..K the negatives.

* ``exact`` mode (the default everywhere): the positive is the anchor itself (``pos_idx = index``).
* ``relax`` mode: the positive is a random sample of the anchor's class (possibly itself).
* Negatives come only from the *other* classes, like ``np.random.choice(cls_negative[target], K,
  replace=False)`` in ``CIFAR100InstanceSample``; ``replace=True`` is what ``ImageFolderSample``
  (Tiny-ImageNet) does.
* Unlabeled data (every target -1, STL-10 ``unlabeled``): every image is its own class, so negatives
  are uniform over all *other* images and never the anchor. The official code resets the targets to
  0 and so lets an anchor draw itself as a negative (docs/algorithm.md §9); that bug is not copied.

How: the train rows are sorted by class once (``order``); class ``c`` occupies positions
``[start_c, start_c + count_c)``. A uniform draw ``r`` from the ``N - count_c`` other-class positions
maps to ``r + count_c`` when ``r >= start_c`` (the offset trick), then through ``order``. With
replacement that is one uniform draw per column. Without replacement the ``r`` of a row are distinct and
exact-uniform: numpy's ``Generator.choice(replace=False)`` per anchor on CPU (the cheapest there, and free
of OpenMP stalls on a busy machine), the K smallest of uniform random keys (``topk``) on GPU. Both
backends draw everything from the ``torch.Generator`` passed in (numpy's is seeded from one draw of it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from ..errors import ConfigError
from ._base import UNLABELED

CONTRAST_MODES = ("exact", "relax")


@dataclass(frozen=True)
class ContrastConfig:
    """What ``contrast_idx`` a loader adds to each train batch (docs/algorithm.md §3).

    Attributes:
        k: negatives per anchor (CRD/CKTF ``nce_k``, 16384).
        mode: ``"exact"`` (positive = the anchor) or ``"relax"`` (positive = a random same-class sample).
        replace: draw negatives with replacement (official Tiny-ImageNet) or without (official CIFAR).
    """

    k: int = 16384
    mode: Literal["exact", "relax"] = "exact"
    replace: bool = False


class ContrastSampler:
    """Draws ``contrast_idx`` rows for batches of anchor indices into one split (see the module docstring).

    Args:
        targets: int64 labels of the train split (-1 everywhere for unlabeled data).
        cfg: K, mode and replacement.
        device: where the tables live and the indices are produced.

    Raises:
        ConfigError: ``distill.nce_k`` larger than the smallest other-class pool when sampling without
            replacement (the message gives the largest allowed K), or an impossible mode/split pairing.
    """

    def __init__(
        self,
        targets: np.ndarray | Tensor,
        cfg: ContrastConfig,
        device: torch.device | str = "cpu",
        backend: Literal["auto", "numpy", "torch"] = "auto",
    ):
        self.cfg = cfg
        self.device = torch.device(device)
        if backend not in ("auto", "numpy", "torch"):
            raise ValueError(f"backend must be auto, numpy or torch, got {backend!r}")
        self.backend = ("numpy" if self.device.type == "cpu" else "torch") if backend == "auto" else backend
        t = torch.as_tensor(np.asarray(targets) if not isinstance(targets, Tensor) else targets).long().cpu()
        n = int(t.numel())
        self.n = n
        if cfg.mode not in CONTRAST_MODES:
            raise ConfigError("data.contrast_mode", f"must be one of {', '.join(CONTRAST_MODES)}, got {cfg.mode!r}")
        if cfg.k < 1:
            raise ConfigError("distill.nce_k", f"must be >= 1, got {cfg.k}")
        self.unlabeled = bool(n) and bool((t == UNLABELED).all())
        if not self.unlabeled and bool((t < 0).any()):
            raise ConfigError("data.dataset", "the train split mixes labeled and unlabeled (-1) images")
        if self.unlabeled:
            if cfg.mode == "relax":
                raise ConfigError(
                    "data.contrast_mode", "relax needs class labels; the train split is unlabeled", "use exact"
                )
            order = torch.arange(n)
            start, count = torch.arange(n), torch.ones(n, dtype=torch.long)
            smallest, why = n - 1, "all other images"
        else:
            counts = torch.bincount(t, minlength=1)
            offsets = torch.cumsum(counts, 0) - counts
            order = torch.argsort(t, stable=True)
            start, count = offsets[t], counts[t]
            biggest = int(counts.argmax()) if n else 0
            smallest = n - int(counts.max()) if n else 0
            why = f"the images outside class {biggest}, the largest class with {int(counts.max()) if n else 0}"
        if smallest < 1:
            raise ConfigError(
                "data.dataset",
                "contrastive negatives need at least two classes in the train split",
                "use a larger train_subset or another dataset",
            )
        if not cfg.replace and cfg.k > smallest:
            raise ConfigError(
                "distill.nce_k",
                f"{cfg.k} negatives without replacement, but the smallest negative pool has {smallest} images ({why})",
                f"set nce_k <= {smallest}, or sample with replacement (data.contrast_replace=true)",
            )
        self.max_k = smallest if not cfg.replace else None
        self.width = int((n - count).max())  # widest negative pool (sizes the GPU path's keys without a sync)
        rank = torch.empty_like(order).scatter_(0, order, torch.arange(n))  # order[rank[i]] == i
        self._np = {"order": order.numpy(), "rank": rank.numpy(), "start": start.numpy(), "count": count.numpy()}
        self.order, self.rank = order.to(self.device), rank.to(self.device)
        self.start, self.count = start.to(self.device), count.to(self.device)

    def sample(self, index: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """``contrast_idx`` int64 [B, K+1] for anchors ``index`` (rows of the train split), on ``device``.

        All randomness comes from ``generator`` (the numpy backend seeds a PCG64 from one draw of it).
        """
        if self.backend == "numpy":
            return self._sample_numpy(index, generator).to(self.device)
        return self._sample_torch(index.to(self.device).long(), generator)

    def _sample_torch(self, index: Tensor, generator: torch.Generator | None) -> Tensor:
        b, k = index.shape[0], self.cfg.k
        start, count = self.start[index], self.count[index]
        pool = self.n - count  # size of each anchor's other-class pool
        if self.cfg.replace:
            r = _uniform_int(pool[:, None], (b, k), generator, self.device)
        else:
            r = _distinct_topk(pool, k, generator, self.device, width=self.width)
        pos = torch.empty((b, k + 1), dtype=torch.long, device=self.device)  # positions in class-sorted order
        torch.where(r >= start[:, None], r + count[:, None], r, out=pos[:, 1:])  # skip the anchor's class block
        if self.cfg.mode == "exact":
            pos[:, 0] = self.rank[index]
        else:
            pos[:, 0] = start + _uniform_int(count, (b,), generator, self.device)
        return self.order.index_select(0, pos.view(-1)).view(b, k + 1)

    def _sample_numpy(self, index: Tensor, generator: torch.Generator | None) -> Tensor:
        """CPU path: numpy's exact samplers (no OpenMP regions, so no stalls on a busy machine)."""
        gdev = generator.device if generator is not None else torch.device("cpu")
        seed = int(torch.randint(0, 2**63 - 1, (1,), generator=generator, device=gdev).item())
        rng = np.random.default_rng(seed)
        t = self._np
        idx = index.detach().cpu().numpy().astype(np.int64, copy=False)
        b, k = len(idx), self.cfg.k
        start, count = t["start"][idx], t["count"][idx]
        pool = self.n - count
        pos = np.empty((b, k + 1), dtype=np.int64)
        neg = pos[:, 1:]
        if self.cfg.replace:
            high = int(pool[0]) if b and (pool == pool[0]).all() else pool[:, None]  # scalar bound is ~4x faster
            neg[:] = rng.integers(0, high, size=(b, k))  # Lemire's method: unbiased
        else:
            for row, m in zip(neg, pool.tolist()):
                row[:] = rng.choice(m, size=k, replace=False, shuffle=False)  # exact uniform k-subset
        neg += (neg >= start[:, None]) * count[:, None]  # skip the anchor's class block
        if self.cfg.mode == "exact":
            pos[:, 0] = t["rank"][idx]
        else:
            pos[:, 0] = start + rng.integers(0, count)
        return torch.from_numpy(np.take(t["order"], pos))


def _uniform_int(
    high: Tensor, shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device
) -> Tensor:
    """Uniform integers in ``[0, high)`` of ``shape`` (``high`` broadcasts): ``floor(u * high)``, float64 ``u``.

    The bias of float64 flooring is below ``high * 2**-53``, i.e. exact for any dataset size.
    """
    gdev = generator.device if generator is not None else torch.device("cpu")
    u = torch.rand(shape, generator=generator, device=gdev, dtype=torch.float64).to(device)
    return u.mul_(high.to(torch.float64)).long()


def _distinct_topk(
    pool: Tensor, k: int, generator: torch.Generator | None, device: torch.device, width: int | None = None
) -> Tensor:
    """k distinct uniform integers per row in ``[0, pool_b)``: the k smallest of uniform keys (GPU path).

    Keys are float64 so ties (which ``topk`` would break by position) have negligible probability;
    ``width`` (>= every pool size) avoids a device sync for ``pool.max()``.
    """
    b = pool.shape[0]
    width = int(pool.max()) if width is None else width
    gdev = generator.device if generator is not None else torch.device("cpu")
    keys = torch.rand((b, width), generator=generator, device=gdev, dtype=torch.float64).to(device)
    keys.masked_fill_(torch.arange(width, device=device)[None, :] >= pool[:, None], 2.0)
    return keys.topk(k, dim=1, largest=False, sorted=False).indices
