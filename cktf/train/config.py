"""Typed run configuration. Defaults are the paper's recipe (docs/algorithm.md §6; RepDistiller = CKTF).

Every field can be overridden from the CLI (``--lr 0.01``), a study file or a flat dict (Ray Tune). The models are
:class:`~cktf.config.Config` subclasses: validated when built, so a bad value is named (``optim.lr``) before any
data is decoded.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from ..config import Config
from ..data import DataConfig
from ..errors import ConfigError

#: the largest ``epochs`` a config accepts without ``train.allow_long``: 10x the paper's 240-epoch recipe
MAX_EPOCHS = 2400


class OptimConfig(Config):
    """SGD with step decay, one parameter group with weight decay (student + every adapter/head)."""

    section = "optim"

    lr: float = Field(0.05, gt=0)
    """initial learning rate (RepDistiller uses 0.01 for MobileNetV2/ShuffleNet)"""
    momentum: float = Field(0.9, ge=0, lt=1)
    """SGD momentum"""
    weight_decay: float = Field(5e-4, ge=0)
    """L2 on every trainable parameter, adapters included"""
    nesterov: bool = False
    """Nesterov momentum"""
    milestones: tuple[int, ...] = (150, 180, 210)
    """epochs (0-based) from which lr is multiplied by lr_decay"""
    lr_decay: float = Field(0.1, gt=0)
    """factor applied at every milestone"""

    @field_validator("milestones")
    @classmethod
    def _increasing(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if list(value) != sorted(value) or any(m < 0 for m in value):
            raise ConfigError("", f"must be increasing epochs >= 0, got {list(value)}", "e.g. [150, 180, 210]")
        return value

    def lr_at(self, epoch: int) -> float:
        """Learning rate of 0-based ``epoch`` (RepDistiller ``adjust_learning_rate``: set per epoch, no warm-up)."""
        return self.lr * self.lr_decay ** sum(epoch >= m for m in self.milestones)


class TrainConfig(Config):
    """Loop settings. ``epochs`` counts main-stage epochs; init stages (AB/FT/FSP) come on top."""

    section = "train"

    epochs: int = Field(240, ge=1)
    """main-stage epochs (the paper's recipe: 240)"""
    batch_size: int = Field(64, ge=1)
    """training batch size"""
    eval_batch_size: int = Field(256, ge=1)
    """evaluation only; BN is in eval mode so the value does not change accuracy"""
    seed: int = 0
    """seed of the model initialisation, the batch order and the augmentation"""
    device: str = "auto"
    """auto (cuda when available, else cpu) | cpu | cuda[:N]"""
    bf16: bool = False
    """bf16 autocast on GPU; contrastive blocks always run in fp32"""
    channels_last: bool = False
    """channels-last memory format for the models"""
    gpu_memory_share: float = Field(1.0, gt=0, le=1)
    """the fraction of the GPU's memory this run may use: < 1 caps the CUDA allocator there and sizes which splits
    are held on the GPU (a study sets it from resources.gpu, so trials sharing a GPU stay within their share)"""
    sync_bn: bool = False
    """data-parallel runs (W > 1 workers): BatchNorm of the student and of the method's adapters normalises with the
    global batch's statistics (cktf.distributed.SyncBatchNorm); false: each worker's rows (docs/algorithm.md §12).
    Without a process group it changes nothing"""
    compile: str = ""
    """torch.compile backend for the model forwards (e.g. inductor); empty = eager"""
    checkpoint_in_background: bool = True
    """write each epoch's checkpoint from a background thread (the training thread only copies the state to host
    memory); false writes it inline"""
    checkpoint_banks: Literal["fp32", "bf16"] = "fp32"
    """precision of the contrastive memory banks in last.pt: bf16 halves the biggest part of a CRD/CKTF checkpoint;
    a run resumed from it goes on with banks rounded to bf16 (relative error <= 2**-8), so it is no longer
    bit-identical to an uninterrupted run (fp32 keeps that)"""
    keep_previous_checkpoint: bool = True
    """keep last.prev.pt beside last.pt (a truncated last.pt falls back to it); a study's trials set false: their
    reported checkpoint in Ray's storage is their fallback"""
    eval_test: bool = True
    """test accuracy every epoch (reported as the paper does, never used for selection)"""
    max_steps_per_epoch: int = Field(0, ge=0)
    """0 = the whole split; > 0 caps steps (smoke tests)"""
    progress: bool = True
    """tqdm bars for epochs and batches"""
    allow_long: bool = False
    """accept more than 2400 epochs (10x the paper's; a guard against a typo that would train for ever)"""

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if value not in ("auto", "cpu") and not value.startswith("cuda"):
            raise ConfigError("", f"unknown device {value!r}", "use auto, cpu or cuda[:N]")
        return value

    @field_validator("compile")
    @classmethod
    def _backend(cls, value: str) -> str:
        if value:
            import torch

            backends = torch.compiler.list_backends()
            if value not in backends:
                raise ConfigError("", f"unknown torch.compile backend {value!r}", f"use one of {', '.join(backends)}")
        return value

    @model_validator(mode="after")
    def _bounded(self) -> TrainConfig:
        if self.epochs > MAX_EPOCHS and not self.allow_long:
            raise ConfigError(
                "epochs",
                f"{self.epochs:,} epochs is more than {MAX_EPOCHS} (10x the paper's 240): at a CIFAR epoch a minute "
                f"on a GPU that is {self.epochs / 60 / 24:,.0f} GPU-days for one run",
                "lower it, or pass --i-mean-it (allow_long: true) if you mean it",
            )
        return self


class RunConfig(Config):
    """One training run: teacher training (distiller ``ce``, no teacher) or student distillation."""

    student: str = "resnet20"
    """model trained by this run: a zoo name or tv:NAME, timm:NAME, module:pkg.mod:factory (docs/models.md)"""
    student_weights: str | None = None
    """initial weights of that model: a local .safetensors/.pth (read weights-only) or the library's named weights
    (DEFAULT, IMAGENET1K_V2, ...) from its cache (docs/models.md)"""
    download: bool = False
    """fetch library weights the cache lacks (nothing is downloaded otherwise)"""
    distiller: str = "ce"
    """a name from ``cktf distillers``"""
    distill_params: dict[str, Any] = Field(default_factory=dict)
    """fields of the distiller's config (flat: alpha1, fitnet.beta, theta)"""
    teacher_checkpoint: str | None = None
    """a .safetensors written by cktf (architecture in its metadata)"""
    data: DataConfig = Field(default_factory=DataConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    out_dir: str = "runs/run"
    """checkpoints, weights and metrics.jsonl"""
    resume: bool = True
    """continue from out_dir/last.pt when it exists and the config matches"""
