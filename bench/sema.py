"""sema --max N under contention: wake-ups, promotion latency and etcd requests per release.

How many waiters does one release wake? (conch sema: "a release wakes O(1) waiters").

Runs `slots` holders and `waiters` waiters of one semaphore in this process, each with its own
lease session, using conch's own contention recipe against a real etcd. Holders are released
one at a time, oldest first; after each release we wait for the promotion it causes and count
the watch wake-ups (a waiter's watch returning events, so it re-lists) it took.

    python -m bench.sema                    # starts its own etcd; 50 waiters, --max 3
    python -m bench.sema --waiters 50 --slots 3 --endpoints http://127.0.0.1:2379

The number of requests etcd served per release (every gRPC method, every contender) is read
from etcd's own /metrics before and after, so it is etcd's view, not conch's.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field

from conch.client import Client, ClientConfig
from conch.contend import Contention, Outcome
from conch.holder import HolderRecord
from conch.keys import sema_dir
from conch.session import Session


@dataclass
class Member:
    contention: Contention
    session: Session
    held: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)


def _life(m: Member) -> None:
    try:
        if m.contention.wait() is Outcome.HELD and m.contention.promote():
            m.held.set()
            m.release.wait()
        m.contention.withdraw()
    finally:
        m.session.close(revoke=True)
        m.done.set()


@dataclass
class Releases:
    wakes: list[int]  # watch wake-ups per release
    latencies: list[float]  # release -> the next waiter holds, seconds
    requests: float  # gRPC messages etcd received per release (keepalives excluded)


def measure(endpoints: list[str], waiters: int, slots: int, prefix: str) -> Releases:
    """One release at a time, oldest holder first, each promoting the next waiter."""
    client = Client(ClientConfig(endpoints=tuple(endpoints)))
    client.connect()
    directory = sema_dir(prefix, f"herd-{time.monotonic_ns()}", slots)
    record = HolderRecord("bench", 0, "", ["bench"], "0")
    members: list[Member] = []
    try:
        for _ in range(slots + waiters):  # enqueue in order: rank == index
            s = Session(client, 30).open()
            c = Contention(client, directory, slots, s.lease_id, record, lost=s.lost.is_set)
            c.enqueue()
            m = Member(c, s)
            members.append(m)
            threading.Thread(target=_life, args=(m,), daemon=True).start()
        for m in members[:slots]:
            if not m.held.wait(30):
                raise RuntimeError("initial holders did not get their slots")
        # let every waiter reach its watch before measuring
        time.sleep(1.0)
        wakes: list[int] = []
        latencies: list[float] = []
        before_requests = etcd_requests(endpoints)
        for i in range(waiters):
            before = sum(m.contention.wakeups for m in members)
            t0 = time.perf_counter()
            members[i].release.set()
            nxt = members[i + slots]
            if not nxt.held.wait(30):
                raise RuntimeError(f"waiter {i + slots} was not promoted")
            latencies.append(time.perf_counter() - t0)
            # the promotion put wakes the next waiter; give it time to re-list and settle
            settle_until = time.monotonic() + 0.2
            while time.monotonic() < settle_until:
                time.sleep(0.02)
            wakes.append(sum(m.contention.wakeups for m in members) - before)
        requests = (etcd_requests(endpoints) - before_requests) / waiters
        for m in members:
            m.release.set()
        for m in members:
            m.done.wait(10)
        return Releases(wakes, latencies, requests)
    finally:
        for m in members:
            m.release.set()
        client.close()


def etcd_requests(endpoints: list[str]) -> int:
    """gRPC messages received by every member, from etcd's /metrics (keepalives excluded)."""
    import urllib.request

    total = 0
    for ep in endpoints:
        with urllib.request.urlopen(f"{ep}/metrics", timeout=5) as r:
            for line in r.read().decode().splitlines():
                if line.startswith("grpc_server_msg_received_total{") and (
                    'grpc_method="LeaseKeepAlive"' not in line
                ):
                    total += int(float(line.rsplit(" ", 1)[1]))
    return total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--waiters", type=int, default=50)
    ap.add_argument("--slots", type=int, default=3)
    ap.add_argument("--endpoints", default=None)
    args = ap.parse_args()
    cluster = None
    if args.endpoints:
        endpoints = args.endpoints.split(",")
    else:
        from conch.localetcd import LocalCluster

        cluster = LocalCluster(1).start()
        endpoints = cluster.endpoints
    try:
        wakes = measure(endpoints, args.waiters, args.slots, "/bench/").wakes
    finally:
        if cluster:
            cluster.stop()
    print(
        f"sema --max {args.slots} with {args.waiters} waiters: {len(wakes)} releases; "
        f"watch wake-ups per release: mean {statistics.mean(wakes):.2f}, max {max(wakes)}, "
        f"min {min(wakes)} (a thundering herd would wake ~{args.waiters // 2} on average)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
