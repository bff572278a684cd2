"""Run the child in a process group of its own, held at a gate until its watchdog is armed,
signal the whole group, and reap it.

The child is started with ``posix_spawn`` in a new session (setsid), never with a fork that
runs Python code (``preexec_fn``), which is unsafe in a process running grpc threads. Being a
session leader, the child has no controlling terminal: terminal signals (Ctrl-C, hangup)
reach conch only, which forwards them to the group; a child that reads its inherited stdin
from a terminal still can (it is not a background job of that terminal, so it is never
stopped by SIGTTIN).

The gate closes the instant between starting a child and arming its watchdog, in which a
conch killed would leave the command running unwatched: the process spawned is ``/bin/sh``
reading one line from a pipe on fd 3, and only then exec'ing the command (same pid, same
argv, no shell interpretation). The caller arms the watchdog, then opens the gate; if it
dies first, the pipe closes and the shell exits 125 without running anything.

Waiting never blocks in ``waitpid``: the child is reaped with ``WNOHANG`` only, and the wait
itself sleeps on a pidfd (Linux ≥ 5.3) or polls in short sleeps. Signal handlers (which run in
the main thread) can therefore interrupt any wait and safely call back into this object.

"Alive" for a group means some member is still running: zombies do not count (see
:func:`conch.watchdog.group_alive`). A process that leaves the group — ``setsid``/``setpgid``,
as daemonizing programs do — escapes every group signal here, and conch cannot see it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import select
import signal
import threading
import time

from conch import watchdog
from conch.errors import EXIT_OSERR, ConchError, UsageError

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
    PATH of `env` as execvp does. The gate shell execs the command later; a command that cannot
    run must still be reported as such, before anything started."""
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


# The gate: a shell that execs the command only after a line arrives on fd 3, then closes
# fd 3 so the command never sees it; EOF (the spawner is gone) means the command never runs.
GATE_FD = 3
GATE_EXIT = 125
_GATE_SCRIPT = f'IFS= read -r _ <&{GATE_FD} || exit {GATE_EXIT}; exec {GATE_FD}<&-; exec "$@"'
_SHELL = "/bin/sh"
# Python ignores these; the command gets them at their default, as subprocess would give them
_RESTORED_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ)


def _inheritable_fds() -> list[int]:
    """This process's descriptors above stdio that an exec would pass on (close_fds)."""
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return []
    fds = []
    for name in names:
        fd = int(name)
        with contextlib.suppress(OSError):  # the listing's own descriptor, closed by now
            if fd > 2 and os.get_inheritable(fd):
                fds.append(fd)
    return fds


_sealed = False  # seal_inherited_fds() ran: no descriptor above stdio is inheritable


def seal_inherited_fds() -> None:
    """For a process that spawns many children (conchd): make the descriptors above stdio it
    inherited non-inheritable, once, so that a spawn need not list /proc/self/fd to close them
    in the child (a cost that grows with every open run's pipes). Every descriptor Python opens
    is non-inheritable already (PEP 446), and conch never makes one inheritable."""
    global _sealed
    for fd in _inheritable_fds():
        with contextlib.suppress(OSError):
            os.set_inheritable(fd, False)
    _sealed = True


def _spawn_gated(argv: list[str], env: dict[str, str], gate: int, stdio: dict[int, int]) -> int:
    """posix_spawn the gate shell for `argv` in a new session; `stdio` maps 0/1/2 to the
    descriptors to give the child. Returns its pid."""
    wanted = {**stdio, GATE_FD: gate}
    # copies above every target, so that no dup2 overwrites another's source
    copies = {n: fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for n, fd in wanted.items()}
    try:
        inherited = [] if _sealed else _inheritable_fds()
        actions: list[tuple[int, ...]] = [(os.POSIX_SPAWN_CLOSE, fd) for fd in inherited]
        actions += [(os.POSIX_SPAWN_DUP2, fd, n) for n, fd in copies.items()]
        return os.posix_spawn(
            _SHELL,
            ["sh", "-c", _GATE_SCRIPT, "conch", *argv],
            env,
            file_actions=actions,
            setsid=True,
            setsigdef=_RESTORED_SIGNALS,
        )
    finally:
        for fd in copies.values():
            os.close(fd)


class Child:
    """A child process leading its own process group (pgid == pid), held at a gate until
    :meth:`open_gate`."""

    def __init__(self, pid: int, gate: int | None = None) -> None:
        self.pid: int = pid
        self.pgid: int = pid  # setsid made it the leader of a new session and group
        self.returncode: int | None = None
        self._gate = gate  # the write end of the gate pipe, until opened or closed
        self._lock = threading.RLock()
        self._pidfd = _open_pidfd(self.pid)

    def __repr__(self) -> str:
        return f"<Child pid={self.pid} returncode={self.returncode}>"

    @property
    def pidfd(self) -> int | None:
        """A descriptor readable once the child has exited (Linux >= 5.3), until it is reaped
        (which closes it): for a caller that waits on many children with one selector."""
        return self._pidfd

    @classmethod
    def spawn(
        cls,
        argv: list[str],
        env: dict[str, str],
        *,
        stdin: int | None = None,
        stdout: int | None = None,
        stderr: int | None = None,
    ) -> Child:
        """Start `argv` (no shell; PATH looked up in `env`) held at the gate: the process is a
        ``/bin/sh`` that execs `argv` once :meth:`open_gate` is called, and exits 125 without
        running it if the gate is closed first — or if this process dies, which closes the
        pipe. Arm the watchdog in between: a crash can then never leave the command running
        unwatched. Stdio is inherited unless a file descriptor is given; no other descriptor
        is (the gate's, fd 3, is closed before the exec).

        Raises ConchError with exit code 127 if the command is not found, 71 (EX_OSERR) if the
        system refused a process or file descriptor (EAGAIN at a pids limit, EMFILE), 126 if it
        cannot be executed otherwise (like a shell), UsageError for an empty command or one
        containing NUL."""
        if not argv or not argv[0]:
            raise UsageError("no command to run")
        if any("\0" in a for a in argv):
            raise UsageError(f"cannot run {argv[0]!r}: embedded null byte")
        _unignore_sigchld()
        try:
            check_runnable(argv[0], env)
            gate_r, gate_w = os.pipe()
            try:
                stdio = {0: stdin, 1: stdout, 2: stderr}
                fds = {n: fd for n, fd in stdio.items() if fd is not None}
                pid = _spawn_gated(argv, env, gate_r, fds)
            except BaseException:
                os.close(gate_w)
                raise
            finally:
                os.close(gate_r)
        except ValueError as e:  # e.g. an embedded NUL byte in the environment
            raise UsageError(f"cannot run {argv[0]!r}: {e}") from e
        except OSError as e:
            reason = e.strerror or str(e)
            code = 127 if e.errno in _NOT_FOUND else EXIT_OSERR if e.errno in _NO_RESOURCES else 126
            raise ConchError(f"cannot run {argv[0]!r}: {reason}", exit_code=code) from e
        return cls(pid, gate_w)

    # --- the gate -------------------------------------------------------------------------------

    def open_gate(self) -> None:
        """Let the held child exec its command (once; a child already gone is not an error)."""
        with self._lock:
            gate, self._gate = self._gate, None
        if gate is None:
            return
        try:
            with contextlib.suppress(OSError):  # EPIPE: the shell is gone already
                os.write(gate, b"\n")
        finally:
            os.close(gate)

    def close_gate(self) -> None:
        """Never let the command start: a child still at the gate exits 125."""
        with self._lock:
            gate, self._gate = self._gate, None
        if gate is not None:
            os.close(gate)

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
        self.close_gate()
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
