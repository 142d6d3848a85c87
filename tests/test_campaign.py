"""Campaigns (docs/campaigns.md): the schema and its field paths, the expansion into runs, the teacher cache, the
table's statistics and formats, the dry run, and the offline campaign end to end through the real command in a
subprocess (local Ray on loopback, a file MLflow store): killed with SIGKILL mid-run and resumed, then every cell of
its table present with n = 2, its numbers equal to the per-run MLflow metrics, each pair's teacher trained exactly
once (counted by the cache's ledger), and nothing that had finished before the kill run again.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from helpers import alive, cktf_cmd, cli_env, records, study_runs

from cktf.campaign.plan import expand
from cktf.campaign.schema import campaign_from_dict, load_campaign
from cktf.config import apply_overrides
from cktf.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
OFFLINE = ROOT / "studies" / "campaigns" / "offline.yaml"
#: the offline campaign made small for CI: 480 train + 120 val images, 200 test, 2 epochs, 1-epoch teachers
SMALL = {
    "data.train_subset": 600,
    "data.test_subset": 200,
    "data.val_fraction": 0.2,
    "train.epochs": 2,
    "optim.milestones": [],
    "teacher.train.epochs": 1,
    "teacher.optim.milestones": [],
    "train.max_steps_per_epoch": 3,  # the runs are about the campaign, not the training
}


def offline_raw(tmp: Path, data_root: Path | str, **over) -> dict:
    raw = yaml.safe_load(OFFLINE.read_text())
    fields = {
        **SMALL,
        "data.root": str(data_root),
        "workdir": str(tmp / "campaigns"),
        "teacher_cache": str(tmp / "teachers"),  # its own: these tests count the trainings of its teachers
        "mlflow.tracking_uri": f"sqlite:///{tmp / 'mlflow.db'}",
        **over,
    }
    return apply_overrides(raw, fields)


def table1_like(**over) -> dict:
    """A CIFAR-100 campaign on a Table 1 pair (published anchors exist), no data needed to expand it."""
    raw = {
        "name": "t1",
        "data": {"dataset": "cifar100", "root": "/nonexistent"},
        "pairs": [{"name": "r56-r20", "teacher": "resnet56", "student": "resnet20"}],
        "methods": [
            {"label": "Student", "distiller": "ce"},
            "kd",
            {"label": "CRD", "distiller": "crd"},
            {"label": "CKTF", "distiller": "cktf"},
        ],
        "seeds": [0, 1, 2],
        "train": {"epochs": 2},
    }
    return apply_overrides(raw, over)


# ----------------------------------------------------------------------------- schema and expansion (no data)


def test_offline_campaign_expands_to_every_cell_and_seed():
    cfg = load_campaign(OFFLINE)
    plan = expand(cfg)
    assert plan.num_runs == 2 * 5 * 2 == len({r.key for r in plan.runs})
    cells = {(r.pair, r.label) for r in plan.runs}
    assert len(cells) == 10
    for pair, label in cells:
        assert sorted(r.seed for r in plan.runs if (r.pair, r.label) == (pair, label)) == [0, 1]
    assert [r.seed for r in plan.runs] == [0] * 10 + [1] * 10  # seed-major: a partial table is a fair one
    assert set(plan.teachers) == {"resnet14-resnet8", "wrn_16_2-wrn_16_1"}
    ce = cfg.cell("resnet14-resnet8", "CE")
    assert not ce.objective.needs_teacher and ce.teacher.arch is None
    kd = cfg.cell("resnet14-resnet8", "KD")
    assert kd.teacher.arch == "resnet14" and kd.teacher.train.epochs == 5 and kd.train.epochs == 4
    assert cfg.cell("wrn_16_2-wrn_16_1", "CKTF").params == {"nce_k": 256}


@pytest.mark.parametrize(
    ("over", "field"),
    [
        ({"methods.1.distiller": "kdd"}, "methods.1.distiller"),
        ({"methods.2.params": {"nce_kk": 5}}, "methods.2.params.nce_kk"),
        ({"methods.4.params": {"alpha2": -1.0}}, "methods.4.params.alpha2"),
        ({"pairs.0.student": "resnet9000"}, "pairs.0.student"),
        ({"pairs.1.teacher": "nope"}, "pairs.1.teacher"),
        ({"pairs.0.teacher": None}, "pairs.0.teacher"),  # KD needs one
        ({"seeds": []}, "seeds"),
        ({"seeds": [0, 0]}, "seeds.1"),
        ({"methods.1.label": "CE"}, "methods.1"),
        ({"table.compare": [{"ours": "CKFT"}]}, "table.compare.0.ours"),
        ({"tuned": [{"pair": "nope", "study": "x"}]}, "tuned.0.pair"),
        ({"train.epochs": 0}, "train.epochs"),
        ({"teacher.train.batch_size": 0}, "teacher.train.batch_size"),
        ({"pairs.0.data": {"dataset": "cifar10", "val_fraction": 1.5}}, "pairs.0.data.val_fraction"),
        ({"resources.gpu": 1.5}, "resources.gpu"),
        ({"bogus": 1}, "bogus"),
        ({"name": "${HOME}"}, "name"),
    ],
)
def test_schema_errors_name_the_field(tmp_path, over, field):
    with pytest.raises(ConfigError) as info:
        campaign_from_dict(offline_raw(tmp_path, "/nonexistent", **over))
    assert info.value.field == field, str(info.value)


def test_overrides_index_lists_and_refuse_what_is_not_there():
    raw = {"methods": [{"distiller": "kd"}, {"distiller": "crd", "params": {}}]}
    out = apply_overrides(raw, {"methods.1.params.nce_k": 64, "seeds": [3]})
    assert out["methods"][1]["params"] == {"nce_k": 64} and out["seeds"] == [3] and raw["methods"][1]["params"] == {}
    with pytest.raises(ConfigError, match="methods.5"):
        apply_overrides(raw, {"methods.5.label": "x"})


def test_cli_refuses_a_bad_campaign_before_anything_runs(tmp_path, capsys):
    from cktf.cli import main

    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(offline_raw(tmp_path, "/nonexistent", **{"methods.3.params": {"nce_k": -3}})))
    assert main(["campaign", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cktf: error: methods.3.params.nce_k"), err
    assert not (tmp_path / "campaigns").exists() and not (tmp_path / "mlflow.db").exists()


# ----------------------------------------------------------------------------- the teacher cache


def _splits(seed: int = 0, n: int = 40):
    rng = np.random.default_rng(seed)
    train = SimpleNamespace(images=rng.integers(0, 255, (n, 8, 8, 3), dtype=np.uint8), targets=np.arange(n) % 4)
    return SimpleNamespace(train=train, val=None, spec=SimpleNamespace(name="toy"))


def test_teacher_key_covers_arch_data_recipe_seed_and_code_only():
    from cktf.train import OptimConfig, TrainConfig
    from cktf.train.teacher_cache import data_digest, key_for_splits, teacher_key

    base = key_for_splits("resnet8", _splits(), OptimConfig(), TrainConfig())
    assert base.digest == key_for_splits("resnet8", _splits(), OptimConfig(), TrainConfig()).digest
    assert base.spec["code"].startswith("0.") and base.spec["seed"] == 0
    same = key_for_splits("resnet8", _splits(), OptimConfig(), TrainConfig(progress=False, device="cpu"))
    assert same.digest == base.digest  # settings that do not change the weights
    changed = [
        key_for_splits("resnet14", _splits(), OptimConfig(), TrainConfig()),
        key_for_splits("resnet8", _splits(seed=1), OptimConfig(), TrainConfig()),
        key_for_splits("resnet8", _splits(), OptimConfig(lr=0.1), TrainConfig()),
        key_for_splits("resnet8", _splits(), OptimConfig(), TrainConfig(epochs=2)),
        key_for_splits("resnet8", _splits(), OptimConfig(), TrainConfig(seed=1)),
        teacher_key("resnet8", data_digest(_splits()), OptimConfig(), TrainConfig(), code="0.0.0+other"),
    ]
    assert len({k.digest for k in changed} | {base.digest}) == len(changed) + 1


def _weights(tmp: Path, seed: int = 0) -> Path:
    import torch

    from cktf.models import create_model
    from cktf.train import save_model_weights

    torch.manual_seed(seed)
    path = tmp / f"w{seed}.safetensors"
    save_model_weights(path, create_model("resnet8", num_classes=10), {"arch": "resnet8", "dataset": "cifar10"})
    return path


def test_teacher_cache_serves_verified_entries_and_retrains_corrupt_or_stale_ones(tmp_path, caplog):
    from cktf.train import OptimConfig, TrainConfig, load_model
    from cktf.train.teacher_cache import ENTRY_FILE, WEIGHTS_FILE, TeacherCache, key_for_splits

    cache = TeacherCache(tmp_path / "teachers")
    key = key_for_splits("resnet8", _splits(), OptimConfig(), TrainConfig())
    assert cache.lookup(key) is None
    entry = cache.put(key, _weights(tmp_path), {"test_acc": 42.0, "weights_best": "/x"}, by="test")
    assert entry.summary == {"test_acc": 42.0, "weights_best": "/x"}
    hit = cache.lookup(key)
    assert hit is not None and hit.record["sha256"] == entry.record["sha256"]
    model, meta = load_model(cache.local_weights(hit))
    assert meta["arch"] == "resnet8"
    assert len(cache.trainings(key)) == 1
    # a second driver that trained the same teacher meanwhile: the first entry stays, the training is counted
    kept = cache.put(key, _weights(tmp_path, seed=1), {}, by="late")
    assert kept.record["sha256"] == entry.record["sha256"] and len(cache.trainings(key)) == 2

    weights = tmp_path / "teachers" / key.digest / WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0xFF  # one flipped byte in the tensors
    weights.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="cktf.train.teacher_cache"):
        assert cache.lookup(key) is None
    assert "corrupt" in caplog.text and "trained again" in caplog.text
    assert not (tmp_path / "teachers" / key.digest).exists()

    cache.put(key, _weights(tmp_path), {}, by="again")
    entry_file = tmp_path / "teachers" / key.digest / ENTRY_FILE
    rec = json.loads(entry_file.read_text())
    rec["spec"]["recipe"]["optim.lr"] = 0.5  # an entry whose recorded inputs no longer hash to its key
    entry_file.write_text(json.dumps(rec))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="cktf.train.teacher_cache"):
        assert cache.lookup(key) is None
    assert "stale" in caplog.text
    entry_file.parent.mkdir(parents=True, exist_ok=True)
    entry_file.write_text("{not json")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="cktf.train.teacher_cache"):
        assert cache.lookup(key) is None
    assert "corrupt" in caplog.text


def test_a_resumed_campaign_keeps_its_teacher_when_only_the_code_changed(tmp_path):
    from cktf.train import OptimConfig, TrainConfig
    from cktf.train.teacher_cache import TeacherCache, data_digest, teacher_key
    from cktf.tune.run.teacher import pinned

    cache = TeacherCache(tmp_path / "teachers")
    digest = data_digest(_splits())
    old = teacher_key("resnet8", digest, OptimConfig(), TrainConfig(), code="0.1.0+aaaa")
    cache.put(old, _weights(tmp_path), {})
    new_code = teacher_key("resnet8", digest, OptimConfig(), TrainConfig(), code="0.1.0+bbbb")
    assert new_code.digest != old.digest
    assert pinned(new_code, old.digest, cache, ["p"]).digest == old.digest  # every run keeps the same teacher
    new_recipe = teacher_key("resnet8", digest, OptimConfig(lr=0.1), TrainConfig(), code="0.1.0+bbbb")
    assert pinned(new_recipe, old.digest, cache, ["p"]).digest == new_recipe.digest  # another teacher
    assert pinned(new_code, None, cache, ["p"]).digest == new_code.digest  # nothing recorded: a fresh campaign


def test_default_cache_root_is_beside_the_workdir(monkeypatch, tmp_path):
    from cktf.train.teacher_cache import default_root

    monkeypatch.delenv("CKTF_TEACHER_CACHE", raising=False)
    assert default_root(tmp_path / "campaigns") == str(tmp_path / "teachers")
    assert default_root(tmp_path / "studies") == str(tmp_path / "teachers")
    assert default_root("s3://bucket/runs/studies") == "s3://bucket/runs/teachers"
    monkeypatch.setenv("CKTF_TEACHER_CACHE", str(tmp_path / "elsewhere"))
    assert default_root("runs/campaigns") == str(tmp_path / "elsewhere")


# ----------------------------------------------------------------------------- the table


def _records(plan, scores: dict[str, list[float | None]], val_best_last: bool = True) -> dict[str, dict]:
    """Finished index records whose val-selected epoch (the last) has the test accuracy ``scores[label][seed]``."""
    out = {}
    for r in plan.runs:
        value = scores[r.label][r.seed]
        if value is None:
            out[r.key] = {"trial_id": r.key, "status": "failed", "history": []}
            continue
        history = [
            {"epoch": 0, "val_acc": 10.0, "test_acc": value + 5.0},  # the best test epoch, not the selected one
            {"epoch": 1, "val_acc": 20.0 if val_best_last else 5.0, "test_acc": value},
        ]
        out[r.key] = {"trial_id": r.key, "status": "finished", "history": history}
    return out


def test_table_cells_published_numbers_and_the_paired_marker():
    from scipy import stats

    from cktf.campaign.table import build_table

    plan = expand(campaign_from_dict(table1_like()))
    scores = {
        "Student": [69.0, 69.5, 70.0],
        "KD": [70.0, 70.4, 70.9],
        "CRD": [71.0, 71.4, 71.9],
        "CKTF": [72.0, 72.5, 73.0],
    }
    t = build_table(plan, _records(plan, scores), {"r56-r20": {"test_acc": 72.1, "source": "cache"}}, "complete")
    cktf = t.cell("r56-r20", "CKTF")
    assert cktf.spread.n == 3 and math.isclose(cktf.spread.mean, 72.5) and math.isclose(cktf.spread.std, 0.5)
    assert cktf.published == 71.20 and math.isclose(cktf.diff, 72.5 - 71.20)  # accuracy-anchors.csv
    assert t.cell("r56-r20", "KD").published == 70.66 and t.cell("r56-r20", "Student").published == 69.06
    assert t.pairs[0].teacher_score == 72.1 and t.pairs[0].teacher_published == 72.34
    (c,) = t.comparisons
    assert c.ours == "CKTF" and c.baseline == "CRD" and c.verdict == "better" and c.mark == "✓"
    assert c.diff.test == "paired t-test" and c.diff.n == 3
    p = stats.ttest_rel(scores["CKTF"], scores["CRD"]).pvalue
    assert math.isclose(c.diff.p_value, p, rel_tol=1e-9)
    assert any("best-test-epoch" in n for n in t.notes)  # published numbers follow another protocol

    plan2 = expand(campaign_from_dict(table1_like(**{"table.score": "max_over_epochs"})))
    t2 = build_table(plan2, _records(plan2, scores), {})
    assert math.isclose(t2.cell("r56-r20", "CKTF").spread.mean, 77.5)  # the best test epoch: +5 in _records
    assert not any("best-test-epoch" in n for n in t2.notes)


def test_table_counts_failed_seeds_and_needs_two_pairs_for_a_marker():
    from cktf.campaign.table import build_table

    plan = expand(campaign_from_dict(table1_like()))
    scores = {
        "Student": [69.0, 69.5, 70.0],
        "KD": [70.0, 70.4, 70.9],
        "CRD": [71.0, None, None],  # two failed seeds
        "CKTF": [72.0, None, 73.0],
    }
    t = build_table(plan, _records(plan, scores), {}, "complete")
    crd = t.cell("r56-r20", "CRD")
    assert crd.spread.n == 1 and crd.failed == 2 and crd.spread.std == 0.0
    (c,) = t.comparisons  # best baseline by mean is CRD (71.0), sharing only seed 0 with CKTF
    assert c.baseline == "CRD" and c.verdict == "n/a" and c.diff is None
    assert any("fewer finished seeds" in n for n in t.notes)


def test_table_formats(tmp_path):
    import csv

    from cktf.campaign.render import write_table
    from cktf.campaign.table import build_table

    plan = expand(campaign_from_dict(table1_like()))
    scores = {k: [70.0 + i, 70.5 + i, 71.0 + i] for i, k in enumerate(["Student", "KD", "CRD", "CKTF"])}
    folder = write_table(build_table(plan, _records(plan, scores), {}, "complete"), tmp_path / "table")
    md = (folder / "table.md").read_text()
    assert "73.50 ± 0.50 (n=3)" in md and "paper 71.20" in md and "Δ +2.30" in md and "paired t-test" in md
    rows = list(csv.DictReader((folder / "table.csv").read_text().splitlines()))
    cktf = next(r for r in rows if r["method"] == "CKTF")
    assert cktf["n"] == "3" and float(cktf["mean"]) == 73.5 and float(cktf["published"]) == 71.2
    assert json.loads(cktf["scores_by_seed"]) == {"0": 73.0, "1": 73.5, "2": 74.0}
    comp = list(csv.DictReader((folder / "comparisons.csv").read_text().splitlines()))
    assert comp[0]["test"] == "paired t-test" and comp[0]["best_baseline"] == "CRD"
    tex = (folder / "table.tex").read_text()
    assert r"\toprule" in tex and r"73.50 $\pm$ 0.50" in tex and r"\bottomrule" in tex
    page = (folder / "table.html").read_text()
    assert page.startswith("<!doctype html>") and "<table>" in page and "73.50 ± 0.50 (n=3)" in page
    assert json.loads((folder / "table.json").read_text())["cells"][0]["n"] == 3


# ----------------------------------------------------------------------------- the dry run


def test_dry_run_counts_runs_images_flops_and_gpu_hours(tmp_path, capsys):
    from cktf.cli import main

    path = tmp_path / "offline.yaml"
    raw = yaml.safe_load(OFFLINE.read_text())
    raw["workdir"] = str(tmp_path / "campaigns")
    path.write_text(yaml.safe_dump(raw))
    assert main(["campaign", str(path), "--dry-run", "--data-root", str(tmp_path / "no-data")]) == 0
    out = capsys.readouterr().out
    assert "20 runs (2 pairs x 5 methods x 2 seeds)" in out
    assert "teachers: 2 distinct, 2 to train" in out
    # 3,000 images less the 10% hold-out, at the official size rule (no data here): 2,700 x 4 epochs per run
    assert "2,700*" in out and "10,800" in out and "216,000 images x epochs" in out
    assert "GFLOP" in out and "GPU-hours" in out and "ESTIMATE" in out and "22.8 TFLOP/s" in out
    assert "not read here" in out
    assert not (tmp_path / "campaigns").exists()  # the dry run writes nothing


def test_the_flop_counts_behind_the_estimate():
    """A step's FLOPs scale with the batch; the ResNet-50 reference figure is what the counter gives."""
    import torch
    import torchvision
    from torch.utils.flop_counter import FlopCounterMode

    from cktf.campaign.cost import RESNET50_TRAIN_GFLOP, DataShape, StepSpec, step_flops

    data = DataShape(32, 10, 100)
    a = step_flops(StepSpec("resnet8", "resnet14", "kd", {}, 64), data)
    b = step_flops(StepSpec("resnet8", "resnet14", "kd", {}, 128), data)
    assert math.isclose(b[0], 2 * a[0], rel_tol=1e-6) and a[1] > 0 and a[2] == 0
    assert step_flops(StepSpec("resnet8", "resnet14", "fsp", {}, 64), data)[2] > 0  # FSP's initialisation epochs
    model = torchvision.models.resnet50()
    x = torch.randn(1, 3, 224, 224)
    with FlopCounterMode(display=False) as counter:
        torch.nn.functional.cross_entropy(model(x), torch.zeros(1, dtype=torch.long)).backward()
    assert math.isclose(counter.get_total_flops() / 1e9, RESNET50_TRAIN_GFLOP, rel_tol=2e-3)


# ----------------------------------------------------------------------------- the offline campaign, end to end


def _cli(*args: str) -> list[str]:
    return cktf_cmd("campaign", *args)


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory, data_root):
    """The offline campaign (small), its driver SIGKILLed once a run has finished and another is mid-run with a
    checkpoint, then resumed with ``--resume``."""
    tmp = tmp_path_factory.mktemp("campaign")
    path = tmp / "offline.yaml"
    path.write_text(yaml.safe_dump(offline_raw(tmp, data_root)))
    campaign_dir = tmp / "campaigns" / "offline"
    log = open(tmp / "first.log", "w")
    t0 = time.time()
    proc = subprocess.Popen(_cli(str(path), "--quiet"), env=cli_env(), cwd=tmp, stdout=log, stderr=log)
    try:
        deadline = time.time() + 600
        while time.time() < deadline:
            recs = records(campaign_dir)
            finished = [r for r in recs.values() if r["status"] == "finished"]
            mid = [r for r in recs.values() if r["status"] == "running" and r.get("history") and r.get("checkpoint")]
            if finished and mid:
                break
            if proc.poll() is not None:
                pytest.fail(f"the campaign ended (rc {proc.returncode}) before it could be killed mid-run")
            time.sleep(0.05)
        else:
            pytest.fail("timed out waiting for a finished run and one mid-run")
        ray_pids = json.loads((campaign_dir / "lock.json").read_text()).get("ray_pids", [])
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # also when the wait failed: no driver outlives the fixture
    assert proc.wait(timeout=60) == -signal.SIGKILL
    killed_s = time.time() - t0
    before = records(campaign_dir)
    t1 = time.time()
    resumed = subprocess.run(
        _cli(str(path), "--resume", "--quiet"), env=cli_env(), cwd=tmp, capture_output=True, text=True, timeout=1200
    )
    return SimpleNamespace(
        tmp=tmp,
        path=path,
        dir=campaign_dir,
        before=before,
        after=records(campaign_dir),
        resumed=resumed,
        ray_pids=ray_pids,
        uri=f"sqlite:///{tmp / 'mlflow.db'}",
        times=(killed_s, time.time() - t1),
    )


@pytest.mark.slow
def test_a_killed_campaign_resumes_and_redoes_nothing_that_had_finished(killed_and_resumed):
    k = killed_and_resumed
    assert k.resumed.returncode == 0, k.resumed.stdout[-3000:] + k.resumed.stderr[-3000:]
    assert not alive(k.ray_pids), "the resumed driver must end the Ray processes the killed one left"
    finished = {key: r for key, r in k.before.items() if r["status"] == "finished"}
    assert finished and len(finished) < 20
    for key, rec in finished.items():  # what had ended is kept as it was, never run again
        now = k.after[key]
        assert now["status"] == "finished" and now["history"] == rec["history"]
        assert now["trials"] == rec["trials"] and len(now["trials"]) == 1
        assert now["mlflow_run_id"] == rec["mlflow_run_id"] and now["ended"] == rec["ended"]
    assert len(k.after) == 20 and all(r["status"] == "finished" for r in k.after.values())
    mid = [key for key, r in k.before.items() if r["status"] == "running" and r.get("checkpoint")]
    assert mid
    for key in mid:  # went on from its last checkpoint, in its own MLflow run
        assert k.after[key]["start_epochs"][-1] >= 1, k.after[key]["start_epochs"]
        assert k.after[key]["mlflow_run_id"] == k.before[key]["mlflow_run_id"]
    state = json.loads((k.dir / "state.json").read_text())
    assert state["status"] == "complete" and state["launches"] == 2
    again = subprocess.run(
        _cli(str(k.path), "--resume", "--quiet"), env=cli_env(), cwd=k.tmp, capture_output=True, text=True, timeout=300
    )
    assert again.returncode == 0 and "0 run here" in again.stdout, again.stdout + again.stderr
    assert json.loads((k.dir / "state.json").read_text())["launches"] == 2  # no Tuner was started


@pytest.mark.slow
def test_every_cell_has_n2_and_equals_the_mlflow_metrics(killed_and_resumed):
    import mlflow

    k = killed_and_resumed
    table = json.loads((k.dir / "table" / "table.json").read_text())
    assert table["status"] == "complete" and len(table["cells"]) == 10
    assert {(c["pair"], c["method"]) for c in table["cells"]} == {
        (p, m) for p in ("resnet14-resnet8", "wrn_16_2-wrn_16_1") for m in ("CE", "KD", "DKD", "CRD", "CKTF")
    }
    assert all(c["n"] == 2 and c["failed"] == 0 and c["missing"] == 0 for c in table["cells"])
    parents, children = study_runs(k.uri, "cktf-campaign-offline")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert parents[0].data.tags["cktf.campaign_status"] == "complete"
    assert len(children) == 20 and {c.data.tags["cktf.run_key"] for c in children} == set(k.after)
    client = mlflow.MlflowClient(tracking_uri=k.uri)
    by_cell: dict[tuple[str, str], dict[int, float]] = {}
    for c in children:
        tags = c.data.tags
        assert c.info.status == "FINISHED" and tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert c.data.params["seed"] == tags["cktf.seed"]
        score = c.data.metrics["campaign/score"]
        by_cell.setdefault((tags["cktf.pair"], tags["cktf.method"]), {})[int(tags["cktf.seed"])] = score
        steps = [m.step for m in client.get_metric_history(c.info.run_id, "lr")]
        assert sorted(steps) == [0, 1], f"an epoch was logged twice or lost: {steps}"
        # the score is the test accuracy MLflow holds at the epoch of the best val_acc
        val = {m.step: m.value for m in client.get_metric_history(c.info.run_id, "val_acc")}
        test = {m.step: m.value for m in client.get_metric_history(c.info.run_id, "test_acc")}
        best = max(sorted(val), key=lambda s: val[s])
        assert score == test[best] == c.data.metrics["campaign/test_acc_selected"]
    for cell in table["cells"]:
        values = by_cell[(cell["pair"], cell["method"])]
        assert {int(s): v for s, v in cell["scores"].items()} == values
        mean = sum(values.values()) / 2
        std = math.sqrt(sum((v - mean) ** 2 for v in values.values()))  # n - 1 = 1
        assert math.isclose(cell["mean"], mean, abs_tol=1e-9) and math.isclose(cell["std"], std, abs_tol=1e-9)
        assert parents[0].data.metrics[f"table/{cell['pair']}/{cell['method'].lower()}/mean"] == cell["mean"]
    arts = {a.path for a in client.list_artifacts(parents[0].info.run_id, "table")}
    assert {f"table/table.{x}" for x in ("md", "csv", "tex", "json", "html")} <= arts
    assert len(table["comparisons"]) == 2 and all(c["test"] == "paired t-test" for c in table["comparisons"])


def cache_key_of(digest: str, cache):
    """The :class:`TeacherKey` of a stored entry (its recorded inputs)."""
    from cktf.train.teacher_cache import TeacherKey

    rec = json.loads((Path(cache.uri) / digest / "entry.json").read_text())
    return TeacherKey(digest, rec["spec"])


@pytest.mark.slow
def test_each_pair_teacher_is_trained_once_reused_and_retrained_when_corrupt(killed_and_resumed, data_root):
    from cktf.train.teacher_cache import TeacherCache

    k = killed_and_resumed
    state = json.loads((k.dir / "state.json").read_text())
    teachers = state["teachers"]
    assert set(teachers) == {"resnet14-resnet8", "wrn_16_2-wrn_16_1"}
    cache = TeacherCache(k.tmp / "teachers")
    keys = {t["key"] for t in teachers.values()}
    assert len(keys) == 2 and set(cache.entries()) == keys
    for key in keys:  # the kill and the resume trained nothing again
        assert len(cache.trainings(key)) == 1, cache.trainings(key)
    # another campaign with one of the same teachers (same data, recipe, seed, code): served from the cache
    raw = offline_raw(k.tmp, data_root, name="reuse", seeds=[0])
    raw["pairs"] = raw["pairs"][:1]
    raw["methods"] = [{"label": "KD", "distiller": "kd"}]
    raw["table"] = {"score": "selected"}  # no CKTF column, so no marker
    path = k.tmp / "reuse.yaml"
    path.write_text(yaml.safe_dump(raw))
    done = subprocess.run(
        _cli(str(path), "--quiet"), env=cli_env(), cwd=k.tmp, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    reuse = json.loads((k.tmp / "campaigns" / "reuse" / "state.json").read_text())["teachers"]
    assert reuse["resnet14-resnet8"]["source"] == "cache"
    assert reuse["resnet14-resnet8"]["key"] == teachers["resnet14-resnet8"]["key"]
    assert all(len(cache.trainings(key)) == 1 for key in keys)
    # the entry corrupted on disk: detected by its hash, logged, trained again (and counted) by the next campaign
    key = teachers["resnet14-resnet8"]["key"]
    weights = k.tmp / "teachers" / key / "teacher.safetensors"
    data = bytearray(weights.read_bytes())
    data[-64] ^= 0xFF
    weights.write_bytes(bytes(data))
    raw["name"] = "retrain"
    path.write_text(yaml.safe_dump(raw))
    done = subprocess.run(
        _cli(str(path), "--quiet"), env=cli_env(), cwd=k.tmp, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    again = json.loads((k.tmp / "campaigns" / "retrain" / "state.json").read_text())["teachers"]["resnet14-resnet8"]
    assert again["source"] == "trained" and again["key"] == key and len(cache.trainings(key)) == 2
    log = (k.tmp / "campaigns" / "retrain" / "driver.log").read_text()
    assert "is corrupt (weights sha256" in log and "trained again" in log
    assert cache.lookup(cache_key_of(key, cache)) is not None  # the new entry verifies


# ----------------------------------------------------------------------------- tuned cells


def _finished_study(
    tmp: Path, name: str = "tuned_r56", status: str = "complete", confirm: bool = True, student: str = "resnet20"
) -> Path:
    """A study folder as the study driver leaves it: state, resolved file, search trials and confirmation runs."""
    from cktf.tune.results.reader import TrialIndex, write_state

    d = tmp / "studies" / name
    write_state(d, status=status, metric="val_acc", mode="max", num_trials=2)
    (d / "study.resolved.json").write_text(
        json.dumps(
            {
                "name": name,
                "student": student,
                "distiller": "cktf",
                "params": {"nce_k": 4096},
                "teacher": {"arch": "resnet56"},
                "data": {"dataset": "cifar100"},
            }
        )
    )
    index = TrialIndex(d)
    for i, (alpha1, acc) in enumerate([(0.3, 60.0), (0.7, 62.0)]):
        index.update(
            f"t{i}",
            created=i,
            config={"alpha1": alpha1, "tau": 0.1},
            status="finished",
            stage="search",
            history=[{"epoch": 0, "val_acc": acc}],
            checkpoint="/x",
        )
    if confirm:  # group 1 (alpha1 0.3) beats group 2 (alpha1 0.7) on average over two seeds
        for g, alpha1, accs in [(1, 0.3, (64.0, 65.0)), (2, 0.7, (61.0, 62.0))]:
            for s, acc in enumerate(accs):
                index.update(
                    f"c{g}{s}",
                    created=10 + g * 2 + s,
                    stage="confirm",
                    group=g,
                    seed=1000 + s,
                    config={"alpha1": alpha1, "tau": 0.1, "train.seed": 1000 + s},
                    status="finished",
                    history=[{"epoch": 0, "val_acc": acc}],
                    checkpoint="/x",
                )
    return d


def test_a_tuned_cell_runs_the_confirmed_best_configuration(tmp_path):
    study = _finished_study(tmp_path)
    cfg = campaign_from_dict(table1_like(tuned=[{"pair": "r56-r20", "study": str(study)}]))
    plan = expand(cfg)
    col = next(c for c in plan.columns if c.tuned)
    assert col.label == "CKTF (tuned)" and col.distiller == "cktf" and col.anchor == "cktf"
    assert col.point == {"alpha1": 0.3, "tau": 0.1}  # the best mean over the confirmation's seeds, seed dropped
    assert "confirmed best" in col.evidence and "64.50" in col.evidence
    runs = [r for r in plan.runs if r.label == "CKTF (tuned)"]
    assert [r.seed for r in runs] == [0, 1, 2] and all(r.point == {"alpha1": 0.3, "tau": 0.1} for r in runs)
    assert plan.cells[runs[0].cell].params == {"nce_k": 4096}  # the study's fixed params
    assert runs[0].trial_point()["_seed"] == 0 and runs[0].trial_point()["alpha1"] == 0.3
    search = expand(
        campaign_from_dict(
            table1_like(
                tuned=[{"pair": "r56-r20", "study": str(study), "use": "search_best", "label": "CKTF (search)"}]
            )
        )
    )
    assert next(c for c in search.columns if c.tuned).point == {"alpha1": 0.7, "tau": 0.1}


@pytest.mark.parametrize(
    ("kind", "message"),
    [("incomplete", "not complete"), ("unconfirmed", "no confirmation runs"), ("other_student", "student")],
)
def test_a_tuned_cell_names_its_study_when_it_cannot_be_used(tmp_path, kind, message):
    study = _finished_study(
        tmp_path,
        status="incomplete" if kind == "incomplete" else "complete",
        confirm=kind != "unconfirmed",
        student="resnet32" if kind == "other_student" else "resnet20",
    )
    cfg = campaign_from_dict(table1_like(tuned=[{"pair": "r56-r20", "study": str(study)}]))
    with pytest.raises(ConfigError) as info:
        expand(cfg)
    assert info.value.field == "tuned.0.study" and message in info.value.problem
    lenient = expand(cfg, strict=False)  # the dry run counts the cell and says why it has no configuration
    assert any("tuned.0" in n for n in lenient.notes)


def test_the_field_reference_in_the_docs_is_current():
    from cktf.campaign.reference import BEGIN, END, campaign_markdown

    text = (ROOT / "docs" / "campaigns.md").read_text()
    section = text[text.index(BEGIN) : text.index(END) + len(END)]
    assert section + "\n" == campaign_markdown(), "regenerate it: python -m cktf.campaign.reference"


@pytest.mark.slow
def test_a_study_takes_the_campaigns_teacher_from_the_cache_unless_told_not_to(killed_and_resumed):
    """The teacher cache is the studies' too (docs/campaigns.md, "The teacher cache"): a study that asks for a
    campaign's teacher (same architecture, data, recipe, seed) trains nothing; ``teacher.cache: false`` trains its
    own and leaves the cache as it was."""
    from helpers import tiny_study, write_study

    from cktf.train.teacher_cache import TeacherCache

    k = killed_and_resumed
    key = json.loads((k.dir / "state.json").read_text())["teachers"]["wrn_16_2-wrn_16_1"]["key"]
    cache = TeacherCache(k.tmp / "teachers")
    trainings, entries = len(cache.trainings()), sorted(cache.entries())
    raw = yaml.safe_load(k.path.read_text())
    over = {
        "student": "wrn_16_1",
        "distiller": "kd",
        "data": raw["data"],
        "teacher": {"arch": "wrn_16_2", **raw["teacher"]},
        "optim": raw["optim"],
        "train": {**raw["train"], "epochs": 1},
        "search": {"num_samples": 1, "space": {"temperature": {"type": "uniform", "low": 2.0, "high": 6.0}}},
        "workdir": str(k.tmp / "studies"),
        "mlflow": {"tracking_uri": k.uri},
    }
    for name, cached in (("cached", True), ("own", False)):
        study = tiny_study(k.tmp, Path(raw["data"]["root"]), name=name, **over)
        study["teacher"]["cache"] = cached
        path = write_study(k.tmp / f"{name}.yaml", study)
        done = subprocess.run(
            cktf_cmd("tune", str(path), "--quiet"),
            env=cli_env(CKTF_TEACHER_CACHE=str(k.tmp / "teachers")),  # the campaign's cache
            cwd=k.tmp,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        teacher = json.loads((k.tmp / "studies" / name / "state.json").read_text())["teacher"]
        if cached:
            assert teacher["cache"] == key and teacher["trained"] is False, teacher
            assert "from the teacher cache" in (k.tmp / "studies" / name / "driver.log").read_text()
        else:
            assert "cache" not in teacher and teacher["trained"] is True, teacher
        assert len(cache.trainings()) == trainings and sorted(cache.entries()) == entries
