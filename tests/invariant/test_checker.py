"""The checker is itself tested: hand-made logs with each kind of violation must fail it, and the
legitimate shapes the documented window allows must pass. A checker that cannot fail is worse
than none."""

from __future__ import annotations

import pytest
from invariant_checker import (
    KILL_CONCH,
    KILL_MEMBER,
    QUORUM_LOSS,
    REVOKE,
    STOP_CONCH,
    Convergence,
    Fault,
    Interval,
    Params,
    Process,
    check,
    summarize,
)

pytestmark = pytest.mark.invariant

K = 0.5  # --kill-after of these logs
TTL = 2.0


def iv(holder, rev, start, end, lease=None, how="exit"):
    return Interval(
        holder=holder,
        pid=1000 + rev,
        rev=rev,
        lease=lease if lease is not None else 0xA000 + rev,
        ttl=TTL,
        start=start,
        end=end,
        how=how if end is not None else "open",
    )


def procs_for(intervals, spawned=-1.0, **codes):
    """One conch process per holder: exited just after its last child, code 0 unless given."""
    out = {}
    for i in intervals:
        end = i.end if i.end is not None else None
        prev = out.get(i.holder)
        exited = end if prev is None or end is None else max(prev.exited or 0.0, end)
        out[i.holder] = Process(i.holder, 1, spawned, exited, codes.get(i.holder, 0))
    return list(out.values())


def run(intervals, faults=(), procs=None, conv=None, slots=1, horizon=None):
    procs = procs_for(intervals) if procs is None else procs
    if conv is None:
        conv = [Convergence(k, True, 0.1) for k in range(len(faults))] + [
            Convergence(None, True, None)
        ]
    return check(intervals, list(faults), procs, conv, Params(slots=slots, kill_after=K), horizon)


def rules(report):
    return sorted({v.rule for v in report.violations})


# -- legitimate logs pass --------------------------------------------------------------------


def test_clean_successions_pass():
    ivs = [iv("a", 10, 0.0, 1.0), iv("b", 12, 1.0, 2.0), iv("c", 15, 2.05, 3.0)]
    r = run(ivs)
    assert r.ok, [v.describe() for v in r.violations]
    assert r.max_concurrency == 1  # touching intervals do not overlap


def test_sema_n_slots_pass():
    ivs = [iv("a", 10, 0.0, 2.0), iv("b", 11, 0.5, 1.5), iv("c", 12, 1.5, 3.0)]
    r = run(ivs, slots=2)
    assert r.ok, [v.describe() for v in r.violations]
    assert r.max_concurrency == 2


def test_overlap_inside_revoke_window_passes_and_is_measured():
    # a's lease revoked at 1.0; b starts at once; a's child needed SIGKILL after K
    f = Fault(REVOKE, 1.0, 1.0, holder="a", lease=0xA000 + 10)
    ivs = [iv("a", 10, 0.0, 1.0 + K + 0.1, how="vanished"), iv("b", 12, 1.05, 3.0)]
    procs = procs_for(ivs, a=70)
    r = run(ivs, [f], procs)
    assert r.ok, [v.describe() for v in r.violations]
    (st,) = r.stats
    assert st.excess == 1 and st.overlap == pytest.approx(K + 0.1 - 0.05)
    assert summarize(r)["revoke"]["max_overlap_s"] == pytest.approx(K + 0.05)


def test_paused_conch_child_killed_by_watchdog_passes():
    # a's conch paused 0..5; watchdog fires at ~1.6, child ignores SIGTERM: dead at 2.1;
    # the lease expires at ~2.0 and b starts at 2.05
    f = Fault(STOP_CONCH, 0.0, 5.0, holder="a")
    ivs = [iv("a", 10, -3.0, 2.1, how="vanished"), iv("b", 12, 2.05, 6.0)]
    r = run(ivs, [f], procs_for(ivs, a=70))
    assert r.ok, [v.describe() for v in r.violations]


def test_stale_start_after_pause_killed_at_once_passes():
    # a was paused right before spawning its child; it spawns on SIGCONT at 5.0 and the
    # watchdog (armed with the expired deadline) kills the child at once
    f = Fault(STOP_CONCH, 0.0, 5.0, holder="a")
    ivs = [iv("b", 12, 2.05, 9.0), iv("a", 10, 5.02, 5.02 + K + 0.05, how="vanished")]
    r = run(ivs, [f], procs_for(ivs, a=70))
    assert r.ok, [v.describe() for v in r.violations]


def test_quorum_loss_kill_then_successor_passes():
    f = Fault(QUORUM_LOSS, 0.0, 3.0, member="m1,m2")
    ivs = [iv("a", 10, -1.0, 1.9), iv("b", 14, 3.5, 5.0)]
    r = run(ivs, [f], procs_for(ivs, a=70))
    assert r.ok, [v.describe() for v in r.violations]


def test_waiter_outcomes_that_are_allowed():
    f = Fault(QUORUM_LOSS, 10.0, 12.0, member="m1,m2")
    ivs = [iv("a", 10, 0.0, 1.0)]
    procs = [
        Process("a", 1, -0.5, 1.01, 0),
        Process("t", 2, 0.0, 2.0, 75, frozenset({"timeout"})),
        Process("n", 3, 0.0, 0.2, 75, frozenset({"nonblock"})),
        Process("u", 4, 9.0, 15.0, 69),  # etcd unreachable before its child started
        Process("w", 5, 9.0, 13.0, 70),  # its lease was lost while it waited/started
        Process("k", 6, 0.0, 3.0, -9),  # a kill_conch fault, below
        Process("s", 7, 0.0, 20.0, -15, signalled=15),  # the harness's teardown
    ]
    kill = Fault(KILL_CONCH, 3.0, 3.0, holder="k")
    r = run(ivs, [kill, f], procs)
    assert r.ok, [v.describe() for v in r.violations]


# -- each kind of violation fails -------------------------------------------------------------


def test_two_leaders_without_a_fault_fail():
    ivs = [iv("a", 10, 0.0, 2.0), iv("b", 12, 1.5, 3.0)]
    r = run(ivs)
    assert rules(r) == ["capacity"]
    (v,) = r.violations
    assert {i.holder for i in v.intervals} == {"a", "b"}
    assert "from 1.500 to 2.000 (0.500 s)" in v.describe()
    assert "from 0.500 to 1.000" in v.describe(t0=1.0)


def test_a_tiny_overlap_without_a_fault_fails():
    r = run([iv("a", 10, 0.0, 1.001), iv("b", 12, 1.0, 2.0)])
    assert rules(r) == ["capacity"]


def test_sema_n_plus_one_without_a_fault_fails():
    ivs = [iv("a", 10, 0.0, 2.0), iv("b", 11, 0.5, 2.0), iv("c", 12, 1.0, 3.0)]
    assert rules(run(ivs, slots=2)) == ["capacity"]
    assert run(ivs, slots=3).ok


def test_overlap_window_that_does_not_close_fails():
    # revoked at 1.0, successor at 1.05, but the old child lives on until 3.0 > 1.0 + K + 1
    f = Fault(REVOKE, 1.0, 1.0, holder="a", lease=0xA000 + 10)
    ivs = [iv("a", 10, 0.0, 3.0, how="vanished"), iv("b", 12, 1.05, 4.0)]
    r = run(ivs, [f], procs_for(ivs, a=70))
    assert rules(r) == ["capacity"]
    assert r.stats[0].overlap == 0.0  # not excused, so not counted as window


def test_old_child_still_running_at_the_end_fails():
    f = Fault(REVOKE, 1.0, 1.0, holder="a", lease=0xA000 + 10)
    ivs = [iv("a", 10, 0.0, None), iv("b", 12, 1.05, 4.0)]
    procs = [Process("a", 1, -1.0, None, None), Process("b", 2, 0.5, 4.0, 0)]
    r = run(ivs, [f], procs, horizon=5.0)
    assert "capacity" in rules(r)
    assert "exit" in rules(r)  # a never exited


def test_revoke_of_another_lease_does_not_excuse_an_overlap():
    f = Fault(REVOKE, 1.0, 1.0, holder="x", lease=0xBEEF)
    ivs = [iv("a", 10, 0.0, 1.2), iv("b", 12, 1.05, 4.0)]
    assert rules(run(ivs, [f])) == ["capacity"]


def test_paused_conch_whose_watchdog_failed_fails():
    # the child of the paused conch is only killed after SIGCONT (5.0), long after the
    # successor started at 2.05: more than K + 1 s of overlap
    f = Fault(STOP_CONCH, 0.0, 5.0, holder="a")
    ivs = [iv("a", 10, -3.0, 5.1), iv("b", 12, 2.05, 6.0)]
    r = run(ivs, [f], procs_for(ivs, a=70))
    assert rules(r) == ["capacity"]


def test_stale_start_that_lives_on_fails():
    f = Fault(STOP_CONCH, 0.0, 5.0, holder="a")
    ivs = [iv("b", 12, 2.05, 9.0), iv("a", 10, 5.02, 7.0)]
    r = run(ivs, [f], procs_for(ivs, a=70))
    assert "capacity" in rules(r)


def test_holder_that_survives_quorum_loss_beside_a_successor_fails():
    # both keep running after the fault: the one that survived cannot excuse the overlap
    f = Fault(QUORUM_LOSS, 0.0, 3.0, member="m1,m2")
    ivs = [iv("a", 10, -1.0, 10.0), iv("b", 14, 3.5, 10.0)]
    r = run(ivs, [f])
    assert rules(r) == ["capacity"]


def test_member_fault_does_not_excuse_overlap_after_its_window():
    f = Fault(KILL_MEMBER, 0.0, 1.0, member="m0")
    # a dies at 6.0: beyond until + TTL + K + 1 = 4.5
    ivs = [iv("a", 10, -1.0, 6.0), iv("b", 14, 3.0, 10.0)]
    r = run(ivs, [f], procs_for(ivs, a=70))
    assert rules(r) == ["capacity"]


def test_orphan_child_fails():
    ivs = [iv("a", 10, 0.0, 7.0)]
    procs = [Process("a", 1, -1.0, 5.0, 70)]
    f = Fault(REVOKE, 4.9, 4.9, holder="a", lease=0xA000 + 10)
    r = run(ivs, [f], procs)
    assert rules(r) == ["orphan"]


def test_missing_or_failed_convergence_fails():
    f = Fault(KILL_CONCH, 1.0, 1.0, holder="x")
    ivs = [iv("a", 10, 0.0, 5.0)]
    procs = [*procs_for(ivs), Process("x", 2, 0.0, 1.0, -9)]
    r = run(ivs, [f], procs, conv=[Convergence(0, False, None, "timed out")])
    assert rules(r) == ["convergence"]
    assert len(r.violations) == 2  # the failed verdict and the missing final one
    r = run(ivs, [f], procs, conv=[Convergence(None, True, None)])
    assert rules(r) == ["convergence"]  # no verdict for the fault


@pytest.mark.parametrize(
    ("proc", "faults", "why"),
    [
        (Process("w", 2, 0.0, 3.0, 1), [], "unexpected exit code 1"),
        (Process("w", 2, 0.0, 3.0, 0), [], "never promoted"),
        (Process("w", 2, 0.0, 3.0, 75), [], "without --timeout"),
        (Process("w", 2, 0.0, 3.0, 69), [], "no etcd fault"),
        (
            Process("w", 2, 0.0, 30.0, 69),
            [Fault(QUORUM_LOSS, 1.0, 5.0, member="m1,m2")],
            "no etcd fault",  # long after the quorum came back
        ),
        (Process("w", 2, 0.0, 3.0, 70), [], "without a loss event"),
        (
            Process("w", 2, 0.0, 3.0, 70),
            [Fault(REVOKE, 1.0, 1.0, holder="other", lease=0xB)],
            "without a loss event",
        ),
        (Process("w", 2, 0.0, 3.0, -9), [], "signal 9"),
        (Process("w", 2, 0.0, 3.0, 143), [], "unexpected exit code 143"),
        (Process("w", 2, 0.0, None, None), [], "still running"),
    ],
)
def test_bad_exit_codes_fail(proc, faults, why):
    ivs = [iv("a", 10, 0.0, 1.0)]
    r = run(ivs, faults, [*procs_for(ivs), proc])
    assert rules(r) == ["exit"], [v.describe() for v in r.violations]
    assert why in r.violations[0].message


def test_exit_0_after_a_killed_child_fails():
    ivs = [iv("a", 10, 0.0, 1.0, how="vanished")]
    assert rules(run(ivs)) == ["exit"]


def test_69_or_75_after_running_a_child_fails():
    ivs = [iv("a", 10, 0.0, 1.0)]
    f = Fault(QUORUM_LOSS, 0.5, 2.0, member="m1,m2")
    assert rules(run(ivs, [f], procs_for(ivs, a=69))) == ["exit"]
    p = [Process("a", 1, -1.0, 1.0, 75, frozenset({"timeout"}))]
    assert rules(run(ivs, procs=p)) == ["exit"]


def test_token_going_backwards_fails():
    ivs = [iv("a", 12, 0.0, 1.0), iv("b", 10, 1.1, 2.0)]
    r = run(ivs)
    assert rules(r) == ["fencing"]
    assert "strictly increase" in r.violations[0].message


def test_token_reused_by_another_lease_fails():
    ivs = [iv("a", 10, 0.0, 1.0, lease=1), iv("b", 10, 1.1, 2.0, lease=2)]
    r = run(ivs)
    assert "fencing" in rules(r)
    assert any("different leases" in v.message for v in r.violations)


def test_one_lease_with_two_tokens_fails():
    ivs = [iv("a", 10, 0.0, 1.0, lease=1), iv("a", 11, 1.1, 2.0, lease=1)]
    r = run(ivs)
    assert any("different tokens" in v.message for v in r.violations)


def test_restart_rerun_keeps_its_token():
    ivs = [iv("a", 10, 0.0, 1.0, lease=1), iv("a", 10, 2.0, 3.0, lease=1)]
    assert run(ivs).ok


def test_sema_key_created_later_with_smaller_token_fails():
    # c's conch was started at 2.5, after a's child ended: its key must be newer than a's
    ivs = [iv("a", 20, 0.0, 2.0), iv("b", 21, 0.0, 4.0), iv("c", 15, 3.0, 4.0)]
    procs = [*procs_for(ivs[:2]), Process("c", 3, 2.5, 4.0, 0)]
    r = run(ivs, procs=procs, slots=2)
    assert rules(r) == ["fencing"]


def test_sema_late_start_of_an_older_holder_passes():
    # b (rev 15) held a slot all along but started its child late; c (rev 20) ran meanwhile
    ivs = [iv("a", 10, 0.0, 3.0), iv("c", 20, 0.1, 0.3), iv("b", 15, 0.5, 2.0)]
    assert run(ivs, slots=2).ok


def test_stale_start_with_an_old_token_is_fencings_job_not_a_violation():
    # a paused before spawning; b took over; a's child starts on SIGCONT with the older token
    f = Fault(STOP_CONCH, 0.0, 5.0, holder="a")
    ivs = [iv("b", 12, 2.05, 9.0), iv("a", 10, 5.02, 5.5, how="vanished")]
    assert run(ivs, [f], procs_for(ivs, a=70)).ok
    # without the pause the same log is a fencing violation (and two leaders)
    assert rules(run(ivs, [], procs_for(ivs, a=70))) == ["capacity", "exit", "fencing"]


def test_survivor_cannot_excuse_even_a_short_overlap():
    # quorum loss; b runs briefly beside a, a keeps running: a was never the stale holder,
    # so this is two holders at once, not the documented window
    f = Fault(QUORUM_LOSS, 0.0, 3.0, member="m1,m2")
    ivs = [iv("a", 10, -1.0, 10.0), iv("b", 14, 3.5, 4.0)]
    assert rules(run(ivs, [f])) == ["capacity"]


def test_stale_child_must_die_within_k_plus_1_of_the_successor():
    # within the fault's closing bound (3 + TTL + K + 1 = 6.5), but 2.3 s after b started
    f = Fault(QUORUM_LOSS, 0.0, 3.0, member="m1,m2")
    ivs = [iv("a", 10, -1.0, 5.8, how="vanished"), iv("b", 14, 3.5, 8.0)]
    assert rules(run(ivs, [f], procs_for(ivs, a=70))) == ["capacity"]
    ivs = [iv("a", 10, -1.0, 4.9, how="vanished"), iv("b", 14, 3.5, 8.0)]
    assert run(ivs, [f], procs_for(ivs, a=70)).ok


def test_etcd_fault_window_closes_even_without_an_early_successor():
    # member down 0..1: a holder that lost its lease is dead by 1 + TTL + K (+1 s); one still
    # running at 5.0 beside b (started 4.0) was not a lost holder
    f = Fault(KILL_MEMBER, 0.0, 1.0, member="m0")
    ivs = [iv("a", 10, -1.0, 5.0, how="vanished"), iv("b", 14, 4.0, 8.0)]
    assert rules(run(ivs, [f], procs_for(ivs, a=70))) == ["capacity"]


def test_pause_of_another_conch_does_not_excuse_an_overlap():
    f = Fault(STOP_CONCH, 0.0, 3.0, holder="x")
    ivs = [iv("a", 10, -1.0, 1.0), iv("b", 12, 0.5, 4.0)]
    procs = [*procs_for(ivs), Process("x", 9, -2.0, 4.0, 70)]
    assert rules(run(ivs, [f], procs)) == ["capacity"]
    f = Fault(KILL_CONCH, 0.0, 0.0, holder="x")
    procs = [*procs_for(ivs), Process("x", 9, -2.0, 0.0, -9)]
    assert rules(run(ivs, [f], procs)) == ["capacity"]


def test_revoked_holder_must_die_within_k_plus_1_of_the_revoke():
    # the successor was slow (1.0 s) but the revoked child must be dead by 0 + K + 1 anyway
    f = Fault(REVOKE, 0.0, 0.0, holder="a", lease=0xA000 + 10)
    ivs = [iv("a", 10, -1.0, 1.8, how="vanished"), iv("b", 12, 1.0, 3.0)]
    assert rules(run(ivs, [f], procs_for(ivs, a=70))) == ["capacity"]
    ivs = [iv("a", 10, -1.0, 1.4, how="vanished"), iv("b", 12, 1.0, 3.0)]
    assert run(ivs, [f], procs_for(ivs, a=70)).ok


def test_paused_holder_must_die_within_ttl_k_plus_1_of_the_pause():
    # watchdog: SIGTERM at the local deadline (< pause + TTL), SIGKILL K later
    f = Fault(STOP_CONCH, 0.0, 10.0, holder="a")
    ivs = [iv("a", 10, -1.0, 3.8, how="vanished"), iv("b", 12, 3.0, 12.0)]
    assert rules(run(ivs, [f], procs_for(ivs, a=70))) == ["capacity"]
    ivs = [iv("a", 10, -1.0, 3.4, how="vanished"), iv("b", 12, 3.0, 12.0)]
    assert run(ivs, [f], procs_for(ivs, a=70)).ok


def test_a_start_long_after_a_pause_is_not_a_stale_start():
    f = Fault(STOP_CONCH, 0.0, 1.0, holder="a")
    ivs = [iv("b", 12, 9.5, 12.0), iv("a", 10, 10.0, 10.2)]
    assert "capacity" in rules(run(ivs, [f], procs_for(ivs, a=70)))


def test_restart_service_never_exits_70():
    f = Fault(REVOKE, 0.5, 0.5, holder="a", lease=0xA000 + 10)
    ivs = [iv("a", 10, 0.0, 0.6)]
    p = [Process("a", 1, -1.0, 0.7, 70, frozenset({"restart"}))]
    r = run(ivs, [f], p)
    assert rules(r) == ["exit"] and "campaign again" in r.violations[0].message


def test_overlap_is_credited_to_the_most_specific_loss_event():
    # a quorum loss ended at 3; a revoke of a's lease at 5 causes the overlap
    q = Fault(QUORUM_LOSS, 0.0, 3.0, member="m1,m2")
    rv = Fault(REVOKE, 5.0, 5.0, holder="a", lease=0xA000 + 10)
    ivs = [iv("a", 10, 3.5, 5.3, how="vanished"), iv("b", 12, 5.05, 8.0)]
    r = run(ivs, [q, rv], procs_for(ivs, a=70))
    assert r.ok, [v.describe() for v in r.violations]
    assert r.stats[0].overlap == 0.0 and r.stats[1].overlap == pytest.approx(0.25)


def test_only_the_needed_excuses_are_credited():
    # sema N=2: b and c overlap a revoked holder a; b also lived through a member fault, but
    # one excuse (a's revoke) explains the overlap
    m = Fault(KILL_MEMBER, 0.0, 1.0, member="m0")
    rv = Fault(REVOKE, 3.0, 3.0, holder="a", lease=0xA000 + 10)
    ivs = [
        iv("b", 9, 0.5, 3.4),
        iv("a", 10, 0.6, 3.3, how="vanished"),
        iv("c", 12, 3.05, 6.0),
    ]
    r = run(ivs, [m, rv], procs_for(ivs, a=70), slots=2)
    assert r.ok, [v.describe() for v in r.violations]
    assert r.stats[0].overlap == 0.0 and r.stats[1].overlap == pytest.approx(0.25)


def test_overlap_is_credited_to_the_revoke_when_a_kill_could_also_excuse_it():
    # a (revoked) and x (conch SIGKILLed at the same moment) both die within their windows;
    # one excuse is needed, and the revoke is what let the successor in at once
    rv = Fault(REVOKE, 1.0, 1.0, holder="a", lease=0xA000 + 10, compound=True)
    kl = Fault(KILL_CONCH, 1.1, 1.1, holder="x", compound=True)
    ivs = [
        iv("x", 9, 0.0, 1.9, how="vanished"),
        iv("a", 10, 0.1, 1.8, how="vanished"),
        iv("b", 12, 1.2, 4.0),
    ]
    r = run(ivs, [rv, kl], procs_for(ivs, a=70, x=-9), slots=2)
    assert r.ok, [v.describe() for v in r.violations]
    assert r.stats[0].overlap == pytest.approx(0.6) and r.stats[1].overlap == 0.0
