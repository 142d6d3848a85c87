"""What a run of training costs, counted before it starts: the FLOPs of one training step of a method on a pair (a
real step, counted by ``torch.utils.flop_counter.FlopCounterMode`` on the CPU at a batch of 2, scaled to the batch),
and the GPU-hours they take at a documented throughput. Used by the dry runs of studies and campaigns.

* **FLOPs per training step**: teacher forward, student forward and backward, heads and critics; evaluation (a
  student forward on the val and test splits per epoch) and the AB/FT/FSP initialisation epochs are added.
* **GPU-hours**: the FLOPs over an *effective* training throughput from :data:`THROUGHPUT`, a documented figure: the
  PyTorch ResNet-50 v1.5 training throughput NVIDIA publishes for one GPU, times ResNet-50's training FLOPs per
  image counted the same way (:data:`RESNET50_TRAIN_GFLOP`). It is an estimate, labelled so: small 32x32 models at
  batch 64 use a GPU less well than ResNet-50 at batch 256, so a real run takes longer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: ResNet-50 v1.5 (torchvision ``resnet50``, 224x224) forward + backward per image, counted by FlopCounterMode
#: (24.30 GFLOP; tests/test_campaign.py recounts it)
RESNET50_TRAIN_GFLOP = 24.30
THROUGHPUT_SOURCE = (
    "NVIDIA DeepLearningExamples, PyTorch/Classification/ConvNets/resnet50v1.5 README, training performance on one "
    "GPU (pytorch-21.03 NGC container)"
)
#: (gpu, precision) -> ResNet-50 training images/s on one GPU (THROUGHPUT_SOURCE)
THROUGHPUT = {
    ("a100", "tf32"): 938.0,
    ("a100", "amp"): 2470.0,
    ("v100", "fp32"): 367.0,
    ("v100", "amp"): 1200.0,
}
#: the precision a run uses on each GPU: bf16 autocast (``train.bf16``) is AMP; fp32 convolutions run as TF32 on an
#: A100 (PyTorch's cuDNN default) and as FP32 on a V100
PRECISION = {("a100", False): "tf32", ("a100", True): "amp", ("v100", False): "fp32", ("v100", True): "amp"}
FLOP_BATCH = 2


#: the train and test sizes of the datasets' official splits (used when the data is not on this machine);
#: ``imagenet_style`` is counted as ImageNet-1k (ILSVRC-2012: 1,281,167 train, 50,000 val images, 1000 classes)
OFFICIAL_SIZES = {
    "cifar10": (50_000, 10_000),
    "cifar100": (50_000, 10_000),
    "tiny_imagenet": (100_000, 10_000),
    "stl10": (5_000, 8_000),
    "stl10_unlabeled": (100_000, 8_000),
    "imagenet_style": (1_281_167, 50_000),
}
#: class counts where the registry cannot know them without the data
OFFICIAL_CLASSES = {"imagenet_style": 1000}


@dataclass(frozen=True)
class StepSpec:
    """One training step to count: the models, the method and its fields, the batch and the data's shape."""

    student: str
    teacher: str | None
    distiller: str
    params: dict[str, Any]
    batch_size: int


@dataclass(frozen=True)
class DataShape:
    """What a step's cost depends on in the data: the input side, the class count, the train split's size."""

    image_size: int
    num_classes: int
    num_train: int


def step_flops(step: StepSpec, data: DataShape) -> tuple[float, float, int]:
    """``(training-step FLOPs at batch_size, eval FLOPs per image, init-stage epochs)`` of one distiller, counted on
    the CPU at a batch of :data:`FLOP_BATCH` and scaled."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from ...distillers import DistillContext, objective
    from ...models import create_model

    torch.manual_seed(0)
    s = create_model(step.student, num_classes=data.num_classes)
    t = create_model(step.teacher, num_classes=data.num_classes) if step.teacher else None
    method = objective(step.distiller)
    k = method.parse(step.params, data.image_size).negatives()
    rows = max(data.num_train, (k or 0) + 2, FLOP_BATCH)
    ctx = DistillContext(num_classes=data.num_classes, num_train_samples=rows, image_size=data.image_size)
    d = method.build(s, t, step.params, ctx)
    init = d.init_stage()
    d.train()
    batch: dict[str, Any] = {
        "image": torch.randn(FLOP_BATCH, 3, data.image_size, data.image_size),
        "target": torch.zeros(FLOP_BATCH, dtype=torch.long),
        "index": torch.arange(FLOP_BATCH),
    }
    if d.contrast_negatives() is not None:
        batch["contrast_idx"] = torch.randint(0, rows, (FLOP_BATCH, d.contrast_negatives() + 1))
    with FlopCounterMode(display=False) as counter:
        out = d(batch)
        sum(out.losses.values()).backward()
    train = counter.get_total_flops() / FLOP_BATCH * step.batch_size
    s.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        s(batch["image"])
    return float(train), counter.get_total_flops() / FLOP_BATCH, int(init.epochs) if init is not None else 0


def effective_throughput(gpu: str = "a100", bf16: bool = False, measured: float | None = None) -> tuple[float, str]:
    """Effective training TFLOP/s on one ``gpu`` and the sentence saying where it comes from (``measured``: a figure
    that replaces the table's)."""
    if measured:
        return measured, f"{measured:g} TFLOP/s (estimate.effective_tflops)"
    precision = PRECISION[(gpu, bool(bf16))]
    img_s = THROUGHPUT[(gpu, precision)]
    tflops = img_s * RESNET50_TRAIN_GFLOP / 1e3
    return tflops, (
        f"one {gpu.upper()} ({precision.upper()}): ResNet-50 trains at {img_s:g} img/s x {RESNET50_TRAIN_GFLOP} "
        f"GFLOP/img = {tflops:.1f} TFLOP/s effective ({THROUGHPUT_SOURCE})"
    )


def si(x: float) -> str:
    for unit, scale in (("E", 1e18), ("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6)):
        if abs(x) >= scale:
            return f"{x / scale:.3g} {unit}"
    return f"{x:.3g} "


def gpu_hours_text(h: float) -> str:
    return f"{h:,.0f}" if h >= 100 else f"{h:.3g}"


__all__ = [
    "FLOP_BATCH",
    "PRECISION",
    "RESNET50_TRAIN_GFLOP",
    "THROUGHPUT",
    "DataShape",
    "StepSpec",
    "effective_throughput",
    "gpu_hours_text",
    "si",
    "step_flops",
]
