"""Layer 1: duration parsing (conch.durations). Pure, no I/O."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conch.durations import format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("10s", 10.0),
        ("1m30s", 90.0),
        ("1h", 3600.0),
        ("10", 10.0),
        ("2.5", 2.5),
        ("0", 0.0),
        ("0s", 0.0),
        ("1ms", 0.001),
        ("1.5s", 1.5),
        ("1.5m", 90.0),
        ("90m", 5400.0),  # a unit may exceed its "natural" range
        ("1h2m3s", 3723.0),
        ("1h30m", 5400.0),
        ("1h500ms", 3600.5),
        ("1m1ms", 60.001),
        ("2h3s4ms", 7203.004),
        (" 10s ", 10.0),  # surrounding whitespace is tolerated
        ("007", 7.0),
    ],
)
def test_parse_valid(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "abc",
        "10x",
        "-1s",
        "-1",
        "+1s",
        "1s1m",  # units out of order
        "1s1s",  # a unit twice
        "1m1h",
        "1ms1s",
        "s",
        "ms",
        "1.s",
        ".5s",
        "5.",
        "1e3",
        "1e3s",
        "inf",
        "nan",
        "1_000",
        "0x10",
        "1m30",  # trailing bare number after a unit
        "1 s",
        "1s 2m",
        "1h 30m",
        "10sec",
        "10S",
        "1d",
        "1us",
        "9" * 400,  # overflows to inf
        "9" * 400 + "h",
        "١٠s",  # non-ASCII digits (Arabic-Indic)
        "１０",  # fullwidth digits
    ],
)
def test_parse_invalid(text: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_duration(text)
    message = str(info.value)
    assert message, "the error must say something the user can read"
    assert "\n" not in message
    if text.strip():
        assert repr(text) in message, "the message names the offending input"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.5, "500ms"),
        (0.001, "1ms"),
        (1, "1s"),
        (1.5, "1.5s"),
        (59, "59s"),
        (60, "1m"),
        (90, "1m30s"),
        (3600, "1h"),
        (3661, "1h1m1s"),
        (7200.25, "2h0.25s"),
    ],
)
def test_format(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@settings(max_examples=300)
@given(st.integers(min_value=0, max_value=10**10))
def test_format_parse_round_trip_integer_milliseconds(ms: int) -> None:
    seconds = ms / 1000
    text = format_duration(seconds)
    back = parse_duration(text)
    assert round(back * 1000) == ms, text
    assert math.isclose(back, seconds, rel_tol=1e-12, abs_tol=1e-9), text


@settings(max_examples=300)
@given(st.integers(min_value=0, max_value=10**7))
def test_format_parse_round_trip_integer_seconds_is_exact(s: int) -> None:
    assert parse_duration(format_duration(s)) == s


_N = st.integers(min_value=0, max_value=10**6)


@settings(max_examples=300)
@given(
    h=st.none() | _N,
    m=st.none() | _N,
    s=st.none() | _N,
    ms=st.none() | _N,
)
def test_composition_equals_arithmetic_sum(
    h: int | None, m: int | None, s: int | None, ms: int | None
) -> None:
    parts = [(h, "h", 3600), (m, "m", 60), (s, "s", 1), (ms, "ms", 0.001)]
    present = [(v, u, f) for v, u, f in parts if v is not None]
    text = "".join(f"{v}{u}" for v, u, _ in present)
    if not present:
        with pytest.raises(ValueError):
            parse_duration(text)
        return
    expected = sum(v * f for v, _, f in present)
    assert math.isclose(parse_duration(text), expected, rel_tol=1e-12, abs_tol=1e-12), text


@settings(max_examples=200)
@given(
    st.lists(st.sampled_from(["h", "m", "s", "ms"]), min_size=2, max_size=4).filter(
        lambda us: any(
            ["h", "m", "s", "ms"].index(a) >= ["h", "m", "s", "ms"].index(b)
            for a, b in itertools.pairwise(us)
        )
    ),
    st.integers(min_value=0, max_value=99),
)
def test_units_out_of_order_or_repeated_rejected(units: list[str], n: int) -> None:
    text = "".join(f"{n}{u}" for u in units)
    with pytest.raises(ValueError):
        parse_duration(text)


@settings(max_examples=300)
@given(
    st.integers(min_value=0, max_value=10**6),
    st.integers(min_value=0, max_value=999).map(lambda f: f"{f:03d}"),
)
def test_bare_decimal_seconds(whole: int, frac: str) -> None:
    assert parse_duration(f"{whole}.{frac}") == float(f"{whole}.{frac}")
    assert parse_duration(str(whole)) == whole


@settings(max_examples=300)
@given(st.text(max_size=12))
def test_parse_never_raises_anything_but_valueerror(text: str) -> None:
    try:
        value = parse_duration(text)
    except ValueError:
        return
    assert math.isfinite(value)
    assert value >= 0
