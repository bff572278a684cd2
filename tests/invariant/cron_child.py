"""The command of every job of the cron scenario (``python -I -S cron_child.py ...``).

    cron_child.py LOG LO HI TERM [FAIL]

Appends a start record to LOG (O_APPEND: one write per record, so records of concurrent
children never interleave), "works" (sleeps) for a time in [LO, HI] that depends only on the
job and the tick (``run_seconds``: the harness computes the same number, so it knows how long a
run will last), appends an end record and exits 0 — or 3, for a first attempt (CONCH_ATTEMPT
1) whose job and tick fall in the fraction FAIL (``fails``: the harness knows which). TERM is
what it does on SIGTERM: ``exit``
(end record with code 143, exit 143, like a shell) or ``ignore`` (conchd then needs SIGKILL
after --kill-after; the harness takes the end from the moment it saw the process gone).

    S JOB TICK CONCH_REV DAEMON LIFE PID MONOTONIC_NS ATTEMPT
    E JOB TICK PID CODE MONOTONIC_NS

JOB, TICK, CONCH_REV and ATTEMPT come from conchd (CONCH_JOB, CONCH_TICK, CONCH_REV,
CONCH_ATTEMPT); DAEMON and LIFE
from the environment the harness gave that conchd process (INV_DAEMON: its --id; INV_LIFE: how
many times that daemon was started), which conchd passes on to its children. Times are
CLOCK_MONOTONIC, never the wall clock: the children of the daemon with the skewed clock inherit
the LD_PRELOAD shim, which shifts the wall clock and leaves CLOCK_MONOTONIC alone.

Standard library only and no site import: it starts in ~10 ms.
"""

import os
import signal
import sys
import time
import zlib


def run_seconds(job: str, tick: str, lo: float, hi: float) -> float:
    """How long the run of `job` at `tick` (CONCH_TICK) works: a fixed point of [lo, hi]."""
    frac = zlib.crc32(f"{job}/{tick}".encode()) / 0xFFFFFFFF
    return round(lo + (hi - lo) * frac, 3)


def fails(job: str, tick: str, fail: float) -> bool:
    """Whether the first attempt of `job` at `tick` exits 3 (a fixed choice, like run_seconds)."""
    return zlib.crc32(f"fail/{job}/{tick}".encode()) / 0xFFFFFFFF < fail


def main() -> None:
    log, lo, hi, term = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
    fail = float(sys.argv[5]) if len(sys.argv) > 5 else 0.0
    env = os.environ
    job, tick, rev = env["CONCH_JOB"], env["CONCH_TICK"], env.get("CONCH_REV", "-")
    attempt = env.get("CONCH_ATTEMPT", "1")
    daemon, life = env.get("INV_DAEMON", "-"), env.get("INV_LIFE", "-")
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    pid = os.getpid()

    def end(code: int) -> None:
        os.write(fd, f"E {job} {tick} {pid} {code} {time.monotonic_ns()}\n".encode())
        os._exit(code)

    start = f"S {job} {tick} {rev} {daemon} {life} {pid} {time.monotonic_ns()} {attempt}\n"
    os.write(fd, start.encode())
    if term == "ignore":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGTERM, lambda _s, _f: end(143))
    deadline = time.monotonic() + run_seconds(job, tick, lo, hi)
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        time.sleep(min(left, 0.05))
    end(3 if attempt == "1" and fails(job, tick, fail) else 0)


if __name__ == "__main__":
    main()
