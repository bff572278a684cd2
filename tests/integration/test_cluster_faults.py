"""etcd-side faults that the session etcd cannot show: a hung member at short lease TTLs and a
cluster rebuilt under running conchs (issue 7, items 5 and 7). Each test starts its own etcd."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from conftest import pid_gone, wait_for
from procs import read

from conch.localetcd import LocalCluster

SH = "/bin/sh"
CONCHD = [sys.executable, "-m", "conch.cron.command"]


@pytest.fixture
def cluster3() -> Iterator[LocalCluster]:
    c = LocalCluster(nodes=3).start()
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture
def single() -> Iterator[LocalCluster]:
    c = LocalCluster(nodes=1).start()
    try:
        yield c
    finally:
        c.stop()


def env_for(cluster_endpoints: str, prefix: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONCH_", "ETCDCTL_"))}
    return {**env, "CONCH_ENDPOINTS": cluster_endpoints, "CONCH_PREFIX": prefix,
            "PYTHONUNBUFFERED": "1"}  # fmt: skip


@pytest.mark.parametrize("ttl", ["1s", "3s"])
def test_a_hung_member_costs_no_lease_at_short_ttls(cluster3, conch_cmd, prefix, tmp_path, ttl):
    """SIGSTOP of the member conch talks to (a follower; the other two keep a quorum): the
    failure matrix promises no effect, at every TTL conch accepts. The keepalive must give up
    on the hung member and ask another one before the local deadline."""
    leader = cluster3.wait_leader()
    follower = next(m for m in cluster3.members if m is not leader)
    others = [m.client_url for m in cluster3.members if m is not follower]
    env = env_for(",".join([follower.client_url, *others]), prefix)
    ready, release, child_pid = tmp_path / "ready", tmp_path / "release", tmp_path / "pid"
    script = f"echo $$ > {child_pid}; touch {ready}; while [ ! -e {release} ]; do sleep 0.05; done"
    p = subprocess.Popen([*conch_cmd, "elect", "hung", "--ttl", ttl, "--", SH, "-c", script],
                         env=env, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        wait_for(ready.exists, timeout=20, what="child ready")
        child = int(read(child_pid))
        cluster3.pause_member(follower)
        try:
            # three times the TTL (and at least 6 s): the child must run on undisturbed
            end = time.monotonic() + max(6.0, 3 * float(ttl[:-1]))
            while time.monotonic() < end:
                assert p.poll() is None, f"conch exited {p.returncode}: {p.stderr.read()}"
                assert not pid_gone(child), "the child was killed"
                time.sleep(0.1)
        finally:
            cluster3.resume_member(follower)
        release.touch()
        assert p.wait(30) == 0, p.stderr.read()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def _rebuild(cluster: LocalCluster) -> None:
    """Kill the (single) member, wipe its data, start it again on the same ports: a fresh
    cluster whose revisions start again at 1 (what a restore without --bump-revision does)."""
    (m,) = cluster.members
    cluster.kill_member(m)
    shutil.rmtree(m.data_dir)
    cluster.start_member(m)
    cluster.wait_healthy(30)


def test_a_rebuilt_cluster_is_refused_not_queued_on(single, conch_cmd, prefix, tmp_path,
                                                    etcdctl_bin):  # fmt: skip
    """A holder at a high CONCH_REV and a waiter; etcd is wiped and restarted on the same
    port. The holder exits 70 (its lease is gone); the waiter must not queue on the new
    cluster and run with a small CONCH_REV (a downstream fence would then reject the
    legitimate holder): it exits 69 naming the cause, and never runs its child."""
    env = env_for(single.endpoints_csv, prefix)
    for i in range(40):  # push the revision up: the new cluster starts again at 1
        subprocess.run([etcdctl_bin, "--endpoints", single.endpoints_csv, "put", f"/x/{i}", "v"],
                       check=True, capture_output=True)  # fmt: skip
    ready, waiter_ran = tmp_path / "ready", tmp_path / "waiter_ran"
    holder = subprocess.Popen(
        [*conch_cmd, "elect", "fenced", "--ttl", "10s", "--kill-after", "1s", "--", SH, "-c",
         f"echo $CONCH_REV > {ready}; while true; do sleep 0.05; done"],
        env=env, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    waiter = None
    try:
        wait_for(lambda: read(ready).strip(), timeout=20, what="the holder's child")
        assert int(read(ready)) > 40
        waiter = subprocess.Popen(
            [*conch_cmd, "elect", "fenced", "--ttl", "10s", "--", SH, "-c",
             f"echo $CONCH_REV > {waiter_ran}"],
            env=env, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip

        def waiting() -> bool:
            assert waiter.poll() is None, f"the waiter exited {waiter.returncode}: " + (
                waiter.stderr.read() if waiter.stderr else ""
            )
            r = subprocess.run([*conch_cmd, "elect", "fenced", "--who", "--json"], env=env,
                               capture_output=True, text=True)  # fmt: skip
            return '"waiting": 1' in r.stdout

        wait_for(waiting, timeout=20, what="the waiter queued")
        _rebuild(single)
        assert holder.wait(60) == 70, holder.stderr.read()
        assert waiter.wait(60) == 69
        err = waiter.stderr.read()
        assert "cluster" in err and "Traceback" not in err, err
        assert not waiter_ran.exists(), "the waiter ran its child on the rebuilt cluster"
    finally:
        for p in (holder, waiter):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()


def test_conchd_stops_with_69_on_a_rebuilt_cluster(single, conch_cmd, prefix, tmp_path):
    env = env_for(single.endpoints_csv, prefix)
    ticks = tmp_path / "ticks"
    add = [*conch_cmd, "cron", "add", "j", "--schedule", "@every 1s", "--"]
    r = subprocess.run([*add, SH, "-c", f"echo $CONCH_REV >> {ticks}"], env=env,
                       capture_output=True)  # fmt: skip
    assert r.returncode == 0, r.stderr
    log = tmp_path / "conchd.log"
    with open(log, "wb") as f:
        d = subprocess.Popen([*CONCHD, "--id", "d1"], env=env, stdout=f, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: len(read(ticks).split()) >= 2, timeout=20, what="two ticks ran")
        _rebuild(single)
        assert d.wait(60) == 69, read(log)
    finally:
        if d.poll() is None:
            d.send_signal(signal.SIGKILL)
            d.wait()
    text = read(log)
    assert "cluster" in text and "Traceback" not in text, text


def test_concurrent_answers_never_look_like_a_rebuild(etcd, prefix):
    """Answers to concurrent requests arrive in any order: only a revision below what was
    seen before a request was *sent* means the cluster went back (a false alarm would stop
    conchd, whose threads share one client)."""
    import threading

    from conch.client import Client, ClientConfig

    c = Client(ClientConfig(endpoints=tuple(etcd.endpoints)))
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for j in range(60):
                c.put(f"{prefix}k{i}".encode(), str(j).encode())
                c.get(f"{prefix}k{(i + 1) % 8}".encode())
        except BaseException as e:
            errors.append(e)

    try:
        threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors, errors[:3]
        assert c.identity_problem is None
    finally:
        c.close()
