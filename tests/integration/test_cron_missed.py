"""Missed ticks against a real etcd and real conchd processes: ticks nobody claimed are
recorded `missed` once a daemon can claim again (one record each, or one for a long gap), and
--starting-deadline records a late tick `missed` instead of running it."""

from __future__ import annotations

import time

from conftest import wait_for
from test_cron import SH, add, no_error, records, runs_of

from conch.cron import model

SECOND = 1_000_000


def test_ticks_nobody_claimed_are_recorded_missed_once_a_daemon_can(conch, daemons, client,
                                                                   prefix):  # fmt: skip
    """The only daemon stops for ~4 ticks: when it is back, every tick of the outage has one
    `missed` record (a gap over --history gets one record with its count), written by the
    daemon whose claim moved past them; every tick from the first on has exactly one record."""
    add(conch, "each", "@every 1s", "--overlap", "allow", "--", "true")
    add(conch, "gap", "@every 1s", "--history", "3", "--overlap", "allow", "--", "true")
    daemons.start("a", "--ttl", "3s")
    wait_for(lambda: len(records(client, prefix, "each")) >= 2, timeout=60, what="2 runs")
    assert daemons.stop("a") == 143
    stopped = time.time()
    wait_for(lambda: time.time() > stopped + 4.5, timeout=10, what="4 ticks to pass")
    daemons.start("b", "--ttl", "3s")
    restarted = time.time()

    def after_restart(name: str) -> bool:
        return any(t / 1e6 > restarted and r.status == "ok"
                   for t, r in records(client, prefix, name).items())  # fmt: skip

    wait_for(lambda: after_restart("each") and after_restart("gap"), timeout=60,
             what="runs after the restart")  # fmt: skip
    # stopped, so that what is read below stays: `gap` keeps 3 records, and 3 more runs would
    # prune its missed one (seen under pytest -n 3, when this test ran slowly)
    assert daemons.stop("b") == 143
    recs = records(client, prefix, "each")
    ticks = sorted(recs)
    assert ticks == list(range(ticks[0], ticks[-1] + 1, SECOND)), "a tick has no record"
    # (ticks between the add and daemon a's first claim are missed too: no daemon was up)
    missed = [t for t in ticks if recs[t].status == "missed" and t / 1e6 > stopped - 1]
    assert len(missed) >= 4, {model.format_tick(t): recs[t].status for t in ticks}
    assert all(recs[t].count == 1 and recs[t].daemon == "b" for t in missed), missed
    # (and those before b, starting, has settled its clock and claims)
    assert all(t / 1e6 < restarted + 10 for t in missed), (restarted, missed)
    assert "no daemon claimed it in time" in recs[missed[0]].reason
    # --history 3: the gap is one record: its first tick and how many
    gap = [r for r in records(client, prefix, "gap").values() if r.status == "missed"]
    assert len(gap) == 1 and gap[0].count >= 4, gap
    assert "ticks from this one to tick" in gap[0].reason
    shown = [r for r in runs_of(conch, "gap") if r["status"] == "missed"]
    assert shown and shown[0]["count"] == gap[0].count
    assert "missed*" in conch.run("cron", "ls").stdout
    for d in ("a", "b"):
        no_error(daemons.log(d))


def test_starting_deadline_records_a_late_tick_missed_instead_of_running_it(
    conch, daemons, client, prefix, tmp_path
):
    """--starting-deadline 1ms: no claim starts its child within a millisecond of the tick,
    so every tick is recorded missed and nothing runs; a job with a generous deadline runs."""
    ran = tmp_path / "ran"
    add(conch, "strict", "@every 1s", "--starting-deadline", "1ms", "--", SH, "-c",
        f"touch {ran}")  # fmt: skip
    add(conch, "easy", "@every 1s", "--starting-deadline", "30s", "--", "true")
    daemons.start("d")
    wait_for(lambda: len([r for r in records(client, prefix, "strict").values()
                          if "--starting-deadline" in r.reason]) >= 2
             and any(r.status == "ok" for r in records(client, prefix, "easy").values()),
             timeout=60, what="2 ticks of strict and a run of easy")  # fmt: skip
    recs = records(client, prefix, "strict").values()
    done = [r for r in recs if r.status != "running"]
    assert done and all(r.status == "missed" for r in done), recs
    late = [r for r in done if "no daemon claimed" not in r.reason]  # (not: before the start)
    assert late and all("not started within --starting-deadline 0.001s" in r.reason
                        for r in late), late  # fmt: skip
    assert not ran.exists()
    (j,) = [j for j in conch_ls(conch) if j["name"] == "strict"]
    assert j["starting_deadline"] == 0.001
    r = conch.run("cron", "add", "bad", "--schedule", "@daily", "--starting-deadline", "0s",
                  "--", "true")  # fmt: skip
    assert r.returncode == 2 and "Traceback" not in r.stderr
    no_error(daemons.log("d"))


def conch_ls(conch):  # type: ignore[no-untyped-def]
    import json

    r = conch.run("cron", "ls", "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_a_claim_that_never_reached_etcd_is_recorded_missed_not_run(
    conch, daemons, client, prefix, etcd_proxy, tmp_path
):
    """The daemon's requests hang across a tick (its claim never reaches etcd, and fails):
    when etcd answers again it claims the next tick, and the tick whose claim failed — nobody
    claimed it — is recorded missed. The daemon must not take that `missed` record for its own
    unanswered claim and run the tick (invariant cron seed 735493 found it did)."""
    from test_cron_faults import lines, next_tick, tick_us, wait_until

    ticks = tmp_path / "ticks"
    add(conch, "hung", "@every 2s", "--overlap", "allow", "--", SH, "-c",
        f"echo $CONCH_TICK >> {ticks}")  # fmt: skip
    daemons.start("d", env={"CONCH_ENDPOINTS": etcd_proxy.endpoint})
    wait_for(lambda: lines(ticks), timeout=30, what="a first tick")
    t = next_tick(2.0, time.time() + 1.0)
    wait_until(t - 0.4)
    etcd_proxy.hang()  # the claim of t is never forwarded; it fails when t + 2 is due
    wait_until(t + 2.6)
    etcd_proxy.pass_through()  # the held requests are dropped with their connections
    after = t + 6.0
    wait_for(lambda: any(x >= tick_us(after) for x in records(client, prefix, "hung")),
             timeout=30, what="later ticks")  # fmt: skip
    rec = records(client, prefix, "hung").get(tick_us(t))
    assert rec is not None and rec.status == "missed", rec
    assert model.format_tick(tick_us(t)) not in lines(ticks)
    no_error(daemons.log("d"))
