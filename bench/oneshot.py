"""One-shot cost: the whole `TOOL NAME -- true` process, uncontended, wall time.

Beside it, the floors a Python tool cannot go below on this machine: the bare interpreter,
and the interpreter importing what conch needs to talk to etcd (grpc and conch's stubs).
"""

from __future__ import annotations

import itertools
import subprocess
import sys
import time

from bench.common import Tool, quiet_env

_names = itertools.count()

FLOORS = {
    "python -S -c pass": [sys.executable, "-S", "-c", "pass"],
    "python + grpc + stubs": [sys.executable, "-c", "import grpc, conch._pb.rpc_pb2_grpc"],
    "conch --version": None,  # filled in by floors()
}


def wall(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, env=quiet_env(), stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - t0


def oneshot(tool: Tool) -> float:
    return wall(tool.command(f"oneshot-{tool.kind}-{next(_names)}", ["true"]))


def floors() -> dict[str, list[str]]:
    from bench.common import conch_bin

    out = {k: v for k, v in FLOORS.items() if v is not None}
    out["conch --version"] = [conch_bin(), "--version"]
    return out
