"""Exact data parallelism over W workers: the run's distributed context, its collectives and a global BatchNorm.

docs/algorithm.md §12. A run is data parallel when ``torch.distributed`` is initialised with a world size W > 1
before :func:`cktf.train.prepare_run` (Ray Train does it; :func:`launch` does it for tests and scripts). Then:

* every worker builds the same epoch plan and takes its rows of each global batch (:func:`shard_bounds`), with the
  negatives drawn for the whole global batch (``cktf/data/loader.py``);
* each worker backpropagates its share of the loss weighted by its share of the batch, and the gradients are summed
  (:meth:`DistContext.all_reduce_grads`): the step of one process on the global batch, up to fp32 summation order;
* what couples the samples of a batch is computed over the global batch: the contrastive memory's update and its
  one-shot ``Z`` (``cktf/losses/contrastive.py``), CKTF's normalisation over the batch (``cktf/losses/
  stage_pairs.py``) and, with ``train.sync_bn``, BatchNorm (:class:`SyncBatchNorm`).

The collectives that the loss code issues are active only inside :meth:`DistContext.step` (a training step): the
same modules evaluated, probed or used by a callback on one rank never wait for the others. Outside a process
group, or with W = 1, nothing here runs and the training loop is today's.

Bytes are counted per tag (:attr:`DistContext.bytes`) as the *payload* of each collective: the gathered output of
an all-gather (every worker ends up holding it), the tensor of an all-reduce or a broadcast. A ring implementation
sends about ``(W-1)/W`` of an all-gather's payload and ``2 (W-1)/W`` of an all-reduce's per worker.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import socket
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

log = logging.getLogger("cktf")

#: the context of the training step running in this process (set by :meth:`DistContext.step`), else None
_CURRENT: DistContext | None = None


def current() -> DistContext | None:
    """The distributed context of the training step being run, or None (no step, or a single process)."""
    return _CURRENT


def shard_bounds(rows: int, rank: int, world_size: int) -> tuple[int, int]:
    """``(start, stop)`` of worker ``rank``'s rows in a global batch of ``rows``: contiguous, in rank order, sizes
    differing by at most one (``rows / W`` each when W divides it)."""
    return rows * rank // world_size, rows * (rank + 1) // world_size


def shard_sizes(rows: int, world_size: int) -> list[int]:
    """The rows of every worker of a global batch of ``rows`` (:func:`shard_bounds`)."""
    return [b - a for a, b in (shard_bounds(rows, r, world_size) for r in range(world_size))]


_gather_single = getattr(dist, "all_gather_single", None) or getattr(dist, "all_gather_into_tensor", None)


class DistContext:
    """Rank, world size and device of one run, the collectives it uses and the bytes they move.

    ``DistContext()`` is the single-process context (rank 0 of 1, :attr:`active` False). :meth:`from_torch` reads an
    initialised process group; the caller initialises it (Ray Train, or :func:`launch`).

    Attributes:
        bytes: payload bytes per tag (module docstring), e.g. ``all_gather/memory``, ``all_reduce/grads``.
        calls: collectives per tag.
        seconds: wall time in the collectives per tag: the transfer and the wait for the slowest worker with gloo;
            with NCCL only the time to enqueue them (they run asynchronously on the device).
    """

    def __init__(self, rank: int = 0, world_size: int = 1, device: torch.device | str = "cpu", group: Any = None):
        self.rank, self.world_size = int(rank), int(world_size)
        self.device = torch.device(device)
        self.group = group
        self.bytes: Counter[str] = Counter()
        self.calls: Counter[str] = Counter()
        self.seconds: Counter[str] = Counter()
        self._rows: list[int] | None = None  # the current step's rows per worker
        self._cache: dict[tuple, Tensor] = {}  # gathers shared by the critics of one step (the batch's index)
        self._grad_buffer: Tensor | None = None
        self._backend = str(dist.get_backend(group)) if self.active else ""

    @classmethod
    def from_torch(cls, device: torch.device | str = "cpu") -> DistContext:
        """The context of the initialised default process group (single-process when there is none)."""
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size(), device)
        return cls(device=device)

    # ------------------------------------------------------------------ what a run asks
    @property
    def active(self) -> bool:
        """More than one worker: the run is data parallel."""
        return self.world_size > 1

    @property
    def lead(self) -> bool:
        """Rank 0: the worker that writes the run's files and calls its callbacks."""
        return self.rank == 0

    @property
    def backend(self) -> str:
        """The process group's backend (``gloo``, ``nccl``); empty for a single process."""
        return self._backend

    def shard(self, rows: int) -> tuple[int, int]:
        """This worker's ``(start, stop)`` in a global batch of ``rows`` (:func:`shard_bounds`)."""
        return shard_bounds(rows, self.rank, self.world_size)

    @contextlib.contextmanager
    def step(self, global_rows: int | None = None) -> Iterator[DistContext]:
        """The scope of one training step: the loss code's collectives (:func:`current`) are active inside it.

        ``global_rows``: the global batch's size, so variable-size gathers know every worker's rows without asking.
        """
        global _CURRENT
        prev = _CURRENT
        _CURRENT = self if self.active else None
        self._rows = shard_sizes(global_rows, self.world_size) if global_rows is not None else None
        self._cache.clear()
        try:
            yield self
        finally:
            _CURRENT = prev
            self._rows = None
            self._cache.clear()

    def reset_counters(self) -> None:
        self.bytes.clear()
        self.calls.clear()
        self.seconds.clear()

    @contextlib.contextmanager
    def _count(self, tag: str, t: Tensor) -> Iterator[None]:
        t0 = time.perf_counter()
        yield
        self.seconds[tag] += time.perf_counter() - t0
        self.bytes[tag] += t.numel() * t.element_size()
        self.calls[tag] += 1

    # ------------------------------------------------------------------ collectives
    def _on_comm_device(self, t: Tensor) -> tuple[Tensor, bool]:
        """NCCL moves CUDA tensors only: a CPU tensor travels through the run's device."""
        if self.backend == "nccl" and not t.is_cuda:
            return t.to(self.device), True
        return t, False

    def all_reduce_(self, t: Tensor, tag: str = "all_reduce", op: Any = None) -> Tensor:
        """Sum (or ``op``) ``t`` over the workers, in place; every worker gets the bitwise same result."""
        if not self.active:
            return t
        with self._count(tag, t):
            buf, moved = self._on_comm_device(t if t.is_contiguous() else t.contiguous())
            dist.all_reduce(buf, op=dist.ReduceOp.SUM if op is None else op, group=self.group)
            if moved or buf is not t:
                t.copy_(buf)
        return t

    def all_reduce_mean_(self, t: Tensor, tag: str = "all_reduce/average") -> Tensor:
        """The mean of ``t`` over the workers (elementwise), in place."""
        if not self.active:
            return t
        return self.all_reduce_(t, tag).div_(self.world_size)

    def all_reduce_sum(self, t: Tensor, tag: str = "all_reduce") -> Tensor:
        """The sum of ``t`` over the workers as a new tensor, differentiable: the gradient of each worker's input is
        the sum of every worker's gradient of the output (each worker's loss depends on every worker's input)."""
        if not self.active:
            return t
        if torch.is_grad_enabled() and t.requires_grad:
            return _AllReduceSum.apply(t, self, tag)
        return self.all_reduce_(t.detach().clone(memory_format=torch.contiguous_format), tag)

    def global_mean(self, t: Tensor, tag: str = "all_reduce/mean") -> Tensor:
        """The mean of all of ``t``'s elements over every worker's ``t`` (shapes may differ), not differentiated."""
        s = torch.stack([t.detach().sum(dtype=torch.float64), torch.tensor(t.numel(), device=t.device).double()])
        self.all_reduce_(s, tag)
        return (s[0] / s[1]).to(t.dtype)

    def all_gather(self, t: Tensor, tag: str = "all_gather") -> Tensor:
        """Every worker's ``t`` (the same shape on all) concatenated along dim 0 in rank order; not differentiated."""
        if not self.active:
            return t
        t = t.detach().contiguous()
        out = t.new_empty((self.world_size * t.shape[0], *t.shape[1:]))
        with self._count(tag, out):
            src, _ = self._on_comm_device(t)
            dst, moved = self._on_comm_device(out)
            _gather_single(dst, src, group=self.group)
            if moved:
                out.copy_(dst)
        return out

    def all_gather_rows(
        self, t: Tensor, tag: str = "all_gather", sizes: Sequence[int] | None = None, cache: bool = False
    ) -> Tensor:
        """Every worker's rows of ``t`` concatenated in rank order, when workers may hold different numbers of rows.

        ``sizes``: every worker's rows; default: the step's shards (:meth:`step`), else one more all-gather asks.
        ``cache``: the same tensor gathered again within the step is not sent again (the index every critic uses).
        """
        if not self.active:
            return t
        key = (tag, id(t), t.data_ptr(), tuple(t.shape))
        if cache and key in self._cache:
            return self._cache[key]
        if sizes is None:
            sizes = self._rows
        if sizes is None:
            n = self.all_gather(torch.tensor([t.shape[0]], device=t.device), tag="all_gather/sizes")
            sizes = [int(x) for x in n.tolist()]
        sizes = list(sizes)
        if sizes[self.rank] != t.shape[0]:
            raise RuntimeError(f"rank {self.rank} holds {t.shape[0]} rows, the step's shards say {sizes[self.rank]}")
        top = max(sizes)
        if all(s == top for s in sizes):
            out = self.all_gather(t, tag)
        else:
            padded = t.new_zeros((top, *t.shape[1:]))
            padded[: t.shape[0]] = t.detach()
            full = self.all_gather(padded, tag)
            out = torch.cat([full[r * top : r * top + s] for r, s in enumerate(sizes)])
        if cache:
            self._cache[key] = out
        return out

    def all_gather_diff(self, t: Tensor, tag: str = "all_gather") -> Tensor:
        """:meth:`all_gather` of equal shapes, differentiable (each worker's input gets the sum of every worker's
        gradient of its rows)."""
        if not self.active:
            return t
        return _AllGather.apply(t, self, tag)

    def broadcast_(self, t: Tensor, src: int = 0, tag: str = "broadcast") -> Tensor:
        """Worker ``src``'s ``t`` on every worker, in place."""
        if not self.active:
            return t
        with self._count(tag, t):
            buf, moved = self._on_comm_device(t if t.is_contiguous() else t.contiguous())
            dist.broadcast(buf, src=src, group=self.group)
            if moved or buf is not t:
                t.copy_(buf)
        return t

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        """Worker ``src``'s picklable ``obj`` on every worker."""
        if not self.active:
            return obj
        box = [obj if self.rank == src else None]
        device = self.device if self.backend == "nccl" else None
        dist.broadcast_object_list(box, src=src, group=self.group, device=device)
        return box[0]

    def barrier(self) -> None:
        if self.active:
            if self.backend == "nccl":
                dist.barrier(group=self.group, device_ids=[self.device.index or 0])
            else:
                dist.barrier(group=self.group)

    # ------------------------------------------------------------------ what a training step needs
    def all_reduce_grads(self, params: Iterable[nn.Parameter], tag: str = "all_reduce/grads") -> None:
        """Sum the gradients of ``params`` over the workers, in one flat buffer (each worker scaled its loss by its
        share of the global batch, so the sum is the single-process gradient). Parameters without a gradient (the
        same on every worker: they run the same graph) are left without one."""
        if not self.active:
            return
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return
        n = sum(g.numel() for g in grads)
        dtype, device = grads[0].dtype, grads[0].device
        buf = self._grad_buffer
        if buf is None or buf.numel() != n or buf.dtype != dtype or buf.device != device:
            buf = self._grad_buffer = torch.empty(n, dtype=dtype, device=device)
        offset = 0
        for g in grads:
            buf[offset : offset + g.numel()].copy_(g.reshape(-1))
            offset += g.numel()
        self.all_reduce_(buf, tag)
        offset = 0
        for g in grads:
            g.copy_(buf[offset : offset + g.numel()].view_as(g))
            offset += g.numel()

    def broadcast_tensors(
        self, tensors: dict[str, Tensor], src: int = 0, tag: str = "broadcast/state"
    ) -> dict[str, Tensor]:
        """Worker ``src``'s tensors of a dict with the same keys and shapes on every worker (a state dict: broadcast in
        place where a tensor is contiguous, into a contiguous copy otherwise); the caller loads the result."""
        if not self.active:
            return tensors
        return {k: self.broadcast_(t if t.is_contiguous() else t.contiguous(), src, tag) for k, t in tensors.items()}

    def average_batchnorm_stats(self, module: nn.Module) -> None:
        """Average the BatchNorm running statistics over the workers (per-worker BN: each saw its own rows).

        The running mean is an exponential average of batch means, linear in them, so averaging now gives what
        averaging after every step would: the running mean of the global batch's means (its variance: the mean of
        the per-worker variances, which lacks the spread of the workers' means). With ``train.sync_bn`` every
        worker holds the same statistics and averaging leaves them unchanged."""
        if not self.active:
            return
        stats = [
            t
            for m in module.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
            for t in (m.running_mean, m.running_var)
            if t is not None
        ]
        if not stats:
            return
        flat = self.all_reduce_mean_(torch.cat([t.reshape(-1).float() for t in stats]), "all_reduce/bn_stats")
        offset = 0
        for t in stats:
            t.copy_(flat[offset : offset + t.numel()].view_as(t))
            offset += t.numel()


class _AllReduceSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, t: Tensor, dc: DistContext, tag: str) -> Tensor:  # type: ignore[override]
        ctx.dc, ctx.tag = dc, tag
        return dc.all_reduce_(t.detach().clone(memory_format=torch.contiguous_format), tag)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        g = grad.clone(memory_format=torch.contiguous_format)
        return ctx.dc.all_reduce_(g, ctx.tag + "/backward"), None, None


class _AllGather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, t: Tensor, dc: DistContext, tag: str) -> Tensor:  # type: ignore[override]
        ctx.dc, ctx.tag, ctx.rows = dc, tag, t.shape[0]
        return dc.all_gather(t, tag)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        g = ctx.dc.all_reduce_(grad.clone(memory_format=torch.contiguous_format), ctx.tag + "/backward")
        rank, n = ctx.dc.rank, ctx.rows
        return g[rank * n : (rank + 1) * n], None, None


# ---------------------------------------------------------------------------------------------- BatchNorm
class SyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training-step statistics are the global batch's (every worker's rows), on any backend.

    ``torch.nn.SyncBatchNorm`` refuses CPU tensors (gloo) and would issue its collectives wherever the module runs in
    train mode, e.g. in a callback on rank 0 alone. This one synchronises inside a training step only
    (:meth:`DistContext.step`) and is plain BatchNorm everywhere else. It works as ``torch.nn.SyncBatchNorm`` does:

    * forward: each worker's count, mean and sum of squared deviations per channel (one ``var_mean``), one
      all-gather of them per layer, combined by Chan's parallel formula into the global batch's mean and (biased)
      variance, which normalise the rows and update the running statistics (the unbiased variance, as
      ``nn.BatchNorm2d``);
    * backward: one all-reduce of the per-channel sums of ``dy`` and ``dy (x - mean)``, so the input gradient is the
      one of BatchNorm over the global batch; the weight's and bias's gradients are this worker's part (the step's
      gradient all-reduce sums them).
    """

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, x: Tensor) -> Tensor:
        dc = current()
        if dc is None or not self.training or not dc.active:
            return super().forward(x)
        self._check_input_dim(x)
        c = x.shape[1]
        dims = [0, *range(2, x.dim())]
        with torch.no_grad():
            var_l, mean_l = torch.var_mean(x.float(), dims, correction=0)
            n_l = x.numel() // c
            every = dc.all_gather(torch.cat([mean_l.new_tensor([float(n_l)]), mean_l, var_l * n_l])[None], _BN_TAG)
            counts, means, m2s = every[:, :1], every[:, 1 : 1 + c], every[:, 1 + c :]
            n = counts.sum()
            mean = (counts * means).sum(0) / n
            m2 = (m2s + counts * (means - mean).square()).sum(0)
            if self.track_running_stats and self.running_mean is not None:
                if self.num_batches_tracked is not None:
                    self.num_batches_tracked.add_(1)
                factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                unbiased = m2 / (n - 1).clamp_min(1)
                self.running_mean.mul_(1 - factor).add_(mean.to(self.running_mean.dtype), alpha=factor)
                self.running_var.mul_(1 - factor).add_(unbiased.to(self.running_var.dtype), alpha=factor)
        return _SyncBatchNormFn.apply(x, self.weight, self.bias, mean, m2 / n, float(n), self.eps, dc)


_BN_TAG = "all_gather/sync_bn"


class _SyncBatchNormFn(torch.autograd.Function):
    """``y = (x - mean) / sqrt(var + eps) * w + b`` with the global batch's ``mean`` and ``var``, and its backward."""

    @staticmethod
    def forward(ctx, x, weight, bias, mean, var, n, eps, dc):  # type: ignore[override]
        # (x - mean) * invstd * w + b in this order: the rounding of the native train-mode kernel on the CPU (the
        # fused x * alpha + beta of the eval-mode kernel drifts measurably further from it in a training run)
        invstd = torch.rsqrt(var + eps)
        shape = [1, -1] + [1] * (x.dim() - 2)
        y = (x.float() - mean.view(shape)) * invstd.view(shape)
        if weight is not None:
            y = y * weight.view(shape) + bias.view(shape)
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.n, ctx.dc = n, dc
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx, dy):  # type: ignore[override]
        x, weight, mean, invstd = ctx.saved_tensors
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        dyf = dy.float()
        xmu = x.float() - mean.view(shape)
        sum_dy = dyf.sum(dims)
        sum_dy_xmu = (dyf * xmu).sum(dims)
        g_weight = sum_dy_xmu * invstd if weight is not None and ctx.needs_input_grad[1] else None
        g_bias = sum_dy.clone() if ctx.needs_input_grad[2] else None
        dx = None
        if ctx.needs_input_grad[0]:
            c = x.shape[1]
            both = ctx.dc.all_reduce_(torch.cat([sum_dy, sum_dy_xmu]), "all_reduce/sync_bn/backward")
            mean_dy, mean_dy_xmu = both[:c] / ctx.n, both[c:] / ctx.n
            scale = invstd if weight is None else invstd * weight.float()
            dx = (dyf - mean_dy.view(shape) - xmu * (invstd.square() * mean_dy_xmu).view(shape)) * scale.view(shape)
            dx = dx.to(x.dtype)
        return dx, g_weight, g_bias, None, None, None, None, None


#: the layers :func:`convert_sync_batchnorm` replaces (a subclass may do more in its forward: timm's BatchNormAct2d)
PLAIN_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def convert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """``module`` with every plain ``BatchNorm1d/2d/3d`` replaced by a :class:`SyncBatchNorm` holding the same
    parameters and buffers (the state dict's keys and values are unchanged); returns the new module when ``module``
    itself is one, as ``torch.nn.SyncBatchNorm.convert_sync_batchnorm`` does. Other BatchNorm classes (subclasses
    with their own forward) are left per-worker, with a warning naming them."""
    if type(module) in PLAIN_BATCHNORMS:
        out = SyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
        if module.affine:
            out.weight = module.weight
            out.bias = module.bias
        out.running_mean = module.running_mean
        out.running_var = module.running_var
        out.num_batches_tracked = module.num_batches_tracked
        out.training = module.training
        return out
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, SyncBatchNorm):
        log.warning("%s is not a plain BatchNorm: it keeps each worker's batch statistics", type(module).__name__)
        return module
    for name, child in module.named_children():
        new = convert_sync_batchnorm(child)
        if new is not child:
            setattr(module, name, new)
    return module


# ---------------------------------------------------------------------------------------------- launching
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def init_process_group(
    rank: int, world_size: int, backend: str = "gloo", addr: str = "127.0.0.1", port: int | None = None
) -> DistContext:
    """Initialise the default process group (``MASTER_ADDR`` / ``MASTER_PORT`` from the arguments or the
    environment) and return its context: what a launcher other than Ray Train calls in each worker."""
    os.environ.setdefault("MASTER_ADDR", addr)
    if port is not None:
        os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group(backend, rank=rank, world_size=world_size)
    return DistContext.from_torch()


def _worker(rank: int, fn: Callable, world_size: int, backend: str, port: int, out_dir: str, args: tuple) -> None:
    torch.set_num_threads(1)
    init_process_group(rank, world_size, backend, port=port)
    try:
        result = fn(rank, world_size, *args)
        with open(Path(out_dir) / f"rank{rank}.pkl", "wb") as f:
            pickle.dump(result, f)
    finally:
        dist.destroy_process_group()


def launch(fn: Callable, world_size: int, *args: Any, backend: str = "gloo") -> list[Any]:
    """Run ``fn(rank, world_size, *args)`` in ``world_size`` fresh processes with the default process group
    initialised (``backend``, on a free loopback port, one torch thread each); returns every rank's return value (it
    must pickle). ``fn`` must be importable by name (a module-level function). A worker's error is raised here."""
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory(prefix="cktf-launch-") as tmp:
        mp.start_processes(
            _worker,
            args=(fn, world_size, backend, free_port(), tmp, args),
            nprocs=world_size,
            start_method="spawn",
        )
        out = []
        for rank in range(world_size):
            with open(Path(tmp) / f"rank{rank}.pkl", "rb") as f:
                out.append(pickle.load(f))
        return out
