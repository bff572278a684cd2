"""Memory: RSS of a waiting and of a holding contender (conch: with its watchdog; the next in
line also with its child's process, held at the gate), and the CPU an idle waiter uses.

A holder runs `sleep`; one waiter queues behind it. RSS is read from /proc/PID/status (VmRSS)
once the waiter is queued, so both are in their steady state; the waiter's CPU time is the sum
of its threads' /proc/PID/task/TID/schedstat (nanoseconds on a CPU) over `idle_seconds`.
"""

from __future__ import annotations

import contextlib
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


def cpu_seconds(pid: int) -> float:
    """CPU time used so far by every thread of the process (threads that ended not counted)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, ValueError, IndexError):  # the thread ended meanwhile
            total += int(Path(task, "schedstat").read_text().split()[0])
    return total / 1e9


def children_of(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        kids = Path(task, "children").read_text().split()
        out += [int(k) for k in kids]
    return out


def command_of(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")


def measure(tool: Tool, idle_seconds: float) -> dict[str, float]:
    """{'waiter': MB, 'waiter+spares': MB (the next in line has its watchdog and its child's
    process, held at the gate, ready),
    'holder': MB, 'holder+watchdog': MB, 'waiter CPU %': % of a core}."""
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
        cpu0, t0 = cpu_seconds(waiter.pid), time.monotonic()
        time.sleep(idle_seconds)  # the span measured
        busy = (cpu_seconds(waiter.pid) - cpu0) / (time.monotonic() - t0)
        spares = children_of(waiter.pid)  # conch: its watchdog and the child held at the gate
        return {
            "waiter": rss_mb(waiter.pid),
            "waiter+spares": rss_mb(waiter.pid) + sum(rss_mb(p) for p in spares),
            "holder": held,
            "holder+watchdog": held + sum(rss_mb(p) for p in watchdogs),
            "waiter CPU %": 100 * busy,
        }
    finally:
        for p in (waiter, holder):
            if p is not None:
                stop_group(p)
