"""The result writer: the records of this daemon's finished runs, written to etcd many to a
transaction (each: the result, the delete of the run's alive marker, and for a failed run of an
--on-failure job the claim of its hook, run by conch.cron.hooks; those that end within
GATHER of each other share one) from one thread, in the order the runs finished. etcd may be
away for a while: a batch is retried (the same writes: idempotent) until written — when conchd
is stopping, given up after RESULT_GRACE. Each run hears the outcome through `Run.finished`."""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import TYPE_CHECKING

from conch.client import Client, EtcdClusterChanged, EtcdError
from conch.cron import store
from conch.cron.model import RunRecord

if TYPE_CHECKING:
    from conch.cron.hooks import FailureHooks
    from conch.cron.runner import Run

log = logging.getLogger(__name__)

RESULT_GRACE = 10.0  # when stopping with etcd unreachable: give up writing a result after this
# how long the first result of a batch waits for others: when many runs end together (a
# thousand jobs on one tick) they share transactions instead of taking one each
GATHER = 0.05


class ResultWriter(threading.Thread):
    def __init__(
        self,
        client: Client,
        prefix: str,
        stopping: threading.Event,
        hooks: FailureHooks | None = None,
        grace: float = RESULT_GRACE,
    ) -> None:
        super().__init__(name="results", daemon=True)
        self.client, self.prefix, self.stopping = client, prefix, stopping
        self.hooks = hooks  # runs the --on-failure hooks a result's transaction claimed (None:
        #                     claims none)
        self.grace = grace  # when stopping with etcd away: give a result up after this
        self._queue: queue.SimpleQueue[tuple[Run, RunRecord] | None] = queue.SimpleQueue()

    def put(self, run: Run, rec: RunRecord) -> None:
        """Write `rec` as the result of `run` (soon); then call run.finished."""
        self._queue.put((run, rec))

    def halt(self) -> None:
        """Stop once every result put before is written or given up (join() to wait)."""
        self._queue.put(None)

    def run(self) -> None:
        halted = False
        while not halted:
            item = self._queue.get()
            batch: list[tuple[Run, RunRecord]] = []
            gathered = time.monotonic() + GATHER
            while item is not None:
                batch.append(item)
                if len(batch) >= store.RESULTS_PER_TXN:
                    break
                try:
                    item = self._queue.get(timeout=max(0.0, gathered - time.monotonic()))
                except queue.Empty:
                    break
            halted = item is None
            if batch:
                ok = self._write(batch)
                for r, _rec in batch:
                    try:
                        r.finished(ok)
                    except Exception:  # the writer must not die: later runs need it
                        log.exception("%s: internal error", r.label)

    def _write(self, batch: list[tuple[Run, RunRecord]]) -> bool:
        """Write the batch; retry while etcd is away. True once written."""
        delay, warned, give_up = 0.2, False, None
        what = batch[0][0].label + (f" and {len(batch) - 1} more" if len(batch) > 1 else "")
        while True:
            timeout = store.CLAIM_TIMEOUT
            if give_up is not None:  # stopping: the last attempt ends with the grace
                timeout = max(0.1, min(timeout, give_up - time.monotonic()))
            try:
                hooked = store.finish_many(
                    self.client, self.prefix, [(r.job, r.tick, rec) for r, rec in batch],
                    hook_value=self.hooks.claim_value() if self.hooks else b"", timeout=timeout,
                )  # fmt: skip
                if warned:
                    log.info("%s: result recorded", what)
                for (r, rec), claimed in zip(batch, hooked, strict=True):
                    if claimed and self.hooks is not None:
                        self.hooks.started_for(r.job, r.tick, rec)
                return True
            except EtcdClusterChanged as e:
                log.error("%s: result NOT recorded: %s", what, e)
                return False
            except EtcdError as e:
                now = time.monotonic()
                if self.stopping.is_set():
                    give_up = give_up or now + self.grace
                    if now >= give_up:
                        log.error("%s: result NOT recorded: %s", what, e)
                        return False
                if not warned:
                    log.warning("%s: cannot record the result yet (%s); retrying", what, e)
                    warned = True
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
