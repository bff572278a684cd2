"""One run: a claimed tick run by this daemon, in a thread of its own.

The watchdog first (no watchdog, no run), the child held at its gate until the watchdog is
armed (conch.supervisor), CONCH_JOB / CONCH_TICK / CONCH_REV in its environment, its output
logged (conch.cron.output), --timeout and conchd's stop honoured, then the result written —
retried while etcd is away. A run knows nothing of the daemon: it gets a RunContext and
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

from conch import keys
from conch.client import Client, EtcdClusterChanged, EtcdError
from conch.cron import store
from conch.cron.guard import GroupGuard
from conch.cron.metrics import NoMetrics
from conch.cron.model import Job, RunRecord, RunStatus, Tick, format_tick, result_status
from conch.cron.output import OutputReader
from conch.errors import EXIT_OSERR, ConchError, child_exit_code
from conch.holder import rfc3339

log = logging.getLogger(__name__)

RESULT_GRACE = 10.0  # when stopping with etcd unreachable: give up writing a result after this


class RunEnd(enum.Enum):
    """How a run's child ended."""

    EXITED = "exited"  # by itself
    INTERRUPTED = "interrupted"  # conchd was stopping: it got conchd's signal
    TIMEOUT = "timeout"  # its --timeout passed: SIGTERM, SIGKILL after --kill-after


@dataclass(frozen=True)
class RunContext:
    """What every run of one daemon shares."""

    client: Client
    prefix: str
    metrics: NoMetrics
    stopping: threading.Event  # set when conchd stops: the child gets its signal
    stop_signal: Callable[[], int | None]  # the signal conchd is stopping on (None: SIGTERM)
    on_finished: Callable[[Run], None]  # the run's report, called last in its thread
    guard: GroupGuard  # the daemon's one watchdog, for every run's process group


class Run:
    """One claimed tick being run by this daemon (its own thread)."""

    def __init__(self, ctx: RunContext, job: Job, tick: Tick, c: store.Claim, lease: int) -> None:
        assert c.record is not None
        self.ctx, self.job, self.tick = ctx, job, tick
        self.rev = c.revision  # CONCH_REV; also the running record's mod revision
        self.record = c.record
        self.lease = lease  # the lease the alive marker is attached to
        self.done = False
        self.recorded = False  # the result is in etcd
        self.thread = threading.Thread(
            target=self._main, name=f"run {job.name} {keys.tick_token(tick)}", daemon=True
        )

    @property
    def label(self) -> str:
        return f"job {self.job.name!r} tick {format_tick(self.tick)}"

    def start(self) -> None:
        self.thread.start()

    def _main(self) -> None:
        self.ctx.metrics.running(+1)
        try:
            rec = self._execute()
            self.recorded = self._write(rec)
        except Exception:  # a run thread must never die silently
            log.exception("%s: internal error", self.label)
        finally:
            self.done = True
            self.ctx.metrics.running(-1)
            self.ctx.on_finished(self)

    def _execute(self) -> RunRecord:
        from conch.supervisor import Child

        job, metrics = self.job, self.ctx.metrics
        env = dict(os.environ)
        env.update(CONCH_JOB=job.name, CONCH_TICK=format_tick(self.tick), CONCH_REV=str(self.rev))
        t0, m0 = time.time(), time.monotonic()
        metrics.lag(job.name, t0 - self.tick / 1e6)
        rec = replace(self.record, rev=self.rev, started=rfc3339(t0))

        def not_run(code: int, msg: str) -> RunRecord:
            log.warning("%s: %s", self.label, msg)
            metrics.run(job.name, RunStatus.FAILED, 0.0)
            return replace(
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
        reader = OutputReader(out_r, job.name)
        log.info("%s: started pid %d (CONCH_REV %d): %s", self.label, child.pid, self.rev,
                 shlex.join(job.cmd))  # fmt: skip
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

    def _write(self, rec: RunRecord) -> bool:
        """Record the result; etcd may be down for a while: retry until written (when conchd
        is stopping, give up after RESULT_GRACE). True once written."""
        delay, warned, give_up = 0.2, False, None
        while True:
            timeout = store.CLAIM_TIMEOUT
            if give_up is not None:  # stopping: the last attempt ends with the grace
                timeout = max(0.1, min(timeout, give_up - time.monotonic()))
            try:
                store.finish(
                    self.ctx.client, self.ctx.prefix, self.job.name, self.tick, rec,
                    timeout=timeout,
                )  # fmt: skip
                if warned:
                    log.info("%s: result recorded", self.label)
                return True
            except EtcdClusterChanged as e:
                log.error("%s: result NOT recorded (%s): %s", self.label, rec.status, e)
                return False
            except EtcdError as e:
                now = time.monotonic()
                if self.ctx.stopping.is_set():
                    give_up = give_up or now + RESULT_GRACE
                    if now >= give_up:
                        log.error("%s: result NOT recorded (%s): %s", self.label, rec.status, e)
                        return False
                if not warned:
                    log.warning("%s: cannot record the result yet (%s); retrying", self.label, e)
                    warned = True
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
