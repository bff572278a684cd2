"""The launcher: starts this daemon's won ticks one after another, in the order they were
claimed, from one thread — so the claimer goes on claiming while children start, and a
thousand due jobs cost a thousand spawns in a row, not a thousand threads racing for the
interpreter. The daemon's follower then follows every started child (conch.cron.follower)."""

from __future__ import annotations

import logging
import queue
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from conch.cron.runner import Run

log = logging.getLogger(__name__)


class Launcher(threading.Thread):
    def __init__(self) -> None:
        super().__init__(name="launcher", daemon=True)
        self._queue: queue.SimpleQueue[Run | None] = queue.SimpleQueue()

    def submit(self, run: Run) -> None:
        self._queue.put(run)

    def halt(self) -> None:
        """Stop once every run submitted before is started (join() to wait). Runs submitted
        while conchd stops are started all the same and get its signal at once: a claimed
        tick is run (and recorded as interrupted), never left claimed with nothing run."""
        self._queue.put(None)

    def run(self) -> None:
        while (r := self._queue.get()) is not None:
            r.launch()  # never raises
