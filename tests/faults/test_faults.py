"""Tests of the fault tools themselves: the proxy (against a local echo server and the session
etcd) and the LD_PRELOAD shim (against Python children, `date` and `sh`).

Synchronisation is by polling with deadlines (`wait_for`). A few checks are negative ("nothing
arrives while hung"): they watch for a short window (`stays`), which can only pass wrongly,
never fail wrongly, on a slow machine.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import procs
import pytest
from conftest import wait_for

from faults import fixtures
from faults.proxy import Proxy
from faults.shim import ClockControl, CompilerNotFound, build, shim_env

# the fixtures of faults.fixtures, under their own names (assigned, not imported: see ruff F811)
faultshim_lib = fixtures.faultshim_lib
clock_control = fixtures.clock_control
make_proxy = fixtures.make_proxy
etcd_proxy = fixtures.etcd_proxy


def stays(pred: Callable[[], bool], seconds: float = 0.3, what: str = "condition") -> None:
    """Assert pred() holds throughout a short observation window (for "nothing happens")."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert pred(), f"{what} stopped holding"
        time.sleep(0.02)


# -- the proxy, against an echo server -----------------------------------------------------------


class EchoServer:
    """Loopback TCP echo server recording what it received and how each connection ended."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.received = bytearray()
        self.received_at: list[float] = []  # monotonic time of each chunk
        self.ends: list[str] = []  # "eof" or the exception's class name, per connection
        self.conns: list[socket.socket] = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                self.conns.append(conn)
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self.threads.append(t)
            t.start()

    def _serve(self, conn: socket.socket) -> None:
        end = "eof"
        try:
            while data := conn.recv(65536):
                with self.lock:
                    self.received += data
                    self.received_at.append(time.monotonic())
                conn.sendall(data)
        except OSError as e:
            end = type(e).__name__
        with self.lock:
            self.ends.append(end)
        conn.close()

    def push(self, data: bytes) -> None:
        """Send unrequested bytes to every open connection (a server->client only message)."""
        with self.lock:
            for conn in self.conns:
                conn.sendall(data)

    def close(self) -> None:
        self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        with self.lock:
            for conn in self.conns:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
        for t in self.threads:
            t.join(5)


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    yield server
    server.close()


@pytest.fixture
def proxy(echo: EchoServer, make_proxy: Callable[[str], Proxy]) -> Proxy:
    return make_proxy(echo.address)


def connect(proxy: Proxy) -> socket.socket:
    return socket.create_connection(("127.0.0.1", proxy.port), timeout=10)


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError(f"EOF after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def nothing_to_read(sock: socket.socket) -> bool:
    """True if a recv() would block: no data, no EOF, no error pending."""
    timeout = sock.gettimeout()
    sock.setblocking(False)
    try:
        sock.recv(1, socket.MSG_PEEK)
    except BlockingIOError:
        return True
    finally:
        sock.settimeout(timeout)
    return False


def test_pass_through_forwards_both_ways_and_counts(echo: EchoServer, proxy: Proxy) -> None:
    assert proxy.endpoint == f"http://127.0.0.1:{proxy.port}"
    sizes = (1, 1000, 256 * 1024)
    with connect(proxy) as c:
        for size in sizes:
            data = os.urandom(size)
            c.sendall(data)
            assert recv_exactly(c, size) == data
        assert proxy.connections_open == 1
    wait_for(lambda: proxy.connections_open == 0, what="the connection to close")
    wait_for(lambda: echo.ends == ["eof"], what="the client's FIN to reach the server")
    assert proxy.bytes_up == proxy.bytes_down == sum(sizes)
    assert (proxy.connections_total, proxy.dropped_down) == (1, 0)


def test_many_concurrent_connections(proxy: Proxy) -> None:
    def one(_: int) -> bool:
        data = os.urandom(64 * 1024)
        with connect(proxy) as c:
            c.sendall(data)
            return recv_exactly(c, len(data)) == data

    with concurrent.futures.ThreadPoolExecutor(40) as pool:
        assert all(pool.map(one, range(40)))
    assert proxy.connections_total == 40
    wait_for(lambda: proxy.connections_open == 0, what="every connection to close")


def test_delay_delays_answers_not_requests_and_keeps_order(echo: EchoServer, proxy: Proxy) -> None:
    proxy.delay(0.5)
    with connect(proxy) as c:
        sent = time.monotonic()
        c.sendall(b"ping")
        assert recv_exactly(c, 4) == b"ping"
        answered = time.monotonic()
        assert answered - sent >= 0.5
        assert echo.received_at[0] - sent < 0.5, "the request itself was held back"

        messages = [f"<{i:03d}>".encode() for i in range(100)]
        for m in messages:
            c.sendall(m)
        assert recv_exactly(c, 500) == b"".join(messages)

        # a change of mode applies at once to answers already waiting
        proxy.delay(30)
        c.sendall(b"late")
        wait_for(lambda: echo.received.endswith(b"late"), what="the request to pass")
        proxy.pass_through()
        t = time.monotonic()
        assert recv_exactly(c, 4) == b"late"
        assert time.monotonic() - t < 10


def test_blackhole_forwards_requests_drops_answers_then_resets(
    echo: EchoServer, proxy: Proxy
) -> None:
    with connect(proxy) as c:
        c.sendall(b"warm")
        assert recv_exactly(c, 4) == b"warm"
        proxy.blackhole()
        c.sendall(b"lost")
        wait_for(lambda: proxy.dropped_down == 4, what="the answer to be dropped")
        assert echo.received == b"warmlost"
        assert nothing_to_read(c)
        proxy.pass_through()  # reset=True: this stream has lost bytes
        assert proxy.connections_open == 0
        with pytest.raises(ConnectionResetError):
            c.recv(10)
    with connect(proxy) as c:  # new connections pass through
        c.sendall(b"new")
        assert recv_exactly(c, 3) == b"new"


def test_hang_holds_both_ways_and_resumes_intact(echo: EchoServer, proxy: Proxy) -> None:
    with connect(proxy) as c:
        c.sendall(b"warm")
        assert recv_exactly(c, 4) == b"warm"
        proxy.hang()
        c.sendall(b"held")
        echo.push(b"push")
        stays(lambda: echo.received == b"warm" and nothing_to_read(c), what="hang")
        proxy.pass_through(reset=False)  # nothing was lost: the stream resumes intact
        assert recv_exactly(c, 8) == b"pushheld"
        assert echo.received == b"warmheld"
        proxy.hang()
        proxy.pass_through()  # the default resets
        with pytest.raises(ConnectionResetError):
            c.recv(10)


def test_reset_aborts_both_sides(echo: EchoServer, proxy: Proxy) -> None:
    clients = [connect(proxy) for _ in range(3)]
    for c in clients:
        c.sendall(b"hi")
        assert recv_exactly(c, 2) == b"hi"
    proxy.reset()
    assert proxy.connections_open == 0
    for c in clients:
        with pytest.raises(ConnectionResetError):
            c.recv(10)
        c.close()
    wait_for(lambda: echo.ends.count("ConnectionResetError") == 3, what="RSTs at the server")
    with connect(proxy) as c:
        c.sendall(b"again")
        assert recv_exactly(c, 5) == b"again"


def test_upstream_down_resets_the_client() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    with Proxy(f"http://127.0.0.1:{port}") as p:
        # the reset reaches the client in its connect() when the proxy's accept, failed
        # upstream dial and reset all happen before the client's connect() returns (a loaded
        # machine), else in its first recv()
        with pytest.raises(ConnectionResetError), connect(p) as c:
            c.recv(1)
        assert not p.errors


def test_stop_is_bounded_and_leaves_no_threads(echo: EchoServer) -> None:
    p = Proxy(echo.address).start()
    port = p.port
    delayed, hung = connect(p), connect(p)
    p.delay(30)
    delayed.sendall(b"x" * 100_000)  # answers wait in the delivery queue
    wait_for(lambda: len(echo.received) == 100_000, what="the request to pass")
    p.hang()
    hung.sendall(b"y")
    started = time.monotonic()
    p.stop()
    assert time.monotonic() - started < 3
    assert not [t.name for t in threading.enumerate() if t.name.startswith("faults.proxy:")]
    assert p.connections_open == 0 and not p.errors
    for c in (delayed, hung):
        with pytest.raises(ConnectionResetError):
            c.recv(1)
        c.close()
    with pytest.raises(ConnectionRefusedError):
        connect(p)
    p.stop()  # idempotent
    p.start()  # again, on the same port, in the mode it had
    try:
        assert p.port == port
        p.pass_through()
        with connect(p) as c:
            c.sendall(b"back")
            assert recv_exactly(c, 4) == b"back"
    finally:
        p.stop()


# -- the proxy, in front of etcd -----------------------------------------------------------------


def _etcdctl(bin_: str, endpoint: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [bin_, "--endpoints", endpoint, *args], capture_output=True, text=True, timeout=30
    )


def test_etcdctl_through_the_proxy(
    etcd_proxy: Proxy, etcdctl_bin: str, etcdctl: Callable[..., str], prefix: str
) -> None:
    r = _etcdctl(etcdctl_bin, etcd_proxy.endpoint, "put", f"{prefix}k", "v")
    assert r.returncode == 0, r.stderr
    assert etcdctl("get", f"{prefix}k", "--print-value-only").strip() == "v"
    assert etcd_proxy.bytes_up > 0 and etcd_proxy.bytes_down > 0


def test_late_answer_put_commits_while_etcdctl_times_out(
    etcd_proxy: Proxy, etcdctl_bin: str, etcdctl: Callable[..., str], prefix: str
) -> None:
    # Every answer comes 1 s after etcd sent it, the HTTP/2 handshake's too: etcdctl can send
    # its PUT after ~1 s (within its 1.5 s command timeout, with 0.5 s to spare), and the
    # answer cannot reach it before ~2 s, so the command times out although the PUT committed.
    etcd_proxy.delay(1.0)
    r = _etcdctl(
        etcdctl_bin,
        etcd_proxy.endpoint,
        "--dial-timeout=20s",
        "--command-timeout=1500ms",
        "put",
        f"{prefix}k",
        "v",
    )
    assert r.returncode != 0 and "deadline exceeded" in r.stderr, r.stderr
    wait_for(lambda: etcdctl("get", f"{prefix}k", "--print-value-only").strip() == "v")


def test_blackhole_write_commits_but_the_answer_is_lost(
    etcd_proxy: Proxy, etcdctl: Callable[..., str], prefix: str
) -> None:
    # A gRPC client with an established connection (a blackhole also eats the HTTP/2 handshake
    # of a new connection, so etcdctl, which connects per command, would never send its PUT).
    grpc = pytest.importorskip("grpc")
    from conch._pb import rpc_pb2, rpc_pb2_grpc

    channel = grpc.insecure_channel(
        f"127.0.0.1:{etcd_proxy.port}", options=[("grpc.enable_http_proxy", 0)]
    )
    try:
        kv = rpc_pb2_grpc.KVStub(channel)
        kv.Range(rpc_pb2.RangeRequest(key=b"x"), timeout=10)  # connected, answers flow
        etcd_proxy.blackhole()
        key = f"{prefix}k".encode()
        with pytest.raises(grpc.RpcError) as lost:
            kv.Put(rpc_pb2.PutRequest(key=key, value=b"v"), timeout=1)
        assert lost.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert etcdctl("get", key.decode(), "--print-value-only").strip() == "v"
        assert etcd_proxy.dropped_down > 0

        etcd_proxy.pass_through()  # resets: the channel reconnects

        def range_ok() -> bool:
            try:
                return kv.Range(rpc_pb2.RangeRequest(key=key), timeout=2).count == 1
            except grpc.RpcError:
                return False

        wait_for(range_ok, timeout=20, what="the channel to reconnect")
    finally:
        channel.close()


# -- the shim ------------------------------------------------------------------------------------


def child_env(**shim: object) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONCH_FAULTSHIM_")}
    return {**env, **shim_env(**shim)}  # type: ignore[arg-type]


CLOCK_CHILD = """
import datetime, json, sys, time
for _ in sys.stdin:
    print(json.dumps({
        "time": time.time(),
        "now": datetime.datetime.now().timestamp(),
        "mono": time.monotonic(),
        "boot": time.clock_gettime(time.CLOCK_BOOTTIME),
    }), flush=True)
"""


def test_build_is_cached_and_safe_in_parallel(tmp_path: Path, faultshim_lib: Path) -> None:
    assert build() == faultshim_lib and faultshim_lib.read_bytes()[:4] == b"\x7fELF"
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        libs = set(pool.map(lambda _: build(tmp_path), range(3)))
    assert len(libs) == 1 and [p.name for p in tmp_path.iterdir()] == [libs.pop().name]


def test_build_without_a_compiler(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    false = shutil.which("false")
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(CompilerNotFound, match="C compiler"):
        build(tmp_path)
    monkeypatch.setenv("CC", f"{tmp_path}/no-such-cc")
    with pytest.raises(CompilerNotFound, match="no-such-cc"):
        build(tmp_path)
    monkeypatch.setenv("CC", f"{false}")
    with pytest.raises(RuntimeError, match="failed"):
        build(tmp_path)


def test_clocks_shift_realtime_and_boottime_never_monotonic(
    faultshim_lib: Path, clock_control: ClockControl
) -> None:
    with subprocess.Popen(
        [sys.executable, "-c", CLOCK_CHILD],
        env=child_env(lib=faultshim_lib, control=clock_control),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as child:
        assert child.stdin is not None and child.stdout is not None
        ask, answer = child.stdin, child.stdout

        def check(realtime: float, boottime: float) -> None:
            clock_control.set_realtime_offset(realtime)
            clock_control.set_boottime_offset(boottime)
            before = (time.time(), time.monotonic(), time.clock_gettime(time.CLOCK_BOOTTIME))
            ask.write("\n")
            ask.flush()
            seen = json.loads(answer.readline())
            after = (time.time(), time.monotonic(), time.clock_gettime(time.CLOCK_BOOTTIME))
            assert before[1] <= seen["mono"] <= after[1]  # one system-wide clock, untouched
            assert before[2] - 1e-3 <= seen["boot"] - boottime <= after[2] + 1e-3
            for wall in (seen["time"], seen["now"]):  # 1 s of slack for NTP slewing the clock
                assert before[0] - 1 <= wall - realtime <= after[0] + 1

        check(0, 0)
        check(3600.5, 120)  # changed while the child runs
        check(-86400 * 400, 7200)
        ask.close()
        assert child.wait(10) == 0


TIMED_WAITS = """
import json, queue, select, threading, time
held = threading.Lock()
held.acquire()
cond = threading.Condition()
def event(): threading.Event().wait(0.2)
def sleep(): time.sleep(0.2)
def lock(): held.acquire(timeout=0.2)
def condition():
    with cond:
        cond.wait(0.2)
def queue_get():
    try:
        queue.Queue().get(timeout=0.2)
    except queue.Empty:
        pass
def select_(): select.select([], [], [], 0.2)
took = {}
def measure(wait):
    t = time.monotonic()
    wait()
    took[wait.__name__] = time.monotonic() - t
threads = [threading.Thread(target=measure, args=(w,)) for w in
           (event, sleep, lock, condition, queue_get, select_)]
for t in threads: t.start()
for t in threads: t.join()
print(json.dumps(took))
"""


@pytest.mark.parametrize("offset", [1e7, -1e7])
def test_timed_waits_do_not_hang_under_a_skewed_wall_clock(
    faultshim_lib: Path, clock_control: ClockControl, offset: float
) -> None:
    clock_control.set_realtime_offset(offset)
    r = subprocess.run(
        [sys.executable, "-c", TIMED_WAITS],
        env=child_env(lib=faultshim_lib, control=clock_control),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 0, r.stderr
    took = json.loads(r.stdout)
    assert len(took) == 6 and all(0.19 <= s < 5 for s in took.values()), took


def test_date_sees_the_skewed_clock(faultshim_lib: Path, clock_control: ClockControl) -> None:
    offset = 10 * 365 * 86400
    clock_control.set_realtime_offset(offset)
    before = time.time()
    out = subprocess.run(
        ["date", "+%s"],
        env=child_env(lib=faultshim_lib, control=clock_control),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert before - 2 <= int(out) - offset <= time.time() + 2


def test_no_or_bad_control_file_means_no_offset(faultshim_lib: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.write_bytes(b"\0" * 64)
    for control in (None, tmp_path / "missing", bad):
        env = child_env(lib=faultshim_lib)
        if control is not None:
            env["CONCH_FAULTSHIM_CONTROL"] = str(control)
        before = time.time()
        out = subprocess.run(
            [sys.executable, "-c", "import time; print(time.time())"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert before - 1 <= float(out) <= time.time() + 1


FAILING_EXECS = """
import json, os, subprocess
mark = os.environ["MARK"]  # never in this process's own argv
null = subprocess.DEVNULL
result = {}
def attempt(name, run):
    try:
        run()
        result[name] = "ran"
    except OSError as e:
        result[name] = e.errno
attempt("popen", lambda: subprocess.run(["/bin/echo", mark], stdout=null))
attempt("popen_path_search", lambda: subprocess.run(["echo", "x", mark], stdout=null))
attempt("popen_env", lambda: subprocess.run(["/bin/echo", mark], env={}, stdout=null))
attempt("popen_posix_spawn", lambda: subprocess.run(["/bin/echo", mark], close_fds=False))
attempt("posix_spawnp", lambda: os.posix_spawnp("echo", ["echo", mark], os.environ))
attempt("other", lambda: subprocess.run(["/bin/echo", "fine"], stdout=null, check=True))
attempt("execv", lambda: os.execv("/bin/echo", ["/bin/echo", mark]))
print(json.dumps(result))
"""


@pytest.mark.parametrize("fail_errno", [None, errno.ENOMEM])
def test_failing_exec(faultshim_lib: Path, fail_errno: int | None) -> None:
    mark = "conch-faultshim-mark"
    env = child_env(lib=faultshim_lib, fail_exec=mark, fail_errno=fail_errno)
    r = subprocess.run(
        [sys.executable, "-c", FAILING_EXECS],
        env={**env, "MARK": mark},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 0, r.stderr
    want = fail_errno or errno.EAGAIN
    assert json.loads(r.stdout) == {
        "popen": want,
        "popen_path_search": want,
        "popen_env": want,
        "popen_posix_spawn": want,
        "posix_spawnp": want,
        "other": "ran",
        "execv": want,
    }
    # children inherit the shim: a shell's exec of a matching command fails too
    r = subprocess.run(
        ["sh", "-c", '/bin/echo "$MARK"; echo "rc=$?"'],
        env={**env, "MARK": mark},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert mark not in r.stdout and "rc=0" not in r.stdout and "rc=" in r.stdout, r


STOPPING_SPAWNS = """
import os, sys
mark = os.environ["MARK"]  # never in this process's own argv
os.waitpid(os.posix_spawn("/bin/true", ["true"], os.environ), 0)  # no mark: goes on
pid = os.posix_spawn("/bin/true", ["true", mark], os.environ)  # stops here until SIGCONT
print(pid, flush=True)
"""


def test_stop_after_spawn_freezes_the_caller_once_the_child_exists(faultshim_lib: Path) -> None:
    mark = "conch-faultshim-stop-mark"
    env = child_env(lib=faultshim_lib, stop_after_spawn=mark)
    p = subprocess.Popen(
        [sys.executable, "-c", STOPPING_SPAWNS],
        env={**env, "MARK": mark},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: procs.state(p.pid) == "T", timeout=30, what="the caller to stop")
        (child,) = procs.children_running(p.pid, b"")  # it exists (a zombie by now)
        p.send_signal(signal.SIGCONT)
        out, _ = p.communicate(timeout=30)
        assert p.returncode == 0 and int(out) == child
    finally:
        with contextlib.suppress(ProcessLookupError):
            p.kill()
        p.wait(10)


def test_lose_answers_drops_only_the_chosen_calls_answer(etcd, make_proxy, prefix):
    """A Txn through the proxy is applied but its answer is lost; the call times out, and the
    same connection then serves further calls (a retry of the Txn included)."""
    from conch.client import Client, ClientConfig, Compare, EtcdUnavailable, Op

    proxy = make_proxy(etcd.endpoints[0])
    c = Client(ClientConfig(endpoints=(proxy.endpoint,)), call_timeout=1.0, attempt_timeout=1.0)
    direct = Client(ClientConfig(endpoints=tuple(etcd.endpoints)))
    key = f"{prefix}lost".encode()
    try:
        c.txn([], [Op("put", key + b"-warm", b"1")])  # the first call's headers are indexed
        proxy.lose_answers("KV/Txn", 1)
        with pytest.raises(EtcdUnavailable):
            c.txn([Compare(key, "create", "==", 0)], [Op("put", key, b"v")])
        assert proxy.answers_lost == 1
        kv, _ = direct.get(key)
        assert kv is not None and kv.value == b"v"  # applied all the same
        res = c.txn([Compare(key, "create", "==", 0)], [Op("put", key, b"v")], [Op("get", key)])
        assert not res.succeeded and res.responses[0][0].value == b"v"  # the retry's answer
        assert proxy.connections_total == 1  # one connection throughout
        assert c.get(key)[0] is not None
    finally:
        c.close()
        direct.close()
