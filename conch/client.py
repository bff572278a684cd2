"""The only module that talks to etcd: a thin client over etcd's native gRPC API.

Everything else in conch uses only what is declared here. grpc and the generated stubs
(conch/_pb) are imported lazily, on first use, so importing this module is cheap.

Design (docs/decisions/0001-etcd-client.md):
* one grpc channel per endpoint; calls go to the current endpoint; on UNAVAILABLE /
  DEADLINE_EXCEEDED / "no leader" the client fails over to the next endpoint and retries,
  until the call's deadline. No long quarantine: every endpoint is retried on the next round.
* every call carries metadata `hasleader: true` (require-leader), and the auth token if any.
* auth: Authenticate on connect; on "invalid auth token" re-authenticate once and retry.
* all operations conch issues are safe to retry (see the recipes), so retries are automatic.

Timeouts: a unary call (and the creation of a watch) has an overall deadline, `timeout` or
else `Client.call_timeout` (default max(dial_timeout, 5 s)); each attempt on one endpoint is
bounded by `Client.attempt_timeout` (default 2.5 s, at most dial_timeout), after which the
next endpoint is tried. When the overall deadline passes without an answer the call raises
EtcdUnavailable. A password never appears in any message this module produces.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

log = logging.getLogger("conch.client")


class EtcdError(Exception):
    """Any etcd failure not covered below (message is safe to show: never holds a password)."""


class EtcdUnavailable(EtcdError):
    """No endpoint answered within the deadline."""


class EtcdAuthError(EtcdError):
    """Authentication refused, or permission denied."""


class EtcdClusterChanged(EtcdError):
    """The endpoints now answer for another cluster (a new cluster id), or revisions went
    backwards (the cluster was rebuilt or restored from a backup without --bump-revision).
    Fencing tokens issued there could repeat old ones, so the client refuses every further
    call: never retried, never acquired on."""


class WatchCompacted(EtcdError):
    """The watch's start revision was compacted: re-list, then watch again from the new revision."""

    def __init__(self, compact_revision: int) -> None:
        super().__init__(f"watch revision compacted (compact revision {compact_revision})")
        self.compact_revision = compact_revision


@dataclass(frozen=True)
class ClientConfig:
    endpoints: tuple[str, ...]  # "http://host:port" or "https://host:port"
    cacert: str | None = None
    cert: str | None = None
    key: str | None = None
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    dial_timeout: float = 5.0


@dataclass(frozen=True)
class KeyValue:
    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int


class EventType(Enum):
    PUT = 0
    DELETE = 1


@dataclass(frozen=True)
class Event:
    type: EventType
    kv: KeyValue  # for DELETE: key and mod_revision (the delete revision) are set


@dataclass(frozen=True)
class Compare:
    """One txn guard: `target(key) op value`; target in create|mod|version|value|lease,
    op in == != < >."""

    key: bytes
    target: str
    op: str
    value: int | bytes
    # over every key in [key, range_end) (etcd >= 3.3): true iff it holds for each key there;
    # with no key there, it is judged on an absent key (create/mod/version 0)
    range_end: bytes | None = None


@dataclass(frozen=True)
class Op:
    """One txn operation: kind in put|get|delete. `range_end` for get/delete over a range;
    `keys_only` for a get that needs no values."""

    kind: str
    key: bytes
    value: bytes = b""
    lease: int = 0
    range_end: bytes | None = None
    keys_only: bool = False


@dataclass(frozen=True)
class SubTxn:
    """A transaction nested in a branch of another (etcd >= 3.3): each nested txn judges its
    own guards, all of them at the outer txn's one revision, so many independent guarded
    writes commit in one round trip. etcd's --max-txn-ops (128 by default) bounds a level's
    guards and each branch's ops, and a nested txn gets what its parent leaves: N nested txns
    of up to K guards/ops each need N + K <= 128 (measured with etcd 3.5: 125 of 3 pass, 126
    are refused). Two puts of one key in one request are refused."""

    compare: Sequence[Compare]
    success: Sequence[Op | SubTxn]
    failure: Sequence[Op | SubTxn] = ()


@dataclass(frozen=True)
class TxnResult:
    succeeded: bool
    revision: int  # header revision after the txn
    # one entry per op of the branch taken: list[KeyValue] for get, None for put/delete,
    # a TxnResult for a SubTxn
    responses: list[Any]


# ---------------------------------------------------------------------------------------
# lazy imports and error classification
# ---------------------------------------------------------------------------------------


_import_lock = threading.Lock()


def _grpc() -> Any:
    """grpc, imported on first use. grpc's C core logs to stderr on its own (e.g. every failed
    TLS handshake); conch reports errors itself, in one line, so unless the user set
    GRPC_VERBOSITY, the core is imported with it set to NONE (it is read at import), and the
    environment is restored at once so that children do not inherit it."""
    mod = sys.modules.get("grpc")
    if mod is not None:
        return mod
    with _import_lock:
        unset = "GRPC_VERBOSITY" not in os.environ
        if unset:
            os.environ["GRPC_VERBOSITY"] = "NONE"
        try:
            import grpc  # type: ignore[import-untyped]
        finally:
            if unset:
                os.environ.pop("GRPC_VERBOSITY", None)
        _quiet_stream_readers(grpc)
    return grpc


# How often a thread blocked reading a grpc stream wakes up to look for nothing in particular.
# grpc wakes it every 0.1 s so that a signal handler is never held up (grpc._common.wait); only
# the main thread runs signal handlers, and conch reads streams on threads of their own (the
# main thread sleeps on a self-pipe): 10 wake-ups a second per stream are the larger part of an
# idle waiter's CPU (bench/). Unknown grpc versions are left alone.
_STREAM_READER_WAKE = 1.0


def _quiet_stream_readers(grpc: Any) -> None:
    common = getattr(grpc, "_common", None)
    if isinstance(getattr(common, "MAXIMUM_WAIT_TIMEOUT", None), float):
        common.MAXIMUM_WAIT_TIMEOUT = _STREAM_READER_WAKE


_stubs: tuple[Any, Any] | None = None


def _pb() -> tuple[Any, Any]:
    """(rpc_pb2, rpc_pb2_grpc), imported on first use."""
    global _stubs
    if _stubs is None:
        _grpc()  # first: the stubs import grpc
        from conch._pb import rpc_pb2, rpc_pb2_grpc

        _stubs = (rpc_pb2, rpc_pb2_grpc)
    return _stubs


# What to do after a failed RPC.
_RETRY = "retry"  # transient: try the next endpoint until the deadline
_REAUTH = "reauth"  # the token is stale: authenticate again, then retry
_AUTH = "auth"  # refused: EtcdAuthError
_FATAL = "fatal"  # anything else: EtcdError

# etcd error texts (etcdserver/api/v3rpc/rpctypes) that mean "try again, maybe elsewhere".
_TRANSIENT_TEXTS = (
    "no leader",
    "leader changed",
    "not leader",
    "request timed out",
    "timed out due to leader failure",
    "timed out due to connection lost",
    "server stopped",
    "too many requests",
    "not capable",
    "unhealthy cluster",
    "raft: stopped",
)
_REAUTH_TEXTS = (
    "invalid auth token",
    "revision of auth store is old",
    "user name is empty",
)
_AUTH_TEXTS = (
    "authentication failed",
    "permission denied",
    "user name not found",
    "role name not found",
    "invalid auth management",
)


def _classify(err: BaseException, closed: bool = False) -> str:
    grpc = _grpc()
    if not isinstance(err, grpc.RpcError):
        return _FATAL
    code = err.code()
    details = (err.details() or "").lower()
    if any(t in details for t in _REAUTH_TEXTS) or code == grpc.StatusCode.UNAUTHENTICATED:
        return _REAUTH
    if code == grpc.StatusCode.PERMISSION_DENIED or any(t in details for t in _AUTH_TEXTS):
        return _AUTH
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return _RETRY
    if code == grpc.StatusCode.CANCELLED and not closed:
        return _RETRY
    if any(t in details for t in _TRANSIENT_TEXTS):
        return _RETRY
    return _FATAL


def _describe(err: BaseException) -> str:
    """One line describing err (never holds request contents, so never a password)."""
    grpc = _grpc()
    if isinstance(err, grpc.RpcError):
        try:
            return f"{err.details() or ''} ({err.code().name})".strip()
        except Exception:  # pragma: no cover - a non-call RpcError
            return type(err).__name__
    return f"{type(err).__name__}: {err}"


# The one failover policy, used by unary calls, watch streams and lease keepalives.
CLOSE_TIMEOUT = 2.0  # longest wait of Client.close() (seconds)
MIN_ATTEMPT = 0.1  # shortest bound of one attempt on one endpoint (seconds)
MAX_ROUND_PAUSE = 0.5  # longest pause after a whole round of endpoints failed


class _Failover:
    """What every call does after a failed attempt (docs/decisions/0001-etcd-client.md):

    * a stale auth token: authenticate again (once per call) and retry at once;
    * refused (permission, bad credentials): EtcdAuthError; any other definite error: EtcdError;
    * transient (unavailable, deadline, no leader, a server-side cancel): the next endpoint,
      with a short pause after every whole round (50 ms doubling to 0.5 s) so that channels
      can reconnect. No endpoint is quarantined: every round tries them all.

    One attempt on one endpoint is bounded by the client's attempt timeout, but by at most half
    of the time the call has left (and at least MIN_ATTEMPT): a hung member (alive socket, no
    answers) then leaves time to ask another one before the caller's deadline, even at short
    lease TTLs. `deadline` None means "until stopped" (watch streams)."""

    def __init__(
        self,
        client: Client,
        what: str,
        deadline: float | None,
        *,
        use_token: bool = True,
        pause: Callable[[float], object] = time.sleep,
    ) -> None:
        self.client = client
        self.what = what  # "etcd Range", "lease keepalive", "watch": for messages
        self.deadline = deadline
        self.use_token = use_token
        self._pause = pause
        self.started = time.monotonic()
        self.failures = 0  # consecutive transient failures
        self.attempts = 0
        self.reauthed = False
        self.last = "no attempt"

    def remaining(self) -> float:
        if self.deadline is None:
            return math.inf
        return self.deadline - time.monotonic()

    def attempt_timeout(self) -> float:
        """The bound of the next attempt on one endpoint (counts the attempt)."""
        self.attempts += 1
        rem = self.remaining()
        bound = max(MIN_ATTEMPT, rem / 2) if self.client.endpoint_count > 1 else rem
        return max(0.0, min(self.client.attempt_timeout, bound, rem))

    def expired(self) -> bool:
        """The deadline passed — after at least one attempt (even a tiny deadline gets one)."""
        return self.attempts > 0 and self.remaining() <= 0

    def unavailable(self) -> EtcdUnavailable:
        return EtcdUnavailable(
            f"etcd unavailable: no endpoint answered {self.what} within "
            f"{time.monotonic() - self.started:.1f}s ({self.client._endpoint_list()}): "
            f"{self.last}"
        )

    def succeeded(self) -> None:
        """A stream was (re)established: the next failure starts a new count."""
        self.failures = 0
        self.reauthed = False

    def failed(self, err: BaseException, idx: int, token: str | None = None) -> None:
        """After attempt on endpoint `idx` failed with `err`: return to try again (on the
        endpoint the client now points at), or raise what ends the call."""
        grpc = _grpc()
        if isinstance(err, EtcdClusterChanged):
            raise err
        if not isinstance(err, grpc.RpcError):
            raise EtcdError(f"{self.what} failed: {_describe(err)}") from None
        self.failed_kind(_classify(err, closed=self.client._closed), _describe(err), idx, token)

    def failed_kind(self, kind: str, detail: str, idx: int, token: str | None = None) -> None:
        self.last = detail
        client = self.client
        if kind == _REAUTH and self.use_token and client._has_credentials() and not self.reauthed:
            self.reauthed = True
            deadline = self.deadline
            if deadline is None:
                deadline = time.monotonic() + client.call_timeout
            try:
                client._reauthenticate(token, deadline)
            except EtcdAuthError:
                raise
            except EtcdError as e:  # unreachable now: fail over and try again
                self.last = str(e)
                self._transient(idx)
            return
        if kind in (_REAUTH, _AUTH):
            raise EtcdAuthError(f"{self.what} refused: {detail}")
        if kind == _FATAL:
            raise EtcdError(f"{self.what} failed: {detail}")
        self._transient(idx)

    def _transient(self, idx: int) -> None:
        client = self.client
        client._advance(idx)
        self.failures += 1
        n = client.endpoint_count
        if self.failures % n == 0:
            rounds = self.failures // n
            pause = min(0.05 * 2 ** min(rounds, 4), MAX_ROUND_PAUSE, self.remaining())
            if pause > 0:
                self._pause(pause)


def _iter_queue(q: queue.Queue[Any]) -> Iterator[Any]:
    """Request iterator for a bidi stream: yields what is put on q until None arrives."""
    while True:
        item = q.get()
        if item is None:
            return
        yield item


def _kv(pb_kv: Any) -> KeyValue:
    return KeyValue(
        key=pb_kv.key,
        value=pb_kv.value,
        create_revision=pb_kv.create_revision,
        mod_revision=pb_kv.mod_revision,
        version=pb_kv.version,
        lease=pb_kv.lease,
    )


def _target(endpoint: str, tls_files: bool) -> tuple[str, bool]:
    """("host:port", secure) for an endpoint URL. Without a scheme, TLS iff TLS files given."""
    ep = endpoint.strip()
    if "://" in ep:
        scheme, rest = ep.split("://", 1)
        scheme = scheme.lower()
        if scheme not in ("http", "https"):
            raise EtcdError(
                f"unsupported endpoint scheme in {endpoint!r} (use http:// or https://)"
            )
        secure = scheme == "https"
    else:
        rest, secure = ep, tls_files
    host = rest.split("/", 1)[0]
    if not host:
        raise EtcdError(f"bad endpoint {endpoint!r}")
    return host, secure


# Methods whose answer reflects every write committed before the request was sent: their header
# revision never goes backwards within one cluster (Range is linearizable by default; writes,
# lease grants and revokes go through raft).
_LINEARIZABLE = frozenset(("Range", "Put", "DeleteRange", "Txn", "LeaseGrant", "LeaseRevoke"))

# channel options: quick reconnects (no member is quarantined for long) and keepalive pings
# so that a dead connection under an open stream is noticed (etcd's default enforcement
# policy rejects pings more often than every 5 s, and pings on a connection without calls).
_CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 3_000),
    ("grpc.keepalive_permit_without_calls", 0),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_receive_message_length", -1),
    ("grpc.max_send_message_length", -1),
    ("grpc.enable_http_proxy", 0),
)


class _StreamEnded:
    """Marker a stream reader queues when its stream ended (err None: closed cleanly)."""

    def __init__(self, err: BaseException | None) -> None:
        self.err = err


_CANCELED = object()  # marker: the watch was canceled locally


# ---------------------------------------------------------------------------------------
# Watch
# ---------------------------------------------------------------------------------------


class Watch:
    """A watch on one key or range. Events are delivered in revision order; the client resumes
    the stream after a broken connection from the last delivered revision + 1 (on any
    endpoint), so no event is lost or repeated."""

    def __init__(
        self,
        client: Client,
        key: bytes,
        range_end: bytes | None,
        start_revision: int,
        no_put: bool,
        no_delete: bool,
        wake: Callable[[], None] | None = None,
    ) -> None:
        self._client = client
        self._wake = wake
        self._key = key
        self._range_end = range_end or b""
        self._no_put = no_put
        self._no_delete = no_delete
        # the revision to (re)start from: last delivered + 1 (0 until the first creation)
        self._next_rev = start_revision
        self._events: queue.Queue[Any] = queue.Queue()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._init_error: BaseException | None = None
        self._error: BaseException | None = None
        self._lock = threading.Lock()
        self._call: Any = None
        self._reqq: queue.Queue[Any] | None = None
        self._thread = threading.Thread(target=self._run, name=f"conch-watch {key!r}", daemon=True)
        self.breaks = 0  # how many times the stream broke or was canceled (for tests/logs)
        self.reconnects = 0  # how many times it was re-established after that

    # -- public ---------------------------------------------------------------------------
    def get(self, timeout: float | None) -> list[Event]:
        """Block until events arrive (return them) or timeout passes (return []).
        Raises WatchCompacted when the history needed is gone, EtcdError when canceled by
        the server for another reason and it cannot be re-established."""
        if self._error is not None:
            raise self._error
        if self._stop.is_set() and self._events.empty():
            return []
        try:
            item = (
                self._events.get(timeout=timeout)
                if timeout is None or timeout > 0
                else (self._events.get_nowait())
            )
        except queue.Empty:
            return []
        events: list[Event] = []
        while True:
            if item is _CANCELED:
                break
            if isinstance(item, BaseException):
                self._error = item
                if events:
                    break  # deliver what came before it; raise on the next call
                raise item
            events.extend(item)
            try:
                item = self._events.get_nowait()
            except queue.Empty:
                break
        return events

    def cancel(self, wait: bool = True) -> None:
        """End the watch; with `wait`, also wait (bounded) for its stream thread to finish."""
        self._stop.set()
        with self._lock:
            call, reqq = self._call, self._reqq
        if reqq is not None:
            reqq.put(None)
        if call is not None:
            call.cancel()
        self._put(_CANCELED)
        self._ready.set()
        if wait:
            self.join(5.0)
        self._client._forget_watch(self)

    def join(self, timeout: float) -> None:
        """Wait up to `timeout` for the stream thread of a canceled watch to finish."""
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel()

    # -- internals ------------------------------------------------------------------------
    def _start(self, timeout: float) -> None:
        self._thread.start()
        if not self._ready.wait(timeout):
            self.cancel()
            raise EtcdUnavailable(
                f"etcd unavailable: no endpoint created the watch within {timeout:.1f}s "
                f"({self._client._endpoint_list()})"
            )
        if self._init_error is not None:
            self.cancel()
            raise self._init_error

    def _fail(self, err: BaseException) -> None:
        """Terminal error: surfaces from get() (or from watch() before creation)."""
        if self._stop.is_set():
            return  # canceled locally (or the client closed): nobody waits for an error
        if not self._ready.is_set():
            self._init_error = err
            self._ready.set()
        self._put(err)

    def _put(self, item: Any) -> None:
        """Queue what get() returns next, and wake whoever waits for it elsewhere."""
        self._events.put(item)
        if self._wake is not None:
            self._wake()

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as e:  # a reader must never die silently
            self._fail(EtcdError(f"watch reader failed: {type(e).__name__}: {e}"))

    def _create_request(self, pb: Any) -> Any:
        filters = []
        if self._no_put:
            filters.append(pb.WatchCreateRequest.NOPUT)
        if self._no_delete:
            filters.append(pb.WatchCreateRequest.NODELETE)
        return pb.WatchRequest(
            create_request=pb.WatchCreateRequest(
                key=self._key,
                range_end=self._range_end,
                start_revision=self._next_rev,
                filters=filters,
            )
        )

    def _loop(self) -> None:
        pb, _ = _pb()
        client = self._client
        policy = _Failover(client, "watch", None, pause=self._stop.wait)
        cancels = 0  # consecutive server cancellations of a creation
        while not self._stop.is_set():
            idx = client._current()
            reqq: queue.Queue[Any] = queue.Queue()
            reqq.put(self._create_request(pb))
            token = client._token
            try:
                stub = client._stub(idx, "Watch")
                call = stub.Watch(_iter_queue(reqq), metadata=client._metadata())
            except EtcdError as e:
                self._fail(e)
                return
            with self._lock:
                self._call, self._reqq = call, reqq
            if self._stop.is_set():
                reqq.put(None)
                call.cancel()
                return
            created = threading.Event()

            def watchdog(call: Any = call, created: threading.Event = created) -> None:
                if not created.is_set():
                    call.cancel()

            timer = threading.Timer(client.attempt_timeout, watchdog)
            timer.daemon = True
            timer.start()
            err: BaseException | None = None
            cancel_reason: str | None = None
            try:
                for resp in call:
                    client._check_identity(resp.header)
                    if resp.compact_revision > 0:
                        self._fail(WatchCompacted(resp.compact_revision))
                        return
                    if resp.created:
                        created.set()
                        timer.cancel()
                        if resp.canceled:
                            cancel_reason = resp.cancel_reason or "canceled at creation"
                            break
                        if self._next_rev <= 0:
                            self._next_rev = resp.header.revision + 1
                        if policy.failures or cancels:
                            self.reconnects += 1
                        policy.succeeded()
                        cancels = 0
                        self._ready.set()
                        continue
                    if resp.canceled:
                        cancel_reason = resp.cancel_reason or "canceled by the server"
                        break
                    if resp.events:
                        self._deliver(resp.events)
                    # an empty response (a progress notification) is not delivered, and its
                    # revision is not trusted to advance _next_rev: etcd 3.5 can send progress
                    # ahead of events still queued for an unsynced watcher (etcd #15220)
            except BaseException as e:
                err = e
            finally:
                timer.cancel()
                reqq.put(None)
                call.cancel()
                with self._lock:
                    self._call, self._reqq = None, None
            if self._stop.is_set():
                return
            if created.is_set():
                self.breaks += 1
            try:
                if cancel_reason is not None:
                    low = cancel_reason.lower()
                    if "compacted" in low:
                        self._fail(WatchCompacted(self._next_rev))
                        return
                    detail = f"canceled by the server: {cancel_reason}"
                    if any(t in low for t in _REAUTH_TEXTS + _AUTH_TEXTS):
                        # the stream's token may have expired: one fresh token, then give up
                        policy.failed_kind(_REAUTH, detail, idx, token)
                        continue
                    cancels += 1
                    if cancels >= max(3, client.endpoint_count):
                        transient = any(t in low for t in _TRANSIENT_TEXTS)
                        kind = EtcdUnavailable if transient else EtcdError
                        self._fail(kind(f"watch {detail}"))
                        return
                    policy.failed_kind(_RETRY, detail, idx, token)
                elif err is not None:
                    policy.failed(err, idx, token)
                else:  # the server closed the stream: next endpoint
                    policy.failed_kind(_RETRY, "stream closed by the server", idx, token)
            except EtcdError as e:
                self._fail(e)
                return

    def _deliver(self, pb_events: Any) -> None:
        out: list[Event] = []
        for ev in pb_events:
            if ev.kv.mod_revision < self._next_rev:
                continue  # already delivered before a reconnection
            out.append(Event(type=EventType(ev.type), kv=_kv(ev.kv)))
        if out:
            self._next_rev = out[-1].kv.mod_revision + 1
            self._put(out)


# ---------------------------------------------------------------------------------------
# lease keepalive stream
# ---------------------------------------------------------------------------------------


class _KeepAliveStream:
    """One LeaseKeepAlive bidi stream: requests through a queue, responses (or the marker
    _StreamEnded) into another, read by a daemon thread."""

    def __init__(self, client: Client, idx: int) -> None:
        self.idx = idx
        self.reqq: queue.Queue[Any] = queue.Queue()
        self.respq: queue.Queue[Any] = queue.Queue()
        stub = client._stub(idx, "Lease")
        self.call = stub.LeaseKeepAlive(_iter_queue(self.reqq), metadata=client._metadata())
        self.thread = threading.Thread(target=self._read, name="conch-lease-keepalive", daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for resp in self.call:
                self.respq.put(resp)
            self.respq.put(_StreamEnded(None))
        except BaseException as e:  # never die silently: the waiter sees it
            self.respq.put(_StreamEnded(e))

    def close(self) -> None:
        self.reqq.put(None)
        self.call.cancel()


# ---------------------------------------------------------------------------------------
# Client
# ---------------------------------------------------------------------------------------


class Client:
    def __init__(
        self,
        config: ClientConfig,
        *,
        call_timeout: float | None = None,
        attempt_timeout: float | None = None,
    ) -> None:
        self.config = config
        if not config.endpoints:
            raise EtcdError("no etcd endpoints given")
        tls_files = bool(config.cacert or config.cert or config.key)
        self._targets: list[tuple[str, bool]] = [_target(ep, tls_files) for ep in config.endpoints]
        # overall deadline of one call; per-attempt bound on one endpoint
        self.call_timeout = (
            call_timeout if call_timeout is not None else max(config.dial_timeout, 5.0)
        )
        self.attempt_timeout = (
            attempt_timeout
            if attempt_timeout is not None
            else max(0.5, min(config.dial_timeout, 2.5))
        )
        self._lock = threading.RLock()
        self._auth_lock = threading.Lock()
        self._ka_lock = threading.Lock()
        self._channels: dict[int, Any] = {}
        self._stubs: dict[tuple[int, str], Any] = {}
        self._creds: Any = None
        self._idx = 0
        self._token: str | None = None
        self._connected = False
        self._closed = False
        self._ka: _KeepAliveStream | None = None
        self._watches: set[Watch] = set()
        # identity of the cluster behind the endpoints: its id, and the highest revision a
        # linearizable answer carried (both only ever confirmed, never allowed to change)
        self._cluster_id = 0
        self._max_revision = 0
        self._identity_error: EtcdClusterChanged | None = None
        self.auth_count = 0  # successful Authenticate calls (token refreshes after the first)

    # -- life cycle ---------------------------------------------------------------------
    def connect(self) -> None:
        """Reach some endpoint (and authenticate) within config.dial_timeout, or raise
        EtcdUnavailable / EtcdAuthError."""
        deadline = time.monotonic() + self.config.dial_timeout
        self._connect(deadline)

    def _connect(self, deadline: float) -> None:
        """The first call reaches an endpoint (and checks the cluster's identity, as every
        answer does): with credentials it is Authenticate itself — etcd 3.6 and 3.5.28+ refuse
        Maintenance.Status from a client that has not logged in once auth is on (etcd
        #14663) — else an anonymous Status (a client certificate's CommonName logs in)."""
        if self._has_credentials():
            self._reauthenticate(None, deadline)
        else:
            pb, _ = _pb()
            self._unary("Maintenance", "Status", pb.StatusRequest(), deadline, use_token=False)
        self._connected = True

    def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Cancel every watch and stream and close the connections, waiting at most `timeout`
        in all: grpc's channel close waits for its calls to be cleaned up, which can take for
        ever after a fault (grpc/grpc#19910, #20026); then the connections are left to the
        process's exit, which closes them."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            watches = list(self._watches)
        end = time.monotonic() + timeout
        for w in watches:
            w.cancel(wait=False)
        ka = self._ka  # not under _ka_lock: a waiting lease_keepalive sees its stream end
        if ka is not None:
            ka.close()
        with self._lock:
            channels = list(self._channels.values())
            self._channels.clear()
            self._stubs.clear()
        closer = threading.Thread(
            target=lambda: [ch.close() for ch in channels], name="conch-close", daemon=True
        )
        closer.start()
        for w in watches:
            w.join(max(0.0, end - time.monotonic()))
        closer.join(max(0.0, end - time.monotonic()))
        if closer.is_alive():
            log.debug("etcd connections not closed within %.1fs: left to the exit", timeout)

    def __enter__(self) -> Client:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- KV -----------------------------------------------------------------------------
    def get(self, key: bytes, timeout: float | None = None) -> tuple[KeyValue | None, int]:
        """(kv or None, header revision)."""
        pb, _ = _pb()
        resp = self._call("KV", "Range", pb.RangeRequest(key=key), timeout)
        kv = _kv(resp.kvs[0]) if resp.kvs else None
        return kv, resp.header.revision

    def get_range(
        self, key: bytes, range_end: bytes, timeout: float | None = None, keys_only: bool = False
    ) -> tuple[list[KeyValue], int]:
        """All keys in [key, range_end), sorted by key (without their values if `keys_only`);
        and the header revision."""
        kvs, revision, _more = self.get_page(key, range_end, 0, 0, timeout, keys_only)
        return kvs, revision

    def get_page(
        self, key: bytes, range_end: bytes, limit: int, revision: int = 0,
        timeout: float | None = None, keys_only: bool = False,
    ) -> tuple[list[KeyValue], int, bool]:  # fmt: skip
        """The first `limit` keys (0: all) in [key, range_end), sorted by key (without values
        if `keys_only`), as of `revision` (0: now); the header revision; and whether more keys
        follow. Raises EtcdError (e.g. the revision was compacted)."""
        pb, _ = _pb()
        req = pb.RangeRequest(
            key=key,
            range_end=range_end,
            limit=limit,
            revision=revision,
            sort_order=pb.RangeRequest.ASCEND,
            sort_target=pb.RangeRequest.KEY,
            keys_only=keys_only,
        )
        resp = self._call("KV", "Range", req, timeout)
        return [_kv(kv) for kv in resp.kvs], resp.header.revision, bool(resp.more)

    def put(self, key: bytes, value: bytes, lease: int = 0, timeout: float | None = None) -> int:
        """Returns the header revision."""
        pb, _ = _pb()
        resp = self._call("KV", "Put", pb.PutRequest(key=key, value=value, lease=lease), timeout)
        return int(resp.header.revision)

    def delete(
        self, key: bytes, range_end: bytes | None = None, timeout: float | None = None
    ) -> int:
        """Returns the number of keys deleted."""
        pb, _ = _pb()
        req = pb.DeleteRangeRequest(key=key, range_end=range_end or b"")
        resp = self._call("KV", "DeleteRange", req, timeout)
        return int(resp.deleted)

    def txn(
        self,
        compare: Sequence[Compare],
        success: Sequence[Op | SubTxn],
        failure: Sequence[Op | SubTxn] = (),
        timeout: float | None = None,
    ) -> TxnResult:
        pb, _ = _pb()
        req = _txn_pb(pb, SubTxn(compare, success, failure))
        return _txn_result(self._call("KV", "Txn", req, timeout))

    def compact(self, revision: int, timeout: float | None = None) -> None:
        """Compact the key-value history up to revision (used by tests and maintenance)."""
        pb, _ = _pb()
        self._call("KV", "Compact", pb.CompactionRequest(revision=revision), timeout)

    # -- leases -------------------------------------------------------------------------
    def lease_grant(self, ttl: int, timeout: float | None = None) -> tuple[int, int]:
        """(lease id, granted TTL seconds)."""
        pb, _ = _pb()
        resp = self._call("Lease", "LeaseGrant", pb.LeaseGrantRequest(TTL=ttl), timeout)
        if resp.error:
            raise EtcdError(f"lease grant failed: {resp.error}")
        return int(resp.ID), int(resp.TTL)

    def lease_revoke(self, lease_id: int, timeout: float | None = None) -> None:
        """Revoke; a lease that is already gone is not an error."""
        pb, _ = _pb()
        try:
            self._call("Lease", "LeaseRevoke", pb.LeaseRevokeRequest(ID=lease_id), timeout)
        except EtcdError as e:
            if "lease not found" in str(e):
                return
            raise

    def lease_time_to_live(self, lease_id: int, timeout: float | None = None) -> int:
        """Remaining TTL in seconds of a lease (-1: it does not exist)."""
        pb, _ = _pb()
        req = pb.LeaseTimeToLiveRequest(ID=lease_id)
        resp = self._call("Lease", "LeaseTimeToLive", req, timeout)
        return int(resp.TTL)

    def lease_keepalive(self, lease_id: int, timeout: float) -> int:
        """Send one keepalive on the client's persistent LeaseKeepAlive stream and wait for
        its answer: returns the TTL the server granted (<= 0: the lease no longer exists).
        Fails over between endpoints like every call (_Failover: a hung member costs one
        attempt, at most half the time left); raises EtcdUnavailable when no answer came within
        `timeout`, EtcdAuthError / EtcdError when refused."""
        pb, _ = _pb()
        policy = _Failover(self, "lease keepalive", time.monotonic() + timeout)
        with self._ka_lock:
            while True:
                self._check_open()
                if policy.expired():
                    raise policy.unavailable()
                self._ensure_session(policy.deadline or 0.0)
                if self._ka is None:
                    self._ka = _KeepAliveStream(self, self._current())
                ka = self._ka
                token = self._token
                ka.reqq.put(pb.LeaseKeepAliveRequest(ID=lease_id))
                try:
                    item = ka.respq.get(timeout=policy.attempt_timeout())
                except queue.Empty:
                    # no answer in time (a hung member?): drop the stream; next endpoint
                    self._drop_keepalive(advance=False)
                    policy.failed_kind(_RETRY, f"no answer from {self._target_name(ka.idx)}",
                                       ka.idx, token)  # fmt: skip
                    continue
                if not isinstance(item, _StreamEnded):
                    self._check_identity(item.header)
                    if lease_id == item.ID:
                        return int(item.TTL)
                    continue  # an answer for another lease (cannot happen: one at a time)
                # the stream broke: drop it, classify, retry on the next endpoint
                self._drop_keepalive(advance=False)
                if item.err is None:
                    policy.failed_kind(_RETRY, "keepalive stream closed by the server",
                                       ka.idx, token)  # fmt: skip
                else:
                    policy.failed(item.err, ka.idx, token)

    def _drop_keepalive(self, advance: bool) -> None:
        ka, self._ka = self._ka, None
        if ka is not None:
            ka.close()
            if advance:
                self._advance(ka.idx)

    # -- watch --------------------------------------------------------------------------
    def watch(
        self,
        key: bytes,
        range_end: bytes | None = None,
        start_revision: int = 0,
        no_put: bool = False,
        no_delete: bool = False,
        timeout: float | None = None,
        wake: Callable[[], None] | None = None,
    ) -> Watch:
        """Start a watch; returns once the server confirmed it was created. `wake`, if given,
        is called from the watch's thread each time get() has something new (events, an
        error, its end): a caller can then sleep on something else than get()."""
        self._check_open()
        t = self.call_timeout if timeout is None else timeout
        self._ensure_session(time.monotonic() + t)
        w = Watch(self, key, range_end, start_revision, no_put, no_delete, wake)
        with self._lock:
            self._watches.add(w)
        w._start(t)
        return w

    def _forget_watch(self, w: Watch) -> None:
        with self._lock:
            self._watches.discard(w)

    # -- maintenance ----------------------------------------------------------------------
    def status(self, timeout: float | None = None) -> dict[str, int | str]:
        """Maintenance.Status of the current endpoint: version, leader, raft_term, revision."""
        pb, _ = _pb()
        resp, idx = self._call("Maintenance", "Status", pb.StatusRequest(), timeout, with_idx=True)
        return {
            "endpoint": self.config.endpoints[idx],
            "version": resp.version,
            "leader": int(resp.leader),
            "member_id": int(resp.header.member_id),
            "raft_term": int(resp.raftTerm),
            "raft_index": int(resp.raftIndex),
            "revision": int(resp.header.revision),
            "db_size": int(resp.dbSize),
        }

    # -- internals ------------------------------------------------------------------------
    @property
    def identity_problem(self) -> str | None:
        """Why the client refuses every call (EtcdClusterChanged), or None."""
        err = self._identity_error
        return None if err is None else str(err)

    @property
    def endpoint_count(self) -> int:
        return len(self._targets)

    def _check_open(self) -> None:
        if self._closed:
            raise EtcdError("etcd client is closed")
        if self._identity_error is not None:
            raise EtcdClusterChanged(str(self._identity_error))

    def _check_identity(self, header: Any, floor: int | None = None) -> None:
        """Every answer's header names its cluster; the answer to a linearizable request
        carries a revision at least `floor`, the highest revision seen before the request was
        sent. Anything else means the endpoints now serve another cluster, or one rebuilt or
        restored from a backup without bumping its revisions: fencing tokens there could
        repeat. Raise EtcdClusterChanged, now and for every further call."""
        cluster_id, revision = int(header.cluster_id), int(header.revision)
        with self._lock:
            if self._identity_error is not None:
                raise EtcdClusterChanged(str(self._identity_error))
            problem = ""
            if cluster_id and self._cluster_id and cluster_id != self._cluster_id:
                problem = (
                    f"etcd cluster changed identity: cluster id {cluster_id:x}, "
                    f"was {self._cluster_id:x}"
                )
            elif floor is not None and revision and revision < floor:
                problem = (
                    f"etcd revisions went backwards (revision {revision} after {floor}): "
                    "the cluster was rebuilt or restored from a backup"
                )
            if problem:
                self._identity_error = EtcdClusterChanged(
                    problem + "; refusing to go on (fencing tokens could repeat). Restore "
                    "with `etcdutl snapshot restore --bump-revision --mark-compacted`; "
                    "see docs/operations.md"
                )
                raise EtcdClusterChanged(str(self._identity_error))
            if cluster_id and not self._cluster_id:
                self._cluster_id = cluster_id
            if floor is not None and revision > self._max_revision:
                self._max_revision = revision

    def _has_credentials(self) -> bool:
        return bool(self.config.user)

    def _endpoint_list(self) -> str:
        return ", ".join(self.config.endpoints)

    def _target_name(self, idx: int) -> str:
        return self.config.endpoints[idx]

    def _current(self) -> int:
        with self._lock:
            return self._idx

    def _advance(self, failed_idx: int) -> None:
        """Move to the endpoint after failed_idx (unless another thread already moved on)."""
        with self._lock:
            if self._idx == failed_idx:
                self._idx = (failed_idx + 1) % len(self._targets)

    def _metadata(self, use_token: bool = True) -> list[tuple[str, str]]:
        md = [("hasleader", "true")]
        tok = self._token
        if use_token and tok:
            md.append(("token", tok))
        return md

    def _channel_credentials(self) -> Any:
        if self._creds is None:
            grpc = _grpc()

            def read(path: str | None, what: str) -> bytes | None:
                if not path:
                    return None
                try:
                    with open(path, "rb") as f:
                        return f.read()
                except OSError as e:
                    raise EtcdError(f"cannot read {what} file {path}: {e.strerror}") from None

            self._creds = grpc.ssl_channel_credentials(
                root_certificates=read(self.config.cacert, "CA certificate"),
                private_key=read(self.config.key, "client key"),
                certificate_chain=read(self.config.cert, "client certificate"),
            )
        return self._creds

    def _stub(self, idx: int, service: str) -> Any:
        with self._lock:
            self._check_open()
            stub = self._stubs.get((idx, service))
            if stub is not None:
                return stub
            ch = self._channels.get(idx)
            if ch is None:
                grpc = _grpc()
                target, secure = self._targets[idx]
                if secure:
                    ch = grpc.secure_channel(
                        target, self._channel_credentials(), options=_CHANNEL_OPTIONS
                    )
                else:
                    ch = grpc.insecure_channel(target, options=_CHANNEL_OPTIONS)
                self._channels[idx] = ch
            _, pbg = _pb()
            stub = getattr(pbg, f"{service}Stub")(ch)
            self._stubs[(idx, service)] = stub
            return stub

    def _ensure_session(self, deadline: float) -> None:
        """Authenticate lazily when connect() was not called."""
        if not self._connected:
            self._connect(deadline)

    def _reauthenticate(self, stale: str | None, deadline: float) -> None:
        """Get a fresh token (unless another thread already replaced `stale`)."""
        pb, _ = _pb()
        with self._auth_lock:
            if stale is not None and self._token != stale:
                return
            user = self.config.user or ""
            req = pb.AuthenticateRequest(name=user, password=self.config.password or "")
            try:
                resp = self._unary("Auth", "Authenticate", req, deadline, use_token=False)
            except EtcdAuthError as e:
                raise EtcdAuthError(f"etcd refused authentication as user {user!r}: {e}") from None
            except EtcdError as e:
                if "authentication is not enabled" in str(e):
                    self._token = None  # auth is off: the credentials are not needed
                    return
                raise
            self._token = resp.token
            self.auth_count += 1

    def _call(
        self,
        service: str,
        method: str,
        request: Any,
        timeout: float | None,
        with_idx: bool = False,
    ) -> Any:
        t = self.call_timeout if timeout is None else timeout
        deadline = time.monotonic() + t
        self._check_open()
        self._ensure_session(deadline)
        return self._unary(service, method, request, deadline, with_idx=with_idx)

    def _unary(
        self,
        service: str,
        method: str,
        request: Any,
        deadline: float,
        use_token: bool = True,
        with_idx: bool = False,
    ) -> Any:
        """One unary RPC, failing over across endpoints until deadline (_Failover)."""
        policy = _Failover(self, f"etcd {method}", deadline, use_token=use_token)
        while True:
            self._check_open()
            if policy.expired():
                raise policy.unavailable()
            idx = self._current()
            fn: Callable[..., Any] = getattr(self._stub(idx, service), method)
            token = self._token if use_token else None
            # linearizable: the answer reflects every revision seen before the request left
            floor = self._max_revision if method in _LINEARIZABLE else None
            try:
                resp = fn(
                    request,
                    timeout=policy.attempt_timeout(),
                    metadata=self._metadata(use_token),
                )
            except _grpc().RpcError as e:
                policy.failed(e, idx, token)
                continue
            self._check_identity(resp.header, floor)
            return (resp, idx) if with_idx else resp


def _compare_pb(pb: Any, c: Compare) -> Any:
    results = {
        "==": pb.Compare.EQUAL,
        "!=": pb.Compare.NOT_EQUAL,
        "<": pb.Compare.LESS,
        ">": pb.Compare.GREATER,
    }
    targets = {
        "create": (pb.Compare.CREATE, "create_revision"),
        "mod": (pb.Compare.MOD, "mod_revision"),
        "version": (pb.Compare.VERSION, "version"),
        "value": (pb.Compare.VALUE, "value"),
        "lease": (pb.Compare.LEASE, "lease"),
    }
    if c.op not in results:
        raise ValueError(f"bad compare op {c.op!r}")
    if c.target not in targets:
        raise ValueError(f"bad compare target {c.target!r}")
    target, fld = targets[c.target]
    if (fld == "value") != isinstance(c.value, bytes):
        raise ValueError(f"compare {c.target!r} needs a {'bytes' if fld == 'value' else 'int'}")
    return pb.Compare(
        result=results[c.op], target=target, key=c.key, range_end=c.range_end or b"",
        **{fld: c.value},
    )  # fmt: skip


def _txn_pb(pb: Any, t: SubTxn) -> Any:
    return pb.TxnRequest(
        compare=[_compare_pb(pb, c) for c in t.compare],
        success=[_op_pb(pb, o) for o in t.success],
        failure=[_op_pb(pb, o) for o in t.failure],
    )


def _txn_result(resp: Any) -> TxnResult:
    out: list[Any] = []
    for r in resp.responses:
        kind = r.WhichOneof("response")
        if kind == "response_range":
            out.append([_kv(kv) for kv in r.response_range.kvs])
        elif kind == "response_txn":
            out.append(_txn_result(r.response_txn))
        else:
            out.append(None)
    return TxnResult(succeeded=resp.succeeded, revision=resp.header.revision, responses=out)


def _op_pb(pb: Any, o: Op | SubTxn) -> Any:
    if isinstance(o, SubTxn):
        return pb.RequestOp(request_txn=_txn_pb(pb, o))
    if o.kind == "put":
        return pb.RequestOp(request_put=pb.PutRequest(key=o.key, value=o.value, lease=o.lease))
    if o.kind == "get":
        return pb.RequestOp(
            request_range=pb.RangeRequest(
                key=o.key,
                range_end=o.range_end or b"",
                sort_order=pb.RangeRequest.ASCEND if o.range_end else pb.RangeRequest.NONE,
                sort_target=pb.RangeRequest.KEY,
                keys_only=o.keys_only,
            )
        )
    if o.kind == "delete":
        return pb.RequestOp(
            request_delete_range=pb.DeleteRangeRequest(key=o.key, range_end=o.range_end or b"")
        )
    raise ValueError(f"bad txn op kind {o.kind!r}")
