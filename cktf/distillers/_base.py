"""The one distiller interface: a student, a frozen teacher and one or more loss *terms*.

Eq. 1 of the CKTF paper is ``L = gamma * L_CE + L_CKT + theta * L_distill``. Here every method
(KD, FitNet, ..., CRD, CKTF) is a :class:`LossTerm`: an ``nn.Module`` holding the method's adapters,
heads and memory banks (sized from the models' ``feature_info``; it never stores the models) whose
``forward(s_out, t_out, batch)`` returns its already weighted loss terms. A :class:`Distiller` runs
the student once with features and the teacher once under ``no_grad``, adds ``gamma * CE`` (with
``gamma == 0`` the labels are never read: the paper's transfer setting) and the terms of each
method, the secondary one scaled by ``theta``. ``cktf`` alone, ``kd`` alone and ``cktf+fitnet``
are the same class with one or two terms: no per-method trainer, no ``if/elif`` on names.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Annotated, Any, ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from ..config import Config
from ..errors import ConfigError
from ..models import DistillModel, DistillOutput
from ..registry import Registry
from ..space import LR_SPACE, ParamSpec

#: name -> LossTerm subclass: one method each (``cktf distillers`` lists them, plus presets and ``X+Y`` combinations)
LOSS_TERMS: Registry = Registry("distiller")

#: a loss weight: a float >= 0 (Eq. 1's gamma, theta and each method's own weights)
Weight = Annotated[float, Field(ge=0.0)]


class TermConfig(Config):
    """Fields shared by every method's config. Subclasses add their own with the official defaults."""

    section = "distill"

    gamma: Weight = 1.0
    """cross-entropy weight when this method is the primary one (Eq. 1); 0 = labels are never read"""

    def at_image_size(self, image_size: int) -> TermConfig:
        """This config with its image-size dependent defaults resolved (CKTF's ``tau``); most have none."""
        return self

    def negatives(self) -> int | None:
        """Negatives K per anchor when the method needs ``contrast_idx`` batches (CRD, CKTF), else ``None``."""
        return None

    def memory_bytes(self, n_data: int, n_stages: int) -> int:
        """Bytes of the method's contrastive memory on each worker (CRD, CKTF: :func:`~cktf.losses.
        contrast_memory_bytes`) for ``n_data`` training images and a student of ``n_stages`` stages; 0 without."""
        return 0


@dataclass(frozen=True)
class DistillContext:
    """What a term may know about the run besides the two models."""

    num_classes: int
    num_train_samples: int  # size of the index space of ``batch["index"]`` (memory banks)
    image_size: int


class StepOutput(NamedTuple):
    logits: Tensor  # student logits, for train accuracy
    losses: dict[str, Tensor]  # weighted terms; the trainer minimises their sum


class InitStage(NamedTuple):
    """An initialisation stage run before the main training (AB, FT, FSP; RepDistiller ``helper/pretrain.py``)."""

    modules: list[nn.Module]  # put in train mode during the stage (everything else in eval)
    params: list[nn.Parameter]  # optimised during the stage
    epochs: int
    lr: float | None  # None = the main stage's optim.lr (RepDistiller's opt.learning_rate)
    loss: Callable[[Mapping[str, Tensor]], dict[str, Tensor]]  # batch -> weighted terms


class LossTerm(nn.Module):
    """One method's loss with its trainable adapters and state. Register with ``@LOSS_TERMS.register(name)``.

    Subclasses set the class attributes, build adapters in ``__init__`` from ``student.feature_info`` /
    ``teacher.feature_info`` (without keeping references to the models) and implement :meth:`forward`. What a
    study needs to know about the method lives here too, so the study layer never tests a method's name: its
    default search space, its presets, whether and how it combines (Eq. 1, ``X+Y``) and its defaults beside a
    partner. Adding a method is one file in ``cktf/distillers/`` and its test.
    """

    config_cls: ClassVar[type[TermConfig]] = TermConfig
    #: False for plain supervised training (teacher training)
    needs_teacher: ClassVar[bool] = True
    #: False when only logits are needed (skips collecting features)
    needs_features: ClassVar[bool] = True
    #: True when the loss itself reads ``batch["target"]`` (DKD): refused on unlabeled data even with ``gamma = 0``
    needs_labels: ClassVar[bool] = False
    #: True when the loss relates the samples of a batch to each other (SP, CC, RKD, PKT, DIST's intra-class term):
    #: in a data-parallel run each worker computes it over its own rows, so it is not the one-process loss
    #: (docs/algorithm.md §12). CKTF's normalisation over the batch is computed over the global batch instead.
    batch_coupled: ClassVar[bool] = False
    #: the study's ``search.space`` when the study names none (field names of :attr:`config_cls`, or ``optim.*``)
    search_space: ClassVar[Mapping[str, ParamSpec]] = LR_SPACE
    #: named variants: preset name -> field overrides (``cktf-paper``: the paper text's weights)
    presets: ClassVar[Mapping[str, Mapping[str, Any]]] = {}
    #: a preset's own ranges where its values lie outside (or at the edge of) the method's space, by preset name
    preset_spaces: ClassVar[Mapping[str, Mapping[str, Any]]] = {}
    #: may come first in ``X+Y`` (the contrastive methods: "CKTF + X", "CRD + KD")
    leads_combinations: ClassVar[bool] = False
    #: may be the ``Y`` of ``X+Y`` (not plain CE, not a leading method)
    joins_combinations: ClassVar[bool] = True
    #: partners ``cktf distillers`` lists for a leading method (``None``: every joinable method)
    listed_partners: ClassVar[frozenset[str] | None] = None

    def __init__(self, cfg: TermConfig, student: DistillModel, teacher: DistillModel | None, ctx: DistillContext):
        super().__init__()
        if self.needs_teacher and teacher is None:
            name = type(self).__name__
            raise ConfigError("teacher_checkpoint", f"{name} needs a teacher", "pass --teacher-ckpt PATH")
        self.cfg = cfg
        self.ctx = ctx
        #: ``official``, or ``generalised`` where the term uses the generalised pairing (:mod:`.pairing`)
        self.pairing = "official"
        #: the 0-based main-stage epoch being trained (:meth:`on_epoch_start`); 0 until the trainer says otherwise
        self.epoch = 0

    def forward(self, s: DistillOutput, t: DistillOutput | None, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The method's weighted loss terms (names become ``loss/<name>`` in the metrics)."""
        return {}

    def contrast_negatives(self) -> int | None:
        """Number of negatives K per sample when the method needs ``contrast_idx`` batches (CRD, CKTF)."""
        return self.cfg.negatives()

    def init_stage(self, student: DistillModel, teacher: DistillModel) -> InitStage | None:
        """The method's initialisation stage, if any (AB, FT, FSP)."""
        return None

    @classmethod
    def combo_defaults(cls, partner: str, image_size: int) -> dict[str, Any]:
        """Default overrides of this (leading) method's fields when combined with ``partner``."""
        return {}

    @classmethod
    def combo_defaults_as_secondary(cls, primary: str) -> dict[str, Any]:
        """Default overrides of this method's fields when it is the ``Y`` of ``primary+Y``."""
        return {}

    def on_train_start(self, student: DistillModel) -> None:
        """Hook before the main stage (e.g. FT freezes its paraphraser)."""

    def run_params(self) -> dict[str, str]:
        """What a run logs about this term besides its config (``pairing``; ``memory`` when not the official bank)."""
        return {"pairing": str(self.pairing)}

    def on_epoch_start(self, epoch: int) -> None:
        """Hook before every main-stage epoch: records ``epoch`` as :attr:`epoch`. It counts from 0, as the training
        loop does, and a run resumed at epoch ``k`` calls it with ``k`` (nothing about it is checkpointed). DKD and
        ReviewKD read it for their linear warm-up (:func:`linear_warmup`); a term that overrides this calls super.
        """
        self.epoch = int(epoch)


class Distiller(nn.Module):
    """Student + frozen teacher + weighted loss terms: the object the trainer optimises."""

    def __init__(
        self,
        student: DistillModel,
        teacher: DistillModel | None,
        terms: Mapping[str, LossTerm],
        gamma: float,
        weights: Mapping[str, float] | None = None,
        name: str = "",
    ):
        super().__init__()
        needs_teacher = any(type(t).needs_teacher for t in terms.values())
        if needs_teacher and teacher is None:
            raise ConfigError("teacher_checkpoint", f"distiller {name!r} needs a teacher", "pass --teacher-ckpt PATH")
        self.student = student
        self.teacher = teacher if needs_teacher else None
        self.terms = nn.ModuleDict(dict(terms))
        self.gamma = float(gamma)
        self.weights = {k: float((weights or {}).get(k, 1.0)) for k in terms}
        self.name = name
        self.needs_features = any(type(t).needs_features for t in terms.values())
        self.needs_labels = any(type(t).needs_labels for t in terms.values())
        self._forwards: dict[str, Callable[[Tensor], DistillOutput]] = {}  # compiled model forwards, if any
        if self.teacher is not None:
            self.teacher.eval()
            for p in self.teacher.parameters():
                p.requires_grad_(False)

    # ---------------------------------------------------------------- step
    def compile_models(self, backend: str = "inductor") -> None:
        """``torch.compile`` the student's and teacher's forward passes (the loss terms stay eager: their memory
        banks are updated in place and CKTF's stage choice is data dependent). The modules themselves are not
        wrapped, so state dicts, checkpoints and ``copy.deepcopy(student)`` are unchanged."""
        for role in ("student", "teacher"):
            model = getattr(self, role)
            if model is not None:
                fn = model.forward_distill if self.needs_features else partial(_logits_only, model)
                self._forwards[role] = torch.compile(fn, backend=backend)

    def _run(self, role: str, image: Tensor) -> DistillOutput:
        if role in self._forwards:
            return self._forwards[role](image)
        model = getattr(self, role)
        return model.forward_distill(image) if self.needs_features else _logits_only(model, image)

    def forward(self, batch: Mapping[str, Tensor]) -> StepOutput:
        image = batch["image"]
        s_out = self._run("student", image)
        t_out = None
        if self.teacher is not None:
            with torch.no_grad():
                t_out = self._run("teacher", image)
        losses: dict[str, Tensor] = {}
        if self.gamma > 0:
            losses["ce"] = self.gamma * F.cross_entropy(s_out.logits, batch["target"])
        for name, term in self.terms.items():
            w = self.weights[name]
            if w == 0:
                continue
            for key, value in term(s_out, t_out, batch).items():
                losses[key if key not in losses else f"{name}/{key}"] = value if w == 1 else w * value
        return StepOutput(s_out.logits, losses)

    # ---------------------------------------------------------------- what the trainer asks
    def contrast_negatives(self) -> int | None:
        ks = {k for t in self.terms.values() if (k := t.contrast_negatives()) is not None}
        if len(ks) > 1:
            raise ConfigError("distill.nce_k", f"terms ask for different numbers of negatives {sorted(ks)}")
        return ks.pop() if ks else None

    def init_stage(self) -> InitStage | None:
        stages = [s for t in self.terms.values() if (s := t.init_stage(self.student, self.teacher)) is not None]
        if len(stages) > 1:
            raise ConfigError("distiller", f"{self.name} combines two methods with init stages")
        return stages[0] if stages else None

    def on_train_start(self) -> None:
        for t in self.terms.values():
            t.on_train_start(self.student)

    def on_epoch_start(self, epoch: int) -> None:
        """Tell every term the 0-based epoch about to run (:meth:`LossTerm.on_epoch_start`); the trainer calls it
        before each main-stage epoch, so a resumed run passes the epoch it resumes at."""
        for t in self.terms.values():
            t.on_epoch_start(int(epoch))

    def run_params(self) -> dict[str, str]:
        """What a run logs about its distiller besides its config: ``<term>/pairing`` for every term (``official``,
        or ``generalised`` for the extension of docs/models.md) and ``<term>/memory: queue`` for a contrastive term
        on the FIFO queue (an extension, docs/algorithm.md §13)."""
        out: dict[str, str] = {}
        for name, term in self.terms.items():
            own = term.run_params() if isinstance(term, LossTerm) else {"pairing": "official"}
            out.update({f"{name}/{k}": v for k, v in own.items()})
        return out

    def batch_coupled_terms(self) -> list[str]:
        """The terms whose loss relates the samples of a batch (:attr:`LossTerm.batch_coupled`): not exact in a
        data-parallel run."""
        return [name for name, term in self.terms.items() if type(term).batch_coupled]

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """Student plus every term's adapters/heads, never the teacher (RepDistiller's ``trainable_list``)."""
        yield from (p for p in self.student.parameters() if p.requires_grad)
        for term in self.terms.values():
            yield from (p for p in term.parameters() if p.requires_grad)

    def train(self, mode: bool = True) -> Distiller:
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # the teacher is frozen in eval mode, always
        return self

    def checkpoint_state(self, compact: bool = False) -> dict[str, Tensor]:
        """Everything to resume: student, adapters, buffers (memory banks), never the teacher.

        ``compact``: the buffers a module lists in its ``compact_buffers`` (CRD/CKTF memory banks) in bf16; loading
        casts them back to the module's dtype (:meth:`load_checkpoint_state`).
        """
        state = {k: v for k, v in self.state_dict().items() if not k.startswith("teacher.")}
        if compact:
            for prefix, module in self.named_modules():
                for name in getattr(module, "compact_buffers", ()):
                    key = f"{prefix}.{name}" if prefix else name
                    if key in state and state[key].is_floating_point():
                        state[key] = state[key].to(torch.bfloat16)
        return state

    def load_checkpoint_state(self, state: Mapping[str, Tensor]) -> None:
        missing, unexpected = self.load_state_dict(dict(state), strict=False)
        missing = [k for k in missing if not k.startswith("teacher.")]
        if missing or unexpected:
            raise RuntimeError(f"checkpoint does not match the distiller: missing {missing}, unexpected {unexpected}")


def linear_warmup(epoch: int, warmup: int) -> float:
    """The loss factor of a linear warm-up over ``warmup`` epochs at the 0-based ``epoch``: ``min((epoch + 1) /
    warmup, 1)``, 1 when ``warmup`` is 0.

    mdistiller counts epochs from 1 (``BaseTrainer.train``: ``epoch = 1``, and ``forward_train(..., epoch=epoch)``) and
    uses ``min(epoch / warmup, 1.0)`` (``mdistiller/distillers/DKD.py``, ``ReviewKD.py``): the first epoch trains at
    ``1 / warmup``, epoch ``warmup`` (1-based) and later at 1. This loop counts from 0, hence the ``+ 1``: the factors
    epoch by epoch are the official ones. (The original ReviewKD code, dvlab-research/ReviewKD ``CIFAR-100/train.py``,
    counts from 0 and starts at 0; mdistiller's count is the one followed here.)
    """
    if warmup <= 0:
        return 1.0
    return min((int(epoch) + 1) / warmup, 1.0)


def _logits_only(model: DistillModel, image: Tensor) -> DistillOutput:
    logits = model(image)
    return DistillOutput((), (), (), logits.new_empty(0), logits)
