"""conch with its external watchdog removed — a deliberately broken conch for
test_harness_catches_a_broken_conch: a paused conch's child then outlives its slot, and the
invariant harness must say so. (Run as a script: `python broken_conch.py elect ...`.)"""

from __future__ import annotations

import sys

from conch import watchdog


class _NoWatchdog:
    """Looks like conch.watchdog.Watchdog, does nothing."""

    pid = 0
    broken = False
    returncode = None

    @classmethod
    def spawn(cls) -> _NoWatchdog:
        return cls()

    @classmethod
    def start(cls, pgid: int, kill_after: float, deadline: float) -> _NoWatchdog:
        return cls()

    def arm(self, pgid: int, kill_after: float, deadline: float, revoke: object = None) -> None:
        pass

    def update(self, deadline: float) -> None:
        pass

    def disarm(self, timeout: float = 2.0) -> None:
        pass

    def alive(self) -> bool:
        return True


watchdog.Watchdog = _NoWatchdog  # type: ignore[misc, assignment]

if __name__ == "__main__":
    from conch.cli import main

    sys.exit(main())
