"""The watchdog's line protocol, as a pure state machine (no processes)."""

from __future__ import annotations

import math

from conch.watchdog import _State


def feed(*lines: str) -> _State:
    st = _State()
    for line in lines:
        st.feed(line)
    return st


def test_not_armed_until_arm() -> None:
    st = feed("deadline 12.5")
    assert not st.armed
    assert st.deadline == 12.5


def test_arm_sets_group_kill_after_and_deadline() -> None:
    st = feed("arm 4242 0.5 1234.25")
    assert st.armed
    assert (st.pgid, st.kill_after, st.deadline) == (4242, 0.5, 1234.25)


def test_latest_deadline_wins_even_if_earlier() -> None:
    st = feed("arm 4242 0.5 100.0", "deadline 200.0", "deadline 150.0")
    assert st.deadline == 150.0


def test_inf_deadline_means_none() -> None:
    st = feed("arm 4242 1 inf")
    assert st.armed and math.isinf(st.deadline)


def test_disarm() -> None:
    st = feed("arm 4242 0.5 100.0", "disarm")
    assert st.disarmed and not st.armed


def test_malformed_and_unknown_lines_are_ignored() -> None:
    st = feed(
        "",
        "bogus 1 2 3",
        "arm 4242 0.5",
        "arm x 0.5 1",
        "arm 4242 0.5 nan",
        "deadline",
        "deadline soon",
        "deadline nan",
        "disarm now",
    )
    assert not st.armed and not st.disarmed and math.isinf(st.deadline)


def test_dangerous_groups_and_bad_kill_after_are_refused() -> None:
    for line in ("arm 0 1 10", "arm 1 1 10", "arm -5 1 10", "arm 4242 -1 10", "arm 4242 inf 10"):
        assert not feed(line).armed, line


def test_rearm_replaces() -> None:
    st = feed("arm 4242 0.5 100.0", "arm 4343 2 300")
    assert (st.pgid, st.kill_after, st.deadline) == (4343, 2.0, 300.0)


def test_guard_adds_groups_beside_arm_and_release_removes_one() -> None:
    st = feed("guard 100 0.5", "guard 200 2", "arm 300 1 inf", "release 100", "release 999")
    assert st.armed
    assert st.targets() == {200: 2.0, 300: 1.0}
    st = feed("guard 100 0.5", "release 100")
    assert not st.armed and st.targets() == {}
    for bad in ("guard 1 0.5", "guard 0 1", "guard 100 -1", "guard 100 inf", "guard x 1",
                "guard 100", "release", "release x"):  # fmt: skip
        assert not feed(bad).armed, bad
