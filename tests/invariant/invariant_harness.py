"""The harness of the invariant tests (layer 3): K competing `conch elect` / `conch sema --max N`
processes against a real 3-member etcd cluster, a seeded random schedule of faults, and the
logs the checker (invariant_checker.py) judges.

Everything is driven from outside, as a user would: conch runs as the CLI (`python -X dev -X
faulthandler -m conch ...`); faults are signals, `etcdctl lease revoke` and etcd members being
killed, paused and restarted (conch.localetcd). conch has no test hooks.

    Scenario.from_seed(seed)   the whole run, derived from the seed: elect or sema, N, K
                               contenders, TTL, --kill-after, the children's behaviour and the
                               fault schedule (kinds, gaps, durations, target selectors)
    Harness(...).run()         runs it; returns a Result with the interval log, the fault log,
                               every conch process's life and exit code, the convergence
                               verdicts, and the checker's report

Observation:
* every child (invariant_child.py) appends a start and an end record to one shared log file;
* a monitor thread tails that file and polls /proc every 10 ms for the pids of started children,
  so a child that was killed (no end record) ends when the monitor saw it gone (a zombie counts
  as gone);
* an observer thread lists the contention keys in etcd every 50 ms (etcd's JSON gateway, not
  conch) and records whether the state is *converged*: the holders etcd names (the N oldest
  keys) are exactly the children running, matched by (CONCH_REV, CONCH_LEASE).
After each fault the harness waits for a converged state (bounded) before the next one.
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
from pathlib import Path
from typing import Any

from invariant_checker import (
    ALL_FAULTS,
    CONCH_FAULTS,
    KILL_CONCH,
    KILL_MEMBER,
    PAUSE_MEMBER,
    QUORUM_LOSS,
    REVOKE,
    STOP_CONCH,
    Convergence,
    Fault,
    Interval,
    Params,
    Process,
    Report,
    check,
    summarize,
)

from conch.localetcd import LocalCluster, Member

CHILD = Path(__file__).with_name("invariant_child.py")
CONCH = [sys.executable, "-X", "dev", "-X", "faulthandler", "-m", "conch"]

MONITOR_POLL = 0.01
OBSERVE_POLL = 0.05
SUPERVISE_POLL = 0.02
CONVERGE_WITHIN = 25.0  # after a fault is repaired (etcd restarts and elections included)
LONG_JOB = (3.0, 7.0)  # a long job's run time range (seconds)


def now() -> float:
    return time.monotonic()


# ---------------------------------------------------------------------------------------------
# the scenario
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FaultPlan:
    kind: str
    gap: float  # seconds to wait (after the previous convergence) before injecting it
    hold: float  # how long a pause / a member's downtime / a quorum loss lasts
    pick: float  # selects the target among the candidates, in [0, 1)
    prefer_holder: bool  # conch faults: hit a holder (else any contender)
    mode: str = ""  # quorum_loss: stop|kill|pause; member faults: leader|any
    # a compound fault: `then` (a conch fault) is injected `then_after` seconds into this one,
    # without waiting for anything (e.g. a holder paused while etcd has lost its quorum)
    then: FaultPlan | None = None
    then_after: float = 0.0

    def describe(self) -> str:
        s = f"{self.kind}(gap={self.gap:.2f}s"
        if self.hold:
            s += f", hold={self.hold:.2f}s"
        if self.kind in (REVOKE, KILL_CONCH, STOP_CONCH):
            s += ", holder" if self.prefer_holder else ", any"
        if self.mode:
            s += f", {self.mode}"
        s += f", pick={self.pick:.2f})"
        if self.then is not None:
            s += f" + after {self.then_after:.2f}s {self.then.describe()}"
        return s


def _plan(rng: random.Random, kind: str) -> FaultPlan:
    hold = {
        STOP_CONCH: rng.uniform(0.3, 4.0),
        KILL_MEMBER: rng.uniform(0.5, 3.0),
        PAUSE_MEMBER: rng.uniform(0.5, 3.0),
        QUORUM_LOSS: rng.uniform(0.5, 4.0),
    }.get(kind, 0.0)
    mode = ""
    if kind == QUORUM_LOSS:
        mode = rng.choice(["stop", "kill", "pause"])
    elif kind in (KILL_MEMBER, PAUSE_MEMBER):
        mode = rng.choice(["leader", "any"])
    return FaultPlan(
        kind=kind,
        gap=rng.uniform(0.3, 1.5),
        hold=round(hold, 3),
        pick=rng.random(),
        prefer_holder=rng.random() < 0.75,
        mode=mode,
    )


@dataclass(frozen=True)
class Scenario:
    seed: int
    kind: str  # "elect" | "sema"
    slots: int  # N
    contenders: int  # K conch processes at a time
    service: bool  # elect --restart services whose children run until killed
    ttl: float
    kill_after: float
    ignore_term: float  # probability that a child ignores SIGTERM (conch must SIGKILL it)
    job: tuple[float, float]  # a short job child's run time range (seconds)
    long_job_p: float  # probability that a job is long (LONG_JOB seconds): faults hit it running
    timeout_p: float  # probability that a job conch gets --timeout
    nonblock_p: float  # ... or --nonblock
    faults: tuple[FaultPlan, ...]

    @classmethod
    def from_seed(cls, seed: int) -> Scenario:
        rng = random.Random(seed)
        shape = rng.choice(["elect-jobs", "elect-service", "sema-jobs", "sema-jobs"])
        if shape == "sema-jobs":
            kind, slots = "sema", rng.randint(1, 3)
        else:
            kind, slots = "elect", 1
        service = shape == "elect-service"
        contenders = rng.randint(slots + 1, min(8, slots + 4))
        # every kind once, in a random order, plus 0-2 extra faults, which may be compound
        kinds = list(ALL_FAULTS)
        rng.shuffle(kinds)
        plans = [_plan(rng, k) for k in kinds]
        for _ in range(rng.randint(0, 2)):
            extra = _plan(rng, rng.choice(ALL_FAULTS))
            if rng.random() < 0.6:
                then = _plan(rng, rng.choice(CONCH_FAULTS))
                after = round(rng.uniform(0.0, max(extra.hold, 0.3)), 3)
                extra = dataclasses.replace(extra, then=then, then_after=after)
            plans.insert(rng.randint(0, len(plans)), extra)
        return cls(
            seed=seed,
            kind=kind,
            slots=slots,
            contenders=contenders,
            service=service,
            ttl=rng.choice([2.0, 2.0, 3.0]),
            kill_after=rng.choice([0.5, 1.0]),
            ignore_term=rng.choice([0.0, 0.3, 0.6]),
            job=(0.1, rng.choice([0.8, 1.5])),
            long_job_p=0.0 if service else rng.choice([0.2, 0.4]),
            timeout_p=0.0 if service else rng.choice([0.0, 0.2]),
            nonblock_p=0.0 if service else rng.choice([0.0, 0.1]),
            faults=tuple(plans),
        )

    def describe(self) -> str:
        what = f"{self.kind} --max {self.slots}" if self.kind == "sema" else "elect"
        if self.service:
            what += " --restart (services)"
        return (
            f"seed {self.seed}: {what}, {self.contenders} contenders, --ttl {self.ttl:g}s "
            f"--kill-after {self.kill_after:g}s, children ignore SIGTERM with p={self.ignore_term}"
            + (
                ""
                if self.service
                else f", jobs {self.job[0]:g}-{self.job[1]:g}s "
                f"(p={self.long_job_p}: {LONG_JOB[0]:g}-{LONG_JOB[1]:g}s)"
            )
            + (f", --timeout p={self.timeout_p}" if self.timeout_p else "")
            + (f", --nonblock p={self.nonblock_p}" if self.nonblock_p else "")
            + "\n  faults: "
            + "; ".join(f.describe() for f in self.faults)
        )


# ---------------------------------------------------------------------------------------------
# observation: the interval log
# ---------------------------------------------------------------------------------------------


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """(state, starttime) from /proc/PID/stat, None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rfind(b")") + 2 :].split()
    return fields[0].decode(), fields[19].decode()


@dataclass
class _Start:
    holder: str
    pid: int
    rev: int
    lease: int
    ttl: float
    t: float
    starttime: str | None


class Monitor(threading.Thread):
    """Tails the interval log; notes when started children vanish (crash-safe intervals)."""

    def __init__(self, path: Path) -> None:
        super().__init__(name="invariant-monitor", daemon=True)
        self.path = path
        self.lock = threading.Lock()
        self.starts: dict[tuple[str, int], _Start] = {}
        self.ends: dict[tuple[str, int], float] = {}
        self.vanished: dict[tuple[str, int], float] = {}
        self.bad_lines: list[str] = []
        self._stop_ev = threading.Event()
        self._buf = b""
        self._offset = 0

    def stop(self) -> None:
        self._stop_ev.set()
        self.join(5)
        self._poll()  # one last read

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
            for key, st in self.starts.items():
                if key in self.ends or key in self.vanished:
                    continue
                stat = _proc_stat(st.pid)
                if (
                    stat is None
                    or stat[0] in ("Z", "X")
                    or (st.starttime is not None and stat[1] != st.starttime)
                ):
                    self.vanished[key] = now()

    def _parse(self, line: str, t_seen: float) -> None:
        parts = line.split()
        try:
            if parts[0] == "S" and len(parts) == 7:
                holder, pid = parts[1], int(parts[2])
                stat = _proc_stat(pid)
                st = _Start(
                    holder=holder,
                    pid=pid,
                    rev=int(parts[3]),
                    lease=int(parts[4], 16),
                    ttl=float(parts[5]),
                    t=int(parts[6]) / 1e9,
                    starttime=stat[1] if stat else None,
                )
                self.starts[(holder, pid)] = st
                if stat is None or stat[0] in ("Z", "X"):
                    self.vanished.setdefault((holder, pid), t_seen)
            elif parts[0] == "E" and len(parts) == 4:
                self.ends[(parts[1], int(parts[2]))] = int(parts[3]) / 1e9
            else:
                self.bad_lines.append(line)
        except (ValueError, IndexError):
            self.bad_lines.append(line)

    def running(self) -> list[_Start]:
        with self.lock:
            return sorted(
                (
                    s
                    for k, s in self.starts.items()
                    if k not in self.ends and k not in self.vanished
                ),
                key=lambda s: s.rev,
            )

    def count(self) -> int:
        with self.lock:
            return len(self.starts)

    def intervals(self) -> list[Interval]:
        with self.lock:
            out = []
            for key, s in self.starts.items():
                if key in self.ends:
                    end, how = self.ends[key], "exit"
                elif key in self.vanished:
                    end, how = self.vanished[key], "vanished"
                else:
                    end, how = None, "open"
                out.append(Interval(s.holder, s.pid, s.rev, s.lease, s.ttl, s.t, end, how))
            return sorted(out, key=lambda i: i.start)


# ---------------------------------------------------------------------------------------------
# observation: etcd's view and convergence
# ---------------------------------------------------------------------------------------------


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def _prefix_end(prefix: bytes) -> bytes:
    return prefix[:-1] + bytes([prefix[-1] + 1])


@dataclass(frozen=True)
class Key:
    rev: int
    lease: int
    pid: int | None  # the conch pid from the holder record


class Observer(threading.Thread):
    """Polls etcd's contention keys; records (time, converged) for the convergence verdicts."""

    def __init__(self, harness: Harness) -> None:
        super().__init__(name="invariant-observer", daemon=True)
        self.h = harness
        self.lock = threading.Lock()
        self.history: list[tuple[float, bool, str]] = []
        self.last_keys: list[Key] | None = None
        self._stop_ev = threading.Event()
        self._ep = 0

    def stop(self) -> None:
        self._stop_ev.set()
        self.join(5)

    def list_keys(self) -> list[Key] | None:
        urls = [m.client_url for m in self.h.cluster.members]
        body = json.dumps(
            {
                "key": _b64(self.h.prefix.encode()),
                "range_end": _b64(_prefix_end(self.h.prefix.encode())),
            }
        ).encode()
        for k in range(len(urls)):
            idx = (self._ep + k) % len(urls)
            req = urllib.request.Request(
                urls[idx] + "/v3/kv/range",
                data=body,
                method="POST",
                headers={"Content-Type": "application/json"},
            )
            try:
                with urllib.request.urlopen(req, timeout=0.3) as r:
                    doc = json.loads(r.read())
            except (OSError, ValueError):
                continue
            if "kvs" not in doc and "header" not in doc:
                continue
            self._ep = idx
            keys = []
            for kv in doc.get("kvs", []):
                pid = None
                with contextlib.suppress(ValueError, TypeError, KeyError):
                    pid = int(json.loads(base64.b64decode(kv["value"]))["pid"])
                keys.append(Key(int(kv["create_revision"]), int(kv.get("lease", 0)), pid))
            return sorted(keys, key=lambda k: k.rev)
        return None

    def converged(self) -> bool:
        return self.state()[0]

    def state(self) -> tuple[bool, str]:
        """(converged, why not)."""
        keys = self.list_keys()
        with self.lock:
            self.last_keys = keys
        if keys is None:
            return False, "etcd does not answer"
        holders = {(k.rev, k.lease) for k in keys[: self.h.sc.slots]}
        running = {(s.rev, s.lease) for s in self.h.monitor.running()}
        if holders != running or not running:
            return (
                False,
                f"holders {sorted(r for r, _ in holders)} running {sorted(r for r, _ in running)}",
            )
        if self.h.sc.service:  # every service is queued
            live = self.h.live_count()
            return len(keys) == live, f"{len(keys)} of {live} services queued"
        return True, ""

    def transitions(self) -> list[tuple[float, bool, str]]:
        """The observations at which the verdict (or the reason) changed."""
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
            ok, why = self.state()
            with self.lock:
                self.history.append((t, ok, why))
            self._stop_ev.wait(OBSERVE_POLL)

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
            time.sleep(OBSERVE_POLL)
        return None


# ---------------------------------------------------------------------------------------------
# the contenders
# ---------------------------------------------------------------------------------------------


@dataclass
class Proc:
    holder: str
    popen: subprocess.Popen[bytes]
    spawned: float
    opts: frozenset[str]
    stderr: Path
    exited: float | None = None
    code: int | None = None
    signalled: int | None = None
    seconds: float = math.inf  # how long its child runs (a job's length; services: forever)
    term: str = "exit"  # what its child does on SIGTERM
    argv: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.exited is None


class Harness:
    def __init__(
        self,
        sc: Scenario,
        cluster: LocalCluster,
        workdir: Path,
        etcdctl: str,
        conch_cmd: list[str] | None = None,
    ) -> None:
        self.sc = sc
        self.cluster = cluster
        self.dir = workdir
        self.etcdctl = etcdctl
        self.conch_cmd = conch_cmd or CONCH
        self.prefix = f"/inv/{sc.seed}-{uuid.uuid4().hex[:8]}/"
        self.name = f"office-{sc.seed}"
        self.log = workdir / "intervals.log"
        workdir.mkdir(parents=True, exist_ok=True)
        self.log.touch()
        self.monitor = Monitor(self.log)
        self.observer = Observer(self)
        self.lock = threading.RLock()
        self.procs: list[Proc] = []
        self.slots: list[Proc | None] = [None] * sc.contenders
        self.slot_rng = [random.Random(f"{sc.seed}/{k}") for k in range(sc.contenders)]
        self.slot_iter = [0] * sc.contenders
        self.respawn_at: list[float] = [0.0] * sc.contenders
        self.respawn = True
        self.faults: list[Fault] = []
        self.convergences: list[Convergence] = []
        self.notes: list[str] = []
        self.t0 = now()
        self._stop_ev = threading.Event()
        self._sup = threading.Thread(
            target=self._supervise, name="invariant-supervisor", daemon=True
        )
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("CONCH_", "ETCDCTL_"))}
        self.env.update(
            CONCH_ENDPOINTS=cluster.endpoints_csv,
            CONCH_PREFIX=self.prefix,
            PYTHONUNBUFFERED="1",
            # a conch that will not finish gets SIGABRT: its threads' stacks go to its stderr
            PYTHONFAULTHANDLER="1",
        )

    # -- contenders --------------------------------------------------------------------------
    def _spawn(self, slot: int) -> Proc:
        sc, rng = self.sc, self.slot_rng[slot]
        self.slot_iter[slot] += 1
        holder = f"{slot}.{self.slot_iter[slot]}"
        if sc.service:
            seconds = math.inf
        elif rng.random() < sc.long_job_p:
            seconds = round(rng.uniform(*LONG_JOB), 3)
        else:
            seconds = round(rng.uniform(*sc.job), 3)
        term = "ignore" if rng.random() < sc.ignore_term else "exit"
        args = [sc.kind, self.name]
        if sc.kind == "sema":
            args += ["--max", str(sc.slots)]
        args += ["--ttl", f"{sc.ttl:g}s", "--kill-after", f"{sc.kill_after:g}s"]
        opts = set()
        if sc.service:
            args.append("--restart")
            opts.add("restart")
        else:
            r = rng.random()
            if r < sc.timeout_p:
                args += ["--timeout", f"{rng.uniform(0.5, 3.0):.2f}s"]
                opts.add("timeout")
            elif r < sc.timeout_p + sc.nonblock_p:
                args.append("--nonblock")
                opts.add("nonblock")
        child = [sys.executable, "-I", "-S", str(CHILD), str(self.log), holder, str(seconds), term]
        err = self.dir / f"conch-{holder}.err"
        with open(err, "wb") as ef:
            popen = subprocess.Popen(
                [*self.conch_cmd, *args, "--", *child],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=ef,
                stderr=subprocess.STDOUT,
            )
        p = Proc(holder, popen, now(), frozenset(opts), err, seconds=seconds, term=term, argv=args)
        self.procs.append(p)
        self.slots[slot] = p
        return p

    def _reap(self) -> None:
        """Note exits; respawn (jobs: a user's loop; services: a supervisor like systemd)."""
        t = now()
        with self.lock:
            for k, p in enumerate(self.slots):
                if p is not None and p.alive():
                    rc = p.popen.poll()
                    if rc is None:
                        continue
                    p.exited, p.code = now(), rc
                    self.respawn_at[k] = t + self.slot_rng[k].uniform(0.0, 0.3)
                if self.respawn and (p is None or not p.alive()) and t >= self.respawn_at[k]:
                    self._spawn(k)

    def _supervise(self) -> None:
        while not self._stop_ev.is_set():
            self._reap()
            self._stop_ev.wait(SUPERVISE_POLL)

    def live_count(self) -> int:
        with self.lock:
            return sum(1 for p in self.slots if p is not None and p.alive())

    def by_holder(self, holder: str) -> Proc | None:
        with self.lock:
            return next((p for p in self.procs if p.holder == holder), None)

    def by_pid(self, pid: int | None) -> Proc | None:
        with self.lock:
            return next((p for p in self.procs if p.pid == pid and p.alive()), None)

    # -- faults ------------------------------------------------------------------------------
    def _pick(self, items: list[Any], pick: float) -> Any:
        return items[min(int(pick * len(items)), len(items) - 1)]

    def _holder_to_hit(self, plan: FaultPlan) -> tuple[_Start, Proc] | None:
        """A running holder, preferably one whose child will still run well past the fault's
        consequences (TTL + K + 1 s): a job that ends on its own first would hide a child that
        outlives its slot. Waits up to 5 s for one."""
        want = self.sc.ttl + self.sc.kill_after + 1.0
        deadline = now() + 3.0
        while True:
            pairs = [(s, self.by_holder(s.holder)) for s in self.monitor.running()]
            live = [(s, p) for s, p in pairs if p is not None and p.alive()]
            long = [(s, p) for s, p in live if s.t + p.seconds - now() >= want]
            if long or (live and now() >= deadline):
                return self._pick(long or live, plan.pick)
            if now() >= deadline:
                return None
            time.sleep(0.05)

    def _target_conch(self, plan: FaultPlan) -> Proc | None:
        if plan.prefer_holder:
            hit = self._holder_to_hit(plan)
            if hit is not None:
                return hit[1]
        with self.lock:
            live = [p for p in self.slots if p is not None and p.alive()]
        return self._pick(live, plan.pick) if live else None

    def _target_member(self, plan: FaultPlan) -> Member:
        if plan.mode == "leader":
            with contextlib.suppress(TimeoutError):
                return self.cluster.wait_leader(timeout=5)
        return self._pick(self.cluster.members, plan.pick)

    def inject(self, plan: FaultPlan) -> Fault | None:
        c = self.cluster
        if plan.kind == REVOKE:
            lease = holder = None
            hit = self._holder_to_hit(plan) if plan.prefer_holder else None
            if hit is not None:
                lease, holder = hit[0].lease, hit[0].holder
            else:
                keys = self.observer.list_keys() or []
                if keys:
                    k = self._pick(keys, plan.pick)
                    lease = k.lease
                    p = self.by_pid(k.pid)
                    holder = p.holder if p else None
            if lease is None:
                self.notes.append(f"{plan.describe()}: no lease to revoke; skipped")
                return None
            at = now()
            r = subprocess.run(
                [self.etcdctl, "--endpoints", c.endpoints_csv, "--command-timeout=5s",
                 "lease", "revoke", format(lease, "x")],
                capture_output=True, text=True, timeout=30, env=self.env,
            )  # fmt: skip
            detail = "" if r.returncode == 0 else f"etcdctl: {r.stderr.strip()}"
            return Fault(REVOKE, at, at, holder=holder, lease=lease, detail=detail)
        if plan.kind in (KILL_CONCH, STOP_CONCH):
            p = self._target_conch(plan)
            if p is None:
                self.notes.append(f"{plan.describe()}: no conch to hit; skipped")
                return None
            at = now()
            if plan.kind == KILL_CONCH:
                os.kill(p.pid, signal.SIGKILL)
                return Fault(KILL_CONCH, at, at, holder=p.holder, detail=f"pid {p.pid}")
            os.kill(p.pid, signal.SIGSTOP)
            time.sleep(plan.hold)
            until = now()
            with contextlib.suppress(ProcessLookupError):  # a compound fault may have killed it
                os.kill(p.pid, signal.SIGCONT)
            return Fault(STOP_CONCH, at, until, holder=p.holder, detail=f"pid {p.pid}")
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
        raise ValueError(plan.kind)

    def _inject_all(self, plan: FaultPlan) -> list[Fault]:
        return inject_all(self.inject, plan, "invariant-fault")

    def _settle(self, f: Fault) -> float:
        """When every effect of fault f has certainly begun (then the state may converge)."""
        return f.until + self.sc.kill_after + 0.3

    # -- the run -----------------------------------------------------------------------------
    def run(self) -> Result:
        sc = self.sc
        self.monitor.start()
        self._sup.start()
        self.observer.start()
        try:
            warm = self.observer.wait_converged(now(), now(), now() + CONVERGE_WITHIN)
            if warm is None:
                self._abort("never converged at the start")
                return self._finish()
            for plan in sc.faults:
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
                    self._abort(f"run aborted after fault #{len(self.faults) - 1}")
                    return self._finish()
            self._final()
            return self._finish()
        finally:
            self._teardown()

    def _final(self) -> None:
        """After the last fault: services keep exactly the expected holder; jobs drain."""
        sc = self.sc
        if sc.service:
            # stable: nothing starts or ends for a while, and --who agrees with the children
            before = self.monitor.intervals()
            time.sleep(max(1.5, sc.ttl))
            after = self.monitor.intervals()
            ok = before == after and self.observer.converged()
            detail = "" if ok else "children started or ended while nothing was failing"
            if ok:
                who = self._who()
                running = self.monitor.running()
                revs = [h["rev"] for h in who.get("holders", [])] if who else None
                if revs != [s.rev for s in running]:
                    ok, detail = False, f"--who says {revs}, running children {running}"
            with self.lock:
                self.respawn = False
                live = [p for p in self.procs if p.alive()]
                for p in live:
                    p.signalled = signal.SIGTERM
                    os.kill(p.pid, signal.SIGTERM)
        else:
            with self.lock:
                self.respawn = False
            ok, detail = True, ""
        # every conch exits; no key is left behind
        jobs_left = sum(1 for p in self.procs if p.alive())
        limit = now() + 20.0 + jobs_left * LONG_JOB[1] / sc.slots + sc.ttl
        while self.live_count() and now() < limit:
            time.sleep(0.05)
        if self.live_count():
            ok = False
            detail = f"{self.live_count()} conch process(es) did not finish" + self._stacks()
        limit = now() + sc.ttl + 3.0
        while now() < limit:
            keys = self.observer.list_keys()
            if keys == []:
                break
            time.sleep(0.05)
        else:
            ok, detail = False, f"keys left behind in etcd: {self.observer.list_keys()}"
        self.convergences.append(Convergence(None, ok, None, detail))

    def _abort(self, why: str) -> None:
        """Stop after a failed convergence: SIGTERM every conch (it must still exit properly)."""
        with self.lock:
            self.respawn = False
            live = [p for p in self.procs if p.alive()]
            for p in live:
                p.signalled = signal.SIGTERM
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGCONT)
                    os.kill(p.pid, signal.SIGTERM)
        limit = now() + self.sc.kill_after + 10.0
        while self.live_count() and now() < limit:
            time.sleep(0.05)
        self.convergences.append(Convergence(None, False, None, why))

    def _stacks(self) -> str:
        """SIGABRT every conch still running (it runs with PYTHONFAULTHANDLER): where each one
        hung, from the stacks it writes to its stderr file."""
        with self.lock:
            live = [p for p in self.procs if p.alive() and p.popen.poll() is None]
        out = []
        for p in live:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGCONT)
                os.kill(p.pid, signal.SIGABRT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.popen.wait(5)
            text = p.stderr.read_text(errors="replace")
            at = text.find("Fatal Python error")
            out.append(f"\n    conch {p.holder} (pid {p.pid}), its stderr:\n" + text[max(0, at) :])
        return "".join(out)

    def _who(self) -> dict[str, Any] | None:
        args = [self.sc.kind, self.name, "--who", "--json"]
        if self.sc.kind == "sema":
            args[2:2] = ["--max", str(self.sc.slots)]
        r = subprocess.run(
            [*self.conch_cmd, *args], env=self.env, capture_output=True, text=True, timeout=30
        )
        try:
            return dict(json.loads(r.stdout))
        except ValueError:
            return None

    def _finish(self) -> Result:
        self._stop_ev.set()
        self._sup.join(5)
        self._reap_only()
        self.monitor.stop()
        self.observer.stop()
        horizon = now()
        with self.lock:
            procs = [
                Process(p.holder, p.pid, p.spawned, p.exited, p.code, p.opts, p.signalled)
                for p in self.procs
            ]
        params = Params(slots=self.sc.slots, kill_after=self.sc.kill_after)
        intervals = self.monitor.intervals()
        report = check(intervals, self.faults, procs, self.convergences, params, horizon)
        res = Result(self, intervals, list(self.faults), procs, list(self.convergences), report)
        res.save()
        return res

    def _reap_only(self) -> None:
        with self.lock:
            for p in self.procs:
                if p.alive():
                    rc = p.popen.poll()
                    if rc is not None:
                        p.exited, p.code = now(), rc

    def _teardown(self) -> None:
        self._stop_ev.set()
        with self.lock:
            procs = list(self.procs)
        for p in procs:
            if p.popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    p.popen.send_signal(signal.SIGCONT)
                    p.popen.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.popen.wait(10)
        # children whose conch was killed are the watchdog's job; make sure nothing lingers
        with self.monitor.lock:
            pids = [s.pid for s in self.monitor.starts.values()]
        for pid in pids:
            stat = _proc_stat(pid)
            if stat is not None and stat[0] not in ("Z", "X"):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)
        heal(self.cluster)


def inject_all(inject: Any, plan: Any, thread: str) -> list[Any]:
    """`inject(plan)`'s fault, and for a compound plan (`plan.then`) its second fault too,
    injected `plan.then_after` seconds into the first while that goes on (on a thread named
    `thread`); both marked compound. The harnesses' plans and faults share these fields."""
    if plan.then is None:
        f = inject(plan)
        return [] if f is None else [f]
    out: list[Any] = [None, None]
    errors: list[BaseException] = []

    def first() -> None:
        try:
            out[0] = inject(plan)
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=first, name=thread)
    t.start()
    time.sleep(plan.then_after)
    out[1] = inject(plan.then)
    t.join()
    if errors:
        raise errors[0]
    return [dataclasses.replace(f, compound=True) for f in out if f is not None]


def heal(cluster: LocalCluster) -> None:
    """Every member running, not paused, healthy (after a fault, or a failed run)."""
    cluster.restore_quorum(timeout=30)
    for m in cluster.members:
        if m.paused:
            cluster.resume_member(m)
        if not m.running():
            cluster.start_member(m)
    cluster.wait_healthy(30)


@dataclass
class Result:
    harness: Harness
    intervals: list[Interval]
    faults: list[Fault]
    processes: list[Process]
    convergences: list[Convergence]
    report: Report
    summary: dict[str, dict[str, float | int | None]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.summary = summarize(self.report)

    def describe(self) -> str:
        h = self.harness
        t0 = h.t0
        lines = [
            h.sc.describe(),
            (
                f"  replay: pytest -m invariant --seed {h.sc.seed}"
                if Scenario.from_seed(h.sc.seed) == h.sc
                else "  (a hand-built scenario)"
            ),
            f"  work dir (interval log, conch stderr): {h.dir}",
            f"  {len(self.intervals)} child intervals, {len(self.processes)} conch processes, "
            f"max concurrency {self.report.max_concurrency}, times relative to t0",
            "  fault log:",
        ]
        for k, f in enumerate(self.faults):
            conv = next((c for c in self.convergences if c.fault == k), None)
            cs = (
                "" if conv is None or conv.seconds is None else f" converged in {conv.seconds:.3f}s"
            )
            lines.append(f"    #{k} {f.describe(t0)}{cs}")
        lines += [f"  note: {n}" for n in h.notes]
        if h.monitor.bad_lines:
            lines.append(f"  unparsable log lines: {h.monitor.bad_lines[:5]}")
        for v in self.report.violations:
            lines.append("  VIOLATION " + v.describe(t0).replace("\n", "\n  "))
        return "\n".join(lines)

    def save(self) -> None:
        """result.txt (what a failure prints) and result.json (every log) in the work dir."""
        h = self.harness
        (h.dir / "result.txt").write_text(self.describe() + "\n")
        t0 = h.t0
        doc = {
            "scenario": h.sc.describe(),
            "t0": t0,
            "faults": [dataclasses.asdict(f) for f in self.faults],
            "intervals": [dataclasses.asdict(i) for i in self.intervals],
            "processes": [
                {**dataclasses.asdict(p), "opts": sorted(p.opts)} for p in self.processes
            ],
            "convergences": [dataclasses.asdict(c) for c in self.convergences],
            "spawns": [
                {
                    "holder": p.holder,
                    "pid": p.pid,
                    "seconds": p.seconds,
                    "term": p.term,
                    "argv": p.argv,
                }
                for p in h.procs
            ],
            "summary": self.summary,
            "observer": [(round(t - t0, 3), ok, why) for t, ok, why in h.observer.transitions()],
        }
        (h.dir / "result.json").write_text(json.dumps(doc, indent=1) + "\n")

    def conch_errors(self) -> list[str]:
        """Tracebacks or dev-mode warnings conch printed (it must print one-line errors only)."""
        out = []
        for p in self.harness.procs:
            try:
                text = p.stderr.read_text(errors="replace")
            except OSError:
                continue
            if "Traceback" in text or "Warning" in text or "Fatal Python" in text:
                out.append(f"--- conch {p.holder} (pid {p.pid}, exit {p.code}):\n{text[-3000:]}")
        return out
