"""The harness of the cron scenario of the invariant tests (layer 3): three `conchd` daemons on
a real 3-member etcd cluster, several `conch cron` jobs, a seeded schedule of faults, and the
logs the checker (cron_checker.py) judges.

Everything is driven from outside, as an operator would: the daemons run as
`python -X dev -X faulthandler -m conch.cron.command --id dN --ttl T` with CONCH_ENDPOINTS and
CONCH_PREFIX in their environment, and a killed one is started again with the same --id (like
systemd's Restart=always); jobs are added and removed with `python -m conch cron add|rm`; the
final state is read with `conch cron ls --json`. conch has no test hooks.

    CronScenario.from_seed(seed)   the whole run, derived from the seed: the jobs (period,
                                   --overlap, run times longer than the period, --timeout,
                                   children that ignore SIGTERM), the TTL, which daemon has a
                                   skewed clock, and the fault schedule
    CronHarness(...).run()         runs it; returns a CronResult with the children's runs, the
                                   record observations, the fault log, every conchd life and
                                   the checker's report

Faults (every kind at least once per seed, in a seeded order, plus up to two extra ones, which
may be compound: a daemon fault injected while an etcd fault goes on):
* kill_daemon: SIGKILL of a conchd, preferring one that runs a child right now (waits up to
  3 s for one whose child still runs >= 1 s); restarted after the seed's restart delay;
* stop_daemon: SIGSTOP of a conchd (preferably one running a child) for 0.5-4 s, then SIGCONT;
* clock_skew: the wall clock of the skewed daemon (LD_PRELOAD shim from its start, maybe with a
  start offset) steps to another offset of +-2..30 s and stays there;
* lost_answer: each daemon reaches the cluster through its own three proxies (faults.proxy, one
  per member); just before a tick (whole even second) one daemon's proxies blackhole — its
  requests still reach etcd, so a claim commits, but no answer comes back — and 1-2 s later
  pass through again (resetting the connections);
* kill_member / pause_member / quorum_loss: as in the elect/sema harness (conch.localetcd);
* rm_readd: `conch cron rm NAME` while a run of NAME is in progress, then `conch cron add NAME`
  with the same definition 0-2 s later.

Observation:
* every child (cron_child.py) appends a start and an end record to one shared log; a monitor
  thread tails it and polls /proc every 10 ms for the pids of started children, so a killed
  child (no end record) ends when the monitor saw it gone (a zombie counts as gone);
* an observer thread reads `{prefix}cron/` every 0.25 s through etcd's JSON gateway (not through
  conch): run records, alive markers, definitions and heartbeats. It keeps each record's
  statuses as `cron ls` derives them (so records later pruned from the 20-run history are still
  judged) and decides whether the state is *converged*: every daemon up with a heartbeat of its
  current process, and the latest due tick of every job claimed (or overtaken: a later tick
  already claimed early, by a clock ahead).
After each fault the harness waits for a converged state (bounded) before the next one. At the
end it waits until every record agrees with the children (bounded), takes `cron ls --json`,
and stops the daemons with SIGTERM (each must exit 143).
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import math
import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from cron_checker import (
    ALL_FAULTS,
    CLOCK_SKEW,
    DAEMON_FAULTS,
    KILL_DAEMON,
    LOST_ANSWER,
    RM_READD,
    STOP_DAEMON,
    SUSPEND_RESUME,
    Fault,
    Incarnation,
    Job,
    Life,
    Listing,
    ManualCall,
    Params,
    Record,
    Report,
    Run,
    Shown,
    check,
    fmt_tick,
    percentile,
    summarize,
)
from cron_child import run_seconds
from faults.proxy import Proxy
from faults.shim import ClockControl, build, shim_env
from invariant_checker import KILL_MEMBER, PAUSE_MEMBER, QUORUM_LOSS, Convergence
from invariant_harness import _b64, _prefix_end, _proc_stat, heal, inject_all

from conch.localetcd import LocalCluster, Member

CHILD = Path(__file__).with_name("cron_child.py")
PY = [sys.executable, "-X", "dev", "-X", "faulthandler"]
CONCHD = [*PY, "-m", "conch.cron.command"]
CONCH = [*PY, "-m", "conch"]
DAEMONS = ("d1", "d2", "d3")

MONITOR_POLL = 0.01
OBSERVE_POLL = 0.25
SUPERVISE_POLL = 0.02
CONVERGE_WITHIN = 25.0  # after a fault is repaired
QUIESCE_WITHIN = 15.0  # at the end: until every record agrees with the children (+ TTL)
DUE_AFTER = 1.2  # a tick due this long ago must have been claimed (convergence)
HANG_OTHERS = 0.35  # lost_answer: the other daemons' paths hang until this after the tick


def now() -> float:
    return time.monotonic()


def _wall_offset() -> float:
    """time.time() - time.monotonic(), read tightly (the smallest bracket of a few tries)."""
    best: tuple[float, float] | None = None
    for _ in range(5):
        a = time.monotonic()
        w = time.time()
        b = time.monotonic()
        if best is None or b - a < best[0]:
            best = (b - a, w - (a + b) / 2)
    assert best is not None
    return best[1]


def parse_tick(text: str) -> float:
    """CONCH_TICK / a listing's tick (RFC 3339 UTC) as Unix seconds."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


# ---------------------------------------------------------------------------------------------
# the scenario
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobPlan:
    name: str
    every: int  # @every N s
    overlap: str  # forbid | allow
    run: tuple[float, float]  # the child's run time range (cron_child.run_seconds)
    term: str  # what its children do on SIGTERM: exit | ignore
    timeout: float | None
    kill_after: float
    retries: int = 0  # --retries (--retry-delay retry_delay)
    retry_delay: float = 0.0
    fail: float = 0.0  # the fraction of ticks whose first attempt exits 3 (cron_child.fails)

    def job(self) -> Job:
        return Job(self.name, float(self.every), self.overlap, self.timeout, self.kill_after,
                   self.retries)  # fmt: skip

    def add_args(self, log: Path) -> list[str]:
        args = ["cron", "add", self.name, "--schedule", f"@every {self.every}s"]
        args += ["--overlap", self.overlap, "--kill-after", f"{self.kill_after:g}s"]
        if self.timeout is not None:
            args += ["--timeout", f"{self.timeout:g}s"]
        if self.retries:
            args += ["--retries", str(self.retries), "--retry-delay", f"{self.retry_delay:g}s"]
        child = [sys.executable, "-I", "-S", str(CHILD), str(log)]
        return [*args, "--", *child, f"{self.run[0]:g}", f"{self.run[1]:g}", self.term,
                f"{self.fail:g}"]  # fmt: skip

    def describe(self) -> str:
        s = f"{self.name}: @every {self.every}s --overlap {self.overlap}"
        if self.timeout is not None:
            s += f" --timeout {self.timeout:g}s"
        if self.retries:
            s += (f" --retries {self.retries} --retry-delay {self.retry_delay:g}s "
                  f"({self.fail:.0%} of first attempts fail)")  # fmt: skip
        s += f" --kill-after {self.kill_after:g}s, runs {self.run[0]:g}-{self.run[1]:g}s"
        return s + (", ignores SIGTERM" if self.term == "ignore" else "")


@dataclass(frozen=True)
class FaultPlan:
    kind: str
    gap: float  # seconds to wait (after the previous convergence) before injecting it
    hold: float  # pause / blackhole / member downtime / quorum loss / rm..add gap (s)
    pick: float  # selects the target among the candidates, in [0, 1)
    prefer_busy: bool  # daemon faults: hit a daemon that runs a child
    mode: str = ""  # quorum_loss: stop|kill|pause; member faults: leader|any
    offset: float = 0.0  # clock_skew: the skewed clock's new offset from the true one (s)
    then: FaultPlan | None = None  # compound: a daemon fault `then_after` s into this one
    then_after: float = 0.0

    def describe(self) -> str:
        s = f"{self.kind}(gap={self.gap:.2f}s"
        if self.hold:
            s += f", hold={self.hold:.2f}s"
        if self.kind in DAEMON_FAULTS:
            s += ", busy" if self.prefer_busy else ", any"
        if self.mode:
            s += f", {self.mode}"
        if self.kind == CLOCK_SKEW:
            s += f", to {self.offset:+.1f}s"
        s += f", pick={self.pick:.2f})"
        if self.then is not None:
            s += f" + after {self.then_after:.2f}s {self.then.describe()}"
        return s


def _plan(rng: random.Random, kind: str) -> FaultPlan:
    hold = {
        STOP_DAEMON: rng.uniform(0.5, 4.0),
        LOST_ANSWER: rng.uniform(1.0, 2.0),
        KILL_MEMBER: rng.uniform(0.5, 3.0),
        PAUSE_MEMBER: rng.uniform(0.5, 3.0),
        QUORUM_LOSS: rng.uniform(0.5, 4.0),
        RM_READD: rng.uniform(0.0, 2.0),
    }.get(kind, 0.0)
    mode = ""
    if kind == QUORUM_LOSS:
        mode = rng.choice(["stop", "kill", "pause"])
    elif kind in (KILL_MEMBER, PAUSE_MEMBER):
        mode = rng.choice(["leader", "any"])
    offset = 0.0
    if kind == CLOCK_SKEW:
        offset = round(rng.choice([-1, 1]) * rng.uniform(2.0, 30.0), 1)
    return FaultPlan(
        kind=kind,
        gap=round(rng.uniform(0.3, 1.5), 3),
        hold=round(hold, 3),
        pick=rng.random(),
        prefer_busy=rng.random() < 0.75,
        mode=mode,
        offset=offset,
    )


@dataclass(frozen=True)
class CronScenario:
    seed: int
    ttl: float
    jobs: tuple[JobPlan, ...]
    skew_daemon: str  # the daemon that runs with the clock shim
    start_offset: float  # its wall clock's offset from its start (s)
    restart_delay: float  # a killed daemon is started again after this (RestartSec)
    faults: tuple[FaultPlan, ...]
    # the operator's `cron run NAME --wait` calls, one after another: (pause before, job pick)
    manual: tuple[tuple[float, float], ...] = ()

    @classmethod
    def from_seed(cls, seed: int) -> CronScenario:
        rng = random.Random(f"cron/{seed}")
        ka = rng.choice([0.5, 1.0])
        p_ignore = rng.choice([0.0, 0.3, 0.6])

        def term() -> str:
            return "ignore" if rng.random() < p_ignore else "exit"

        jobs = [
            # short and frequent: most ticks, most claims
            JobPlan("every1", 1, "forbid", (0.05, 0.6), term(), None, ka),
            # longer than its period, --overlap forbid: runs alternate with skipped ticks
            JobPlan("slow2", 2, "forbid", (2.2, 4.5), term(), None, ka),
            # longer than its period, --overlap allow: runs overlap each other. Its name sorts
            # first: a daemon claims due ticks in name order, and only an allow job's claim is
            # a single transaction (a forbid job's first reads the alive markers), so this is
            # the claim a lost_answer fault gets committed without an answer
            JobPlan("burst", rng.choice([1, 2]), "allow", (1.5, 3.5), term(), None, ka),
            # --timeout: SIGTERM, SIGKILL after --kill-after (its children often ignore SIGTERM)
            JobPlan(
                "capped",
                2,
                "forbid",
                (0.3, 3.0),
                "ignore" if rng.random() < 0.5 else "exit",
                rng.choice([1.0, 1.5]),
                0.5,
            ),
        ]
        kinds = list(ALL_FAULTS)
        rng.shuffle(kinds)
        plans = [_plan(rng, k) for k in kinds]
        for _ in range(rng.randint(0, 2)):
            extra = _plan(rng, rng.choice([k for k in ALL_FAULTS if k != RM_READD]))
            if extra.kind in (KILL_MEMBER, PAUSE_MEMBER, QUORUM_LOSS) and rng.random() < 0.6:
                then = _plan(rng, rng.choice(DAEMON_FAULTS))
                after = round(rng.uniform(0.0, max(extra.hold, 0.3)), 3)
                extra = dataclasses.replace(extra, then=then, then_after=after)
            plans.insert(rng.randint(0, len(plans)), extra)
        start_offset = 0.0
        if rng.random() < 0.5:
            start_offset = round(rng.choice([-1, 1]) * rng.uniform(2.0, 30.0), 1)
        # what an operator does meanwhile (issue 10), from an rng of its own so that the draws
        # above — the jobs and faults each seed was chosen for — stay as they were: `every1`
        # retries its failed first attempts; one or two suspend/resume of a job among the
        # faults; `cron run --wait` of a job every 1-3 s throughout
        ops = random.Random(f"cron-ops/{seed}")
        jobs[0] = dataclasses.replace(jobs[0], retries=1, retry_delay=ops.choice([0.2, 0.5]),
                                      fail=ops.choice([0.2, 0.4]))  # fmt: skip
        for _ in range(ops.randint(1, 2)):
            suspend = FaultPlan(
                kind=SUSPEND_RESUME, gap=round(ops.uniform(0.3, 1.5), 3),
                hold=round(ops.uniform(1.0, 3.5), 3), pick=ops.random(), prefer_busy=False,
            )  # fmt: skip
            plans.insert(ops.randint(0, len(plans)), suspend)
        manual = tuple((round(ops.uniform(1.0, 3.0), 3), ops.random()) for _ in range(200))
        return cls(
            seed=seed,
            ttl=rng.choice([2.0, 3.0]),
            jobs=tuple(jobs),
            skew_daemon=rng.choice(DAEMONS),
            start_offset=start_offset,
            restart_delay=round(rng.uniform(0.2, 1.0), 3),
            faults=tuple(plans),
            manual=manual,
        )

    def describe(self) -> str:
        return (
            f"cron seed {self.seed}: conchd {', '.join(DAEMONS)} --ttl {self.ttl:g}s "
            f"(restarted {self.restart_delay:g}s after a kill); {self.skew_daemon}'s clock "
            f"{self.start_offset:+g}s from its start\n  jobs: "
            + "; ".join(j.describe() for j in self.jobs)
            + "\n  faults: "
            + "; ".join(f.describe() for f in self.faults)
            + "\n  operator: `cron run NAME --wait --timeout 15s` every "
            + f"{min((g for g, _ in self.manual), default=0):g}-"
            + f"{max((g for g, _ in self.manual), default=0):g}s"
        )


# ---------------------------------------------------------------------------------------------
# observation: the children's log
# ---------------------------------------------------------------------------------------------


@dataclass
class _Start:
    job: str
    tick_text: str
    tick: float
    rev: int
    daemon: str
    life: int
    pid: int
    t: float
    starttime: str | None
    attempt: int = 1


class Monitor(threading.Thread):
    """Tails the children's log; notes when started children vanish (crash-safe runs)."""

    def __init__(self, path: Path) -> None:
        super().__init__(name="cron-monitor", daemon=True)
        self.path = path
        self.lock = threading.Lock()
        self.starts: dict[int, _Start] = {}  # by pid (a pid is not reused while we watch it)
        self.ends: dict[int, tuple[float, int]] = {}
        self.vanished: dict[int, float] = {}
        self.bad_lines: list[str] = []
        self._stop_ev = threading.Event()
        self._buf = b""
        self._offset = 0

    def stop(self) -> None:
        self._stop_ev.set()
        self.join(5)
        self._poll()

    def run(self) -> None:
        while not self._stop_ev.is_set():
            self._poll()
            self._stop_ev.wait(MONITOR_POLL)

    def _poll(self) -> None:
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                chunk = f.read()
        except FileNotFoundError:
            chunk = b""
        self._offset += len(chunk)
        self._buf += chunk
        *lines, self._buf = self._buf.split(b"\n")
        t_seen = now()
        with self.lock:
            for raw in lines:
                self._parse(raw.decode(errors="replace"), t_seen)
            for pid, st in self.starts.items():
                if pid in self.ends or pid in self.vanished:
                    continue
                stat = _proc_stat(pid)
                if (
                    stat is None
                    or stat[0] in ("Z", "X")
                    or (st.starttime is not None and stat[1] != st.starttime)
                ):
                    self.vanished[pid] = now()

    def _parse(self, line: str, t_seen: float) -> None:
        parts = line.split()
        try:
            if parts[0] == "S" and len(parts) in (8, 9):
                pid = int(parts[6])
                stat = _proc_stat(pid)
                self.starts[pid] = _Start(
                    job=parts[1],
                    tick_text=parts[2],
                    tick=parse_tick(parts[2]),
                    rev=int(parts[3]),
                    daemon=parts[4],
                    life=int(parts[5]),
                    pid=pid,
                    t=int(parts[7]) / 1e9,
                    starttime=stat[1] if stat else None,
                    attempt=int(parts[8]) if len(parts) == 9 else 1,
                )
                if stat is None or stat[0] in ("Z", "X"):
                    self.vanished.setdefault(pid, t_seen)
            elif parts[0] == "E" and len(parts) == 6:
                self.ends[int(parts[3])] = (int(parts[5]) / 1e9, int(parts[4]))
            else:
                self.bad_lines.append(line)
        except (ValueError, IndexError):
            self.bad_lines.append(line)

    def running(self) -> list[_Start]:
        with self.lock:
            return [
                s for p, s in self.starts.items() if p not in self.ends and p not in self.vanished
            ]

    def has_run(self, job: str, tick: float) -> bool:
        with self.lock:
            return any(s.job == job and s.tick == tick for s in self.starts.values())

    def runs(self) -> list[Run]:
        with self.lock:
            out = []
            for pid, s in self.starts.items():
                if pid in self.ends:
                    end: float | None = self.ends[pid][0]
                    how, code = "exit", self.ends[pid][1]
                elif pid in self.vanished:
                    end, how, code = self.vanished[pid], "vanished", None
                else:
                    end, how, code = None, "open", None
                out.append(Run(s.job, s.tick, s.rev, s.daemon, s.life, pid, s.t, end, how, code,
                               s.attempt))  # fmt: skip
            return sorted(out, key=lambda r: r.start)


# ---------------------------------------------------------------------------------------------
# observation: etcd's view (run records, alive markers, heartbeats), convergence
# ---------------------------------------------------------------------------------------------


@dataclass
class Snapshot:
    at: float
    jobs: dict[str, int]  # name -> create revision of the definition
    runs: dict[tuple[str, float], tuple[int, dict[str, Any]]]  # -> (create revision, record)
    alive: set[tuple[str, float]]
    heartbeats: dict[str, int | None]  # daemon id -> pid in its heartbeat


def derive(stored: str, alive: bool) -> str:
    """What `cron ls` shows for a record (docs/cron.md, "Status of a run")."""
    if stored == "running":
        return "running" if alive else "lost"
    return stored if stored in ("ok", "failed", "skipped", "missed") else "lost"


@dataclass
class _Track:
    job: str
    tick: float
    create_rev: int
    daemon: str
    claim: str
    first_seen: float
    last_seen: float
    states: list[Shown]


class Observer(threading.Thread):
    """Reads `{prefix}cron/` every OBSERVE_POLL; keeps every record's statuses and the
    convergence verdicts."""

    def __init__(self, h: CronHarness) -> None:
        super().__init__(name="cron-observer", daemon=True)
        self.h = h
        self.lock = threading.Lock()
        self.tracks: dict[tuple[str, float, int], _Track] = {}
        self.history: list[tuple[float, bool, str]] = []
        self.last: Snapshot | None = None
        self._stop_ev = threading.Event()
        self._ep = 0

    def stop(self) -> None:
        self._stop_ev.set()
        self.join(5)

    def post(self, path: str, body: dict[str, Any], timeout: float = 0.3) -> dict[str, Any] | None:
        urls = [m.client_url for m in self.h.cluster.members]
        data = json.dumps(body).encode()
        for k in range(len(urls)):
            idx = (self._ep + k) % len(urls)
            req = urllib.request.Request(
                urls[idx] + path, data=data, method="POST",
                headers={"Content-Type": "application/json"},
            )  # fmt: skip
            try:
                with urllib.request.urlopen(req, timeout=timeout) as r:
                    doc = json.loads(r.read())
            except (OSError, ValueError):
                continue
            if "header" not in doc:
                continue
            self._ep = idx
            return dict(doc)
        return None

    def read(self) -> Snapshot | None:
        root = f"{self.h.prefix}cron/".encode()
        at = now()
        doc = self.post("/v3/kv/range", {"key": _b64(root), "range_end": _b64(_prefix_end(root))})
        if doc is None:
            return None
        snap = Snapshot(at, {}, {}, set(), {})
        for kv in doc.get("kvs", []):
            key = base64.b64decode(kv["key"])[len(root) :].decode()
            value = base64.b64decode(kv.get("value", ""))
            parts = key.split("/")
            try:
                if parts[0] == "jobs" and len(parts) == 2:
                    snap.jobs[parts[1]] = int(kv["create_revision"])
                elif parts[0] == "runs" and len(parts) == 3:
                    rec = json.loads(value)
                    snap.runs[(parts[1], float(parts[2]))] = (int(kv["create_revision"]), rec)
                elif parts[0] == "alive" and len(parts) == 3:
                    snap.alive.add((parts[1], float(parts[2])))
                elif parts[0] == "daemons" and len(parts) == 2:
                    pid = json.loads(value).get("pid")
                    snap.heartbeats[parts[1]] = pid if isinstance(pid, int) else None
            except (ValueError, KeyError, AttributeError):
                self.h.notes.append(f"observer: cannot parse {key!r}: {value[:200]!r}")
        return snap

    def _track(self, snap: Snapshot) -> None:
        with self.lock:
            for (job, tick), (crev, rec) in snap.runs.items():
                count = rec.get("count")
                shown = Shown(
                    snap.at,
                    derive(str(rec.get("status")), (job, tick) in snap.alive),
                    rec.get("exit_code"),
                    rec.get("timed_out") is True,
                    count if isinstance(count, int) and count > 1 else 1,
                )
                tr = self.tracks.get((job, tick, crev))
                if tr is None:
                    tr = self.tracks[(job, tick, crev)] = _Track(
                        job, tick, crev, str(rec.get("daemon")), str(rec.get("claim")),
                        snap.at, snap.at, [shown],
                    )  # fmt: skip
                tr.last_seen = snap.at
                last = tr.states[-1]
                if (last.status, last.exit_code, last.timed_out) != (
                    shown.status,
                    shown.exit_code,
                    shown.timed_out,
                ):
                    tr.states.append(shown)
            self.last = snap

    def records(self) -> list[Record]:
        with self.lock:
            tracks = list(self.tracks.values())
        return [
            Record(
                t.job,
                t.tick,
                t.create_rev,
                t.daemon,
                t.claim,
                t.first_seen,
                t.last_seen,
                tuple(t.states),
            )
            for t in tracks
        ]

    def poll(self) -> Snapshot | None:
        snap = self.read()
        if snap is not None:
            self._track(snap)
        return snap

    def state(self, snap: Snapshot | None) -> tuple[bool, str]:
        """(converged, why not)."""
        if snap is None:
            return False, "etcd does not answer"
        h = self.h
        for d, p in h.current_procs().items():
            if p is None or not p.alive() or p.stopped:
                return False, f"{d} is not running"
            if snap.heartbeats.get(d) != p.pid:
                return False, f"no heartbeat of {d} (pid {p.pid})"
        wall = time.time()
        for inc in h.current_incarnations():
            job = h.jobs[inc.job]
            tick = math.floor((wall - DUE_AFTER) / job.every) * job.every
            if tick - h.wall_offset < inc.added + 1.0:
                continue
            if (inc.job, float(tick)) in snap.runs or h.monitor.has_run(inc.job, tick):
                continue
            # a later tick claimed already (early: a clock ahead) moved the job's low-water
            # mark past this one; nobody can claim it, and the daemons do claim: converged
            if any(j == inc.job and t > tick for j, t in snap.runs):
                continue
            return False, f"tick {fmt_tick(tick)} of {inc.job} not claimed"
        return True, ""

    def transitions(self) -> list[tuple[float, bool, str]]:
        with self.lock:
            hist = list(self.history)
        out: list[tuple[float, bool, str]] = []
        for t, ok, why in hist:
            if not out or out[-1][1:] != (ok, why):
                out.append((t, ok, why))
        return out

    def run(self) -> None:
        while not self._stop_ev.is_set():
            t = now()
            snap = self.poll()
            ok, why = self.state(snap)
            with self.lock:
                self.history.append((t, ok, why))
            self._stop_ev.wait(max(0.0, OBSERVE_POLL - (now() - t)))

    def wait_converged(self, fault_at: float, settle_until: float, deadline: float) -> float | None:
        """Wait for a converged observation made after `settle_until`; return the time the final
        run of converged observations began (not before `fault_at`), None at the deadline."""
        while now() < deadline:
            with self.lock:
                hist = list(self.history)
            idx = next(
                (
                    k
                    for k in range(len(hist) - 1, -1, -1)
                    if hist[k][0] >= settle_until and hist[k][1]
                ),
                None,
            )
            if idx is not None:
                k = idx
                while k > 0 and hist[k - 1][1] and hist[k - 1][0] >= fault_at:
                    k -= 1
                return max(hist[k][0], fault_at)
            time.sleep(OBSERVE_POLL / 2)
        return None


# ---------------------------------------------------------------------------------------------
# the daemons
# ---------------------------------------------------------------------------------------------


@dataclass
class DaemonProc:
    daemon: str
    life: int
    popen: subprocess.Popen[bytes]
    spawned: float
    stderr: Path
    clock_offset: float  # its wall clock's offset when it started (s)
    exited: float | None = None
    code: int | None = None
    signalled: int | None = None
    stopped: bool = False  # SIGSTOPped by the harness right now

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.exited is None

    def as_life(self) -> Life:
        return Life(self.daemon, self.life, self.pid, self.spawned, self.exited, self.code,
                    self.signalled, self.clock_offset)  # fmt: skip


@dataclass
class CliCall:
    args: list[str]
    at: float
    done: float
    code: int
    stdout: str
    stderr: str


class CronHarness:
    def __init__(
        self,
        sc: CronScenario,
        cluster: LocalCluster,
        workdir: Path,
        shim_lib: Path | None = None,
    ) -> None:
        self.sc = sc
        self.cluster = cluster
        self.dir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.prefix = f"/inv-cron/{sc.seed}-{uuid.uuid4().hex[:8]}/"
        self.log = workdir / "children.log"
        self.log.touch()
        self.shim_lib = shim_lib if shim_lib is not None else build()
        self.clock = ClockControl(workdir / "clock")
        self.offset = sc.start_offset
        self.clock.set_realtime_offset(self.offset)
        self.jobs = {j.name: j.job() for j in sc.jobs}
        self.plans = {j.name: j for j in sc.jobs}
        self.monitor = Monitor(self.log)
        self.observer = Observer(self)
        self.lock = threading.RLock()
        self.procs: list[DaemonProc] = []
        self.current: dict[str, DaemonProc | None] = dict.fromkeys(DAEMONS)
        self.restart_at: dict[str, float] = dict.fromkeys(DAEMONS, 0.0)
        self.respawn = True
        self.incarnations: list[Incarnation] = []
        self.faults: list[Fault] = []
        self.convergences: list[Convergence] = []
        self.cli: list[CliCall] = []
        self.notes: list[str] = []
        self.listing: Listing | None = None
        self.proxies: dict[str, list[Proxy]] = {}
        self.proxy_errors: list[str] = []
        self.t0 = now()
        self.wall_offset = _wall_offset()
        self._stop_ev = threading.Event()
        self._sup = threading.Thread(target=self._supervise, name="cron-supervisor", daemon=True)
        self.manual: list[ManualCall] = []
        self._operator_stop = threading.Event()
        self._operator = threading.Thread(target=self._operate, name="cron-operator", daemon=True)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("CONCH_", "ETCDCTL_"))}
        self.env.update(CONCH_PREFIX=self.prefix, PYTHONUNBUFFERED="1")
        self.cli_env = {**self.env, "CONCH_ENDPOINTS": cluster.endpoints_csv}

    # -- conch CLI -----------------------------------------------------------------------------
    def conch(self, *args: str) -> CliCall:
        at = now()
        r = subprocess.run(
            [*CONCH, *args], env=self.cli_env, capture_output=True, text=True, timeout=60
        )
        call = CliCall(list(args), at, now(), r.returncode, r.stdout, r.stderr)
        self.cli.append(call)
        if r.returncode != 0:
            self.notes.append(f"conch {' '.join(args[:3])} exited {r.returncode}: {r.stderr}")
        return call

    def add_job(self, name: str) -> None:
        call = self.conch(*self.plans[name].add_args(self.log))
        if call.code != 0:
            raise HarnessError(f"cron add {name} failed: {call.stderr.strip()}")
        rev = 0
        doc = self.observer.post(
            "/v3/kv/range", {"key": _b64(f"{self.prefix}cron/jobs/{name}".encode())}, timeout=2.0
        )
        if doc and doc.get("kvs"):
            rev = int(doc["kvs"][0]["create_revision"])
        with self.lock:
            self.incarnations.append(Incarnation(name, call.done, rev))

    def rm_job(self, name: str) -> CliCall:
        at = now()
        with self.lock:
            for k, inc in enumerate(self.incarnations):
                if inc.job == name and inc.removed is None:
                    self.incarnations[k] = dataclasses.replace(inc, removed=at)
        return self.conch("cron", "rm", name)

    def current_incarnations(self) -> list[Incarnation]:
        with self.lock:
            return [i for i in self.incarnations if i.removed is None]

    def _operate(self) -> None:
        """The operator: `cron run NAME --wait --timeout 15s` of a job, one after another, with
        the scenario's pauses between (the checker's rule 8 judges what each said)."""
        for pause, pick in self.sc.manual:
            if self._operator_stop.wait(pause):
                return
            name = self._pick(sorted(self.plans), pick)
            call = self.conch("cron", "run", name, "--wait", "--timeout", "15s")
            last = (call.stderr.strip().splitlines() or [""])[-1]
            tick = None
            if " tick " in last:
                with contextlib.suppress(ValueError, IndexError):
                    tick = parse_tick(last.split(" tick ", 1)[1].split(": ", 1)[0])
            with self.lock:
                self.manual.append(ManualCall(name, call.at, call.done, call.code, tick, last))

    # -- daemons -------------------------------------------------------------------------------
    def _spawn(self, d: str) -> DaemonProc:
        life = 1 + sum(1 for p in self.procs if p.daemon == d)
        env = {
            **self.env,
            "CONCH_ENDPOINTS": ",".join(p.endpoint for p in self.proxies[d]),
            "INV_DAEMON": d,
            "INV_LIFE": str(life),
            # a daemon that will not stop gets SIGABRT: its threads' stacks go to its stderr
            "PYTHONFAULTHANDLER": "1",
        }
        if d == self.sc.skew_daemon:
            env.update(shim_env(self.shim_lib, self.clock, base=self.env))
        err = self.dir / f"conchd-{d}-{life}.err"
        with open(err, "wb") as ef:
            popen = subprocess.Popen(
                [*CONCHD, "--id", d, "--ttl", f"{self.sc.ttl:g}s"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=ef,
                stderr=subprocess.STDOUT,
            )
        offset = self.offset if d == self.sc.skew_daemon else 0.0
        p = DaemonProc(d, life, popen, now(), err, offset)
        self.procs.append(p)
        self.current[d] = p
        return p

    def _reap(self) -> None:
        t = now()
        with self.lock:
            for d, p in self.current.items():
                if p is not None and p.alive():
                    rc = p.popen.poll()
                    if rc is None:
                        continue
                    p.exited, p.code, p.stopped = t, rc, False
                    self.restart_at[d] = t + self.sc.restart_delay
                if self.respawn and p is not None and not p.alive() and t >= self.restart_at[d]:
                    self._spawn(d)

    def _supervise(self) -> None:
        while not self._stop_ev.is_set():
            self._reap()
            self._stop_ev.wait(SUPERVISE_POLL)

    def current_procs(self) -> dict[str, DaemonProc | None]:
        with self.lock:
            return dict(self.current)

    # -- faults --------------------------------------------------------------------------------
    def _pick(self, items: list[Any], pick: float) -> Any:
        return items[min(int(pick * len(items)), len(items) - 1)]

    def _busy_daemon(self, plan: FaultPlan) -> tuple[DaemonProc, _Start | None] | None:
        """A live daemon running a child, preferably one whose child still runs >= 1 s; waits
        up to 3 s for one. Without `prefer_busy`: any live daemon."""
        deadline = now() + 3.0
        while True:
            with self.lock:
                live = {d: p for d, p in self.current.items() if p is not None and p.alive()}
            if not plan.prefer_busy:
                if live:
                    d = self._pick(sorted(live), plan.pick)
                    return live[d], None
                return None
            pairs = []
            for s in self.monitor.running():
                p = live.get(s.daemon)
                if p is None or p.life != s.life or p.stopped:
                    continue
                lo, hi = self.plans[s.job].run
                left = s.t + run_seconds(s.job, s.tick_text, lo, hi) - now()
                pairs.append((p, s, left))
            long = [(p, s) for p, s, left in pairs if left >= 1.0]
            if long or (pairs and now() >= deadline):
                cands = long or [(p, s) for p, s, _ in pairs]
                cands.sort(key=lambda x: (x[0].daemon, x[1].pid))
                return self._pick(cands, plan.pick)
            if now() >= deadline:
                if live:
                    d = self._pick(sorted(live), plan.pick)
                    return live[d], None
                return None
            time.sleep(0.05)

    def _target_member(self, plan: FaultPlan) -> Member:
        if plan.mode == "leader":
            with contextlib.suppress(TimeoutError):
                return self.cluster.wait_leader(timeout=5)
        return self._pick(self.cluster.members, plan.pick)

    def inject(self, plan: FaultPlan) -> Fault | None:
        c = self.cluster
        if plan.kind in (KILL_DAEMON, STOP_DAEMON):
            hit = self._busy_daemon(plan)
            if hit is None:
                self.notes.append(f"{plan.describe()}: no daemon to hit; skipped")
                return None
            p, s = hit
            what = f"pid {p.pid}" + (
                "" if s is None else f", running {s.job} tick {fmt_tick(s.tick)}"
            )
            at = now()
            if plan.kind == KILL_DAEMON:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGKILL)
                return Fault(KILL_DAEMON, at, at, daemon=p.daemon, life=p.life, detail=what)
            p.stopped = True
            os.kill(p.pid, signal.SIGSTOP)
            time.sleep(plan.hold)
            until = now()
            with contextlib.suppress(ProcessLookupError):  # a compound fault may have killed it
                os.kill(p.pid, signal.SIGCONT)
            p.stopped = False
            return Fault(STOP_DAEMON, at, until, daemon=p.daemon, life=p.life, detail=what)
        if plan.kind == CLOCK_SKEW:
            d = self.sc.skew_daemon
            p = self.current.get(d)
            prev, self.offset = self.offset, plan.offset
            at = now()
            self.clock.set_realtime_offset(self.offset)
            return Fault(CLOCK_SKEW, at, at, daemon=d, life=p.life if p else None,
                         offset=self.offset, prev_offset=prev)  # fmt: skip
        if plan.kind == LOST_ANSWER:
            with self.lock:
                live = sorted(d for d, p in self.current.items() if p is not None and p.alive())
            if not live:
                self.notes.append(f"{plan.describe()}: no daemon; skipped")
                return None
            d = self._pick(live, plan.pick)
            p = self.current[d]
            others = [px for od in DAEMONS if od != d for px in self.proxies[od]]
            # just before a whole even second (a tick of every job) d's answers start to get
            # lost, while the other daemons' paths hang for a moment across the tick: d's
            # first claim (of `burst`, see CronScenario) reaches etcd first and commits,
            # unanswered
            wall = time.time()
            tick = (math.floor(wall / 2) + 1) * 2
            if tick - wall < 0.4:
                tick += 2
            time.sleep(max(0.0, tick - 0.1 - time.time()))
            at = now()
            for px in self.proxies[d]:
                px.blackhole()
            for px in others:
                px.hang()
            time.sleep(max(0.0, tick + HANG_OTHERS - time.time()))
            for px in others:
                px.pass_through(reset=False)
            time.sleep(max(0.0, at + plan.hold - now()))
            for px in self.proxies[d]:
                px.pass_through()
            until = now()
            return Fault(LOST_ANSWER, at, until, daemon=d, life=p.life if p else None,
                         detail=f"across tick {fmt_tick(tick)}")  # fmt: skip
        if plan.kind in (KILL_MEMBER, PAUSE_MEMBER):
            m = self._target_member(plan)
            leader = c.leader()
            role = "leader" if leader is m else "follower"
            at = now()
            if plan.kind == KILL_MEMBER:
                c.kill_member(m)
                time.sleep(plan.hold)
                c.restart_member(m, timeout=30)
            else:
                c.pause_member(m)
                time.sleep(plan.hold)
                c.resume_member(m)
                c.wait_healthy(30)
            return Fault(plan.kind, at, now(), member=m.name, detail=role)
        if plan.kind == QUORUM_LOSS:
            at = now()
            taken = c.take_quorum(mode=plan.mode)  # type: ignore[arg-type]
            time.sleep(plan.hold)
            c.restore_quorum(timeout=30)
            names = ",".join(m.name for m in taken)
            return Fault(QUORUM_LOSS, at, now(), member=names, detail=plan.mode)
        if plan.kind == RM_READD:
            names = sorted(self.plans)
            name = self._pick(names, plan.pick)
            # prefer removing a job while a run of it is in progress (waits up to 3 s)
            deadline = now() + 3.0
            while now() < deadline:
                busy = sorted({s.job for s in self.monitor.running()})
                if busy:
                    if name not in busy:
                        name = self._pick(busy, plan.pick)
                    break
                time.sleep(0.05)
            running = [s for s in self.monitor.running() if s.job == name]
            at = now()
            rm = self.rm_job(name)
            time.sleep(plan.hold)
            self.add_job(name)
            detail = f"rm exited {rm.code}" + (
                f", while tick {fmt_tick(running[0].tick)} ran" if running else ", nothing running"
            )
            return Fault(RM_READD, at, now(), job=name, detail=detail)
        if plan.kind == SUSPEND_RESUME:
            name = self._pick(sorted(self.plans), plan.pick)
            sus = self.conch("cron", "suspend", name)
            time.sleep(plan.hold)
            res = self.conch("cron", "resume", name)
            detail = f"suspend exited {sus.code}, resume exited {res.code}"
            return Fault(SUSPEND_RESUME, sus.done, res.at, job=name, detail=detail)
        raise ValueError(plan.kind)

    def _inject_all(self, plan: FaultPlan) -> list[Fault]:
        return inject_all(self.inject, plan, "cron-fault")

    def _settle(self, f: Fault) -> float:
        """When every effect of fault f has begun (then the state may converge)."""
        if f.kind == KILL_DAEMON:
            return f.at + self.sc.restart_delay + 0.5
        if f.kind == CLOCK_SKEW:
            return f.at + 2.5
        if f.kind in (RM_READD, SUSPEND_RESUME):
            return f.until + 2.5
        return f.until + 0.3

    # -- the run ---------------------------------------------------------------------------------
    def run(self) -> CronResult:
        try:
            self._start()
            self.monitor.start()
            self._sup.start()
            self.observer.start()
            warm = self.observer.wait_converged(now(), now(), now() + CONVERGE_WITHIN)
            if warm is None:
                self.convergences.append(Convergence(-1, False, None, "never converged"))
                return self._finish()
            self._operator.start()
            for plan in self.sc.faults:
                time.sleep(plan.gap)
                fs = self._inject_all(plan)
                if not fs:
                    continue
                first = len(self.faults)
                self.faults += fs
                t = self.observer.wait_converged(
                    min(f.at for f in fs),
                    max(self._settle(f) for f in fs),
                    max(f.until for f in fs) + CONVERGE_WITHIN,
                )
                for fi, f in enumerate(fs, first):
                    if t is None:
                        self.convergences.append(
                            Convergence(fi, False, None, f"not within {CONVERGE_WITHIN}s of repair")
                        )
                    else:
                        self.convergences.append(Convergence(fi, True, t - f.at))
                if t is None:
                    self.notes.append(f"run aborted after fault #{len(self.faults) - 1}")
                    return self._finish()
            return self._finish()
        finally:
            self._teardown()

    def _start(self) -> None:
        for d in DAEMONS:
            self.proxies[d] = [Proxy(m.client_url).start() for m in self.cluster.members]
        for j in self.sc.jobs:
            self.add_job(j.name)
        # the daemons with a true clock first; the skewed one joins once their heartbeats are
        # there, as a host with a wrong clock would (it then waits for them before claiming)
        with self.lock:
            for d in DAEMONS:
                if d != self.sc.skew_daemon:
                    self._spawn(d)
        deadline = now() + 20.0
        while now() < deadline:
            snap = self.observer.read()
            if snap is not None and all(
                snap.heartbeats.get(d) == p.pid
                for d, p in self.current_procs().items()
                if p is not None
            ):
                break
            time.sleep(0.05)
        else:
            self.notes.append("the daemons published no heartbeat within 20 s")
        with self.lock:
            self._spawn(self.sc.skew_daemon)

    def _quiesce(self) -> str:
        """Wait (bounded) until every record agrees with the children: running ones run, ended
        ones show their result, those of a killed daemon show lost. '' or why not."""
        deadline = now() + self.sc.ttl + QUIESCE_WITHIN
        why = ""
        while now() < deadline:
            snap = self.observer.poll()
            why = self._disagreement(snap)
            if not why:
                return ""
            time.sleep(OBSERVE_POLL)
        return why

    def _disagreement(self, snap: Snapshot | None) -> str:
        if snap is None:
            return "etcd does not answer"
        runs = {(r.job, r.tick): r for r in self.monitor.runs()}
        with self.lock:
            lives = {(p.daemon, p.life): p for p in self.procs}
        for (job, tick), (_crev, rec) in snap.runs.items():
            status = derive(str(rec.get("status")), (job, tick) in snap.alive)
            r = runs.get((job, tick))
            if r is None:
                if status in ("running", "ok", "failed"):
                    if status == "running" and tick > time.time() - 2.0:
                        continue  # just claimed: its child is starting
                    return f"{job} tick {fmt_tick(tick)} shows {status} without a child"
                continue
            life = lives.get((r.daemon, r.life))
            dead = life is not None and not life.alive()
            if r.end is None and status != "running":
                return f"{job} tick {fmt_tick(tick)} runs but shows {status}"
            if r.end is not None and status == "running":
                return f"{job} tick {fmt_tick(tick)} ended but shows running"
            if r.end is not None and status == "lost" and not dead:
                return f"{job} tick {fmt_tick(tick)} ended but shows lost"
        return ""

    def _finish(self) -> CronResult:
        self._operator_stop.set()  # its call in progress ends (15 s + a run at most)
        if self._operator.is_alive():
            self._operator.join(60)
        why = self._quiesce()
        if why:
            self.notes.append(f"the records did not settle: {why}")
        at = now()
        call = self.conch("cron", "ls", "--json")
        try:
            doc = tuple(json.loads(call.stdout)) if call.code == 0 else ()
        except ValueError:
            doc = ()
            self.notes.append(f"cron ls --json printed no JSON: {call.stdout[:500]!r}")
        self.listing = Listing(at, call.done, doc)
        self.observer.stop()
        self.observer.poll()
        horizon = at
        self._stop_daemons()
        self._stop_ev.set()
        self._sup.join(5)
        deadline = now() + 5.0
        while self.monitor.running() and now() < deadline:
            time.sleep(0.05)
        self.monitor.stop()
        with self.lock:
            lives = [p.as_life() for p in self.procs]
            incarnations = list(self.incarnations)
        stderr = {}
        for p in self.procs:
            with contextlib.suppress(OSError):
                stderr[f"conchd {p.daemon}#{p.life}"] = p.stderr.read_text(errors="replace")
        for k, c in enumerate(self.cli):
            stderr[f"conch {' '.join(c.args[:3])} (call {k})"] = c.stderr
        params = Params(ttl=self.sc.ttl, wall_offset=self.wall_offset)
        runs = self.monitor.runs()
        records = self.observer.records()
        report = check(
            [j for j in self.jobs.values()], incarnations, runs, records, lives,
            self.faults, self.convergences, self.listing, stderr, params, horizon, self.manual,
        )  # fmt: skip
        res = CronResult(self, runs, records, lives, incarnations, list(self.faults),
                         list(self.convergences), params, report, horizon)  # fmt: skip
        res.save()
        return res

    def _stop_daemons(self) -> None:
        with self.lock:
            self.respawn = False
            live = [p for p in self.current.values() if p is not None and p.alive()]
            for p in live:
                p.signalled = signal.SIGTERM
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGCONT)
                    os.kill(p.pid, signal.SIGTERM)
        ka = max(j.kill_after for j in self.jobs.values())
        deadline = now() + ka + 20.0
        while now() < deadline:
            self._reap()
            if not any(p.alive() for p in live):
                break
            time.sleep(SUPERVISE_POLL)
        for p in live:
            if p.alive() and p.popen.poll() is None:  # the checker reports it; say where it hung
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGABRT)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.popen.wait(5)
                text = p.stderr.read_text(errors="replace")
                self.notes.append(
                    f"conchd {p.daemon}#{p.life} did not stop within {ka + 20.0:g}s of "
                    f"SIGTERM: SIGABRT; its stderr ({p.stderr}) from there:\n"
                    + text[max(0, text.find("Fatal Python error")) :]
                )

    def _teardown(self) -> None:
        self._stop_ev.set()
        with self.lock:
            self.respawn = False
            procs = list(self.procs)
        for p in procs:
            if p.popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    p.popen.send_signal(signal.SIGCONT)
                    p.popen.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.popen.wait(10)
        with self.monitor.lock:
            pids = list(self.monitor.starts)
        for pid in pids:
            stat = _proc_stat(pid)
            if stat is not None and stat[0] not in ("Z", "X"):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)
        for px in (px for ps in self.proxies.values() for px in ps):
            px.stop()
            self.proxy_errors += [repr(e) for e in px.errors]
        self.clock.close()
        heal(self.cluster)
        root = self.prefix.encode()
        self.observer.post(
            "/v3/kv/deleterange", {"key": _b64(root), "range_end": _b64(_prefix_end(root))}, 5.0
        )


class HarnessError(RuntimeError):
    """The harness itself could not do its job (not a verdict on conch)."""


@dataclass
class CronResult:
    harness: CronHarness
    runs: list[Run]
    records: list[Record]
    lives: list[Life]
    incarnations: list[Incarnation]
    faults: list[Fault]
    convergences: list[Convergence]
    params: Params
    report: Report
    horizon: float
    summary: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.summary = summarize(self.report)

    def describe(self) -> str:
        h, rep = self.harness, self.report
        t0, wo = h.t0, self.params.wall_offset
        lags = rep.lags
        p50, pmax = percentile(lags, 0.5), max(lags, default=None)
        lines = [
            h.sc.describe(),
            (
                f"  replay: pytest -m invariant tests/invariant/test_cron_invariant.py "
                f"--seed {h.sc.seed}"
                if CronScenario.from_seed(h.sc.seed) == h.sc
                else "  (a hand-built scenario)"
            ),
            f"  work dir (children's log, conchd stderr, result.json): {h.dir}",
            f"  {len(self.runs)} runs, {len(self.records)} records, {len(self.lives)} conchd "
            f"lives; ticks expected {rep.ticks_expected}: ran {rep.ticks_ran}, recorded "
            f"without a run {rep.ticks_recorded}, excused {rep.ticks_excused}; tick->start lag "
            + ("-" if p50 is None else f"p50 {p50:.3f}s max {pmax:.3f}s")
            + "; times relative to t0",
            "  fault log:",
        ]
        for k, f in enumerate(self.faults):
            conv = next((c for c in self.convergences if c.fault == k), None)
            cs = (
                "" if conv is None or conv.seconds is None else f" converged in {conv.seconds:.3f}s"
            )
            lines.append(f"    #{k} {f.describe(t0)}{cs}")
        codes: dict[int, int] = {}
        for m in h.manual:
            codes[m.code] = codes.get(m.code, 0) + 1
        shown = ", ".join(f"{c}: {n}" for c, n in sorted(codes.items())) or "-"
        lines.append(f"  operator: {len(h.manual)} `cron run --wait` calls, exit codes {shown}")
        lines += [f"  note: {n}" for n in h.notes]
        if h.monitor.bad_lines:
            lines.append(f"  unparsable log lines: {h.monitor.bad_lines[:5]}")
        for v in rep.violations:
            lines.append("  VIOLATION " + v.describe(t0, wo).replace("\n", "\n  "))
        return "\n".join(lines)

    def save(self) -> None:
        """result.txt (what a failure prints) and result.json (every log) in the work dir."""
        h = self.harness
        (h.dir / "result.txt").write_text(self.describe() + "\n")
        doc = {
            "scenario": h.sc.describe(),
            "t0": h.t0,
            "wall_offset": self.params.wall_offset,
            "horizon": self.horizon,
            "faults": [dataclasses.asdict(f) for f in self.faults],
            "runs": [dataclasses.asdict(r) for r in self.runs],
            "records": [dataclasses.asdict(r) for r in self.records],
            "lives": [dataclasses.asdict(x) for x in self.lives],
            "incarnations": [dataclasses.asdict(i) for i in self.incarnations],
            "convergences": [dataclasses.asdict(c) for c in self.convergences],
            "listing": None if h.listing is None else dataclasses.asdict(h.listing),
            "cli": [dataclasses.asdict(c) for c in h.cli],
            "summary": self.summary,
            "observer": [(round(t - h.t0, 3), ok, why) for t, ok, why in h.observer.transitions()],
        }
        (h.dir / "result.json").write_text(json.dumps(doc, indent=1, default=str) + "\n")
