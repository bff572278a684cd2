"""conchd at scale: N jobs due on one tick across 3 daemons, against the machine's floor.

Every job has the same schedule `@every D`, with D (about a day, to the microsecond) chosen so
that one of its ticks (the instants k * D after the epoch) falls a few seconds after the
set-up: all jobs fall due at that one instant T, and never again during the run. Each child is
`bash -c 'echo "$CONCH_JOB $CONCH_TICK $EPOCHREALTIME" >> LOG'` (bash's clock: no fork).
Measured per size:

* lag: each job's child start − T (p50 / p99 / max), duplicates ((job, tick) started twice),
  misses (jobs with no start within the wait);
* claims per second: runs started / (last start − T);
* etcd requests in the tick's window (Txn and Range, from etcd's own /metrics);
* conchd CPU seconds (all three, from T until the last start + 1 s) and peak RSS (VmHWM),
  etcd's CPU seconds over the same window, and the whole machine's (children, watchdogs: all);
* the gate's CPU per run (gate_cost: the same child with and without conch's gate shell);
* the floor, in the same run: one bare Python loop that starts the same N children with
  `subprocess.Popen` (lag = child start − loop start), and the machine's CPU seconds over it.

Jobs are written straight into etcd with conch's own store (conch.cron.store.add_job), as
`cron add` would, many at a time; conchd is started after, so the daemons read them all at start-up.
"""

from __future__ import annotations

import concurrent.futures
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.common import poll, quiet_env, summary
from conch.client import Client, ClientConfig
from conch.cron import model, store

DAEMONS = 3
SETTLE = 4.0  # the tick: this long after the jobs are written ...
ADD_COST = 0.004  # ... plus this per job (writing it, every daemon reading it)
WAIT_AFTER = 30.0  # after the tick: how long the last start may take beyond the floor x 50
CHILD = 'echo "$CONCH_JOB $CONCH_TICK $EPOCHREALTIME" >> {log}'


DAY_US = 86_400_000_000


def due_schedule(at: float) -> tuple[str, float]:
    """An `@every D` schedule with a tick within ~25 ms after epoch time `at`, and that tick.
    D is about a day: k = the days since the epoch, D = ceil(at / k) to the microsecond."""
    at_us = int(at * 1e6)
    k = max(1, at_us // DAY_US)
    d_us = -(-at_us // k)
    return f"@every {d_us / 1e6:.6f}", k * d_us / 1e6


def _add_jobs(endpoints: list[str], prefix: str, schedules: list[str], log: Path) -> None:
    """Job i (named job{i:05d}) on schedules[i]."""
    cmd = ["bash", "-c", CHILD.format(log=log)]
    now_tick = model.tick_of(datetime.now(UTC))
    client = Client(ClientConfig(endpoints=tuple(endpoints)))
    try:

        def add(i: int) -> None:
            job = store.host_record(cmd, f"job{i:05d}", schedules[i], "UTC")
            store.add_job(client, prefix, job, replace=False, now_tick=now_tick)

        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            list(pool.map(add, range(len(schedules))))
    finally:
        client.close()


def _etcd_requests(endpoint: str) -> dict[str, float]:
    """Cumulative handled gRPC requests of etcd, by method (Txn, Range, ...)."""
    text = urllib.request.urlopen(f"{endpoint}/metrics", timeout=5).read().decode()
    out: dict[str, float] = {}
    for m in re.finditer(r'^grpc_server_handled_total\{[^}]*grpc_method="(\w+)"[^}]*\} (\S+)$',
                         text, re.M):  # fmt: skip
        out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(2))
    return out


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _host_cpu_seconds() -> float:
    """CPU seconds the whole machine has been busy (every core: user, system, irq, ...)."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = (
        int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]
    )
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _starts(log: Path) -> list[tuple[str, str, float]]:
    try:
        lines = log.read_text().splitlines()
    except FileNotFoundError:
        return []
    out = []
    for ln in lines:
        parts = ln.split()
        if len(parts) == 3:
            out.append((parts[0], parts[1], float(parts[2])))
    return out


def _profile(daemons: list[subprocess.Popen[bytes]], work: Path) -> list[subprocess.Popen[bytes]]:
    """With BENCH_PYSPY=DIR (and py-spy installed; not a dependency): sample every daemon from
    just before the tick to the end of the window, in py-spy's raw (collapsed) form, to
    DIR/conchd-JOBS-N.txt (only threads holding the interpreter lock with BENCH_PYSPY_GIL=1)."""
    out = os.environ.get("BENCH_PYSPY", "")
    if not out:
        return []
    extra = ["--gil"] if os.environ.get("BENCH_PYSPY_GIL") else []
    jobs = work.name
    return [
        subprocess.Popen(["py-spy", "record", "--pid", str(p.pid), "-r", "250", "-f", "raw",
                          "-o", f"{out}/conchd-{jobs}-{i}.txt", *extra],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for i, p in enumerate(daemons)
    ]  # fmt: skip


def floor(n: int, work: Path) -> tuple[list[float], float]:
    """Lags of a bare loop starting the same n children (seconds after the loop's start), and
    the machine's CPU seconds until they all ended."""
    log = work / "floor.log"
    cmd = ["bash", "-c", CHILD.format(log=log)]
    env = quiet_env()
    t0, host0 = time.time(), _host_cpu_seconds()
    procs = []
    for i in range(n):
        env_i = {**env, "CONCH_JOB": f"job{i:05d}", "CONCH_TICK": "floor"}
        procs.append(subprocess.Popen(cmd, env=env_i, start_new_session=True))
    for p in procs:
        p.wait()
    return sorted(t - t0 for _, _, t in _starts(log)), _host_cpu_seconds() - host0


class _Daemons:
    """3 conchd on `prefix`, logging to work/conchd-N.log; SIGTERMed on exit."""

    def __init__(self, endpoints: list[str], prefix: str, work: Path) -> None:
        env = {**quiet_env(), "CONCH_ENDPOINTS": ",".join(endpoints), "CONCH_PREFIX": prefix}
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs = [work / f"conchd-{i}.log" for i in range(DAEMONS)]
        for i, path in enumerate(self.logs):
            with open(path, "wb") as out:
                self.procs.append(subprocess.Popen(
                    [sys.executable, "-m", "conch.cron.command", "--id", f"d{i}", "--ttl", "10s"],
                    env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                ))  # fmt: skip

    def __enter__(self) -> _Daemons:
        poll(lambda: all("claiming ticks" in p.read_text() for p in self.logs), 120,
             "the daemons to start claiming", every=0.2)  # fmt: skip
        return self

    def __exit__(self, *exc: object) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)

    def seen(self, n: int, timeout: float) -> None:
        """Wait until every daemon has logged n jobs added."""
        poll(lambda: all(p.read_text().count("' added: ") >= n for p in self.logs),
             max(1.0, timeout), "every daemon to see every job", every=0.5)  # fmt: skip

    def cpu_seconds(self) -> float:
        return sum(_cpu_seconds(p.pid) for p in self.procs)

    def peak_rss_mb(self) -> list[float]:
        return [round(_peak_rss_mb(p.pid), 1) for p in self.procs]


def _sleep_until(t: float) -> None:
    while (left := t - time.time()) > 0:
        time.sleep(min(0.2, left))


def _first_starts(log: Path) -> tuple[dict[str, float], int]:
    """Each job's first start, and how many starts were duplicates."""
    first: dict[str, float] = {}
    dups = 0
    for j, _, t in _starts(log):
        if j in first:
            dups += 1
            first[j] = min(first[j], t)
        else:
            first[j] = t
    return first, dups


def gate_cost(work: Path, n: int = 200) -> float:
    """CPU ms one run's gate costs: the same child started n times bare (os.posix_spawn) and n
    times through conch's gate (Child.spawn, the gate opened at once), CPU of the reaped
    children per start, the difference. The gate shell execs the command: one process each."""
    from conch.supervisor import Child

    log = work / "gate.log"
    cmd = ["bash", "-c", CHILD.format(log=log)]
    env = quiet_env()
    bash = shutil.which("bash", path=env.get("PATH")) or "/bin/bash"

    def children_cpu() -> float:
        r = resource.getrusage(resource.RUSAGE_CHILDREN)
        return r.ru_utime + r.ru_stime

    c0 = children_cpu()
    for _ in range(n):
        os.waitpid(os.posix_spawn(bash, cmd, env), 0)
    c1 = children_cpu()
    for _ in range(n):
        child = Child.spawn(cmd, env)
        child.open_gate()
        child.wait()
    c2 = children_cpu()
    return round(((c2 - c1) - (c1 - c0)) / n * 1000, 2)


def measure(
    endpoints: list[str],
    n: int,
    work: Path,
    log_line: Any,
    etcd_pids: list[int] = (),  # type: ignore[assignment]
) -> dict[str, Any]:
    """One size: N jobs on one tick, 3 daemons; the floor measured right after."""
    work.mkdir(parents=True, exist_ok=True)
    prefix = f"/bench-cron-{n}-{int(time.time())}/"
    log = work / "starts.log"
    with _Daemons(endpoints, prefix, work) as daemons:
        # the tick: after the jobs are written and every daemon has seen them all
        schedule, tick = due_schedule(time.time() + SETTLE + n * ADD_COST)
        _add_jobs(endpoints, prefix, [schedule] * n, log)
        daemons.seen(n, tick - time.time() - 1)
        if time.time() > tick - 0.5:
            raise RuntimeError(f"{n} jobs: set up only {tick - time.time():.1f}s before the tick")
        log_line(f"cron scale: {n} jobs due at {datetime.fromtimestamp(tick, UTC):%H:%M:%S}Z")
        cpu0 = daemons.cpu_seconds()
        etcd_cpu0 = sum(_cpu_seconds(pid) for pid in etcd_pids)
        host0 = _host_cpu_seconds()
        req0 = _etcd_requests(endpoints[0])
        _sleep_until(tick - 0.3)
        spies = _profile(daemons.procs, work)
        _sleep_until(tick)
        end = time.time() + WAIT_AFTER + n * 0.05
        while time.time() < end and len({j for j, _, _ in _starts(log)}) < n:
            time.sleep(0.2)
        time.sleep(1.0)  # stragglers and duplicates
        cpu = daemons.cpu_seconds() - cpu0
        etcd_cpu = sum(_cpu_seconds(pid) for pid in etcd_pids) - etcd_cpu0
        host_cpu = _host_cpu_seconds() - host0
        req1 = _etcd_requests(endpoints[0])
        rss = daemons.peak_rss_mb()
        for spy in spies:
            spy.send_signal(signal.SIGINT)
            spy.wait(60)
    first, dups = _first_starts(log)
    lags = sorted(t - tick for t in first.values())
    floor_lags, floor_host_cpu = floor(n, work)
    gate_ms = gate_cost(work, max(20, min(200, n)))
    span = (lags[-1] if lags else 0.0) or 1e-9
    return {
        "jobs": n,
        "daemons": DAEMONS,
        "lag_s": summary(lags),
        "floor_s": summary(floor_lags),
        "duplicates": dups,
        "misses": n - len(first),
        "claims_per_s": round(len(first) / span, 1),
        "etcd_requests": _delta(req0, req1),
        "conchd_cpu_s": round(cpu, 2),
        "etcd_cpu_s": round(etcd_cpu, 2),
        "host_cpu_s": round(host_cpu, 2),  # the whole machine, children and watchdogs too
        "floor_host_cpu_s": round(floor_host_cpu, 2),
        "gate_cpu_ms": gate_ms,  # one run's gate shell (measured beside: gate_cost)
        "conchd_peak_rss_mb": rss,
    }


def _delta(req0: dict[str, float], req1: dict[str, float]) -> dict[str, int]:
    return {
        k: int(req1.get(k, 0) - req0.get(k, 0))
        for k in ("Txn", "Range", "Put", "DeleteRange")
        if k in req1
    }


def steady(
    endpoints: list[str],
    n: int,
    spread: float,
    window: float,
    work: Path,
    log_line: Any,
    etcd_pids: list[int] = (),  # type: ignore[assignment]
) -> dict[str, Any]:
    """N jobs whose ticks are spread evenly over `spread` seconds (10,000 over an hour: one
    every 0.36 s, as H-style minutes would spread them), 3 daemons, measured over the first
    `window` seconds of it: every job is defined and watched, the jobs of the window run.
    Job i's tick: T0 + i * spread / N, its schedule an `@every D` of about a day that falls
    there (due_schedule): each job runs once in the run, at its own instant."""
    work.mkdir(parents=True, exist_ok=True)
    prefix = f"/bench-cron-steady-{n}-{int(time.time())}/"
    log = work / "starts.log"
    with _Daemons(endpoints, prefix, work) as daemons:
        t0 = time.time() + SETTLE + n * ADD_COST
        due = [due_schedule(t0 + i * spread / n) for i in range(n)]
        ticks = {f"job{i:05d}": tick for i, (_, tick) in enumerate(due)}
        _add_jobs(endpoints, prefix, [schedule for schedule, _ in due], log)
        daemons.seen(n, t0 - time.time() - 1)
        if time.time() > t0 - 0.5:
            raise RuntimeError(f"{n} jobs: set up only {t0 - time.time():.1f}s before the first")
        expected = {j for j, t in ticks.items() if t < t0 + window}
        log_line(f"cron steady: {n} jobs over {spread:g} s, {len(expected)} due in the "
                 f"{window:g} s from {datetime.fromtimestamp(t0, UTC):%H:%M:%S}Z")  # fmt: skip
        _sleep_until(t0)
        cpu0, req0 = daemons.cpu_seconds(), _etcd_requests(endpoints[0])
        etcd_cpu0 = sum(_cpu_seconds(pid) for pid in etcd_pids)
        _sleep_until(t0 + window)
        cpu = daemons.cpu_seconds() - cpu0
        etcd_cpu = sum(_cpu_seconds(pid) for pid in etcd_pids) - etcd_cpu0
        req = _delta(req0, _etcd_requests(endpoints[0]))
        rss = daemons.peak_rss_mb()
        # the window's last jobs: given as long as the first ones had (their lags, p99 and up)
        _sleep_until(t0 + window + WAIT_AFTER / 6)
    first, dups = _first_starts(log)
    lags = sorted(first[j] - ticks[j] for j in expected if j in first)
    return {
        "jobs": n,
        "daemons": DAEMONS,
        "spread_s": spread,
        "window_s": window,
        "due": len(expected),
        "lag_s": summary(lags),
        "duplicates": dups,
        "misses": len(expected - set(first)),
        "early": sum(1 for j, t in first.items() if t < ticks[j]),
        "etcd_requests_per_s": {k: round(v / window, 1) for k, v in req.items()},
        "conchd_cpu_pct": round(100 * cpu / window, 1),  # of one core, the 3 daemons together
        "etcd_cpu_pct": round(100 * etcd_cpu / window, 1),
        "conchd_peak_rss_mb": rss,
    }
