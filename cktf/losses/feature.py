"""Feature-map losses (student map vs teacher map, per layer), copied from RepDistiller ``distiller_zoo/``.

Pure and stateless: adapters (FitNet's ConvReg, VID's regressor and ``log_scale``, AB's connector, FT's
paraphraser/translator) live in the distillers and are passed in as outputs or tensors.

Shape conventions: maps are ``[B, C, H, W]``. Where the official code reconciles spatial sizes it looks at the
height only and pools the larger map to a *square* ``(h, h)`` (``match_spatial``); that is kept as is.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def match_spatial(f_s: Tensor, f_t: Tensor) -> tuple[Tensor, Tensor]:
    """Adaptive-avg-pool the taller map down to the other's height, as AT/FT/NST/VID/FSP do upstream.

    Only ``shape[2]`` is compared and the target size is ``(h, h)`` (square maps assumed, as upstream).
    """
    s_h, t_h = f_s.shape[2], f_t.shape[2]
    if s_h > t_h:
        f_s = F.adaptive_avg_pool2d(f_s, (t_h, t_h))
    elif s_h < t_h:
        f_t = F.adaptive_avg_pool2d(f_t, (s_h, s_h))
    return f_s, f_t


# --------------------------------------------------------------------------------------------- FitNet
def hint_loss(s_reg: Tensor, t: Tensor) -> Tensor:
    """FitNets: Hints for Thin Deep Nets (Romero et al., ICLR 2015). RepDistiller ``FitNet.py`` (``HintLoss``).

    ``mean((r(f_s) - f_t)^2)`` where ``s_reg = r(f_s)`` is the regressor (ConvReg) output. One stage: no hint
    pre-training, as in RepDistiller.
    """
    return F.mse_loss(s_reg, t)


# --------------------------------------------------------------------------------------------- AT
def at_map(f: Tensor, p: float = 2) -> Tensor:
    """Attention map ``normalize(mean_c f^p)`` flattened to ``[B, H*W]`` (RepDistiller ``Attention.at``)."""
    return F.normalize(f.pow(p).mean(1).reshape(f.shape[0], -1))


def at_loss(f_s: Tensor, f_t: Tensor, p: float = 2) -> Tensor:
    """Paying More Attention to Attention (Zagoruyko & Komodakis, ICLR 2017); the
    paper's beta/2 is the method weight. RepDistiller ``AT.py`` (``Attention.at_loss``).

    ``mean((at(f_s) - at(f_t))^2)`` after pooling the larger map (``match_spatial``); channel counts may differ.
    """
    f_s, f_t = match_spatial(f_s, f_t)
    return (at_map(f_s, p) - at_map(f_t, p)).pow(2).mean()


# --------------------------------------------------------------------------------------------- FT
def ft_factor_loss(factor_s: Tensor, factor_t: Tensor, p1: float = 2, p2: int = 1) -> Tensor:
    """Paraphrasing Complex Network: Network Compression via Factor Transfer (Kim et al., NeurIPS 2018).
    RepDistiller ``FT.py`` (``FactorTransfer``, defaults ``p1=2, p2=1``).

    ``mean(|fac(F_s) - fac(F_t)|)`` (L1, ``p2=1``; otherwise ``mean(diff^p2)``) with RepDistiller's factor
    ``fac(F) = normalize(mean_c F^p1)`` -- an attention-style map. Inputs are the translator (student) and
    paraphraser (teacher, ``is_factor=True``) outputs; larger map pooled as ``match_spatial``.
    """
    factor_s, factor_t = match_spatial(factor_s, factor_t)
    diff = at_map(factor_s, p1) - at_map(factor_t, p1)
    return diff.abs().mean() if p2 == 1 else diff.pow(p2).mean()


# --------------------------------------------------------------------------------------------- NST
def nst_poly_kernel(a: Tensor, b: Tensor) -> Tensor:
    """Degree-2 polynomial kernel (c=0) between channel rows: ``[B, Cb, Ca]`` of ``(a_i . b_j)^2``.

    Upstream writes ``(a.unsqueeze(1) * b.unsqueeze(2)).sum(-1)``, which materialises ``[B, Cb, Ca, HW]`` (268M
    floats for a 64-channel 32x32 stage at batch 64); the same dot products are one batched matmul.
    """
    return torch.bmm(b, a.transpose(1, 2)).pow(2)


def nst_loss(f_s: Tensor, f_t: Tensor) -> Tensor:
    """Like What You Like: Knowledge Distill via Neuron Selectivity Transfer (Huang & Wang, 2017): MMD with the
    polynomial kernel (d=2, c=0). RepDistiller ``NST.py`` (``NSTLoss.nst_loss``, ``full_loss=True``).

    Each channel's spatial map is l2-normalised; ``MMD^2 = mean k(t,t) [detached] + mean k(s,s) - 2 mean k(s,t)``.
    """
    f_s, f_t = match_spatial(f_s, f_t)
    f_s = F.normalize(f_s.reshape(f_s.shape[0], f_s.shape[1], -1), dim=2)
    f_t = F.normalize(f_t.reshape(f_t.shape[0], f_t.shape[1], -1), dim=2)
    return (
        nst_poly_kernel(f_t, f_t).mean().detach()
        + nst_poly_kernel(f_s, f_s).mean()
        - 2 * nst_poly_kernel(f_s, f_t).mean()
    )


# --------------------------------------------------------------------------------------------- FSP
def fsp_matrix(bottom: Tensor, top: Tensor) -> Tensor:
    """Flow of solution procedure ``G[b, i, j] = mean_hw top[b, i] * bottom[b, j]``: ``[B, C_top, C_bottom]``.

    A Gift from Knowledge Distillation (Yim et al., CVPR 2017) (RepDistiller ``FSP.compute_fsp``: the
    larger map is first pooled as ``match_spatial``).
    """
    bottom, top = match_spatial(bottom, top)
    b = bottom.reshape(bottom.shape[0], bottom.shape[1], -1)
    t = top.reshape(top.shape[0], top.shape[1], -1)
    return torch.bmm(t, b.transpose(1, 2)) / b.shape[-1]  # upstream's broadcast product and mean, as one matmul


def fsp_loss(g_s: Sequence[Tensor], g_t: Sequence[Tensor]) -> list[Tensor]:
    """A Gift from Knowledge Distillation (Yim et al., CVPR 2017), without the per-pair lambda.
    RepDistiller ``FSP.py`` (``FSP.forward``): one ``mean((G_s - G_t)^2)`` per consecutive pair of ``g``.

    Returns a list of ``len(g) - 1`` losses (upstream sums them in the init stage). Channel counts must match
    position by position (``ValueError`` otherwise, as the official constructor).
    """
    if len(g_s) != len(g_t):
        raise ValueError(f"fsp_loss: {len(g_s)} student maps vs {len(g_t)} teacher maps")
    if any(s.shape[1] != t.shape[1] for s, t in zip(g_s, g_t)):
        raise ValueError("fsp_loss: num of channels not equal (FSP needs equal channels at every position)")
    return [
        (fsp_matrix(g_s[i], g_s[i + 1]) - fsp_matrix(g_t[i], g_t[i + 1])).pow(2).mean() for i in range(len(g_s) - 1)
    ]


# --------------------------------------------------------------------------------------------- AB
def ab_boundary_loss(source: Tensor, target: Tensor, margin: float = 1.0) -> Tensor:
    """Activation-boundary hinge, summed (RepDistiller ``ABLoss.criterion_alternative_l2``).

    ``sum (s+m)^2 [s > -m & t <= 0] + (s-m)^2 [s <= m & t > 0]``; ``source`` is the connector output on the
    student's pre-activation, ``target`` the teacher's pre-activation.
    """
    loss = (source + margin) ** 2 * ((source > -margin) & (target <= 0)).float() + (source - margin) ** 2 * (
        (source <= margin) & (target > 0)
    ).float()
    return torch.abs(loss).sum()


def ab_loss(g_s: Sequence[Tensor], g_t: Sequence[Tensor], margin: float = 1.0) -> list[Tensor]:
    """Knowledge Transfer via Distillation of Activation Boundaries Formed by Hidden Neurons (Heo et al., AAAI 2019),
    alternative-L2 form. RepDistiller ``AB.py`` (``ABLoss.forward``).

    Layer ``i`` of ``n`` gets weight ``2**(i - n + 1)``, then ``/ B`` and ``/ 1000 * 3`` (the official scaling).
    Returns one loss per layer; upstream sums them in the 30-epoch init stage.
    """
    n, bsz = len(g_s), g_s[0].shape[0]
    return [
        2 ** (i - n + 1) * ab_boundary_loss(s, t, margin) / bsz / 1000 * 3 for i, (s, t) in enumerate(zip(g_s, g_t))
    ]


# --------------------------------------------------------------------------------------------- VID
def vid_init_log_scale(init_pred_var: float = 5.0, eps: float = 1e-5) -> float:
    """Initial ``log_scale`` so that ``softplus(log_scale) + eps == init_pred_var`` (RepDistiller ``VIDLoss``)."""
    return math.log(math.exp(init_pred_var - eps) - 1.0)


def vid_loss(pred_mean: Tensor, target: Tensor, log_scale: Tensor, eps: float = 1e-5) -> Tensor:
    """Variational Information Distillation for Knowledge Transfer (Ahn et al., CVPR 2019): Gaussian NLL with a
    learned per-channel variance, constants dropped. RepDistiller ``VID.py`` (``VIDLoss.forward``).

    ``mean(0.5 * ((mu - t)^2 / var + log var))`` with ``var = softplus(log_scale) + eps`` (upstream writes
    ``log(1 + exp(log_scale))``; ``F.softplus`` is the same to fp32 precision and does not overflow).
    ``pred_mean`` is the regressor output on the student map; call ``match_spatial(student, target)`` *before* the
    regressor, as upstream pools the input rather than the prediction.
    """
    if pred_mean.shape != target.shape:
        raise ValueError(f"vid_loss: pred_mean {tuple(pred_mean.shape)} vs target {tuple(target.shape)}")
    pred_var = (F.softplus(log_scale) + eps).view(1, -1, 1, 1)
    return torch.mean(0.5 * ((pred_mean - target) ** 2 / pred_var + torch.log(pred_var)))
