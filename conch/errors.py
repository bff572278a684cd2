"""Exit codes (sysexits, as SPEC.md's table) and the exceptions that carry them. No I/O."""

from __future__ import annotations

EXIT_NO_HOLDER = 1  # --who found no holder
EXIT_USAGE = 2  # bad flag, duration, name, schedule, zone, file; nothing written to etcd
EXIT_UNAVAILABLE = 69  # etcd unreachable or auth refused before the child started
EXIT_LEASE_LOST = 70  # lease lost while the child ran; child group killed
EXIT_OSERR = 71  # the system refused a process or pipe (EAGAIN, EMFILE): cannot run safely
EXIT_NOT_ACQUIRED = 75  # --nonblock not acquired, or --timeout passed; no key left behind


class ConchError(Exception):
    """An error that ends conch with `exit_code` and one line on stderr."""

    exit_code = 1

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class UsageError(ConchError):
    exit_code = EXIT_USAGE


def child_exit_code(returncode: int) -> int:
    """Map a subprocess returncode to conch's exit code: the child's own code, or 128+S when
    the child was killed by signal S (Popen reports that as -S)."""
    if returncode < 0:
        return 128 + (-returncode)
    return returncode


def signal_exit_code(signum: int) -> int:
    """conch itself got signal S: it exits 128+S."""
    return 128 + signum
