"""Losses on the logits of the modern logit methods: DKD, DIST and logit standardization.

* :func:`standardize_logits`: Sun et al., "Logit Standardization in Knowledge Distillation", CVPR 2024;
  sunshangquan/logit-standardization-KD ``mdistiller/distillers/KD.py`` and ``DKD.py`` (``normalize``).
* :func:`dkd_loss`: Zhao et al., "Decoupled Knowledge Distillation", CVPR 2022; megvii-research/mdistiller
  ``mdistiller/distillers/DKD.py`` (``dkd_loss``, ``_get_gt_mask``, ``_get_other_mask``, ``cat_mask``).
* :func:`dist_loss`: Huang et al., "Knowledge Distillation from A Stronger Teacher", NeurIPS 2022;
  hunto/image_classification_sota ``lib/models/losses/dist_kd.py`` (``DIST``, with the ``tau`` of its later
  versions; hunto/DIST_KD points there).

The same operations in the same order as those files, in fp32 (logits are cast, so a bf16 autocast step computes the
softmaxes in fp32). ``tests/test_distillers_modern.py`` compares every loss and its gradient with values the official
functions produced (``tests/fixtures/modern``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

#: the official ``normalize``'s denominator offset: ``(z - mean) / (1e-7 + std)``
STD_EPS = 1e-7
#: DKD's mask offset on the target logit of the non-target distribution (``logits / T - 1000.0 * gt_mask``)
DKD_MASK = 1000.0
#: DIST's offset in the cosine's denominator (``cosine_similarity(a, b, eps=1e-8)``)
DIST_EPS = 1e-8


def standardize_logits(logits: Tensor) -> Tensor:
    """Z-score every sample's logits: ``(z - mean) / (1e-7 + std)`` over the classes, ``std`` unbiased (``N - 1``).

    The official ``normalize(logit)``: ``logit.mean(dim=-1)`` and ``logit.std(dim=-1)`` (torch's default, unbiased),
    applied to student and teacher alike before the temperature. Logits already standardized come back unchanged up
    to the ``1e-7``.
    """
    mean = logits.mean(dim=-1, keepdim=True)
    std = logits.std(dim=-1, keepdim=True)
    return (logits - mean) / (STD_EPS + std)


def _gt_mask(logits: Tensor, target: Tensor) -> Tensor:
    """True at each sample's target class (``_get_gt_mask``)."""
    return torch.zeros_like(logits).scatter_(1, target.reshape(-1, 1), 1).bool()


def _cat_mask(p: Tensor, gt: Tensor) -> Tensor:
    """``[B, 2]``: the target class's probability and the sum of the others (``cat_mask(p, gt, other)``)."""
    return torch.cat([(p * gt).sum(dim=1, keepdim=True), (p * ~gt).sum(dim=1, keepdim=True)], dim=1)


def dkd_parts(
    student_logits: Tensor, teacher_logits: Tensor, target: Tensor, temperature: float
) -> tuple[Tensor, Tensor]:
    """``(TCKD, NCKD)``, each ``KL * T^2`` summed over the batch and divided by ``B`` (``size_average=False``).

    TCKD: KL between the binary (target, non-target) distributions; the student's is ``log`` of the summed
    softmax, as upstream (not a log-softmax). NCKD: KL between the distributions over the non-target classes, got by
    subtracting ``1000`` from the target logit after the temperature.
    """
    s = student_logits.float() / temperature
    t = teacher_logits.detach().float() / temperature
    gt = _gt_mask(s, target)
    b = target.shape[0]
    p_s = _cat_mask(F.softmax(s, dim=1), gt)
    p_t = _cat_mask(F.softmax(t, dim=1), gt)
    tckd = F.kl_div(torch.log(p_s), p_t, reduction="sum") * temperature**2 / b
    log_p_s2 = F.log_softmax(s - DKD_MASK * gt, dim=1)
    p_t2 = F.softmax(t - DKD_MASK * gt, dim=1)
    nckd = F.kl_div(log_p_s2, p_t2, reduction="sum") * temperature**2 / b
    return tckd, nckd


def dkd_loss(
    student_logits: Tensor, teacher_logits: Tensor, target: Tensor, alpha: float, beta: float, temperature: float
) -> Tensor:
    """Decoupled KD, ``alpha * TCKD + beta * NCKD`` (:func:`dkd_parts`), without the warm-up factor (the term's)."""
    tckd, nckd = dkd_parts(student_logits, teacher_logits, target, temperature)
    return alpha * tckd + beta * nckd


def _cosine(a: Tensor, b: Tensor, eps: float = DIST_EPS) -> Tensor:
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def pearson_correlation(a: Tensor, b: Tensor, eps: float = DIST_EPS) -> Tensor:
    """Row-wise Pearson correlation: the cosine of the rows centred on their means (``pearson_correlation``)."""
    return _cosine(a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True), eps)


def dist_parts(student_logits: Tensor, teacher_logits: Tensor, tau: float) -> tuple[Tensor, Tensor]:
    """``(inter, intra)`` of DIST at temperature ``tau``, each already times ``tau^2``.

    ``y = softmax(z / tau)`` on both sides; inter-class relation ``1 - mean_b pearson(y_s[b], y_t[b])`` (each sample's
    class distribution), intra-class relation the same over the transposed ``[C, B]`` matrices (each class's scores
    across the batch).
    """
    y_s = (student_logits.float() / tau).softmax(dim=1)
    y_t = (teacher_logits.detach().float() / tau).softmax(dim=1)
    inter = tau**2 * (1 - pearson_correlation(y_s, y_t).mean())
    intra = tau**2 * (1 - pearson_correlation(y_s.transpose(0, 1), y_t.transpose(0, 1)).mean())
    return inter, intra


def dist_loss(student_logits: Tensor, teacher_logits: Tensor, beta: float, gamma: float, tau: float) -> Tensor:
    """DIST, ``beta * inter + gamma * intra`` (:func:`dist_parts`); ``DIST(beta, gamma, tau)(z_s, z_t)``."""
    inter, intra = dist_parts(student_logits, teacher_logits, tau)
    return beta * inter + gamma * intra
