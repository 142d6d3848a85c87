"""The model zoo: the feature contract of every registered model, and fidelity to the official architectures.

Expected parameter counts (``OFFICIAL_PARAMS``, ``num_classes=100``) were computed once, outside this repository,
by instantiating the official model definitions and summing ``p.numel()`` over ``parameters()``:

* ``kaiqi123/CKTF`` (commit 2ac99e7) ``models/resnet.py`` (resnet8..110, resnet8x4, resnet32x4),
  ``models/wrn.py`` (wrn_*), ``models/vgg.py`` (``vgg*_bn``) and ``models/resnetv2.py`` (ResNet10/18/34/50);
* ``HobbitLong/RepDistiller`` (commit eedab9d / b13aecc) ``models/mobilenetv2.py`` (``mobile_half(100)``),
  ``models/ShuffleNetv1.py`` (``ShuffleV1``), ``models/ShuffleNetv2.py`` (``ShuffleV2``), and ``models/vgg.py``
  (``vgg*_bn``, the same counts as CKTF's VGG; vgg13_bn = 9,462,180 is also printed in CKTF's file).

The sources were fetched into /tmp/official and run with this venv's torch. In that check the state-dict keys
and shapes of every cktf model equal the official ones, and after loading the official weights the logits,
``feats``, ``preact_feats`` (official ``preact=True``; RepDistiller's VGG for the VGG pre-ReLU features),
CKTF's ``block_out`` lists and the BN running statistics (train mode) all matched.
"""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

from cktf.models import MODELS, DistillModel, DistillOutput, FeatureInfo, create_model, list_models
from cktf.registry import UnknownNameError

BATCH = 2

OFFICIAL_PARAMS = {
    "resnet8": 83_892,
    "resnet14": 181_108,
    "resnet20": 278_324,
    "resnet32": 472_756,
    "resnet44": 667_188,
    "resnet56": 861_620,
    "resnet110": 1_736_564,
    "resnet8x4": 1_233_540,
    "resnet32x4": 7_433_860,
    "wrn_16_1": 180_916,
    "wrn_16_2": 703_284,
    "wrn_40_1": 569_780,
    "wrn_40_2": 2_255_156,
    "vgg8": 3_965_028,
    "vgg11": 9_277_284,
    "vgg13": 9_462_180,
    "vgg16": 14_774_436,
    "vgg19": 20_086_692,
    "resnet10": 4_949_412,
    "resnet18": 11_220_132,
    "resnet34": 21_328_292,
    "resnet50": 23_705_252,
    "mobilenetv2": 812_836,
    "shufflev1": 949_258,
    "shufflev2": 1_355_528,
}

# docs/algorithm.md §4: dims of pool_feature(feats[i]) for the standard CKTF pairs, and num_features
CKTF_POOLED_DIMS = {
    "resnet8x4": ([512, 1024, 512, 256], 256),
    "resnet32x4": ([512, 1024, 512, 256], 256),
    "resnet20": ([256, 256, 128, 64], 64),
    "resnet56": ([256, 256, 128, 64], 64),
    "resnet110": ([256, 256, 128, 64], 64),
    "wrn_40_2": ([256, 512, 256, 128], 128),
    "wrn_16_2": ([256, 512, 256, 128], 128),
    "vgg13": ([64, 128, 256, 512, 512], 512),
    "vgg8": ([64, 128, 256, 512, 512], 512),
}

CASES = [(name, size) for name in list_models() for size in MODELS.meta(name)["input_sizes"]]
CASE_IDS = [f"{name}-{size}" for name, size in CASES]


@functools.cache
def _model(name: str) -> DistillModel:
    torch.manual_seed(0)
    return create_model(name, num_classes=100).eval()


@functools.cache
def _run(name: str, size: int) -> tuple[torch.Tensor, DistillOutput, torch.Tensor]:
    """(logits of ``forward``, output of ``forward_distill``, input) for one model and input size, cached."""
    model = _model(name)
    x = torch.randn(BATCH, 3, size, size, generator=torch.Generator().manual_seed(size))
    with torch.no_grad():
        return model(x), model.forward_distill(x), x


def test_zoo_has_every_official_model():
    assert set(list_models()) == set(OFFICIAL_PARAMS)
    assert list_models("wrn_*") == ["wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2"]


@pytest.mark.parametrize("name", list(OFFICIAL_PARAMS))
def test_parameter_count_matches_official(name):
    assert sum(p.numel() for p in _model(name).parameters()) == OFFICIAL_PARAMS[name]


@pytest.mark.parametrize("name", list_models())
def test_static_attributes(name):
    model = _model(name)
    meta = MODELS.meta(name)
    assert model.input_sizes == tuple(meta["input_sizes"])
    assert model.num_classes == 100
    assert model.feature_pool == ("avg8" if meta["family"] in ("resnet_cifar", "wrn") else "global")
    assert model.cktf_official == (meta["family"] not in ("mobilenetv2", "shufflenet"))
    assert all(isinstance(fi, FeatureInfo) for fi in model.feature_info)
    assert model.feature_info[0].name == "stem" and model.feature_info[0].num_blocks == 1
    head = model.classifier_module()
    assert isinstance(head, nn.Linear)
    assert (head.in_features, head.out_features) == (model.num_features, 100)


@pytest.mark.parametrize(("name", "size"), CASES, ids=CASE_IDS)
def test_feature_contract(name, size):
    model = _model(name)
    logits, out, _ = _run(name, size)
    info = model.feature_info
    # (1) one entry per module, one block list per stage
    assert len(out.feats) == len(out.preact_feats) == len(info)
    assert len(out.stage_blocks) == len(info) - 1
    # (2) shapes follow feature_info (feature_shapes accounts for size-dependent layouts)
    shapes = model.feature_shapes(size)
    if size == model.input_sizes[0]:
        assert shapes == [(fi.num_chs, size // fi.reduction, size // fi.reduction) for fi in info]
    for f, p, shape in zip(out.feats, out.preact_feats, shapes):
        assert f.shape == (BATCH, *shape)
        assert p.shape == f.shape
    assert out.preact_feats[0] is out.feats[0]
    # (3) every block of a stage has the stage's width; the last one is the stage output
    for k, blocks in enumerate(out.stage_blocks):
        fi = info[k + 1]
        assert len(blocks) == fi.num_blocks, fi.name
        assert all(b.shape[:2] == (BATCH, fi.num_chs) for b in blocks), fi.name
        assert torch.equal(blocks[-1], out.feats[k + 1]), fi.name
    # (4) penultimate vector, (5) same logits on both paths
    assert out.pooled.shape == (BATCH, model.num_features)
    assert out.logits.shape == (BATCH, 100)
    assert torch.allclose(logits, out.logits, atol=1e-6)
    assert torch.allclose(model.classifier_module()(out.pooled), out.logits, atol=1e-6)


@pytest.mark.parametrize("name", list(CKTF_POOLED_DIMS))
def test_cktf_pooled_dimensions(name):
    model = _model(name)
    _, out, _ = _run(name, 32)
    dims, final = CKTF_POOLED_DIMS[name]
    assert [model.pool_feature(f).shape[1] for f in out.feats] == dims
    assert model.num_features == final == out.pooled.shape[1]


@pytest.mark.parametrize("name", ["resnet8", "wrn_16_1", "vgg8", "resnet10", "mobilenetv2", "shufflev2"])
def test_distill_path_updates_batchnorm_like_forward(name):
    """Train mode: forward_distill touches every BN exactly once, as forward does (no extra preact BN calls)."""
    torch.manual_seed(0)
    a = create_model(name, num_classes=10).train()
    b = create_model(name, num_classes=10).train()
    b.load_state_dict(a.state_dict())
    x = torch.randn(BATCH, 3, 32, 32)
    with torch.no_grad():
        logits = a(x)
        out = b.forward_distill(x)
    assert out.logits.shape == (BATCH, 10)
    assert torch.allclose(logits, out.logits, atol=1e-5)
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_vgg_64_pools_block3():
    model = _model("vgg8")
    _, out32, _ = _run("vgg8", 32)
    _, out64, _ = _run("vgg8", 64)
    assert out32.feats[-1].shape[-1] == out64.feats[-1].shape[-1] == 4
    assert model.feature_shapes(64)[-1] == (512, 4, 4)


def test_unknown_model_name():
    with pytest.raises(UnknownNameError, match="nope"):
        create_model("nope", 10)


def test_check_input_size():
    model = _model("resnet8")
    model.check_input_size(32)
    with pytest.raises(ValueError, match="32x32"):
        model.check_input_size(64)
    _model("vgg8").check_input_size(64)
