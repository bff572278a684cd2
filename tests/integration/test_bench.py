"""The benchmarks never rot: `python -m bench --tiny` runs every section once at tiny sizes
against its own etcd and writes its report. No timing is asserted here (bench/ measures)."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT


def test_the_tiny_benchmark_run_writes_every_section(tmp_path):
    out = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--tiny", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    sections = ("handover", "queue", "oneshot", "memory", "crash", "sema", "load", "cron", "steady")
    for section in sections:
        assert section in results, section
    (cron,) = results["cron"]  # every job ran once (the tiny size proves the harness only)
    assert cron["jobs"] == 5 and cron["misses"] == 0 and cron["duplicates"] == 0, cron
    steady = results["steady"]  # 20 jobs over 4 s: all due in the window, each run once
    assert steady["due"] == 20 and steady["misses"] == steady["duplicates"] == 0, steady
    assert steady["early"] == 0, steady
    for tool in ("conch", "etcdctl"):
        assert results["handover"][tool]["n"] >= 1
        assert results["crash"][tool]["n"] == 1
    report = (out / "README.md").read_text()
    assert "## Targets" in report and "etcdctl lock" in report and "## cron" in report
    assert "## cron steady state" in report
