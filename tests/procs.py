"""Helpers for the processes tests start (importable from any test directory)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def read(path: Path) -> str:
    """The file's text, or "" if it does not exist (yet)."""
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


def state(pid: int) -> str:
    """The process's state letter from /proc (R, S, T for stopped, Z, ...), "" if gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


def children_running(parent: int, needle: bytes) -> list[int]:
    """Pids of `parent`'s child processes whose command line contains `needle`."""
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmdline = f.read()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == parent and needle in cmdline:
            out.append(int(name))
    return out


def stop_gracefully(procs: Iterable[subprocess.Popen[Any]], grace: float = 5.0) -> None:
    """End processes a test left running: SIGCONT + SIGTERM (conch and conchd then end their
    children and exit normally, which also saves their coverage data), SIGKILL after `grace`."""
    live = [p for p in procs if p.poll() is None]
    for p in live:
        with contextlib.suppress(ProcessLookupError):
            p.send_signal(signal.SIGCONT)
            p.send_signal(signal.SIGTERM)
    end = time.monotonic() + grace
    for p in live:
        try:
            p.wait(max(0.0, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                p.kill()
            p.wait(10)


def watchdog_of(conch_pid: int) -> int:
    """The pid of conch's watchdog process (a child of conch running watchdog.py), or 0."""
    found = children_running(conch_pid, b"watchdog.py")
    return found[0] if found else 0


def gated_child_of(conch_pid: int) -> int:
    """The pid of a child of conch (or conchd) still held at its gate (the shell's script is
    still its command line: the command is not exec'd yet), or 0."""
    found = children_running(conch_pid, b"IFS= read -r _ <&3")
    return found[0] if found else 0
