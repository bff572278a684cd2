"""What `conch cron ls`, `show` and `logs` print: the JSON documents (list_doc, run_doc,
show_doc, logs_doc) and the text forms (format_table, format_show, format_logs). Pure: no I/O;
what they show is read by conch.cron.store."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any

from conch.cron.model import (
    Labels,
    RunRecord,
    Tick,
    derive_status,
    format_tick,
    labels_match,
    tick_of,
)

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
        "attempt": rec.attempt,  # --retries: which attempt this record is (1-based)
        "attempts": rec.attempts,  # the earlier attempts, oldest first
        "manual": rec.manual,  # a `cron run`
        "count": rec.count,  # the ticks it stands for: a `missed` gap's, from `tick` on
        "reason": rec.reason or None,  # why skipped, missed, or failed without running
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
            "history": job.history if job else None,
            "retries": job.retries if job else None,
            "retry_delay": job.retry_delay if job else None,
            "on": dict(job.on) if job else {},  # labels a daemon needs to claim it
            "starting_deadline": job.starting_deadline if job else None,
            "on_failure": job.on_failure if job else None,
        }


def format_table(doc: Iterable[dict[str, Any]], last: int = LAST_IN_TABLE) -> list[str]:
    """The `cron ls` table: a header and one row per job; LAST = the newest results first.
    Keeps only each job's row (the columns' widths need them all), not its runs."""
    import shlex

    header = ("NAME", "SCHEDULE", "TZ", "NEXT TICK", "LAST (NEWEST FIRST)", "COMMAND")
    rows = [header]
    for j in doc:
        results = " ".join(_status_cell(r) for r in j["runs"][:last]) or "-"
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


def _deadline_cell(doc: dict[str, Any]) -> str:
    d = doc.get("starting_deadline")
    return f", starting-deadline {d:g}s" if d else ""


def _status_cell(r: dict[str, Any]) -> str:
    """A run's status, `missed*N` for a gap of N ticks, `+manual` for a `cron run`."""
    cell = str(r["status"])
    if r.get("count", 1) > 1:
        cell += f"*{r['count']}"
    return cell + ("+manual" if r.get("manual") else "")


def _schedule_cell(j: dict[str, Any]) -> str:
    """The schedule as written, and what its H items resolve to (`H 3 * * * = 34 3 * * *`)."""
    spec, resolved = j["schedule"] or "?", j.get("resolved_schedule")
    return f"{spec} = {resolved}" if resolved and "H" in spec else spec


def show_doc(view: JobView, now: datetime) -> dict[str, Any]:
    """`cron show --json`: the job as `ls --json` gives it (every kept run, newest first) and
    its definition's stamps: when and where it was added, by which conch."""
    (doc,) = list_doc([view], now)
    job = view.job
    doc.update(
        created=job.created or None if job else None,
        added_on=job.host or None if job else None,
        conch_version=job.version or None if job else None,
    )
    return doc


def format_show(doc: dict[str, Any]) -> list[str]:
    import shlex

    def seconds(v: float | None) -> str:
        return "none" if v is None else f"{v:g}s"

    cmd = shlex.join(doc["cmd"]) if doc["cmd"] else "(damaged definition)"
    lines = [
        f"name:       {doc['name']}",
        f"schedule:   {_schedule_cell(doc)}" + (f" ({doc['tz']})" if doc["tz"] else ""),
        f"command:    {cmd}",
        f"timeout:    {seconds(doc['timeout'])}, kill-after {seconds(doc['kill_after'])}, "
        f"overlap {doc['overlap'] or '?'}, history {doc['history'] or '?'}" + _deadline_cell(doc),
        "next tick:  " + ("suspended" if doc["suspended"] else doc["next_tick"] or "-"),
    ]
    if doc.get("on_failure"):
        lines.append(f"on failure: {doc['on_failure']}")
    if doc["on"]:
        lines.append("on:         " + " ".join(f"{k}={v}" for k, v in doc["on"].items()))
    if doc.get("created"):
        lines.append(f"added:      {doc['created']} on {doc.get('added_on') or '?'}"
                     f" (conch {doc.get('conch_version') or '?'})")  # fmt: skip
    rows = [("TICK", "STATUS", "EXIT", "DURATION", "DAEMON", "HOST", "STARTED")]
    for r in doc["runs"]:
        rows.append((
            r["tick"], _status_cell(r), "-" if r["exit_code"] is None else str(r["exit_code"]),
            "-" if r["duration"] is None else f"{r['duration']:.3f}s", r["daemon"] or "-",
            r["host"] or "-", r["started"] or "-",
        ))  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines.append(f"runs ({len(doc['runs'])} kept, newest first):" if doc["runs"] else "runs: none")
    if doc["runs"]:
        lines += ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                  for r in rows]  # fmt: skip
    return lines


def logs_doc(view: JobView, ticks: Iterable[Tick]) -> list[dict[str, Any]]:
    """`cron logs --json`: the runs at `ticks` (newest first), each as in `ls --json` plus its
    stored output (the last 4 KiB of its stdout+stderr; "" while it runs)."""
    return [
        {**run_doc(t, view.runs[t], t in view.alive), "output": view.outputs.get(t, "")}
        for t in sorted(ticks, reverse=True)
    ]


def format_logs(name: str, doc: list[dict[str, Any]]) -> list[str]:
    """A header per run, then its output as stored."""
    out = []
    for r in doc:
        code = "" if r["exit_code"] is None else f", exit {r['exit_code']}"
        took = "" if r["duration"] is None else f", {r['duration']:.3f}s"
        where = f", daemon {r['daemon'] or '?'} on {r['host'] or '?'}"
        attempt = f", attempt {r['attempt']}" if r.get("attempt", 1) > 1 else ""
        unrun = r["status"] in ("skipped", "missed")
        why = f" ({r['reason']})" if r.get("reason") and unrun else ""
        out.append(f"== {name} tick {r['tick']}: {_status_cell(r)}{why}{code}{took}{attempt}"
                   f"{where} ==")  # fmt: skip
        out += r["output"].splitlines()
    return out


def unclaimable(doc: dict[str, Any], daemons: Iterable[Labels]) -> str | None:
    """A warning for a job added --on labels that no live daemon has (None: some has)."""
    wanted = tuple(sorted(doc.get("on", {}).items()))
    if not wanted or any(labels_match(wanted, labels) for labels in daemons):
        return None
    on = " ".join(f"{k}={v}" for k, v in wanted)
    return f"job {doc['name']!r} runs only on a conchd with --label {on}; none is live"
