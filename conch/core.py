"""The core shared by every primitive: acquire a slot, run the child under supervision, release.

    session (lease + local deadline)  ->  contention (enqueue / wait / promote)
        ->  child in its own process group + external watchdog + watch on the holder key
        ->  child exits: resign at once | lease lost: kill group, exit 70 | signal S: forward,
            kill group after --kill-after, resign, exit 128+S

`--restart` (elect) keeps the office across child exits with exponential backoff, and on
lease loss campaigns again instead of exiting 70.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from conch import __version__
from conch.backoff import Backoff
from conch.client import (
    Client,
    EtcdClusterChanged,
    EtcdError,
    EtcdUnavailable,
    Watch,
    WatchCompacted,
)
from conch.contend import Contention, Outcome
from conch.errors import (
    EXIT_LEASE_LOST,
    EXIT_NOT_ACQUIRED,
    EXIT_OSERR,
    EXIT_UNAVAILABLE,
    ConchError,
    child_exit_code,
    signal_exit_code,
)
from conch.holder import HolderRecord, redact, rfc3339
from conch.holdmetrics import NoHoldMetrics
from conch.session import Session

if TYPE_CHECKING:
    from conch.supervisor import Child
    from conch.watchdog import Watchdog

log = logging.getLogger("conch")

FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# While a child runs, conch sleeps until something happens: SIGCHLD (the child or the watchdog
# exited), a forwarded signal, or a loss listener (keepalive, holder-key watch) wakes it at
# once. This is only the longest sleep between two looks at the lease deadline.
MAX_SLEEP = 1.0
SPARE_END = 1.0  # how long a spare child that never ran may take to end at its closed gate


@dataclass
class RunSpec:
    kind: str  # "elect" | "sema"
    name: str
    directory: bytes
    slots: int
    cmd: list[str]
    ttl: float = 10.0
    kill_after: float = 10.0
    nonblock: bool = False
    timeout: float | None = None
    restart: bool = False
    secret: str | None = None  # the etcd password: redacted from the holder record
    extra_env: dict[str, str] = field(default_factory=dict)


class Waker:
    """Wakes the main loop: from other threads (loss listeners) and from signals, whichever
    thread the kernel delivered them to. A self-pipe that is also the interpreter's signal
    wakeup fd: a threading.Event would miss a signal that landed on a gRPC or keepalive
    thread (the main thread's wait is then not interrupted)."""

    def __init__(self) -> None:
        self.r, self.w = os.pipe()
        for fd in (self.r, self.w):
            os.set_blocking(fd, False)
            os.set_inheritable(fd, False)

    def set(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):  # full: a wake-up is pending anyway
            os.write(self.w, b"\0")

    def wait(self, timeout: float) -> bool:
        """Sleep until woken or `timeout` passes (the wake-up stays pending until clear)."""
        import select

        poller = select.poll()
        poller.register(self.r, select.POLLIN)
        return bool(poller.poll(max(0.0, timeout) * 1000.0))

    def clear(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            while os.read(self.r, 512):
                pass


class Signals:
    """Catches SIGINT/SIGTERM/SIGHUP for the lifetime of a run; the first one wins. SIGCHLD
    only wakes the main loop (a child or the watchdog exited: look now, not on a timer)."""

    def __init__(self) -> None:
        self.received: int | None = None
        self.event = threading.Event()
        self.wake = Waker()  # woken by any signal; also used by loss listeners
        self._old: dict[int, object] = {}

    def _handler(self, signum: int, frame: object) -> None:
        if self.received is None:
            self.received = signum
        self.event.set()
        self.wake.set()

    def _child_exited(self, signum: int, frame: object) -> None:
        self.wake.set()

    @contextmanager
    def installed(self) -> Iterator[Signals]:
        for s in FORWARDED_SIGNALS:
            self._old[s] = signal.signal(s, self._handler)
        self._old[signal.SIGCHLD] = signal.signal(signal.SIGCHLD, self._child_exited)
        old_fd = signal.set_wakeup_fd(self.wake.w, warn_on_full_buffer=False)
        try:
            yield self
        finally:
            signal.set_wakeup_fd(old_fd)
            for s, h in self._old.items():
                signal.signal(s, h)  # type: ignore[arg-type]


def _record(spec: RunSpec) -> HolderRecord:
    return HolderRecord(
        host=socket.gethostname(),
        pid=os.getpid(),
        started=rfc3339(time.time()),
        cmd=redact(spec.cmd, spec.secret),
        version=__version__,
    )


class KeyWatch:
    """Watches the holder's own key; its deletion means the slot is gone (lease loss). This
    thread guards the promise: if it ever fails, the hold ends as a loss."""

    def __init__(self, client: Client, c: Contention, session: Session, start_rev: int) -> None:
        self.client, self.c, self.session = client, c, session
        self.start_rev = start_rev
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._w: Watch | None = None
        self._t = threading.Thread(target=self._run, name="holder-key-watch", daemon=True)
        self._t.start()

    def _run(self) -> None:
        try:
            self._watch()
        except BaseException as e:  # never die silently: without this watch a delete goes unseen
            self.session.mark_lost(f"holder-key watch failed: {type(e).__name__}: {e}")

    def _recheck(self) -> int | None:
        """One read: the revision to watch from (None: my key is gone). A second read for the
        start revision would miss a delete that falls between the two."""
        rev = self.c.check()
        if rev is None:
            self.session.mark_lost("holder key was deleted")
            return None
        return rev + 1

    def _watch(self) -> None:
        rev = self.start_rev
        while not self._stop.is_set() and not self.session.lost.is_set():
            try:
                w = self.client.watch(self.c.key, start_revision=rev, no_put=True)
            except EtcdUnavailable as e:
                log.debug("holder-key watch: %s; retrying", e)
                self._stop.wait(0.5)
                continue
            except EtcdError as e:  # not a passing outage: a holder that cannot watch its key
                self.session.mark_lost(f"holder-key watch failed: {e}")  # must not go on
                return
            with self._lock:
                self._w = w
            if self._stop.is_set():
                w.cancel()
                return
            try:
                while not self._stop.is_set():
                    try:
                        events = w.get(1.0)
                    except WatchCompacted:
                        next_rev = self._recheck()
                        if next_rev is None:
                            return
                        rev = next_rev
                        break
                    if events:
                        self.session.mark_lost("holder key was deleted")
                        return
            except EtcdUnavailable as e:
                log.debug("holder-key watch broke: %s; re-checking", e)
                try:
                    next_rev = self._recheck()
                    if next_rev is None:
                        return
                    rev = next_rev
                except EtcdError:
                    pass  # the keepalive deadline decides
                self._stop.wait(0.5)
            except EtcdError as e:
                self.session.mark_lost(f"holder-key watch failed: {e}")
                return
            finally:
                w.cancel()

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            w = self._w
        if w is not None:
            w.cancel()  # wakes a blocked get() at once
        self._t.join(timeout=2.0)


class Ending(enum.Enum):
    """How one hold ended."""

    EXITED = "exited"  # the child exited on its own: conch exits with its code
    LOST = "lost"  # the slot could not be trusted while the child ran: group killed, 70
    SIGNAL = "signal"  # conch got a signal: forwarded, group ended, 128+S
    NOT_STARTED = "not started"  # the lease was untrusted before the spawn: nothing ran


@dataclass
class HoldResult:
    ending: Ending
    code: int  # exit code conch should use
    ran_for: float = 0.0
    reason: str = ""


# a hold's watchdog and child's process, started ahead (either may be missing)
Spares = tuple["Watchdog | None", "Child | None"]
NO_SPARE: Spares = (None, None)


class Spare:
    """The processes a hold needs, started while this contender is next in line: its watchdog
    (unarmed) and its child's process held at the gate (the command not yet exec'd). Taking
    the slot then only has to arm the one and open the other (docs/decisions/0006). On the next
    waiter's host only; both end quietly if conch dies (EOF on their pipes). `env` gives the
    child's environment (it is known once the contender is queued)."""

    def __init__(self, cmd: list[str], env: Callable[[], dict[str, str]]) -> None:
        self._cmd, self._env = cmd, env
        self._wd: Watchdog | None = None
        self._child: Child | None = None
        self._child_env: dict[str, str] = {}

    def ready(self) -> None:
        from conch.supervisor import Child
        from conch.watchdog import Watchdog

        if self._wd is None or not self._wd.alive():
            self._discard_watchdog()
            try:
                self._wd = Watchdog.spawn()
            except OSError as e:  # the hold starts one itself, and reports it if it cannot
                log.debug("cannot start a spare watchdog: %s", _oserror(e))
        if self._child is None or self._child.poll() is not None:
            self._discard_child()
            try:
                self._child_env = self._env()
                self._child = Child.spawn(self._cmd, self._child_env)
            except ConchError as e:  # the hold tries again, and reports it if it cannot
                log.debug("cannot start the child's process ahead: %s", e)

    def take(self) -> Spares:
        """The spares, if any, each still alive (the caller owns them from now on)."""
        if self._wd is not None and not self._wd.alive():
            self._discard_watchdog()
        if self._child is not None and (self._child.poll() is not None or not self._runnable()):
            self._discard_child()  # the hold spawns anew, and reports what cannot be run
        taken = self._wd, self._child
        self._wd = self._child = None
        return taken

    def _runnable(self) -> bool:
        """The command can still be exec'd (it was, when the child was started ahead)."""
        from conch.supervisor import check_runnable

        try:
            check_runnable(self._cmd[0], self._child_env)
        except OSError:
            return False
        return True

    def discard(self) -> None:
        self._discard_watchdog()
        self._discard_child()

    def _discard_watchdog(self) -> None:
        wd, self._wd = self._wd, None
        if wd is not None:
            wd.disarm()

    def _discard_child(self) -> None:
        child, self._child = self._child, None
        if child is not None:
            discard(child)


def discard(child: Child) -> None:
    """End a child that never got past its gate (the shell exits 125 on the closed pipe)."""
    child.close_gate()
    if child.wait(SPARE_END) is None:
        child.terminate_group(SPARE_END)


def child_env(spec: RunSpec, c: Contention, session: Session) -> dict[str, str]:
    """The child's environment: conch's own, plus the CONCH_* variables of this hold."""
    env = dict(os.environ)
    env.update(
        CONCH_NAME=spec.name,
        CONCH_REV=str(c.rev),
        CONCH_LEASE=format(session.lease_id, "x"),
        CONCH_TTL=str(session.granted_ttl),
        **spec.extra_env,
    )
    return env


def hold(
    client: Client,
    session: Session,
    c: Contention,
    spec: RunSpec,
    sig: Signals,
    rev: int,
    release: Callable[[], None] | None = None,
    spare: Spares = NO_SPARE,
    on_started: Callable[[], None] | None = None,
) -> HoldResult:
    """Run the child while the slot is ours. Returns how it ended; the group is dead on return.

    `release`, if given, is called as soon as the group is dead after the child exited or a
    signal ended it (not after a loss), before anything else is cleaned up: the successor's
    wait is then as short as it can be.

    The watchdog is started before the child (a failure to start it means nothing ran); the
    child's process waits at its gate until the watchdog is armed, so a conch that dies in
    between leaves nothing running; if arming fails, the child is ended before the slot is
    given up. `spare`: the watchdog and the child's process started ahead (Spare), used if
    still alive. `on_started` is called once the child runs. Raises ConchError when the child
    or its watchdog cannot be started."""
    from conch.revoke import document
    from conch.supervisor import Child
    from conch.watchdog import Watchdog

    kw: KeyWatch | None = None
    spare_wd, spare_child = spare
    unhook = session.on_lost(lambda _r: sig.wake.set())
    try:
        if not session.is_trusted():
            if spare_wd is not None:
                spare_wd.disarm()
            if spare_child is not None:
                discard(spare_child)
            reason = session.loss_reason or "lease could not be confirmed in time"
            return HoldResult(Ending.NOT_STARTED, EXIT_LEASE_LOST, reason=reason)
        try:
            wd = spare_wd or Watchdog.spawn()
        except OSError as e:
            if spare_child is not None:
                discard(spare_child)
            raise ConchError(f"cannot start the watchdog: {_oserror(e)}", EXIT_OSERR) from e
        # if conch dies, the watchdog kills the group and then revokes the lease
        revoke = document(client.config, session.lease_id)
        try:
            child = spare_child or Child.spawn(spec.cmd, child_env(spec, c, session))
        except BaseException:
            wd.disarm()
            raise
        # the child waits at its gate: a conch that dies before opening it closes the gate,
        # and the command never starts
        try:
            wd.arm(child.pgid, spec.kill_after, session.deadline(), revoke=revoke)
        except OSError as e:
            child.terminate_group(spec.kill_after)  # closes the gate: the command never ran
            wd.disarm()
            raise ConchError(
                f"the watchdog died before it was armed ({_oserror(e)}): command not run",
                EXIT_OSERR,
            ) from e
        started = time.monotonic()
        child.open_gate()
        if on_started is not None:
            on_started()
        unrenew = session.on_renew(wd.update)
        log.debug("child %d started (rev %d, lease %x)", child.pid, c.rev, session.lease_id)
        # started after the child (off the hand-over's path), it misses nothing: it watches
        # from the revision at which the key was last seen alive
        kw = KeyWatch(client, c, session, rev + 1)
        if not c.promoted:
            _promote_late(c, session)
        try:
            return _supervise(child, wd, session, spec, sig, started, release)
        finally:
            unrenew()
            wd.disarm()
    finally:
        unhook()
        if kw is not None:
            kw.stop()


def _supervise(
    child: Child,
    wd: Watchdog,
    session: Session,
    spec: RunSpec,
    sig: Signals,
    started: float,
    release: Callable[[], None] | None,
) -> HoldResult:
    """The main loop while the child runs: a signal, a lost or unconfirmed lease, a dead
    watchdog, or the child's exit ends it."""
    released = release or (lambda: None)
    while True:
        if sig.received is not None:
            s = sig.received
            child.terminate_group(spec.kill_after, sig=s)
            released()
            return HoldResult(Ending.SIGNAL, signal_exit_code(s), time.monotonic() - started)
        reason = ""
        if not session.is_trusted():
            reason = session.loss_reason or "lease could not be confirmed in time"
        elif not wd.alive():  # nothing would kill the child if conch died or paused now
            reason = f"the watchdog died (exit status {wd.returncode})"
            session.mark_lost(reason)
        if reason:
            log.warning("lease lost (%s); killing the child", reason)
            child.terminate_group(spec.kill_after)
            return HoldResult(Ending.LOST, EXIT_LEASE_LOST, reason=reason)
        rc = child.poll()
        if rc is not None:
            # How it ended is decided now: a deadline that passes, or a signal that arrives,
            # while the rest of the group is reaped does not change it. An untrusted lease, or
            # a watchdog that has begun to fire, at this point means the watchdog killed the
            # child (conch was paused or stuck, or its last renewal reached the watchdog late).
            ran = time.monotonic() - started
            trusted = session.is_trusted() and not wd.fired()
            child.reap_group(spec.kill_after)
            if not trusted:
                wd.disarm()
                reason = session.loss_reason or "lease could not be confirmed in time"
                session.mark_lost(reason)
                return HoldResult(Ending.LOST, EXIT_LEASE_LOST, ran, reason)
            released()  # the group is dead: the successor may start now
            wd.disarm()
            if sig.received is not None:  # arrived during the reap: conch exits 128+S
                return HoldResult(Ending.SIGNAL, signal_exit_code(sig.received), ran)
            return HoldResult(Ending.EXITED, child_exit_code(rc), ran)
        left = session.deadline() - session.clock()
        sig.wake.wait(min(MAX_SLEEP, max(0.0, left)))
        sig.wake.clear()


def _promote_late(c: Contention, session: Session) -> None:
    """The promotion put of a holder whose wait already saw its key alive: it wakes the next
    waiter and restamps the holder record. A key found gone now is a loss (the child is
    killed, exit 70); an etcd error leaves the next waiter to wake when this one resigns."""
    try:
        if not c.promote():
            session.mark_lost("holder key was deleted")
    except EtcdError as e:
        log.debug("promotion put failed: %s (the next waiter wakes when this one resigns)", e)


def _oserror(e: OSError) -> str:
    return e.strerror or str(e)


def _sleep(sig: Signals, seconds: float, session: Session | None = None) -> None:
    end = time.monotonic() + seconds
    while sig.received is None and (session is None or not session.lost.is_set()):
        left = end - time.monotonic()
        if left <= 0:
            return
        sig.wake.wait(min(left, 0.2))
        sig.wake.clear()


def run(client: Client, spec: RunSpec, sig: Signals, metrics: NoHoldMetrics | None = None) -> int:
    """The whole life of one `conch elect|sema ... -- CMD`. Returns conch's exit code.
    `metrics`: what --metrics-addr serves (conch.holdmetrics)."""
    m = metrics or NoHoldMetrics()
    deadline = None if spec.timeout is None else time.monotonic() + spec.timeout
    backoff = Backoff()
    campaign_backoff = Backoff(initial=0.5, maximum=5.0)
    ran_once = False
    stale: list[int] = []  # leases lost during an outage, revoked once etcd answers again

    def etcd_trouble(e: EtcdError) -> None:
        """While campaigning: a --restart service that has run retries; anything else ends
        with 69. A changed cluster identity always ends: nothing is ever acquired there."""
        if isinstance(e, EtcdClusterChanged) or not (spec.restart and ran_once):
            raise ConchError(f"etcd unavailable: {e}", EXIT_UNAVAILABLE) from e
        log.warning("etcd trouble while campaigning (%s); retrying", e)
        _sleep(sig, campaign_backoff.after_exit(0))

    while True:
        if sig.received is not None:
            return signal_exit_code(sig.received)
        # -- campaign -------------------------------------------------------------------
        _revoke_stale(client, stale)
        session = Session(client, spec.ttl, probe_key=spec.directory)
        try:
            session.open()
        except EtcdError as e:
            etcd_trouble(e)
            continue
        m.session(session.is_trusted)
        queued = time.monotonic()
        c = Contention(
            client,
            spec.directory,
            spec.slots,
            session.lease_id,
            _record(spec),
            lost=lambda session=session: not session.is_trusted(),
        )
        unwake = session.on_lost(lambda _r: sig.wake.set())
        try:
            outcome, rev, spare, free_at = _acquire(c, session, spec, sig, deadline)
        except EtcdError as e:
            unwake()
            session.close()
            etcd_trouble(e)
            continue
        if outcome is not Outcome.HELD:
            unwake()
            _withdraw(c, session)
            if outcome is Outcome.TIMEOUT:
                return EXIT_NOT_ACQUIRED
            if outcome is Outcome.STOPPED:
                return signal_exit_code(sig.received or signal.SIGTERM)
            m.lease_lost()
            log.info("lost the lease while waiting; queueing again")
            continue  # LOST while waiting: campaign again with a fresh lease
        campaign_backoff.reset()
        holding = _Holding(m, queued, free_at)
        # -- hold ---------------------------------------------------------------------------
        while True:
            # a one-shot resigns the moment its group is dead (the successor starts sooner);
            # a --restart service keeps the slot across child exits
            release = None if spec.restart else lambda c=c, session=session: _withdraw(c, session)
            try:
                res = hold(client, session, c, spec, sig, rev, release, spare, holding.started)
                spare = NO_SPARE  # used by the first hold only
            except BaseException:
                unwake()
                _withdraw(c, session)  # e.g. the command cannot be run: leave no key behind
                raise
            if res.ending is Ending.NOT_STARTED:
                # promoted, but the lease could not be trusted before the spawn: nothing ran,
                # so this is a waiter that lost its lease: it queues again (guarantees.md)
                m.lease_lost()
                unwake()
                if not session.close(revoke=True):
                    stale.append(session.lease_id)
                log.info("lease untrusted before the child started (%s); queueing again",
                         res.reason)  # fmt: skip
                break
            ran_once = True
            m.child_ended()
            if res.ending is Ending.SIGNAL:
                unwake()
                _withdraw(c, session)
                return res.code
            if res.ending is Ending.LOST:
                m.lease_lost()
                unwake()
                if not session.close(revoke=True):
                    stale.append(session.lease_id)
                if not spec.restart:
                    return EXIT_LEASE_LOST
                log.warning("lease lost (%s); campaigning again", res.reason)
                break
            if not spec.restart:
                unwake()
                _withdraw(c, session)
                return res.code
            delay = backoff.after_exit(res.ran_for)
            log.info("child exited with %d; restarting in %.0fs", res.code, delay)
            _sleep(sig, delay, session)
            if sig.received is not None:
                unwake()
                _withdraw(c, session)
                return signal_exit_code(sig.received)
            if not session.is_trusted():
                unwake()
                if not session.close(revoke=True):
                    stale.append(session.lease_id)
                break
            try:
                checked = c.check()  # one read: the key is mine, and the watch starts there
            except EtcdError as e:
                log.debug("re-check before restart failed: %s", e)
                continue  # hold() re-checks trust before spawning
            if checked is None:
                session.mark_lost("holder key is gone")
                unwake()
                session.close(revoke=True)  # the key is gone: nothing stale is left
                break
            rev = checked


class _Holding:
    """One acquisition, for the metrics: when its wait saw the slot free, and the children run
    under it (the first one's start gives the hand-over latency; the others are --restart's)."""

    def __init__(self, m: NoHoldMetrics, queued: float, free_at: float) -> None:
        self.m, self.acquired, self.children = m, free_at, 0
        m.acquired(free_at - queued)

    def started(self) -> None:
        first = self.children == 0
        self.m.child_started(time.monotonic() - self.acquired if first else None)
        if not first:
            self.m.restarted()
        self.children += 1


def _acquire(
    c: Contention, session: Session, spec: RunSpec, sig: Signals, deadline: float | None
) -> tuple[Outcome, int, Spares, float]:
    """Queue and wait. HELD comes with the watchdog and child's process started while next in
    line (the caller owns them), and the time.monotonic() at which the wait saw the slot
    free; any other outcome has ended them."""
    spare = Spare(spec.cmd, lambda: child_env(spec, c, session))
    try:
        c.enqueue()
        outcome = c.wait(
            nonblock=spec.nonblock, deadline=deadline, stop=sig.event, wake=sig.wake,
            on_next=spare.ready,
        )  # fmt: skip
        free_at = time.monotonic()
        if outcome is not Outcome.HELD:
            return outcome, 0, NO_SPARE, free_at
        if c.proven_rev:
            # the wait itself saw my key alive at proven_rev (etcd #11456 is ruled out): the
            # promotion put follows the spawn, off the hand-over's path (hold)
            return Outcome.HELD, c.proven_rev, spare.take(), free_at
        if not c.promote():  # my key vanished while I waited: never run on a stale view
            return Outcome.LOST, 0, NO_SPARE, free_at
        return Outcome.HELD, c.promoted_rev, spare.take(), free_at
    finally:
        spare.discard()  # whatever was not taken


def _revoke_stale(client: Client, stale: list[int]) -> None:
    """A lease conch gave up on while etcd was unreachable still holds its key until it
    expires (etcd even extends leases when a new leader is elected): revoke it, so a
    re-campaign after an outage does not queue behind its own dead key."""
    for lease_id in list(stale):
        try:
            client.lease_revoke(lease_id, timeout=2.0)
            stale.remove(lease_id)
        except EtcdError as e:
            log.debug("revoke of stale lease %x failed: %s", lease_id, e)


def _withdraw(c: Contention, session: Session) -> None:
    """Resign: revoke the lease, which deletes my key with it (one round trip); if that
    fails, a guarded delete of the key (best effort, bounded: else the lease expires)."""
    if session.close(revoke=True):
        c.withdrawn()
        return
    try:
        c.withdraw()
    except EtcdError as e:
        log.debug("withdraw failed: %s (the lease expiry removes the key)", e)
