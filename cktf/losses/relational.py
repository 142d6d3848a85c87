"""Relational losses: compare how samples of a batch relate to each other (SP, CC, RKD, PKT).

Copied from RepDistiller ``distiller_zoo/``; pure and stateless. Inputs are ``[B, ...]`` and flattened per sample
where the official code does so. Official versions that return a ``[1]``-shaped tensor return a 0-dim one here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def sp_loss(f_s: Tensor, f_t: Tensor) -> Tensor:
    """Similarity-Preserving Knowledge Distillation (Tung & Mori, ICCV 2019). RepDistiller ``SP.py``
    (``Similarity.similarity_loss``).

    Row-normalised Gram matrices ``G = normalize(f f^T)`` of the flattened features;
    ``||G_t - G_s||_F^2 / B^2``.
    """
    bsz = f_s.shape[0]
    f_s, f_t = f_s.reshape(bsz, -1), f_t.reshape(bsz, -1)
    g_s = F.normalize(f_s @ f_s.t())
    g_t = F.normalize(f_t @ f_t.t())
    return (g_t - g_s).pow(2).sum() / (bsz * bsz)


def cc_loss(e_s: Tensor, e_t: Tensor) -> Tensor:
    """Correlation Congruence for Knowledge Distillation (Peng et al., ICCV 2019). RepDistiller ``CC.py``
    (``Correlation``, the code the CC authors sent to the RepDistiller author).

    ``mean_i sum_d |e_s - e_t|[i] * |e_s - e_t|[i+1]`` over consecutive samples of the embeddings (the 128-d
    ``LinearEmbed`` outputs of both sides). Note this is not the paper's kernel-based correlation matrix.
    """
    delta = torch.abs(e_s - e_t)
    return torch.mean((delta[:-1] * delta[1:]).sum(1))


def rkd_pdist(e: Tensor, squared: bool = False, eps: float = 1e-12) -> Tensor:
    """Pairwise Euclidean distances ``[B, B]`` with a zero diagonal (RepDistiller ``RKDLoss.pdist``)."""
    e_square = e.pow(2).sum(dim=1)
    res = (e_square.unsqueeze(1) + e_square.unsqueeze(0) - 2 * (e @ e.t())).clamp(min=eps)
    if not squared:
        res = res.sqrt()
    eye = torch.eye(len(e), dtype=torch.bool, device=e.device)
    return res.masked_fill(eye, 0)


def _rkd_angles(x: Tensor) -> Tensor:
    """Cosines ``<e_ij, e_kj>`` of all ``B^3`` triplets (degenerate ones included, as upstream), flattened."""
    diff = F.normalize(x.unsqueeze(0) - x.unsqueeze(1), p=2, dim=2)
    return torch.bmm(diff, diff.transpose(1, 2)).reshape(-1)


def rkd_loss(f_s: Tensor, f_t: Tensor, w_d: float = 25, w_a: float = 50) -> Tensor:
    """Relational Knowledge Distillation (Park et al., CVPR 2019): distance + angle terms. RepDistiller ``RKD.py``.

    Distances are divided by their mean over positive entries (``d[d > 0].mean()``), angle cosines are taken over
    all ``B^3`` triplets, both compared with ``smooth_l1`` (Huber, beta=1, mean). Teacher terms are built under
    ``no_grad``. ``w_d * L_dist + w_a * L_angle``.
    """
    student = f_s.reshape(f_s.shape[0], -1)
    teacher = f_t.reshape(f_t.shape[0], -1)
    with torch.no_grad():
        t_d = rkd_pdist(teacher)
        t_d = t_d / t_d[t_d > 0].mean()
        t_angle = _rkd_angles(teacher)
    d = rkd_pdist(student)
    d = d / d[d > 0].mean()
    loss_d = F.smooth_l1_loss(d, t_d)
    loss_a = F.smooth_l1_loss(_rkd_angles(student), t_angle)
    return w_d * loss_d + w_a * loss_a


def _pkt_normalize(x: Tensor, eps: float) -> Tensor:
    x = x / (torch.sqrt(torch.sum(x**2, dim=1, keepdim=True)) + eps)
    return torch.where(torch.isnan(x), torch.zeros_like(x), x)


def pkt_loss(f_s: Tensor, f_t: Tensor, eps: float = 1e-7) -> Tensor:
    """Learning Deep Representations with Probabilistic Knowledge Transfer (Passalis & Tefas, ECCV 2018).
    RepDistiller ``PKT.py`` (``PKT.cosine_similarity_loss``, the author's code).

    Cosine kernel scaled to [0, 1], rows turned into conditional probabilities, then
    ``mean(p_t * log((p_t + eps) / (p_s + eps)))`` (mean over all ``B^2`` entries). NaNs after the norm division
    are zeroed, as upstream.
    """
    s = _pkt_normalize(f_s, eps)
    t = _pkt_normalize(f_t, eps)
    s_sim = (s @ s.t() + 1.0) / 2.0
    t_sim = (t @ t.t() + 1.0) / 2.0
    s_sim = s_sim / torch.sum(s_sim, dim=1, keepdim=True)
    t_sim = t_sim / torch.sum(t_sim, dim=1, keepdim=True)
    return torch.mean(t_sim * torch.log((t_sim + eps) / (s_sim + eps)))
