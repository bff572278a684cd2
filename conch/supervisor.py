"""Run the child in a process group of its own, signal the whole group, and reap it.

The child is started with ``start_new_session=True`` (setsid), never with ``preexec_fn``: with
a ``preexec_fn`` CPython forks instead of vfork/exec'ing, which is unsafe in a process running
grpc threads. Being a session leader, the child has no controlling terminal: terminal signals
(Ctrl-C, hangup) reach conch only, which forwards them to the group; a child that reads its
inherited stdin from a terminal still can (it is not a background job of that terminal, so it
is never stopped by SIGTTIN).

Waiting never blocks in ``waitpid``: the child is reaped with ``WNOHANG`` only, and the wait
itself sleeps on a pidfd (Linux ≥ 5.3) or polls in short sleeps. Signal handlers (which run in
the main thread) can therefore interrupt any wait and safely call back into this object.

"Alive" for a group means some member is still running: zombies do not count (see
:func:`conch.watchdog.group_alive`). A process that leaves the group — ``setsid``/``setpgid``,
as daemonizing programs do — escapes every group signal here, and conch cannot see it.
"""

from __future__ import annotations

import errno
import os
import select
import signal
import subprocess
import threading
import time

from conch import watchdog
from conch.errors import EXIT_OSERR, ConchError, UsageError, child_exit_code

# How long to wait for a SIGKILLed group to vanish before giving up (SIGKILL cannot be caught;
# only a task stuck in uninterruptible sleep outlasts this).
SIGKILL_GRACE = 2.0
# Polling interval for group membership and, without a pidfd, for the child's exit.
_POLL = 0.02
# Longest single sleep on the pidfd (guards against an fd closed by another thread's reap).
_PIDFD_MAX_WAIT = 1.0

_NOT_FOUND = {errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.ENAMETOOLONG}
# the system refused a process, a pipe or memory: not the command's fault (EX_OSERR)
_NO_RESOURCES = {errno.EAGAIN, errno.ENOMEM, errno.EMFILE, errno.ENFILE}


def exit_code_for(returncode: int) -> int:
    """conch's exit code for a child returncode: its own code, or 128+S if killed by signal S."""
    return child_exit_code(returncode)


def _open_pidfd(pid: int) -> int | None:
    pidfd_open = getattr(os, "pidfd_open", None)
    if pidfd_open is None:
        return None
    try:
        fd: int = pidfd_open(pid)
    except OSError:  # ENOSYS on old kernels, EPERM under some seccomp policies
        return None
    return fd


def _unignore_sigchld() -> None:
    """A SIGCHLD disposition of SIG_IGN (inherited across exec from some parents) makes the
    kernel reap children itself, losing their exit status. Restore the default if we can."""
    try:
        if signal.getsignal(signal.SIGCHLD) == signal.SIG_IGN:
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    except ValueError:  # not the main thread
        pass


def check_runnable(cmd0: str, env: dict[str, str]) -> None:
    """Raise the OSError that an exec of `cmd0` would (ENOENT, EACCES), looking it up in the
    PATH of `env` as execvp does; ValueError for an embedded NUL. For commands exec'd later
    by a gate (conchd), whose failure must still be reported as before anything ran."""
    if "/" in cmd0:
        candidates = [cmd0]
    else:
        path = env.get("PATH", os.defpath)
        candidates = [os.path.join(d or ".", cmd0) for d in path.split(os.pathsep)]
    denied = False
    for c in candidates:
        if os.path.isdir(c):
            denied = True  # execve of a directory: EACCES
        elif os.path.exists(c):
            if os.access(c, os.X_OK):
                return
            denied = True
    if denied:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), cmd0)
    raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), cmd0)


class Child:
    """A child process leading its own process group (pgid == pid)."""

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self._popen = popen
        self.pid: int = popen.pid
        self.pgid: int = popen.pid  # setsid made it the leader of a new session and group
        self.returncode: int | None = None
        self._lock = threading.RLock()
        self._pidfd = _open_pidfd(self.pid)

    def __repr__(self) -> str:
        return f"<Child pid={self.pid} returncode={self.returncode}>"

    @classmethod
    def spawn(cls, argv: list[str], env: dict[str, str]) -> Child:
        """Start `argv` (no shell; PATH looked up in `env`) with inherited stdio.

        Raises ConchError with exit code 127 if the command is not found, 71 (EX_OSERR) if the
        system refused a process or file descriptor (EAGAIN at a pids limit, EMFILE), 126 if it
        cannot be executed otherwise (like a shell), UsageError for an empty command or one
        containing NUL."""
        if not argv or not argv[0]:
            raise UsageError("no command to run")
        _unignore_sigchld()
        try:
            popen = subprocess.Popen(argv, env=env, start_new_session=True, close_fds=True)
        except ValueError as e:  # e.g. an embedded NUL byte
            raise UsageError(f"cannot run {argv[0]!r}: {e}") from e
        except OSError as e:
            reason = e.strerror or str(e)
            code = 127 if e.errno in _NOT_FOUND else EXIT_OSERR if e.errno in _NO_RESOURCES else 126
            raise ConchError(f"cannot run {argv[0]!r}: {reason}", exit_code=code) from e
        return cls(popen)

    # --- the child itself ---------------------------------------------------------------------

    def poll(self) -> int | None:
        """Reap the child if it has exited; Popen-style returncode (-S if killed by S) or None."""
        with self._lock:
            if self.returncode is not None:
                return self.returncode
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                # Reaped behind our back (SIGCHLD ignored); the status is lost. Popen says 0.
                pid, status = self.pid, 0
            if pid == 0:
                return None
            self.returncode = os.waitstatus_to_exitcode(status)
            self._popen.returncode = self.returncode  # so Popen never waits on a reused pid
            if self._pidfd is not None:
                os.close(self._pidfd)
                self._pidfd = None
            return self.returncode

    def _sleep_on_child(self, seconds: float) -> None:
        """Sleep up to `seconds`, waking early when the child exits (if a pidfd is available)."""
        with self._lock:
            pidfd = self._pidfd
        if pidfd is None:
            time.sleep(min(seconds, _POLL))
            return
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        poller.poll(min(seconds, _PIDFD_MAX_WAIT) * 1000.0)

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait for the child to exit and reap it; its returncode, or None after `timeout`."""
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            rc = self.poll()
            if rc is not None:
                return rc
            remaining = _PIDFD_MAX_WAIT if end is None else end - time.monotonic()
            if remaining <= 0:
                return None
            self._sleep_on_child(remaining)

    # --- the group --------------------------------------------------------------------------------

    def signal_group(self, sig: int) -> None:
        """Send `sig` to the child's whole process group; a vanished group is not an error."""
        watchdog.signal_group(self.pgid, sig)

    def group_alive(self) -> bool:
        """True while any process of the group still runs (zombies excluded)."""
        return watchdog.group_alive(self.pgid)

    def _await_group(self, timeout: float) -> bool:
        """Wait until the child has exited (reaping it) and no group member runs; bounded."""
        end = time.monotonic() + timeout
        while True:
            child_done = self.poll() is not None
            if child_done and not self.group_alive():
                return True
            remaining = end - time.monotonic()
            if remaining <= 0:
                return False
            if child_done:
                time.sleep(min(_POLL, remaining))
            else:
                self._sleep_on_child(min(_POLL * 5, remaining))

    def _kill_sequence(self, kill_after: float, sig: int) -> None:
        self.signal_group(sig)
        if sig not in (signal.SIGKILL, signal.SIGCONT):
            self.signal_group(signal.SIGCONT)  # stopped members must see the signal now
        self._await_group(kill_after)
        # Sent even if the group looks empty: harmless to zombies, robust if /proc misleads us.
        if watchdog.group_exists(self.pgid):
            self.signal_group(signal.SIGKILL)

    def terminate_group(self, kill_after: float, sig: int = signal.SIGTERM) -> int:
        """Send `sig` to the whole group, wait up to `kill_after` for the child to exit and the
        group to empty, then SIGKILL the group; reap the child and return its returncode."""
        self._kill_sequence(kill_after, sig)
        rc = self.wait(None)
        assert rc is not None
        self._await_group(SIGKILL_GRACE)
        return rc

    def reap_group(self, kill_after: float) -> None:
        """After the child exited on its own: SIGTERM any grandchildren left in the group, wait
        up to `kill_after`, SIGKILL. No background process may outlive its holder."""
        self.poll()
        if self.returncode is not None and not self.group_alive():
            return
        self._kill_sequence(kill_after, signal.SIGTERM)
        self.wait(None)
        self._await_group(SIGKILL_GRACE)
