"""How far this host's wall clock is from its peers' (conchd). Pure: no I/O, conchd feeds it.

Cron ticks are wall-clock instants, so a daemon whose clock runs ahead would claim ticks early.
Each conchd publishes its wall-clock time every few seconds (a heartbeat key on its lease) and
watches its peers' heartbeats. When one arrives, `peer_time - my_time` is the peer's offset
from my clock *minus the delivery delay*: a delay only ever makes a peer look further behind
than it is, so per peer the largest of its recent offsets is the best estimate.

My clock's error against the group is the median of {0 (myself)} ∪ {each peer's offset}; with
an even count, the middle value nearer to 0 — one clock against another, nobody can tell which
is wrong, and a daemon then trusts its own. So with three daemons, one of them 25 s ahead, that
one sees a correction of -25 s and the two others 0.

A daemon whose correction exceeds THRESHOLD says so (log and metric) and schedules by the
group's time, `time.time() + correction`: it never claims a tick early, and a lagging one
claims on time.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

THRESHOLD = 1.0  # seconds: a disagreement beyond this is reported and corrected for
SAMPLE_AGE = 15.0  # seconds: older heartbeats are forgotten (a peer that went quiet)
SAMPLES = 5  # recent offsets kept per peer


@dataclass
class _Peer:
    samples: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=SAMPLES))

    def offset(self, now: float) -> float | None:
        fresh = [off for at, off in self.samples if now - at <= SAMPLE_AGE]
        return max(fresh) if fresh else None


class PeerClocks:
    """Offsets of the peers' wall clocks from mine, and the resulting correction."""

    def __init__(self) -> None:
        self._peers: dict[str, _Peer] = {}
        self._last = 0.0

    def observe(self, peer: str, peer_time: float, my_time: float, at: float) -> None:
        """A heartbeat of `peer` saying `peer_time` arrived when my wall clock said `my_time`;
        `at` is the receipt on a steady clock (for ageing)."""
        self._peers.setdefault(peer, _Peer()).samples.append((at, peer_time - my_time))

    def shift(self, step: float) -> None:
        """My own clock stepped by `step` seconds (NTP, an operator): every offset measured
        against it so far is off by -step now, and so is the correction."""
        for p in self._peers.values():
            p.samples = deque(((at, off - step) for at, off in p.samples), maxlen=SAMPLES)
        self._last -= step

    def offsets(self, now: float) -> dict[str, float]:
        """Each live peer's offset from my clock (positive: the peer is ahead)."""
        out = {}
        for name, p in self._peers.items():
            off = p.offset(now)
            if off is not None:
                out[name] = off
        return out

    def correction(self, now: float) -> float:
        """Seconds to add to my wall clock to get the group's time (0 without ever a peer).
        Without fresh evidence it stays what it was, and in a tie too, if the evidence allows
        it: a daemon outvoted while three were up stays corrected when its peers go quiet
        (an etcd outage, a peer that stopped) — it must not fall back on its own wrong clock."""
        offsets = list(self.offsets(now).values())
        if offsets:
            self._last = group_correction(offsets, prefer=self._last)
        return self._last


def group_correction(peer_offsets: list[float], prefer: float = 0.0) -> float:
    """The median of {0} ∪ peer_offsets; of an even count, the one of the two middle values
    nearer to `prefer` (by default 0: nobody can tell which of two clocks is wrong, so a
    daemon trusts its own)."""
    values = sorted([0.0, *peer_offsets])
    n = len(values)
    if n % 2:
        return values[n // 2]
    lo, hi = values[n // 2 - 1], values[n // 2]
    if abs(lo - prefer) == abs(hi - prefer):
        return min((lo, hi), key=abs)
    return min((lo, hi), key=lambda v: abs(v - prefer))
