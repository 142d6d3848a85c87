"""Embedding heads of the CRD/CKTF critic: project a flattened feature to a unit-norm ``feat_dim`` vector.

Contrastive Representation Distillation (Tian, Krishnan & Isola, ICLR 2020), RepDistiller ``crd/criterion.py``
(``Embed``, ``Normalize``), and the ``--head mlp|pad`` options that CKTF's ``crd/criterion.py`` adds
(``Embed_mlp``, ``Embed_pad``; no released script uses them, all use ``linear``).

Attribute names (``linear``, ``linear1``, ``linear2``) match the official modules, so their state dicts load as is.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


def l2_normalize(x: Tensor) -> Tensor:
    """Row-wise L2 normalisation **without eps**, as the official ``Normalize(2)``.

    ``x / x.pow(2).sum(1, keepdim=True).pow(1/2)``: an all-zero row gives NaN, exactly as upstream.
    """
    return x / x.pow(2).sum(1, keepdim=True).pow(0.5)


class Embed(nn.Module):
    """CRD's linear head: ``flatten -> Linear(dim_in, dim_out) -> l2_normalize`` (RepDistiller ``Embed``)."""

    def __init__(self, dim_in: int, dim_out: int = 128):
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, x: Tensor) -> Tensor:
        return l2_normalize(self.linear(x.reshape(x.shape[0], -1)))


class MLPEmbed(nn.Module):
    """CKTF ``--head mlp`` (``Embed_mlp``): ``Linear(dim_in, dim_in) -> ReLU -> Linear(dim_in, dim_out) -> l2``.

    The hidden width is ``dim_in`` (not ``2*dim_out``), as in CKTF's ``crd/criterion.py``.
    """

    def __init__(self, dim_in: int, dim_out: int = 128):
        super().__init__()
        self.linear1 = nn.Linear(dim_in, dim_in)
        self.linear2 = nn.Linear(dim_in, dim_out)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.linear1(x.reshape(x.shape[0], -1)))
        return l2_normalize(self.linear2(x))


class PadEmbed(nn.Module):
    """CKTF ``--head pad`` (``Embed_pad``): parameter-free; zero-pad the flat feature to ``dim_out``, then l2.

    Pads ``(dim_out - dim_in) // 2`` on each side, as official: an odd difference gives ``dim_out - 1`` columns and a
    negative one crops (``F.pad`` semantics). Both are reproduced, not fixed.
    """

    def __init__(self, dim_in: int, dim_out: int = 128):
        super().__init__()
        self.dim_in, self.dim_out = dim_in, dim_out

    def forward(self, x: Tensor) -> Tensor:
        half = (self.dim_out - self.dim_in) // 2
        return l2_normalize(F.pad(x.reshape(x.shape[0], -1), (half, half)))
