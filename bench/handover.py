"""Hand-over: the holder's child exits -> the next waiter's child starts.

One holder and N waiters of one lock, every contender a real process of the tool under test,
each child holding for `hold` seconds. The first child waits on a gate until all N waiters are
queued, then the queue drains; every gap between one child's end and the next one's start is
one hand-over. conch and `etcdctl lock` are measured in the same run, interleaved.
"""

from __future__ import annotations

import itertools
import subprocess
import tempfile
from pathlib import Path

from bench.common import Tool, handovers, poll, quiet_env, read_stamps, stamped_child, start_queued

_names = itertools.count()


def drain(tool: Tool, waiters: int, hold: float, slots: int = 1) -> list[float]:
    """Hand-over gaps (s) while one holder and `waiters` waiters drain."""
    name = f"handover-{tool.kind}-{next(_names)}"
    with tempfile.TemporaryDirectory(prefix="conch-bench-") as tmp:
        log, gate = Path(tmp, "log"), Path(tmp, "gate")
        gate.touch()
        first = stamped_child(log, hold, gate)
        rest = stamped_child(log, hold)
        env = quiet_env()
        procs = [
            subprocess.Popen(tool.command(name, first, slots), env=env, stdout=subprocess.DEVNULL)
        ]
        try:
            poll(lambda: log.exists(), 30, "the first holder's child")
            prefix = tool.prefix(name, slots)
            cmds = [tool.command(name, rest, slots) for _ in range(waiters)]
            start_queued(tool, cmds, 1, env, prefix, procs)
            gate.unlink()
            for p in procs:
                p.wait(timeout=60 + waiters * (hold + 1))
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        bad = [p.returncode for p in procs if p.returncode != 0]
        if bad:
            raise RuntimeError(f"{tool.kind}: {len(bad)} contenders failed: {bad[:5]}")
        return handovers(read_stamps(log))
