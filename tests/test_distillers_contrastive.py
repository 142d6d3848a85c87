"""CRD and CKTF distillers on tiny CPU models: critics, gradients, memory, golden values, mappings, configs.

Golden values: (1) right after ``Z`` is set every two-sided CRD term is about ``2 (log K + 1 + sigma^2 / 2)`` with
``sigma = 1 / (tau sqrt(d))`` (see ``test_losses.py::test_crd_first_batch_loss_is_log_k_plus_one``); (2) the total
CKTF loss of a seeded step equals the official ``loops.py`` formula ``gamma CE + beta CRD_last + theta sum CRD_m``
recomposed here by hand from ``cktf.losses`` primitives (pairs built with plain ``F.normalize`` / ``F.pad`` /
``F.avg_pool2d``).
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

import cktf.distillers.cktf as cktf_module
from cktf.distillers import DistillContext, build_distiller, objective
from cktf.distillers.cktf import CKTF, CKTFConfig
from cktf.errors import ConfigError
from cktf.losses import Embed, MLPEmbed, PadEmbed, crd_pair_loss
from cktf.models import DistillOutput, create_model
from cktf.models.resnet_cifar import CifarResNet

N, K, B = 200, 32, 8


def objective_parse(name, params, image_size=32):
    return objective(name).parse(params, image_size)


def _ctx(size: int = 32, n: int = N) -> DistillContext:
    return DistillContext(num_classes=10, num_train_samples=n, image_size=size)


def _contrast_idx(index: torch.Tensor, k: int, n: int, gen: torch.Generator) -> torch.Tensor:
    """Column 0 the anchor, then ``k`` random indices other than the anchor."""
    r = torch.randint(0, n - 1, (len(index), k), generator=gen)
    return torch.cat([index[:, None], r + (r >= index[:, None]).long()], 1)


def _batch(gen: torch.Generator, size: int = 32, b: int = B, n: int = N, k: int = K) -> dict:
    index = torch.randperm(n, generator=gen)[:b]
    return {
        "image": torch.randn(b, 3, size, size, generator=gen),
        "target": torch.randint(0, 10, (b,), generator=gen),
        "index": index,
        "contrast_idx": _contrast_idx(index, k, n, gen),
    }


def _build(name: str, s_name: str = "resnet8", t_name: str = "resnet14", size: int = 32, seed: int = 0, **params):
    torch.manual_seed(seed)
    student = s_name if not isinstance(s_name, str) else create_model(s_name, 10)
    teacher = create_model(t_name, 10)
    return build_distiller(name, student, teacher, {"nce_k": K, **params}, _ctx(size))


def _critics(distiller):
    return distiller.terms["cktf"].critics


# ------------------------------------------------------------------------------------------------ structure
@pytest.mark.parametrize(
    ("s_name", "t_name", "size"),
    [("resnet8", "resnet14", 32), ("vgg8", "vgg11", 32), ("wrn_16_1", "wrn_16_2", 32), ("resnet10", "resnet18", 64)],
)
def test_cktf_one_critic_per_module(s_name: str, t_name: str, size: int) -> None:
    distiller = _build("cktf", s_name, t_name, size)
    n_stages = len(distiller.student.feature_info) - 1
    critics = _critics(distiller)
    assert list(critics) == ["stem", *[f"stage{k}" for k in range(1, n_stages + 1)], "final"]
    for attr in ("embed_s", "embed_t", "memory"):
        assert len({id(getattr(c, attr)) for c in critics.values()}) == n_stages + 2
    buffers = [b for c in critics.values() for b in (c.memory.memory_s, c.memory.memory_t, c.memory.z_s, c.memory.z_t)]
    assert len({b.data_ptr() for b in buffers}) == len(buffers)
    # head sizes: intermediate s_dim = t_dim = dim(pool(teacher f_i)); final = the two num_features
    with torch.no_grad():
        t_out = distiller.teacher.forward_distill(torch.randn(2, 3, size, size))
    for i, name in enumerate(list(critics)[:-1]):
        dim = distiller.teacher.pool_feature(t_out.feats[i]).shape[1]
        assert critics[name].embed_s.linear.in_features == critics[name].embed_t.linear.in_features == dim
    assert critics["final"].embed_s.linear.in_features == distiller.student.num_features
    assert critics["final"].embed_t.linear.in_features == distiller.teacher.num_features
    gen = torch.Generator().manual_seed(1)
    out = distiller(_batch(gen, size, b=4 if size == 64 else B))
    expected = {"ce", "cktf_stem", *[f"cktf_stage{k}" for k in range(1, n_stages + 1)], "cktf_final"}
    assert set(out.losses) == expected
    assert all(torch.isfinite(v) and v > 0 for v in out.losses.values())


def test_cktf_gradients_and_frozen_teacher() -> None:
    distiller = _build("cktf")
    distiller.train()
    assert distiller.training and not distiller.teacher.training
    teacher_state = {k: v.clone() for k, v in distiller.teacher.state_dict().items()}
    opt = torch.optim.SGD(distiller.trainable_parameters(), lr=0.05, momentum=0.9)
    gen = torch.Generator().manual_seed(2)
    for _ in range(2):
        out = distiller(_batch(gen))
        opt.zero_grad()
        sum(out.losses.values()).backward()
        assert sum(p.grad.abs().sum() for p in distiller.student.parameters() if p.grad is not None) > 0
        for name, critic in _critics(distiller).items():
            for head in (critic.embed_s, critic.embed_t):  # embed_t is trained by the teacher-anchor term
                for p in head.parameters():
                    assert p.grad is not None and p.grad.abs().sum() > 0, name
            assert not any(b.requires_grad for b in critic.memory.buffers())
        assert all(p.grad is None for p in distiller.teacher.parameters())
        opt.step()
    assert not distiller.teacher.training
    for k, v in distiller.teacher.state_dict().items():
        assert torch.equal(v, teacher_state[k]), k
    # every head is in the optimised set, the teacher is not
    trainable = {id(p) for p in distiller.trainable_parameters()}
    assert all(id(p) in trainable for p in distiller.terms["cktf"].parameters())
    assert not any(id(p) in trainable for p in distiller.teacher.parameters())


def test_cktf_student_stage_gradient_flows_through_the_stage_pair() -> None:
    """Only the stage3 term: the student's layer3 gets a gradient through normalize(dim=0) + pool."""
    distiller = _build("cktf")
    term = distiller.terms["cktf"]
    gen = torch.Generator().manual_seed(3)
    batch = _batch(gen)
    s = distiller.student.forward_distill(batch["image"])
    with torch.no_grad():
        t = distiller.teacher.forward_distill(batch["image"])
    term(s, t, batch)["cktf_stage3"].backward()
    assert distiller.student.layer3[0].conv2.weight.grad.abs().sum() > 0
    assert distiller.student.fc.weight.grad is None  # the final term was not back-propagated


def test_cktf_memory_rows_norm_and_z_per_module() -> None:
    distiller = _build("cktf")
    critics = _critics(distiller)
    before = {n: (c.memory.memory_s.clone(), c.memory.memory_t.clone()) for n, c in critics.items()}
    assert all(c.memory.z_s.item() == -1 and c.memory.z_t.item() == -1 for c in critics.values())
    gen = torch.Generator().manual_seed(4)
    batch = _batch(gen)
    distiller(batch)
    untouched = torch.ones(N, dtype=torch.bool)
    untouched[batch["index"]] = False
    z_first = {}
    for name, c in critics.items():
        for bank, old in zip((c.memory.memory_s, c.memory.memory_t), before[name]):
            assert torch.equal(bank[untouched], old[untouched]), name
            assert not torch.equal(bank[batch["index"]], old[batch["index"]]), name
            torch.testing.assert_close(bank[batch["index"]].norm(dim=1), torch.ones(B))
        assert c.memory.z_s.item() > 0 and c.memory.z_t.item() > 0
        z_first[name] = (c.memory.z_s.item(), c.memory.z_t.item())
    assert len(set(z_first.values())) == len(z_first)  # each module set its own Z
    distiller(_batch(gen))
    assert {n: (c.memory.z_s.item(), c.memory.z_t.item()) for n, c in critics.items()} == z_first


# ------------------------------------------------------------------------------------------------ golden values
def _first_step_value(tau: float, k: int, d: int) -> float:
    return 2 * (math.log(k) + 1 + 1 / (2 * d * tau**2))


@pytest.mark.parametrize("name", ["cktf", "crd"])
def test_first_step_terms_match_theory(name: str) -> None:
    n, k, bsz = 8192, 4096, 64
    torch.manual_seed(5)
    student, teacher = create_model("resnet8", 10), create_model("resnet14", 10)
    distiller = build_distiller(name, student, teacher, {"nce_k": k}, _ctx(n=n))
    term = distiller.terms[name]
    gen = torch.Generator().manual_seed(6)
    batch = _batch(gen, b=bsz, n=n, k=k)
    with torch.no_grad():
        s, t = student.forward_distill(batch["image"]), teacher.forward_distill(batch["image"])
        losses = term(s, t, batch)
    if name == "crd":
        values, tau = {"crd": losses["crd"] / 0.8}, 0.07
    else:
        cfg, tau = term.cfg, term.tau
        values = {key: v / (cfg.alpha2 if key == "cktf_final" else cfg.alpha1) for key, v in losses.items()}
        assert tau == 0.1 and len(values) == 5
    expected = _first_step_value(tau, k, 128)
    for key, value in values.items():
        assert abs(value.item() - expected) < 0.04 * expected, (key, value.item(), expected)


def _hand_pair(s_block: torch.Tensor, t_blocks, mapping: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The official ST.st_loss_each_group for CIFAR WRN, written out: normalize(dim=0), pad, pick, avg_pool2d(8)."""
    s = F.normalize(s_block, p=2, dim=0)
    half = (t_blocks[0].shape[1] - s.shape[1]) // 2
    s = F.pad(s, (0, 0, 0, 0, half, half))
    t_norm = [F.normalize(b, p=2, dim=0) for b in t_blocks]
    with torch.no_grad():
        cos = [float((s * b).sum() / max(float(s.norm() * b.norm()), 1e-8)) for b in t_norm]
    j = {"first": 0, "last": len(t_norm) - 1, "min_cos": min(range(len(cos)), key=lambda i: (cos[i], -i))}[mapping]
    return F.avg_pool2d(s, 8).flatten(1), F.avg_pool2d(t_norm[j], 8).flatten(1)


@pytest.mark.parametrize("mapping", ["first", "last", "min_cos"])
def test_cktf_total_equals_the_official_formula(mapping: str) -> None:
    """wrn_16_2 -> wrn_16_1: student stages are zero-padded 8/16/32 channels per side; 2 blocks per teacher stage."""
    distiller = _build("cktf", "wrn_16_1", "wrn_16_2", seed=7, mapping=mapping)
    ref = copy.deepcopy(distiller)
    gen = torch.Generator().manual_seed(8)
    batch = _batch(gen)
    out = distiller(batch)

    critics, index, cidx = ref.terms["cktf"].critics, batch["index"], batch["contrast_idx"]
    s = ref.student.forward_distill(batch["image"])
    with torch.no_grad():
        t = ref.teacher.forward_distill(batch["image"])

    def crd(module: str, f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
        c = critics[module]
        return crd_pair_loss(c.memory, c.embed_s(f_s), c.embed_t(f_t), index, cidx, 0.1, n_data=N)

    terms = {"stem": crd("stem", F.avg_pool2d(s.feats[0], 8).flatten(1), F.avg_pool2d(t.feats[0], 8).flatten(1))}
    for k in range(3):
        terms[f"stage{k + 1}"] = crd(f"stage{k + 1}", *_hand_pair(s.stage_blocks[k][-1], t.stage_blocks[k], mapping))
    terms["final"] = crd("final", s.pooled, t.pooled)
    ce = F.cross_entropy(s.logits, batch["target"])
    # loops.py: gamma * CE + alpha * KD (0) + beta * CRD_last + theta * sum(CRD_stem, CRD_stages)
    expected = 1.0 * ce + 0.8 * terms["final"] + 0.1 * sum(v for key, v in terms.items() if key != "final")
    torch.testing.assert_close(sum(out.losses.values()), expected, rtol=1e-5, atol=1e-6)
    for key, value in terms.items():
        torch.testing.assert_close(
            out.losses[f"cktf_{key}"], (0.8 if key == "final" else 0.1) * value, rtol=1e-5, atol=0
        )


# ------------------------------------------------------------------------------------------------ mappings
def _fake_output(model, gen: torch.Generator, stage_blocks=None) -> DistillOutput:
    shapes = model.feature_shapes(32)
    feats = [torch.rand(B, *shape, generator=gen) for shape in shapes]
    if stage_blocks is None:
        stage_blocks = [
            tuple(torch.rand(B, *shape, generator=gen) for _ in range(fi.num_blocks))
            for shape, fi in zip(shapes[1:], model.feature_info[1:])
        ]
    feats[1:] = [blocks[-1] for blocks in stage_blocks]
    pooled = torch.rand(B, model.num_features, generator=gen)
    return DistillOutput(tuple(feats), tuple(feats), tuple(tuple(b) for b in stage_blocks), pooled, torch.rand(B, 10))


def _designed_pair(gen: torch.Generator, teacher_first_is_close: bool):
    """resnet8 student, resnet14 teacher (2 blocks per stage): one teacher block equals the student's, one is far."""
    student, teacher = create_model("resnet8", 10), create_model("resnet14", 10)
    s = _fake_output(student, gen)
    t_blocks = []
    for blocks in s.stage_blocks:
        same, far = blocks[-1].clone(), -blocks[-1] + 0.1 * torch.rand(blocks[-1].shape, generator=gen)
        t_blocks.append((same, far) if teacher_first_is_close else (far, same))
    return student, teacher, s, _fake_output(teacher, gen, t_blocks)


@pytest.mark.parametrize("close_first", [True, False])
@pytest.mark.parametrize("mapping", ["first", "last", "max_cos", "min_cos", "Largest", "Smallest"])
def test_cktf_mapping_picks_the_specified_block(mapping: str, close_first: bool) -> None:
    gen = torch.Generator().manual_seed(9)
    student, teacher, s, t = _designed_pair(gen, close_first)
    cfg = CKTFConfig.parse({"nce_k": K, "mapping": mapping})
    term = CKTF(cfg, student, teacher, _ctx())
    with torch.no_grad():
        term(s, t, _batch(gen))
    close, far = (0, 1) if close_first else (1, 0)
    expected = {"first": 0, "last": 1, "max_cos": close, "min_cos": far}[cfg.mapping]
    assert term.last_choices == (expected,) * 3


def test_cktf_calls_select_stage_pair_with_the_stage_tensors(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = cktf_module.select_stage_pair

    def spy(s_block, t_blocks, mapping, pool, generator=None):
        calls.append((s_block, list(t_blocks), mapping, pool))
        return real(s_block, t_blocks, mapping, pool, generator)

    monkeypatch.setattr(cktf_module, "select_stage_pair", spy)
    gen = torch.Generator().manual_seed(10)
    distiller = _build("cktf", mapping="max_cos")
    batch = _batch(gen)
    s = distiller.student.forward_distill(batch["image"])
    with torch.no_grad():
        t = distiller.teacher.forward_distill(batch["image"])
    distiller.terms["cktf"](s, t, batch)
    assert len(calls) == 3
    x = torch.rand(2, 4, 16, 16, generator=gen)
    for k, (s_block, t_blocks, mapping, pool) in enumerate(calls):
        assert mapping == "max_cos"
        assert torch.equal(s_block, s.stage_blocks[k][-1])  # the student's LAST block of stage k
        assert len(t_blocks) == 2 and all(torch.equal(a, b) for a, b in zip(t_blocks, t.stage_blocks[k]))
        torch.testing.assert_close(pool(x), F.avg_pool2d(x, 8).flatten(1))  # CIFAR ResNet: fixed AvgPool2d(8)


def _random_choices(seed: int, steps: int = 6, state=None) -> tuple[list, dict]:
    gen = torch.Generator().manual_seed(11)
    student, teacher, s, t = _designed_pair(gen, True)
    torch.manual_seed(seed)
    term = CKTF(CKTFConfig(nce_k=K, mapping="random"), student, teacher, _ctx())
    if state is not None:
        term.load_state_dict(state)
    choices, saved = [], None
    with torch.no_grad():
        for step in range(steps):
            if step == 2:
                saved = copy.deepcopy(term.state_dict())
            term(s, t, _batch(gen))
            choices.append(term.last_choices)
    return choices, saved


def test_cktf_random_mapping_is_reproducible_and_resumable() -> None:
    a, saved = _random_choices(seed=12)
    b, _ = _random_choices(seed=12)
    c, _ = _random_choices(seed=13)
    assert a == b and a != c
    assert {j for step in a for j in step} == {0, 1}
    assert any(key.endswith("rng._extra_state") for key in saved)
    resumed, _ = _random_choices(seed=99, steps=4, state=saved)  # the saved generator state wins over the seed
    assert resumed == a[2:]


# ------------------------------------------------------------------------------------------------ options
def test_cktf_mlp_head() -> None:
    distiller = _build("cktf", head="mlp")
    critics = _critics(distiller)
    assert all(isinstance(c.embed_s, MLPEmbed) and isinstance(c.embed_t, MLPEmbed) for c in critics.values())
    assert critics["stage1"].embed_s.linear1.in_features == 256
    out = distiller(_batch(torch.Generator().manual_seed(14)))
    sum(out.losses.values()).backward()
    assert all(c.embed_t.linear1.weight.grad.abs().sum() > 0 for c in critics.values())
    assert all(isinstance(c.embed_s, Embed) for c in _critics(_build("cktf")).values())


def test_cktf_pad_head_has_no_parameters_and_still_trains_the_student() -> None:
    """CKTF ``--head pad`` (``Embed_pad``): parameter-free heads that zero-pad (or crop) each feature to d."""
    distiller = _build("cktf", head="pad", feat_dim=512)
    critics = _critics(distiller)
    assert all(isinstance(c.embed_s, PadEmbed) and isinstance(c.embed_t, PadEmbed) for c in critics.values())
    assert not any(p for c in critics.values() for p in c.parameters())
    out = distiller(_batch(torch.Generator().manual_seed(19)))
    sum(out.losses.values()).backward()
    assert all(torch.isfinite(v) for v in out.losses.values())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in distiller.student.parameters())


def test_cktf_fused_scoring_same_loss_and_grads() -> None:
    """The fused closed-form NCE gradient against the official gather, over every critic, the heads and the
    student."""
    scoring = "fused"
    naive, low = _build("cktf", seed=15, scoring="gather"), _build("cktf", seed=15, scoring=scoring)
    assert all(c.memory.scoring == scoring for c in _critics(low).values())
    assert all(c.memory.scoring == "gather" for c in _critics(naive).values())
    gen = torch.Generator().manual_seed(16)
    batches = [_batch(gen), _batch(gen)]
    for batch in batches:
        outs = []
        for distiller in (naive, low):
            distiller.zero_grad()
            out = distiller(batch)
            sum(out.losses.values()).backward()
            outs.append(out.losses)
        for key in outs[0]:
            torch.testing.assert_close(outs[1][key], outs[0][key], rtol=1e-6, atol=0)
        for (name, p_n), (_, p_l) in zip(naive.named_parameters(), low.named_parameters()):
            if p_n.grad is not None:
                # fused sums the dot products in another order: fp32 noise relative to the largest gradient
                atol = 1e-5 * float(p_n.grad.abs().max())
                torch.testing.assert_close(p_l.grad, p_n.grad, rtol=1e-5, atol=atol, msg=name)
    for c_n, c_l in zip(_critics(naive).values(), _critics(low).values()):
        torch.testing.assert_close(c_l.memory.memory_s, c_n.memory.memory_s, rtol=1e-6, atol=1e-7)


def test_cktf_tau_resolution() -> None:
    assert _build("cktf").terms["cktf"].tau == 0.1
    assert _build("cktf", "resnet10", "resnet18", size=64).terms["cktf"].tau == 0.07
    assert _build("cktf", tau=0.05).terms["cktf"].tau == 0.05
    assert _build("cktf", tau="0.2").terms["cktf"].tau == 0.2  # CLI strings
    assert _build("cktf", size=32, tau="none").terms["cktf"].tau == 0.1
    with pytest.raises(ConfigError, match="tau"):
        objective_parse("cktf", {"tau": "warm"})
    with pytest.raises(ConfigError, match="tau"):
        objective_parse("cktf", {"tau": -1})


def test_cktf_config_defaults_presets_and_combos() -> None:
    cfg = CKTFConfig()
    assert (cfg.gamma, cfg.alpha1, cfg.alpha2, cfg.tau) == (1.0, 0.1, 0.8, None)
    assert (cfg.mapping, cfg.head) == ("last", "linear")
    assert (cfg.feat_dim, cfg.nce_k, cfg.nce_m, cfg.scoring) == (128, 16384, 0.5, "fused")
    paper, _, _ = objective_parse("cktf-paper", {}, 32)
    assert (paper.alpha1, paper.alpha2, paper.mapping) == (0.8, 0.2, "last")
    # Table 1 CKTF+KD: -r 1 -a 1 -b 0.8 --theta 0.1
    p_cfg, s_cfg, theta = objective_parse("cktf+kd", {}, 32)
    assert p_cfg == CKTFConfig() and s_cfg.alpha == 1.0 and theta == 1.0
    assert objective_parse("cktf+kd", {"mapping": "Smallest"}, 32)[0].mapping == "min_cos"
    # Table 2 mode (run_2kds.sh)
    assert CKTF.combo_defaults("kd", 32) == {}
    table2 = {"alpha1": 0.8, "alpha2": 0.8, "tau": 0.1}
    for partner in ("fitnet", "at", "sp", "cc", "vid", "rkd", "pkt"):
        assert CKTF.combo_defaults(partner, 32) == {**table2, "mapping": "min_cos"}
        assert CKTF.combo_defaults(partner, 64) == {**table2, "mapping": "last"}
    for partner in ("ab", "ft", "nst", "fsp"):
        assert CKTF.combo_defaults(partner, 32) == {**table2, "mapping": "last"}
    p_cfg, _, theta = objective_parse("cktf+fitnet", {"alpha1": 0.5}, 32)
    assert (p_cfg.alpha1, p_cfg.alpha2, p_cfg.mapping, theta) == (0.5, 0.8, "min_cos", 1.0)
    for bad in (
        {"mapping": "closest"},
        {"head": "conv"},
        {"nce_k": 0},
        {"alpha1": -0.1},
        {"nce_m": 1.0},
        {"scoring": "x"},
    ):
        with pytest.raises(ConfigError):
            objective_parse("cktf", bad)


# ------------------------------------------------------------------------------------------------ CRD
def test_crd_runs_with_official_weights() -> None:
    distiller = _build("crd", seed=17)
    term = distiller.terms["crd"]
    assert (term.cfg.beta, term.cfg.tau, term.cfg.gamma, term.cfg.feat_dim, term.cfg.nce_m) == (0.8, 0.07, 1, 128, 0.5)
    assert distiller.contrast_negatives() == K
    assert term.critic.embed_s.linear.in_features == 64 and term.critic.embed_t.linear.in_features == 64
    ref = copy.deepcopy(distiller)
    gen = torch.Generator().manual_seed(18)
    batch = _batch(gen)
    out = distiller(batch)
    assert set(out.losses) == {"ce", "crd"}
    s = ref.student.forward_distill(batch["image"])
    with torch.no_grad():
        t = ref.teacher.forward_distill(batch["image"])
    c = ref.terms["crd"].critic
    hand = crd_pair_loss(
        c.memory, c.embed_s(s.pooled), c.embed_t(t.pooled), batch["index"], batch["contrast_idx"], 0.07
    )
    torch.testing.assert_close(out.losses["crd"], 0.8 * hand, rtol=1e-6, atol=0)
    sum(out.losses.values()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in term.parameters())
    assert all(p.grad is None for p in distiller.teacher.parameters())
    with pytest.raises(ValueError, match="nce_k"):
        distiller(_batch(gen, k=K + 1))


def test_crd_plus_kd_and_cross_architecture() -> None:
    distiller = _build("crd+kd", "mobilenetv2", "resnet32x4")  # CRD needs only the pooled features
    assert distiller.terms["kd"].cfg.alpha == 1.0 and distiller.terms["crd"].cfg.beta == 0.8
    assert distiller.terms["crd"].critic.embed_t.linear.in_features == 256
    out = distiller(_batch(torch.Generator().manual_seed(19)))
    assert set(out.losses) == {"ce", "crd", "kd"}
    assert all(torch.isfinite(v) and v > 0 for v in out.losses.values())


# ------------------------------------------------------------------------------------------------ unsupported pairs
@pytest.mark.parametrize(
    ("student", "teacher", "match"),
    [
        ("mobilenetv2", "vgg13", "MobileNetV2 has no CKTF stage features"),
        ("vgg8", "resnet14", "have 4 and 3 stages"),
        ("wrn_16_2", "wrn_16_1", "stage 1 .*student is wider"),
        (CifarResNet(8, [16, 15, 32, 64], 10), "resnet14", "stage 1 .*odd channel difference"),
        ("resnet10", "vgg8", "stage 1 .*spatial sizes differ"),
        ("resnet8", "resnet32x4", "stem"),
    ],
)
def test_cktf_rejects_pairs_without_official_behaviour(student, teacher: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        _build("cktf", student, teacher)
    s_cls = type(student).__name__ if not isinstance(student, str) else type(create_model(student, 10)).__name__
    assert s_cls in str(info.value) and type(create_model(teacher, 10)).__name__ in str(info.value)
