"""DKD, DIST, ReviewKD and logit standardization (KD / DKD ``logit_std``): golden values of the official code, every
edge of it the golden values do not cover, the epoch hook their warm-ups read, and one training step per objective on
a zoo pair, pairs across families and a torchvision pair.

Golden values (``fixtures/modern/golden_modern.json``, see its README) come from running the official functions:
megvii-research/mdistiller ``DKD.py`` / ``ReviewKD.py``, sunshangquan/logit-standardization-KD ``KD.py`` / ``DKD.py``
and hunto/image_classification_sota ``dist_kd.py``.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cktf.cli import main
from cktf.distillers import LOSS_TERMS, DistillContext, build_distiller, objective, objective_names
from cktf.distillers._base import linear_warmup
from cktf.distillers.kd import kd_loss
from cktf.distillers.pairing import GENERALISED, OFFICIAL, depth_map
from cktf.errors import ConfigError
from cktf.losses import (
    ABF,
    dist_loss,
    dist_parts,
    dkd_loss,
    dkd_parts,
    hcl_loss,
    pearson_correlation,
    standardize_logits,
)
from cktf.models import DistillOutput, create_model

GOLDEN = json.loads((Path(__file__).parent / "fixtures" / "modern" / "golden_modern.json").read_text())
LOGIT_CASES = GOLDEN["logit_cases"]
RTOL, ATOL = 1e-5, 1e-6
B = 8
CTX = DistillContext(num_classes=10, num_train_samples=64, image_size=32)


def t32(x) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float32)


def close(actual, expected, rtol: float = RTOL, atol: float = ATOL) -> None:
    expected = torch.as_tensor(expected, dtype=torch.float64)
    torch.testing.assert_close(
        torch.as_tensor(actual).detach().double().reshape(expected.shape), expected, rtol=rtol, atol=atol
    )


def logits_out(z: torch.Tensor) -> DistillOutput:
    return DistillOutput((), (), (), z.new_empty(0), z)


_MODELS: dict[tuple[str, str], tuple] = {}


def models(teacher: str = "resnet14", student: str = "resnet8"):
    """(student, teacher), built once per pair and copied."""
    if (teacher, student) not in _MODELS:
        torch.manual_seed(0)
        _MODELS[(teacher, student)] = (create_model(student, 10), create_model(teacher, 10))
    s, t = _MODELS[(teacher, student)]
    return copy.deepcopy(s), copy.deepcopy(t)


def term(name: str, params: dict | None = None, pair: tuple[str, str] = ("resnet14", "resnet8"), ctx=CTX):
    """The loss term ``name`` of the single-method objective, built on ``pair``."""
    return build_distiller(name, *models(*pair), params or {}, ctx).terms[objective(name).primary_name]


def case_id(c: dict) -> str:
    keys = [k for k in ("alpha", "beta", "gamma", "temperature", "tau", "logit_stand") if k in c]
    return f"{c['method']}-B{len(c['target'])}-" + "-".join(f"{k}{c[k]}" for k in keys)


# ------------------------------------------------------------------------------------------------ golden: logits
def _official_loss(c: dict, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The loss function alone, as the official function computed it."""
    y = torch.tensor(c["target"])
    if c["method"] == "dist":
        return dist_loss(s, t, c["beta"], c["gamma"], c["tau"])
    if c["logit_stand"]:
        s, t = standardize_logits(s), standardize_logits(t)
    if c["method"] == "dkd":
        return dkd_loss(s, t, y, c["alpha"], c["beta"], c["temperature"])
    return kd_loss(s, t, c["temperature"])


def _term_loss(c: dict, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The same through the registered term at unit weight (DKD past its warm-up)."""
    batch = {"target": torch.tensor(c["target"])}
    if c["method"] == "dist":
        x = term("dist", {"beta": c["beta"], "gamma_intra": c["gamma"], "tau": c["tau"]})
    elif c["method"] == "dkd":
        x = term("dkd", {k: c[k] for k in ("alpha", "beta", "temperature")} | {"logit_std": c["logit_stand"]})
        x.on_epoch_start(x.cfg.warmup - 1)  # the first epoch at full weight (1-based epoch = WARMUP)
    else:
        x = term("kd", {"alpha": 1.0, "temperature": c["temperature"], "logit_std": c["logit_stand"]})
    return x(logits_out(s), logits_out(t), batch)[c["method"]]


@pytest.mark.parametrize("via", ["loss", "term"])
@pytest.mark.parametrize("c", LOGIT_CASES, ids=case_id)
def test_golden_logit_losses(c: dict, via: str) -> None:
    s = t32(c["logits_student"]).requires_grad_(True)
    t = t32(c["logits_teacher"])
    loss = (_official_loss if via == "loss" else _term_loss)(c, s, t)
    assert loss.dim() == 0
    close(loss, c["loss"])
    loss.backward()
    close(s.grad, c["grad_logits_student"])


def test_golden_cases_cover_every_method_and_both_shapes() -> None:
    kinds = {(c["method"], c.get("logit_stand"), len(c["target"])) for c in LOGIT_CASES}
    assert {("dkd", False, 8), ("dkd", True, 8), ("kd", False, 8), ("kd", True, 8), ("dist", None, 8)} <= kinds
    assert {("dkd", True, 16), ("dist", None, 16)} <= kinds
    assert all("/" in c["source"] for c in LOGIT_CASES + GOLDEN["hcl"] + GOLDEN["abf"])


# ------------------------------------------------------------------------------------------------ golden: ReviewKD
def test_golden_hcl() -> None:
    h = GOLDEN["hcl"][0]
    fs = [t32(x).requires_grad_(True) for x in h["student"]]
    loss = hcl_loss(fs, [t32(x) for x in h["teacher"]])
    close(loss, h["loss"])
    loss.backward()
    for f, g in zip(fs, h["grad_student"]):
        close(f.grad, g)


def _golden_abf(a: dict) -> ABF:
    block = ABF(a["in_channel"], a["mid_channel"], a["out_channel"], a["fuse"])
    state = {k: t32(v).long() if k.endswith("num_batches_tracked") else t32(v) for k, v in a["state_dict"].items()}
    block.load_state_dict(state)  # the official attribute names load as they are
    return block.train()  # BatchNorm in train mode, as the golden values


@pytest.mark.parametrize("a", GOLDEN["abf"], ids=lambda a: f"fuse={a['fuse']}")
@pytest.mark.parametrize("shape_arg", ["official", "own"])
def test_golden_abf(a: dict, shape_arg: str) -> None:
    block = _golden_abf(a)
    x = t32(a["x"])
    residual = t32(a["residual_in"]) if a["residual_in"] is not None else None
    shape = a["shape"] if shape_arg == "official" else None  # None: the side of x itself (what the term passes)
    out, res = block(x, residual, shape, a["out_shape"])
    close(out, a["out"])
    close(res, a["residual_out"])
    assert (block.att_conv is not None) == a["fuse"]


# ------------------------------------------------------------------------------------------------ DKD edges
def _logits(seed: int, b: int = B, c: int = 10, scale: float = 3.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (
        scale * torch.randn(b, c, generator=g),
        scale * torch.randn(b, c, generator=g),
        torch.randint(0, c, (b,), generator=g),
    )


def test_dkd_parts_are_the_decoupled_kls() -> None:
    """TCKD: KL of the binary (target, rest) distributions; NCKD: KL over the other classes only (the -1000 mask
    removes the target class); both ``* T^2``, summed over the batch and divided by B."""
    s, t, y = _logits(0)
    temp = 3.0
    tckd, nckd = dkd_parts(s, t, y, temp)
    p_s, p_t = F.softmax(s / temp, 1), F.softmax(t / temp, 1)
    gt = F.one_hot(y, 10).bool()
    b_s = torch.stack([p_s[gt], p_s[~gt].view(B, 9).sum(1)], 1)
    b_t = torch.stack([p_t[gt], p_t[~gt].view(B, 9).sum(1)], 1)
    close(tckd, (b_t * (b_t.log() - b_s.log())).sum() / B * temp**2)
    q_s = F.log_softmax(s[~gt].view(B, 9) / temp, 1)
    q_t = F.softmax(t[~gt].view(B, 9) / temp, 1)
    close(nckd, (q_t * (q_t.log() - q_s)).sum() / B * temp**2)
    close(dkd_loss(s, t, y, 0.5, 4.0, temp), 0.5 * tckd + 4.0 * nckd)


@pytest.mark.parametrize("loss", ["dkd", "kd", "dist"])
def test_temperature_squared_factor(loss: str) -> None:
    """Each loss at temperature T is T^2 times the same loss at T = 1 on the logits divided by T."""
    s, t, y = _logits(1)
    temp = 4.0
    fn = {
        "dkd": lambda a, b, T: dkd_loss(a, b, y, 1.0, 8.0, T),
        "kd": lambda a, b, T: kd_loss(a, b, T),
        "dist": lambda a, b, T: dist_loss(a, b, 1.0, 1.0, T),
    }[loss]
    close(fn(s, t, temp), temp**2 * fn(s / temp, t / temp, 1.0))


@pytest.mark.parametrize("loss", ["dkd", "kd"])
def test_batch_reduction_is_the_mean_of_per_sample_sums(loss: str) -> None:
    """``size_average=False`` / ``B`` (DKD) and ``sum(1).mean()`` (KD with LS): the loss of a batch is the mean of its
    samples' losses, whatever the batch size."""
    s, t, y = _logits(2)
    fn = (lambda a, b, c: dkd_loss(a, b, c, 1.0, 8.0, 4.0)) if loss == "dkd" else (lambda a, b, c: kd_loss(a, b, 4.0))
    per_sample = torch.stack([fn(s[i : i + 1], t[i : i + 1], y[i : i + 1]) for i in range(B)])
    close(fn(s, t, y), per_sample.mean())
    close(fn(s[:3], t[:3], y[:3]) * 3 + fn(s[3:], t[3:], y[3:]) * 5, fn(s, t, y) * 8)


def test_dkd_warmup_counts_epochs_like_mdistiller() -> None:
    """mdistiller calls ``forward_train(epoch=1)`` first: the factor is 1/20 in the first epoch (our epoch 0), 1 from
    the 20th (our epoch 19) on; ``warmup=0`` is no warm-up."""
    assert [linear_warmup(e, 20) for e in (0, 1, 9, 18, 19, 20, 239)] == [
        1 / 20,
        2 / 20,
        10 / 20,
        19 / 20,
        1.0,
        1.0,
        1.0,
    ]
    assert linear_warmup(0, 0) == 1.0 and linear_warmup(0, 1) == 1.0 and linear_warmup(2, 5) == 3 / 5
    s, t, y = _logits(3)
    distiller = build_distiller("dkd", *models(), {}, CTX)
    x = distiller.terms["dkd"]
    full = dkd_loss(s, t, y, 1.0, 8.0, 4.0)
    for epoch, factor in ((0, 1 / 20), (4, 5 / 20), (19, 1.0), (100, 1.0)):
        distiller.on_epoch_start(epoch)  # what the trainer calls: the term hears it
        assert x.epoch == epoch and x.warmup_factor == factor
        close(x(logits_out(s), logits_out(t), {"target": y})["dkd"], factor * full)
    assert term("dkd", {"warmup": 0}).warmup_factor == 1.0
    assert term("dkd").warmup_factor == 1 / 20, "before any epoch: the first epoch's factor"


def test_logit_terms_never_reach_the_teacher() -> None:
    s, t, y = _logits(4)
    for name, params in (("dkd", {}), ("dkd", {"logit_std": True}), ("kd", {"logit_std": True}), ("dist", {})):
        s_, t_ = s.clone().requires_grad_(True), t.clone().requires_grad_(True)
        loss = term(name, params)(logits_out(s_), logits_out(t_), {"target": y})[name]
        loss.backward()
        assert t_.grad is None and s_.grad is not None and s_.grad.abs().sum() > 0, (name, params)


# ------------------------------------------------------------------------------------------------ logit standardization
def test_standardize_is_the_unbiased_z_score() -> None:
    z = _logits(5)[0]
    mean = z.mean(1, keepdim=True)
    std = ((z - mean) ** 2).sum(1, keepdim=True).div(z.shape[1] - 1).sqrt()
    close(standardize_logits(z), (z - mean) / (1e-7 + std))
    zs = standardize_logits(z)
    close(zs.mean(1), torch.zeros(B), atol=1e-6)
    close(zs.std(1), torch.ones(B), atol=1e-6)


@pytest.mark.parametrize("name", ["kd", "dkd"])
def test_logit_std_is_a_no_op_on_standardized_logits(name: str) -> None:
    s, t, y = _logits(6)
    s, t = standardize_logits(s).detach(), standardize_logits(t).detach()
    out = {std: term(name, {"logit_std": std})(logits_out(s), logits_out(t), {"target": y})[name] for std in (0, 1)}
    close(out[1], out[0])


@pytest.mark.parametrize("name", ["kd", "dkd"])
def test_logit_std_ignores_each_samples_shift_and_scale(name: str) -> None:
    """The point of the z-score: the student need not match the teacher's logit range, only its relations."""
    s, t, y = _logits(7)
    g = torch.Generator().manual_seed(8)
    a, b = torch.rand(B, 1, generator=g) * 5 + 0.2, torch.randn(B, 1, generator=g) * 10
    x = term(name, {"logit_std": True})
    close(
        x(logits_out(a * s + b), logits_out(t), {"target": y})[name],
        x(logits_out(s), logits_out(t), {"target": y})[name],
    )
    plain = term(name)
    assert not torch.isclose(
        plain(logits_out(a * s + b), logits_out(t), {"target": y})[name],
        plain(logits_out(s), logits_out(t), {"target": y})[name],
    )


def test_presets_and_the_switch_in_combinations() -> None:
    kd_ls = objective("kd-ls").parse({}).primary
    assert (kd_ls.logit_std, kd_ls.temperature, kd_ls.alpha, kd_ls.gamma) == (True, 2.0, 9.0, 1.0)
    dkd_ls = objective("dkd-ls").parse({}).primary
    assert (dkd_ls.logit_std, dkd_ls.temperature, dkd_ls.alpha, dkd_ls.beta, dkd_ls.warmup) == (
        True,
        2.0,
        9.0,
        72.0,
        20,
    )
    assert objective("kd-ls").parse({"temperature": 3}).primary.temperature == 3.0  # a user value wins
    for combo in ("cktf+kd", "crd+kd"):
        second = objective(combo).parse({"kd.logit_std": True}).secondary
        assert second.logit_std and second.alpha == 1.0 and second.temperature == 4.0  # Table 1's KD, standardized
        assert not objective(combo).parse({}).secondary.logit_std
    d = build_distiller("cktf+kd", *models(), {"nce_k": 16, "kd.logit_std": True}, CTX)
    assert d.terms["kd"].cfg.logit_std
    plain = objective("kd").parse({}).primary
    assert (plain.logit_std, plain.gamma, plain.alpha, plain.temperature) == (False, 0.1, 0.9, 4.0)


# ------------------------------------------------------------------------------------------------ DIST edges
def test_dist_relations() -> None:
    """Inter: per sample, over classes; intra: per class, over the batch (the transpose); Pearson = torch.corrcoef."""
    s, t, _ = _logits(9)
    y_s, y_t = s.softmax(1), t.softmax(1)
    corr = torch.stack([torch.corrcoef(torch.stack([y_s[i], y_t[i]]))[0, 1] for i in range(B)])
    close(pearson_correlation(y_s, y_t), corr, atol=1e-5)
    inter, intra = dist_parts(s, t, 1.0)
    close(inter, 1 - corr.mean(), atol=1e-5)
    close(intra, 1 - pearson_correlation(y_s.T, y_t.T).mean())
    close(dist_parts(t, t, 2.0)[0], 0.0, atol=1e-4)  # identical predictions: no loss (up to the 1e-8)
    close(dist_loss(s, t, 2.0, 3.0, 1.0), 2 * inter + 3 * intra)


def test_dist_weights_do_not_clash_with_the_ce_weight() -> None:
    cfg = objective("dist").parse({"gamma": 0.5, "gamma_intra": 2.0, "beta": 3.0}).primary
    assert (cfg.gamma, cfg.gamma_intra, cfg.beta, cfg.tau) == (0.5, 2.0, 3.0, 1.0)
    d = build_distiller("dist", *models(), {"gamma": 0.5, "gamma_intra": 2.0}, CTX)
    assert d.gamma == 0.5  # gamma is Eq. 1's CE weight, as in every method
    s, t, _ = _logits(10)
    close(d.terms["dist"](logits_out(s), logits_out(t), {})["dist"], dist_loss(s, t, 1.0, 2.0, 1.0))
    with pytest.raises(ConfigError, match="tau"):
        objective("dist").parse({"tau": 0})


def test_config_errors() -> None:
    with pytest.raises(ConfigError, match="warmup"):
        objective("dkd").parse({"warmup": -1})
    with pytest.raises(ConfigError, match="temperature"):
        objective("dkd").parse({"temperature": 0})
    with pytest.raises(ConfigError, match="warmup"):
        objective("reviewkd").parse({"warmup": -1})


def test_only_dkd_reads_the_labels() -> None:
    """DKD splits the distributions at the target class: refused on unlabeled data even with gamma = 0."""
    assert build_distiller("dkd", *models(), {"gamma": 0}, CTX).needs_labels
    assert build_distiller("cktf+dkd", *models(), {"nce_k": 16}, CTX).needs_labels
    for name in ("kd", "dist", "reviewkd", "kd-ls"):
        assert not build_distiller(name, *models(), {}, CTX).needs_labels, name


# ------------------------------------------------------------------------------------------------ ReviewKD layout
def _layout(x) -> dict:
    """Upstream's lists (shallow to deep; SHAPES / OUT_SHAPES deep to shallow) read back from the built blocks."""
    blocks = list(x.abfs)[::-1]  # shallow to deep
    return {
        "in": [b.conv1[0].in_channels for b in blocks],
        "out": [b.conv2[0].out_channels for b in blocks],
        "mid": {b.conv1[0].out_channels for b in blocks},
        "out_shapes": [s[0] for s in x.out_shapes],
    }


@pytest.mark.parametrize(
    ("teacher", "student", "official"),
    [  # dvlab-research/ReviewKD CIFAR-100/model/reviewkd.py build_review_kd; mdistiller's default REVIEWKD config
        (
            "resnet32x4",
            "resnet8x4",
            {"in": [64, 128, 256, 256], "out": [64, 128, 256, 256], "mid": 256, "os": [1, 8, 16, 32]},
        ),
        ("resnet56", "resnet20", {"in": [16, 32, 64, 64], "out": [16, 32, 64, 64], "mid": 64, "os": [1, 8, 16, 32]}),
        (
            "wrn_40_2",
            "wrn_16_2",
            {"in": [32, 64, 128, 128], "out": [32, 64, 128, 128], "mid": 128, "os": [1, 8, 16, 32]},
        ),
        (
            "vgg13",
            "vgg8",
            {"in": [128, 256, 512, 512, 512], "out": [128, 256, 512, 512, 512], "mid": 512, "os": [1, 4, 4, 8, 16]},
        ),
        (
            "vgg13",
            "mobilenetv2",
            {"in": [12, 16, 48, 160, 1280], "out": [128, 256, 512, 512, 512], "mid": 512, "os": [1, 4, 4, 8, 16]},
        ),
        (
            "resnet50",
            "mobilenetv2",
            {"in": [12, 16, 48, 160, 1280], "out": [256, 512, 1024, 2048, 2048], "mid": 512, "os": [1, 4, 8, 16, 32]},
        ),
        (
            "wrn_40_2",
            "shufflev1",
            {"in": [240, 480, 960, 960], "out": [32, 64, 128, 128], "mid": 512, "os": [1, 8, 16, 32]},
        ),
        (
            "resnet32x4",
            "shufflev2",
            {"in": [116, 232, 464, 1024], "out": [64, 128, 256, 256], "mid": 512, "os": [1, 8, 16, 32]},
        ),
    ],
)
def test_reviewkd_sizes_are_the_official_ones(teacher: str, student: str, official: dict) -> None:
    x = term("reviewkd", pair=(teacher, student))
    got = _layout(x)
    assert got["in"] == official["in"] and got["out"] == official["out"] and got["mid"] == {official["mid"]}
    assert got["out_shapes"] == official["os"]
    assert x.pairing == OFFICIAL
    assert [b.att_conv is None for b in x.abfs] == [True] + [False] * (len(x.abfs) - 1)  # the deepest does not fuse


def test_reviewkd_state_dict_and_initialisation_follow_mdistiller() -> None:
    x = term("reviewkd", pair=("resnet32x4", "resnet8x4"))
    keys = set(x.state_dict())
    assert "abfs.0.conv1.0.weight" in keys and "abfs.0.att_conv.0.weight" not in keys
    assert {"abfs.3.att_conv.0.weight", "abfs.3.conv2.1.running_var"} <= keys
    torch.manual_seed(3)
    built = build_distiller("reviewkd", *models("resnet32x4", "resnet8x4"), {}, CTX).terms["reviewkd"]
    torch.manual_seed(3)  # the build draws nothing before its blocks (the models are cached copies)
    upstream = nn.ModuleList(  # mdistiller: built shallow to deep, then reversed
        [ABF(c, 256, o, i < 3) for i, (c, o) in enumerate(zip([64, 128, 256, 256], [64, 128, 256, 256]))][::-1]
    )
    for (k, v), (k2, v2) in zip(built.abfs.state_dict().items(), upstream.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k


def test_reviewkd_fuses_to_the_teachers_shapes_and_never_reaches_the_teacher() -> None:
    student, teacher = models("vgg13", "mobilenetv2")
    d = build_distiller("reviewkd", student, teacher, {}, CTX)
    x = d.terms["reviewkd"]
    image = torch.randn(B, 3, 32, 32)
    s_out = student.forward_distill(image)
    with torch.no_grad():
        t_out = teacher.forward_distill(image)
    fused, target = x.fuse(s_out), x.teacher_features(t_out)
    assert [f.shape for f in fused] == [f.shape for f in target]
    t_feats = tuple(f.clone().requires_grad_(True) for f in t_out.preact_feats)
    t_pooled = t_out.pooled.clone().requires_grad_(True)
    t_in = t_out._replace(preact_feats=t_feats, pooled=t_pooled)
    x.on_epoch_start(19)
    loss = x(s_out, t_in, {})["reviewkd"]
    close(loss, hcl_loss(fused, target), rtol=1e-4)  # weight 1, past the warm-up
    loss.backward()
    assert all(f.grad is None for f in t_feats) and t_pooled.grad is None
    assert all(p.grad is not None for p in x.parameters())


def test_reviewkd_warmup_and_weight() -> None:
    student, teacher = models()
    image = torch.randn(B, 3, 32, 32)
    s_out, t_out = student.forward_distill(image), teacher.forward_distill(image)
    x = term("reviewkd", {"beta": 5.0})
    x.eval()  # BatchNorm on running statistics: the same fused maps at every call
    full = hcl_loss(x.fuse(s_out), x.teacher_features(t_out))
    for epoch, factor in ((0, 1 / 20), (9, 0.5), (19, 1.0)):
        x.on_epoch_start(epoch)
        close(x(s_out, t_out, {})["reviewkd"], 5.0 * factor * full, rtol=1e-4)


def test_reviewkd_pairs_across_stage_counts_only_where_generalised() -> None:
    with pytest.raises(ConfigError, match="have 3 and 4 stages"):  # the zoo keeps the official refusal
        term("reviewkd", pair=("vgg13", "resnet8"))
    x = term("reviewkd", pair=("tv:resnet18", "tv:shufflenet_v2_x0_5"))  # 3 student stages, 4 teacher stages
    assert x.pairing == GENERALISED and x.t_stage == depth_map(3, 4) == [1, 3, 4]
    assert _layout(x)["out"] == [64, 256, 512, 512]
    same = term("reviewkd", pair=("tv:resnet18", "tv:mobilenet_v3_small"))  # 4 and 4 stages: the official rule
    assert same.pairing == OFFICIAL and same.t_stage == [1, 2, 3, 4]


# ------------------------------------------------------------------------------------------------ the epoch hook
def _dkd_batches(n: int) -> list[dict]:
    g = torch.Generator().manual_seed(11)
    return [{"image": torch.randn(4, 3, 32, 32, generator=g), "target": torch.randint(0, 10, (4,), generator=g)}] * n


@pytest.mark.parametrize("epoch", [0, 7, 30])
def test_the_trainer_tells_the_terms_the_epoch(epoch: int) -> None:
    """``train_one_epoch(epoch=k)`` reaches every term first: a fresh distiller (a run resumed at epoch k) weighs
    its first steps with epoch k's warm-up factor."""
    from cktf.train.engine import train_one_epoch

    d = build_distiller("cktf+dkd", *models(), {"nce_k": 4}, DistillContext(10, 64, 32))
    batches = [b | {"index": torch.arange(4), "contrast_idx": torch.randint(0, 64, (4, 5))} for b in _dkd_batches(1)]
    seen = []
    original = d.terms["dkd"].forward
    d.terms["dkd"].forward = lambda s, t, batch: seen.append(d.terms["dkd"].warmup_factor) or original(s, t, batch)
    opt = torch.optim.SGD(d.trainable_parameters(), lr=0.0)
    metrics = train_one_epoch(d, batches, opt, torch.device("cpu"), epoch=epoch)
    assert all(t.epoch == epoch for t in d.terms.values())
    assert seen == [linear_warmup(epoch, 20)] and metrics["loss/dkd"] > 0


@pytest.mark.slow
def test_a_resumed_dkd_run_matches_an_uninterrupted_one(data_root, tmp_path) -> None:
    """Nothing about the warm-up is checkpointed: the loop's epoch sets it, so a run resumed at epoch 1 trains epoch
    1 exactly as a run that never stopped (same weights, same logged DKD term)."""
    from cktf.data import DataConfig, load_splits
    from cktf.train import OptimConfig, RunConfig, TrainConfig, fit, load_model, prepare_run
    from cktf.train.checkpoint import save_model_weights

    data = DataConfig(dataset="cifar10", root=str(data_root), train_subset=300, test_subset=100, val_fraction=0)
    splits = load_splits(data)
    torch.manual_seed(0)
    save_model_weights(
        tmp_path / "t.safetensors", create_model("resnet8", 10), {"arch": "resnet8", "dataset": "cifar10"}
    )
    steps = TrainConfig(epochs=2, batch_size=32, progress=False, max_steps_per_epoch=2, eval_test=False)

    def cfg(out: str, epochs: int) -> RunConfig:
        return RunConfig(
            student="resnet8",
            distiller="dkd",
            distill_params={"warmup": 4},
            teacher_checkpoint=str(tmp_path / "t.safetensors"),
            data=data,
            optim=OptimConfig(milestones=()),
            train=steps.replace(epochs=epochs),
            out_dir=str(tmp_path / out),
        )

    full = fit(prepare_run(cfg("full", 2), splits=splits))
    fit(prepare_run(cfg("cut", 1), splits=splits))
    resumed = prepare_run(cfg("cut", 2), splits=splits)
    summary = fit(resumed)
    assert resumed.distiller.terms["dkd"].epoch == 1 and resumed.distiller.terms["dkd"].warmup_factor == 2 / 4
    a = load_model(full["weights_last"])[0].state_dict()
    b = load_model(summary["weights_last"])[0].state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=k)
    lines = [json.loads(x) for x in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    ref = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert [x["loss/dkd"] for x in lines] == pytest.approx([x["loss/dkd"] for x in ref], rel=1e-5)


# ------------------------------------------------------------------------------------------------ every objective
NEW = ["dkd", "dist", "reviewkd", "kd-ls", "dkd-ls", "cktf+dkd", "cktf+dist", "cktf+reviewkd"]
#: (name, params): the new objectives, and KD / DKD with the switch itself
OBJECTIVES = [(n, {}) for n in NEW] + [("kd", {"logit_std": True}), ("dkd", {"logit_std": True})]
PAIRS = [
    ("resnet14", "resnet8", 32),  # the zoo, one family
    ("wrn_16_2", "resnet8", 32),  # the zoo across families (CKTF runs here too)
    ("wrn_16_2", "shufflev2", 32),  # the zoo across families, no CKTF stage features
    ("tv:resnet18", "tv:mobilenet_v3_small", 32),  # torchvision across families
]


def _step_batch(size: int, k: int = 8) -> dict:
    g = torch.Generator().manual_seed(12)
    index = torch.randperm(64, generator=g)[:B]
    return {
        "image": torch.randn(B, 3, size, size, generator=g),
        "target": torch.randint(0, 10, (B,), generator=g),
        "index": index,
        "contrast_idx": torch.cat([index[:, None], torch.randint(0, 64, (B, k), generator=g)], 1),
    }


@pytest.mark.parametrize("pair", PAIRS, ids=lambda p: f"{p[0]}->{p[1]}")
@pytest.mark.parametrize(("name", "params"), OBJECTIVES, ids=[f"{n}{'+std' if p else ''}" for n, p in OBJECTIVES])
def test_one_training_step(name: str, params: dict, pair: tuple[str, str, int]) -> None:
    teacher_name, student_name, size = pair
    student, teacher = models(teacher_name, student_name)
    ctx = DistillContext(num_classes=10, num_train_samples=64, image_size=size)
    params = params | ({"nce_k": 8} if name.startswith("cktf") else {})
    if name.startswith("cktf") and student_name == "shufflev2":
        with pytest.raises(ConfigError, match="no CKTF stage features"):  # CKTF's refusal, whatever the partner
            build_distiller(name, student, teacher, params, ctx)
        return
    d = build_distiller(name, student, teacher, params, ctx)
    d.train()
    d.on_epoch_start(0)  # as the trainer does: the first epoch, DKD and ReviewKD at 1/20
    before = {k: v.clone() for k, v in d.student.state_dict().items()}
    opt = torch.optim.SGD(d.trainable_parameters(), lr=0.01, momentum=0.9)
    out = d(_step_batch(size))
    terms = {k: v for k, v in out.losses.items() if k != "ce"}
    method = objective(name).secondary_name or objective(name).primary_name
    assert method in terms  # kd-ls / dkd-ls: presets of kd / dkd
    assert all(torch.isfinite(v) for v in out.losses.values()) and all(v > 0 for v in terms.values()), out.losses
    opt.zero_grad()
    sum(out.losses.values()).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in d.student.parameters())
    assert all(p.grad is None for p in d.teacher.parameters())
    adapters = [p for t in d.terms.values() for p in t.parameters() if p.requires_grad]
    assert all(p.grad is not None for p in adapters)  # ReviewKD's blocks, CKTF's heads
    opt.step()
    assert any(not torch.equal(v, d.student.state_dict()[k]) for k, v in before.items())
    if "reviewkd" in d.terms:
        assert d.run_params()["reviewkd/pairing"] == OFFICIAL  # equal stage counts: the official rule


# ------------------------------------------------------------------------------------------------ listings
def test_listed_with_their_combinations() -> None:
    names = set(objective_names())
    assert {"dkd", "dist", "reviewkd", "kd-ls", "dkd-ls", "cktf+dkd", "cktf+dist", "cktf+reviewkd"} <= names
    assert "crd+dkd" not in names  # CRD lists KD only, as before
    for n in ("dkd", "dist", "reviewkd"):
        assert LOSS_TERMS.get(n).joins_combinations and not LOSS_TERMS.get(n).leads_combinations


def test_cli_lists_every_new_method_with_its_fields(capsys) -> None:
    assert main(["distillers", "--fields"]) == 0
    out = capsys.readouterr().out
    blocks: dict[str, list[str]] = {}
    current = None
    for line in out.splitlines()[1:]:
        if line.startswith(" "):
            blocks[current].append(line.strip())
        else:
            current = line.split()[0]
            blocks[current] = []
    expected = {
        "dkd": {"gamma = 1.0", "alpha = 1.0", "beta = 8.0", "temperature = 4.0", "warmup = 20", "logit_std = False"},
        "dkd-ls": {"alpha = 9.0", "beta = 72.0", "temperature = 2.0", "logit_std = True"},
        "dist": {"gamma = 1.0", "beta = 1.0", "gamma_intra = 1.0", "tau = 1.0"},
        "reviewkd": {"gamma = 1.0", "beta = 1.0", "warmup = 20", "student_preact = False"},
        "kd": {"logit_std = False", "temperature = 4.0"},
        "kd-ls": {"logit_std = True", "temperature = 2.0", "alpha = 9.0", "gamma = 1.0"},
    }
    for name, fields in expected.items():
        assert fields <= set(blocks[name]), (name, blocks.get(name))
    for combo in ("cktf+dkd", "cktf+dist", "cktf+reviewkd"):
        assert combo in blocks


# ------------------------------------------------------------------------------------------------ published numbers
def test_published_numbers_and_their_sources() -> None:
    from cktf.campaign.schema import MethodSpec
    from cktf.tune.results.anchors import (
        ANCHOR_KEYS,
        anchor_column,
        anchor_fields,
        anchor_row,
        anchor_sources,
        published_groups,
    )

    want = {  # resnet32x4->resnet8x4, resnet56->resnet20, wrn_40_2->wrn_16_2, vgg13->vgg8
        "kd": ("73.33", "70.66", "74.92", "72.98"),
        "reviewkd": ("75.63", "71.89", "", "74.84"),
        "dkd": ("76.32", "71.97", "76.23", "74.68"),
        "dist": ("76.31", "71.75", "", ""),
        "kd_ls": ("76.62", "71.43", "76.11", "74.36"),
        "dkd_ls": ("77.01", "72.32", "76.39", "74.81"),
    }
    rows = [anchor_row("cifar100", t, s) for t, s in (("resnet32x4", "resnet8x4"), ("resnet56", "resnet20"))]
    rows += [anchor_row("cifar100", t, s) for t, s in (("wrn_40_2", "wrn_16_2"), ("vgg13", "vgg8"))]
    for column, values in want.items():
        assert tuple(r[column] for r in rows) == values, column
    sources = anchor_sources()
    assert set(sources) == {"reviewkd", "dkd", "dist", "kd_ls", "dkd_ls"}
    assert "CVPR 2022" in sources["dkd"] and "NeurIPS 2022" in sources["dist"] and "CVPR 2024" in sources["kd_ls"]
    groups = dict(published_groups(rows[0]))
    assert groups["CKTF paper Table 1"]["kd"] == "73.33" and "dkd" not in groups["CKTF paper Table 1"]
    assert groups[sources["dkd"]] == {"dkd": "76.32"}
    assert not any("reviewkd" in cells for _, cells in published_groups(rows[2]))  # empty cells are left out
    assert "teacher_acc" in anchor_fields() and not set(ANCHOR_KEYS) & set(anchor_fields())
    assert (anchor_column("ce"), anchor_column("crd+kd"), anchor_column("fitnet")) == ("student_ce_acc", "crd_kd", None)
    for distiller, column in (("dkd", "dkd"), ("dist", "dist"), ("reviewkd", "reviewkd"), ("kd-ls", "kd_ls")):
        assert MethodSpec(distiller=distiller).anchor_column() == column == anchor_column(distiller)
    assert MethodSpec(distiller="dkd-ls").anchor_column() == "dkd_ls"


def test_a_study_report_names_each_numbers_source(tmp_path) -> None:
    from cktf.tune.results.anchors import anchor_row, anchor_sources
    from cktf.tune.results.html import to_html
    from cktf.tune.results.markdown import to_markdown

    summary = {"study": "s", "status": "complete", "counts": {}, "metric": "val_acc", "mode": "max", "best": None}
    summary.update(baseline=None, test_metric="test_acc", gain_over_baseline=None, ablations={}, top=[])
    summary.update(score={"rule": "val_acc at its best epoch"})
    summary.update(headline="h", anchor=anchor_row("cifar100", "resnet32x4", "resnet8x4"))
    published = [line for line in to_markdown(summary).splitlines() if line.startswith("published")]
    assert published[0].startswith("published (CKTF paper Table 1): teacher_acc 79.42") and "dkd" not in published[0]
    assert f"published ({anchor_sources()['dkd']}): dkd 76.32" in published
    assert len(published) == 6  # the row's own source, then one per added column
    page = to_html(summary, tmp_path)
    assert page.count("<h2>Published results (") == 6 and "76.32" in page
