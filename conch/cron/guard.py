"""One watchdog for every child group a daemon runs (conch.watchdog, its guard/release form).

A run asks for the watchdog before it spawns its child (`ready`: no watchdog, no run), hands
it the child's group while the child waits at its gate (`guard`), and gives the group back once
it is reaped (`release`). If conchd dies — SIGKILL, OOM — the watchdog's stdin closes and it
kills every group still guarded. A keeper thread waits on the watchdog process: one that dies
(killed, crashed) is replaced at once and given every group again; one that cannot take a line
within its bound (stopped) is killed and replaced the same way. So a daemon costs one watchdog
process, not one per run.

The window left: a group released after its reaping may have its number reused by an
unrelated process before the watchdog reads the release line; the watchdog would only act on
it if conchd died in that instant (as with the per-run watchdog before).
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from conch.watchdog import Watchdog

log = logging.getLogger(__name__)


class GroupGuard:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watchdog: Watchdog | None = None
        self._groups: dict[int, float] = {}  # pgid -> kill_after, as guarded
        self._closed = False

    def ready(self) -> None:
        """Make sure a watchdog runs (started if none does). Raises OSError if none can be
        started: the run must not start its child."""
        with self._lock:
            self._live()

    def guard(self, pgid: int, kill_after: float) -> None:
        """Guard the group from now on. Raises OSError if no watchdog can take it (the caller
        must then kill the group: its command must not run unguarded)."""
        with self._lock:
            try:
                self._live().guard(pgid, kill_after)
            except OSError as e:
                log.warning("the watchdog did not take a group (%s); starting a new one", e)
                self._replace()  # raises OSError if that fails too
                assert self._watchdog is not None
                self._watchdog.guard(pgid, kill_after)
            self._groups[pgid] = kill_after

    def release(self, pgid: int) -> None:
        """The group's run is over and reaped. Never raises: a watchdog that cannot take the
        line is replaced (with the groups still guarded)."""
        with self._lock:
            if self._groups.pop(pgid, None) is None or self._watchdog is None:
                return
            try:
                self._watchdog.release(pgid)
            except OSError as e:
                log.warning("the watchdog did not take a release (%s); starting a new one", e)
                try:
                    self._replace()
                except OSError as e2:
                    log.error("cannot start a new watchdog: %s", e2)

    def close(self) -> None:
        """conchd is done: the watchdog exits (killing only groups still guarded)."""
        with self._lock:
            self._closed = True
            wd, self._watchdog = self._watchdog, None
        if wd is not None:
            wd.close()

    # -- the caller holds the lock ---------------------------------------------------------
    def _live(self) -> Watchdog:
        wd = self._watchdog
        if wd is not None and wd.alive():
            return wd
        if wd is not None:
            log.warning("the watchdog died (status %s); starting a new one", wd.returncode)
        self._replace()
        assert self._watchdog is not None
        return self._watchdog

    def _replace(self) -> None:
        """A new watchdog guarding every group; the old one (if any) is SIGKILLed, which does
        not touch the groups. Raises OSError."""
        from conch.watchdog import Watchdog

        old, self._watchdog = self._watchdog, None
        if old is not None:
            old.kill()
        if self._closed:
            raise OSError("conchd is stopping")
        wd = Watchdog.spawn()
        try:
            for pgid, kill_after in self._groups.items():
                wd.guard(pgid, kill_after)
        except OSError:
            wd.kill()
            raise
        self._watchdog = wd
        threading.Thread(target=self._keep, args=(wd,), name="watchdog keeper",
                         daemon=True).start()  # fmt: skip

    def _keep(self, wd: Watchdog) -> None:
        """Wait for the watchdog to end; if it ends while it is still ours, replace it."""
        wd.wait()
        with self._lock:
            if self._watchdog is not wd or self._closed:
                return
            log.warning("the watchdog died (status %s); starting a new one", wd.returncode)
            try:
                self._replace()
            except OSError as e:
                log.error("cannot start a new watchdog: %s; runs go on unguarded", e)
