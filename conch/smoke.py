"""The cluster smoke sequence behind ./conch-smoke.sh (SPEC.md, "conch-smoke.sh").

Against the cluster in CONCH_ENDPOINTS, or, with none set, a 3-member cluster it starts itself
(and then also the drills). One line per step, then PASS or FAIL; exit 0 only on PASS.

Steps that need a capability conch does not have yet (cron) print SKIP and do not fail.
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
Completed = subprocess.CompletedProcess[str]


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

    def cron_missing() -> None:
        raise _Skip("conch cron is not built yet")

    return [
        (f"conch elect {name} --who (vacant, exit 1)", who_vacant),
        (f"conch elect {name} -- true (acquire, clean exit)", elect_true),
        (f"conch sema {name} --max 2 --who (exit 1)", sema_who),
        (f"conch sema {name} --max 2: 3 contenders -> 2 hold, 1 waits", sema_two),
        (f"conch cron add {name} --schedule '@every 1m' ... ls ... rm", cron_missing),
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
                ("drill: kill the daemon that won a cron tick mid-run", _cron_drill_missing)
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


def _cron_drill_missing() -> None:
    raise _Skip("conch cron is not built yet")


if __name__ == "__main__":
    sys.exit(main())
