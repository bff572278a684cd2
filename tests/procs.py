"""Helpers for the processes tests start (importable from any test directory)."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from collections.abc import Iterable
from typing import Any


def stop_gracefully(procs: Iterable[subprocess.Popen[Any]], grace: float = 5.0) -> None:
    """End processes a test left running: SIGCONT + SIGTERM (conch and conchd then end their
    children and exit normally, which also saves their coverage data), SIGKILL after `grace`."""
    live = [p for p in procs if p.poll() is None]
    for p in live:
        with contextlib.suppress(ProcessLookupError):
            p.send_signal(signal.SIGCONT)
            p.send_signal(signal.SIGTERM)
    end = time.monotonic() + grace
    for p in live:
        try:
            p.wait(max(0.0, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                p.kill()
            p.wait(10)
