"""Exact data parallelism (docs/algorithm.md §12, §13): two CPU workers (gloo) against one process, through the real
``prepare_run`` / ``fit`` / ``train_step`` and loaders.

One spawn of two workers runs every data-parallel scenario (a process start costs seconds on this machine); the
one-process references run here, without a process group (today's code path). Those tests train on the shared data
(``slow``, 30-60 s together on 2 cores); the loader, memory-size and queue tests below them run in one process.

Tolerances. The runs differ only in the order of fp32 sums (per-worker partial sums, SyncBatchNorm's combination of
per-worker statistics, the mean of ``Z``); after 2 epochs x 2 SGD steps at lr 0.01: losses to a relative 1e-4;
weights, banks, ``Z`` and BN statistics elementwise to ``rtol = 1e-4, atol = 1e-5``; gradients and momentum buffers,
all of a run's as one vector, to a relative L2 distance of 1e-3 with BN in eval mode and 1e-2 with synchronised
train-mode BN. Measured: losses within 1e-6, momentum within 2e-6 (as between one process at 1 and 2 torch threads),
except where a ReLU input within a few ulps of zero switched sides, which changes that position's gradient entirely
(KD: 2.7e-4; one such switch in 131,072 positions of a step gave 1.7e-3 with an earlier SyncBatchNorm). The
SyncBatchNorm layer alone is checked to 1e-5. Across the two workers, and between an interrupted-and-resumed run and
an uninterrupted one, everything is bitwise equal.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from cktf.data import BatchLoader, ContrastConfig, DataConfig, load_splits
from cktf.distillers import DistillContext, build_distiller, objective
from cktf.distributed import DistContext, SyncBatchNorm, convert_sync_batchnorm, launch, shard_bounds
from cktf.errors import ConfigError
from cktf.losses import ContrastQueue, built_memory_bytes, contrast_memory_bytes
from cktf.models import create_model
from cktf.train import OptimConfig, RunConfig, TrainConfig, fit, prepare_run
from cktf.train.engine import train_step
from cktf.train.runner import _loaders

W, B, K = 2, 16, 64
#: the runs compared with fit: plain CE, KD, CRD and CKTF (banks), and CKTF on the FIFO queue (an extension)
FITS = {
    "ce": ("ce", {}),
    "kd": ("kd", {}),
    "crd": ("crd", {"nce_k": K}),
    "cktf": ("cktf", {"nce_k": K}),
    "cktf-queue": ("cktf", {"nce_k": 48, "memory": "queue"}),
}
CLOSE = dict(rtol=1e-4, atol=1e-5)
LOSS_REL = 1e-4
#: gradients: relative L2 distance of all of them, with BN in eval mode and with synchronised BN (module docstring)
GRAD_REL, GRAD_REL_SYNC_BN = 1e-3, 1e-2


def _cfg(data: DataConfig, out, distiller: str, params: dict, epochs: int = 2, **train) -> RunConfig:
    return RunConfig(
        student="resnet8",
        distiller=distiller,
        distill_params=params,
        data=data,
        optim=OptimConfig(lr=0.01, milestones=(1,)),
        train=TrainConfig(
            epochs=epochs,
            batch_size=B,
            eval_batch_size=16,
            max_steps_per_epoch=2,
            progress=False,
            **train,
        ),
        out_dir=str(out),
    )


def _teacher() -> nn.Module:
    torch.manual_seed(123)
    return create_model("resnet14", num_classes=10)


def _prepare(cfg: RunConfig, splits, teacher):
    if not objective(cfg.distiller).needs_teacher:
        return prepare_run(cfg, splits=splits)
    return prepare_run(cfg, splits=splits, teacher=copy.deepcopy(teacher), teacher_arch="resnet14")


def _memory(distiller) -> dict[str, torch.Tensor]:
    """Every bank, queue, pointer and ``Z`` of the run, by state-dict key."""
    return {k: v.detach().clone() for k, v in distiller.state_dict().items() if ".memory." in k}


def _bn_eval(distiller) -> None:
    for m in distiller.student.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def _steps(p, loader, steps: int, bn_eval: bool, dist: DistContext | None) -> dict:
    """``steps`` real training steps on ``loader``'s first batches: every step's memory and bytes moved, the last
    step's gradients (summed over the workers) and the weights after it."""
    opt = torch.optim.SGD(p.distiller.trainable_parameters(), lr=0.01, momentum=0.9)
    p.distiller.train()
    if bn_eval:
        _bn_eval(p.distiller)
    loader.set_epoch(0)
    out = {"memory": [], "bytes": [], "losses": []}
    for step, batch in enumerate(loader):
        if step >= steps:
            break
        if dist is not None:
            dist.reset_counters()
            res = train_step(p.distiller, opt, batch, p.device, dist=dist, global_rows=loader.global_batch_rows(step))
            out["bytes"].append(dict(dist.bytes))
        else:
            res = train_step(p.distiller, opt, batch, p.device)
        rows = batch["image"].shape[0]
        out["losses"].append({k: float(v.detach()) * rows for k, v in res.losses.items()})  # summable
        out["memory"].append(_memory(p.distiller))
    out["grads"] = {n: q.grad.clone() for n, q in p.distiller.named_parameters() if q.grad is not None}
    out["weights"] = {n: q.detach().clone() for n, q in p.distiller.named_parameters() if q.requires_grad}
    return out


def _odd_loader(p, batch_size: int) -> BatchLoader:
    """A train loader of an odd batch: a 2-worker step splits it unevenly (a last batch's case)."""
    k = p.distiller.contrast_negatives()
    contrast = ContrastConfig(k=k, replace=p.splits.contrast_replace) if k else None
    return BatchLoader(p.splits.train, p.splits.spec, batch_size, train=True, seed=p.cfg.train.seed, contrast=contrast)


class _Block(nn.Module):
    """A residual block: conv-BN-ReLU-conv-BN plus a conv-BN shortcut."""

    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
        self.c2, self.b2 = nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
        self.dc, self.db = nn.Conv2d(3, 4, 1, bias=False), nn.BatchNorm2d(4)

    def forward(self, x):
        return torch.relu(self.b2(self.c2(torch.relu(self.b1(self.c1(x))))) + self.db(self.dc(x)))


def _block_case():
    torch.manual_seed(0)
    block = _Block()
    for m in block.modules():
        if isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight)
            nn.init.normal_(m.bias)
    return block, torch.randn(10, 3, 6, 6), torch.randn(10, 4, 6, 6)


def _block_step(block: nn.Module, x: torch.Tensor, g: torch.Tensor, dist: DistContext | None) -> dict:
    """One forward and backward of ``block`` on ``x`` (this worker's rows of 10), loss ``sum(y g) / 10``."""
    x = x.clone().requires_grad_()
    if dist is None:
        y = block(x)
        (y * g).sum().div(10).backward()
    else:
        with dist.step(10):
            y = block(x)
            (y * g).sum().div(10).backward()
        dist.all_reduce_grads(block.parameters())
    out = {"y": y.detach(), "x.grad": x.grad}
    out.update({f"{n}.grad": q.grad for n, q in block.named_parameters()})
    out.update({n: b.clone() for n, b in block.named_buffers()})
    return out


def _workers(rank: int, world: int, data: DataConfig, splits, teacher, root: str) -> dict:
    """Every data-parallel scenario, on each of the two workers (spawned by :func:`launch`)."""
    root_p = Path(root)
    got: dict = {"fits": {}}
    block, x, g = _block_case()  # SyncBatchNorm alone: shards of 5 rows
    a, b = shard_bounds(10, rank, world)
    got["block"] = _block_step(convert_sync_batchnorm(block), x[a:b], g[a:b], DistContext.from_torch())
    for key, (name, params) in FITS.items():  # sync_bn: the global batch's statistics, as one process
        p = _prepare(_cfg(data, root_p / f"dp-{key}", name, params, sync_bn=True), splits, teacher)
        fit(p)
        got["fits"][key] = {"memory": _memory(p.distiller), "bytes": dict(p.dist.bytes)}
    # interrupted after epoch 0, resumed by both workers from rank 0's last.pt
    cut = _cfg(data, root_p / "dp-cut", "cktf", {"nce_k": K}, epochs=1, sync_bn=True)
    fit(_prepare(cut, splits, teacher))
    fit(_prepare(cut.replace(train=cut.train.replace(epochs=2)), splits, teacher))
    # per-worker BN (the default): BN in train mode differs from one process, in eval mode it does not
    for mode in ("train", "bn_eval"):
        p = _prepare(_cfg(data, root_p / f"steps-{mode}", "cktf", {"nce_k": K}), splits, teacher)
        got[mode] = _steps(p, _loaders(p)[0], 3, mode == "bn_eval", p.dist)
    # shards of 2 and 3 rows (sync_bn): variable-size gathers and weights
    p = _prepare(_cfg(data, root_p / "steps-odd", "cktf", {"nce_k": K}, sync_bn=True), splits, teacher)
    loader = _odd_loader(p, 5)
    loader.set_shard(rank, world)
    got["odd"] = _steps(p, loader, 2, False, p.dist)
    try:
        _prepare(_cfg(data, root_p / "bad", "ce", {}).replace(train=TrainConfig(batch_size=15)), splits, teacher)
        got["bad_batch"] = None
    except ConfigError as exc:
        got["bad_batch"] = str(exc)
    return got


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def small(data_root):
    cfg = DataConfig(dataset="cifar10", root=str(data_root), train_subset=256, test_subset=48, val_fraction=0.125)
    return cfg, load_splits(cfg, progress=False)


@pytest.fixture(scope="module")
def runs(small, tmp_path_factory):
    """The two-worker scenarios (one spawn) and their one-process references."""
    data, splits = small
    root = tmp_path_factory.mktemp("ddp")
    teacher = _teacher()
    ranks = launch(_workers, W, data, splits, teacher, str(root))
    ref: dict = {"fits": {}}
    for key, (name, params) in FITS.items():
        p = _prepare(_cfg(data, root / f"one-{key}", name, params), splits, teacher)
        fit(p)
        ref["fits"][key] = {"memory": _memory(p.distiller)}
    for mode in ("train", "bn_eval"):
        p = _prepare(_cfg(data, root / f"one-steps-{mode}", "cktf", {"nce_k": K}), splits, teacher)
        ref[mode] = _steps(p, _loaders(p)[0], 3, mode == "bn_eval", None)
    p = _prepare(_cfg(data, root / "one-steps-odd", "cktf", {"nce_k": K}), splits, teacher)
    ref["odd"] = _steps(p, _odd_loader(p, 5), 2, False, None)
    block, x, g = _block_case()
    ref["block"] = _block_step(block, x, g, None)
    return root, ranks, ref


def _metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]


def _last(path: Path) -> dict:
    return torch.load(path / "last.pt", weights_only=True)


def _assert_close_dicts(a: dict, b: dict, **tol) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=lambda m, k=k: f"{k}: {m}", **tol)


def _rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / a.float().norm().clamp_min(1e-30))


def _assert_near_grads(a: dict, b: dict, rel: float = GRAD_REL_SYNC_BN) -> None:
    """All of a run's gradients as one vector (a switched ReLU moves one parameter's a lot, the whole little)."""
    assert a.keys() == b.keys()
    flat = [torch.cat([x[k].reshape(-1).float() for k in a]) for x in (a, b)]
    assert _rel_l2(*flat) < rel, _rel_l2(*flat)


# ---------------------------------------------------------------------------------------------- tests
@pytest.mark.slow
@pytest.mark.parametrize("key", list(FITS))
def test_two_workers_with_sync_bn_train_as_one_process(runs, key):
    """CE, KD, CRD, CKTF (and CKTF on the queue): the global batch of B over 2 workers gives one process's losses,
    accuracies, eval metrics, weights, optimiser state and memory, epoch after epoch."""
    root, ranks, ref = runs
    one, two = _metrics(root / f"one-{key}"), _metrics(root / f"dp-{key}")
    assert len(one) == len(two) == 2
    for a, b in zip(one, two):
        for k in a:
            if k.startswith("loss/") or k.endswith("_loss"):
                assert b[k] == pytest.approx(a[k], rel=LOSS_REL), k
            elif k.endswith("_acc") or k.endswith("_acc5") or k in ("epoch", "lr"):
                assert b[k] == a[k], k  # the same counts of the same images
    s1, s2 = _last(root / f"one-{key}"), _last(root / f"dp-{key}")
    _assert_close_dicts(s1["distiller"], s2["distiller"], **CLOSE)  # student, heads, banks, Z, BN statistics
    m1 = {i: v["momentum_buffer"] for i, v in s1["optimizer"]["state"].items()}
    m2 = {i: v["momentum_buffer"] for i, v in s2["optimizer"]["state"].items()}
    _assert_near_grads(m1, m2)  # the summed gradients of four steps
    # the memory is bitwise the same on both workers, and (to float tolerance) one process's
    _assert_close_dicts(ranks[0]["fits"][key]["memory"], ranks[1]["fits"][key]["memory"], rtol=0, atol=0)
    _assert_close_dicts(ref["fits"][key]["memory"], ranks[0]["fits"][key]["memory"], **CLOSE)
    assert (root / f"dp-{key}" / "model_best.safetensors").exists()
    if "queue" in key:
        ptr = [v for k, v in ranks[0]["fits"][key]["memory"].items() if k.endswith(".ptr")]
        assert ptr and all(int(x) == (2 * 2 * B) % 48 for x in ptr)  # 4 steps of B keys enqueued, modulo K


@pytest.mark.slow
def test_sync_batchnorm_is_batchnorm_over_the_global_batch(runs):
    """A residual block of three BN layers on 10 rows: 2 workers x 5 rows with SyncBatchNorm against nn.BatchNorm2d on
    all 10: outputs, input and parameter gradients, running statistics."""
    _, ranks, ref = runs
    one, (r0, r1) = ref["block"], (ranks[0]["block"], ranks[1]["block"])
    for key in ("y", "x.grad"):
        torch.testing.assert_close(torch.cat([r0[key], r1[key]]), one[key], rtol=1e-5, atol=1e-6, msg=key)
    for key in one:
        if key not in ("y", "x.grad"):
            torch.testing.assert_close(r0[key], one[key], rtol=1e-5, atol=1e-6, msg=key)
            torch.testing.assert_close(r1[key], r0[key], rtol=0, atol=0, msg=key)
    assert isinstance(convert_sync_batchnorm(_Block()).b1, SyncBatchNorm)


@pytest.mark.slow
def test_per_worker_batchnorm_is_the_only_difference(runs):
    """Without sync_bn each worker normalises with its own rows' statistics: in train mode the 2-worker step differs
    from one process's; with the student's BN layers in eval mode (running statistics) it is one process's again:
    CKTF's normalisation over the batch, the banks, Z and the gradients are global."""
    _, ranks, ref = runs
    for step in range(3):
        _assert_close_dicts(ref["bn_eval"]["memory"][step], ranks[0]["bn_eval"]["memory"][step], **CLOSE)
    _assert_near_grads(ref["bn_eval"]["grads"], ranks[0]["bn_eval"]["grads"], GRAD_REL)
    _assert_close_dicts(ref["bn_eval"]["weights"], ranks[0]["bn_eval"]["weights"], **CLOSE)
    g1, g2 = ref["train"]["grads"], ranks[0]["train"]["grads"]
    assert max(_rel_l2(g1[k], g2[k]) for k in g1) > 0.05  # train-mode BN over 8 rows, not 16: not rounding
    # the losses of a worker are its rows' share: the two workers' sums are one process's (BN eval)
    for step in range(3):
        for k, v in ref["bn_eval"]["losses"][step].items():
            both = ranks[0]["bn_eval"]["losses"][step][k] + ranks[1]["bn_eval"]["losses"][step][k]
            assert both == pytest.approx(v, rel=LOSS_REL), (step, k)


@pytest.mark.slow
def test_the_memory_is_identical_on_every_worker_after_every_step(runs):
    _, ranks, _ = runs
    for mode in ("train", "bn_eval", "odd"):
        for a, b in zip(ranks[0][mode]["memory"], ranks[1][mode]["memory"], strict=True):
            _assert_close_dicts(a, b, rtol=0, atol=0)
        _assert_close_dicts(ranks[0][mode]["weights"], ranks[1][mode]["weights"], rtol=0, atol=0)


@pytest.mark.slow
def test_uneven_shards_are_one_process_step(runs):
    """A global batch of 5 rows over 2 workers (2 and 3 rows): weights, variable-size gathers and SyncBatchNorm
    give one process's step."""
    _, ranks, ref = runs
    for step in range(2):
        _assert_close_dicts(ref["odd"]["memory"][step], ranks[0]["odd"]["memory"][step], **CLOSE)
    _assert_near_grads(ref["odd"]["grads"], ranks[0]["odd"]["grads"])
    _assert_close_dicts(ref["odd"]["weights"], ranks[0]["odd"]["weights"], **CLOSE)


@pytest.mark.slow
def test_bytes_all_gathered_per_step_are_the_shapes(runs):
    """CKTF resnet14 -> resnet8, B = 16, d = 128, 5 critics: each critic gathers the global batch's student and
    teacher keys (B x 2d fp32), the step its indices once (B int64); the gradients are all-reduced once."""
    _, ranks, ref = runs
    d, critics = 128, 5
    later = ranks[0]["train"]["bytes"][1]  # the second step: Z is set, nothing else is reduced
    assert later["all_gather/memory"] == critics * B * 2 * d * 4 == 81_920
    assert later["all_gather/index"] == B * 8
    n_params = sum(v.numel() for v in ref["train"]["grads"].values())
    assert later["all_reduce/grads"] == n_params * 4
    # CKTF's normalisation over the batch: per stage one [C, H, W] sum of squares for the student (and its
    # backward) and one for the teacher block; resnet8 / resnet14 stages 16x32x32, 32x16x16, 64x8x8
    stage = (16 * 32 * 32 + 32 * 16 * 16 + 64 * 8 * 8) * 4
    assert later["all_reduce/stage_norm"] == 2 * stage and later["all_reduce/stage_norm/backward"] == stage
    first = ranks[0]["train"]["bytes"][0]
    assert first["all_reduce/mean"] == critics * 2 * 16  # the one-shot Z of both sides: a float64 sum and count
    assert "all_reduce/mean" not in later
    assert ranks[0]["train"]["bytes"] == ranks[1]["train"]["bytes"]


@pytest.mark.slow
def test_resume_with_two_workers_continues_exactly(runs):
    """Epoch 0, stopped, then both workers resume from rank 0's last.pt: bitwise the uninterrupted 2-worker run."""
    root, _, _ = runs
    a, b = _last(root / "dp-cktf"), _last(root / "dp-cut")
    assert a["epoch"] == b["epoch"] == 1
    _assert_close_dicts(a["distiller"], b["distiller"], rtol=0, atol=0)
    for x, y in zip(_metrics(root / "dp-cktf"), _metrics(root / "dp-cut"), strict=True):
        assert {k: v for k, v in x.items() if k.startswith("loss/")} == {
            k: v for k, v in y.items() if k.startswith("loss/")
        }


@pytest.mark.slow
def test_a_batch_the_workers_cannot_share_is_refused_before_training(runs):
    _, ranks, _ = runs
    assert ranks[0]["bad_batch"] == ranks[1]["bad_batch"]
    assert "train.batch_size" in ranks[0]["bad_batch"] and "2 workers" in ranks[0]["bad_batch"]


# ------------------------------------------------------------------------------ in one process, no process group
def test_worker_shards_of_every_step_are_the_one_process_batch(small):
    """Each worker's rows of a global batch, with the negatives drawn for the whole global batch: concatenated in rank
    order they are one process's batch, image for image and negative for negative (a last batch of 5 rows: shards of
    2 and 3; a last batch of 1 row, fewer than the workers: skipped)."""
    _, splits = small
    n = len(splits.train)
    for bs in (16, n - 1):
        one = BatchLoader(splits.train, splits.spec, bs, train=True, seed=3, contrast=ContrastConfig(k=K))
        shards = []
        for r in range(W):
            loader = BatchLoader(splits.train, splits.spec, bs, train=True, seed=3, contrast=ContrastConfig(k=K))
            loader.set_shard(r, W)
            shards.append(list(loader))
        whole = list(one)
        if n % bs and n % bs < W:
            whole = whole[:-1]
        assert len(shards[0]) == len(shards[1]) == len(whole)
        for i, batch in enumerate(whole):
            assert shards[0][i]["image"].shape[0] == shard_bounds(batch["image"].shape[0], 0, W)[1]
            for key in batch:
                torch.testing.assert_close(torch.cat([s[i][key] for s in shards]), batch[key], rtol=0, atol=0)


def test_evaluation_shards_cover_the_split_once(small):
    _, splits = small
    seen = []
    for r in range(W):
        loader = BatchLoader(splits.test, splits.spec, 16, train=False)
        loader.set_shard(r, W, "batches")
        seen += [b["index"] for b in loader]
    assert sorted(torch.cat(seen).tolist()) == list(range(len(splits.test)))


def test_memory_estimate_matches_the_built_tensors():
    """contrast_memory_bytes and Objective.memory_bytes against the buffers of built distillers (bank and queue)."""
    n = 300
    ctx = DistillContext(num_classes=10, num_train_samples=n, image_size=32)
    for name, params in (
        ("crd", {"nce_k": K}),
        ("cktf", {"nce_k": K}),
        ("cktf", {"nce_k": K, "memory": "queue", "feat_dim": 32}),
        ("cktf+kd", {"nce_k": K}),
    ):
        torch.manual_seed(0)
        d = build_distiller(name, create_model("resnet8", 10), create_model("resnet14", 10), params, ctx)
        actual = built_memory_bytes(d)
        n_stages = len(d.student.feature_info) - 1
        assert objective(name).memory_bytes(params, n, n_stages) == actual, name
    assert contrast_memory_bytes("bank", 128, 45_000, 16_384, critics=5) == 45_000 * 128 * 4 * 2 * 5
    assert contrast_memory_bytes("queue", 128, 45_000, 16_384, critics=5) == 16_384 * 128 * 4 * 2 * 5
    cfg = objective("cktf").parse({})
    with pytest.raises(ConfigError, match=r"memory: queue .* or feat_dim <= 58"):
        cfg.check_memory_fits(45_000, 3, 100 * 2**20)
    cfg.check_memory_fits(45_000, 3, 300 * 2**20)


def test_queue_is_a_fifo_of_the_last_k_keys():
    torch.manual_seed(0)
    q = ContrastQueue(feat_dim=4, size=6, n_data=100)
    start_s = q.queue_s.clone()
    keys = [torch.nn.functional.normalize(torch.randn(4, 4), dim=1) for _ in range(3)]
    q.update(keys[0], -keys[0])
    assert torch.equal(q.queue_s[:4], keys[0]) and torch.equal(q.queue_t[:4], -keys[0])
    assert torch.equal(q.queue_s[4:], start_s[4:]) and int(q.ptr) == 4
    q.update(keys[1], -keys[1])  # wraps: two at the end, two over the oldest
    assert torch.equal(q.queue_s[4:], keys[1][:2]) and torch.equal(q.queue_s[:2], keys[1][2:])
    assert torch.equal(q.queue_s[2:4], keys[0][2:]) and int(q.ptr) == 2
    big = torch.nn.functional.normalize(torch.randn(8, 4), dim=1)
    q.update(big, -big)  # more keys than the queue holds: the newest 6, in FIFO positions
    assert int(q.ptr) == (2 + 8) % 6
    for i in range(2, 8):
        assert torch.equal(q.queue_s[(2 + i) % 6], big[i])


def test_queue_step_runs_and_starts_near_log_k_plus_one():
    """A CKTF step on the queue: no contrast_idx is drawn, every critic's loss starts near 2 (log(K+1) + 1)."""
    torch.manual_seed(0)
    ctx = DistillContext(num_classes=10, num_train_samples=500, image_size=32)
    d = build_distiller(
        "cktf", create_model("resnet8", 10), create_model("resnet14", 10), {"nce_k": 256, "memory": "queue"}, ctx
    )
    assert d.contrast_negatives() is None
    assert d.run_params() == {"cktf/pairing": "official", "cktf/memory": "queue"}
    batch = {"image": torch.randn(8, 3, 32, 32), "target": torch.randint(0, 10, (8,))}
    out = d(batch)
    sum(out.losses.values()).backward()
    final = out.losses["cktf_final"].detach() / 0.8
    assert float(final) == pytest.approx(2 * (torch.log(torch.tensor(257.0)) + 1), rel=0.25)
    assert all(int(c.memory.ptr) == 8 for c in d.terms["cktf"].critics.values())
    assert d.student.classifier_module().weight.grad is not None
