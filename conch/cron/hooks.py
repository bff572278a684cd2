"""--on-failure hooks: `/bin/sh -c CMD` once per failed, timed-out or lost run.

Exactly once per run, across daemons: a hook runs on the daemon that creates its claim key
(conch.keys.cron_hook_key). A failed run's winner claims it in the transaction that writes the
result (conch.cron.store.finish_many); a lost run's (its record says running, its alive
marker is gone) is claimed by whichever daemon scheduling the job sees it first — each sweeps
its --on-failure jobs every SWEEP seconds (store.lost_runs, store.claim_lost_hook). A winner
that comes back and writes the lost run's result later finds the hook claimed: it does not run
again.

The hook gets CONCH_JOB, CONCH_TICK, CONCH_REV, CONCH_STATUS (failed or lost),
CONCH_EXIT_CODE (empty for a lost run) and CONCH_OUTPUT_FILE (a file holding the run's stored
output, removed when the hook ends), in its own process group, for HOOK_TIMEOUT at most.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from conch.client import Client, EtcdClusterChanged, EtcdError
from conch.cron import store
from conch.cron.model import Job, RunRecord, RunStatus, Tick, format_tick
from conch.holder import rfc3339

if TYPE_CHECKING:
    from conch.cron.metrics import NoMetrics

log = logging.getLogger(__name__)

SWEEP = 2.0  # seconds between looks for lost runs of the --on-failure jobs
HOOK_TIMEOUT = 300.0  # a hook is sent SIGTERM after this, SIGKILL HOOK_KILL_AFTER later
HOOK_KILL_AFTER = 10.0
OUTPUT_LOGGED = 2000  # characters of a hook's own output logged


class FailureHooks(threading.Thread):
    """Sweeps for lost runs of `jobs()` (the --on-failure jobs this daemon schedules) and runs
    the hooks this daemon claims, each in a thread of its own."""

    def __init__(
        self,
        client: Client,
        prefix: str,
        daemon_id: str,
        host: str,
        metrics: NoMetrics,
        jobs: Callable[[], list[Job]],
        env: dict[str, str],
    ) -> None:
        super().__init__(name="hooks", daemon=True)
        self.client, self.prefix, self.daemon_id, self.host = client, prefix, daemon_id, host
        self.metrics = metrics
        self._jobs = jobs
        self._env = env
        self._halt = threading.Event()
        self._lock = threading.Lock()
        self._running: dict[int, subprocess.Popen[bytes]] = {}  # pid -> hook process
        self._threads: list[threading.Thread] = []

    def claim_value(self) -> bytes:
        """The value of a hook claim this daemon writes."""
        return json.dumps({"daemon": self.daemon_id, "host": self.host,
                           "claimed": rfc3339(time.time())}).encode()  # fmt: skip

    def run(self) -> None:
        while not self._halt.wait(SWEEP):
            try:
                self.sweep()
            except EtcdClusterChanged:
                return
            except EtcdError as e:
                log.debug("looking for lost runs failed: %s; later", e)
            except Exception:  # a bug must not end the sweeps
                log.exception("internal error looking for lost runs")

    def sweep(self) -> None:
        """Claim and run the hooks of the lost runs of this daemon's --on-failure jobs."""
        jobs = {j.name: j for j in self._jobs() if j.on_failure}
        names = sorted(jobs)
        for i in range(0, len(names), store.LOST_JOBS_PER_READ):
            for lost in store.lost_runs(self.client, self.prefix,
                                        names[i : i + store.LOST_JOBS_PER_READ]):  # fmt: skip
                if self._halt.is_set():
                    return
                if store.claim_lost_hook(self.client, self.prefix, lost, self.claim_value()):
                    log.warning("job %r tick %s: lost (daemon %s on %s); running its "
                                "--on-failure hook", lost.name, format_tick(lost.tick),
                                lost.record.daemon, lost.record.host)  # fmt: skip
                    rec = lost.record
                    self.launch(jobs[lost.name], lost.tick, RunStatus.LOST, None, rec.rev, "")

    def launch(self, job: Job, tick: Tick, status: RunStatus, exit_code: int | None, rev: int,
              output: str) -> None:  # fmt: skip
        """Run the hook of a run whose hook this daemon claimed."""
        t = threading.Thread(
            target=self._run_hook, args=(job, tick, status, exit_code, rev, output),
            name=f"hook {job.name}", daemon=True,
        )  # fmt: skip
        with self._lock:
            self._threads = [x for x in self._threads if x.is_alive()] + [t]
        t.start()

    def started_for(self, job: Job, tick: Tick, rec: RunRecord) -> None:
        """A failed run's winner claimed its hook with the result (the result writer)."""
        self.launch(job, tick, RunStatus(rec.status), rec.exit_code, rec.rev, rec.output)

    def _run_hook(self, job: Job, tick: Tick, status: RunStatus, exit_code: int | None,
                  rev: int, output: str) -> None:  # fmt: skip
        label = f"job {job.name!r} tick {format_tick(tick)}"
        assert job.on_failure
        fd, path = tempfile.mkstemp(prefix="conch-hook-", suffix=".out")
        try:
            with os.fdopen(fd, "w", encoding="utf-8", errors="replace") as f:
                f.write(output)
            env = {**self._env, "CONCH_JOB": job.name, "CONCH_TICK": format_tick(tick),
                   "CONCH_REV": str(rev), "CONCH_STATUS": status.value,
                   "CONCH_EXIT_CODE": "" if exit_code is None else str(exit_code),
                   "CONCH_OUTPUT_FILE": path}  # fmt: skip
            try:
                p = subprocess.Popen(
                    ["/bin/sh", "-c", job.on_failure], env=env, stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
                )  # fmt: skip
            except OSError as e:
                log.error("%s: --on-failure hook could not start: %s", label, e)
                self.metrics.hook(job.name, False)
                return
            with self._lock:
                self._running[p.pid] = p
            try:
                out, _ = p.communicate(timeout=HOOK_TIMEOUT)
            except subprocess.TimeoutExpired:
                log.error("%s: --on-failure hook still running after %gs: SIGTERM", label,
                          HOOK_TIMEOUT)  # fmt: skip
                _signal_group(p.pid, signal.SIGTERM)
                try:
                    out, _ = p.communicate(timeout=HOOK_KILL_AFTER)
                except subprocess.TimeoutExpired:
                    _signal_group(p.pid, signal.SIGKILL)
                    out, _ = p.communicate()
            finally:
                with self._lock:
                    self._running.pop(p.pid, None)
            text = out.decode("utf-8", "replace")[-OUTPUT_LOGGED:].rstrip()
            log.info("%s: --on-failure hook exited %d%s", label, p.returncode,
                     f": {text}" if text else "")  # fmt: skip
            self.metrics.hook(job.name, p.returncode == 0)
        finally:
            os.unlink(path)

    def halt(self, wait: float) -> None:
        """Stop sweeping; hooks still running get SIGTERM and `wait` seconds to end."""
        self._halt.set()
        with self._lock:
            running, threads = list(self._running.values()), list(self._threads)
        for p in running:
            _signal_group(p.pid, signal.SIGTERM)
        end = time.monotonic() + wait
        for t in threads:
            t.join(max(0.0, end - time.monotonic()))
        with self._lock:
            for p in self._running.values():
                _signal_group(p.pid, signal.SIGKILL)


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(OSError):  # gone already
        os.killpg(pgid, sig)
