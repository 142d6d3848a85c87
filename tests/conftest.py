"""Shared fixtures: the offline data root (../shared/data or $CKTF_TEST_DATA) and an isolated cache."""

from __future__ import annotations

import os
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
def _session_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Decoded arrays are cached once per session (or in $CKTF_CACHE_DIR when CI sets it)."""
    if "CKTF_CACHE_DIR" not in os.environ:
        os.environ["CKTF_CACHE_DIR"] = str(tmp_path_factory.mktemp("cktf-cache"))
