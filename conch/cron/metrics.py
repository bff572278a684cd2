"""conchd's Prometheus metrics (--metrics-addr; docs/cron.md, "Metrics"). prometheus_client is
imported only when the flag is given."""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

from conch.errors import UsageError

if TYPE_CHECKING:
    from conch.cron.model import RunStatus


class ClaimResult(enum.Enum):
    """The `result` label of conchd_claims_total."""

    WON = "won"  # this daemon claimed the tick (to run it, or recorded as skipped)
    LOST = "lost"  # another daemon had claimed it
    BEHIND = "behind"  # a newer tick of the job was already claimed, or the job is newer


class NoMetrics:
    """The metrics interface when --metrics-addr is not given: does nothing."""

    def claim(self, job: str, result: ClaimResult) -> None: ...
    def run(self, job: str, outcome: RunStatus, duration: float | None = None) -> None: ...
    def lag(self, job: str, seconds: float) -> None: ...
    def running(self, delta: int) -> None: ...
    def session(self, up: bool) -> None: ...
    def clock_offset(self, seconds: float) -> None: ...
    def missed(self, job: str, ticks: int) -> None: ...
    def manual(self, job: str) -> None: ...
    def retry(self, job: str) -> None: ...
    def hook(self, job: str, ok: bool) -> None: ...


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
            "run), skipped (--overlap forbid and the previous run still alive) or missed "
            "(not started within --starting-deadline)",
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
        self._missed = pc.Counter(
            "conchd_missed_ticks",
            "Ticks no daemon claimed in time (every conchd down, etcd unreachable), recorded "
            "`missed` by this daemon",
            ["job"],
        )
        self._manual = pc.Counter(
            "conchd_manual_runs", "`conch cron run` requests this daemon claimed", ["job"]
        )
        self._retries = pc.Counter(
            "conchd_retries", "Attempts after the first (--retries) this daemon started", ["job"]
        )
        self._hooks = pc.Counter(
            "conchd_failure_hooks",
            "--on-failure hooks this daemon ran, by outcome: ok (exit 0) or failed",
            ["job", "outcome"],
        )
        try:
            pc.start_http_server(port, addr=host)
        except OSError as e:
            raise UsageError(f"--metrics-addr: cannot listen on {host}:{port}: {e}") from None

    def claim(self, job: str, result: ClaimResult) -> None:
        self._claims.labels(job=job, result=result.value).inc()

    def run(self, job: str, outcome: RunStatus, duration: float | None = None) -> None:
        self._runs.labels(job=job, outcome=outcome.value).inc()
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

    def missed(self, job: str, ticks: int) -> None:
        self._missed.labels(job=job).inc(ticks)

    def manual(self, job: str) -> None:
        self._manual.labels(job=job).inc()

    def retry(self, job: str) -> None:
        self._retries.labels(job=job).inc()

    def hook(self, job: str, ok: bool) -> None:
        self._hooks.labels(job=job, outcome="ok" if ok else "failed").inc()
