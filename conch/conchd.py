"""conchd: the cron daemon. Any number of them serve one etcd; each tick runs on exactly one.

    conchd [GLOBAL OPTIONS] [--id ID] [--ttl 10s] [--metrics-addr HOST:PORT]

One daemon = one lease (conch.session.Session, --ttl), a watch on the job definitions, a
scheduler loop in the main thread, and one thread per run. At each tick every daemon tries the
claim transaction (conch.cron.store.claim); the winner runs CMD in its own process group with
CONCH_JOB, CONCH_TICK and CONCH_REV, logs its output line by line prefixed with the job name,
and writes the result. The design and every decision are in docs/cron.md.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shlex
import signal
import socket
import threading
import time
import unicodedata
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, NoReturn

import click

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
from conch.cron import model, store
from conch.errors import EXIT_OSERR, EXIT_UNAVAILABLE, ConchError, UsageError, child_exit_code
from conch.holder import rfc3339

log = logging.getLogger("conch.conchd")

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
MAX_WAIT = 0.25  # longest sleep of the scheduler loop (it also waits on the job watch)
CLAIM_TIMEOUT = 5.0  # longest single claim transaction
STOP_SPARE = 3.0  # on stopping, beyond the runs' bound: for the other threads to end
RESULT_GRACE = 10.0  # when stopping with etcd unreachable: give up writing a result after this
MAX_LINE = 8192  # longer output lines are logged in pieces


# ---------------------------------------------------------------------------------------
# metrics
# ---------------------------------------------------------------------------------------


def parse_metrics_addr(text: str) -> tuple[str, int]:
    """`HOST:PORT`, `[V6]:PORT` or `:PORT` (every interface) -> (host, port). UsageError."""
    t = text.strip()
    if t.startswith("["):
        host, sep, rest = t[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
        ok = bool(sep and host and port)
    else:
        host, sep, port = t.rpartition(":")
        ok = bool(sep) and ":" not in host
    if not ok or not port.isascii() or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise UsageError(f"--metrics-addr: expected HOST:PORT (port 1-65535), got {text!r}")
    return host or "0.0.0.0", int(port)


class NoMetrics:
    """The metrics interface when --metrics-addr is not given: does nothing."""

    def claim(self, job: str, result: str) -> None: ...
    def run(self, job: str, outcome: str, duration: float | None = None) -> None: ...
    def lag(self, job: str, seconds: float) -> None: ...
    def running(self, delta: int) -> None: ...
    def session(self, up: bool) -> None: ...
    def clock_offset(self, seconds: float) -> None: ...


class Metrics(NoMetrics):
    """Prometheus metrics on HOST:PORT (prometheus_client is imported only here)."""

    def __init__(self, host: str, port: int) -> None:
        import prometheus_client as pc

        self._claims = pc.Counter(
            "conchd_claims",
            "Tick claims tried by this daemon: result=won (this daemon claimed the tick), "
            "lost (another daemon had claimed it) or behind (a newer tick of the job was "
            "already claimed, or the job is newer than the tick)",
            ["job", "result"],
        )
        self._runs = pc.Counter(
            "conchd_runs",
            "Ticks this daemon won, by outcome: ok, failed (non-zero exit, timeout, cannot "
            "run) or skipped (--overlap forbid and the previous run still alive)",
            ["job", "outcome"],
        )
        self._lag = pc.Histogram(
            "conchd_tick_lag_seconds",
            "From the scheduled tick to the start of the child",
            ["job"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )
        self._duration = pc.Histogram(
            "conchd_run_duration_seconds",
            "Run duration, from the start of the child to its exit",
            ["job"],
            buckets=(0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 1800, 3600, 7200, 21600, 86400),
        )
        self._running = pc.Gauge("conchd_running_runs", "Runs in progress on this daemon")
        self._session = pc.Gauge(
            "conchd_session_up", "1 while this daemon holds a lease it trusts (it claims ticks)"
        )
        self._clock_offset = pc.Gauge(
            "conchd_clock_offset_seconds",
            "This host's wall clock minus the other daemons' (median; from their heartbeats). "
            "Beyond 1 s in either direction the daemon schedules by their time",
        )
        try:
            pc.start_http_server(port, addr=host)
        except OSError as e:
            raise UsageError(f"--metrics-addr: cannot listen on {host}:{port}: {e}") from None

    def claim(self, job: str, result: str) -> None:
        self._claims.labels(job=job, result=result).inc()

    def run(self, job: str, outcome: str, duration: float | None = None) -> None:
        self._runs.labels(job=job, outcome=outcome).inc()
        if duration is not None:
            self._duration.labels(job=job).observe(duration)

    def lag(self, job: str, seconds: float) -> None:
        self._lag.labels(job=job).observe(max(seconds, 0.0))

    def running(self, delta: int) -> None:
        self._running.inc(delta)

    def session(self, up: bool) -> None:
        self._session.set(1 if up else 0)

    def clock_offset(self, seconds: float) -> None:
        self._clock_offset.set(seconds)


# ---------------------------------------------------------------------------------------
# one run
# ---------------------------------------------------------------------------------------


class OutputReader(threading.Thread):
    """Reads the child's stdout+stderr pipe: logs each line with the job name, keeps the tail."""

    def __init__(self, fd: int, job: str) -> None:
        super().__init__(name=f"output {job}", daemon=True)
        self.fd, self.job = fd, job
        self._tail = bytearray()
        self._tail_lock = threading.Lock()

    def _emit(self, line: bytes) -> None:
        log.info("[%s] %s", self.job, line.decode("utf-8", "replace").rstrip("\r"))

    def run(self) -> None:
        buf = bytearray()
        try:
            while True:
                try:
                    chunk = os.read(self.fd, 65536)
                except InterruptedError:
                    continue
                except OSError:
                    break
                if not chunk:
                    break
                with self._tail_lock:
                    self._tail += chunk
                    if len(self._tail) > model.TAIL_BYTES:
                        del self._tail[: len(self._tail) - model.TAIL_BYTES]
                buf += chunk
                while (i := buf.find(b"\n")) >= 0:
                    self._emit(bytes(buf[:i]))
                    del buf[: i + 1]
                if len(buf) > MAX_LINE:
                    self._emit(bytes(buf))
                    buf.clear()
            if buf:
                self._emit(bytes(buf))
        finally:
            with contextlib.suppress(OSError):
                os.close(self.fd)

    def tail(self) -> str:
        with self._tail_lock:
            data = bytes(self._tail)
        if len(data) >= model.TAIL_BYTES:  # cut at a character boundary where we can
            i = 0
            while i < 3 and i < len(data) and 0x80 <= data[i] <= 0xBF:
                i += 1
            data = data[i:]
        return data.decode("utf-8", "replace")


class Run:
    """One claimed tick being run by this daemon (its own thread)."""

    def __init__(self, daemon: Daemon, job: model.Job, us: int, c: store.Claim, lease: int) -> None:
        assert c.record is not None
        self.daemon, self.job, self.us = daemon, job, us
        self.rev = c.revision  # CONCH_REV; also the running record's mod revision
        self.record = c.record
        self.lease = lease  # the lease the alive marker is attached to
        self.done = False
        self.thread = threading.Thread(
            target=self._main, name=f"run {job.name} {keys.tick_token(us)}", daemon=True
        )

    @property
    def label(self) -> str:
        return f"job {self.job.name!r} tick {model.format_tick(self.us)}"

    def start(self) -> None:
        self.thread.start()

    def _main(self) -> None:
        self.daemon.metrics.running(+1)
        try:
            rec = self._execute()
            self._write(rec)
        except Exception:  # a run thread must never die silently
            log.exception("%s: internal error", self.label)
        finally:
            self.done = True
            self.daemon.metrics.running(-1)
            self.daemon.run_finished(self)

    def _execute(self) -> model.RunRecord:
        from conch.supervisor import Child
        from conch.watchdog import Watchdog

        job, d = self.job, self.daemon
        env = dict(os.environ)
        env.update(
            CONCH_JOB=job.name, CONCH_TICK=model.format_tick(self.us), CONCH_REV=str(self.rev)
        )
        t0, m0 = time.time(), time.monotonic()
        d.metrics.lag(job.name, t0 - self.us / 1e6)
        rec = replace(self.record, rev=self.rev, started=rfc3339(t0))

        def not_run(code: int, msg: str) -> model.RunRecord:
            log.warning("%s: %s", self.label, msg)
            d.metrics.run(job.name, "failed", 0.0)
            return replace(
                rec, status="failed", exit_code=code, finished=rfc3339(time.time()),
                duration=0.0, reason=msg, output=msg,
            )  # fmt: skip

        # the watchdog first: it kills the group if conchd dies (SIGKILL, OOM), so no orphan
        # outlives its daemon; if it cannot be started, the job is not run at all
        try:
            wd = Watchdog.spawn()
        except OSError as e:
            return not_run(EXIT_OSERR, f"cannot start the watchdog: {e.strerror or e}")
        # the child waits at its gate until the watchdog is armed: a conchd that dies before
        # closes the gate, and the command never starts
        out_r, out_w = os.pipe()
        try:
            with open(os.devnull, "rb") as devnull:
                child = Child.spawn(
                    job.cmd, env, stdin=devnull.fileno(), stdout=out_w, stderr=out_w
                )
        except ConchError as e:
            os.close(out_r)
            wd.disarm()
            return not_run(e.exit_code, str(e))
        finally:
            os.close(out_w)
        try:
            wd.arm(child.pgid, job.kill_after, math.inf)
        except OSError as e:
            child.terminate_group(job.kill_after)  # closes the gate: the command never ran
            wd.disarm()
            os.close(out_r)
            return not_run(EXIT_OSERR, f"the watchdog died before it was armed: {e}")
        child.open_gate()
        reader = OutputReader(out_r, job.name)
        log.info("%s: started pid %d (CONCH_REV %d): %s", self.label, child.pid, self.rev,
                 shlex.join(job.cmd))  # fmt: skip
        reader.start()
        deadline = None if job.timeout is None else m0 + job.timeout
        how, reason = "exited", ""
        while True:
            rc = child.wait(0.1)
            if rc is not None:
                break
            if not wd.alive():  # killed or crashed: the child would outlive a dying conchd
                log.warning("%s: the watchdog died (status %s); starting a new one",
                            self.label, wd.returncode)  # fmt: skip
                try:
                    wd = Watchdog.start(child.pgid, job.kill_after, math.inf)
                except OSError as e:
                    log.error("%s: cannot start a new watchdog: %s", self.label, e)
            if d.stopping.is_set():
                s = d.stop_signal or signal.SIGTERM
                how = "interrupted"
                reason = f"conchd stopping ({signal.Signals(s).name}): signal forwarded"
                log.warning("%s: %s; SIGKILL after %ss", self.label, reason, job.kill_after)
                rc = child.terminate_group(job.kill_after, sig=s)
                break
            if deadline is not None and time.monotonic() >= deadline:
                how = "timeout"
                reason = f"--timeout {job.timeout:g}s passed: SIGTERM, SIGKILL after --kill-after"
                log.warning("%s: %s (%ss)", self.label, reason, job.kill_after)
                rc = child.terminate_group(job.kill_after)
                break
        duration = time.monotonic() - m0
        finished = time.time()
        child.reap_group(job.kill_after)  # grandchildren left behind get TERM, then KILL
        wd.disarm()
        reader.join(2.0)  # a process that escaped the group may hold the pipe: do not wait
        code = child_exit_code(rc)
        status = model.result_status(code, timed_out=how == "timeout")
        log.info("%s: %s with %d after %.3fs", self.label, status, code, duration)
        d.metrics.run(job.name, status, duration)
        return replace(
            rec, status=status, exit_code=code, finished=rfc3339(finished),
            duration=round(duration, 3), timed_out=how == "timeout", reason=reason,
            output=reader.tail(),
        )  # fmt: skip

    def _write(self, rec: model.RunRecord) -> None:
        """Record the result; etcd may be down for a while: retry until written (when conchd
        is stopping, give up after RESULT_GRACE)."""
        d = self.daemon
        delay, warned, give_up = 0.2, False, None
        while True:
            timeout = CLAIM_TIMEOUT
            if give_up is not None:  # stopping: the last attempt ends with the grace
                timeout = max(0.1, min(timeout, give_up - time.monotonic()))
            try:
                store.finish(d.client, d.prefix, self.job.name, self.us, rec, timeout=timeout)
                if warned:
                    log.info("%s: result recorded", self.label)
                break
            except EtcdClusterChanged as e:
                log.error("%s: result NOT recorded (%s): %s", self.label, rec.status, e)
                return
            except EtcdError as e:
                now = time.monotonic()
                if d.stopping.is_set():
                    give_up = give_up or now + RESULT_GRACE
                    if now >= give_up:
                        log.error("%s: result NOT recorded (%s): %s", self.label, rec.status, e)
                        return
                if not warned:
                    log.warning("%s: cannot record the result yet (%s); retrying", self.label, e)
                    warned = True
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
        d.housekeeper.request(self.job.name)


# ---------------------------------------------------------------------------------------
# history pruning, off the scheduler thread
# ---------------------------------------------------------------------------------------


class Housekeeper(threading.Thread):
    """Prunes a job's history (conch.cron.prune_history) after ticks this daemon won."""

    def __init__(self, client: Client, prefix: str) -> None:
        super().__init__(name="housekeeper", daemon=True)
        self.client, self.prefix = client, prefix
        self._pending: set[str] = set()
        self._pending_lock = threading.Lock()
        self._wake = threading.Event()
        self._halt = threading.Event()

    def request(self, job: str) -> None:
        with self._pending_lock:
            self._pending.add(job)
        self._wake.set()

    def halt(self) -> None:
        """Stop after the job at hand (join() to wait for it)."""
        self._halt.set()
        self._wake.set()

    def run(self) -> None:
        while not self._halt.is_set():
            self._wake.wait()
            self._wake.clear()
            with self._pending_lock:
                jobs, self._pending = self._pending, set()
            for job in sorted(jobs):
                if self._halt.is_set():
                    return
                try:
                    n = store.prune_history(self.client, self.prefix, job)
                    if n:
                        log.debug("job %r: pruned %d old run record(s)", job, n)
                except EtcdError as e:
                    log.debug("job %r: pruning failed (%s); later", job, e)


# ---------------------------------------------------------------------------------------
# heartbeats: the wall clocks of the daemons, compared
# ---------------------------------------------------------------------------------------

HEARTBEAT = 2.0  # seconds between two heartbeats of a daemon
SETTLE = 1.5 * HEARTBEAT  # wait at start for peers' heartbeats when none is listed
SETTLE_LISTED = 3 * HEARTBEAT  # longest wait at start for the heartbeats of listed peers
CLOCK_STEP = 0.5  # a jump of this host's wall clock against its steady clock: a step


class Heartbeat(threading.Thread):
    """Publishes this daemon's wall-clock time every HEARTBEAT seconds under
    `cron/daemons/{enc(id)}` (on its lease, so it vanishes with the daemon) and watches the
    other daemons' heartbeats; conch.clockskew turns them into the correction of this host's
    clock. A disagreement beyond clockskew.THRESHOLD is logged and exported as
    `conchd_clock_offset_seconds`. On any trouble the correction stays as last known and the
    thread goes on: it never dies silently."""

    def __init__(
        self,
        client: Client,
        prefix: str,
        daemon_id: str,
        host: str,
        lease_of: Callable[[], int | None],
        metrics: NoMetrics,
    ) -> None:
        from conch.clockskew import PeerClocks

        super().__init__(name="heartbeat", daemon=True)
        self.client, self.prefix, self.id, self.host = client, prefix, daemon_id, host
        self._lease_of = lease_of
        self._metrics = metrics
        self._dir = keys.cron_daemons_dir(prefix)
        self._key = keys.cron_daemon_key(prefix, daemon_id)
        self._clocks = PeerClocks()
        self._correction = 0.0
        self._skewed = False
        self._halt = threading.Event()
        self._watch: Watch | None = None
        # Until it has heard the peers listed at its start (or, with none listed — they may
        # be starting too — for SETTLE), a daemon does not know whether its clock agrees
        # with theirs: it claims nothing yet.
        self._settle_at = math.inf
        self._waiting_for: set[str] = set()
        self._heard = False
        self._heard_any = False
        # my own heartbeats coming back through my watch: since when without a gap, and the
        # last one (a watch that delivers my beats would have delivered a live peer's too)
        self._echo_since: float | None = None
        self._last_echo = -math.inf
        self._settled = False
        self._lock = threading.Lock()
        self._base = time.time() - time.monotonic()  # this host's wall clock - steady clock

    def settled(self) -> bool:
        """True once this daemon knows how its clock compares with its peers': it has heard
        every peer listed at its start, or its settle time has passed while its watch was
        working (its own beats came back through it for SETTLE: a live peer's would have
        too) — not while it heard nothing because etcd did not answer. Once true, stays."""
        now = time.monotonic()
        with self._lock:
            if self._settled:
                return True
            if now < self._settle_at:
                return False
            heard_all = self._heard and not self._waiting_for
            watched = (
                self._echo_since is not None
                and now - self._echo_since >= SETTLE
                and now - self._last_echo <= SETTLE
            )
            self._settled = heard_all or watched
            if self._settled:
                peers = len(self._clocks.offsets(now))
                log.info(
                    "clock checked against %d peer(s)%s: claiming ticks",
                    peers, "" if peers else " (none heard; the watch works)",
                )  # fmt: skip
            return self._settled

    def correction(self) -> float:
        """Seconds to add to this host's wall clock to get the group's (0 within THRESHOLD).
        Notices at once a step of this host's own clock (its distance from the steady clock
        jumps) and carries the correction along with it."""
        with self._lock:
            base = time.time() - time.monotonic()
            step = base - self._base
            self._base = base
            if abs(step) > CLOCK_STEP and self._heard_any:
                log.warning("this host's clock stepped by %+.1fs", step)
                self._clocks.shift(step)
                self._update(time.monotonic())
            return self._correction

    def halt(self) -> None:
        """Stop beating and watching (join() to wait for it)."""
        self._halt.set()
        w = self._watch
        if w is not None:
            w.cancel(wait=False)

    def run(self) -> None:
        next_beat = 0.0
        while not self._halt.is_set():
            try:
                if self._watch is None:
                    self._watch = self._start_watch()
                if time.monotonic() >= next_beat:
                    # the first beat as soon as the daemon has a lease: peers starting now
                    # must hear it within their settle time
                    beat = self._beat()
                    next_beat = time.monotonic() + (HEARTBEAT if beat else 0.2)
                events = self._watch.get(max(0.0, next_beat - time.monotonic()))
                self._observe(events)
            except EtcdClusterChanged:
                return  # the daemon stops (it sees the client's identity problem)
            except EtcdError as e:
                log.debug("heartbeat: %s; again in a moment", e)
                self._drop_watch()
                self._halt.wait(1.0)
            except Exception:
                log.exception("heartbeat: internal error; going on")
                self._drop_watch()
                self._halt.wait(1.0)
        self._drop_watch()

    def _drop_watch(self) -> None:
        w, self._watch = self._watch, None
        if w is not None:
            w.cancel()

    def _start_watch(self) -> Watch:
        end = keys.prefix_range_end(self._dir)
        kvs, rev = self.client.get_range(self._dir, end)
        present = set()
        for kv in kvs:
            with contextlib.suppress(ValueError, UnicodeDecodeError):
                present.add(keys.decode_name(kv.key[len(self._dir) :].decode("ascii")))
        w = self.client.watch(self._dir, end, start_revision=rev + 1)
        if self._settle_at == math.inf:  # the first listing
            self._waiting_for = present - {self.id}
            # with peers listed, wait for each of them (a dead one's key lingers until its
            # lease expires: bounded by SETTLE_LISTED); with none, for SETTLE: they may be
            # starting too, and beat as soon as they have a lease
            wait = SETTLE_LISTED if self._waiting_for else SETTLE
            self._settle_at = time.monotonic() + wait
        return w

    def _beat(self) -> bool:
        lease = self._lease_of()
        if lease is None:
            return False
        value = json.dumps(
            {"id": self.id, "host": self.host, "pid": os.getpid(), "time": time.time(),
             "version": __version__},
            separators=(",", ":"),
        )  # fmt: skip
        self.client.put(self._key, value.encode(), lease=lease, timeout=CLAIM_TIMEOUT)
        return True

    def _observe(self, events: list[Any]) -> None:
        now_m = time.monotonic()
        heard: set[str] = set()
        for ev in events:
            if ev.kv.key == self._key:
                if ev.type is EventType.PUT:
                    with self._lock:
                        if self._echo_since is None or now_m - self._last_echo > SETTLE:
                            self._echo_since = now_m  # a gap: the watch was not working
                        self._last_echo = now_m
                continue
            if ev.type is EventType.DELETE:
                continue  # a peer gone quiet: its last offsets age out (clockskew.SAMPLE_AGE)
            try:
                peer = keys.decode_name(ev.kv.key[len(self._dir) :].decode("ascii"))
                peer_time = json.loads(ev.kv.value)["time"]
            except (ValueError, UnicodeDecodeError, KeyError, TypeError):
                continue
            if isinstance(peer_time, int | float) and math.isfinite(peer_time):
                self.correction()  # first: a step of my own clock shifts what is stored
                with self._lock:
                    self._clocks.observe(peer, float(peer_time), time.time(), now_m)
                    self._heard_any = True
                heard.add(peer)
        with self._lock:
            self._update(now_m)
            # a peer counts as heard only with the correction its beat gives set: settled()
            # (another thread) must never see it heard and the clock not yet corrected
            if heard & self._waiting_for:
                self._waiting_for -= heard
                self._heard = True
            if self._heard and not self._waiting_for:
                # every peer listed at start has been heard (after the correction is set)
                self._settle_at = min(self._settle_at, now_m)

    def _update(self, now_m: float) -> None:
        """Recompute the correction from the peers' offsets (the caller holds the lock)."""
        from conch.clockskew import THRESHOLD

        c = self._clocks.correction(now_m)
        skewed = abs(c) > THRESHOLD
        self._metrics.clock_offset(-c)
        if skewed and (not self._skewed or abs(c - self._correction) > THRESHOLD):
            log.warning(
                "this host's clock is %.1fs %s the other conchd daemons' (%d peer(s)): "
                "scheduling by their time; fix the clock (NTP)",
                abs(c), "ahead of" if c < 0 else "behind", len(self._clocks.offsets(now_m)),
            )  # fmt: skip
        elif self._skewed and not skewed:
            log.info("this host's clock agrees with the other daemons' again")
        self._skewed = skewed
        self._correction = c if skewed else 0.0


# ---------------------------------------------------------------------------------------
# the daemon
# ---------------------------------------------------------------------------------------


@dataclass
class JobState:
    job: model.Job
    rev: int  # mod revision of the definition the schedule comes from
    schedule: Any  # conch.schedule.Schedule
    due: datetime  # the next tick to try (aware, UTC)
    retry_at: float = 0.0  # time.time() before which a failed claim is not retried
    # ticks whose claim transaction may have committed without this daemon hearing the answer
    # (it failed with an etcd error) and that it moved past: resolved by a read (own_claim)
    unsure: set[int] = field(default_factory=set)


class Daemon:
    def __init__(
        self,
        client: Client,
        prefix: str,
        daemon_id: str,
        ttl: float,
        metrics: NoMetrics,
    ) -> None:
        self.client, self.prefix, self.id, self.ttl = client, prefix, daemon_id, ttl
        self.metrics = metrics
        self.host = socket.gethostname()
        self.started = datetime.now(UTC)
        self.jobs: dict[str, JobState] = {}
        self.runs: dict[tuple[str, int], Run] = {}
        self._lock = threading.Lock()
        self.stopping = threading.Event()
        self.stop_signal: int | None = None
        self.session: Any = None  # conch.session.Session
        self._stale: list[int] = []  # leases given up during an outage: revoke when possible
        self._watch: Watch | None = None
        self._fail_delay = 0.5
        self._outage_logged = False
        self.housekeeper = Housekeeper(client, prefix)
        self._jobs_dir = keys.cron_jobs_dir(prefix)
        # identifies this daemon process's claims: a retried claim whose first answer was
        # lost finds its own record (store.claim); a restarted daemon gets a new one
        self.claim_id = uuid.uuid4().hex
        self.fatal: str | None = None  # set when conchd must stop (the cluster changed)
        self.heartbeat = Heartbeat(client, prefix, daemon_id, self.host, self._lease_id, metrics)

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
        self._claim_due()
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
        with self._lock:
            runs = [r for r in self.runs.values() if not r.done and r.lease != s.lease_id]
        for r in runs:
            try:
                ok = store.reattach(
                    self.client, self.prefix, r.job.name, r.us, r.rev, self.id, s.lease_id,
                    timeout=CLAIM_TIMEOUT,
                )  # fmt: skip
            except EtcdError as e:
                log.debug("%s: re-attach failed: %s", r.label, e)
                return
            r.lease = s.lease_id
            if ok:
                log.info("%s: still running: alive again on lease %x", r.label, s.lease_id)

    # -- job definitions -------------------------------------------------------------------
    def _relist(self) -> bool:
        end = keys.prefix_range_end(self._jobs_dir)
        try:
            kvs, rev = self.client.get_range(self._jobs_dir, end)
            w = self.client.watch(self._jobs_dir, end, start_revision=rev + 1)
        except EtcdError as e:
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
        self._watch = w
        log.debug("watching %d job(s) from revision %d", len(self.jobs), rev + 1)
        return True

    def _apply_put(self, kv: Any) -> str | None:
        from conch.schedule import Schedule

        try:
            name = keys.cron_job_name(self.prefix, kv.key)
        except (ValueError, UnicodeDecodeError):
            return None
        cur = self.jobs.get(name)
        if cur is not None and cur.rev == kv.mod_revision:
            return name
        try:
            job = model.Job.from_json(name, kv.value)
            sched = Schedule.parse(job.schedule, job.tz)
            due = sched.next_after(self.now())
        except (ValueError, OverflowError) as e:
            log.warning("job %r: ignored: %s", name, e)
            self.jobs.pop(name, None)
            return None
        self.jobs[name] = JobState(job, kv.mod_revision, sched, due)
        log.info(
            "job %r %s: %s%s, next tick %s", name, "added" if cur is None else "changed",
            job.schedule, "" if job.tz == "UTC" else f" ({job.tz})",
            model.format_tick(model.tick_of(due)),
        )  # fmt: skip
        return name

    def _remove(self, name: str) -> None:
        if self.jobs.pop(name, None) is not None:
            log.info("job %r removed (a run in progress finishes)", name)

    def _drain(self, timeout: float) -> None:
        w = self._watch
        assert w is not None
        try:
            events = w.get(timeout)
        except WatchCompacted as e:
            log.info("job watch: %s; listing again", e)
            w.cancel()
            self._watch = None
            return
        except EtcdError as e:
            log.warning("job watch failed: %s; listing again", e)
            w.cancel()
            self._watch = None
            return
        for ev in events:
            if ev.type is EventType.PUT:
                self._apply_put(ev.kv)
            else:
                with contextlib.suppress(ValueError, UnicodeDecodeError):
                    self._remove(keys.cron_job_name(self.prefix, ev.kv.key))

    def _wait_time(self) -> float:
        now = self.time()
        t = MAX_WAIT
        for st in self.jobs.values():
            at = max(st.due.timestamp(), st.retry_at)
            t = min(t, at - now)
        return max(t, 0.0)

    # -- claims ----------------------------------------------------------------------------
    def _resolve_unsure(self, st: JobState) -> None:
        """A claim whose answer was lost may have committed: if it did, the tick is this
        daemon's (never anyone else's) and is run now, late, rather than left `running`
        forever with nothing running. (Its alive marker may sit on an older lease: the run
        starts with lease 0, so the next step re-attaches it.)"""
        current = model.tick_of(st.due)
        for us in sorted(st.unsure - {current}):
            try:
                c = store.own_claim(self.client, self.prefix, st.job.name, us, self.claim_id,
                                   timeout=CLAIM_TIMEOUT)  # fmt: skip
            except EtcdClusterChanged:
                raise
            except EtcdError as e:
                log.debug("job %r tick %s: claim still unsure: %s", st.job.name,
                          model.format_tick(us), e)  # fmt: skip
                return
            st.unsure.discard(us)
            if c is not None:
                log.warning("job %r tick %s: claimed by this daemon although the answer was "
                            "lost: running it late", st.job.name,
                            model.format_tick(us))  # fmt: skip
                self._claimed(st.job, us, c, 0)

    def _claim_due(self) -> None:
        s = self.session
        if not self.heartbeat.settled():  # checked before reading the (corrected) time
            return
        for name in sorted(self.jobs):
            st = self.jobs.get(name)
            if st is None or self.stopping.is_set():
                return
            if st.unsure and s is not None and s.is_trusted():
                self._resolve_unsure(st)
            now = self.now()
            if st.due > now or time.time() < st.retry_at:
                continue
            following = st.schedule.next_after(st.due)
            if following <= now:  # this daemon fell behind: only the newest due tick counts
                passed = st.schedule.ticks_between(st.due, now)
                log.debug("job %r: %d tick(s) passed unclaimed here", name, len(passed))
                st.due = passed[-1]
                following = st.schedule.next_after(st.due)
            if s is None or not s.is_trusted():
                return
            us = model.tick_of(st.due)
            left = following.timestamp() - self.time()
            try:
                c = store.claim(
                    self.client, self.prefix, st.job, st.rev, us, daemon=self.id,
                    claim_id=self.claim_id, host=self.host, lease=s.lease_id,
                    now=rfc3339(time.time()), timeout=max(0.5, min(CLAIM_TIMEOUT, left)),
                )  # fmt: skip
            except EtcdClusterChanged:
                raise
            except EtcdError as e:
                if "lease not found" in str(e):
                    s.mark_lost(f"lease {s.lease_id:x} not found")
                    return
                log.warning("job %r tick %s: claim failed: %s; retrying", name,
                            model.format_tick(us), e)  # fmt: skip
                st.unsure.add(us)
                st.retry_at = time.time() + 0.5  # the same tick, the same claim id
                continue
            st.unsure.discard(us)
            st.due, st.retry_at = following, 0.0
            self._claimed(st.job, us, c, s.lease_id)

    def _claimed(self, job: model.Job, us: int, c: store.Claim, lease: int) -> None:
        label = f"job {job.name!r} tick {model.format_tick(us)}"
        if c.outcome is store.ClaimOutcome.WON:
            self.metrics.claim(job.name, "won")
            with self._lock:
                running = (job.name, us) in self.runs
            if running:  # its schedule came back to a tick this daemon is running
                log.debug("%s: already running here", label)
                return
            r = Run(self, job, us, c, lease)
            with self._lock:
                self.runs[(job.name, us)] = r
            r.start()
        elif c.outcome is store.ClaimOutcome.SKIPPED:
            self.metrics.claim(job.name, "won")
            self.metrics.run(job.name, "skipped")
            reason = c.record.reason if c.record else ""
            log.info("%s: skipped: %s (--overlap forbid)", label, reason)
            self.housekeeper.request(job.name)
        elif c.outcome is store.ClaimOutcome.TAKEN:
            self.metrics.claim(job.name, "lost")
            log.debug("%s: claimed by another daemon (rev %d)", label, c.revision)
        elif c.outcome is store.ClaimOutcome.BEHIND:
            self.metrics.claim(job.name, "behind")
            mark = model.format_tick(c.mark) if c.mark is not None else "?"
            log.debug("%s: not claimed: tick %s is already claimed (or the job is newer)",
                      label, mark)  # fmt: skip
        else:
            log.debug("%s: not claimed: the job changed or was removed meanwhile", label)

    def run_finished(self, r: Run) -> None:
        with self._lock:
            self.runs.pop((r.job.name, r.us), None)

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
        if self._watch is not None:
            self._watch.cancel(wait=False)
        self.housekeeper.halt()
        self.heartbeat.halt()
        longest = max((r.job.kill_after for r in runs), default=0.0)
        from conch.supervisor import SIGKILL_GRACE

        _join_all([r.thread for r in runs], longest + SIGKILL_GRACE + RESULT_GRACE + 1.0)
        _join_all([self.housekeeper, self.heartbeat], STOP_SPARE)
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


# ---------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------


def _validate_id(daemon_id: str) -> str:
    if not daemon_id or len(daemon_id) > 256:
        raise UsageError("--id: must be 1 to 256 characters")
    if any(unicodedata.category(ch) in ("Cc", "Cs") for ch in daemon_id):
        raise UsageError("--id: contains a control character")
    return daemon_id


def _command() -> click.Command:
    from conch.cli import CMD_SETTINGS, _global_options, _globals, _setup_logging

    @click.command(context_settings=CMD_SETTINGS)
    @click.option(
        "--id",
        "daemon_id",
        metavar="ID",
        help="this daemon's id in run records [default: HOST:PID]",
    )
    @click.option(
        "--ttl",
        default="10s",
        show_default=True,
        metavar="D",
        help="lease TTL: a dead daemon's runs show as lost after this",
    )
    @click.option(
        "--metrics-addr",
        metavar="HOST:PORT",
        help="serve Prometheus metrics on HOST:PORT (/metrics)",
    )
    @_global_options
    @click.pass_context
    def conchd(
        ctx: click.Context, daemon_id: str | None, ttl: str, metrics_addr: str | None,
        **kw: Any,
    ) -> int:  # fmt: skip
        """The conch cron daemon: runs each tick of every `conch cron` job on exactly one of
        any number of conchd instances.

        Global options also from the environment (CONCH_ENDPOINTS, CONCH_PREFIX, ...).
        SIGTERM/SIGINT/SIGHUP: stop claiming, forward the signal to running jobs, SIGKILL
        after their --kill-after, record their results, exit 128+S.
        """
        from conch import options

        g, verbose, quiet = _globals(ctx, kw)
        _setup_logging(verbose, quiet, prog="conchd", level=logging.INFO)
        ttl_s = options.duration(ttl, "--ttl", minimum=1.0)
        did = _validate_id(daemon_id if daemon_id is not None else
                           f"{socket.gethostname()}:{os.getpid()}")  # fmt: skip
        prefix = options.prefix(g)
        cfg = options.client_config(g)
        addr = parse_metrics_addr(metrics_addr) if metrics_addr is not None else None
        metrics: NoMetrics = Metrics(*addr) if addr is not None else NoMetrics()
        if addr is not None:
            log.info("metrics on http://%s:%d/metrics", *addr)
        with contextlib.suppress(ValueError):  # children must be reapable (not auto-reaped)
            if signal.getsignal(signal.SIGCHLD) == signal.SIG_IGN:
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        client = Client(cfg)
        daemon = Daemon(client, prefix, did, ttl_s, metrics)
        old = {s: signal.signal(s, daemon.on_signal) for s in STOP_SIGNALS}
        try:
            try:
                client.connect()
            except EtcdAuthError as e:
                raise ConchError(f"etcd refused the credentials: {e}", EXIT_UNAVAILABLE) from None
            except EtcdError as e:  # a daemon waits for etcd (e.g. at boot)
                log.warning("etcd unreachable at %s: %s; retrying", ",".join(cfg.endpoints), e)
            return daemon.serve()
        finally:
            client.close()
            for s, h in old.items():
                signal.signal(s, h)

    return conchd


def main(argv: list[str] | None = None) -> NoReturn:
    from conch.cli import run_command

    run_command(_command(), argv, "conchd")


if __name__ == "__main__":
    main()
