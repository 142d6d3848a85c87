"""CRD core: the two-bank contrast memory and the binary NCE loss.

Contrastive Representation Distillation (Tian, Krishnan & Isola, ICLR 2020), as RepDistiller runs it
(``crd/memory.py`` ``ContrastMemory``, ``crd/criterion.py`` ``ContrastLoss``, "Eq. (18)"); CKTF uses the same
files unchanged. Spec: ``cktf-algorithm.md`` section 1.

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
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable


def _row_chunks(bsz: int, chunk_rows: int) -> list[slice]:
    return [slice(start, min(start + chunk_rows, bsz)) for start in range(0, bsz, chunk_rows)]


def _gather(bank: Tensor, idx: Tensor) -> Tensor:
    """``bank[idx]`` as ``[c, K+1, d]``."""
    return bank.index_select(0, idx.reshape(-1)).view(*idx.shape, bank.shape[1])


class _BankScore(torch.autograd.Function):
    """``out[b, k] = bank[idx[b, k]] . z[b]`` without keeping the gathered ``[B, K+1, d]`` block for backward.

    Forward and backward both re-gather ``chunk_rows`` batch rows at a time and use the same ``bmm`` products as
    the naive path (autograd's ``bmm`` backward is ``W^T @ grad``), so loss and gradient match it to fp32 rounding
    (in practice bit for bit). Only ``bank`` (a reference, no copy) and ``idx`` are saved; ``bank`` goes through
    ``save_for_backward`` so an in-place change before backward raises instead of giving wrong gradients -- hence
    ``ContrastMemory.update`` writes a new bank tensor while a low-memory graph holds the old one.
    """

    @staticmethod
    def forward(ctx, z: Tensor, bank: Tensor, idx: Tensor, chunk_rows: int) -> Tensor:  # type: ignore[override]
        out = z.new_empty(idx.shape)
        for rows in _row_chunks(idx.shape[0], chunk_rows):
            w = _gather(bank, idx[rows])
            out[rows] = torch.bmm(w, z[rows].unsqueeze(2)).squeeze(2)
            del w  # one chunk alive at a time
        ctx.save_for_backward(bank, idx)
        ctx.chunk_rows = chunk_rows
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        bank, idx = ctx.saved_tensors
        grad_z = None
        if ctx.needs_input_grad[0]:
            grad_z = grad_out.new_empty(idx.shape[0], bank.shape[1])
            for rows in _row_chunks(idx.shape[0], ctx.chunk_rows):
                w = _gather(bank, idx[rows])
                grad_z[rows] = w.transpose(1, 2).bmm(grad_out[rows].unsqueeze(2)).squeeze(2)
                del w
        return grad_z, None, None, None


class ContrastMemory(nn.Module):
    """Two ``N_data x d`` memory banks and the one-shot normalisers ``Z`` of CRD (RepDistiller ``ContrastMemory``).

    Args:
        feat_dim: embedding size ``d`` (128 in CRD/CKTF).
        n_data: number of training samples ``N_data`` (bank rows).
        momentum: bank momentum ``m`` (0.5).
        low_memory: default for ``score``: re-gather bank rows in backward instead of keeping the ``[B, K+1, d]``
            gather per bank (~1.07 GB per module at B=64, K=16384, d=128). Same loss and gradients.
        chunk_elems: low-memory path only: largest transient gather, in elements (``2**24`` = 64 MiB fp32).
        dense: default for ``score``: score each anchor against the *whole* other bank with one matmul
            (``z @ W.T``, ``[B, N_data]``) and gather the ``K+1`` columns, instead of gathering ``[B, K+1, d]`` bank
            rows. The same numbers up to fp32 summation order; it reads each bank once per step instead of
            ``B (K+1) / N_data`` times (about 21x at B=64, K=16384, N=50k) and keeps only the ``[B, N_data]`` score
            gradient buffer in backward (12.8 MB at N=50k) instead of the gathered rows. Wins when
            ``B (K+1) > N_data``, i.e. for every CIFAR / Tiny-ImageNet / STL-10 setting of the paper.
        generator: RNG for the bank initialisation ``U(-s, s)``, ``s = 1/sqrt(d/3)``; the student bank is drawn
            first, as upstream draws ``memory_v1`` first.
    """

    def __init__(
        self,
        feat_dim: int,
        n_data: int,
        momentum: float = 0.5,
        low_memory: bool = False,
        chunk_elems: int = 2**24,
        generator: torch.Generator | None = None,
        dense: bool = False,
    ):
        super().__init__()
        self.momentum = float(momentum)
        self.low_memory = low_memory
        self.dense = dense
        self.chunk_elems = int(chunk_elems)
        stdv = 1.0 / math.sqrt(feat_dim / 3)
        for name in ("memory_s", "memory_t"):
            self.register_buffer(name, torch.rand(n_data, feat_dim, generator=generator).mul_(2 * stdv).add_(-stdv))
        self.register_buffer("z_s", torch.tensor(-1.0))
        self.register_buffer("z_t", torch.tensor(-1.0))
        self._bank_in_graph = False  # a low-memory graph holds the current banks: update must not write in place

    @property
    def n_data(self) -> int:
        return self.memory_s.shape[0]

    @property
    def feat_dim(self) -> int:
        return self.memory_s.shape[1]

    def _bank_scores(self, bank: Tensor, z: Tensor, idx: Tensor, low_memory: bool) -> Tensor:
        """``bank[idx[b, k]] . z[b]`` as ``[B, K+1]``; the gathered rows are detached (banks get no gradient)."""
        if self.dense:
            if torch.is_grad_enabled() and z.requires_grad:
                self._bank_in_graph = True  # mm saves the bank for backward: update must not write in place
            return torch.mm(z, bank.detach().t()).gather(1, idx)
        if not low_memory:
            return torch.bmm(_gather(bank, idx).detach(), z.unsqueeze(2)).squeeze(2)
        if torch.is_grad_enabled() and z.requires_grad:
            self._bank_in_graph = True
        chunk_rows = max(1, self.chunk_elems // (idx.shape[1] * bank.shape[1]))
        return _BankScore.apply(z, bank.detach(), idx, chunk_rows)

    def score(
        self,
        z_s_anchor: Tensor,
        z_t_anchor: Tensor,
        contrast_idx: Tensor,
        temperature: float,
        low_memory: bool | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Score both anchors against the *other* side's bank: ``(p_s, p_t)``, each ``[B, K+1]``.

        ``p_s = exp(W_t[idx] . z_s / T) / Z_s`` (student anchor vs teacher bank),
        ``p_t = exp(W_s[idx] . z_t / T) / Z_t`` (teacher anchor vs student bank). Column 0 of ``contrast_idx``
        is the positive. On the first call each ``Z`` is set to ``mean(exp-scores) * N_data`` and then frozen.
        Does not touch the banks; call ``update`` afterwards.
        """
        if contrast_idx.dim() != 2:
            raise ValueError(f"contrast_idx must be [B, K+1], got {tuple(contrast_idx.shape)}")
        if self.memory_s.dtype != torch.float32 or self.z_s.dtype != torch.float32:
            raise TypeError("ContrastMemory must stay fp32 (exp(1/T) and Z ~ 1e5 overflow fp16); do not .half() it")
        low_memory = self.low_memory if low_memory is None else low_memory
        with torch.autocast(device_type=z_s_anchor.device.type, enabled=False):
            z_s, z_t = z_s_anchor.float(), z_t_anchor.float()
            out_s = torch.exp(self._bank_scores(self.memory_t, z_s, contrast_idx, low_memory) / temperature)
            out_t = torch.exp(self._bank_scores(self.memory_s, z_t, contrast_idx, low_memory) / temperature)
            return out_s / self._normaliser(self.z_s, out_s), out_t / self._normaliser(self.z_t, out_t)

    def _normaliser(self, z_buf: Tensor, out: Tensor) -> Tensor:
        """Set ``Z`` once (``mean(out) * N_data``) without a host sync; return it as a fresh (unsaved) tensor."""
        with torch.no_grad():
            z = torch.where(z_buf < 0, out.mean() * self.n_data, z_buf)
            z_buf.copy_(z)
        return z

    @torch.no_grad()
    def update(self, z_s: Tensor, z_t: Tensor, index: Tensor) -> None:
        """Momentum update of the rows at the true sample ``index``: ``W[y] = l2(m W[y] + (1-m) z)``, both banks.

        In place (``index_copy_``), as upstream, unless a low-memory score still needs the current banks for its
        backward: then the updated banks are new tensors (same values; the old ones are freed with that graph).
        """
        copy_on_write, self._bank_in_graph = self._bank_in_graph, False
        for name, z in (("memory_s", z_s), ("memory_t", z_t)):
            bank = getattr(self, name)
            rows = bank.index_select(0, index.reshape(-1))
            rows.mul_(self.momentum).add_(z.detach().float() * (1 - self.momentum))
            rows = rows.div(rows.pow(2).sum(1, keepdim=True).pow(0.5))
            if copy_on_write:
                setattr(self, name, bank.index_copy(0, index, rows))
            else:
                bank.index_copy_(0, index, rows)


def nce_loss(p: Tensor, n_data: int, eps: float = 1e-7) -> Tensor:
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
    low_memory: bool | None = None,
) -> Tensor:
    """One CRD module: ``nce(p_s) + nce(p_t)``, then the memory update (RepDistiller ``CRDLoss.forward``).

    ``z_s``/``z_t`` are the l2-normalised head outputs (``Embed``) of student and teacher. The student-anchor term
    trains ``z_s`` (student and ``embed_s``), the teacher-anchor term only ``z_t`` (``embed_t``); the banks never
    get gradients. ``n_data`` defaults to the bank size (upstream passes ``opt.n_data`` to both).
    """
    p_s, p_t = memory.score(z_s, z_t, contrast_idx, temperature, low_memory=low_memory)
    n = memory.n_data if n_data is None else n_data
    loss = nce_loss(p_s, n) + nce_loss(p_t, n)
    memory.update(z_s, z_t, index)
    return loss
