"""Which daemon claims a job's tick first: rendezvous (highest-random-weight) hashing. Pure.

Every daemon ranks the live daemons (their heartbeat keys) for each job by a hash of (job,
daemon) and claims at once only the jobs it ranks first — its own share, about 1/N of them —
and a job where k daemons come before it k steps after the tick, a step being SHARE_GRACE or,
for a short period, period / (2 N): every daemon has had its try within the first half of the
period. So N daemons do not all fight for every job in the same order (which made late names
start late), and the share of a daemon that died (its heartbeat key lingers until its lease
expires) is still claimed, a step late. A daemon that joins or leaves moves only its own share
(the point of the hashing). Correctness never rests on this: the claim transaction decides
who runs a tick.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

SHARE_GRACE = 0.5  # seconds: how long a job's first choice has before the next daemon claims


def weight(daemon: str, job: str) -> int:
    digest = hashlib.blake2b(f"{job}\0{daemon}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def rank(me: str, peers: Iterable[str], job: str) -> int:
    """How many of the live daemons `peers` come before `me` for `job` (0: its first choice).
    `me` need not be in `peers`; ties (never in practice) go by id."""
    mine = (weight(me, job), me)
    return sum(1 for p in set(peers) if p != me and (weight(p, job), p) > mine)


def claim_delay(rank: int, period: float, daemons: int) -> float:
    """Seconds after a tick before a daemon ranked `rank` (of `daemons`) claims it, for a job
    whose next tick is `period` seconds later."""
    if rank <= 0:
        return 0.0
    return rank * min(SHARE_GRACE, period / (2 * max(daemons, 1)))
