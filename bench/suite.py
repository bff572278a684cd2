"""Which benchmarks run, at which sizes, against which etcd; results as plain data."""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench import common

SECTIONS = ("handover", "queue", "oneshot", "memory", "crash", "sema", "load", "cron", "steady")


@dataclass(frozen=True)
class Sizes:
    handover_reps: int  # one holder, one waiter: hand-overs measured per tool
    queues: tuple[int, ...]  # waiters queued behind one holder, drained
    child_hold: float  # seconds each child of a draining queue holds
    oneshot_reps: int
    memory_reps: int
    idle_seconds: float  # how long an idle waiter's CPU time is measured
    crash_reps: int
    crash_ttl: int
    sema_waiters: int
    sema_slots: int
    load_clients: int  # in-process contenders
    load_process_clients: int  # concurrent conch processes (each costs ~0.25 s of CPU)
    load_slots: int
    load_seconds: float
    cron_jobs: tuple[int, ...]  # jobs due on one tick across 3 conchd (issue 9)
    steady: tuple[int, float, float]  # jobs spread over seconds, measured over the first seconds

    @classmethod
    def full(cls) -> Sizes:
        return cls(30, (1, 10, 100, 200), 0.05, 20, 3, 10.0, 5, 10, 100, 4, 50, 16, 8, 60.0,
                   (100, 1000, 10000), (10000, 3600.0, 180.0))  # fmt: skip

    @classmethod
    def tiny(cls) -> Sizes:
        return cls(2, (1, 3), 0.0, 2, 1, 1.0, 1, 3, 4, 2, 4, 2, 2, 2.0, (5,), (20, 4.0, 4.0))


def _ms(xs: list[float]) -> dict[str, float]:
    return {k: (v if k == "n" else round(v * 1000, 2)) for k, v in common.summary(xs).items()}


def run(sections: list[str], sizes: Sizes, log: Callable[[str], None]) -> dict[str, Any]:
    from bench import crash, handover, memory, oneshot

    results: dict[str, Any] = {"meta": _meta(sizes)}
    cluster = common.start_etcd(1)
    try:
        endpoints = cluster.endpoints_csv
        tools = {k: common.Tool(k, endpoints) for k in common.TOOLS}
        if "handover" in sections:
            log("handover: one holder, one waiter")
            gaps: dict[str, list[float]] = {k: [] for k in tools}
            for _ in range(sizes.handover_reps):
                for k, tool in tools.items():  # interleaved
                    gaps[k] += handover.drain(tool, 1, 0.0)
            results["handover"] = {
                k: {**_ms(v), "raw_ms": [x * 1000 for x in v]} for k, v in gaps.items()
            }
        if "queue" in sections:
            res: dict[str, dict[int, Any]] = {k: {} for k in tools}
            for n in sizes.queues:
                # at least handover_reps hand-overs per size: short queues drain again
                drains = -(-sizes.handover_reps // n)
                log(f"queue: {n} waiters drain ({drains}x)")
                got: dict[str, list[float]] = {k: [] for k in tools}
                for _ in range(drains):
                    for k, tool in tools.items():  # interleaved
                        got[k] += handover.drain(tool, n, sizes.child_hold)
                for k, v in got.items():
                    res[k][n] = _ms(v)
            results["queue"] = res
        if "oneshot" in sections:
            log("one-shot")
            walls: dict[str, list[float]] = {k: [] for k in tools}
            floors = {name: [] for name in oneshot.floors()}  # type: dict[str, list[float]]
            for _ in range(sizes.oneshot_reps):
                for k, tool in tools.items():
                    walls[k].append(oneshot.oneshot(tool))
                for name, cmd in oneshot.floors().items():
                    floors[name].append(oneshot.wall(cmd))
            results["oneshot"] = {
                "tools": {k: _ms(v) for k, v in walls.items()},
                "floors": {k: _ms(v) for k, v in floors.items()},
            }
        if "memory" in sections:
            log("memory")
            mem: dict[str, list[dict[str, float]]] = {k: [] for k in tools}
            for _ in range(sizes.memory_reps):
                for k, tool in tools.items():
                    mem[k].append(memory.measure(tool, sizes.idle_seconds))
            results["memory"] = {
                k: {f: round(statistics.median(m[f] for m in v), 2) for f in v[0]}
                for k, v in mem.items()
            }
            results["memory"]["floor"] = {"python + grpc + stubs": round(_import_floor_mb(), 1)}
        if "crash" in sections:
            log(f"crash failover (--ttl {sizes.crash_ttl}s)")
            cr: dict[str, list[float]] = {k: [] for k in tools}
            for _ in range(sizes.crash_reps):
                for k in tools:
                    t = common.Tool(k, endpoints, ttl=sizes.crash_ttl)
                    cr[k].append(crash.failover(t))
            results["crash"] = {"ttl_s": sizes.crash_ttl, **{k: _ms(v) for k, v in cr.items()}}
            log(f"ghost waiter (--ttl {sizes.crash_ttl}s)")
            gh: dict[str, list[float]] = {k: [] for k in tools}
            for _ in range(max(1, sizes.crash_reps // 2)):
                for k in tools:
                    gh[k].append(crash.ghost(common.Tool(k, endpoints, ttl=sizes.crash_ttl)))
            results["ghost"] = {"ttl_s": sizes.crash_ttl, **{k: _ms(v) for k, v in gh.items()}}
        if "sema" in sections:
            log(f"sema --max {sizes.sema_slots}, {sizes.sema_waiters} contenders")
            from bench import sema

            rel = sema.measure(cluster.endpoints, sizes.sema_waiters, sizes.sema_slots, "/bench/")
            results["sema"] = {
                "slots": sizes.sema_slots,
                "waiters": sizes.sema_waiters,
                "latency_ms": _ms(rel.latencies),
                "wakes_mean": statistics.fmean(rel.wakes),
                "wakes_max": max(rel.wakes),
                "requests_per_release": rel.requests,
            }
    finally:
        cluster.stop()
    if "load" in sections:
        results["load"] = _load(sizes, log)
    if "cron" in sections:
        results["cron"] = _cron(sizes, log)
    if "steady" in sections:
        results["steady"] = _steady(sizes, log)
    return results


def _steady(sizes: Sizes, log: Callable[[str], None]) -> dict[str, Any]:
    import tempfile
    from pathlib import Path

    from bench import cron_scale

    n, spread, window = sizes.steady
    log(f"cron steady: {n} jobs spread over {spread:g} s, {cron_scale.DAEMONS} conchd")
    cluster = common.start_etcd(1)
    try:
        with tempfile.TemporaryDirectory(prefix="conch-bench-steady-") as tmp:
            pids = [m.pid for m in cluster.members if m.pid is not None]
            return cron_scale.steady(cluster.endpoints, n, spread, window, Path(tmp), log, pids)
    finally:
        cluster.stop()


def _cron(sizes: Sizes, log: Callable[[str], None]) -> list[dict[str, Any]]:
    import tempfile
    from pathlib import Path

    from bench import cron_scale

    out = []
    cluster = common.start_etcd(1)
    try:
        with tempfile.TemporaryDirectory(prefix="conch-bench-cron-") as tmp:
            for n in sizes.cron_jobs:
                log(f"cron: {n} jobs due on one tick, {cron_scale.DAEMONS} conchd")
                pids = [m.pid for m in cluster.members if m.pid is not None]
                out.append(cron_scale.measure(cluster.endpoints, n, Path(tmp) / str(n), log, pids))
    finally:
        cluster.stop()
    return out


# thresholds of the load test (stated in the report, PASS / FAIL each)
LOAD_SUCCESS = 0.999
LOAD_P95_MS = {"processes": 10_000.0, "in-process": 1_000.0}


def _load(sizes: Sizes, log: Callable[[str], None]) -> dict[str, Any]:
    from bench import load

    out: dict[str, Any] = {"thresholds": {"success_rate": LOAD_SUCCESS, "p95_ms": LOAD_P95_MS}}
    cluster = common.start_etcd(3)
    try:
        n, m, secs = sizes.load_clients, sizes.load_slots, sizes.load_seconds
        np = sizes.load_process_clients
        log(f"load: {np} conch processes, sema --max {m}, {secs:.0f}s, 3 members")
        tool = common.Tool("conch", cluster.endpoints_csv)
        out["processes"] = load.processes(tool, "load-p", np, m, secs).report()
        log(f"load: {n} in-process clients, sema --max {m}, {secs:.0f}s")
        out["in-process"] = load.in_process(cluster.endpoints, "load-i", n, m, secs).report()
        victim = cluster.members[-1]
        log("load: in-process, one member killed in the middle and restarted")
        res = load.in_process(
            cluster.endpoints, "load-k", n, m, secs,
            fault=lambda: cluster.kill_member(victim),
            heal=lambda: cluster.restart_member(victim),
        ).report()  # fmt: skip
        res["recovery_s"] = load.recovery_s(res["per_second"], res["fault"]["killed_at_s"])
        out["member-kill"] = res
    finally:
        cluster.stop()
    return out


def _import_floor_mb() -> float:
    import subprocess
    import sys

    code = (
        "import grpc, conch._pb.rpc_pb2_grpc;"
        "print(next(ln.split()[1] for ln in open('/proc/self/status') if ln.startswith('VmRSS')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout) / 1024


def _meta(sizes: Sizes) -> dict[str, Any]:
    import os

    import conch

    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(
                (ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu
            )
    except OSError:
        pass
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores, {cpu}",
        "python": platform.python_version(),
        "conch": conch.__version__,
        "etcd": common.etcd_version(),
        "sizes": sizes.__dict__,
    }
