"""Restart backoff for `conch elect --restart`. Pure: the clock is passed in.

1 s doubling to 60 s; reset once a child has run for 60 s.
"""

from __future__ import annotations

from dataclasses import dataclass, field

INITIAL = 1.0
MAXIMUM = 60.0
STABLE_AFTER = 60.0


@dataclass
class Backoff:
    initial: float = INITIAL
    maximum: float = MAXIMUM
    stable_after: float = STABLE_AFTER
    _next: float = field(default=INITIAL, init=False)

    def __post_init__(self) -> None:
        self._next = self.initial

    def after_exit(self, ran_for: float) -> float:
        """A child exited after running `ran_for` seconds: how long to wait before the next one."""
        if ran_for >= self.stable_after:
            self._next = self.initial
        delay = self._next
        self._next = min(self._next * 2, self.maximum)
        return delay

    def reset(self) -> None:
        self._next = self.initial
