"""Layer 1: the ranking rule shared by elect (N=1) and sema (N) (conch.ranking). Pure, no I/O.

Two parts:

* table-driven cases of decide(): who holds, who watches what;
* a small discrete-event model of etcd plus contenders that wait exactly as conch.contend
  does (list the directory, decide(), watch what decide() names from the listed revision + 1,
  re-list on the first event; a client that finds itself a holder does the guarded promotion
  put on its own key). Hypothesis drives random arrivals, releases, leaves (timeout / lease
  expiry), watch deliveries and promotion puts in any interleaving, and we check the rule's
  promises: never more than N holders, no free slot while someone waits (after all
  notifications are delivered), FIFO, a bounded number of wakeups per etcd event, and for
  N=1 strictly increasing fencing revisions. Wrong rules (the naive "rank r watches rank
  r-N", and others) run in the same model and must be caught, which shows the model can
  detect the bugs it is meant to.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, Phase, find, given, settings
from hypothesis import strategies as st

from conch.keys import member_key, sema_dir
from conch.ranking import Contender, Decision, decide, holders, order, waiting

# --- decide(): explicit cases --------------------------------------------------------------


def cs(*revs: int) -> list[Contender]:
    """Contenders k<rev> with the given create revisions (in the given, not ranked, order)."""
    return [Contender(f"k{r}".encode(), r) for r in revs]


@pytest.mark.parametrize(
    ("revs", "slots", "me", "expected"),
    [
        # N=1 (elect)
        ((5,), 1, 5, Decision(True, 0, True)),
        ((5, 7), 1, 5, Decision(True, 0, True)),
        ((5, 7), 1, 7, Decision(True, 1, False, watch_dir_deletes=True)),
        ((5, 7, 9), 1, 9, Decision(True, 2, False, watch_key=b"k7")),
        ((5, 7, 9, 11), 1, 11, Decision(True, 3, False, watch_key=b"k9")),
        # N=2
        ((5, 7, 9, 11), 2, 5, Decision(True, 0, True)),
        ((5, 7, 9, 11), 2, 7, Decision(True, 1, True)),
        ((5, 7, 9, 11), 2, 9, Decision(True, 2, False, watch_dir_deletes=True)),
        ((5, 7, 9, 11), 2, 11, Decision(True, 3, False, watch_key=b"k9")),
        # N=3, more contenders than slots; input not in rank order
        ((20, 3, 11, 7, 15), 3, 15, Decision(True, 3, False, watch_dir_deletes=True)),
        ((20, 3, 11, 7, 15), 3, 20, Decision(True, 4, False, watch_key=b"k15")),
        ((20, 3, 11, 7, 15), 3, 11, Decision(True, 2, True)),
        # more slots than contenders: everyone holds
        ((1, 2), 5, 2, Decision(True, 1, True)),
        # absent
        ((5, 7), 1, 6, Decision(False, -1, False)),
        ((), 1, 6, Decision(False, -1, False)),
        ((), 3, 6, Decision(False, -1, False)),
    ],
)
def test_decide_table(revs: tuple[int, ...], slots: int, me: int, expected: Decision) -> None:
    assert decide(cs(*revs), slots, f"k{me}".encode()) == expected


@pytest.mark.parametrize("slots", [1, 2, 3, 4, 7])
@pytest.mark.parametrize("count", [0, 1, 2, 3, 5, 9])
def test_decide_shape(slots: int, count: int) -> None:
    """holder iff rank < N; rank == N watches dir deletes; rank > N watches the predecessor."""
    contenders = cs(*range(100, 100 + 3 * count, 3))
    ranked = order(contenders)
    for rank, c in enumerate(ranked):
        d = decide(list(reversed(contenders)), slots, c.key)
        assert d.present and d.rank == rank
        assert d.holder == (rank < slots)
        assert d.watch_dir_deletes == (rank == slots)
        assert d.watch_key == (ranked[rank - 1].key if rank > slots else None)
        # exactly one of: holder, head, waiter-with-predecessor
        assert [d.holder, d.watch_dir_deletes, d.watch_key is not None].count(True) == 1
    assert [c.key for c in holders(contenders, slots)] == [c.key for c in ranked[:slots]]
    assert waiting(contenders, slots) == max(0, count - slots)


def test_order_is_by_create_revision_not_key() -> None:
    a = Contender(b"zzz", 3)
    b = Contender(b"aaa", 9)
    assert order([b, a]) == [a, b]
    assert decide([b, a], 1, b"zzz").holder
    assert not decide([b, a], 1, b"aaa").holder


def test_decide_rejects_bad_slots() -> None:
    for bad in (0, -1):
        with pytest.raises(ValueError):
            decide(cs(1), bad, b"k1")


# --- the model ----------------------------------------------------------------------------

# What a waiter does about its rank, as the simulator understands it. watch is None (holder or
# absent), ("dir", None): any DELETE in the directory, ("key", k): any PUT or DELETE of k,
# ("keydel", k): only a DELETE of k (used by a wrong rule below).
Watch = tuple[str, bytes | None]


@dataclass(frozen=True)
class Plan:
    present: bool
    holder: bool
    watch: Watch | None


Rule = Callable[[Sequence[Contender], int, bytes], Plan]


def conch_rule(contenders: Sequence[Contender], slots: int, me: bytes) -> Plan:
    """conch.ranking.decide(), read the way conch.contend.Contention.wait reads it."""
    d = decide(contenders, slots, me)
    if not d.present or d.holder:
        assert d.watch_key is None and not d.watch_dir_deletes
        return Plan(d.present, d.holder, None)
    assert (d.watch_key is None) != (not d.watch_dir_deletes), d
    return Plan(True, False, ("dir", None) if d.watch_dir_deletes else ("key", d.watch_key))


def _rank(contenders: Sequence[Contender], me: bytes) -> tuple[list[Contender], int]:
    ranked = order(contenders)
    return ranked, next((i for i, c in enumerate(ranked) if c.key == me), -1)


def naive_rule(contenders: Sequence[Contender], slots: int, me: bytes) -> Plan:
    """WRONG: 'rank r watches rank r-N' (any change of it)."""
    ranked, r = _rank(contenders, me)
    if r < 0 or r < slots:
        return Plan(r >= 0, r >= 0, None)
    return Plan(True, False, ("key", ranked[r - slots].key))


def predecessor_only_rule(contenders: Sequence[Contender], slots: int, me: bytes) -> Plan:
    """WRONG for N>1: the head watches its predecessor instead of every delete in the dir."""
    ranked, r = _rank(contenders, me)
    if r < 0 or r < slots:
        return Plan(r >= 0, r >= 0, None)
    return Plan(True, False, ("key", ranked[r - 1].key))


def deletes_only_rule(contenders: Sequence[Contender], slots: int, me: bytes) -> Plan:
    """WRONG: waiters behind the head watch only the predecessor's DELETE, so the promotion
    put of the head never wakes the next waiter to become the new head."""
    p = conch_rule(contenders, slots, me)
    if p.watch is not None and p.watch[0] == "key":
        return Plan(True, False, ("keydel", p.watch[1]))
    return p


def herd_rule(contenders: Sequence[Contender], slots: int, me: bytes) -> Plan:
    """Correct but a thundering herd: every waiter watches every delete."""
    p = conch_rule(contenders, slots, me)
    if p.watch is not None:
        return Plan(True, False, ("dir", None))
    return p


class Violation(AssertionError):
    pass


@dataclass
class Client:
    cid: int
    key: bytes
    rev: int  # create revision of its key
    state: str = "new"  # waiting | promoting | holding | gone
    watch: Watch | None = None
    notified: bool = False  # a watch fired; the re-list is pending


@dataclass
class Event:
    kind: str  # put | delete
    key: bytes
    revision: int
    cause: str  # arrive | promote | release | leave
    woken: list[int] = field(default_factory=list)


class Sim:
    """etcd (one directory) + contenders. Every mutation is one revision and one event."""

    def __init__(self, slots: int, rule: Rule = conch_rule) -> None:
        self.slots = slots
        self.rule = rule
        self.dir = sema_dir("/sim/", "job", slots)
        self.store: dict[bytes, int] = {}  # key -> create revision
        self.version: dict[bytes, int] = {}  # key -> etcd version (2 after the promotion put)
        self.revision = 1
        self.clients: list[Client] = []
        self.pending: list[int] = []  # cids whose watch fired, in firing order
        self.events: list[Event] = []
        self.observed: list[tuple[int, int]] = []  # (cid, create rev) each time one saw holder
        self.promoted: list[tuple[int, int]] = []  # (cid, create rev) successful promotion puts
        self.log: list[str] = []

    # -- etcd --
    def _contenders(self) -> list[Contender]:
        return [Contender(k, r, self.version[k] >= 2) for k, r in self.store.items()]

    def _ranked_keys(self) -> list[bytes]:
        return [c.key for c in order(self._contenders())]

    def _mutate(self, kind: str, key: bytes, cause: str) -> Event:
        self.revision += 1
        if kind == "put":
            self.store.setdefault(key, self.revision)
            self.version[key] = self.version.get(key, 0) + 1
        else:
            del self.store[key]
            del self.version[key]
        ev = Event(kind, key, self.revision, cause)
        for c in self.clients:
            if c.watch is None:
                continue
            what, wkey = c.watch
            hit = (
                (what == "dir" and kind == "delete" and key.startswith(self.dir))
                or (what == "key" and key == wkey)
                or (what == "keydel" and kind == "delete" and key == wkey)
            )
            if hit:  # the first event ends the wait: conch cancels the watch and re-lists
                c.watch = None
                c.notified = True
                self.pending.append(c.cid)
                ev.woken.append(c.cid)
        self.events.append(ev)
        self.log.append(f"r{ev.revision} {kind} c{self._owner(key)} ({cause}) woke {ev.woken}")
        return ev

    def _owner(self, key: bytes) -> int:
        return next(c.cid for c in self.clients if c.key == key)

    # -- a client lists the directory and acts on the rule (watch from listed rev + 1) --
    def _evaluate(self, c: Client) -> None:
        plan = self.rule(self._contenders(), self.slots, c.key)
        if not plan.present:
            c.state = "gone"
        elif plan.holder:
            c.state = "promoting"
            self.observed.append((c.cid, c.rev))
            self._check_no_barging(c)
        else:
            if plan.watch is None:
                raise Violation(f"waiter c{c.cid} was given nothing to watch")
            c.state = "waiting"
            c.watch = plan.watch

    # -- operations --
    def arrive(self) -> Client:
        cid = len(self.clients)
        lease = (cid * 0x9E3779B97F4A7C15) % (1 << 63)  # key order unrelated to arrival order
        c = Client(cid, member_key(self.dir, lease), 0)
        self.clients.append(c)
        self._mutate("put", c.key, "arrive")
        c.rev = self.store[c.key]
        self._evaluate(c)
        return c

    def release(self, c: Client) -> None:
        assert c.state == "holding"
        c.state = "gone"
        self._mutate("delete", c.key, "release")

    def leave(self, c: Client) -> None:
        """A waiter times out, or its lease expires (also between deciding and promoting)."""
        assert c.state in ("waiting", "promoting")
        c.state = "gone"
        c.watch = None
        if c.notified:
            c.notified = False
            self.pending.remove(c.cid)
        self._mutate("delete", c.key, "leave")

    def deliver(self, cid: int) -> None:
        self.pending.remove(cid)
        c = self.clients[cid]
        c.notified = False
        self._evaluate(c)

    def relist(self, c: Client) -> None:
        """A spurious re-list without an event (watch compacted or cancelled by the server)."""
        assert c.state == "waiting" and c.watch is not None
        c.watch = None
        self._evaluate(c)

    def promote(self, c: Client) -> None:
        """txn: if create_revision(my_key) == my_rev then put(my_key)."""
        assert c.state == "promoting"
        if self.store.get(c.key) != c.rev:
            c.state = "gone"
            return
        c.state = "holding"
        self.promoted.append((c.cid, c.rev))
        self._mutate("put", c.key, "promote")

    def by_state(self, state: str) -> list[Client]:
        return [c for c in self.clients if c.state == state]

    def holder_keys(self) -> list[bytes]:
        return [c.key for c in self.clients if c.state in ("promoting", "holding")]

    def drain(self, limit: int = 10_000) -> None:
        """Deliver every notification and finish every promotion, oldest first."""
        for _ in range(limit):
            if self.pending:
                self.deliver(self.pending[0])
            elif promoting := self.by_state("promoting"):
                self.promote(promoting[0])
            else:
                return
            self.check_safety()
        raise Violation("no quiescence: notifications keep coming (livelock)")

    # -- invariants --
    def _check_no_barging(self, c: Client) -> None:
        top = self._ranked_keys()[: self.slots]
        if c.key not in top:
            raise Violation(f"c{c.cid} took a slot it is not entitled to (top {top})")

    def check_safety(self) -> None:
        hk = self.holder_keys()
        if len(hk) > self.slots:
            raise Violation(f"{len(hk)} holders > N={self.slots}")
        top = set(self._ranked_keys()[: self.slots])
        if not set(hk) <= top:
            raise Violation("a holder is outside the top N by revision")
        for c in self.by_state("waiting"):
            if (c.watch is None) == (not c.notified):
                raise Violation(f"waiter c{c.cid} has watch={c.watch} notified={c.notified}")
        ev = self.events[-1] if self.events else None
        if ev is not None:
            bound = 2 if ev.kind == "delete" else 1
            if len(ev.woken) > bound:
                raise Violation(f"event {ev} woke {len(ev.woken)} > {bound} waiters")

    def check_quiescent(self) -> None:
        assert not self.pending and not self.by_state("promoting")
        live = len(self.store)
        holding = self.by_state("holding")
        if len(holding) != min(self.slots, live):
            raise Violation(
                f"free slot while someone waits: {len(holding)} holders, {live} live, "
                f"N={self.slots}"
            )
        if {c.key for c in holding} != set(self._ranked_keys()[: self.slots]):
            raise Violation("holders are not the N oldest contenders (FIFO)")
        for c in self.by_state("waiting"):
            if c.watch is None:
                raise Violation(f"waiter c{c.cid} waits on nothing")

    def check_fencing(self) -> None:
        """Each promotion's revision (CONCH_REV) exceeds every earlier promotion's, for any N."""
        revs = [rev for _, rev in self.promoted]
        if revs != sorted(set(revs)):
            raise Violation(f"fencing revisions not strictly increasing: {revs}")


Op = tuple[str, int]


def run(slots: int, ops: Sequence[Op], rule: Rule = conch_rule) -> Sim:
    """Apply ops (each picks its target modulo the current candidates; no-op when there are
    none), checking safety after each, then drain and check the quiescent state."""
    sim = Sim(slots, rule)
    for what, i in ops:
        if what == "arrive":
            for _ in range(1 + i % 3):
                sim.arrive()
        elif what == "release" and (hs := sim.by_state("holding")):
            sim.release(hs[i % len(hs)])
        elif what == "leave" and (ws := sim.by_state("waiting") + sim.by_state("promoting")):
            sim.leave(ws[i % len(ws)])
        elif what == "deliver" and sim.pending:
            sim.deliver(sim.pending[i % len(sim.pending)])
        elif what == "promote" and (ps := sim.by_state("promoting")):
            sim.promote(ps[i % len(ps)])
        elif what == "relist" and (ws := [c for c in sim.by_state("waiting") if c.watch]):
            sim.relist(ws[i % len(ws)])
        elif what == "drain":
            sim.drain()
        sim.check_safety()
    sim.drain()
    sim.check_quiescent()
    sim.check_fencing()
    return sim


# ("arrive", i) enqueues 1 + i % 3 contenders; releases and deliveries are listed twice to make
# them more frequent; "relist" is a spurious wakeup (compaction); "drain" lets the system settle
# mid-run so that later releases find holders and queues to work on.
OPS = st.lists(
    st.tuples(
        st.sampled_from(
            [
                "arrive",
                "release",
                "release",
                "leave",
                "deliver",
                "deliver",
                "promote",
                "relist",
                "drain",
            ]
        ),
        st.integers(0, 7),
    ),
    min_size=8,  # hypothesis favours short lists; short runs rarely reach the interesting states
    max_size=30,
)


def violates(slots: int, ops: Sequence[Op], rule: Rule, match: str = "") -> bool:
    try:
        run(slots, ops, rule)
    except Violation as e:
        return match in str(e)
    return False


# --- the motivating counter-example ---------------------------------------------------------


def _counter_example(rule: Rule) -> tuple[Sim, list[Client]]:
    """N=2: A and B hold, C and D wait; then B releases."""
    sim = Sim(2, rule)
    a, b, c, d = (sim.arrive() for _ in range(4))
    sim.drain()
    assert [x.state for x in (a, b, c, d)] == ["holding", "holding", "waiting", "waiting"]
    sim.release(b)
    sim.check_safety()
    sim.drain()
    return sim, [a, b, c, d]


def test_counter_example_conch_rule_promotes_c() -> None:
    sim, (a, _b, c, d) = _counter_example(conch_rule)
    assert a.state == "holding" and c.state == "holding"
    assert d.state == "waiting" and d.watch == ("dir", None)  # D is the new head
    sim.check_quiescent()
    # B's release woke exactly C (the head); C's promotion put woke exactly D.
    release = next(e for e in sim.events if e.cause == "release")
    assert release.woken == [c.cid]
    c_put = next(e for e in sim.events if e.cause == "promote" and e.key == c.key)
    assert c_put.woken == [d.cid]


def test_counter_example_naive_rule_strands_c() -> None:
    """With 'rank r watches rank r-N', C (rank 2) watches A and D (rank 3) watches B. B leaves:
    D wakes, finds itself rank 2 and watches A; C, now rank 1 with a free slot, sleeps on A
    forever. The simulator must see the free slot."""
    sim, (a, _b, c, d) = _counter_example(naive_rule)
    assert a.state == "holding"
    assert c.state == "waiting" and c.watch == ("key", a.key)
    assert d.state == "waiting"
    with pytest.raises(Violation, match="free slot while someone waits"):
        sim.check_quiescent()


# --- explicit interleavings -------------------------------------------------------------------


def test_two_releases_before_the_head_wakes() -> None:
    sim = Sim(2)
    a, b, c, d, e = (sim.arrive() for _ in range(5))
    sim.drain()
    sim.release(a)
    sim.release(b)  # the head's watch already fired: this delete wakes nobody
    assert sim.events[-1].woken == []
    sim.drain()
    sim.check_quiescent()
    assert [x.state for x in (c, d, e)] == ["holding", "holding", "waiting"]
    assert e.watch == ("dir", None)


def test_release_between_head_decision_and_its_promotion_put() -> None:
    sim = Sim(2)
    a, b, c, d, e = (sim.arrive() for _ in range(5))
    sim.drain()
    sim.release(a)
    sim.deliver(c.cid)  # C lists: rank 1, holder; its put is not done yet
    assert c.state == "promoting"
    sim.release(b)  # nobody watches dir deletes now; D only wakes on C's put
    assert sim.events[-1].woken == []
    sim.promote(c)
    assert sim.events[-1].woken == [d.cid]
    sim.drain()
    sim.check_quiescent()
    assert d.state == "holding" and e.state == "waiting"


def test_head_loses_its_lease_before_promoting() -> None:
    sim = Sim(1)
    a, b, c = (sim.arrive() for _ in range(3))
    sim.drain()
    sim.release(a)
    sim.deliver(b.cid)
    assert b.state == "promoting"
    sim.leave(b)  # lease expired between deciding and the promotion put
    assert sim.events[-1].woken == [c.cid]
    sim.drain()
    sim.check_quiescent()
    assert c.state == "holding"


def test_promotion_put_fails_if_the_key_is_gone() -> None:
    sim = Sim(1)
    a = sim.arrive()
    assert a.state == "promoting"
    del sim.store[a.key]  # e.g. deleted by an operator between deciding and promoting
    sim.promote(a)
    assert a.state == "gone"
    assert sim.promoted == []


def test_multi_slot_promotions_stay_in_revision_order() -> None:
    """For N>1 a newcomer must not overtake an older entitled contender whose wake-up is still
    in flight: C has a pending wake-up when both slots free up; E arrives, is entitled (rank 1)
    but waits for C's promotion put, so promotions (and CONCH_REV) stay in revision order."""
    sim = Sim(2)
    _a, _b = sim.arrive(), sim.arrive()
    sim.drain()
    c = sim.arrive()
    sim.release(_a)  # wakes C; delivery delayed
    assert sim.pending == [c.cid]
    sim.release(_b)
    e = sim.arrive()  # lists: C rank 0 (not yet promoted), E rank 1: entitled, waits for C
    assert e.state == "waiting" and e.watch == ("key", c.key)
    sim.drain()
    sim.check_quiescent()
    assert [cid for cid, _ in sim.observed][-2:] == [c.cid, e.cid]
    assert [cid for cid, _ in sim.promoted][-2:] == [c.cid, e.cid]


def test_waiter_leaving_wakes_successor_and_head_only() -> None:
    sim = Sim(1)
    a, b, c, d, e = (sim.arrive() for _ in range(5))
    sim.drain()
    sim.leave(c)  # D watches C; B (head) watches every delete
    assert sorted(sim.events[-1].woken) == sorted([b.cid, d.cid])
    sim.drain()
    assert d.watch == ("key", b.key) and b.watch == ("dir", None)
    sim.release(a)
    sim.drain()
    sim.check_quiescent()
    assert b.state == "holding" and d.watch == ("dir", None) and e.watch == ("key", d.key)


# --- the property: random interleavings -------------------------------------------------------


@pytest.mark.parametrize("slots", [1, 2, 3, 4])
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=OPS)
def test_simulation_conch_rule(slots: int, ops: list[Op]) -> None:
    sim = run(slots, ops)
    # every delete woke at most 2 (the head + the deleted key's successor), every put at most 1
    for ev in sim.events:
        assert len(ev.woken) <= (2 if ev.kind == "delete" else 1), ev


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 4), st.integers(0, 12), st.integers(0, 12))
def test_simulation_release_cascade(slots: int, contenders: int, releases: int) -> None:
    """Queue up, then release holders one at a time, draining after each: each release
    promotes exactly the next contender by revision."""
    sim = Sim(slots)
    for _ in range(contenders):
        sim.arrive()
    sim.drain()
    sim.check_quiescent()
    for _ in range(releases):
        hs = sim.by_state("holding")
        if not hs:
            break
        before = {c.cid for c in hs}
        sim.release(hs[0])
        sim.drain()
        sim.check_quiescent()
        new = {c.cid for c in sim.by_state("holding")} - before
        waiting_now = [c for c in sim.clients if c.state == "waiting"]
        assert len(new) <= 1
        if new:
            (cid,) = new
            assert all(sim.clients[cid].rev < w.rev for w in waiting_now)
    revs = [rev for _, rev in sim.promoted]
    assert revs == sorted(revs)  # without concurrent leaves, promotions are in FIFO order


# --- the model has teeth: wrong rules are caught ----------------------------------------------


@pytest.mark.parametrize(
    ("rule", "slots", "symptom"),
    [
        (naive_rule, st.integers(2, 4), "free slot while someone waits"),
        (predecessor_only_rule, st.integers(2, 4), "free slot while someone waits"),
        (deletes_only_rule, st.integers(1, 4), "free slot while someone waits"),
        (herd_rule, st.integers(1, 4), "waiters"),  # "event ... woke 3 > 2 waiters"
    ],
    ids=["naive-r-minus-N", "head-watches-predecessor", "no-wake-on-put", "thundering-herd"],
)
def test_simulator_catches_wrong_rules(
    rule: Rule, slots: st.SearchStrategy[int], symptom: str
) -> None:
    # generate only (no shrinking): we need a witness, not the smallest one
    n, ops = find(
        st.tuples(slots, OPS),
        lambda so: violates(so[0], so[1], rule, symptom),
        settings=settings(
            max_examples=10_000, database=None, deadline=None, phases=[Phase.generate]
        ),
        random=random.Random(0),  # deterministic; a witness is usually found in < 1000 tries
    )
    assert violates(n, ops, rule, symptom)
    assert not violates(n, ops, conch_rule), (n, ops)
