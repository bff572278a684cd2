"""`conch cron run`: the requester's side of a manual run.

The request is a key of its own (conch.keys.cron_request_key) on a lease of the requester's
with a TTL of `--timeout`: unclaimed by then, it is gone, and no daemon can run it later. A
daemon claims it like a tick (conch.cron.store.claim_many: the claim deletes the request), so
exactly one runs it. Its tick is the request's time, moved on by a microsecond when that is
one of the schedule's own ticks: a manual run never takes a scheduled tick's key.
"""

from __future__ import annotations

import enum
import json
import math
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from conch import keys
from conch.cron import store
from conch.cron.model import Job, RunRecord, RunStatus, Tick, tick_datetime, tick_of

if TYPE_CHECKING:
    from conch.client import Client
    from conch.schedule import Schedule

POLL = 1.0  # seconds between reads while waiting (a watch on the run record wakes us sooner)
REQUEST_TRIES = 5  # the definition changed between the read and the request this many times


class RequestRefused(enum.Enum):
    NO_JOB = "no job"
    SUSPENDED = "suspended"


class Outcome(enum.Enum):
    UNCLAIMED = "unclaimed"  # no daemon claimed it within --timeout (the request is gone)
    FINISHED = "finished"  # its record holds a result (ok, failed, skipped, missed)
    LOST = "lost"  # claimed, but its daemon's lease expired while it ran


@dataclass(frozen=True)
class Waited:
    outcome: Outcome
    record: RunRecord | None = None
    output: str = ""


def manual_tick(schedule: Schedule | None, now: Tick) -> Tick:
    """The tick of a manual run requested at `now`: `now`, or a microsecond later while that
    is one of the schedule's ticks (pure)."""
    tick = now
    while schedule is not None and schedule.next_after(tick_datetime(tick - 1)) == (
        tick_datetime(tick)
    ):
        tick += 1
    return tick


def request(client: Client, prefix: str, name: str, timeout: float) -> Tick | RequestRefused:
    """Write the request of a manual run of NAME, expiring after `timeout` unclaimed: its
    tick. Raises ValueError for a damaged definition, EtcdError."""
    from conch.holder import rfc3339
    from conch.schedule import Schedule, ScheduleError

    key = keys.cron_job_key(prefix, name)
    for _ in range(REQUEST_TRIES):
        kv, _rev = client.get(key)
        if kv is None:
            return RequestRefused.NO_JOB
        job = Job.from_json(name, kv.value)
        if job.suspended:
            return RequestRefused.SUSPENDED
        try:
            schedule: Schedule | None = Schedule.parse(job.schedule, job.tz, name)
        except (ScheduleError, ValueError, OverflowError):
            schedule = None  # no daemon schedules it: nor claims the request
        tick = manual_tick(schedule, tick_of(datetime.now(UTC)))
        lease, _ttl = client.lease_grant(max(1, math.ceil(timeout)))
        value = json.dumps(
            {"requested": rfc3339(time.time()), "host": socket.gethostname()},
            separators=(",", ":"),
        ).encode()
        if store.request_run(client, prefix, name, kv.mod_revision, tick, lease, value):
            return tick
        client.lease_revoke(lease)
    raise ValueError(f"job {name!r} keeps changing: try again")


def wait(
    client: Client,
    prefix: str,
    name: str,
    tick: Tick,
    timeout: float,
    on_claimed: Callable[[RunRecord], None],
) -> Waited:
    """Follow the manual run of NAME at `tick` to its end: unclaimed after `timeout` seconds
    (the request is withdrawn then), finished, or lost. `on_claimed(record)` once a daemon
    claimed it. Raises EtcdError."""
    deadline = time.monotonic() + timeout
    watch = client.watch(keys.cron_run_key(prefix, name, tick))
    claimed = False
    try:
        while True:
            state = store.run_state(client, prefix, name, tick)
            rec = state.record
            if rec is None:
                if not state.requested:
                    return Waited(Outcome.UNCLAIMED)  # expired with its lease
                if time.monotonic() >= deadline and store.withdraw_request(
                    client, prefix, name, tick
                ):
                    return Waited(Outcome.UNCLAIMED)
            else:
                if not claimed:
                    claimed = True
                    on_claimed(rec)
                if rec.status != RunStatus.RUNNING:
                    return Waited(Outcome.FINISHED, rec, state.output)
                if not state.alive:
                    return Waited(Outcome.LOST, rec)
            wait_for = POLL if claimed else max(0.0, min(POLL, deadline - time.monotonic()))
            watch.get(wait_for)
    finally:
        watch.cancel(wait=False)


def withdraw(client: Client, prefix: str, name: str, tick: Tick) -> bool:
    """Take back a request nobody claimed yet (`cron run --wait` interrupted)."""
    return store.withdraw_request(client, prefix, name, tick)
