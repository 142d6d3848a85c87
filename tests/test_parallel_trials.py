"""Trials of several workers (``resources.workers``): each trial one data-parallel run through Ray Train inside its
Tune trial (docs/architecture.md, "Trials of several workers"): the settings and the checks made before Ray starts,
and a study whose 2-worker trials span two nodes of a real multi-node Ray cluster, one of them lost mid-trial."""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from helpers import assert_mlflow_matches_index, records, start_driver, study_runs, tiny_study, write_study

from cktf.errors import ConfigError
from cktf.settings import ResourceSpec
from cktf.tune.plan import study_from_dict
from cktf.tune.run.stages import capacity_problem

# ----------------------------------------------------------------------------- settings and checks (no Ray)


@pytest.mark.parametrize(
    "resources, field, says",
    [
        ({"workers": 2, "gpu_per_worker": 2}, "resources.gpu_per_worker", "one GPU per worker"),
        ({"workers": 2, "gpu": 1}, "resources.gpu", "gpu_per_worker: 1"),
        ({"workers": 0}, "resources.workers", ""),
    ],
)
def test_bad_worker_resources_name_the_field(tmp_path, resources, field, says):
    raw = tiny_study(tmp_path, Path("/nonexistent"), resources=resources)
    with pytest.raises(ConfigError) as err:
        study_from_dict(raw)
    assert err.value.field == field and says in str(err.value)


def test_a_global_batch_must_split_evenly_over_the_workers(tmp_path):
    raw = tiny_study(tmp_path, Path("/nonexistent"), resources={"workers": 3})  # batch 64
    with pytest.raises(ConfigError) as err:
        study_from_dict(raw)
    assert err.value.field == "train.batch_size" and "63 or 66" in err.value.fix
    raw["search"]["space"]["train.batch_size"] = {"type": "categorical", "choices": [48, 64]}
    raw["train"]["batch_size"] = 48
    with pytest.raises(ConfigError) as err:
        study_from_dict(raw)
    assert err.value.field == "search.space.train.batch_size"  # 64 of the choices does not split over 3
    ok = study_from_dict(tiny_study(tmp_path, Path("/nonexistent"), resources={"workers": 2, "cpu_per_worker": 1}))
    assert ok.resources.trial() == {"cpu": 0.0, "gpu": 0.0, "memory": 2.0**20}  # the workers reserve the rest
    assert ok.resources.total() == {"cpu": 2.0, "gpu": 0.0}


def test_capacity_counts_workers_over_nodes():
    spec = ResourceSpec(workers=2, cpu_per_worker=1.5)
    assert capacity_problem(spec, [{"CPU": 2}, {"CPU": 2}]) is None  # one worker per node
    assert "holds 1 such workers" in capacity_problem(spec, [{"CPU": 2}, {"CPU": 1}])
    gpus = ResourceSpec(workers=4, gpu_per_worker=1, cpu_per_worker=4)
    assert capacity_problem(gpus, [{"CPU": 32, "GPU": 2}, {"CPU": 32, "GPU": 2}]) is None
    assert capacity_problem(gpus, [{"CPU": 32, "GPU": 3}]) is not None
    assert "no node" in capacity_problem(ResourceSpec(cpu=4), [{"CPU": 2}])


def test_banks_that_do_not_fit_a_workers_gpu_are_refused_before_ray_starts(tmp_path):
    """Every worker holds all of CKTF's banks: at CIFAR-100's 50k images, d=128 and resnet8's 3 stages (5 critics),
    5 x 2 x 50,000 x 128 x 4 bytes = 256 MB; on a 0.2 GiB GPU that is refused, naming memory: queue and the largest
    feat_dim that fits."""
    from cktf.tune.plan.validate import check_contrast_memory

    def study(gib: float):
        raw = tiny_study(
            tmp_path, Path("/nonexistent"), resources={"workers": 2, "gpu_per_worker": 1, "gpu_memory_gib": gib}
        )
        raw["search"]["space"].pop("feat_dim")
        raw["params"] = {"feat_dim": 128}
        return study_from_dict(raw)

    splits = SimpleNamespace(train=range(50_000), image_size=32, num_classes=100)
    baseline = {"nce_k": 128}
    need = 5 * 2 * 50_000 * 128 * 4
    cfg = study(1.0)
    assert check_contrast_memory(cfg, splits, cfg.space, baseline, n_stages=3) == need  # fits in 1 GiB
    cfg = study(0.2)
    with pytest.raises(ConfigError) as err:
        check_contrast_memory(cfg, splits, cfg.space, baseline, n_stages=3)
    assert err.value.field == "params.memory" and "244 MiB on each worker" in str(err.value)
    fits = int(0.2 * 2**30 // (5 * 2 * 50_000 * 4))  # the largest feat_dim whose banks fit 0.2 GiB
    assert "memory: queue" in err.value.fix and f"feat_dim <= {fits}" in err.value.fix


# ----------------------------------------------------------------------------- a real cluster, a node lost


@pytest.mark.slow
@pytest.mark.cluster
def test_two_worker_trials_span_two_nodes_and_go_on_after_one_is_lost(tmp_path, data_root):
    """Each trial's 2 workers (1.5 CPUs each) land on two of three 2-CPU nodes; the node of a running trial's second
    worker is removed: Ray Train starts the worker group again on the nodes left, rank 0 goes on from the latest
    checkpoint, and the study completes with one index record and one MLflow run per trial."""
    from stack import RayCluster

    study = tiny_study(
        tmp_path,
        data_root,
        name="workers",
        train__epochs=3,
        search={"num_samples": 2, "space": {"alpha1": {"type": "uniform", "low": 0.0, "high": 1.0}}},
        params={"nce_k": 64},
        asha={"grace_period": 3, "reduction_factor": 2},
        resources={"workers": 2, "cpu_per_worker": 1.5},
        max_concurrent=1,
        max_failures=3,
    )
    path = write_study(tmp_path / "workers.yaml", study)
    folder = tmp_path / "studies" / "workers"
    with RayCluster(workers=3, cpus=2, dashboard=True) as cluster:
        proc = start_driver(path, tmp_path, RAY_ADDRESS=cluster.address)
        try:
            victim, deadline = None, time.time() + 600
            while time.time() < deadline and victim is None:
                for r in records(folder).values():
                    nodes = (r.get("worker_nodes") or "").split(",")
                    if r["status"] == "running" and r.get("checkpoint") and r.get("history") and len(set(nodes)) == 2:
                        victim, moved = nodes[1], r["trial_id"]
                assert proc.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
                time.sleep(0.2)
            assert victim is not None, "no trial ran with its workers on two nodes"
            cluster.remove(cluster.node_ids.index(victim))
            assert proc.wait(timeout=600) == 0, (tmp_path / "driver.log").read_text()[-3000:]
        finally:
            if proc.poll() is None:
                proc.kill()
    after = records(folder)
    assert len(after) == 2 and all(r["status"] == "finished" for r in after.values())
    for r in after.values():  # every trial: 2 workers on 2 nodes, its checkpoint in Ray Train's storage
        assert r["workers"] == 2 and len(set(r["worker_nodes"].split(","))) == 2
        assert "/workers-workers/" in r["checkpoint"] and [h["epoch"] for h in r["history"]] == [0, 1, 2]
    rec = after[moved]
    assert victim not in rec["worker_nodes"].split(",")  # the workers it finished on
    assert max(rec["start_epochs"]) >= 1, "the trial started over instead of going on from its checkpoint"
    uri, experiment = study["mlflow"]["tracking_uri"], "cktf-workers"
    assert_mlflow_matches_index(uri, experiment, after)  # one child run per trial, each epoch logged once
    parents, children = study_runs(uri, experiment)
    assert parents[0].info.status == "FINISHED" and len(children) == 2
    state = json.loads((folder / "state.json").read_text())
    assert state["status"] == "complete"
