"""Holding a slot while the child runs: the races between the child's end, the lease, signals
and the watchdog (issue 7, items 2 and 9), as real processes against the session etcd."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from conftest import pid_gone, wait_for
from faults.shim import shim_env
from procs import children_running, read, state, watchdog_of

SH = "/bin/sh"


def _signal_the_watchdog_of_a_holder(conch, tmp_path, name, kill_after, body, sig):  # type: ignore[no-untyped-def]
    """Start `conch elect NAME` whose child runs `body` (it must touch $READY when ready), send
    `sig` to its watchdog; conch must exit 70 with the child dead. Returns the conch process."""
    ready, child_pid = tmp_path / "ready", tmp_path / "child_pid"
    p = conch.start("elect", name, "--kill-after", kill_after, "--", SH, "-c",
                    f"echo $$ > {child_pid}; " + body.replace("$READY", str(ready)))  # fmt: skip
    wait_for(ready.exists, what="child ready")
    wd = wait_for(lambda: watchdog_of(p.pid), what="the watchdog process")
    os.kill(wd, sig)
    assert p.wait(20) == 70
    assert pid_gone(int(read(child_pid)))
    return p


def test_a_watchdog_that_dies_while_the_child_runs_ends_the_hold_as_a_loss(conch, tmp_path):
    """Without its watchdog a child would outlive a conch that dies or pauses: conch notices
    the watchdog's death, kills the child's group and exits 70 (the lease-loss path)."""
    p = _signal_the_watchdog_of_a_holder(conch, tmp_path, "wd-dies", "1s",
                                         "touch $READY; while true; do sleep 0.05; done",
                                         signal.SIGKILL)  # fmt: skip
    assert "watchdog" in p.stderr.read()
    assert conch.run("elect", "wd-dies", "--who").returncode == 1  # the slot was given up


def test_a_child_killed_by_its_watchdog_is_a_loss_not_its_own_exit(conch, tmp_path):
    """The watchdog killed the group (here on SIGTERM; in the invariant suite, at a deadline a
    late renewal had not yet reached it) while conch still trusted its lease: conch sees its
    child die by SIGTERM, and must report the loss (70), not the child's 128+15."""
    # a grandchild that outlives SIGTERM keeps the watchdog busy (alive) for --kill-after
    # after the child itself is dead: conch sees the child's death first
    stubborn = f"{SH} -c \"trap '' TERM; touch $READY; while true; do sleep 0.05; done\" &"
    _signal_the_watchdog_of_a_holder(conch, tmp_path, "wd-fires", "2s",
                                     f"{stubborn} while true; do sleep 0.05; done",
                                     signal.SIGTERM)  # fmt: skip


def _child_leaving_a_stubborn_grandchild(tmp_path: Path, code: int) -> tuple[list[str], Path]:
    """A child that notes its CONCH_LEASE and exits with `code` at once, leaving a grandchild
    in its group that survives SIGTERM (noting it in a file): conch's reap of the group then
    takes --kill-after. Returns the command and the file that appears once the reap began."""
    reaping, armed = tmp_path / "reaping", tmp_path / "armed"
    grandchild = f"trap 'touch {reaping}' TERM; touch {armed}; while true; do sleep 0.05; done"
    script = (
        f'echo $CONCH_LEASE > {tmp_path / "lease"}; {SH} -c "{grandchild}" & '
        f"while [ ! -e {armed} ]; do sleep 0.01; done; exit {code}"
    )
    return [SH, "-c", script], reaping


def test_a_lease_lost_during_the_reap_does_not_change_the_childs_exit_code(conch, tmp_path,
                                                                            etcdctl):  # fmt: skip
    """The child exited on its own with 3 while the lease was fine; the lease is lost while
    conch reaps the rest of its group. conch exits 3, not 70."""
    cmd, reaping = _child_leaving_a_stubborn_grandchild(tmp_path, 3)
    p = conch.start("elect", "reap-loss", "--kill-after", "5s", "--", *cmd)
    wait_for(reaping.exists, what="conch reaping the group")
    etcdctl("lease", "revoke", read(tmp_path / "lease").strip())  # the reap lasts 5 s
    assert p.wait(20) == 3, p.stderr.read()


def test_a_signal_during_the_reap_gives_128_plus_s(conch, tmp_path):
    """conch got SIGTERM while reaping the child's group: it exits 143 like any conch that got
    a signal (SPEC), not with the child's code."""
    cmd, reaping = _child_leaving_a_stubborn_grandchild(tmp_path, 0)
    p = conch.start("elect", "reap-sig", "--kill-after", "5s", "--", *cmd)
    wait_for(reaping.exists, what="conch reaping the group")
    p.send_signal(signal.SIGTERM)
    assert p.wait(20) == 143, p.stderr.read()


# -- a watchdog that cannot start (item 2): the shim fails its exec with EAGAIN ------------------


def test_a_watchdog_that_cannot_start_means_nothing_runs(conch, tmp_path, faultshim_lib):
    """At a pids limit the watchdog's fork/exec fails (EAGAIN): conch must not run the child
    unwatched, nor leave it running while it gives up the slot. It exits 71 (EX_OSERR) with
    nothing run and no key left."""
    ran = tmp_path / "ran"
    env = shim_env(faultshim_lib, fail_exec="watchdog.py")
    r = conch.run("elect", "no-wd", "--", SH, "-c", f"touch {ran}; sleep 30", env=env)
    assert r.returncode == 71, r.stderr
    assert "watchdog" in r.stderr and "Traceback" not in r.stderr
    assert not ran.exists()
    assert conch.run("elect", "no-wd", "--who").returncode == 1


# -- a conch killed between the spawn and the watchdog's arming: the gate ------------------------


@pytest.mark.parametrize("killed", [True, False], ids=["killed", "continued"])
def test_a_conch_killed_before_arming_the_watchdog_leaves_nothing_running(
    conch, tmp_path, faultshim_lib, killed
):
    """conch spawns the child's process, then arms its watchdog. Killed in between, the
    watchdog is not armed (it ends quietly) and nothing would ever kill the child: an overlap
    not bounded by the TTL (cron invariant seed 338182 found this window in conchd). The child
    waits at a gate until the watchdog is armed; a conch killed first closes it, and the
    command never starts. A conch frozen there and continued runs the command as usual."""
    ran = tmp_path / "ran"
    p = conch.start("elect", "gate", "--", SH, "-c", f"touch {ran}",
                    env=shim_env(faultshim_lib, stop_after_spawn=str(ran)))  # fmt: skip
    wait_for(lambda: state(p.pid) == "T", what="conch frozen right after the spawn")
    (child,) = children_running(p.pid, str(ran).encode())
    if killed:
        p.kill()
        p.wait(10)
        wait_for(lambda: pid_gone(child), what="the child to end at the closed gate")
        assert not ran.exists()
    else:
        p.send_signal(signal.SIGCONT)
        assert p.wait(30) == 0, p.stderr.read()
        assert ran.exists()


# -- a suspended host (item 6): the shim moves CLOCK_BOOTTIME, not CLOCK_MONOTONIC ---------------


def test_after_a_suspend_conch_does_not_trust_an_expired_lease(conch, tmp_path, faultshim_lib,
                                                                clock_control):  # fmt: skip
    """The host was suspended for a minute (CLOCK_BOOTTIME jumped, CLOCK_MONOTONIC did not):
    the lease expired on the server meanwhile, so the child must be killed at once on resume
    and conch exit 70 — not run on for up to a TTL on a lease it cannot have."""
    ready, child_pid = tmp_path / "ready", tmp_path / "pid"
    p = conch.start(
        "elect", "suspend", "--ttl", "10s", "--kill-after", "1s", "--", SH, "-c",
        f"echo $$ > {child_pid}; touch {ready}; while true; do sleep 0.05; done",
        env=shim_env(faultshim_lib, clock_control),
    )  # fmt: skip
    wait_for(ready.exists, what="child ready")
    clock_control.set_boottime_offset(60.0)
    wait_for(lambda: p.poll() is not None, timeout=5, what="conch to end the hold")
    assert p.returncode == 70
    assert pid_gone(int(read(child_pid)))


def test_after_a_suspend_the_watchdog_kills_a_paused_conchs_child(conch, tmp_path,
                                                                  faultshim_lib,
                                                                  clock_control):  # fmt: skip
    """conch is paused (SIGSTOP) and the host is suspended for a minute: the watchdog, on the
    same boot-time clock, kills the child at once after the resume."""
    ready, child_pid = tmp_path / "ready", tmp_path / "pid"
    p = conch.start(
        "elect", "suspend-wd", "--ttl", "10s", "--kill-after", "1s", "--", SH, "-c",
        f"echo $$ > {child_pid}; touch {ready}; while true; do sleep 0.05; done",
        env=shim_env(faultshim_lib, clock_control),
    )  # fmt: skip
    wait_for(ready.exists, what="child ready")
    child = int(read(child_pid))
    p.send_signal(signal.SIGSTOP)
    try:
        clock_control.set_boottime_offset(60.0)
        wait_for(lambda: pid_gone(child), timeout=4, what="the watchdog to kill the child")
    finally:
        p.send_signal(signal.SIGCONT)
    assert p.wait(20) == 70


# -- a lease untrusted between promotion and spawn (item 9) ---------------------------------------


def test_a_waiter_whose_lease_is_untrusted_when_promoted_queues_again(conch, tmp_path,
                                                                      faultshim_lib,
                                                                      clock_control):  # fmt: skip
    """Nothing ran, so this is a waiter that lost its lease (docs/guarantees.md): it queues
    again and runs once it holds a lease it trusts — it does not exit 70 with nothing run."""
    release, ran = tmp_path / "release", tmp_path / "ran"
    a = conch.start("elect", "promote", "--", SH, "-c",
                    f"while [ ! -e {release} ]; do sleep 0.02; done")  # fmt: skip
    wait_for(lambda: conch.who("elect", "promote")["holders"], what="a leads")
    b = conch.start("elect", "promote", "--ttl", "10s", "--", SH, "-c", f"touch {ran}",
                    env=shim_env(faultshim_lib, clock_control))  # fmt: skip
    wait_for(lambda: conch.who("elect", "promote")["waiting"] == 1, what="b waits")
    clock_control.set_boottime_offset(60.0)  # b's lease: past its deadline, not yet noticed
    release.touch()
    assert a.wait(20) == 0
    assert b.wait(30) == 0, b.stderr.read()
    assert ran.exists()


# -- a delete between two reads (item 4): the proxy delays every answer --------------------------


def test_a_delete_right_after_the_restart_check_is_not_missed(conch, tmp_path, etcd_proxy,
                                                               etcdctl):  # fmt: skip
    """`--restart` re-checks its key before rerunning the child and then watches it. With the
    start revision taken from a second read, a delete that falls between the two reads is
    below the watch and never seen: the child would rerun on a slot that is gone. Every
    answer is delayed 2 s so that an operator's delete lands right there."""
    revs, release = tmp_path / "revs", tmp_path / "release"
    script = (
        f"echo $CONCH_REV >> {revs}; "
        f"if [ ! -e {release} ]; then while [ ! -e {release} ]; do sleep 0.02; done; exit 0; fi; "
        "while true; do sleep 0.05; done"
    )
    p = conch.start("elect", "recheck", "--restart", "--", SH, "-c", script,
                    env={"CONCH_ENDPOINTS": etcd_proxy.endpoint})  # fmt: skip
    wait_for(lambda: read(revs).strip(), what="the first run")
    first = read(revs).split()[0]
    (h,) = conch.who("elect", "recheck")["holders"]
    key = _holder_key(etcdctl, h["lease"])
    etcd_proxy.delay(2.0)
    release.touch()  # the child exits; conch reruns it after 1 s, checking its key first
    time.sleep(2.1)  # the check's answer is on its way (it left ~1.1 s after the release)
    etcdctl("del", key)
    etcd_proxy.pass_through()
    # conch must see the delete, kill the rerun child and campaign again: a new CONCH_REV
    wait_for(lambda: [r for r in read(revs).split() if r != first], timeout=30,
             what="a run with a new CONCH_REV")  # fmt: skip
    assert p.poll() is None
    p.send_signal(signal.SIGTERM)
    assert p.wait(20) == 143


def _holder_key(etcdctl, lease_hex: str) -> str:  # type: ignore[no-untyped-def]
    for line in etcdctl("get", "--prefix", "--keys-only", "/").split():
        if line.endswith(f"/{int(lease_hex, 16):016x}"):
            return line
    raise AssertionError(f"no key for lease {lease_hex}")


# -- threads that guard the promise never die silently (item 11) ----------------------------------


def test_a_holder_key_watch_that_fails_ends_the_hold_as_a_loss(etcd, prefix):
    """A bug in the holder-key watch thread (here: a start revision no protobuf field can hold,
    as an overflowing duration once produced) must end the hold as a loss: without that watch a
    deleted key goes unseen and a successor would start beside the child."""
    from conch.client import Client, ClientConfig
    from conch.contend import Contention
    from conch.core import KeyWatch
    from conch.holder import HolderRecord
    from conch.session import Session

    client = Client(ClientConfig(endpoints=tuple(etcd.endpoints)))
    session = Session(client, 10).open()
    try:
        record = HolderRecord("h", 1, "", ["x"], "t")
        c = Contention(client, f"{prefix}d/".encode(), 1, session.lease_id, record)
        c.enqueue()
        kw = KeyWatch(client, c, session, start_rev=2**70)
        wait_for(session.lost.is_set, timeout=5, what="the hold to end as a loss")
        assert "holder-key watch failed" in session.loss_reason
        kw.stop()
    finally:
        session.close()
        client.close()


# -- a --restart service across an etcd outage ----------------------------------------------------


def test_a_restart_service_outlives_an_outage_and_campaigns_again(conch, tmp_path, etcd_proxy):
    """etcd stops answering (the proxy hangs): the lease cannot be confirmed, the child is
    killed at the local deadline; conch does not exit — it keeps trying to open a lease, and
    once etcd answers again it campaigns and restarts the child with a new fencing token."""
    revs, pids = tmp_path / "revs", tmp_path / "pids"
    script = f"echo $CONCH_REV >> {revs}; echo $$ >> {pids}; while true; do sleep 0.05; done"
    p = conch.start("elect", "outage", "--restart", "--ttl", "2s", "--kill-after", "0.5s",
                    "--dial-timeout", "1s", "--", SH, "-c", script,
                    env={"CONCH_ENDPOINTS": etcd_proxy.endpoint})  # fmt: skip
    wait_for(lambda: read(revs).strip(), what="the first run")
    first_pid = int(read(pids).split()[0])
    etcd_proxy.hang()
    wait_for(lambda: pid_gone(first_pid), timeout=10, what="the child killed at the deadline")
    wait_for(lambda: "retrying" in _stderr_so_far(p), timeout=20, what="a failed re-campaign")
    etcd_proxy.pass_through()
    wait_for(lambda: len(read(revs).split()) >= 2, timeout=30, what="the child restarted")
    first, second = (int(r) for r in read(revs).split()[:2])
    assert second > first
    assert p.poll() is None
    p.send_signal(signal.SIGTERM)
    assert p.wait(20) == 143
    assert conch.run("elect", "outage", "--who").returncode == 1


def _stderr_so_far(p) -> str:  # type: ignore[no-untyped-def]
    """What conch has written to its stderr pipe so far (non-blocking)."""
    import fcntl

    fd = p.stderr.fileno()
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)
    try:
        chunk = os.read(fd, 65536)
    except BlockingIOError:
        chunk = b""
    p._seen = getattr(p, "_seen", "") + chunk.decode(errors="replace")
    return p._seen


def test_the_holder_key_watch_resumes_after_compaction_and_still_sees_a_delete(
    conch, tmp_path, etcd_proxy, etcd, prefix
):
    """The holder's connection stalls while the history it would resume its key watch from is
    compacted away: on reconnection conch re-checks its key with one read, watches from there,
    and a delete of the key afterwards is still seen (the child is killed, exit 70)."""
    from conch.client import Client, ClientConfig

    ready, child_pid = tmp_path / "ready", tmp_path / "pid"
    p = conch.start("elect", "compacted", "--ttl", "10s", "--kill-after", "1s", "--", SH, "-c",
                    f"echo $$ > {child_pid}; touch {ready}; while true; do sleep 0.05; done",
                    env={"CONCH_ENDPOINTS": etcd_proxy.endpoint})  # fmt: skip
    wait_for(ready.exists, what="child ready")
    direct = Client(ClientConfig(endpoints=tuple(etcd.endpoints)))
    try:
        etcd_proxy.hang()
        for i in range(5):
            rev = direct.put(f"{prefix}noise/{i}".encode(), b"x")
        direct.compact(rev)
        etcd_proxy.pass_through()  # conch reconnects: its watch's start revision is compacted
        assert p.poll() is None, p.stderr.read()
        # deleted before or after the watch is re-created from the re-checked revision: seen
        kvs, _ = direct.get_range(f"{prefix}".encode(), f"{prefix}\xff".encode())
        (key,) = [kv.key for kv in kvs if b"/elect/" in kv.key]
        direct.delete(key)
    finally:
        direct.close()
    assert p.wait(20) == 70
    assert pid_gone(int(read(child_pid)))
