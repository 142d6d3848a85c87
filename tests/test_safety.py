"""A study's inputs handled safely: environment expansion with a boundary, data files that cannot run code, cached
arrays that are checked, checkpoints that fall back, every bad input a one-line error before anything runs, one
driver per study. (The faults of a running study are in ``test_faults.py``.)"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import socket
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import tiny_study, write_study

from cktf.cli import main
from cktf.data import DATASETS, DataConfig
from cktf.data._base import ArrayDataset
from cktf.data.cache import cache_root, load_cached
from cktf.data.splits import Splits
from cktf.errors import ConfigError, UnsafeDataError
from cktf.train import OptimConfig, RunConfig, TrainConfig, fit, prepare_run
from cktf.tune.plan import load_study, study_from_dict
from cktf.tune.results.store import StudyStore
from cktf.tune.run.lock import LOCK_FILE, StudyLock, StudyLockedError

# ----------------------------------------------------------------------------- ${VAR} with a boundary


def test_an_undeclared_variable_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "hunter2-secret")
    study = tiny_study(tmp_path, Path("/nonexistent"), params={"nce_m": 0.5})
    study["data"]["root"] = "${AWS_SECRET_ACCESS_KEY}"
    with pytest.raises(ConfigError) as exc:
        study_from_dict(study)
    assert exc.value.field == "data.root" and "env: [AWS_SECRET_ACCESS_KEY]" in exc.value.fix
    assert "hunter2" not in str(exc.value)
    declared = study_from_dict({**study, "env": ["AWS_SECRET_ACCESS_KEY"]})
    assert declared.data.root == "hunter2-secret"  # the study said it may read it
    assert declared.logged()["data"]["root"] == "${AWS_SECRET_ACCESS_KEY}"  # and it is logged as written
    assert "hunter2" not in json.dumps(declared.logged())


def test_always_allowed_variables_and_names_that_never_read_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("CKTF_WORKDIR", str(tmp_path / "w"))
    study = tiny_study(tmp_path, Path("/nonexistent"))
    study["workdir"] = "${CKTF_WORKDIR:-runs}"
    cfg = study_from_dict(study)
    assert cfg.workdir == str(tmp_path / "w") and cfg.logged_value("workdir", cfg.workdir) == "${CKTF_WORKDIR:-runs}"
    for field, value in (("name", "s-${CKTF_WORKDIR}"), ("mlflow.experiment", "${CKTF_WORKDIR}")):
        bad = tiny_study(tmp_path, Path("/nonexistent"))
        section, _, key = field.rpartition(".")
        (bad[section] if section else bad)[key] = value
        with pytest.raises(ConfigError) as exc:
            study_from_dict(bad)
        assert exc.value.field == field


# ----------------------------------------------------------------------------- data files that cannot run code


class _Payload:
    """What a crafted pickle does: call a function of the reader's choice when loaded."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _cifar100_root(tmp_path: Path, data_root: Path, payload: object | None) -> Path:
    root = tmp_path / "cifar"
    shutil.copytree(data_root / "cifar-100-python-subset" / "cifar-100-python", root / "cifar-100-python")
    if payload is not None:
        (root / "cifar-100-python" / "train").write_bytes(pickle.dumps({"data": payload, "fine_labels": []}))
    return root


def test_a_crafted_cifar_root_runs_no_code(tmp_path, data_root, capsys):
    marker = tmp_path / "pwned"
    root = _cifar100_root(tmp_path, data_root, _Payload(marker))
    assert main(["data", "prepare", "cifar100", "--root", str(root), "--cache-dir", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert "is not a CIFAR batch" in err and "posix.system" in err and str(root) in err
    assert not marker.exists(), "the payload ran"
    with pytest.raises(UnsafeDataError):
        DATASETS.get("cifar100").load(root, "train", cache_dir=tmp_path / "c")
    assert not marker.exists()


def test_the_genuine_cifar100_files_still_load_through_the_restricted_reader(tmp_path, data_root):
    root = _cifar100_root(tmp_path, data_root, None)
    ds = DATASETS.get("cifar100").load(root, "train", cache_dir=tmp_path / "c")
    assert ds.images.shape == (1117, 32, 32, 3) and ds.images.dtype == np.uint8 and len(ds.classes) == 100
    assert ds.targets.min() >= 0 and ds.targets.max() < 100


# ----------------------------------------------------------------------------- the data cache is checked


def _cached_entry(tmp_path: Path, data_root: Path) -> tuple[Path, str, np.ndarray]:
    cache = tmp_path / "c"
    root = _cifar100_root(tmp_path, data_root, None)
    original = np.array(DATASETS.get("cifar100").load(root, "test", cache_dir=cache).images)
    (meta,) = cache_root(cache).glob("cifar100-test-*.json")
    return root, meta.name[: -len(".json")], original


def test_a_changed_cached_array_is_rebuilt_with_a_warning(tmp_path, data_root, caplog):
    root, key, original = _cached_entry(tmp_path, data_root)
    images = np.load(tmp_path / "c" / f"{key}.images.npy", mmap_mode="r+")
    images[:50] = 0  # 50 zeroed images, same size: nothing but the checksum can tell
    images.flush()
    del images
    assert load_cached(key, tmp_path / "c") is None
    assert "checksum mismatch" in caplog.text
    again = DATASETS.get("cifar100").load(root, "test", cache_dir=tmp_path / "c")
    np.testing.assert_array_equal(again.images, original)  # rebuilt from the source, not the zeroed copy


def test_a_cache_record_without_its_keys_is_rebuilt(tmp_path, data_root, caplog):
    root, key, original = _cached_entry(tmp_path, data_root)
    meta_path = tmp_path / "c" / f"{key}.json"
    meta = json.loads(meta_path.read_text())
    del meta["n"]
    meta_path.write_text(json.dumps(meta))
    again = DATASETS.get("cifar100").load(root, "test", cache_dir=tmp_path / "c")
    np.testing.assert_array_equal(again.images, original)
    assert "unreadable or incomplete" in caplog.text


# ----------------------------------------------------------------------------- checkpoints fall back


def _synthetic_splits() -> Splits:
    gen = np.random.default_rng(0)
    images = gen.integers(0, 255, (96, 32, 32, 3), dtype=np.uint8)
    targets = np.arange(96) % 10
    ds = ArrayDataset(images, targets, [str(i) for i in range(10)])
    return Splits(DATASETS.get("cifar10"), ds, None, ArrayDataset(images[:32], targets[:32], ds.classes))


def _run(out: Path, epochs: int) -> RunConfig:
    return RunConfig(
        student="resnet8",
        distiller="ce",
        data=DataConfig(dataset="cifar10", val_fraction=0.0),
        optim=OptimConfig(milestones=()),
        train=TrainConfig(epochs=epochs, batch_size=32, progress=False),
        out_dir=str(out),
    )


def test_a_truncated_checkpoint_falls_back_to_the_one_before(tmp_path, caplog):
    splits = _synthetic_splits()
    out = tmp_path / "run"
    fit(prepare_run(_run(out, 2), splits=splits))
    assert (out / "last.pt").exists() and (out / "last.prev.pt").exists()  # the previous one is kept
    data = (out / "last.pt").read_bytes()
    (out / "last.pt").write_bytes(data[: len(data) // 3])  # cut short
    summary = fit(prepare_run(_run(out, 3), splits=splits))
    assert "trying the checkpoint before it" in caplog.text and "from the previous checkpoint (epoch 1)" in caplog.text
    epochs = [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [0, 1, 2] and summary["epochs"] == 3  # epoch 1 was redone from epoch 0's state


# ----------------------------------------------------------------------------- bad input: one line, exit 2


@pytest.mark.parametrize(
    ("content", "args", "needle"),
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe", [], "is not a text file"),
        (b"", ["--data-root", "/tmp"], "must hold a mapping of fields, got NoneType"),
        (b"- a\n- b\n", ["--set", "search.num_samples=2"], "must hold a mapping of fields, got list"),
        (b"name: x\n  bad: [indent\n", [], "is not valid YAML"),
    ],
)
def test_bad_study_files_are_one_line_errors(tmp_path, capsys, content, args, needle):
    path = tmp_path / "study.yaml"
    path.write_bytes(content)
    assert main(["tune", str(path), "--quiet", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cktf: error:") and needle in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study.yaml"]  # nothing written


def test_absurd_epochs_and_trial_counts_need_i_mean_it(tmp_path, capsys):
    study = tiny_study(tmp_path, Path("/nonexistent"), train={"epochs": 10**12, "batch_size": 64})
    path = write_study(tmp_path / "s.yaml", study)
    assert main(["tune", str(path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "train.epochs" in err and "GPU-days" in err and "--i-mean-it" in err
    many = tiny_study(tmp_path, Path("/nonexistent"), search__num_samples=5000)
    with pytest.raises(ConfigError) as exc:
        study_from_dict(many)
    assert exc.value.field == "search.num_samples" and "trial-epochs" in exc.value.problem
    assert study_from_dict(many, overrides={"search.allow_large": True}).search.num_samples == 5000
    assert not (tmp_path / "studies").exists()


# ----------------------------------------------------------------------------- one driver per study


def test_a_second_driver_is_refused_naming_the_holder(tmp_path):
    store = StudyStore(tmp_path / "study")
    with StudyLock(store, "s").acquire():
        with pytest.raises(StudyLockedError) as exc:
            StudyLock(store, "s").acquire()
        text = str(exc.value)
        assert f"pid {os.getpid()}" in text and socket.gethostname() in text and "started" in text
        with pytest.raises(StudyLockedError, match="another driver"):
            StudyLock(store, "s").acquire(break_lock=True)  # refused while the heartbeat is fresh
    assert not store.exists(LOCK_FILE)  # released
    assert not (tmp_path / "study").exists()  # nothing else was written there, so the folder went too


def test_a_dead_drivers_lock_is_taken_over_and_a_stale_remote_one_needs_break_lock(tmp_path):
    store = StudyStore(tmp_path / "study")
    (tmp_path / "study").mkdir()
    dead = {"host": socket.gethostname(), "pid": 2**22 + 7, "started": time.time(), "heartbeat": time.time()}
    store.write_json(dead, LOCK_FILE)
    with StudyLock(store, "s").acquire() as lock:  # same host, no such process: a SIGKILLed driver
        assert store.read_json(LOCK_FILE)["pid"] == lock.owner["pid"]
    remote = {"host": "elsewhere", "pid": 1, "started": 0, "heartbeat": time.time() - 3600}
    store.write_json(remote, LOCK_FILE)
    with pytest.raises(StudyLockedError, match="--break-lock"):
        StudyLock(store, "s").acquire()
    with StudyLock(store, "s").acquire(break_lock=True):
        pass


def test_load_study_keeps_env_sources_for_logging(tmp_path, monkeypatch):
    monkeypatch.setenv("CKTF_DATA_ROOT", str(tmp_path))
    cfg = load_study(Path(__file__).resolve().parents[1] / "studies" / "quickstart.yaml")
    assert cfg.data.root == str(tmp_path) and cfg.logged()["data"]["root"] == "${CKTF_DATA_ROOT:-data}"
