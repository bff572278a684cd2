"""The ranked-contention recipe shared by elect (N=1) and sema (N): enqueue, wait for a slot,
promote, withdraw. One key per contender, attached to its session's lease.

    enqueue   txn: if create_revision(my_key) == 0 then put(my_key, record, lease)
                   else get(my_key)           -- a retried enqueue finds its own key
    wait      list the directory; decide() (conch.ranking); holder -> done; otherwise watch
              exactly what decide() names, from the listed revision + 1, and re-list on any
              event (or on compaction / cancel of the watch)
    promote   txn: if create_revision(my_key) == my_rev then put(my_key, record') -- re-checks
              that the key still exists after waiting (etcd #11456) and wakes the successor
    withdraw  txn: if create_revision(my_key) == my_rev then delete(my_key)   (guarded delete)
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from conch.client import Client, Compare, EtcdError, Event, EventType, KeyValue, Op, WatchCompacted
from conch.holder import HolderRecord
from conch.keys import member_key, prefix_range_end
from conch.ranking import Contender, Decision, decide

log = logging.getLogger("conch.contend")

POLL = 0.1  # how often a blocked wait without a Wake looks at stop/deadline/session (seconds)
IDLE = 1.0  # with a Wake: the longest sleep between two looks (a safety net, not the signal)
NONBLOCK_GRACE = 1.0  # --nonblock: how long an entitled contender waits for its predecessor


class Outcome(enum.Enum):
    HELD = "held"
    TIMEOUT = "timeout"  # --nonblock not acquired at once, or --timeout passed
    LOST = "lost"  # my key or lease is gone
    STOPPED = "stopped"  # asked to stop (a signal)


class Wake(Protocol):
    """Something a wait sleeps on (conch.core.Waker): set by the watch's thread on events,
    by signal handlers and by the session on a loss."""

    def set(self) -> None: ...
    def wait(self, timeout: float) -> bool: ...
    def clear(self) -> None: ...


@dataclass(frozen=True)
class Listing:
    members: list[KeyValue]  # in rank order
    revision: int


def list_members(client: Client, directory: bytes) -> Listing:
    kvs, rev = client.get_range(directory, prefix_range_end(directory))
    return Listing(sorted(kvs, key=lambda kv: (kv.create_revision, kv.key)), rev)


class Contention:
    def __init__(
        self,
        client: Client,
        directory: bytes,
        slots: int,
        lease_id: int,
        record: HolderRecord,
        *,
        lost: Callable[[], bool] = lambda: False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.directory = directory
        self.range_end = prefix_range_end(directory)
        self.slots = slots
        self.lease_id = lease_id
        self.key = member_key(directory, lease_id)
        self.record = record
        self.rev = 0
        self.promoted_rev = 0  # revision of the promotion put
        # a revision at which this wait saw my key alive (a listing, or a watch whose range
        # covers my key): 0 if the last wait cannot vouch for it (then promote before running)
        self.proven_rev = 0
        self.rank = -1
        self._lost = lost
        self._clock = clock
        self.wakeups = 0  # watch events that made this contender re-rank (measured by tests)
        self._withdrawn = False
        self._view: list[Contender] = []  # the last listing, as contenders

    def enqueue(self) -> int:
        res = self.client.txn(
            [Compare(self.key, "create", "==", 0)],
            [Op("put", self.key, self.record.to_json(), lease=self.lease_id)],
            [Op("get", self.key)],
        )
        if res.succeeded:
            self.rev = res.revision
        else:
            got = res.responses[0] or []
            if not got:  # vanished between compare and get: cannot happen in one txn
                raise EtcdError("own key vanished during enqueue")
            self.rev = got[0].create_revision
        log.debug("enqueued %r at revision %d", self.key, self.rev)
        return self.rev

    def decide(self) -> tuple[Decision, int]:
        listing = list_members(self.client, self.directory)
        self._view = [
            Contender(kv.key, kv.create_revision, kv.version >= 2) for kv in listing.members
        ]
        d = decide(self._view, self.slots, self.key)
        self.rank = d.rank
        return d, listing.revision

    def _decide_after(self, events: list[Event]) -> Decision:
        """The decision on the last listing with these watch events applied, without a read.

        Safe to act on when it says `holder`: the contenders ahead of me only ever leave (a
        newcomer's create revision is higher than mine) and a promotion is never undone, so
        the real rank is at most this one and a predecessor seen promoted is promoted. The
        promotion txn that follows re-checks that my own key still exists."""
        view = {c.key: c for c in self._view}
        for ev in events:
            if ev.type is EventType.DELETE:
                view.pop(ev.kv.key, None)
            elif ev.kv.key in view and ev.kv.version >= 2:
                view[ev.kv.key] = Contender(ev.kv.key, view[ev.kv.key].create_revision, True)
        self._view = list(view.values())
        return decide(self._view, self.slots, self.key)

    def wait(
        self,
        *,
        nonblock: bool = False,
        deadline: float | None = None,
        stop: threading.Event | None = None,
        wake: Wake | None = None,
        on_next: Callable[[], None] | None = None,
    ) -> Outcome:
        """Wait until this contender holds a slot (HELD), or not (see Outcome). With `wake`
        (set whenever stop is set or `lost` turns true), the wait sleeps on it instead of
        looking every POLL seconds: an idle waiter costs next to nothing. `on_next` is called
        each time this contender is found next in line (the first to get a slot that frees):
        what it must have ready to start can be made ready then, off the hand-over's path."""
        woken_by: list[Event] = []
        self.proven_rev = 0
        watching_my_key = False
        while True:
            if stop is not None and stop.is_set():
                return Outcome.STOPPED
            if self._lost():
                return Outcome.LOST
            if woken_by:
                local_events, woken_by = woken_by, []
                local = self._decide_after(local_events)
                if local.holder:
                    self.rank = local.rank
                    if watching_my_key:  # every delete up to the last event was seen
                        self.proven_rev = max(ev.kv.mod_revision for ev in local_events)
                    return Outcome.HELD  # no read needed: see _decide_after
            d, rev = self.decide()
            if not d.present:
                return Outcome.LOST
            if d.holder:
                self.proven_rev = rev  # the listing saw my key at this revision
                return Outcome.HELD
            if nonblock:
                if d.rank >= self.slots:
                    return Outcome.TIMEOUT
                # entitled to a slot, only waiting for the contender ahead to finish its own
                # promotion put (milliseconds): --nonblock means "no waiting for a holder"
                nonblock = False
                grace = self._clock() + NONBLOCK_GRACE
                deadline = grace if deadline is None else min(deadline, grace)
            if deadline is not None and self._clock() >= deadline:
                return Outcome.TIMEOUT
            watching_my_key = d.watch_dir_deletes  # the directory's range holds my key
            if d.watch_dir_deletes and on_next is not None:
                on_next()
            on_item = None if wake is None else wake.set
            if d.watch_dir_deletes:
                w = self.client.watch(
                    self.directory, self.range_end, start_revision=rev + 1, no_put=True,
                    wake=on_item,
                )  # fmt: skip
            else:
                assert d.watch_key is not None
                w = self.client.watch(d.watch_key, start_revision=rev + 1, wake=on_item)
            try:
                while True:
                    if stop is not None and stop.is_set():
                        return Outcome.STOPPED
                    if self._lost():
                        return Outcome.LOST
                    timeout = POLL if wake is None else IDLE
                    if deadline is not None:
                        left = deadline - self._clock()
                        if left <= 0:
                            return Outcome.TIMEOUT
                        timeout = min(timeout, left)
                    try:
                        events = w.get(timeout if wake is None else 0)
                    except WatchCompacted:
                        woken_by = []
                        break  # re-list
                    if events:
                        self.wakeups += 1
                        woken_by = events
                        break
                    if wake is not None:
                        # anything that arrives from here on sets it; what came before the
                        # clear is in the watch's queue (or in stop/lost) for the next look
                        wake.wait(timeout)
                        wake.clear()
            finally:
                w.cancel(wait=False)  # its thread ends by itself; the hand-over goes on

    @property
    def promoted(self) -> bool:
        return self.promoted_rev != 0

    def promote(self) -> bool:
        """The promotion put: False if my key is gone (then I must not run anything)."""
        self.record = self.record.restamped(time.time())
        res = self.client.txn(
            [Compare(self.key, "create", "==", self.rev)],
            [Op("put", self.key, self.record.to_json(), lease=self.lease_id)],
        )
        if res.succeeded:
            self.promoted_rev = res.revision
        return res.succeeded

    def check(self) -> int | None:
        """One read of my key: the header revision of that read if the key is still mine
        (watch from there + 1 and no delete can be missed), None if it is gone."""
        kv, revision = self.client.get(self.key)
        if kv is None or kv.create_revision != self.rev:
            return None
        return revision

    def withdrawn(self) -> None:
        """My key is gone another way (its lease was revoked): withdraw is a no-op from now."""
        self._withdrawn = True

    def withdraw(self) -> None:
        """Guarded delete of my key (a no-op if it is gone or was re-created by someone else,
        or if it was withdrawn already)."""
        if not self.rev or self._withdrawn:
            return
        self.client.txn(
            [Compare(self.key, "create", "==", self.rev)],
            [Op("delete", self.key)],
        )
        self._withdrawn = True


def snapshot(client: Client, directory: bytes, slots: int, name: str) -> dict[str, object]:
    """The `--who --json` document: holders in rank order and the number waiting."""
    return _document(list_members(client, directory), slots, name)


def follow(
    client: Client,
    directory: bytes,
    slots: int,
    name: str,
    emit: Callable[[dict[str, object]], None],
    patience: float,
    poll: float = IDLE,
) -> None:
    """`--who --watch`: emit the `--who` document now and each time it changes, until the
    process is interrupted (never returns otherwise). A watch on the directory wakes it on a
    change; a fresh listing is also taken every `poll` seconds, which is how it learns that
    etcd stopped answering: after `patience` seconds without an answer it raises EtcdError."""
    end = prefix_range_end(directory)
    last: dict[str, object] | None = None
    answered = time.monotonic()
    watch = None
    while True:
        try:
            listing = list_members(client, directory)
            if watch is None:
                watch = client.watch(directory, end, start_revision=listing.revision + 1)
        except EtcdError:
            if time.monotonic() - answered > patience:
                raise
            if watch is not None:
                watch.cancel(wait=False)
                watch = None
            time.sleep(POLL)  # the client's own call already waited for an answer
            continue
        answered = time.monotonic()
        doc = _document(listing, slots, name)
        if doc != last:
            emit(doc)
            last = doc
        try:
            watch.get(poll)  # events or not: list again (a change, or the liveness probe)
        except (WatchCompacted, EtcdError):
            watch.cancel(wait=False)
            watch = None


def _document(listing: Listing, slots: int, name: str) -> dict[str, object]:
    holders = []
    for kv in listing.members[:slots]:
        rec = HolderRecord.from_json(kv.value)
        holders.append(
            {
                "rev": kv.create_revision,
                "lease": format(kv.lease, "x"),
                "host": rec.host,
                "pid": rec.pid,
                "started": rec.started,
                "cmd": rec.cmd,
            }
        )
    return {
        "name": name,
        "max": slots,
        "holders": holders,
        "waiting": max(0, len(listing.members) - slots),
    }
