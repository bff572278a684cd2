"""One cron run on a conchd, end to end: commands that cannot run, a watchdog that cannot start
or dies, the output a run leaves (docs/cron.md: "A command that cannot be run", "A killed
daemon's children", "Output")."""

from __future__ import annotations

import os
import signal
from typing import Any

from conftest import pid_gone, wait_for
from faults.shim import shim_env
from procs import children_running, state
from test_cron import SH, add, records

from conch.cron import model


def first_result(client: Any, prefix: str, name: str) -> model.RunRecord | None:
    done = [r for _, r in sorted(records(client, prefix, name).items())
            if r.status in ("ok", "failed")]  # fmt: skip
    return done[0] if done else None


def test_commands_that_cannot_run_are_failed_like_a_shell(conch, daemons, client, prefix,
                                                          tmp_path):  # fmt: skip
    not_exec = tmp_path / "not-executable"
    not_exec.write_text("#!/bin/sh\necho hi\n")
    add(conch, "missing", "@every 1s", "--", str(tmp_path / "no-such-command"))
    add(conch, "noexec", "@every 1s", "--", str(not_exec))
    daemons.start("d")
    for name, code in (("missing", 127), ("noexec", 126)):
        rec = wait_for(lambda name=name: first_result(client, prefix, name), timeout=30,
                       what=f"a result of {name}")  # fmt: skip
        assert rec.status == "failed" and rec.exit_code == code, rec
        assert "cannot run" in rec.output and rec.duration == 0.0
    assert "Traceback" not in daemons.log("d")


def test_a_run_whose_watchdog_cannot_start_is_not_run(conch, daemons, client, prefix, tmp_path,
                                                      faultshim_lib):  # fmt: skip
    """At a pids limit the watchdog's fork/exec fails: the job must not run unwatched (a conchd
    dying then would leave it running invisibly). Recorded failed, 71."""
    ran = tmp_path / "ran"
    add(conch, "nowd", "@every 1s", "--", SH, "-c", f"touch {ran}")
    daemons.start("d", env=shim_env(faultshim_lib, fail_exec="watchdog.py"))
    rec = wait_for(lambda: first_result(client, prefix, "nowd"), timeout=30, what="a result")
    assert rec.status == "failed" and rec.exit_code == 71, rec
    assert "watchdog" in rec.output
    assert not ran.exists()


def _watchdogs_of(pid: int) -> list[int]:
    return children_running(pid, b"watchdog.py")


def test_a_runs_dead_watchdog_is_replaced(conch, daemons, tmp_path):
    """The watchdog of a running job is killed: conchd starts a new one, so a conchd that dies
    afterwards still takes the job's process group with it."""
    child_pid = tmp_path / "pid"
    once = (f"[ -e {child_pid} ] && exit 0; echo $$ > {child_pid}; "
            "while true; do sleep 0.05; done")  # fmt: skip
    # forbid: the later ticks are skipped while the run lives, so no other run (with a
    # watchdog of its own) starts beside it
    add(conch, "guarded", "@every 1s", "--overlap", "forbid", "--", SH, "-c", once)
    d = daemons.start("d")
    wait_for(lambda: child_pid.exists() and child_pid.read_text().strip(), timeout=30,
             what="the run")  # fmt: skip
    child = int(child_pid.read_text())
    (first,) = wait_for(lambda: _watchdogs_of(d.pid), what="its watchdog")
    os.kill(first, signal.SIGKILL)
    second = wait_for(lambda: [w for w in _watchdogs_of(d.pid) if w != first], timeout=10,
                      what="a new watchdog")  # fmt: skip
    assert second and "watchdog died" in daemons.log("d")
    assert not pid_gone(child)  # the run goes on
    d.kill()  # conchd dies: the new watchdog kills the group
    d.wait(10)
    wait_for(lambda: pid_gone(child), timeout=15, what="the child killed by the new watchdog")


def test_one_watchdog_guards_every_run_of_a_daemon(conch, daemons, tmp_path):
    """Three jobs running at once on one conchd: one watchdog process for all of them (not one
    per run); conchd SIGKILLed, it takes every run's process group with it."""
    pids = []
    for n in range(3):
        pid_file = tmp_path / f"pid{n}"
        pids.append(pid_file)
        once = (f"[ -e {pid_file} ] && exit 0; echo $$ > {pid_file}; "
                "while true; do sleep 0.05; done")  # fmt: skip
        add(conch, f"long{n}", "@every 1s", "--overlap", "forbid", "--", SH, "-c", once)
    d = daemons.start("d")
    wait_for(lambda: all(p.exists() and p.read_text().strip() for p in pids), timeout=30,
             what="the three runs")  # fmt: skip
    children = [int(p.read_text()) for p in pids]
    (watchdog,) = wait_for(lambda: _watchdogs_of(d.pid), what="its watchdog")
    assert len(_watchdogs_of(d.pid)) == 1
    d.kill()
    d.wait(10)
    for child in children:
        wait_for(lambda c=child: pid_gone(c), timeout=15, what="every run killed by it")
    wait_for(lambda: pid_gone(watchdog), timeout=15, what="the watchdog done")


def test_output_is_logged_by_line_and_its_tail_kept(conch, daemons, client, prefix):
    """Lines go to conchd's log prefixed with the job name (a line longer than 8 KiB in
    pieces); the record keeps the last 4 KiB, cut at a character boundary."""
    script = (
        "printf 'first line\\nsecond line\\n'; "
        "head -c 20000 /dev/zero | tr '\\0' x; echo; "
        "i=0; while [ $i -lt 3000 ]; do printf 'é'; i=$((i+1)); done"
    )
    add(conch, "talk", "@every 1s", "--", SH, "-c", script)
    daemons.start("d")
    rec = wait_for(lambda: first_result(client, prefix, "talk"), timeout=30, what="a result")
    assert rec.status == "ok", rec
    assert len(rec.output.encode()) <= model.TAIL_BYTES
    assert rec.output.endswith("é" * 100) and "\ufffd" not in rec.output
    log = daemons.log("d")
    assert "[talk] first line" in log and "[talk] second line" in log
    assert "[talk] " + "x" * 8192 in log  # the long line, in pieces of 8 KiB


def test_a_conchd_killed_before_arming_the_watchdog_leaves_nothing_running(
    conch, daemons, tmp_path, faultshim_lib
):
    """conchd spawns a run's process, then arms its watchdog: a conchd killed in between
    would leave the command running, watched by nothing (cron invariant seed 338182). The
    child waits at a gate until the watchdog is armed; the killed conchd closes it and the
    command never starts."""
    ran = tmp_path / "ran"
    add(conch, "gated", "@every 1s", "--", SH, "-c", f"touch {ran}")
    d = daemons.start("d", env=shim_env(faultshim_lib, stop_after_spawn=str(ran)))
    wait_for(lambda: state(d.pid) == "T", timeout=30, what="conchd frozen right after a spawn")
    (child,) = children_running(d.pid, str(ran).encode())
    d.kill()
    d.wait(10)
    wait_for(lambda: pid_gone(child), what="the child to end at the closed gate")
    assert not ran.exists()


def test_show_and_logs_print_the_definition_history_and_outputs(conch, daemons, client, prefix):
    """`cron show` gives the definition and every kept run; `cron logs` the stored output of
    the newest run (or K newest, or one tick), a header each; bad input: 2, no job/run: 1."""
    import json

    script = 'echo "tick $CONCH_TICK"; echo oops >&2; exit 3'
    add(conch, "talk", "@every 1s", "--timeout", "30s", "--", SH, "-c", script)
    daemons.start("d")

    def results() -> list[model.RunRecord]:
        return [r for r in records(client, prefix, "talk").values() if r.exit_code == 3]

    wait_for(lambda: len(results()) >= 2, timeout=60, what="two results")
    assert daemons.stop("d") == 128 + signal.SIGTERM  # the history holds still
    r = conch.run("cron", "show", "talk", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["name"] == "talk" and doc["cmd"] == [SH, "-c", script] and doc["timeout"] == 30
    assert doc["created"] and doc["added_on"] and doc["conch_version"]
    ticks = [run["tick"] for run in doc["runs"]]
    assert len(ticks) >= 2 and ticks == sorted(ticks, reverse=True)
    failed = [run for run in doc["runs"] if run["exit_code"] == 3]  # not one SIGTERM stopped
    text = conch.run("cron", "show", "talk").stdout
    assert "name:       talk" in text and f"runs ({len(ticks)} kept, newest first):" in text
    assert failed[0]["tick"] in text
    # logs: the newest run (a header, then its output)
    r = conch.run("cron", "logs", "talk")
    assert r.returncode == 0, r.stderr
    header, *lines = r.stdout.splitlines()
    newest = doc["runs"][0]
    assert header.startswith(f"== talk tick {newest['tick']}: {newest['status']}")
    if newest["exit_code"] == 3:
        assert ", exit 3, " in header and lines == [f"tick {newest['tick']}", "oops"]
    r = conch.run("cron", "logs", "talk", "--last", "2", "--json")
    two = json.loads(r.stdout)
    assert [x["tick"] for x in two] == ticks[:2]
    older = failed[-1]["tick"]
    r = conch.run("cron", "logs", "talk", "--tick", older, "--json")
    (one,) = json.loads(r.stdout)
    assert one["tick"] == older and one["output"] == f"tick {older}\noops\n"
    assert one["exit_code"] == 3 and one["status"] == "failed"
    # refusals
    for args, code in ((("logs", "talk", "--tick", "yesterday"), 2),
                       (("logs", "talk", "--last", "0"), 2),
                       (("logs", "talk", "--tick", "2001-01-01T00:00:00Z"), 1),
                       (("logs", "nosuch"), 1), (("show", "nosuch"), 1)):  # fmt: skip
        r = conch.run("cron", *args)
        assert r.returncode == code and r.stderr.count("\n") == 1, (args, r.stderr)
        assert "Traceback" not in r.stderr
