"""Shared fixtures: one real etcd per test session (per xdist worker), a unique prefix per test."""

from __future__ import annotations

import os
import re
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from conch.localetcd import LocalCluster, find_binary

ROOT = Path(__file__).resolve().parent.parent


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--seed", action="store", default=None, help="seed for invariant tests")


@pytest.fixture(scope="session")
def etcd() -> Iterator[LocalCluster]:
    """A single-node etcd started from the binary on PATH, torn down after the session."""
    cluster = LocalCluster(nodes=1)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def etcdctl_bin() -> str:
    return find_binary("etcdctl")


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> str:
    """A key prefix no other test uses."""
    name = re.sub(r"[^A-Za-z0-9_]+", "_", request.node.name)[:40]
    return f"/t/{name}-{uuid.uuid4().hex[:8]}/"


@pytest.fixture
def conch_env(etcd: LocalCluster, prefix: str) -> dict[str, str]:
    """Environment for running the `conch` CLI against the session etcd under a unique prefix."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONCH_", "ETCDCTL_"))}
    env["CONCH_ENDPOINTS"] = etcd.endpoints_csv
    env["CONCH_PREFIX"] = prefix
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture(scope="session")
def conch_cmd() -> list[str]:
    """argv prefix that runs the conch CLI of this checkout with this interpreter."""
    return [sys.executable, "-m", "conch"]
