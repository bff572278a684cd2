"""conch sema against a real etcd: the testing model's sema list. Every wait polls with a
deadline."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
from conftest import wait_for
from procs import read

from conch import keys
from conch.client import Client, ClientConfig

SH = "/bin/sh"


def hold_until(release: Path, log: Path | None = None) -> list[str]:
    """A child that notes its CONCH_REV in `log` and runs until `release` exists."""
    note = f'echo "$CONCH_REV $CONCH_MAX" >> {log}; ' if log else ""
    return [SH, "-c", f"{note}while [ ! -e {release} ]; do sleep 0.02; done"]


@pytest.fixture
def client(etcd):
    c = Client(ClientConfig(endpoints=tuple(etcd.endpoints)))
    c.connect()
    yield c
    c.close()


def member_leases(client: Client, prefix: str, name: str, slots: int) -> list[str]:
    """Lease ids (hex) of every contender, in rank order."""
    d = keys.sema_dir(prefix, name, slots)
    kvs, _ = client.get_range(d, keys.prefix_range_end(d))
    return [kv.key[len(d) :].decode() for kv in sorted(kvs, key=lambda kv: kv.create_revision)]


def test_n_plus_one_contenders_exactly_n_run(conch, tmp_path):
    release = tmp_path / "release"
    log = tmp_path / "log"
    procs = [conch.start("sema", "pool", "--max", "2", "--", *hold_until(release, log))
             for _ in range(3)]  # fmt: skip
    doc = wait_for(
        lambda: (
            (d := conch.who("sema", "pool", "--max", "2"))["waiting"] == 1
            and len(d["holders"]) == 2
            and d
        ),
        what="2 holders, 1 waiting",
    )
    wait_for(lambda: len(read(log).splitlines()) == 2, what="2 children started")
    # and it stays so: sample for a while
    end = time.monotonic() + 1.0
    while time.monotonic() < end:
        assert len(read(log).splitlines()) == 2
        d = conch.who("sema", "pool", "--max", "2")
        assert len(d["holders"]) == 2 and d["waiting"] == 1
    assert {line.split()[1] for line in read(log).splitlines()} == {"2"}  # CONCH_MAX
    assert sorted(int(x.split()[0]) for x in read(log).splitlines()) == [
        h["rev"] for h in doc["holders"]
    ]
    text = conch.run("sema", "pool", "--max", "2", "--who")
    assert text.returncode == 0 and "waiting=1" in text.stdout
    release.touch()
    for p in procs:
        assert p.wait(20) == 0
    assert conch.run("sema", "pool", "--max", "2", "--who").returncode == 1


def test_release_promotes_exactly_the_next_waiter_fast(conch, tmp_path):
    rel = [tmp_path / f"rel{i}" for i in range(4)]
    starts = tmp_path / "starts"
    procs = []
    for i in range(4):  # enqueue one by one so the revision order is known
        procs.append(conch.start(
            "sema", "next", "--max", "2", "--", SH, "-c",
            f'echo "{i} $(date +%s.%N)" >> {starts}; '
            f"while [ ! -e {rel[i]} ]; do sleep 0.02; done; date +%s.%N > {rel[i]}.done",
        ))  # fmt: skip
        wait_for(
            lambda n=i + 1: (
                (d := conch.who("sema", "next", "--max", "2"))["waiting"] + len(d["holders"]) == n
            ),
            what=f"{i + 1} contenders",
        )
    wait_for(lambda: len(read(starts).splitlines()) == 2, what="first two started")
    assert sorted(line.split()[0] for line in read(starts).splitlines()) == ["0", "1"]
    rel[1].touch()  # the second holder releases: the first waiter (2), not 3, is promoted
    wait_for(lambda: len(read(starts).splitlines()) == 3, what="one promotion")
    lines = dict(line.split() for line in read(starts).splitlines())
    assert set(lines) == {"0", "1", "2"}
    gap = float(lines["2"]) - float(read(Path(f"{rel[1]}.done")))
    assert gap < 1.0, f"promotion took {gap:.3f}s"
    time.sleep(0.3)  # not a wait-for: checking that nothing *else* happens
    assert len(read(starts).splitlines()) == 3
    for r in rel:
        r.touch()
    for p in procs:
        assert p.wait(20) == 0


def test_mismatched_max_is_a_separate_semaphore(conch, tmp_path, client, prefix):
    release = tmp_path / "release"
    a = conch.start("sema", "mix", "--max", "1", "--", *hold_until(release))
    wait_for(lambda: conch.who("sema", "mix", "--max", "1")["holders"], what="a holds")
    # --max 2 does not see the --max 1 holder, and is not blocked by it
    b = conch.start("sema", "mix", "--max", "2", "--", *hold_until(release))
    wait_for(lambda: conch.who("sema", "mix", "--max", "2")["holders"], what="b holds")
    assert len(conch.who("sema", "mix", "--max", "1")["holders"]) == 1
    assert len(member_leases(client, prefix, "mix", 1)) == 1
    assert len(member_leases(client, prefix, "mix", 2)) == 1
    assert keys.sema_dir(prefix, "mix", 1) != keys.sema_dir(prefix, "mix", 2)
    release.touch()
    assert a.wait(20) == 0 and b.wait(20) == 0


def test_nonblock_and_timeout_exit_75_leaving_no_key(conch, tmp_path, client, prefix):
    release = tmp_path / "release"
    holders = [conch.start("sema", "full", "--max", "2", "--", *hold_until(release))
               for _ in range(2)]  # fmt: skip
    wait_for(lambda: len(conch.who("sema", "full", "--max", "2")["holders"]) == 2, what="full")
    t0 = time.monotonic()
    r = conch.run("sema", "full", "--max", "2", "--nonblock", "--", "true")
    assert r.returncode == 75, r.stderr
    assert time.monotonic() - t0 < 5
    assert len(member_leases(client, prefix, "full", 2)) == 2
    t0 = time.monotonic()
    r = conch.run("sema", "full", "--max", "2", "--timeout", "800ms", "--", "true")
    assert r.returncode == 75, r.stderr
    assert time.monotonic() - t0 >= 0.8
    assert len(member_leases(client, prefix, "full", 2)) == 2  # the queue key was removed
    release.touch()
    for p in holders:
        assert p.wait(20) == 0


def test_twenty_contenders_through_three_slots_in_revision_order(conch, tmp_path, client, prefix):
    release = tmp_path / "go"
    d = keys.sema_dir(prefix, "fifo", 3)
    _, rev0 = client.get(b"/")
    procs = [
        conch.start("sema", "fifo", "--max", "3", "--", SH, "-c",
                    f"while [ ! -e {release} ]; do sleep 0.02; done; sleep 0.1")
        for _ in range(20)
    ]  # fmt: skip
    wait_for(
        lambda: conch.who("sema", "fifo", "--max", "3")["waiting"] == 17, timeout=60,
        what="all 20 queued",
    )  # fmt: skip
    release.touch()
    for p in procs:
        assert p.wait(60) == 0
    # The promotion put (version 2 of a contender key) marks each promotion, in etcd's own
    # order: FIFO means promotions happen in create-revision order.
    w = client.watch(d, keys.prefix_range_end(d), start_revision=rev0 + 1, no_delete=True)
    promoted: list[int] = []
    deadline = time.monotonic() + 10
    while len(promoted) < 20 and time.monotonic() < deadline:
        promoted += [e.kv.create_revision for e in w.get(0.5) if e.kv.version == 2]
    w.cancel()
    assert len(promoted) == 20
    assert promoted == sorted(promoted)


def test_revoked_holder_is_killed_and_next_waiter_promoted(conch, tmp_path, client, prefix,
                                                           etcdctl):  # fmt: skip
    release = tmp_path / "release"
    log = tmp_path / "log"
    a = conch.start("sema", "rv", "--max", "1", "--kill-after", "1s", "--",
                    *hold_until(release, log))  # fmt: skip
    wait_for(lambda: len(read(log).splitlines()) == 1, what="a runs")
    b = conch.start("sema", "rv", "--max", "1", "--", *hold_until(release, log))
    wait_for(lambda: conch.who("sema", "rv", "--max", "1")["waiting"] == 1, what="b waits")
    (lease_a, _lease_b) = member_leases(client, prefix, "rv", 1)
    etcdctl("lease", "revoke", lease_a)
    assert a.wait(20) == 70
    wait_for(lambda: len(read(log).splitlines()) == 2, what="b promoted")
    revs = [int(x.split()[0]) for x in read(log).splitlines()]
    assert revs[1] > revs[0]
    release.touch()
    assert b.wait(20) == 0


def test_waiter_whose_lease_expires_does_not_acquire(conch, tmp_path, client, prefix, etcdctl):
    """etcd's TestMutexLockSessionExpired and TestMutexWaitsOnCurrentHolder, for conch: a
    waiter that loses its lease never runs on that stale key, and a waiter behind it still
    waits for the current holder."""
    release = tmp_path / "release"
    log = tmp_path / "log"
    a = conch.start("sema", "exp", "--max", "1", "--", *hold_until(release, log))
    wait_for(lambda: len(read(log).splitlines()) == 1, what="a runs")
    b = conch.start("sema", "exp", "--max", "1", "--", *hold_until(release, log))
    wait_for(lambda: len(member_leases(client, prefix, "exp", 1)) == 2, what="b queued")
    c = conch.start("sema", "exp", "--max", "1", "--", *hold_until(release, log))
    wait_for(lambda: len(member_leases(client, prefix, "exp", 1)) == 3, what="c queued")
    lease_a, lease_b, lease_c = member_leases(client, prefix, "exp", 1)
    etcdctl("lease", "revoke", lease_b)  # the waiter ahead of c expires while a holds
    # b queues again behind c with a fresh lease; nobody but a runs
    wait_for(
        lambda: (
            (m := member_leases(client, prefix, "exp", 1))[:2] == [lease_a, lease_c] and len(m) == 3
        ),
        what="b re-queued at the back",
    )
    time.sleep(0.3)  # not a wait-for: checking that nothing else starts
    assert len(read(log).splitlines()) == 1
    assert conch.who("sema", "exp", "--max", "1")["holders"][0]["lease"] == lease_a.lstrip("0")
    release.touch()
    for p in (a, b, c):
        assert p.wait(20) == 0
    revs = [int(x.split()[0]) for x in read(log).splitlines()]
    assert revs == sorted(revs) and len(revs) == 3  # a, then c, then b (with its new key)


def test_sema_signal_while_waiting_withdraws(conch, tmp_path, client, prefix):
    release = tmp_path / "release"
    a = conch.start("sema", "sig", "--max", "1", "--", *hold_until(release))
    wait_for(lambda: conch.who("sema", "sig", "--max", "1")["holders"], what="a holds")
    b = conch.start("sema", "sig", "--max", "1", "--", "true")
    wait_for(lambda: len(member_leases(client, prefix, "sig", 1)) == 2, what="b queued")
    b.send_signal(signal.SIGINT)
    assert b.wait(20) == 130
    assert len(member_leases(client, prefix, "sig", 1)) == 1
    release.touch()
    assert a.wait(20) == 0
