"""Layer 1: exit codes (conch.errors), as SPEC.md's table. Pure, no I/O."""

from __future__ import annotations

import signal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conch import errors
from conch.errors import (
    ConchError,
    UsageError,
    child_exit_code,
    signal_exit_code,
)


@pytest.mark.parametrize(
    ("returncode", "code"),
    [(0, 0), (1, 1), (3, 3), (255, 255), (-9, 137), (-15, 143), (-2, 130), (-1, 129)],
)
def test_child_exit_code(returncode: int, code: int) -> None:
    assert child_exit_code(returncode) == code


@given(st.integers(min_value=1, max_value=64))
def test_child_killed_by_signal_is_128_plus_s(s: int) -> None:
    assert child_exit_code(-s) == 128 + s


@given(st.integers(min_value=0, max_value=255))
def test_child_own_code_passes_through(code: int) -> None:
    assert child_exit_code(code) == code


@pytest.mark.parametrize(
    ("signum", "code"),
    [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129), (2, 130)],
)
def test_signal_exit_code(signum: int, code: int) -> None:
    assert signal_exit_code(signum) == code


def test_exit_code_constants_match_spec() -> None:
    assert errors.EXIT_NO_HOLDER == 1
    assert errors.EXIT_USAGE == 2
    assert errors.EXIT_UNAVAILABLE == 69
    assert errors.EXIT_LEASE_LOST == 70
    assert errors.EXIT_NOT_ACQUIRED == 75


@pytest.mark.parametrize(
    ("cls", "code"),
    [(ConchError, 1), (UsageError, 2)],
)
def test_exceptions_carry_exit_codes(cls: type[ConchError], code: int) -> None:
    e = cls("something went wrong")
    assert isinstance(e, ConchError)
    assert isinstance(e, Exception)
    assert e.exit_code == code
    assert str(e) == "something went wrong"
    assert cls.exit_code == code


def test_exit_code_override_is_per_instance() -> None:
    e = UsageError("x", exit_code=5)
    assert e.exit_code == 5
    assert UsageError("y").exit_code == 2
    assert UsageError.exit_code == 2


def test_raise_and_catch_as_conch_error() -> None:
    with pytest.raises(ConchError) as info:
        raise UsageError("bad input")
    assert info.value.exit_code == 2
