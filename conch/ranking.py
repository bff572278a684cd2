"""The ranking rule shared by elect (N=1) and sema (N). Pure: no I/O.

Contenders are ordered by the create revision of their keys. Rank r is entitled to a slot
iff r < N.

Who watches what, so that every release wakes O(1) waiters and no free slot is left while
someone waits (the rule "rank r watches rank r-N" is wrong: see tests/unit/test_ranking.py):

* rank r < N is entitled to a slot, and *holds* it once every contender ahead of it has made
  its promotion put (equivalently, since promotions go in rank order: its predecessor has, or
  r == 0). Until then it watches its predecessor for any change. This makes promotions happen
  strictly in create-revision order, so CONCH_REV increases across successive promotions of a
  semaphore too (for N > 1 a newcomer could otherwise take a freed slot while an older,
  entitled contender's wake-up is still in flight);
* the head of the queue (rank == N) watches *deletes* anywhere in the directory: any delete
  may free a slot, and it is the only waiter that can take one;
* every other waiter (rank > N) watches its predecessor (rank - 1) for *any* change: a delete
  (the predecessor left) or a put. A contender that takes its slot re-writes its own key (the
  promotion put, which also re-checks that the key still exists), and that put is what wakes
  the next contender, so it can become the new head or take its own slot.

A release therefore wakes the head (one waiter), whose promotion put wakes one more.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Contender:
    key: bytes
    create_revision: int
    promoted: bool = True  # its promotion put is done (etcd: version >= 2)


@dataclass(frozen=True)
class Decision:
    present: bool  # False: my key is not among the contenders (lease lost / key deleted)
    rank: int  # my rank (0-based), -1 when not present
    holder: bool
    watch_key: bytes | None = None  # rank > N: watch this key (my predecessor) for any event
    watch_dir_deletes: bool = False  # rank == N: watch deletes of the whole directory


def order(contenders: Sequence[Contender]) -> list[Contender]:
    """Contenders in rank order: by create revision (keys break ties, which etcd never makes)."""
    return sorted(contenders, key=lambda c: (c.create_revision, c.key))


def decide(contenders: Sequence[Contender], slots: int, my_key: bytes) -> Decision:
    if slots < 1:
        raise ValueError("slots must be >= 1")
    ranked = order(contenders)
    rank = next((i for i, c in enumerate(ranked) if c.key == my_key), -1)
    if rank < 0:
        return Decision(present=False, rank=-1, holder=False)
    if rank < slots:
        if rank == 0 or ranked[rank - 1].promoted:
            return Decision(present=True, rank=rank, holder=True)
        return Decision(present=True, rank=rank, holder=False, watch_key=ranked[rank - 1].key)
    if rank == slots:
        return Decision(present=True, rank=rank, holder=False, watch_dir_deletes=True)
    return Decision(present=True, rank=rank, holder=False, watch_key=ranked[rank - 1].key)


def holders(contenders: Sequence[Contender], slots: int) -> list[Contender]:
    return order(contenders)[:slots]


def waiting(contenders: Sequence[Contender], slots: int) -> int:
    return max(0, len(contenders) - slots)
