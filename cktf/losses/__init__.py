"""Pure loss functions of the distillation methods and of CKTF/CRD.

Stateless math only (plus the CRD memory bank and embedding heads, which the contrastive loss cannot do without, and
ReviewKD's fusion block, which its loss is defined over);
distiller classes in ``cktf.distillers`` own adapters, weights and feature selection and call these. Each function
cites its paper and the official file it copies (RepDistiller / CKTF; mdistiller, DIST and logit standardization for
:mod:`.logits` and :mod:`.review`); golden values in ``tests/fixtures/losses`` and ``tests/fixtures/modern`` come from
running those official files.
"""

from .contrastive import (
    MEMORIES,
    SCORINGS,
    ContrastMemory,
    ContrastQueue,
    built_memory_bytes,
    contrast_memory_bytes,
    crd_pair_loss,
    nce_loss,
)
from .feature import (
    ab_boundary_loss,
    ab_loss,
    at_loss,
    at_map,
    fsp_loss,
    fsp_matrix,
    ft_factor_loss,
    hint_loss,
    match_spatial,
    nst_loss,
    nst_poly_kernel,
    vid_init_log_scale,
    vid_loss,
)
from .heads import Embed, MLPEmbed, PadEmbed, l2_normalize
from .logits import dist_loss, dist_parts, dkd_loss, dkd_parts, pearson_correlation, standardize_logits
from .nce_fused import dense_is_cheaper, fused_nce
from .relational import cc_loss, pkt_loss, rkd_loss, rkd_pdist, sp_loss
from .review import ABF, hcl_loss
from .stage_pairs import (
    MAPPINGS,
    pad_channels,
    select_stage_pair,
    select_stage_pair_generalised,
    to_common_shape,
    whole_tensor_cosine,
)

__all__ = [
    "ABF",
    "MAPPINGS",
    "MEMORIES",
    "SCORINGS",
    "ContrastMemory",
    "ContrastQueue",
    "Embed",
    "MLPEmbed",
    "PadEmbed",
    "ab_boundary_loss",
    "ab_loss",
    "at_loss",
    "at_map",
    "cc_loss",
    "built_memory_bytes",
    "contrast_memory_bytes",
    "crd_pair_loss",
    "dense_is_cheaper",
    "dist_loss",
    "dist_parts",
    "dkd_loss",
    "dkd_parts",
    "fsp_loss",
    "fsp_matrix",
    "ft_factor_loss",
    "fused_nce",
    "hcl_loss",
    "hint_loss",
    "l2_normalize",
    "match_spatial",
    "nce_loss",
    "nst_loss",
    "nst_poly_kernel",
    "pad_channels",
    "pearson_correlation",
    "pkt_loss",
    "rkd_loss",
    "rkd_pdist",
    "select_stage_pair",
    "select_stage_pair_generalised",
    "sp_loss",
    "standardize_logits",
    "to_common_shape",
    "vid_init_log_scale",
    "vid_loss",
    "whole_tensor_cosine",
]
