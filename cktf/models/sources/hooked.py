"""A library model behind the feature contract, read through forward hooks (docs/models.md).

:class:`HookedModel` holds the library's own module unchanged (``self.model``) and runs *its* forward, so the
logits are the library's for the same weights; forward hooks on the named stage modules collect what
:class:`~cktf.models.DistillOutput` needs (torchdistill's approach). A :class:`StageLayout` names the modules:
the stem, then per stage the modules whose outputs are the stage's blocks (the last one's output is the stage's
feature). ``pooled`` is the input of the final linear classifier; ``preact_feats`` are the ``feats`` (library
models expose no pre-activation outputs).

Only blocks whose output has the stage output's shape are kept as the stage's blocks (a transition or a widening
1x1 conv inside a stage is skipped), so every entry of ``stage_blocks[k]`` is ``[B, C_k, H_k, W_k]``, as CKTF's
stage pairs need (docs/algorithm.md §4).

:func:`layout_by_reduction` finds the stages of a sequential trunk (``features`` of MobileNet, EfficientNet,
ConvNeXt, DenseNet; ``layers`` of MNASNet) from its output strides, measured by one forward pass on the ``meta``
device; :func:`layout_by_pools` splits a plain conv trunk (VGG, AlexNet) at its max-pools.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .._base import DistillModel, DistillOutput, FeatureInfo

#: layers that are parts of a block, never blocks of their own (a trunk run of them is absorbed into the stem)
PRIMITIVE = (
    nn.Conv2d,
    nn.BatchNorm2d,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.ReLU,
    nn.ReLU6,
    nn.SiLU,
    nn.GELU,
    nn.Hardswish,
    nn.Identity,
    nn.Dropout,
)
#: activations whose outputs are a plain conv trunk's blocks (:func:`layout_by_pools`)
ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Hardswish)

POOLED = "__pooled__"


class _Keep:
    """A forward hook keeping one module's output (or, for the classifier, its input) while ``forward_distill``
    runs; an object, not a closure, so a deep copy of the model gets hooks that write into the copy."""

    def __init__(self, owner: HookedModel, path: str):
        self.owner, self.path = owner, path

    def __call__(self, _m: nn.Module, inp: tuple[Tensor, ...], out: Tensor | None = None) -> None:
        store = self.owner._store
        if store is not None:
            store[self.path] = inp[0] if self.path == POOLED else out


@dataclass(frozen=True)
class StageLayout:
    """Module paths (``model.get_submodule`` names) of the stem and of every stage's blocks, in forward order.

    ``stages`` holds ``(stage path, block paths)`` pairs; the stage path's output is the stage's feature (it is
    usually the last block). A user's own module may carry one as ``cktf_stages`` (docs/models.md).
    """

    stem: str
    stages: tuple[tuple[str, tuple[str, ...]], ...]  # (stage module path, its block paths)

    @property
    def names(self) -> list[str]:
        return [self.stem] + [s for s, _ in self.stages]

    @classmethod
    def of(cls, model: nn.Module, spec: StageLayout | Mapping | Sequence[str]) -> StageLayout:
        """A layout from what a user may write: a :class:`StageLayout`, ``{"stem": PATH, "stages": [PATH, ...]}``
        (a stage given as ``[PATH, [BLOCK, ...]]`` names its blocks) or ``[STEM, STAGE1, STAGE2, ...]``; stages
        named by path alone get their blocks from :func:`block_paths`."""
        if isinstance(spec, StageLayout):
            return spec
        if isinstance(spec, Mapping):
            stem, stages = spec.get("stem"), list(spec.get("stages", ()))
        else:
            items = list(spec)
            stem, stages = (items[0] if items else None), items[1:]
        if not isinstance(stem, str) or not stages:
            raise ValueError("a stage layout needs a stem path and at least one stage path")
        out = []
        for st in stages:
            if isinstance(st, str):
                out.append((st, block_paths(model, st)))
            else:
                path, blocks = st
                out.append((str(path), tuple(str(b) for b in blocks)))
        return cls(stem, tuple(out))


def _is_primitive(m: nn.Module) -> bool:
    return isinstance(m, PRIMITIVE) or type(m).__name__ in ("LayerNorm2d", "Permute")


def block_paths(model: nn.Module, path: str) -> tuple[str, ...]:
    """The blocks of the module at ``path``: its children when it is a sequence of blocks of one kind (timm's
    ``stages.i.blocks`` too), else the module itself."""
    m = model.get_submodule(path)
    inner, prefix = m, path
    if not isinstance(m, (nn.Sequential, nn.ModuleList)) and isinstance(getattr(m, "blocks", None), nn.Sequential):
        inner, prefix = m.blocks, f"{path}.blocks"
    if isinstance(inner, (nn.Sequential, nn.ModuleList)):
        kids = list(inner.named_children())
        if kids and not any(_is_primitive(c) for _, c in kids) and len({type(c) for _, c in kids}) == 1:
            return tuple(f"{prefix}.{n}" for n, _ in kids)
    return (path,)


def output_sides(model: nn.Module, paths: Sequence[str], probe: int = 224) -> dict[str, tuple[int, ...]]:
    """Output shape (without the batch) of each module in ``paths`` for a ``probe`` x ``probe`` input, from one
    forward pass of a copy on the ``meta`` device (nothing is computed; the original is untouched)."""
    meta = _meta_clone(model)
    store: dict[str, tuple[int, ...]] = {}
    for p in paths:
        meta.get_submodule(p).register_forward_hook(
            lambda _m, _i, out, p=p: store.__setitem__(p, tuple(int(v) for v in out.shape[1:]))
        )
    with torch.no_grad():
        meta.eval()(torch.empty(1, 3, probe, probe, device="meta"))
    missing = [p for p in paths if p not in store]
    if missing:
        raise ValueError(f"modules {missing[:3]} never run in {type(model).__name__}.forward")
    return store


def layout_by_reduction(model: nn.Module, trunk: str, probe: int = 224) -> StageLayout:
    """Stages of the sequential ``trunk`` of ``model``: runs of its children with one output stride.

    The strides come from :func:`output_sides`. The stem is the trunk's first child plus the primitive layers that
    follow it at the same stride; every later run of children at one stride is a stage, whose blocks are its
    children (a sequence of blocks is opened, see :func:`block_paths`).
    """
    seq = model.get_submodule(trunk)
    names = [n for n, _ in seq.named_children()]
    shapes = output_sides(model, [f"{trunk}.{n}" for n in names], probe)
    red = {n: max(1, round(probe / shapes[f"{trunk}.{n}"][-1])) for n in names}
    i = 1
    while i < len(names) and red[names[i]] == red[names[0]] and _is_primitive(seq.get_submodule(names[i])):
        i += 1
    stem = names[i - 1]
    runs: list[list[str]] = []
    for n in names[i:]:
        if runs and red[runs[-1][-1]] == red[n]:
            runs[-1].append(n)
        else:
            runs.append([n])
    stages = []
    for run in runs:
        blocks: list[str] = []
        for n in run:
            blocks += block_paths(model, f"{trunk}.{n}")
        stages.append((f"{trunk}.{run[-1]}", tuple(blocks)))
    return StageLayout(f"{trunk}.{stem}", tuple(stages))


def layout_by_pools(model: nn.Module, trunk: str) -> StageLayout:
    """Stages of a plain conv trunk (VGG, AlexNet): the groups of layers between its max-pools.

    Every activation is a block; the stem is the first group's last activation and each later (non-empty) group is
    a stage ending in its last activation, as the zoo's VGG exposes its blocks (before each pool).
    """
    seq = model.get_submodule(trunk)
    groups: list[list[str]] = [[]]
    for n, m in seq.named_children():
        if isinstance(m, nn.MaxPool2d):
            groups.append([])
        elif isinstance(m, ACTIVATIONS):
            groups[-1].append(f"{trunk}.{n}")
    groups = [g for g in groups if g]
    if len(groups) < 2:
        raise ValueError(f"{trunk} of {type(model).__name__} has fewer than two pooled groups of layers")
    return StageLayout(groups[0][-1], tuple((g[-1], tuple(g)) for g in groups[1:]))


def last_linear(model: nn.Module) -> tuple[str, nn.Linear]:
    """The model's final ``nn.Linear`` (its classifier), by module order."""
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not found:
        raise ValueError(f"{type(model).__name__} has no linear classifier")
    return found[-1]


class HookedModel(DistillModel):
    """A library model (``self.model``) exposing the feature contract through hooks on its ``layout`` modules.

    Args:
        model: the library's module, its forward returning logits.
        layout: where the stem and the stages' blocks are.
        source: the ``source:name`` it was built from (shown in errors and listings).
        family: the library family (CKTF pairs modules officially only within a family, docs/models.md).
        probe: the side at which ``feature_info`` (channels, reductions) is measured on the ``meta`` device.
    """

    feature_pool = "global"
    cktf_official = True

    def __init__(self, model: nn.Module, layout: StageLayout, source: str, family: str, probe: int = 224):
        super().__init__()
        self.model = model
        self.source, self.family = source, family
        head_name, head = last_linear(model)
        self._head_name = head_name
        self.num_classes = int(head.out_features)
        self.num_features = int(head.in_features)
        self.input_sizes = ()
        self._store: dict[str, Tensor] | None = None
        every = [layout.stem, *(p for p, _ in layout.stages), *(b for _, bs in layout.stages for b in bs)]
        for path in every:
            try:
                model.get_submodule(path)
            except AttributeError:
                raise ValueError(f"{source}: the stage layout names {path!r}, a module the model lacks") from None
        shapes = output_sides(model, list(dict.fromkeys(every)), probe)
        flat = [p for p in layout.names if len(shapes[p]) != 3]
        if flat:
            raise ValueError(f"{source}: module {flat[0]} gives no [C, H, W] feature map (a token model?)")

        # a stage's blocks are those shaped like its output (CKTF pairs them with one student tensor), ending in the
        # stage itself: its last block when that is the stage module or inside it (the same output), else after it
        def own_blocks(path: str, blocks: tuple[str, ...]) -> tuple[str, ...]:
            if blocks and (blocks[-1] == path or blocks[-1].startswith(f"{path}.")):
                blocks = blocks[:-1]
            return tuple(b for b in blocks if b != path and shapes[b] == shapes[path]) + (path,)

        stages = tuple((path, own_blocks(path, blocks)) for path, blocks in layout.stages)
        self.layout = StageLayout(layout.stem, stages)

        def info(path: str, n_blocks: int) -> FeatureInfo:
            c, _, w = shapes[path]
            return FeatureInfo(path, c, max(1, round(probe / w)), n_blocks)

        self.feature_info = (info(layout.stem, 1),) + tuple(info(p, len(bs)) for p, bs in stages)
        watched = {self.layout.stem, *(b for _, bs in stages for b in bs)}
        for path in sorted(watched):
            model.get_submodule(path).register_forward_hook(_Keep(self, path))
        head.register_forward_pre_hook(_Keep(self, POOLED))

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def forward_distill(self, x: Tensor) -> DistillOutput:
        self._store = {}
        try:
            logits = self.model(x)
            got = self._store
        finally:
            self._store = None
        feats = (got[self.layout.stem],) + tuple(got[p] for p, _ in self.layout.stages)
        blocks = tuple(tuple(got[b] for b in bs) for _, bs in self.layout.stages)
        return DistillOutput(feats, feats, blocks, got[POOLED].flatten(1), logits)

    def classifier_module(self) -> nn.Module:
        return self.model.get_submodule(self._head_name)

    def check_input_size(self, size: int) -> None:
        if self.input_sizes and size not in self.input_sizes:
            super().check_input_size(size)
        smallest = max(fi.reduction for fi in self.feature_info)
        if size < smallest:
            raise ValueError(f"{self.source} reduces its input {smallest}x, so it needs at least {smallest}x{smallest}")

    def feature_shapes(self, size: int) -> list[tuple[int, int, int]]:
        """(C, H, W) of every module for a ``size`` input, measured by one forward pass on the ``meta`` device."""
        cached = self.__dict__.setdefault("_shape_cache", {})
        if size not in cached:
            store = output_sides(self.model, self.layout.names, size)
            cached[size] = [store[p] for p in self.layout.names]
        return list(cached[size])


def _meta_clone(model: nn.Module) -> nn.Module:
    """A copy of ``model`` on the meta device, without hooks (shapes only; the original is untouched).

    The hooks are set aside while copying, so a :class:`HookedModel`'s own hooks (which point back at it) are not
    copied along with everything they reach.
    """
    saved = [(m, m._forward_hooks, m._forward_pre_hooks) for m in model.modules()]
    try:
        for m, _, _ in saved:
            m._forward_hooks, m._forward_pre_hooks = type(m._forward_hooks)(), type(m._forward_pre_hooks)()
        clone = copy.deepcopy(model)
    finally:
        for m, hooks, pre in saved:
            m._forward_hooks, m._forward_pre_hooks = hooks, pre
    return clone.to("meta")
