"""History pruning off the scheduler thread: after a tick this daemon won (ran or skipped), the
job's run records beyond the newest HISTORY go (conch.cron.store.prune_history)."""

from __future__ import annotations

import logging
import threading

from conch.client import Client, EtcdError
from conch.cron import store

log = logging.getLogger(__name__)


class Housekeeper(threading.Thread):
    """Prunes a job's history (store.prune_history) after ticks this daemon won."""

    def __init__(self, client: Client, prefix: str) -> None:
        super().__init__(name="housekeeper", daemon=True)
        self.client, self.prefix = client, prefix
        self._pending: set[str] = set()
        self._pending_lock = threading.Lock()
        self._wake = threading.Event()
        self._halt = threading.Event()

    def request(self, job: str) -> None:
        with self._pending_lock:
            self._pending.add(job)
        self._wake.set()

    def halt(self) -> None:
        """Stop after the job at hand (join() to wait for it)."""
        self._halt.set()
        self._wake.set()

    def run(self) -> None:
        while not self._halt.is_set():
            self._wake.wait()
            self._wake.clear()
            with self._pending_lock:
                jobs, self._pending = self._pending, set()
            for job in sorted(jobs):
                if self._halt.is_set():
                    return
                try:
                    n = store.prune_history(self.client, self.prefix, job)
                    if n:
                        log.debug("job %r: pruned %d old run record(s)", job, n)
                except EtcdError as e:
                    log.debug("job %r: pruning failed (%s); later", job, e)
