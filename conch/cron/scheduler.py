"""A job's schedule state in one daemon, and which tick is due when. Pure: no I/O; every time
is passed in.

The rule: at time `now` a job whose next untried tick is `due` has nothing due while
`due > now`; else `due` is due — unless the tick after it has passed too (the daemon fell
behind: it was stopped, slow, or its clock stepped), and then only the newest tick passed is;
the older ones are not claimed here (another daemon may have claimed them in time).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from conch.cron.model import MISSED_COUNT_CAP, Job, Tick, tick_datetime, tick_of
from conch.cron.share import claim_delay

if TYPE_CHECKING:
    from conch.schedule import Schedule

RETRY_AFTER = 0.5  # seconds before a claim that failed (etcd error) is tried again
SINCE_GRACE = 2.0  # seconds: a job added (or resumed) this recently is scheduled from then


@dataclass(frozen=True)
class Due:
    """The tick to claim now."""

    tick: datetime  # aware, UTC
    following: datetime  # the tick after it: the claim must be decided before then
    passed: int = 0  # fell behind: ticks after the last one tried that passed meanwhile
    before: datetime | None = None  # fell behind: the tick before `tick`


def due_tick(schedule: Schedule, due: datetime, now: datetime) -> Due | None:
    """The tick due at `now`, `due` being the next tick not yet tried (None: not yet)."""
    if due > now:
        return None
    following = schedule.next_after(due)
    if following > now:
        return Due(due, following)
    passed = schedule.ticks_between(due, now)  # due < t <= now: `following` and on
    newest = passed[-1]
    before = passed[-2] if len(passed) > 1 else due
    return Due(newest, schedule.next_after(newest), len(passed), before)


def missed_ticks(schedule: Schedule, prior: Tick, tick: Tick, most: int) -> tuple[list[Tick], int]:
    """The schedule's ticks strictly between `prior` (a job's low-water mark before the claim
    of `tick`) and `tick`: nobody claimed them. Returns (each of them if there are at most
    `most`, else only the first; how many, counted up to MISSED_COUNT_CAP)."""
    start, end = tick_datetime(prior), tick_datetime(tick - 1)
    count = schedule.count_between(start, end, MISSED_COUNT_CAP)
    if count == 0:
        return [], 0
    listed = schedule.ticks_between(start, end, limit=count if count <= most else 1)
    return [tick_of(t) for t in listed], count


@dataclass
class JobState:
    """One job as this daemon schedules it."""

    job: Job
    rev: int  # mod revision of the definition the schedule comes from
    schedule: Schedule
    due: datetime  # the next tick to try (aware, UTC)
    # no tick of the schedule lies between this instant and `due`: a claim whose prior mark
    # is older may have ticks nobody claimed before it (missed_ticks); None: not known
    floor: datetime | None = None
    retry_at: float = 0.0  # time.time() before which a failed claim is not retried
    # ticks whose claim transaction may have committed without this daemon hearing the answer
    # (it failed with an etcd error) and that it moved past: resolved by a read (own_claim)
    unsure: set[Tick] = field(default_factory=set)
    # conch.cron.share: how many live daemons come before this one for the job (0: its own
    # share, claimed at the tick; the others' a little later), and how many there are
    rank: int = 0
    daemons: int = 1
    _waiting: float = 0.0  # the delay due_at last found unexpired, for wake_at
    _due_ts: tuple[datetime, float] | None = None  # (due, its Unix time): wake_at's cache

    @classmethod
    def start(cls, job: Job, rev: int, now: datetime) -> JobState:
        """A job seen at `now`: its first tick is the next one after now — or after the
        moment it was added or resumed (`job.since`), when that was under SINCE_GRACE ago: a
        tick that fell between the add and the moment this daemon heard of it is run (late by
        that moment), not missed. Raises ValueError (conch.schedule.ScheduleError) or
        OverflowError for a schedule that cannot be used."""
        from conch.schedule import Schedule

        schedule = Schedule.parse(job.schedule, job.tz, job.name)
        start = now
        if job.since:
            since = tick_datetime(job.since)
            if now - timedelta(seconds=SINCE_GRACE) <= since < now:
                start = since
        return cls(job, rev, schedule, schedule.next_after(start), start)

    def wake_at(self) -> float:
        """When this job next needs the scheduler (a Unix time)."""
        cached = self._due_ts
        if cached is None or cached[0] is not self.due:  # the scheduler asks every step
            cached = self._due_ts = (self.due, self.due.timestamp())
        return max(cached[1] + self._waiting, self.retry_at)

    def due_at(self, now: datetime, wall: float) -> Due | None:
        """The tick to claim at `now` (the group's time), if any; not before `retry_at`
        (`wall`: this host's clock, as retry_at), nor before this daemon's claim delay after
        the tick (conch.cron.share). A daemon that fell behind moves on to the newest passed
        tick for good, whether or not it can claim it."""
        if self.due > now or wall < self.retry_at:
            return None
        d = due_tick(self.schedule, self.due, now)
        assert d is not None
        if d.before is not None:
            self.floor = d.before
        self.due = d.tick
        period = (d.following - d.tick).total_seconds()
        self._waiting = claim_delay(self.rank, period, self.daemons)
        if now < d.tick + timedelta(seconds=self._waiting):
            return None
        self._waiting = 0.0
        return d

    def claim_failed(self, tick: Tick, wall: float) -> None:
        """The claim of `tick` (= due) got no answer: it may have committed. Try it again, with
        the same claim id, after RETRY_AFTER."""
        self.unsure.add(tick)
        self.retry_at = wall + RETRY_AFTER

    def claim_decided(self, tick: Tick, following: datetime) -> None:
        """The claim of `tick` was answered (whatever the outcome): on to the next tick."""
        self.unsure.discard(tick)
        self.floor, self.due, self.retry_at = tick_datetime(tick), following, 0.0
