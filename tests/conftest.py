"""Shared fixtures: the offline data root (../shared/data or $CKTF_TEST_DATA), an isolated cache, one teacher cache
and one scratch folder for the whole test run, and the processes a test starts (stopped at its end, also when it
fails)."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

# every Ray these tests start binds 127.0.0.1 only (read when Ray is first imported; docs/security.md)
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

DATA_ROOT = Path(os.environ.get("CKTF_TEST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


@pytest.fixture(scope="session")
def data_root() -> Path:
    if not (DATA_ROOT / "cifar10-jpeg").is_dir():
        pytest.skip(f"offline data not found at {DATA_ROOT} (set CKTF_TEST_DATA)")
    return DATA_ROOT


@pytest.fixture(scope="session", autouse=True)
def _session_stores(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Decoded arrays are cached once per session (or in $CKTF_CACHE_DIR when CI sets it); one teacher cache for
    the whole run, so the studies' shared teacher (tests/helpers.py) is trained once and served from the cache after
    (a test about teacher training uses its own); trials work in a scratch folder of the run, not the machine's."""
    if "CKTF_CACHE_DIR" not in os.environ:
        os.environ["CKTF_CACHE_DIR"] = str(tmp_path_factory.mktemp("cktf-cache"))
    os.environ["CKTF_TEACHER_CACHE"] = str(tmp_path_factory.mktemp("teacher-cache"))
    os.environ["CKTF_SCRATCH"] = str(tmp_path_factory.mktemp("scratch"))


class Processes:
    """Processes a test starts (drivers, servers), each in a session of its own; whatever is still running when the
    test ends is stopped with its whole process group (SIGTERM, then SIGKILL), also when the test failed."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen] = []

    def start(self, cmd: list[str], **kwargs) -> subprocess.Popen:
        proc = subprocess.Popen(cmd, start_new_session=True, **kwargs)
        self.started.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in self.started:
            if proc.poll() is not None:
                continue
            for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    proc.wait(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    continue


@pytest.fixture
def processes():
    procs = Processes()
    try:
        yield procs
    finally:
        procs.stop_all()


#: the quick-start study made small for the tests (tests/test_quickstart.py, test_browser.py): every trial 3 steps
#: an epoch on a 600-image slice, a 1-epoch teacher, N small enough for the slice; the confirmation kept
QUICKSTART_SETS = (
    "data.train_subset=600",
    "data.test_subset=200",
    "train.max_steps_per_epoch=3",
    "teacher.train.epochs=1",
    "search.num_samples=6",
    "search.space.nce_k.choices=[64,128]",
)


@pytest.fixture(scope="session")
def quickstart(tmp_path_factory, data_root):
    """The quick-start study as a user runs it: ``cktf tune studies/quickstart.yaml`` in a terminal 160 columns wide
    (the live view), smaller (:data:`QUICKSTART_SETS`); its terminal output, folder and tracking store."""
    import sys
    from types import SimpleNamespace

    tmp = tmp_path_factory.mktemp("quickstart")
    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(
        COLUMNS="160",
        CKTF_WORKDIR=str(tmp / "studies"),
        MLFLOW_TRACKING_URI=f"sqlite:///{tmp / 'mlflow.db'}",
        RAY_AUTH_MODE="disabled",
    )
    cmd = [sys.executable, "-c", "import sys; from cktf.cli import main; sys.exit(main())", "tune"]
    cmd += [str(root / "studies" / "quickstart.yaml"), "--data-root", str(data_root)]
    for item in QUICKSTART_SETS:
        cmd += ["--set", item]
    proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=1200)
    return SimpleNamespace(
        proc=proc,
        tmp=tmp,
        dir=tmp / "studies" / "quickstart",
        uri=env["MLFLOW_TRACKING_URI"],
        experiment="cktf-quickstart",
        name="quickstart",
    )
