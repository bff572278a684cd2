"""Crash failover: SIGKILL of the holder's process -> the successor's child starts.

The holder's child exits promptly on SIGTERM; the same TTL for both tools. conch's watchdog
kills the orphaned group at once; whether the successor then waits for the lease to expire is
what this measures. `etcdctl lock` leaves its child running and the lease to expire.
"""

from __future__ import annotations

import itertools
import subprocess
import tempfile
import time
from pathlib import Path

from bench.common import (
    Tool,
    count_keys,
    poll,
    quiet_env,
    read_stamps,
    stamped_child,
    stop_group,
)

_names = itertools.count()


def failover(tool: Tool) -> float:
    """Seconds from the SIGKILL to the successor's child start."""
    name = f"crash-{tool.kind}-{next(_names)}"
    env = quiet_env()
    with tempfile.TemporaryDirectory(prefix="conch-bench-") as tmp:
        log = Path(tmp, "log")
        child = stamped_child(log, 600)
        holder = subprocess.Popen(tool.command(name, child), env=env, start_new_session=True)
        waiter = None
        try:
            poll(lambda: log.exists(), 30, "the holder's child")
            prefix = tool.prefix(name)
            waiter = subprocess.Popen(tool.command(name, child), env=env, start_new_session=True)
            poll(lambda: count_keys(tool.endpoints, prefix) == 2, 30, "the waiter to queue")
            t_kill = time.time()
            holder.kill()
            holder.wait()
            poll(
                lambda: sum(k == "s" for k, _ in read_stamps(log)) >= 2,
                tool.ttl * 3,
                "the successor",
                every=0.005,
            )
            return max(ts for k, ts in read_stamps(log) if k == "s") - t_kill
        finally:
            for p in (waiter, holder):
                if p is not None:
                    stop_group(p)


def ghost(tool: Tool) -> float:
    """A waiter SIGKILLed while queued, then the holder ends: seconds from the holder's child's
    end to the start of the waiter queued behind the dead one (its key holds the slot until
    its lease expires)."""
    name = f"ghost-{tool.kind}-{next(_names)}"
    env = quiet_env()
    with tempfile.TemporaryDirectory(prefix="conch-bench-") as tmp:
        log, gate = Path(tmp, "log"), Path(tmp, "gate")
        gate.touch()
        procs: list[subprocess.Popen[bytes]] = []
        try:
            first = subprocess.Popen(tool.command(name, stamped_child(log, 0, gate)), env=env,
                                     start_new_session=True)  # fmt: skip
            procs.append(first)
            poll(lambda: log.exists(), 30, "the holder's child")
            prefix = tool.prefix(name)
            for n in (2, 3):  # the ghost-to-be, then the one behind it
                procs.append(subprocess.Popen(tool.command(name, stamped_child(log, 0)),
                                              env=env, start_new_session=True))  # fmt: skip
                poll(lambda n=n: count_keys(tool.endpoints, prefix) == n, 30, "a waiter")
            procs[1].kill()  # the ghost: its key stays until its lease expires
            procs[1].wait()
            gate.unlink()
            poll(lambda: sum(k == "s" for k, _ in read_stamps(log)) >= 2, tool.ttl * 3,
                 "the waiter behind the ghost", every=0.005)  # fmt: skip
            stamps = read_stamps(log)
            end = next(ts for k, ts in stamps if k == "e")
            return max(ts for k, ts in stamps if k == "s") - end
        finally:
            for p in procs:
                stop_group(p)
