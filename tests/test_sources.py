"""Library and user models behind the feature contract (docs/models.md): ``tv:``, ``timm:``, ``module:``.

The contract holds for small torchvision and timm models (stage count, shapes, logits equal to the library's own for
the same weights); every one of the 14 methods trains one step on pairs across families (torchvision to
torchvision, torchvision to the zoo, timm to torchvision) with gradients reaching the student; weights load from
.safetensors and .pth files (and a pickle payload is refused); library weights come from the hub cache only, with a
clear error when it lacks them.
"""

from __future__ import annotations

import copy
import os
import sys
import textwrap

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from cktf.data import StreamDataset
from cktf.distillers import DistillContext, build_distiller
from cktf.distillers.pairing import GENERALISED, OFFICIAL, depth_map
from cktf.errors import ConfigError, UnsafeDataError
from cktf.models import MODELS, StageLayout, create_model, list_source_models
from cktf.models.sources import SourceNameError, load_state_file
from cktf.registry import UnknownNameError

try:
    import timm
except ImportError:  # the optional extra: its tests skip
    timm = None
needs_timm = pytest.mark.skipif(timm is None, reason="timm is not installed (pip install cktf[timm])")

METHODS = ("kd", "fitnet", "at", "sp", "cc", "vid", "rkd", "pkt", "ab", "ft", "fsp", "nst", "crd", "cktf")
B, K, N_DATA = 4, 8, 16


def _batch(size: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    index = torch.randperm(N_DATA, generator=g)[:B]
    negatives = torch.randint(0, N_DATA, (B, K), generator=g)
    return {
        "image": torch.randn(B, 3, size, size, generator=g),
        "target": torch.randint(0, 10, (B,), generator=g),
        "index": index,
        "contrast_idx": torch.cat([index[:, None], negatives], 1),
    }


def _params(method: str) -> dict:
    if method in ("crd", "cktf"):
        return {"nce_k": K, "feat_dim": 16}
    if method in ("ab", "fsp"):
        return {"beta": 1.0}  # the main-stage loss too (0 = official: CE only after the init stage)
    return {}


# ------------------------------------------------------------------------------------------- the contract
TV_SMALL = ("resnet18", "mobilenet_v3_small", "shufflenet_v2_x0_5", "mnasnet0_5", "regnet_x_400mf")


@pytest.mark.parametrize("name", TV_SMALL)
def test_tv_contract_and_logits_equal_torchvision(name: str) -> None:
    import torchvision.models as tvm

    torch.manual_seed(0)
    model = create_model(f"tv:{name}", num_classes=10).eval()
    ref = tvm.get_model(name, weights=None, num_classes=10).eval()
    ref.load_state_dict(model.model.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = model.forward_distill(x)
        torch.testing.assert_close(out.logits, ref(x), rtol=0, atol=0)
        torch.testing.assert_close(model(x), ref(x), rtol=0, atol=0)
    assert len(out.feats) == len(model.feature_info) >= 4 and len(out.stage_blocks) == len(out.feats) - 1
    for f, shape in zip(out.feats, model.feature_shapes(64)):
        assert tuple(f.shape[1:]) == shape
    for k, blocks in enumerate(out.stage_blocks):
        assert len(blocks) == model.feature_info[k + 1].num_blocks and blocks[-1] is out.feats[k + 1]
        assert all(b.shape == blocks[-1].shape for b in blocks)
    assert out.pooled.shape == (2, model.num_features)
    assert [fi.reduction for fi in model.feature_info] == sorted(fi.reduction for fi in model.feature_info)


def test_tv_resnet_layout_is_the_torchvision_one() -> None:
    m = create_model("tv:resnet50", 10)
    assert [fi.name for fi in m.feature_info] == ["relu", "layer1", "layer2", "layer3", "layer4"]
    assert [fi.num_chs for fi in m.feature_info] == [64, 256, 512, 1024, 2048]
    assert [fi.num_blocks for fi in m.feature_info[1:]] == [3, 4, 6, 3] and m.num_features == 2048
    assert m.family_name() == "tv:resnet" and m.source == "tv:resnet50"
    vgg = create_model("tv:vgg11", 10)  # split at the max-pools, blocks are the ReLUs
    assert [(fi.num_chs, fi.reduction) for fi in vgg.feature_info] == [(64, 1), (128, 2), (256, 4), (512, 8), (512, 16)]


@needs_timm
@pytest.mark.parametrize("name", ["resnet10t", "mobilenetv3_small_050", "convnext_atto"])
def test_timm_contract_and_logits_equal_timm(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(f"timm:{name}", num_classes=10).eval()
    ref = timm.create_model(name, pretrained=False, num_classes=10).eval()
    ref.load_state_dict(model.model.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = model.forward_distill(x)
        torch.testing.assert_close(out.logits, ref(x), rtol=0, atol=0)
    stages = [d["module"] for d in ref.feature_info]
    assert [fi.name for fi in model.feature_info][-len(stages) + 1 :] == stages[1:], "stages are timm's feature_info"
    assert [tuple(f.shape[1:]) for f in out.feats] == model.feature_shapes(64)
    assert model.family_name().startswith("timm:")


def test_unknown_and_unsupported_names_are_clear() -> None:
    with pytest.raises(UnknownNameError, match="no classification model 'resnet_nope'"):
        MODELS.get("tv:resnet_nope")
    with pytest.raises(SourceNameError, match="no convolutional stage trunk") as err:
        MODELS.get("tv:vit_b_16")
    assert "cktf models --source tv" in str(err.value)
    with pytest.raises(SourceNameError, match="cannot import 'no_such_pkg.mod'"):
        MODELS.get("module:no_such_pkg.mod:make")
    assert "resnet8" in MODELS.names() and not any(":" in n for n in MODELS.names()), "the zoo listing stays the zoo"


def test_timm_missing_gives_the_install_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm -> ImportError
    factory = MODELS.get("timm:resnet18")  # the name cannot be checked without timm: building says how to get it
    with pytest.raises(SourceNameError, match=r"pip install cktf\[timm\]"):
        factory(num_classes=10)


def test_listing_sources() -> None:
    names = list_source_models("tv")
    assert "tv:resnet18" in names and "tv:mobilenet_v3_small" in names and "tv:vit_b_16" not in names
    some = list_source_models("tv", "resnet1*")
    assert "tv:resnet18" in some and all(n.startswith("tv:resnet1") for n in some)
    with pytest.raises(SourceNameError, match="no model source 'nope'"):
        list_source_models("nope")


# ------------------------------------------------------------------------------------------- your own module
OWN_MODULE = """
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, num_classes=10, width=8):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.block1 = nn.Sequential(nn.Conv2d(8, 2 * width, 3, stride=2, padding=1), nn.ReLU())
        self.block2 = nn.Sequential(nn.Conv2d(2 * width, 4 * width, 3, stride=2, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * width, num_classes)

    def forward(self, x):
        return self.fc(self.pool(self.block2(self.block1(self.stem(x)))).flatten(1))


def with_layout(num_classes=10):
    return Net(num_classes), {"stem": "stem", "stages": ["block1", "block2"]}


def with_attribute(num_classes=10):
    net = Net(num_classes, width=16)
    net.cktf_stages = ["stem", "block1", "block2"]
    return net


def unnamed(num_classes=10):
    return Net(num_classes)


def fixed_head():
    return Net(3), ["stem", "block1", "block2"]


class Trunk(nn.Module):
    # a sequential features trunk: no names needed

    def __init__(self, num_classes=10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
            nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU()),
            nn.Sequential(nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU()),
        )
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))
"""


@pytest.fixture
def own_module(tmp_path, monkeypatch):
    (tmp_path / "my_nets.py").write_text(textwrap.dedent(OWN_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_nets"
    sys.modules.pop("my_nets", None)


def test_module_source_names_stages_two_ways(own_module: str) -> None:
    a = create_model(f"module:{own_module}:with_layout", 10)
    b = create_model(f"module:{own_module}:with_attribute", 10)
    assert [fi.name for fi in a.feature_info] == ["stem", "block1", "block2"]
    assert [fi.num_chs for fi in b.feature_info] == [8, 32, 64]
    assert a.family_name() == b.family_name() == "module:my_nets.Net", "one class: one family (official CKTF pairs)"
    out = a.forward_distill(torch.randn(2, 3, 32, 32))
    assert [tuple(f.shape[1:]) for f in out.feats] == [(8, 32, 32), (16, 16, 16), (32, 8, 8)]
    assert isinstance(StageLayout.of(a.model, ["stem", "block1"]), StageLayout)
    with pytest.raises(SourceNameError, match="stage modules are not named"):
        create_model(f"module:{own_module}:unnamed", 10)
    with pytest.raises(SourceNameError, match="3-way classifier for a 10-class run"):
        create_model(f"module:{own_module}:fixed_head", 10)
    trunk = create_model(f"module:{own_module}:Trunk", 10)  # a class is a factory too; stages from the strides
    assert [(fi.num_chs, fi.reduction) for fi in trunk.feature_info] == [(8, 1), (16, 2), (32, 4)]
    # own modules of one family: CKTF's official pairing (zero-padded student, as the released code)
    d = build_distiller("cktf", a, b, {"nce_k": K, "feat_dim": 8}, DistillContext(10, N_DATA, 32))
    assert d.terms["cktf"].pairing == OFFICIAL and d.run_params() == {"cktf/pairing": OFFICIAL}


# ------------------------------------------------------------------------------------------- every method, any pair
def _pairs() -> list[tuple[str, str, int]]:
    pairs = [
        ("tv:resnet18", "tv:mobilenet_v3_small", 64),  # torchvision -> torchvision, across families
        ("tv:mobilenet_v3_small", "vgg8", 64),  # torchvision -> the zoo
        ("resnet18", "tv:shufflenet_v2_x0_5", 64),  # the zoo -> torchvision
    ]
    if timm is not None:
        pairs.append(("timm:resnet10t", "tv:mobilenet_v3_small", 64))
    return pairs


_BUILT: dict[tuple[str, str], tuple] = {}


def _pair_models(teacher: str, student: str):
    if (teacher, student) not in _BUILT:
        torch.manual_seed(0)
        _BUILT[(teacher, student)] = (create_model(student, 10), create_model(teacher, 10))
    s, t = _BUILT[(teacher, student)]
    return copy.deepcopy(s), copy.deepcopy(t)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("pair", _pairs(), ids=lambda p: f"{p[0]}->{p[1]}")
def test_every_method_trains_a_step_across_families(pair: tuple[str, str, int], method: str) -> None:
    teacher_name, student_name, size = pair
    student, teacher = _pair_models(teacher_name, student_name)
    ctx = DistillContext(num_classes=10, num_train_samples=N_DATA, image_size=size)
    distiller = build_distiller(method, student, teacher, _params(method), ctx)
    distiller.train()
    batch = _batch(size)
    stage = distiller.init_stage()
    if stage is not None:  # AB, FT, FSP: one step of the init stage
        loss = sum(stage.loss(batch).values())
        assert torch.isfinite(loss)
        loss.backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in stage.params)
        distiller.zero_grad(set_to_none=True)
        distiller.on_train_start()
    out = distiller(batch)
    terms = {k: v for k, v in out.losses.items() if k != "ce"}
    assert terms, f"{method} gave no loss term"
    assert all(torch.isfinite(v) for v in out.losses.values()), out.losses
    sum(terms.values()).backward()
    grads = [p.grad for p in distiller.student.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads), f"{method}: no gradient reached the student"
    assert all(p.grad is None for p in distiller.teacher.parameters())
    pairing = distiller.run_params()[f"{method}/pairing"]
    assert pairing in (OFFICIAL, GENERALISED)
    if method in ("cktf", "fsp"):  # stage lists or widths differ: these have no official behaviour here
        assert pairing == GENERALISED


def test_cktf_generalised_pairing_uses_own_sizes() -> None:
    student, teacher = _pair_models("tv:resnet18", "resnet8")  # 3 student stages, 4 teacher stages
    term = build_distiller("cktf", student, teacher, _params("cktf"), DistillContext(10, N_DATA, 32)).terms["cktf"]
    assert term.pairing == GENERALISED and term.t_stage == depth_map(3, 4) == [1, 3, 4]
    heads = [(c.embed_s.linear.in_features, c.embed_t.linear.in_features) for c in term.critics.values()]
    # resnet8 pools AvgPool2d(8) (16ch@32 -> 256 values ...), resnet18 globally (its channels)
    assert heads == [(16 * 16, 64), (16 * 16, 64), (32 * 4, 256), (64, 512), (64, 512)]


def test_within_a_family_stays_official() -> None:
    student, teacher = create_model("tv:resnet18", 10), create_model("tv:resnet34", 10)
    d = build_distiller("cktf", student, teacher, _params("cktf"), DistillContext(10, N_DATA, 64))
    assert d.run_params() == {"cktf/pairing": OFFICIAL}
    heads = [c.embed_s.linear.in_features for c in d.terms["cktf"].critics.values()]
    assert heads == [64, 64, 128, 256, 512, 512], "official: both heads sized from the teacher's features"
    small, large = create_model("tv:mobilenet_v3_small", 10), create_model("tv:mobilenet_v3_large", 10)
    with pytest.raises(ConfigError, match="have 4 and 5 stages"):  # one family: the official refusal, no extension
        build_distiller("cktf", small, large, _params("cktf"), DistillContext(10, N_DATA, 64))
    with pytest.raises(ConfigError, match="have 4 and 3 stages"):  # the zoo keeps its refusals
        build_distiller(
            "cktf",
            create_model("vgg8", 10),
            create_model("resnet14", 10),
            _params("cktf"),
            DistillContext(10, N_DATA, 32),
        )


def test_depth_map() -> None:
    assert depth_map(4, 4) == [1, 2, 3, 4]
    assert depth_map(4, 5) == [1, 3, 4, 5]
    assert depth_map(5, 4) == [1, 2, 2, 3, 4]
    assert depth_map(1, 3) == [3]


# ------------------------------------------------------------------------------------------- weights
def test_weights_from_safetensors_and_pth_come_back_identical(tmp_path) -> None:
    torch.manual_seed(1)
    src = create_model("tv:mobilenet_v3_small", 10)
    lib_state = {k: v.clone() for k, v in src.model.state_dict().items()}
    save_file({k: v.contiguous() for k, v in lib_state.items()}, str(tmp_path / "w.safetensors"))
    torch.save(lib_state, tmp_path / "w.pth")
    torch.save({"state_dict": {f"module.{k}": v for k, v in lib_state.items()}}, tmp_path / "nested.pth")
    torch.save(src.state_dict(), tmp_path / "cktf_keys.pt")  # model.* keys, as a cktf checkpoint holds them
    for name in ("w.safetensors", "w.pth", "nested.pth", "cktf_keys.pt"):
        torch.manual_seed(2)
        m = create_model("tv:mobilenet_v3_small", 10, weights=str(tmp_path / name))
        got = m.model.state_dict()
        assert got.keys() == lib_state.keys()
        assert all(torch.equal(got[k], lib_state[k]) for k in lib_state), name


def test_weights_of_another_class_count_keep_a_fresh_classifier(tmp_path) -> None:
    src = create_model("tv:resnet18", 1000)
    torch.save(src.model.state_dict(), tmp_path / "in1k.pth")
    m = create_model("tv:resnet18", 10, weights=str(tmp_path / "in1k.pth"))
    assert torch.equal(m.model.conv1.weight, src.model.conv1.weight) and m.model.fc.out_features == 10
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ConfigError, match="does not fit tv:resnet18"):
        create_model("tv:resnet18", 10, weights=str(tmp_path / "bad.pth"))


class _Payload:
    """Unpickling this would run code: torch.load(weights_only=True) must refuse it."""

    def __reduce__(self):
        return (print, ("pwned",))


def test_a_pickle_payload_is_refused(tmp_path, capsys) -> None:
    torch.save({"conv1.weight": torch.zeros(1), "x": _Payload()}, tmp_path / "evil.pth")
    with pytest.raises(UnsafeDataError, match="pickle that names code to run"):
        load_state_file(tmp_path / "evil.pth")
    torch.save(torch.nn.Linear(2, 2), tmp_path / "module.pth")  # a whole pickled module is not weights either
    with pytest.raises(UnsafeDataError, match="state_dict"):
        create_model("tv:resnet18", 10, weights=str(tmp_path / "module.pth"))
    assert "pwned" not in capsys.readouterr().out
    with pytest.raises(ConfigError, match="no such weights file"):
        create_model("tv:resnet18", 10, weights=str(tmp_path / "missing.safetensors"))


def test_library_weights_from_the_hub_cache_only(tmp_path, monkeypatch) -> None:
    import torchvision.models as tvm

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(ConfigError, match="not in the torch hub cache") as err:
        create_model("tv:resnet18", 10, weights="DEFAULT")  # nothing cached, no download: a clear error
    assert "--download" in str(err.value) and "resnet18-f37072fd.pth" in str(err.value)
    with pytest.raises(ConfigError, match="has no weights 'NOPE'"):
        create_model("tv:resnet18", 10, weights="NOPE")
    # the cache holds the file (as a previous download leaves it): read from there, weights-only
    cached = create_model("tv:resnet18", 1000)
    url = tvm.ResNet18_Weights.IMAGENET1K_V1.url
    folder = tmp_path / "torch" / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    torch.save(cached.model.state_dict(), folder / url.rsplit("/", 1)[-1])
    m = create_model("tv:resnet18", 1000, weights="IMAGENET1K_V1")
    assert torch.equal(m.model.layer4[1].conv2.weight, cached.model.layer4[1].conv2.weight)
    with pytest.raises(ConfigError, match="no library weights"):
        create_model("resnet8", 10, weights="DEFAULT")  # a zoo model takes files only


@needs_timm
def test_timm_weights_from_the_hub_cache_only(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf"))
    with pytest.raises(ConfigError, match="not in the Hugging Face hub cache") as err:
        create_model("timm:resnet10t", 10, weights="DEFAULT")
    assert "--download" in str(err.value)
    # the layout a previous download leaves: models--timm--<repo>/refs/main and snapshots/<rev>/model.safetensors
    saved = create_model("timm:resnet10t", 1000)
    repo = tmp_path / "hf" / "models--timm--resnet10t.c3_in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    save_file(saved.model.state_dict(), str(repo / "snapshots" / "abc123" / "model.safetensors"))
    m = create_model("timm:resnet10t", 10, weights="DEFAULT")  # another class count: a fresh classifier
    assert torch.equal(m.model.layer4[0].conv1.weight, saved.model.layer4[0].conv1.weight)
    assert m.model.fc.out_features == 10


# ------------------------------------------------------------------------------------------- a run end to end
def _random_folder(root, classes: int = 3, per_split: dict | None = None) -> None:
    """A tiny ImageFolder of random JPEGs of mixed sizes (``train/`` and ``val/``)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (per_split or {"train": 8, "val": 3}).items():
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                h, w = int(rng.integers(36, 60)), int(rng.integers(36, 60))
                pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.jpg", quality=90)


@pytest.mark.parametrize("budget_gb", ["10", "1e-9"], ids=["decode_once", "stream"])
def test_a_run_distils_a_library_teacher_into_your_module(tmp_path, own_module: str, monkeypatch, budget_gb) -> None:
    from cktf.data import DataConfig
    from cktf.train.callbacks import Callback
    from cktf.train.checkpoint import save_model_weights
    from cktf.train.config import OptimConfig, RunConfig, TrainConfig
    from cktf.train.runner import fit, prepare_run

    monkeypatch.setenv("CKTF_OBJECT_STORE_GB", budget_gb)  # decode once, or stream in the run's loaders
    _random_folder(tmp_path / "data")
    teacher = create_model("tv:resnet18", 3)
    save_model_weights(tmp_path / "teacher.safetensors", teacher, {"arch": "tv:resnet18", "num_classes": 3})
    cfg = RunConfig(
        student=f"module:{own_module}:with_layout",
        distiller="cktf",
        distill_params={"nce_k": 4, "feat_dim": 8},
        teacher_checkpoint=str(tmp_path / "teacher.safetensors"),
        data=DataConfig(
            dataset="imagenet_style",
            root=str(tmp_path / "data"),
            image_size=32,
            val_fraction=0.0,
            cache_dir=str(tmp_path / "cache"),
        ),
        optim=OptimConfig(lr=0.01, milestones=()),
        train=TrainConfig(epochs=1, batch_size=8, eval_batch_size=8, device="cpu", progress=False),
        out_dir=str(tmp_path / "run"),
    )
    prepared = prepare_run(cfg)
    assert prepared.splits.spec.image_size == 32 and prepared.splits.train.image_size == 37  # stored at 1.14x
    assert isinstance(prepared.splits.train, StreamDataset) == (budget_gb != "10")
    assert prepared.distiller.run_params() == {"cktf/pairing": GENERALISED}  # tv:resnet vs your module: extension
    seen: dict = {}

    class Record(Callback):
        def on_run_start(self, config, info):
            seen.update(info)

    summary = fit(prepared, [Record()])
    assert seen["cktf/pairing"] == GENERALISED, "a run's params say which pairing it used (MLflowCallback logs info)"
    assert summary["epochs"] == 1 and 0.0 <= summary["test_acc"] <= 100.0
    from cktf.train.checkpoint import load_model

    student, meta = load_model(tmp_path / "run" / "model_last.safetensors")
    assert meta["arch"] == f"module:{own_module}:with_layout" and student.source == meta["arch"]


# ------------------------------------------------------------------------------------------- CLI, single runs
def _lib_weights(tmp_path, name: str = "tv:resnet18", classes: int = 3, seed: int = 0) -> tuple[str, dict]:
    """A library model's weights as a local .safetensors (library key names), and that state."""
    torch.manual_seed(seed)
    state = {k: v.clone().contiguous() for k, v in create_model(name, classes).model.state_dict().items()}
    path = tmp_path / f"{name.replace(':', '_')}_{classes}.safetensors"
    save_file(state, str(path))
    return str(path), state


def test_cli_lists_a_source_and_imports_weights_as_a_checkpoint(tmp_path, capsys, monkeypatch) -> None:
    from cktf.cli import main
    from cktf.train.checkpoint import load_model

    assert main(["models", "--source", "tv", "--filter", "resnet1*"]) == 0
    out = capsys.readouterr().out
    assert "tv:resnet18" in out and "tv:resnet101" in out and "tv:mobilenet" not in out
    assert main(["models", "--source", "module"]) == 0 and "module:pkg.mod:factory" in capsys.readouterr().out
    for command in ("distill", "train-teacher", "probe"):  # every help text formats ("30% of memory")
        with pytest.raises(SystemExit) as done:
            main([command, "--help"])
        assert done.value.code == 0 and "--data-object-store-gb" in capsys.readouterr().out
    path, state = _lib_weights(tmp_path, classes=5)
    out_file = tmp_path / "teacher.safetensors"
    assert main(["import-weights", "tv:resnet18", "--weights", path, "--out", str(out_file)]) == 0
    model, meta = load_model(out_file)  # the study's teacher.checkpoint: architecture and classes in the header
    assert meta["arch"] == "tv:resnet18" and model.num_classes == 5 and meta["weights"] == path
    assert all(torch.equal(model.model.state_dict()[k], v) for k, v in state.items())
    x = torch.randn(2, 3, 64, 64)
    ref = create_model("tv:resnet18", 5)
    ref.model.load_state_dict(state)
    model.eval(), ref.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), rtol=0, atol=0)
    capsys.readouterr()
    no_file = tmp_path / "x.safetensors"
    assert main(["import-weights", "tv:resnet18", "--weights", path, "--num-classes", "3", "--out", str(no_file)]) == 2
    err = capsys.readouterr().err
    assert "--weights: " in err and "5-way classifier" in err and not no_file.exists()
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    assert main(["import-weights", "tv:resnet18", "--weights", "DEFAULT", "--out", str(tmp_path / "y.st")]) == 2
    err = capsys.readouterr().err
    assert "not in the torch hub cache" in err and "--download" in err and not (tmp_path / "y.st").exists()


def test_single_runs_start_the_student_from_weights(tmp_path) -> None:
    from cktf.cli import _run_config, build_parser
    from cktf.errors import ConfigError
    from cktf.train.runner import prepare_run, validate_names

    _random_folder(tmp_path / "data")
    path, state = _lib_weights(tmp_path, "tv:mobilenet_v3_small", classes=1000)  # another class count: fresh head
    argv = ["train-teacher", "--model", "tv:mobilenet_v3_small", "--student-weights", path, "--download"]
    argv += ["--dataset", "imagenet_style", "--data-root", str(tmp_path / "data"), "--data-image-size", "32"]
    argv += ["--out-dir", str(tmp_path / "run"), "--device", "cpu", "--data-val-fraction", "0"]
    argv += ["--data-object-store-gb", "1e-9", "--data-decode-workers", "0"]
    args = build_parser().parse_args(argv)
    cfg = _run_config(args, "ce", {}, None)
    assert (cfg.student_weights, cfg.download) == (path, True)
    assert (cfg.data.object_store_gb, cfg.data.decode_workers, cfg.data.decode) == (1e-9, 0, "cpu")
    prepared = prepare_run(cfg)
    assert isinstance(prepared.splits.train, StreamDataset), "data.object_store_gb chose the streaming path"
    got = prepared.distiller.student.model.state_dict()
    assert all(torch.equal(got[k], v) for k, v in state.items() if not k.startswith("classifier.3."))
    assert got["classifier.3.weight"].shape[0] == 3, "the classifier keeps its fresh 3-way initialisation"
    with pytest.raises(ConfigError, match="no such weights file") as err:
        validate_names(cfg.replace(student_weights=str(tmp_path / "missing.pth")))  # before any data is read
    assert err.value.field == "student_weights"


# ------------------------------------------------------------------------------------------- studies
def _study(tmp_path, **over) -> dict:
    study = {
        "name": "byo",
        "student": "tv:mobilenet_v3_small",
        "distiller": "cktf",
        "data": {
            "dataset": "imagenet_style",
            "root": str(tmp_path / "data"),
            "image_size": 32,
            "val_fraction": 0.25,
            "object_store_gb": 1e-9,  # stream, whatever this machine's memory
            "decode_workers": 0,
            "cache_dir": str(tmp_path / "cache"),
        },
        "teacher": {"arch": "tv:resnet18", "optim": {"milestones": []}, "train": {"epochs": 1, "batch_size": 8}},
        "params": {"nce_k": 4, "feat_dim": 8},
        "optim": {"lr": 0.01, "milestones": []},
        "train": {"epochs": 1, "batch_size": 8, "eval_batch_size": 8, "eval_test": False},
        "search": {"num_samples": 2, "space": {"alpha1": {"type": "uniform", "low": 0.0, "high": 1.0}}},
        "asha": {"grace_period": 1, "reduction_factor": 2},
        "sampler": {"name": "random", "seed": 0},
        "resources": {"cpu": 1, "gpu": 0},
        "max_concurrent": 1,
        "workdir": str(tmp_path / "studies"),
        "mlflow": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
    }
    for key, value in over.items():
        node = study
        *parents, leaf = key.split("__")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return study


def test_teacher_weights_fields_are_checked_by_the_schema(tmp_path) -> None:
    from cktf.tune.plan import study_from_dict

    cases = [
        ({"checkpoint": "t.safetensors", "weights": "DEFAULT"}, "teacher.weights", "carries its own weights"),
        ({"arch": None, "checkpoint": "t.safetensors", "finetune": True}, "teacher.finetune", "needs teacher.weights"),
        ({"arch": "tv:resnet18", "finetune": True}, "teacher.finetune", "needs teacher.weights"),
    ]
    for teacher, field, problem in cases:
        with pytest.raises(ConfigError, match=problem) as err:
            study_from_dict(_study(tmp_path, teacher=teacher))
        assert err.value.field == field
    cfg = study_from_dict(_study(tmp_path, teacher={"arch": "tv:resnet18", "weights": "w.pth", "finetune": True}))
    assert (cfg.teacher.weights, cfg.teacher.finetune, cfg.teacher.download) == ("w.pth", True, False)
    with pytest.raises(ConfigError, match="only imagenet_style data may stream") as err:
        study_from_dict(_study(tmp_path, data={"dataset": "cifar10", "root": "x", "object_store_gb": 1}))
    assert err.value.field == "data.object_store_gb"


def test_a_study_plans_streamed_data_and_weights_before_ray(tmp_path, monkeypatch) -> None:
    from cktf.tune.plan import plan_study, study_from_dict

    _random_folder(tmp_path / "data")
    teacher_w, _ = _lib_weights(tmp_path, classes=3)
    plan = plan_study(study_from_dict(_study(tmp_path, teacher={"arch": "tv:resnet18", "weights": teacher_w})), False)
    assert isinstance(plan.splits.train, StreamDataset) and isinstance(plan.splits.val, StreamDataset)
    assert plan.run_params == {"cktf/pairing": GENERALISED}, "the pairing of every trial, from the dry step"
    kd_space = {"num_samples": 2, "space": {"alpha": {"type": "uniform", "low": 0.5, "high": 1.0}}}
    kd = plan_study(study_from_dict(_study(tmp_path, distiller="kd", params={}, search=kd_space)), False)
    assert kd.run_params == {"kd/pairing": OFFICIAL}
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-hub"))
    other, _ = _lib_weights(tmp_path, classes=5)
    bad = {
        "5-way classifier": {"arch": "tv:resnet18", "weights": other},  # used as it is: must have the data's classes
        "no such weights file": {"arch": "tv:resnet18", "weights": str(tmp_path / "nope.safetensors")},
        "not in the torch hub cache": {"arch": "tv:resnet18", "weights": "IMAGENET1K_V1"},  # a cache miss, no download
    }
    for problem, teacher in bad.items():
        with pytest.raises(ConfigError, match=problem) as err:
            plan_study(study_from_dict(_study(tmp_path, teacher=teacher)), False)
        assert err.value.field == "teacher.weights"
    # trained from them (finetune): another class count is a fresh head
    tuned = {"arch": "tv:resnet18", "weights": other, "finetune": True}
    plan_study(study_from_dict(_study(tmp_path, teacher=tuned)), False)
    with pytest.raises(ConfigError, match="no such weights file") as err:
        plan_study(study_from_dict(_study(tmp_path, student_weights=str(tmp_path / "nope.pth"))), False)
    assert err.value.field == "student_weights"


def test_a_teacher_from_weights_is_used_as_it_is_and_a_finetuned_one_trains_from_them(tmp_path) -> None:
    from cktf.tune.plan import plan_study, study_from_dict
    from cktf.tune.results.reader import read_state
    from cktf.tune.results.store import StudyStore
    from cktf.tune.run.shared import teacher_from_shared
    from cktf.tune.run.teacher import TEACHER_FILE, obtain_teacher, teacher_run_config

    _random_folder(tmp_path / "data")
    path, state = _lib_weights(tmp_path, classes=3)
    cfg = study_from_dict(_study(tmp_path, teacher={"arch": "tv:resnet18", "weights": path}))
    plan = plan_study(cfg, False)
    store = StudyStore(cfg.study_dir)
    lines: list[str] = []
    shared = obtain_teacher(plan, store, None, progress=False, notify=lines.append)  # no Ray task: nothing trains
    model, arch = teacher_from_shared(shared)
    assert arch == "tv:resnet18" and all(torch.equal(model.model.state_dict()[k], v) for k, v in state.items())
    assert store.exists(TEACHER_FILE) and "used as they are (not trained)" in lines[-1]
    assert read_state(store)["run_params"] == {"cktf/pairing": GENERALISED}
    assert read_state(store)["teacher"] == {"weights": path, "trained": False}
    tuned = teacher_run_config(cfg.replace(teacher=cfg.teacher.replace(finetune=True, download=True)), "out")
    assert (tuned.student, tuned.student_weights, tuned.download) == ("tv:resnet18", path, True)


def test_the_study_callback_logs_the_run_params_on_parent_and_child_runs(tmp_path) -> None:
    from types import SimpleNamespace

    from cktf.tune.results.lineage import ParentRun, TrialCallback
    from cktf.tune.results.reader import write_state
    from cktf.tune.results.store import StudyStore
    from cktf.tune.results.tracking import Tracking
    from cktf.tune.run.study import SearchLineage

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = Tracking.shared(uri, 5.0)
    exp_id = client.create_experiment("cktf-byo")
    parent_id = client.create_run(exp_id, tags={"cktf.study": "byo"}).info.run_id
    client.log_param(parent_id, "student", "tv:x")
    store = StudyStore(str(tmp_path / "study"))
    write_state(store, run_params={"cktf/pairing": GENERALISED})
    parent, lineage = ParentRun(uri, exp_id, parent_id, store.uri, "byo"), SearchLineage(stage="search", epochs=1)
    cb = TrialCallback(parent, lineage)
    trial = SimpleNamespace(trial_id="t0", config={"alpha1": 0.5})
    run_id = cb.run_for(trial)
    child = client.get_run(run_id).data.params
    assert child == {"alpha1": "0.5", "cktf/pairing": GENERALISED}
    assert client.get_run(parent_id).data.params == {"student": "tv:x", "cktf/pairing": GENERALISED}
    again = TrialCallback(parent, lineage)  # a resumed driver: logged once
    again.run_for(SimpleNamespace(trial_id="t1", config={"alpha1": 0.1}))
    assert client.get_run(parent_id).data.params["cktf/pairing"] == GENERALISED


def test_trials_start_the_student_from_the_study_weights(tmp_path) -> None:
    from cktf.tune.plan import study_from_dict
    from cktf.tune.run.trial import trial_run_config

    cfg = study_from_dict(_study(tmp_path, student_weights="s.safetensors"))
    assert trial_run_config(cfg, {}, str(tmp_path / "t"), None).student_weights == "s.safetensors"


@pytest.mark.slow
def test_a_study_distils_into_your_module_on_streamed_data_with_a_teacher_from_weights(
    tmp_path, own_module: str, monkeypatch, capsys
) -> None:
    """``cktf tune`` end to end: the student is the user's own module (``module:``, importable in every trial
    through ``PYTHONPATH``), the data is streamed (a budget of 1 byte), the teacher is local weights used as they
    are, trials are rebuilt from file lists, and MLflow's parent and child runs carry the pairing."""
    from helpers import study_runs, write_study

    from cktf.cli import main

    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])))
    _random_folder(tmp_path / "data")
    path, _ = _lib_weights(tmp_path, classes=3)
    study = _study(tmp_path, teacher={"arch": "tv:resnet18", "weights": path})
    study["student"] = f"module:{own_module}:with_layout"
    assert main(["tune", str(write_study(tmp_path / "byo.yaml", study)), "--quiet"]) == 0
    parents, children = study_runs(study["mlflow"]["tracking_uri"], "cktf-byo")
    assert len(parents) == 1 and len(children) == 2
    for run in parents + children:
        assert run.data.params["cktf/pairing"] == GENERALISED
    assert {r.data.tags["cktf.status"] for r in children} <= {"finished", "pruned"}
