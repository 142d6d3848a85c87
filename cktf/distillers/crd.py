"""Contrastive Representation Distillation (Tian, Krishnan & Isola, ICLR 2020): the CRD baseline and its critic.

RepDistiller ``crd/criterion.py`` ``CRDLoss`` (``--distill crd``); docs/algorithm.md §2, §3 and §7.
One critic (:class:`ContrastModule`) is a student head ``embed_s``, a teacher head ``embed_t`` (both trained) and one
two-bank :class:`~cktf.losses.ContrastMemory` with its own one-shot ``Z``; its loss is the two-sided binary NCE
``nce(p_s) + nce(p_t)`` of :func:`~cktf.losses.crd_pair_loss` (not InfoNCE), scored against memory entries picked by
the batch's label-aware ``contrast_idx`` and followed by the momentum update at the true ``index``. CRD applies one
critic to the penultimate ``pooled`` features; CKTF (:mod:`.cktf`) applies one per intermediate module plus this one.

Objective of the baseline (RepDistiller ``-r 1 -a 0 -b 0.8``): ``gamma * CE + beta * CRD``; ``crd+kd`` adds KD with
``alpha = 1`` (``-a 1 -b 0.8``, set by KD's ``combo_defaults_as_secondary``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch
from pydantic import model_validator
from torch import Tensor, nn

from ..errors import ConfigError
from ..losses import ContrastMemory, ContrastQueue, Embed, MLPEmbed, PadEmbed, contrast_memory_bytes, crd_pair_loss
from ..models import DistillModel, DistillOutput
from ..space import categorical, log_uniform, uniform
from ._base import LOSS_TERMS, DistillContext, LossTerm, TermConfig, Weight

#: embedding heads of a critic: ``linear`` (every released script), ``mlp`` and ``pad`` (CKTF ``--head mlp|pad``)
HEADS: dict[str, type[nn.Module]] = {"linear": Embed, "mlp": MLPEmbed, "pad": PadEmbed}
#: how a critic's memory scores: ``fused`` (default) or ``gather`` (the official op order; the reference)
Scoring = Literal["fused", "gather"]
#: a critic's memory: ``bank`` (default, the official code's) or ``queue`` (FIFO of the last K keys, an extension)
Memory = Literal["bank", "queue"]


class ContrastModule(nn.Module):
    """One CRD critic: ``embed_s``, ``embed_t`` and a :class:`ContrastMemory` (RepDistiller ``CRDLoss``), or with
    ``memory="queue"`` a :class:`~cktf.losses.ContrastQueue` (an extension, docs/algorithm.md §13).

    Built in the official order (``embed_s``, ``embed_t``, then the memory, whose student bank is drawn first), so a
    seeded run draws the same initial weights and banks as upstream. Nothing is shared between critics.

    Args:
        s_dim: width of the flattened student feature fed to ``embed_s``.
        t_dim: width of the flattened teacher feature fed to ``embed_t``.
        feat_dim: embedding size ``d`` (128).
        n_data: number of training samples (bank rows; ``Pn = 1/n_data`` in the NCE loss).
        nce_m: bank momentum (0.5).
        head: ``"linear"`` (``Embed``, every released script), ``"mlp"`` or ``"pad"`` (CKTF ``--head mlp|pad``).
        scoring: how :class:`ContrastMemory` scores and differentiates (``fused`` or ``gather``).
        memory: ``bank`` (:class:`ContrastMemory`) or ``queue`` (:class:`~cktf.losses.ContrastQueue` of ``nce_k``
            keys per side; ``scoring`` and ``nce_m`` do not apply).
        nce_k: the queue's length (``memory="queue"``).
    """

    def __init__(
        self,
        s_dim: int,
        t_dim: int,
        feat_dim: int,
        n_data: int,
        nce_m: float,
        head: str = "linear",
        scoring: str = "fused",
        memory: str = "bank",
        nce_k: int = 16384,
    ):
        super().__init__()
        head_cls = HEADS[head]
        self.embed_s = head_cls(s_dim, feat_dim)
        self.embed_t = head_cls(t_dim, feat_dim)
        if memory == "queue":
            self.memory: ContrastMemory | ContrastQueue = ContrastQueue(feat_dim, nce_k, n_data)
        elif memory == "bank":
            self.memory = ContrastMemory(feat_dim, n_data, momentum=nce_m, scoring=scoring)
        else:
            raise ValueError(f"memory must be bank or queue, got {memory!r}")

    def forward(
        self, f_s: Tensor, f_t: Tensor, index: Tensor | None, contrast_idx: Tensor | None, temperature: float
    ) -> Tensor:
        """Unweighted two-sided CRD loss of one feature pair, then the memory update (fp32, autocast off).

        The teacher feature is detached: the teacher-anchor term trains only ``embed_t``; the student-anchor term
        trains the student and ``embed_s``. A queue reads neither ``index`` nor ``contrast_idx``.
        """
        with torch.autocast(device_type=f_s.device.type, enabled=False):
            z_s = self.embed_s(f_s.float())
            z_t = self.embed_t(f_t.detach().float())
            if isinstance(self.memory, ContrastQueue):
                loss = self.memory.nce(z_s, z_t, temperature)
                self.memory.update(z_s, z_t)
                return loss
            return crd_pair_loss(self.memory, z_s, z_t, index, contrast_idx, temperature)


def contrast_inputs(batch: Mapping[str, Tensor], cfg: TermConfig) -> tuple[Tensor | None, Tensor | None]:
    """``(index, contrast_idx)`` a critic of ``cfg`` reads: checked for a bank, ``(None, None)`` for a queue."""
    if getattr(cfg, "memory", "bank") == "queue":
        return None, None
    return check_contrast_batch(batch, cfg.nce_k)


def check_contrast_batch(batch: Mapping[str, Tensor], nce_k: int) -> tuple[Tensor, Tensor]:
    """``(index, contrast_idx)`` of a batch, checking ``contrast_idx`` is ``[B, nce_k + 1]``."""
    index, contrast_idx = batch["index"], batch["contrast_idx"]
    if contrast_idx.dim() != 2 or contrast_idx.shape != (index.shape[0], nce_k + 1):
        raise ValueError(
            f"contrast_idx must be [B, nce_k + 1] = [{index.shape[0]}, {nce_k + 1}], got {tuple(contrast_idx.shape)}"
            " (the loader's negatives count must equal distill.nce_k)"
        )
    return index, contrast_idx


class CRDConfig(TermConfig):
    """RepDistiller's CRD row (``-r 1 -a 0 -b 0.8``, ``nce_t`` 0.07, K 16384, m 0.5, d 128; docs/algorithm.md §7).

    ``scoring`` (same loss and gradients up to fp32 summation order, tested): ``fused`` (default) computes the NCE
    and its closed-form gradient in one pass and keeps only a ``[B, d]`` tensor per side for backward; ``gather``
    is the official op order, which keeps the two ``[B, K+1, d]`` fp32 gathers per critic for autograd
    (``2 x 64 x 16385 x 128 x 4`` bytes = 1.07 GB per critic at B = 64, K = 16384, d = 128), kept as the reference
    the tests compare with. ``benchmarks/contrast_memory.py`` measures both side by side.
    """

    gamma: Weight = 1.0
    """CE weight (-r)"""
    beta: Weight = 0.8
    """CRD weight (-b)"""
    tau: float = 0.07
    """NCE temperature (RepDistiller's default nce_t, also Tiny-ImageNet's --nce_t 0.07)"""
    feat_dim: int = 128
    """embedding size d"""
    nce_k: int = 16384
    """negatives per anchor K"""
    nce_m: float = 0.5
    """memory momentum"""
    scoring: Scoring = "fused"
    """fused | gather (the official op order): the same loss (class docstring)"""
    memory: Memory = "bank"
    """bank (the official code's: N_data x d per side) | queue (an extension: FIFO of the last nce_k keys, MoCo style;
    docs/algorithm.md §13)"""

    @model_validator(mode="after")
    def _check_crdconfig(self) -> CRDConfig:
        validate_contrast_fields(self)
        return self

    def negatives(self) -> int | None:
        return self.nce_k if self.memory == "bank" else None  # a queue's negatives are its entries: nothing drawn

    def memory_bytes(self, n_data: int, n_stages: int) -> int:
        return contrast_memory_bytes(self.memory, self.feat_dim, n_data, self.nce_k, critics=1)


def validate_contrast_fields(cfg: TermConfig) -> None:
    """Bounds of the fields CRD and CKTF share (``tau`` may be ``None`` for CKTF: resolved from the image size)."""
    tau = getattr(cfg, "tau", None)
    if tau is not None and not tau > 0:
        raise ConfigError("tau", f"must be > 0, got {tau}", "e.g. 0.07 or 0.1")
    if cfg.feat_dim < 1:
        raise ConfigError("feat_dim", f"must be >= 1, got {cfg.feat_dim}", "e.g. 128")
    if cfg.nce_k < 1:
        raise ConfigError("nce_k", f"must be >= 1, got {cfg.nce_k}", "e.g. 16384")
    if not 0 <= cfg.nce_m < 1:
        raise ConfigError("nce_m", f"must be in [0, 1), got {cfg.nce_m}", "e.g. 0.5")


def contrast_run_params(params: dict[str, str], cfg: TermConfig) -> dict[str, str]:
    """A contrastive term's run params: ``memory: queue`` added when the critics use the FIFO queue (an extension);
    the official bank adds nothing."""
    memory = getattr(cfg, "memory", "bank")
    return {**params, "memory": memory} if memory != "bank" else params


@LOSS_TERMS.register("crd", summary="CRD: two-sided binary-NCE critic with memory banks on the penultimate features")
class CRD(LossTerm):
    """Contrastive Representation Distillation on the penultimate features: ``beta * (nce(p_s) + nce(p_t))``.

    One :class:`ContrastModule` with ``embed_s: Linear(student.num_features, d)`` and
    ``embed_t: Linear(teacher.num_features, d)`` over ``ctx.num_train_samples`` bank rows. Loss key: ``crd``.
    """

    config_cls = CRDConfig
    #: one weight, the temperature, d and N (no layer mapping)
    search_space = {
        "beta": uniform(0.0, 2.0),
        "tau": log_uniform(0.03, 0.3),
        "feat_dim": categorical(32, 64, 128, 256),
        "nce_k": categorical(4096, 8192, 16384),
    }
    leads_combinations = True  # CRD + KD (Table 1)
    joins_combinations = False
    listed_partners = frozenset({"kd"})

    def __init__(self, cfg: CRDConfig, student: DistillModel, teacher: DistillModel | None, ctx: DistillContext):
        super().__init__(cfg, student, teacher, ctx)
        self.cfg: CRDConfig = cfg
        self.n_data = int(ctx.num_train_samples)
        self.critic = ContrastModule(
            student.num_features,
            teacher.num_features,
            cfg.feat_dim,
            self.n_data,
            cfg.nce_m,
            "linear",
            cfg.scoring,
            cfg.memory,
            cfg.nce_k,
        )

    def run_params(self) -> dict[str, str]:
        return contrast_run_params(super().run_params(), self.cfg)

    def forward(self, s: DistillOutput, t: DistillOutput | None, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        assert t is not None
        index, contrast_idx = contrast_inputs(batch, self.cfg)
        loss = self.critic(s.pooled, t.pooled, index, contrast_idx, self.cfg.tau)
        return {"crd": self.cfg.beta * loss}
