"""The cluster smoke sequence behind ./conch-smoke.sh (SPEC.md, "conch-smoke.sh").

Against the cluster in CONCH_ENDPOINTS, or, with none set, a 3-member cluster it starts itself
(and then also the drills). One line per step, then PASS or FAIL; exit 0 only on PASS.

The cron steps start their own conchd daemons (beside any deployed ones) and remove the jobs
they add. A step that cannot run here prints SKIP and does not fail.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

CONCH = [sys.executable, "-m", "conch"]


class StepFailed(Exception):
    pass


def _conch(
    env: dict[str, str], *args: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CONCH, *args], env=env, capture_output=True, text=True, timeout=timeout)


def _expect(r: subprocess.CompletedProcess[str], code: int) -> None:
    if r.returncode != code:
        raise StepFailed(f"exit {r.returncode}, expected {code}: {r.stderr.strip()[:300]}")


def _poll(pred: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise StepFailed(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.05)


def _read(p: Path) -> str:
    try:
        return p.read_text()
    except FileNotFoundError:
        return ""


def basic_steps(env: dict[str, str], tag: str) -> list[tuple[str, Callable[[], str | None]]]:
    name = f"smoke-{tag}"

    def who_vacant() -> None:
        _expect(_conch(env, "elect", name, "--who"), 1)

    def elect_true() -> None:
        _expect(_conch(env, "elect", name, "--", "true"), 0)
        _expect(_conch(env, "elect", name, "--who"), 1)  # resigned

    def sema_who() -> None:
        _expect(_conch(env, "sema", name, "--max", "2", "--who"), 1)

    def sema_two() -> None:
        with tempfile.TemporaryDirectory() as d:
            release = Path(d) / "release"
            script = f"while [ ! -e {release} ]; do sleep 0.05; done"
            procs = [
                subprocess.Popen(
                    [*CONCH, "sema", name, "--max", "2", "--", "sh", "-c", script],
                    env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                )
                for _ in range(3)
            ]  # fmt: skip
            try:

                def two_and_one() -> bool:
                    r = _conch(env, "sema", name, "--max", "2", "--who", "--json")
                    if r.returncode != 0:
                        return False
                    doc = json.loads(r.stdout)
                    return len(doc["holders"]) == 2 and doc["waiting"] == 1

                _poll(two_and_one, 30, "2 holders and 1 waiting")
            finally:
                release.touch()
                for p in procs:
                    if p.wait(30) != 0:
                        raise StepFailed(f"a sema contender exited {p.returncode}")

    def cron_once() -> str:
        return cron_step(env, name, tag)

    return [
        (f"conch elect {name} --who (vacant, exit 1)", who_vacant),
        (f"conch elect {name} -- true (acquire, clean exit)", elect_true),
        (f"conch sema {name} --max 2 --who (exit 1)", sema_who),
        (f"conch sema {name} --max 2: 3 contenders -> 2 hold, 1 waits", sema_two),
        (
            f"conch cron add {name} ...; cron run --wait: its output, exit 0; ls: one result; rm",
            cron_once,
        ),
    ]


class _Skip(Exception):
    pass


def quorum_drill(env: dict[str, str], cluster: object, tag: str) -> str:
    """Stop 2 of 3 members while an `elect --restart` service runs: the child is killed within
    the TTL; it is restarted once quorum returns."""
    from conch.localetcd import LocalCluster

    assert isinstance(cluster, LocalCluster)
    ttl = 3.0
    with tempfile.TemporaryDirectory() as d:
        pids = Path(d) / "pids"
        svc = subprocess.Popen(
            [*CONCH, "elect", f"drill-{tag}", "--restart", "--ttl", "3s", "--kill-after", "1s",
             "--", "sh", "-c", f"echo $$ >> {pids}; while :; do sleep 0.1; done"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        try:
            first = int(str(_poll(lambda: _read(pids).split(), 30, "the service's child"))[2:-2])
            cluster.take_quorum()  # returns once 2 of 3 members are stopped
            t0 = time.monotonic()
            _poll(lambda: not _alive(first), ttl + 2.0, "the child to be killed")
            took = time.monotonic() - t0
            if took > ttl:
                raise StepFailed(f"child killed {took:.1f}s after quorum loss (TTL {ttl:g}s)")
            cluster.restore_quorum()
            t1 = time.monotonic()
            _poll(lambda: len(_read(pids).split()) >= 2, 60, "the child to be restarted")
            back = time.monotonic() - t1
            if svc.poll() is not None:
                raise StepFailed(f"the --restart service exited {svc.returncode}")
            return (
                f"child killed {took:.1f}s after quorum loss (TTL {ttl:g}s), "
                f"restarted {back:.1f}s after quorum returned"
            )
        finally:
            svc.send_signal(signal.SIGTERM)
            try:
                svc.wait(30)
            except subprocess.TimeoutExpired:
                svc.kill()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (FileNotFoundError, IndexError):
        return False


def main() -> int:
    tag = f"{os.getpid()}"
    env = dict(os.environ)
    cluster = None
    ok = True
    if not env.get("CONCH_ENDPOINTS"):
        from conch.localetcd import LocalCluster

        print("smoke: no CONCH_ENDPOINTS: starting a 3-member local cluster", flush=True)
        cluster = LocalCluster(nodes=3).start()
        env["CONCH_ENDPOINTS"] = cluster.endpoints_csv
    try:
        steps = basic_steps(env, tag)
        if cluster is not None:
            steps.append(
                (
                    "drill: stop 2 of 3 members under an elect --restart service",
                    lambda: quorum_drill(env, cluster, tag),
                )
            )
            steps.append(
                (
                    "drill: kill the daemon that won a cron tick mid-run",
                    lambda: cron_drill(env, tag),
                )
            )
        for title, fn in steps:
            t0 = time.monotonic()
            try:
                note = fn()
            except _Skip as e:
                print(f"SKIP {title}: {e}", flush=True)
                continue
            except (StepFailed, subprocess.TimeoutExpired, OSError, ValueError) as e:
                print(f"FAIL {title}: {e}", flush=True)
                ok = False
                continue
            extra = f": {note}" if note else ""
            print(f"ok   {title} ({time.monotonic() - t0:.1f}s){extra}", flush=True)
    finally:
        if cluster is not None:
            cluster.stop()
    print("PASS" if ok else "FAIL", flush=True)
    return 0 if ok else 1


# --- cron ----------------------------------------------------------------------------------

CONCHD = [sys.executable, "-m", "conch.cron.command"]


class _Daemons:
    """conchd processes started by the smoke; logs in a temporary directory."""

    def __init__(self, env: dict[str, str], d: Path) -> None:
        self.env, self.dir = env, d
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, did: str, ttl: str) -> None:
        with open(self.dir / f"{did}.log", "wb") as log:
            self.procs[did] = subprocess.Popen(
                [*CONCHD, "--id", did, "--ttl", ttl], env=self.env,
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip

    def log(self, did: str) -> str:
        return _read(self.dir / f"{did}.log")

    def wait_claiming(self, did: str) -> None:
        """Until the daemon has checked its clock and claims ticks (a few seconds at start)."""
        _poll(lambda: "claiming ticks" in self.log(did), 30, f"conchd {did} to claim ticks")

    def stop(self, did: str, sig: int = signal.SIGTERM) -> int | None:
        p = self.procs[did]
        if p.poll() is None:
            p.send_signal(sig)
        try:
            return p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            return None

    def stop_all(self) -> None:
        for did in self.procs:
            self.stop(did)


def _cron_runs(env: dict[str, str], job: str) -> list[dict[str, object]] | None:
    """The job's runs from `conch cron ls --json` (None: the job is not listed)."""
    r = _conch(env, "cron", "ls", "--json")
    _expect(r, 0)
    for j in json.loads(r.stdout):
        if j["name"] == job:
            return list(j["runs"])
    return None


def cron_step(env: dict[str, str], name: str, tag: str) -> str:
    """A job on a conchd of our own (deployed daemons may serve it too): `cron run --wait`
    runs it once now, prints its output and exits 0; `cron ls` shows exactly that one result,
    manual; `cron rm` removes it."""
    cmd = ('command -v logger >/dev/null && logger -t conch-smoke "conch smoke $CONCH_TICK"; '
           'echo "conch smoke $CONCH_JOB"')  # fmt: skip
    with tempfile.TemporaryDirectory() as d:
        daemons = _Daemons(env, Path(d))
        daemons.start(f"smoke-{tag}", "5s")
        daemons.wait_claiming(f"smoke-{tag}")
        added = False
        try:
            # a schedule that does not tick during the step: the one run is the manual one
            _expect(_conch(env, "cron", "add", name, "--schedule", "@yearly", "--",
                           "sh", "-c", cmd), 0)  # fmt: skip
            added = True
            r = _conch(env, "cron", "run", name, "--wait", "--timeout", "30s")
            _expect(r, 0)
            if r.stdout != f"conch smoke {name}\n":
                raise StepFailed(f"cron run --wait printed {r.stdout!r}")
            runs = _cron_runs(env, name) or []
            if (len(runs) != 1 or runs[0]["status"] != "ok" or runs[0]["exit_code"] != 0
                    or not runs[0].get("manual")):  # fmt: skip
                raise StepFailed(f"expected exactly one ok manual result, got {runs}")
            _expect(_conch(env, "cron", "rm", name), 0)
            added = False
            if _cron_runs(env, name) is not None:
                raise StepFailed("the job is still listed after cron rm")
            code = daemons.stop(f"smoke-{tag}")
            if code != 128 + signal.SIGTERM:
                raise StepFailed(f"conchd exited {code} on SIGTERM: {daemons.log(f'smoke-{tag}')}")
            return f"run {runs[0]['tick']} ran on {runs[0]['host']} ({runs[0]['daemon']})"
        finally:
            if added:
                _conch(env, "cron", "rm", name)
            daemons.stop_all()


def cron_drill(env: dict[str, str], tag: str) -> str:
    """Two conchd (--ttl 3s); the one that won a tick of a slow job is SIGKILLed mid-run: the
    tick is never rerun, its child is killed (watchdog), and once the dead daemon's lease has
    expired `cron ls` shows the tick as lost; the survivor goes on with later ticks."""
    job, ttl = f"drill-{tag}", 3.0
    with tempfile.TemporaryDirectory() as d:
        started, once, slow_pid = Path(d) / "started", Path(d) / "once", Path(d) / "slow_pid"
        script = (
            f"echo $CONCH_TICK >> {started}; "
            f"if [ ! -e {once} ]; then touch {once}; echo $$ > {slow_pid}; exec sleep 300; fi"
        )
        daemons = _Daemons(env, Path(d))
        ids = [f"drill-a-{tag}", f"drill-b-{tag}"]
        for did in ids:
            daemons.start(did, "3s")
        try:
            _expect(_conch(env, "cron", "add", job, "--schedule", "@every 1s", "--",
                           "sh", "-c", script), 0)  # fmt: skip
            pid = int(str(_poll(lambda: _read(slow_pid).strip(), 30, "the slow run")))
            tick = _read(started).split()[0]

            def winner() -> object:
                for r in _cron_runs(env, job) or []:
                    if r["tick"] == tick:
                        return r["daemon"]
                return None

            won = str(_poll(winner, 30, "the slow run's record"))
            if won not in ids:
                raise StepFailed(f"tick {tick} was won by {won!r}, not by a drill daemon")
            daemons.stop(won, signal.SIGKILL)
            t0 = time.monotonic()
            _poll(lambda: not _alive(pid), 15, "the dead daemon's child to be killed")

            def lost() -> bool:
                return any(
                    r["tick"] == tick and r["status"] == "lost" for r in _cron_runs(env, job) or []
                )

            _poll(lost, ttl + 30, f"tick {tick} shown as lost")
            took = time.monotonic() - t0

            def later_ok() -> bool:
                runs = _cron_runs(env, job) or []
                return any(r["status"] == "ok" and str(r["tick"]) > tick for r in runs)

            _poll(later_ok, 30, "a later tick run by the survivor")
            ran = _read(started).split()
            if ran.count(tick) != 1 or len(ran) != len(set(ran)):
                raise StepFailed(f"a tick ran twice: {ran}")
            rec = next(r for r in _cron_runs(env, job) or [] if r["tick"] == tick)
            if rec["exit_code"] is not None or rec["finished"] is not None:
                raise StepFailed(f"the lost tick has a result: {rec}")
            _expect(_conch(env, "cron", "rm", job), 0)
            return (
                f"winner {won} killed; tick {tick} never rerun, shown lost {took:.1f}s later "
                f"(TTL {ttl:g}s); the survivor ran later ticks"
            )
        finally:
            _conch(env, "cron", "rm", job)
            daemons.stop_all()


if __name__ == "__main__":
    sys.exit(main())
