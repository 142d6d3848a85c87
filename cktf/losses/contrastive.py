"""CRD core: the two-bank contrast memory and the binary NCE loss.

Contrastive Representation Distillation (Tian, Krishnan & Isola, ICLR 2020), as RepDistiller runs it
(``crd/memory.py`` ``ContrastMemory``, ``crd/criterion.py`` ``ContrastLoss``, "Eq. (18)"); CKTF uses the same
files unchanged (docs/algorithm.md §2).

Naming vs official:

============================  ===============================================================
here                          RepDistiller
============================  ===============================================================
``memory_s`` (student bank)   ``memory_v1`` (updated with ``v1 = embed_s(f_s)``)
``memory_t`` (teacher bank)   ``memory_v2`` (updated with ``v2 = embed_t(f_t)``)
``z_s``  (Z of ``p_s``)       ``params[2]`` = ``Z_v1``: normalises ``out_v1`` = student anchor vs ``memory_v2``
``z_t``  (Z of ``p_t``)       ``params[3]`` = ``Z_v2``: normalises ``out_v2`` = teacher anchor vs ``memory_v1``
``p_s, p_t`` (``[B, K+1]``)   ``out_v1, out_v2`` (``[B, K+1, 1]``), returned in that order
============================  ===============================================================

The positive (column 0 of ``contrast_idx``) is a *memory entry*, the other side's embedding stored the last time
that sample was seen, not the current one; scoring happens before the momentum update, which uses the true sample
index. Everything here runs in fp32 with autocast off (``exp(1/T)`` overflows fp16).

Scoring paths (:data:`SCORINGS`; both give the same loss and gradients up to fp32 summation order, tested):

* ``gather``: the official op order, ``bmm(bank[idx], z)`` through autograd (keeps the ``[B, K+1, d]`` gather per bank
  for backward: 1.07 GB per critic at B=64, K=16384, d=128). It is the reference the fused path is tested against.
* ``fused`` (what the distillers use by default): :func:`fused_nce` computes the binary NCE *and its exact gradient
  with respect to the anchor* in one no-grad pass (the gradient of Eq. 18 is closed-form: ``dL/ds_k = (r_k - [k=0]) /
  (B T)`` with ``r = P / (P + K Pn + eps)``), scoring by the dense matmul or by a chunked gather, whichever reads less
  (:func:`dense_is_cheaper`). Autograd keeps only the ``[B, d]`` gradient, so the banks can be updated in place right
  away and no ``[B, K+1]`` intermediate outlives the call.

Memories (:data:`MEMORIES`, the ``memory`` field of CRD and CKTF):

* ``bank`` (:class:`ContrastMemory`, the default and the official code's): two ``N_data x d`` banks, negatives are
  the bank rows ``contrast_idx`` names.
* ``queue`` (:class:`ContrastQueue`, an extension, MoCo style; docs/algorithm.md §13): two FIFO queues of the last
  ``K`` keys, every anchor's negatives are the whole queue and its positive is the other side's current key.

In a data-parallel step (:mod:`cktf.distributed`) both hold the same values on every worker: each step's keys are
all-gathered and every worker applies the update of the global batch, in its order, and the one-shot ``Z`` is set
from the mean over the global batch; a worker's loss is then exactly one process's loss of its rows.
:func:`contrast_memory_bytes` says how much memory they take per worker.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from ..distributed import current
from .nce_fused import NCE_EPS, fused_nce, gather_rows

#: how a :class:`ContrastMemory` computes the scores (see the module docstring)
SCORINGS = ("fused", "gather")
#: what a critic's negatives come from: the official memory bank, or a FIFO queue of recent keys (an extension)
MEMORIES = ("bank", "queue")
#: bytes of one fp32 memory entry element
FP32_BYTES = 4


def contrast_memory_bytes(memory: str, feat_dim: int, n_data: int, nce_k: int, critics: int = 1) -> int:
    """Bytes the contrastive memory of ``critics`` critics takes on each worker (every worker holds all of it).

    ``bank``: ``N_data x d x 4 bytes x 2 sides`` per critic (``memory_s``, ``memory_t``); ``queue``: ``K x d x 4 x 2``
    per critic (``queue_s``, ``queue_t``). The normalisers and the queue pointer (a few bytes) are not counted.
    """
    rows = {"bank": n_data, "queue": nce_k}[check_memory(memory)]
    return int(rows) * int(feat_dim) * FP32_BYTES * 2 * int(critics)


def check_memory(memory: str) -> str:
    if memory not in MEMORIES:
        raise ValueError(f"memory must be one of {', '.join(MEMORIES)}, got {memory!r}")
    return memory


def _z_mean(module: nn.Module) -> Callable[[Tensor], Tensor] | None:
    """How a memory's one-shot ``Z`` takes its mean: ``None`` (over this batch: one process, or ``Z`` already set),
    or over the global batch in a data-parallel step until ``Z`` is set. Whether it is set is read from the buffers
    once (a host read, on the first steps only); every worker holds the same buffers, so all decide alike."""
    dc = current()
    if dc is None or module._z_ready:
        return None
    if bool(((module.z_s >= 0) & (module.z_t >= 0)).item()):
        module._z_ready = True
        return None
    return dc.global_mean


def _gather_keys(z_s: Tensor, z_t: Tensor, index: Tensor | None) -> tuple[Tensor, Tensor, Tensor | None]:
    """The global batch's keys (and sample indices) in a data-parallel step, in rank order: the order of the rows in
    the global batch; this worker's own otherwise. One all-gather of ``[B/W, 2d]`` per critic; the index is gathered
    once per step (every critic passes the same tensor)."""
    dc = current()
    if dc is None:
        return z_s, z_t, index
    d = z_s.shape[1]
    keys = dc.all_gather_rows(torch.cat([z_s.detach().float(), z_t.detach().float()], 1), "all_gather/memory")
    if index is not None:
        index = dc.all_gather_rows(index, "all_gather/index", cache=True)
    return keys[:, :d], keys[:, d:], index


class ContrastMemory(nn.Module):
    """Two ``N_data x d`` memory banks and the one-shot normalisers ``Z`` of CRD (RepDistiller ``ContrastMemory``).

    Args:
        feat_dim: embedding size ``d`` (128 in CRD/CKTF).
        n_data: number of training samples ``N_data`` (bank rows).
        momentum: bank momentum ``m`` (0.5).
        scoring: default path of :meth:`nce` (one of :data:`SCORINGS`, module docstring): ``gather`` is the
            official op order, ``fused`` computes loss and gradient in one pass (:func:`fused_nce`).
        chunk_elems: largest transient gather of the fused path's gather mode, in elements (``2**24`` = 64 MiB
            fp32).
        generator: RNG for the bank initialisation ``U(-s, s)``, ``s = 1/sqrt(d/3)``; the student bank is drawn
            first, as upstream draws ``memory_v1`` first.
    """

    #: buffers a compact checkpoint stores in bf16 (``train.checkpoint_banks``)
    compact_buffers = ("memory_s", "memory_t")

    def __init__(
        self,
        feat_dim: int,
        n_data: int,
        momentum: float = 0.5,
        scoring: str = "gather",
        chunk_elems: int = 2**24,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        self.momentum = float(momentum)
        self.scoring = check_scoring(scoring)
        self.chunk_elems = int(chunk_elems)
        stdv = 1.0 / math.sqrt(feat_dim / 3)
        for name in ("memory_s", "memory_t"):
            self.register_buffer(name, torch.rand(n_data, feat_dim, generator=generator).mul_(2 * stdv).add_(-stdv))
        self.register_buffer("z_s", torch.tensor(-1.0))
        self.register_buffer("z_t", torch.tensor(-1.0))
        self._workspace: Tensor | None = None  # the fused dense path's [B, N_data] buffer, reused across steps
        self._z_ready = False  # Z known to be set (data-parallel steps only; :func:`_z_mean`)

    def _load_from_state_dict(self, *args, **kwargs):  # noqa: ANN002, ANN003
        self._z_ready = False  # the loaded Z may be unset
        return super()._load_from_state_dict(*args, **kwargs)

    @property
    def n_data(self) -> int:
        return self.memory_s.shape[0]

    @property
    def feat_dim(self) -> int:
        return self.memory_s.shape[1]

    def _bank_scores(self, bank: Tensor, z: Tensor, idx: Tensor) -> Tensor:
        """``bank[idx[b, k]] . z[b]`` as ``[B, K+1]`` (the official gather order); the gathered rows are detached."""
        return torch.bmm(gather_rows(bank, idx).detach(), z.unsqueeze(2)).squeeze(2)

    def score(
        self,
        z_s_anchor: Tensor,
        z_t_anchor: Tensor,
        contrast_idx: Tensor,
        temperature: float,
    ) -> tuple[Tensor, Tensor]:
        """Score both anchors against the *other* side's bank: ``(p_s, p_t)``, each ``[B, K+1]``, through autograd.

        ``p_s = exp(W_t[idx] . z_s / T) / Z_s`` (student anchor vs teacher bank),
        ``p_t = exp(W_s[idx] . z_t / T) / Z_t`` (teacher anchor vs student bank). Column 0 of ``contrast_idx``
        is the positive. On the first call each ``Z`` is set to ``mean(exp-scores) * N_data`` and then frozen.
        Does not touch the banks; call ``update`` afterwards. This is the ``gather`` path (the fused one never
        materialises ``p``).
        """
        self._check(contrast_idx)
        with torch.autocast(device_type=z_s_anchor.device.type, enabled=False):
            z_s, z_t = z_s_anchor.float(), z_t_anchor.float()
            out_s = torch.exp(self._bank_scores(self.memory_t, z_s, contrast_idx) / temperature)
            out_t = torch.exp(self._bank_scores(self.memory_s, z_t, contrast_idx) / temperature)
            mean = _z_mean(self)
            return out_s / _normaliser(self.z_s, out_s, self.n_data, mean), out_t / _normaliser(
                self.z_t, out_t, self.n_data, mean
            )

    def nce(
        self,
        z_s_anchor: Tensor,
        z_t_anchor: Tensor,
        contrast_idx: Tensor,
        temperature: float,
        n_data: int | None = None,
        scoring: str | None = None,
    ) -> Tensor:
        """``nce_loss(p_s) + nce_loss(p_t)`` of :meth:`score`'s two sides, by the path ``scoring`` (default: the
        memory's). ``n_data`` is the ``N`` of ``Pn = 1/N`` (default: the bank size). Does not touch the banks."""
        scoring = self.scoring if scoring is None else check_scoring(scoring)
        n = self.n_data if n_data is None else int(n_data)
        if scoring == "gather":
            p_s, p_t = self.score(z_s_anchor, z_t_anchor, contrast_idx, temperature)
            return nce_loss(p_s, n) + nce_loss(p_t, n)
        self._check(contrast_idx)
        with torch.autocast(device_type=z_s_anchor.device.type, enabled=False):
            kw = dict(temperature=temperature, n_data=n, n_norm=self.n_data, chunk_elems=self.chunk_elems)
            kw["workspace"] = self._scratch(contrast_idx.shape[0], z_s_anchor.device)
            kw["mean"] = _z_mean(self)
            loss_s = fused_nce(z_s_anchor.float(), self.memory_t, contrast_idx, z_buf=self.z_s, **kw)
            loss_t = fused_nce(z_t_anchor.float(), self.memory_s, contrast_idx, z_buf=self.z_t, **kw)
            return loss_s + loss_t

    def _scratch(self, bsz: int, device: torch.device) -> Tensor:
        """A persistent ``[B, N_data]`` fp32 buffer: a fresh one per call costs page faults on CPU (~6 ms at 50k)."""
        ws = self._workspace
        if ws is None or ws.shape != (bsz, self.n_data) or ws.device != device:
            ws = self._workspace = torch.empty(bsz, self.n_data, device=device)
        return ws

    def _check(self, contrast_idx: Tensor) -> None:
        if contrast_idx.dim() != 2:
            raise ValueError(f"contrast_idx must be [B, K+1], got {tuple(contrast_idx.shape)}")
        if self.memory_s.dtype != torch.float32 or self.z_s.dtype != torch.float32:
            raise TypeError("ContrastMemory must stay fp32 (exp(1/T) and Z ~ 1e5 overflow fp16); do not .half() it")

    @torch.no_grad()
    def update(self, z_s: Tensor, z_t: Tensor, index: Tensor) -> None:
        """Momentum update of the rows at the true sample ``index``: ``W[y] = l2(m W[y] + (1-m) z)``, both banks.

        In place (``index_copy_``), as upstream: neither scoring path keeps a reference to the banks for backward.
        In a data-parallel step the keys and indices of the whole global batch are gathered first, so every worker
        applies the update one process applies (:func:`_gather_keys`).
        """
        z_s, z_t, index = _gather_keys(z_s, z_t, index)
        for name, z in (("memory_s", z_s), ("memory_t", z_t)):
            bank = getattr(self, name)
            rows = bank.index_select(0, index.reshape(-1))
            rows.mul_(self.momentum).add_(z.detach().float() * (1 - self.momentum))
            rows = rows.div(rows.pow(2).sum(1, keepdim=True).pow(0.5))
            bank.index_copy_(0, index, rows)


def _normaliser(z_buf: Tensor, out: Tensor, n_norm: int, mean: Callable[[Tensor], Tensor] | None) -> Tensor:
    """Set ``Z`` once (``mean(out) * n_norm``) without a host sync; return it as a fresh (unsaved) tensor. ``mean``:
    the global batch's mean in a data-parallel step (:func:`_z_mean`), else this batch's."""
    with torch.no_grad():
        m = out.mean() if mean is None else mean(out)
        z = torch.where(z_buf < 0, m * n_norm, z_buf)
        z_buf.copy_(z)
    return z


class ContrastQueue(nn.Module):
    """Two FIFO queues of a critic's last ``K`` student and teacher keys (MoCo style): an extension, not the official
    code's memory (docs/algorithm.md §13). ``memory: queue`` on CRD and CKTF.

    * **Negatives**: the student anchor ``z_s[b]`` is scored against every entry of the *teacher* queue, the teacher
      anchor ``z_t[b]`` against every entry of the *student* queue: ``K = nce_k`` negatives, the same for every
      anchor of a step, not label-aware (a queue entry may share the anchor's class, or be the anchor's own key from
      an earlier step when ``K`` spans most of an epoch). No ``contrast_idx`` is drawn.
    * **Positive**: the other side's *current* key of the same image (``z_t[b]``, resp. ``z_s[b]``), detached, so the
      student-anchor term trains the student and ``embed_s`` and the teacher-anchor term ``embed_t`` only, as with the
      bank (whose positive is the other side's *stored* entry of the image).
    * **Loss and normaliser**: the binary NCE of the bank (:func:`nce_loss`) on ``[B, K+1]`` scores, with ``Pn =
      1/N_data`` and the one-shot ``Z = mean(exp-scores) * N_data`` of the first step, so a step starts near
      ``log(K+1) + 1`` per side as with the bank.
    * **Update**: after scoring, the step's keys (the global batch's, all-gathered, in a data-parallel step) are
      enqueued in batch order over the oldest entries; the pointer advances by ``B`` modulo ``K``. The queues start
      as ``U(-s, s)`` noise, as the banks do, and are full from the first step.

    It takes ``K x d`` per side instead of ``N_data x d``: :func:`contrast_memory_bytes`.
    """

    compact_buffers = ("queue_s", "queue_t")

    def __init__(self, feat_dim: int, size: int, n_data: int, generator: torch.Generator | None = None):
        super().__init__()
        if size < 1:
            raise ValueError(f"queue size must be >= 1, got {size}")
        self.n_norm = int(n_data)
        stdv = 1.0 / math.sqrt(feat_dim / 3)
        for name in ("queue_s", "queue_t"):
            self.register_buffer(name, torch.rand(size, feat_dim, generator=generator).mul_(2 * stdv).add_(-stdv))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("z_s", torch.tensor(-1.0))
        self.register_buffer("z_t", torch.tensor(-1.0))
        self._z_ready = False

    def _load_from_state_dict(self, *args, **kwargs):  # noqa: ANN002, ANN003
        self._z_ready = False
        return super()._load_from_state_dict(*args, **kwargs)

    @property
    def size(self) -> int:
        return self.queue_s.shape[0]

    @property
    def feat_dim(self) -> int:
        return self.queue_s.shape[1]

    def score(self, z_s_anchor: Tensor, z_t_anchor: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
        """``(p_s, p_t)``, each ``[B, K+1]`` through autograd: column 0 the positive (the other side's current key,
        detached), columns 1..K the other side's queue. ``Z`` is set on the first call and then frozen."""
        if self.queue_s.dtype != torch.float32:
            raise TypeError("ContrastQueue must stay fp32 (exp(1/T) overflows fp16); do not .half() it")
        with torch.autocast(device_type=z_s_anchor.device.type, enabled=False):
            z_s, z_t = z_s_anchor.float(), z_t_anchor.float()
            out_s = self._scores(z_s, z_t.detach(), self.queue_t, temperature)
            out_t = self._scores(z_t, z_s.detach(), self.queue_s, temperature)
            mean = _z_mean(self)
            return out_s / _normaliser(self.z_s, out_s, self.n_norm, mean), out_t / _normaliser(
                self.z_t, out_t, self.n_norm, mean
            )

    @staticmethod
    def _scores(anchor: Tensor, positive: Tensor, queue: Tensor, temperature: float) -> Tensor:
        pos = (anchor * positive).sum(1, keepdim=True)
        neg = anchor @ queue.detach().t()
        return torch.exp(torch.cat([pos, neg], 1) / temperature)

    def nce(self, z_s_anchor: Tensor, z_t_anchor: Tensor, temperature: float, n_data: int | None = None) -> Tensor:
        """``nce_loss(p_s) + nce_loss(p_t)`` of :meth:`score`; ``n_data`` is the ``N`` of ``Pn`` (default: the
        ``N_data`` the queue was built with). Does not touch the queues."""
        n = self.n_norm if n_data is None else int(n_data)
        p_s, p_t = self.score(z_s_anchor, z_t_anchor, temperature)
        return nce_loss(p_s, n) + nce_loss(p_t, n)

    @torch.no_grad()
    def update(self, z_s: Tensor, z_t: Tensor) -> None:
        """Enqueue the step's keys (the global batch's in a data-parallel step) over the oldest entries, FIFO."""
        z_s, z_t, _ = _gather_keys(z_s, z_t, None)
        k, b = self.size, z_s.shape[0]
        if b > k:  # only the newest K keys fit
            z_s, z_t = z_s[b - k :], z_t[b - k :]
        n = z_s.shape[0]
        pos = (self.ptr + (b - n) + torch.arange(n, device=self.ptr.device)).remainder_(k)  # key i of b at ptr + i
        # out of place: this step's scores keep the old queues for their backward
        self.queue_s = self.queue_s.index_copy(0, pos, z_s.float())
        self.queue_t = self.queue_t.index_copy(0, pos, z_t.float())
        self.ptr.copy_((self.ptr + b) % k)


def nce_loss(p: Tensor, n_data: int, eps: float = NCE_EPS) -> Tensor:
    """Binary NCE of CRD (RepDistiller ``ContrastLoss``, the code's "Eq. (18)").

    ``p``: ``[B, K+1]`` (or ``[B, K+1, 1]``) normalised scores, column 0 the positive. With ``Pn = 1/N_data``:
    ``logD1 = log(P0 / (P0 + K Pn + eps))``, ``logD0 = log(K Pn / (Pk + K Pn + eps))`` and
    ``L = -(sum_b logD1 + sum_{b,k} logD0) / B`` (summed over K, divided by B only). Not InfoNCE.
    """
    p = p.reshape(p.shape[0], -1)
    bsz, k = p.shape[0], p.shape[1] - 1
    k_pn = k * (1.0 / float(n_data))
    p_pos, p_neg = p[:, 0], p[:, 1:]
    log_d1 = torch.log(p_pos / (p_pos + (k_pn + eps)))
    log_d0 = torch.log(torch.full_like(p_neg, k_pn) / (p_neg + (k_pn + eps)))
    return -(log_d1.sum() + log_d0.sum()) / bsz


def crd_pair_loss(
    memory: ContrastMemory,
    z_s: Tensor,
    z_t: Tensor,
    index: Tensor,
    contrast_idx: Tensor,
    temperature: float,
    n_data: int | None = None,
    scoring: str | None = None,
) -> Tensor:
    """One CRD module: ``nce(p_s) + nce(p_t)``, then the memory update (RepDistiller ``CRDLoss.forward``).

    ``z_s``/``z_t`` are the l2-normalised head outputs (``Embed``) of student and teacher. The student-anchor term
    trains ``z_s`` (student and ``embed_s``), the teacher-anchor term only ``z_t`` (``embed_t``); the banks never
    get gradients. ``n_data`` defaults to the bank size (upstream passes ``opt.n_data`` to both). ``scoring``: one of
    :data:`SCORINGS` (default: the memory's own).
    """
    loss = memory.nce(z_s, z_t, contrast_idx, temperature, n_data=n_data, scoring=scoring)
    memory.update(z_s, z_t, index)
    return loss


def check_scoring(scoring: str) -> str:
    if scoring not in SCORINGS:
        raise ValueError(f"scoring must be one of {', '.join(SCORINGS)}, got {scoring!r}")
    return scoring


def built_memory_bytes(module: nn.Module) -> int:
    """The bytes of both sides' buffers (``compact_buffers``) of every contrastive memory, bank or queue, built inside
    ``module``: what :func:`contrast_memory_bytes` computes, measured on the tensors."""
    return sum(
        getattr(m, name).numel() * getattr(m, name).element_size()
        for m in module.modules()
        if isinstance(m, ContrastMemory | ContrastQueue)
        for name in m.compact_buffers
    )
