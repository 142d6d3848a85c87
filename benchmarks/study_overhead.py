"""Study overhead: wall time of a study of tiny trials vs the time its trials spent training, and the node's
dataset memory with 1, 2 and 4 concurrent trials.

For each concurrency ``c`` a fresh local Ray runs one study (``cktf.tune.run.study.run_study``, the path behind
``cktf tune``): ``--trials`` CKTF trials of ``--epochs`` short epochs (``--steps`` steps each) on the whole
CIFAR-10 train split (50k images, 154 MB: large enough to see copies), ``c`` at a time with ``2/c`` CPUs each,
ASHA off (every trial runs to the end), MLflow in a temporary sqlite file, the teacher a saved checkpoint.
Printed side by side:

* wall time of ``ray.init`` and of the study, the trials' summed training time (train + eval epochs, from
  the trial index), their summed process time (Tune's ``time_total_s``), and the ideal wall time
  ``sum(training) / c``; ``overhead`` = study wall / ideal;
* per trial, from Tune's per-report ``time_this_iter_s`` minus the epoch's own train + eval time: start-up
  (worker process, imports, object-store reads, model build: the first report's excess) and per-epoch
  checkpointing + reporting (``last.pt`` with the memory banks, ``tune.report``: the later reports' excess), and
  the checkpoint size;
* on the driver: decoding/loading the data, ``ray.put`` of the dataset, loading the teacher, and the MLflow
  callback's own time (every ``on_trial_*`` hook, timed in place);
* node memory, sampled every 0.1 s while the study runs: the object store's shared memory (``Shmem`` of
  ``/proc/meminfo``, above the value before the study), and over the trial processes at their peak
  concurrency: summed private memory (``Private_*``), summed ``Pss`` (shared pages split among the processes
  sharing them, so the dataset counts once) and summed ``Rss`` (the dataset counts once per trial). The
  target is the dataset held once per node: shared memory ~ one dataset, private memory free of it.

    .venv/bin/python benchmarks/study_overhead.py --root DATA_ROOT                 # c = 1, 2, 4 (~10 min)
    .venv/bin/python benchmarks/study_overhead.py --concurrency 2 --trials 2       # one quick point
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MIB = 2**20


def meminfo(key: str) -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


def trial_processes() -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if b"ImplicitFunc" in (d / "cmdline").read_bytes():
                    pids.append(int(d.name))
            except OSError:
                pass
    return pids


def rollup(pid: int) -> dict[str, int]:
    out = {"rss": 0, "pss": 0, "private": 0}
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            key, _, rest = line.partition(":")
            kb = int(rest.split()[0]) * 1024 if rest.strip() else 0
            if key == "Rss":
                out["rss"] = kb
            elif key == "Pss":
                out["pss"] = kb
            elif key in ("Private_Clean", "Private_Dirty"):
                out["private"] += kb
    except (OSError, ValueError, IndexError):
        pass
    return out


class NodeMemory:
    """Samples the node's shared memory and the trial processes' memory while a study runs."""

    def __init__(self, period: float = 0.1):
        self.period, self.stop = period, False
        self.shmem0 = meminfo("Shmem")
        self.shmem_peak = self.shmem0
        self.at_peak = {"trials": 0, "rss": 0, "pss": 0, "private": 0}

    def __enter__(self) -> NodeMemory:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _run(self) -> None:
        while not self.stop:
            self.shmem_peak = max(self.shmem_peak, meminfo("Shmem"))
            pids = trial_processes()
            rows = [rollup(p) for p in pids]
            total = {k: sum(r[k] for r in rows) for k in ("rss", "pss", "private")}
            if len(pids) > self.at_peak["trials"] or (
                len(pids) == self.at_peak["trials"] and total["rss"] > self.at_peak["rss"]
            ):
                self.at_peak = {"trials": len(pids), **total}
            time.sleep(self.period)

    def __exit__(self, *exc) -> None:
        self.stop = True
        self.thread.join()


def study_dict(args, tmp: Path, concurrency: int, teacher: Path) -> dict:
    return {
        "name": f"overhead-c{concurrency}",
        "student": "resnet8",
        "distiller": "cktf",
        "data": {"dataset": "cifar10", "root": str(args.root), "val_fraction": 0.02, "test_subset": 500},
        "teacher": {"checkpoint": str(teacher)},
        "params": {"nce_k": 1024},
        "optim": {"lr": 0.05, "milestones": []},
        "train": {"epochs": args.epochs, "batch_size": 64, "max_steps_per_epoch": args.steps, "eval_test": False},
        "search": {
            "num_samples": args.trials,
            "space": {"alpha1": {"type": "uniform", "low": 0.0, "high": 1.0}},
        },
        "asha": {"grace_period": args.epochs, "reduction_factor": 2},  # nothing stops early: every trial runs
        "sampler": {"name": "random", "seed": 0},
        "resources": {"cpu": args.cpus / concurrency, "gpu": 0},
        "max_concurrent": concurrency,
        "max_failures": 0,
        "keep_checkpoints": 1,
        "keep_trial_state": True,  # the checkpoint's size is read from the stored last.pt afterwards
        "workdir": str(tmp / "studies"),
        "storage_path": str(tmp / "ray"),
        "mlflow": {"tracking_uri": f"sqlite:///{tmp / 'mlflow.db'}"},
    }


class Timers:
    """Cumulative wall time of named callables, patched in place for one study."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self._undo: list = []

    def wrap(self, owner, attr: str, label: str) -> None:
        original = getattr(owner, attr)

        def timed(*a, **kw):
            t0 = time.perf_counter()
            try:
                return original(*a, **kw)
            finally:
                self.seconds[label] = self.seconds.get(label, 0.0) + time.perf_counter() - t0

        setattr(owner, attr, timed)
        self._undo.append((owner, attr, original))

    def restore(self) -> None:
        for owner, attr, original in reversed(self._undo):
            setattr(owner, attr, original)


def one_study(args, tmp: Path, concurrency: int, teacher: Path) -> dict:
    import ray
    from ray.tune import ExperimentAnalysis

    import cktf.tune.run.study as study_stage
    from cktf.tune.plan import plan_study, study_from_dict
    from cktf.tune.results.lineage import TrialCallback
    from cktf.tune.run.context import RunOptions

    cfg = study_from_dict(study_dict(args, tmp, concurrency, teacher))
    t0 = time.perf_counter()
    plan = plan_study(cfg, progress=False)  # decode (cached) + every check against the data
    t_plan = time.perf_counter() - t0
    t0 = time.perf_counter()
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
    t_ray = time.perf_counter() - t0
    timers = Timers()
    timers.wrap(ray, "put", "ray.put")
    import cktf.tune.run.teacher as teacher_stage

    timers.wrap(teacher_stage, "obtain_teacher", "teacher")
    for hook in [h for h in vars(TrialCallback) if h.startswith("on_")]:
        timers.wrap(TrialCallback, hook, "mlflow callback")
    try:
        with NodeMemory() as mem:
            t0 = time.perf_counter()
            outcome = study_stage.run_study(plan, RunOptions(view="quiet"))
            wall = time.perf_counter() - t0
    finally:
        timers.restore()
        ray.shutdown()
    recs = [json.loads(p.read_text()) for p in (Path(cfg.study_dir) / "trials").glob("*.json")]
    training = [sum(h.get("epoch_time_s", 0) + h.get("eval_time_s", 0) for h in r["history"]) for r in recs]
    analysis = ExperimentAnalysis(cfg.ray_storage.rstrip("/") + "/" + cfg.name)
    frames = [df for df in analysis.trial_dataframes.values() if len(df)]
    excess = [(df["time_this_iter_s"] - df["epoch_time_s"] - df["eval_time_s"]).tolist() for df in frames]
    ckpt = max((p.stat().st_size for p in (tmp / "ray").rglob("last.pt")), default=0)
    data_bytes = 50_000 * 32 * 32 * 3
    return {
        "c": concurrency,
        "trials": len(recs),
        "complete": outcome.complete,
        "ray_init_s": t_ray,
        "wall_s": wall,
        "train_sum_s": sum(training),
        "process_sum_s": sum(float(df["time_total_s"].iloc[-1]) for df in frames),
        "ideal_s": sum(training) / concurrency,
        "startup_s": sum(e[0] for e in excess) / max(len(excess), 1),
        "report_s": sum(sum(e[1:]) for e in excess) / max(sum(len(e) - 1 for e in excess), 1),
        "driver_s": {"plan (load data, checks)": t_plan, **timers.seconds},
        "ckpt_MiB": ckpt / MIB,
        "shmem_MiB": (mem.shmem_peak - mem.shmem0) / MIB,
        "data_MiB": data_bytes / MIB,
        **{
            f"peak_{k}_MiB" if k != "trials" else "peak_trials": (v / MIB if k != "trials" else v)
            for k, v in mem.at_peak.items()
        },
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", type=Path, default=Path(os.environ.get("CKTF_DATA_ROOT", "data")))
    p.add_argument("--concurrency", default="1,2,4")
    p.add_argument("--trials", type=int, default=4)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--steps", type=int, default=20, help="steps per epoch (tiny trials)")
    p.add_argument("--cpus", type=int, default=os.cpu_count() or 2)
    args = p.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    from cktf.models import create_model
    from cktf.train.checkpoint import save_model_weights

    rows = []
    with tempfile.TemporaryDirectory(prefix="cktf-overhead-") as tmp:
        teacher = Path(tmp) / "teacher.safetensors"
        save_model_weights(teacher, create_model("resnet14", 10), {"arch": "resnet14", "dataset": "cifar10"})
        for c in [int(x) for x in args.concurrency.split(",")]:
            sub = Path(tmp) / f"c{c}"
            sub.mkdir()
            r = one_study(args, sub, c, teacher)
            rows.append(r)
            print(json.dumps(r), flush=True)
    print(
        f"\n{args.trials} CKTF trials (resnet14 -> resnet8, N=1024) x {args.epochs} epochs x {args.steps} steps, "
        f"CIFAR-10 50k train in the object store, {args.cpus} CPUs, MLflow sqlite"
    )
    print(
        "| concurrent | ray.init s | study wall s | trials' training s | ideal wall s | wall / ideal "
        "| trial start-up s | checkpoint + report s/epoch | checkpoint MiB |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        cells = [r["c"]] + [f"{r[k]:.1f}" for k in ("ray_init_s", "wall_s", "train_sum_s", "ideal_s")]
        cells += [f"{r['wall_s'] / r['ideal_s']:.2f}", f"{r['startup_s']:.1f}", f"{r['report_s']:.2f}"]
        print("| " + " | ".join(map(str, cells + [f"{r['ckpt_MiB']:.0f}"])) + " |")
    labels = sorted({k for r in rows for k in r["driver_s"]})
    print("\n| concurrent | " + " | ".join(f"driver: {k} s" for k in labels) + " |")
    print("|---|" + "---|" * len(labels))
    for r in rows:
        print(f"| {r['c']} | " + " | ".join(f"{r['driver_s'].get(k, 0):.1f}" for k in labels) + " |")
    print(
        "\n| concurrent | trial processes at peak | object store (Shmem) MiB | dataset MiB | "
        "sum private MiB | sum Pss MiB | sum Rss MiB |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        cells = [r["c"], r["peak_trials"]] + [f"{r[k]:.0f}" for k in ("shmem_MiB", "data_MiB")]
        cells += [f"{r[f'peak_{k}_MiB']:.0f}" for k in ("private", "pss", "rss")]
        print("| " + " | ".join(map(str, cells)) + " |")


if __name__ == "__main__":
    main()
