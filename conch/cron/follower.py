"""The follower: one thread that follows every running child of a daemon — its output (logged
line by line, the tail kept: conch.cron.output), its end (its pidfd), its --timeout, conchd's
stop — with one selector, instead of two threads per run. What may block — a group's kill
sequence, up to --kill-after — runs in a short thread of its own (rare: a timeout, processes
left in the group, conchd stopping) that reports back through the follower's queue.

A child ends in steps: it exits (its status reaped: the run's duration ends here); its group is
emptied (at once, or by a kill sequence); its output reaches EOF — or OUTPUT_GRACE passes, for
a process that escaped the group with the pipe. Then the run hears `Ended` through its one
callback, and the follower forgets it.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import queue
import selectors
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from conch.cron.output import OutputTail

if TYPE_CHECKING:
    from conch.supervisor import Child

log = logging.getLogger(__name__)

TICK = 0.1  # longest wait of the loop: conchd's stop is seen within it, so are pidfd-less exits
OUTPUT_GRACE = 2.0  # after the group is gone, how long the output may take to reach EOF


class RunEnd(enum.Enum):
    """How a run's child ended."""

    EXITED = "exited"  # by itself
    INTERRUPTED = "interrupted"  # conchd was stopping: it got conchd's signal
    TIMEOUT = "timeout"  # its --timeout passed: SIGTERM, SIGKILL after --kill-after


@dataclass(frozen=True)
class Ended:
    """What the follower reports of a child."""

    returncode: int  # Popen-style: -S if killed by signal S
    how: RunEnd
    reason: str  # why it was stopped ("" if it exited by itself)
    duration: float  # seconds from the start to its exit
    finished: float  # time.time() at its exit
    output: str  # the tail of its stdout+stderr


@dataclass(eq=False)  # each is itself: hashed by identity
class _Followed:
    child: Child
    label: str  # for the log: job and tick
    tail: OutputTail
    timeout: float | None  # --timeout
    kill_after: float
    started: float  # time.monotonic() at the start
    on_end: Callable[[Ended | None], None]
    out_fd: int | None  # the output pipe, until EOF (or given up)
    watching_exit: bool = False  # its pidfd is registered
    returncode: int | None = None
    exited: tuple[float, float] | None = None  # (duration, time.time()) at the exit
    killing: bool = False  # a kill or reap thread has it
    group_gone: bool = False
    how: RunEnd = RunEnd.EXITED
    reason: str = ""
    output_until: float = 0.0  # with the group gone: EOF awaited until then (monotonic)

    @property
    def deadline(self) -> float | None:
        return None if self.timeout is None else self.started + self.timeout


class Follower(threading.Thread):
    def __init__(self, stopping: threading.Event, stop_signal: Callable[[], int | None]) -> None:
        super().__init__(name="follower", daemon=True)
        self.stopping, self.stop_signal = stopping, stop_signal
        self._sel = selectors.DefaultSelector()
        # work for the follower's thread from others: (what, the child it is about or None)
        self._inbox: queue.SimpleQueue[tuple[Callable[[_Followed], None], _Followed | None]] = (
            queue.SimpleQueue()
        )
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._runs: set[_Followed] = set()
        self._count = 0  # len(self._runs), for other threads
        self._idle = threading.Condition()
        self._halted = False
        self._touched: set[_Followed] = set()  # children with news since the last step
        self._swept = 0.0  # time.monotonic() of the last look at every child

    # -- other threads --------------------------------------------------------------------
    def follow(
        self,
        child: Child,
        out_fd: int,
        *,
        label: str,
        job: str,
        timeout: float | None,
        kill_after: float,
        started: float,
        on_end: Callable[[Ended | None], None],
    ) -> None:
        """Follow a started child (its gate open) and its output pipe (the follower closes
        it); `on_end(Ended)` once it is over — `on_end(None)` if following it failed (a bug,
        logged). `started`: time.monotonic() at its start."""
        f = _Followed(child, label, OutputTail(job), timeout, kill_after, started, on_end, out_fd)
        with self._idle:
            self._count += 1
        self._post(self._add, f)

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no child is followed; False after `timeout`."""
        with self._idle:
            return self._idle.wait_for(lambda: self._count == 0, timeout)

    def halt(self) -> None:
        """Stop the loop (runs still followed are dropped: call after wait_idle)."""
        self._post(self._halt, None)

    def _post(self, fn: Callable[[_Followed], None], f: _Followed | None) -> None:
        self._inbox.put((fn, f))  # type: ignore[arg-type]
        with contextlib.suppress(BlockingIOError):  # full: a wake-up is pending anyway
            os.write(self._wake_w, b"x")

    # -- the follower's thread ------------------------------------------------------------
    def run(self) -> None:
        try:
            while not self._halted:
                self._step()
        finally:
            self._sel.close()
            os.close(self._wake_r)
            os.close(self._wake_w)

    def _step(self) -> None:
        for key, _mask in self._sel.select(self._wait()):
            f = key.data
            if f is None:
                self._drain_inbox()
                continue
            try:
                if key.fd == f.out_fd:
                    self._read(f)
                else:
                    self._exited(f)
            except Exception:  # the follower must not die: other runs need it
                log.exception("%s: internal error", f.label)
                self._give_up(f)
            self._touched.add(f)
        # the children with news; every child once a TICK (--timeout, conchd's stop, exits
        # without a pidfd): a step costs what happened, not how many children run
        now = time.monotonic()
        if now - self._swept >= TICK:
            self._swept, self._touched = now, set(self._runs)
        touched, self._touched = self._touched, set()
        for f in touched:
            try:
                self._check(f, now)
            except Exception:
                log.exception("%s: internal error", f.label)
                self._give_up(f)

    def _wait(self) -> float | None:
        if not self._runs:
            return None  # nothing to follow: until something is posted
        if self._touched:
            return 0.0
        return max(0.0, self._swept + TICK - time.monotonic())

    def _drain_inbox(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.read(self._wake_r, 4096)
        while True:
            try:
                fn, f = self._inbox.get_nowait()
            except queue.Empty:
                return
            try:
                fn(f)  # type: ignore[arg-type]
            except Exception:
                log.exception("%s: internal error", f.label if f else "follower")
                if f is not None:
                    self._give_up(f)
            if f is not None:
                self._touched.add(f)

    def _halt(self, _f: _Followed | None) -> None:
        self._halted = True

    def _add(self, f: _Followed) -> None:
        self._runs.add(f)
        assert f.out_fd is not None  # closed by the follower only
        self._sel.register(f.out_fd, selectors.EVENT_READ, f)
        pidfd = f.child.pidfd
        if pidfd is not None:
            self._sel.register(pidfd, selectors.EVENT_READ, f)
            f.watching_exit = True

    def _read(self, f: _Followed) -> None:
        assert f.out_fd is not None
        try:
            chunk = os.read(f.out_fd, 65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        if chunk:
            f.tail.feed(chunk)
        else:
            self._close_output(f)

    def _close_output(self, f: _Followed) -> None:
        if f.out_fd is None:
            return
        self._sel.unregister(f.out_fd)
        os.close(f.out_fd)
        f.out_fd = None
        f.tail.close()

    def _unwatch_exit(self, f: _Followed) -> None:
        """Before anything reaps the child (which closes its pidfd)."""
        pidfd = f.child.pidfd
        if f.watching_exit and pidfd is not None:
            self._sel.unregister(pidfd)
        f.watching_exit = False

    def _exited(self, f: _Followed) -> None:
        self._unwatch_exit(f)
        self._poll(f)

    def _poll(self, f: _Followed) -> None:
        """Reap the child if it exited. Only when its pidfd is not watched: reaping closes it."""
        if f.returncode is not None or f.killing or f.watching_exit:
            return
        rc = f.child.poll()
        if rc is None:
            return
        f.returncode = rc
        f.exited = (time.monotonic() - f.started, time.time())
        if f.child.group_alive():  # processes left behind: TERM, then KILL (a thread)
            self._in_thread(f, lambda: f.child.reap_group(f.kill_after))
        else:
            self._group_gone(f)

    def _check(self, f: _Followed, now: float) -> None:
        if not f.watching_exit:  # no pidfd: poll (also after a kill thread reported back)
            self._poll(f)
        if f.returncode is None and not f.killing:
            if self.stopping.is_set():
                self._interrupt(f)
            elif f.deadline is not None and now >= f.deadline:
                f.how = RunEnd.TIMEOUT
                f.reason = f"--timeout {f.timeout:g}s passed: SIGTERM, SIGKILL after --kill-after"
                log.warning("%s: %s (%ss)", f.label, f.reason, f.kill_after)
                self._kill(f, signal.SIGTERM)
        if f.group_gone and (f.out_fd is None or now >= f.output_until):
            self._end(f)

    def _interrupt(self, f: _Followed) -> None:
        s = self.stop_signal() or signal.SIGTERM
        f.how = RunEnd.INTERRUPTED
        f.reason = f"conchd stopping ({signal.Signals(s).name}): signal forwarded"
        log.warning("%s: %s; SIGKILL after %ss", f.label, f.reason, f.kill_after)
        self._kill(f, s)

    def _kill(self, f: _Followed, sig: int) -> None:
        """The kill sequence in a thread: the child's status comes back with it."""

        def kill() -> None:
            rc = f.child.terminate_group(f.kill_after, sig=sig)
            f.returncode = rc
            f.exited = (time.monotonic() - f.started, time.time())

        self._unwatch_exit(f)
        self._in_thread(f, kill)

    def _in_thread(self, f: _Followed, work: Callable[[], None]) -> None:
        f.killing = True

        def body() -> None:
            try:
                work()
            except Exception:
                log.exception("%s: internal error", f.label)
            finally:
                self._post(self._killed, f)

        threading.Thread(target=body, name=f"kill {f.label}", daemon=True).start()

    def _killed(self, f: _Followed) -> None:
        f.killing = False
        if f.returncode is None:  # the kill sequence failed: nothing more can be done
            f.returncode, f.exited = -signal.SIGKILL, (time.monotonic() - f.started, time.time())
        self._group_gone(f)

    def _group_gone(self, f: _Followed) -> None:
        f.group_gone = True
        f.output_until = time.monotonic() + OUTPUT_GRACE
        self._check(f, time.monotonic())

    def _end(self, f: _Followed) -> None:
        if f not in self._runs:
            return
        self._close_output(f)  # a process that escaped the group may hold it: not waited for
        assert f.returncode is not None and f.exited is not None
        duration, finished = f.exited
        try:  # reported before it is forgotten: wait_idle() means every report is made
            f.on_end(Ended(f.returncode, f.how, f.reason, duration, finished, f.tail.tail()))
        finally:
            self._forget(f)

    def _give_up(self, f: _Followed) -> None:
        """After an internal error: stop following (the run hears of a failure)."""
        if f not in self._runs:
            return
        with contextlib.suppress(Exception):
            self._unwatch_exit(f)
            self._close_output(f)
        with contextlib.suppress(Exception):
            f.on_end(None)
        self._forget(f)

    def _forget(self, f: _Followed) -> None:
        self._runs.discard(f)
        with self._idle:
            self._count -= 1
            self._idle.notify_all()
