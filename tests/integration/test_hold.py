"""Holding a slot while the child runs: the races between the child's end, the lease, signals
and the watchdog (issue 7, items 2 and 9), as real processes against the session etcd."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from conftest import pid_gone, wait_for

SH = "/bin/sh"


def read(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


def watchdog_of(conch_pid: int) -> int:
    """The pid of conch's watchdog process (a child of conch running watchdog.py)."""
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmdline = f.read()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == conch_pid and b"watchdog.py" in cmdline:
            return int(name)
    return 0


def test_a_watchdog_that_dies_while_the_child_runs_ends_the_hold_as_a_loss(conch, tmp_path):
    """Without its watchdog a child would outlive a conch that dies or pauses: conch notices
    the watchdog's death, kills the child's group and exits 70 (the lease-loss path)."""
    ready, child_pid = tmp_path / "ready", tmp_path / "child_pid"
    p = conch.start(
        "elect", "wd-dies", "--kill-after", "1s", "--", SH, "-c",
        f"echo $$ > {child_pid}; touch {ready}; while true; do sleep 0.05; done",
    )  # fmt: skip
    wait_for(ready.exists, what="child ready")
    wd = wait_for(lambda: watchdog_of(p.pid), what="the watchdog process")
    os.kill(wd, signal.SIGKILL)
    assert p.wait(20) == 70
    assert pid_gone(int(read(child_pid)))
    assert "watchdog" in p.stderr.read()
    assert conch.run("elect", "wd-dies", "--who").returncode == 1  # the slot was given up


def _child_leaving_a_stubborn_grandchild(tmp_path: Path, code: int) -> tuple[list[str], Path]:
    """A child that notes its CONCH_LEASE and exits with `code` at once, leaving a grandchild
    in its group that survives SIGTERM (noting it in a file): conch's reap of the group then
    takes --kill-after. Returns the command and the file that appears once the reap began."""
    reaping = tmp_path / "reaping"
    grandchild = f"trap 'touch {reaping}' TERM; while true; do sleep 0.05; done"
    script = f'echo $CONCH_LEASE > {tmp_path / "lease"}; {SH} -c "{grandchild}" & exit {code}'
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
