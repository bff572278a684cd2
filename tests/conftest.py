"""Shared fixtures: one real etcd per test session (per xdist worker), a unique prefix per test."""

from __future__ import annotations

import contextlib
import os
import re
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from cron_fixtures import client, daemons  # noqa: F401
from faults.fixtures import clock_control, etcd_proxy, faultshim_lib, make_proxy  # noqa: F401
from procs import stop_gracefully

from conch.localetcd import LocalCluster, find_binary

ROOT = Path(__file__).resolve().parent.parent


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--seed", action="store", default=None, help="seed for invariant tests")
    _add_invariant_options(parser)


def _single_node() -> Iterator[LocalCluster]:
    cluster = LocalCluster(nodes=1)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def own_etcd() -> Iterator[LocalCluster]:
    """A single-node etcd of this test's own, free to be stopped, restarted or reconfigured."""
    yield from _single_node()


@pytest.fixture(scope="session")
def etcd() -> Iterator[LocalCluster]:
    """A single-node etcd started from the binary on PATH, torn down after the session."""
    yield from _single_node()


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


# -- helpers shared by the integration tests (import with `from conftest import ...`) ---------
def wait_for(pred, timeout: float = 10.0, interval: float = 0.05, what: str = "condition"):  # type: ignore[no-untyped-def]
    """Poll pred() until it returns a truthy value (returned) or timeout (AssertionError)."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def pid_gone(pid: int) -> bool:
    """True if no such process, or only a zombie is left."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return True


class Conch:
    """Runs the conch CLI of this checkout as real processes against the session etcd."""

    def __init__(self, cmd: list[str], env: dict[str, str]) -> None:
        self.cmd, self.env = cmd, env
        self.procs: list = []  # type: ignore[type-arg]

    def run(self, *args: str, timeout: float = 60, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
        import subprocess

        return subprocess.run(
            [*self.cmd, *args],
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def start(self, *args: str, env: dict[str, str] | None = None, **kw):  # type: ignore[no-untyped-def]
        import subprocess

        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
        p = subprocess.Popen([*self.cmd, *args], env={**self.env, **(env or {})}, text=True, **kw)
        self.procs.append(p)
        return p

    def who(self, *args: str, env: dict[str, str] | None = None) -> dict:  # type: ignore[type-arg]
        import json

        r = self.run(*args, "--who", "--json", env=env)
        assert r.returncode in (0, 1), r.stderr
        return json.loads(r.stdout)

    def cleanup(self) -> None:
        stop_gracefully(self.procs)
        for p in self.procs:
            with contextlib.suppress(Exception):
                p.communicate(timeout=10)


@pytest.fixture
def conch(conch_cmd: list[str], conch_env: dict[str, str]) -> Iterator[Conch]:
    c = Conch(conch_cmd, conch_env)
    try:
        yield c
    finally:
        c.cleanup()


@pytest.fixture
def etcdctl(etcd: LocalCluster, etcdctl_bin: str):  # type: ignore[no-untyped-def]
    """Run etcdctl against the session etcd: etcdctl('get', '--prefix', p) -> stdout."""
    import subprocess

    def run(*args: str, check: bool = True) -> str:
        r = subprocess.run(
            [etcdctl_bin, "--endpoints", etcd.endpoints_csv, *args],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if check and r.returncode != 0:
            raise AssertionError(f"etcdctl {args} failed: {r.stderr}")
        return r.stdout

    return run


# -- invariant tests (tests/invariant, layer 3): seed selection and the measured-figures file ----
# (called from pytest_addoption above; the fixtures live in tests/invariant/conftest.py)
def _add_invariant_options(parser: pytest.Parser) -> None:
    group = parser.getgroup("invariant", "invariant tests (tests/invariant)")
    group.addoption(
        "--random-seeds",
        action="store",
        type=int,
        default=None,
        metavar="K",
        help="run K random seeds instead of the fixed CI seeds (nightly); each seed is shown "
        "in the test id, replay one with --seed N",
    )
    group.addoption(
        "--invariant-report",
        action="store",
        default=None,
        metavar="FILE",
        help="write the measured overlap and convergence figures per fault kind as JSON to FILE",
    )
