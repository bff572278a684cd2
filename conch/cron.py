"""cron: job definitions, tick claims, run records, history and listing (docs/cron.md).

Keys (conch.keys, all under the user's prefix):

    cron/jobs/{enc(NAME)}            job definition JSON, no lease
    cron/runs/{enc(NAME)}/{tick}     run record JSON, one per claimed tick, no lease (permanent)
    cron/alive/{enc(NAME)}/{tick}    alive marker of a running run, on the winner daemon's lease

A claim is one transaction: *if create_revision(run key) == 0 and mod_revision(job key) is
the definition the daemon scheduled from, then put the run record (status running) and the
alive marker*. Exactly one daemon can win a tick, and a run key is only deleted (history
pruning, `cron rm`) once no daemon can still claim its tick, so a tick never runs twice. The
winner rewrites the record with the result and deletes the marker in one transaction. The
status shown by `cron ls` is derived: a record still saying `running` whose marker is gone
(the winner's lease expired) is `lost`.

The pure parts (records, status derivation, history pruning choice, tick formatting) are at
the top; the etcd operations (all through conch.client) below.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from conch import __version__, keys
from conch.client import Client, Compare, KeyValue, Op

HISTORY = 20  # run records kept per job (the newest; alive runs are never pruned)
TAIL_BYTES = 4096  # output tail stored in a run record
# Largest job definition (JSON) `cron add` stores: well under etcd's default request limit
# (--max-request-bytes, 1.5 MiB), so a too-long command is a usage error, not an etcd refusal.
MAX_DEFINITION_BYTES = 1 << 20
# Largest --timeout / --kill-after a definition may hold (as conch.options.MAX_FLAG_SECONDS).
MAX_JOB_SECONDS = 365 * 86400.0
OVERLAP_CHOICES = ("forbid", "allow")
STORED_STATUSES = ("running", "ok", "failed", "skipped")
STATUSES = ("running", "ok", "failed", "lost", "skipped")


class JobExists(Exception):
    """`cron add` of a name that already has a definition (without --replace)."""


class DefinitionTooLarge(ValueError):
    """A job definition over MAX_DEFINITION_BYTES."""


# ---------------------------------------------------------------------------------------
# pure: ticks, jobs, run records, status, pruning
# ---------------------------------------------------------------------------------------


def tick_us(t: datetime) -> int:
    """An aware datetime as integer Unix microseconds (exact: no float rounding)."""
    delta = t.astimezone(UTC) - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def tick_datetime(us: int) -> datetime:
    from datetime import timedelta

    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=us)


def format_tick(us: int) -> str:
    """A tick as RFC 3339 UTC: whole seconds as `2026-01-02T03:04:05Z`, else with the fraction
    (`...05.5Z`). Used for CONCH_TICK and the `tick`/`next_tick` fields."""
    t = tick_datetime(us)
    out = t.strftime("%Y-%m-%dT%H:%M:%S")
    if t.microsecond:
        out += "." + f"{t.microsecond:06d}".rstrip("0")
    return out + "Z"


def _as_float(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    return float(v)


def _as_int(v: Any) -> int | None:
    if isinstance(v, bool) or not isinstance(v, int):
        return None
    return v


def _as_str(v: Any) -> str | None:
    return v if isinstance(v, str) else None


@dataclass(frozen=True)
class Job:
    name: str
    schedule: str
    tz: str
    cmd: tuple[str, ...]
    timeout: float | None = None  # seconds; None: no limit
    kill_after: float = 10.0
    overlap: str = "forbid"
    created: str = ""  # RFC 3339, when `cron add` wrote it
    host: str = ""  # where `cron add` ran
    version: str = ""  # conch version that wrote it

    def to_json(self) -> bytes:
        d = asdict(self)
        d["cmd"] = list(self.cmd)
        return json.dumps(d, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, name: str, raw: bytes) -> Job:
        """The definition stored under NAME's key. The key's NAME wins over the JSON's.
        Raises ValueError for a damaged or foreign value."""
        try:
            d = json.loads(raw.decode("utf-8"))
        except (ValueError, UnicodeDecodeError, RecursionError) as e:
            raise ValueError(f"job {name!r}: not a job definition ({e})") from None
        if not isinstance(d, dict):
            raise ValueError(f"job {name!r}: not a job definition")
        schedule, tz, cmd = d.get("schedule"), d.get("tz", "UTC"), d.get("cmd")
        if not isinstance(schedule, str) or not isinstance(tz, str):
            raise ValueError(f"job {name!r}: no schedule")
        if not isinstance(cmd, list) or not cmd or not all(isinstance(a, str) for a in cmd):
            raise ValueError(f"job {name!r}: no command")
        timeout = _as_float(d.get("timeout"))
        kill_after = _as_float(d.get("kill_after"))
        for what, v in (("timeout", timeout), ("kill_after", kill_after)):
            if v is not None and not 0 <= v <= MAX_JOB_SECONDS:
                raise ValueError(f"job {name!r}: {what} {v!r} out of range")
        overlap = d.get("overlap", "forbid")
        if overlap not in OVERLAP_CHOICES:
            raise ValueError(f"job {name!r}: bad overlap {overlap!r}")
        return cls(
            name=name,
            schedule=schedule,
            tz=tz,
            cmd=tuple(cmd),
            timeout=timeout if timeout is not None and timeout > 0 else None,
            kill_after=kill_after if kill_after is not None and kill_after >= 0 else 10.0,
            overlap=overlap,
            created=_as_str(d.get("created")) or "",
            host=_as_str(d.get("host")) or "",
            version=_as_str(d.get("version")) or "",
        )


@dataclass
class RunRecord:
    """The value of a run key. `status` is what the winner wrote (running, ok, failed,
    skipped); what `cron ls` shows comes from :func:`derive_status`."""

    tick: str  # RFC 3339 (format_tick)
    status: str
    daemon: str  # the winner's --id
    host: str  # the winner's host name
    claim: str  # a random id of this claim attempt: recognises our own claim after a retry
    claimed: str = ""  # RFC 3339: when the claim was made
    started: str | None = None  # RFC 3339: when the child was spawned (running: the claim)
    finished: str | None = None
    duration: float | None = None  # seconds from spawn to exit
    exit_code: int | None = None  # the child's code; 128+S if killed by signal S
    rev: int = 0  # the claim revision (CONCH_REV), set in the result
    timed_out: bool = False
    reason: str = ""  # why skipped / failed without running / interrupted
    output: str = ""  # the tail of the child's stdout+stderr

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> RunRecord:
        """Tolerant: a damaged value gives a record with status "" (shown as lost)."""
        try:
            d = json.loads(raw.decode("utf-8"))
            if not isinstance(d, dict):
                raise ValueError
        except (ValueError, UnicodeDecodeError, RecursionError):
            d = {}
        status = d.get("status")
        return cls(
            tick=_as_str(d.get("tick")) or "",
            status=status if status in STORED_STATUSES else "",
            daemon=_as_str(d.get("daemon")) or "",
            host=_as_str(d.get("host")) or "",
            claim=_as_str(d.get("claim")) or "",
            claimed=_as_str(d.get("claimed")) or "",
            started=_as_str(d.get("started")),
            finished=_as_str(d.get("finished")),
            duration=_as_float(d.get("duration")),
            exit_code=_as_int(d.get("exit_code")),
            rev=_as_int(d.get("rev")) or 0,
            timed_out=d.get("timed_out") is True,
            reason=_as_str(d.get("reason")) or "",
            output=_as_str(d.get("output")) or "",
        )


def derive_status(stored: str, alive: bool) -> str:
    """What `cron ls` shows for a run: a record that still says running is `running` while its
    alive marker (on the winner's lease) exists, and `lost` once it is gone — the winner died
    or could not keep its lease. Results are shown as written. A damaged record is `lost`."""
    if stored == "running":
        return "running" if alive else "lost"
    if stored in ("ok", "failed", "skipped"):
        return stored
    return "lost"


def result_status(exit_code: int, timed_out: bool = False) -> str:
    """A finished run: `ok` for exit code 0, `failed` for anything else, and for a run that
    passed its --timeout whatever its code (it was cut short)."""
    return "ok" if exit_code == 0 and not timed_out else "failed"


def prune_choice(ticks: Sequence[int], alive: set[int] | frozenset[int], keep: int) -> list[int]:
    """The ticks whose run records to delete: all but the newest `keep`, oldest first, never
    one whose run is alive (a long run outlasting `keep` newer ticks keeps its record)."""
    newest_first = sorted(set(ticks), reverse=True)
    return sorted(t for t in newest_first[max(keep, 0) :] if t not in alive)


def run_doc(us: int, rec: RunRecord, alive: bool) -> dict[str, Any]:
    """One entry of `runs` in `cron ls --json` (SPEC's fields first; `rev`, `duration`,
    `daemon`, `timed_out` added)."""
    return {
        "tick": format_tick(us),
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


LAST_IN_TABLE = 5  # results shown per job in the `cron ls` table


def format_table(doc: list[dict[str, Any]], last: int = LAST_IN_TABLE) -> list[str]:
    """The `cron ls` table: a header and one row per job; LAST = the newest results first."""
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
                j["schedule"] or "?",
                j["tz"] or "?",
                j["next_tick"] or "-",
                results,
                shlex.join(j["cmd"]) if j["cmd"] else "(damaged definition)",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header) - 1)]
    return [
        "  ".join(c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1]
        for r in rows
    ]


# ---------------------------------------------------------------------------------------
# etcd: definitions and listing (conch cron add / ls / rm)
# ---------------------------------------------------------------------------------------


def check_definition_size(job: Job) -> None:
    """Raise DefinitionTooLarge if the definition is over MAX_DEFINITION_BYTES."""
    n = len(job.to_json())
    if n > MAX_DEFINITION_BYTES:
        raise DefinitionTooLarge(
            f"the job definition is {n} bytes; at most {MAX_DEFINITION_BYTES} (etcd refuses "
            "large requests): put a long command in a script"
        )


def add_job(client: Client, prefix: str, job: Job, replace: bool, now_us: int) -> int:
    """Store the definition. Without `replace`, only if NAME has none (else JobExists).
    A new job's low-water mark becomes `now_us` (the adder's clock) — or stays where it is if
    a mark left by a removed job of the same name is ahead of that (ticks a daemon with a fast
    clock already ran): no daemon, whatever its clock, claims a tick from before the job
    existed or one that already ran. Safe to retry: a retried add that finds exactly what it
    wrote succeeded. Returns the revision written."""
    key, mark = keys.cron_job_key(prefix, job.name), keys.cron_mark_key(prefix, job.name)
    value = job.to_json()
    now_token = keys.tick_token(now_us).encode()
    while True:
        old_mark, _ = client.get(mark)
        mark_value = max(now_token, old_mark.value) if old_mark is not None else now_token
        mark_guard = Compare(mark, "mod", "==", old_mark.mod_revision if old_mark else 0)
        res = client.txn(
            [Compare(key, "create", "==", 0), mark_guard],
            [Op("put", key, value), Op("put", mark, mark_value)],
            [Op("get", key)],
        )
        if res.succeeded:
            return res.revision
        got = res.responses[0] or []
        if not got:
            continue  # the mark moved meanwhile (a daemon claimed): read it again
        if replace:
            return client.put(key, value)
        if got[0].value == value:  # our own write, whose answer was lost and retried
            return got[0].mod_revision
        raise JobExists(job.name)


@dataclass
class Snapshot:
    """Every job definition, run record and alive marker under a prefix, at one revision."""

    revision: int
    jobs: dict[str, tuple[Job | None, KeyValue]] = field(default_factory=dict)
    runs: dict[str, dict[int, KeyValue]] = field(default_factory=dict)
    alive: dict[str, set[int]] = field(default_factory=dict)


def snapshot(client: Client, prefix: str, name: str | None = None) -> Snapshot:
    """One read transaction (one revision), so a run that finishes while we read can never be
    seen as a `running` record without its marker (which would look `lost`)."""
    if name is None:
        jobs_key = keys.cron_jobs_dir(prefix)
        jobs_end: bytes | None = keys.prefix_range_end(jobs_key)
        runs_key, alive_key = keys.cron_runs_root(prefix), keys.cron_alive_root(prefix)
    else:
        jobs_key, jobs_end = keys.cron_job_key(prefix, name), None
        runs_key, alive_key = keys.cron_runs_dir(prefix, name), keys.cron_alive_dir(prefix, name)
    res = client.txn(
        [],
        [
            Op("get", jobs_key, range_end=jobs_end),
            Op("get", runs_key, range_end=keys.prefix_range_end(runs_key)),
            Op("get", alive_key, range_end=keys.prefix_range_end(alive_key)),
        ],
    )
    job_kvs, run_kvs, alive_kvs = (r or [] for r in res.responses)
    snap = Snapshot(revision=res.revision)
    for kv in job_kvs:
        try:
            jname = keys.cron_job_name(prefix, kv.key)
        except ValueError:
            continue
        try:
            job: Job | None = Job.from_json(jname, kv.value)
        except ValueError:
            job = None
        snap.jobs[jname] = (job, kv)
    runs_root, alive_root = keys.cron_runs_root(prefix), keys.cron_alive_root(prefix)
    for kv in run_kvs:
        try:
            rname, us = keys.cron_split_tick_key(runs_root, kv.key)
        except ValueError:
            continue
        snap.runs.setdefault(rname, {})[us] = kv
    for kv in alive_kvs:
        try:
            aname, us = keys.cron_split_tick_key(alive_root, kv.key)
        except ValueError:
            continue
        snap.alive.setdefault(aname, set()).add(us)
    return snap


def list_doc(snap: Snapshot, now: datetime) -> list[dict[str, Any]]:
    """`cron ls --json`: one entry per job, by name; runs newest first."""
    from conch.schedule import Schedule, ScheduleError

    out: list[dict[str, Any]] = []
    for name in sorted(snap.jobs):
        job, _kv = snap.jobs[name]
        next_tick: str | None = None
        if job is not None:
            try:
                nt = Schedule.parse(job.schedule, job.tz).next_after(now)
                next_tick = format_tick(tick_us(nt))
            except (ScheduleError, ValueError, OverflowError):
                next_tick = None
        alive = snap.alive.get(name, set())
        runs = [
            run_doc(us, RunRecord.from_json(kv.value), us in alive)
            for us, kv in sorted(snap.runs.get(name, {}).items(), reverse=True)
        ]
        out.append(
            {
                "name": name,
                "schedule": job.schedule if job else "",
                "tz": job.tz if job else "",
                "cmd": list(job.cmd) if job else [],
                "next_tick": next_tick,
                "runs": runs,
                "timeout": job.timeout if job else None,
                "kill_after": job.kill_after if job else None,
                "overlap": job.overlap if job else None,
            }
        )
    return out


def remove_job(client: Client, prefix: str, name: str, now_us: int) -> bool:
    """Delete NAME's definition (False if it had none), then its history except the records
    of runs still alive: those finish, and their winner writes the result (docs/cron.md).
    The job's low-water mark goes too — unless it is ahead of `now_us` (a daemon with a fast
    clock ran ticks early): then it stays, so a job added again under the same name does not
    run those ticks a second time. Safe to retry: the delete is guarded by the definition it
    read, and a definition gone when the guard fails was deleted (by this call's own retried
    request, or by another rm at the same moment): done either way."""
    key, mark = keys.cron_job_key(prefix, name), keys.cron_mark_key(prefix, name)
    now_token = keys.tick_token(now_us).encode()
    existed = False
    while True:
        kv, _ = client.get(key)
        if kv is None:
            break
        res = client.txn(
            [Compare(key, "mod", "==", kv.mod_revision)],
            [Op("delete", key)],
            [Op("get", key)],
        )
        existed = True
        if res.succeeded or not (res.responses[0] or []):
            break
        # changed meanwhile (cron add --replace): delete what is there now
    # the mark, unless it is ahead of the clock (guarded: a re-add may have set it meanwhile)
    mark_kv, _ = client.get(mark)
    if mark_kv is not None and mark_kv.value <= now_token:
        client.txn(
            [Compare(key, "create", "==", 0), Compare(mark, "mod", "==", mark_kv.mod_revision)],
            [Op("delete", mark)],
        )
    prune_history(client, prefix, name, keep=0)
    return existed


def prune_history(client: Client, prefix: str, name: str, keep: int = HISTORY) -> int:
    """Delete NAME's run records beyond the newest `keep` (never an alive run's). Each delete is
    guarded by the record's mod revision, so a record rewritten meanwhile (a result) stays.
    Returns how many were deleted."""
    runs_dir, alive_dir = keys.cron_runs_dir(prefix, name), keys.cron_alive_dir(prefix, name)
    res = client.txn(
        [],
        [
            Op("get", runs_dir, range_end=keys.prefix_range_end(runs_dir)),
            Op("get", alive_dir, range_end=keys.prefix_range_end(alive_dir)),
        ],
    )
    run_kvs, alive_kvs = (r or [] for r in res.responses)
    by_tick: dict[int, KeyValue] = {}
    for kv in run_kvs:
        try:
            by_tick[keys.parse_tick_token(kv.key[len(runs_dir) :].decode("ascii"))] = kv
        except (ValueError, UnicodeDecodeError):
            continue
    alive: set[int] = set()
    for kv in alive_kvs:
        try:
            alive.add(keys.parse_tick_token(kv.key[len(alive_dir) :].decode("ascii")))
        except (ValueError, UnicodeDecodeError):
            continue
    deleted = 0
    for t in prune_choice(list(by_tick), alive, keep):
        kv = by_tick[t]
        # one guarded delete per record: a record rewritten meanwhile (a result) stays
        r = client.txn([Compare(kv.key, "mod", "==", kv.mod_revision)], [Op("delete", kv.key)])
        deleted += r.succeeded
    return deleted


# ---------------------------------------------------------------------------------------
# etcd: the daemon's side (claim, re-attach, result)
# ---------------------------------------------------------------------------------------


class ClaimOutcome(enum.Enum):
    WON = "won"  # this daemon claimed the tick: run it
    SKIPPED = "skipped"  # claimed, recorded as skipped (--overlap forbid, previous run alive)
    TAKEN = "taken"  # another daemon claimed it
    BEHIND = "behind"  # a tick at or before the job's low-water mark: never run (it was, or
    #                    a newer tick was already claimed, or it predates the definition)
    CHANGED = "changed"  # the definition changed or was removed meanwhile


@dataclass
class Claim:
    outcome: ClaimOutcome
    revision: int = 0  # the claim revision: CONCH_REV, and the running record's mod revision
    record: RunRecord | None = None
    mark: int | None = None  # BEHIND: the job's low-water mark (a tick, µs)


def previous_alive(
    client: Client, prefix: str, name: str, us: int, timeout: float | None = None
) -> list[int]:
    """Ticks of NAME's runs that are alive (markers on some daemon's lease), other than `us`."""
    d = keys.cron_alive_dir(prefix, name)
    kvs, _ = client.get_range(d, keys.prefix_range_end(d), timeout=timeout)
    out = []
    for kv in kvs:
        try:
            t = keys.parse_tick_token(kv.key[len(d) :].decode("ascii"))
        except (ValueError, UnicodeDecodeError):
            continue
        if t != us:
            out.append(t)
    return out


def claim(
    client: Client,
    prefix: str,
    job: Job,
    job_rev: int,
    us: int,
    *,
    daemon: str,
    claim_id: str,
    host: str,
    lease: int,
    now: str,
    timeout: float | None = None,
) -> Claim:
    """Try to claim tick `us` of `job` (defined at mod revision `job_rev`).

    One transaction: *if the run key is absent, the definition is the one scheduled from, and
    the tick is above the job's low-water mark, then put the run record, the alive marker and
    the new mark*. The mark makes "at most once per tick" independent of clocks and of history
    pruning: a daemon whose clock lags cannot claim a tick whose record was already pruned,
    nor one from before a `cron rm` + `cron add`.

    With overlap forbid, a tick whose previous run of the job is still alive is claimed as
    SKIPPED (the record says so; nothing runs, no marker). The check is a read just before the
    claim. `claim_id` identifies this daemon process: a claim whose answer was lost and that is
    retried — by the client or by the daemon, even much later — finds its own record and is
    WON (or SKIPPED, as recorded), never TAKEN."""
    run_key = keys.cron_run_key(prefix, job.name, us)
    alive_key = keys.cron_alive_key(prefix, job.name, us)
    job_key = keys.cron_job_key(prefix, job.name)
    mark_key = keys.cron_mark_key(prefix, job.name)
    token = keys.tick_token(us).encode()
    busy: list[int] = []
    if job.overlap == "forbid":
        busy = previous_alive(client, prefix, job.name, us, timeout=timeout)
    rec = RunRecord(
        tick=format_tick(us),
        status="skipped" if busy else "running",
        daemon=daemon,
        host=host,
        claim=claim_id,
        claimed=now,
        started=None if busy else now,
        reason=(f"previous run (tick {format_tick(max(busy))}) still running" if busy else ""),
    )
    ops = [Op("put", run_key, rec.to_json()), Op("put", mark_key, token)]
    if not busy:
        ops.append(Op("put", alive_key, daemon.encode(), lease=lease))
    for _attempt in range(2):
        res = client.txn(
            [
                Compare(run_key, "create", "==", 0),
                Compare(job_key, "mod", "==", job_rev),
                Compare(mark_key, "value", "<", token),
            ],
            ops,
            [Op("get", run_key), Op("get", job_key), Op("get", mark_key)],
            timeout=timeout,
        )
        if res.succeeded:
            return Claim(ClaimOutcome.SKIPPED if busy else ClaimOutcome.WON, res.revision, rec)
        run_kvs, job_kvs, mark_kvs = (r or [] for r in res.responses)
        if run_kvs:
            kv = run_kvs[0]
            stored = RunRecord.from_json(kv.value)
            if stored.claim == claim_id and kv.version == 1:
                # ours, as claimed and never touched since: the answer was lost and the claim
                # retried. A record rewritten since (a result) is a tick this daemon already
                # ran — its schedule came back to it (the definition was replaced, its clock
                # stepped back): never again.
                mine = ClaimOutcome.SKIPPED if stored.status == "skipped" else ClaimOutcome.WON
                return Claim(mine, kv.create_revision, stored)
            return Claim(ClaimOutcome.TAKEN, kv.create_revision)
        if not job_kvs or job_kvs[0].mod_revision != job_rev:
            return Claim(ClaimOutcome.CHANGED)
        if mark_kvs:
            return Claim(ClaimOutcome.BEHIND, mark=_mark_tick(mark_kvs[0].value))
        # a definition without a mark (written by hand or by an older conch): give it one
        # that lets every tick through, then claim again
        client.txn(
            [Compare(mark_key, "create", "==", 0), Compare(job_key, "mod", "==", job_rev)],
            [Op("put", mark_key, b"")],
            timeout=timeout,
        )
    return Claim(ClaimOutcome.CHANGED)


def own_claim(
    client: Client, prefix: str, name: str, us: int, claim_id: str, timeout: float | None = None
) -> Claim | None:
    """The claim of tick `us` made by the daemon process `claim_id`, if one committed (its
    answer was lost and the daemon moved on): WON or SKIPPED as recorded, or None."""
    kv, _ = client.get(keys.cron_run_key(prefix, name, us), timeout=timeout)
    if kv is None:
        return None
    stored = RunRecord.from_json(kv.value)
    if stored.claim != claim_id or kv.version != 1:  # not ours, or already run
        return None
    mine = ClaimOutcome.SKIPPED if stored.status == "skipped" else ClaimOutcome.WON
    return Claim(mine, kv.create_revision, stored)


def _mark_tick(value: bytes) -> int | None:
    try:
        return keys.parse_tick_token(value.decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        return None


def reattach(
    client: Client,
    prefix: str,
    name: str,
    us: int,
    record_rev: int,
    daemon: str,
    lease: int,
    timeout: float | None = None,
) -> bool:
    """After the daemon got a new lease: put the alive marker of a run that is still running
    back, on the new lease — only if its record is still the running record we wrote."""
    run_key = keys.cron_run_key(prefix, name, us)
    alive_key = keys.cron_alive_key(prefix, name, us)
    res = client.txn(
        [Compare(run_key, "mod", "==", record_rev)],
        [Op("put", alive_key, daemon.encode(), lease=lease)],
        timeout=timeout,
    )
    return res.succeeded


def finish(
    client: Client, prefix: str, name: str, us: int, rec: RunRecord, timeout: float | None = None
) -> int:
    """Write the result and delete the alive marker, atomically. Returns the revision."""
    run_key = keys.cron_run_key(prefix, name, us)
    alive_key = keys.cron_alive_key(prefix, name, us)
    res = client.txn(
        [], [Op("put", run_key, rec.to_json()), Op("delete", alive_key)], timeout=timeout
    )
    return res.revision


def host_record(cmd: Sequence[str], name: str, schedule: str, tz: str, **kw: Any) -> Job:
    """A Job as `cron add` stores it (stamped with host, time and version)."""
    import socket
    import time

    from conch.holder import rfc3339

    return Job(
        name=name,
        schedule=schedule,
        tz=tz,
        cmd=tuple(cmd),
        created=rfc3339(time.time()),
        host=socket.gethostname(),
        version=__version__,
        **kw,
    )
