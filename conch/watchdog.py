"""The watchdog: the child's process group must not outlive a dead or paused conch.

conch runs its child in a process group of its own and, right after spawning it, starts this
file as a separate, tiny process (``[sys.executable, "-I", "-S", this_file]``, in a session of
its own so that terminal signals and ``kill -- -PGID`` aimed at conch do not reach it) with a
pipe on its stdin. This module imports only the standard library so that it can run that way,
outside the package, in ~10 ms.

Protocol (one text line per message, on the watchdog's stdin):

``arm PGID KILL_AFTER DEADLINE``
    Watch process group PGID. DEADLINE is an absolute time on :func:`clock` (CLOCK_BOOTTIME,
    system-wide on Linux, so the two processes share it). ``inf`` means no deadline.
``deadline DEADLINE``
    A new deadline; the latest line wins. conch pushes one each time its lease keepalive is
    acknowledged.
``disarm``
    conch finished cleanly and has dealt with the group itself: exit 0 without killing.
``guard PGID KILL_AFTER`` / ``release PGID``
    conchd's form: one watchdog guards every child group the daemon runs. ``guard`` adds a
    group (beside the one ``arm`` set, if any), ``release`` removes one whose run ended. The
    watchdog stays until EOF: with no group left to guard, EOF exits 0 without killing.

The watchdog *fires* — SIGTERM (then SIGCONT, so that stopped members see it) to every group it
guards, wait up to each group's KILL_AFTER for it to have no live member, SIGKILL to the group,
exit 1 — when:

* its stdin reaches EOF while armed (conch died: the kernel closes the pipe as conch exits,
  whatever killed it, SIGKILL included);
* :func:`clock` passes DEADLINE (conch is paused — SIGSTOP, Ctrl-Z — or its keepalive thread
  is stuck, so it can no longer confirm its lease). Input already in the pipe is read before
  the deadline is judged, so a ``disarm``/``deadline`` written in time is honoured;
* it gets SIGTERM while armed. Choice: a SIGTERM to the watchdog is treated like conch's death,
  not as "go away quietly" — the watchdog exists only to bound the child group's life, and a
  watchdog that could be removed silently would let a paused conch's child live on unbounded.
  (A SIGTERM that reaches everything at once, e.g. systemd stopping the unit, kills the child
  group anyway; the watchdog then merely applies the same SIGTERM → KILL_AFTER → SIGKILL.)

SIGINT and SIGHUP are ignored (a terminal's Ctrl-C or hangup must not remove the safety net;
conch itself forwards those to the group). Unknown or malformed lines are ignored. EOF before
``arm`` exits 0 without killing. Exit status: 0 disarmed (or never armed), 1 fired.

Resulting bound (what docs/guarantees.md may rely on):

* conch SIGKILLed (or crashing in any way): the group gets SIGTERM as soon as the watchdog is
  scheduled after the pipe closes — milliseconds, ≤ ~100 ms on a loaded host — and SIGKILL
  KILL_AFTER later.
* conch SIGSTOPped or stuck: the group gets SIGTERM at the last pushed DEADLINE (which conch
  sets *before* the server-side lease expiry) and SIGKILL KILL_AFTER after that.

Not covered: a process that leaves the group (``setsid``/``setpgid``, e.g. a daemonizing
grandchild) escapes it, as it escapes conch's own ``killpg``; a SIGKILL of the watchdog itself
removes the net (conch checks :meth:`Watchdog.alive` while the child runs, and treats a dead
watchdog as a lost lease); conch starts the watchdog before the child and arms it right after
the spawn (one pipe write), so only a conch killed between those two steps leaves an
unwatched child.
"""

from __future__ import annotations

import contextlib
import math
import os
import select
import signal
import sys
import time

# Not `from typing import TYPE_CHECKING`: importing typing would add ~4 ms to every start.
TYPE_CHECKING = False
if TYPE_CHECKING:  # the client imports these lazily: the standalone watchdog must start fast
    import subprocess
    import threading
    from typing import IO

EXIT_DISARMED = 0
EXIT_FIRED = 1

# Upper bound on one wait in the main loop. It also bounds how late a deadline that passed while
# the host was suspended is noticed after the resume (poll's timeout does not count suspended
# time; clock() does).
_MAX_WAIT = 1.0


def clock() -> float:
    """The clock of every lease deadline in conch (seconds): CLOCK_BOOTTIME. Unlike
    CLOCK_MONOTONIC it keeps counting while the host is suspended — as the etcd server's clock
    does, so a lease that expired during a suspend is not trusted after the resume."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


# Polling interval while waiting for a signalled group to empty.
_GROUP_POLL = 0.02

# After the final SIGKILL: how long the group may take to vanish before the lease is revoked
# (a group that is still there then keeps the lease until it expires).
_REVOKE_AFTER_KILL = 5.0
# Upper bound on the revoking process (its own etcd timeouts are shorter).
_REVOKE_TIMEOUT = 30.0
# guard/release: longest wait for room in the pipe of a watchdog that does not read
_SEND_TIMEOUT = 1.0


def revoke_lease(config: str) -> bool:
    """Run `python -m conch.revoke` with `config` (JSON) on its stdin, bounded; True if it
    revoked the lease. The watchdog stays stdlib-only: the gRPC client lives in that process."""
    import subprocess

    try:
        proc = subprocess.Popen(
            [sys.executable, "-I", "-m", "conch.revoke"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            close_fds=True,
        )
    except OSError:
        return False
    try:
        proc.communicate(config.encode(), timeout=_REVOKE_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired):
        proc.kill()
        proc.wait()
        return False
    return proc.returncode == 0


# --- process-group helpers (also used by conch.supervisor) -------------------------------------


def _proc_is_ours() -> bool:
    """True if /proc describes our pid namespace (so pids read there mean what we think)."""
    try:
        with open("/proc/self/stat", "rb") as f:
            return int(f.read().split(b" ", 1)[0]) == os.getpid()
    except (OSError, ValueError):
        return False


def _stat_pgrp_live(data: bytes) -> tuple[int, bool] | None:
    """(pgrp, is_live) from a /proc/PID/stat line; a zombie (Z) or dead (X) task is not live."""
    r = data.rfind(b")")
    if r < 0:
        return None
    fields = data[r + 2 :].split()
    if len(fields) < 3:
        return None
    try:
        return int(fields[2]), fields[0] not in (b"Z", b"X")
    except ValueError:
        return None


def _read_stat(pid: str | int) -> bytes | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read()
    except OSError:
        return None


def _has_live_member(pgid: int) -> bool:
    """Scan /proc for a non-zombie process whose process group is `pgid`. Unknowable → True."""
    if not _proc_is_ours():
        return True
    # Fast path: the group leader itself is usually the one still running.
    data = _read_stat(pgid)
    if data is not None:
        parsed = _stat_pgrp_live(data)
        if parsed is not None and parsed == (pgid, True):
            return True
    try:
        names = os.listdir("/proc")
    except OSError:
        return True
    for name in names:
        if not name.isdigit():
            continue
        data = _read_stat(name)
        if data is None:
            continue
        parsed = _stat_pgrp_live(data)
        if parsed is not None and parsed[0] == pgid and parsed[1]:
            return True
    return False


def group_exists(pgid: int) -> bool:
    """True if the kernel still knows process group `pgid` (zombies included)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def group_alive(pgid: int) -> bool:
    """True if some process of group `pgid` is still running (not a zombie).

    ``killpg(pgid, 0)`` alone is not enough: an unreaped zombie keeps its group "existing", and
    reparented zombies may linger when the init/subreaper of a container does not reap. On Linux
    a /proc scan tells zombies apart; where it cannot (no /proc, another pid namespace) the
    answer errs on "alive".
    """
    if pgid <= 1:
        raise ValueError(f"refusing to inspect process group {pgid}")
    if not group_exists(pgid):
        return False
    return _has_live_member(pgid)


def signal_group(pgid: int, sig: int) -> None:
    """killpg that ignores a vanished (ESRCH) or foreign-only (EPERM) group."""
    if pgid <= 1:
        raise ValueError(f"refusing to signal process group {pgid}")
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def wait_group_gone(pgid: int, timeout: float) -> bool:
    """Poll until group `pgid` has no live member or `timeout` passes; True if it is gone."""
    end = time.monotonic() + timeout
    while group_alive(pgid):
        remaining = end - time.monotonic()
        if remaining <= 0:
            return False
        time.sleep(min(_GROUP_POLL, remaining))
    return True


def kill_groups(groups: dict[int, float]) -> None:
    """SIGTERM (+SIGCONT) every group ({pgid: kill_after}) together; SIGKILL each when it is
    gone or its own kill_after has passed. SIGKILL is sent whenever the group still exists,
    even if the /proc scan already calls it dead: harmless to zombies, and robust if the scan is
    ever wrong."""
    for pgid in groups:
        signal_group(pgid, signal.SIGTERM)
        signal_group(pgid, signal.SIGCONT)
    start = time.monotonic()
    waiting = dict(groups)
    while waiting:
        now = time.monotonic()
        for pgid, kill_after in list(waiting.items()):
            if now - start >= kill_after or not group_alive(pgid):
                signal_group(pgid, signal.SIGKILL)
                del waiting[pgid]
        if waiting:
            left = min(start + k for k in waiting.values()) - time.monotonic()
            time.sleep(max(0.0, min(_GROUP_POLL, left)))


# --- the watchdog process -----------------------------------------------------------------------


class _State:
    """The protocol state machine, fed one line at a time (pure: no I/O)."""

    def __init__(self) -> None:
        self.pgid: int | None = None  # the group `arm` set
        self.kill_after = 0.0
        self.guarded: dict[int, float] = {}  # groups `guard` added: pgid -> kill_after
        self.deadline = math.inf
        self.disarmed = False
        # what conch.revoke needs to revoke the holder's lease (a JSON document, passed on
        # as it came: the watchdog neither parses nor logs it; it may hold a password)
        self.revoke: str | None = None

    @property
    def armed(self) -> bool:
        return (self.pgid is not None or bool(self.guarded)) and not self.disarmed

    def targets(self) -> dict[int, float]:
        """Every group to kill when firing: pgid -> kill_after."""
        out = dict(self.guarded)
        if self.pgid is not None:
            out[self.pgid] = self.kill_after
        return out

    def feed(self, line: str) -> None:
        if line.startswith("revoke "):
            self.revoke = line[len("revoke ") :]
            return
        parts = line.split()
        if not parts:
            return
        cmd, args = parts[0], parts[1:]
        try:
            if cmd == "arm" and len(args) == 3:
                pgid, kill_after, deadline = int(args[0]), float(args[1]), float(args[2])
                valid = pgid > 1 and math.isfinite(kill_after) and kill_after >= 0
                if valid and not math.isnan(deadline):
                    self.pgid, self.kill_after, self.deadline = pgid, kill_after, deadline
            elif cmd == "deadline" and len(args) == 1:
                deadline = float(args[0])
                if not math.isnan(deadline):
                    self.deadline = deadline
            elif cmd == "disarm" and not args:
                self.disarmed = True
            elif cmd == "guard" and len(args) == 2:
                pgid, kill_after = int(args[0]), float(args[1])
                if pgid > 1 and math.isfinite(kill_after) and kill_after >= 0:
                    self.guarded[pgid] = kill_after
            elif cmd == "release" and len(args) == 1:
                self.guarded.pop(int(args[0]), None)
        except ValueError:
            pass


def _run(stdin_fd: int = 0) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    signal.signal(signal.SIGTERM, lambda _signum, _frame: None)

    poller = select.poll()
    poller.register(stdin_fd, select.POLLIN)
    poller.register(wake_r, select.POLLIN)
    state = _State()
    buf = b""
    eof = terminated = False

    def fire() -> int:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        # said first: conch, seeing its child die, must know it was this and not the child
        with contextlib.suppress(OSError):
            os.write(1, b"fired\n")
        kill_groups(state.targets())
        if (
            state.revoke is not None
            and state.pgid is not None
            and wait_group_gone(state.pgid, _REVOKE_AFTER_KILL)
        ):
            revoke_lease(state.revoke)  # the group is dead: the successor need not wait
        return EXIT_FIRED

    while True:
        timeout = _MAX_WAIT
        if state.armed:
            timeout = max(0.0, min(timeout, state.deadline - clock()))
        for fd, _events in poller.poll(timeout * 1000.0):
            if fd == wake_r:
                try:
                    woke = os.read(wake_r, 512)
                except BlockingIOError:
                    woke = b""
                if signal.SIGTERM in woke:
                    terminated = True
            elif fd == stdin_fd and not eof:
                try:
                    chunk = os.read(stdin_fd, 65536)
                except BlockingIOError:
                    continue
                except OSError:
                    chunk = b""
                if not chunk:
                    eof = True
                    poller.unregister(stdin_fd)
                    continue
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    state.feed(line.decode("ascii", "replace"))
                    if state.disarmed:
                        return EXIT_DISARMED
        if eof or terminated:
            return fire() if state.armed else EXIT_DISARMED
        if state.armed and clock() >= state.deadline:
            return fire()


def main() -> int:
    try:
        return _run()
    except KeyboardInterrupt:  # SIGINT is ignored, but be safe before the handler is set
        return EXIT_DISARMED


# --- the client conch uses ----------------------------------------------------------------------


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data) :]


class Watchdog:
    """conch's handle on its watchdog process. Thread-safe; `update` and `disarm` never raise."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        import threading

        self._proc = proc
        self.pgid = 0  # the group watched, once armed
        stdin = proc.stdin
        assert stdin is not None
        self._stdin: IO[bytes] | None = stdin
        self._fd = stdin.fileno()
        self._lock: threading.Lock = threading.Lock()
        self.broken = False  # a write failed: the watchdog is gone (it fired, or was killed)
        self._fired = False
        if proc.stdout is not None:
            os.set_blocking(proc.stdout.fileno(), False)

    @property
    def pid(self) -> int:
        return self._proc.pid

    @classmethod
    def spawn(cls) -> Watchdog:
        """Start the watchdog process, not yet armed (EOF before ``arm`` makes it exit quietly).
        conch starts it *before* the child, so that a failure to start it (EAGAIN at a pids
        limit, EMFILE) means nothing ran. Raises OSError."""
        import subprocess

        if not sys.executable:
            raise OSError("no Python interpreter (sys.executable) to run the watchdog")
        # it needs nothing from the environment; the etcd password, if conch got it there,
        # must not sit in one more process's environ (the revoke settings come on the pipe)
        env = {k: v for k, v in os.environ.items() if k != "CONCH_PASSWORD"}
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", os.path.abspath(__file__)],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            close_fds=True,
        )
        return cls(proc)

    def arm(self, pgid: int, kill_after: float, deadline: float, revoke: str | None = None) -> None:
        """Watch process group `pgid` from now on. `revoke`: a one-line JSON document for
        conch.revoke — once the watchdog has killed the group and seen it gone, it revokes
        that lease, so a successor need not wait for it to expire. Raises OSError if the
        watchdog is gone (the caller must then kill the group itself: an unwatched child must
        not run)."""
        if pgid <= 1 or pgid == os.getpgrp():
            raise ValueError(f"refusing to watch process group {pgid}")
        with self._lock:
            if self._stdin is None:
                raise OSError("the watchdog was disarmed")
            if revoke is not None:
                if "\n" in revoke:
                    raise ValueError("the revoke document must be one line")
                _write_all(self._fd, f"revoke {revoke}\n".encode())
            os.write(self._fd, f"arm {pgid} {float(kill_after)!r} {float(deadline)!r}\n".encode())
            # From now on a write must never block conch's keepalive thread (a stopped watchdog
            # with a full pipe): a line is < PIPE_BUF, so it is written whole or not at all.
            os.set_blocking(self._fd, False)
            self.pgid = pgid

    def guard(self, pgid: int, kill_after: float, timeout: float = _SEND_TIMEOUT) -> None:
        """conchd's form: guard one more group (its death or pause kills them all). Raises
        OSError if the line cannot be delivered within `timeout` (the watchdog is gone or
        stopped): the caller must not let that group's command start."""
        if pgid <= 1 or pgid == os.getpgrp():
            raise ValueError(f"refusing to watch process group {pgid}")
        self._deliver(f"guard {pgid} {float(kill_after)!r}\n", timeout)

    def release(self, pgid: int, timeout: float = _SEND_TIMEOUT) -> None:
        """The group's run is over and reaped: stop guarding it (its number may be reused).
        Raises OSError as guard() does; a watchdog that cannot take it must be replaced."""
        self._deliver(f"release {pgid}\n", timeout)

    def _deliver(self, line: str, timeout: float) -> None:
        """Write one line whole (< PIPE_BUF: all or nothing), waiting up to `timeout` for room
        in the pipe; OSError if the watchdog is gone or does not read."""
        data = line.encode()
        with self._lock:
            if self._stdin is None or self.broken:
                raise OSError("the watchdog is gone")
            os.set_blocking(self._fd, False)
            end = time.monotonic() + timeout
            while True:
                try:
                    os.write(self._fd, data)
                    return
                except BlockingIOError:
                    left = end - time.monotonic()
                    if left <= 0:
                        raise OSError("the watchdog does not read its pipe") from None
                    p = select.poll()
                    p.register(self._fd, select.POLLOUT)
                    p.poll(min(left, 0.05) * 1000.0)
                except OSError:
                    self.broken = True
                    raise

    @classmethod
    def start(cls, pgid: int, kill_after: float, deadline: float) -> Watchdog:
        """spawn() and arm(): the watchdog of an already running group. Raises OSError (the
        watchdog is then reaped; the group is left to the caller)."""
        if pgid <= 1 or pgid == os.getpgrp():
            raise ValueError(f"refusing to watch process group {pgid}")
        wd = cls.spawn()
        try:
            wd.arm(pgid, kill_after, deadline)
        except OSError:
            wd.kill()
            raise
        return wd

    def kill(self) -> None:
        """SIGKILL the watchdog itself and reap it (the group is not touched)."""
        with self._lock:
            if self._stdin is not None:
                with contextlib.suppress(OSError):
                    self._stdin.close()
                self._stdin = None
        with contextlib.suppress(OSError):
            self._proc.kill()
        self._proc.wait()
        self._close_stdout()

    def wait(self) -> int:
        """Block until the watchdog process ends; its exit status."""
        return self._proc.wait()

    def close(self, timeout: float = 0.5) -> None:
        """conchd's form, at its end: close the pipe (the watchdog kills the groups still
        guarded, if any, and exits) and reap it if it is done within `timeout`; one still
        killing groups is left to finish on its own."""
        import subprocess

        with self._lock:
            if self._stdin is not None:
                with contextlib.suppress(OSError):
                    self._stdin.close()
                self._stdin = None
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(timeout)
        self._close_stdout()

    def _send(self, line: str) -> None:
        """Write one line; caller holds the lock. Never raises."""
        if self._stdin is None or self.broken:
            return
        try:
            os.write(self._fd, line.encode())
        except BlockingIOError:
            pass  # pipe full: the watchdog is not reading (stopped); drop this update
        except OSError:
            self.broken = True

    def update(self, deadline: float) -> None:
        """Push a new absolute deadline on :func:`clock`. Never raises."""
        with self._lock:
            self._send(f"deadline {float(deadline)!r}\n")

    def disarm(self, timeout: float = 2.0) -> None:
        """Tell the watchdog to exit without killing; close the pipe; reap it (bounded).

        Idempotent. If the watchdog has not exited within `timeout` it is SIGKILLed (which does
        not touch the child group)."""
        with self._lock:
            if self._stdin is not None:
                self._send("disarm\n")
                with contextlib.suppress(OSError):
                    self._stdin.close()
                self._stdin = None
        import subprocess

        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(OSError):
                self._proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout)
        self._close_stdout()

    def _close_stdout(self) -> None:
        self.fired()  # read what it said before the pipe goes
        out = self._proc.stdout
        if out is not None:
            with contextlib.suppress(OSError):
                out.close()

    def alive(self) -> bool:
        """True while the watchdog process runs."""
        return self._proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return self._proc.poll()

    def fired(self) -> bool:
        """True once the watchdog has begun to kill the group: it says so on its stdout
        before the first signal, so a child found dead by then was killed by it (and not
        after it exited on its own)."""
        if self._fired:
            return True
        out = self._proc.stdout
        if out is not None and not out.closed:
            with contextlib.suppress(OSError, ValueError):  # BlockingIOError: nothing yet
                self._fired = b"fired" in os.read(out.fileno(), 64)
        return self._fired or self._proc.poll() == EXIT_FIRED


if __name__ == "__main__":
    sys.exit(main())
