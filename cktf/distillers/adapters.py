"""Trainable adapters of the baseline distillers, and the two rules their init stages share.

Copied from RepDistiller ``models/util.py`` (``ConvReg``, ``LinearEmbed``, ``Connector``, ``Paraphraser``,
``Translator``) and ``distiller_zoo/VID.py`` (the ``VIDLoss`` regressor and ``log_scale``), with the same layers,
defaults and attribute names, so official state dicts load. Shapes are ``(C, H, W)`` from
``DistillModel.feature_shapes`` instead of a probing forward pass.

:class:`ResizeReg` is not official: the generalised pairing's regressor for maps ``ConvReg`` cannot map
(:mod:`cktf.distillers.pairing`, docs/models.md), chosen by :func:`build_regressor` only when the pair allows it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from pydantic import model_validator
from torch import Tensor, nn

from ..errors import ConfigError
from ..losses import vid_init_log_scale
from ..models import DistillModel
from ._base import TermConfig
from .pairing import GENERALISED, OFFICIAL

Shape = Sequence[int]  # (C, H, W)


class ConvReg(nn.Module):
    """Convolutional regression for FitNet (RepDistiller ``ConvReg``): conv + BN (+ ReLU) onto the teacher's shape.

    Student height twice the teacher's: 3x3 stride-2 conv; half: 4x4 stride-2 transposed conv; otherwise (``>=``) a
    ``(1+dH) x (1+dW)`` valid conv. A smaller student map of any other size raises ``ValueError`` (upstream crashes).
    """

    def __init__(self, s_shape: Shape, t_shape: Shape, use_relu: bool = True):
        super().__init__()
        (s_c, s_h, s_w), (t_c, t_h, t_w) = s_shape[-3:], t_shape[-3:]
        if s_h == 2 * t_h:
            self.conv: nn.Module = nn.Conv2d(s_c, t_c, kernel_size=3, stride=2, padding=1)
        elif s_h * 2 == t_h:
            self.conv = nn.ConvTranspose2d(s_c, t_c, kernel_size=4, stride=2, padding=1)
        elif s_h >= t_h and s_w >= t_w:
            self.conv = nn.Conv2d(s_c, t_c, kernel_size=(1 + s_h - t_h, 1 + s_w - t_w))
        else:
            raise ValueError(
                f"ConvReg cannot map a {s_h}x{s_w} student map onto a {t_h}x{t_w} teacher map "
                "(the student map must be twice, half, or at least the teacher's size)"
            )
        self.bn = nn.BatchNorm2d(t_c)
        self.use_relu = use_relu

    def forward(self, x: Tensor) -> Tensor:
        x = self.bn(self.conv(x))
        return torch.relu(x) if self.use_relu else x


def resize_to(x: Tensor, size: tuple[int, int]) -> Tensor:
    """``x`` at spatial ``size``: adaptive average pooling when shrinking, bilinear interpolation when enlarging."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if x.shape[-2] >= size[0] and x.shape[-1] >= size[1]:
        return F.adaptive_avg_pool2d(x, size)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class ResizeReg(nn.Module):
    """The generalised pairing's regressor (an extension, docs/models.md): the student map resized to the teacher's
    side (:func:`resize_to`), then a 1x1 conv + BN (+ ReLU) onto the teacher's channels."""

    def __init__(self, s_shape: Shape, t_shape: Shape, use_relu: bool = True):
        super().__init__()
        (s_c, _, _), (t_c, t_h, t_w) = s_shape[-3:], t_shape[-3:]
        self.size = (int(t_h), int(t_w))
        self.conv = nn.Conv2d(s_c, t_c, kernel_size=1)
        self.bn = nn.BatchNorm2d(t_c)
        self.use_relu = use_relu

    def forward(self, x: Tensor) -> Tensor:
        x = self.bn(self.conv(resize_to(x, self.size)))
        return torch.relu(x) if self.use_relu else x


def build_regressor(
    s_shape: Shape, t_shape: Shape, use_relu: bool = True, generalise: bool = False
) -> tuple[nn.Module, str]:
    """``(ConvReg, "official")``, or, when ConvReg cannot map the shapes and ``generalise`` (the pair allows the
    generalised pairing), ``(ResizeReg, "generalised")``; otherwise ConvReg's ``ValueError``."""
    try:
        return ConvReg(s_shape, t_shape, use_relu), OFFICIAL
    except ValueError:
        if not generalise:
            raise
        return ResizeReg(s_shape, t_shape, use_relu), GENERALISED


class LinearEmbed(nn.Module):
    """CC's linear embedding (RepDistiller ``LinearEmbed``): ``flatten -> Linear(dim_in, dim_out)``, no norm."""

    def __init__(self, dim_in: int, dim_out: int = 128):
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x.reshape(x.shape[0], -1))


class VIDRegressor(nn.Module):
    """VID's per-layer mean regressor and learned variance (RepDistiller ``VIDLoss(s_C, t_C, t_C)``).

    Three bias-free 1x1 convs ``s_C -> mid -> mid -> t_C`` with ReLUs; ``log_scale`` (one per teacher channel) starts
    where ``softplus(log_scale) + eps == init_pred_var``. ``forward`` returns the predicted mean.
    """

    def __init__(self, s_c: int, mid_c: int, t_c: int, init_pred_var: float = 5.0, eps: float = 1e-5):
        super().__init__()
        self.regressor = nn.Sequential(
            nn.Conv2d(s_c, mid_c, kernel_size=1, bias=False),
            nn.ReLU(),
            nn.Conv2d(mid_c, mid_c, kernel_size=1, bias=False),
            nn.ReLU(),
            nn.Conv2d(mid_c, t_c, kernel_size=1, bias=False),
        )
        self.log_scale = nn.Parameter(torch.full((t_c,), vid_init_log_scale(init_pred_var, eps)))

    def forward(self, x: Tensor) -> Tensor:
        return self.regressor(x)


class Connector(nn.Module):
    """AB's connectors (RepDistiller ``Connector``): identity where channels and height match, else ConvReg, no ReLU.

    ``names`` label the layers in the ``ValueError`` raised for unequal lengths or a shape ConvReg cannot map.
    ``generalise``: a shape ConvReg cannot map gets a :class:`ResizeReg` instead (the generalised pairing; then
    ``pairing`` is ``"generalised"``).
    """

    def __init__(
        self,
        s_shapes: Sequence[Shape],
        t_shapes: Sequence[Shape],
        names: Sequence[str] = (),
        generalise: bool = False,
    ):
        super().__init__()
        if len(s_shapes) != len(t_shapes):
            raise ValueError(f"unequal numbers of layers: student {len(s_shapes)}, teacher {len(t_shapes)}")
        self.connectors = nn.ModuleList()
        self.pairing = OFFICIAL
        for i, (s, t) in enumerate(zip(s_shapes, t_shapes)):
            try:
                if s[0] == t[0] and s[1] == t[1]:
                    conn: nn.Module = nn.Sequential()
                else:
                    conn, how = build_regressor(s, t, use_relu=False, generalise=generalise)
                    self.pairing = GENERALISED if how == GENERALISED else self.pairing
            except ValueError as e:
                raise ValueError(f"{names[i] if i < len(names) else f'layer {i}'}: {e}") from None
            self.connectors.append(conn)

    def forward(self, g_s: Sequence[Tensor]) -> list[Tensor]:
        return [c(g) for c, g in zip(self.connectors, g_s)]


def _ft_stack(convs: Sequence[nn.Module], channels: Sequence[int], use_bn: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for conv, c in zip(convs, channels):
        layers += [conv, nn.BatchNorm2d(c) if use_bn else nn.Sequential(), nn.LeakyReLU(0.1, inplace=True)]
    return nn.Sequential(*layers)


class Paraphraser(nn.Module):
    """FT's teacher-side autoencoder (RepDistiller ``Paraphraser(t_shape, k=0.5, use_bn=False)``).

    Encoder: three 3x3 convs ``C -> C -> kC -> kC``; decoder: three 3x3 transposed convs back to ``C``; LeakyReLU(0.1)
    after every layer (the reconstruction too). ``forward(x)`` returns ``(factor, reconstruction)``.
    """

    def __init__(self, t_channels: int, k: float = 0.5, use_bn: bool = False):
        super().__init__()
        c, o = t_channels, int(t_channels * k)
        self.encoder = _ft_stack(
            [nn.Conv2d(c, c, 3, 1, 1), nn.Conv2d(c, o, 3, 1, 1), nn.Conv2d(o, o, 3, 1, 1)], [c, o, o], use_bn
        )
        self.decoder = _ft_stack(
            [nn.ConvTranspose2d(o, o, 3, 1, 1), nn.ConvTranspose2d(o, c, 3, 1, 1), nn.ConvTranspose2d(c, c, 3, 1, 1)],
            [o, c, c],
            use_bn,
        )

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        factor = self.encoder(x)
        return factor, self.decoder(factor)


class Translator(nn.Module):
    """FT's student-side encoder (RepDistiller ``Translator(s_shape, t_shape, k=0.5, use_bn=True)``).

    Three 3x3 convs ``s_C -> s_C -> k*t_C -> k*t_C``, each followed by BN and LeakyReLU(0.1).
    """

    def __init__(self, s_channels: int, t_channels: int, k: float = 0.5, use_bn: bool = True):
        super().__init__()
        c, o = s_channels, int(t_channels * k)
        self.encoder = _ft_stack(
            [nn.Conv2d(c, c, 3, 1, 1), nn.Conv2d(c, o, 3, 1, 1), nn.Conv2d(o, o, 3, 1, 1)], [c, o, o], use_bn
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.encoder(x)


# ------------------------------------------------------------------------------------------ init-stage rules
class InitStageConfig(TermConfig):
    """Fields of the methods with an init stage (AB, FT, FSP; RepDistiller ``helper/pretrain.py``)."""

    init_epochs: int = 30
    """init-stage epochs (--init_epochs 30); 0 skips the stage"""
    init_lr: float = 0.0
    """init-stage SGD lr; 0 = the method's official rule (FT on CIFAR ResNet/WRN: 0.01; otherwise optim.lr)"""

    @model_validator(mode="after")
    def _check_initstageconfig(self) -> InitStageConfig:
        if self.init_epochs < 0:
            raise ConfigError("init_epochs", f"must be >= 0, got {self.init_epochs}", "e.g. 30")
        if self.init_lr < 0:
            raise ConfigError("init_lr", f"must be >= 0 (0 = official rule), got {self.init_lr}")
        return self


def feature_modules(student: DistillModel) -> list[nn.Module]:
    """The student's children except the one holding the classifier (RepDistiller ``model.get_feat_modules()``).

    A wrapper whose one child holds everything (a library model's ``HookedModel.model``) is looked through, so its
    library modules are the children.
    """
    head = student.classifier_module()
    root: nn.Module = student
    kids = list(root.children())
    while len(kids) == 1 and kids[0] is not head:
        root, kids = kids[0], list(kids[0].children())
    return [m for m in kids if not any(sub is head for sub in m.modules())]
