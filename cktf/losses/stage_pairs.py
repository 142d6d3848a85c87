"""CKTF's stage-pair selection (``SimilarityTransfer``): which teacher block of a stage the student stage is paired
with, and the tensors handed to that stage's CRD module.

A Contrastive Knowledge Transfer Framework for Model Compression and Transfer Learning (Zhao, Chen & Zhao,
ICASSP 2023); code: CKTF ``distiller_zoo/ST.py`` (``st_loss_each_group``); docs/algorithm.md §4
(the stage pairs). Followed line by line, quirks included:

* ``F.normalize(x, p=2, dim=0)``: each ``(c, h, w)`` position is normalised **over the batch**, for the student's
  last block and for every teacher block. It looks like a bug; it is what the released code trains with.
* The student is zero-padded on channels by ``(Ct - Cs) // 2`` on each side, *after* normalisation, only when its
  shape differs from the teacher block's. Upstream then asserts equal shapes, so an odd channel difference or a
  spatial/batch mismatch fails (``ValueError`` here); a negative even difference crops (``F.pad`` semantics).
* The cosine is one scalar over the whole tensor: ``sum(s*t) / max(||s|| ||t||, 1e-8)``.
* What is pooled and returned for the student is the **normalised and padded** tensor; the teacher's is its
  normalised block ``j*``. Both are then ``flatten(pool(.))``, with the pooling the model family uses
  (``AvgPool2d(8)`` for CIFAR ResNet/WRN, global average for VGG/ResNet-v2).

:func:`select_stage_pair_generalised` is not official: the generalised pairing of docs/models.md (an extension) for
stages of different shapes, used only for pairs across families that include a library or user model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..distributed import current

MAPPINGS = ("first", "last", "random", "max_cos", "min_cos")
_OFFICIAL_NAMES = {"first": "first", "last": "last", "random": "random", "largest": "max_cos", "smallest": "min_cos"}


def pad_channels(x: Tensor, channels: int) -> Tensor:
    """Zero-pad (or crop, if negative) dim 1 by ``(channels - C) // 2`` on each side (CKTF ``zero_pad_on_filter``)."""
    half = (channels - x.shape[1]) // 2
    return F.pad(x, (0, 0, 0, 0, half, half, 0, 0))


def normalize_over_batch(x: Tensor, eps: float = 1e-12) -> Tensor:
    """``F.normalize(x, p=2, dim=0)``: ``x / max(||x||_dim0, eps)``, with the norm as ``sqrt(sum(x^2, 0))``.

    Same values up to fp32 rounding; ``torch.linalg.vector_norm`` reduces over the outermost dim about 8x slower on
    CPU (27 vs 3.5 ms for a ``[64, 64, 32, 32]`` stage output), and this runs on every stage tensor of every step.

    In a data-parallel step (:mod:`cktf.distributed`) the norm is the global batch's: the per-position sums of
    squares are all-reduced (differentiably: every worker's rows get the gradient of every worker's loss), so each
    worker's rows are normalised as one process normalises them.
    """
    sq = x.square().sum(0, keepdim=True)
    dc = current()
    if dc is not None:
        sq = dc.all_reduce_sum(sq, "all_reduce/stage_norm")
    return x / sq.sqrt().clamp_min(eps)


def whole_tensor_cosine(a: Tensor, b: Tensor) -> Tensor:
    """``sum(a*b) / max(||a|| ||b||, 1e-8)`` over the whole tensor (CKTF ``cosineSimilarity``); over the global batch
    in a data-parallel step (the three sums all-reduced)."""
    dc = current()
    if dc is None:
        return torch.sum(a * b) / torch.clamp(torch.sqrt(torch.sum(a**2)) * torch.sqrt(torch.sum(b**2)), min=1e-8)
    sums = dc.all_reduce_sum(torch.stack([torch.sum(a * b), torch.sum(a**2), torch.sum(b**2)]), "all_reduce/cosine")
    return sums[0] / torch.clamp(torch.sqrt(sums[1]) * torch.sqrt(sums[2]), min=1e-8)


def _canonical(mapping: str) -> str:
    key = mapping.lower()
    if key in MAPPINGS:
        return key
    if key in _OFFICIAL_NAMES:
        return _OFFICIAL_NAMES[key]
    raise ValueError(
        f"unknown stage mapping {mapping!r}; expected one of {MAPPINGS} (or First/Last/Random/Largest/Smallest)"
    )


def select_stage_pair(
    student_last_block: Tensor,
    teacher_blocks: Sequence[Tensor],
    mapping: str,
    pool: Callable[[Tensor], Tensor],
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, int | Tensor]:
    """Pick the teacher block of one stage for the student's last block; return ``(s_k, t_k, j_star)``.

    Args:
        student_last_block: the student stage's last block output ``[B, Cs, H, W]``.
        teacher_blocks: every block output of the same teacher stage, ``[B, Ct, H, W]`` each.
        mapping: ``first`` | ``last`` | ``random`` | ``max_cos`` (official ``Largest``) | ``min_cos`` (``Smallest``);
            the official names are accepted too. Ties in ``max_cos``/``min_cos`` go to the highest index, as the
            official ``sorted(...).pop()`` does.
        pool: the model family's pooling (e.g. ``nn.AvgPool2d(8)``), applied before flattening.
        generator: RNG for ``random`` (upstream draws from Python's global ``random.randint`` each step).

    Returns:
        ``s_k = flatten(pool(pad(normalize(s, dim=0))))``, ``t_k = flatten(pool(normalize(t_j*, dim=0)))`` and
        ``j_star``: an ``int`` for ``first``/``last``/``random``, a 0-dim long tensor on the blocks' device for the
        cosine mappings (chosen on the device: no host round trip per step; ``int(j_star)`` reads it). Gradients
        flow to the student through ``s_k``; the choice itself is not differentiated.

    Only the blocks a mapping needs are normalised: the chosen one for ``first``/``last``/``random`` (the same
    tensors upstream computes for every block and then discards), all of them for the cosine mappings.
    """
    if len(teacher_blocks) == 0:
        raise ValueError("teacher_blocks is empty")
    mapping = _canonical(mapping)
    s = normalize_over_batch(student_last_block)
    for t in teacher_blocks:  # padding is re-checked against every teacher block, as upstream
        if s.shape != t.shape:
            s = pad_channels(s, t.shape[1])
        if s.shape != t.shape:
            raise ValueError(
                f"cannot pair student {tuple(student_last_block.shape)} with teacher block "
                f"{tuple(t.shape)}: CKTF zero-pads (Ct-Cs)//2 channels per side, so the channel "
                "difference must be even and batch/spatial sizes equal"
            )
    return _choose(s, teacher_blocks, mapping, pool, pool, whole_tensor_cosine, generator)


def _choose(
    s: Tensor,
    blocks: Sequence[Tensor],
    mapping: str,
    student_pool: Callable[[Tensor], Tensor],
    teacher_pool: Callable[[Tensor], Tensor],
    cosine: Callable[[Tensor, Tensor], Tensor],
    generator: torch.Generator | None,
) -> tuple[Tensor, Tensor, int | Tensor]:
    """The five mappings over candidate ``blocks`` for the batch-normalised student block ``s``: ``first``, ``last``,
    ``random``, or the block of highest / lowest ``cosine`` (ties to the highest index, chosen on the device and not
    differentiated). Returns the flattened pooled pair and the index chosen."""
    n = len(blocks)
    s_k = student_pool(s)
    s_k = s_k.reshape(s_k.shape[0], -1)
    if mapping in ("max_cos", "min_cos"):
        t_norm = [normalize_over_batch(t) for t in blocks]
        with torch.no_grad():
            cos = torch.stack([cosine(s, t) for t in t_norm])
            # arg-best of the reversed list = the highest index among ties
            rev = cos.flip(0).argmax() if mapping == "max_cos" else cos.flip(0).argmin()
            j_star: int | Tensor = (n - 1) - rev
        pooled = torch.stack([teacher_pool(t).reshape(t.shape[0], -1) for t in t_norm])
        return s_k, pooled.index_select(0, j_star.reshape(1)).squeeze(0), j_star
    if mapping == "first":
        j_star = 0
    elif mapping == "last":
        j_star = n - 1
    else:
        device = generator.device if generator is not None else None
        j_star = int(torch.randint(n, (1,), generator=generator, device=device).item())
    t_k = teacher_pool(normalize_over_batch(blocks[j_star]))
    return s_k, t_k.reshape(t_k.shape[0], -1), j_star


# ------------------------------------------------------------------------------ generalised pairing (an extension)
def to_common_shape(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """``a`` and ``b`` brought to one shape to be compared: the larger map average-pooled to the smaller's side, the
    narrower one zero-padded on channels (half each side, the odd one at the end). Not in the official code."""
    h, w = min(a.shape[2], b.shape[2]), min(a.shape[3], b.shape[3])
    if tuple(a.shape[2:]) != (h, w):
        a = F.adaptive_avg_pool2d(a, (h, w))
    if tuple(b.shape[2:]) != (h, w):
        b = F.adaptive_avg_pool2d(b, (h, w))
    c = max(a.shape[1], b.shape[1])

    def pad(x: Tensor) -> Tensor:
        d = c - x.shape[1]
        return F.pad(x, (0, 0, 0, 0, d // 2, d - d // 2)) if d else x

    return pad(a), pad(b)


def select_stage_pair_generalised(
    student_last_block: Tensor,
    teacher_blocks: Sequence[Tensor],
    mapping: str,
    student_pool: Callable[[Tensor], Tensor],
    teacher_pool: Callable[[Tensor], Tensor],
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, int | Tensor]:
    """:func:`select_stage_pair` for a student and teacher stage of different shapes (the generalised pairing of
    docs/models.md, an extension: not in the paper or the official code).

    As the official selection: both sides are normalised over the batch (``dim=0``), the mappings are the same five
    (ties of the cosine mappings to the highest index) and the choice is not differentiated. Unlike it: the student is
    not padded; the candidates are the teacher blocks shaped like the stage's last block; the cosine of the cosine
    mappings is taken after :func:`to_common_shape`; and each side is pooled by its own model's pooling, so the
    critic's heads take inputs of two widths.

    Returns:
        ``s_k = flatten(student_pool(normalize(s)))``, ``t_k = flatten(teacher_pool(normalize(t_j*)))`` and ``j_star``
        (an index into the candidates).
    """
    if len(teacher_blocks) == 0:
        raise ValueError("teacher_blocks is empty")
    mapping = _canonical(mapping)
    blocks = [t for t in teacher_blocks if t.shape == teacher_blocks[-1].shape]
    s = normalize_over_batch(student_last_block)
    return _choose(
        s,
        blocks,
        mapping,
        student_pool,
        teacher_pool,
        lambda a, b: whole_tensor_cosine(*to_common_shape(a, b)),
        generator,
    )
