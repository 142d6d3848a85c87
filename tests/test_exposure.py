"""What a running study exposes: a local Ray that listens on 127.0.0.1 only, and no value read from the
environment in MLflow (its database and its artifacts are searched byte for byte)."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
import time

import psutil
import pytest
from helpers import cktf_cmd, tiny_study, write_study

pytestmark = pytest.mark.slow

SECRET = "s3cr3t-7f3a9c"  # stands for a token a shared study file could try to log


def _loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    mapped = getattr(ip, "ipv4_mapped", None)  # ::ffff:127.0.0.1 is IPv4 loopback seen from an IPv6 socket
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


def _listening(root: psutil.Process) -> dict[tuple[str, int], str]:
    """``{(address, port): process name}`` of every listening TCP socket of ``root`` and its descendants."""
    out = {}
    for proc in [root, *root.children(recursive=True)]:
        try:
            for conn in proc.net_connections(kind="inet"):
                if conn.status == psutil.CONN_LISTEN:
                    out[(conn.laddr.ip, conn.laddr.port)] = proc.name()
        except psutil.Error:
            continue
    return out


def test_a_local_study_listens_on_loopback_only_and_logs_no_secret(tmp_path, data_root):
    workdir = tmp_path / SECRET / "studies"  # the secret reaches the study as a path, as a token in a URL would
    study = tiny_study(
        tmp_path,
        data_root,
        name="exposure",
        train__epochs=2,
        search={"num_samples": 2, "space": {"alpha1": {"type": "uniform", "low": 0.0, "high": 1.0}}},
        params={"nce_k": 64},
    )
    study["env"] = ["TEAM_WORKDIR"]
    study["workdir"] = "${TEAM_WORKDIR}"
    path = write_study(tmp_path / "exposure.yaml", study)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")}
    env.update(RAY_AUTH_MODE="disabled", TEAM_WORKDIR=str(workdir))  # the CLI itself must keep Ray on loopback
    log = open(tmp_path / "driver.log", "w")
    proc = subprocess.Popen(cktf_cmd("tune", str(path), "--quiet"), env=env, cwd=tmp_path, stdout=log, stderr=log)
    seen: dict[tuple[str, int], str] = {}
    state = workdir / "exposure" / "state.json"
    deadline = time.time() + 600
    while proc.poll() is None and time.time() < deadline:
        try:
            running = json.loads(state.read_text()).get("stage") == "trials"
        except (OSError, ValueError):
            running = False
        if running:
            seen.update(_listening(psutil.Process(proc.pid)))
        time.sleep(0.5)
    assert proc.wait(timeout=60) == 0, (tmp_path / "driver.log").read_text()[-3000:]
    assert len(seen) >= 3, f"the Ray processes' sockets were not seen: {seen}"  # GCS, raylet, object manager ...
    exposed = {addr: name for addr, name in seen.items() if not _loopback(addr[0])}
    assert not exposed, f"listening outside loopback: {exposed}"

    assert (workdir / "exposure" / "state.json").exists()  # the study did use the secret path
    found = []
    for f in [tmp_path / "mlflow.db", *(tmp_path / "mlartifacts").rglob("*")]:
        if f.is_file() and SECRET.encode() in f.read_bytes():
            found.append(str(f.relative_to(tmp_path)))
    assert not found, f"the value read from the environment reached MLflow: {found}"
    resolved = json.loads((workdir / "exposure" / "study.resolved.json").read_text())
    assert resolved["workdir"] == "${TEAM_WORKDIR}"


@pytest.mark.parametrize(
    "entry",
    [
        "from cktf.cli import main; main(['campaign', 'missing.yaml'])",
        "from cktf.cli import main; main(['tune', 'missing.yaml'])",
        "import runpy, sys; sys.argv = ['cktf', 'tune', 'missing.yaml']; runpy.run_module('cktf.cli', "
        "run_name='__main__')",
    ],
    ids=["cktf-campaign", "cktf-tune", "python-m-cktf.cli"],
)
def test_every_entry_point_keeps_a_local_ray_on_loopback_before_ray_is_imported(tmp_path, entry):
    """Ray reads ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` once, on import: each command sets it before anything it
    imports pulls Ray in (docs/security.md), or a local Ray would listen on every interface."""
    code = (
        "import sys\ntry:\n    " + entry + "\nexcept SystemExit:\n    pass\n"
        "from ray._private import ray_constants\nprint('CLUSTER', ray_constants.ENABLE_RAY_CLUSTER)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")}
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert "CLUSTER False" in done.stdout, done.stdout[-2000:] + done.stderr[-2000:]
