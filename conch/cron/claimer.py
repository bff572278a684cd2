"""Claims: which of a daemon's jobs have a tick due (conch.cron.scheduler), the claim
transaction for it (conch.cron.store.claim_many), and what each outcome means — a won tick is run,
a skipped one recorded, a lost or stale one dropped. A claim whose answer was lost is resolved
later by a read (store.own_claim): if it committed, the tick is this daemon's, run late.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from conch.client import Client, EtcdClusterChanged, EtcdError
from conch.cron import store
from conch.cron.metrics import ClaimResult, NoMetrics
from conch.cron.model import (
    MISSED_COUNT_CAP,
    MISSED_RECORDS,
    Job,
    Labels,
    RunRecord,
    RunStatus,
    Tick,
    format_tick,
    labels_match,
    tick_of,
)
from conch.cron.scheduler import RETRY_AFTER, Due, JobState, missed_ticks
from conch.cron.share import SHARE_GRACE, rank
from conch.cron.store import CLAIM_TIMEOUT, CLAIMS_PER_TXN, Claim, ClaimOutcome, ClaimRequest
from conch.holder import rfc3339

if TYPE_CHECKING:
    from conch.session import Session

log = logging.getLogger(__name__)

# the pending `cron run` requests a daemon knows of: job name -> {tick: when it may be claimed
# (this host's clock: when it was seen, or a retry's time)}
Requests = dict[str, dict[Tick, float]]

# the `result` label of conchd_claims_total for each outcome (a changed definition: none)
_METRIC = {
    ClaimOutcome.WON: ClaimResult.WON,
    ClaimOutcome.SKIPPED: ClaimResult.WON,
    ClaimOutcome.TAKEN: ClaimResult.LOST,
    ClaimOutcome.BEHIND: ClaimResult.BEHIND,
}


class Claimer:
    """Claims the due ticks of one daemon's jobs. A won tick goes to `start_run(job, tick,
    claim, lease)`; after a skipped one or `missed` records, `on_recorded(job)` (its history may
    be pruned)."""

    def __init__(
        self,
        client: Client,
        prefix: str,
        daemon_id: str,
        host: str,
        metrics: NoMetrics,
        clock: Callable[[], float],
        start_run: Callable[[Job, Tick, Claim, int], None],
        on_recorded: Callable[[Job], None],
    ) -> None:
        self.client, self.prefix, self.daemon_id, self.host = client, prefix, daemon_id, host
        self.metrics = metrics
        self._clock = clock  # the group's wall-clock time (conchd's corrected clock)
        self._start_run = start_run
        self._on_recorded = on_recorded
        # identifies this daemon process's claims: a retried claim whose first answer was
        # lost finds its own record (store.claim_many); a restarted daemon gets a new one
        self.claim_id = uuid.uuid4().hex
        self._peers: frozenset[str] = frozenset()  # the live daemons the delays are for
        self._ranks: dict[str, int] = {}  # job name -> this daemon's rank among those peers

    def claim_due(
        self,
        jobs: dict[str, JobState],
        session: Session | None,
        stopping: threading.Event,
        peers: frozenset[str] = frozenset(),
        labels_of: dict[str, Labels] | None = None,
        requests: Requests | None = None,
    ) -> None:
        """Claim every tick due now — this daemon's share of the jobs at their tick, the
        others' a little later (conch.cron.share; `peers`: the live daemons; for a job added
        --on labels, only those whose `labels_of` match count) — up to CLAIMS_PER_TXN in one
        transaction; then the `cron run` requests (`requests`) as their share says; nothing
        without a trusted lease."""
        s = session
        if s is not None and s.is_trusted():
            for st in list(jobs.values()):
                if st.unsure:
                    self._resolve_unsure(st)
        if peers != self._peers:
            self._peers, self._ranks = peers, {}
        daemons = len(peers | {self.daemon_id})
        now, wall = datetime.fromtimestamp(self._clock(), UTC), time.time()
        wants: list[tuple[JobState, Due]] = []
        peer_labels = labels_of or {}
        for name, st in jobs.items():
            if st.job.on:  # its share among the daemons that may claim it
                able = {p for p in peers if labels_match(st.job.on, peer_labels.get(p, ()))}
                st.rank, st.daemons = rank(self.daemon_id, able, name), len(able | {self.daemon_id})
            else:
                st.rank, st.daemons = self._rank(name), daemons
            due = st.due_at(now, wall)
            if due is None:
                continue
            if due.passed:  # this daemon fell behind: only the newest due tick counts
                log.debug("job %r: %d tick(s) passed unclaimed here", name, due.passed)
            wants.append((st, due))
        if s is None or not s.is_trusted():
            return
        wants.sort(key=lambda w: (w[1].tick, w[0].rank, w[0].job.name))
        for i in range(0, len(wants), CLAIMS_PER_TXN):
            if stopping.is_set() or not self._claim_batch(wants[i : i + CLAIMS_PER_TXN], s):
                return
        if requests:
            self._claim_requests(jobs, requests, s, wall)

    def _claim_requests(
        self, jobs: dict[str, JobState], requests: Requests, s: Session, wall: float
    ) -> None:
        """Claim the `cron run` requests due here: at once where this daemon ranks first for
        the job, SHARE_GRACE later for each daemon before it (the first may be down)."""
        wants = [
            ClaimRequest(st.job, st.rev, tick, manual=True)
            for name, pending in requests.items()
            if (st := jobs.get(name)) is not None
            for tick, seen in pending.items()
            if wall >= seen + st.rank * SHARE_GRACE
        ][:CLAIMS_PER_TXN]
        if not wants:
            return
        try:
            claims = self._claim_many(wants, s, CLAIM_TIMEOUT)
        except EtcdClusterChanged:
            raise
        except EtcdError as e:  # may have committed: the retry finds its own record
            log.warning("claim of %d `cron run` request(s) failed: %s; retrying", len(wants), e)
            for w in wants:
                requests[w.job.name][w.tick] = time.time() + RETRY_AFTER
            return
        for w, c in zip(wants, claims, strict=True):
            if c.outcome is ClaimOutcome.CHANGED:  # the definition is newer than ours: again
                requests[w.job.name][w.tick] = time.time() + RETRY_AFTER  # once the watch has it
                continue
            pending = requests[w.job.name]
            pending.pop(w.tick, None)
            if not pending:
                del requests[w.job.name]
            self._claimed(w.job, w.tick, c, s.lease_id)

    def _claim_many(self, wants: list[ClaimRequest], s: Session, timeout: float) -> list[Claim]:
        """store.claim_many as this daemon, on its lease, now."""
        return store.claim_many(
            self.client, self.prefix, wants, daemon=self.daemon_id, claim_id=self.claim_id,
            host=self.host, lease=s.lease_id, now=rfc3339(time.time()), timeout=timeout,
        )  # fmt: skip

    def _rank(self, name: str) -> int:
        r = self._ranks.get(name)
        if r is None:
            r = self._ranks[name] = rank(self.daemon_id, self._peers, name)
        return r

    def _drop_taken(self, batch: list[tuple[JobState, Due]]) -> list[tuple[JobState, Due]]:
        """The ticks of `batch` worth a claim: other daemons' shares (rank > 0) that their
        owners claimed in time are read (keys only, one read) and dropped as TAKEN — a failed
        claim would cost etcd and this daemon several times more. A tick this daemon may have
        claimed already (its answer lost: `unsure`) is always claimed: the claim knows its own."""
        peek = [i for i, (st, due) in enumerate(batch)
                if st.rank > 0 and tick_of(due.tick) not in st.unsure]  # fmt: skip
        if not peek:
            return batch
        ticks = [(batch[i][0].job.name, tick_of(batch[i][1].tick)) for i in peek]
        try:
            revs = store.claimed_ticks(self.client, self.prefix, ticks, timeout=CLAIM_TIMEOUT)
        except EtcdClusterChanged:
            raise
        except EtcdError as e:  # only a hint: claim them all
            log.debug("peek at %d claimed tick(s) failed: %s", len(ticks), e)
            return batch
        taken = set()
        for i, (name, tick), rev in zip(peek, ticks, revs, strict=True):
            if rev:
                taken.add(i)
                st, due = batch[i]
                st.claim_decided(tick, due.following)
                self.metrics.claim(name, ClaimResult.LOST)
                log.debug("job %r tick %s: claimed by another daemon (rev %d)", name,
                          format_tick(tick), rev)  # fmt: skip
        return [w for i, w in enumerate(batch) if i not in taken]

    def _claim_batch(self, batch: list[tuple[JobState, Due]], s: Session) -> bool:
        """Claim the ticks of `batch` in one transaction; act on each outcome. False: stop
        claiming for now (the lease is gone)."""
        batch = self._drop_taken(batch)
        if not batch:
            return True
        left = min(due.following.timestamp() for _, due in batch) - self._clock()
        wants = [ClaimRequest(st.job, st.rev, tick_of(due.tick)) for st, due in batch]
        try:
            claims = self._claim_many(wants, s, max(0.5, min(CLAIM_TIMEOUT, left)))
        except EtcdClusterChanged:
            raise
        except EtcdError as e:
            if "lease not found" in str(e):
                s.mark_lost(f"lease {s.lease_id:x} not found")
                return False
            first = wants[0]
            log.warning("claim of %d tick(s) (job %r tick %s%s) failed: %s; retrying",
                        len(wants), first.job.name, format_tick(first.tick),
                        ", ..." if len(wants) > 1 else "", e)  # fmt: skip
            for (st, _due), w in zip(batch, wants, strict=True):
                st.claim_failed(w.tick, time.time())  # the same tick, the same claim id
            return True
        gaps: list[tuple[Job, list[tuple[Tick, RunRecord]]]] = []
        for (st, due), w, c in zip(batch, wants, claims, strict=True):
            floor = st.floor  # before claim_decided moves it on
            st.claim_decided(w.tick, due.following)
            self._claimed(st.job, w.tick, c, s.lease_id)
            if c.prior_mark is not None and (floor is None or c.prior_mark < tick_of(floor)):
                missed = self._missed(st, c.prior_mark, w.tick)
                if missed:
                    gaps.append((st.job, missed))
        if gaps:
            self._record_missed(gaps)
        return True

    def _missed(self, st: JobState, prior: Tick, tick: Tick) -> list[tuple[Tick, RunRecord]]:
        """The `missed` records of the ticks nobody claimed between the job's prior mark and
        `tick` (just claimed here): one a tick, or one for a longer gap (its first tick and
        count)."""
        ticks, count = missed_ticks(st.schedule, prior, tick, min(st.job.history, MISSED_RECORDS))
        if not count:
            return []
        now = rfc3339(time.time())
        if len(ticks) == count:
            why = "no daemon claimed it in time (every conchd down, or etcd unreachable)"
        else:
            why = (f"{count}{'+' if count >= MISSED_COUNT_CAP else ''} ticks from this one to "
                   f"tick {format_tick(tick)} (not included): no daemon claimed them in time "
                   "(every conchd down, or etcd unreachable)")  # fmt: skip
        return [
            (t, RunRecord(
                tick=format_tick(t), status=RunStatus.MISSED, daemon=self.daemon_id,
                host=self.host, claim="", claimed=now, reason=why,  # no claim: never "ours"
                count=1 if len(ticks) == count else count,
            ))
            for t in ticks
        ]  # fmt: skip

    def _record_missed(self, gaps: list[tuple[Job, list[tuple[Tick, RunRecord]]]]) -> None:
        """Write the `missed` records of the gaps found by this batch's claims (once: each
        gap is found by the one claim that moved the mark past it)."""
        for chunk in _txn_chunks(gaps):
            try:
                store.record_missed(self.client, self.prefix,
                                    [(job.name, recs) for job, recs in chunk],
                                    timeout=CLAIM_TIMEOUT)  # fmt: skip
            except EtcdClusterChanged:
                raise
            except EtcdError as e:  # the claims committed; the gaps stay unrecorded
                log.warning("could not record the missed ticks of %d job(s): %s", len(chunk), e)
                continue
            for job, recs in chunk:
                n = sum(r.count for _, r in recs)
                log.warning("job %r: %d tick(s) from %s missed: no daemon claimed them in time",
                            job.name, n, recs[0][1].tick)  # fmt: skip
                self.metrics.missed(job.name, n)
                self._on_recorded(job)

    def _resolve_unsure(self, st: JobState) -> None:
        """A claim whose answer was lost may have committed: if it did, the tick is this
        daemon's (never anyone else's) and is run now, late, rather than left `running`
        forever with nothing running. (Its alive marker may sit on an older lease: the run
        starts with lease 0, so the next step re-attaches it.)"""
        current = tick_of(st.due)
        for tick in sorted(st.unsure - {current}):
            try:
                c = store.own_claim(self.client, self.prefix, st.job.name, tick, self.claim_id,
                                    timeout=CLAIM_TIMEOUT)  # fmt: skip
            except EtcdClusterChanged:
                raise
            except EtcdError as e:
                log.debug("job %r tick %s: claim still unsure: %s", st.job.name,
                          format_tick(tick), e)  # fmt: skip
                return
            st.unsure.discard(tick)
            if c is not None:
                log.warning("job %r tick %s: claimed by this daemon although the answer was "
                            "lost: running it late", st.job.name, format_tick(tick))  # fmt: skip
                self._claimed(st.job, tick, c, 0)

    def _claimed(self, job: Job, tick: Tick, c: Claim, lease: int) -> None:
        label = f"job {job.name!r} tick {format_tick(tick)}"
        result = _METRIC.get(c.outcome)
        if result is not None:
            self.metrics.claim(job.name, result)
        if c.outcome is ClaimOutcome.WON:
            if c.record is not None and c.record.manual:
                self.metrics.manual(job.name)
            self._start_run(job, tick, c, lease)
        elif c.outcome is ClaimOutcome.SKIPPED:
            self.metrics.run(job.name, RunStatus.SKIPPED)
            reason = c.record.reason if c.record else ""
            log.info("%s: skipped: %s (--overlap forbid)", label, reason)
            self._on_recorded(job)
        elif c.outcome is ClaimOutcome.GONE:
            log.debug("%s: `cron run` request gone (withdrawn or expired)", label)
        elif c.outcome is ClaimOutcome.TAKEN:
            log.debug("%s: claimed by another daemon (rev %d)", label, c.revision)
        elif c.outcome is ClaimOutcome.BEHIND:
            mark = format_tick(c.mark) if c.mark is not None else "?"
            log.debug("%s: not claimed: tick %s is already claimed (or the job is newer)",
                      label, mark)  # fmt: skip
        else:
            log.debug("%s: not claimed: the job changed or was removed meanwhile", label)


def _txn_chunks(
    gaps: list[tuple[Job, list[tuple[Tick, RunRecord]]]],
) -> Iterator[list[tuple[Job, list[tuple[Tick, RunRecord]]]]]:
    """The gaps, as many to a transaction as etcd takes: N nested txns of up to K puts each
    need N + K <= 128 (conch.client.SubTxn)."""
    chunk: list[tuple[Job, list[tuple[Tick, RunRecord]]]] = []
    widest = 0
    for gap in gaps:
        w = max(widest, len(gap[1]))
        if chunk and len(chunk) + 1 + w > 127:
            yield chunk
            chunk, w = [], len(gap[1])
        chunk.append(gap)
        widest = w
    if chunk:
        yield chunk
