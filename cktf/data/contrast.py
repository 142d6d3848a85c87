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
``[start_c, start_c + count_c)``, so its negative pool is the cyclic run of the ``m_c = N - count_c`` positions
that starts at ``base_c = start_c + count_c``: position ``r`` of the pool is ``order2[base_c + r]`` with
``order2 = order ++ order``, one lookup and no branch. With replacement ``r`` is one uniform draw per column.
Without replacement each anchor takes the window ``q[s], q[s+1], ..., q[s+K-1]`` (cyclically) of one uniform
permutation ``q`` of ``[0, m)`` drawn per batch, at its own uniform offset ``s``:

* every fixed window of a uniform permutation is a uniform K-subset, so each row is an exact uniform draw
  without replacement from its pool (the distribution of ``Generator.choice(m, K, replace=False)``);
* the rows of one batch share ``q`` and so are not independent of each other; two rows overlap in
  ``K**2 / m`` negatives on average, exactly as two independent draws do;
* cost: one ``randperm(m)`` per batch and one gather per output element (no per-row sort, no per-row
  ``choice``), on the CPU as on the GPU.
* ``draw="independent"`` (``data.contrast_draw``) draws every row on its own instead (numpy's
  ``Generator.choice`` per row on the CPU, a ``randperm`` per row on the GPU): rows independent of each other as
  well, like the official per-sample ``np.random.choice``, at about 10x the cost; the two backends then differ.

Rows whose pools differ in size (imbalanced classes) take one permutation per distinct size. All randomness
comes from the ``torch.Generator`` passed in, the same draws for both backends: the ``numpy`` backend (CPU:
a gather per row with no OpenMP region, so no stalls on a busy machine) and the ``torch`` backend (GPU:
batched gathers on the device) return the same indices for the same generator state (window draws and draws with
replacement).
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
#: how rows without replacement are drawn (module docstring)
CONTRAST_DRAWS = ("window", "independent")


@dataclass(frozen=True)
class ContrastConfig:
    """What ``contrast_idx`` a loader adds to each train batch (docs/algorithm.md §3).

    Attributes:
        k: negatives per anchor (CRD/CKTF ``nce_k``, 16384).
        mode: ``"exact"`` (positive = the anchor) or ``"relax"`` (positive = a random same-class sample).
        replace: draw negatives with replacement (official Tiny-ImageNet) or without (official CIFAR).
        draw: without replacement, ``"window"`` (windows of one permutation per batch: exact per row, rows of a
            batch dependent) or ``"independent"`` (each row drawn on its own: independent rows, about 10x the time).
    """

    k: int = 16384
    mode: Literal["exact", "relax"] = "exact"
    replace: bool = False
    draw: Literal["window", "independent"] = "window"


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
        # a copy: the labels may be a read-only view into the object store (torch warns on those), and are small
        t = targets if isinstance(targets, Tensor) else torch.from_numpy(np.array(targets, dtype=np.int64))
        t = t.long().cpu()
        n = int(t.numel())
        self.n = n
        if cfg.mode not in CONTRAST_MODES:
            raise ConfigError("data.contrast_mode", f"must be one of {', '.join(CONTRAST_MODES)}, got {cfg.mode!r}")
        if cfg.draw not in CONTRAST_DRAWS:
            raise ConfigError("data.contrast_draw", f"must be one of {', '.join(CONTRAST_DRAWS)}, got {cfg.draw!r}")
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
        pools = torch.unique(n - count)
        self.pool_size = int(pools[0]) if pools.numel() == 1 else None  # balanced classes: one permutation
        base = start + count  # the anchor's pool starts after its class block, cyclically
        order2 = torch.cat([order, order])
        self._np = {"base": base.numpy(), "order2": order2.numpy()}
        self.base, self.order2 = base.to(self.device), order2.to(self.device)
        self._cpu = (order, start, count)
        self._tables: dict[torch.device, tuple[Tensor, Tensor, Tensor]] = {}

    def _draw_tables(self, dev: torch.device) -> tuple[Tensor, Tensor, Tensor]:
        """``order, start, count`` on the generator's device (the draws run there, without a sync)."""
        if dev not in self._tables:
            self._tables[dev] = tuple(t.to(dev) for t in self._cpu)  # type: ignore[assignment]
        return self._tables[dev]

    def sample(self, index: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """``contrast_idx`` int64 [B, K+1] for anchors ``index`` (rows of the train split), on ``device``.

        Column 0 is the positive, columns 1..K the negatives (see the module docstring for the draw).
        """
        index = index.long()
        gdev = generator.device if generator is not None else torch.device("cpu")
        b, k = index.shape[0], self.cfg.k
        order, start, count = self._draw_tables(gdev)
        count = count.index_select(0, index.to(gdev))
        pool = self.n - count
        if self.cfg.replace:
            if self.pool_size is not None:  # one bound: randint (modulo bias below m / 2**32, 1e-5 on CIFAR)
                r = torch.randint(0, self.pool_size, (b, k), generator=generator, device=gdev)
            else:
                r = _uniform_int(pool[:, None], (b, k), generator, gdev)
            draws = [(None, None, r)]
        else:
            draws = self._windows(pool, b, k, generator, gdev)
        if self.cfg.mode == "exact":
            positive = index.to(gdev)
        else:
            first = start.index_select(0, index.to(gdev))
            positive = order[first + _uniform_int(count, (b,), generator, gdev)]
        if self.backend == "numpy":
            return self._gather_numpy(index, positive, draws).to(self.device)
        return self._gather_torch(index.to(self.device), positive.to(self.device), draws)

    def _windows(
        self, pool: Tensor, b: int, k: int, generator: torch.Generator | None, gdev: torch.device
    ) -> list[tuple[Tensor | None, Tensor, Tensor | None]]:
        """Per group of rows with one pool size ``m``: ``(rows, q, offsets)``, ``q`` a uniform permutation of
        ``[0, m)`` and one uniform offset per row (``rows`` None = every row); ``independent``: one group per row
        whose ``q`` is the row's K draws and whose offsets are None."""
        if self.cfg.draw == "independent":
            ms = pool.tolist()
            if self.backend == "numpy":  # numpy's partial shuffle: K draws per row, not a whole permutation
                seed = int(torch.randint(0, 2**63 - 1, (1,), generator=generator, device=gdev).item())
                rng = np.random.default_rng(seed)
                rows = [torch.from_numpy(rng.choice(m, size=k, replace=False, shuffle=False)) for m in ms]
            else:
                rows = [torch.randperm(m, generator=generator, device=gdev)[:k] for m in ms]
            return [(torch.tensor([i]), q, None) for i, q in enumerate(rows)]  # no offset: q is the row
        if self.pool_size is not None:  # balanced classes: one pool size, no sync
            m = self.pool_size
            q = torch.randperm(m, generator=generator, device=gdev)
            return [(None, q, torch.randint(0, m, (b,), generator=generator, device=gdev))]
        out = []
        for m in torch.unique(pool).tolist():  # sorted: the same draw order on every backend
            rows = (pool == m).nonzero().squeeze(1)
            q = torch.randperm(m, generator=generator, device=gdev)
            out.append((rows, q, torch.randint(0, m, (rows.numel(),), generator=generator, device=gdev)))
        return out

    def _gather_numpy(self, index: Tensor, positive: Tensor, draws) -> Tensor:
        """CPU: one ``np.take`` per row from the anchor's cyclic pool ``order2[base:]``."""
        k = self.cfg.k
        idx = index.cpu().numpy()
        base = self._np["base"][idx]
        order2 = self._np["order2"]
        out = np.empty((len(idx), k + 1), dtype=np.int64)
        out[:, 0] = positive.cpu().numpy()
        for rows, q, third in draws:
            rows = range(len(idx)) if rows is None else rows.tolist()
            if q is None:  # with replacement: third is [B, K] draws
                r = third.cpu().numpy()
                for i in rows:
                    np.take(order2[base[i] :], r[i], out=out[i, 1:])
                continue
            qn = q.cpu().numpy()
            if third is None:  # independent: q is the row itself
                np.take(order2[base[rows[0]] :], qn, out=out[rows[0], 1:])
                continue
            q2 = np.concatenate([qn, qn[:k]])  # windows wrap around cyclically
            for i, s in zip(rows, third.cpu().tolist()):
                np.take(order2[base[i] :], q2[s : s + k], out=out[i, 1:])
        return torch.from_numpy(out)

    def _gather_torch(self, index: Tensor, positive: Tensor, draws) -> Tensor:
        """Device: the same gathers batched, ``order2[base + q[(s + j) mod m]]``."""
        k, dev = self.cfg.k, self.device
        out = torch.empty((index.shape[0], k + 1), dtype=torch.long, device=dev)
        out[:, 0] = positive
        base = self.base.index_select(0, index)
        cols = torch.arange(k, device=dev)
        for rows, q, third in draws:
            if q is None:
                r = third.to(dev)
            elif third is None:  # independent: q is the row itself
                r = q.to(dev)[None, :]
            else:
                q, s = q.to(dev), third.to(dev)
                r = q[(s[:, None] + cols).remainder_(q.numel())]
            sel = slice(None) if rows is None else rows.to(dev)
            b_rows = base if rows is None else base[sel]
            out[sel, 1:] = self.order2[b_rows[:, None] + r]
        return out


def _uniform_int(
    high: Tensor, shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device
) -> Tensor:
    """Uniform integers in ``[0, high)`` of ``shape`` (``high`` broadcasts): ``floor(u * high)``, float64 ``u``.

    The bias of float64 flooring is below ``high * 2**-53``, i.e. exact for any dataset size.
    """
    gdev = generator.device if generator is not None else torch.device("cpu")
    u = torch.rand(shape, generator=generator, device=gdev, dtype=torch.float64).to(device)
    return u.mul_(high.to(torch.float64)).long()
