"""Typed run configuration. Defaults are the paper's recipe (spec section 4, RepDistiller = CKTF).

Every field can be overridden from the CLI (``--lr 0.01``) or from a flat dict (Ray Tune), and
:meth:`RunConfig.validate` rejects bad values with the field's name before any data is decoded.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..data import DataConfig
from ..errors import ConfigError


@dataclass
class OptimConfig:
    """SGD with step decay, one parameter group with weight decay (student + every adapter/head)."""

    lr: float = 0.05  # initial learning rate (RepDistiller uses 0.01 for MobileNetV2/ShuffleNet)
    momentum: float = 0.9
    weight_decay: float = 5e-4  # L2 on every trainable parameter, adapters included
    nesterov: bool = False
    milestones: tuple[int, ...] = (150, 180, 210)  # epochs (0-based) from which lr is multiplied by lr_decay
    lr_decay: float = 0.1

    def lr_at(self, epoch: int) -> float:
        """Learning rate of 0-based ``epoch`` (RepDistiller ``adjust_learning_rate``: set per epoch, no warm-up)."""
        return self.lr * self.lr_decay ** sum(epoch >= m for m in self.milestones)

    def validate(self) -> None:
        if self.lr <= 0:
            raise ConfigError("optim.lr", f"must be > 0, got {self.lr}", "e.g. --lr 0.05")
        if not 0 <= self.momentum < 1:
            raise ConfigError("optim.momentum", f"must be in [0, 1), got {self.momentum}")
        if self.weight_decay < 0:
            raise ConfigError("optim.weight_decay", f"must be >= 0, got {self.weight_decay}")
        if list(self.milestones) != sorted(self.milestones) or any(m < 0 for m in self.milestones):
            raise ConfigError("optim.milestones", f"must be increasing epochs >= 0, got {self.milestones}")


@dataclass
class TrainConfig:
    """Loop settings. ``epochs`` counts main-stage epochs; init stages (AB/FT/FSP) come on top."""

    epochs: int = 240
    batch_size: int = 64
    eval_batch_size: int = 256  # evaluation only; BN is in eval mode so the value does not change accuracy
    seed: int = 0
    device: str = "auto"  # "auto" = cuda when available, else cpu
    bf16: bool = False  # bf16 autocast on GPU; contrastive blocks always run in fp32
    channels_last: bool = False
    compile: str = ""  # torch.compile backend for the model forwards (e.g. inductor); "" = eager
    eval_test: bool = True  # test accuracy every epoch (reported as the paper does, never used for selection)
    max_steps_per_epoch: int = 0  # 0 = the whole split; > 0 caps steps (smoke tests)
    progress: bool = True  # tqdm bars for epochs and batches

    def validate(self) -> None:
        if self.epochs < 1:
            raise ConfigError("train.epochs", f"must be >= 1, got {self.epochs}", "e.g. --epochs 240")
        if self.batch_size < 1:
            raise ConfigError("train.batch_size", f"must be >= 1, got {self.batch_size}", "e.g. --batch-size 64")
        if self.eval_batch_size < 1:
            raise ConfigError("train.eval_batch_size", f"must be >= 1, got {self.eval_batch_size}")
        if self.device not in ("auto", "cpu") and not self.device.startswith("cuda"):
            raise ConfigError("train.device", f"unknown device {self.device!r}", "use auto, cpu or cuda[:N]")
        if self.max_steps_per_epoch < 0:
            raise ConfigError("train.max_steps_per_epoch", "must be >= 0")
        if self.compile:
            import torch._dynamo

            backends = torch._dynamo.list_backends()
            if self.compile not in backends:
                raise ConfigError(
                    "train.compile",
                    f"unknown torch.compile backend {self.compile!r}",
                    f"use one of {', '.join(backends)}",
                )


@dataclass
class RunConfig:
    """One training run: teacher training (distiller ``ce``, no teacher) or student distillation."""

    student: str = "resnet20"  # model trained by this run
    distiller: str = "ce"  # a name from ``cktf distillers``
    distill_params: dict[str, Any] = field(default_factory=dict)  # fields of the distiller's config
    teacher_checkpoint: str | None = None  # a ``.safetensors`` written by cktf (architecture in its metadata)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    out_dir: str = "runs/run"  # checkpoints, weights and metrics.jsonl
    resume: bool = True  # continue from out_dir/last.pt when it exists and the config matches

    def validate(self) -> None:
        self.data.validate()
        self.optim.validate()
        self.train.validate()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        d = dict(d)
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ConfigError(unknown[0], "unknown run field")
        sections = {"data": DataConfig, "optim": OptimConfig, "train": TrainConfig}
        for key, sub in sections.items():
            if key in d and isinstance(d[key], dict):
                d[key] = section_from_dict(sub, d[key], key)
        return cls(**d)


def section_from_dict(cls: type, values: dict[str, Any], prefix: str) -> Any:
    """Build a config dataclass from a dict, naming unknown fields; tuples come back from JSON lists."""
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"{prefix}.{unknown[0]}", "unknown field", f"known fields: {', '.join(known)}")
    out = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return cls(**out)
