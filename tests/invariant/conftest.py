"""Fixtures of the invariant tests: a 3-member etcd cluster on loopback, hang diagnostics, and
the measured figures of the elect/sema and the cron scenarios (printed at the end of the run;
`--invariant-report FILE` writes JSON)."""

from __future__ import annotations

import faulthandler
import json
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from conch.localetcd import LocalCluster

# A seed's run takes ~30 s; dump every thread's stack if one takes far longer (a hang), before
# pytest-timeout ends it.
HANG_DUMP_AFTER = 240.0

_RESULTS: list[dict[str, Any]] = []
_CRON_RESULTS: list[dict[str, Any]] = []


@pytest.fixture(scope="session")
def cluster3() -> Iterator[LocalCluster]:
    """A 3-member etcd cluster on loopback ports (conch.localetcd), shared by the seeds; each
    seed uses its own key prefix and leaves every member running and healthy."""
    cluster = LocalCluster(nodes=3).start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(autouse=True)
def _dump_stacks_on_hang() -> Iterator[None]:
    faulthandler.dump_traceback_later(HANG_DUMP_AFTER, exit=False, file=sys.stderr)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


@pytest.fixture
def record_invariant_result() -> Any:
    """Collects one seed's figures for the end-of-run table."""
    return _RESULTS.append


@pytest.fixture
def record_cron_result() -> Any:
    """Collects one cron seed's figures (cron_checker.summarize) for the end-of-run table."""
    return _CRON_RESULTS.append


def _aggregate() -> dict[str, dict[str, Any]]:
    kinds: dict[str, dict[str, Any]] = {}
    for res in _RESULTS:
        for kind, st in res["per_kind"].items():
            k = kinds.setdefault(
                kind,
                {
                    "faults": 0,
                    "max_overlap_s": 0.0,
                    "max_excess": 0,
                    "convergence_s": [],
                    "after_repair_s": [],
                },
            )
            k["faults"] += st["faults"]
            k["max_overlap_s"] = max(k["max_overlap_s"], st["max_overlap_s"])
            k["max_excess"] = max(k["max_excess"], st["max_excess"])
            k["convergence_s"] += st["convergence_s"]
            k["after_repair_s"] += st["after_repair_s"]
    out = {}
    for kind, k in sorted(kinds.items()):
        conv = sorted(k.pop("convergence_s"))
        k["median_convergence_s"] = conv[len(conv) // 2] if conv else None
        k["max_convergence_s"] = conv[-1] if conv else None
        rep = sorted(k.pop("after_repair_s"))
        k["max_after_repair_s"] = rep[-1] if rep else None
        out[kind] = k
    return out


def _aggregate_cron() -> dict[str, dict[str, Any]]:
    kinds: dict[str, dict[str, Any]] = {}
    for res in _CRON_RESULTS:
        for kind, st in res["per_kind"].items():
            k = kinds.setdefault(
                kind,
                {
                    "faults": 0,
                    "ticks_excused": 0,
                    "runs_lost": 0,
                    "recognised": 0,
                    "lags_s": [],
                    "convergence_s": [],
                },
            )
            for key in ("faults", "ticks_excused", "runs_lost", "recognised"):
                k[key] += st[key]
            k["lags_s"] += st["lags_s"]
            k["convergence_s"] += st["convergence_s"]
    out = {}
    for kind, k in sorted(kinds.items(), key=lambda kv: (kv[0] == "all", kv[0])):
        lags, conv = sorted(k.pop("lags_s")), sorted(k.pop("convergence_s"))
        k["lag_p50_s"] = lags[len(lags) // 2] if lags else None
        k["lag_max_s"] = lags[-1] if lags else None
        k["lag_min_s"] = lags[0] if lags else None
        k["median_convergence_s"] = conv[len(conv) // 2] if conv else None
        k["max_convergence_s"] = conv[-1] if conv else None
        out[kind] = k
    return out


def _cron_summary(tr: Any) -> dict[str, dict[str, Any]]:
    agg = _aggregate_cron()
    tr.section("invariant: cron ticks under faults")
    seeds = ", ".join(f"{r['seed']} ({r['seconds']:.0f}s)" for r in _CRON_RESULTS)
    tr.write_line(f"seeds: {seeds}")
    tr.write_line(
        "per fault kind: ticks excused (no run and no record, inside an etcd fault's window, "
        "or overtaken by an early claim: counted for the last clock step), runs lost, claims "
        "whose answer was lost and that their daemon recognised and ran late, tick->start lag "
        "of the ticks in the fault's effect window (min < 0: started early), convergence from "
        "the injection"
    )
    tr.write_line(
        f"{'fault kind':<14}{'faults':>7}{'excused':>9}{'lost':>6}{'recog.':>8}{'lag p50':>9}"
        f"{'lag max':>9}{'lag min':>9}{'median conv.':>14}{'max conv.':>11}"
    )

    def fmt(x: float | None) -> str:
        return "-" if x is None else f"{x:.2f}s"

    for kind, k in agg.items():
        tr.write_line(
            f"{kind:<14}{k['faults']:>7}{k['ticks_excused']:>9}{k['runs_lost']:>6}"
            f"{k['recognised']:>8}{fmt(k['lag_p50_s']):>9}{fmt(k['lag_max_s']):>9}{fmt(k['lag_min_s']):>9}"
            f"{fmt(k['median_convergence_s']):>14}{fmt(k['max_convergence_s']):>11}"
        )
    return agg


def _elect_summary(tr: Any) -> dict[str, dict[str, Any]]:
    agg = _aggregate()
    tr.section("invariant: measured overlap and convergence")
    seeds = ", ".join(f"{r['seed']} ({r['seconds']:.0f}s)" for r in _RESULTS)
    tr.write_line(f"seeds: {seeds}")
    tr.write_line(
        "convergence: from the fault's injection (and from its repair, for faults that last)"
        " to the first state where etcd's holders are exactly the children running"
    )
    tr.write_line(
        f"{'fault kind':<14}{'faults':>7}{'max overlap':>13}{'max excess':>12}"
        f"{'median conv.':>14}{'max conv.':>11}{'max after repair':>18}"
    )

    def fmt(x: float | None) -> str:
        return "-" if x is None else f"{x:.2f}s"

    for kind, k in agg.items():
        tr.write_line(
            f"{kind:<14}{k['faults']:>7}{k['max_overlap_s']:>12.3f}s{k['max_excess']:>12}"
            f"{fmt(k['median_convergence_s']):>14}{fmt(k['max_convergence_s']):>11}"
            f"{fmt(k['max_after_repair_s']):>18}"
        )
    return agg


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    doc: dict[str, Any] = {}
    if _RESULTS:
        doc.update(seeds=_RESULTS, per_kind=_elect_summary(terminalreporter))
    if _CRON_RESULTS:
        doc["cron"] = {"seeds": _CRON_RESULTS, "per_kind": _cron_summary(terminalreporter)}
    path = config.getoption("--invariant-report")
    if path and doc:
        with open(path, "w") as f:
            json.dump(doc, f, indent=2)
        terminalreporter.write_line(f"written to {path}")
