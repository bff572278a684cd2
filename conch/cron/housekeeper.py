"""History pruning off the scheduler thread: after a tick this daemon won (ran or skipped), the
job's run records beyond its newest `history` (--history) go (conch.cron.store.prune_histories:
the jobs asked for meanwhile, many to a read)."""

from __future__ import annotations

import logging
import threading

from conch.client import Client, EtcdError
from conch.cron import store
from conch.cron.model import Job

log = logging.getLogger(__name__)


class Housekeeper(threading.Thread):
    """Prunes the history of the jobs asked for (store.prune_histories) after ticks this daemon
    won."""

    def __init__(self, client: Client, prefix: str) -> None:
        super().__init__(name="housekeeper", daemon=True)
        self.client, self.prefix = client, prefix
        self._pending: dict[str, int] = {}  # job name -> results to keep
        self._pending_lock = threading.Lock()
        self._wake = threading.Event()
        self._halt = threading.Event()

    def request(self, job: Job) -> None:
        with self._pending_lock:
            self._pending[job.name] = job.history
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
                pending, self._pending = self._pending, {}
            jobs = sorted(pending.items())
            for i in range(0, len(jobs), store.JOBS_PER_PRUNE_READ):
                if self._halt.is_set():
                    return
                chunk = jobs[i : i + store.JOBS_PER_PRUNE_READ]
                try:
                    n = store.prune_histories(self.client, self.prefix, chunk)
                    if n:
                        log.debug("pruned %d old run record(s) of %d job(s)", n, len(chunk))
                except EtcdError as e:
                    log.debug("pruning failed (%s); later", e)
