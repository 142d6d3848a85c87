"""CKTF: A Contrastive Knowledge Transfer Framework for Model Compression and Transfer Learning.

Zhao, Chen & Zhao, ICASSP 2023; code ``kaiqi123/CKTF`` (a RepDistiller fork): ``--distill crdst``, i.e.
``distiller_zoo/ST.py`` (``SimilarityTransfer``), the ``crdst`` branches of ``train_student.py`` / ``helper/loops.py``
and ``crd/criterion.py``; docs/algorithm.md §1-§5 and §9.

Eq. 1 of the paper, ``L = gamma * L_CE + L_CKT + theta * L_distill``, with the contrastive knowledge transfer term
``L_CKT`` (Section 2) a CRD critic per *intermediate module* plus one on the penultimate features. As the released
code runs it (``loops.py``)::

    L_CKT = alpha1 * (CRD_stem + sum_k CRD_stage_k) + alpha2 * CRD_final        # theta / beta in the code

* **One critic per module** (:class:`~cktf.distillers.crd.ContrastModule`): the stem, every stage and the final
  ``pooled`` feature each own a student head, a teacher head (both trained) and a :class:`~cktf.losses.ContrastMemory`
  (two banks, two one-shot ``Z``). Only the batch's ``index`` / ``contrast_idx`` are shared.
* **Stem pair**: ``pool_feature(f0_s)``, ``pool_feature(f0_t)``, not normalised (``feat[0]`` of ``flatGroupOut``).
* **Stage pairs**: :func:`~cktf.losses.select_stage_pair` on the student stage's *last* block and every block of the
  same teacher stage: ``normalize(dim=0)`` (over the batch, as the code does), zero-padding of the student channels,
  teacher block chosen by ``mapping`` (``last`` = official ``Last`` in every released CKTF script; ``first``,
  ``random``, ``max_cos`` = ``Largest``, ``min_cos`` = ``Smallest``), re-chosen every step for the last three.
* **Pooling**: ``ST.determine_avgpool(model_s)`` picks *one* pooling from the **student's** family and applies it to
  both sides of every stage pair (``AvgPool2d(8)`` for CIFAR ResNet / WRN, global average for VGG / ResNet-v2); the
  stem features come from each model's own ``flatGroupOut`` pooling. Here the student's ``pool_feature`` pools the
  stage pairs and each model's pools its stem, and pairs whose families pool differently are refused (the official
  head sizes, probed from the teacher, would not fit; no such pair also has equal stage counts and sizes).
* **Head sizes** (probed with a 2x3x32x32 input upstream, computed statically here from ``feature_shapes`` and the
  pooling): intermediate modules ``s_dim = t_dim = dim(pool(teacher f_i))``; final ``s_dim = student.num_features``,
  ``t_dim = teacher.num_features``.
* Loss keys: ``cktf_stem``, ``cktf_stage1`` .. ``cktf_stage{n}`` (each already times ``alpha1``), ``cktf_final``
  (times ``alpha2``), so the metrics show every module.

Where paper, code and this implementation differ:

* **Weights.** The paper's text gives alpha = 0.8 / 0.2 (preset ``cktf-paper``: ``alpha1 = 0.8``, ``alpha2 = 0.2``);
  the released scripts run ``--theta 0.1`` on the *sum* of the stem + stage terms and ``-b 0.8`` on the final term
  (``-r 1 -a 0``; ``-a 1`` for CKTF+KD). The defaults here are the released ones: ``alpha1 = 0.1``, ``alpha2 = 0.8``.
* **Batch-dim normalisation** of stage features (``F.normalize(dim=0)``) looks like a bug; it is kept (the released
  models were trained with it). The stem is not normalised, as upstream.
* **Temperature.** CKTF's default ``nce_t`` is 0.1 (code comment: "0.1 for cifar100, 0.07 for imagenet"); the CIFAR
  runs pass nothing (0.1), the Tiny-ImageNet / STL runs pass 0.07. ``tau = None`` resolves to 0.1 for inputs up to
  32x32 and 0.07 above. RepDistiller's CRD baseline uses 0.07 (:mod:`.crd`).
* **Table 2 mode** (``run_2kds.sh``, CKTF + another method, here ``cktf+X``; :meth:`CKTF.combo_defaults`):
  ``0.8 * (sum of every CKTF term)``, ``Smallest`` for FitNet/AT/SP/CC/VID/RKD/PKT on CIFAR and ``Last`` otherwise,
  no ``--nce_t`` (so 0.1 on Tiny-ImageNet too). Its stage loop is hard-coded to ``i in [2, 3, 4]`` and silently
  skips VGG's 4th stage; that is **not** copied: every stage gets its critic.
* **Unsupported pairs** fail at construction with a :class:`~cktf.errors.ConfigError` instead of a shape error
  mid-step: MobileNetV2 / ShuffleNet (``ST.determine_avgpool`` raises ``NotImplementedError``), different numbers of
  stages, different spatial sizes, a stage where the student is wider than the teacher or the channel difference is
  odd (upstream asserts after ``(Ct - Cs) // 2`` padding), stems of different pooled width (never padded upstream).
* **Random mapping** draws from a ``torch.Generator`` owned by the term (seeded from the global RNG when built, so
  reproducible per run seed, and saved in the state dict) instead of Python's global ``random.randint``.
* The contrast block (heads, stage pairs, scores) runs in fp32 with autocast off.

**Generalised pairing** (an extension, not in the paper or the official code; docs/models.md and
:mod:`.pairing`): a pair across families with a library or user model (``tv:resnet18`` -> ``tv:mobilenet_v3_small``,
a zoo model with a torchvision one) has no official behaviour. For it, and only for it (``pairing`` is then
``generalised``, logged as ``cktf/pairing``), each of the ``n_s`` student stages is paired with the teacher stage at
the same relative depth (:func:`~.pairing.depth_map`), each side is pooled by its own model's pooling, every critic's
two heads take the widths of its own two features (no zero-padding; the stem too), and the teacher block is chosen
by :func:`~cktf.losses.select_stage_pair_generalised`. Pairs within one family, and every pair of the zoo, keep the
official path above, refusals included.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch
from pydantic import field_validator, model_validator
from torch import Tensor, nn

from ..errors import ConfigError
from ..losses import MAPPINGS, contrast_memory_bytes, select_stage_pair, select_stage_pair_generalised
from ..models import DistillModel, DistillOutput
from ..space import categorical, log_uniform, uniform
from ._base import LOSS_TERMS, DistillContext, LossTerm, TermConfig, Weight
from .crd import ContrastModule, Memory, Scoring, contrast_inputs, contrast_run_params, validate_contrast_fields
from .pairing import GENERALISED, OFFICIAL, depth_map, may_generalise

#: official ``--st_method`` names accepted as aliases
MAPPING_ALIASES = {"largest": "max_cos", "smallest": "min_cos"}
#: partners run with ``--st_method Smallest`` in ``run_2kds.sh`` on CIFAR-100 (32x32); all others use ``Last``
TABLE2_SMALLEST = frozenset({"fitnet", "at", "sp", "cc", "vid", "rkd", "pkt"})
#: CKTF's default ``nce_t`` (CIFAR) and the one its 64x64 scripts pass
TAU_32, TAU_64 = 0.1, 0.07


def resolve_tau(tau: float | None, image_size: int) -> float:
    """``tau`` itself, or CKTF's per-dataset default when ``None``: 0.1 up to 32x32 inputs, 0.07 above."""
    if tau is not None:
        return float(tau)
    return TAU_32 if image_size <= 32 else TAU_64


class CKTFConfig(TermConfig):
    """CKTF's released setting (``--distill crdst --st_method Last -r 1 -a 0 -b 0.8 --theta 0.1``; docs/algorithm.md
    §1 and §4)."""

    gamma: Weight = 1.0
    """CE weight (-r)"""
    alpha1: Weight = 0.1
    """weight of the SUM of the stem + stage terms (official --theta)"""
    alpha2: Weight = 0.8
    """weight of the final (penultimate) term (official -b)"""
    tau: float | None = None
    """NCE temperature; none: 0.1 for 32x32 data, 0.07 for larger inputs (official nce_t)"""
    feat_dim: int = 128
    """embedding size d of every critic"""
    nce_k: int = 16384
    """negatives per anchor K (shared by every critic)"""
    nce_m: float = 0.5
    """memory momentum"""
    mapping: Literal["first", "last", "random", "max_cos", "min_cos"] = "last"
    """stage pairing: first | last | random | max_cos | min_cos (official First/Last/Random/Largest/Smallest)"""
    head: Literal["linear", "mlp", "pad"] = "linear"
    """embedding heads: linear (Embed, every script) | mlp | pad (CKTF --head mlp|pad)"""
    scoring: Scoring = "fused"
    """fused | gather (the official op order): the same loss (see CRDConfig)"""
    memory: Memory = "bank"
    """bank (the official code's: N_data x d per side and critic) | queue (an extension: FIFO of the last nce_k keys
    per critic, MoCo style; docs/algorithm.md §13)"""

    @field_validator("tau", mode="before")
    @classmethod
    def _tau_words(cls, value: Any) -> Any:
        """``none`` / ``auto`` (CLI and YAML words) mean the per-image-size default."""
        if isinstance(value, str) and value.strip().lower() in ("", "none", "auto", "null"):
            return None
        return value

    @field_validator("mapping", mode="before")
    @classmethod
    def _mapping_alias(cls, value: Any) -> Any:
        """The official ``--st_method`` names (``Last``, ``Largest``, ``Smallest``, ...) are accepted."""
        if isinstance(value, str):
            key = value.strip().lower()
            return MAPPING_ALIASES.get(key, key)
        return value

    @model_validator(mode="after")
    def _check_cktfconfig(self) -> CKTFConfig:
        validate_contrast_fields(self)
        return self

    def at_image_size(self, image_size: int) -> CKTFConfig:
        return self if self.tau is not None else self.replace(tau=resolve_tau(None, image_size))

    def negatives(self) -> int | None:
        return self.nce_k if self.memory == "bank" else None  # a queue's negatives are its entries: nothing drawn

    def memory_bytes(self, n_data: int, n_stages: int) -> int:
        """Every critic's memory: the stem, ``n_stages`` stages and the final one."""
        return contrast_memory_bytes(self.memory, self.feat_dim, n_data, self.nce_k, critics=n_stages + 2)


class FamilyPool:
    """A model family's CKTF pooling (:meth:`DistillModel.pool_feature`) without holding the model."""

    def __init__(self, feature_pool: str):
        self.feature_pool = feature_pool

    def __call__(self, t: Tensor) -> Tensor:
        return DistillModel.pool_feature(self, t)  # type: ignore[arg-type]  # reads only .feature_pool


class StageRNG(nn.Module):
    """The generator of the ``random`` mapping; its state travels in the state dict (resumable)."""

    def __init__(self, seed: int):
        super().__init__()
        self.generator = torch.Generator().manual_seed(seed)

    def get_extra_state(self) -> Tensor:
        return self.generator.get_state()

    def set_extra_state(self, state: Tensor) -> None:
        self.generator.set_state(state.cpu())


def _describe(model: DistillModel) -> str:
    return f"{type(model).__name__}[{', '.join(f'{fi.name}:{fi.num_chs}ch' for fi in model.feature_info)}]"


def _pooled_dim(pool: FamilyPool, shape: tuple[int, int, int]) -> int:
    return int(pool(torch.empty(1, *shape, device="meta")).shape[1])


def cktf_head_dims(student: DistillModel, teacher: DistillModel, image_size: int) -> list[int]:
    """Input width of every intermediate critic (stem, stages), checking the pair can run CKTF at all.

    Raises:
        ConfigError: naming both models and the module when the pair has no official CKTF behaviour.
    """
    pair = f"student {_describe(student)} and teacher {_describe(teacher)}"
    for field, role, model in (("student", "student", student), ("teacher_checkpoint", "teacher", teacher)):
        if not model.cktf_official:
            raise ConfigError(
                field,
                f"{role} {type(model).__name__} has no CKTF stage features (the official ST.determine_avgpool raises "
                "NotImplementedError for MobileNetV2/ShuffleNet)",
                "use crd / crd+kd for this pair, or a ResNet, WRN or VGG",
            )
    n_s, n_t = len(student.feature_info), len(teacher.feature_info)
    if n_s != n_t:
        raise ConfigError(
            "student",
            f"CKTF pairs stage k with stage k, but {pair} have {n_s - 1} and {n_t - 1} stages",
            "pick models of families with the same number of stages (e.g. resnet8x4 <- resnet32x4, vgg8 <- vgg13)",
        )
    if student.feature_pool != teacher.feature_pool:
        raise ConfigError(
            "student",
            f"{pair} pool intermediate features differently ({student.feature_pool} vs {teacher.feature_pool}); "
            "the official code uses one pooling for both",
            "pick models of the same family",
        )
    pool = FamilyPool(student.feature_pool)
    s_shapes, t_shapes = student.feature_shapes(image_size), teacher.feature_shapes(image_size)
    dims = [_pooled_dim(pool, shape) for shape in t_shapes]
    s_stem = _pooled_dim(pool, s_shapes[0])
    if s_stem != dims[0]:
        raise ConfigError(
            "student",
            f"the stem features of {pair} pool to {s_stem} vs {dims[0]} values; the stem pair is not padded "
            f"(stems of {s_shapes[0][0]} and {t_shapes[0][0]} channels)",
            "pick a student whose stem is as wide as the teacher's",
        )
    for k in range(1, n_s):
        (cs, hs, ws), (ct, ht, wt) = s_shapes[k], t_shapes[k]
        where = (
            f"stage {k} (student {student.feature_info[k].name}: {cs}ch {hs}x{ws}, "
            f"teacher {teacher.feature_info[k].name}: {ct}ch {ht}x{wt}) of {pair} at {image_size}x{image_size}"
        )
        if (hs, ws) != (ht, wt):
            raise ConfigError("student", f"{where}: spatial sizes differ", "pick models of the same family")
        if cs > ct:
            raise ConfigError(
                "student",
                f"{where}: the student is wider than the teacher (CKTF only zero-pads the student)",
                "pick a teacher at least as wide as the student in every stage",
            )
        if (ct - cs) % 2:
            raise ConfigError(
                "student",
                f"{where}: odd channel difference ({ct - cs}); CKTF pads (Ct - Cs) / 2 channels on each side",
                "pick models whose stage widths differ by an even number",
            )
    return dims


def generalised_head_dims(
    student: DistillModel, teacher: DistillModel, image_size: int
) -> tuple[list[tuple[int, int]], list[int]]:
    """The generalised pairing's critics (an extension, docs/models.md): ``(s_dim, t_dim)`` of the stem and of every
    student stage, each side pooled by its own model's pooling, and the teacher stage (1-based) of each student stage
    (:func:`~.pairing.depth_map`)."""
    s_shapes, t_shapes = student.feature_shapes(image_size), teacher.feature_shapes(image_size)
    ps, pt = FamilyPool(student.feature_pool), FamilyPool(teacher.feature_pool)
    t_stage = depth_map(len(s_shapes) - 1, len(t_shapes) - 1)
    dims = [(_pooled_dim(ps, s_shapes[0]), _pooled_dim(pt, t_shapes[0]))]
    dims += [(_pooled_dim(ps, s_shapes[k]), _pooled_dim(pt, t_shapes[j])) for k, j in enumerate(t_stage, 1)]
    return dims, t_stage


@LOSS_TERMS.register("cktf", summary="CKTF: a CRD critic per intermediate module (stem, stages) plus the final one")
class CKTF(LossTerm):
    """Contrastive knowledge transfer over every intermediate module plus the penultimate features (Eq. 1).

    ``critics`` holds ``stem``, ``stage1`` .. ``stage{n}`` and ``final``, one :class:`ContrastModule` each.
    ``last_choices`` gives the teacher block chosen in each stage at the last step (read lazily: the cosine
    mappings choose on the device, and only reading the choice waits for it).
    """

    config_cls = CKTFConfig
    #: the paper's space (Section 3.3): both weights, the temperature, d, N and the layer mapping
    search_space = {
        "alpha1": uniform(0.0, 1.0),
        "alpha2": uniform(0.0, 1.0),
        "tau": log_uniform(0.03, 0.3),
        "feat_dim": categorical(16, 32, 64, 128, 256),
        "nce_k": categorical(4096, 8192, 16384),
        "mapping": categorical(*MAPPINGS),
    }
    #: the paper text's weights (Section 3.1); the released code runs alpha1 = 0.1, alpha2 = 0.8
    presets = {"cktf-paper": {"alpha1": 0.8, "alpha2": 0.2}}
    leads_combinations = True  # "CKTF + X" for every baseline X (Tables 1 and 2)
    joins_combinations = False

    def __init__(self, cfg: CKTFConfig, student: DistillModel, teacher: DistillModel | None, ctx: DistillContext):
        super().__init__(cfg, student, teacher, ctx)
        self.cfg: CKTFConfig = cfg
        self.pairing = GENERALISED if may_generalise(student, teacher) else OFFICIAL
        if self.pairing == OFFICIAL:
            pairs = [(d, d) for d in cktf_head_dims(student, teacher, ctx.image_size)]
            self.t_stage = list(range(1, len(pairs)))
            self.pool = self.pool_t = FamilyPool(student.feature_pool)  # ST.determine_avgpool(model_s)
        else:
            pairs, self.t_stage = generalised_head_dims(student, teacher, ctx.image_size)
            self.pool, self.pool_t = FamilyPool(student.feature_pool), FamilyPool(teacher.feature_pool)
        self.tau = resolve_tau(cfg.tau, ctx.image_size)
        self.n_data = int(ctx.num_train_samples)
        self.n_stages = len(pairs) - 1

        def critic(s_dim: int, t_dim: int) -> ContrastModule:
            return ContrastModule(
                s_dim, t_dim, cfg.feat_dim, self.n_data, cfg.nce_m, cfg.head, cfg.scoring, cfg.memory, cfg.nce_k
            )

        critics = {"stem": critic(*pairs[0])}
        critics.update({f"stage{k}": critic(*pairs[k]) for k in range(1, self.n_stages + 1)})
        critics["final"] = critic(student.num_features, teacher.num_features)
        self.critics = nn.ModuleDict(critics)
        # drawn after the critics so the mapping never changes their initialisation
        self.rng = StageRNG(int(torch.randint(0, 2**62, (1,)).item())) if cfg.mapping == "random" else None
        self._choices: list = []

    def run_params(self) -> dict[str, str]:
        return contrast_run_params(super().run_params(), self.cfg)

    @property
    def last_choices(self) -> tuple[int, ...]:
        return tuple(int(j) for j in self._choices)

    @classmethod
    def combo_defaults(cls, partner: str, image_size: int) -> dict[str, Any]:
        """CKTF's defaults beside ``partner``: Table 1 for ``kd``, the Table 2 mode (``run_2kds.sh``) otherwise.

        ``cktf+kd`` (``-r 1 -a 1 -b 0.8 --theta 0.1``): unchanged (KD itself switches to ``alpha = 1``). Any other
        partner: ``0.8 * (sum of every CKTF term)``, i.e. ``alpha1 = alpha2 = 0.8``; mapping ``min_cos``
        (``Smallest``) for FitNet/AT/SP/CC/VID/RKD/PKT on 32x32 data, ``last`` for AB/FT/NST/FSP and everything on
        64x64; ``tau = 0.1`` (the script passes no ``--nce_t``, so CKTF's default applies on Tiny-ImageNet too).
        """
        if partner == "kd":
            return {}
        mapping = "min_cos" if partner in TABLE2_SMALLEST and image_size == 32 else "last"
        return {"alpha1": 0.8, "alpha2": 0.8, "mapping": mapping, "tau": TAU_32}

    def forward(self, s: DistillOutput, t: DistillOutput | None, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        assert t is not None
        index, contrast_idx = contrast_inputs(batch, self.cfg)
        a1, a2, tau = self.cfg.alpha1, self.cfg.alpha2, self.tau
        generator = self.rng.generator if self.rng is not None else None
        losses: dict[str, Tensor] = {}
        choices = []
        with torch.autocast(device_type=s.pooled.device.type, enabled=False):
            stem_s, stem_t = self.pool(s.feats[0].float()), self.pool_t(t.feats[0].detach().float())
            losses["cktf_stem"] = a1 * self.critics["stem"](stem_s, stem_t, index, contrast_idx, tau)
            for k, j in enumerate(self.t_stage, 1):
                s_last = s.stage_blocks[k - 1][-1].float()
                t_blocks = [b.detach().float() for b in t.stage_blocks[j - 1]]
                if self.pairing == OFFICIAL:
                    f_s, f_t, j_star = select_stage_pair(s_last, t_blocks, self.cfg.mapping, self.pool, generator)
                else:
                    f_s, f_t, j_star = select_stage_pair_generalised(
                        s_last, t_blocks, self.cfg.mapping, self.pool, self.pool_t, generator
                    )
                choices.append(j_star)
                losses[f"cktf_stage{k}"] = a1 * self.critics[f"stage{k}"](f_s, f_t, index, contrast_idx, tau)
            losses["cktf_final"] = a2 * self.critics["final"](s.pooled, t.pooled, index, contrast_idx, tau)
        self._choices = choices
        return losses
