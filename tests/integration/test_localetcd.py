"""conch.localetcd against the real etcd binary: 3-member clusters, faults, cleanup, port races."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conch.localetcd import (
    EtcdNotFound,
    LocalCluster,
    PortInUse,
    find_binary,
    free_port,
    port_available,
)


def _etcdctl_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("ETCDCTL_", "CONCH_"))}


def put(cluster: LocalCluster, key: str, value: str, timeout: str = "1s") -> bool:
    """One `etcdctl put` against all endpoints; True if it succeeded."""
    r = subprocess.run(
        [
            find_binary("etcdctl"),
            "--endpoints",
            cluster.endpoints_csv,
            "--dial-timeout=1s",
            f"--command-timeout={timeout}",
            "put",
            key,
            value,
        ],
        capture_output=True,
        text=True,
        env=_etcdctl_env(),
        timeout=30,
    )
    return r.returncode == 0


def put_eventually(cluster: LocalCluster, key: str, value: str, within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    while not put(cluster, key, value, timeout="3s"):
        assert time.monotonic() < deadline, f"put {key} never succeeded"
        time.sleep(0.1)


def pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def proc_state(pid: int) -> str | None:
    """The state letter from /proc/PID/stat (T = stopped), None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def wait_until(cond: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture
def cluster3() -> Iterator[LocalCluster]:
    c = LocalCluster(nodes=3)
    c.start()
    try:
        yield c
    finally:
        c.stop()


def test_three_members_start_healthy_with_one_leader(cluster3: LocalCluster) -> None:
    assert len(cluster3.endpoints) == 3
    assert len(set(cluster3.endpoints)) == 3
    assert cluster3.endpoints_csv == ",".join(cluster3.endpoints)
    assert cluster3.has_quorum()
    leader = cluster3.wait_leader()
    assert leader in cluster3.members
    # every member agrees on who leads
    leader_ids = set()
    for m in cluster3.members:
        st = cluster3.status(m)
        assert st is not None
        leader_ids.add(st["leader"])
    assert leader_ids == {leader.member_id}
    assert cluster3.version()  # e.g. "3.5.1"
    assert put(cluster3, "/k", "v")


def test_kill_leader_then_new_leader_then_restart(cluster3: LocalCluster) -> None:
    old = cluster3.wait_leader()
    old_pid = old.pid
    assert old_pid is not None
    cluster3.kill_member(old)
    assert not old.running()
    assert pid_gone(old_pid)
    new = cluster3.wait_leader(exclude=[old])
    assert new is not old
    put_eventually(cluster3, "/after-kill", "1")

    cluster3.restart_member(old)
    assert old.running() and old.pid != old_pid
    cluster3.wait_healthy()
    assert cluster3.leader() is not None
    st = cluster3.status(old)
    assert st is not None and st["leader"] == cluster3.wait_leader().member_id
    assert len(cluster3.pids) == 3
    assert sorted(p.name for p in cluster3.members) == ["m0", "m1", "m2"]
    put_eventually(cluster3, "/after-restart", "1")


def test_pause_and_resume(cluster3: LocalCluster) -> None:
    leader = cluster3.wait_leader()
    follower = next(m for m in cluster3.members if m is not leader)
    cluster3.pause_member(follower)
    assert follower.paused and follower.running() and not follower.serving()
    assert follower.pid is not None and proc_state(follower.pid) == "T"
    assert cluster3.status(follower) is None
    put_eventually(cluster3, "/two-of-three", "1")  # 2 of 3 still make a quorum
    cluster3.resume_member(follower)
    assert not follower.paused
    cluster3.wait_healthy(members=[follower])

    # pausing the leader makes the other two elect a new one; resumed, the old one follows
    cluster3.pause_member(leader)
    new = cluster3.wait_leader(exclude=[leader])
    cluster3.resume_member(leader)
    cluster3.wait_healthy()
    wait_until(
        lambda: (st := cluster3.status(leader)) is not None and st["leader"] == new.member_id,
        15,
        "the resumed old leader to follow the new one",
    )
    cluster3.pause_member(leader)
    with pytest.raises(RuntimeError, match="paused"):  # fails fast, not at the deadline
        cluster3.wait_healthy(timeout=10, members=[leader])
    cluster3.resume_member(leader)
    cluster3.wait_healthy()


@pytest.mark.parametrize("mode", ["stop", "kill", "pause"])
def test_take_and_restore_quorum(cluster3: LocalCluster, mode: str) -> None:
    assert put(cluster3, "/before", "1", timeout="3s")
    keep = cluster3.members[1]
    taken = cluster3.take_quorum(keep=keep, mode=mode)  # type: ignore[arg-type]
    assert len(taken) == 2 and keep not in taken
    assert [m for m in cluster3.members if m.serving()] == [keep]
    if mode == "pause":
        assert all(m.running() and m.paused for m in taken)
    else:
        assert all(not m.running() for m in taken)
    cluster3.wait_quorum_lost(timeout=15)
    assert not put(cluster3, "/during", "1", timeout="1s")
    with pytest.raises(TimeoutError):
        cluster3.wait_quorum(timeout=0.5)

    cluster3.restore_quorum()
    assert all(m.serving() for m in cluster3.members)
    cluster3.wait_quorum(timeout=5)
    assert cluster3.wait_leader() is not None
    put_eventually(cluster3, "/after", "1")


def test_stop_leaves_no_process_and_removes_dir() -> None:
    c = LocalCluster(nodes=3).start()
    base = c.base_dir
    pids = list(c.pids)
    assert len(pids) == 3 and base.is_dir()
    assert all((base / f"m{i}.log").exists() for i in range(3))
    c.pause_member(c.members[0])
    c.take_quorum(keep=c.members[2], mode="pause")  # pauses m1
    c.stop()
    assert all(pid_gone(p) for p in pids), [proc_state(p) for p in pids]
    assert not base.exists()
    assert c.pids == []
    c.stop()  # idempotent


def test_caller_base_dir_is_kept_and_stop_is_graceful(tmp_path: Path) -> None:
    base = tmp_path / "etcd"
    c = LocalCluster(nodes=1, base_dir=base).start()
    pid = c.members[0].pid
    assert pid is not None
    c.stop()
    assert pid_gone(pid)
    assert (base / "m0.etcd").is_dir() and (base / "m0.log").exists()


def test_restart_whole_member_keeps_data(cluster3: LocalCluster) -> None:
    put_eventually(cluster3, "/kept", "yes")
    for m in cluster3.members:
        cluster3.restart_member(m)  # one at a time: quorum holds throughout
    cluster3.wait_healthy()
    r = subprocess.run(
        [find_binary("etcdctl"), "--endpoints", cluster3.endpoints_csv, "get", "/kept"],
        capture_output=True,
        text=True,
        env=_etcdctl_env(),
        timeout=30,
    )
    assert r.stdout.split() == ["/kept", "yes"]


def test_auto_port_taken_before_start_is_retried() -> None:
    c = LocalCluster(nodes=1)
    m = c.members[0]
    squatted = {m.client_port, m.peer_port}
    squatters = []
    try:
        for p in squatted:
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", p))
            s.listen()
            squatters.append(s)
        c.start()
        assert {m.client_port, m.peer_port}.isdisjoint(squatted)
        assert put(c, "/k", "v", timeout="3s")
    finally:
        c.stop()
        for s in squatters:
            s.close()
    assert not c.base_dir.exists()


def test_a_stranger_etcd_on_our_port_is_not_mistaken_for_our_member() -> None:
    """Port race with another cluster: our member cannot bind, the stranger answers /health on
    that port; start() must notice it is not ours, and retry on new ports."""
    with LocalCluster(nodes=1) as stranger:
        c = LocalCluster(nodes=1)
        c.members[0].client_port = stranger.members[0].client_port  # as if the race was lost
        try:
            c.start()
            assert c.members[0].client_port != stranger.members[0].client_port
            assert put(c, "/mine", "1", timeout="3s")
            assert c.members[0].member_id != stranger.members[0].member_id
        finally:
            c.stop()


def test_explicit_port_in_use_raises_and_cleans_up() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert not port_available(port)
        c = LocalCluster(nodes=1, client_ports=[port])
        with pytest.raises(PortInUse) as exc:
            c.start()
        assert exc.value.port == port
        assert not c.base_dir.exists()
        assert c.pids == []


def test_explicit_client_ports() -> None:
    base = free_port()
    ports = [base]
    c = LocalCluster(nodes=1, client_ports=ports)
    try:
        c.start()
        assert c.endpoints == [f"http://127.0.0.1:{base}"]
        assert c.members[0].peer_port != base
    finally:
        c.stop()


def test_find_binary_missing() -> None:
    with pytest.raises(EtcdNotFound, match=r"conch\[etcd\]"):
        find_binary("etcd-no-such-binary")


def test_stop_member_sigterm_reaps(cluster3: LocalCluster) -> None:
    m = cluster3.members[0]
    pid = m.pid
    assert pid is not None
    cluster3.stop_member(m, signal.SIGTERM)
    assert m.proc is None and pid_gone(pid)
    cluster3.wait_quorum(timeout=15)  # 2 of 3 left
    cluster3.restart_member(m)
    cluster3.wait_healthy()
