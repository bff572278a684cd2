"""The conchd daemon: one lease (conch.session.Session, --ttl), a watch on the job definitions,
the scheduler loop in the main thread, and shutdown. Claims are conch.cron.claimer's, runs
conch.cron.runner's (started by one launcher thread, followed by one follower thread); history
pruning, heartbeats and --on-failure hooks (conch.cron.hooks) threads of their own. The loop
waits on two watches: the job definitions and the `cron run` requests.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from conch import __version__, keys
from conch.client import (
    Client,
    EtcdAuthError,
    EtcdClusterChanged,
    EtcdError,
    EventType,
    Watch,
    WatchCompacted,
)
from conch.cron import store
from conch.cron.claimer import Claimer, Requests
from conch.cron.follower import OUTPUT_GRACE, Follower
from conch.cron.guard import GroupGuard
from conch.cron.heartbeat import Heartbeat
from conch.cron.hooks import FailureHooks
from conch.cron.housekeeper import Housekeeper
from conch.cron.launcher import Launcher
from conch.cron.metrics import NoMetrics
from conch.cron.model import Job, Labels, Tick, format_tick, labels_match, tick_of
from conch.cron.results import RESULT_GRACE, ResultWriter
from conch.cron.runner import Run, RunContext
from conch.cron.scheduler import JobState
from conch.cron.share import SHARE_GRACE
from conch.errors import EXIT_UNAVAILABLE, ConchError

if TYPE_CHECKING:
    from conch.session import Session

log = logging.getLogger(__name__)

MAX_WAIT = 0.25  # longest sleep of the scheduler loop (it also waits on the job watch)
STOP_SPARE = 3.0  # on stopping, beyond the runs' bound: for the other threads to end


class Daemon:
    def __init__(
        self,
        client: Client,
        prefix: str,
        daemon_id: str,
        ttl: float,
        metrics: NoMetrics,
        labels: Labels = (),
    ) -> None:
        self.client, self.prefix, self.id, self.ttl = client, prefix, daemon_id, ttl
        self.labels = labels  # --label: jobs added --on other labels are not claimed here
        self.metrics = metrics
        self.host = socket.gethostname()
        self.jobs: dict[str, JobState] = {}
        self.runs: dict[tuple[str, Tick], Run] = {}
        self._lock = threading.Lock()
        self.stopping = threading.Event()
        self.stop_signal: int | None = None
        self.session: Session | None = None
        self._stale: list[int] = []  # leases given up during an outage: revoke when possible
        self._watch: Watch | None = None  # the job definitions
        self._requests_watch: Watch | None = None  # the `cron run` requests
        self.requests: Requests = {}  # the pending ones (conch.cron.claimer)
        self._woken = threading.Event()  # a watch has something: events, an error, its end
        self._fail_delay = 0.5
        self._outage_logged = False
        self.housekeeper = Housekeeper(client, prefix)
        self._jobs_dir = keys.cron_jobs_dir(prefix)
        self._requests_dir = keys.cron_requests_dir(prefix)
        self.fatal: str | None = None  # set when conchd must stop (the cluster changed)
        self.heartbeat = Heartbeat(
            client, prefix, daemon_id, self.host, self._lease_id, metrics, labels
        )
        self.claimer = Claimer(
            client, prefix, daemon_id, self.host, metrics, self.time,
            start_run=self._start_run, on_recorded=self.housekeeper.request,
        )  # fmt: skip
        self.guard = GroupGuard()  # one watchdog for every run's process group
        self.launcher = Launcher()  # starts won ticks in claim order
        # follows every started child: output, end, --timeout, conchd's stop
        self.follower = Follower(self.stopping, lambda: self.stop_signal)
        env = dict(os.environ)  # conchd's: every child's and hook's starts from it
        self.hooks = FailureHooks(
            client, prefix, daemon_id, self.host, metrics,
            jobs=lambda: [st.job for st in list(self.jobs.values())], env=env,
        )  # fmt: skip
        self.results = ResultWriter(client, prefix, self.stopping, self.hooks)  # writes records
        self._launching = True  # until shutdown halts the launcher (under self._lock)
        self._run_context = RunContext(
            metrics, self.stopping, lambda: self.stop_signal, self._run_finished, self.guard,
            self.follower, self.results, self._retry_later, env,
        )  # fmt: skip

    # -- signals ---------------------------------------------------------------------------
    def on_signal(self, signum: int, _frame: object = None) -> None:
        if self.stop_signal is None:
            self.stop_signal = signum
        self.stopping.set()

    def stop_fatal(self, why: str) -> None:
        """Stop as on SIGTERM (running jobs get SIGTERM, then SIGKILL after their
        --kill-after), but exit 69: etcd is no longer the cluster this daemon claimed in, so
        no result is written and no tick is claimed there."""
        log.error("%s", why)
        self.fatal = why
        if self.stop_signal is None:
            self.stop_signal = signal.SIGTERM
        self.stopping.set()

    def _lease_id(self) -> int | None:
        s = self.session
        return s.lease_id if s is not None and s.is_trusted() else None

    # -- time ------------------------------------------------------------------------------
    def time(self) -> float:
        """Wall-clock time as the group of daemons agrees on it (conch.clockskew): this host's
        clock, corrected when it disagrees with its peers' by more than THRESHOLD."""
        return time.time() + self.heartbeat.correction()

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.time(), UTC)

    # -- main loop -------------------------------------------------------------------------
    def serve(self) -> int:
        log.info(
            "conchd %s: id %s, prefix %s, lease TTL %gs, endpoints %s",
            __version__, self.id, self.prefix, self.ttl, ",".join(self.client.config.endpoints),
        )  # fmt: skip
        self.housekeeper.start()
        self.heartbeat.start()
        self.launcher.start()
        self.follower.start()
        self.results.start()
        self.hooks.start()
        while not self.stopping.is_set():
            try:
                ok = self._step()
            except EtcdClusterChanged as e:
                self.stop_fatal(str(e))
                break
            except EtcdError as e:  # belt and braces: every etcd call below handles its own
                log.warning("etcd error: %s; retrying", e)
                ok = False
            except Exception:  # a bug must not stop a daemon that serves other jobs
                log.exception("internal error in the scheduler loop; going on")
                ok = False
            if self.client.identity_problem is not None:
                self.stop_fatal(self.client.identity_problem)
                break
            if ok:
                self._fail_delay = 0.5
            else:
                self.stopping.wait(self._fail_delay)
                self._fail_delay = min(self._fail_delay * 2, 5.0)
        return self._shutdown()

    def _step(self) -> bool:
        """One pass: lease, re-attach, job list/watch, wait for the next tick or an event,
        claim what is due. False: etcd trouble, back off."""
        if not self._ensure_session():
            return False
        self._reattach()
        if self._watch is None and not self._relist():
            return False
        self._drain(self._wait_time())
        if self.heartbeat.settled():  # checked before reading the (corrected) time
            self.claimer.claim_due(
                self.jobs, self.session, self.stopping, self.heartbeat.peers(),
                self.heartbeat.peer_labels(), self.requests,
            )  # fmt: skip
        return True

    def _outage(self, what: str, e: Exception) -> None:
        if not self._outage_logged:
            log.warning("%s: %s; retrying (running children are not affected)", what, e)
            self._outage_logged = True
        else:
            log.debug("%s: %s", what, e)

    # -- lease ---------------------------------------------------------------------------------
    def _ensure_session(self) -> bool:
        from conch.session import Session

        s = self.session
        if s is not None:
            if s.is_trusted():
                return True
            reason = s.loss_reason or "no keepalive acknowledged in time"
            s.mark_lost(reason)
            with self._lock:
                n = sum(1 for r in self.runs.values() if not r.done)
            log.warning(
                "lease %x lost (%s): claiming no ticks until a new lease is granted; "
                "%d run(s) of this daemon go on (shown as lost until etcd answers again)",
                s.lease_id, reason, n,
            )  # fmt: skip
            self.metrics.session(False)
            if not s.close(revoke=True):
                self._stale.append(s.lease_id)
            self.session = None
        for lease_id in list(self._stale):
            try:
                self.client.lease_revoke(lease_id, timeout=2.0)
                self._stale.remove(lease_id)
            except EtcdError as e:
                log.debug("revoke of stale lease %x failed: %s", lease_id, e)
        try:
            s = Session(self.client, self.ttl, probe_key=self._jobs_dir).open()
        except EtcdAuthError as e:
            self._outage("etcd refused the lease", e)
            return False
        except EtcdError as e:
            self._outage("etcd unreachable", e)
            return False
        self.session = s
        self._outage_logged = False
        self.metrics.session(True)
        log.info("lease %x granted (TTL %ds)", s.lease_id, s.granted_ttl)
        return True

    def _reattach(self) -> None:
        s = self.session
        if s is None:
            return
        with self._lock:
            runs = [r for r in self.runs.values() if not r.done and r.lease != s.lease_id]
        for r in runs:
            try:
                ok = store.reattach(
                    self.client, self.prefix, r.job.name, r.tick, r.rev, self.id, s.lease_id,
                    timeout=store.CLAIM_TIMEOUT,
                )  # fmt: skip
            except EtcdError as e:
                log.debug("%s: re-attach failed: %s", r.label, e)
                return
            r.lease = s.lease_id
            if ok:
                log.info("%s: still running: alive again on lease %x", r.label, s.lease_id)

    # -- job definitions -------------------------------------------------------------------
    def _relist(self) -> bool:
        """List the jobs and the `cron run` requests, and watch both from there."""
        end = keys.prefix_range_end(self._jobs_dir)
        w = rw = None
        try:
            kvs, rev = self.client.get_range(self._jobs_dir, end)
            w = self.client.watch(self._jobs_dir, end, start_revision=rev + 1,
                                  wake=self._woken.set)  # fmt: skip
            pending, req_rev = store.list_requests(self.client, self.prefix)
            rw = self.client.watch(
                self._requests_dir, keys.prefix_range_end(self._requests_dir),
                start_revision=req_rev + 1, wake=self._woken.set,
            )  # fmt: skip
        except EtcdError as e:
            for opened in (w, rw):
                if opened is not None:
                    opened.cancel(wait=False)
            self._outage("cannot list the jobs", e)
            return False
        seen = set()
        for kv in kvs:
            name = self._apply_put(kv)
            if name is not None:
                seen.add(name)
        for name in list(self.jobs):
            if name not in seen:
                self._remove(name)
        now = time.time()
        old, self.requests = self.requests, {}
        for name, tick in pending:
            self.requests.setdefault(name, {})[tick] = old.get(name, {}).get(tick, now)
        self._watch, self._requests_watch = w, rw
        log.debug("watching %d job(s) from revision %d", len(self.jobs), rev + 1)
        return True

    def _apply_put(self, kv: Any) -> str | None:
        try:
            name = keys.cron_job_name(self.prefix, kv.key)
        except (ValueError, UnicodeDecodeError):
            return None
        cur = self.jobs.get(name)
        if cur is not None and cur.rev == kv.mod_revision:
            return name
        try:
            job = Job.from_json(name, kv.value)
            if job.suspended:
                if self.jobs.pop(name, None) is not None or cur is None:
                    log.info("job %r suspended: not claimed until resumed", name)
                return name
            if not labels_match(job.on, self.labels):
                if self.jobs.pop(name, None) is not None or cur is None:
                    log.info("job %r is for daemons labelled %s: not claimed here", name,
                             " ".join(f"{k}={v}" for k, v in job.on))  # fmt: skip
                return name
            st = JobState.start(job, kv.mod_revision, self.now())
        except (ValueError, OverflowError) as e:
            log.warning("job %r: ignored: %s", name, e)
            self.jobs.pop(name, None)
            return None
        self.jobs[name] = st
        log.info(
            "job %r %s: %s%s, next tick %s", name, "added" if cur is None else "changed",
            job.schedule, "" if job.tz == "UTC" else f" ({job.tz})",
            format_tick(tick_of(st.due)),
        )  # fmt: skip
        return name

    def _remove(self, name: str) -> None:
        if self.jobs.pop(name, None) is not None:
            log.info("job %r removed (a run in progress finishes)", name)

    def _drain(self, timeout: float) -> None:
        """Wait up to `timeout` for either watch, and apply what they bring."""
        w, rw = self._watch, self._requests_watch
        assert w is not None and rw is not None
        if self._woken.wait(timeout):
            self._woken.clear()
        try:
            events, requests = w.get(0), rw.get(0)
        except WatchCompacted as e:
            log.info("job watch: %s; listing again", e)
            self._end_watches()
            return
        except EtcdError as e:
            log.warning("job watch failed: %s; listing again", e)
            self._end_watches()
            return
        for ev in events:
            if ev.type is EventType.PUT:
                self._apply_put(ev.kv)
            else:
                with contextlib.suppress(ValueError, UnicodeDecodeError):
                    self._remove(keys.cron_job_name(self.prefix, ev.kv.key))
        for ev in requests:
            try:
                name, tick = keys.cron_split_tick_key(self._requests_dir, ev.kv.key)
            except (ValueError, UnicodeDecodeError):
                continue
            if ev.type is EventType.PUT:
                self.requests.setdefault(name, {}).setdefault(tick, time.time())
                log.info("job %r: `cron run` requested (tick %s)", name, format_tick(tick))
            elif (pending := self.requests.get(name)) is not None:
                pending.pop(tick, None)
                if not pending:
                    del self.requests[name]

    def _end_watches(self) -> None:
        for w in (self._watch, self._requests_watch):
            if w is not None:
                w.cancel()
        self._watch = self._requests_watch = None

    def _wait_time(self) -> float:
        now = self.time()
        t = MAX_WAIT
        for st in self.jobs.values():
            t = min(t, st.wake_at() - now)
        wall = time.time()
        for name, pending in self.requests.items():
            job = self.jobs.get(name)
            if job is not None:
                delay = job.rank * SHARE_GRACE
                t = min(t, *(seen + delay - wall for seen in pending.values()))
        return max(t, 0.0)

    # -- runs --------------------------------------------------------------------------------
    def _start_run(self, job: Job, tick: Tick, c: store.Claim, lease: int) -> None:
        """A won tick: run it (Claimer's start_run)."""
        with self._lock:
            if (job.name, tick) in self.runs:
                # its schedule came back to a tick this daemon is running
                log.debug("job %r tick %s: already running here", job.name, format_tick(tick))
                return
            r = Run(self._run_context, job, tick, c, lease)
            self.runs[(job.name, tick)] = r
        self.launcher.submit(r)

    def _retry_later(self, r: Run, delay: float) -> None:
        """A run's next attempt (--retries), after `delay` — unless conchd stops first: then
        its last attempt's record is its result."""

        def due() -> None:
            with self._lock:  # against shutdown halting the launcher meanwhile
                if self._launching and not self.stopping.is_set() and r.retry_now():
                    self.launcher.submit(r)
                    return
            r.give_up_retry()

        t = threading.Timer(delay, due)
        t.daemon = True
        t.start()

    def _run_finished(self, r: Run) -> None:
        """A run's report (its on_finished, in its thread)."""
        with self._lock:
            self.runs.pop((r.job.name, r.tick), None)
        if r.recorded:
            self.housekeeper.request(r.job)

    # -- shutdown --------------------------------------------------------------------------
    def _shutdown(self) -> int:
        sig = self.stop_signal or signal.SIGTERM
        with self._lock:
            runs = list(self.runs.values())
        log.info(
            "%s: stopping; %d run(s) in progress get %s, then SIGKILL after their --kill-after",
            signal.Signals(sig).name, len(runs), signal.Signals(sig).name,
        )  # fmt: skip
        # everything but the runs stops at once; then one bound for the runs (their kill
        # sequence, then their results), one for the rest, and the lease revoke (4 s at most)
        for w in (self._watch, self._requests_watch):
            if w is not None:
                w.cancel(wait=False)
        self.housekeeper.halt()
        self.heartbeat.halt()
        longest = max((r.job.kill_after for r in runs), default=0.0)
        from conch.supervisor import SIGKILL_GRACE

        with self._lock:  # no retry is launched from now on: each writes its last record
            self._launching = False
            waiting = list(self.runs.values())
        for r in waiting:
            r.give_up_retry()
        self.launcher.halt()  # runs claimed until now start, and get the signal at once
        self.launcher.join(STOP_SPARE)
        with self._lock:
            runs = list(self.runs.values())
        longest = max((r.job.kill_after for r in runs), default=longest)
        # every child ended and reaped, its output read (or given up after OUTPUT_GRACE)
        self.follower.wait_idle(longest + SIGKILL_GRACE + OUTPUT_GRACE + 1.0)
        self.follower.halt()
        self.results.halt()  # after every record it was given: written or given up
        self.results.join(RESULT_GRACE + store.CLAIM_TIMEOUT + 1.0)
        self.hooks.halt(STOP_SPARE)  # after the results: a failed one may have started a hook
        _join_all([self.housekeeper, self.heartbeat], STOP_SPARE)
        self.guard.close()  # kills the groups of runs that did not end in time, if any
        if self.session is not None:
            self.session.close(revoke=True)
        log.info("stopped")
        if self.fatal is not None:
            raise ConchError(self.fatal, EXIT_UNAVAILABLE)
        return 128 + sig


def _join_all(threads: list[threading.Thread], seconds: float) -> None:
    """Wait for the threads to end, `seconds` at most in all."""
    end = time.monotonic() + seconds
    for t in threads:
        if t.is_alive():
            t.join(max(0.0, end - time.monotonic()))
