"""The 11 baseline distillers (FitNet, AT, SP, CC, VID, RKD, PKT, AB, FT, FSP, NST) on tiny CPU models.

Per method: finite, positive terms; gradients reach the student and the method's adapters, never the teacher;
the teacher stays in eval with unchanged BN statistics. Init stages (AB, FT, FSP) train exactly the official
modules. Each term also works as the secondary of a two-term objective. The loss math itself is golden-tested in
test_losses.py.
"""

from __future__ import annotations

import pytest
import torch

from cktf.distillers import LOSS_TERMS, DistillContext, Distiller, InitStage, build_distiller
from cktf.distillers.adapters import ConvReg
from cktf.distillers.kd import KD, KDConfig
from cktf.errors import ConfigError
from cktf.models import create_model

NAMES = ["fitnet", "at", "sp", "cc", "vid", "rkd", "pkt", "ab", "ft", "fsp", "nst"]
INIT_ONLY = {"ab", "fsp"}  # main-stage weight 0 as official (loss_kd = 0): CE only after the init stage
PAIRS = [("resnet14", "resnet8"), ("wrn_16_2", "wrn_16_1")]  # same widths; teacher twice as wide
B = 8
CTX = DistillContext(num_classes=10, num_train_samples=100, image_size=32)


def _models(pair: tuple[str, str]):
    torch.manual_seed(0)
    return create_model(pair[1], 10), create_model(pair[0], 10)  # student, teacher


def _batch(seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "image": torch.randn(B, 3, 32, 32, generator=g),
        "target": torch.randint(0, 10, (B,), generator=g),
        "index": torch.randperm(100, generator=g)[:B],
    }


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.named_parameters()}


# FSP needs equal widths: the wrn pair is its N/A case (test_fsp_rejects_channel_mismatch)
CASES = [(n, p) for n in NAMES for p in PAIRS if not (n == "fsp" and p[0].startswith("wrn"))]


@pytest.mark.parametrize("name, pair", CASES, ids=[f"{n}-{p[0]}-{p[1]}" for n, p in CASES])
def test_main_stage(name, pair):
    student, teacher = _models(pair)
    distiller = build_distiller(name, student, teacher, {}, CTX)
    term = distiller.terms[name]
    distiller.train()
    assert not distiller.teacher.training and distiller.student.training
    teacher_state = {k: v.clone() for k, v in distiller.teacher.state_dict().items()}
    opt = torch.optim.SGD(distiller.trainable_parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    for step in range(2):
        out = distiller(_batch(step))
        assert all(torch.isfinite(v) for v in out.losses.values()), out.losses
        if name in INIT_ONLY:
            assert set(out.losses) == {"ce"}
        else:
            assert set(out.losses) == {"ce", name} and out.losses[name] > 0
        opt.zero_grad()
        sum(out.losses.values()).backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in distiller.student.parameters())
        if name not in INIT_ONLY:  # every trainable adapter takes part in the main-stage loss
            adapters = [p for p in term.parameters() if p.requires_grad]
            assert all(p.grad is not None for p in adapters)
        for p in distiller.teacher.parameters():
            assert not p.requires_grad and p.grad is None
        opt.step()
    assert not distiller.teacher.training
    for k, v in distiller.teacher.state_dict().items():
        assert torch.equal(v, teacher_state[k]), k


def test_adapters_sized_from_feature_shapes():
    student, teacher = _models(PAIRS[1])
    fitnet = build_distiller("fitnet", student, teacher, {}, CTX).terms["fitnet"]
    assert fitnet.regressor.conv.in_channels == 32 and fitnet.regressor.conv.out_channels == 64
    vid = build_distiller("vid", student, teacher, {}, CTX).terms["vid"]
    assert [r.log_scale.numel() for r in vid.regressors] == [32, 64, 128]
    softplus = torch.nn.functional.softplus(vid.regressors[0].log_scale) + 1e-5
    assert torch.allclose(softplus, torch.full_like(softplus, 5.0))
    ab = build_distiller("ab", student, teacher, {}, CTX).terms["ab"]
    assert all(isinstance(c, ConvReg) and not c.use_relu for c in ab.connector.connectors)
    same = build_distiller("ab", *_models(PAIRS[0]), {}, CTX).terms["ab"]
    assert not list(same.connector.parameters())  # identity connectors where shapes match, as upstream
    cc = build_distiller("cc", student, teacher, {}, CTX).terms["cc"]
    assert (cc.embed_s.linear.in_features, cc.embed_t.linear.in_features) == (64, 128)


def test_fitnet_config_errors():
    student, teacher = _models(PAIRS[0])
    with pytest.raises(ConfigError, match="hint_layer"):
        build_distiller("fitnet", student, teacher, {"hint_layer": 4}, CTX)
    with pytest.raises(ValueError, match="ConvReg cannot map"):
        ConvReg((16, 8, 8), (16, 32, 32))


def _expected_init_params(name: str, distiller: Distiller) -> set[str]:
    student = {f"student.{k}" for k, _ in distiller.student.named_parameters() if not k.startswith("fc.")}
    term = {f"terms.{name}.{k}" for k, _ in distiller.terms[name].named_parameters()}
    if name == "ab":
        return student | {k for k in term if ".connector." in k}
    if name == "ft":
        return {k for k in term if ".paraphraser." in k}
    return student


@pytest.mark.parametrize("name,lr", [("ab", None), ("ft", 0.01), ("fsp", None)])  # None: the main optim.lr
def test_init_stage_trains_exactly_the_official_modules(name, lr):
    pair = PAIRS[0] if name == "fsp" else PAIRS[1]  # wrn pair: AB connectors are ConvRegs
    distiller = build_distiller(name, *_models(pair), {}, CTX)
    stage = distiller.init_stage()
    assert isinstance(stage, InitStage) and stage.epochs == 30 and stage.lr == lr
    assert distiller.student.classifier_module() not in stage.modules
    expected = _expected_init_params(name, distiller)
    names = {id(p): k for k, p in distiller.named_parameters(remove_duplicate=False)}
    assert {names[id(p)] for p in stage.params} == expected
    before = _snapshot(distiller)
    distiller.eval()
    for m in stage.modules:
        m.train()
    opt = torch.optim.SGD(stage.params, lr=stage.lr or 0.05, momentum=0.9, weight_decay=5e-4)
    loss = sum(stage.loss(_batch()).values())
    assert torch.isfinite(loss) and loss > 0
    opt.zero_grad()
    loss.backward()
    opt.step()
    changed = {k for k, v in distiller.named_parameters() if not torch.equal(v, before[k])}
    assert changed == expected
    assert all(p.grad is None for p in distiller.teacher.parameters())
    assert build_distiller(name, *_models(pair), {"init_epochs": 0}, CTX).init_stage() is None


def test_ft_main_stage_keeps_paraphraser_frozen():
    distiller = build_distiller("ft", *_models(PAIRS[1]), {}, CTX)
    term = distiller.terms["ft"]
    stage = distiller.init_stage()
    assert all(p.requires_grad for p in stage.params)
    distiller.on_train_start()
    distiller.train()
    assert not term.paraphraser.training and term.translator.training
    assert not any(p.requires_grad for p in term.paraphraser.parameters())
    trainable = {id(p) for p in distiller.trainable_parameters()}
    assert not trainable & {id(p) for p in term.paraphraser.parameters()}
    before = _snapshot(term)
    opt = torch.optim.SGD(distiller.trainable_parameters(), lr=0.1, momentum=0.9)
    out = distiller(_batch())
    opt.zero_grad()
    sum(out.losses.values()).backward()
    opt.step()
    after = dict(term.named_parameters())
    assert all(torch.equal(after[k], v) for k, v in before.items() if k.startswith("paraphraser."))
    assert any(not torch.equal(after[k], v) for k, v in before.items() if k.startswith("translator."))


def test_fsp_rejects_channel_mismatch():
    with pytest.raises(ConfigError, match=r"block1 has 16 channels, teacher block1 has 32") as err:
        build_distiller("fsp", *_models(PAIRS[1]), {}, CTX)
    assert "WideResNet[16/16/32/64]" in str(err.value) and "WideResNet[16/32/64/128]" in str(err.value)


@pytest.mark.parametrize("name", NAMES)
def test_works_as_secondary_term(name):
    student, teacher = _models(PAIRS[0])
    cls = LOSS_TERMS.get(name)
    cfg = cls.config_cls.parse({"beta": 1.0} if name in INIT_ONLY else {})  # also the optional main-stage loss
    terms = {"kd": KD(KDConfig(), student, teacher, CTX), name: cls(cfg, student, teacher, CTX)}
    distiller = Distiller(student, teacher, terms, gamma=1.0, weights={"kd": 1.0, name: 1.0}, name=f"kd+{name}")
    out = distiller(_batch())
    assert {"ce", "kd", name} == set(out.losses) and all(torch.isfinite(v) for v in out.losses.values())
    sum(out.losses.values()).backward()
    assert all(p.grad is not None for p in terms[name].parameters() if p.requires_grad)
    assert (distiller.init_stage() is not None) == (name in {"ab", "ft", "fsp"})


@pytest.mark.parametrize("name", NAMES)
def test_cktf_combination(name):
    fields = LOSS_TERMS.get("cktf").config_cls.model_fields
    distiller = build_distiller(f"cktf+{name}", *_models(PAIRS[0]), {"nce_k": 16} if "nce_k" in fields else {}, CTX)
    assert name in distiller.terms and distiller.weights[name] == 1.0


class _Batches:
    """A loader stand-in: a fixed list of batches, with the ``set_epoch`` the init stage calls."""

    def __init__(self, batches):
        self.batches = batches

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        return iter(self.batches)

    def set_epoch(self, epoch):
        pass


def test_init_stage_mean_loss_is_over_the_steps_taken(caplog):
    """The logged mean divides by the number of steps (the old code divided by the last index, and raised
    NameError on an empty loader)."""
    import logging
    from types import SimpleNamespace

    from cktf.train import OptimConfig, TrainConfig
    from cktf.train.runner import run_init_stage

    distiller = build_distiller("fsp", *_models(PAIRS[0]), {"init_epochs": 1}, CTX)
    cfg = SimpleNamespace(optim=OptimConfig(lr=1e-12), train=TrainConfig(epochs=1, max_steps_per_epoch=0))
    prepared = SimpleNamespace(distiller=distiller, cfg=cfg, device=torch.device("cpu"))
    batch = _batch()
    with torch.no_grad():
        expected = float(sum(distiller.init_stage().loss(batch).values()))
    with caplog.at_level(logging.INFO, logger="cktf"):
        run_init_stage(prepared, _Batches([batch, batch]))
        run_init_stage(prepared, _Batches([]))
    means = [r.getMessage() for r in caplog.records if "init stage epoch" in r.getMessage()]
    assert f"mean loss {expected:.4f} over 2 steps" in means[0]  # lr ~0: the same loss twice
    assert "over 0 steps" in means[1] and "nan" in means[1]
