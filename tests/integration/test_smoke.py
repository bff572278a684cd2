"""./conch-smoke.sh runs end to end: its own 3-member cluster, the smoke steps (elect, sema,
cron) and both drills (quorum loss under an elect --restart service; killed cron winner)."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import ROOT


def test_smoke_script_passes_on_its_own_cluster():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONCH_", "ETCDCTL_"))}
    # the Python running the tests has conch installed: put it first on PATH for the script
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    r = subprocess.run(
        ["bash", str(ROOT / "conch-smoke.sh")],
        env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[-1] == "PASS"
    assert not [line for line in lines if line.startswith("FAIL")]
    assert not [line for line in lines if line.startswith("SKIP")]
    for step in ("conch elect", "conch sema", "conch cron add", "drill: stop 2 of 3",
                 "drill: kill the daemon that won a cron tick"):  # fmt: skip
        assert any(line.startswith(f"ok   {step}") for line in lines), (step, lines)
