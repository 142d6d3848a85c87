"""Loss functions of ``cktf.losses``: golden values from the official code, CRD behaviour, low-memory path,
CKTF stage pairs.

Golden values (``fixtures/losses/golden.json``) were produced by ``fixtures/losses/make_golden.py`` running the
official RepDistiller / CKTF files, independently of cktf; see that script's docstring.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cktf.losses import (
    SCORINGS,
    ContrastMemory,
    Embed,
    MLPEmbed,
    PadEmbed,
    ab_loss,
    at_loss,
    cc_loss,
    crd_pair_loss,
    fsp_loss,
    fsp_matrix,
    ft_factor_loss,
    fused_nce,
    hint_loss,
    match_spatial,
    nce_loss,
    nst_loss,
    pkt_loss,
    rkd_loss,
    select_stage_pair,
    sp_loss,
    vid_init_log_scale,
    vid_loss,
)

GOLDEN = json.loads((Path(__file__).parent / "fixtures" / "losses" / "golden.json").read_text())
INPUTS, CASES = GOLDEN["inputs"], GOLDEN["cases"]
RTOL = 1e-5


def inp(name: str) -> torch.Tensor:
    return torch.tensor(INPUTS[name], dtype=torch.float32)


def idx(name: str) -> torch.Tensor:
    return torch.tensor(INPUTS[name], dtype=torch.long)


def assert_close(actual, expected, rtol: float = RTOL, atol: float = 1e-7) -> None:
    expected = torch.tensor(expected, dtype=torch.float64)
    torch.testing.assert_close(
        torch.as_tensor(actual).detach().double().reshape(expected.shape), expected, rtol=rtol, atol=atol
    )


# ------------------------------------------------------------------------------------------------ golden values
PAIR_LOSSES = {
    "hint": hint_loss,
    "at_pool_s": at_loss,
    "at_pool_t": at_loss,
    "at_same": at_loss,
    "ft": ft_factor_loss,
    "nst": nst_loss,
    "sp": sp_loss,
    "cc": cc_loss,
    "rkd": rkd_loss,
    "pkt": pkt_loss,
}


@pytest.mark.parametrize("case", sorted(PAIR_LOSSES))
def test_golden_pair_losses(case: str) -> None:
    c = CASES[case]
    value = PAIR_LOSSES[case](*(inp(n) for n in c["inputs"]))
    assert value.dim() == 0
    assert_close(value, c["value"])


def test_golden_fsp() -> None:
    c = CASES["fsp"]
    g = [inp(n) for n in c["inputs"]]
    values = fsp_loss(g[:3], g[3:])
    assert len(values) == 2
    for v, e in zip(values, c["value"]):
        assert_close(v, e)
    assert_close(fsp_matrix(g[0], g[1]), c["matrix_s01"], atol=1e-6)


def test_golden_ab() -> None:
    c = CASES["ab"]
    g = [inp(n) for n in c["inputs"]]
    values = ab_loss(g[:3], g[3:], margin=1.0)
    for v, e in zip(values, c["value"]):
        assert_close(v, e)


def test_golden_vid() -> None:
    c = CASES["vid"]
    s, t, w0, w1, w2, log_scale = (inp(n) for n in c["inputs"])
    s, t = match_spatial(s, t)  # upstream pools the regressor's input, not its output
    pred = F.conv2d(F.relu(F.conv2d(F.relu(F.conv2d(s, w0)), w1)), w2)
    assert_close(vid_loss(pred, t, log_scale), c["value"])
    assert math.isclose(vid_init_log_scale(5.0), c["init_log_scale"], rel_tol=1e-12)
    assert math.isclose(F.softplus(torch.tensor(vid_init_log_scale(5.0), dtype=torch.float64)).item() + 1e-5, 5.0)


def test_golden_nce() -> None:
    c = CASES["nce"]
    p = inp("nce_p")
    assert_close(nce_loss(p, c["n_data"]), c["value"])
    assert_close(nce_loss(p.unsqueeze(2), c["n_data"]), c["value"])  # the official [B, K+1, 1] layout


def test_golden_heads() -> None:
    x = inp("head_x")
    mlp = MLPEmbed(6, 5)
    with torch.no_grad():
        for layer, w, b in ((mlp.linear1, "mlp_w1", "mlp_b1"), (mlp.linear2, "mlp_w2", "mlp_b2")):
            layer.weight.copy_(inp(w))
            layer.bias.copy_(inp(b))
    assert_close(mlp(x), CASES["mlp_head"]["value"], atol=1e-6)
    assert_close(PadEmbed(6, CASES["pad_head"]["dim_out"])(x), CASES["pad_head"]["value"], atol=1e-6)


def _golden_crd_parts():
    c = CASES["crd"]
    embed_s, embed_t = Embed(12, c["feat_dim"]), Embed(10, c["feat_dim"])
    memory = ContrastMemory(c["feat_dim"], c["n_data"], momentum=c["momentum"])
    with torch.no_grad():
        embed_s.linear.weight.copy_(inp("crd_ws"))
        embed_s.linear.bias.copy_(inp("crd_bs"))
        embed_t.linear.weight.copy_(inp("crd_wt"))
        embed_t.linear.bias.copy_(inp("crd_bt"))
        memory.memory_s.copy_(inp("crd_mem_s"))
        memory.memory_t.copy_(inp("crd_mem_t"))
    return c, embed_s, embed_t, memory


@pytest.mark.parametrize("scoring", SCORINGS)
def test_golden_crd_two_steps(scoring: str) -> None:
    c, embed_s, embed_t, memory = _golden_crd_parts()
    memory.chunk_elems = 3 * (c["k"] + 1) * c["feat_dim"]  # several chunks on the low-memory path
    for step, expected in zip((1, 2), c["steps"]):
        f_s = inp(f"crd_fs{step}").requires_grad_(True)
        f_t = inp(f"crd_ft{step}").requires_grad_(True)
        loss = crd_pair_loss(
            memory,
            embed_s(f_s),
            embed_t(f_t),
            idx(f"crd_index{step}"),
            idx(f"crd_cidx{step}"),
            c["temperature"],
            c["n_data"],
            scoring=scoring,
        )
        loss.backward()
        assert_close(loss, expected["loss"])
        assert_close(memory.z_s, expected["z_s"])
        assert_close(memory.z_t, expected["z_t"])
        assert_close(f_s.grad, expected["grad_fs"], rtol=1e-4, atol=1e-6)
        assert_close(f_t.grad, expected["grad_ft"], rtol=1e-4, atol=1e-6)
    assert_close(memory.memory_s, c["memory_s_after"], atol=1e-6)
    assert_close(memory.memory_t, c["memory_t_after"], atol=1e-6)


@pytest.mark.parametrize("tag", ["resnet", "vgg"])
@pytest.mark.parametrize("method", ["First", "Last", "Largest", "Smallest"])
def test_golden_stage_pairs(tag: str, method: str) -> None:
    c = CASES[f"stage_{tag}_{method}"]
    pool = nn.AvgPool2d(8) if tag == "resnet" else nn.AdaptiveAvgPool2d(1)
    s = inp(f"stage_{tag}_s")
    t = [inp(f"stage_{tag}_t{j}") for j in range(c["n_blocks"])]
    s_k, t_k, j = select_stage_pair(s, t, method, pool)
    assert j == c["j"]
    assert_close(s_k, c["s_k"], atol=1e-6)
    assert_close(t_k, c["t_k"], atol=1e-6)


# ------------------------------------------------------------------------------------------------ CRD behaviour
def _unit(n: int, d: int, gen: torch.Generator) -> torch.Tensor:
    return F.normalize(torch.randn(n, d, generator=gen), dim=1)


def _contrast_idx(index: torch.Tensor, k: int, n_data: int, gen: torch.Generator) -> torch.Tensor:
    return torch.cat([index[:, None], torch.randint(n_data, (len(index), k), generator=gen)], dim=1)


@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_crd_first_batch_loss_is_log_k_plus_one(temperature: float) -> None:
    """Right after Z is set, E[P] = 1/N, so each NCE side is about log(K+1) + 1 (docs/algorithm.md §2).

    More exactly ``log K + 1 + sigma^2/2``: the positive's score is log-normal with ``sigma = 1/(T sqrt(d))`` for random
    unit features against the U(-s, s) banks, and ``-E[log P0]`` picks up that Jensen term (+0.39 at T=0.1, d=128;
    +0.80 at T=0.07, so the usual 10.7 reads ~11.5 at K=16384, T=0.07).
    """
    gen = torch.Generator().manual_seed(0)
    n_data, k, d, bsz = 10_000, 4096, 128, 64
    memory = ContrastMemory(d, n_data, generator=gen)
    index = torch.randperm(n_data, generator=gen)[:bsz]
    cidx = _contrast_idx(index, k, n_data, gen)
    p_s, p_t = memory.score(_unit(bsz, d, gen), _unit(bsz, d, gen), cidx, temperature)
    spec_value = math.log(k + 1) + 1
    refined = math.log(k) + 1 + 1 / (2 * d * temperature**2)
    for p in (p_s, p_t):
        assert p.shape == (bsz, k + 1) and p.dtype == torch.float32
        assert math.isclose(p.mean().item(), 1 / n_data, rel_tol=1e-4)
        loss = nce_loss(p, n_data).item()
        assert abs(loss - refined) < 0.03 * refined
        assert abs(loss - spec_value) < (0.06 if temperature == 0.1 else 0.02) * spec_value


def test_crd_z_set_once_then_frozen() -> None:
    gen = torch.Generator().manual_seed(1)
    memory = ContrastMemory(16, 200, generator=gen)
    assert memory.z_s.item() == -1 and memory.z_t.item() == -1
    index = torch.arange(8)
    cidx = _contrast_idx(index, 32, 200, gen)
    z_s, z_t = _unit(8, 16, gen), _unit(8, 16, gen)
    p_s, p_t = memory.score(z_s, z_t, cidx, 0.07)
    # Z = mean(exp-scores) * N_data, per side
    out_s = torch.exp(torch.bmm(memory.memory_t[cidx], z_s[:, :, None]).squeeze(2) / 0.07)
    assert math.isclose(memory.z_s.item(), out_s.mean().item() * 200, rel_tol=1e-5)
    torch.testing.assert_close(p_s, out_s / memory.z_s)
    frozen = (memory.z_s.item(), memory.z_t.item())
    memory.update(z_s, z_t, index)
    memory.score(_unit(8, 16, gen) * 0.5, _unit(8, 16, gen), _contrast_idx(index + 8, 32, 200, gen), 0.07)
    assert (memory.z_s.item(), memory.z_t.item()) == frozen


def test_crd_update_rows_momentum_and_norm() -> None:
    gen = torch.Generator().manual_seed(2)
    memory = ContrastMemory(16, 100, generator=gen)
    before_s, before_t = memory.memory_s.clone(), memory.memory_t.clone()
    index = torch.tensor([3, 50, 7, 99])
    z_s, z_t = _unit(4, 16, gen), _unit(4, 16, gen)
    memory.update(z_s, z_t, index)
    untouched = torch.ones(100, dtype=torch.bool)
    untouched[index] = False
    for bank, before, z in ((memory.memory_s, before_s, z_s), (memory.memory_t, before_t, z_t)):
        assert torch.equal(bank[untouched], before[untouched])
        torch.testing.assert_close(bank[index], F.normalize(0.5 * before[index] + 0.5 * z, dim=1))
        torch.testing.assert_close(bank[index].norm(dim=1), torch.ones(4))


def test_crd_scores_before_update() -> None:
    """The loss of a call uses the banks as they were before that call's update (positive = stale memory entry)."""
    gen = torch.Generator().manual_seed(3)
    memory = ContrastMemory(16, 100, generator=gen)
    twin = copy.deepcopy(memory)
    index = torch.arange(10, 18)
    cidx = _contrast_idx(index, 20, 100, gen)
    z_s, z_t = _unit(8, 16, gen), _unit(8, 16, gen)
    loss = crd_pair_loss(memory, z_s, z_t, index, cidx, 0.07)
    p_s, p_t = twin.score(z_s, z_t, cidx, 0.07)  # twin never updated
    torch.testing.assert_close(loss, nce_loss(p_s, 100) + nce_loss(p_t, 100))
    assert not torch.equal(memory.memory_s, twin.memory_s)


def test_crd_gradient_routing() -> None:
    gen = torch.Generator().manual_seed(4)
    memory = ContrastMemory(16, 100, generator=gen)
    index = torch.arange(8)
    cidx = _contrast_idx(index, 20, 100, gen)
    z_s = _unit(8, 16, gen).requires_grad_(True)
    z_t = _unit(8, 16, gen).requires_grad_(True)
    p_s, p_t = memory.score(z_s, z_t, cidx, 0.07)
    nce_loss(p_s, 100).backward(retain_graph=True)
    assert z_s.grad is not None and z_s.grad.abs().sum() > 0
    assert z_t.grad is None
    z_s.grad = None
    nce_loss(p_t, 100).backward()
    assert z_t.grad is not None and z_t.grad.abs().sum() > 0
    assert z_s.grad is None
    assert not memory.memory_s.requires_grad and not memory.memory_t.requires_grad
    assert memory.memory_s.grad is None and memory.memory_t.grad is None


def test_crd_fp32_under_autocast() -> None:
    gen = torch.Generator().manual_seed(5)
    memory = ContrastMemory(16, 100, generator=gen)
    cidx = _contrast_idx(torch.arange(4), 10, 100, gen)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        p_s, p_t = memory.score(_unit(4, 16, gen).bfloat16(), _unit(4, 16, gen).bfloat16(), cidx, 0.07)
    assert p_s.dtype == p_t.dtype == torch.float32 and torch.isfinite(p_s).all()
    with pytest.raises(TypeError, match="fp32"):
        memory.half().score(_unit(4, 16, gen), _unit(4, 16, gen), cidx, 0.07)


def test_embed_unit_norm() -> None:
    z = Embed(20, 8)(torch.randn(5, 4, 5))
    torch.testing.assert_close(z.norm(dim=1), torch.ones(5))


# ------------------------------------------------------------------------------------------------ fused path
def _run_steps(memory: ContrastMemory, steps, scoring: str):
    """Two crd_pair_loss calls (memory updated between them) and a single backward, as with accumulation."""
    leaves, total = [], 0.0
    for z_s, z_t, index, cidx in steps:
        z_s, z_t = z_s.clone().requires_grad_(True), z_t.clone().requires_grad_(True)
        leaves += [z_s, z_t]
        total = total + 1.5 * crd_pair_loss(memory, z_s, z_t, index, cidx, 0.07, scoring=scoring)
    total.backward()
    return total.detach(), [leaf.grad for leaf in leaves]


@pytest.mark.parametrize("dense", [True, False])
def test_fused_scoring_equals_the_official_gather(monkeypatch, dense: bool) -> None:
    """Same loss, anchor gradients and bank updates as the official op order, over two steps and one backward."""
    import cktf.losses.nce_fused as nce_fused

    monkeypatch.setattr(nce_fused, "dense_is_cheaper", lambda *_: dense)  # force each branch (auto picks by size)
    gen = torch.Generator().manual_seed(6)
    n_data, d, k, bsz = 300, 32, 128, 16
    naive = ContrastMemory(d, n_data, generator=gen, chunk_elems=5 * (k + 1) * d)  # 4 chunks of <= 5 rows
    other = copy.deepcopy(naive)
    steps = []
    for offset in (0, 8):  # the second step re-uses 8 indices updated by the first
        index = torch.arange(offset, offset + bsz)
        cidx = _contrast_idx(index, k, n_data, gen)
        cidx[:, 5] = cidx[:, 4]  # a repeated negative (sampling with replacement): its gradient adds up
        steps.append((_unit(bsz, d, gen), _unit(bsz, d, gen), index, cidx))
    loss_n, grads_n = _run_steps(naive, steps, scoring="gather")
    loss_o, grads_o = _run_steps(other, steps, scoring="fused")
    torch.testing.assert_close(loss_o, loss_n, rtol=1e-6, atol=0)
    for g_o, g_n in zip(grads_o, grads_n):
        atol = 1e-5 * float(g_n.abs().max())  # another summation order: fp32 noise
        torch.testing.assert_close(g_o, g_n, rtol=1e-5, atol=atol)
    torch.testing.assert_close(other.memory_s, naive.memory_s, rtol=0, atol=0)
    torch.testing.assert_close(other.memory_t, naive.memory_t, rtol=0, atol=0)
    torch.testing.assert_close(other.z_s, naive.z_s, rtol=1e-6, atol=0)


def test_fused_nce_gradient_reaches_only_its_anchor_and_no_grad_skips_it() -> None:
    gen = torch.Generator().manual_seed(11)
    memory = ContrastMemory(16, 100, generator=gen)
    cidx = _contrast_idx(torch.arange(8), 20, 100, gen)
    z_s = _unit(8, 16, gen).requires_grad_(True)
    z_t = _unit(8, 16, gen).requires_grad_(True)
    kw = dict(temperature=0.07, n_data=100)
    fused_nce(z_s, memory.memory_t, cidx, z_buf=memory.z_s, **kw).backward()
    assert z_s.grad.abs().sum() > 0 and z_t.grad is None
    with torch.no_grad():
        loss = fused_nce(z_t, memory.memory_s, cidx, z_buf=memory.z_t, **kw)
    assert loss.grad_fn is None and torch.isfinite(loss)
    p_s, _ = memory.score(z_s, z_t, cidx, 0.07)  # Z set by the fused calls is the one score() uses
    torch.testing.assert_close(fused_nce(z_s, memory.memory_t, cidx, z_buf=memory.z_s, **kw), nce_loss(p_s, 100))


def _saved_bytes(memory: ContrastMemory, scoring: str, bsz: int, k: int) -> tuple[int, int]:
    """Bytes autograd keeps for backward (storages deduplicated), excluding references to the banks themselves."""
    gen = torch.Generator().manual_seed(7)
    d = memory.feat_dim
    bank_ptrs = {memory.memory_s.untyped_storage().data_ptr(), memory.memory_t.untyped_storage().data_ptr()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in bank_ptrs:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    index = torch.arange(bsz)
    z_s = _unit(bsz, d, gen).requires_grad_(True)
    z_t = _unit(bsz, d, gen).requires_grad_(True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = crd_pair_loss(
            memory, z_s, z_t, index, _contrast_idx(index, k, memory.n_data, gen), 0.07, scoring=scoring
        )
    loss.backward()
    return sum(seen.values()), max(seen.values())


def test_fused_saves_the_gather() -> None:
    bsz, k, d = 16, 1024, 128
    memory = ContrastMemory(d, 2000, generator=torch.Generator().manual_seed(8))
    naive_total, naive_max = _saved_bytes(copy.deepcopy(memory), "gather", bsz, k)
    fused_total, _ = _saved_bytes(copy.deepcopy(memory), "fused", bsz, k)
    gather = bsz * (k + 1) * d * 4  # one bank's [B, K+1, d] fp32 block
    assert naive_max >= gather and naive_total >= 2 * gather
    assert fused_total <= 2 * bsz * d * 4  # one [B, d] anchor gradient per side, nothing of size K


# ------------------------------------------------------------------------------------------------ stage pairs
def _ordered_blocks(gen: torch.Generator):
    s = torch.randn(6, 4, 4, 4, generator=gen)
    noise = [torch.randn(6, 4, 4, 4, generator=gen) for _ in range(2)]
    # cos after dim-0 normalisation: t1 = s (1), t2 = -s (-1), t3 = s + small noise (high), t0 = s + big noise (low)
    return s, [s + 3 * noise[0], s.clone(), -s, s + 0.3 * noise[1]]


@pytest.mark.parametrize(
    ("mapping", "expected"),
    [
        ("first", 0),
        ("last", 3),
        ("max_cos", 1),
        ("min_cos", 2),
        ("Largest", 1),
        ("Smallest", 2),
        ("First", 0),
    ],
)
def test_stage_mapping_picks_the_right_block(mapping: str, expected: int) -> None:
    s, blocks = _ordered_blocks(torch.Generator().manual_seed(9))
    s_k, t_k, j = select_stage_pair(s, blocks, mapping, nn.AdaptiveAvgPool2d(1))
    assert j == expected
    torch.testing.assert_close(t_k, F.normalize(blocks[expected], dim=0).mean((2, 3)))
    assert s_k.shape == t_k.shape == (6, 4)


def test_stage_ties_go_to_the_highest_index() -> None:
    s = torch.randn(3, 2, 2, 2, generator=torch.Generator().manual_seed(10))
    assert select_stage_pair(s, [s, s * 2, -s, -s], "max_cos", nn.Identity())[2] == 1
    assert select_stage_pair(s, [s, s * 2, -s, -s], "min_cos", nn.Identity())[2] == 3


def test_stage_normalises_over_the_batch_dim() -> None:
    s = torch.randn(5, 3, 2, 2, generator=torch.Generator().manual_seed(11))
    s_k, _, _ = select_stage_pair(s, [torch.randn(5, 3, 2, 2)], "first", nn.Identity())
    torch.testing.assert_close(s_k.norm(dim=0), torch.ones(12))  # every (c, h, w) column is unit over B
    assert not torch.allclose(s_k.norm(dim=1), torch.ones(5))  # ... and samples are not


def test_stage_zero_pads_the_student_channels() -> None:
    gen = torch.Generator().manual_seed(12)
    s = torch.randn(4, 2, 4, 4, generator=gen)
    teacher = [torch.randn(4, 6, 4, 4, generator=gen) for _ in range(2)]
    s_k, t_k, _ = select_stage_pair(s, teacher, "max_cos", nn.Identity())
    assert s_k.shape == t_k.shape == (4, 6 * 16)
    padded = s_k.view(4, 6, 4, 4)
    assert torch.equal(padded[:, :2], torch.zeros(4, 2, 4, 4)) and torch.equal(padded[:, 4:], torch.zeros(4, 2, 4, 4))
    torch.testing.assert_close(padded[:, 2:4], F.normalize(s, dim=0))
    with pytest.raises(ValueError, match="even"):
        select_stage_pair(s, [torch.randn(4, 5, 4, 4)], "first", nn.Identity())  # odd difference
    with pytest.raises(ValueError, match="even"):
        select_stage_pair(s, [torch.randn(4, 6, 2, 2)], "first", nn.Identity())  # spatial mismatch
    with pytest.raises(ValueError, match="mapping"):
        select_stage_pair(s, teacher, "middle", nn.Identity())


def test_stage_random_uses_the_generator() -> None:
    s, blocks = _ordered_blocks(torch.Generator().manual_seed(13))
    pool = nn.AdaptiveAvgPool2d(1)

    def draws(seed: int) -> list[int]:
        gen = torch.Generator().manual_seed(seed)
        return [select_stage_pair(s, blocks, "random", pool, generator=gen)[2] for _ in range(40)]

    state = torch.get_rng_state()
    first = draws(0)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is untouched
    assert first == draws(0) and first != draws(1)
    assert set(first) == {0, 1, 2, 3}


def test_stage_gradient_reaches_the_student() -> None:
    gen = torch.Generator().manual_seed(14)
    s = torch.randn(4, 2, 4, 4, generator=gen, requires_grad=True)
    s_k, t_k, _ = select_stage_pair(s, [torch.randn(4, 4, 4, 4, generator=gen)], "last", nn.AvgPool2d(2))
    (s_k * torch.randn_like(s_k)).sum().backward()
    assert s.grad is not None and s.grad.abs().sum() > 0 and not t_k.requires_grad


def test_fsp_needs_equal_channels() -> None:
    g = [torch.randn(2, 3, 4, 4), torch.randn(2, 4, 4, 4)]
    with pytest.raises(ValueError, match="channels"):
        fsp_loss(g, [torch.randn(2, 3, 4, 4), torch.randn(2, 5, 4, 4)])
