"""Layer 1: how conchd decides its wall clock disagrees with its peers' (conch.clockskew)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from conch.clockskew import SAMPLE_AGE, PeerClocks, group_correction

offsets = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)


def test_one_clock_off_among_three() -> None:
    # the skewed daemon sees both peers 25 s behind it; each on-time daemon sees one peer
    # 25 s ahead and one in agreement
    assert group_correction([-25.0, -25.0]) == -25.0
    assert group_correction([25.0, 0.0]) == 0.0


def test_one_against_one_trusts_itself_unless_outvoted_before() -> None:
    assert group_correction([-25.0]) == 0.0
    assert group_correction([25.0]) == 0.0
    assert group_correction([-25.0], prefer=-25.0) == -25.0  # was outvoted: stays corrected
    assert group_correction([-3.0], prefer=-25.0) == -3.0  # the evidence moved
    assert group_correction([]) == 0.0


@given(st.lists(offsets, max_size=9), offsets)
def test_the_correction_is_a_middle_value(peers: list[float], prefer: float) -> None:
    c = group_correction(peers, prefer)
    values = sorted([0.0, *peers])
    n = len(values)
    assert c in values[(n - 1) // 2 : n // 2 + 1]


@given(st.lists(offsets, min_size=1, max_size=9))
def test_a_majority_in_agreement_is_never_corrected(others: list[float]) -> None:
    """If more than half of all daemons (me included) agree with me, I am not corrected."""
    agreeing = [0.0] * len(others)
    assert group_correction([*agreeing, *others]) == 0.0


def test_per_peer_the_least_delayed_sample_counts_and_old_ones_age_out() -> None:
    pc = PeerClocks()
    pc.observe("a", peer_time=100.0, my_time=105.0, at=0.0)  # delayed delivery: -5
    pc.observe("a", peer_time=200.0, my_time=201.0, at=1.0)  # -1: the better estimate
    assert pc.offsets(2.0) == {"a": -1.0}
    assert pc.offsets(1.0 + SAMPLE_AGE + 0.1) == {}  # a quiet peer is forgotten


def test_outvoted_stays_corrected_when_peers_go_quiet() -> None:
    pc = PeerClocks()
    for peer in ("a", "b"):
        pc.observe(peer, peer_time=0.0, my_time=25.0, at=0.0)
    assert pc.correction(1.0) == -25.0
    pc.observe("b", peer_time=100.0, my_time=125.0, at=SAMPLE_AGE)  # a went quiet: 1 vs 1
    assert pc.correction(SAMPLE_AGE + 1.0) == -25.0
    assert pc.correction(10 * SAMPLE_AGE) == -25.0  # nobody heard: keep what was known


def test_a_step_of_my_own_clock_carries_the_correction_along() -> None:
    pc = PeerClocks()
    for peer in ("a", "b"):
        pc.observe(peer, peer_time=0.0, my_time=25.0, at=0.0)
    assert pc.correction(1.0) == -25.0
    pc.shift(-25.0)  # NTP fixed my clock: it went back 25 s
    assert pc.correction(1.0) == 0.0
    assert pc.offsets(1.0) == {"a": 0.0, "b": 0.0}
