"""The one distiller interface (mdistiller's ``Distiller`` with its flaws fixed; see the style anchors).

A distiller owns the student, the frozen teacher and every trainable adapter/head. Its
``forward(batch)`` runs the student once with features and the teacher once under ``no_grad``,
then the subclass's :meth:`Distiller.compute_losses` returns the *weighted* loss terms. The
trainer sums them, so Eq. 1 of the CKTF paper,

    L = gamma * L_CE + L_CKT + theta * L_distill,

is the sum of the dict entries: the base class adds ``ce`` (weight ``gamma``; with ``gamma == 0``
the labels are never read, as in the paper's transfer setting), subclasses add their own terms.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from ..models import DistillModel, DistillOutput
from ..registry import Registry

DISTILLERS: Registry = Registry("distiller")


@dataclass
class DistillerConfig:
    """Fields shared by every distiller. Subclasses add their own weights with paper defaults."""

    gamma: float = 1.0  # weight of cross-entropy on labels (Eq. 1); 0 = labels are never read

    @classmethod
    def from_dict(cls, params: Mapping[str, Any], prefix: str = "distill") -> DistillerConfig:
        """Build from a flat dict (CLI ``--set k=v`` or a Ray Tune config), naming unknown or bad fields."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(params) - set(fields))
        if unknown:
            raise ConfigError(
                f"{prefix}.{unknown[0]}", "unknown field for this distiller", f"known fields: {', '.join(fields)}"
            )
        kwargs = {}
        for name, value in params.items():
            default = fields[name].default
            try:
                kwargs[name] = _coerce(value, default)
            except (TypeError, ValueError):
                raise ConfigError(
                    f"{prefix}.{name}", f"cannot use {value!r}", f"give a {type(default).__name__}"
                ) from None
        cfg = cls(**kwargs)
        cfg.validate(prefix)
        return cfg

    def validate(self, prefix: str = "distill") -> None:
        """Reject negative loss weights; subclasses extend this with their own bounds."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if (f.name in ("gamma", "alpha", "beta", "theta") or f.name.startswith("w_")) and value < 0:
                raise ConfigError(f"{prefix}.{f.name}", f"loss weight must be >= 0, got {value}", "use a value >= 0")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _coerce(value: Any, default: Any) -> Any:
    """Convert CLI strings / tune values to the type of the field's default."""
    if isinstance(default, bool):
        if isinstance(value, str):
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        return bool(value)
    if isinstance(default, int) and not isinstance(default, bool):
        f = float(value)
        if f != int(f):
            raise ValueError(value)
        return int(f)
    if isinstance(default, float):
        return float(value)
    if isinstance(default, str):
        return str(value)
    if isinstance(default, tuple):
        return tuple(value) if not isinstance(value, str) else tuple(v.strip() for v in value.split(","))
    return value


@dataclass(frozen=True)
class DistillContext:
    """What a distiller may know about the run besides the two models."""

    num_classes: int
    num_train_samples: int  # size of the index space of ``batch["index"]`` (memory banks)
    image_size: int


class StepOutput(NamedTuple):
    logits: Tensor  # student logits, for train accuracy
    losses: dict[str, Tensor]  # weighted terms; the trainer minimises their sum


class InitStage(NamedTuple):
    """An initialisation stage run before the main training (AB, FT, FSP; RepDistiller ``pretrain.init``)."""

    modules: list[nn.Module]  # put in train mode during the stage (everything else in eval)
    params: list[nn.Parameter]  # optimised during the stage
    epochs: int
    lr: float
    loss: Callable[[Mapping[str, Tensor]], dict[str, Tensor]]


class Distiller(nn.Module):
    """Base class of every method. Register subclasses with ``@DISTILLERS.register(name)``."""

    config_cls: ClassVar[type[DistillerConfig]] = DistillerConfig
    #: batch keys the method needs beyond ``image``/``target`` (the data layer reads this)
    requires: ClassVar[frozenset[str]] = frozenset()
    #: False for plain supervised training (teacher training)
    needs_teacher: ClassVar[bool] = True
    #: False when only logits are needed (skips collecting features)
    needs_features: ClassVar[bool] = True

    def __init__(self, student: DistillModel, teacher: DistillModel | None, cfg: DistillerConfig, ctx: DistillContext):
        super().__init__()
        if self.needs_teacher and teacher is None:
            raise ConfigError("teacher", f"{type(self).__name__} needs a teacher", "pass --teacher-ckpt PATH")
        self.student = student
        self.teacher = teacher
        self.cfg = cfg
        self.ctx = ctx
        if teacher is not None:
            teacher.eval()
            for p in teacher.parameters():
                p.requires_grad_(False)

    # ---------------------------------------------------------------- subclass API
    def compute_losses(
        self, s: DistillOutput, t: DistillOutput | None, batch: Mapping[str, Tensor]
    ) -> dict[str, Tensor]:
        """Weighted method-specific terms; empty for plain CE."""
        return {}

    def contrast_negatives(self) -> int | None:
        """Number of negatives K per sample when the method needs ``contrast_idx`` batches (CRD, CKTF)."""
        return None

    def init_stage(self) -> InitStage | None:
        """The method's initialisation stage, if any (AB, FT, FSP)."""
        return None

    def extra_modules(self) -> list[nn.Module]:
        """Trainable adapters/heads besides the student (all joined to the student's SGD group)."""
        return [m for name, m in self.named_children() if name not in ("student", "teacher")]

    # ---------------------------------------------------------------- shared machinery
    def forward(self, batch: Mapping[str, Tensor]) -> StepOutput:
        image = batch["image"]
        if self.needs_features:
            s_out = self.student.forward_distill(image)
        else:
            logits = self.student(image)
            s_out = DistillOutput((), (), (), logits.new_empty(0), logits)
        t_out = None
        if self.teacher is not None:
            with torch.no_grad():
                t_out = (
                    self.teacher.forward_distill(image) if self.needs_features else _logits_only(self.teacher, image)
                )
        losses: dict[str, Tensor] = {}
        if self.cfg.gamma > 0:
            losses["ce"] = self.cfg.gamma * F.cross_entropy(s_out.logits, batch["target"])
        losses.update(self.compute_losses(s_out, t_out, batch))
        return StepOutput(s_out.logits, losses)

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """Student plus adapters, never the teacher (RepDistiller's ``trainable_list``)."""
        yield from self.student.parameters()
        for m in self.extra_modules():
            yield from m.parameters()

    def train(self, mode: bool = True) -> Distiller:
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # the teacher is frozen in eval mode, always
        return self

    def checkpoint_state(self) -> dict[str, Tensor]:
        """Everything to resume: student, adapters, buffers (memory banks), never the teacher."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("teacher.")}

    def load_checkpoint_state(self, state: Mapping[str, Tensor]) -> None:
        missing, unexpected = self.load_state_dict(dict(state), strict=False)
        missing = [k for k in missing if not k.startswith("teacher.")]
        if missing or unexpected:
            raise RuntimeError(f"checkpoint does not match the distiller: missing {missing}, unexpected {unexpected}")


def _logits_only(model: DistillModel, image: Tensor) -> DistillOutput:
    logits = model(image)
    return DistillOutput((), (), (), logits.new_empty(0), logits)


def build_distiller(
    name: str,
    student: DistillModel,
    teacher: DistillModel | None,
    params: Mapping[str, Any],
    ctx: DistillContext,
) -> Distiller:
    """Look ``name`` up in the registry, build its typed config from ``params`` and the distiller."""
    cls = DISTILLERS.get(name)
    cfg = cls.config_cls.from_dict(params)
    return cls(student, teacher if cls.needs_teacher else None, cfg, ctx)
