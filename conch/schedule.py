"""Cron schedules for `conch cron`: parse a SPEC and compute its ticks. Pure: no I/O, no clock.

A SPEC is one of

- a 5-field cron expression ``minute hour day-of-month month day-of-week``. Each field is a
  comma-separated list of items; an item is ``*``, a value ``N``, a range ``A-B`` (A <= B), each
  optionally followed by a step ``/S`` (S >= 1); ``N/S`` means ``N-<max>/S`` (day-of-week:
  ``N-6/S``, and ``7/S`` is Sunday). Month and day-of-week also take three-letter English names
  (``jan``, ``mon``; any case); day-of-week 0 and 7 are both Sunday. As in Vixie cron and
  cronie, when the day-of-month field and the day-of-week field both do *not* start with ``*``
  a day matches if *either* matches; otherwise it must match both. ``H`` items, as in Jenkins,
  stand for values derived from a stable hash of the job's name (:func:`resolve_h`), so many
  jobs written alike spread out: ``H`` one value of the field (day-of-month: 1-28, so it fires
  every month; day-of-week: 0-6), ``H(A-B)`` one value in A-B, ``H/S`` and ``H(A-B)/S`` every
  S-th value from an offset below S. Other extensions (``L``, ``W``, ``#``, ``?``, a seconds or
  a year field) are rejected, and so is an expression that can never fire (``0 0 31 2 *``);
- a macro: ``@yearly`` / ``@annually`` (``0 0 1 1 *``), ``@monthly`` (``0 0 1 * *``),
  ``@weekly`` (``0 0 * * 0``), ``@daily`` / ``@midnight`` (``0 0 * * *``), ``@hourly``
  (``0 * * * *``); ``@reboot`` is rejected;
- ``@every D`` with D a conch duration (:func:`conch.durations.parse_duration`) of at least 1 s
  (kept to the microsecond). Its ticks are the instants ``k * D`` after the Unix epoch, for
  integer k, whatever the zone, so every daemon computes the same ticks.

Cron expressions are evaluated against the wall clock of the schedule's IANA zone. Daylight
saving time (and any other change of a zone's UTC offset) is handled the way cronie does:

- A job is **fixed-time** when neither its minute field nor its hour field contains ``*`` or a
  step ``/`` (``30 2 * * *``, ``0,30 9-17 * * 1-5``, ``@daily``). Any other job
  (``*/15 * * * *``, ``0 * * * *``, ``5 */2 * * *``, ``@hourly``, ``* 2 * * *``) is a
  **wildcard** job. (cronie looks only at whether the field *starts* with ``*``; conch counts
  any ``*`` and any step, so ``0-59/15`` behaves like ``*/15``.)
- A wildcard job runs on real elapsed time: it ticks at every instant at which the zone's wall
  clock shows a matching minute. Local times skipped at spring-forward have no tick; local times
  repeated at fall-back tick twice (``*/15 * * * *`` ticks every 15 real minutes straight
  through the repeated hour).
- A fixed-time job ticks once per matching wall-clock time: at its first occurrence when the
  time is repeated at fall-back, and — when the time is skipped at spring-forward — at the
  transition instant, the first real instant after the gap (``30 2 * * *`` in New York on
  2026-03-08 runs at 03:00 EDT). Several matching times in one gap give one tick.

Ticks are strictly increasing instants: never two at the same instant. All instants taken and
returned are timezone-aware ``datetime`` objects; the results are in UTC.
"""

from __future__ import annotations

import calendar
import hashlib
import re
from bisect import bisect_left
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from conch.durations import parse_duration

__all__ = ["Schedule", "ScheduleError", "resolve_h"]


class ScheduleError(ValueError):
    """An invalid schedule or zone; the message is one line fit for ``conch: error: ...``."""


_MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}

_MONTHS = {
    name: i
    for i, name in enumerate(
        ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"),
        start=1,
    )
}
_DAYS = {name: i for i, name in enumerate(("sun", "mon", "tue", "wed", "thu", "fri", "sat"))}

# (name, low, high, names)
_FIELDS: tuple[tuple[str, int, int, dict[str, int]], ...] = (
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day-of-month", 1, 31, {}),
    ("month", 1, 12, _MONTHS),
    ("day-of-week", 0, 7, _DAYS),
)
_MAX_MONTH_DAYS = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)

_ITEM = re.compile(r"(?:(\*)|([0-9a-z]+)(?:-([0-9a-z]+))?)(?:/([0-9]+))?", re.ASCII)
_H_ITEM = re.compile(r"H(?:\(([0-9]+)-([0-9]+)\))?(?:/([0-9]+))?", re.ASCII)
_H_RANGES = ((0, 59), (0, 23), (1, 28), (1, 12), (0, 6))  # a bare H's range, per field
_ZONE_KEY = re.compile(r"[A-Za-z0-9_+\-]+(?:/[A-Za-z0-9_+\-]+)*", re.ASCII)

_EPOCH = datetime(1970, 1, 1)  # naive UTC
_MINUTE = timedelta(minutes=1)
_SECOND = timedelta(seconds=1)
_MICROSECOND = timedelta(microseconds=1)
_MAX_EVERY_US = 100 * 366 * 86400 * 1_000_000  # ~100 years; keeps tick arithmetic in range
_SEARCH_YEARS = 50  # a wildcard job whose every match is skipped for this long never fires


def _fail(spec: str, why: str) -> ScheduleError:
    return ScheduleError(f"invalid schedule {spec!r}: {why}")


_HINT = "use numbers, names, *, H, ranges a-b, steps /n and lists a,b"


def _value(token: str, text: str, index: int, spec: str) -> int:
    fname, low, high, names = _FIELDS[index]
    if token.isdigit():
        if len(token) > 4 or not low <= int(token) <= high:
            raise _fail(spec, f"{fname} value {token} out of range {low}-{high}")
        return int(token)
    if token in names:
        return names[token]
    raise _fail(spec, f"invalid {fname} field {text!r} ({_HINT})")


def _parse_field(text: str, index: int, spec: str) -> frozenset[int]:
    fname, low, high, _ = _FIELDS[index]
    values: set[int] = set()
    for item in text.lower().split(","):
        m = _ITEM.fullmatch(item)
        if m is None:
            raise _fail(spec, f"invalid {fname} field {text!r} ({_HINT})")
        star, first, last, step_text = m.groups()
        if star:
            a, b = low, high
        else:
            a = _value(first, text, index, spec)
            if last is not None:
                b = _value(last, text, index, spec)
                if a > b:
                    raise _fail(spec, f"{fname} range {first}-{last} is reversed")
            else:
                b = a if step_text is None else max(a, 6) if index == 4 else high
        step = 1
        if step_text is not None:
            step = int(step_text) if len(step_text) <= 4 else high + 2
            if not 1 <= step <= high - low + 1:
                raise _fail(spec, f"{fname} step /{step_text} out of range 1-{high - low + 1}")
        values.update(range(a, b + 1, step))
    if index == 4:  # day-of-week: 7 is Sunday too
        values = {v % 7 for v in values}
    return frozenset(values)


@dataclass(frozen=True)
class _Cron:
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    doms: frozenset[int]
    months: frozenset[int]
    dows: frozenset[int]
    day_or: bool  # both day fields restricted (neither starts with "*"): either may match
    fixed: bool  # fixed-time job (see module docstring)

    def day_matches(self, y: int, mo: int, d: int) -> bool:
        dom_ok = d in self.doms
        dow_ok = (calendar.weekday(y, mo, d) + 1) % 7 in self.dows
        return (dom_ok or dow_ok) if self.day_or else (dom_ok and dow_ok)

    def next_match(self, w: datetime) -> datetime:
        """The first matching wall-clock minute at or after ``w`` (naive, minute-aligned)."""
        y, mo, d, h, mi = w.year, w.month, w.day, w.hour, w.minute
        while True:
            if mo > 12:
                y, mo = y + 1, 1
                if y > w.year + 400:  # the calendar repeats every 400 years: no match ever
                    raise ScheduleError("schedule never fires")
            if mo not in self.months:
                mo, d, h, mi = mo + 1, 1, 0, 0
                continue
            ndays = calendar.monthrange(y, mo)[1]
            while d <= ndays and not self.day_matches(y, mo, d):
                d, h, mi = d + 1, 0, 0
            if d > ndays:
                mo, d, h, mi = mo + 1, 1, 0, 0
                continue
            i = bisect_left(self.hours, h)
            if i == len(self.hours):
                d, h, mi = d + 1, 0, 0
                continue
            if self.hours[i] != h:
                h, mi = self.hours[i], 0
            j = bisect_left(self.minutes, mi)
            if j == len(self.minutes):
                h, mi = h + 1, 0
                continue
            return datetime(y, mo, d, h, self.minutes[j])


def _small(token: str) -> int:
    return int(token) if len(token) <= 4 else 10_000  # out of every range: refused below


def resolve_h(expr: str, name: str) -> str:
    """The 5-field cron expression `expr` with each ``H`` item replaced by the values it stands
    for in job `name`: ``H`` -> ``N``, ``H(A-B)`` -> ``N``, ``H/S`` and ``H(A-B)/S`` ->
    ``N-B/S`` (N an offset below S). Each field draws on 4 bytes of SHA-256(name), the same on
    every host and release. An expression without ``H`` comes back as it is."""
    fields = expr.split()
    if len(fields) != 5 or "H" not in expr:
        return expr
    digest = hashlib.sha256(name.encode("utf-8")).digest()
    out = []
    for i, text in enumerate(fields):
        fname, low, high, _ = _FIELDS[i]
        h = int.from_bytes(digest[4 * i : 4 * i + 4], "big")
        items = []
        for item in text.split(","):
            m = _H_ITEM.fullmatch(item)
            if m is None:
                items.append(item)  # not an H item: parsed (or refused) as usual
                continue
            first, last, step_text = m.groups()
            if first is not None:
                a, b = _small(first), _small(last)
                if not low <= a <= b <= min(high, 6 if i == 4 else high):
                    raise _fail(expr, f"{fname} range H({first}-{last}) is not within "
                                      f"{low}-{6 if i == 4 else high}, low to high")  # fmt: skip
            elif step_text is None:
                a, b = _H_RANGES[i]
            else:
                a, b = low, _H_RANGES[i][1] if i == 4 else high
            if step_text is None:
                items.append(str(a + h % (b - a + 1)))
                continue
            step = _small(step_text)
            if not 1 <= step <= b - a + 1:
                raise _fail(expr, f"{fname} step /{step_text} out of range 1-{b - a + 1}")
            items.append(f"{a + h % step}-{b}/{step}")
        out.append(",".join(items))
    return " ".join(out)


def _parse_cron(expr: str, spec: str) -> _Cron:
    fields = expr.split()
    if len(fields) == 6:
        raise _fail(
            spec,
            "6-field (seconds) cron expressions are not supported; use 5 fields "
            "(minute hour day-of-month month day-of-week) or @every",
        )
    if len(fields) != 5:
        raise _fail(
            spec,
            f"expected 5 fields (minute hour day-of-month month day-of-week), got {len(fields)}",
        )
    sets = [_parse_field(text, i, spec) for i, text in enumerate(fields)]
    minutes, hours, doms, months, dows = sets
    day_or = not fields[2].startswith("*") and not fields[4].startswith("*")
    if not day_or and not any(d <= _MAX_MONTH_DAYS[m - 1] for m in months for d in doms):
        raise _fail(spec, "it never fires (no such day in the given months)")
    fixed = not any(c in fields[0] + fields[1] for c in "*/")
    return _Cron(tuple(sorted(minutes)), tuple(sorted(hours)), doms, months, dows, day_or, fixed)


def _parse_every(arg: str, spec: str) -> int:
    try:
        seconds = parse_duration(arg)
    except ValueError as e:
        raise _fail(spec, str(e)) from None
    if seconds > _MAX_EVERY_US / 1e6:
        raise _fail(spec, "@every interval is longer than 100 years")
    us = round(seconds * 1_000_000)
    if us < 1_000_000:
        raise _fail(spec, "@every interval must be at least 1s")
    return us


def _zone(tz: str) -> ZoneInfo:
    if not isinstance(tz, str) or len(tz) > 255 or not _ZONE_KEY.fullmatch(tz):
        raise ScheduleError(f"invalid time zone {tz!r} (use an IANA name such as Europe/Berlin)")
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError, OSError, UnicodeError):
        raise ScheduleError(
            f"unknown time zone {tz!r} (use an IANA name such as Europe/Berlin)"
        ) from None


def _utc_naive(t: datetime) -> datetime:
    if t.tzinfo is None or t.utcoffset() is None:
        raise ValueError("schedule times must be timezone-aware datetimes")
    return t.astimezone(UTC).replace(tzinfo=None)


@dataclass(frozen=True)
class Schedule:
    """A parsed, validated schedule. Construct with :meth:`parse` (or directly: same checks)."""

    spec: str
    tz: str = "UTC"
    name: str = ""  # the job's: what its H items are derived from
    # the cron expression as evaluated: macros expanded, H resolved ("" for @every)
    resolved: str = field(init=False, compare=False)
    _zone: ZoneInfo = field(init=False, repr=False, compare=False)
    _every_us: int | None = field(init=False, repr=False, compare=False)
    _cron: _Cron | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        spec = self.spec
        if not isinstance(spec, str) or not spec.strip():
            raise ScheduleError("empty schedule")
        every: int | None = None
        cron: _Cron | None = None
        resolved = ""
        words = spec.split()
        head = words[0].lower()
        if head == "@every":
            if len(words) != 2:
                raise _fail(spec, "use @every D, e.g. @every 90s")
            every = _parse_every(words[1], spec)
        elif head.startswith("@"):
            if head == "@reboot":
                raise _fail(spec, "@reboot is not supported")
            if head not in _MACROS or len(words) != 1:
                raise _fail(spec, f"unknown macro (use {', '.join(_MACROS)} or @every D)")
            resolved = _MACROS[head]
            cron = _parse_cron(resolved, spec)
        else:
            if "H" in spec and not self.name:
                raise _fail(spec, "H needs the job's name")  # a caller's bug, not the user's
            resolved = " ".join(resolve_h(spec, self.name).split())
            cron = _parse_cron(resolved, spec)
        object.__setattr__(self, "resolved", resolved)
        object.__setattr__(self, "_zone", _zone(self.tz))
        object.__setattr__(self, "_every_us", every)
        object.__setattr__(self, "_cron", cron)

    @classmethod
    def parse(cls, spec: str, tz: str = "UTC", name: str = "") -> Schedule:
        """Parse and validate (`name`: the job's, for H); raise :class:`ScheduleError` on a bad
        spec or zone."""
        return cls(spec, tz, name)

    def next_after(self, t: datetime) -> datetime:
        """The first tick strictly after ``t`` (aware), as an aware UTC datetime."""
        return self._next(_utc_naive(t)).replace(tzinfo=UTC)

    def ticks_between(
        self, start: datetime, end: datetime, limit: int | None = None
    ) -> list[datetime]:
        """All ticks with ``start < tick <= end`` (the first `limit` of them, if given),
        ascending, as aware UTC datetimes."""
        lo, hi = _utc_naive(start), _utc_naive(end)
        out: list[datetime] = []
        if hi <= lo:
            return out
        if self._every_us is not None:
            d = self._every_us
            k0 = (lo - _EPOCH) // _MICROSECOND // d + 1
            k1 = (hi - _EPOCH) // _MICROSECOND // d
            if limit is not None:
                k1 = min(k1, k0 + limit - 1)
            return [
                (_EPOCH + (k * d) * _MICROSECOND).replace(tzinfo=UTC) for k in range(k0, k1 + 1)
            ]
        tick = self._next(lo)
        while tick <= hi and (limit is None or len(out) < limit):
            out.append(tick.replace(tzinfo=UTC))
            tick = self._next(tick)
        return out

    def count_between(self, start: datetime, end: datetime, cap: int) -> int:
        """How many ticks ``start < tick <= end`` has, counted up to `cap` (exact for @every)."""
        lo, hi = _utc_naive(start), _utc_naive(end)
        if hi <= lo:
            return 0
        if self._every_us is not None:
            d = self._every_us
            return max(0, (hi - _EPOCH) // _MICROSECOND // d - (lo - _EPOCH) // _MICROSECOND // d)
        return len(self.ticks_between(start, end, limit=cap))

    # -- internals: naive datetimes are UTC instants unless named w (local wall-clock time) --

    def _next(self, t: datetime) -> datetime:
        if self._every_us is not None:
            d = self._every_us
            k = (t - _EPOCH) // _MICROSECOND // d + 1
            return _EPOCH + (k * d) * _MICROSECOND
        cron = self._cron
        assert cron is not None
        if cron.fixed:
            return self._next_fixed(cron, t)
        return self._next_wildcard(cron, t)

    def _offsets(self, w: datetime) -> tuple[timedelta, timedelta]:
        """UTC offsets of wall time ``w`` for fold 0 and fold 1 (PEP 495).

        Equal: ``w`` occurs once. First larger: ``w`` is repeated (fall-back), first occurrence
        at ``w - first``, second at ``w - second``. First smaller: ``w`` is skipped (a gap).
        """
        a = w.replace(tzinfo=self._zone).utcoffset()
        b = w.replace(tzinfo=self._zone, fold=1).utcoffset()
        assert a is not None and b is not None
        return a, b

    def _offset_at(self, t: datetime) -> timedelta:
        off = t.replace(tzinfo=UTC).astimezone(self._zone).utcoffset()
        assert off is not None
        return off

    def _gap_end(self, w: datetime, before: timedelta, after: timedelta) -> datetime:
        """The transition instant that skipped wall time ``w`` (the first instant after the gap).

        The gap is [T + before, T + after) in wall time, so T lies in (w - after, w - before].
        Transitions fall on whole seconds; bisect on seconds.
        """
        lo, hi = w - after, w - before  # offset(lo) == before, offset(hi) == after
        n = (hi - lo) // _SECOND
        lo_s, hi_s = 0, n
        while hi_s - lo_s > 1:
            mid = (lo_s + hi_s) // 2
            if self._offset_at(lo + mid * _SECOND) == before:
                lo_s = mid
            else:
                hi_s = mid
        return lo + hi_s * _SECOND

    def _next_fixed(self, cron: _Cron, t: datetime) -> datetime:
        # Each matching wall time w ticks once, at f(w): its first occurrence, or the end of the
        # gap that skipped it. f is non-decreasing in w and f(w) <= t for every w up to t's own
        # wall time, so the answer is f of the first match with f(w) > t.
        w = (t + self._offset_at(t)).replace(second=0, microsecond=0)
        w = cron.next_match(w)
        while True:
            a, b = self._offsets(w)
            tick = w - a if a >= b else self._gap_end(w, a, b)
            if tick > t:
                return tick
            w = cron.next_match(w + _MINUTE)

    def _next_wildcard(self, cron: _Cron, t: datetime) -> datetime:
        # Ticks are all instants whose wall time matches. Walk matching wall times upward from
        # the lowest wall time the clock will still show after t (below t's own if t lies in the
        # first pass of a repeated hour); keep the earliest instant after t; stop once a wall
        # time's first occurrence is no earlier than the best found (later ones are later still).
        local = t.replace(tzinfo=UTC).astimezone(self._zone)
        w_t = local.replace(tzinfo=None)
        if local.fold == 0:
            a, b = self._offsets(w_t)
            if a > b:
                w_t -= a - b
        w = cron.next_match(w_t.replace(second=0, microsecond=0))
        limit = w.year + _SEARCH_YEARS
        best: datetime | None = None
        while True:
            a, b = self._offsets(w)
            if a >= b:
                first = w - a
                if best is not None and first >= best:
                    return best
                for tick in (first, w - b) if a > b else (first,):
                    if tick > t and (best is None or tick < best):
                        best = tick
            elif best is None and w.year > limit:
                raise ScheduleError(
                    f"schedule {self.spec!r} never fires in zone {self.tz} "
                    "(every matching time is skipped by clock changes)"
                )
            w = cron.next_match(w + _MINUTE)
