"""Contrastive-memory cost: peak memory and time of the CKTF block vs CRD vs KD, per scoring path, side by side.

The *block* is one distillation term's forward and backward on fixed features: the CKTF term (five critics:
stem, three stages, final; each with its heads, two ``N_data x 128`` banks and the NCE), the CRD term (one
critic) or the KD term (logits only), at batch 64 for N (``nce_k``) in {4096, 16384}. The models run once, in
the parent, to produce real ``resnet32x4 -> resnet8x4`` features (random weights: shapes are what matter here);
every configuration then runs in a fresh subprocess so its peak memory is its own:

* CPU: growth of the resident set over the step (``/proc/self/statm`` polled every 0.2 ms, and
  ``getrusage`` peak), above what the process held before it (features, banks, heads);
* CUDA: ``torch.cuda.max_memory_allocated`` above the allocation before the step.

Scoring paths (``cktf.losses.SCORINGS``, all the same loss and gradients up to fp32 rounding; tested):
``gather`` = the official op order (the reference path),
``fused`` = the closed-form NCE gradient in one pass (new, the default).

    .venv/bin/python benchmarks/contrast_memory.py                 # CPU here; --device cuda on a GPU
    .venv/bin/python benchmarks/contrast_memory.py --ks 4096 --scorings gather,fused --steps 2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cktf.data import ContrastConfig, ContrastSampler  # noqa: E402
from cktf.distillers import DistillContext, build_distiller  # noqa: E402
from cktf.models import DistillOutput, create_model  # noqa: E402

MIB = 2**20
PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


class PeakRSS:
    """Highest resident set seen while the block runs (a polling thread; torch ops release the GIL)."""

    def __enter__(self) -> PeakRSS:
        self.base, self.peak, self._stop = rss_bytes(), rss_bytes(), False
        self.ru0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop:
            self.peak = max(self.peak, rss_bytes())
            time.sleep(0.0002)

    def __exit__(self, *exc) -> None:
        self._stop = True
        self._thread.join()
        ru1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        if ru1 > self.ru0:  # the kernel's high-water mark moved: it saw a peak the poller may have missed
            self.peak = max(self.peak, ru1)

    @property
    def growth(self) -> int:
        return max(0, self.peak - self.base)


def make_features(args, path: Path) -> None:
    """Real feature shapes of the pair (one no-grad forward each), saved for the subprocesses."""
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, 32, 32)
    out = {}
    with torch.no_grad():
        for role, name in (("s", args.student), ("t", args.teacher)):
            out[role] = create_model(name, 100).eval().forward_distill(x)._asdict()
    torch.save(out, path)


def _leaf(t, grad: bool):
    if isinstance(t, torch.Tensor):
        return t.detach().clone().requires_grad_(grad)
    if isinstance(t, (list, tuple)):
        return type(t)(_leaf(v, grad) for v in t)
    return t


def one(args, method: str, scoring: str, k: int, feats: Path) -> dict:
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    saved = torch.load(feats)
    s_out = DistillOutput(**{f: _leaf(saved["s"][f], True) for f in saved["s"]})
    t_out = DistillOutput(**{f: _leaf(saved["t"][f], False) for f in saved["t"]})
    s_out, t_out = (_to(o, device) for o in (s_out, t_out))
    params = {} if method == "kd" else {"nce_k": k, "scoring": scoring}
    ctx = DistillContext(num_classes=100, num_train_samples=args.n_data, image_size=32)
    term = build_distiller(method, create_model(args.student, 100), create_model(args.teacher, 100), params, ctx)
    term = term.terms[method].to(device).train()
    labels = torch.arange(args.n_data) % 100  # CIFAR-100: 500 per class, label-aware negatives
    sampler = ContrastSampler(labels.numpy(), ContrastConfig(k=k), device)
    gen = torch.Generator().manual_seed(1)

    def batch():
        index = torch.randperm(args.n_data, generator=gen)[: args.batch].to(device)
        out = {"index": index, "target": labels.to(device)[index]}
        if method != "kd":
            out["contrast_idx"] = sampler.sample(index, gen)
        return out

    def step(b) -> None:
        loss = sum(term(s_out, t_out, b).values())
        loss.backward()
        s_out.pooled.grad = None

    batches = [batch() for _ in range(args.steps + 1)]
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step(batches[0])
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - before
    else:
        with PeakRSS() as mon:
            step(batches[0])
        peak = mon.growth
    times = []
    for b in batches[1:]:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        step(b)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return {"method": method, "scoring": scoring, "K": k, "peak_MiB": peak / MIB, "ms": 1e3 * statistics.median(times)}


def _to(out: DistillOutput, device: torch.device) -> DistillOutput:
    def move(t):
        if isinstance(t, torch.Tensor):
            return t.to(device) if t.device != device else t
        if isinstance(t, (list, tuple)):
            return type(t)(move(v) for v in t)
        return t

    return DistillOutput(*(move(v) for v in out))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--student", default="resnet8x4")
    p.add_argument("--teacher", default="resnet32x4")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--n-data", type=int, default=50_000, help="bank rows (CIFAR-100: 50,000)")
    p.add_argument("--ks", default="4096,16384", help="negatives N (nce_k)")
    p.add_argument("--scorings", default="gather,fused")
    p.add_argument("--steps", type=int, default=3, help="timed steps after the measured first one")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--one", nargs=4, metavar=("METHOD", "SCORING", "K", "FEATURES"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        method, scoring, k, feats = args.one
        print(json.dumps(one(args, method, scoring, int(k), Path(feats))))
        return
    ks = [int(k) for k in args.ks.split(",")]
    scorings = args.scorings.split(",")
    print(
        f"contrastive block, {args.teacher} -> {args.student}, batch {args.batch}, N_data {args.n_data}, d 128, "
        f"device {args.device}, {args.threads} thread(s); peak = memory growth during one forward+backward"
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        feats = Path(tmp) / "features.pt"
        make_features(args, feats)
        configs = [("kd", "-", ks[0])]
        configs += [(m, sc, k) for k in ks for m in ("crd", "cktf") for sc in scorings]
        for method, scoring, k in configs:
            cmd = [sys.executable, __file__, "--one", method, scoring, str(k), str(feats)]
            cmd += ["--device", args.device, "--student", args.student, "--teacher", args.teacher]
            cmd += ["--batch", str(args.batch), "--n-data", str(args.n_data), "--steps", str(args.steps)]
            cmd += ["--threads", str(args.threads)]
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode:
                print(f"{method} {scoring} K={k} failed:\n{res.stderr[-2000:]}", flush=True)
                continue
            r = json.loads(res.stdout.strip().splitlines()[-1])
            rows.append(r)
            print(f"  {method:5} {scoring:10} K={k:<6} peak {r['peak_MiB']:8.1f} MiB  {r['ms']:8.1f} ms", flush=True)
    print("\n| block | scoring | N | peak MiB | ms/step | peak vs gather | time vs gather |")
    print("|---|---|---|---|---|---|---|")
    ref = {(r["method"], r["K"]): r for r in rows if r["scoring"] == "gather"}
    for r in rows:
        g = ref.get((r["method"], r["K"]))
        mem = f"{r['peak_MiB'] / g['peak_MiB']:.2f}x" if g and g["peak_MiB"] > 0 else "-"
        tim = f"{r['ms'] / g['ms']:.2f}x" if g else "-"
        n = "-" if r["method"] == "kd" else r["K"]
        print(f"| {r['method']} | {r['scoring']} | {n} | {r['peak_MiB']:.1f} | {r['ms']:.1f} | {mem} | {tim} |")


if __name__ == "__main__":
    main()
