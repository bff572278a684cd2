"""Layer 1: restart backoff for `conch elect --restart` (conch.backoff). Pure, no I/O.

Backoff takes how long each child ran, so a fake clock is just a list of run durations.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conch.backoff import INITIAL, MAXIMUM, STABLE_AFTER, Backoff


def delays(ran_for: list[float], b: Backoff | None = None) -> list[float]:
    b = b or Backoff()
    return [b.after_exit(r) for r in ran_for]


def test_defaults_match_the_spec() -> None:
    assert (INITIAL, MAXIMUM, STABLE_AFTER) == (1.0, 60.0, 60.0)


def test_short_lived_children_double_to_sixty() -> None:
    assert delays([0.1] * 10) == [1, 2, 4, 8, 16, 32, 60, 60, 60, 60]


@pytest.mark.parametrize(
    ("ran_for", "expected"),
    [
        ([], []),
        ([0], [1]),
        ([60], [1]),  # a stable first child: restart after 1 s
        ([0, 0, 0, 60], [1, 2, 4, 1]),  # ran >= 60 s: back to 1 s
        ([0, 0, 0, 60, 0], [1, 2, 4, 1, 2]),
        ([0, 0, 0, 59.999], [1, 2, 4, 8]),  # just short of stable: keeps doubling
        ([0] * 8 + [3600, 5], [1, 2, 4, 8, 16, 32, 60, 60, 1, 2]),
        ([0] * 8 + [60.0, 60.0, 0], [1, 2, 4, 8, 16, 32, 60, 60, 1, 1, 2]),
        ([30, 30, 30], [1, 2, 4]),  # each run shorter than 60 s, however long in total
    ],
)
def test_fake_clock_sequences(ran_for: list[float], expected: list[float]) -> None:
    assert delays(ran_for) == expected


def test_reset() -> None:
    b = Backoff()
    delays([0] * 5, b)
    b.reset()
    assert delays([0, 0], b) == [1, 2]


def test_custom_parameters() -> None:
    b = Backoff(initial=0.5, maximum=3, stable_after=10)
    assert delays([0, 0, 0, 0, 10, 0], b) == [0.5, 1, 2, 3, 0.5, 1]


RUNS = st.lists(
    st.one_of(
        st.floats(min_value=0, max_value=STABLE_AFTER, exclude_max=True),
        st.floats(min_value=STABLE_AFTER, max_value=10**6),
        st.sampled_from([0.0, 59.999, 60.0, 60.001]),
    ),
    max_size=40,
)


@settings(max_examples=300)
@given(RUNS)
def test_delays_bounded_and_monotone_between_stable_runs(ran_for: list[float]) -> None:
    got = delays(ran_for)
    prev: float | None = None
    for ran, d in zip(ran_for, got, strict=True):
        assert INITIAL <= d <= MAXIMUM
        if ran >= STABLE_AFTER or prev is None:
            assert d == INITIAL
        else:
            assert d >= prev
            assert d == min(prev * 2, MAXIMUM)
        prev = d


@settings(max_examples=100)
@given(st.integers(min_value=7, max_value=200))
def test_never_exceeds_maximum(n: int) -> None:
    got = delays([0.0] * n)
    assert got[6:] == [MAXIMUM] * (n - 6)
