"""Fixtures of the cron tests (re-exported by tests/conftest.py): conchd processes of one test,
and a client on the session etcd."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from procs import stop_gracefully

from conch.client import Client, ClientConfig
from conch.localetcd import LocalCluster

CONCHD = [sys.executable, "-m", "conch.cron.command"]


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


class Daemons:
    """conchd processes of one test; their logs go to files (never a pipe that could fill)."""

    def __init__(self, env: dict[str, str], tmp: Path) -> None:
        self.env, self.tmp = env, tmp
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, did: str, *args: str, env: dict[str, str] | None = None) -> Any:
        log = open(self.tmp / f"conchd-{did}.log", "wb")  # noqa: SIM115
        p = subprocess.Popen(
            [*CONCHD, "--id", did, *args],
            env={**self.env, **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self.procs[did] = p
        return p

    def log(self, did: str) -> str:
        return _read(self.tmp / f"conchd-{did}.log")

    def stop(self, did: str, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        p = self.procs[did]
        if p.poll() is None:
            p.send_signal(sig)
        return p.wait(timeout)

    def cleanup(self) -> None:
        stop_gracefully(list(self.procs.values()))  # SIGKILLed ones: their watchdogs act


@pytest.fixture
def daemons(conch_env: dict[str, str], tmp_path: Path) -> Iterator[Daemons]:
    d = Daemons(conch_env, tmp_path)
    try:
        yield d
    finally:
        d.cleanup()


@pytest.fixture
def client(etcd: LocalCluster) -> Iterator[Client]:
    c = Client(ClientConfig(endpoints=tuple(etcd.endpoints)))
    try:
        yield c
    finally:
        c.close()
