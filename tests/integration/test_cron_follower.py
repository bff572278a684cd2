"""conchd's follower (conch.cron.follower): one thread following every running child — output,
exit, processes left in the group, --timeout, conchd's stop. Real processes; no etcd needed."""

from __future__ import annotations

import os
import queue
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import pid_gone, wait_for

from conch.cron import follower as follower_mod
from conch.cron.follower import Ended, Follower, RunEnd
from conch.supervisor import Child

SLACK = 10.0  # a loaded 2-core machine: bounds only, never exact times


class Harness:
    def __init__(self) -> None:
        self.stopping = threading.Event()
        self.stop_signal: int | None = None
        self.follower = Follower(self.stopping, lambda: self.stop_signal)
        self.ended: queue.SimpleQueue[tuple[str, Ended | None]] = queue.SimpleQueue()

    def start(
        self, name: str, argv: list[str], timeout: float | None = None, kill_after: float = 0.5
    ) -> Child:
        r, w = os.pipe()
        try:
            child = Child.spawn(argv, dict(os.environ), stdout=w, stderr=w)
        finally:
            os.close(w)
        child.open_gate()
        self.follower.follow(
            child, r, label=name, job=name, timeout=timeout, kill_after=kill_after,
            started=time.monotonic(), on_end=lambda end: self.ended.put((name, end)),
        )  # fmt: skip
        return child

    def results(self, n: int) -> dict[str, Ended]:
        out = {}
        for _ in range(n):
            name, end = self.ended.get(timeout=SLACK)
            assert end is not None, name
            out[name] = end
        return out


@pytest.fixture
def h() -> Iterator[Harness]:
    h = Harness()
    h.follower.start()
    yield h
    h.stopping.set()
    h.follower.wait_idle(SLACK)
    h.follower.halt()
    h.follower.join(SLACK)
    assert not h.follower.is_alive()


def test_one_thread_follows_many_children_their_output_and_status(h: Harness) -> None:
    threads = threading.active_count()
    for i in range(40):
        h.start(f"c{i}", ["sh", "-c", f"echo line one {i}; printf 'no newline {i}'; exit {i % 3}"])
    assert threading.active_count() == threads  # no thread per run
    ends = h.results(40)
    for i in range(40):
        e = ends[f"c{i}"]
        assert e.returncode == i % 3 and e.how is RunEnd.EXITED and e.reason == ""
        assert e.output == f"line one {i}\nno newline {i}"
        assert 0 <= e.duration < SLACK
    assert h.follower.wait_idle(SLACK)


def test_processes_left_in_the_group_get_term_then_kill(h: Harness, tmp_path: Path) -> None:
    """The child exits 0 leaving a process that ignores SIGTERM in its group (holding its
    output pipe): it is killed after --kill-after; the run ends with the child's status."""
    pidfile = tmp_path / "gc"
    h.start("left", ["sh", "-c", f"sh -c 'trap \"\" TERM; echo $$ > {pidfile}; sleep 60' & "
                     f"while [ ! -s {pidfile} ]; do :; done; echo parent done"],
            kill_after=0.5)  # fmt: skip
    (e,) = h.results(1).values()
    assert e.returncode == 0 and e.how is RunEnd.EXITED
    assert "parent done" in e.output
    assert pid_gone(int(pidfile.read_text()))


def test_timeout_terms_then_kills_the_group(h: Harness) -> None:
    h.start("slow", ["sh", "-c", "trap '' TERM; sleep 60"], timeout=0.3, kill_after=0.3)
    (e,) = h.results(1).values()
    assert e.how is RunEnd.TIMEOUT and e.returncode == -signal.SIGKILL
    assert e.reason.startswith("--timeout 0.3s passed")
    assert 0.3 <= e.duration < SLACK


def test_conchd_stopping_forwards_its_signal(h: Harness) -> None:
    h.start("a", ["sleep", "60"])
    h.start("b", ["sleep", "60"])
    h.stop_signal = signal.SIGINT
    h.stopping.set()
    ends = h.results(2)
    for e in ends.values():
        assert e.how is RunEnd.INTERRUPTED and e.returncode == -signal.SIGINT
        assert e.reason == "conchd stopping (SIGINT): signal forwarded"


def test_output_held_by_an_escaped_process_is_not_waited_for(
    h: Harness, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A process that left the group (setsid) keeps the output pipe open: the run ends
    OUTPUT_GRACE after its group is gone, with the output read until then."""
    monkeypatch.setattr(follower_mod, "OUTPUT_GRACE", 0.5)
    pidfile = tmp_path / "escaped"
    h.start("esc", ["sh", "-c", f"setsid sh -c 'echo $$ > {pidfile}; exec sleep 60' & "
                    f"while [ ! -s {pidfile} ]; do :; done; echo bye"])  # fmt: skip
    t0 = time.monotonic()
    (e,) = h.results(1).values()
    assert time.monotonic() - t0 < 30  # not the escaped process's 60 s
    assert e.returncode == 0 and "bye" in e.output
    os.kill(int(pidfile.read_text()), signal.SIGKILL)
    wait_for(lambda: pid_gone(int(pidfile.read_text())), what="the escaped process gone")
