"""Load test: many clients acquiring and releasing `sema --max N` for a while, like a service
load-test report: throughput, acquire latency, success rate, errors by kind, thresholds.

Two views, because on a small machine starting conch processes is itself the bottleneck:

* processes: each client loops `conch sema NAME --max N -- bash -c 'echo $EPOCHREALTIME'`;
  acquire latency = the child's start - the moment the process was started (the user's view,
  interpreter start-up included);
* in-process: each client is a thread using conch's own modules (one shared Client, a new
  lease Session and Contention per acquisition, as a conch process would do): acquire
  latency = enqueue -> holder; the recipe's and etcd's view, with the etcd requests it takes.

The in-process run can kill one member of the cluster in the middle and restart it; the
throughput per second then shows the dip and the recovery.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench.common import Tool, quiet_env, summary

EXIT_KINDS = {69: "etcd unavailable (69)", 70: "lease lost (70)", 75: "not acquired (75)"}


@dataclass
class LoadResult:
    view: str
    clients: int
    slots: int
    duration: float
    latencies: list[float] = field(default_factory=list)  # seconds, successful acquisitions
    done_at: list[float] = field(default_factory=list)  # seconds since start, per success
    errors: Counter[str] = field(default_factory=Counter)
    requests_per_acquisition: float | None = None
    fault: dict[str, float] | None = None  # the member kill: at / restarted (s since start)

    @property
    def ok(self) -> int:
        return len(self.latencies)

    def report(self) -> dict[str, Any]:
        total = self.ok + sum(self.errors.values())
        per_second = [0] * (int(self.duration) + 1)
        for t in self.done_at:
            if 0 <= t < len(per_second):
                per_second[int(t)] += 1
        return {
            "view": self.view,
            "clients": self.clients,
            "slots": self.slots,
            "duration_s": self.duration,
            "acquisitions": self.ok,
            "throughput_per_s": self.ok / self.duration,
            "success_rate": self.ok / total if total else 0.0,
            "latency_ms": {
                k: (v if k == "n" else v * 1000) for k, v in summary(self.latencies).items()
            },
            "errors": dict(self.errors),
            "requests_per_acquisition": self.requests_per_acquisition,
            "per_second": per_second,
            "fault": self.fault,
        }


def _loop_until(end: float, body: Callable[[], None]) -> threading.Thread:
    def run() -> None:
        while time.monotonic() < end:
            body()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def processes(tool: Tool, name: str, clients: int, slots: int, duration: float) -> LoadResult:
    res = LoadResult("processes", clients, slots, duration)
    lock = threading.Lock()
    t0 = time.monotonic()
    end = t0 + duration
    child = ["bash", "-c", "echo $EPOCHREALTIME"]
    env = quiet_env()

    def one() -> None:
        started = time.time()
        p = subprocess.run(tool.command(name, child, slots), env=env, capture_output=True,
                           text=True, timeout=120)  # fmt: skip
        with lock:
            if p.returncode == 0 and p.stdout.strip():
                res.latencies.append(float(p.stdout.split()[0]) - started)
                res.done_at.append(time.monotonic() - t0)
            else:
                res.errors[EXIT_KINDS.get(p.returncode, f"exit {p.returncode}")] += 1

    threads = [_loop_until(end, one) for _ in range(clients)]
    for t in threads:
        t.join()
    return res


def in_process(
    endpoints: list[str],
    name: str,
    clients: int,
    slots: int,
    duration: float,
    fault: Callable[[], None] | None = None,
    heal: Callable[[], None] | None = None,
) -> LoadResult:
    from bench.sema import etcd_requests
    from conch.client import Client, ClientConfig, EtcdError
    from conch.contend import Contention, Outcome
    from conch.holder import HolderRecord
    from conch.keys import sema_dir
    from conch.session import Session

    res = LoadResult("in-process", clients, slots, duration)
    lock = threading.Lock()
    client = Client(ClientConfig(endpoints=tuple(endpoints), dial_timeout=5.0))
    client.connect()
    directory = sema_dir("/bench/", name, slots)
    record = HolderRecord("bench", 0, "", ["bench"], "0")
    t0 = time.monotonic()
    end = t0 + duration

    def one() -> None:
        started = time.monotonic()
        session = None
        try:
            session = Session(client, 10, probe_key=directory).open()
            c = Contention(client, directory, slots, session.lease_id, record,
                           lost=lambda: not session.is_trusted())  # fmt: skip
            c.enqueue()
            outcome = c.wait(deadline=started + 30)
            if outcome is Outcome.HELD and c.promote():
                now = time.monotonic()
                with lock:
                    res.latencies.append(now - started)
                    res.done_at.append(now - t0)
            else:
                with lock:
                    res.errors[f"not held ({outcome.value})"] += 1
        except EtcdError as e:
            with lock:
                res.errors[type(e).__name__] += 1
        finally:
            if session is not None:
                session.close(revoke=True)  # the revoke deletes the key: the release

    before = etcd_requests(endpoints)
    threads = [_loop_until(end, one) for _ in range(clients)]
    if fault is not None and heal is not None:
        time.sleep(duration / 2)
        fault_at = time.monotonic() - t0
        fault()
        time.sleep(min(5.0, duration / 6))
        heal()
        res.fault = {"killed_at_s": fault_at, "restarted_at_s": time.monotonic() - t0}
    for t in threads:
        t.join()
    if fault is None:  # a restarted member's counters start again from zero
        res.requests_per_acquisition = (etcd_requests(endpoints) - before) / max(1, res.ok)
    client.close()
    return res


def recovery_s(per_second: list[int], fault_at: float) -> float | None:
    """Seconds from the fault until throughput is back to 80 % of its level before it."""
    k = int(fault_at)
    before = per_second[max(0, k - 10) : k]
    if not before:
        return None
    level = sum(before) / len(before)
    for i in range(k, len(per_second)):
        if per_second[i] >= 0.8 * level and i > k:
            return i - fault_at
    return None
