"""The checker of the invariant tests (layer 3): pure functions over an interval log, a fault log
and the life of every conch process. No I/O; hand-made logs test it (test_checker.py).

What it asserts (docs/guarantees.md, "The overlap window"; docs/testing.md):

1. Bounded concurrency. At every instant at most N child intervals are open, except that an
   interval I may exceed the limit while it is *excused*: some loss event e affects I (e is a
   revoke of I's lease, a SIGKILL or SIGSTOP of I's conch, or an etcd-wide fault: a member
   killed or paused, quorum lost) and I really ended within e's window:

       end(I) <= min(base(e),  first_excess(I) + K + 1 s)         (+ for a "stale start", below)

   * ``first_excess(I)`` is the first instant, at or after the loss, at which I is open and
     more than N intervals are: when a successor started beside it. The successor starts no
     earlier than it *could*, so this is the documented bound "the old holder's child is dead
     within K + 1 s of the moment a successor could start" (K = --kill-after), slightly
     relaxed by the successor's start-up time, never tightened.
   * ``base(e)`` closes the window whatever successors do: revoke and conch SIGKILL act at
     once (``at + K + 1``); a paused conch's watchdog fires at the local deadline, before
     ``at + TTL`` (``at + TTL + K + 1``); an etcd fault can make a keepalive fail until the
     fault is repaired (``until + TTL + K + 1``).
   * A *stale start* — an interval that began after a revoke/SIGSTOP hit its own conch or
     lease (conch was paused between its last trust check and spawning the child) — must end
     within ``start + K + 1``: the watchdog starts with the already expired deadline.

   An interval that outlived its window cannot excuse anything: if it overlapped, the overlap
   is a violation (the window did not close). Except for a stale start, the excused interval
   is the *older* one: an overlap can only be excused by an interval that a younger one (its
   successor) overlaps — a holder that started beside a running one and died soon after was a
   second holder, not a stale one. An interval is also never allowed to outlive its own conch
   by more than K + 1 s (no orphans).
2. Convergence. Every fault was followed by a converged state (the harness checks "the holders
   etcd names are exactly the children running" after each fault and at the end), and every
   conch process ended with an allowed exit code: promoted and ran (its child's code, or 70
   after a loss event that hit it), or not promoted and exited 75 (only with --timeout or
   --nonblock), 69 (only while etcd was losing quorum), 70 (only after a loss event that hit
   it), or was signalled by the harness.
3. Fencing. CONCH_REV identifies the key: one lease never has two revisions, two leases never
   share one. A key created after an interval ended has a larger revision (intervals that ended
   before a conch process was even started have smaller tokens than all of its intervals). For
   an office (N = 1), tokens strictly increase in start order across successions: an interval
   that was not started by a holder already hit by a loss event has a larger token than every
   interval (of another key) that started before it.

Times are seconds on one monotonic clock (CLOCK_MONOTONIC is system-wide on Linux).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

# fault kinds
REVOKE = "revoke"  # etcdctl lease revoke of one lease
KILL_CONCH = "kill_conch"  # SIGKILL of one conch process
STOP_CONCH = "stop_conch"  # SIGSTOP of one conch process for a while, then SIGCONT
KILL_MEMBER = "kill_member"  # SIGKILL of one etcd member, restarted later
PAUSE_MEMBER = "pause_member"  # SIGSTOP of one etcd member, SIGCONT later
QUORUM_LOSS = "quorum_loss"  # all members but one down, restored later

CONCH_FAULTS = (REVOKE, KILL_CONCH, STOP_CONCH)
ETCD_FAULTS = (KILL_MEMBER, PAUSE_MEMBER, QUORUM_LOSS)
ALL_FAULTS = CONCH_FAULTS + ETCD_FAULTS

EXIT_UNAVAILABLE = 69
EXIT_LEASE_LOST = 70
EXIT_NOT_ACQUIRED = 75


@dataclass(frozen=True)
class Interval:
    """One child's run: from its start record to its end record (or, when it was killed, to
    the moment the harness saw the process gone). ``end`` None: still running at the end."""

    holder: str  # id of the conch process that ran it
    pid: int  # the child's pid
    rev: int  # CONCH_REV
    lease: int  # CONCH_LEASE
    ttl: float  # CONCH_TTL (granted)
    start: float
    end: float | None
    how: str = "exit"  # "exit": own end record | "vanished": killed | "open"

    def open_at(self, t: float) -> bool:
        return self.start <= t and (self.end is None or t < self.end)

    def describe(self, t0: float = 0.0) -> str:
        end = "running" if self.end is None else f"{self.end - t0:.3f}"
        return (
            f"[{self.start - t0:.3f} .. {end}] holder={self.holder} child={self.pid} "
            f"rev={self.rev} lease={self.lease:x} ({self.how})"
        )


@dataclass(frozen=True)
class Fault:
    kind: str
    at: float  # injected (before the signal / command)
    until: float  # repaired (== at for an instantaneous fault)
    holder: str | None = None  # conch faults: the conch process hit
    lease: int | None = None  # revoke: the lease revoked
    member: str | None = None  # etcd faults: the member(s) hit
    detail: str = ""
    compound: bool = False  # injected together with another fault (one convergence for both)

    def describe(self, t0: float = 0.0) -> str:
        what = []
        if self.holder is not None:
            what.append(f"holder={self.holder}")
        if self.lease is not None:
            what.append(f"lease={self.lease:x}")
        if self.member is not None:
            what.append(f"member={self.member}")
        if self.detail:
            what.append(self.detail)
        if self.compound:
            what.append("(compound)")
        span = f"{self.at - t0:.3f}"
        if self.until != self.at:
            span += f"..{self.until - t0:.3f}"
        return f"{self.kind}@{span} {' '.join(what)}".rstrip()


@dataclass(frozen=True)
class Process:
    """One conch process the harness ran."""

    holder: str
    pid: int
    spawned: float
    exited: float | None  # None: still running when the harness stopped looking
    code: int | None  # Popen returncode (-S: killed by signal S)
    opts: frozenset[str] = frozenset()  # "timeout", "nonblock", "restart"
    signalled: int | None = None  # a signal the harness sent to end it (teardown), if any


@dataclass(frozen=True)
class Convergence:
    """The harness's verdict after a fault (fault index) or at the end (None)."""

    fault: int | None
    ok: bool
    seconds: float | None  # from the fault's injection to the converged state
    detail: str = ""


@dataclass(frozen=True)
class Params:
    slots: int  # N (1 for elect)
    kill_after: float  # K
    grace: float = 1.0  # the "+ 1 s" of the documented bound
    unavailable_grace: float = 6.0  # 69 may come this long after an etcd fault's repair
    observe_slack: float = 0.2  # the harness's observation resolution (process exit polls)


@dataclass
class Violation:
    rule: str  # "capacity" | "orphan" | "convergence" | "exit" | "fencing"
    message: str
    intervals: list[Interval] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    span: tuple[float, float] | None = None  # when (for capacity violations)

    def describe(self, t0: float = 0.0) -> str:
        lines = [f"{self.rule}: {self.message}"]
        if self.span is not None:
            a, b = self.span
            lines[0] += f" from {a - t0:.3f} to {b - t0:.3f} ({b - a:.3f} s)"
        lines += [f"    interval {i.describe(t0)}" for i in self.intervals]
        lines += [f"    fault    {f.describe(t0)}" for f in self.faults]
        return "\n".join(lines)


@dataclass
class FaultStats:
    fault: Fault
    overlap: float = 0.0  # longest continuous stretch with more than N children it excused
    excess: int = 0  # most children above N at once that it excused
    convergence: float | None = None


@dataclass
class Report:
    violations: list[Violation]
    stats: list[FaultStats]
    max_concurrency: int

    @property
    def ok(self) -> bool:
        return not self.violations


# ---------------------------------------------------------------------------------------------


def affects(f: Fault, i: Interval, grace: float) -> bool:
    """Whether loss event f can have made interval i's slot uncertain."""
    if i.end is not None and i.end < f.at:
        return False  # over before the fault
    if i.start > f.until + grace:
        return False  # began well after the fault was repaired
    if f.kind == REVOKE:
        return f.lease == i.lease
    if f.kind in (KILL_CONCH, STOP_CONCH):
        return f.holder == i.holder
    return f.kind in ETCD_FAULTS


def base_window_end(f: Fault, i: Interval, p: Params) -> float:
    k1 = p.kill_after + p.grace
    if f.kind in (REVOKE, KILL_CONCH):
        return f.at + k1
    if f.kind == STOP_CONCH:
        return f.at + i.ttl + k1
    return f.until + i.ttl + k1


class _Timeline:
    """Elementary segments between consecutive boundaries, with the open intervals of each."""

    def __init__(self, intervals: Sequence[Interval], extra: Iterable[float], horizon: float):
        points = {horizon}
        for i in intervals:
            points.add(i.start)
            if i.end is not None:
                points.add(i.end)
        points.update(t for t in extra if t < horizon)
        self.points = sorted(points)
        self.segments: list[tuple[float, float, list[int]]] = []
        starts = sorted(range(len(intervals)), key=lambda k: intervals[k].start)
        active: set[int] = set()
        nxt = 0
        for a, b in zip(self.points, self.points[1:], strict=False):
            if b <= a:
                continue
            while nxt < len(starts) and intervals[starts[nxt]].start <= a:
                active.add(starts[nxt])
                nxt += 1
            active = {k for k in active if intervals[k].end is None or intervals[k].end > a}
            self.segments.append((a, b, sorted(active)))


def check(
    intervals: Sequence[Interval],
    faults: Sequence[Fault],
    processes: Sequence[Process],
    convergences: Sequence[Convergence],
    params: Params,
    horizon: float | None = None,
) -> Report:
    """Run every rule; `horizon` is when observation ended (default: the last known time)."""
    ivs = list(intervals)
    if horizon is None:
        known = [i.start for i in ivs] + [i.end for i in ivs if i.end is not None]
        known += [f.until for f in faults] + [p.exited for p in processes if p.exited is not None]
        horizon = max(known, default=0.0) + 1.0
    violations: list[Violation] = []
    stats = [FaultStats(f) for f in faults]
    tl = _Timeline(ivs, [f.at for f in faults], horizon)
    max_conc = max((len(s[2]) for s in tl.segments), default=0)

    violations += _check_capacity(ivs, faults, params, tl, stats)
    violations += _check_orphans(ivs, processes, params, horizon)
    violations += _check_convergence(ivs, faults, processes, convergences, params, stats)
    violations += _check_fencing(ivs, faults, processes, params)
    return Report(violations, stats, max_conc)


# -- 1. capacity -------------------------------------------------------------------------------


def _younger_beside(ivs: list[Interval], k: int, act: list[int]) -> bool:
    """Some interval open beside interval k started after it (a successor, possibly)."""
    return any(ivs[j].start > ivs[k].start for j in act)


def _excuse_ends(
    ivs: list[Interval], faults: Sequence[Fault], p: Params, tl: _Timeline
) -> dict[int, list[tuple[float, float, int, bool]]]:
    """For each interval: (from, until, fault index, stale start) windows in which it may
    exceed N. Only an interval that really ended inside the window gets one."""
    n = p.slots
    out: dict[int, list[tuple[float, float, int, bool]]] = defaultdict(list)
    for k, i in enumerate(ivs):
        if i.end is None:
            continue  # still running: it did not die within any window
        for fi, f in enumerate(faults):
            if not affects(f, i, p.grace):
                continue
            risk = max(f.at, i.start)
            stale_start = f.kind in (REVOKE, STOP_CONCH) and i.start > f.at
            if stale_start:
                end = i.start + p.kill_after + p.grace
                if f.kind == REVOKE:
                    end = min(end, base_window_end(f, i, p))
            else:
                end = base_window_end(f, i, p)
            first_excess = next(
                (
                    a
                    for a, b, act in tl.segments
                    if b > risk
                    and k in act
                    and len(act) > n
                    and (stale_start or _younger_beside(ivs, k, act))
                ),
                None,
            )
            if first_excess is not None:
                end = min(end, max(first_excess, risk) + p.kill_after + p.grace)
            if i.end <= end:
                out[k].append((risk, end, fi, stale_start))
    return out


# Which loss event an overlap is credited to (statistics only), when several could excuse it:
# the one after which a successor can start soonest, then the latest.
_CREDIT = {REVOKE: 3, STOP_CONCH: 2, KILL_CONCH: 1}


def _specificity(f: Fault) -> tuple[int, float]:
    return (_CREDIT.get(f.kind, 0), f.at)


def _check_capacity(
    ivs: list[Interval],
    faults: Sequence[Fault],
    p: Params,
    tl: _Timeline,
    stats: list[FaultStats],
) -> list[Violation]:
    n = p.slots
    windows = _excuse_ends(ivs, faults, p, tl)
    violations: list[Violation] = []
    bad_run: tuple[float, float, set[int]] | None = None
    # per fault: current continuous stretch of excess it excused
    run_start: dict[int, float] = {}

    def flush() -> None:
        nonlocal bad_run
        if bad_run is not None:
            a, b, members = bad_run
            violations.append(
                Violation(
                    "capacity",
                    f"more than {n} children ran at once, and no loss event's window covers it,",
                    [ivs[k] for k in sorted(members, key=lambda k: ivs[k].start)],
                    [f for f in faults if f.at <= b and f.until + 30 >= a],
                    span=(a, b),
                )
            )
            bad_run = None

    for a, b, act in tl.segments:
        count = len(act)
        excusing: dict[int, int] = {}  # interval -> fault excusing it
        if count > n:
            for k in act:
                fits = [
                    fi
                    for lo, hi, fi, stale_start in windows.get(k, ())
                    if lo <= a and b <= hi + 1e-9 and (stale_start or _younger_beside(ivs, k, act))
                ]
                if fits:  # credit the most likely cause (see _CREDIT)
                    excusing[k] = max(fits, key=lambda fi: _specificity(faults[fi]))
            # only count - n of them are needed: credit the most specific ones
            keep = sorted(excusing, key=lambda k: _specificity(faults[excusing[k]]), reverse=True)
            excusing = {k: excusing[k] for k in keep[: count - n]}
        if count - len(excusing) > n:
            if bad_run is not None and math.isclose(bad_run[1], a):
                bad_run = (bad_run[0], b, bad_run[2] | set(act))
            else:
                flush()
                bad_run = (a, b, set(act))
        else:
            flush()
        # overlap statistics per fault
        active_faults = set(excusing.values()) if count > n else set()
        for fi in list(run_start):
            if fi not in active_faults:
                del run_start[fi]
        for fi in active_faults:
            run_start.setdefault(fi, a)
            st = stats[fi]
            st.overlap = max(st.overlap, b - run_start[fi])
            st.excess = max(st.excess, count - n)
    flush()
    return violations


def _check_orphans(
    ivs: list[Interval], processes: Sequence[Process], p: Params, horizon: float
) -> list[Violation]:
    by_holder = {pr.holder: pr for pr in processes}
    out = []
    for i in ivs:
        pr = by_holder.get(i.holder)
        if pr is None or pr.exited is None:
            continue
        limit = pr.exited + p.kill_after + p.grace + p.observe_slack
        end = horizon if i.end is None else i.end
        if end > limit:
            out.append(
                Violation(
                    "orphan",
                    f"child outlived its conch (exited at {pr.exited:.3f}, code {pr.code}) "
                    f"by more than K + 1 s",
                    [i],
                )
            )
    return out


# -- 2. convergence and exit codes ----------------------------------------------------------


def _lost_event(f: Fault, pr: Process, leases: set[int], p: Params) -> bool:
    """Whether fault f can have cost process pr its lease."""
    end = pr.exited if pr.exited is not None else math.inf
    if f.at > end or pr.spawned > f.until + p.grace:
        return False
    if f.kind == REVOKE:
        # a waiter's lease can be revoked too (it has no interval): the harness names the
        # holder it belonged to when it knows it
        return f.holder == pr.holder or (f.lease is not None and f.lease in leases)
    if f.kind in (KILL_CONCH, STOP_CONCH):
        return f.holder == pr.holder
    return True


def _check_convergence(
    ivs: list[Interval],
    faults: Sequence[Fault],
    processes: Sequence[Process],
    convergences: Sequence[Convergence],
    p: Params,
    stats: list[FaultStats],
) -> list[Violation]:
    out: list[Violation] = []
    seen = set()
    for c in convergences:
        if c.fault is not None:
            seen.add(c.fault)
            if 0 <= c.fault < len(stats):
                stats[c.fault].convergence = c.seconds
        if not c.ok:
            what = "the end" if c.fault is None else f"fault #{c.fault}"
            out.append(
                Violation(
                    "convergence",
                    f"no converged state after {what}: {c.detail}",
                    faults=[faults[c.fault]] if c.fault is not None else [],
                )
            )
    for fi, f in enumerate(faults):
        if fi not in seen:
            out.append(Violation("convergence", f"fault #{fi} has no convergence verdict", [], [f]))
    if not any(c.fault is None for c in convergences):
        out.append(Violation("convergence", "no final convergence verdict"))

    by_holder: dict[str, list[Interval]] = defaultdict(list)
    for i in ivs:
        by_holder[i.holder].append(i)
    for pr in processes:
        mine = sorted(by_holder.get(pr.holder, []), key=lambda i: i.start)
        leases = {i.lease for i in mine}
        hit = [f for f in faults if _lost_event(f, pr, leases, p)]
        code = pr.code
        why = None
        if code is None:
            why = "still running when it should have finished"
        elif pr.signalled is not None and code in (-pr.signalled, 128 + pr.signalled):
            why = None  # the harness ended it
        elif code < 0:
            if not (
                code == -9 and any(f.kind == KILL_CONCH and f.holder == pr.holder for f in hit)
            ):
                why = f"killed by signal {-code} that neither a fault nor the harness sent"
        elif code == 0:
            if not mine:
                why = "exited 0 but no child of it ever ran (never promoted)"
            elif mine[-1].how != "exit":
                why = "exited 0 but its last child did not finish on its own"
        elif code == EXIT_LEASE_LOST:
            if "restart" in pr.opts:
                why = "a --restart service exited 70: it must campaign again instead"
            elif not hit:
                why = "exited 70 (lease lost) without a loss event that could hit it"
        elif code == EXIT_NOT_ACQUIRED:
            if mine:
                why = "exited 75 (not acquired) although a child of it ran"
            elif not ({"timeout", "nonblock"} & pr.opts):
                why = "exited 75 without --timeout or --nonblock"
        elif code == EXIT_UNAVAILABLE:
            etcd = [
                f
                for f in hit
                if f.kind in ETCD_FAULTS
                and pr.exited is not None
                and f.at <= pr.exited <= f.until + p.unavailable_grace
            ]
            if mine:
                why = "exited 69 (etcd unavailable) although a child of it ran"
            elif not etcd:
                why = "exited 69 (etcd unavailable) while no etcd fault was active"
        else:
            why = f"unexpected exit code {code}"
        if why:
            out.append(
                Violation(
                    "exit",
                    f"conch {pr.holder} (pid {pr.pid}, opts {sorted(pr.opts)}): {why}",
                    mine,
                    hit,
                )
            )
    return out


# -- 3. fencing ----------------------------------------------------------------------------------


def _check_fencing(
    ivs: list[Interval], faults: Sequence[Fault], processes: Sequence[Process], p: Params
) -> list[Violation]:
    out: list[Violation] = []
    revs_of: dict[int, set[int]] = defaultdict(set)
    leases_of: dict[int, set[int]] = defaultdict(set)
    for i in ivs:
        revs_of[i.lease].add(i.rev)
        leases_of[i.rev].add(i.lease)
    for lease, revs in revs_of.items():
        if len(revs) > 1:
            out.append(
                Violation(
                    "fencing",
                    f"lease {lease:x} ran children with different tokens {sorted(revs)}",
                    [i for i in ivs if i.lease == lease],
                )
            )
    for rev, leases in leases_of.items():
        if len(leases) > 1:
            out.append(
                Violation(
                    "fencing",
                    f"token {rev} was given to different leases {sorted(leases)}",
                    [i for i in ivs if i.rev == rev],
                )
            )
    # keys created later have larger revisions
    spawned = {pr.holder: pr.spawned for pr in processes}
    ended = sorted((i for i in ivs if i.end is not None), key=lambda i: i.end or 0.0)
    for j in ivs:
        s = spawned.get(j.holder)
        if s is None:
            continue
        older = [i for i in ended if i.end is not None and i.end < s and i.rev >= j.rev]
        if older:
            out.append(
                Violation(
                    "fencing",
                    f"token {j.rev} is not larger than that of a child that ended before its "
                    f"conch was started",
                    [*older[:3], j],
                )
            )
    if p.slots == 1:
        order = sorted(ivs, key=lambda i: i.start)
        for idx, j in enumerate(order):
            exempt = [
                f for f in faults if affects(f, j, p.grace) and f.at <= j.start <= f.until + p.grace
            ]
            if exempt:
                continue  # started by a holder already hit by a loss event: fencing's job
            earlier = [i for i in order[:idx] if i.lease != j.lease and i.rev >= j.rev]
            if earlier:
                out.append(
                    Violation(
                        "fencing",
                        f"succession to token {j.rev} after a child with token "
                        f"{earlier[0].rev} had started: tokens must strictly increase",
                        [*earlier[:3], j],
                    )
                )
    return out


def summarize(report: Report, t0: float = 0.0) -> dict[str, dict[str, float | int | None]]:
    """Per fault kind: count, the largest overlap (s), largest excess, the largest and median
    time from the fault to a converged state (s)."""
    out: dict[str, dict[str, float | int | None]] = {}
    by_kind: dict[str, list[FaultStats]] = defaultdict(list)
    for st in report.stats:
        by_kind[st.fault.kind].append(st)
    for kind, sts in sorted(by_kind.items()):
        conv = sorted(s.convergence for s in sts if s.convergence is not None)
        out[kind] = {
            "faults": len(sts),
            "max_overlap_s": max(s.overlap for s in sts),
            "max_excess": max(s.excess for s in sts),
            "max_convergence_s": conv[-1] if conv else None,
            "median_convergence_s": conv[len(conv) // 2] if conv else None,
        }
    return out
