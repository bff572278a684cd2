"""A loopback TCP proxy for fault tests: delayed, lost and frozen answers between a client and
one etcd member (pure stdlib, threads).

    with Proxy(etcd.endpoints[0]) as proxy:          # listens on 127.0.0.1:<free port>
        env["CONCH_ENDPOINTS"] = proxy.endpoint      # "http://127.0.0.1:<port>"
        ...
        proxy.blackhole()                            # requests still reach etcd, answers are lost
        proxy.pass_through()                         # and reset the now unsynchronised connections

What it simulates (the mode applies at once to existing and new connections):

    pass_through()   forward both ways
    delay(s)         requests pass at once; every server->client chunk is delivered s seconds
                     after it arrived, in order (a slow network path or an overloaded member)
    blackhole()      requests are still forwarded, so a write COMMITS in etcd, but every
                     server->client byte is dropped (the answer is lost)
    hang()           nothing is read or forwarded either way; connections stay open (a
                     SIGSTOPped member behind a live socket, but only for this client)
    reset()          abort every current connection on both sides with an RST (SO_LINGER 0);
                     new connections are accepted as usual
    lose_answers(path, count)
                     in any mode but blackhole/hang: the next `count` requests whose gRPC
                     method contains `path` (e.g. "KV/Txn") reach etcd and are applied, but
                     their answers are dropped; the connection and every other call go on
                     (HTTP/2-aware, see faults.h2)

Why `pass_through(reset=True)` (and `delay(..., reset=True)`) by default: gRPC speaks HTTP/2,
a stateful byte stream (frames, HPACK header tables, flow-control windows). Once bytes have been
dropped in blackhole mode, the client and server disagree about that state for good: resuming
forwarding on the same connection hands the client garbage or leaves it waiting forever. A
real network fault that loses bytes also ends the TCP connection. So leaving blackhole (or
hang) resets the connections that existed at the switch, and the client reconnects. Hang only
holds bytes back (it stops reading) and loses none, so `pass_through(reset=False)` after a hang
resumes every connection intact, like SIGCONT; after a blackhole, reset=False deliberately
keeps a corrupt stream (for a test of exactly that).

A blackhole eats the server's half of the HTTP/2 handshake too: a gRPC client that connects
during a blackhole never sees the connection ready and sends no request on it. Writes that
commit without an answer therefore need a connection established before the switch (a
long-lived client, such as a running conch). etcdctl connects anew per command: to show it a
PUT that commits while the command times out, use delay() longer than its --command-timeout
(tests/faults/test_faults.py does both).

Limits: TCP only (for a protocol whose server speaks first, the proxy waits for the client), one
upstream per proxy (a 3-member cluster needs 3 proxies); 3 threads per connection (fine for
tests, not for thousands of connections); in delay mode answers are buffered without bound; an
upstream that refuses the connection is reported to the client as an RST after the accept, not
as a refused connect; the delay is added per chunk of up to 64 KiB as read, so the server's own
pacing is kept; TLS passes through untouched (the proxy never looks at the bytes). Unexpected
exceptions in the proxy's threads are not printed: they are collected in `Proxy.errors` (tests
can assert it stays empty)."""

from __future__ import annotations

import collections
import contextlib
import socket
import struct
import threading
import time
from collections.abc import Callable
from types import TracebackType
from urllib.parse import urlsplit

_PASS, _DELAY, _BLACKHOLE, _HANG = "pass", "delay", "blackhole", "hang"
# Longest a proxy thread blocks before it rechecks whether it must stop. Only a safety net and
# the bound for a send() into a full buffer: aborts wake readers (shutdown) and waiters (notify).
_TICK = 0.25
_CHUNK = 65536
_JOIN_TIMEOUT = 5.0  # stop()/reset() bound on waiting for threads


def _parse_upstream(upstream: str) -> tuple[str, int]:
    parts = urlsplit(upstream if "://" in upstream else f"//{upstream}")
    if parts.hostname is None or parts.port is None:
        raise ValueError(f"upstream must be host:port or scheme://host:port, got {upstream!r}")
    return parts.hostname, parts.port


def _abortive(sock: socket.socket) -> None:
    """Make close() send an RST instead of a FIN (SO_LINGER on, timeout 0)."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


class _Conn:
    """One proxied connection: the client socket, its upstream socket and three threads.

    up:      connects upstream, then client -> server
    down:    server -> the delivery queue (stamped with the arrival time)
    deliver: the delivery queue -> client, applying the mode at delivery time (keeps order)
    """

    def __init__(self, proxy: Proxy, client: socket.socket, cid: int) -> None:
        from faults.h2 import AnswerFilter, RequestWatcher

        self.proxy = proxy
        # HTTP/2 inspection for lose_answers(); off for a connection that is not cleartext h2
        self.h2: bool | None = None  # unknown until the client's first bytes
        self.watching = True  # requests still being read (for lose_answers)
        self.lost_streams: set[int] = set()
        self.watcher = RequestWatcher(self._on_request)
        self.answers = AnswerFilter(self.lost_streams)
        self.client = client
        self.server: socket.socket | None = None
        self.cid = cid
        self.cond = threading.Condition()
        self.queue: collections.deque[tuple[float, bytes]] = collections.deque()  # b"" = EOF
        self.closing = False
        self.aborted = False
        self.up_done = False
        self.down_done = False
        self.threads: list[threading.Thread] = []
        self._alive = 0
        self._closed = threading.Event()

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        self._spawn("up", self._up)

    def _spawn(self, name: str, target: Callable[[], None]) -> None:
        t = threading.Thread(
            target=self._run,
            args=(target,),
            name=f"faults.proxy:{self.proxy.port}:{self.cid}:{name}",
            daemon=True,
        )
        with self.cond:
            self._alive += 1
            self.threads.append(t)
        t.start()

    def _run(self, target: Callable[[], None]) -> None:
        try:
            target()
        except OSError:
            self.abort()  # a reset, a broken pipe, a closed socket: end the connection
        except BaseException as e:  # never printed from a thread: tests look in .errors
            self.proxy._record_error(e)
            self.abort()
        finally:
            with self.cond:
                self._alive -= 1
                last = self._alive == 0
                self.cond.notify_all()
            if last:
                self._close_sockets()

    def abort(self) -> None:
        """End the connection with an RST on both sides (sent when the last thread exits)."""
        with self.cond:
            if self.closing and self.aborted:
                return
            self.closing = self.aborted = True
            self.cond.notify_all()
        for s in (self.client, self.server):
            if s is not None:
                _abortive(s)
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RD)  # wakes a blocked recv; sends nothing

    def _finish_if_done(self) -> None:
        with self.cond:
            if self.up_done and self.down_done:
                self.closing = True
                self.cond.notify_all()

    def _close_sockets(self) -> None:
        for s in (self.client, self.server):
            if s is not None:
                with contextlib.suppress(OSError):
                    s.close()
        self._closed.set()
        self.proxy._forget(self)

    def join(self, deadline: float) -> None:
        """Wait (until the monotonic `deadline`) for every thread of this connection to end."""
        # Once _closed is set no thread can be added (only a live thread spawns one).
        self._closed.wait(max(0.0, deadline - time.monotonic()))
        for t in list(self.threads):
            t.join(max(0.0, deadline - time.monotonic()))

    def _on_request(self, stream: int, path: str) -> None:
        if self.proxy._take_loss(path):
            self.lost_streams.add(stream)

    # -- helpers ---------------------------------------------------------------------------
    def _hold_while_hung(self) -> bool:
        """Wait while the proxy is in hang mode; False if the connection is closing."""
        with self.cond:
            while self.proxy._mode[0] == _HANG and not self.closing:
                self.cond.wait(_TICK)
            return not self.closing

    def _recv(self, sock: socket.socket) -> bytes | None:
        """Next chunk (b"" at EOF), or None if the connection is closing."""
        while not self.closing:
            try:
                return sock.recv(_CHUNK)
            except TimeoutError:
                continue
        return None

    def _send(self, sock: socket.socket, data: bytes) -> bool:
        view = memoryview(data)
        while view:
            if self.closing:
                return False
            try:
                n = sock.send(view)
            except TimeoutError:
                continue
            view = view[n:]
        return True

    # -- the three threads -----------------------------------------------------------------
    def _up(self) -> None:
        try:
            server = socket.create_connection(self.proxy._upstream, timeout=2.0)
        except OSError:
            self.abort()  # upstream down: the client sees an RST right after its connect
            return
        server.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        server.settimeout(_TICK)
        with self.cond:
            self.server = server
            if self.aborted:
                _abortive(server)
                return
        self._spawn("down", self._down)
        self._spawn("deliver", self._deliver)
        while True:
            if not self._hold_while_hung():
                return
            data = self._recv(self.client)
            if data is None or not self._hold_while_hung():
                return
            if not data:
                with contextlib.suppress(OSError):
                    server.shutdown(socket.SHUT_WR)  # pass the client's FIN on
                with self.cond:
                    self.up_done = True
                self._finish_if_done()
                return
            if self.watching:
                try:  # before forwarding: a stream is marked lost before it can be answered
                    self.watcher.feed(data)
                    self.h2 = self.watcher.is_h2
                except Exception:  # not h2 (TLS?), or a header block hpack cannot read
                    self.watching = False
                    if self.h2 is None:
                        self.h2 = False  # byte-blind both ways from the start
            if not self._send(server, data):
                return
            self.proxy._count(bytes_up=len(data))

    def _down(self) -> None:
        assert self.server is not None
        while True:
            if not self._hold_while_hung():
                return
            data = self._recv(self.server)
            if data is None:
                return
            if data and self.h2 is not False:  # h2, or a client preface still arriving
                data, dropped = self.answers.feed(data)
                if dropped:
                    self.proxy._count(dropped_down=dropped)
                if not data:
                    continue
            with self.cond:
                self.queue.append((time.monotonic(), data))
                self.cond.notify_all()
            if not data:
                return

    def _deliver(self) -> None:
        while True:
            with self.cond:
                while True:
                    if self.closing:
                        return
                    mode, delay = self.proxy._mode
                    if not self.queue or mode == _HANG:
                        self.cond.wait(_TICK)
                        continue
                    arrived, data = self.queue[0]
                    if mode == _BLACKHOLE:
                        self.queue.popleft()
                        if not data:  # the server's FIN is lost too
                            self.down_done = True
                            break
                        self.proxy._count(dropped_down=len(data))
                        continue
                    wait = arrived + (delay if mode == _DELAY else 0.0) - time.monotonic()
                    if wait > 0:
                        self.cond.wait(min(wait, _TICK))
                        continue
                    self.queue.popleft()
                    break
            if not data:
                if not self.down_done:
                    with contextlib.suppress(OSError):
                        self.client.shutdown(socket.SHUT_WR)  # pass the server's FIN on
                    with self.cond:
                        self.down_done = True
                self._finish_if_done()
                return
            if not self._send(self.client, data):
                return
            self.proxy._count(bytes_down=len(data))


class Proxy:
    """A TCP proxy on 127.0.0.1 in front of one upstream (an etcd member's client URL).

    Counters (thread-safe snapshots, for tests to synchronise on with a polling wait):
    `bytes_up` (forwarded client->server), `bytes_down` (delivered server->client),
    `dropped_down` (dropped in blackhole mode), `connections_total` (accepted so far),
    `connections_open` (not yet fully closed).
    """

    def __init__(self, upstream: str, port: int = 0) -> None:
        """`upstream`: "127.0.0.1:2379" or "http://127.0.0.1:2379". `port`: 0 for a free one."""
        self.upstream = upstream
        self._upstream = _parse_upstream(upstream)
        self.port = port
        self.errors: list[BaseException] = []
        self._mode: tuple[str, float] = (_PASS, 0.0)  # replaced whole, read without the lock
        self._lock = threading.Lock()
        self._conns: set[_Conn] = set()
        self._counters = dict.fromkeys(
            ("bytes_up", "bytes_down", "dropped_down", "connections_total", "answers_lost"), 0
        )
        self._lose: tuple[str, int] = ("", 0)  # (path substring, answers still to lose)
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None
        self._stopping = threading.Event()
        self._next_id = 0

    @property
    def endpoint(self) -> str:
        """The URL clients dial: "http://127.0.0.1:<port>"."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def mode(self) -> str:
        """The current mode: "pass", "delay", "blackhole" or "hang"."""
        return self._mode[0]

    # -- start / stop ----------------------------------------------------------------------
    def start(self) -> Proxy:
        """Listen on 127.0.0.1:<port> (a free port the first time; the same one after a
        stop(), so clients can keep the endpoint) and accept in a background thread."""
        if self._listener is not None:
            raise RuntimeError("proxy already started")
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(128)
        listener.settimeout(_TICK)
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._stopping.clear()
        self._acceptor = threading.Thread(
            target=self._accept_loop, name=f"faults.proxy:{self.port}:accept", daemon=True
        )
        self._acceptor.start()
        return self

    def stop(self) -> None:
        """Close the listener and abort every connection (RST); wait (bounded) for every
        thread of this proxy to end. Idempotent."""
        listener, self._listener = self._listener, None
        if listener is None:
            return
        self._stopping.set()
        with contextlib.suppress(OSError):
            listener.shutdown(socket.SHUT_RDWR)  # wakes accept() at once
        if self._acceptor is not None:
            self._acceptor.join(_JOIN_TIMEOUT)
            self._acceptor = None
        with contextlib.suppress(OSError):
            listener.close()
        self._abort_all(self._snapshot())

    def __enter__(self) -> Proxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- modes -----------------------------------------------------------------------------
    def pass_through(self, reset: bool = True) -> None:
        """Forward both ways. Coming from blackhole or hang with `reset` (the default), abort
        the connections that existed at the switch: their HTTP/2 stream lost bytes (blackhole)
        or may hold requests the test no longer wants answered (hang); see the module doc."""
        self._set_mode(_PASS, 0.0, reset)

    def delay(self, seconds: float, reset: bool = True) -> None:
        """Deliver every server->client chunk `seconds` after it arrived (order kept);
        requests pass at once. `reset` as for pass_through()."""
        if seconds < 0:
            raise ValueError("delay must be >= 0")
        self._set_mode(_DELAY, float(seconds), reset)

    def blackhole(self) -> None:
        """Forward requests (writes commit in etcd) and drop every server->client byte."""
        self._set_mode(_BLACKHOLE, 0.0, False)

    def hang(self) -> None:
        """Forward nothing either way (bytes stay in the kernel buffers); keep connections
        open."""
        self._set_mode(_HANG, 0.0, False)

    def reset(self) -> None:
        """Abort every current connection on both sides with an RST; returns once they are
        closed (bounded). New connections are accepted meanwhile, in the current mode."""
        self._abort_all(self._snapshot())

    def lose_answers(self, path: str, count: int = 1) -> None:
        """The next `count` requests whose gRPC method (`:path`, e.g.
        "/etcdserverpb.KV/Txn") contains `path` are forwarded and applied by etcd, but every
        frame of their answers is dropped; other calls and the connection go on. Only for
        cleartext HTTP/2 connections made through this proxy (faults.h2). `answers_lost`
        counts the requests chosen so far; `count=0` cancels."""
        with self._lock:
            self._lose = (path, count)

    def _take_loss(self, path: str) -> bool:
        with self._lock:
            want, left = self._lose
            if left <= 0 or want not in path:
                return False
            self._lose = (want, left - 1)
            self._counters["answers_lost"] += 1
            return True

    def _set_mode(self, mode: str, delay: float, reset: bool) -> None:
        with self._lock:
            was = self._mode[0]
            self._mode = (mode, delay)
            conns = list(self._conns)  # the connections that existed at the switch
        for c in conns:
            with c.cond:
                c.cond.notify_all()
        if reset and was in (_BLACKHOLE, _HANG):
            self._abort_all(conns)

    # -- counters --------------------------------------------------------------------------
    @property
    def bytes_up(self) -> int:
        return self._counter("bytes_up")

    @property
    def bytes_down(self) -> int:
        return self._counter("bytes_down")

    @property
    def dropped_down(self) -> int:
        return self._counter("dropped_down")

    @property
    def answers_lost(self) -> int:
        """Requests whose answers lose_answers() dropped (chosen) so far."""
        return self._counter("answers_lost")

    @property
    def connections_total(self) -> int:
        return self._counter("connections_total")

    @property
    def connections_open(self) -> int:
        with self._lock:
            return len(self._conns)

    def _counter(self, name: str) -> int:
        with self._lock:
            return self._counters[name]

    def _count(self, **deltas: int) -> None:
        with self._lock:
            for k, v in deltas.items():
                self._counters[k] += v

    # -- internals -------------------------------------------------------------------------
    def _accept_loop(self) -> None:
        listener = self._listener
        assert listener is not None
        try:
            while not self._stopping.is_set():
                try:
                    client, _ = listener.accept()
                except (TimeoutError, ConnectionAbortedError):
                    continue  # ConnectionAbortedError: the client gave up before the accept
                try:
                    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    client.settimeout(_TICK)
                except OSError:
                    client.close()  # already reset by the client
                    continue
                with self._lock:
                    if self._stopping.is_set():
                        _abortive(client)
                        client.close()
                        return
                    self._next_id += 1
                    conn = _Conn(self, client, self._next_id)
                    self._conns.add(conn)
                    self._counters["connections_total"] += 1
                conn.start()
        except BaseException as e:  # never printed from a thread: tests look in .errors
            if not (isinstance(e, OSError) and self._stopping.is_set()):
                self._record_error(e)

    def _snapshot(self) -> list[_Conn]:
        with self._lock:
            return list(self._conns)

    def _abort_all(self, conns: list[_Conn]) -> None:
        for c in conns:
            c.abort()
        deadline = time.monotonic() + _JOIN_TIMEOUT
        for c in conns:
            c.join(deadline)

    def _forget(self, conn: _Conn) -> None:
        with self._lock:
            self._conns.discard(conn)

    def _record_error(self, e: BaseException) -> None:
        with self._lock:
            self.errors.append(e)

    def __repr__(self) -> str:
        return f"<Proxy 127.0.0.1:{self.port} -> {self.upstream} mode={self.mode}>"
