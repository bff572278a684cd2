"""What every benchmark shares: a local etcd, the two tools side by side, timestamped children.

The two tools are run with the same child command, so the child's own cost cancels out:

    conch elect NAME -- CHILD          (or conch sema NAME --max N -- CHILD)
    etcdctl lock NAME -- CHILD         (the etcdctl that ships with the etcd extra)

A child writes `s <epoch>` when it starts and `e <epoch>` just before it exits, using bash's
$EPOCHREALTIME (no fork for the clock), so a hand-over is `next s - previous e`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from conch.localetcd import LocalCluster, find_binary

TOOLS = ("conch", "etcdctl")


def conch_bin() -> str:
    """The `conch` script beside this interpreter (the venv's), else on PATH."""
    here = Path(sys.executable).parent / "conch"
    found = str(here) if here.exists() else shutil.which("conch")
    if not found:
        raise SystemExit("bench: `conch` is not installed in this environment")
    return found


def etcdctl_bin() -> str:
    return find_binary("etcdctl")


def etcd_version() -> str:
    out = subprocess.run([find_binary("etcd"), "--version"], capture_output=True, text=True)
    first = out.stdout.splitlines()[0] if out.stdout else "unknown"
    return first.replace("etcd Version: ", "")


def start_etcd(nodes: int = 1) -> LocalCluster:
    return LocalCluster(nodes).start()


@dataclass
class Tool:
    """How one tool is asked to run a child while holding a slot of NAME."""

    kind: str  # "conch" or "etcdctl"
    endpoints: str
    ttl: int = 10

    def command(self, name: str, child: Sequence[str], slots: int = 1) -> list[str]:
        if self.kind == "conch":
            head = [conch_bin(), "--endpoints", self.endpoints]
            if slots == 1:
                return [*head, "elect", name, "--ttl", f"{self.ttl}s", "--", *child]
            return [*head, "sema", name, "--max", str(slots), "--ttl", f"{self.ttl}s", "--", *child]
        if slots != 1:
            raise ValueError("etcdctl lock has one slot")
        return [
            etcdctl_bin(),
            f"--endpoints={self.endpoints}",
            "lock",
            f"--ttl={self.ttl}",
            name,
            "--",
            *child,
        ]

    def prefix(self, name: str, slots: int = 1) -> bytes:
        """The key range holding the contenders of NAME (to count who is queued)."""
        if self.kind == "conch":
            from conch.keys import elect_dir, sema_dir

            return elect_dir("/conch/", name) if slots == 1 else sema_dir("/conch/", name, slots)
        return f"{name}/".encode()


def stamped_child(log: Path, hold: float, gate: Path | None = None) -> list[str]:
    """A child that logs its start and end; with `gate`, it waits while the gate file exists
    (so the first holder keeps the slot until every waiter is queued)."""
    wait = f"while [ -e {gate} ]; do sleep 0.005; done; " if gate else ""
    body = (
        f"echo s $EPOCHREALTIME >> {log}; {wait}"
        + (f"sleep {hold}; " if hold > 0 else "")
        + f"echo e $EPOCHREALTIME >> {log}"
    )
    return ["bash", "-c", body]


def read_stamps(log: Path) -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = []
    for line in log.read_text().splitlines():
        kind, _, ts = line.partition(" ")
        out.append((kind, float(ts)))
    return out


def handovers(stamps: list[tuple[str, float]]) -> list[float]:
    """Gaps between one child's end and the next child's start, in seconds; raises if two
    children overlapped (a bench that saw that would be measuring a broken lock)."""
    gaps: list[float] = []
    last_end: float | None = None
    running = 0
    for kind, ts in sorted(stamps, key=lambda x: x[1]):
        if kind == "s":
            running += 1
            if running > 1:
                raise RuntimeError("two children ran at once")
            if last_end is not None:
                gaps.append(ts - last_end)
        else:
            running -= 1
            last_end = ts
    return gaps


def count_keys(endpoints: str, prefix: bytes) -> int:
    from conch.client import Client, ClientConfig

    with Client(ClientConfig(endpoints=tuple(endpoints.split(",")))) as c:
        kvs, _ = c.get_range(prefix, prefix_end(prefix))
        return len(kvs)


# Contenders started at once, at most: a hundred Python processes starting together on a
# 2-core machine starve each other past their dial timeout (conch exits 69). The benchmarks
# measure hand-overs, not start-up storms; the load test measures those.
START_BATCH = 8


def start_queued(
    tool: Tool,
    cmds: list[list[str]],
    already: int,
    env: dict[str, str],
    prefix: bytes,
    procs: list[subprocess.Popen[bytes]],
) -> None:
    """Start one contender per command (appended to `procs`), at most START_BATCH not yet
    queued at a time; return once every one is queued (its key is in `prefix`) behind the
    `already` ones."""
    from conch.client import Client, ClientConfig

    with Client(ClientConfig(endpoints=tuple(tool.endpoints.split(",")))) as c:

        def queued() -> int:
            kvs, _ = c.get_range(prefix, prefix_end(prefix))
            return len(kvs)

        for n, cmd in enumerate(cmds):
            poll(lambda n=n: queued() >= already + n - START_BATCH + 1, 120, "waiters to queue")
            procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL))
        want = already + len(cmds)
        poll(lambda: queued() >= want, 120, f"{len(cmds)} waiters to queue", every=0.1)


def prefix_end(prefix: bytes) -> bytes:
    return prefix[:-1] + bytes([prefix[-1] + 1])


def poll(cond: Callable[[], bool], timeout: float, what: str, every: float = 0.02) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise TimeoutError(f"bench: timed out waiting for {what}")
        time.sleep(every)


def pct(xs: Sequence[float], p: float) -> float:
    """The p-th percentile (0-100), nearest rank on sorted data."""
    if not xs:
        return float("nan")
    s = sorted(xs)
    k = max(0, min(len(s) - 1, round(p / 100 * (len(s) - 1))))
    return s[k]


def summary(xs: Sequence[float]) -> dict[str, float]:
    return {
        "n": len(xs),
        "p50": pct(xs, 50),
        "p95": pct(xs, 95),
        "p99": pct(xs, 99),
        "mean": statistics.fmean(xs) if xs else float("nan"),
        "max": max(xs) if xs else float("nan"),
    }


def quiet_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("CONCH_ENDPOINTS", None)
    env["ETCDCTL_API"] = "3"
    return env


def stop_group(p: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL to the process's whole group (it must have been started with
    start_new_session): `etcdctl lock` leaves its child running when it is killed."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(p.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        p.wait(10)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(p.pid, signal.SIGKILL)
    p.wait()
