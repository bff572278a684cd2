"""conch.cron.share: which daemon claims a job's tick first (rendezvous hashing). Pure."""

from __future__ import annotations

from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from conch.cron.share import SHARE_GRACE, claim_delay, rank

ids = st.text(min_size=1, max_size=12)


@given(st.sets(ids, min_size=1, max_size=6), st.text(max_size=20))
def test_every_job_has_exactly_one_first_choice_and_ranks_are_a_permutation(
    daemons: set[str], job: str
) -> None:
    ranks = sorted(rank(d, daemons, job) for d in daemons)
    assert ranks == list(range(len(daemons)))


@given(st.sets(ids, min_size=2, max_size=6), st.text(max_size=20), st.data())
def test_a_daemon_leaving_moves_only_its_own_jobs(
    daemons: set[str], job: str, data: st.DataObject
) -> None:
    gone = data.draw(st.sampled_from(sorted(daemons)))
    first = next(d for d in daemons if rank(d, daemons, job) == 0)
    rest = daemons - {gone}
    first_after = next(d for d in rest if rank(d, rest, job) == 0)
    if first != gone:
        assert first_after == first


def test_shares_are_about_even_and_delays_follow_rank() -> None:
    daemons = {"d1", "d2", "d3"}
    firsts = Counter(
        next(d for d in daemons if rank(d, daemons, f"job{i}") == 0) for i in range(3000)
    )
    assert set(firsts) == daemons and min(firsts.values()) > 800  # ~1000 each


def test_delays_follow_rank_and_fit_in_half_a_short_period() -> None:
    assert [claim_delay(r, 60.0, 3) for r in range(3)] == [0.0, SHARE_GRACE, 2 * SHARE_GRACE]
    short = [claim_delay(r, 1.0, 3) for r in range(3)]
    assert short[0] == 0.0 and short[-1] <= 0.5 and short == sorted(short)


def test_alone_or_unlisted_a_daemon_claims_at_once() -> None:
    assert rank("d1", set(), "x") == 0 and rank("d1", {"d1"}, "x") == 0
    assert claim_delay(0, 60.0, 1) == 0.0
    # not yet listed itself (before its first beat): ranked among the others all the same
    assert rank("d1", {"d2", "d3"}, "x") == rank("d1", {"d1", "d2", "d3"}, "x")
