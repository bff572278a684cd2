"""Layer 1: cron schedules (conch.schedule). Pure, no I/O: every time is passed in."""

from __future__ import annotations

import calendar
import itertools
import re
from datetime import UTC, datetime, timedelta
from functools import cache
from zoneinfo import ZoneInfo

import pytest
from croniter import croniter
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from conch.schedule import Schedule, ScheduleError, resolve_h

NY = "America/New_York"
BERLIN = "Europe/Berlin"
LORD_HOWE = "Australia/Lord_Howe"  # 30-minute DST shift
KOLKATA = "Asia/Kolkata"  # +05:30, no DST
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def utc(text: str) -> datetime:
    """'2026-03-08T07:00' (or with seconds) -> aware UTC datetime."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def ticks(spec: str, tz: str, start: str, end: str) -> list[str]:
    got = Schedule.parse(spec, tz).ticks_between(utc(start), utc(end))
    return [t.strftime("%Y-%m-%dT%H:%M") for t in got]


# --- DST edges -------------------------------------------------------------------------------
#
# America/New_York 2026: spring forward 2026-03-08 07:00Z (02:00 EST -> 03:00 EDT);
#                        fall back 2026-11-01 06:00Z (02:00 EDT -> 01:00 EST).
# Europe/Berlin 2026:    spring forward 2026-03-29 01:00Z (02:00 CET -> 03:00 CEST);
#                        fall back 2026-10-25 01:00Z (03:00 CEST -> 02:00 CET).
# Australia/Lord_Howe:   fall back 2026-04-04 15:00Z (02:00 +11 -> 01:30 +10:30);
#                        spring forward 2026-10-03 15:30Z (02:00 +10:30 -> 02:30 +11).

DST_CASES = [
    # New York, spring forward: fixed-time jobs in the gap run once, at 03:00 EDT (07:00Z).
    ("30 2 * * *", NY, "2026-03-07T12:00", "2026-03-09T12:00",
     ["2026-03-08T07:00", "2026-03-09T06:30"]),
    ("0 2 * * *", NY, "2026-03-07T12:00", "2026-03-09T12:00",
     ["2026-03-08T07:00", "2026-03-09T06:00"]),
    ("0,30 2 * * *", NY, "2026-03-08T00:00", "2026-03-08T12:00", ["2026-03-08T07:00"]),
    ("0,30 2,3 * * *", NY, "2026-03-08T00:00", "2026-03-08T12:00",
     ["2026-03-08T07:00", "2026-03-08T07:30"]),
    ("59 1 * * *", NY, "2026-03-08T00:00", "2026-03-08T12:00", ["2026-03-08T06:59"]),
    # ... wildcard jobs have no tick for the missing hour.
    ("0 * * * *", NY, "2026-03-08T05:00", "2026-03-08T09:00",
     ["2026-03-08T06:00", "2026-03-08T07:00", "2026-03-08T08:00", "2026-03-08T09:00"]),
    ("*/30 * * * *", NY, "2026-03-08T05:45", "2026-03-08T07:45",
     ["2026-03-08T06:00", "2026-03-08T06:30", "2026-03-08T07:00", "2026-03-08T07:30"]),
    ("* 2 * * *", NY, "2026-03-08T00:00", "2026-03-09T00:00", []),
    ("*/20 2 8 3 *", NY, "2026-03-01T00:00", "2027-03-01T00:00", []),
    # New York, fall back: fixed-time jobs in the repeated hour run once, at the first one.
    ("30 1 * * *", NY, "2026-10-31T12:00", "2026-11-02T12:00",
     ["2026-11-01T05:30", "2026-11-02T06:30"]),
    ("0 1 * * *", NY, "2026-11-01T00:00", "2026-11-01T12:00", ["2026-11-01T05:00"]),
    ("0 2 * * *", NY, "2026-11-01T00:00", "2026-11-01T12:00", ["2026-11-01T07:00"]),
    ("0 0-3 * * *", NY, "2026-11-01T03:30", "2026-11-01T08:30",
     ["2026-11-01T04:00", "2026-11-01T05:00", "2026-11-01T07:00", "2026-11-01T08:00"]),
    # ... wildcard jobs run in both: every 30 real minutes, through 01:00/01:30 EDT and EST.
    ("*/30 * * * *", NY, "2026-11-01T04:00", "2026-11-01T07:00",
     ["2026-11-01T04:30", "2026-11-01T05:00", "2026-11-01T05:30",
      "2026-11-01T06:00", "2026-11-01T06:30", "2026-11-01T07:00"]),
    ("0 * * * *", NY, "2026-11-01T03:30", "2026-11-01T07:30",
     ["2026-11-01T04:00", "2026-11-01T05:00", "2026-11-01T06:00", "2026-11-01T07:00"]),
    ("15 */1 * * *", NY, "2026-11-01T04:30", "2026-11-01T07:00",
     ["2026-11-01T05:15", "2026-11-01T06:15"]),
    ("*/20 1 * * *", NY, "2026-11-01T00:00", "2026-11-01T12:00",
     ["2026-11-01T05:00", "2026-11-01T05:20", "2026-11-01T05:40",
      "2026-11-01T06:00", "2026-11-01T06:20", "2026-11-01T06:40"]),
    # Berlin.
    ("30 2 * * *", BERLIN, "2026-03-28T12:00", "2026-03-30T12:00",
     ["2026-03-29T01:00", "2026-03-30T00:30"]),
    ("*/30 2 * * *", BERLIN, "2026-03-29T00:00", "2026-03-29T12:00", []),
    ("30 2 * * *", BERLIN, "2026-10-24T12:00", "2026-10-26T12:00",
     ["2026-10-25T00:30", "2026-10-26T01:30"]),
    ("*/30 2 * * *", BERLIN, "2026-10-24T12:00", "2026-10-25T12:00",
     ["2026-10-25T00:00", "2026-10-25T00:30", "2026-10-25T01:00", "2026-10-25T01:30"]),
    ("@daily", BERLIN, "2026-03-28T12:00", "2026-03-30T12:00",
     ["2026-03-28T23:00", "2026-03-29T22:00"]),
    # Lord Howe: half-hour shifts.
    ("15 2 * * *", LORD_HOWE, "2026-10-03T12:00", "2026-10-04T12:00", ["2026-10-03T15:30"]),
    ("0,15,45 2 * * *", LORD_HOWE, "2026-10-03T12:00", "2026-10-04T12:00",
     ["2026-10-03T15:30", "2026-10-03T15:45"]),
    ("*/15 * * * *", LORD_HOWE, "2026-10-03T14:50", "2026-10-03T15:50",
     ["2026-10-03T15:00", "2026-10-03T15:15", "2026-10-03T15:30", "2026-10-03T15:45"]),
    ("45 1 * * *", LORD_HOWE, "2026-04-04T12:00", "2026-04-05T12:00", ["2026-04-04T14:45"]),
    ("*/15 * * * *", LORD_HOWE, "2026-04-04T14:10", "2026-04-04T15:40",
     ["2026-04-04T14:15", "2026-04-04T14:30", "2026-04-04T14:45",
      "2026-04-04T15:00", "2026-04-04T15:15", "2026-04-04T15:30"]),
    # Kolkata: fixed +05:30, no DST.
    ("0 9 * * *", KOLKATA, "2026-03-07T00:00", "2026-03-09T00:00",
     ["2026-03-07T03:30", "2026-03-08T03:30"]),
    ("@daily", KOLKATA, "2026-11-01T00:00", "2026-11-02T00:00", ["2026-11-01T18:30"]),
]  # fmt: skip


@pytest.mark.parametrize(("spec", "tz", "start", "end", "expected"), DST_CASES)
def test_dst_edges(spec: str, tz: str, start: str, end: str, expected: list[str]) -> None:
    assert ticks(spec, tz, start, end) == expected


def test_spring_forward_examples_from_the_brief() -> None:
    s = Schedule.parse("30 2 * * *", NY)
    tick = s.next_after(utc("2026-03-08T00:00"))
    assert tick == utc("2026-03-08T07:00")
    assert tick.astimezone(ZoneInfo(NY)).strftime("%H:%M %Z") == "03:00 EDT"
    assert Schedule.parse("30 1 * * *", NY).next_after(utc("2026-11-01T00:00")) == utc(
        "2026-11-01T05:30"
    )
    # Asked from inside the repeated hour, the next 01:30 is the next day's.
    assert Schedule.parse("30 1 * * *", NY).next_after(utc("2026-11-01T06:10")) == utc(
        "2026-11-02T06:30"
    )
    # Asked from the first 01:10, a wildcard job's next 01:00 is the second one (EST).
    assert Schedule.parse("0 * * * *", NY).next_after(utc("2026-11-01T05:10")) == utc(
        "2026-11-01T06:00"
    )


def test_results_are_aware_utc_and_input_zone_does_not_matter() -> None:
    s = Schedule.parse("*/30 * * * *", NY)
    t_utc = utc("2026-11-01T05:10")
    t_local = t_utc.astimezone(ZoneInfo(NY))
    assert s.next_after(t_local) == s.next_after(t_utc) == utc("2026-11-01T05:30")
    assert s.next_after(t_local).tzinfo is UTC
    assert all(t.tzinfo is UTC for t in s.ticks_between(t_local, t_local + timedelta(hours=3)))


def test_naive_datetimes_are_refused() -> None:
    s = Schedule.parse("@hourly")
    with pytest.raises(ValueError, match="timezone-aware"):
        s.next_after(datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="timezone-aware"):
        s.ticks_between(datetime(2026, 1, 1), datetime(2026, 1, 2, tzinfo=UTC))


# --- parsing, macros, @every -----------------------------------------------------------------


def test_utc_is_the_default_zone() -> None:
    s = Schedule.parse("0 9 * * *")
    assert s.tz == "UTC"
    assert s == Schedule("0 9 * * *", "UTC")
    assert s.next_after(utc("2026-07-01T09:00")) == utc("2026-07-02T09:00")


def test_spec_and_zone_are_kept_as_given() -> None:
    s = Schedule.parse("  */5 * * * *  ", BERLIN)
    assert (s.spec, s.tz) == ("  */5 * * * *  ", BERLIN)
    assert "spec='  */5 * * * *  '" in repr(s)


@pytest.mark.parametrize(
    ("macro", "expr", "start", "end"),
    [
        ("@hourly", "0 * * * *", "2026-03-07T00:00", "2026-03-10T00:00"),
        ("@daily", "0 0 * * *", "2026-10-15T00:00", "2026-11-15T00:00"),
        ("@midnight", "0 0 * * *", "2026-10-15T00:00", "2026-11-15T00:00"),
        ("@weekly", "0 0 * * 0", "2026-10-01T00:00", "2026-12-01T00:00"),
        ("@monthly", "0 0 1 * *", "2025-12-20T00:00", "2027-01-10T00:00"),
        ("@yearly", "0 0 1 1 *", "2025-12-20T00:00", "2028-01-10T00:00"),
        ("@annually", "0 0 1 1 *", "2025-12-20T00:00", "2028-01-10T00:00"),
        ("@DAILY", "0 0 * * *", "2026-10-15T00:00", "2026-11-15T00:00"),
    ],
)
@pytest.mark.parametrize("tz", ["UTC", NY])
def test_macros(macro: str, expr: str, start: str, end: str, tz: str) -> None:
    got = Schedule.parse(macro, tz).ticks_between(utc(start), utc(end))
    assert got == Schedule.parse(expr, tz).ticks_between(utc(start), utc(end))
    assert got


def test_macro_ticks() -> None:
    assert ticks("@weekly", "UTC", "2026-01-01T00:00", "2026-01-20T00:00") == [
        "2026-01-04T00:00",
        "2026-01-11T00:00",
        "2026-01-18T00:00",
    ]
    assert ticks("@yearly", "UTC", "2026-01-01T00:00", "2028-06-01T00:00") == [
        "2027-01-01T00:00",
        "2028-01-01T00:00",
    ]
    assert ticks("@monthly", NY, "2026-01-15T00:00", "2026-03-15T00:00") == [
        "2026-02-01T05:00",
        "2026-03-01T05:00",
    ]


def test_every_is_aligned_to_the_epoch() -> None:
    one = Schedule.parse("@every 1s")
    assert one.next_after(utc("2026-01-01T00:00:00.5")) == utc("2026-01-01T00:00:01")
    assert one.next_after(utc("2026-01-01T00:00:01")) == utc("2026-01-01T00:00:02")
    s = Schedule.parse("@every 90s")
    assert s.next_after(EPOCH) == EPOCH + timedelta(seconds=90)
    assert s.next_after(EPOCH - timedelta(seconds=1)) == EPOCH
    # 2026-01-01T00:00Z is 1767225600 s = 19635840 * 90 s after the epoch.
    assert s.next_after(utc("2025-12-31T23:59:59")) == utc("2026-01-01T00:00")
    assert s.next_after(utc("2026-01-01T00:00")) == utc("2026-01-01T00:01:30")
    assert s.ticks_between(utc("2026-01-01T00:00"), utc("2026-01-01T00:04:30")) == [
        utc("2026-01-01T00:01:30"),
        utc("2026-01-01T00:03:00"),
        utc("2026-01-01T00:04:30"),
    ]
    t = utc("2026-06-01T12:34:56.789")
    # The zone does not move @every ticks; other spellings of the same duration agree.
    for other in (
        Schedule.parse("@every 90s", LORD_HOWE),
        Schedule.parse("@every 1m30s", NY),
        Schedule.parse("@every 90"),
    ):
        assert other.next_after(t) == s.next_after(t)
    assert Schedule.parse("@every 1500ms").next_after(utc("2026-01-01T00:00")) == utc(
        "2026-01-01T00:00:01.5"
    )


@pytest.mark.parametrize(
    ("spec", "start", "end", "expected"),
    [
        # Both day fields restricted: either matches (the 13th, or any Friday).
        ("0 0 13 * 5", "2026-02-01T00:00", "2026-02-28T00:00",
         ["2026-02-06T00:00", "2026-02-13T00:00", "2026-02-20T00:00", "2026-02-27T00:00"]),
        # A day field starting with "*" is "unrestricted" as in cron: both must match.
        ("0 0 */2 * 5", "2026-02-01T00:00", "2026-02-28T00:00",
         ["2026-02-13T00:00", "2026-02-27T00:00"]),
        ("0 0 13 * *", "2026-02-01T00:00", "2026-03-31T00:00",
         ["2026-02-13T00:00", "2026-03-13T00:00"]),
        # Names, any case; day-of-week 7 is Sunday.
        ("0 12 * FEB sun", "2026-01-01T00:00", "2026-03-01T00:00",
         ["2026-02-01T12:00", "2026-02-08T12:00", "2026-02-15T12:00", "2026-02-22T12:00"]),
        ("0 12 * 2 7/3", "2026-01-01T00:00", "2026-03-01T00:00",
         ["2026-02-01T12:00", "2026-02-08T12:00", "2026-02-15T12:00", "2026-02-22T12:00"]),
        ("0 9 1 jan-dec/6 mon-fri", "2026-01-01T00:00", "2026-01-06T00:00",
         ["2026-01-01T09:00", "2026-01-02T09:00", "2026-01-05T09:00"]),
        # N/S means N-max/S; for day-of-week N-6/S (Sat), 7/S is Sunday.
        ("0 0 * * 1/2", "2026-01-01T00:00", "2026-01-08T00:00",
         ["2026-01-02T00:00", "2026-01-05T00:00", "2026-01-07T00:00"]),
        ("50/5 10 1 1 *", "2026-01-01T00:00", "2026-01-02T00:00",
         ["2026-01-01T10:50", "2026-01-01T10:55"]),
        ("0 0 29 2 *", "2025-01-01T00:00", "2029-01-01T00:00", ["2028-02-29T00:00"]),
        ("*/25 * 31 12 *", "2026-12-31T22:00", "2027-01-01T00:00",
         ["2026-12-31T22:25", "2026-12-31T22:50", "2026-12-31T23:00", "2026-12-31T23:25",
          "2026-12-31T23:50"]),
    ],
)  # fmt: skip
def test_field_semantics(spec: str, start: str, end: str, expected: list[str]) -> None:
    assert ticks(spec, "UTC", start, end) == expected


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("* * * *", "expected 5 fields"),
        ("* * * * * * *", "expected 5 fields"),
        ("0 * * * * *", "6-field"),
        ("61 * * * *", "minute value 61 out of range 0-59"),
        ("* 24 * * *", "hour value 24"),
        ("* * 32 * *", "day-of-month value 32"),
        ("* * 0 * *", "day-of-month value 0"),
        ("* * * 13 *", "month value 13"),
        ("* * * * 8", "day-of-week value 8"),
        ("5-1 * * * *", "reversed"),
        ("*/0 * * * *", "step"),
        ("*/61 * * * *", "step"),
        ("1,,2 * * * *", "invalid minute field"),
        ("- * * * *", "invalid minute field"),
        ("* * * foo *", "invalid month field"),
        ("* * * * mon#2", "invalid day-of-week field"),
        ("0 0 L * *", "invalid day-of-month field"),
        ("0 0 15W * *", "invalid day-of-month field"),
        ("0 0 ? * *", "invalid day-of-month field"),
        ("h * * * *", "invalid minute field"),  # H is Jenkins's (upper case only)
        ("jan * * * *", "invalid minute field"),
        ("* * * * ٣", "invalid day-of-week field"),
        ("0 0 31 2 *", "never fires"),
        ("0 0 31 4,6,9,11 *", "never fires"),
        ("0 0 30 feb *", "never fires"),
        ("@every 0", "at least 1s"),
        ("@every 500ms", "at least 1s"),
        ("@every 999ms", "at least 1s"),
        ("@every", "@every D"),
        ("@every 1s 2s", "@every D"),
        ("@every soon", "invalid duration"),
        ("@every -5s", "invalid duration"),
        ("@every 9999999999h", "100 years"),
        ("@reboot", "@reboot"),
        ("@fortnightly", "unknown macro"),
        ("@daily *", "unknown macro"),
    ],
)
def test_invalid_specs(spec: str, message: str) -> None:
    with pytest.raises(ScheduleError, match=None) as info:
        Schedule.parse(spec)
    text = str(info.value)
    assert message in text
    assert "\n" not in text
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    "tz",
    [
        "Mars/Olympus",
        "../../etc/passwd",
        "",
        "America",
        "/etc/localtime",
        "America/../UTC",
        "zone1970.tab",
        "utc ",
        "Europe/Berlin\x00",
        "x" * 300,
    ],
)
def test_invalid_zones(tz: str) -> None:
    with pytest.raises(ScheduleError, match="time zone") as info:
        Schedule.parse("@daily", tz)
    assert "\n" not in str(info.value)


def test_spec_errors_do_not_mention_the_zone_and_construction_validates() -> None:
    with pytest.raises(ScheduleError, match="61"):
        Schedule.parse("61 * * * *", "Mars/Olympus")
    with pytest.raises(ScheduleError):
        Schedule("61 * * * *")
    for tz in ("UTC", "Etc/GMT+5", NY, LORD_HOWE, "Pacific/Chatham"):
        assert Schedule.parse("* * * * *", tz).tz == tz


# --- properties ------------------------------------------------------------------------------

ZONES = [
    "UTC",
    NY,
    BERLIN,
    LORD_HOWE,
    KOLKATA,
    "Pacific/Chatham",  # +12:45 / +13:45
    "Europe/Dublin",  # "negative DST" in tzdata
    "Antarctica/Troll",  # two-hour DST shift
    "America/Santiago",
]


@cache
def transitions(tz: str) -> tuple[datetime, ...]:
    """Offset changes of ``tz`` in 2025-2027, to the hour (enough to aim windows at them)."""
    z = ZoneInfo(tz)
    out = []
    t = utc("2025-01-01T00:00")
    prev = t.astimezone(z).utcoffset()
    while t.year < 2028:
        t += timedelta(hours=1)
        off = t.astimezone(z).utcoffset()
        if off != prev:
            out.append(t)
            prev = off
    return tuple(out) or (utc("2026-06-15T12:00"),)


def _item(low: int, high: int, steps: bool, proper: bool) -> st.SearchStrategy[str]:
    n = st.integers(low, high)
    span = st.tuples(n, n).map(sorted)
    if proper:  # croniter reads a one-value range "A-A" as "*" (and "A-A/S" as "*/S")
        span = span.filter(lambda ab: ab[0] < ab[1])
    plain = [n.map(str), span.map(lambda ab: f"{ab[0]}-{ab[1]}")]
    if not steps:
        return st.one_of(*plain)
    step = st.integers(1, high - low + 1)
    return st.one_of(
        *plain,
        st.just("*"),
        step.map(lambda s: f"*/{s}"),
        st.tuples(span, step).map(lambda x: f"{x[0][0]}-{x[0][1]}/{x[1]}"),
        st.tuples(n, step).map(lambda x: f"{x[0]}/{x[1]}"),
    )


def _field(low: int, high: int, steps: bool = True, proper: bool = False) -> st.SearchStrategy[str]:
    return st.lists(_item(low, high, steps, proper), min_size=1, max_size=3).map(",".join)


def _star_or(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.one_of(st.just("*"), inner)


cron_exprs = st.builds(
    lambda *f: " ".join(f),
    _star_or(_field(0, 59)),
    _star_or(_field(0, 23)),
    _star_or(_field(1, 31)),
    _star_or(_field(1, 12)),
    _star_or(_field(0, 7)),
)
macros = st.sampled_from(["@hourly", "@daily", "@weekly", "@monthly", "@yearly"])
every_specs = st.integers(1, 100_000).map(lambda s: f"@every {s}s") | st.integers(
    1000, 10_000_000
).map(lambda ms: f"@every {ms}ms")
specs = cron_exprs | macros | every_specs


def parse_or_skip(spec: str, tz: str = "UTC") -> Schedule:
    try:
        return Schedule.parse(spec, tz)
    except ScheduleError:
        assume(False)
        raise


@st.composite
def windows(draw: st.DrawFn) -> tuple[str, datetime]:
    """A zone and an instant: near one of its 2025-2027 transitions, or anywhere 1990-2060."""
    tz = draw(st.sampled_from(ZONES))
    if draw(st.booleans()):
        anchor = draw(st.sampled_from(transitions(tz)))
        t = anchor + timedelta(seconds=draw(st.integers(-30 * 3600, 6 * 3600)))
    else:
        t = draw(st.datetimes(datetime(1990, 1, 1), datetime(2060, 1, 1), timezones=st.just(UTC)))
    return tz, t


@settings(max_examples=300, deadline=None)
@given(spec=specs, where=windows())
def test_next_after_is_strictly_after(spec: str, where: tuple[str, datetime]) -> None:
    tz, t = where
    s = parse_or_skip(spec, tz)
    nxt = s.next_after(t)
    assert nxt > t
    assert nxt.tzinfo is UTC
    # Nothing in between: asking from just before the tick gives the tick again.
    assert s.next_after(nxt - timedelta(microseconds=1)) == nxt


@settings(max_examples=150, deadline=None)
@given(
    spec=cron_exprs | macros | st.integers(60, 100_000).map(lambda s: f"@every {s}s"),
    where=windows(),
    hours=st.integers(0, 30),
)
def test_ticks_between_is_iterated_next_after(
    spec: str, where: tuple[str, datetime], hours: int
) -> None:
    tz, start = where
    s = parse_or_skip(spec, tz)
    end = start + timedelta(hours=hours, seconds=7)
    got = s.ticks_between(start, end)
    assert all(a < b for a, b in itertools.pairwise(got))
    assert all(start < t <= end for t in got)
    expected = []
    t = s.next_after(start)
    while t <= end and len(expected) <= len(got):
        expected.append(t)
        t = s.next_after(t)
    assert got == expected
    assert s.ticks_between(end, start) == []


@settings(max_examples=200, deadline=None)
@given(
    seconds=st.integers(1, 10**6) | st.sampled_from([1, 60, 90, 3600, 86400, 7 * 86400]),
    t=st.datetimes(datetime(1950, 1, 1), datetime(2100, 1, 1), timezones=st.just(UTC)),
    tz=st.sampled_from(ZONES),
)
def test_every_ticks_are_multiples_since_epoch(seconds: int, t: datetime, tz: str) -> None:
    s = Schedule.parse(f"@every {seconds}s", tz)
    nxt = s.next_after(t)
    d = timedelta(seconds=seconds)
    assert (nxt - EPOCH) % d == timedelta(0)
    assert t < nxt <= t + d
    window = s.ticks_between(t, t + 5 * d)
    assert len(window) == 5
    assert all((x - EPOCH) % d == timedelta(0) for x in window)
    assert all(b - a == d for a, b in itertools.pairwise(window))


# Expressions whose day-of-month / day-of-week semantics croniter shares with cron: "*/N" in one
# day field only while the other is "*" (croniter would OR them), and no restricted day field
# that covers its whole range (croniter would AND them).
def _full(field: str, low: int, high: int) -> bool:
    return set(range(low, high + 1)) <= _expand(field, low, high)


@st.composite
def croniter_compatible(draw: st.DrawFn) -> str:
    minute = draw(_star_or(_field(0, 59, proper=True)))
    hour = draw(_star_or(_field(0, 23, proper=True)))
    month = draw(_star_or(_field(1, 12, proper=True)))
    kind = draw(st.sampled_from(["both*", "dom", "dow", "both"]))
    dom, dow = "*", "*"
    if kind == "dom":
        dom = draw(_field(1, 31, proper=True))
    elif kind == "dow":
        dow = draw(_field(0, 6, proper=True))  # croniter reads "7/S" as every day
    elif kind == "both":
        dom = draw(_field(1, 31, steps=False, proper=True))
        dow = draw(_field(0, 6, steps=False, proper=True))
        assume(not _full(dom, 1, 31) and not _full(dow, 0, 6))
    return f"{minute} {hour} {dom} {month} {dow}"


@settings(max_examples=200, deadline=None)
@given(
    expr=croniter_compatible(),
    t=st.datetimes(datetime(2000, 1, 1), datetime(2040, 1, 1), timezones=st.just(UTC)),
    tz=st.sampled_from(["UTC", KOLKATA, "Asia/Tokyo", "Etc/GMT+5"]),
)
def test_matches_croniter_in_zones_without_dst(expr: str, t: datetime, tz: str) -> None:
    s = parse_or_skip(expr, tz)
    t = t.replace(microsecond=0)
    it = croniter(expr, t.astimezone(ZoneInfo(tz)))
    ours = t
    for _ in range(4):
        ours = s.next_after(ours)
        assert ours == it.get_next(datetime)


# An independent brute-force reference for any zone: walk real time minute by minute.


def _expand(field: str, low: int, high: int, open_high: int | None = None) -> set[int]:
    """The values of a cron field; ``N/S`` runs to ``open_high`` (default ``high``) or N."""
    out: set[int] = set()
    for item in field.split(","):
        base, _, step = item.partition("/")
        if base == "*":
            a, b = low, high
        elif "-" in base:
            a, b = (int(x) for x in base.split("-"))
        else:
            a = int(base)
            b = (high if open_high is None else max(a, open_high)) if step else a
        out.update(range(a, b + 1, int(step or 1)))
    return out


def reference_ticks(expr: str, tz: str, start: datetime, end: datetime) -> list[datetime]:
    """Ticks in (start, end] by brute force (zones whose transitions fall on whole minutes)."""
    fields = expr.split()
    minutes, hours = _expand(fields[0], 0, 59), _expand(fields[1], 0, 23)
    doms, months = _expand(fields[2], 1, 31), _expand(fields[3], 1, 12)
    dows = {d % 7 for d in _expand(fields[4], 0, 7, open_high=6)}
    either = not fields[2].startswith("*") and not fields[4].startswith("*")
    fixed = not any(c in fields[0] + fields[1] for c in "*/")

    def matches(w: datetime) -> bool:
        if w.minute not in minutes or w.hour not in hours or w.month not in months:
            return False
        dom, dow = w.day in doms, (calendar.weekday(w.year, w.month, w.day) + 1) % 7 in dows
        return (dom or dow) if either else (dom and dow)

    z = ZoneInfo(tz)
    out = []
    t = start.replace(second=0, microsecond=0) + timedelta(minutes=1)
    prev = (t - timedelta(minutes=1)).astimezone(z).utcoffset()
    while t <= end:
        local = t.astimezone(z)
        off = local.utcoffset()
        assert off is not None and prev is not None
        if matches(local.replace(tzinfo=None)) and (not fixed or local.fold == 0):
            out.append(t)
        elif fixed and off > prev:  # a gap just ended at t: wall times [t+prev, t+off) skipped
            w = t.replace(tzinfo=None) + prev
            while w < t.replace(tzinfo=None) + off:
                if matches(w):
                    out.append(t)
                    break
                w += timedelta(minutes=1)
        prev = off
        t += timedelta(minutes=1)
    return out


@settings(max_examples=120, deadline=None)
@given(expr=cron_exprs | macros, where=windows(), hours=st.integers(1, 30))
def test_matches_brute_force_reference_across_dst(
    expr: str, where: tuple[str, datetime], hours: int
) -> None:
    tz, start = where
    assume(start.year >= 1980)  # modern rules: transitions on whole minutes
    s = parse_or_skip(expr, tz)
    expr = {
        "@hourly": "0 * * * *",
        "@daily": "0 0 * * *",
        "@weekly": "0 0 * * 0",
        "@monthly": "0 0 1 * *",
        "@yearly": "0 0 1 1 *",
    }.get(expr, expr)
    end = start + timedelta(hours=hours)
    assert s.ticks_between(start, end) == reference_ticks(expr, tz, start, end)


# -- H: values from a stable hash of the job's name (Jenkins) --------------------------------

NAMES = st.text(st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=40)


def test_h_is_the_same_for_a_name_everywhere_and_documented() -> None:
    """The hash is part of the contract: the same name resolves to the same values on every
    host and release (these values must never change)."""
    assert resolve_h("H 3 * * *", "backup") == "34 3 * * *"
    assert resolve_h("H/15 * * * *", "backup") == "4-59/15 * * * *"
    assert resolve_h("H(0-29)/10 H * * H", "backup") == "4-29/10 16 * * 5"
    assert resolve_h("0 0 H * *", "backup") == "0 0 14 * *"
    assert Schedule.parse("H 3 * * *", "UTC", "backup").resolved == "34 3 * * *"
    assert resolve_h("30 2 * * *", "backup") == "30 2 * * *"  # no H: as written


@given(NAMES)
def test_h_values_stay_in_their_ranges(name: str) -> None:
    minute, hour, dom, month, dow = resolve_h("H H H H H", name).split()
    assert 0 <= int(minute) <= 59 and 0 <= int(hour) <= 23
    assert 1 <= int(dom) <= 28  # fires every month
    assert 1 <= int(month) <= 12 and 0 <= int(dow) <= 6
    lo_hi, step = resolve_h("H(10-40)/7 H(9-17) * * *", name).split()[0].split("/")
    lo, hi = lo_hi.split("-")
    assert 10 <= int(lo) < 17 and hi == "40" and step == "7"
    assert 9 <= int(resolve_h("H(10-40)/7 H(9-17) * * *", name).split()[1]) <= 17


@given(NAMES)
def test_h_ticks_are_the_resolved_expressions(name: str) -> None:
    start, end = utc("2026-03-01T00:00"), utc("2026-03-03T00:00")
    for spec in ("H * * * *", "H/20 H(1-5) * * *", "H H * * H"):
        s = Schedule.parse(spec, "UTC", name)
        assert s.ticks_between(start, end) == Schedule.parse(s.resolved).ticks_between(start, end)


def test_h_spreads_many_jobs_over_the_hour() -> None:
    minutes = [int(resolve_h("H * * * *", f"job-{i}").split()[0]) for i in range(6000)]
    counts = [minutes.count(m) for m in range(60)]
    assert min(counts) > 50 and max(counts) < 150  # ~100 each


@pytest.mark.parametrize(
    ("spec", "why"),
    [
        ("H(5-2) * * * *", "minute range H(5-2) is not within 0-59"),
        ("H(0-60) * * * *", "minute range H(0-60) is not within 0-59"),
        ("* * * * H(0-7)", "day-of-week range H(0-7) is not within 0-6"),
        ("H/0 * * * *", "minute step /0 out of range 1-60"),
        ("H(0-9)/11 * * * *", "minute step /11 out of range 1-10"),
        ("h * * * *", "invalid minute field 'h'"),
        ("H(1) * * * *", "invalid minute field 'H(1)'"),
        ("HH * * * *", "invalid minute field 'HH'"),
    ],
)
def test_bad_h_items_are_refused(spec: str, why: str) -> None:
    with pytest.raises(ScheduleError, match=re.escape(why)):
        Schedule.parse(spec, "UTC", "job")


def test_h_without_a_name_is_a_callers_bug() -> None:
    with pytest.raises(ScheduleError, match="H needs the job's name"):
        Schedule.parse("H * * * *")


def test_h_classifies_as_what_it_resolves_to() -> None:
    """`H 3 * * *` is a fixed-time job (cronie's DST rule: once per wall-clock time), `H/15`
    a wildcard one (real elapsed time)."""
    ny = "America/New_York"
    fixed = Schedule.parse("H 1 * * *", ny, "backup")  # 01:34 happens twice on 2026-11-01
    assert len(fixed.ticks_between(utc("2026-11-01T04:00"), utc("2026-11-01T08:00"))) == 1
    wild = Schedule.parse("H/30 1 * * *", ny, "backup")  # 01:04, 01:34, twice each
    assert len(wild.ticks_between(utc("2026-11-01T04:00"), utc("2026-11-01T08:00"))) == 4
