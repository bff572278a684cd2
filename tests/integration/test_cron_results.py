"""conchd's result writer (conch.cron.results) and its one watchdog (conch.cron.guard), each on
its own: results written many to a transaction, retried while etcd is away and given up only
when conchd stops; a watchdog that dies, or does not read, is replaced and guards every group
again."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from pathlib import Path

from conftest import wait_for

from conch import keys
from conch.client import Client, ClientConfig
from conch.cron.guard import GroupGuard
from conch.cron.model import Job, RunRecord, RunStatus
from conch.cron.results import ResultWriter
from conch.watchdog import group_alive


class FinishedRun:
    """What the writer needs of a run: its job, tick, label, and `finished`."""

    def __init__(self, name: str, tick: int) -> None:
        self.job, self.tick, self.label = Job(name, "@every 1s", "UTC", ("true",)), tick, name
        self.outcome: bool | None = None
        self.done = threading.Event()

    def finished(self, recorded: bool) -> None:
        self.outcome = recorded
        self.done.set()


def _record(tick: int) -> RunRecord:
    return RunRecord(tick=str(tick), status=RunStatus.OK, daemon="d", host="h", claim="c",
                     exit_code=0)  # fmt: skip


def test_results_are_written_together_and_retried_while_etcd_is_away(
    client: Client, prefix: str, etcd_proxy
) -> None:
    via = Client(ClientConfig(endpoints=(etcd_proxy.endpoint,), dial_timeout=1.0))
    writer = ResultWriter(via, prefix, threading.Event())
    writer.start()
    try:
        runs = [FinishedRun(f"j{i}", 1_000_000 * (i + 1)) for i in range(70)]  # > one txn
        for r in runs:
            client.put(keys.cron_alive_key(prefix, r.job.name, r.tick), b"d")
        etcd_proxy.hang()  # etcd away: nothing answers
        for r in runs:
            writer.put(r, _record(r.tick))
        wait_for(lambda: etcd_proxy.connections_total > 0, what="a first attempt")
        assert not any(r.done.is_set() for r in runs)
        etcd_proxy.pass_through()
        for r in runs:
            assert r.done.wait(30) and r.outcome is True
        for r in runs:
            kv, _ = client.get(keys.cron_run_key(prefix, r.job.name, r.tick))
            assert kv is not None and RunRecord.from_json(kv.value).status == RunStatus.OK
            assert client.get(keys.cron_alive_key(prefix, r.job.name, r.tick))[0] is None
    finally:
        writer.halt()
        writer.join(30)
        via.close()


def test_a_result_is_given_up_only_when_conchd_stops(prefix: str, etcd_proxy) -> None:
    via = Client(ClientConfig(endpoints=(etcd_proxy.endpoint,), dial_timeout=0.5))
    stopping = threading.Event()
    writer = ResultWriter(via, prefix, stopping, grace=1.0)
    writer.start()
    try:
        etcd_proxy.hang()
        r = FinishedRun("j", 1_000_000)
        writer.put(r, _record(r.tick))
        wait_for(lambda: etcd_proxy.connections_total > 0, what="a first attempt")
        assert not r.done.wait(0.5)  # retrying, not given up
        stopping.set()
        assert r.done.wait(30) and r.outcome is False
    finally:
        writer.halt()
        writer.join(30)
        via.close()
        etcd_proxy.pass_through()


def _group() -> subprocess.Popen[bytes]:
    return subprocess.Popen(["sleep", "600"], start_new_session=True)


def _watchdog_pid(guard: GroupGuard) -> int:
    wd = guard._watchdog  # the one it uses now
    assert wd is not None
    return wd.pid


def test_a_dead_watchdog_is_replaced_and_the_new_one_guards_every_group() -> None:
    guard = GroupGuard()
    a, b = _group(), _group()
    try:
        guard.ready()
        guard.guard(a.pid, 0.5)
        guard.guard(b.pid, 0.5)
        first = _watchdog_pid(guard)
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: guard._watchdog is not None and _watchdog_pid(guard) != first,
                 what="a new watchdog")  # fmt: skip
        guard.release(b.pid)
        guard.close()  # conchd's end: the new watchdog kills the group still guarded
        assert a.wait(15) is not None
        assert b.poll() is None  # released: left alone
    finally:
        for p in (a, b):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
            p.wait(10)


def test_a_watchdog_that_does_not_read_is_replaced() -> None:
    guard = GroupGuard()
    a = _group()
    try:
        guard.ready()
        guard.guard(a.pid, 0.5)
        first = _watchdog_pid(guard)
        os.kill(first, signal.SIGSTOP)  # its pipe fills: a line cannot be delivered
        for _ in range(100_000):
            guard.guard(a.pid, 0.5)
            if _watchdog_pid(guard) != first:
                break
        assert _watchdog_pid(guard) != first
        wait_for(lambda: not Path(f"/proc/{first}").exists() or
                 b"Z" in Path(f"/proc/{first}/stat").read_bytes().split(b")")[-1][:3],
                 what="the stuck watchdog killed")  # fmt: skip
        assert group_alive(a.pid)  # killing a watchdog never touches the groups
        guard.close()
        assert a.wait(15) is not None  # the new one guarded it
    finally:
        if a.poll() is None:
            os.killpg(a.pid, signal.SIGKILL)
        a.wait(10)
