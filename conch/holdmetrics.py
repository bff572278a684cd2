"""Metrics of one `conch elect|sema` process (`--metrics-addr HOST:PORT`): Prometheus at
/metrics and a health check at /healthz, served by a thread of this process.

    conch_holder                 gauge      1 while this process's child runs under the office
    conch_acquisitions_total     counter    times this process acquired the office (a slot)
    conch_lease_losses_total     counter    leases lost (while holding or waiting)
    conch_child_restarts_total   counter    children started again by --restart
    conch_wait_seconds           histogram  from joining the queue to acquiring
    conch_handover_seconds       histogram  from this process seeing the slot free (its wait
                                            ended) to its child's start: conch's share of a
                                            hand-over
/healthz: 200 `ok` while this process holds a lease it trusts (campaigning or holding), else 503
with the reason (etcd unreachable, lease lost). prometheus_client is imported only here.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from conch.errors import UsageError

# labels of every metric: which primitive, which office
LABELS = ("kind", "name")


class NoHoldMetrics:
    """The interface when --metrics-addr is not given: does nothing."""

    def session(self, trusted: Callable[[], bool]) -> None: ...
    def acquired(self, waited: float) -> None: ...
    def child_started(self, handover: float | None) -> None: ...
    def child_ended(self) -> None: ...
    def lease_lost(self) -> None: ...
    def restarted(self) -> None: ...


class HoldMetrics(NoHoldMetrics):
    def __init__(self, host: str, port: int, kind: str, name: str) -> None:
        import prometheus_client as pc  # only with --metrics-addr

        reg = pc.CollectorRegistry()

        def made(cls: Any, name_: str, doc: str, **kw: Any) -> Any:
            return cls(name_, doc, LABELS, registry=reg, **kw).labels(kind, name)

        self._holder = made(pc.Gauge, "conch_holder",
                            "1 while this process's child runs under the office")  # fmt: skip
        self._acquired = made(pc.Counter, "conch_acquisitions",
                              "Times this process acquired the office (a slot)")  # fmt: skip
        self._lost = made(pc.Counter, "conch_lease_losses",
                          "Leases this process lost (holding or waiting)")  # fmt: skip
        self._restarts = made(pc.Counter, "conch_child_restarts",
                              "Children started again by --restart")  # fmt: skip
        self._wait = made(pc.Histogram, "conch_wait_seconds", "From joining the queue to "
                          "acquiring", buckets=(0.01, 0.1, 1, 10, 60, 600, 3600))  # fmt: skip
        self._handover = made(
            pc.Histogram, "conch_handover_seconds",
            "From this process seeing the slot free to its child's start",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
        )  # fmt: skip
        self._trusted: Callable[[], bool] | None = None
        self._server = _serve(host, port, lambda: pc.generate_latest(reg), self._health)

    def _health(self) -> tuple[bool, str]:
        trusted = self._trusted
        if trusted is None:
            return False, "no lease yet"
        return (True, "ok") if trusted() else (False, "lease not trusted (etcd unreachable?)")

    def session(self, trusted: Callable[[], bool]) -> None:
        self._trusted = trusted

    def acquired(self, waited: float) -> None:
        self._acquired.inc()
        self._wait.observe(max(waited, 0.0))

    def child_started(self, handover: float | None) -> None:
        self._holder.set(1)
        if handover is not None:
            self._handover.observe(max(handover, 0.0))

    def child_ended(self) -> None:
        self._holder.set(0)

    def lease_lost(self) -> None:
        self._lost.inc()

    def restarted(self) -> None:
        self._restarts.inc()


def _serve(
    host: str, port: int, metrics: Callable[[], bytes], health: Callable[[], tuple[bool, str]]
) -> Any:
    """GET /metrics and /healthz on HOST:PORT, from a daemon thread. UsageError (exit 2) if
    the address cannot be bound."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # http.server's name
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                code, body, ctype = 200, metrics(), "text/plain; version=0.0.4; charset=utf-8"
            elif path == "/healthz":
                ok, why = health()
                code, body, ctype = (200 if ok else 503), (why + "\n").encode(), "text/plain"
            else:
                code, body, ctype = 404, b"not found: try /metrics or /healthz\n", "text/plain"
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # no access log on conch's stderr

    try:
        server = ThreadingHTTPServer((host, port), Handler)
    except OSError as e:
        raise UsageError(f"--metrics-addr: cannot listen on {host}:{port}: {e}") from None
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server
