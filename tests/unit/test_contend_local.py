"""A waiter woken by watch events decides from its last listing plus those events, without a
read (conch.contend.Contention._decide_after). Property: whenever that local decision says
"holder", the decision on the real, current listing says so too — whatever other events the
waiter did not see (it watches one key, or the directory's deletes only)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from conch.client import Event, EventType, KeyValue
from conch.contend import Contention
from conch.holder import HolderRecord
from conch.ranking import Contender, decide


def kv(key: bytes, create: int, version: int) -> KeyValue:
    return KeyValue(key, b"", create, create, version, 1)


def contention(me: bytes, slots: int) -> Contention:
    rec = HolderRecord("h", 1, "", ["x"], "0")
    c = Contention(None, b"d/", slots, 1, rec)  # type: ignore[arg-type]  # no I/O used here
    c.key = me
    return c


@settings(max_examples=400, deadline=None)
@given(
    n=st.integers(2, 8),
    slots=st.integers(1, 3),
    data=st.data(),
)
def test_a_local_holder_decision_is_a_real_one(n, slots, data):
    keys = [f"k{i}".encode() for i in range(n)]
    live = {k: Contender(k, i + 1, promoted=False) for i, k in enumerate(keys)}
    # the real system: holders promote in rank order (only when entitled), anyone may leave
    for c in decide_order(live, slots):
        live[c.key] = Contender(c.key, c.create_revision, True)
    me = data.draw(st.sampled_from(keys), label="me")
    c = contention(me, slots)
    c._view = list(live.values())
    d = decide(c._view, slots, me)
    seen: list[Event] = []
    for _ in range(data.draw(st.integers(1, 6), label="steps")):
        others = [k for k in live if k != me]
        if not others:
            break
        action = data.draw(st.sampled_from(["leave", "promote"]), label="action")
        if action == "leave":
            k = data.draw(st.sampled_from(others), label="leaves")
            gone = live.pop(k)
            ev = Event(EventType.DELETE, kv(k, gone.create_revision, 0))
            # the waiter sees it only if it watches it: its predecessor, or the dir's deletes
            if d.watch_dir_deletes or d.watch_key == k or data.draw(st.booleans()):
                seen.append(ev)
        else:
            entitled = decide_order(live, slots, promote_only=True)
            for e in entitled:
                if e.key == me:
                    continue
                live[e.key] = Contender(e.key, e.create_revision, True)
                if d.watch_key == e.key or data.draw(st.booleans()):
                    seen.append(Event(EventType.PUT, kv(e.key, e.create_revision, 2)))
    local = c._decide_after(seen)
    if local.holder:
        assert decide(list(live.values()), slots, me).holder


def decide_order(
    live: dict[bytes, Contender], slots: int, promote_only: bool = False
) -> list[Contender]:
    """The contenders that would promote now, in rank order (each once its predecessor has)."""
    out = []
    ranked = sorted(live.values(), key=lambda c: c.create_revision)
    for i, c in enumerate(ranked[:slots]):
        if not c.promoted and (i == 0 or ranked[i - 1].promoted or ranked[i - 1] in out):
            out.append(c)
        elif not c.promoted:
            break
    return out
