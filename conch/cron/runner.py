"""One run: a claimed tick run by this daemon.

Started by the daemon's launcher (conch.cron.launcher), in claim order: the watchdog first (no
watchdog, no run), the child held at its gate until the watchdog guards its group
(conch.supervisor), CONCH_JOB / CONCH_TICK / CONCH_REV in its environment. Then the daemon's
follower (conch.cron.follower) follows it with every other child: its output logged, --timeout
and conchd's stop honoured, its group reaped; the record goes to the daemon's result writer
(conch.cron.results), which calls `finished` once it is written. A run knows nothing of the
daemon: it gets a RunContext and reports back through its one callback, `on_finished(run)`.
"""

from __future__ import annotations

import logging
import os
import shlex
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from conch.cron import store
from conch.cron.follower import Ended, RunEnd
from conch.cron.metrics import NoMetrics
from conch.cron.model import (
    MAX_RETRY_WAIT,
    Job,
    RunRecord,
    RunStatus,
    Tick,
    format_tick,
    result_status,
)
from conch.errors import EXIT_OSERR, ConchError, child_exit_code
from conch.holder import rfc3339

if TYPE_CHECKING:
    from conch.cron.follower import Follower
    from conch.cron.guard import GroupGuard
    from conch.cron.results import ResultWriter
    from conch.supervisor import Child

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunContext:
    """What every run of one daemon shares."""

    metrics: NoMetrics
    stopping: threading.Event  # set when conchd stops: the child gets its signal
    stop_signal: Callable[[], int | None]  # the signal conchd is stopping on (None: SIGTERM)
    on_finished: Callable[[Run], None]  # the run's report, once its result is written (or not)
    guard: GroupGuard  # the daemon's one watchdog, for every run's process group
    follower: Follower  # follows every started child
    results: ResultWriter  # writes the records of finished runs
    # start the run's next attempt (--retries) after the delay, unless conchd stops first
    retry_later: Callable[[Run, float], None]
    # conchd's environment, which every child's starts from (copied once: conchd never
    # changes its own)
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))


class Run:
    """One claimed tick being run by this daemon."""

    def __init__(self, ctx: RunContext, job: Job, tick: Tick, c: store.Claim, lease: int) -> None:
        assert c.record is not None
        self.ctx, self.job, self.tick = ctx, job, tick
        self.rev = c.revision  # CONCH_REV; also the running record's mod revision
        self.record = c.record
        self.lease = lease  # the lease the alive marker is attached to
        self.done = False  # its result is written (or given up)
        self.recorded = False  # the result is in etcd
        self._pgid = 0  # the child's process group, once started
        self.attempt = 1  # CONCH_ATTEMPT (--retries)
        self._earlier: list[dict[str, Any]] = []  # the failed attempts before this one
        # between two attempts: the last attempt's record, written if conchd stops meanwhile
        self._waiting: RunRecord | None = None
        self._lock = threading.Lock()

    @property
    def label(self) -> str:
        return f"job {self.job.name!r} tick {format_tick(self.tick)}"

    def launch(self) -> None:
        """Start the child (the launcher's thread) and hand it to the follower. Never raises:
        a run that cannot start is recorded as failed."""
        if self.attempt == 1:
            self.ctx.metrics.running(+1)
            if self.job.starting_deadline is not None:
                late = time.time() - self.tick / 1e6
                if late > self.job.starting_deadline:
                    self._missed(late)
                    return
        else:
            self.ctx.metrics.retry(self.job.name)
        try:
            child, out_r, rec, m0 = self._start()
            if child is not None:
                self._pgid = child.pgid
                self.ctx.follower.follow(
                    child, out_r, label=self.label, job=self.job.name, timeout=self.job.timeout,
                    kill_after=self.job.kill_after, started=m0,
                    on_end=lambda end: self._ended(rec, end),
                )  # fmt: skip
                return
        except Exception:  # a bug must not leave the run unaccounted
            log.exception("%s: internal error", self.label)
            self.finished(False)
            return
        self.ctx.results.put(self, rec)

    def _missed(self, late: float) -> None:
        """Not started within --starting-deadline of its tick: recorded missed, not run."""
        why = (f"not started within --starting-deadline {self.job.starting_deadline:g}s of its "
               f"tick ({late:.3f}s late)")  # fmt: skip
        log.warning("%s: missed: %s", self.label, why)
        self.ctx.metrics.run(self.job.name, RunStatus.MISSED)
        now = rfc3339(time.time())
        self.ctx.results.put(self, replace(self.record, status=RunStatus.MISSED, started=None,
                                           finished=now, rev=self.rev, reason=why))  # fmt: skip

    def finished(self, recorded: bool) -> None:
        """The result writer's report: the record is written (or given up)."""
        self.recorded = recorded
        self.done = True
        self.ctx.metrics.running(-1)
        self.ctx.on_finished(self)

    def _start(self) -> tuple[Child | None, int, RunRecord, float]:
        """(child, its output pipe, the running record, time.monotonic() at the start) — or
        (None, -1, the failed record, ...) when the child could not be started."""
        from conch.supervisor import Child

        job, metrics = self.job, self.ctx.metrics
        env = {**self.ctx.env, "CONCH_JOB": job.name, "CONCH_TICK": format_tick(self.tick),
               "CONCH_REV": str(self.rev), "CONCH_ATTEMPT": str(self.attempt)}  # fmt: skip
        if self.record.manual:
            env["CONCH_MANUAL"] = "1"
        t0, m0 = time.time(), time.monotonic()
        if self.attempt == 1:
            metrics.lag(job.name, t0 - self.tick / 1e6)
        rec = replace(self.record, rev=self.rev, started=rfc3339(t0), attempt=self.attempt,
                      attempts=list(self._earlier))  # fmt: skip

        def not_run(code: int, msg: str) -> tuple[None, int, RunRecord, float]:
            log.warning("%s: %s", self.label, msg)
            metrics.run(job.name, RunStatus.FAILED, 0.0)
            failed = replace(
                rec, status=RunStatus.FAILED, exit_code=code, finished=rfc3339(time.time()),
                duration=0.0, reason=msg, output=msg,
            )  # fmt: skip
            return None, -1, failed, m0

        # the daemon's watchdog first: it kills the group if conchd dies (SIGKILL, OOM), so no
        # orphan outlives its daemon; if none can be started, the job is not run at all
        guard = self.ctx.guard
        try:
            guard.ready()
        except OSError as e:
            return not_run(EXIT_OSERR, f"cannot start the watchdog: {e.strerror or e}")
        # the child waits at its gate until the watchdog guards its group: a conchd that dies
        # before closes the gate, and the command never starts
        try:
            out_r, out_w = os.pipe()
        except OSError as e:  # EMFILE: every descriptor in use (docs/cron.md, "Limits")
            return not_run(EXIT_OSERR, f"cannot run {job.cmd[0]!r}: {e.strerror or e}")
        try:
            with open(os.devnull, "rb") as devnull:
                child = Child.spawn(
                    job.cmd, env, stdin=devnull.fileno(), stdout=out_w, stderr=out_w
                )
        except ConchError as e:
            os.close(out_r)
            return not_run(e.exit_code, str(e))
        except OSError as e:  # /dev/null could not be opened (EMFILE)
            os.close(out_r)
            return not_run(EXIT_OSERR, f"cannot run {job.cmd[0]!r}: {e.strerror or e}")
        finally:
            os.close(out_w)
        try:
            guard.guard(child.pgid, job.kill_after)
        except OSError as e:
            child.terminate_group(job.kill_after)  # closes the gate: the command never ran
            os.close(out_r)
            return not_run(EXIT_OSERR, f"no watchdog took the run's process group: {e}")
        child.open_gate()
        log.info("%s: started pid %d (CONCH_REV %d): %s", self.label, child.pid, self.rev,
                 shlex.join(job.cmd))  # fmt: skip
        return child, out_r, rec, m0

    def _ended(self, rec: RunRecord, end: Ended | None) -> None:
        """The follower's report (its thread): the child is over, its group reaped."""
        if end is None:  # following it failed (logged): no record
            self.finished(False)
            return
        self.ctx.guard.release(self._pgid)
        code = child_exit_code(end.returncode)
        timed_out = end.how is RunEnd.TIMEOUT
        status = result_status(code, timed_out=timed_out)
        log.info("%s: %s with %d after %.3fs", self.label, status, code, end.duration)
        self.ctx.metrics.run(self.job.name, status, end.duration)
        done = replace(
            rec, status=status, exit_code=code, finished=rfc3339(end.finished),
            duration=round(end.duration, 3), timed_out=timed_out, reason=end.reason,
            output=end.output,
        )  # fmt: skip
        if (status is RunStatus.FAILED and end.how is not RunEnd.INTERRUPTED
                and self.attempt <= self.job.retries
                and not self.ctx.stopping.is_set()):  # fmt: skip
            # a retry: the same tick and claim (CONCH_REV), its alive marker kept meanwhile
            delay = min(self.job.retry_delay * 2 ** (self.attempt - 1), MAX_RETRY_WAIT)
            log.warning("%s: attempt %d of %d failed; the next in %gs", self.label,
                        self.attempt, self.job.retries + 1, delay)  # fmt: skip
            with self._lock:
                self._earlier.append(done.summary())
                self._waiting = done
            self.ctx.retry_later(self, delay)
            return
        self.ctx.results.put(self, done)

    def retry_now(self) -> bool:
        """The delay passed: the next attempt is due (the caller launches it). False if conchd
        stopped first (the last attempt's record was written instead)."""
        with self._lock:
            if self._waiting is None:
                return False
            self._waiting = None
            self.attempt += 1
            return True

    def give_up_retry(self) -> None:
        """conchd stops while the run waits for its next attempt: the last attempt's record
        is its result."""
        with self._lock:
            rec, self._waiting = self._waiting, None
        if rec is not None:
            log.warning("%s: conchd stopping: no more attempts", self.label)
            self.ctx.results.put(self, rec)
