"""conch cron and conchd under faults etcd alone cannot make (issue 7, items 1, 3, 8, 13):
claims whose answers are lost (the proxy of tests/faults), wall clocks that disagree (the
LD_PRELOAD shim), retried admin commands, a run cut short by --timeout."""

from __future__ import annotations

import calendar
import collections
import json
import time
from pathlib import Path
from typing import Any

from conftest import wait_for
from faults.shim import shim_env
from test_cron import SH, add, records, runs_of

from conch import keys


def lines(path: Path) -> list[str]:
    try:
        return path.read_text().split()
    except FileNotFoundError:
        return []


def next_tick(period: float, after: float) -> float:
    """The first tick of `@every period` at or after wall-clock time `after`."""
    return (int(after // period) + 1) * period


def wait_until(t: float) -> None:
    """Sleep until wall-clock time t (a schedule, not a wait for a condition)."""
    while (left := t - time.time()) > 0:
        time.sleep(min(left, 0.05))


def tick_us(t: float) -> int:
    return round(t) * 1_000_000


# -- item 1: a claim whose answer is lost ---------------------------------------------------------


def test_a_claim_whose_answer_is_lost_is_recognised_and_run_once(
    conch, daemons, tmp_path, client, prefix, etcd_proxy
):
    """The claim transaction commits, its answer is lost until the client gives up (5 s); the
    daemon retries the same tick: it must find its own claim and run the tick — not leave the
    record `running` forever with nothing running (and every later tick of a forbid job
    `skipped`)."""
    period = 6.0
    ticks = tmp_path / "ticks"
    add(conch, "lost-answer", f"@every {period:g}s", "--", SH, "-c",
        f"echo $CONCH_TICK >> {ticks}")  # fmt: skip
    daemons.start("d", env={"CONCH_ENDPOINTS": etcd_proxy.endpoint})
    wait_for(lambda: lines(ticks), timeout=30, what="a first tick")
    t = next_tick(period, time.time() + 1.5)
    wait_until(t - 1.0)  # the previous run's result and pruning are long done
    etcd_proxy.lose_answers("KV/Txn", 2)  # both attempts of the claim call (2.5 s each)
    wait_for(lambda: etcd_proxy.answers_lost == 2, timeout=15, what="the claim's answers lost")
    mine = keys.cron_run_key(prefix, "lost-answer", tick_us(t))
    assert client.get(mine)[0] is not None  # the claim committed all the same
    wait_for(lambda: len(lines(ticks)) >= 3, timeout=30, what="two more ticks")
    seen = collections.Counter(lines(ticks))
    assert seen[_rfc(t)] == 1, seen  # the tick whose answer was lost ran, once
    assert all(n == 1 for n in seen.values()), seen
    rec = wait_for(lambda: _done(records(client, prefix, "lost-answer").get(tick_us(t))),
                   timeout=20, what="its result")  # fmt: skip
    assert rec.status == "ok", rec


def test_claims_lost_past_the_next_tick_are_resolved_not_left_running(
    conch, daemons, tmp_path, client, prefix, etcd_proxy
):
    """Lost answers for two ticks in a row of an `@every 2s` job: the daemon moves on to the
    newest tick (it fell behind), and must still find out that the earlier claims were its
    own — and run them, late — instead of leaving them `running` with nothing running."""
    period = 2.0
    ticks = tmp_path / "ticks"
    add(conch, "behind", f"@every {period:g}s", "--overlap", "allow", "--", SH, "-c",
        f"echo $CONCH_TICK >> {ticks}")  # fmt: skip
    daemons.start("d", env={"CONCH_ENDPOINTS": etcd_proxy.endpoint})
    wait_for(lambda: lines(ticks), timeout=30, what="a first tick")
    t = next_tick(period, time.time() + 1.0)
    wait_until(t - 0.7)
    etcd_proxy.lose_answers("KV/Txn", 2)  # the claims of t and t + period
    wait_for(lambda: etcd_proxy.answers_lost == 2, timeout=15, what="two claims' answers lost")
    wanted = {_rfc(t), _rfc(t + period)}
    wait_for(lambda: wanted <= set(lines(ticks)), timeout=30, what="both ticks run late")
    seen = collections.Counter(lines(ticks))
    assert all(n == 1 for n in seen.values()), seen
    for tick in (t, t + period):
        rec = wait_for(
            lambda tick=tick: _done(records(client, prefix, "behind").get(tick_us(tick))),
            timeout=20, what="the results",
        )  # fmt: skip
        assert rec.status == "ok", rec


def _rfc(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(round(t)))


def _done(rec: Any) -> Any:
    return rec if rec is not None and rec.status in ("ok", "failed") else None


# -- item 8: admin commands whose answers are lost ------------------------------------------------


def test_cron_add_and_rm_whose_answers_are_lost_succeed(conch, etcd_proxy, client, prefix):
    """The first answer of `cron add`'s transaction is lost and the client retries: the retry
    finds exactly what it wrote, which is success — not "already exists". Likewise `cron rm`:
    not "no cron job"."""
    via = {"CONCH_ENDPOINTS": etcd_proxy.endpoint}
    etcd_proxy.lose_answers("KV/Txn", 1)
    r = conch.run("cron", "add", "retried", "--schedule", "@every 1h", "--", "true", env=via)
    assert etcd_proxy.answers_lost == 1
    assert r.returncode == 0, r.stderr
    assert client.get(keys.cron_job_key(prefix, "retried"))[0] is not None
    # a second add of the same name is still refused
    r = conch.run("cron", "add", "retried", "--schedule", "@every 1h", "--", "true")
    assert r.returncode == 1 and "already exists" in r.stderr
    etcd_proxy.lose_answers("KV/Txn", 1)
    r = conch.run("cron", "rm", "retried", env=via)
    assert etcd_proxy.answers_lost == 2
    assert r.returncode == 0, r.stderr
    assert client.get(keys.cron_job_key(prefix, "retried"))[0] is None
    r = conch.run("cron", "rm", "retried")  # now it is really gone
    assert r.returncode == 1 and "no cron job" in r.stderr


# -- item 13: a run cut short by --timeout is failed ----------------------------------------------


def test_a_timed_out_run_is_failed_even_if_the_child_exits_0(conch, daemons, tmp_path):
    got = tmp_path / "got_term"
    script = f"trap 'echo x >> {got}; exit 0' TERM; while :; do sleep 0.05; done"
    add(conch, "cut-short", "@every 1s", "--timeout", "1s", "--", SH, "-c", script)
    daemons.start("d")
    done = wait_for(lambda: [r for r in runs_of(conch, "cut-short")
                             if r["status"] in ("ok", "failed")],
                    timeout=30, interval=0.3, what="a result")  # fmt: skip
    r = done[-1]
    assert r["timed_out"] is True and r["exit_code"] == 0, r
    assert r["status"] == "failed", r
    assert got.exists()


# -- item 3: wall clocks that disagree ------------------------------------------------------------


def _skewed(faultshim_lib: Path, clock_control: Any, offset: float) -> dict[str, str]:
    clock_control.set_realtime_offset(offset)
    return shim_env(faultshim_lib, clock_control)


def _child(ticks: Path) -> list[str]:
    """A child that logs its tick and the true time (the shim's offset removed from its env,
    so `date` reads the real clock)."""
    return ["env", "-u", "LD_PRELOAD", SH, "-c", f'echo "$CONCH_TICK $(date +%s.%N)" >> {ticks}']


def _epoch(tick: str) -> float:
    return calendar.timegm(time.strptime(tick, "%Y-%m-%dT%H:%M:%SZ"))


def _runs(ticks: Path) -> list[tuple[str, float]]:
    out = []
    for line in ticks.read_text().splitlines() if ticks.exists() else []:
        tick, at = line.split()
        out.append((tick, float(at)))
    return out


def test_clocks_off_by_25s_either_way_run_no_tick_twice_nor_early(conch, daemons, tmp_path,
                                                                    faultshim_lib,
                                                                    tmp_path_factory):  # fmt: skip
    """Four daemons on one `@every 1s` job, one with its wall clock 25 s behind, one 25 s ahead.
    The lagging one must not claim ticks whose records history pruning already deleted (20
    kept: they would run twice); the leading one must claim no tick early once it has heard its
    peers; both say their clock is off."""
    from faults.shim import ClockControl

    ticks = tmp_path / "ticks"
    add(conch, "skew", "@every 1s", "--overlap", "allow", "--", *_child(ticks))
    daemons.start("a")
    daemons.start("b")
    wait_for(lambda: _runs(ticks), timeout=30, what="a first tick")
    clocks = tmp_path_factory.mktemp("clocks")
    late, early = ClockControl(clocks / "late"), ClockControl(clocks / "early")
    daemons.start("late", env=_skewed(faultshim_lib, late, -25.0))
    daemons.start("early", env=_skewed(faultshim_lib, early, 25.0))
    wait_for(lambda: len(_runs(ticks)) >= 32, timeout=90, interval=0.5, what="32 ticks")
    seen = collections.Counter(t for t, _ in _runs(ticks))
    assert all(n == 1 for n in seen.values()), [t for t, n in seen.items() if n > 1]
    for tick, at in _runs(ticks):
        assert at >= _epoch(tick) - 0.2, f"tick {tick} started {_epoch(tick) - at:.1f}s early"
    assert "behind" in daemons.log("late") and "clock" in daemons.log("late")
    assert "ahead" in daemons.log("early") and "clock" in daemons.log("early")


def test_a_skewed_daemon_whose_watch_hangs_at_start_claims_nothing_early(
    conch, daemons, tmp_path, faultshim_lib, clock_control, etcd, etcd_proxy, client, prefix
):
    """A daemon starts 20 s ahead while two peers beat, and its watch hangs right after it
    listed them (its first endpoint stops answering; its other calls fail over to the next
    one): hearing nobody within its settle time must not make it claim by its own clock —
    settling by time alone needs a watch that works (cron invariant seed 571656)."""
    ticks = tmp_path / "ticks"
    add(conch, "hung", "@every 1s", "--overlap", "allow", "--", *_child(ticks))
    daemons.start("a")
    daemons.start("b")
    wait_for(lambda: _runs(ticks), timeout=30, what="a first tick")
    env = _skewed(faultshim_lib, clock_control, 20.0)
    env["CONCH_ENDPOINTS"] = f"{etcd_proxy.endpoint},{etcd.endpoints_csv}"
    daemons.start("early", env=env)
    beat = keys.cron_daemon_key(prefix, "early")
    # its first beat follows the listing and the watch's creation (conchd Heartbeat.run)
    wait_for(lambda: client.get(beat)[0], timeout=30, interval=0.01, what="its first beat")
    etcd_proxy.hang()
    try:
        # its beats go on through the other endpoint; hold the hang for 4 of them (8 s, past
        # its 6 s settle time)
        wait_for(lambda: client.get(beat)[0].version >= 5, timeout=30, what="4 more beats")
    finally:
        etcd_proxy.pass_through()  # its watch reconnects and hears the peers
    wait_for(lambda: "ahead" in daemons.log("early"), timeout=30, what="it sees its clock ahead")
    n = len(_runs(ticks))
    wait_for(lambda: len(_runs(ticks)) >= n + 5, timeout=30, what="5 more ticks")
    seen = collections.Counter(t for t, _ in _runs(ticks))
    assert all(k == 1 for k in seen.values()), [t for t, k in seen.items() if k > 1]
    for tick, at in _runs(ticks):
        assert at >= _epoch(tick) - 0.2, f"tick {tick} started {_epoch(tick) - at:.1f}s early"


def test_rm_and_add_with_a_lagging_daemon_reruns_nothing(conch, daemons, tmp_path,
                                                         faultshim_lib, clock_control):  # fmt: skip
    """`cron rm` + `cron add` of the same name while a daemon lags 5 s behind the one that ran
    the job's ticks: rm deleted their records, and the new job's low-water mark (its add time)
    must keep the lagging daemon from claiming — and rerunning — the ticks of the last 5 s."""
    ticks = tmp_path / "ticks"
    cmd = ["@every 1s", "--overlap", "allow", "--", *_child(ticks)]
    add(conch, "again", *cmd)
    daemons.start("a")
    wait_for(lambda: len(_runs(ticks)) >= 7, timeout=40, what="7 ticks run by a")
    daemons.start("late", env=_skewed(faultshim_lib, clock_control, -5.0))
    n = len(_runs(ticks))
    wait_for(lambda: len(_runs(ticks)) >= n + 5, timeout=30, what="5 more ticks")
    assert conch.run("cron", "rm", "again").returncode == 0
    add(conch, "again", *cmd)
    n = len(_runs(ticks))
    wait_for(lambda: len(_runs(ticks)) >= n + 8, timeout=60, interval=0.5, what="8 more ticks")
    seen = collections.Counter(t for t, _ in _runs(ticks))
    assert all(k == 1 for k in seen.values()), [t for t, k in seen.items() if k > 1]


def test_heartbeat_keys_name_each_daemon(daemons, conch, client, prefix):
    daemons.start("a")
    d = keys.cron_daemons_dir(prefix)
    kvs = wait_for(lambda: client.get_range(d, keys.prefix_range_end(d))[0], what="a heartbeat")
    doc = json.loads(kvs[0].value)
    assert doc["id"] == "a" and abs(doc["time"] - time.time()) < 5 and kvs[0].lease


def test_a_replaced_job_never_reruns_a_tick_its_daemon_already_ran(conch, daemons, tmp_path,
                                                                   faultshim_lib,
                                                                   clock_control):  # fmt: skip
    """A daemon's clock jumps 5 s ahead (it claims ticks early), is stepped back, and the job is
    replaced with the same definition: the daemon's schedule comes back to ticks it already
    claimed — and ran — under its own claim id. It must not run them again. (Found by the cron
    invariant scenario.)"""
    ticks = tmp_path / "ticks"
    cmd = ["@every 1s", "--overlap", "allow", "--", *_child(ticks)]
    add(conch, "replaced", *cmd)
    daemons.start("a", "--ttl", "3s", env=shim_env(faultshim_lib, clock_control))
    wait_for(lambda: len(_runs(ticks)) >= 2, timeout=30, what="two ticks")
    clock_control.set_realtime_offset(5.0)
    n = len(_runs(ticks))
    wait_for(lambda: len(_runs(ticks)) >= n + 2, timeout=30, what="ticks run early")
    clock_control.set_realtime_offset(0.0)
    r = conch.run("cron", "add", "replaced", "--schedule", "@every 1s", "--replace",
                  "--overlap", "allow", "--", *_child(ticks))  # fmt: skip
    assert r.returncode == 0, r.stderr
    n = len(_runs(ticks))
    wait_for(lambda: len(_runs(ticks)) >= n + 8, timeout=40, what="8 more ticks")
    seen = collections.Counter(t for t, _ in _runs(ticks))
    assert all(k == 1 for k in seen.values()), [t for t, k in seen.items() if k > 1]


def test_rm_and_add_never_rerun_ticks_a_fast_clock_already_ran(conch, daemons, tmp_path,
                                                               faultshim_lib,
                                                               clock_control):  # fmt: skip
    """A daemon 6 s ahead runs ticks early; `cron rm` deletes their records (they are still in
    the future), the clock is fixed, the job is added again: its low-water mark must not go
    back below the ticks that already ran. (Found by the cron invariant scenario.)"""
    ticks = tmp_path / "ticks"
    cmd = ["@every 1s", "--", *_child(ticks)]
    add(conch, "again", *cmd)
    clock_control.set_realtime_offset(6.0)
    daemons.start("a", "--ttl", "3s", env=shim_env(faultshim_lib, clock_control))
    wait_for(lambda: len(_runs(ticks)) >= 3, timeout=30, what="three (early) ticks")
    assert conch.run("cron", "rm", "again").returncode == 0
    clock_control.set_realtime_offset(0.0)
    add(conch, "again", *cmd)
    t_add = time.time()
    wait_for(lambda: any(_epoch(t) >= t_add + 8 for t, _ in _runs(ticks)), timeout=40,
             what="the ticks past those run early")  # fmt: skip
    seen = collections.Counter(t for t, _ in _runs(ticks))
    assert all(k == 1 for k in seen.values()), [t for t, k in seen.items() if k > 1]
