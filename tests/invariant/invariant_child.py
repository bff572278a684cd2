"""The child every conch of the invariant harness runs (``python -I -S invariant_child.py``).

    invariant_child.py LOG HOLDER SECONDS TERM

Appends one start record to LOG (O_APPEND: one write per record, so records of concurrent
children never interleave), "works" (sleeps) SECONDS (``inf``: until killed), appends an end
record and exits 0. TERM is what it does on SIGTERM: ``exit`` (end record, exit 143, like a
shell) or ``ignore`` (so conch has to SIGKILL it after --kill-after; the harness then takes the
end of the interval from the moment it saw the process gone).

    S HOLDER PID CONCH_REV CONCH_LEASE CONCH_TTL MONOTONIC_NS
    E HOLDER PID MONOTONIC_NS

Standard library only and no site import: it starts in ~10 ms.
"""

import os
import signal
import sys
import time


def main() -> None:
    log, holder, seconds, term = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    pid = os.getpid()
    env = os.environ

    def end(code: int) -> None:
        os.write(fd, f"E {holder} {pid} {time.monotonic_ns()}\n".encode())
        os._exit(code)

    rec = (
        f"S {holder} {pid} {env.get('CONCH_REV', '-')} {env.get('CONCH_LEASE', '-')} "
        f"{env.get('CONCH_TTL', '-')} {time.monotonic_ns()}\n"
    )
    os.write(fd, rec.encode())
    if term == "ignore":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGTERM, lambda _s, _f: end(143))
    deadline = time.monotonic() + seconds
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        time.sleep(min(left, 0.05))
    end(0)


if __name__ == "__main__":
    main()
