"""The cron checker is itself tested: hand-made logs that break each rule must fail it, and the
legitimate shapes (skips, overlaps of an `allow` job, lost runs of a killed winner, ticks inside
a documented fault window) must pass. A checker that cannot fail is worse than none.

The logs: three daemons up from 0 to 30 (monotonic seconds), a tick t on the wall clock is at
t - WO on the monotonic axis, so "tick 7" below is the tick due at monotonic 7; ticks are
expected from 5 (first start + start_settle) to 18.5 (horizon 20 - end_margin).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any

import pytest
from cron_checker import (
    CLOCK_SKEW,
    KILL_DAEMON,
    LOST_ANSWER,
    QUORUM_LOSS,
    STOP_DAEMON,
    SUSPEND_RESUME,
    Convergence,
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
    summarize,
)

pytestmark = pytest.mark.invariant

WO = 1_000_000.0  # wall clock - monotonic clock
HORIZON = 20.0
EVERY1 = Job("every1", 1.0, "forbid", None, 0.5)
SLOW2 = Job("slow2", 2.0, "forbid", None, 0.5)
WIDE = Job("wide", 1.0, "allow", None, 0.5)
CAPPED = Job("capped", 2.0, "forbid", 1.0, 0.5)
PARAMS = Params(ttl=2.0, wall_offset=WO)
_rev = iter(range(100, 1_000_000, 3))  # room for a claim between two runs


def lives(end: float = 25.0, **over: Life) -> list[Life]:
    out = [
        Life(d, 1, 100 + k, 0.0, end, 143, signalled=15) for k, d in enumerate(("d1", "d2", "d3"))
    ]
    return [over.get(x.daemon, x) for x in out]


def run(
    job: Job,
    t: float,
    dur: float = 0.2,
    *,
    daemon: str = "d1",
    life: int = 1,
    rev: int | None = None,
    lag: float = 0.05,
    how: str = "exit",
    code: int | None = 0,
) -> Run:
    start = t + lag
    return Run(
        job.name, WO + t, rev if rev is not None else next(_rev), daemon, life,
        5000 + int(t * 10), start, start + dur, how, code if how == "exit" else None,
    )  # fmt: skip


def rec(
    job: str,
    t: float,
    rev: int,
    *states: tuple[float, str] | tuple[float, str, int | None],
    daemon: str = "d1",
    claim: str = "c-d1-1",
    timed_out: bool = False,
) -> Record:
    shown = tuple(
        Shown(s[0], s[1], s[2] if len(s) > 2 else None, timed_out)  # type: ignore[misc]
        for s in states
    )
    return Record(job, WO + t, rev, daemon, claim, shown[0].at, shown[-1].at + 0.25, shown)


def record_of(r: Run, claim: str | None = None) -> Record:
    """The record conchd writes for run r: running, then its result."""
    assert r.end is not None
    code = r.code if r.how == "exit" else 137
    status = "ok" if code == 0 else "failed"
    return rec(
        r.job, r.tick - WO, r.rev, (r.start, "running"), (r.end + 0.05, status, code),
        daemon=r.daemon, claim=claim or f"c-{r.daemon}-{r.life}",
    )  # fmt: skip


def clean(
    job: Job,
    t0: float = 5.0,
    t1: float = 18.0,
    skip: Iterable[float] = (),
    by: Sequence[str] = ("d1", "d2", "d3"),
) -> list[Run]:
    """A run for every tick of job from t0 to t1 (but `skip`), taking turns among `by`."""
    out = []
    t = t0
    while t <= t1:
        if t not in set(skip):
            out.append(run(job, t, daemon=by[int(t) % len(by)]))
        t += job.every
    return out


def listing_of(jobs: Sequence[Job], records: Sequence[Record], at: float = HORIZON) -> Listing:
    doc = []
    for j in jobs:
        rows = []
        for r in sorted((r for r in records if r.job == j.name), key=lambda r: -r.tick):
            s = r.final
            rows.append(
                {
                    "tick": _rfc(r.tick),
                    "status": s.status,
                    "exit_code": s.exit_code,
                    "rev": r.create_rev,
                    "daemon": r.daemon,
                    "timed_out": s.timed_out,
                }
            )
        doc.append({"name": j.name, "runs": rows[:20]})
    return Listing(at, at + 0.3, tuple(doc))


def _rfc(tick: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(tick, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def verdict(
    jobs: Sequence[Job],
    runs: Sequence[Run],
    records: Sequence[Record] | None = None,
    *,
    faults: Sequence[Fault] = (),
    daemon_lives: Sequence[Life] | None = None,
    incarnations: Sequence[Incarnation] | None = None,
    listing: Listing | bool | None = True,
    stderr: dict[str, str] | None = None,
    convergences: Sequence[Convergence] | None = None,
    manual: Sequence[ManualCall] = (),
) -> Report:
    records = [record_of(r) for r in runs] if records is None else list(records)
    if incarnations is None:
        incarnations = [Incarnation(j.name, -1.0, 1) for j in jobs]
    if listing is True:
        listing = listing_of(jobs, records)
    if convergences is None:
        convergences = [Convergence(k, True, 0.5) for k in range(len(faults))]
    return check(
        jobs, incarnations, runs, records, lives() if daemon_lives is None else daemon_lives,
        faults, convergences, listing or None, stderr or {}, PARAMS, HORIZON, manual,
    )  # fmt: skip


def rules(report: Report) -> list[str]:
    return sorted({v.rule for v in report.violations})


def ok(report: Report) -> None:
    assert report.ok, "\n".join(v.describe(0.0, WO) for v in report.violations)


# -- legitimate logs pass ---------------------------------------------------------------------


def test_every_tick_run_once_passes_and_is_counted() -> None:
    runs = clean(EVERY1)
    r = verdict([EVERY1], runs)
    ok(r)
    assert (r.ticks_expected, r.ticks_ran, r.ticks_excused) == (14, 14, 0)
    assert summarize(r)["all"]["ticks_ran"] == 14


def test_forbid_job_longer_than_its_period_skips_and_passes() -> None:
    runs, records = [], []
    for t in range(6, 19, 2):
        if t % 4 == 2:
            r = run(SLOW2, t, 3.0, daemon="d2")
            runs.append(r)
            records.append(record_of(r))
        else:
            records.append(rec("slow2", t, next(_rev), (t + 0.05, "skipped"), daemon="d3"))
    ok(verdict([SLOW2], runs, records))


def test_allow_job_runs_overlap_and_pass() -> None:
    runs = [run(WIDE, t, 2.5, daemon=("d1", "d2", "d3")[t % 3]) for t in range(5, 19)]
    ok(verdict([WIDE], runs))


def test_timed_out_child_failed_with_137_passes() -> None:
    runs = clean(CAPPED, 6)
    # SIGTERM ignored at 11.05 (--timeout 1 s), SIGKILL after K
    runs[2] = replace(runs[2], end=runs[2].start + 1.5, how="vanished", code=None)
    records = [record_of(r) for r in runs]
    records[2] = replace(
        records[2],
        states=(records[2].states[0], Shown(11.6, "failed", 137, True)),
    )
    ok(verdict([CAPPED], runs, records))


def test_winner_killed_mid_run_shows_lost_and_is_not_rerun() -> None:
    # d1 runs tick 9 and is SIGKILLed at 9.5; its watchdog kills the child; the tick stays
    # claimed (lost once d1's lease expired), the next ticks run elsewhere
    kill = Fault(KILL_DAEMON, 9.5, 9.5, daemon="d1", life=1)
    runs = clean(EVERY1, by=("d2", "d3"))
    victim = replace(runs.pop(4), daemon="d1", end=9.65, how="vanished", code=None)
    records = [record_of(r) for r in runs]
    records.append(rec("every1", 9, victim.rev, (9.06, "running"), (11.6, "lost")))
    lv = lives(d1=Life("d1", 1, 100, 0.0, 9.5, -9))
    lv.append(Life("d1", 2, 200, 10.0, 25.0, 143, signalled=15))
    r = verdict([EVERY1], [*runs, victim], records, faults=[kill], daemon_lives=lv)
    ok(r)
    assert r.stats[0].lost == 1


def test_claim_of_a_winner_killed_before_it_spawned_passes() -> None:
    kill = Fault(KILL_DAEMON, 9.02, 9.02, daemon="d2", life=1)
    runs = clean(EVERY1, skip=[9.0], by=("d1", "d3"))
    records = [record_of(r) for r in runs]
    between = runs[3].rev + 1  # claimed after tick 8, before tick 10
    records.append(
        rec("every1", 9, between, (9.1, "running"), (11.3, "lost"), daemon="d2", claim="c-d2-1")
    )
    lv = lives(d2=Life("d2", 1, 101, 0.0, 9.02, -9))
    lv.append(Life("d2", 2, 201, 9.6, 25.0, 143, signalled=15))
    ok(
        verdict(
            [EVERY1], runs, sorted(records, key=lambda r: r.tick), faults=[kill], daemon_lives=lv
        )
    )


def test_ticks_inside_an_etcd_window_are_excused() -> None:
    q = Fault(QUORUM_LOSS, 8.0, 10.0, member="m1,m2")
    assert 10.0 + PARAMS.etcd_recovery == 16.0
    gone = [8.0, 9.0, 10.0, 11.0, 12.0, 13.0, 14.0, 15.0, 16.0]
    r = verdict([EVERY1], clean(EVERY1, skip=gone), faults=[q])
    ok(r)
    assert r.stats[0].excused == len(gone) == r.ticks_excused
    # the window is (at - P, until + etcd_recovery]: the ticks at 7 and 17 must run
    for t in (7.0, 17.0):
        r = verdict([EVERY1], clean(EVERY1, skip=[t]), faults=[q])
        assert rules(r) == ["accounted"], t


def test_ticks_after_the_etcd_window_must_run() -> None:
    q = Fault(QUORUM_LOSS, 1.0, 3.0, member="m1,m2")
    assert 3.0 + PARAMS.etcd_recovery < 12.0
    r = verdict([EVERY1], clean(EVERY1, skip=[12.0]), faults=[q])
    assert rules(r) == ["accounted"]
    assert "tick 00:00:12" in r.violations[0].message.replace(
        r.violations[0].message.split()[1], "00:00:12"
    )


def early(runs: list[Run], daemon: str, starts: dict[float, float]) -> list[Run]:
    """runs with the ticks in `starts` run by `daemon` at the given (early) times."""
    return [
        replace(r, daemon=daemon, start=starts[r.tick - WO], end=starts[r.tick - WO] + 0.2)
        if r.tick - WO in starts
        else r
        for r in runs
    ]


def test_ticks_overtaken_by_an_early_claim_are_excused() -> None:
    # d3's clock steps 4 s ahead at 6.3: at once it claims tick 10 (the newest tick by its
    # clock), then 11, 12, 13 a second apart, until the heartbeats correct it. Ticks 7-9 were
    # jumped over: the low-water mark forbids them to anyone now
    step = Fault(CLOCK_SKEW, 6.3, 6.3, daemon="d3", life=1, offset=4.0, prev_offset=0.0)
    starts = {10.0: 6.35, 11.0: 7.05, 12.0: 8.05, 13.0: 9.05}
    runs = early(clean(EVERY1, skip=[7.0, 8.0, 9.0]), "d3", starts)
    r = verdict([EVERY1], runs, faults=[step])
    ok(r)
    assert r.ticks_excused == 3 and r.stats[0].excused == 3
    assert min(r.stats[0].lags) == pytest.approx(-3.95)
    # without the early claim, nothing excuses them (a backward step neither)
    back = replace(step, offset=-4.0)
    assert rules(verdict([EVERY1], clean(EVERY1, skip=[8.0]), faults=[back])) == ["accounted"]
    # an early claim only excuses the ticks it jumped over: not one due after it was claimed
    runs = early(clean(EVERY1, skip=[7.0, 8.0, 9.0, 16.0]), "d3", starts)
    r = verdict([EVERY1], runs, faults=[step])
    assert rules(r) == ["accounted"] and "13:46:56" in r.violations[0].message


def test_early_starts_only_on_a_skewed_clock() -> None:
    step = Fault(CLOCK_SKEW, 6.3, 6.3, daemon="d3", life=1, offset=4.0, prev_offset=0.0)
    starts = {10.0: 6.35, 11.0: 7.05, 12.0: 8.05, 13.0: 9.05}
    runs = early(clean(EVERY1, skip=[7.0, 8.0, 9.0]), "d1", starts)  # d1's clock is true
    r = verdict([EVERY1], runs, faults=[step])
    assert rules(r) == ["accounted"]
    assert any("whose clock is true" in v.message for v in r.violations)
    # the skewed daemon, but earlier than its clock ever was ahead (4 s + grace)
    runs = early(clean(EVERY1, skip=[7.0, 8.0, 9.0]), "d3", {**starts, 10.0: 4.5})
    r = verdict([EVERY1], runs, faults=[step])
    assert rules(r) == ["accounted"] and "more than its clock" in r.violations[0].message
    # ... but a step from behind to ahead makes it early by the whole step
    span = replace(step, prev_offset=-2.0)
    ok(verdict([EVERY1], runs, faults=[span]))
    # a daemon started with a skewed clock counts as skewed too
    lv = lives(d3=Life("d3", 1, 102, 0.0, 25.0, 143, signalled=15, clock_offset=4.0))
    runs = early(clean(EVERY1, skip=[7.0, 8.0, 9.0]), "d3", starts)
    ok(verdict([EVERY1], runs, daemon_lives=lv))


def test_all_daemons_down_excuses_ticks() -> None:
    stops = [Fault(STOP_DAEMON, 9.0, 11.0, daemon=d, life=1) for d in ("d1", "d2", "d3")]
    skip = [9.0, 10.0, 11.0, 12.0]
    ok(verdict([EVERY1], clean(EVERY1, skip=skip), faults=stops))
    # one daemon paused excuses nothing: the others claim
    r = verdict([EVERY1], clean(EVERY1, skip=[10.0]), faults=stops[:1])
    assert rules(r) == ["accounted"]


def test_removed_job_is_not_expected_until_added_again() -> None:
    incs = [
        Incarnation("every1", -1.0, 1, removed=9.5),
        Incarnation("every1", 12.0, 500),
    ]
    runs = [r for r in clean(EVERY1) if not 9 <= r.tick - WO <= 12]
    runs = [replace(r, rev=r.rev + 1000) if r.tick >= WO + 13 else r for r in runs]
    ok(verdict([EVERY1], runs, incarnations=incs))
    # ticks more than rm_lead before the rm and after add + add_settle are expected
    gap = [r for r in runs if r.tick != WO + 8]
    assert rules(verdict([EVERY1], gap, incarnations=incs)) == ["accounted"]
    gap = [r for r in runs if r.tick != WO + 13]
    assert rules(verdict([EVERY1], gap, incarnations=incs)) == ["accounted"]


def test_forbid_overlap_while_the_previous_daemon_was_cut_off_passes() -> None:
    # d1 (running tick 9, 4 s long) is paused 9.5..13: its lease expires, its marker goes, the
    # tick-12 run starts beside the paused one: docs/cron.md's honest window
    stop = Fault(STOP_DAEMON, 9.5, 13.0, daemon="d1", life=1)
    runs = [run(SLOW2, t, 0.5, daemon="d2") for t in (6, 8)]
    runs += [run(SLOW2, 10, 4.0, daemon="d1"), run(SLOW2, 12, 0.5, daemon="d3")]
    runs += [run(SLOW2, t, 0.5, daemon="d2") for t in (14, 16, 18)]
    ok(verdict([SLOW2], runs, faults=[stop]))
    # the same overlap with the pause on another daemon is a violation
    other = replace(stop, daemon="d2")
    assert rules(verdict([SLOW2], runs, faults=[other])) == ["forbid"]


def test_forbid_overlap_after_the_winner_was_killed_passes_within_k() -> None:
    kill = Fault(KILL_DAEMON, 10.5, 10.5, daemon="d1", life=1)
    lv = lives(d1=Life("d1", 1, 100, 0.0, 10.5, -9))
    lv.append(Life("d1", 2, 200, 11.0, 25.0, 143, signalled=15))
    # killed at 10.5, child ignores SIGTERM: dead by 10.5 + K; the next tick ran at 12.05
    runs = [run(SLOW2, t, 0.5, daemon="d2") for t in (6, 8, 10, 12, 14, 16, 18)]
    victim = replace(runs.pop(2), daemon="d1", end=11.45, how="vanished", code=None)
    records = [record_of(r) for r in runs]
    records.append(rec("slow2", 10, victim.rev, (10.06, "running"), (13.0, "lost")))
    ok(verdict([SLOW2], [*runs, victim], records, faults=[kill], daemon_lives=lv))


def test_forbid_overlap_beside_a_late_run_of_a_recognised_claim_passes() -> None:
    # d3's claim of tick 10 committed during its blackhole (9.9..11.5) without an answer; d3
    # recognised it and ran it late, at 11.9 (its marker was on the lease it lost meanwhile),
    # while d1's run of tick 11 still ran
    la = Fault(LOST_ANSWER, 9.9, 11.5, daemon="d3", life=1)
    runs = clean(EVERY1, by=("d1", "d2"))
    runs[5] = replace(runs[5], daemon="d3", start=11.9, end=12.1)
    runs[6] = replace(runs[6], end=12.0)
    records = [record_of(x) for x in runs]
    claimed = (Shown(10.1, "running"), Shown(11.0, "lost"), *records[5].states)
    records[5] = replace(records[5], first_seen=10.1, states=claimed)
    r = verdict([EVERY1], runs, records, faults=[la])
    ok(r)
    assert r.stats[0].recognised == 1
    assert rules(verdict([EVERY1], runs, records)) == ["forbid"]


def test_a_failed_start_fails() -> None:
    r = verdict([EVERY1], clean(EVERY1), convergences=[Convergence(-1, False, None, "never")])
    assert rules(r) == ["converged"] and "the start" in r.violations[0].message


# -- each rule fails ----------------------------------------------------------------------------


def test_a_tick_run_twice_fails_whatever_the_faults() -> None:
    runs = clean(EVERY1)
    twice = run(EVERY1, 9, daemon="d3", rev=runs[4].rev)
    q = Fault(QUORUM_LOSS, 8.0, 10.0, member="m1,m2")
    r = verdict([EVERY1], [*runs, twice], faults=[q])
    assert "once" in rules(r)
    v = next(v for v in r.violations if v.rule == "once")
    assert len(v.runs) == 2 and "ran 2 times" in v.message


def test_a_tick_claimed_twice_fails() -> None:
    runs = clean(EVERY1)
    records = [record_of(r) for r in runs]
    records.append(rec("every1", 9, 9999, (9.5, "skipped"), daemon="d3", claim="c-d3-1"))
    assert "once" in rules(verdict([EVERY1], runs, records, listing=False))
    # the same claim's record created anew (a result written after `cron rm` removed it while
    # its daemon was cut off) is not a second claim
    again = replace(records[4], create_rev=9999, states=(Shown(9.6, "ok", 0),))
    ok(verdict([EVERY1], runs, [*records[:-1], again], listing=False))


def test_a_tick_of_a_removed_job_claimed_again_by_its_new_definition() -> None:
    # d3 (clock ahead) claimed tick 12 early, as skipped, before `cron rm`; the job was added
    # again and d1 claimed tick 12 for the new definition: two definitions, one run: passes
    incs = [Incarnation("every1", -1.0, 1, removed=9.5), Incarnation("every1", 10.0, 99_999)]
    step = Fault(CLOCK_SKEW, 7.0, 7.0, daemon="d3", life=1, offset=5.0, prev_offset=0.0)
    runs = [r for r in clean(EVERY1) if r.tick <= WO + 8]
    late = [replace(r, rev=100_000 + 3 * k) for k, r in enumerate(clean(EVERY1, 11, 18))]
    records = [record_of(r) for r in runs + late]
    old = runs[-1].rev + 1  # claimed right after tick 8 (early: d3's clock is 5 s ahead)
    records.append(rec("every1", 12, old, (7.1, "skipped"), daemon="d3", claim="c-d3-1"))
    r = verdict([EVERY1], runs + late, records, faults=[step], incarnations=incs, listing=False)
    ok(r)
    # ... but had the old definition's claim run, the tick ran twice: absolute
    early_run = run(EVERY1, 12, daemon="d3", rev=old, lag=-4.7)
    records[-1] = record_of(early_run)
    r = verdict(
        [EVERY1], [*runs, early_run, *late], records, faults=[step], incarnations=incs,
        listing=False,
    )  # fmt: skip
    assert rules(r) == ["once"]
    # the same daemon process claiming it again for the new definition (its claim id again)
    again = replace(late[1], daemon="d3")
    records = [record_of(x) for x in [*runs, early_run, *late]]
    records[-7] = record_of(again, claim="c-d3-1")
    r = verdict(
        [EVERY1], [*runs, early_run, *late[:1], again, *late[2:]], records, faults=[step],
        incarnations=incs, listing=False,
    )  # fmt: skip
    assert rules(r) == ["once"], [v.describe() for v in r.violations]


def test_a_tick_nobody_claimed_fails() -> None:
    r = verdict([EVERY1], clean(EVERY1, skip=[11.0]))
    assert rules(r) == ["accounted"]


def test_daemon_faults_excuse_no_missing_tick() -> None:
    lv = lives(d1=Life("d1", 1, 100, 0.0, 10.5, -9))
    lv.append(Life("d1", 2, 200, 11.0, 25.0, 143, signalled=15))
    for f in (
        Fault(KILL_DAEMON, 10.5, 10.5, daemon="d1", life=1),
        Fault(STOP_DAEMON, 10.0, 13.0, daemon="d2", life=1),
        Fault(LOST_ANSWER, 10.0, 12.0, daemon="d3", life=1),
    ):
        runs = clean(EVERY1, skip=[11.0], by=("d2", "d3"))
        r = verdict([EVERY1], runs, faults=[f], daemon_lives=lv if f.kind == KILL_DAEMON else None)
        assert rules(r) == ["accounted"], f


def test_a_claim_its_living_daemon_never_ran_fails() -> None:
    # the answer of d3's claim of tick 11 was lost; d3 lived on and never ran it
    la = Fault(LOST_ANSWER, 10.9, 12.5, daemon="d3", life=1)
    runs = clean(EVERY1, skip=[11.0])
    records = [record_of(r) for r in runs]
    between = runs[5].rev + 1
    records.append(
        rec("every1", 11, between, (11.1, "running"), (14.0, "lost"), daemon="d3", claim="c-d3-1")
    )
    r = verdict([EVERY1], runs, records, faults=[la])
    assert rules(r) == ["accounted"]
    assert "never ran" in r.violations[0].message


def test_forbid_overlap_without_a_fault_fails() -> None:
    runs = [run(SLOW2, t, 0.5) for t in range(6, 19, 2)]
    runs[2] = replace(runs[2], daemon="d3", end=12.55)  # still running at 12.05
    r = verdict([SLOW2], runs)
    assert rules(r) == ["forbid"]
    assert {x.tick - WO for x in r.violations[0].runs} == {10.0, 12.0}


def test_forbid_overlap_whose_killed_child_outlived_k_fails() -> None:
    kill = Fault(KILL_DAEMON, 10.5, 10.5, daemon="d1", life=1)
    lv = lives(d1=Life("d1", 1, 100, 0.0, 10.5, -9))
    lv.append(Life("d1", 2, 200, 11.0, 25.0, 143, signalled=15))
    runs = [run(SLOW2, t, 0.5, daemon="d2") for t in (6, 8, 10, 12, 14, 16, 18)]
    # ends 13.05 > 10.5 + K + 1
    victim = replace(runs.pop(2), daemon="d1", end=13.05, how="vanished", code=None)
    records = [record_of(r) for r in runs]
    records.append(rec("slow2", 10, victim.rev, (10.06, "running"), (13.0, "lost")))
    r = verdict([SLOW2], [*runs, victim], records, faults=[kill], daemon_lives=lv)
    assert rules(r) == ["forbid", "lives"]


def test_revisions_going_backwards_fail() -> None:
    runs = clean(EVERY1)
    runs[5], runs[6] = replace(runs[5], rev=runs[6].rev), replace(runs[6], rev=runs[5].rev)
    assert rules(verdict([EVERY1], runs)) == ["fencing"]


def test_conch_rev_that_is_not_the_claim_revision_fails() -> None:
    runs = clean(EVERY1)
    records = [record_of(r) for r in runs]
    records[3] = replace(records[3], create_rev=records[3].create_rev + 1)
    assert "fencing" in rules(verdict([EVERY1], runs, records, listing=False))


def test_revisions_restart_with_a_new_incarnation() -> None:
    # removed and added again: the new definition's ticks are compared among themselves
    incs = [Incarnation("every1", -1.0, 1, removed=9.5), Incarnation("every1", 12.0, 50)]
    runs = [r for r in clean(EVERY1) if not 9 <= r.tick - WO <= 12]
    late = [replace(r, rev=60 + k) for k, r in enumerate(x for x in runs if x.tick > WO + 12)]
    early = [replace(r, rev=40 - 5 + k) for k, r in enumerate(x for x in runs if x.tick < WO + 9)]
    ok(verdict([EVERY1], early + late, incarnations=incs))


def test_records_that_disagree_with_the_children_fail() -> None:
    runs = clean(EVERY1)
    base = [record_of(r) for r in runs]

    def bad(k: int, *states: tuple[float, str, int | None]) -> list[str]:
        records = list(base)
        records[k] = replace(records[k], states=tuple(Shown(s[0], s[1], s[2]) for s in states))
        return rules(verdict([EVERY1], runs, records, listing=False))

    t = runs[2].start
    assert bad(2, (t, "running", None), (t + 1, "ok", 3)) == ["listing"]  # code mismatch
    assert bad(2, (t, "running", None), (t + 1, "failed", 0)) == ["listing"]  # failed for 0
    assert bad(2, (t, "skipped", None)) == ["listing"]  # skipped, but a child ran
    # ok for a tick no child ran
    records = [*base, rec("every1", 19, 5000, (19.1, "ok", 0))]
    assert rules(verdict([EVERY1], runs, records, listing=False)) == ["listing"]
    # the record names another daemon
    records = list(base)
    records[1] = replace(records[1], daemon="d9")
    assert rules(verdict([EVERY1], runs, records, listing=False)) == ["listing"]


def test_a_result_never_written_fails() -> None:
    runs = clean(EVERY1)
    records = [record_of(r) for r in runs]
    r5 = runs[1]
    records[1] = rec("every1", 6, r5.rev, (r5.start, "running"), (r5.start + 5, "lost"),
                     daemon=r5.daemon)  # fmt: skip
    records[1] = replace(records[1], last_seen=HORIZON)
    assert rules(verdict([EVERY1], runs, records, listing=False)) == ["listing"]


def test_final_listing_that_disagrees_fails() -> None:
    runs = clean(EVERY1)
    records = [record_of(r) for r in runs]
    good = listing_of([EVERY1], records)
    ok(verdict([EVERY1], runs, records, listing=good))

    def with_row(k: int, **row: Any) -> list[str]:
        doc = [dict(j) for j in good.doc]
        doc[0]["runs"] = [dict(x) for x in doc[0]["runs"]]
        doc[0]["runs"][k].update(row)
        return rules(verdict([EVERY1], runs, records, listing=replace(good, doc=tuple(doc))))

    assert with_row(0, status="lost") == ["listing"]  # its daemon lives on
    assert with_row(0, status="running") == ["listing"]  # its child ended long ago
    assert with_row(3, exit_code=1, status="failed") == ["listing"]
    assert with_row(3, rev=1) == ["listing"]
    assert with_row(3, daemon="d7") == ["listing"]
    assert with_row(2, status="skipped") == ["listing"]
    # a run missing from the listing
    doc = [dict(good.doc[0])]
    doc[0]["runs"] = doc[0]["runs"][:2] + doc[0]["runs"][3:]
    r = verdict([EVERY1], runs, records, listing=replace(good, doc=tuple(doc)))
    assert rules(r) == ["listing"] and "does not show" in r.violations[0].message
    # ... unless it is older than the history kept (20 rows)
    long_runs = clean(EVERY1, 5, 25)
    long_records = [record_of(r) for r in long_runs]
    full = listing_of([EVERY1], long_records, at=27.0)
    assert len(full.doc[0]["runs"]) == 20  # tick 5 is no longer shown
    r = check(
        [EVERY1], [Incarnation("every1", -1, 1)], long_runs, long_records, lives(30.0),
        [], [], full, {}, PARAMS, 27.0,
    )  # fmt: skip
    ok(r)


def test_listing_shows_running_only_for_a_running_child() -> None:
    runs = clean(EVERY1, 5, 17)
    last = run(EVERY1, 18, 5.0, daemon="d2")  # still running at the listing (20)
    records = [record_of(r) for r in runs]
    records.append(rec("every1", 18, last.rev, (18.06, "running"), daemon="d2"))
    ok(verdict([EVERY1], [*runs, last], records))
    bad = replace(last, end=19.0)
    records[-1] = rec("every1", 18, last.rev, (18.06, "running"), daemon="d2")
    assert "listing" in rules(verdict([EVERY1], [*runs, bad], records))


def test_a_claim_just_before_the_listing_may_show_running_before_its_child_logs() -> None:
    # seen (cron seed 177963, a loaded machine): the daemon spawned the child and wrote
    # `running`, the listing came, and the harness stopped the daemons before the child's
    # interpreter had written its start line; like a claim that never ran, it is too recent
    # to judge
    runs = clean(EVERY1, 5, 18)
    records = [record_of(r) for r in runs]
    records.append(rec("every1", 19, 5000, (19.05, "running"), daemon="d2"))
    ok(verdict([EVERY1], runs, records))
    # ... but an old one is not
    runs = clean(EVERY1, 5, 14)
    records = [record_of(r) for r in runs]
    records.append(rec("every1", 15, 5000, (15.05, "running"), daemon="d2"))
    assert "listing" in rules(verdict([EVERY1], runs, records))


def test_tracebacks_and_warnings_fail() -> None:
    runs = clean(EVERY1)
    for text in (
        "conchd: lease granted\nTraceback (most recent call last):\n  File ...\nValueError: x\n",
        "/x/conch/cron/daemon.py:1: ResourceWarning: unclosed file\n",
        "Fatal Python error: Segmentation fault\n",
    ):
        r = verdict([EVERY1], runs, stderr={"conchd d1#1": "ok\n", "conchd d2#1": text})
        assert rules(r) == ["stderr"], text
        assert "conchd d2#1" in r.violations[0].message


def test_unexpected_daemon_ends_fail() -> None:
    runs = clean(EVERY1)
    crashed = lives(d2=Life("d2", 1, 101, 0.0, 12.0, 1))
    assert rules(verdict([EVERY1], runs, daemon_lives=crashed)) == ["lives"]
    unavailable = lives(d2=Life("d2", 1, 101, 0.0, 12.0, 69))
    assert rules(verdict([EVERY1], runs, daemon_lives=unavailable)) == ["lives"]
    killed = lives(d2=Life("d2", 1, 101, 0.0, 12.0, -9))  # no fault killed it
    assert rules(verdict([EVERY1], runs, daemon_lives=killed)) == ["lives"]
    hangs = lives(d2=Life("d2", 1, 101, 0.0, None, None, signalled=15))  # ignored SIGTERM
    assert rules(verdict([EVERY1], runs, daemon_lives=hangs)) == ["lives"]


def test_orphan_child_and_unenforced_timeout_fail() -> None:
    kill = Fault(KILL_DAEMON, 10.5, 10.5, daemon="d1", life=1)
    lv = lives(d1=Life("d1", 1, 100, 0.0, 10.5, -9))
    lv.append(Life("d1", 2, 200, 11.0, 25.0, 143, signalled=15))
    runs = clean(WIDE, by=("d2", "d3"))
    # lives 2.55 s after its daemon
    orphan = replace(runs.pop(5), daemon="d1", end=13.05, how="vanished", code=None)
    records = [record_of(r) for r in runs]
    records.append(rec("wide", 10, orphan.rev, (10.06, "running"), (13.0, "lost")))
    r = verdict([WIDE], [*runs, orphan], sorted(records, key=lambda r: r.tick), faults=[kill],
                daemon_lives=lv)  # fmt: skip
    assert rules(r) == ["lives"] and "outlived" in r.violations[0].message
    runs = clean(CAPPED, 6)
    # --timeout 1 s, K 0.5 s: dead by 9.55 + 1 + slack, but it ran until 11.05
    runs[1] = replace(runs[1], end=runs[1].start + 3.0, how="vanished", code=None)
    records = [record_of(r) for r in runs]
    records[1] = replace(
        records[1], states=(records[1].states[0], Shown(11.1, "failed", 137, True))
    )
    skipped = runs.pop(2)  # tick 10: skipped, the run of tick 8 was still alive
    records[2] = rec("capped", 10, skipped.rev, (10.05, "skipped"))
    r = verdict([CAPPED], runs, records)
    assert rules(r) == ["lives"] and "--timeout" in r.violations[0].message


def test_a_missing_convergence_fails() -> None:
    q = Fault(QUORUM_LOSS, 8.0, 10.0, member="m1,m2")
    r = verdict(
        [EVERY1], clean(EVERY1), faults=[q], convergences=[Convergence(0, False, None, "stuck")]
    )
    assert rules(r) == ["converged"]
    assert rules(verdict([EVERY1], clean(EVERY1), faults=[q], convergences=[])) == ["converged"]


# -- issue 10: retries, missed records, manual runs, suspend / resume ----------------------------

RETRYING = Job("every1", 1.0, "forbid", None, 0.5, retries=1)


def test_attempts_of_one_tick_pass_and_overlapping_or_extra_ones_fail() -> None:
    runs = clean(RETRYING)
    first = replace(runs[4], code=3)
    second = replace(runs[4], pid=9999, start=first.end + 0.2, end=first.end + 0.4, attempt=2)
    records = [record_of(r) for r in runs]
    records[4] = record_of(second)
    listing = listing_of([RETRYING], records)
    ok(verdict([RETRYING], [*runs[:4], first, second, *runs[5:]], records, listing=listing))
    overlapping = replace(second, start=first.end - 0.1)
    assert "once" in rules(verdict([RETRYING], [*runs[:4], first, overlapping, *runs[5:]],
                                   records, listing=listing))  # fmt: skip
    other_claim = replace(second, rev=second.rev + 1)
    assert "once" in rules(verdict([RETRYING], [*runs[:4], first, other_claim, *runs[5:]],
                                   records, listing=listing))  # fmt: skip
    # a job without --retries runs a tick once
    assert "once" in rules(verdict([EVERY1], [*runs[:4], first, second, *runs[5:]], records,
                                   listing=False))  # fmt: skip


def test_missed_records_account_for_ticks_and_never_for_a_run() -> None:
    runs = clean(EVERY1, skip=(9, 10, 11))
    records = [record_of(r) for r in runs]
    late = next(r for r in records if r.tick == WO + 12)
    # written after the claim of tick 12 (a later revision): not a claim, no fencing
    gap = rec("every1", 9, late.create_rev + 1, (12.1, "missed"), daemon="d2")
    gap = replace(gap, states=(replace(gap.states[0], count=3),))
    ok(verdict([EVERY1], runs, [*records, gap], listing=False))
    assert "accounted" in rules(verdict([EVERY1], runs, records, listing=False))
    ran = rec("every1", 8, records[3].create_rev, (8.5, "missed"))
    assert "listing" in rules(verdict([EVERY1], runs, [*records[:3], ran, *records[4:]],
                                      listing=False))  # fmt: skip


def test_manual_runs_are_judged_by_what_cron_run_said() -> None:
    runs = clean(EVERY1)
    manual = run(EVERY1, 9.5 + 1e-6, code=0, daemon="d2", rev=runs[4].rev + 1)
    runs_m = [*runs, manual]
    said = ManualCall("every1", 9.4, 10.0, 0, manual.tick, "ok, exit code 0")
    # its tick is no schedule's: no fencing between it and tick 10, claimed after it
    ok(verdict([EVERY1], runs_m, listing=False, manual=[said]))
    for bad in (replace(said, code=3), replace(said, code=75), replace(said, code=1),
                replace(said, tick=WO + 9.7, code=0), replace(said, code=70)):  # fmt: skip
        assert "manual" in rules(verdict([EVERY1], runs_m, listing=False, manual=[bad])), bad
    refused = ManualCall("every1", 9.4, 9.5, 75, None, "cron job 'every1' is suspended: ...")
    suspended = Fault(SUSPEND_RESUME, 9.0, 10.5, job="every1")
    records = [record_of(r) for r in runs if not 9.0 <= r.tick - WO <= 11.5]
    kept = [r for r in runs if not 9.0 <= r.tick - WO <= 11.5]
    ok(verdict([EVERY1], kept, records, listing=False, faults=[suspended], manual=[refused]))
    assert "manual" in rules(verdict([EVERY1], kept, records, listing=False, manual=[refused]))


def test_claims_while_suspended_or_of_its_ticks_after_the_resume_fail() -> None:
    runs = clean(EVERY1)
    suspended = Fault(SUSPEND_RESUME, 9.0, 12.0, job="every1")
    kept = [r for r in runs if not 9.0 <= r.tick - WO <= 12.5]
    ok(verdict([EVERY1], kept, listing=False, faults=[suspended]))
    during = [r for r in runs if r.tick - WO == 10.0]  # claimed at 10.05: suspended
    assert "suspend" in rules(verdict([EVERY1], kept + during, listing=False, faults=[suspended]))
    past = [replace(r, start=12.3, end=12.5) for r in during]  # after the resume, a past tick
    assert "suspend" in rules(verdict([EVERY1], kept + past, listing=False, faults=[suspended]))
