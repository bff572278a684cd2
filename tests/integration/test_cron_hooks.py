"""--on-failure hooks against a real etcd and real conchd processes: once per failed run (by
its winner, with the run's status, exit code and output), and once for a lost run (by another
daemon, once the loss is visible), never for a run that succeeded."""

from __future__ import annotations

import dataclasses
import signal
import time

from conftest import wait_for
from procs import read
from test_cron import SH, add, no_error, records

from conch.cron import model

HOOK = 'echo "$CONCH_JOB $CONCH_TICK $CONCH_STATUS [$CONCH_EXIT_CODE] $(cat "$CONCH_OUTPUT_FILE")"'


def hook_lines(path):  # type: ignore[no-untyped-def]
    return [ln.split() for ln in read(path).splitlines()] if path.exists() else []


def test_failure_hook_runs_once_per_failed_run_with_its_details(conch, daemons, tmp_path):
    hooks = tmp_path / "hooks"
    add(conch, "bad", "@yearly", "--on-failure", f"{HOOK} >> {hooks}", "--", SH, "-c",
        "echo oops; exit 4")  # fmt: skip
    add(conch, "good", "@yearly", "--on-failure", f"{HOOK} >> {hooks}", "--", "true")
    for i in range(2):
        daemons.start(f"d{i}", "--ttl", "3s")
    for _ in range(3):
        r = conch.run("cron", "run", "bad", "--wait", "--timeout", "30s")
        assert r.returncode == 4, r.stderr
    assert conch.run("cron", "run", "good", "--wait", "--timeout", "30s").returncode == 0
    wait_for(lambda: len(hook_lines(hooks)) >= 3, timeout=30, what="3 hooks")
    lines = hook_lines(hooks)
    assert len(lines) == 3 and len({ln[1] for ln in lines}) == 3, lines  # once per run
    assert all(ln[0] == "bad" and ln[2:] == ["failed", "[4]", "oops"] for ln in lines), lines
    assert "on failure: " in conch.run("cron", "show", "bad").stdout
    for i in range(2):
        no_error(daemons.log(f"d{i}"))


def test_failure_hook_of_a_killed_winner_runs_once_on_another_daemon(conch, daemons, client,
                                                                    prefix, tmp_path):  # fmt: skip
    hooks = tmp_path / "hooks"
    add(conch, "slow", "@yearly", "--on-failure", f"{HOOK} >> {hooks}", "--", "sleep", "60")
    for i in range(3):
        daemons.start(f"d{i}", "--ttl", "2s")
    r = conch.run("cron", "run", "slow")
    assert r.returncode == 0
    tick = r.stdout.strip()

    def winner() -> str | None:
        for t, rec in records(client, prefix, "slow").items():
            if model.format_tick(t) == tick and rec.status == "running":
                return rec.daemon
        return None

    won = wait_for(winner, timeout=30, what="the run to start")
    daemons.stop(won, signal.SIGKILL)
    killed = time.time()
    wait_for(lambda: hook_lines(hooks), timeout=60, what="the lost run's hook")
    (line,) = hook_lines(hooks)
    assert line == ["slow", tick, "lost", "[]"], line
    # nobody runs it again: two more sweeps of every live daemon pass
    wait_for(lambda: time.time() > killed + 8, timeout=20, what="more sweeps")
    assert len(hook_lines(hooks)) == 1
    others = [f"d{i}" for i in range(3) if f"d{i}" != won]
    ran = [d for d in others if "--on-failure hook exited 0" in daemons.log(d)]
    assert len(ran) == 1, ran
    for d in others:
        no_error(daemons.log(d))


def test_a_full_batch_of_failed_results_claims_every_hook_once(client, prefix):
    """RESULTS_PER_TXN failed results of an --on-failure job in one transaction (each with its
    nested hook claim) are within etcd's --max-txn-ops; written again, no hook is claimed."""
    from conch.cron import store

    job = model.Job("j", "@yearly", "UTC", ("false",), on_failure="true")
    results = [
        (job, t * 1_000_000, model.RunRecord(tick=model.format_tick(t * 1_000_000),
                                             status=model.RunStatus.FAILED, daemon="d", host="h",
                                             claim="c", exit_code=1))
        for t in range(1, store.RESULTS_PER_TXN + 1)
    ]  # fmt: skip
    assert store.finish_many(client, prefix, results, hook_value=b"x") == [True] * len(results)
    assert store.finish_many(client, prefix, results, hook_value=b"x") == [False] * len(results)
    ok = [(job, t, dataclasses.replace(r, status=model.RunStatus.OK)) for job, t, r in results]
    assert store.finish_many(client, prefix, ok, hook_value=b"x") == [False] * len(results)
