"""conch cron and conchd against a real etcd, as real processes: the testing model's cron list.

Every wait polls with a deadline (generous: the box may be busy); the assertions are strict.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import datetime
from typing import Any

from conftest import pid_gone, wait_for
from cron_fixtures import Daemons
from procs import read

from conch import keys
from conch.client import Client
from conch.cron import model
from conch.localetcd import LocalCluster

CONCHD = [sys.executable, "-m", "conch.cron.command"]
SH = "/bin/sh"
RUN_FIELDS = {"tick", "status", "exit_code", "host", "started", "finished"}
JOB_FIELDS = {"name", "schedule", "tz", "cmd", "next_tick", "runs"}


def ts(rfc3339: str) -> float:
    return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()


def ls(conch: Any, env: dict[str, str] | None = None) -> list[dict[str, Any]]:
    r = conch.run("cron", "ls", "--json", env=env)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def runs_of(conch: Any, name: str) -> list[dict[str, Any]]:
    for j in ls(conch):
        if j["name"] == name:
            return j["runs"]
    return []


def records(client: Client, prefix: str, name: str) -> dict[int, model.RunRecord]:
    """The run records of NAME straight from etcd (also after `cron rm`), by tick (µs), each
    with the output stored for it (under its own key)."""
    from dataclasses import replace

    d, o = keys.cron_runs_dir(prefix, name), keys.cron_output_dir(prefix, name)
    kvs, _ = client.get_range(d, keys.prefix_range_end(d))
    outputs = {keys.cron_tick(kv.key, o): kv.value.decode("utf-8", "replace")
               for kv in client.get_range(o, keys.prefix_range_end(o))[0]}  # fmt: skip
    return {
        keys.cron_tick(kv.key, d): replace(
            model.RunRecord.from_json(kv.value), output=outputs.get(keys.cron_tick(kv.key, d), "")
        )
        for kv in kvs
    }


def add(conch: Any, name: str, schedule: str, *args: str) -> None:
    i = args.index("--") if "--" in args else len(args)
    r = conch.run("cron", "add", name, "--schedule", schedule, *args[:i], *args[i:])
    assert r.returncode == 0, r.stderr


def no_error(log: str) -> None:
    assert "Traceback" not in log and "internal error" not in log, log


# ---------------------------------------------------------------------------------------


def test_three_daemons_run_each_tick_exactly_once(conch, daemons, tmp_path, client, prefix):
    # --overlap allow: on a loaded machine a run can outlast its second, and with the default
    # (forbid) the next tick is then rightly `skipped` — this test is about "exactly once"
    out = tmp_path / "ticks"
    add(
        conch,
        "every",
        "@every 1s",
        "--overlap",
        "allow",
        "--",
        SH,
        "-c",
        f'echo "$CONCH_TICK $CONCH_REV $CONCH_JOB" >> {out}',
    )
    for i in range(3):
        daemons.start(f"d{i}", "--ttl", "3s")

    def enough() -> bool:
        return sum(r["status"] == "ok" for r in runs_of(conch, "every")) >= 6

    wait_for(enough, timeout=60, interval=0.3, what="6 results")
    for i in range(3):
        assert daemons.stop(f"d{i}") == 128 + signal.SIGTERM
        no_error(daemons.log(f"d{i}"))

    doc = ls(conch)
    (job,) = doc
    assert set(job) >= JOB_FIELDS
    assert job["name"] == "every" and job["schedule"] == "@every 1s" and job["tz"] == "UTC"
    assert job["cmd"][:2] == [SH, "-c"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", job["next_tick"])
    # the ticks between the add and the daemons' first claim (they start after the add, and
    # settle their clocks first) were claimed by nobody: recorded missed (issue 10), oldest
    # first; every tick from the first run on is run
    runs = job["runs"]
    first_run = max(i for i, r in enumerate(runs) if r["status"] != "missed")
    assert all(r["status"] == "missed" and r["exit_code"] is None for r in runs[first_run + 1 :])
    runs = runs[: first_run + 1]
    assert [r["tick"] for r in runs] == sorted((r["tick"] for r in runs), reverse=True)
    for r in runs:
        assert set(r) >= RUN_FIELDS
        assert r["status"] == "ok" and r["exit_code"] == 0, r
        assert r["host"] and r["started"].endswith("Z") and r["finished"].endswith("Z")
        assert ts(r["started"]) <= ts(r["finished"])
        assert ts(r["started"]) >= ts(r["tick"]) - 0.001  # never before its tick
    # every tick ran exactly once: one child per tick (the file), one record per tick (etcd)
    lines = [ln.split() for ln in read(out).splitlines()]
    ran = [t for t, _rev, _job in lines]
    assert len(ran) == len(set(ran)), f"a tick ran twice: {ran}"
    recs = records(client, prefix, "every")
    missed = {t for t, r in recs.items() if r.status == "missed"}
    assert all(t < min(set(recs) - missed) for t in missed)
    recs = {t: r for t, r in recs.items() if t not in missed}
    assert sorted(ran) == sorted(model.format_tick(us) for us in recs)
    for t, rev, jobname in lines:
        (rec,) = [r for us, r in recs.items() if model.format_tick(us) == t]
        assert int(rev) == rec.rev and jobname == "every"
    # no tick between the first and the last one was dropped by three daemons
    ticks = sorted(recs)
    assert ticks == list(range(ticks[0], ticks[-1] + 1, 1_000_000)), ticks
    # the claims were contended: revisions of claims strictly increase with the ticks
    revs = [recs[t].rev for t in ticks]
    assert revs == sorted(revs) and len(set(revs)) == len(revs)


def test_killed_winner_leaves_a_lost_tick_that_is_never_rerun(
    conch, daemons, tmp_path, client, prefix
):
    started, slow_pid = tmp_path / "started", tmp_path / "slow_pid"
    once = tmp_path / "once"
    script = (
        f"echo $CONCH_TICK >> {started}; "
        f"if [ ! -e {once} ]; then touch {once}; echo $$ > {slow_pid}; exec sleep 120; fi"
    )
    add(conch, "slow", "@every 1s", "--", SH, "-c", script)
    a = daemons.start("a", "--ttl", "2s")
    b = daemons.start("b", "--ttl", "2s")
    pid = int(wait_for(lambda: read(slow_pid).strip(), timeout=60, what="the slow run"))
    (tick,) = read(started).split()
    winner = wait_for(
        lambda: next((r["daemon"] for r in runs_of(conch, "slow") if r["tick"] == tick), None),
        timeout=30,
        what="the slow run's record",
    )
    survivor = "b" if winner == "a" else "a"
    daemons.stop(winner, signal.SIGKILL)
    t_kill = time.monotonic()
    # the watchdog kills the dead daemon's child group
    wait_for(lambda: pid_gone(pid), timeout=10, what="the orphaned run killed")

    def lost() -> dict[str, Any] | None:
        return next(
            (r for r in runs_of(conch, "slow") if r["tick"] == tick and r["status"] == "lost"),
            None,
        )

    rec = wait_for(lost, timeout=30, interval=0.2, what="the tick shown as lost")
    assert time.monotonic() - t_kill > 1.0  # not before the dead daemon's lease could expire
    assert rec["exit_code"] is None and rec["finished"] is None and rec["host"]
    # the survivor goes on with later ticks, and never reruns the claimed one
    wait_for(
        lambda: sum(r["status"] == "ok" for r in runs_of(conch, "slow")) >= 2,
        timeout=30,
        what="two later runs",
    )
    ran = read(started).split()
    assert ran.count(tick) == 1, ran
    assert len(ran) == len(set(ran))
    recs = records(client, prefix, "slow")
    (lost_rec,) = [r for us, r in recs.items() if model.format_tick(us) == tick]
    assert lost_rec.status == "running" and lost_rec.daemon == winner  # no result, ever
    assert conch.run("cron", "ls").returncode == 0
    assert (b if survivor == "b" else a).poll() is None
    no_error(daemons.log(survivor))


def test_rm_during_a_run_lets_it_finish_and_records_the_result(
    conch, daemons, tmp_path, client, prefix
):
    started, release = tmp_path / "started", tmp_path / "release"
    script = (
        f"echo $CONCH_TICK >> {started}; "
        f"while [ ! -e {release} ]; do sleep 0.05; done; echo finished-$CONCH_TICK; exit 3"
    )
    add(conch, "rmjob", "@every 1s", "--", SH, "-c", script)
    daemons.start("d", "--ttl", "3s")
    tick = wait_for(lambda: read(started).strip(), timeout=60, what="the run")
    assert conch.run("cron", "rm", "rmjob").returncode == 0
    assert ls(conch) == []
    release.touch()

    def result() -> model.RunRecord | None:
        for us, rec in records(client, prefix, "rmjob").items():
            if model.format_tick(us) == tick and rec.status != "running":
                return rec
        return None

    rec = wait_for(result, timeout=30, what="the result of the run")
    assert rec.status == "failed" and rec.exit_code == 3
    assert f"finished-{tick}" in rec.output
    assert rec.started and rec.finished and rec.duration is not None and rec.rev > 0
    wait_for(lambda: f"[rmjob] finished-{tick}" in daemons.log("d"), what="the output logged")
    # nothing ran after the job was removed
    time_after = time.monotonic() + 2.5
    wait_for(lambda: time.monotonic() > time_after, timeout=5, what="two more ticks")
    assert read(started).split() == [tick]
    assert [model.format_tick(us) for us in records(client, prefix, "rmjob")] == [tick]
    # removing again: no such job (exit 1) -- and the leftover record is cleaned up
    r = conch.run("cron", "rm", "rmjob")
    assert r.returncode == 1 and "no cron job" in r.stderr
    assert records(client, prefix, "rmjob") == {}
    no_error(daemons.log("d"))


def test_restarted_daemon_claims_no_tick_before_its_start(conch, daemons, tmp_path, client, prefix):
    add(conch, "rs", "@every 1s", "--", "true")
    daemons.start("first", "--ttl", "3s")
    wait_for(
        lambda: sum(r["status"] == "ok" for r in runs_of(conch, "rs")) >= 2,
        timeout=60,
        what="two runs",
    )
    assert daemons.stop("first") == 128 + signal.SIGTERM
    t_stop = time.time()
    before = set(records(client, prefix, "rs"))
    wait_for(lambda: time.time() > t_stop + 3.0, timeout=10, what="three ticks to pass")
    t_start = time.time()
    daemons.start("second", "--ttl", "3s")
    wait_for(lambda: len(records(client, prefix, "rs")) >= len(before) + 2, timeout=60,
             what="two runs by the restarted daemon")  # fmt: skip
    after = records(client, prefix, "rs")
    new = sorted(us for us in set(after) - before if after[us].status != "missed")
    assert new and all(us / 1e6 >= t_start for us in new), (t_start, new)
    assert all(after[us].daemon == "second" for us in set(after) - before)
    # the ticks while no daemon ran were not run: recorded missed (issue 10), by `second`
    gap = [us for us in after if t_stop < us / 1e6 < t_start]
    assert len(gap) >= 2 and all(after[us].status == "missed" for us in gap), gap
    no_error(daemons.log("second"))


def test_overlap_forbid_skips_and_allow_overlaps(conch, daemons, tmp_path):
    script = "sleep 2.5"
    add(conch, "forbid", "@every 1s", "--", SH, "-c", script)
    add(conch, "allow", "@every 1s", "--overlap", "allow", "--", SH, "-c", script)
    daemons.start("d", "--ttl", "3s")

    def forbid_done() -> bool:
        runs = runs_of(conch, "forbid")
        return sum(r["status"] == "ok" for r in runs) >= 2

    max_running = 0

    def allow_overlaps() -> bool:
        nonlocal max_running
        n = sum(r["status"] == "running" for r in runs_of(conch, "allow"))
        max_running = max(max_running, n)
        return max_running >= 2

    wait_for(allow_overlaps, timeout=60, interval=0.2, what="overlapping runs of 'allow'")
    wait_for(forbid_done, timeout=60, interval=0.3, what="two runs of 'forbid'")
    runs = sorted(runs_of(conch, "forbid"), key=lambda r: r["tick"])
    statuses = [r["status"] for r in runs]
    assert "skipped" in statuses
    done = [r for r in runs if r["status"] == "ok"]
    for prev, nxt in itertools.pairwise(done):  # never two runs at once
        assert ts(nxt["started"]) >= ts(prev["finished"]), (prev, nxt)
    for r in runs:
        if r["status"] == "skipped":
            assert r["exit_code"] is None and r["started"] is None and r["host"]
    allow = [r for r in runs_of(conch, "allow") if r["status"] in ("ok", "running")]
    assert not [r for r in runs_of(conch, "allow") if r["status"] == "skipped"]
    assert len(allow) >= 2
    no_error(daemons.log("d"))


def test_timeout_sigterm_then_sigkill_after_kill_after(conch, daemons, tmp_path):
    got = tmp_path / "got_term"
    stubborn = f"trap 'echo got-term; echo x >> {got}' TERM; while :; do sleep 0.05; done"
    add(conch, "stubborn", "@every 1s", "--timeout", "1s", "--kill-after", "1s", "--",
        SH, "-c", stubborn)  # fmt: skip
    add(conch, "meek", "@every 1s", "--timeout", "1s", "--", "sleep", "30")
    daemons.start("d", "--ttl", "3s")

    def first_result(name: str) -> dict[str, Any] | None:
        done = [r for r in runs_of(conch, name) if r["status"] in ("ok", "failed")]
        return done[-1] if done else None

    s = wait_for(lambda: first_result("stubborn"), timeout=60, interval=0.3, what="stubborn")
    m = wait_for(lambda: first_result("meek"), timeout=60, interval=0.3, what="meek")
    assert s["status"] == "failed" and s["exit_code"] == 128 + signal.SIGKILL, s
    assert s["timed_out"] is True
    assert 2.0 <= s["duration"] < 6.0  # --timeout 1s, then --kill-after 1s
    assert read(got)  # SIGTERM came first
    assert m["status"] == "failed" and m["exit_code"] == 128 + signal.SIGTERM, m
    assert 1.0 <= m["duration"] < 4.0
    no_error(daemons.log("d"))


def test_usage_errors_write_nothing(conch, etcdctl, prefix):
    bad = [
        ("add", "j", "--schedule", "@every 0s", "--", "true"),
        ("add", "j", "--schedule", "61 * * * *", "--", "true"),
        ("add", "j", "--schedule", "H(5-2) * * * *", "--", "true"),
        ("add", "j", "--schedule", "@daily", "--history", "0", "--", "true"),
        ("add", "j", "--schedule", "@daily", "--history", "1001", "--", "true"),
        ("add", "j", "--schedule", "@daily", "--history", "ten", "--", "true"),
        ("add", "j", "--schedule", "@daily", "--retries", "-1", "--", "true"),
        ("add", "j", "--schedule", "@daily", "--retries", "101", "--", "true"),
        ("add", "j", "--schedule", "@daily", "--retry-delay", "soon", "--", "true"),
        ("add", "j", "--schedule", "* * * *", "--", "true"),
        ("add", "j", "--schedule", "@daily", "--tz", "Mars/Olympus", "--", "true"),
        ("add", "j", "--schedule", "@daily", "--timeout", "soon", "--", "true"),
        ("add", "j", "--schedule", "@daily", "--timeout", "0", "--", "true"),
        ("add", "j", "--schedule", "@daily", "--kill-after", "-1s", "--", "true"),
        ("add", "j", "--schedule", "@daily", "--overlap", "sometimes", "--", "true"),
        ("add", "j", "--schedule", "@daily"),
        ("add", "j", "--", "true"),
        ("add", "", "--schedule", "@daily", "--", "true"),
        ("add", "x" * 129, "--schedule", "@daily", "--", "true"),
        ("add", "a\tb", "--schedule", "@daily", "--", "true"),
        ("rm", ""),
        ("ls", "--bogus"),
    ]
    for args in bad:
        r = conch.run("cron", *args)
        assert r.returncode == 2, (args, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("conch: error: "), (args, r.stderr)
    assert etcdctl("get", "--prefix", "--keys-only", prefix).strip() == ""
    r = conch.run("cron", "rm", "nosuch")
    assert r.returncode == 1 and "no cron job 'nosuch'" in r.stderr
    assert conch.run("cron", "ls").stdout.splitlines()[0].startswith("NAME")
    assert ls(conch) == []


def test_conchd_usage_errors(conch_env):
    for args in (["--ttl", "0"], ["--ttl", "soon"], ["--metrics-addr", "nope"],
                 ["--metrics-addr", "127.0.0.1:99999"], ["--id", "a\nb"], ["--bogus"]):  # fmt: skip
        r = subprocess.run([*CONCHD, *args], env=conch_env, capture_output=True, text=True,
                           timeout=30)  # fmt: skip
        assert r.returncode == 2, (args, r.stderr)
        assert r.stderr.startswith("conchd: error: ") and len(r.stderr.splitlines()) == 1


def test_add_existing_refused_replace_is_picked_up_without_restart(
    conch, daemons, tmp_path, prefix
):
    v1, v2 = tmp_path / "v1", tmp_path / "v2"
    add(conch, "job", "@every 1s", "--", "touch", str(v1))
    r = conch.run("cron", "add", "job", "--schedule", "@every 2s", "--", "touch", str(v2))
    assert r.returncode == 1 and "already exists" in r.stderr
    (j,) = ls(conch)
    assert j["schedule"] == "@every 1s" and j["cmd"] == ["touch", str(v1)]
    d = daemons.start("d", "--ttl", "3s")
    wait_for(v1.exists, timeout=60, what="v1 ran")
    r = conch.run("cron", "add", "job", "--replace", "--schedule", "@every 2s", "--tz",
                  "Europe/Berlin", "--", "touch", str(v2))  # fmt: skip
    assert r.returncode == 0, r.stderr
    (j,) = ls(conch)
    assert (j["schedule"], j["tz"], j["cmd"]) == ("@every 2s", "Europe/Berlin", ["touch", str(v2)])
    wait_for(v2.exists, timeout=30, what="the changed job ran")
    assert d.poll() is None
    log = daemons.log("d")
    assert "job 'job' changed" in log
    # global options before `cron` or before `ls` beat the environment
    other = {"CONCH_PREFIX": "/elsewhere/"}
    for args in (("--prefix", prefix, "cron", "ls", "--json"),
                 ("cron", "--prefix", prefix, "ls", "--json"),
                 ("cron", "ls", "--prefix", prefix, "--json")):  # fmt: skip
        r = conch.run(*args, env=other)
        assert r.returncode == 0 and [j["name"] for j in json.loads(r.stdout)] == ["job"], args
    assert json.loads(conch.run("cron", "ls", "--json", env=other).stdout) == []
    # --replace also creates
    assert (
        conch.run(
            "cron", "add", "new", "--replace", "--schedule", "@daily", "--", "true"
        ).returncode
        == 0
    )
    assert [j["name"] for j in ls(conch)] == ["job", "new"]
    # a removed job stops running
    assert conch.run("cron", "rm", "job").returncode == 0
    wait_for(lambda: "job 'job' removed" in daemons.log("d"), timeout=30, what="removal seen")
    no_error(daemons.log("d"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_metrics(conch, daemons):
    add(conch, "m", "@every 1s", "--", "true")
    port = _free_port()
    daemons.start("d", "--ttl", "3s", "--metrics-addr", f"127.0.0.1:{port}")
    wait_for(lambda: any(r["status"] == "ok" for r in runs_of(conch, "m")), timeout=60,
             what="a run")  # fmt: skip

    def scrape() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            return resp.read().decode()

    def has_run() -> str | None:
        text = scrape()
        return text if 'conchd_runs_total{job="m",outcome="ok"}' in text else None

    text = wait_for(has_run, timeout=30, what="metrics of the run")

    def value(line_start: str) -> float:
        (v,) = [ln.split()[-1] for ln in text.splitlines() if ln.startswith(line_start + " ")]
        return float(v)

    assert value('conchd_claims_total{job="m",result="won"}') >= 1
    assert value('conchd_runs_total{job="m",outcome="ok"}') >= 1
    assert value('conchd_tick_lag_seconds_count{job="m"}') >= 1
    assert value('conchd_run_duration_seconds_count{job="m"}') >= 1
    assert value("conchd_session_up") == 1
    no_error(daemons.log("d"))


def test_sigterm_to_conchd_forwards_to_runs_records_and_exits_143(conch, daemons, tmp_path):
    ready_p, ready_s = tmp_path / "ready_p", tmp_path / "ready_s"
    polite = f"trap 'echo bye; exit 5' TERM; touch {ready_p}; while :; do sleep 0.05; done"
    stubborn = f"trap 'echo ignored' TERM; touch {ready_s}; while :; do sleep 0.05; done"
    add(conch, "polite", "@every 1s", "--", SH, "-c", polite)
    add(conch, "stubborn", "@every 1s", "--kill-after", "1s", "--", SH, "-c", stubborn)
    d = daemons.start("d", "--ttl", "3s")
    wait_for(lambda: ready_p.exists() and ready_s.exists(), timeout=60, what="both running")
    t0 = time.monotonic()
    assert daemons.stop("d") == 128 + signal.SIGTERM
    assert time.monotonic() - t0 < 10
    assert d.returncode == 143
    done = {}
    for name in ("polite", "stubborn"):
        (r,) = [r for r in runs_of(conch, name) if r["status"] not in ("skipped", "missed")]
        done[name] = r
    assert done["polite"]["status"] == "failed" and done["polite"]["exit_code"] == 5
    assert done["stubborn"]["status"] == "failed"
    assert done["stubborn"]["exit_code"] == 128 + signal.SIGKILL
    assert done["stubborn"]["duration"] >= 1.0  # SIGKILL only after its --kill-after
    log = daemons.log("d")
    assert "[polite] bye" in log and "[stubborn] ignored" in log and "stopped" in log
    no_error(log)


def test_daemon_survives_an_etcd_outage(conch_cmd, tmp_path, prefix):
    """etcd stops for longer than the daemon's TTL: the running child is not touched, the
    daemon gets a new lease when etcd is back, puts its run's alive marker back (running, not
    lost), records the result, and goes on claiming."""
    cluster = LocalCluster(nodes=1).start()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONCH_", "ETCDCTL_"))}
    env.update(CONCH_ENDPOINTS=cluster.endpoints_csv, CONCH_PREFIX=prefix)
    d = Daemons(env, tmp_path)
    out, started, release = tmp_path / "ticks", tmp_path / "started", tmp_path / "release"
    long_run = f"echo $CONCH_TICK > {started}; while [ ! -e {release} ]; do sleep 0.05; done"

    def conch(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*conch_cmd, *args], env=env, capture_output=True, text=True,
                              timeout=30)  # fmt: skip

    def status(name: str, tick: str) -> str | None:
        r = conch("cron", "ls", "--json")
        assert r.returncode == 0, r.stderr
        for j in json.loads(r.stdout):
            for run in j["runs"] if j["name"] == name else []:
                if run["tick"] == tick:
                    return str(run["status"])
        return None

    try:
        r = conch("cron", "add", "o", "--schedule", "@every 1s", "--", SH, "-c",
                  f"echo $CONCH_TICK >> {out}")  # fmt: skip
        assert r.returncode == 0, r.stderr
        r = conch("cron", "add", "long", "--schedule", "@every 1s", "--", SH, "-c", long_run)
        assert r.returncode == 0, r.stderr
        p = d.start("d", "--ttl", "2s")
        wait_for(lambda: len(read(out).split()) >= 2, timeout=60, what="runs")
        tick = wait_for(lambda: read(started).strip(), timeout=30, what="the long run")
        assert wait_for(lambda: status("long", tick) == "running", timeout=30, what="running")
        m = cluster.member(0)
        cluster.stop_member(m)
        wait_for(lambda: "lost" in d.log("d"), timeout=30, what="the lease lost")
        n = len(read(out).split())
        cluster.restart_member(m)
        wait_for(lambda: "alive again" in d.log("d"), timeout=60, what="the marker put back")
        assert status("long", tick) == "running"  # not lost: its daemon vouches for it again
        release.touch()
        wait_for(lambda: status("long", tick) == "ok", timeout=30, what="the result")
        wait_for(lambda: len(read(out).split()) >= n + 2, timeout=60, what="runs after")
        assert p.poll() is None
        ran = read(out).split()
        assert len(ran) == len(set(ran))
        no_error(d.log("d"))
        assert d.stop("d") == 128 + signal.SIGTERM
    finally:
        d.cleanup()
        cluster.stop()


def test_pruning_keeps_the_newest_history_and_alive_runs_reading_keys_only(
    client: Client, prefix: str
) -> None:
    """store.prune_histories: 150 records (more than one transaction of deletes), one old run
    still alive: the newest HISTORY stay, and the alive one; a second job in the same read
    keeps its own --history (5)."""
    from conch.cron import store

    ticks = [(1_000 + k) * 1_000_000 for k in range(150)]
    for t in ticks:
        client.put(keys.cron_run_key(prefix, "p", t), b'{"status":"ok","output":"x"}')
    client.put(keys.cron_alive_key(prefix, "p", ticks[3]), b"d1")
    for t in ticks[:30]:  # a second job, read in the same transaction
        client.put(keys.cron_run_key(prefix, "q", t), b'{"status":"ok"}')
        client.put(keys.cron_output_key(prefix, "q", t), b"out")
    jobs = [("p", model.HISTORY), ("q", 5)]
    assert store.prune_histories(client, prefix, jobs) == 150 - model.HISTORY - 1 + 25
    d = keys.cron_runs_dir(prefix, "p")
    left = [keys.cron_tick(kv.key, d) for kv in client.get_range(d, keys.prefix_range_end(d))[0]]
    assert left == [ticks[3], *ticks[-model.HISTORY :]]
    d = keys.cron_runs_dir(prefix, "q")
    left = [keys.cron_tick(kv.key, d) for kv in client.get_range(d, keys.prefix_range_end(d))[0]]
    assert left == ticks[25:30]
    o = keys.cron_output_dir(prefix, "q")  # the outputs go with their records
    left = [keys.cron_tick(kv.key, o) for kv in client.get_range(o, keys.prefix_range_end(o))[0]]
    assert left == ticks[25:30]
    assert store.prune_history(client, prefix, "p") == 0


def test_listing_reads_a_page_of_jobs_at_a_time_at_one_revision(
    client: Client, prefix: str
) -> None:
    """store.scan_jobs: every job once, by name, with its own runs and alive markers (names
    where one is the start of another included), read `page` jobs at a time — and all as of
    the first read: what changes while it reads is not seen."""
    from conch.cron import store

    names = sorted({f"job{i:03d}" for i in range(40)} | {"a", "a-b", "a/b", "a.b"})
    for n in names:
        job = model.Job(n, "@every 1h", "UTC", ("true",))
        client.put(keys.cron_job_key(prefix, n), job.to_json())
        for t in (1, 2):
            rec = model.RunRecord(str(t), model.RunStatus.OK, "d", "h", n)  # claim: the name
            client.put(keys.cron_run_key(prefix, n, t * 1_000_000), rec.to_json())
    client.put(keys.cron_alive_key(prefix, "a", 2_000_000), b"d")
    scan = store.scan_jobs(client, prefix, page=7)
    first = next(scan)
    client.put(keys.cron_job_key(prefix, "zzz"), b"{}")  # after the first read: not seen
    client.delete(keys.cron_run_key(prefix, "job039", 1_000_000))
    views = [first, *scan]
    # by name as their keys sort: byte order, a name's escaped characters by their encoding
    assert [v.name for v in views] == sorted(names, key=keys.encode_name)
    for v in views:
        assert set(v.runs) == {1_000_000, 2_000_000}, v.name
        assert {r.claim for r in v.runs.values()} == {v.name}
        assert v.alive == ({2_000_000} if v.name == "a" else set())


def test_claims_go_123_to_a_transaction_and_judge_forbid_inside_it(
    client: Client, prefix: str
) -> None:
    """store.claim_many: a full batch of --overlap forbid jobs (the most etcd's --max-txn-ops
    allows with the check nested); a job with a run alive is SKIPPED — judged in the claim's
    own transaction — and one claimed again is TAKEN."""
    from conch.cron import store

    n = store.CLAIMS_PER_TXN
    wants = []
    for i in range(n):
        job = model.Job(f"f{i:03d}", "@every 1h", "UTC", ("true",), overlap="forbid")
        rev = client.put(keys.cron_job_key(prefix, job.name), job.to_json())
        client.put(keys.cron_mark_key(prefix, job.name), b"")
        wants.append(store.ClaimRequest(job, rev, 7_000_000))
    client.put(keys.cron_alive_key(prefix, "f005", 6_000_000), b"other")  # a run still alive
    kw = {"daemon": "d", "claim_id": "me", "host": "h", "lease": 0, "now": "t"}
    claims = store.claim_many(client, prefix, wants, **kw)
    outcomes = [c.outcome for c in claims]
    assert outcomes[5] is store.ClaimOutcome.SKIPPED
    assert "tick 1970-01-01T00:00:06Z" in claims[5].record.reason  # named in the log
    assert outcomes[:5] + outcomes[6:] == [store.ClaimOutcome.WON] * (n - 1)
    assert len({c.revision for c in claims}) == 1  # one transaction
    stored = records(client, prefix, "f005")[7_000_000]
    assert stored.status == "skipped" and stored.started is None
    assert client.get(keys.cron_alive_key(prefix, "f005", 7_000_000))[0] is None
    assert client.get(keys.cron_alive_key(prefix, "f006", 7_000_000))[0] is not None
    # the next tick of a job whose run (just claimed) is alive: skipped, by another daemon
    later = store.ClaimRequest(wants[6].job, wants[6].job_rev, 8_000_000)
    [c] = store.claim_many(client, prefix, [later], **{**kw, "claim_id": "other"})
    assert c.outcome is store.ClaimOutcome.SKIPPED
    [c] = store.claim_many(client, prefix, [wants[7]], **{**kw, "claim_id": "other"})
    assert c.outcome is store.ClaimOutcome.TAKEN


def test_other_daemons_shares_are_peeked_at_before_they_are_claimed(
    client: Client, prefix: str, monkeypatch: Any
) -> None:
    """Claimer: ticks of jobs that are another daemon's share (rank > 0) and that their owner
    claimed in time are read (keys only) and dropped as taken, not claimed (a failed claim
    costs etcd and conchd several times more); the others are claimed and run — and so is a
    tick this daemon may have claimed itself with the answer lost (`unsure`): the claim
    recognises its own."""
    import threading
    from datetime import UTC, timedelta

    from conch.cron import store
    from conch.cron.claimer import Claimer
    from conch.cron.metrics import NoMetrics
    from conch.cron.scheduler import JobState
    from conch.cron.share import rank
    from conch.session import Session

    peers = frozenset({"me", "other", "third"})
    names = [n for n in (f"j{i:03d}" for i in range(100)) if rank("me", peers, n) > 0][:6]
    started: list[str] = []
    claimer = Claimer(client, prefix, "me", "h", NoMetrics(), time.time,
                      start_run=lambda job, tick, c, lease: started.append(job.name),
                      on_recorded=lambda job: None)  # fmt: skip
    now = datetime.now(UTC)
    states = {}
    for name in names:
        job = model.Job(name, "@every 1h", "UTC", ("true",))
        rev = client.put(keys.cron_job_key(prefix, name), job.to_json())
        client.put(keys.cron_mark_key(prefix, name), b"")
        st = JobState.start(job, rev, now - timedelta(hours=1))
        states[name] = st
    tick = model.tick_of(states[names[0]].due)
    kw = {"daemon": "x", "host": "h", "lease": 0, "now": "t"}

    def claim(name: str, claim_id: str) -> None:
        st = states[name]
        [c] = store.claim_many(client, prefix, [store.ClaimRequest(st.job, st.rev, tick)],
                               claim_id=claim_id, **kw)  # fmt: skip
        assert c.outcome is store.ClaimOutcome.WON

    claim(names[0], "another daemon")
    claim(names[1], "another daemon")
    claim(names[2], claimer.claim_id)  # ours, the answer lost:
    states[names[2]].unsure.add(tick)
    sent: list[str] = []
    real = store.claim_many

    def claim_many(client: Client, prefix: str, wants: Any, **kw: Any) -> Any:
        sent.extend(w.job.name for w in wants)
        return real(client, prefix, wants, **kw)

    monkeypatch.setattr(store, "claim_many", claim_many)
    session = Session(client, 10).open()
    try:
        claimer.claim_due(states, session, threading.Event(), peers - {"me"})
    finally:
        session.close()
    assert all(states[n].rank > 0 for n in names)
    assert sorted(sent) == sorted(names[2:])  # the taken two were only read
    assert sorted(started) == sorted(names[2:])
    assert all(model.tick_of(st.due) > tick for st in states.values())  # all decided


def test_h_schedules_resolve_per_job_and_ls_shows_them(conch):
    """`H` takes a value from the job's name: jobs written alike get their own minutes, `ls`
    shows the resolved expression and the next tick the daemons will claim follows it."""
    from conch.schedule import resolve_h

    names = [f"spread-{i}" for i in range(8)]
    for name in names:
        add(conch, name, "H(0-59) * * * *", "--", "true")
    add(conch, "every", "@every 1h", "--", "true")
    jobs = {j["name"]: j for j in ls(conch)}
    minutes = set()
    for name in names:
        j = jobs[name]
        resolved = resolve_h("H(0-59) * * * *", name)
        assert j["schedule"] == "H(0-59) * * * *" and j["resolved_schedule"] == resolved
        minute = int(resolved.split()[0])
        assert datetime.fromisoformat(j["next_tick"].replace("Z", "+00:00")).minute == minute
        minutes.add(minute)
    assert len(minutes) > 1  # spread (8 names on one minute: 60**-7)
    assert jobs["every"]["resolved_schedule"] == "@every 1h"
    table = conch.run("cron", "ls").stdout
    assert f"H(0-59) * * * * = {resolve_h('H(0-59) * * * *', names[0])}" in table
    r = conch.run("cron", "add", "bad", "--schedule", "H(0-99) * * * *", "--", "true")
    assert r.returncode == 2 and "H(0-99)" in r.stderr and "Traceback" not in r.stderr


def test_suspend_across_ticks_then_resume_claims_no_past_tick(conch, daemons, client, prefix):
    """A suspended job is never claimed (two daemons, several ticks); `ls` shows it; resume
    claims from the next tick on, never one that passed while it was suspended."""
    add(conch, "s", "@every 1s", "--overlap", "allow", "--", "true")
    for i in range(2):
        daemons.start(f"d{i}", "--ttl", "3s")
    wait_for(lambda: records(client, prefix, "s"), timeout=60, what="a first run")
    r = conch.run("cron", "suspend", "s")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    suspended_at = time.time()
    (j,) = ls(conch)
    assert j["suspended"] is True and j["next_tick"] is None
    assert "suspended" in conch.run("cron", "ls").stdout
    assert conch.run("cron", "suspend", "s").returncode == 0  # already: done
    # three ticks pass: none is claimed (a claim is guarded by the definition it was
    # scheduled from, so none commits after the suspend did)
    wait_for(lambda: time.time() > suspended_at + 3.5, timeout=10, what="3 ticks to pass")
    assert max(records(client, prefix, "s")) / 1e6 <= suspended_at
    resumed_at = time.time()
    assert conch.run("cron", "resume", "s").returncode == 0
    wait_for(lambda: max(records(client, prefix, "s")) / 1e6 > resumed_at, timeout=30,
             what="a run after the resume")  # fmt: skip
    ticks = [t / 1e6 for t in records(client, prefix, "s")]
    assert not [t for t in ticks if suspended_at < t <= resumed_at], ticks  # no past tick
    (j,) = ls(conch)
    assert j["suspended"] is False and j["next_tick"] is not None
    for i in range(2):
        log = daemons.log(f"d{i}")
        assert "job 's' suspended: not claimed until resumed" in log
        no_error(log)


def test_suspend_or_resume_of_no_job_exits_1_and_writes_nothing(conch, etcdctl, prefix):
    for verb in ("suspend", "resume"):
        r = conch.run("cron", verb, "nosuch")
        assert r.returncode == 1 and r.stderr.strip() == "conch: error: no cron job 'nosuch'"
    r = conch.run("cron", "suspend", "")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert etcdctl("get", "--prefix", prefix, "--keys-only").strip() == ""


def test_history_keeps_the_newest_n_results_of_the_job(conch, daemons, client, prefix):
    """--history 2: the daemons prune the job's records down to its newest 2 after each tick
    they win (a run in progress is never pruned); another job keeps the default."""
    add(conch, "short", "@every 1s", "--history", "2", "--overlap", "allow", "--", "true")
    daemons.start("d")
    seen: set[int] = set()

    def pruned() -> bool:
        recs = records(client, prefix, "short")
        seen.update(recs)
        return len(seen) >= 5 and len(recs) <= 2

    wait_for(pruned, timeout=60, interval=0.05, what="5 ticks run and 2 results kept")
    (j,) = ls(conch)
    assert j["history"] == 2
    assert "history 2" in conch.run("cron", "show", "short").stdout
    no_error(daemons.log("d"))


def test_jobs_on_labels_run_only_on_daemons_with_them(conch, daemons, client, prefix):
    """--on role=db: only the daemon started --label role=db claims it (two daemons, several
    ticks); a job without --on runs on either; `ls` warns (stderr) about a job no live daemon
    may claim, and nothing claims it."""
    add(conch, "db", "@every 1s", "--on", "role=db", "--", "true")
    add(conch, "any", "@every 1s", "--", "true")
    add(conch, "nowhere", "@every 1s", "--on", "role=nope", "--", "true")
    daemons.start("w", "--ttl", "3s", "--label", "role=web")
    daemons.start("d", "--ttl", "3s", "--label", "role=db", "--label", "zone=a")
    wait_for(lambda: len(records(client, prefix, "db")) >= 4, timeout=60, what="4 runs")
    assert {r.daemon for r in records(client, prefix, "db").values()} == {"d"}
    wait_for(lambda: records(client, prefix, "any"), timeout=30, what="a run of 'any'")
    r = conch.run("cron", "ls", "--json")
    assert r.returncode == 0
    jobs = {j["name"]: j for j in json.loads(r.stdout)}
    assert jobs["db"]["on"] == {"role": "db"} and jobs["any"]["on"] == {}
    assert r.stderr.strip() == ("conch: warning: job 'nowhere' runs only on a conchd with "
                                "--label role=nope; none is live")  # fmt: skip
    assert records(client, prefix, "nowhere") == {}
    assert "job 'db' is for daemons labelled role=db: not claimed here" in daemons.log("w")
    for d in ("w", "d"):
        no_error(daemons.log(d))


def test_bad_labels_are_usage_errors(conch, conch_env, etcdctl, prefix):
    r = conch.run("cron", "add", "j", "--schedule", "@daily", "--on", "role", "--", "true")
    assert r.returncode == 2 and "--on: use KEY=VALUE" in r.stderr
    assert etcdctl("get", "--prefix", prefix, "--keys-only").strip() == ""
    p = subprocess.run([sys.executable, "-m", "conch.cron.command", "--label", "x"],
                       env=conch_env, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert p.returncode == 2
    assert p.stderr.strip() == "conchd: error: --label: use KEY=VALUE, not 'x'"


def test_retries_run_a_failed_tick_again_with_conch_attempt(conch, daemons, client, prefix,
                                                           tmp_path):  # fmt: skip
    """--retries 2: attempts 1 and 2 fail, 3 succeeds — one record, ok, attempt 3, the two
    failed attempts kept; the child sees CONCH_ATTEMPT and the same CONCH_REV each time. With
    --retries 1 and a command that always fails: 2 attempts, then failed."""
    log, log2 = tmp_path / "attempts", tmp_path / "attempts2"
    script = f'echo "$CONCH_TICK $CONCH_ATTEMPT $CONCH_REV" >> {log}; [ "$CONCH_ATTEMPT" -ge 3 ]'
    add(conch, "flaky", "@every 2s", "--retries", "2", "--retry-delay", "0.2s", "--", SH, "-c",
        script)  # fmt: skip
    add(conch, "broken", "@every 2s", "--retries", "1", "--retry-delay", "0.1s", "--", SH, "-c",
        f'echo "$CONCH_ATTEMPT" >> {log2}; exit 4')  # fmt: skip
    daemons.start("d")

    def final(name: str) -> model.RunRecord | None:
        done = [r for _, r in sorted(records(client, prefix, name).items())
                if r.status in ("ok", "failed")]  # fmt: skip
        return done[0] if done else None

    rec = wait_for(lambda: final("flaky"), timeout=60, what="flaky's result")
    assert rec.status == "ok" and rec.exit_code == 0 and rec.attempt == 3, rec
    assert [a["attempt"] for a in rec.attempts] == [1, 2]
    assert [a["exit_code"] for a in rec.attempts] == [1, 1]
    lines = [ln.split() for ln in read(log).splitlines()]
    first = [ln for ln in lines if ln[0] == rec.tick]
    assert [ln[1] for ln in first] == ["1", "2", "3"] and len({ln[2] for ln in first}) == 1
    assert int(first[0][2]) == rec.rev
    bad = wait_for(lambda: final("broken"), timeout=60, what="broken's result")
    assert bad.status == "failed" and bad.exit_code == 4 and bad.attempt == 2, bad
    assert [a["exit_code"] for a in bad.attempts] == [4]
    (j,) = [j for j in ls(conch) if j["name"] == "flaky"]
    assert j["retries"] == 2 and j["retry_delay"] == 0.2
    no_error(daemons.log("d"))


def test_a_conchd_stopping_between_attempts_records_the_last_one(conch, daemons, client, prefix,
                                                                tmp_path):  # fmt: skip
    """SIGTERM while a run waits 30 s for its next attempt: conchd does not wait; the last
    attempt's record is the result (failed, attempt 1)."""
    log = tmp_path / "attempts"
    add(conch, "slowretry", "@every 2s", "--retries", "3", "--retry-delay", "30s", "--", SH,
        "-c", f'echo "$CONCH_ATTEMPT" >> {log}; exit 6')  # fmt: skip
    daemons.start("d")
    wait_for(lambda: log.exists() and read(log).strip() == "1", timeout=60, what="attempt 1")
    wait_for(lambda: "the next in 30s" in daemons.log("d"), timeout=10, what="the retry wait")
    t0 = time.monotonic()
    assert daemons.stop("d") == 128 + signal.SIGTERM
    assert time.monotonic() - t0 < 10
    # (a tick that fell during the wait is `skipped`: the run was still alive; those before
    # the daemon's first claim are `missed`)
    (rec,) = [r for r in records(client, prefix, "slowretry").values()
              if r.status not in ("skipped", "missed")]  # fmt: skip
    assert rec.status == "failed" and rec.exit_code == 6 and rec.attempt == 1, rec
    assert "conchd stopping: no more attempts" in daemons.log("d")
    assert read(log).split() == ["1"]
