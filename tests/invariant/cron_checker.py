"""The checker of the cron scenario of the invariant tests (layer 3): pure functions over the
children's log, the record observations, the fault log, the life of every conchd process and
the final `conch cron ls --json`. No I/O; hand-made logs test it (test_cron_checker.py).

Times are seconds on CLOCK_MONOTONIC (system-wide on Linux). A tick is a wall-clock instant
(Unix seconds, what CONCH_TICK says); ``Params.wall_offset`` (the harness's ``time.time() -
time.monotonic()``, on the true clock) places it on the monotonic axis: ``mono(t) = t -
wall_offset``. P is the job's period (`@every P`), K its --kill-after, TTL conchd's --ttl.

The inputs:
* ``Run``: one child — its start record (job, tick, CONCH_REV, the daemon and the life of that
  daemon that ran it) and its end (own end record with the exit code, or the moment the harness
  saw it gone: killed).
* ``Record``: one run record (run key) as the harness's raw reads of etcd saw it (every ~0.25 s,
  so records later pruned from the history are known too): create revision (the claim), the
  claiming daemon and claim id, and each status in turn as `cron ls` derives it (running while
  the alive marker exists, lost once it is gone; ok, failed, skipped as written).
* ``Incarnation``: one definition of a job, from `cron add` to `cron rm` (a job removed and added
  again has two); ``Life``: one conchd process; ``Fault``; ``Listing``: the final
  `conch cron ls --json`.

The rules (each violation names its rule):

A *claim* is the unit that ties records and children together: a child belongs to the record
whose run key was created at its CONCH_REV. Each run key created is a claim, except a result
written anew after `cron rm` removed the record while its daemon was cut off (first seen as a
result, no child ran at its revision, an earlier record of the tick has the same claim id —
the id of a daemon process): that belongs to the earlier claim. The *definition* (incarnation)
a claim belongs to is the newest one added before its revision.

1. once — no (job, tick) runs twice, ever: at most one child per (job name, tick), across
   `cron rm` + `cron add` too; and one definition claims a tick at most once. Absolute: no
   fault excuses it.

2. accounted — every tick t of every job incarnation with

       max(first daemon start + start_settle, added + add_settle) <= mono(t)
       mono(t) <= min(removed - rm_lead, horizon - end_margin)

   ran (a child started for it) or has a run record (skipped, lost, missed, ...: claimed
   exactly once; a `missed` record with a count stands for that many ticks from its own),
   unless it is excused:

   * an etcd fault (member killed, member paused, quorum lost) excuses the ticks with
     ``at - P < mono(t) <= until + etcd_recovery``: claims fail while the cluster has no
     leader or a daemon's endpoint hangs, a daemon whose lease was not confirmed claims nothing
     until it has a new one, and a daemon's retry backoff grows to 5 s;
   * every conchd down or stopped from a to b excuses ``a - P < mono(t) <= b + start_settle``;
   * a job's removal: no tick is expected from ``removed - rm_lead`` until ``add_settle`` after
     it was added again (the incarnation bounds above);
   * a tick *overtaken by an early claim*: a later tick t2 of the same definition was claimed
     by a daemon with a skewed clock early (its child started, or its record was first seen,
     at c2 < mono(t2) - early) and before this tick's claim window closed (c2 < mono(t) + P).
     The claim moved the job's low-water mark past t, which nobody may claim any more
     (conch.cron.store.claim_many). This is evidence, not a time window: it excuses only
     ticks that an early claim really jumped over. It covers what the skewed clock does — a
     clock that steps forward claims early until the heartbeats correct it (conch.clockskew keeps a
     peer's largest offset of its last 5 heartbeats, 2 s apart, at most 15 s old); a
     (re)started skewed daemon waits at most 6 s for its peers' heartbeats (3 s if none is
     listed), then trusts its own clock until they come; after an etcd outage (peers'
     heartbeat keys deleted with their leases) it forgets its peers and trusts its own clock
     again until two of them beat.

   SIGKILL or SIGSTOP of one daemon, a lost claim answer and `cron rm` + `cron add` of another
   job excuse nothing: the other daemons claim the tick.

   Also:
   * no run starts early (``early`` before its tick) except on a daemon whose clock the
     harness skewed, and then by at most the span of the offsets its clock ever had (0
     included: a daemon still corrected for its old offset is early by the step) + grace;
   * a claim that never ran — a record that only ever showed `running`/`lost` with no child
     for its tick, first seen ``claim_settle`` or more before the horizon — is a violation
     unless the life that claimed it died by SIGKILL at most ``orphan_claim_grace`` after the
     claim was seen: conchd must recognise its own claim whose answer was lost and run it;
     only a daemon that died could not. The life that claimed is known by the claim id (a
     child of that life ran a tick of the same claim id), else it is the life of that daemon
     running when the record was first seen.

3. forbid — a run of an `--overlap forbid` job never starts while another run of that job
   (across incarnations: an alive run of a removed job still counts) is running, except when
   the alive marker of one of the two can have been gone (docs/cron.md):
   * the running one's daemon life was SIGKILLed at k <= the new start, and the running one
     ended by k + K + grace (its watchdog killed it);
   * a fault that can cost one of the two daemons its lease — SIGSTOP of that life, a lost
     answer (blackhole) of that daemon, an etcd fault — hit while that run ran (``at`` <
     its end), and the new run started in ``[at, until + lease_recovery]``. (Either one: a
     claim whose answer was lost runs late, possibly after the next tick's run started.)

4. fencing — within one incarnation, CONCH_REV (and the claim revision of ticks that did not
   run; not `missed` records, which the claim of a later tick writes after it) strictly
   increases with the tick; a child's CONCH_REV is the revision at which its
   daemon's claim created the tick's run key.

5. listing — what conch shows agrees with what the children did:
   * every state a record showed: `ok`/`failed` only for a tick a child ran, with that child's
     exit code when it wrote one (a killed child: 128 + the signal), `ok` iff code 0 and not
     timed out; `skipped` and `missed` only for a tick no child ran; the record names the
     daemon that ran the child;
   * a result is written: a child that ended while its daemon life lived on must not still be
     `running`/`lost` at the last observation, ``result_grace`` after its end;
   * the final `cron ls --json` (bounded by history: the newest 20 runs per job): `running`
     only for a child running at that time (or ended within ``observe_slack`` before; a claim
     first seen within ``claim_settle`` of the listing is not judged: its child may not have
     written its start line before the harness stopped the daemons), `lost`
     only for a tick with no child or whose daemon life was SIGKILLed, `ok`/`failed`/`skipped`
     as above; `rev` and `daemon` are the child's; every child of the current incarnation
     whose tick is no older than the oldest row shown (all of them when fewer than 20 rows are
     shown) and that started before the listing is shown.

6. stderr — no Python traceback, dev-mode warning or fatal error in the stderr of any conchd or
   conch process.

7. lives — every conchd ended as told: SIGKILL only from a kill fault aimed at that life, 143
   after the harness's SIGTERM at the end, nothing else (no crash, no 69); no child outlived its
   daemon life by more than K + grace (+ observe_slack): the watchdog; a child of a job with
   --timeout T ended within T + K + grace (+ observe_slack, + the time its daemon was stopped
   meanwhile).

And every fault was followed by a converged state (the harness's verdicts), so was the start.

The lengths (``Params``; P, K, TTL per job/daemon as above):

    start_settle        5 s    ticks expected from the first daemon's start + this
    add_settle          1 s    ... and from `cron add` returning + this
    rm_lead             1 s    ... until `cron rm` starting - this
    end_margin          1.5 s  ... until the final listing - this
    etcd_recovery       6 s    an etcd fault excuses ticks until its repair + this: conchd's
                               longest pause between two failed steps (5 s), then a new
                               lease and the claim
    lease_recovery      7 s    a cut-off daemon vouches for its runs again (alive markers
                               re-attached) within this of the fault's repair: TTL <= 3 s plus
                               the retry backoff
    orphan_claim_grace  10 s   a claim that never ran: its life died within this of the claim
    claim_settle        3 s    a claim first seen this close to the final listing is not judged
    result_grace        10 s   a result is written within this of the child's end
    early               0.5 s  a child started this long before its tick was claimed early
    grace               1 s    the "+ 1 s" of the watchdog's bound (as for elect/sema)
    observe_slack       0.3 s  the harness's observation resolution
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from statistics import median
from typing import Any

from invariant_checker import ETCD_FAULTS, KILL_MEMBER, PAUSE_MEMBER, QUORUM_LOSS, Convergence

# fault kinds (the etcd ones are the elect/sema harness's)
KILL_DAEMON = "kill_daemon"  # SIGKILL of a conchd (preferably one running a child), restarted
STOP_DAEMON = "stop_daemon"  # SIGSTOP of a conchd for a while, then SIGCONT
CLOCK_SKEW = "clock_skew"  # the skewed daemon's wall clock steps to another offset
LOST_ANSWER = "lost_answer"  # one daemon's proxies blackholed across a tick, then reset
RM_READD = "rm_readd"  # `conch cron rm NAME` while it runs, then `conch cron add NAME` again
# an operator's action, scheduled like a fault: `conch cron suspend NAME`, then (its `at`: the
# suspend returned; its `until`: the resume started) `conch cron resume NAME`
SUSPEND_RESUME = "suspend_resume"

ALL_FAULTS = (
    KILL_DAEMON,
    STOP_DAEMON,
    CLOCK_SKEW,
    LOST_ANSWER,
    KILL_MEMBER,
    PAUSE_MEMBER,
    QUORUM_LOSS,
    RM_READD,
)
DAEMON_FAULTS = (KILL_DAEMON, STOP_DAEMON)

HISTORY = 20  # run records kept per job (conch.cron.model.HISTORY)
# figures only: a clock step's effects are counted for this long (+ its size); conch.clockskew
# forgets a heartbeat sample after 15 s, and heartbeats come every 2 s
SKEW_EFFECT = 17.0
SIGKILL, SIGTERM = 9, 15


@dataclass(frozen=True)
class Job:
    name: str
    every: float  # P: @every P seconds
    overlap: str  # forbid | allow
    timeout: float | None
    kill_after: float  # K
    retries: int = 0  # --retries: a failed run is run again, up to this many more times


@dataclass(frozen=True)
class ManualCall:
    """One `conch cron run NAME --wait` of the operator thread: from ``at`` to ``done``, its
    exit code, the tick its stderr named (None: refused before a request), its last line."""

    job: str
    at: float
    done: float
    code: int
    tick: float | None
    message: str

    def describe(self, t0: float = 0.0) -> str:
        tick = "-" if self.tick is None else fmt_tick(self.tick)
        return (f"cron run {self.job} --wait [{self.at - t0:.3f} .. {self.done - t0:.3f}] tick "
                f"{tick} exit {self.code}: {self.message}")  # fmt: skip


@dataclass(frozen=True)
class Incarnation:
    """One definition of a job: from `cron add` (returned at ``added``) to `cron rm`."""

    job: str
    added: float
    rev: int  # create revision of the definition (0: unknown)
    removed: float | None = None  # when `cron rm` was started


@dataclass(frozen=True)
class Run:
    """One child: from its start record to its end record, or (killed) to when the harness saw
    it gone; ``end`` None: still running when the harness stopped looking."""

    job: str
    tick: float  # Unix seconds (CONCH_TICK)
    rev: int  # CONCH_REV
    daemon: str  # the --id of the conchd that ran it
    life: int  # which start of that daemon
    pid: int
    start: float
    end: float | None
    how: str = "exit"  # exit (own end record) | vanished (killed) | open
    code: int | None = 0  # from the end record; None if it has none
    attempt: int = 1  # CONCH_ATTEMPT (--retries)

    def describe(self, t0: float = 0.0, wall_offset: float = 0.0) -> str:
        end = "running" if self.end is None else f"{self.end - t0:.3f}"
        code = "" if self.code is None else f" code {self.code}"
        lag = self.start - (self.tick - wall_offset)
        return (
            f"run {self.job} tick {fmt_tick(self.tick)}"
            + ("" if self.attempt == 1 else f" attempt {self.attempt}")
            + f" rev={self.rev} by {self.daemon}#"
            f"{self.life} pid {self.pid} [{self.start - t0:.3f} .. {end}] ({self.how}{code}, "
            f"lag {lag:+.3f}s)"
        )


@dataclass(frozen=True)
class Shown:
    """One status of a run record, as `cron ls` derives it, from its first observation."""

    at: float
    status: str  # running | lost | ok | failed | skipped | missed
    exit_code: int | None = None
    timed_out: bool = False
    count: int = 1  # missed: the ticks the record stands for, from its own on


@dataclass(frozen=True)
class Record:
    job: str
    tick: float
    create_rev: int
    daemon: str
    claim: str
    first_seen: float
    last_seen: float
    states: tuple[Shown, ...]

    @property
    def final(self) -> Shown:
        return self.states[-1]

    def describe(self, t0: float = 0.0) -> str:
        seq = ", ".join(f"{s.status}@{s.at - t0:.3f}" for s in self.states)
        code = self.final.exit_code
        return (
            f"record {self.job} tick {fmt_tick(self.tick)} rev={self.create_rev} by "
            f"{self.daemon} claim {self.claim[:8]}: {seq}"
            + ("" if code is None else f" exit {code}")
            + (" timed out" if self.final.timed_out else "")
        )


@dataclass(frozen=True)
class Life:
    """One conchd process."""

    daemon: str
    life: int
    pid: int
    spawned: float
    exited: float | None
    code: int | None  # Popen returncode (-S: killed by signal S)
    signalled: int | None = None  # the signal the harness sent to end it (the final stop)
    clock_offset: float = 0.0  # its wall clock's offset from the true one when it started (s)

    def alive_at(self, t: float) -> bool:
        return self.spawned <= t and (self.exited is None or t < self.exited)

    def describe(self, t0: float = 0.0) -> str:
        end = "running" if self.exited is None else f"{self.exited - t0:.3f}"
        return (
            f"conchd {self.daemon}#{self.life} pid {self.pid} "
            f"[{self.spawned - t0:.3f} .. {end}] code {self.code}"
        )


@dataclass(frozen=True)
class Fault:
    kind: str
    at: float  # injected
    until: float  # repaired (== at for an instantaneous fault)
    daemon: str | None = None  # daemon faults, lost answers, clock steps
    life: int | None = None
    member: str | None = None  # etcd faults
    job: str | None = None  # rm_readd
    offset: float | None = None  # clock_skew: the new wall-clock offset (s)
    prev_offset: float | None = None  # clock_skew: the offset before the step
    detail: str = ""
    compound: bool = False

    @property
    def forward(self) -> float:
        """clock_skew: how far the step moved that daemon's clock forward (<= 0: backward)."""
        if self.offset is None or self.prev_offset is None:
            return 0.0
        return self.offset - self.prev_offset

    def describe(self, t0: float = 0.0) -> str:
        what = []
        if self.daemon is not None:
            what.append(f"daemon={self.daemon}" + ("" if self.life is None else f"#{self.life}"))
        if self.member is not None:
            what.append(f"member={self.member}")
        if self.job is not None:
            what.append(f"job={self.job}")
        if self.offset is not None:
            what.append(f"offset {self.prev_offset or 0.0:+.1f}s -> {self.offset:+.1f}s")
        if self.detail:
            what.append(self.detail)
        if self.compound:
            what.append("(compound)")
        span = f"{self.at - t0:.3f}"
        if self.until != self.at:
            span += f"..{self.until - t0:.3f}"
        return f"{self.kind}@{span} {' '.join(what)}".rstrip()


@dataclass(frozen=True)
class Listing:
    """The final `conch cron ls --json`, called at ``at`` (returned at ``done``)."""

    at: float
    done: float
    doc: tuple[dict[str, Any], ...]


@dataclass(frozen=True)
class Params:
    ttl: float
    wall_offset: float  # time.time() - time.monotonic() of the harness (true clock)
    start_settle: float = 5.0  # ticks are expected from the first daemon start + this
    add_settle: float = 1.0  # ... and from `cron add` + this
    rm_lead: float = 1.0  # ... until `cron rm` - this
    end_margin: float = 1.5  # ... until the horizon - this
    etcd_recovery: float = 6.0  # an etcd fault excuses ticks until its repair + this
    lease_recovery: float = 7.0  # a daemon vouches for its runs again within this of a fault
    orphan_claim_grace: float = 10.0  # a claim that never ran: its life died within this
    claim_settle: float = 3.0  # a claim first seen less than this before the horizon: not judged
    result_grace: float = 10.0  # a result is written within this of the child's end
    early: float = 0.5  # a claim (child start) this long before its tick is early
    grace: float = 1.0  # the "+ 1 s" of the watchdog's bound
    observe_slack: float = 0.3  # the harness's observation resolution

    def mono(self, tick: float) -> float:
        return tick - self.wall_offset


@dataclass
class Violation:
    rule: str  # once | accounted | forbid | fencing | listing | stderr | lives
    message: str
    runs: list[Run] = field(default_factory=list)
    records: list[Record] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    lives: list[Life] = field(default_factory=list)

    def describe(self, t0: float = 0.0, wall_offset: float = 0.0) -> str:
        lines = [f"{self.rule}: {self.message}"]
        lines += [f"    {r.describe(t0, wall_offset)}" for r in self.runs]
        lines += [f"    {r.describe(t0)}" for r in self.records]
        lines += [f"    fault {f.describe(t0)}" for f in self.faults]
        lines += [f"    {x.describe(t0)}" for x in self.lives]
        return "\n".join(lines)


@dataclass
class FaultStats:
    fault: Fault
    excused: int = 0  # expected ticks with no run and no record that its window excused
    lost: int = 0  # records that ended `lost`, attributed to it
    lags: list[float] = field(default_factory=list)  # tick -> start of runs in its window
    recognised: int = 0  # lost_answer: own claims whose answer was lost, run late
    convergence: float | None = None


@dataclass
class Report:
    violations: list[Violation]
    stats: list[FaultStats]
    ticks_expected: int = 0
    ticks_ran: int = 0
    ticks_recorded: int = 0  # no child, but a record (skipped, lost)
    ticks_excused: int = 0
    lags: list[float] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations


def fmt_tick(tick: float) -> str:
    import time as _time

    whole = math.floor(tick)
    s = _time.strftime("%H:%M:%S", _time.gmtime(whole))
    frac = tick - whole
    return s + (f"{frac:.3f}"[1:] if frac else "")


# ---------------------------------------------------------------------------------------------


def check(
    jobs: Sequence[Job],
    incarnations: Sequence[Incarnation],
    runs: Sequence[Run],
    records: Sequence[Record],
    lives: Sequence[Life],
    faults: Sequence[Fault],
    convergences: Sequence[Convergence],
    listing: Listing | None,
    stderr: dict[str, str],
    params: Params,
    horizon: float,
    manual: Sequence[ManualCall] = (),
) -> Report:
    """Run every rule. `horizon`: when the harness took its last observation before stopping
    the daemons (the final listing); ticks are checked up to it, lives and children to the
    end of the log."""
    ctx = _Context(jobs, incarnations, runs, records, lives, faults, params, horizon)
    stats = [FaultStats(f) for f in faults]
    v: list[Violation] = []
    v += _rule_once(ctx)
    acc, counts = _rule_accounted(ctx, stats)
    v += acc
    v += _rule_forbid(ctx)
    v += _rule_fencing(ctx)
    v += _rule_listing(ctx, listing)
    v += _rule_stderr(stderr)
    v += _rule_lives(ctx)
    v += _rule_suspend(ctx)
    v += _rule_manual(ctx, manual)
    v += _convergence(convergences, faults, stats)
    _figures(ctx, stats)
    lags = [r.start - params.mono(r.tick) for r in runs if r.start <= horizon]
    return Report(v, stats, *counts, lags=lags)


class _Context:
    """Indexes over the inputs shared by the rules."""

    def __init__(
        self,
        jobs: Sequence[Job],
        incarnations: Sequence[Incarnation],
        runs: Sequence[Run],
        records: Sequence[Record],
        lives: Sequence[Life],
        faults: Sequence[Fault],
        p: Params,
        horizon: float,
    ) -> None:
        self.jobs = {j.name: j for j in jobs}
        self.incarnations = sorted(incarnations, key=lambda i: i.added)
        self.runs = sorted(runs, key=lambda r: r.start)
        self.records = list(records)
        self.lives = list(lives)
        self.faults = list(faults)
        self.p = p
        self.horizon = horizon
        self.runs_of: dict[tuple[str, float], list[Run]] = defaultdict(list)
        for r in self.runs:
            self.runs_of[(r.job, r.tick)].append(r)
        self.records_of: dict[tuple[str, float], list[Record]] = defaultdict(list)
        for rec in self.records:
            self.records_of[(rec.job, rec.tick)].append(rec)
        self.life_of: dict[tuple[str, int], Life] = {(x.daemon, x.life): x for x in lives}
        # claim id -> (daemon, life), learned from the children
        self.claim_life: dict[str, tuple[str, int]] = {}
        for rec in self.records:
            for r in self.runs_for(rec):
                self.claim_life.setdefault(rec.claim, (r.daemon, r.life))

    def claim_rev(self, rec: Record) -> int:
        """The revision of the claim rec records: its own create revision — unless rec is a
        result written anew after the record was removed (`cron rm` while its daemon was cut
        off): first seen as a result, no child ran at its revision, and an earlier record of
        the tick has the same claim id (a daemon process's); then that record's."""
        runs = self.runs_of.get((rec.job, rec.tick), [])
        if rec.states[0].status not in ("ok", "failed") or any(
            r.rev == rec.create_rev for r in runs
        ):
            return rec.create_rev
        earlier = [
            x.create_rev
            for x in self.records_of[(rec.job, rec.tick)]
            if x.claim == rec.claim and x.create_rev < rec.create_rev
        ]
        return max(earlier) if earlier else rec.create_rev

    def runs_for(self, rec: Record) -> list[Run]:
        """The children that ran rec's claim (CONCH_REV is the claim revision)."""
        rev = self.claim_rev(rec)
        return [r for r in self.runs_of.get((rec.job, rec.tick), []) if r.rev == rev]

    def claims(self) -> list[tuple[str, float, str, list[Record], list[Run]]]:
        """Every claim: (job, tick, claim id, its records, its children); children whose claim
        was never observed count as claims of their own (claim id '')."""
        out = []
        seen_runs: set[int] = set()
        groups: dict[tuple[str, float, int], list[Record]] = defaultdict(list)
        for rec in self.records:
            groups[(rec.job, rec.tick, self.claim_rev(rec))].append(rec)
        for (job, tick, _rev), recs in groups.items():
            rs = self.runs_for(recs[0])
            seen_runs.update(r.pid for r in rs)
            out.append((job, tick, recs[0].claim, recs, rs))
        for r in self.runs:
            if r.pid not in seen_runs:
                out.append((r.job, r.tick, "", [], [r]))
        return out

    def job(self, name: str) -> Job:
        return self.jobs[name]

    def incarnation_of(self, job: str, rev: int, at: float) -> Incarnation | None:
        """The definition a claim at revision `rev` (or, without one, at time `at`) ran under."""
        mine = [i for i in self.incarnations if i.job == job]
        if rev and all(i.rev for i in mine):
            older = [i for i in mine if i.rev < rev]
            return older[-1] if older else None
        older = [i for i in mine if i.added <= at]
        return older[-1] if older else (mine[0] if mine else None)

    def life(self, daemon: str, life: int) -> Life | None:
        return self.life_of.get((daemon, life))

    def life_at(self, daemon: str, t: float) -> Life | None:
        """The life of `daemon` running at t (else the last one started before t)."""
        cands = [x for x in self.lives if x.daemon == daemon and x.spawned <= t]
        if not cands:
            return None
        alive = [x for x in cands if x.alive_at(t)]
        return (alive or cands)[-1]

    def killed_by_fault(self, life: Life) -> Fault | None:
        return next(
            (
                f
                for f in self.faults
                if f.kind == KILL_DAEMON and f.daemon == life.daemon and f.life == life.life
            ),
            None,
        )

    def stopped_time(self, daemon: str, life: int, a: float, b: float) -> float:
        """How long that life was SIGSTOPped between a and b."""
        return sum(
            max(0.0, min(b, f.until) - max(a, f.at))
            for f in self.faults
            if f.kind == STOP_DAEMON and f.daemon == daemon and f.life == life
        )


# -- 1. once -------------------------------------------------------------------------------


def _rule_once(ctx: _Context) -> list[Violation]:
    out = []
    for (job, tick), rs in sorted(ctx.runs_of.items()):
        if len(rs) > 1 and not _attempts_ok(ctx, rs):
            out.append(
                Violation("once", f"tick {fmt_tick(tick)} of job {job} ran {len(rs)} times", rs)
            )
    by_inc: dict[tuple[str, float, int], list[tuple[str, list[Record]]]] = defaultdict(list)
    for job, tick, claim, recs, rs in ctx.claims():
        if not recs:
            continue
        rev = ctx.claim_rev(recs[0])
        first = min([x.first_seen for x in recs] + [r.start for r in rs])
        inc = ctx.incarnation_of(job, rev, first)
        idx = ctx.incarnations.index(inc) if inc is not None else -1
        by_inc[(job, tick, idx)].append((claim, recs))
    for (job, tick, _idx), claims in sorted(by_inc.items()):
        if len(claims) > 1:
            recs = [x for _, rs in claims for x in rs]
            out.append(
                Violation(
                    "once",
                    f"tick {fmt_tick(tick)} of job {job} was claimed {len(claims)} times by one "
                    f"definition (run keys created at revisions "
                    f"{sorted({x.create_rev for x in recs})})",
                    ctx.runs_of.get((job, tick), []),
                    recs,
                )
            )
    return out


def _attempts_ok(ctx: _Context, rs: Sequence[Run]) -> bool:
    """Several children of one tick are its attempts (--retries): CONCH_ATTEMPT 1, 2, ... in
    start order, at most retries + 1, one CONCH_REV (one claim), each started after the one
    before ended."""
    job = ctx.jobs.get(rs[0].job)
    if job is None or len(rs) > job.retries + 1:
        return False
    if [r.attempt for r in rs] != list(range(1, len(rs) + 1)) or len({r.rev for r in rs}) != 1:
        return False
    return all(a.end is not None and a.end <= b.start + 1e-9 for a, b in itertools.pairwise(rs))


def is_manual(job: Job, tick: float) -> bool:
    """A `cron run` tick: the request's time, never one of the schedule's (@every P: the
    multiples of P)."""
    return abs(tick / job.every - round(tick / job.every)) > 1e-9


# -- 2. accounted ------------------------------------------------------------------------------


def excuse_windows(
    faults: Sequence[Fault], lives: Sequence[Life], period: float, p: Params
) -> list[tuple[float, float, int | None]]:
    """(lo, hi, fault index or None) — ticks with lo < mono(t) <= hi need not be claimed."""
    out: list[tuple[float, float, int | None]] = []
    for fi, f in enumerate(faults):
        if f.kind in ETCD_FAULTS:
            out.append((f.at - period, f.until + p.etcd_recovery, fi))
    for a, b in all_daemons_down(faults, lives):
        out.append((a - period, b + p.start_settle, None))
    return out


def skewed_daemons(faults: Sequence[Fault], lives: Sequence[Life]) -> set[str]:
    """The daemons whose wall clock the harness moved."""
    return {f.daemon for f in faults if f.kind == CLOCK_SKEW and f.daemon} | {
        x.daemon for x in lives if x.clock_offset
    }


def skew_span(faults: Sequence[Fault], lives: Sequence[Life]) -> float:
    """How far apart the skewed clock's offsets (and the true clock) ever were (s): a daemon
    still corrected for its old offset after a step is early by new - old."""
    offs = [0.0, *(x.clock_offset for x in lives)]
    offs += [f.offset or 0.0 for f in faults if f.kind == CLOCK_SKEW]
    offs += [f.prev_offset or 0.0 for f in faults if f.kind == CLOCK_SKEW]
    return max(offs) - min(offs)


def early_claims(ctx: _Context) -> dict[str, list[tuple[float, float, int]]]:
    """Per job: (tick, claimed by, claim revision) of the ticks claimed early — before their
    own time (by more than Params.early) — by a daemon with a skewed clock. `claimed by` is
    the earliest sign of the claim: its child's start or the first observation of its
    record."""
    p = ctx.p
    skewed = skewed_daemons(ctx.faults, ctx.lives)
    out: dict[str, list[tuple[float, float, int]]] = defaultdict(list)
    for job, tick, _claim, recs, rs in ctx.claims():
        daemon = recs[0].daemon if recs else rs[0].daemon
        if daemon not in skewed:
            continue
        seen = min([r.start for r in rs] + [r.first_seen for r in recs])
        rev = ctx.claim_rev(recs[0]) if recs else rs[0].rev
        if seen < p.mono(tick) - p.early:
            out[job].append((tick, seen, rev))
    return out


def all_daemons_down(faults: Sequence[Fault], lives: Sequence[Life]) -> list[tuple[float, float]]:
    """Spans in which no conchd was running unstopped."""
    daemons = sorted({x.daemon for x in lives})
    if not daemons:
        return []
    # per daemon: spans of being up (alive and not stopped)
    events: list[tuple[float, int]] = []
    for d in daemons:
        up: list[tuple[float, float]] = [
            (x.spawned, x.exited if x.exited is not None else math.inf)
            for x in lives
            if x.daemon == d
        ]
        for f in faults:
            if f.kind == STOP_DAEMON and f.daemon == d:
                up = _subtract(up, f.at, f.until)
        for a, b in up:
            events += [(a, +1), (b, -1)]
    events.sort()
    out = []
    count, start = 0, None
    first = min(x.spawned for x in lives)
    last_exit = max((x.exited for x in lives if x.exited is not None), default=math.inf)
    start = None
    for t, delta in events:
        before = count
        count += delta
        if before > 0 and count == 0 and first <= t < last_exit:
            start = t
        elif before == 0 and count > 0 and start is not None:
            out.append((start, t))
            start = None
    return out


def _subtract(spans: list[tuple[float, float]], a: float, b: float) -> list[tuple[float, float]]:
    out = []
    for x, y in spans:
        if b <= x or a >= y:
            out.append((x, y))
            continue
        if x < a:
            out.append((x, a))
        if b < y:
            out.append((b, y))
    return out


def expected_ticks(ctx: _Context) -> list[tuple[Incarnation, float]]:
    """(incarnation, tick) for every tick rule 2 expects to be claimed."""
    p = ctx.p
    if not ctx.lives:
        return []
    first = min(x.spawned for x in ctx.lives) + p.start_settle
    out = []
    for inc in ctx.incarnations:
        job = ctx.job(inc.job)
        lo = max(first, inc.added + p.add_settle)
        hi = ctx.horizon - p.end_margin
        if inc.removed is not None:
            hi = min(hi, inc.removed - p.rm_lead)
        suspended = [(f.at - p.rm_lead, f.until + p.add_settle) for f in ctx.faults
                     if f.kind == SUSPEND_RESUME and f.job == inc.job]  # fmt: skip
        k = math.ceil((lo + p.wall_offset) / job.every - 1e-9)
        while True:
            tick = k * job.every
            if p.mono(tick) > hi:
                break
            if not any(a < p.mono(tick) <= b for a, b in suspended):
                out.append((inc, float(tick)))
            k += 1
    return out


def _rule_accounted(
    ctx: _Context, stats: list[FaultStats]
) -> tuple[list[Violation], tuple[int, int, int, int]]:
    p = ctx.p
    out: list[Violation] = []
    expected = expected_ticks(ctx)
    early = early_claims(ctx)
    ran = recorded = excused = 0
    windows_of: dict[float, list[tuple[float, float, int | None]]] = {}
    gaps = _gap_ticks(ctx)
    for inc, tick in expected:
        job = ctx.job(inc.job)
        if ctx.runs_of.get((job.name, tick)):
            ran += 1
            continue
        if ctx.records_of.get((job.name, tick)) or (job.name, tick) in gaps:
            recorded += 1
            continue
        if job.every not in windows_of:
            windows_of[job.every] = excuse_windows(ctx.faults, ctx.lives, job.every, p)
        m = p.mono(tick)
        hits = [fi for lo, hi, fi in windows_of[job.every] if lo < m <= hi]
        # overtaken: a later tick of the same definition was claimed early, before this one
        # could be, which moved the job's low-water mark past it
        over = [
            (t2, seen)
            for t2, seen, rev in early.get(job.name, [])
            if t2 > tick and seen < m + job.every and ctx.incarnation_of(job.name, rev, seen) == inc
        ]
        if over:  # counted for the last clock step before the early claim, if any
            seen = min(c for _, c in over)
            steps = [fi for fi, f in enumerate(ctx.faults) if f.kind == CLOCK_SKEW and f.at <= seen]
            hits.append(max(steps, key=lambda fi: ctx.faults[fi].at) if steps else None)
        if hits:
            excused += 1
            for fi in {fi for fi in hits if fi is not None}:
                stats[fi].excused += 1
            continue
        near = [f for f in ctx.faults if f.at - 10 <= m <= f.until + 20]
        out.append(
            Violation(
                "accounted",
                f"tick {fmt_tick(tick)} of job {job.name} neither ran nor was recorded "
                f"(skipped/lost), and no fault window excuses it",
                [r for r in ctx.runs if r.job == job.name and abs(r.tick - tick) <= 3 * job.every],
                [
                    rec
                    for rec in ctx.records
                    if rec.job == job.name and abs(rec.tick - tick) <= 3 * job.every
                ],
                near,
            )
        )
    out += _claims_never_run(ctx)
    out += _early_starts(ctx)
    return out, (len(expected), ran, recorded, excused)


def _gap_ticks(ctx: _Context) -> set[tuple[str, float]]:
    """(job, tick) of the ticks a `missed` record of a gap stands for after its own (count)."""
    out = set()
    for rec in ctx.records:
        shown = rec.final
        if shown.status == "missed" and shown.count > 1 and rec.job in ctx.jobs:
            every = ctx.job(rec.job).every
            out.update((rec.job, rec.tick + k * every) for k in range(1, shown.count))
    return out


def _early_starts(ctx: _Context) -> list[Violation]:
    """Only a daemon whose clock is ahead starts a run before its tick, by at most how far
    its clock ever was ahead (+ grace)."""
    p = ctx.p
    skewed = skewed_daemons(ctx.faults, ctx.lives)
    bound = skew_span(ctx.faults, ctx.lives) + p.grace
    out = []
    for r in ctx.runs:
        lag = r.start - p.mono(r.tick)
        if lag >= -p.early:
            continue
        if r.daemon not in skewed:
            why = f"{r.daemon}, whose clock is true, started it {-lag:.3f}s before its tick"
        elif -lag > bound:
            why = f"{r.daemon} started it {-lag:.3f}s early, more than its clock was ever off"
        else:
            continue
        out.append(Violation("accounted", f"job {r.job} tick {fmt_tick(r.tick)}: {why}", [r]))
    return out


def _claims_never_run(ctx: _Context) -> list[Violation]:
    p = ctx.p
    out = []
    for rec in ctx.records:
        if ctx.runs_for(rec) or ctx.claim_rev(rec) != rec.create_rev:
            continue
        if any(s.status not in ("running", "lost") for s in rec.states):
            continue
        if rec.first_seen > ctx.horizon - p.claim_settle:
            continue  # too recent to tell
        if rec.claim in ctx.claim_life:
            life = ctx.life(*ctx.claim_life[rec.claim])
        else:
            life = ctx.life_at(rec.daemon, rec.first_seen)
        if (
            life is not None
            and life.code == -SIGKILL
            and life.exited is not None
            and life.exited <= rec.first_seen + p.orphan_claim_grace
        ):
            continue
        out.append(
            Violation(
                "accounted",
                f"tick {fmt_tick(rec.tick)} of job {rec.job} was claimed by "
                f"{rec.daemon} but never ran, and the claiming daemon did not die",
                [],
                [rec],
                [f for f in ctx.faults if f.at - 5 <= rec.first_seen <= f.until + 15],
                [life] if life is not None else [],
            )
        )
    return out


# -- 3. forbid ---------------------------------------------------------------------------------


def _lease_fault(f: Fault, prev: Run) -> bool:
    """Whether fault f can have cost the daemon life of run `prev` its lease."""
    if f.kind in ETCD_FAULTS:
        return True
    if f.kind == STOP_DAEMON:
        return f.daemon == prev.daemon and f.life == prev.life
    if f.kind == LOST_ANSWER:
        return f.daemon == prev.daemon
    return False


def _rule_forbid(ctx: _Context) -> list[Violation]:
    out = []
    by_job: dict[str, list[Run]] = defaultdict(list)
    for r in ctx.runs:
        by_job[r.job].append(r)
    for name, rs in sorted(by_job.items()):
        job = ctx.job(name)
        if job.overlap != "forbid":
            continue
        rs = sorted(rs, key=lambda r: r.start)
        for k, new in enumerate(rs):
            for prev in rs[:k]:
                if prev.tick == new.tick:
                    continue  # attempts of one run (rule 1 checks they do not overlap)
                end = math.inf if prev.end is None else prev.end
                if not new.start < end - 1e-9:
                    continue
                if _forbid_excuse(ctx, prev, new) is not None:
                    continue
                out.append(
                    Violation(
                        "forbid",
                        f"job {name} (--overlap forbid): the run of tick {fmt_tick(new.tick)} "
                        f"started while the run of tick {fmt_tick(prev.tick)} still ran "
                        f"({min(end, ctx.horizon) - new.start:.3f}s of overlap), and neither "
                        f"daemon was cut off",
                        [prev, new],
                        [],
                        [f for f in ctx.faults if f.at <= end and f.until + 10 >= prev.start],
                    )
                )
    return out


def _forbid_excuse(ctx: _Context, prev: Run, new: Run) -> Fault | None:
    """Why `new` could start while `prev` ran: the alive marker of one of them was gone when
    the other was claimed (a daemon cut off, or killed with its run dying within K + 1 s)."""
    p = ctx.p
    life = ctx.life(prev.daemon, prev.life)
    if life is not None and life.code == -SIGKILL and life.exited is not None:
        kill = ctx.killed_by_fault(life)
        job = ctx.job(prev.job)
        if (
            kill is not None
            and kill.at <= new.start
            and prev.end is not None
            and prev.end <= kill.at + job.kill_after + p.grace + p.observe_slack
        ):
            return kill
    for f in ctx.faults:
        if not f.at <= new.start <= f.until + p.lease_recovery:
            continue
        for x in (prev, new):
            end = math.inf if x.end is None else x.end
            if _lease_fault(f, x) and f.at < end:
                return f
    return None


# -- 4. fencing --------------------------------------------------------------------------------


def _rule_fencing(ctx: _Context) -> list[Violation]:
    out = []
    # (incarnation, tick) -> (rev, source)
    points: dict[tuple[int, str], dict[float, tuple[int, list[Run], list[Record]]]] = defaultdict(
        dict
    )
    for r in ctx.runs:
        recs = ctx.records_of.get((r.job, r.tick), [])
        if recs and not any(x.create_rev == r.rev for x in recs):
            out.append(
                Violation(
                    "fencing",
                    f"CONCH_REV {r.rev} of job {r.job} tick {fmt_tick(r.tick)} is no claim "
                    f"revision of its tick (run keys created at "
                    f"{sorted({x.create_rev for x in recs})})",
                    [r],
                    recs,
                )
            )
    for job, tick, _claim, recs, rs in ctx.claims():
        if not rs and recs and all(x.final.status == "missed" for x in recs):
            continue  # not a claim: written by the claim of a later tick, after it
        if job in ctx.jobs and is_manual(ctx.job(job), tick):
            continue  # a `cron run`: claimed when asked for, whatever the schedule's ticks
        rev = ctx.claim_rev(recs[0]) if recs else rs[0].rev
        at = min([r.start for r in rs] + [x.first_seen for x in recs])
        inc = ctx.incarnation_of(job, rev, at)
        idx = ctx.incarnations.index(inc) if inc is not None else -1
        points[(idx, job)][tick] = (rev, rs, recs)
    for (_idx, job), by_tick in sorted(points.items()):
        ticks = sorted(by_tick)
        for a, b in itertools.pairwise(ticks):
            ra, rb = by_tick[a][0], by_tick[b][0]
            if rb <= ra:
                out.append(
                    Violation(
                        "fencing",
                        f"job {job}: tick {fmt_tick(b)} has revision {rb}, not larger than "
                        f"{ra} of the earlier tick {fmt_tick(a)}",
                        by_tick[a][1] + by_tick[b][1],
                        by_tick[a][2] + by_tick[b][2],
                    )
                )
    return out


# -- 5. listing ---------------------------------------------------------------------------------


def _code_ok(run: Run, code: int | None) -> bool:
    if run.how == "exit":
        return code == run.code
    return code is not None and code > 128  # killed by a signal


def _rule_listing(ctx: _Context, listing: Listing | None) -> list[Violation]:
    p = ctx.p
    out: list[Violation] = []
    for rec in ctx.records:
        rs = ctx.runs_for(rec)
        job = ctx.jobs.get(rec.job)
        seen_bad: set[str] = set()
        for s in rec.states:
            why = None
            if s.status in ("ok", "failed"):
                if not rs:
                    why = f"shows {s.status} but no child ran for it"
                elif not _code_ok(rs[-1], s.exit_code):  # the last attempt's
                    why = (
                        f"shows exit code {s.exit_code}, the child's was {rs[-1].code} "
                        f"({rs[-1].how})"
                    )
                elif (s.status == "ok") != (s.exit_code == 0 and not s.timed_out):
                    why = f"shows {s.status} for exit code {s.exit_code}"
                elif s.timed_out and (job is None or job.timeout is None):
                    why = "shows timed out for a job without --timeout"
            elif s.status in ("skipped", "missed") and rs:
                why = f"shows {s.status}, but a child ran for it"
            if why and why not in seen_bad:
                seen_bad.add(why)
                out.append(Violation("listing", f"record of job {rec.job}: {why}", rs, [rec]))
        if rs and rec.daemon != rs[0].daemon:
            out.append(
                Violation(
                    "listing",
                    f"record of job {rec.job} names daemon {rec.daemon}, the child ran on "
                    f"{rs[0].daemon}",
                    rs,
                    [rec],
                )
            )
        # the result is written while the daemon lives on
        if rs and rec.final.status in ("running", "lost"):
            r = rs[-1]
            life = ctx.life(r.daemon, r.life)
            if (
                r.end is not None
                and life is not None
                and (life.exited is None or life.exited >= rec.last_seen)
                and r.end <= rec.last_seen - p.result_grace
            ):
                out.append(
                    Violation(
                        "listing",
                        f"job {rec.job}: the child ended {rec.last_seen - r.end:.1f}s before the "
                        f"last observation and its daemon lives, but the record still shows "
                        f"{rec.final.status}",
                        rs,
                        [rec],
                        lives=[life],
                    )
                )
    if listing is not None:
        out += _check_listing(ctx, listing)
    return out


def _parse_tick(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _check_listing(ctx: _Context, listing: Listing) -> list[Violation]:
    p = ctx.p
    out: list[Violation] = []
    shown_jobs = {j.get("name") for j in listing.doc}
    current = {}
    for inc in ctx.incarnations:
        if inc.removed is None:
            current[inc.job] = inc
    for name in sorted(set(current) - shown_jobs):
        out.append(Violation("listing", f"cron ls does not show job {name}"))
    for j in listing.doc:
        name = j.get("name")
        if name not in ctx.jobs:
            out.append(Violation("listing", f"cron ls shows an unknown job {name!r}"))
            continue
        rows = list(j.get("runs") or [])
        shown_ticks: set[float] = set()
        for row in rows:
            tick = _parse_tick(row["tick"])
            shown_ticks.add(tick)
            recs = ctx.records_of.get((name, tick), [])
            rs = ctx.runs_of.get((name, tick), [])
            if recs:  # the record shown is the newest claim of the tick
                rs = ctx.runs_for(max(recs, key=lambda x: x.create_rev))
            status, code = row.get("status"), row.get("exit_code")
            why = None
            r = rs[-1] if rs else None  # the last attempt
            if status == "running":
                if r is None:
                    newest = max(recs, key=lambda x: x.first_seen, default=None)
                    if newest is None or newest.first_seen <= listing.at - p.claim_settle:
                        why = "shows running, but no child ran for it"
                    # else: too recent to tell, as for a claim that never ran: the harness may
                    # stop the daemon before the child's interpreter writes its start line
                elif r.end is not None and r.end < listing.at - p.observe_slack:
                    why = f"shows running, but its child ended {listing.at - r.end:.3f}s earlier"
                else:
                    life = ctx.life(r.daemon, r.life)
                    if life is not None and life.exited is not None and life.exited < listing.at:
                        why = "shows running, but the daemon that runs it is dead"
            elif status == "lost":
                if r is not None:
                    life = ctx.life(r.daemon, r.life)
                    if (
                        life is None
                        or life.code != -SIGKILL
                        or (life.exited is not None and life.exited > listing.at)
                    ):
                        why = "shows lost, but its child's daemon was not killed"
            elif status in ("ok", "failed"):
                if r is None:
                    why = f"shows {status}, but no child ran for it"
                elif not _code_ok(r, code):
                    why = f"shows exit code {code}, the child's was {r.code} ({r.how})"
                elif (status == "ok") != (code == 0 and not row.get("timed_out")):
                    why = f"shows {status} for exit code {code}"
            elif status in ("skipped", "missed"):
                if r is not None:
                    why = f"shows {status}, but a child ran for it"
            else:
                why = f"unknown status {status!r}"
            if why is None and r is not None:
                if row.get("rev") not in (None, r.rev) or (
                    status in ("ok", "failed") and row.get("rev") != r.rev
                ):
                    why = f"shows rev {row.get('rev')}, the child had CONCH_REV {r.rev}"
                elif row.get("daemon") not in (None, r.daemon):
                    why = f"shows daemon {row.get('daemon')}, the child ran on {r.daemon}"
            if why:
                out.append(
                    Violation(
                        "listing",
                        f"cron ls, job {name} tick {row['tick']}: {why} (row {row})",
                        rs,
                        recs,
                    )
                )
        # every recent child of the current definition is shown
        inc = current.get(name)
        if inc is None:
            continue
        oldest = min(shown_ticks) if len(rows) >= HISTORY else -math.inf
        for (job, tick), rs in ctx.runs_of.items():
            if job != name or tick in shown_ticks or tick < oldest:
                continue
            r = rs[0]
            if r.start >= listing.at or (inc.rev and r.rev <= inc.rev):
                continue
            if not inc.rev and r.start < inc.added:
                continue
            out.append(
                Violation(
                    "listing",
                    f"cron ls does not show tick {fmt_tick(tick)} of job {name}, which ran "
                    f"({len(rows)} rows shown)",
                    rs,
                    ctx.records_of.get((job, tick), []),
                )
            )
    return out


# -- 6. stderr -------------------------------------------------------------------------------

_BAD = ("Traceback", "Warning", "Fatal Python")


def _rule_stderr(stderr: dict[str, str]) -> list[Violation]:
    out = []
    for who, text in sorted(stderr.items()):
        if any(b in text for b in _BAD):
            lines = text.splitlines()
            idx = next(k for k, ln in enumerate(lines) if any(b in ln for b in _BAD))
            excerpt = "\n      ".join(lines[max(0, idx - 3) : idx + 25])
            out.append(
                Violation(
                    "stderr",
                    f"{who} printed a traceback or a warning:\n      {excerpt}",
                )
            )
    return out


# -- 7. lives ----------------------------------------------------------------------------------


def _rule_lives(ctx: _Context) -> list[Violation]:
    p = ctx.p
    out = []
    for x in ctx.lives:
        why = None
        if x.code is None:
            why = "still running when the harness stopped looking"
        elif x.code == -SIGKILL:
            if ctx.killed_by_fault(x) is None:
                why = "killed by SIGKILL that no fault sent"
        elif x.signalled is not None and x.code in (128 + x.signalled, -x.signalled):
            pass
        else:
            why = f"exited {x.code}" + (
                "" if x.signalled is None else f" after the harness sent signal {x.signalled}"
            )
        if why:
            out.append(Violation("lives", f"conchd {x.daemon}#{x.life}: {why}", lives=[x]))
    for r in ctx.runs:
        life = ctx.life(r.daemon, r.life)
        job = ctx.jobs.get(r.job)
        if job is None:
            continue
        end = ctx.horizon if r.end is None else r.end
        k1 = job.kill_after + p.grace + p.observe_slack
        if life is not None and life.exited is not None and end > life.exited + k1:
            out.append(
                Violation(
                    "lives",
                    f"a child of job {r.job} outlived its conchd by {end - life.exited:.3f}s "
                    f"(> K + {p.grace:g}s)",
                    [r],
                    lives=[life],
                )
            )
            continue
        if job.timeout is not None:
            limit = r.start + job.timeout + k1 + ctx.stopped_time(r.daemon, r.life, r.start, end)
            if end > limit:
                out.append(
                    Violation(
                        "lives",
                        f"a child of job {r.job} (--timeout {job.timeout:g}s --kill-after "
                        f"{job.kill_after:g}s) ran {end - r.start:.3f}s",
                        [r],
                        lives=[life] if life else [],
                    )
                )
    return out


# -- 8. operating: suspend / resume, manual runs ------------------------------------------------


def _rule_suspend(ctx: _Context) -> list[Violation]:
    """While a job is suspended — from its `cron suspend` returning (``at``) to its `cron
    resume` starting (``until``) — nothing of it is claimed, and no scheduled tick of that
    span is claimed afterwards either (resume claims no past tick): no record of such a claim
    first seen after ``at`` + observe_slack (a `missed` record is written by a claim from
    before; a tick claimed early by a skewed clock before the suspend is seen before)."""
    p = ctx.p
    out = []
    for f in ctx.faults:
        if f.kind != SUSPEND_RESUME or f.job not in ctx.jobs:
            continue
        job = ctx.job(f.job)
        for rec in ctx.records:
            if rec.job != f.job or rec.states[0].status == "missed":
                continue
            if rec.first_seen <= f.at + p.observe_slack:
                continue
            in_span = f.at < p.mono(rec.tick) <= f.until and not is_manual(job, rec.tick)
            if rec.first_seen < f.until or in_span:
                what = (
                    "while it was suspended"
                    if rec.first_seen < f.until
                    else ("after the resume, for a tick that passed while it was suspended")
                )
                out.append(Violation("suspend", f"job {f.job}: a tick was claimed {what}",
                                     ctx.runs_for(rec), [rec], [f]))  # fmt: skip
    return out


def _rule_manual(ctx: _Context, manual: Sequence[ManualCall]) -> list[Violation]:
    """`cron run --wait` says what became of the run: the child's exit code (its last
    attempt's) when one ran; 75 only when none ran for the tick (skipped, missed, or not
    claimed within --timeout — and that only with a fault about); 70 (lost) and 69 (etcd
    unreachable) only with a fault about; 1 (no such job) only while the job was removed; 75
    at once for a suspended job (only while it was)."""
    p = ctx.p
    out = []
    for m in manual:
        rs = ctx.runs_of.get((m.job, m.tick), []) if m.tick is not None else []
        about = [f for f in ctx.faults
                 if f.at - 1.0 <= m.done and m.at <= f.until + p.lease_recovery]  # fmt: skip
        why = None
        if m.code == 1:
            if not any(f.kind == RM_READD and f.job == m.job for f in about):
                why = "no such job, but the job was not removed"
        elif m.code == 75:
            if rs:
                why = "exit 75 (nothing run), but a child ran for its tick"
            elif "is suspended" in m.message and not any(
                f.kind == SUSPEND_RESUME and f.job == m.job for f in about
            ):
                why = "refused as suspended, but the job was not"
            elif "no conchd daemon claimed it in time" in m.message and not about:
                why = "not claimed within --timeout, and no fault about"
        elif m.code == 70:
            if not about:
                why = "lost, and no fault about"
        elif m.code == 69:
            if not any(f.kind in ETCD_FAULTS for f in about):
                why = "etcd unreachable, and no etcd fault about"
        elif not rs:
            why = f"exit {m.code}, but no child ran for its tick"
        elif not _code_ok(rs[-1], m.code):
            why = f"exit {m.code}, the child's was {rs[-1].code} ({rs[-1].how})"
        if why:
            out.append(Violation("manual", f"{m.describe(0.0)}: {why}", list(rs), [], about))
    return out


# -- convergence and figures ---------------------------------------------------------------------


def _convergence(
    convergences: Sequence[Convergence], faults: Sequence[Fault], stats: list[FaultStats]
) -> list[Violation]:
    out = []
    seen = set()
    for c in convergences:
        if c.fault is not None:
            seen.add(c.fault)
            if 0 <= c.fault < len(stats):
                stats[c.fault].convergence = c.seconds
        if not c.ok:
            what = {-1: "the start", None: "the end"}.get(c.fault, f"fault #{c.fault}")
            out.append(
                Violation(
                    "converged",
                    f"after {what}: {c.detail}",
                    faults=[faults[c.fault]] if c.fault is not None and c.fault >= 0 else [],
                )
            )
    for fi, f in enumerate(faults):
        if fi not in seen:
            out.append(Violation("converged", f"fault #{fi} has no verdict", faults=[f]))
    return out


def effect_window(f: Fault, p: Params) -> tuple[float, float]:
    """The span whose ticks count towards a fault's figures."""
    if f.kind == CLOCK_SKEW:
        return f.at, f.at + SKEW_EFFECT + max(0.0, f.forward)
    return f.at, f.until + p.ttl + 3.0


def _figures(ctx: _Context, stats: list[FaultStats]) -> None:
    p = ctx.p
    for st in stats:
        f = st.fault
        lo, hi = effect_window(f, p)
        for r in ctx.runs:
            m = p.mono(r.tick)
            lag = r.start - m
            # a run claimed before the fault, or early (a clock ahead), owes nothing to it
            if lo <= m <= hi and r.start >= f.at - 0.5 and (lag > -0.2 or f.kind == CLOCK_SKEW):
                st.lags.append(lag)
        if f.kind == LOST_ANSWER:
            # claims of the cut-off daemon that committed during the blackhole and ran late:
            # it recognised its own claim
            for rec in ctx.records:
                rs = ctx.runs_for(rec)
                if (
                    rec.daemon == f.daemon
                    and f.at <= p.mono(rec.tick) <= f.until
                    and rec.first_seen <= f.until + p.observe_slack
                    and rs
                    and rs[0].start - p.mono(rec.tick) > 0.5
                ):
                    st.recognised += 1
    # each lost run counts once: for the SIGKILL of the life that ran (or claimed) it, else
    # for the latest fault whose effect window holds its claim
    for rec in ctx.records:
        if rec.final.status != "lost":
            continue
        rs = ctx.runs_for(rec)
        life = (
            ctx.life(rs[0].daemon, rs[0].life)
            if rs
            else ctx.life(*ctx.claim_life[rec.claim])
            if rec.claim in ctx.claim_life
            else ctx.life_at(rec.daemon, rec.first_seen)
        )
        kill = ctx.killed_by_fault(life) if life is not None else None
        if kill is not None:
            stats[ctx.faults.index(kill)].lost += 1
            continue
        cands = [
            fi
            for fi, f in enumerate(ctx.faults)
            if effect_window(f, p)[0] - 0.5 <= rec.first_seen <= effect_window(f, p)[1]
        ]
        if cands:
            stats[max(cands, key=lambda fi: ctx.faults[fi].at)].lost += 1


def summarize(report: Report) -> dict[str, dict[str, Any]]:
    """Per fault kind (compound faults: their own row): faults, ticks excused, runs lost, lag
    p50/max of the runs whose tick fell in the fault's effect window, convergence."""
    by_kind: dict[str, list[FaultStats]] = defaultdict(list)
    for st in report.stats:
        by_kind["compound" if st.fault.compound else st.fault.kind].append(st)
    out: dict[str, dict[str, Any]] = {}
    for kind, sts in sorted(by_kind.items()):
        lags = sorted(x for s in sts for x in s.lags)
        conv = sorted(s.convergence for s in sts if s.convergence is not None)
        out[kind] = {
            "faults": len(sts),
            "ticks_excused": sum(s.excused for s in sts),
            "runs_lost": sum(s.lost for s in sts),
            "recognised": sum(s.recognised for s in sts),
            "lags_s": [round(x, 3) for x in lags],
            "convergence_s": [round(x, 3) for x in conv],
        }
    lags = sorted(report.lags)
    out["all"] = {
        "faults": len(report.stats),
        "ticks_excused": report.ticks_excused,
        "runs_lost": sum(s.lost for s in report.stats),
        "recognised": sum(s.recognised for s in report.stats),
        "lags_s": [round(x, 3) for x in lags],
        "convergence_s": [],
        "ticks_expected": report.ticks_expected,
        "ticks_ran": report.ticks_ran,
        "ticks_recorded": report.ticks_recorded,
    }
    return out


def percentile(values: Iterable[float], q: float) -> float | None:
    vs = sorted(values)
    if not vs:
        return None
    if q == 0.5:
        return float(median(vs))
    return vs[min(len(vs) - 1, max(0, math.ceil(q * len(vs)) - 1))]
