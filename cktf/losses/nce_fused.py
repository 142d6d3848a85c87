"""Fused binary NCE of CRD: the loss and its closed-form gradient with respect to the anchor in one pass.

The default scoring of :class:`~cktf.losses.ContrastMemory` (``scoring="fused"``). Same value and gradient as
RepDistiller's ``ContrastMemory`` + ``ContrastLoss`` ("Eq. (18)") scored through autograd, up to fp32 rounding
(``tests/test_losses.py`` compares every path with the official op order). Autograd keeps one ``[B, d]`` tensor per
call instead of the ``[B, K+1, d]`` gathered bank rows, so the banks can be updated in place right after, and no
``[B, K+1]`` intermediate outlives the call. ``benchmarks/contrast_memory.py`` measures it against the other paths.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

NCE_EPS = 1e-7


def row_chunks(bsz: int, chunk_rows: int) -> list[slice]:
    return [slice(start, min(start + chunk_rows, bsz)) for start in range(0, bsz, chunk_rows)]


def gather_rows(bank: Tensor, idx: Tensor) -> Tensor:
    """``bank[idx]`` as ``[c, K+1, d]``."""
    return bank.index_select(0, idx.reshape(-1)).view(*idx.shape, bank.shape[1])


def dense_is_cheaper(bsz: int, k: int, n_bank: int) -> bool:
    """Whether one ``[B, N]`` matmul per bank beats gathering ``B (K+1)`` bank rows.

    The matmul reads the bank once and does ``B N d`` multiply-adds at GEMM speed; the gather reads ``B (K+1)`` rows
    at memory speed. With GEMMs ~10-20 flops per byte faster than gathers (CPU and GPU alike) the matmul wins while
    ``N <= B (K+1) / 2``: every CIFAR / Tiny-ImageNet / STL-10 setting of the paper (``N`` up to 100k vs 1.05M).
    """
    return 2 * n_bank <= bsz * (k + 1)


class _AttachGrad(torch.autograd.Function):
    """``loss`` (computed without autograd) with its precomputed gradient ``grad`` w.r.t. ``anchor`` attached."""

    @staticmethod
    def forward(ctx, anchor: Tensor, loss: Tensor, grad: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(grad)
        return loss.clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        (grad,) = ctx.saved_tensors
        return grad * grad_out, None, None


def fused_nce(
    anchor: Tensor,
    bank: Tensor,
    contrast_idx: Tensor,
    *,
    temperature: float,
    z_buf: Tensor,
    n_data: int,
    n_norm: int | None = None,
    dense: bool | None = None,
    chunk_elems: int = 2**24,
    eps: float = NCE_EPS,
    workspace: Tensor | None = None,
    mean: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """One side of CRD in one pass: ``nce_loss(exp(bank[idx] . anchor / T) / Z)`` and its exact gradient.

    Same value and gradient as scoring through autograd and calling :func:`nce_loss` (RepDistiller
    ``ContrastMemory`` + ``ContrastLoss``), up to fp32 rounding. With ``P = exp(s / T) / Z`` (``Z`` constant: set
    once, without gradient, on the first call, exactly as :meth:`ContrastMemory.score` sets it),
    ``c = K Pn + eps`` and ``r = P / (P + c)``, the loss of Eq. 18 is
    ``L = -(sum_b log r_b0 + sum_{b, k>0} log(K Pn / (P_bk + c))) / B`` and its derivative with respect to the raw
    score ``s_bk`` is ``(r_bk - [k = 0]) / (B T)``; the anchor's gradient is that weight times the bank rows, summed
    (one ``[B, N]`` scatter and matmul on the dense path, a chunked re-gather otherwise).

    Args:
        anchor: ``[B, d]`` fp32 l2-normalised embeddings (the side being scored).
        bank: ``[N, d]`` the *other* side's memory bank (read only, never differentiated).
        contrast_idx: ``[B, K+1]`` bank rows, column 0 the positive.
        temperature: ``T``.
        z_buf: the side's 0-dim ``Z`` buffer (``< 0`` until set; set in place on the first call).
        n_data: ``N`` of ``Pn = 1/N`` in the loss.
        n_norm: ``N`` of ``Z = mean(exp(s / T)) * N`` (default ``n_data``; the memory passes its bank size).
        dense: score by ``[B, N]`` matmul (``True``) or chunked gather (``False``); ``None``: :func:`dense_is_cheaper`.
        chunk_elems: largest transient gather of the gather path, in elements.
        eps: the ``1e-7`` of ``ContrastLoss`` (denominators only).
        workspace: optional ``[B, N]`` fp32 buffer for the dense path's scores (overwritten; never returned).
        mean: how ``Z``'s mean is taken (default: over this batch's scores; a data-parallel step passes the mean over
            the global batch, :meth:`~cktf.distributed.DistContext.global_mean`).

    Returns:
        The 0-dim loss; its graph holds one ``[B, d]`` tensor, so ``bank`` may be updated in place right after.
    """
    bsz, k1 = contrast_idx.shape
    k = k1 - 1
    n_norm = n_data if n_norm is None else n_norm
    dense = dense_is_cheaper(bsz, k, bank.shape[0]) if dense is None else dense
    need_grad = torch.is_grad_enabled() and anchor.requires_grad
    with torch.no_grad():
        a, w = anchor.detach(), bank.detach()
        if dense:
            ok = workspace is not None and workspace.shape == (bsz, w.shape[0]) and workspace.device == a.device
            full = torch.mm(a, w.t(), out=workspace) if ok else torch.mm(a, w.t())  # [B, N]: vs the whole bank
            p = full.gather(1, contrast_idx)
        else:
            full = None
            chunk_rows = max(1, chunk_elems // (k1 * w.shape[1]))
            p = a.new_empty(contrast_idx.shape)
            for rows in row_chunks(bsz, chunk_rows):
                p[rows] = torch.bmm(gather_rows(w, contrast_idx[rows]), a[rows].unsqueeze(2)).squeeze(2)
        p.div_(temperature).exp_()
        p_mean = p.mean() if mean is None else mean(p)
        z_buf.copy_(torch.where(z_buf < 0, p_mean * n_norm, z_buf))  # Z once, without a host sync
        p.div_(z_buf)
        k_pn = k * (1.0 / float(n_data))
        den = p + (k_pn + eps)
        p.div_(den)  # r = P / (P + K Pn + eps)
        log_d1 = p[:, 0].log().sum()
        log_d0 = den[:, 1:].reciprocal_().mul_(k_pn).log_().sum()  # log(K Pn / (P + K Pn + eps))
        del den
        loss = -(log_d1 + log_d0) / bsz
        if not need_grad:
            return loss
        p[:, 0] -= 1.0
        p.mul_(1.0 / (bsz * temperature))  # dL/ds
        if full is not None:
            full.zero_().scatter_add_(1, contrast_idx, p)  # duplicates (sampling with replacement) add up
            grad = torch.mm(full, w)
        else:
            grad = torch.empty_like(a)
            for rows in row_chunks(bsz, chunk_rows):
                grad[rows] = gather_rows(w, contrast_idx[rows]).transpose(1, 2).bmm(p[rows].unsqueeze(2)).squeeze(2)
        del full, p
    return _AttachGrad.apply(anchor, loss, grad)
