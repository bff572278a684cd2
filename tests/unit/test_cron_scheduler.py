"""Layer 1: which tick of a job is due when (conch.cron.scheduler), including the rule for a
daemon that fell behind. Pure: every time is passed in."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conch.cron.model import Job, tick_of
from conch.cron.scheduler import RETRY_AFTER, JobState, due_tick
from conch.schedule import Schedule

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
SEC = timedelta(seconds=1)


def every(seconds: int) -> Schedule:
    return Schedule.parse(f"@every {seconds}s")


def job(schedule: str = "@every 10s", tz: str = "UTC") -> Job:
    return Job("j", schedule, tz, ("true",))


# -- due_tick ----------------------------------------------------------------------------------


def test_nothing_is_due_before_the_tick() -> None:
    assert due_tick(every(10), T0, T0 - timedelta(microseconds=1)) is None
    assert due_tick(every(10), T0, T0 - 5 * SEC) is None


def test_the_tick_is_due_from_its_instant_until_the_next() -> None:
    for late in (0, 1, 9):
        d = due_tick(every(10), T0, T0 + late * SEC)
        assert d is not None
        assert (d.tick, d.following, d.passed) == (T0, T0 + 10 * SEC, 0)


def test_fell_behind_only_the_newest_passed_tick_counts() -> None:
    # the next tick (T0+10s) has passed too: the ticks T0 and T0+10s are not claimed here,
    # T0+20s (the newest at or before now) is
    d = due_tick(every(10), T0, T0 + 25 * SEC)
    assert d is not None
    assert (d.tick, d.following) == (T0 + 20 * SEC, T0 + 30 * SEC)
    assert d.passed == 2  # T0+10s and T0+20s passed after the tick last tried


def test_fell_behind_exactly_onto_a_tick() -> None:
    d = due_tick(every(10), T0, T0 + 10 * SEC)
    assert d is not None and (d.tick, d.following, d.passed) == (T0 + 10 * SEC, T0 + 20 * SEC, 1)


def test_fell_behind_with_a_cron_expression_across_a_dst_change() -> None:
    # hourly in New York through spring-forward (2026-03-08 02:00 EST -> 03:00 EDT): wildcard
    # jobs tick on real elapsed hours
    s = Schedule.parse("0 * * * *", "America/New_York")
    due = datetime(2026, 3, 8, 5, 0, tzinfo=UTC)  # 00:00 EST
    now = datetime(2026, 3, 8, 8, 30, tzinfo=UTC)  # 04:30 EDT
    d = due_tick(s, due, now)
    assert d is not None
    assert d.tick == datetime(2026, 3, 8, 8, 0, tzinfo=UTC)  # 04:00 EDT
    assert d.following == datetime(2026, 3, 8, 9, 0, tzinfo=UTC)
    assert d.passed == 3  # 01:00 EST, 03:00 EDT, 04:00 EDT


PERIODS = st.sampled_from([1, 2, 3, 7, 10, 60, 90, 3600])


@given(PERIODS, st.integers(0, 10**6), st.integers(-(10**6), 10**7))
def test_due_is_the_newest_tick_not_after_now(period: int, k: int, offset_ms: int) -> None:
    s = every(period)
    due = datetime(2026, 1, 1, tzinfo=UTC) + k * period * SEC  # on a tick of the schedule
    now = due + timedelta(milliseconds=offset_ms)
    d = due_tick(s, due, now)
    if now < due:
        assert d is None
        return
    assert d is not None
    assert due <= d.tick <= now < d.following  # the newest tick at or before now ...
    assert d.following == s.next_after(d.tick)  # ... and the one after it
    if d.tick == due:  # on time: the tick after it has not come yet
        assert d.passed == 0 and s.next_after(due) > now
    else:  # fell behind: every tick after `due` up to now passed, the newest is due
        assert d.passed == len(s.ticks_between(due, now)) >= 1


@given(PERIODS, st.integers(1, 50), st.integers(0, 5000))
def test_a_daemon_that_keeps_up_tries_every_tick(period: int, steps: int, jitter_ms: int) -> None:
    """Looked at least once per period (here: just after each tick), every tick is due once,
    in order, and none is skipped."""
    s = every(period)
    due = s.next_after(T0)
    seen = []
    for _ in range(steps):
        now = due + min(timedelta(milliseconds=jitter_ms), period * SEC - timedelta(microseconds=1))
        d = due_tick(s, due, now)
        assert d is not None and d.passed == 0
        seen.append(d.tick)
        due = d.following
    assert seen == [seen[0] + i * period * SEC for i in range(len(seen))]


# -- JobState ----------------------------------------------------------------------------------


def test_job_state_starts_at_the_next_tick() -> None:
    st_ = JobState.start(job(), 7, T0 + 3 * SEC)
    assert (st_.rev, st_.due, st_.retry_at, st_.unsure) == (7, T0 + 10 * SEC, 0.0, set())


@pytest.mark.parametrize("bad", [job("nonsense"), job("@daily", "Not/AZone")])
def test_job_state_of_an_unusable_schedule_raises(bad: Job) -> None:
    with pytest.raises(ValueError):
        JobState.start(bad, 1, T0)


def test_job_state_falls_behind_for_good() -> None:
    """A daemon that fell behind moves its due tick to the newest passed one even when it then
    cannot claim (no trusted lease): the older ticks are never tried here."""
    st_ = JobState(job(), 1, every(10), T0)
    d = st_.due_at(T0 + 35 * SEC, wall=0.0)
    assert d is not None and d.tick == T0 + 30 * SEC and d.passed == 3
    assert st_.due == T0 + 30 * SEC
    # not claimed yet: looked at again, that tick is due, on time now
    again = st_.due_at(T0 + 36 * SEC, wall=0.0)
    assert again is not None and (again.tick, again.passed) == (T0 + 30 * SEC, 0)


def test_job_state_claim_cycle() -> None:
    st_ = JobState(job(), 1, every(10), T0)
    w = T0.timestamp()  # this host's clock, here the group's
    assert st_.due_at(T0 - SEC, wall=w - 1) is None
    assert st_.wake_at() == w
    d = st_.due_at(T0, wall=w)
    assert d is not None and d.tick == T0
    # no answer: the same tick again, not before RETRY_AFTER, and it stays unsure
    st_.claim_failed(tick_of(d.tick), wall=w)
    assert st_.unsure == {tick_of(T0)} and st_.retry_at == w + RETRY_AFTER
    assert st_.wake_at() == w + RETRY_AFTER
    assert st_.due_at(T0 + SEC / 4, wall=w + 0.25) is None
    again = st_.due_at(T0 + SEC / 2, wall=w + RETRY_AFTER)
    assert again is not None and again.tick == T0
    # answered: on to the next tick
    st_.claim_decided(tick_of(T0), again.following)
    assert (st_.due, st_.retry_at, st_.unsure) == (T0 + 10 * SEC, 0.0, set())
    assert st_.wake_at() == w + 10


# -- the claim delay of another daemon's share (conch.cron.share) ----------------------------


def test_a_job_of_another_daemons_share_is_due_a_step_after_its_tick() -> None:
    st = JobState(job("@every 60s"), 1, every(60), T0, rank=1, daemons=3)
    assert st.due_at(T0 + 0.1 * SEC, 0.0) is None
    assert st.wake_at() == (T0 + 0.5 * SEC).timestamp()  # woken when its turn comes
    d = st.due_at(T0 + 0.5 * SEC, 0.0)
    assert d is not None and d.tick == T0


def test_with_a_short_period_every_daemon_has_its_try_in_the_first_half() -> None:
    for rank in range(3):
        st = JobState(job("@every 1s"), 1, every(1), T0, rank=rank, daemons=3)
        assert st.due_at(T0 + 0.5 * SEC, 0.0) is not None, rank


def test_a_delayed_daemon_that_fell_behind_still_moves_to_the_newest_tick() -> None:
    st = JobState(job("@every 10s"), 1, every(10), T0, rank=2, daemons=3)
    assert st.due_at(T0 + 20.1 * SEC, 0.0) is None  # T0+20s's turn for rank 2: +1 s
    assert st.due == T0 + 20 * SEC  # T0 and T0+10s are not claimed here
    d = st.due_at(T0 + 21 * SEC, 0.0)
    assert d is not None and d.tick == T0 + 20 * SEC


@given(st.lists(st.integers(min_value=-10**6, max_value=10**6), min_size=1, max_size=20),
       st.floats(min_value=0, max_value=2e9))  # fmt: skip
def test_wake_at_follows_every_change_of_the_due_tick(moves: list[int], retry_at: float) -> None:
    """wake_at caches the due tick's Unix time (the scheduler asks every step): it must
    follow every new due tick, however it is set."""
    s = JobState.start(job(), 1, T0)
    s.retry_at = retry_at
    for m in moves:
        s.due = T0 + timedelta(milliseconds=m)
        assert s.wake_at() == max(s.due.timestamp(), retry_at)
        assert s.wake_at() == max(s.due.timestamp(), retry_at)  # from the cache


# -- missed ticks ------------------------------------------------------------------------------


def test_missed_ticks_are_those_strictly_between_the_prior_mark_and_the_claim() -> None:
    from conch.cron.scheduler import missed_ticks

    t0 = tick_of(T0)
    assert missed_ticks(every(1), t0, t0 + 1_000_000, 10) == ([], 0)
    assert missed_ticks(every(1), t0, t0 + 5_000_000, 10) == (
        [t0 + k * 1_000_000 for k in range(1, 5)], 4)  # fmt: skip
    # over `most`: only the first, and the count
    assert missed_ticks(every(1), t0, t0 + 5_000_000, 2) == ([t0 + 1_000_000], 4)
    # a mark that is no tick (an add, a resume): from the first tick after it
    minute = Schedule.parse("* * * * *")
    assert missed_ticks(minute, t0 + 500_000, t0 + 180_000_000, 10) == (
        [t0 + 60_000_000, t0 + 120_000_000], 2)  # fmt: skip


@given(st.integers(0, 10**7), st.integers(1, 10**8), st.sampled_from(["@every 7s", "*/5 * * * *"]))
def test_count_between_is_the_number_of_ticks_between(start: int, span: int, spec: str) -> None:
    s = Schedule.parse(spec)
    a = T0 + timedelta(microseconds=start)
    b = a + timedelta(microseconds=span * 10)
    assert s.count_between(a, b, 10**6) == len(s.ticks_between(a, b))
    assert s.ticks_between(a, b, limit=3) == s.ticks_between(a, b)[:3]


def test_a_job_added_a_moment_ago_is_scheduled_from_its_add() -> None:
    from dataclasses import replace

    added = T0 - timedelta(milliseconds=300)  # the add, just before a tick a daemon now sees
    j = replace(job("@every 1s"), since=tick_of(added))
    st_ = JobState.start(j, 1, T0 + timedelta(milliseconds=200))
    assert st_.due == T0 and st_.floor == added
    # long ago (a daemon starting): from now
    st_ = JobState.start(j, 1, T0 + 10 * SEC)
    assert st_.due == T0 + 11 * SEC and st_.floor == T0 + 10 * SEC
