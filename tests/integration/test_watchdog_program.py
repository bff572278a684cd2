"""The watchdog program itself, driven over its stdin protocol (conch/watchdog.py's docstring),
as `python -m conch.watchdog`: the same code conch starts as `python -I -S watchdog.py`, run
here in a form that coverage measurement can follow. A victim process group stands in for the
child."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import wait_for

from conch.watchdog import EXIT_DISARMED, EXIT_FIRED, clock, group_alive

KILL_AFTER = 0.5


@pytest.fixture
def victim(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A process group (a shell and a sleeping grandchild) that notes a SIGTERM."""
    got = tmp_path / "got_term"
    script = f"trap 'echo term >> {got}; exit 0' TERM; sleep 600 & while :; do sleep 0.05; done"
    p = subprocess.Popen(["/bin/sh", "-c", script], start_new_session=True)
    try:
        yield p.pid, got
    finally:
        if group_alive(p.pid):
            os.killpg(p.pid, signal.SIGKILL)
        p.wait(10)


def start_watchdog() -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "conch.watchdog"], stdin=subprocess.PIPE, start_new_session=True
    )


def send(wd: subprocess.Popen[bytes], line: str) -> None:
    assert wd.stdin is not None
    wd.stdin.write(line.encode())
    wd.stdin.flush()


def test_eof_while_armed_fires(victim: tuple[int, Path]) -> None:
    pgid, got = victim
    wd = start_watchdog()
    send(wd, f"arm {pgid} {KILL_AFTER} inf\n")
    assert wd.stdin is not None
    wd.stdin.close()  # conch died
    assert wd.wait(10) == EXIT_FIRED
    assert not group_alive(pgid) and got.exists()


def test_a_passed_deadline_fires_and_newer_deadlines_postpone_it(victim: tuple[int, Path]) -> None:
    pgid, got = victim
    wd = start_watchdog()
    send(wd, f"arm {pgid} {KILL_AFTER} {clock() + 0.3}\n")
    for _ in range(5):  # keep pushing: it must not fire
        send(wd, f"deadline {clock() + 0.5}\n")
        time.sleep(0.2)
        assert wd.poll() is None
    t0 = time.monotonic()
    assert wd.wait(10) == EXIT_FIRED  # no more pushes: it fires at the last deadline
    assert time.monotonic() - t0 < 0.5 + KILL_AFTER + 2.0
    assert not group_alive(pgid) and got.exists()


def test_disarm_exits_0_and_leaves_the_group(victim: tuple[int, Path]) -> None:
    pgid, got = victim
    wd = start_watchdog()
    send(wd, f"arm {pgid} {KILL_AFTER} {clock() + 60}\n")
    send(wd, "nonsense line\n")
    send(wd, "disarm\n")
    assert wd.wait(10) == EXIT_DISARMED
    assert group_alive(pgid) and not got.exists()


def test_eof_before_arm_exits_quietly(victim: tuple[int, Path]) -> None:
    pgid, got = victim
    wd = start_watchdog()
    assert wd.stdin is not None
    wd.stdin.close()
    assert wd.wait(10) == EXIT_DISARMED
    assert group_alive(pgid) and not got.exists()


def test_sigint_and_sighup_are_ignored_sigterm_fires(victim: tuple[int, Path]) -> None:
    pgid, got = victim
    wd = start_watchdog()
    send(wd, f"arm {pgid} {KILL_AFTER} inf\n")
    send(wd, "deadline inf\n")
    wait_for(lambda: _stdin_drained(wd.pid), timeout=5, what="the watchdog to read its input")
    for s in (signal.SIGINT, signal.SIGHUP):
        wd.send_signal(s)
    time.sleep(0.3)
    assert wd.poll() is None and group_alive(pgid)
    wd.send_signal(signal.SIGTERM)
    assert wd.wait(10) == EXIT_FIRED
    assert not group_alive(pgid) and got.exists()


def test_a_line_split_across_writes_is_read_whole(victim: tuple[int, Path]) -> None:
    pgid, _got = victim
    wd = start_watchdog()
    line = f"arm {pgid} {KILL_AFTER} inf\n"
    send(wd, line[:5])
    time.sleep(0.1)
    send(wd, line[5:])
    send(wd, "disa")
    time.sleep(0.1)
    send(wd, "rm\n")
    assert wd.wait(10) == EXIT_DISARMED
    assert group_alive(pgid)


def _stdin_drained(pid: int) -> bool:
    """True once the watchdog has read everything written to its stdin pipe (FIONREAD on
    another handle of the same pipe, opened through /proc)."""
    import fcntl
    import termios

    try:
        with open(f"/proc/{pid}/fd/0", "rb", buffering=0) as f:
            buf = bytearray(4)
            fcntl.ioctl(f.fileno(), termios.FIONREAD, buf)
            return int.from_bytes(buf, sys.byteorder) == 0
    except OSError:
        return False


def _group(tmp_path: Path, name: str) -> tuple[subprocess.Popen[bytes], Path]:
    got = tmp_path / f"got_term_{name}"
    script = f"trap 'echo term >> {got}; exit 0' TERM; while :; do sleep 0.05; done"
    return subprocess.Popen(["/bin/sh", "-c", script], start_new_session=True), got


def test_conchds_form_guards_many_groups_and_kills_every_one_still_guarded(
    tmp_path: Path,
) -> None:
    (a, got_a), (b, got_b), (c, got_c) = (_group(tmp_path, n) for n in "abc")
    try:
        wd = start_watchdog()
        for p in (a, b, c):
            send(wd, f"guard {p.pid} {KILL_AFTER}\n")
        send(wd, f"release {b.pid}\n")  # b's run ended: no longer guarded
        assert wd.stdin is not None
        wd.stdin.close()  # conchd died
        assert wd.wait(10) == EXIT_FIRED
        assert a.wait(10) == 0 and c.wait(10) == 0 and got_a.exists() and got_c.exists()
        assert b.poll() is None and not got_b.exists()
    finally:
        for p in (a, b, c):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
            p.wait(10)


def test_conchds_watchdog_with_nothing_left_to_guard_exits_quietly(tmp_path: Path) -> None:
    p, got = _group(tmp_path, "a")
    try:
        wd = start_watchdog()
        send(wd, f"guard {p.pid} {KILL_AFTER}\n")
        send(wd, f"release {p.pid}\n")
        assert wd.stdin is not None
        wd.stdin.close()
        assert wd.wait(10) == EXIT_DISARMED
        assert p.poll() is None and not got.exists()
    finally:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait(10)


def test_a_guard_line_a_stopped_watchdog_cannot_take_fails_in_bounded_time(
    tmp_path: Path,
) -> None:
    from conch.watchdog import Watchdog

    p, _got = _group(tmp_path, "a")
    wd = Watchdog.spawn()
    try:
        wd.guard(p.pid, KILL_AFTER)
        os.kill(wd.pid, signal.SIGSTOP)
        t = time.monotonic()
        with pytest.raises(OSError):
            for _ in range(100_000):  # the pipe fills; then one line waits its timeout
                wd.guard(p.pid, KILL_AFTER, timeout=0.2)
        assert time.monotonic() - t < 10
    finally:
        os.kill(wd.pid, signal.SIGCONT)
        wd.kill()  # SIGKILL: the group is not touched
        assert p.poll() is None
        os.killpg(p.pid, signal.SIGKILL)
        p.wait(10)
