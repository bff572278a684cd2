"""One run: a claimed tick run by this daemon.

Started by the daemon's launcher (conch.cron.launcher), in claim order: the watchdog first (no
watchdog, no run), the child held at its gate until the watchdog guards its group
(conch.supervisor), CONCH_JOB / CONCH_TICK / CONCH_REV in its environment. Then a thread of its
own follows it: its output logged (conch.cron.output), --timeout and conchd's stop honoured, its
group reaped; the record goes to the daemon's result writer (conch.cron.results), which calls
`finished` once it is written. A run knows nothing of the daemon: it gets a RunContext and
reports back through its one callback, `on_finished(run)`.
"""

from __future__ import annotations

import enum
import logging
import os
import shlex
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from conch import keys
from conch.cron import store
from conch.cron.metrics import NoMetrics
from conch.cron.model import Job, RunRecord, RunStatus, Tick, format_tick, result_status
from conch.cron.output import OutputReader
from conch.errors import EXIT_OSERR, ConchError, child_exit_code
from conch.holder import rfc3339

if TYPE_CHECKING:
    from conch.cron.guard import GroupGuard
    from conch.cron.results import ResultWriter
    from conch.supervisor import Child

log = logging.getLogger(__name__)


class RunEnd(enum.Enum):
    """How a run's child ended."""

    EXITED = "exited"  # by itself
    INTERRUPTED = "interrupted"  # conchd was stopping: it got conchd's signal
    TIMEOUT = "timeout"  # its --timeout passed: SIGTERM, SIGKILL after --kill-after


@dataclass(frozen=True)
class RunContext:
    """What every run of one daemon shares."""

    metrics: NoMetrics
    stopping: threading.Event  # set when conchd stops: the child gets its signal
    stop_signal: Callable[[], int | None]  # the signal conchd is stopping on (None: SIGTERM)
    on_finished: Callable[[Run], None]  # the run's report, once its result is written (or not)
    guard: GroupGuard  # the daemon's one watchdog, for every run's process group
    results: ResultWriter  # writes the records of finished runs


class Run:
    """One claimed tick being run by this daemon (its own thread)."""

    def __init__(self, ctx: RunContext, job: Job, tick: Tick, c: store.Claim, lease: int) -> None:
        assert c.record is not None
        self.ctx, self.job, self.tick = ctx, job, tick
        self.rev = c.revision  # CONCH_REV; also the running record's mod revision
        self.record = c.record
        self.lease = lease  # the lease the alive marker is attached to
        self.done = False  # its result is written (or given up)
        self.recorded = False  # the result is in etcd
        self.thread: threading.Thread | None = None  # follows the child, once started
        self._m0 = 0.0  # time.monotonic() at the start

    @property
    def label(self) -> str:
        return f"job {self.job.name!r} tick {format_tick(self.tick)}"

    def launch(self) -> None:
        """Start the child (the launcher's thread); then follow it in the run's own thread.
        Never raises: a run that cannot start is recorded as failed."""
        self.ctx.metrics.running(+1)
        try:
            child, out_r, rec = self._start()
        except Exception:  # a bug must not leave the run unaccounted
            log.exception("%s: internal error", self.label)
            self.finished(False)
            return
        if child is None:
            self.ctx.results.put(self, rec)
            return
        self.thread = threading.Thread(
            target=self._follow, args=(child, out_r, rec),
            name=f"run {self.job.name} {keys.tick_token(self.tick)}", daemon=True,
        )  # fmt: skip
        self.thread.start()

    def _follow(self, child: Child, out_r: int, rec: RunRecord) -> None:
        try:
            rec = self._supervise(child, out_r, rec)
        except Exception:  # a run thread must never die silently
            log.exception("%s: internal error", self.label)
            self.finished(False)
            return
        self.ctx.results.put(self, rec)

    def finished(self, recorded: bool) -> None:
        """The result writer's report: the record is written (or given up)."""
        self.recorded = recorded
        self.done = True
        self.ctx.metrics.running(-1)
        self.ctx.on_finished(self)

    def _start(self) -> tuple[Child | None, int, RunRecord]:
        """(child, its output pipe, the running record) — or (None, -1, the failed record)
        when the child could not be started."""
        from conch.supervisor import Child

        job, metrics = self.job, self.ctx.metrics
        env = dict(os.environ)
        env.update(CONCH_JOB=job.name, CONCH_TICK=format_tick(self.tick), CONCH_REV=str(self.rev))
        t0, m0 = time.time(), time.monotonic()
        metrics.lag(job.name, t0 - self.tick / 1e6)
        rec = replace(self.record, rev=self.rev, started=rfc3339(t0))

        def not_run(code: int, msg: str) -> tuple[None, int, RunRecord]:
            log.warning("%s: %s", self.label, msg)
            metrics.run(job.name, RunStatus.FAILED, 0.0)
            return None, -1, replace(
                rec, status=RunStatus.FAILED, exit_code=code, finished=rfc3339(time.time()),
                duration=0.0, reason=msg, output=msg,
            )  # fmt: skip

        # the daemon's watchdog first: it kills the group if conchd dies (SIGKILL, OOM), so no
        # orphan outlives its daemon; if none can be started, the job is not run at all
        guard = self.ctx.guard
        try:
            guard.ready()
        except OSError as e:
            return not_run(EXIT_OSERR, f"cannot start the watchdog: {e.strerror or e}")
        # the child waits at its gate until the watchdog guards its group: a conchd that dies
        # before closes the gate, and the command never starts
        out_r, out_w = os.pipe()
        try:
            with open(os.devnull, "rb") as devnull:
                child = Child.spawn(
                    job.cmd, env, stdin=devnull.fileno(), stdout=out_w, stderr=out_w
                )
        except ConchError as e:
            os.close(out_r)
            return not_run(e.exit_code, str(e))
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
        self._m0 = m0
        return child, out_r, rec

    def _supervise(self, child: Child, out_r: int, rec: RunRecord) -> RunRecord:
        """Follow the started child to its end; the record of its result."""
        job, metrics, m0 = self.job, self.ctx.metrics, self._m0
        guard = self.ctx.guard
        reader = OutputReader(out_r, job.name)
        reader.start()
        deadline = None if job.timeout is None else m0 + job.timeout
        how, reason = RunEnd.EXITED, ""
        while True:
            rc = child.wait(0.1)
            if rc is not None:
                break
            if self.ctx.stopping.is_set():
                s = self.ctx.stop_signal() or signal.SIGTERM
                how = RunEnd.INTERRUPTED
                reason = f"conchd stopping ({signal.Signals(s).name}): signal forwarded"
                log.warning("%s: %s; SIGKILL after %ss", self.label, reason, job.kill_after)
                rc = child.terminate_group(job.kill_after, sig=s)
                break
            if deadline is not None and time.monotonic() >= deadline:
                how = RunEnd.TIMEOUT
                reason = f"--timeout {job.timeout:g}s passed: SIGTERM, SIGKILL after --kill-after"
                log.warning("%s: %s (%ss)", self.label, reason, job.kill_after)
                rc = child.terminate_group(job.kill_after)
                break
        duration = time.monotonic() - m0
        finished = time.time()
        child.reap_group(job.kill_after)  # grandchildren left behind get TERM, then KILL
        guard.release(child.pgid)
        reader.join(2.0)  # a process that escaped the group may hold the pipe: do not wait
        code = child_exit_code(rc)
        timed_out = how is RunEnd.TIMEOUT
        status = result_status(code, timed_out=timed_out)
        log.info("%s: %s with %d after %.3fs", self.label, status, code, duration)
        metrics.run(job.name, status, duration)
        return replace(
            rec, status=status, exit_code=code, finished=rfc3339(finished),
            duration=round(duration, 3), timed_out=timed_out, reason=reason,
            output=reader.tail(),
        )  # fmt: skip
