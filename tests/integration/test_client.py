"""conch.client against a real etcd (never a mock): KV, txn, leases, watch, failover, restarts,
auth-token expiry and TLS client certificates with a CommonName while auth is enabled."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import pytest
from procs import stop_gracefully

from conch.client import (
    Client,
    ClientConfig,
    Compare,
    EtcdAuthError,
    EtcdError,
    EtcdUnavailable,
    Event,
    EventType,
    Op,
    SubTxn,
    Watch,
    WatchCompacted,
    _pb,
)
from conch.localetcd import LocalCluster, find_binary, free_port

T = TypeVar("T")

ROOT_PASSWORD = "Sup3r-s3cret-pw"  # a throwaway test cluster's
WRONG_PASSWORD = "wr0ng-Pa55word"


def _end(prefix: bytes) -> bytes:
    """range_end covering every key with this prefix."""
    return prefix[:-1] + bytes([prefix[-1] + 1])


def _eventually(fn: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    """fn() until it returns without raising EtcdError, or fail after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return fn()
        except EtcdError as e:
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: still failing after {timeout}s: {e}") from e
        time.sleep(interval)


def _collect(w: Watch, n: int, timeout: float) -> list[Event]:
    """At least n events from w within timeout (whatever arrived)."""
    deadline = time.monotonic() + timeout
    out: list[Event] = []
    while len(out) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        out.extend(w.get(min(left, 0.5)))
    return out


def _etcdctl(endpoint: str, *args: str, env_extra: dict[str, str] | None = None) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCDCTL_")}
    env.update(env_extra or {})
    r = subprocess.run(
        [find_binary("etcdctl"), "--endpoints", endpoint, *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
        check=False,
    )
    assert r.returncode == 0, f"etcdctl {args[:2]} failed: {r.stdout}{r.stderr}"
    return r.stdout


@pytest.fixture
def client(etcd: LocalCluster) -> Iterator[Client]:
    c = Client(ClientConfig(endpoints=tuple(etcd.endpoints), dial_timeout=5))
    c.connect()
    try:
        yield c
    finally:
        c.close()


# ---------------------------------------------------------------------------------------
# import cost
# ---------------------------------------------------------------------------------------


def test_import_does_not_load_grpc() -> None:
    code = (
        "import sys, conch.client; "
        "bad = [m for m in sys.modules if m.startswith(('grpc', 'google.protobuf', 'conch._pb'))]; "
        "assert not bad, bad; "
        # first use imports grpc with its own stderr logging off, without leaking the setting
        "import os; conch.client._pb(); assert 'grpc' in sys.modules; "
        "assert 'GRPC_VERBOSITY' not in os.environ"
    )
    env = {k: v for k, v in os.environ.items() if k != "GRPC_VERBOSITY"}
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, env=env
    )
    assert r.returncode == 0, r.stderr


# ---------------------------------------------------------------------------------------
# KV and txn
# ---------------------------------------------------------------------------------------


def test_put_get_delete(client: Client, prefix: str) -> None:
    k = f"{prefix}a".encode()
    assert client.get(k)[0] is None
    rev = client.put(k, b"v1")
    kv, hrev = client.get(k)
    assert kv is not None
    assert (kv.key, kv.value, kv.version, kv.lease) == (k, b"v1", 1, 0)
    assert kv.create_revision == kv.mod_revision == rev
    assert hrev >= rev
    rev2 = client.put(k, b"v2")
    kv2, _ = client.get(k)
    assert kv2 is not None
    assert (kv2.value, kv2.version, kv2.create_revision, kv2.mod_revision) == (b"v2", 2, rev, rev2)
    assert client.delete(k) == 1
    assert client.delete(k) == 0
    assert client.get(k)[0] is None


def test_get_range_sorted_and_delete_range(client: Client, prefix: str) -> None:
    p = prefix.encode()
    for name in (b"c", b"a", b"b/x", b"b"):
        client.put(p + name, name)
    client.put(_end(p) + b"outside", b"no")
    kvs, rev = client.get_range(p, _end(p))
    assert [kv.key for kv in kvs] == [p + b"a", p + b"b", p + b"b/x", p + b"c"]
    assert rev >= max(kv.mod_revision for kv in kvs)
    assert client.delete(p + b"b", _end(p + b"b")) == 2
    kvs, _ = client.get_range(p, _end(p))
    assert [kv.key for kv in kvs] == [p + b"a", p + b"c"]
    client.delete(_end(p) + b"outside")


def test_nested_txns_judge_their_own_guards_in_one_round_trip(client: Client, prefix: str) -> None:
    taken = f"{prefix}a".encode()
    client.put(taken, b"other")
    free = [f"{prefix}{c}".encode() for c in "bcd"]

    def claim(k: bytes) -> SubTxn:
        return SubTxn([Compare(k, "create", "==", 0)], [Op("put", k, b"me")], [Op("get", k)])

    r = client.txn([], [claim(k) for k in (taken, *free)])
    assert r.succeeded
    first, *rest = r.responses
    assert not first.succeeded and first.responses[0][0].value == b"other"
    assert all(x.succeeded and x.responses == [None] for x in rest)
    got_free = [client.get(k)[0] for k in free]
    assert [kv.value for kv in got_free] == [b"me"] * 3  # type: ignore[union-attr]
    # all written at the outer txn's one revision
    assert {kv.create_revision for kv in got_free} == {r.revision}  # type: ignore[union-attr]
    # a get for keys only carries no values
    got = client.txn(
        [], [Op("get", prefix.encode(), range_end=_end(prefix.encode()), keys_only=True)]
    )
    kvs = got.responses[0]
    assert [kv.key for kv in kvs] == [taken, *free] and {kv.value for kv in kvs} == {b""}
    kvs, _ = client.get_range(prefix.encode(), _end(prefix.encode()), keys_only=True)
    assert [kv.key for kv in kvs] == [taken, *free] and {kv.value for kv in kvs} == {b""}


def test_txn_create_if_absent(client: Client, prefix: str) -> None:
    k = f"{prefix}claim".encode()

    def claim(value: bytes) -> Any:
        return client.txn(
            [Compare(k, "create", "==", 0)],
            [Op("put", k, value)],
            [Op("get", k)],
        )

    first = claim(b"me")
    assert first.succeeded
    assert first.responses == [None]
    second = claim(b"you")
    assert not second.succeeded
    [got] = second.responses
    assert got is not None and len(got) == 1
    assert got[0].value == b"me"
    assert got[0].create_revision == first.revision
    # value / mod / version compares and a multi-op branch
    r = client.txn(
        [Compare(k, "value", "==", b"me"), Compare(k, "mod", "==", first.revision)],
        [Op("put", k, b"again"), Op("get", k), Op("delete", k + b"-none")],
    )
    assert r.succeeded and r.responses[0] is None and r.responses[2] is None
    assert r.responses[1] is not None and r.responses[1][0].value == b"again"
    assert not client.txn([Compare(k, "version", ">", 5)], [Op("delete", k)]).succeeded
    assert client.txn([Compare(k, "version", "!=", 5)], [Op("delete", k)]).succeeded
    with pytest.raises(ValueError):
        client.txn([Compare(k, "create", "=~", 0)], [])


# ---------------------------------------------------------------------------------------
# leases
# ---------------------------------------------------------------------------------------


def test_lease_grant_keepalive_revoke(client: Client, prefix: str) -> None:
    lease, ttl = client.lease_grant(20)
    assert lease > 0 and ttl == 20
    k = f"{prefix}leased".encode()
    client.put(k, b"x", lease=lease)
    kv, _ = client.get(k)
    assert kv is not None and kv.lease == lease
    for _ in range(3):
        assert client.lease_keepalive(lease, timeout=5) == 20
    assert 0 < client.lease_time_to_live(lease) <= 20
    # a compare on the lease
    assert client.txn([Compare(k, "lease", "==", lease)], []).succeeded
    client.lease_revoke(lease)
    assert client.get(k)[0] is None  # keys die with the lease
    assert client.lease_keepalive(lease, timeout=5) <= 0
    assert client.lease_time_to_live(lease) == -1
    client.lease_revoke(lease)  # already gone: not an error


def test_keepalive_stream_serves_several_leases(client: Client) -> None:
    a, _ = client.lease_grant(30)
    b, _ = client.lease_grant(40)
    try:
        for _ in range(3):
            assert client.lease_keepalive(a, timeout=5) == 30
            assert client.lease_keepalive(b, timeout=5) == 40
    finally:
        client.lease_revoke(a)
        client.lease_revoke(b)


# ---------------------------------------------------------------------------------------
# watch
# ---------------------------------------------------------------------------------------


def test_watch_events_in_order_from_start_revision(client: Client, prefix: str) -> None:
    p = prefix.encode()
    r1 = client.put(p + b"1", b"a")
    client.put(p + b"2", b"b")
    client.delete(p + b"1")
    with client.watch(p, _end(p), start_revision=r1) as w:
        client.put(p + b"3", b"c")
        evs = _collect(w, 4, timeout=10)
        assert [(e.type, e.kv.key) for e in evs] == [
            (EventType.PUT, p + b"1"),
            (EventType.PUT, p + b"2"),
            (EventType.DELETE, p + b"1"),
            (EventType.PUT, p + b"3"),
        ]
        revs = [e.kv.mod_revision for e in evs]
        assert revs == sorted(revs) and revs[0] == r1
        assert evs[1].kv.value == b"b"
        assert w.get(0) == []  # nothing more, and get(0) does not block


def test_watch_from_now_and_filters(client: Client, prefix: str) -> None:
    p = prefix.encode()
    client.put(p + b"old", b"before")
    with (
        client.watch(p, _end(p)) as all_w,
        client.watch(p, _end(p), no_delete=True) as puts,
        client.watch(p + b"k", no_put=True) as dels,
    ):
        client.put(p + b"k", b"1")
        client.delete(p + b"k")
        got = _collect(all_w, 2, timeout=10)
        assert [e.type for e in got] == [EventType.PUT, EventType.DELETE]  # no "old"
        assert [e.type for e in _collect(puts, 1, timeout=10)] == [EventType.PUT]
        [d] = _collect(dels, 1, timeout=10)
        assert d.type == EventType.DELETE and d.kv.key == p + b"k"
        assert d.kv.mod_revision == got[1].kv.mod_revision
        assert puts.get(0.2) == [] and dels.get(0) == []


def test_watch_compacted(client: Client, prefix: str) -> None:
    p = prefix.encode()
    r1 = client.put(p + b"x", b"1")
    r2 = client.put(p + b"x", b"2")
    client.compact(r2)
    w = client.watch(p, _end(p), start_revision=r1)
    try:
        with pytest.raises(WatchCompacted) as ei:
            _collect(w, 1, timeout=10)
        assert ei.value.compact_revision == r2
        with pytest.raises(WatchCompacted):  # it stays failed
            w.get(0)
    finally:
        w.cancel()


def test_watch_cancel_is_prompt(client: Client, prefix: str) -> None:
    w = client.watch(prefix.encode())
    results: list[list[Event]] = []
    t = threading.Thread(target=lambda: results.append(w.get(None)), daemon=True)
    t.start()
    t0 = time.monotonic()
    w.cancel()
    t.join(5)
    assert not t.is_alive() and results == [[]]
    assert time.monotonic() - t0 < 3
    assert not w._thread.is_alive()
    assert w._thread.daemon


# ---------------------------------------------------------------------------------------
# failover
# ---------------------------------------------------------------------------------------


def test_failover_past_a_dead_first_endpoint(etcd: LocalCluster, prefix: str) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    cfg = ClientConfig(endpoints=(dead, *etcd.endpoints), dial_timeout=3)
    with Client(cfg) as c:
        k = f"{prefix}k".encode()
        c.put(k, b"v")
        assert c.get(k)[0] is not None
        lease, _ = c.lease_grant(10)
        assert c.lease_keepalive(lease, timeout=5) == 10
        with c.watch(k) as w:
            c.delete(k)
            assert [e.type for e in _collect(w, 1, 10)] == [EventType.DELETE]
        assert c.status()["endpoint"] == etcd.endpoints[0]


def test_connect_to_dead_endpoints_raises_unavailable_in_time() -> None:
    dead = tuple(f"http://127.0.0.1:{free_port()}" for _ in range(2))
    c = Client(ClientConfig(endpoints=dead, dial_timeout=1.0))
    t0 = time.monotonic()
    with pytest.raises(EtcdUnavailable) as ei:
        c.connect()
    elapsed = time.monotonic() - t0
    assert 0.9 <= elapsed < 2.5, elapsed
    assert dead[0] in str(ei.value)
    c.close()
    with pytest.raises(EtcdError):
        c.get(b"x")


# ---------------------------------------------------------------------------------------
# etcd restarts
# ---------------------------------------------------------------------------------------


def _restart(cluster: LocalCluster) -> None:
    m = cluster.members[0]
    cluster.stop_member(m)
    cluster.start_member(m)
    cluster.wait_healthy()


def test_watch_survives_etcd_restart(own_etcd: LocalCluster) -> None:
    p = b"/restart/watch/"
    with Client(ClientConfig(endpoints=tuple(own_etcd.endpoints), dial_timeout=5)) as c:
        first = c.put(p + b"0", b"0")
        for i in range(1, 3):
            c.put(p + str(i).encode(), b"x")
        w = c.watch(p, _end(p), start_revision=first)
        before = _collect(w, 3, timeout=10)
        assert len(before) == 3
        m = own_etcd.members[0]
        own_etcd.stop_member(m)
        assert w.get(0.3) == []  # nothing while it is down, and no error either
        own_etcd.start_member(m)
        own_etcd.wait_healthy()
        for i in range(3, 6):
            _eventually(partial(c.put, p + str(i).encode(), b"y"), 15, "put after restart")
        after = _collect(w, 3, timeout=15)
        assert w.get(0.5) == []  # and nothing twice
        evs = before + after
        assert [e.kv.key for e in evs] == [p + str(i).encode() for i in range(6)]
        revs = [e.kv.mod_revision for e in evs]
        assert revs == sorted(set(revs))
        assert w.reconnects >= 1
        w.cancel()


def test_lease_keepalive_across_etcd_restart(own_etcd: LocalCluster) -> None:
    with Client(ClientConfig(endpoints=tuple(own_etcd.endpoints), dial_timeout=5)) as c:
        lease, _ = c.lease_grant(60)
        assert c.lease_keepalive(lease, timeout=5) == 60
        m = own_etcd.members[0]
        own_etcd.stop_member(m)
        t0 = time.monotonic()
        with pytest.raises(EtcdError):
            c.lease_keepalive(lease, timeout=1)
        assert time.monotonic() - t0 < 2.5
        own_etcd.start_member(m)
        own_etcd.wait_healthy()
        ttl = _eventually(lambda: c.lease_keepalive(lease, timeout=2), 15, "keepalive")
        assert ttl == 60
        assert c.lease_keepalive(lease, timeout=2) == 60


# ---------------------------------------------------------------------------------------
# auth: token expiry, wrong password
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def auth_etcd() -> Iterator[LocalCluster]:
    """etcd with auth enabled (user root) and simple tokens that expire after 1 s idle."""
    cluster = LocalCluster(nodes=1, extra_args=["--auth-token", "simple", "--auth-token-ttl", "1"])
    cluster.start()
    try:
        ep = cluster.endpoints[0]
        _etcdctl(ep, "user", "add", f"root:{ROOT_PASSWORD}")
        _etcdctl(ep, "auth", "enable")
        yield cluster
    finally:
        cluster.stop()


def _wait_token_expired(c: Client, token: str) -> None:
    """Poll (without refreshing it: every use of a simple token restarts its TTL) until etcd
    no longer accepts token."""
    import grpc  # type: ignore[import-untyped]

    pb, _ = _pb()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        time.sleep(2.5)  # > TTL (1 s) + etcd's 1 s TTL-keeper resolution since the last use
        try:
            c._stub(c._current(), "KV").Range(
                pb.RangeRequest(key=b"/probe"), timeout=5, metadata=[("token", token)]
            )
        except grpc.RpcError as e:
            if "invalid auth token" in (e.details() or ""):
                return
            raise
    raise AssertionError("the auth token never expired")


def test_auth_token_expiry_is_transparent(auth_etcd: LocalCluster, prefix: str) -> None:
    cfg = ClientConfig(
        endpoints=tuple(auth_etcd.endpoints), user="root", password=ROOT_PASSWORD, dial_timeout=5
    )
    with Client(cfg) as c:
        k = f"{prefix}k".encode()
        c.put(k, b"1")
        assert c.auth_count == 1
        tok = c._token
        assert tok
        _wait_token_expired(c, tok)
        # unary calls re-authenticate once and go on
        kv, _ = c.get(k)
        assert kv is not None and kv.value == b"1"
        assert c.auth_count == 2 and c._token != tok
        # a watch opened with an expired token
        _wait_token_expired(c, c._token or "")
        with c.watch(k) as w:
            assert c.auth_count == 3
            c.put(k, b"2")
            [ev] = _collect(w, 1, timeout=10)
            assert ev.kv.value == b"2"
        # a keepalive stream opened with an expired token
        lease, _ = c.lease_grant(30)
        _wait_token_expired(c, c._token or "")
        assert c.lease_keepalive(lease, timeout=5) == 30
        c.lease_revoke(lease)
        c.delete(k)


def test_wrong_password_is_an_auth_error_without_the_password(auth_etcd: LocalCluster) -> None:
    cfg = ClientConfig(
        endpoints=tuple(auth_etcd.endpoints), user="root", password=WRONG_PASSWORD, dial_timeout=5
    )
    c = Client(cfg)
    with pytest.raises(EtcdAuthError) as ei:
        c.connect()
    c.close()
    text = str(ei.value) + repr(ei.value) + repr(cfg)
    assert WRONG_PASSWORD not in text and ROOT_PASSWORD not in text
    assert "root" in str(ei.value)


def test_no_credentials_with_auth_enabled_is_an_auth_error(auth_etcd: LocalCluster) -> None:
    with Client(ClientConfig(endpoints=tuple(auth_etcd.endpoints), dial_timeout=5)) as c:
        with pytest.raises(EtcdAuthError):
            c.put(b"/x", b"y")
        with pytest.raises(EtcdAuthError):
            c.watch(b"/x")


# ---------------------------------------------------------------------------------------
# TLS with a client certificate that has a CommonName, auth enabled
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """etcd on https with --client-cert-auth, auth enabled; a client cert with CN=root."""
    import trustme

    d: Path = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("root.client.test", common_name="root")
    files = {
        "ca": d / "ca.pem",
        "server_cert": d / "server.pem",
        "server_key": d / "server-key.pem",
        "cert": d / "client.pem",
        "key": d / "client-key.pem",
    }
    ca.cert_pem.write_to_path(str(files["ca"]))
    server.private_key_pem.write_to_path(str(files["server_key"]))
    server.cert_chain_pems[0].write_to_path(str(files["server_cert"]))
    client.private_key_pem.write_to_path(str(files["key"]))
    client.cert_chain_pems[0].write_to_path(str(files["cert"]))
    cport, pport = free_port(), free_port()
    url = f"https://127.0.0.1:{cport}"
    peer = f"http://127.0.0.1:{pport}"
    argv = [
        find_binary("etcd"),
        "--name", "tls0",
        "--data-dir", str(d / "data"),
        "--listen-client-urls", url,
        "--advertise-client-urls", url,
        "--listen-peer-urls", peer,
        "--initial-advertise-peer-urls", peer,
        "--initial-cluster", f"tls0={peer}",
        "--cert-file", str(files["server_cert"]),
        "--key-file", str(files["server_key"]),
        "--trusted-ca-file", str(files["ca"]),
        "--client-cert-auth",
        "--logger", "zap",
        "--log-level", "warn",
    ]  # fmt: skip
    log = open(d / "etcd.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        cfg = ClientConfig(
            endpoints=(url,),
            cacert=str(files["ca"]),
            cert=str(files["cert"]),
            key=str(files["key"]),
            dial_timeout=2,
        )

        def up() -> None:
            assert proc.poll() is None, (d / "etcd.log").read_text()
            c = Client(cfg)
            try:
                c.connect()
            finally:
                c.close()

        _eventually(up, 30, "TLS etcd start")
        tls = [f"--cacert={files['ca']}", f"--cert={files['cert']}", f"--key={files['key']}"]
        _etcdctl(url, *tls, "user", "add", f"root:{ROOT_PASSWORD}")
        _etcdctl(url, *tls, "auth", "enable")
        yield {"url": url, **{k: str(v) for k, v in files.items()}}
    finally:
        stop_gracefully([proc], grace=10)
        log.close()


@pytest.mark.parametrize("with_password", [False, True], ids=["cert-cn", "cert+password"])
def test_tls_client_cert_with_common_name_and_auth(
    tls_etcd: dict[str, str], prefix: str, with_password: bool
) -> None:
    cfg = ClientConfig(
        endpoints=(tls_etcd["url"],),
        cacert=tls_etcd["ca"],
        cert=tls_etcd["cert"],
        key=tls_etcd["key"],
        user="root" if with_password else None,
        password=ROOT_PASSWORD if with_password else None,
        dial_timeout=5,
    )
    with Client(cfg) as c:
        k = f"{prefix}tls".encode()
        rev = c.put(k, b"secure")
        kv, _ = c.get(k)
        assert kv is not None and kv.value == b"secure" and kv.mod_revision == rev
        with c.watch(k) as w:
            c.delete(k)
            assert [e.type for e in _collect(w, 1, 10)] == [EventType.DELETE]
        lease, _ = c.lease_grant(10)
        assert c.lease_keepalive(lease, timeout=5) == 10
        c.lease_revoke(lease)


def test_tls_without_client_cert_is_refused(tls_etcd: dict[str, str]) -> None:
    cfg = ClientConfig(endpoints=(tls_etcd["url"],), cacert=tls_etcd["ca"], dial_timeout=1)
    c = Client(cfg)
    with pytest.raises(EtcdUnavailable):
        c.connect()
    c.close()


# ---------------------------------------------------------------------------------------
# quorum loss (hasleader) and clean shutdown
# ---------------------------------------------------------------------------------------


def test_quorum_loss_and_return(prefix: str) -> None:
    """2 of 3 members down: calls fail (no leader, require-leader), the open watch is dropped
    by the leaderless member and resumes when quorum returns, with every event exactly once;
    the held lease is kept alive again."""
    p = prefix.encode()
    with LocalCluster(nodes=3) as cluster:
        cfg = ClientConfig(endpoints=tuple(cluster.endpoints), dial_timeout=5)
        with Client(cfg) as c:
            r0 = c.put(p + b"0", b"a")
            w = c.watch(p, _end(p), start_revision=r0)
            assert [e.kv.key for e in _collect(w, 1, 10)] == [p + b"0"]
            lease, _ = c.lease_grant(60)
            assert c.lease_keepalive(lease, timeout=5) == 60
            survivor, *others = cluster.members
            for m in others:
                cluster.stop_member(m)
            with pytest.raises(EtcdUnavailable):
                # outside the watched range: a put that timed out has an unknown outcome (the
                # survivor may have it in its log and commit it once quorum returns)
                c.put(_end(p) + b"lost", b"x", timeout=2)
            with pytest.raises(EtcdError):
                c.lease_keepalive(lease, timeout=2)
            # the leaderless member cancels the watch stream (require-leader)
            deadline = time.monotonic() + 20
            while w.breaks == 0 and time.monotonic() < deadline:
                assert w.get(0.2) == []
            assert w.breaks >= 1
            for m in others:
                cluster.start_member(m)
            cluster.wait_healthy()
            for i in (1, 2):
                _eventually(partial(c.put, p + str(i).encode(), b"b"), 20, "put after quorum")
            evs = _collect(w, 2, timeout=20)
            assert w.get(0.5) == []
            # a put retried after an attempt timed out may have been applied twice: compare
            # with what etcd has, each revision exactly once and in order
            assert [e.kv.key for e in evs][-1] == p + b"2"
            revs = [e.kv.mod_revision for e in evs]
            assert revs == sorted(set(revs)) and revs[0] > r0
            kvs, _ = c.get_range(p, _end(p))
            assert {kv.key: kv.mod_revision for kv in kvs}[p + b"2"] == revs[-1]
            for kv in kvs[1:]:  # one event per version of each key written after r0
                assert sum(e.kv.key == kv.key for e in evs) == kv.version
            c.delete(_end(p) + b"lost")
            assert w.reconnects >= 1
            ttl = _eventually(lambda: c.lease_keepalive(lease, timeout=2), 20, "keepalive")
            assert ttl == 60
            w.cancel()
            assert survivor.running()


def test_close_stops_every_thread(etcd: LocalCluster, prefix: str) -> None:
    def ours() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name.startswith("conch-")]

    before = set(ours())
    c = Client(ClientConfig(endpoints=tuple(etcd.endpoints)))
    c.connect()
    c.watch(prefix.encode())
    c.watch(prefix.encode() + b"x")
    lease, _ = c.lease_grant(10)
    c.lease_keepalive(lease, timeout=5)
    new = [t for t in ours() if t not in before]
    assert len(new) == 3 and all(t.daemon for t in new)
    c.close()
    deadline = time.monotonic() + 5
    while any(t.is_alive() for t in new) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(t.is_alive() for t in new)
    with pytest.raises(EtcdError):
        c.lease_keepalive(lease, timeout=1)
    c.close()  # idempotent


def test_close_is_bounded_when_etcd_stops_answering(etcd_proxy: Any, prefix: str) -> None:
    """A watch, a keepalive stream and a call in flight on a connection that stopped answering:
    close() returns within its bound all the same (a process whose outcome is decided must
    end; the connections are left to its exit)."""
    from conch.client import CLOSE_TIMEOUT

    c = Client(ClientConfig(endpoints=(etcd_proxy.endpoint,)), call_timeout=30)
    c.connect()
    c.watch(prefix.encode())
    lease, _ = c.lease_grant(10)
    c.lease_keepalive(lease, timeout=5)
    etcd_proxy.hang()
    ended: list[BaseException] = []

    def call_in_flight() -> None:
        try:
            c.get(prefix.encode())
        except EtcdError as e:
            ended.append(e)

    stuck = threading.Thread(target=call_in_flight, daemon=True)
    stuck.start()
    t = time.monotonic()
    c.close()
    assert time.monotonic() - t < CLOSE_TIMEOUT + 1.0
    stuck.join(10)
    assert ended  # canceled by the close (or refused, if it came after): it did not wait 30 s
