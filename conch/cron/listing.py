"""What `conch cron ls` prints: the JSON document (list_doc, run_doc) and the table
(format_table). Pure: no I/O; the snapshot it lists is read by conch.cron.store."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any

from conch.cron.model import RunRecord, Tick, derive_status, format_tick, tick_of

if TYPE_CHECKING:
    from conch.cron.store import JobView

LAST_IN_TABLE = 5  # results shown per job in the `cron ls` table


def run_doc(tick: Tick, rec: RunRecord, alive: bool) -> dict[str, Any]:
    """One entry of `runs` in `cron ls --json` (SPEC's fields first; `rev`, `duration`,
    `daemon`, `timed_out` added)."""
    return {
        "tick": format_tick(tick),
        "status": derive_status(rec.status, alive),
        "exit_code": rec.exit_code,
        "host": rec.host or None,
        "started": rec.started,
        "finished": rec.finished,
        "duration": rec.duration,
        "rev": rec.rev or None,
        "daemon": rec.daemon or None,
        "timed_out": rec.timed_out,
    }


def list_doc(views: Iterable[JobView], now: datetime) -> Iterator[dict[str, Any]]:
    """`cron ls --json`: one entry per job, in the order given (store.scan_jobs: by name, as
    their keys sort); runs newest first. A generator: one job at a time."""
    from conch.schedule import Schedule, ScheduleError

    for v in views:
        job = v.job
        next_tick: str | None = None
        resolved = ""
        if job is not None:
            try:
                schedule = Schedule.parse(job.schedule, job.tz, job.name)
                resolved = schedule.resolved or job.schedule  # @every: as written
                if not job.suspended:
                    next_tick = format_tick(tick_of(schedule.next_after(now)))
            except (ScheduleError, ValueError, OverflowError):
                next_tick = None
        runs = [
            run_doc(tick, rec, tick in v.alive)
            for tick, rec in sorted(v.runs.items(), reverse=True)
        ]
        yield {
            "name": v.name,
            "schedule": job.schedule if job else "",
            "tz": job.tz if job else "",
            "cmd": list(job.cmd) if job else [],
            "next_tick": next_tick,
            "runs": runs,
            # the cron expression as evaluated (H resolved for this job, macros expanded)
            "resolved_schedule": resolved or None,
            "suspended": job.suspended if job else False,  # then next_tick is null
            "timeout": job.timeout if job else None,
            "kill_after": job.kill_after if job else None,
            "overlap": job.overlap if job else None,
        }


def format_table(doc: Iterable[dict[str, Any]], last: int = LAST_IN_TABLE) -> list[str]:
    """The `cron ls` table: a header and one row per job; LAST = the newest results first.
    Keeps only each job's row (the columns' widths need them all), not its runs."""
    import shlex

    header = ("NAME", "SCHEDULE", "TZ", "NEXT TICK", "LAST (NEWEST FIRST)", "COMMAND")
    rows = [header]
    for j in doc:
        results = " ".join(r["status"] for r in j["runs"][:last]) or "-"
        if len(j["runs"]) > last:
            results += " ..."
        rows.append(
            (
                j["name"],
                _schedule_cell(j),
                j["tz"] or "?",
                "suspended" if j.get("suspended") else j["next_tick"] or "-",
                results,
                shlex.join(j["cmd"]) if j["cmd"] else "(damaged definition)",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header) - 1)]
    return [
        "  ".join(c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1]
        for r in rows
    ]


def _schedule_cell(j: dict[str, Any]) -> str:
    """The schedule as written, and what its H items resolve to (`H 3 * * * = 34 3 * * *`)."""
    spec, resolved = j["schedule"] or "?", j.get("resolved_schedule")
    return f"{spec} = {resolved}" if resolved and "H" in spec else spec
