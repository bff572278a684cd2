"""conch elect against a real etcd: the testing model's elect list and the core's lease/child
behaviour. Every wait polls with a deadline."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import pid_gone, wait_for
from procs import gated_child_of, read, watchdog_of

from conch.localetcd import LocalCluster

SH = "/bin/sh"


def test_who_on_vacant_office_exits_1(conch):
    r = conch.run("elect", "vacant", "--who")
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    r = conch.run("elect", "vacant", "--who", "--json")
    assert r.returncode == 1
    assert json.loads(r.stdout) == {"name": "vacant", "max": 1, "holders": [], "waiting": 0}


def test_leader_runs_child_with_env_and_who_shows_it(conch, tmp_path):
    out, release = tmp_path / "env", tmp_path / "release"
    script = (
        f'echo "$CONCH_NAME $CONCH_REV $CONCH_LEASE $CONCH_TTL" > {out}; '
        f"while [ ! -e {release} ]; do sleep 0.05; done; exit 7"
    )
    p = conch.start("elect", "office", "--ttl", "5s", "--", SH, "-c", script)
    wait_for(lambda: read(out).strip(), what="child env")
    name, rev, lease, ttl = read(out).split()
    doc = conch.who("elect", "office")
    assert doc["name"] == "office" and doc["max"] == 1 and doc["waiting"] == 0
    (h,) = doc["holders"]
    assert name == "office"
    assert int(rev) == h["rev"] and lease == h["lease"] and int(ttl) >= 5
    assert h["pid"] == p.pid and h["cmd"] == [SH, "-c", script]
    assert h["host"] and h["started"].endswith("Z")
    text = conch.run("elect", "office", "--who")
    assert text.returncode == 0 and f"rev={rev}" in text.stdout
    release.touch()
    assert p.wait(20) == 7  # the child's own exit code
    assert conch.run("elect", "office", "--who").returncode == 1  # resigned: no key left


def test_resign_on_clean_exit_hands_over_fast(conch, tmp_path):
    release = tmp_path / "release"
    a_end, b_start = tmp_path / "a_end", tmp_path / "b_start"
    a = conch.start(
        "elect", "handover", "--", SH, "-c",
        f"while [ ! -e {release} ]; do sleep 0.02; done; date +%s.%N > {a_end}",
    )  # fmt: skip
    wait_for(lambda: conch.who("elect", "handover")["holders"], what="a leads")
    b = conch.start("elect", "handover", "--", SH, "-c", f"date +%s.%N > {b_start}; sleep 0.2")
    wait_for(lambda: conch.who("elect", "handover")["waiting"] == 1, what="b waits")
    release.touch()
    assert a.wait(20) == 0
    assert b.wait(20) == 0
    gap = float(read(b_start)) - float(read(a_end))
    assert 0 <= gap < 1.0, f"handover took {gap:.3f}s"  # the contract's bound, not the TTL


def test_nonblock_exits_75_fast_and_leaves_no_key(conch, tmp_path, etcdctl, prefix):
    release = tmp_path / "release"
    a = conch.start("elect", "nb", "--", SH, "-c", f"while [ ! -e {release} ]; do sleep 0.05; done")
    wait_for(lambda: conch.who("elect", "nb")["holders"], what="a leads")
    t0 = time.monotonic()
    r = conch.run("elect", "nb", "--nonblock", "--", "true")
    assert r.returncode == 75, r.stderr
    assert time.monotonic() - t0 < 5
    assert conch.who("elect", "nb")["waiting"] == 0
    assert len(etcdctl("get", "--prefix", "--keys-only", prefix).split()) == 1
    release.touch()
    assert a.wait(20) == 0


def test_timeout_exits_75_and_removes_queue_key(conch, tmp_path, etcdctl, prefix):
    release = tmp_path / "release"
    a = conch.start("elect", "to", "--", SH, "-c", f"while [ ! -e {release} ]; do sleep 0.05; done")
    wait_for(lambda: conch.who("elect", "to")["holders"], what="a leads")
    t0 = time.monotonic()
    r = conch.run("elect", "to", "--timeout", "1s", "--", "true")
    took = time.monotonic() - t0
    assert r.returncode == 75, r.stderr
    assert took >= 1.0
    assert etcdctl("get", "--prefix", "--keys-only", prefix).split().__len__() == 1
    release.touch()
    assert a.wait(20) == 0


def test_the_next_in_line_has_its_watchdog_and_child_ready_and_leaves_none_behind(conch, tmp_path):
    """The waiter next in line starts its watchdog and its child's process (held at the gate,
    the command not run) while it waits: the hand-over then only arms the one and opens the
    other. The second in line starts neither; a waiter that gives up ends both, and the one
    that takes the office uses the ones it had."""
    release_a, release_c, ran_c = tmp_path / "release_a", tmp_path / "release_c", tmp_path / "c"

    def until(f: Path, pid_file: Path) -> list[str]:
        return [SH, "-c", f"echo $$ > {pid_file}; while [ ! -e {f} ]; do sleep 0.05; done"]

    a = conch.start("elect", "spare", "--", *until(release_a, tmp_path / "a"))
    wait_for(lambda: conch.who("elect", "spare")["holders"], what="a leads")
    b = conch.start("elect", "spare", "--timeout", "5s", "--", "true")
    spare_b = wait_for(lambda: watchdog_of(b.pid), what="b's spare watchdog")
    gate_b = wait_for(lambda: gated_child_of(b.pid), what="b's child held at its gate")
    c = conch.start("elect", "spare", "--", *until(release_c, ran_c))
    wait_for(lambda: conch.who("elect", "spare")["waiting"] == 2, what="c queued")
    assert watchdog_of(c.pid) == 0 and gated_child_of(c.pid) == 0  # second in line: nothing
    assert b.wait(20) == 75
    assert pid_gone(spare_b) and pid_gone(gate_b)
    spare_c = wait_for(lambda: watchdog_of(c.pid), what="c's spare watchdog")
    gate_c = wait_for(lambda: gated_child_of(c.pid), what="c's child held at its gate")
    assert not ran_c.exists()  # held: the command has not run
    release_a.touch()
    assert a.wait(20) == 0
    wait_for(lambda: conch.who("elect", "spare")["holders"][0]["pid"] == c.pid, what="c leads")
    assert watchdog_of(c.pid) == spare_c  # the one it had ready watches its child
    wait_for(lambda: read(ran_c).strip(), what="c's command")
    assert int(read(ran_c)) == gate_c  # the command runs in the process it had ready
    release_c.touch()
    assert c.wait(20) == 0
    assert pid_gone(spare_c) and pid_gone(gate_c)


def test_a_command_removed_while_queued_is_reported_as_not_found(conch, tmp_path):
    """The next in line started its child's process ahead, for a command that existed then;
    removed before the slot frees, it is reported as any command not found (127, one line,
    before anything ran), not by the gate's shell."""
    release, script = tmp_path / "release", tmp_path / "job"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o755)
    a = conch.start(
        "elect", "gone", "--", SH, "-c", f"while [ ! -e {release} ]; do sleep 0.05; done"
    )
    wait_for(lambda: conch.who("elect", "gone")["holders"], what="a leads")
    b = conch.start("elect", "gone", "--", str(script))
    wait_for(lambda: gated_child_of(b.pid), what="b's child held at its gate")
    script.unlink()
    release.touch()
    assert a.wait(20) == 0
    assert b.wait(20) == 127
    err = b.stderr.read()
    assert err.startswith("conch: error: cannot run") and len(err.splitlines()) == 1, err


def test_restart_reruns_child_and_keeps_office(conch, tmp_path):
    runs = tmp_path / "runs"
    p = conch.start(
        "elect", "svc", "--restart", "--", SH, "-c", f'echo "$CONCH_REV" >> {runs}; exit 3'
    )
    wait_for(lambda: len(read(runs).split()) >= 2, timeout=15, what="two runs")
    revs = read(runs).split()
    assert len(set(revs)) == 1  # the same office (same key) across restarts
    (h,) = conch.who("elect", "svc")["holders"]
    assert str(h["rev"]) == revs[0] and h["pid"] == p.pid
    assert p.poll() is None  # --restart never exits on its own
    p.send_signal(signal.SIGTERM)
    assert p.wait(20) == 128 + signal.SIGTERM
    assert conch.run("elect", "svc", "--who").returncode == 1


def _term_ignoring_child(tmp_path: Path) -> tuple[list[str], Path, Path, Path]:
    """A child that ignores SIGTERM (noting it got one) and has a grandchild."""
    got_term, gc_pid, ready = tmp_path / "got_term", tmp_path / "gc_pid", tmp_path / "ready"
    script = (
        f"trap 'echo term >> {got_term}' TERM; "
        f"sleep 1000 & echo $! > {gc_pid}; "
        f"touch {ready}; "
        "while true; do sleep 0.05; done"
    )
    return [SH, "-c", script], got_term, gc_pid, ready


def test_lease_revoke_kills_child_group_and_exits_70(conch, tmp_path, etcdctl):
    cmd, got_term, gc_pid, ready = _term_ignoring_child(tmp_path)
    p = conch.start("elect", "revoke", "--kill-after", "1s", "--", *cmd)
    wait_for(ready.exists, what="child ready")
    (h,) = conch.who("elect", "revoke")["holders"]
    gc = int(read(gc_pid))
    t0 = time.monotonic()
    etcdctl("lease", "revoke", h["lease"])
    assert p.wait(20) == 70
    took = time.monotonic() - t0
    assert "term" in read(got_term)  # SIGTERM first
    assert took >= 1.0  # ... SIGKILL only after --kill-after
    wait_for(lambda: pid_gone(gc), timeout=5, what="grandchild gone")
    assert "lease" in p.stderr.read().lower()


def test_sigterm_to_conch_is_forwarded_and_exits_143(conch, tmp_path):
    got, ready = tmp_path / "got", tmp_path / "ready"
    script = (
        f"trap 'echo TERM > {got}; exit 0' TERM; touch {ready}; while true; do sleep 0.05; done"
    )
    p = conch.start("elect", "fwd", "--", SH, "-c", script)
    wait_for(ready.exists, what="child ready")
    p.send_signal(signal.SIGTERM)
    assert p.wait(20) == 143
    assert read(got).strip() == "TERM"
    assert conch.run("elect", "fwd", "--who").returncode == 1  # released


def test_sigkill_to_conch_kills_child_within_bound(conch, tmp_path):
    cmd, got_term, gc_pid, ready = _term_ignoring_child(tmp_path)
    child_pid = tmp_path / "child_pid"
    cmd[-1] = f"echo $$ > {child_pid}; " + cmd[-1]
    p = conch.start("elect", "crash", "--kill-after", "1s", "--", *cmd)
    wait_for(ready.exists, what="child ready")
    child, gc = int(read(child_pid)), int(read(gc_pid))
    p.kill()
    p.wait(10)
    # docs/guarantees.md: conch SIGKILLed -> SIGTERM at once (watchdog sees EOF), SIGKILL
    # after --kill-after: dead within kill-after + 1 s.
    wait_for(lambda: pid_gone(child) and pid_gone(gc), timeout=2.0 + 1.0, what="child group dead")
    assert "term" in read(got_term)


def test_sigstop_of_conch_kills_child_before_lease_can_expire(conch, tmp_path):
    ready, child_pid = tmp_path / "ready", tmp_path / "child_pid"
    p = conch.start(
        "elect", "paused", "--ttl", "3s", "--kill-after", "0.5s", "--", SH, "-c",
        f"echo $$ > {child_pid}; touch {ready}; while true; do sleep 0.05; done",
    )  # fmt: skip
    wait_for(ready.exists, what="child ready")
    child = int(read(child_pid))
    t0 = time.monotonic()
    p.send_signal(signal.SIGSTOP)
    try:
        # the watchdog acts at the local deadline (< TTL after the last acknowledged keepalive)
        wait_for(lambda: pid_gone(child), timeout=3.0 + 0.5 + 1.0, what="child killed")
        assert time.monotonic() - t0 < 3.0 + 0.5 + 1.0
    finally:
        p.send_signal(signal.SIGCONT)
    assert p.wait(20) == 70


def test_three_candidates_failover(conch, tmp_path):
    work = tmp_path / "work"
    script = f'while true; do echo "$CONCH_REV" >> {work}; sleep 0.05; done'
    cands = [
        conch.start("elect", "trio", "--ttl", "5s", "--kill-after", "1s", "--", SH, "-c", script)
        for _ in range(3)
    ]
    doc = wait_for(
        lambda: (d := conch.who("elect", "trio"))["holders"] and d["waiting"] == 2 and d,
        what="one leader, two waiting",
    )
    leader = doc["holders"][0]
    by_pid = {c.pid: c for c in cands}
    wait_for(lambda: read(work).split(), what="work under first leader")
    t0 = time.monotonic()
    by_pid[leader["pid"]].send_signal(signal.SIGTERM)
    new = wait_for(
        lambda: (
            (h := conch.who("elect", "trio")["holders"]) and h[0]["pid"] != leader["pid"] and h[0]
        ),
        timeout=2.0,
        what="new leader within 2 s",
    )
    assert time.monotonic() - t0 < 2.0
    assert new["rev"] > leader["rev"]  # the fencing token increases across successions
    wait_for(lambda: str(new["rev"]) in read(work).split(), what="work under new leader")
    revs = [int(x) for x in read(work).split()]
    assert revs == sorted(revs)  # no work of the old leader after the new one started
    assert {leader["rev"], new["rev"]} <= set(revs)
    assert by_pid[leader["pid"]].wait(20) == 143
    for c in cands:
        if c.poll() is None:
            c.send_signal(signal.SIGTERM)
            assert c.wait(20) == 143


def test_usage_errors_exit_2_one_line_nothing_written(conch, etcdctl, prefix):
    cases = [
        ("elect", "x", "--ttl", "10parsecs", "--", "true"),
        ("elect", "x", "--kill-after", "-1", "--", "true"),
        ("elect", "x", "--timeout", "soon", "--", "true"),
        ("elect", "bad\nname", "--", "true"),
        ("elect", "", "--", "true"),
        ("elect", "x" * 129, "--", "true"),
        ("elect", "x"),  # no command
        ("elect", "x", "--no-such-flag", "--", "true"),
        ("elect", "x", "--dial-timeout", "zero", "--", "true"),
        ("elect", "x", "--cacert", "/nonexistent/ca.pem", "--", "true"),
        ("--endpoints", "ftp://nope", "elect", "x", "--", "true"),
        ("sema", "x", "--max", "0", "--", "true"),
        ("nosuchcommand",),
    ]
    for args in cases:
        r = conch.run(*args)
        assert r.returncode == 2, (args, r.returncode, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("conch: error: "), (args, r.stderr)
        assert "Traceback" not in r.stderr
    assert etcdctl("get", "--prefix", "--keys-only", prefix).strip() == ""


def test_unreachable_etcd_exits_69_within_dial_timeout(conch):
    from conch.localetcd import free_port

    dead = f"http://127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    r = conch.run("--endpoints", dead, "--dial-timeout", "1s", "elect", "x", "--", "true")
    assert r.returncode == 69, r.stderr
    assert time.monotonic() - t0 < 1.0 + 3.0  # interpreter start-up on a busy 2-core box
    assert r.stderr.startswith("conch: error: ") and len(r.stderr.strip().splitlines()) == 1


def test_failover_to_a_live_endpoint(conch, etcd):
    from conch.localetcd import free_port

    eps = f"http://127.0.0.1:{free_port()},{etcd.endpoints_csv}"
    r = conch.run("--endpoints", eps, "elect", "fo", "--", "true")
    assert r.returncode == 0, r.stderr


@pytest.fixture(scope="module")
def auth_etcd(etcdctl_bin):
    """A separate etcd with auth enabled: user root, password right-Pa55."""
    cluster = LocalCluster(nodes=1).start()
    ep = ["--endpoints", cluster.endpoints_csv]
    for args in (["user", "add", "root:right-Pa55"], ["auth", "enable"]):
        subprocess.run([etcdctl_bin, *ep, *args], check=True, capture_output=True, timeout=30)
    try:
        yield cluster
    finally:
        cluster.stop()


def test_password_never_in_output(conch, auth_etcd, tmp_path):
    env = {"CONCH_ENDPOINTS": auth_etcd.endpoints_csv}
    wrong = "wr0ng-Pa55"
    for args, extra in [
        (("--user", f"root:{wrong}", "elect", "pw", "--", "true"), {}),
        (("-v", "--user", f"root:{wrong}", "elect", "pw", "--", "true"), {}),
        (("elect", "pw", "--", "true"), {"CONCH_USER": "root", "CONCH_PASSWORD": wrong}),
        (("--user", f"root:{wrong}", "elect", "pw", "--who", "--json"), {}),
    ]:
        r = conch.run(*args, env={**env, **extra})
        assert r.returncode == 69, (args, r.stderr)
        assert wrong not in r.stdout + r.stderr
        assert "-v" in args or "Traceback" not in r.stderr  # -v may show details
    # the right password works; a password inside the child's argv is redacted in the record
    right, ready = "right-Pa55", tmp_path / "ready"
    p = conch.start(
        "--user", f"root:{right}", "elect", "pw", "--", "sh", "-c",
        f"touch {ready}; while true; do sleep 0.05; done; echo {right}",
        env=env,
    )  # fmt: skip
    wait_for(ready.exists, what="child ready")
    r = conch.run("--user", f"root:{right}", "elect", "pw", "--who", "--json", env=env)
    assert r.returncode == 0, r.stderr
    assert right not in r.stdout and "***" in r.stdout
    p.send_signal(signal.SIGTERM)
    assert p.wait(20) == 143
    assert right not in p.stderr.read()


def test_the_watchdog_revokes_with_the_holders_credentials_and_never_shows_them(
    conch, auth_etcd, tmp_path
):
    env = {"CONCH_ENDPOINTS": auth_etcd.endpoints_csv, "CONCH_PASSWORD": "right-Pa55"}
    started = tmp_path / "started"
    child = [SH, "-c", f'echo "$CONCH_REV" >> {started}; exec sleep 600']
    args = ("--user", "root", "elect", "authcrash", "--ttl", "10s", "--", *child)
    holder = conch.start(*args, env=env)
    wait_for(lambda: started.exists() and len(read(started).split()) == 1, what="holder's child")
    wd = watchdog_of(holder.pid)
    for part in ("cmdline", "environ"):  # the settings reach the watchdog on a pipe
        assert b"right-Pa55" not in Path(f"/proc/{wd}/{part}").read_bytes()
    waiter = conch.start(*args, env=env)
    wait_for(lambda: conch.who("elect", "authcrash", "--user", "root", env=env)["waiting"] == 1,
             what="waiter queued")  # fmt: skip
    t0 = time.monotonic()
    holder.kill()
    holder.wait(10)
    wait_for(lambda: len(read(started).split()) == 2, timeout=9.0, what="successor's child")
    assert time.monotonic() - t0 < 5.0
    waiter.terminate()
    assert waiter.wait(20) == 143


def test_version_and_env_endpoints(conch, etcd):
    r = conch.run("--version")
    assert r.returncode == 0 and r.stdout.startswith("conch ")
    env = {"CONCH_ENDPOINTS": "", "ETCDCTL_ENDPOINTS": etcd.endpoints_csv}
    r = conch.run("elect", "envfallback", "--", "true", env=env)
    assert r.returncode == 0, r.stderr


def test_child_exit_codes_and_missing_command(conch):
    assert conch.run("elect", "codes", "--", SH, "-c", "exit 5").returncode == 5
    assert conch.run("elect", "codes", "--", SH, "-c", "kill -9 $$").returncode == 137
    r = conch.run("elect", "codes", "--", "/nonexistent/binary")
    assert r.returncode == 127 and "Traceback" not in r.stderr
    assert conch.run("elect", "codes", "--who").returncode == 1


def test_global_options_after_subcommand(conch, etcd, prefix):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONCH_")}
    r = subprocess.run(
        [*conch.cmd, "elect", "late", "--endpoints", etcd.endpoints_csv, "--prefix", prefix,
         "--", "true"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr


def test_after_sigkill_of_the_holders_conch_the_successor_starts_well_before_the_ttl(
    conch, tmp_path
):
    # issue 8: the watchdog kills the group, sees it gone, and revokes the lease itself
    started = tmp_path / "started"
    child = [SH, "-c", f'echo "$CONCH_REV" >> {started}; exec sleep 600']
    holder = conch.start("elect", "crashy", "--ttl", "10s", "--", *child)
    wait_for(lambda: started.exists() and len(read(started).split()) == 1, what="holder's child")
    waiter = conch.start("elect", "crashy", "--ttl", "10s", "--", *child)
    wait_for(lambda: conch.who("elect", "crashy")["waiting"] == 1, what="waiter queued")
    t0 = time.monotonic()
    holder.kill()
    holder.wait(10)
    wait_for(lambda: len(read(started).split()) == 2, timeout=9.0, what="successor's child")
    took = time.monotonic() - t0
    assert took < 5.0, f"successor started {took:.1f}s after the crash (TTL 10s)"
    first, second = (int(x) for x in read(started).split())
    assert second > first
    waiter.terminate()
    assert waiter.wait(20) == 128 + signal.SIGTERM


def test_a_holder_whose_revoke_cannot_be_made_keeps_the_slot_until_the_lease_expires(
    conch, tmp_path, etcd_proxy
):
    # the watchdog's revoke goes where conch went: through the proxy; with that hung, the
    # successor (which talks to etcd directly) waits for the lease to expire, as before
    started = tmp_path / "started"
    child = [SH, "-c", f'echo "$CONCH_REV" >> {started}; exec sleep 600']
    holder = conch.start("elect", "norevoke", "--ttl", "4s", "--dial-timeout", "1s", "--",
                         *child, env={"CONCH_ENDPOINTS": etcd_proxy.endpoint})  # fmt: skip
    wait_for(lambda: started.exists() and len(read(started).split()) == 1, what="holder's child")
    wd = watchdog_of(holder.pid)
    waiter = conch.start("elect", "norevoke", "--ttl", "4s", "--", *child)
    wait_for(lambda: conch.who("elect", "norevoke")["waiting"] == 1, what="waiter queued")
    etcd_proxy.hang()
    t0 = time.monotonic()
    holder.kill()
    holder.wait(10)
    wait_for(lambda: pid_gone(wd), timeout=10, what="the watchdog gave up the revoke and exited")
    wait_for(lambda: len(read(started).split()) == 2, timeout=10, what="successor's child")
    # the lease expired: at least TTL minus the keepalive interval (TTL/3) after the crash
    assert time.monotonic() - t0 >= 4.0 * 2 / 3 - 0.2
    waiter.terminate()
    assert waiter.wait(20) == 128 + signal.SIGTERM
