"""Memory: RSS of a waiting and of a holding contender (conch: with its watchdog).

A holder runs `sleep`; one waiter queues behind it. RSS is read from /proc/PID/status (VmRSS)
once the waiter is queued, so both are in their steady state.
"""

from __future__ import annotations

import itertools
import subprocess
import time
from pathlib import Path

from bench.common import Tool, count_keys, poll, quiet_env, stop_group

_names = itertools.count()


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def children_of(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        kids = Path(task, "children").read_text().split()
        out += [int(k) for k in kids]
    return out


def command_of(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")


def measure(tool: Tool) -> dict[str, float]:
    """{'waiter': MB, 'holder': MB, 'holder+watchdog': MB}."""
    name = f"memory-{tool.kind}-{next(_names)}"
    env = quiet_env()
    holder = subprocess.Popen(tool.command(name, ["sleep", "600"]), env=env, start_new_session=True)
    waiter = None
    try:
        prefix = tool.prefix(name)
        poll(lambda: count_keys(tool.endpoints, prefix) == 1, 30, "the holder")
        waiter = subprocess.Popen(
            tool.command(name, ["sleep", "600"]), env=env, start_new_session=True
        )
        poll(lambda: count_keys(tool.endpoints, prefix) == 2, 30, "the waiter to queue")
        time.sleep(0.5)  # steady state: the waiter's watch is open (a bench, not a test)
        held = rss_mb(holder.pid)
        watchdogs = [p for p in children_of(holder.pid) if "watchdog" in command_of(p)]
        return {
            "waiter": rss_mb(waiter.pid),
            "holder": held,
            "holder+watchdog": held + sum(rss_mb(p) for p in watchdogs),
        }
    finally:
        for p in (waiter, holder):
            if p is not None:
                stop_group(p)
