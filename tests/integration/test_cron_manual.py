"""conch cron run (manual runs) against a real etcd and real conchd processes."""

from __future__ import annotations

import json
import time

from conftest import wait_for
from procs import read
from test_cron import SH, add, no_error, records, runs_of

from conch import keys
from conch.cron import model

DAEMONS = ("d0", "d1", "d2")


def test_cron_run_is_claimed_once_across_three_daemons(conch, daemons, client, prefix, tmp_path):
    """Eight `cron run` of a job whose schedule never ticks meanwhile: each is run exactly
    once, by one of three daemons, with CONCH_MANUAL; --wait prints the output and exits with
    the job's code (--json: the run's document); the records say manual; without --wait the
    tick is printed (--json: with the name)."""
    out = tmp_path / "runs"
    script = f'echo "$CONCH_TICK $CONCH_REV $CONCH_MANUAL" >> {out}; echo hello $CONCH_JOB; exit 3'
    add(conch, "m", "@yearly", "--", SH, "-c", script)
    for i in range(3):
        daemons.start(f"d{i}", "--ttl", "3s")
    for _ in range(5):
        r = conch.run("cron", "run", "m", "--wait", "--timeout", "30s")
        assert r.returncode == 3, r.stderr
        assert r.stdout == "hello m\n"
        assert "claimed by d" in r.stderr and "failed, exit code 3" in r.stderr, r.stderr
    r = conch.run("cron", "run", "m", "--wait", "--json")  # the run as `cron logs --json`
    assert r.returncode == 3, r.stderr
    doc = json.loads(r.stdout)
    assert doc["name"] == "m" and doc["status"] == "failed" and doc["exit_code"] == 3
    assert doc["manual"] is True and doc["output"] == "hello m\n" and doc["daemon"] in DAEMONS
    r = conch.run("cron", "run", "m")
    assert r.returncode == 0, r.stderr
    tick = r.stdout.strip()
    assert json.loads(conch.run("cron", "run", "m", "--json").stdout)["name"] == "m"
    wait_for(lambda: any(model.format_tick(t) == tick and rec.status == "failed"
                         for t, rec in records(client, prefix, "m").items()),
             timeout=30, what="the run without --wait")  # fmt: skip
    wait_for(lambda: len(records(client, prefix, "m")) == 8
             and all(r.status == "failed" for r in records(client, prefix, "m").values()),
             timeout=30, what="every run done")  # fmt: skip
    lines = [ln.split() for ln in read(out).splitlines()]
    assert len(lines) == 8 and len({ln[0] for ln in lines}) == 8, lines  # each once
    assert all(ln[2] == "1" for ln in lines)
    recs = records(client, prefix, "m")
    assert len(recs) == 8 and all(r.manual and r.status == "failed" for r in recs.values())
    assert {model.format_tick(t) for t in recs} == {ln[0] for ln in lines}
    assert sorted(int(ln[1]) for ln in lines) == sorted(r.rev for r in recs.values())
    assert all(r["manual"] for r in runs_of(conch, "m"))
    # the requests are gone once claimed
    d = keys.cron_requests_dir(prefix)
    assert client.get_range(d, keys.prefix_range_end(d))[0] == []
    for i in range(3):
        no_error(daemons.log(f"d{i}"))


def test_cron_run_nobody_claims_exits_75_and_leaves_no_request(conch, client, prefix, etcdctl):
    """No daemon: `--wait --timeout 1s` exits 75 and the request is gone; without --wait the
    request lapses with its lease; no job: 1; a suspended job: 75 at once, nothing requested; a bad
    --timeout: 2, nothing written."""
    r = conch.run("cron", "run", "nosuch", "--wait")
    assert r.returncode == 1 and r.stderr.strip() == "conch: error: no cron job 'nosuch'"
    r = conch.run("cron", "run", "j", "--timeout", "soon")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert etcdctl("get", "--prefix", prefix, "--keys-only").strip() == ""
    add(conch, "j", "@yearly", "--", "true")
    t0 = time.monotonic()
    r = conch.run("cron", "run", "j", "--wait", "--timeout", "1s")
    assert r.returncode == 75, r.stderr
    assert "no conchd daemon claimed it in time; nothing run" in r.stderr
    assert time.monotonic() - t0 < 20
    d = keys.cron_requests_dir(prefix)
    assert client.get_range(d, keys.prefix_range_end(d))[0] == []
    r = conch.run("cron", "run", "j", "--timeout", "1s")
    assert r.returncode == 0
    wait_for(lambda: client.get_range(d, keys.prefix_range_end(d))[0] == [], timeout=30,
             what="the request to lapse")  # fmt: skip
    assert records(client, prefix, "j") == {}
    assert conch.run("cron", "suspend", "j").returncode == 0
    for wait in (["--wait"], []):  # nobody would claim it: 75 at once, nothing requested
        r = conch.run("cron", "run", "j", *wait)
        assert r.returncode == 75 and "is suspended" in r.stderr, r.stderr
    assert client.get_range(d, keys.prefix_range_end(d))[0] == []


def test_cron_run_with_forbid_is_skipped_while_a_run_is_alive(conch, daemons, client, prefix):
    """--overlap forbid holds for manual runs too: while one runs, another is recorded
    skipped and `--wait` exits 75; the first still finishes ok."""
    add(conch, "slow", "@yearly", "--", SH, "-c", "sleep 3")
    daemons.start("d")
    r = conch.run("cron", "run", "slow")
    assert r.returncode == 0
    wait_for(lambda: any(rec.status == "running" for rec in records(client, prefix, "slow")
                         .values()), timeout=30, what="the first run")  # fmt: skip
    r = conch.run("cron", "run", "slow", "--wait", "--timeout", "30s")
    assert r.returncode == 75 and "skipped" in r.stderr, r.stderr
    wait_for(lambda: sorted(rec.status for rec in records(client, prefix, "slow").values())
             == ["ok", "skipped"], timeout=30, what="ok and skipped")  # fmt: skip
    no_error(daemons.log("d"))


def test_metrics_of_manual_runs_retries_hooks_and_missed_ticks(conch, daemons, tmp_path):
    """conchd's metrics count what issue 10 added: `cron run` requests claimed, retries,
    --on-failure hooks by outcome, and ticks recorded missed (a daemon stopped across ticks
    falls behind: the ticks nobody claimed meanwhile are recorded by its next claim)."""
    import json
    import signal
    import urllib.request

    from test_cron import _free_port

    add(conch, "flaky", "@yearly", "--retries", "1", "--retry-delay", "0.1s",
        "--on-failure", "true", "--", SH, "-c", "exit 3")  # fmt: skip
    add(conch, "tick", "@every 1s", "--", "true")
    port = _free_port()
    d = daemons.start("d", "--metrics-addr", f"127.0.0.1:{port}")
    wait_for(lambda: "claiming ticks" in daemons.log("d"), timeout=30, what="conchd settled")
    r = conch.run("cron", "run", "flaky", "--wait", "--timeout", "30s")
    assert r.returncode == 3 and "attempt 2" in r.stderr, r.stderr
    d.send_signal(signal.SIGSTOP)  # ticks pass while it cannot claim
    stopped = time.time()
    wait_for(lambda: time.time() > stopped + 3.5, timeout=10, what="3 ticks to pass")
    d.send_signal(signal.SIGCONT)

    def scrape() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            return resp.read().decode()

    def value(text: str, sample: str) -> float:
        got = [ln.split()[-1] for ln in text.splitlines() if ln.startswith(sample + " ")]
        return float(got[0]) if got else 0.0

    want = {
        'conchd_manual_runs_total{job="flaky"}': 1,
        'conchd_retries_total{job="flaky"}': 1,
        'conchd_failure_hooks_total{job="flaky",outcome="ok"}': 1,
        'conchd_runs_total{job="flaky",outcome="failed"}': 2,
    }

    def counted() -> str | None:
        text = scrape()
        done = all(value(text, k) >= v for k, v in want.items())
        return text if done and value(text, 'conchd_missed_ticks_total{job="tick"}') >= 2 else None

    text = wait_for(counted, timeout=30, what="the metrics")
    assert value(text, 'conchd_manual_runs_total{job="flaky"}') == 1
    shown = json.loads(conch.run("cron", "ls", "--json").stdout)
    (tick,) = [j for j in shown if j["name"] == "tick"]
    assert sum(r["count"] for r in tick["runs"] if r["status"] == "missed") >= 2
    no_error(daemons.log("d"))
