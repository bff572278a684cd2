"""No thundering herd: each release wakes O(1) waiters (measured with bench/sema.py's harness
against the real etcd)."""

from __future__ import annotations

import sys

from conftest import ROOT

sys.path.insert(0, str(ROOT))
from bench.sema import measure


def test_each_release_wakes_at_most_two_waiters(etcd, prefix):
    wakes = measure(etcd.endpoints, waiters=20, slots=3, prefix=prefix).wakes
    assert len(wakes) == 20
    # the head (woken by the delete) and the next waiter (woken by the head's promotion put)
    assert max(wakes) <= 2, wakes
    assert all(w >= 1 for w in wakes), wakes
