"""`conch elect|sema NAME --who --watch [--json]` against a real etcd: the holders now and on
every change, one line (or JSON document) each, until interrupted (130 / 143), or 69 once etcd
has not answered for longer than --dial-timeout."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import threading
import time
from typing import Any

from conch.localetcd import LocalCluster

SH = "/bin/sh"


class Lines:
    """The lines a process prints, read by a thread (so a test can wait with a deadline)."""

    def __init__(self, p: subprocess.Popen[str]) -> None:
        self.p = p
        self.q: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.p.stdout is not None
        for line in self.p.stdout:
            self.q.put(line.rstrip("\n"))

    def next(self, timeout: float = 20.0) -> str:
        line = self.q.get(timeout=timeout)
        self.seen.append(line)
        return line

    def until(self, pred: Any, timeout: float = 30.0) -> str:
        """The first line from now on for which pred holds (within timeout seconds)."""
        deadline = time.monotonic() + timeout
        while True:
            line = self.next(max(0.1, deadline - time.monotonic()))
            if pred(line):
                return line


def test_who_watch_prints_every_change_until_interrupted(conch, tmp_path):
    release = tmp_path / "release"
    w = conch.start("elect", "watched", "--who", "--watch")
    lines = Lines(w)
    assert lines.next() == "holders=0/1 waiting=0"
    a = conch.start("elect", "watched", "--", SH, "-c",
                    f"while [ ! -e {release} ]; do sleep 0.05; done")  # fmt: skip
    # (a holder's record is written twice: queued, then promoted — each change is a line)
    line = lines.until(lambda x: x.startswith("holders=1/1"))
    assert line.startswith("holders=1/1 waiting=0: rev=") and f"pid={a.pid}" in line, line
    b = conch.start("elect", "watched", "--", "true")
    lines.until(lambda x: x.startswith("holders=1/1 waiting=1: rev="))
    release.touch()
    assert a.wait(20) == 0
    assert b.wait(20) == 0  # b took over and exited at once: the office is vacant again
    if lines.seen[-1] != "holders=0/1 waiting=0":
        lines.until(lambda x: x == "holders=0/1 waiting=0")
    assert all(x != y for x, y in zip(lines.seen, lines.seen[1:], strict=False))  # changes only
    w.send_signal(signal.SIGINT)
    assert w.wait(10) == 130
    assert "Traceback" not in (w.stderr.read() if w.stderr else "")


def test_who_watch_json_for_sema_and_sigterm(conch, tmp_path):
    release = tmp_path / "release"
    w = conch.start("sema", "pool", "--max", "2", "--who", "--watch", "--json")
    lines = Lines(w)
    doc: dict[str, Any] = json.loads(lines.next())
    assert doc == {"name": "pool", "max": 2, "holders": [], "waiting": 0}
    holders = [conch.start("sema", "pool", "--max", "2", "--", SH, "-c",
                           f"while [ ! -e {release} ]; do sleep 0.05; done")
               for _ in range(3)]  # fmt: skip

    lines.until(lambda x: len(json.loads(x)["holders"]) == 2 and json.loads(x)["waiting"] == 1)
    w.send_signal(signal.SIGTERM)
    assert w.wait(10) in (143, -signal.SIGTERM)
    release.touch()
    for p in holders:
        assert p.wait(30) == 0


def test_who_watch_exits_69_when_etcd_is_gone(conch_cmd, conch_env):
    cluster = LocalCluster(nodes=1)
    cluster.start()
    try:
        env = {**conch_env, "CONCH_ENDPOINTS": cluster.endpoints_csv}
        w = subprocess.Popen([*conch_cmd, "elect", "gone", "--who", "--watch", "--dial-timeout",
                              "2s"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)  # fmt: skip
        lines = Lines(w)
        assert lines.next() == "holders=0/1 waiting=0"
    finally:
        cluster.stop()
    stopped = time.monotonic()
    assert w.wait(60) == 69
    assert time.monotonic() - stopped < 30
    err = w.stderr.read() if w.stderr else ""
    assert err.startswith("conch: error: etcd unavailable") and "Traceback" not in err, err
