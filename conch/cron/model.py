"""The cron model. Pure: no I/O, no clock.

Job definitions and run records (their JSON), the status a run shows (derive_status,
result_status), which records history pruning deletes (prune_choice), the limits, and ticks:
a tick is an instant as integer Unix microseconds (`Tick`), exact where a float would round.
"""

from __future__ import annotations

import enum
import functools
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

Tick = int  # an instant as integer Unix microseconds (keys.tick_token is its key form)

HISTORY = 20  # run records kept per job by default (the newest; alive runs are never pruned)
MAX_RETRIES = 100  # the most `cron add --retries` takes
RETRY_DELAY = 10.0  # `--retry-delay` by default (SPEC)
MAX_RETRY_WAIT = 3600.0  # a doubled retry delay stops growing here
MISSED_RECORDS = 100  # a gap of missed ticks gets a record each up to this (and --history)
MISSED_COUNT_CAP = 100_000  # ticks of a gap counted at most (cron expressions: ~69 days)
MAX_HISTORY = 1000  # the most `cron add --history` takes (~350 bytes a record, + 4 KiB output)
TAIL_BYTES = 4096  # output tail stored in a run record
# Largest job definition (JSON) `cron add` stores: well under etcd's default request limit
# (--max-request-bytes, 1.5 MiB), so a too-long command is a usage error, not an etcd refusal.
MAX_DEFINITION_BYTES = 1 << 20
# Largest --timeout / --kill-after a definition may hold (as conch.options.MAX_FLAG_SECONDS).
MAX_JOB_SECONDS = 365 * 86400.0
OVERLAP_CHOICES = ("forbid", "allow")


class RunStatus(enum.StrEnum):
    """A run's status: what a record says (RUNNING, OK, FAILED, SKIPPED, MISSED) or what
    `cron ls` shows (also LOST). The values are the JSON strings."""

    RUNNING = "running"
    OK = "ok"
    FAILED = "failed"
    SKIPPED = "skipped"
    MISSED = "missed"  # never run: not started within --starting-deadline, or nobody claimed it
    LOST = "lost"


# a tuple, not a set: a damaged record's status may be a JSON list or object (unhashable)
STORED_STATUSES = (
    RunStatus.RUNNING, RunStatus.OK, RunStatus.FAILED, RunStatus.SKIPPED, RunStatus.MISSED,
)  # fmt: skip


class DefinitionTooLarge(ValueError):
    """A job definition over MAX_DEFINITION_BYTES."""


# -- ticks --------------------------------------------------------------------------------------

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def tick_of(t: datetime) -> Tick:
    """An aware datetime as a tick (exact: no float rounding)."""
    delta = t.astimezone(UTC) - _EPOCH
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def tick_datetime(tick: Tick) -> datetime:
    """A tick as an aware UTC datetime (inverse of tick_of)."""
    return _EPOCH + timedelta(microseconds=tick)


@functools.lru_cache(maxsize=4096)  # many jobs share a tick; conchd formats each many times
def format_tick(tick: Tick) -> str:
    """A tick as RFC 3339 UTC: whole seconds as `2026-01-02T03:04:05Z`, else with the fraction
    (`...05.5Z`). Used for CONCH_TICK and the `tick`/`next_tick` fields."""
    t = tick_datetime(tick)
    out = t.strftime("%Y-%m-%dT%H:%M:%S")
    if t.microsecond:
        out += "." + f"{t.microsecond:06d}".rstrip("0")
    return out + "Z"


# -- job definitions and run records ------------------------------------------------------------


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


# labels: (KEY, VALUE) pairs, sorted by key — a job's `--on`, a daemon's `--label`
Labels = tuple[tuple[str, str], ...]
MAX_LABEL_CHARS = 256


def parse_label(text: str, flag: str) -> tuple[str, str]:
    """KEY=VALUE (KEY non-empty, neither with a control character). Raises ValueError with a
    message naming `flag`."""
    key, eq, value = text.partition("=")
    if not eq or not key:
        raise ValueError(f"{flag}: use KEY=VALUE, not {text!r}")
    if len(key) > MAX_LABEL_CHARS or len(value) > MAX_LABEL_CHARS:
        raise ValueError(f"{flag}: KEY and VALUE of at most {MAX_LABEL_CHARS} characters each")
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise ValueError(f"{flag}: {text!r} contains a control character")
    return key, value


def labels_of(texts: Sequence[str], flag: str) -> Labels:
    """Parsed and sorted; a key given twice must have one value."""
    out: dict[str, str] = {}
    for t in texts:
        k, v = parse_label(t, flag)
        if out.get(k, v) != v:
            raise ValueError(f"{flag}: {k} given two values ({out[k]!r}, {v!r})")
        out[k] = v
    return tuple(sorted(out.items()))


def labels_match(wanted: Labels, labels: Labels | dict[str, str]) -> bool:
    """Whether a daemon with `labels` may claim a job that wants `wanted` (--on): every pair."""
    have = dict(labels)
    return all(have.get(k) == v for k, v in wanted)


def beat_labels(value: bytes) -> Labels:
    """The labels a conchd heartbeat value gives (none from a damaged beat or an older one)."""
    try:
        d = json.loads(value)
    except (ValueError, UnicodeDecodeError):
        return ()
    labels = d.get("labels") if isinstance(d, dict) else None
    if not isinstance(labels, dict):
        return ()
    return tuple(sorted((k, v) for k, v in labels.items() if isinstance(v, str)))


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
    suspended: bool = False  # `cron suspend`: never claimed until `cron resume`
    history: int = HISTORY  # results kept (--history)
    on: Labels = ()  # only daemons with these labels claim it (--on KEY=VALUE)
    retries: int = 0  # a failed or timed-out run is run again this many more times at most
    retry_delay: float = RETRY_DELAY  # before the first retry; doubling after each
    # a tick not started within this many seconds of its time is recorded missed, not run
    starting_deadline: float | None = None
    # when `cron add` (or --replace, or `cron resume`) wrote it: the tick its low-water mark
    # was set to; a daemon seeing it within a moment schedules from there (conch.cron.scheduler)
    since: Tick = 0
    on_failure: str | None = None  # --on-failure CMD: run with /bin/sh -c (conch.cron.hooks)

    def to_json(self) -> bytes:
        d = asdict(self)
        d["cmd"] = list(self.cmd)
        d["on"] = dict(self.on)
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
        on = d.get("on") or {}
        if not isinstance(on, dict) or not all(
            isinstance(k, str) and k and isinstance(v, str) for k, v in on.items()
        ):
            raise ValueError(f"job {name!r}: bad labels (on) {on!r}")
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
            suspended=d.get("suspended") is True,
            history=h if (h := _as_int(d.get("history"))) and 1 <= h <= MAX_HISTORY else HISTORY,
            on=tuple(sorted(on.items())),
            retries=r if (r := _as_int(d.get("retries"))) and 0 < r <= MAX_RETRIES else 0,
            retry_delay=rd
            if (rd := _as_float(d.get("retry_delay"))) is not None and 0 <= rd <= MAX_JOB_SECONDS
            else RETRY_DELAY,
            starting_deadline=sd
            if (sd := _as_float(d.get("starting_deadline"))) is not None
            and 0 < sd <= MAX_JOB_SECONDS
            else None,
            since=t if (t := _as_int(d.get("since"))) and t > 0 else 0,
            on_failure=_as_str(d.get("on_failure")) or None,
        )


def check_definition_size(job: Job) -> None:
    """Raise DefinitionTooLarge if the definition is over MAX_DEFINITION_BYTES."""
    n = len(job.to_json())
    if n > MAX_DEFINITION_BYTES:
        raise DefinitionTooLarge(
            f"the job definition is {n} bytes; at most {MAX_DEFINITION_BYTES} (etcd refuses "
            "large requests): put a long command in a script"
        )


@dataclass
class RunRecord:
    """The value of a run key. `status` is what the winner wrote (running, ok, failed,
    skipped; "" for a damaged record); what `cron ls` shows comes from :func:`derive_status`."""

    tick: str  # RFC 3339 (format_tick)
    status: RunStatus | Literal[""]
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
    attempt: int = 1  # which attempt this is (--retries; CONCH_ATTEMPT)
    attempts: list[dict[str, Any]] = field(default_factory=list)  # the earlier ones, oldest first
    manual: bool = False  # a `cron run`: its tick is the request's time, not a schedule's
    count: int = 1  # the ticks a record stands for: a `missed` gap's, from `tick` on
    # the tail of the child's stdout+stderr: stored under a key of its own (conch.keys
    # .cron_output_key), not in the record, so that listing runs never reads outputs; a record
    # written by an older conch may still hold it (read back by store.job_view)
    output: str = ""

    def to_json(self) -> bytes:
        """The stored record: every field but `output`."""
        d = {f: getattr(self, f) for f in _STORED_FIELDS}  # not asdict: it deep-copies, slowly
        return json.dumps(d, separators=(",", ":")).encode()

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
            status=RunStatus(status) if status in STORED_STATUSES else "",
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
            attempt=a if (a := _as_int(d.get("attempt"))) and a > 0 else 1,
            attempts=[x for x in d.get("attempts") or [] if isinstance(x, dict)]
            if isinstance(d.get("attempts"), list)
            else [],
            manual=d.get("manual") is True,
            count=c if (c := _as_int(d.get("count"))) and c > 0 else 1,
            output=_as_str(d.get("output")) or "",
        )

    def summary(self) -> dict[str, Any]:
        """This attempt, as a later attempt's record keeps it in `attempts`."""
        return {
            "attempt": self.attempt, "started": self.started, "finished": self.finished,
            "duration": self.duration, "exit_code": self.exit_code,
            "timed_out": self.timed_out, "reason": self.reason,
        }  # fmt: skip


# -- status and history -------------------------------------------------------------------------


def derive_status(stored: str, alive: bool) -> RunStatus:
    """What `cron ls` shows for a run: a record that still says running is `running` while its
    alive marker (on the winner's lease) exists, and `lost` once it is gone — the winner died
    or could not keep its lease. Results are shown as written. A damaged record is `lost`."""
    if stored == RunStatus.RUNNING:
        return RunStatus.RUNNING if alive else RunStatus.LOST
    if stored in STORED_STATUSES:
        return RunStatus(stored)
    return RunStatus.LOST


def result_status(exit_code: int, timed_out: bool = False) -> RunStatus:
    """A finished run: `ok` for exit code 0, `failed` for anything else, and for a run that
    passed its --timeout whatever its code (it was cut short)."""
    return RunStatus.OK if exit_code == 0 and not timed_out else RunStatus.FAILED


def prune_choice(
    ticks: Sequence[Tick], alive: set[Tick] | frozenset[Tick], keep: int
) -> list[Tick]:
    """The ticks whose run records to delete: all but the newest `keep`, oldest first, never
    one whose run is alive (a long run outlasting `keep` newer ticks keeps its record)."""
    newest_first = sorted(set(ticks), reverse=True)
    return sorted(t for t in newest_first[max(keep, 0) :] if t not in alive)


# the fields of a stored run record, in order (every field but `output`)
_STORED_FIELDS = tuple(f.name for f in fields(RunRecord) if f.name != "output")
