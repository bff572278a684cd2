"""A lease session: grant a lease, keep it alive, and know locally when it can no longer be
trusted (the etcd Go concurrency package's Session, plus a local deadline).

The local deadline. etcd expires a lease TTL seconds after the *server received* the last
keepalive; that receipt happened after we *sent* it. So, measured on our clock, the lease
cannot expire before `sent + TTL`, where `sent` is the send time of the last keepalive
that the server acknowledged with TTL > 0. conch stops trusting the lease a safety margin
earlier:

    deadline = sent_of_last_ack + granted_ttl - margin,   margin = min(1 s, granted_ttl / 5)

When the deadline passes without a fresher acknowledgement, the session is lost, *before* the
server can hand the slot to someone else (up to clock-rate differences, which the margin
absorbs). A keepalive answered with TTL <= 0 (lease revoked or expired) loses it at once.

The clock is CLOCK_BOOTTIME (conch.watchdog.clock), not CLOCK_MONOTONIC: it keeps counting
while the host is suspended, as the server's clock does, so a lease that expired during a
suspend is not trusted after the resume.

Keepalives are sent every granted_ttl / 3. One keepalive call may take until the deadline: the
client fails over between endpoints inside it (a hung member costs one attempt of at most half
the time left), so every TTL survives one hung member. A call that fails outright is retried
after `retry_interval` (at most a quarter of the time left).

Quorum confirmation. etcd's leader renews leases locally, without a quorum round, so a leader
that has just lost its quorum keeps acknowledging keepalives until it notices and steps down
(up to two election timeouts). That is safe — a new leader extends every lease on promotion —
but it would let a holder keep running for that long after quorum loss. So with a `probe_key`
an acknowledgement only counts once a linearizable read issued after it succeeds (ReadIndex
needs the leader to hear from a quorum): the child is then signalled within the TTL of the
quorum loss.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
from collections.abc import Callable

from conch.client import Client, EtcdClusterChanged, EtcdError
from conch.watchdog import clock as deadline_clock

log = logging.getLogger("conch.session")


def lease_margin(granted_ttl: float) -> float:
    return min(1.0, granted_ttl / 5.0)


def local_deadline(sent_at: float, granted_ttl: float) -> float:
    return sent_at + granted_ttl - lease_margin(granted_ttl)


class Session:
    def __init__(
        self,
        client: Client,
        ttl: float,
        *,
        retry_interval: float = 0.5,
        probe_key: bytes | None = None,
        clock: Callable[[], float] = deadline_clock,
    ) -> None:
        self.client = client
        self.probe_key = probe_key
        self.requested_ttl = max(1, math.ceil(ttl))
        self.retry_interval = retry_interval
        self.clock = clock
        self.lease_id = 0
        self.granted_ttl = 0
        self.lost = threading.Event()
        self.loss_reason = ""
        self._deadline = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._listeners: list[Callable[[float], None]] = []
        self._loss_listeners: list[Callable[[str], None]] = []
        self._revoked = False

    # -- public -------------------------------------------------------------------------
    def open(self) -> Session:
        """Grant the lease and start the keepalive thread. Raises EtcdError on failure."""
        sent = self.clock()
        self.lease_id, self.granted_ttl = self.client.lease_grant(self.requested_ttl)
        with self._lock:
            self._deadline = local_deadline(sent, self.granted_ttl)
        self._thread = threading.Thread(
            target=self._run, name=f"keepalive-{self.lease_id:x}", daemon=True
        )
        self._thread.start()
        return self

    def deadline(self) -> float:
        with self._lock:
            return self._deadline

    def on_renew(self, fn: Callable[[float], None]) -> Callable[[], None]:
        """fn(new_deadline) after every acknowledged keepalive (called from the keepalive
        thread). Returns a function that unregisters fn."""
        self._listeners.append(fn)
        return lambda: _discard(self._listeners, fn)

    def on_lost(self, fn: Callable[[str], None]) -> Callable[[], None]:
        """fn(reason) once, when the session is lost (called from whichever thread noticed).
        Returns a function that unregisters fn."""
        self._loss_listeners.append(fn)
        if self.lost.is_set():
            fn(self.loss_reason)
        return lambda: _discard(self._loss_listeners, fn)

    def is_trusted(self) -> bool:
        return not self.lost.is_set() and self.clock() < self.deadline()

    def mark_lost(self, reason: str) -> None:
        """Declare the session lost (also used by the holder-key watch)."""
        with self._lock:
            if self.lost.is_set():
                return
            self.loss_reason = reason
            self.lost.set()
        log.debug("session %x lost: %s", self.lease_id, reason)
        for fn in list(self._loss_listeners):
            try:
                fn(reason)
            except Exception:  # a listener must not kill the keepalive thread
                log.exception("loss listener failed")

    def close(self, revoke: bool = True) -> bool:
        """Stop keeping the lease alive; revoke it (deleting every key attached) if asked.
        Returns False if the revoke could not be done (the lease will expire by itself).
        Idempotent: a lease revoked once is not revoked again."""
        self._stop.set()
        revoked = True
        if revoke and self.lease_id and not self._revoked:
            try:  # first: a keepalive in flight meanwhile only learns that the lease is gone
                self.client.lease_revoke(self.lease_id, timeout=2.0)
                self._revoked = True
            except EtcdError as e:
                log.debug("revoke of lease %x failed: %s (it will expire)", self.lease_id, e)
                revoked = False
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2.0)
        return revoked

    # -- keepalive loop -----------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._keepalive_loop()
        except BaseException as e:  # this thread guards the promise: never die silently
            self.mark_lost(f"keepalive thread failed: {type(e).__name__}: {e}")

    def _retry_at(self) -> float:
        now = self.clock()
        return now + min(self.retry_interval, max(0.05, (self.deadline() - now) / 4))

    def _keepalive_loop(self) -> None:
        interval = max(self.granted_ttl / 3.0, 0.2)
        next_send = self.clock() + interval
        while not self._stop.is_set() and not self.lost.is_set():
            now = self.clock()
            deadline = self.deadline()
            if now >= deadline:
                self.mark_lost(
                    f"no keepalive acknowledged in time (lease {self.lease_id:x}, "
                    f"TTL {self.granted_ttl}s): not trusting it any longer"
                )
                return
            if now < next_send:
                self._stop.wait(min(next_send, deadline) - now)
                continue
            sent = self.clock()
            try:
                ttl = self.client.lease_keepalive(self.lease_id, timeout=deadline - sent)
            except EtcdClusterChanged as e:
                self.mark_lost(str(e))
                return
            except EtcdError as e:
                log.debug("keepalive of lease %x failed: %s", self.lease_id, e)
                next_send = self._retry_at()
                continue
            if ttl <= 0:
                self.mark_lost(f"lease {self.lease_id:x} expired or was revoked")
                return
            if self.probe_key is not None:
                try:  # a linearizable read: did the cluster still have a quorum after the ack?
                    left = max(0.05, self.deadline() - self.clock())
                    self.client.get(self.probe_key, timeout=left)
                except EtcdClusterChanged as e:
                    self.mark_lost(str(e))
                    return
                except EtcdError as e:
                    log.debug("quorum probe after keepalive failed: %s", e)
                    next_send = self._retry_at()
                    continue
            new_deadline = local_deadline(sent, ttl)
            with self._lock:
                if new_deadline > self._deadline:
                    self._deadline = new_deadline
                d = self._deadline
            for fn in list(self._listeners):
                try:
                    fn(d)
                except Exception:
                    log.exception("renew listener failed")
            next_send = sent + interval


def _discard(items: list[Callable[..., None]], fn: Callable[..., None]) -> None:
    with contextlib.suppress(ValueError):
        items.remove(fn)
