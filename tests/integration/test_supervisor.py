"""The child-process core: process groups, termination, reaping, exit codes, and the watchdog.

No etcd here. Timing assertions keep generous margins (SLACK) because these tests run beside
the etcd-backed suites on small machines; waits poll with deadlines, never fixed sleeps.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from procs import state

from conch.errors import ConchError, child_exit_code
from conch.supervisor import Child
from conch.watchdog import EXIT_DISARMED, EXIT_FIRED, Watchdog, clock

# Allowance for scheduling delays on a loaded 2-core machine.
SLACK = 2.0
KILL_AFTER = 0.5

# A child for the tests: argv = OUT IGNORE_TERM GRANDCHILD [GC_IGNORES_TERM].
# Writes OUT.pid (and OUT.gc with the grandchild's pid), then OUT.ready; on SIGTERM appends
# "PID MONOTONIC" to OUT.term, then either ignores it or dies of it (returncode -15).
CHILD = textwrap.dedent(
    """
    import os, signal, sys, time
    out, ignore, grandchild = sys.argv[1], sys.argv[2] == "1", sys.argv[3] == "1"
    gc_ignore = len(sys.argv) > 4 and sys.argv[4] == "1"

    def put(path, text):
        with open(path + ".tmp", "w") as f:
            f.write(text)
        os.rename(path + ".tmp", path)

    def handler_for(ignore_term):
        def on_term(signum, frame):
            with open(out + ".term", "a") as f:
                f.write(f"{os.getpid()} {time.monotonic()!r}\\n")
            if not ignore_term:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                os.kill(os.getpid(), signal.SIGTERM)
        return on_term

    signal.signal(signal.SIGTERM, handler_for(ignore))
    put(out + ".pid", str(os.getpid()))
    if grandchild:
        r, w = os.pipe()
        if os.fork() == 0:
            signal.signal(signal.SIGTERM, handler_for(gc_ignore))
            put(out + ".gc", str(os.getpid()))
            os.write(w, b"x")
            while True:
                time.sleep(60)
        os.read(r, 1)
    put(out + ".ready", "")
    while True:
        time.sleep(60)
    """
)


# --- helpers --------------------------------------------------------------------------------------


def wait_until(pred: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll `pred` until true; return the elapsed time, fail after `timeout`."""
    start = time.monotonic()
    while not pred():
        if time.monotonic() - start > timeout:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)
    return time.monotonic() - start


def proc_dead(pid: int) -> bool:
    """Gone, or a zombie (a reparented zombie may linger if init does not reap it)."""
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return True
    state = data[data.rfind(b")") + 2 :].split()[0]
    return state in (b"Z", b"X")


def proc_alive(pid: int) -> bool:
    return not proc_dead(pid)


def ignores(pid: int, *sigs: int) -> bool:
    """True if process `pid` ignores all of `sigs` (from the SigIgn mask in /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigIgn:"):
            mask = int(line.split()[1], 16)
            return all(mask & (1 << (s - 1)) for s in sigs)
    return False


def catches(pid: int, sig: int) -> bool:
    """True if process `pid` has a handler for `sig` (from the SigCgt mask in /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) & (1 << (sig - 1)))
    return False


def read_pid(path: Path) -> int:
    return int(path.read_text())


def term_times(out: Path) -> dict[int, float]:
    """pid → monotonic time it got SIGTERM (first one), from OUT.term."""
    times: dict[int, float] = {}
    term = Path(str(out) + ".term")
    if term.exists():
        for line in term.read_text().splitlines():
            pid, t = line.split()
            times.setdefault(int(pid), float(t))
    return times


def child_argv(
    out: Path, ignore: bool = False, grandchild: bool = False, gc_ignore: bool = False
) -> list[str]:
    flag = {True: "1", False: "0"}
    return [sys.executable, "-c", CHILD, str(out), flag[ignore], flag[grandchild], flag[gc_ignore]]


class Tracker:
    """Remembers pids/pgids a test started; SIGKILLs whatever is left at teardown."""

    def __init__(self) -> None:
        self.pgids: list[int] = []
        self.pids: list[int] = []
        self.popens: list[subprocess.Popen[bytes]] = []
        self.children: list[Child] = []

    def child(self, argv: list[str]) -> Child:
        c = Child.spawn(argv, dict(os.environ))
        self.children.append(c)
        self.pgids.append(c.pgid)
        c.open_gate()
        return c

    def cleanup(self) -> None:
        for pid in self.pids:
            for sig in (signal.SIGCONT, signal.SIGKILL):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
        for pgid in self.pgids:
            for sig in (signal.SIGCONT, signal.SIGKILL):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pgid, sig)
        for c in self.children:
            c.wait(5)
        for p in self.popens:
            with contextlib.suppress(ProcessLookupError):
                p.kill()
            p.wait(5)


@pytest.fixture
def tracker() -> Iterator[Tracker]:
    t = Tracker()
    try:
        yield t
    finally:
        t.cleanup()


def start_ready_child(tracker: Tracker, out: Path, **kw: bool) -> Child:
    c = tracker.child(child_argv(out, **kw))
    wait_until(lambda: Path(str(out) + ".ready").exists(), 10 + SLACK, "the child to be ready")
    if kw.get("grandchild"):
        tracker.pids.append(read_pid(Path(str(out) + ".gc")))
    return c


# --- spawning and process groups ------------------------------------------------------------------


def test_child_runs_in_its_own_process_group(tracker: Tracker, tmp_path: Path) -> None:
    out = tmp_path / "c"
    c = start_ready_child(tracker, out)
    assert read_pid(Path(f"{out}.pid")) == c.pid
    assert c.pgid == c.pid
    assert os.getpgid(c.pid) == c.pid
    assert os.getsid(c.pid) == c.pid  # its own session: no terminal signals reach it directly
    assert c.pgid != os.getpgrp()
    assert c.poll() is None
    assert c.wait(0.05) is None
    assert c.group_alive()
    rc = c.terminate_group(KILL_AFTER)
    assert rc == -signal.SIGTERM
    assert not c.group_alive()


def test_child_gets_the_given_environment(tracker: Tracker, tmp_path: Path) -> None:
    out = tmp_path / "env"
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CONCH_REV": "42"}
    c = Child.spawn(["sh", "-c", f'echo "$CONCH_REV" > {out}'], env)
    tracker.children.append(c)
    c.open_gate()
    assert c.wait(10 + SLACK) == 0
    assert out.read_text() == "42\n"


def test_exit_code_of_a_child_that_exits_on_its_own(tracker: Tracker) -> None:
    c = tracker.child([sys.executable, "-c", "raise SystemExit(3)"])
    rc = c.wait(10 + SLACK)
    assert rc == 3
    assert child_exit_code(rc) == 3
    assert c.poll() == 3  # stays reaped


def test_exit_code_of_a_child_killed_by_a_signal(tracker: Tracker) -> None:
    c = tracker.child([sys.executable, "-c", "import os; os.kill(os.getpid(), 9)"])
    rc = c.wait(10 + SLACK)
    assert rc == -signal.SIGKILL
    assert child_exit_code(rc) == 137


def test_nonexistent_command_is_127(tmp_path: Path) -> None:
    with pytest.raises(ConchError) as ei:
        Child.spawn(["conch-no-such-command-xyz"], dict(os.environ))
    assert ei.value.exit_code == 127
    assert "conch-no-such-command-xyz" in str(ei.value)
    with pytest.raises(ConchError) as ei:
        Child.spawn([str(tmp_path / "missing" / "cmd")], dict(os.environ))
    assert ei.value.exit_code == 127


def test_non_executable_command_is_126(tmp_path: Path) -> None:
    script = tmp_path / "script"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(stat.S_IRUSR | stat.S_IWUSR)
    with pytest.raises(ConchError) as ei:
        Child.spawn([str(script)], dict(os.environ))
    assert ei.value.exit_code == 126
    with pytest.raises(ConchError) as ei:
        Child.spawn([str(tmp_path)], dict(os.environ))  # a directory
    assert ei.value.exit_code == 126


def test_empty_command_is_a_usage_error() -> None:
    with pytest.raises(ConchError) as ei:
        Child.spawn([], dict(os.environ))
    assert ei.value.exit_code == 2


# --- the gate -------------------------------------------------------------------------------------

# prints its argv and, for each descriptor number given in FDS, whether it is open
ARGV_AND_FDS = (
    "import json, os, sys\n"
    "def is_open(fd):\n"
    "    try:\n"
    "        os.fstat(fd)\n"
    "        return True\n"
    "    except OSError:\n"
    "        return False\n"
    "fds = [int(n) for n in os.environ['FDS'].split()]\n"
    "print(json.dumps([sys.argv[1:], {fd: is_open(fd) for fd in fds}]))\n"
)


def test_the_command_waits_at_the_gate_until_it_opens(tracker: Tracker, tmp_path: Path) -> None:
    ran = tmp_path / "ran"
    c = Child.spawn(["sh", "-c", f"touch {ran}"], dict(os.environ))
    tracker.children.append(c)
    # the gate shell is blocked reading its pipe: sleeping, and the command not run
    wait_until(lambda: state(c.pid) == "S", 10 + SLACK, "the gate shell to block")
    assert c.poll() is None and not ran.exists()
    c.open_gate()
    assert c.wait(10 + SLACK) == 0 and ran.exists()
    assert c.pid == c.pgid  # the command ran in the gate shell's process: same pid


def test_a_closed_gate_never_runs_the_command(tracker: Tracker, tmp_path: Path) -> None:
    ran = tmp_path / "ran"
    c = Child.spawn(["sh", "-c", f"touch {ran}"], dict(os.environ))
    tracker.children.append(c)
    c.close_gate()  # as when conch dies: the pipe's last writer is gone
    assert c.wait(10 + SLACK) == 125 and not ran.exists()
    c.open_gate()  # too late, and harmless


def test_the_command_gets_its_argv_verbatim_and_no_extra_descriptors(tmp_path: Path) -> None:
    """argv reaches the command untouched (no shell interpretation); stdio as given; the
    gate's fd 3 and any inheritable descriptor of the spawner are closed."""
    inheritable = os.open(os.devnull, os.O_RDONLY)
    os.set_inheritable(inheritable, True)
    out_r, out_w = os.pipe()
    args = ["a b", "$HOME", "*", "", "-n", "'\"", "\\"]
    try:
        env = dict(os.environ, FDS=f"3 {inheritable}")
        with open(os.devnull, "rb") as null:
            c = Child.spawn([sys.executable, "-c", ARGV_AND_FDS, *args], env,
                            stdin=null.fileno(), stdout=out_w, stderr=out_w)  # fmt: skip
        os.close(out_w)
        c.open_gate()
        assert c.wait(10 + SLACK) == 0
        with os.fdopen(out_r, "rb") as f:
            got_args, fds = json.loads(f.read())
    finally:
        os.close(inheritable)
    assert got_args == args
    assert fds == {"3": False, str(inheritable): False}


# --- terminate_group ------------------------------------------------------------------------------


def test_terminate_group_child_exiting_on_sigterm_returns_promptly(
    tracker: Tracker, tmp_path: Path
) -> None:
    out = tmp_path / "c"
    c = start_ready_child(tracker, out)
    start = time.monotonic()
    rc = c.terminate_group(kill_after=10.0)
    elapsed = time.monotonic() - start
    assert rc == -signal.SIGTERM
    assert child_exit_code(rc) == 143
    assert elapsed < SLACK, f"took {elapsed:.2f}s although the child exits on SIGTERM"
    assert c.pid in term_times(out)
    assert proc_dead(c.pid)


def test_terminate_group_sigkills_a_child_ignoring_sigterm_after_kill_after(
    tracker: Tracker, tmp_path: Path
) -> None:
    out = tmp_path / "c"
    c = start_ready_child(tracker, out, ignore=True)
    start = time.monotonic()
    rc = c.terminate_group(kill_after=KILL_AFTER)
    elapsed = time.monotonic() - start
    assert rc == -signal.SIGKILL
    assert child_exit_code(rc) == 137
    assert c.pid in term_times(out)  # it did get the SIGTERM first
    assert KILL_AFTER <= elapsed < KILL_AFTER + SLACK
    assert proc_dead(c.pid)
    assert not c.group_alive()


@pytest.mark.parametrize("gc_ignore", [False, True], ids=["gc-dies-on-term", "gc-ignores-term"])
def test_terminate_group_kills_grandchildren(
    tracker: Tracker, tmp_path: Path, gc_ignore: bool
) -> None:
    out = tmp_path / "c"
    c = start_ready_child(tracker, out, grandchild=True, gc_ignore=gc_ignore)
    gc = read_pid(Path(f"{out}.gc"))
    assert os.getpgid(gc) == c.pgid
    start = time.monotonic()
    rc = c.terminate_group(kill_after=KILL_AFTER)
    elapsed = time.monotonic() - start
    assert rc == -signal.SIGTERM  # the child itself died of the SIGTERM
    assert proc_dead(gc), "the grandchild outlived terminate_group"
    assert gc in term_times(out)
    if gc_ignore:
        assert KILL_AFTER <= elapsed < KILL_AFTER + SLACK
    else:
        assert elapsed < SLACK
    assert not c.group_alive()


def test_terminate_group_kills_a_shell_background_job(tracker: Tracker, tmp_path: Path) -> None:
    pidfile = tmp_path / "bg"
    c = tracker.child(
        ["sh", "-c", f"sleep 1000 & echo $! > {pidfile}.tmp; mv {pidfile}.tmp {pidfile}; wait"]
    )
    wait_until(pidfile.exists, 10 + SLACK, "the background job")
    bg = read_pid(pidfile)
    tracker.pids.append(bg)
    assert proc_alive(bg)
    c.terminate_group(kill_after=KILL_AFTER)
    assert proc_dead(bg)


def test_terminate_group_reaches_a_stopped_group(tracker: Tracker, tmp_path: Path) -> None:
    out = tmp_path / "c"
    c = start_ready_child(tracker, out)
    c.signal_group(signal.SIGSTOP)
    start = time.monotonic()
    rc = c.terminate_group(kill_after=10.0)
    # SIGCONT follows the SIGTERM, so the stopped child handles it at once: no 10 s wait.
    assert rc == -signal.SIGTERM
    assert time.monotonic() - start < SLACK


def test_signal_handler_can_act_during_wait(tracker: Tracker, tmp_path: Path) -> None:
    """conch's signal handlers run in the main thread, possibly in the middle of wait()."""
    out = tmp_path / "c"
    c = start_ready_child(tracker, out)

    def on_alarm(signum: int, frame: object) -> None:
        c.signal_group(signal.SIGTERM)

    old = signal.signal(signal.SIGALRM, on_alarm)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.2)
        rc = c.wait(10 + SLACK)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert rc == -signal.SIGTERM


def test_signal_group_on_a_vanished_group_is_harmless(tracker: Tracker) -> None:
    c = tracker.child([sys.executable, "-c", "pass"])
    assert c.wait(10 + SLACK) == 0
    wait_until(lambda: not c.group_alive(), 5, "the group to vanish")
    c.signal_group(signal.SIGTERM)
    assert c.terminate_group(KILL_AFTER) == 0


# --- reap_group -----------------------------------------------------------------------------------


def test_reap_group_kills_background_leftovers(tracker: Tracker, tmp_path: Path) -> None:
    pidfile = tmp_path / "bg"
    c = tracker.child(
        ["sh", "-c", f"sleep 1000 & echo $! > {pidfile}.tmp; mv {pidfile}.tmp {pidfile}; exit 3"]
    )
    assert c.wait(10 + SLACK) == 3
    bg = read_pid(pidfile)
    tracker.pids.append(bg)
    assert proc_alive(bg)
    assert c.group_alive()
    start = time.monotonic()
    c.reap_group(kill_after=10.0)
    assert time.monotonic() - start < SLACK  # sleep dies of SIGTERM
    assert proc_dead(bg)
    assert not c.group_alive()


def test_reap_group_sigkills_leftovers_ignoring_sigterm(tracker: Tracker, tmp_path: Path) -> None:
    out = tmp_path / "c"
    c = start_ready_child(tracker, out, grandchild=True, gc_ignore=True)
    gc = read_pid(Path(f"{out}.gc"))
    os.kill(c.pid, signal.SIGKILL)  # the child "exits on its own", leaving its grandchild
    assert c.wait(10 + SLACK) == -signal.SIGKILL
    assert proc_alive(gc)
    start = time.monotonic()
    c.reap_group(kill_after=KILL_AFTER)
    elapsed = time.monotonic() - start
    assert proc_dead(gc)
    assert gc in term_times(out)
    assert KILL_AFTER <= elapsed < KILL_AFTER + SLACK


def test_reap_group_with_nothing_left_is_quick(tracker: Tracker) -> None:
    c = tracker.child([sys.executable, "-c", "pass"])
    assert c.wait(10 + SLACK) == 0
    start = time.monotonic()
    c.reap_group(kill_after=10.0)
    assert time.monotonic() - start < SLACK


# --- the watchdog ---------------------------------------------------------------------------------

# A stand-in for conch: spawns CHILD in its own group (with a grandchild), starts the watchdog on
# it, prints "CHILD_PID WATCHDOG_PID", then either idles or pushes deadlines (now + AHEAD) every
# 0.1 s, appending each pushed deadline to OUT.deadlines after pushing it.
# argv: OUT KILL_AFTER AHEAD PUSH IGNORE_TERM
FAKE_CONCH = textwrap.dedent(
    """
    import os, sys, time
    from conch.supervisor import Child
    from conch.watchdog import Watchdog, clock
    out, kill_after, ahead = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
    push, ignore = sys.argv[4] == "1", sys.argv[5]
    child = Child.spawn(
        [sys.executable, "-c", os.environ["CONCH_TEST_CHILD"], out, ignore, "1", ignore],
        dict(os.environ),
    )
    child.open_gate()
    while not os.path.exists(out + ".ready"):
        time.sleep(0.01)
    wd = Watchdog.start(child.pgid, kill_after, clock() + ahead)
    print(child.pid, wd.pid, flush=True)
    while True:
        time.sleep(0.1)
        if push:
            d = clock() + ahead
            wd.update(d)
            with open(out + ".deadlines", "a") as f:
                f.write(f"{d!r}\\n")
    """
)


def start_fake_conch(
    tracker: Tracker, out: Path, ahead: float, push: bool, ignore: bool
) -> tuple[subprocess.Popen[bytes], int, int, int]:
    env = dict(os.environ, CONCH_TEST_CHILD=CHILD)
    argv = [sys.executable, "-c", FAKE_CONCH, str(out), str(KILL_AFTER), str(ahead)]
    argv += ["1" if push else "0", "1" if ignore else "0"]
    fake = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, start_new_session=True)
    tracker.popens.append(fake)
    assert fake.stdout is not None
    line = fake.stdout.readline().decode()
    assert line, "the fake conch died before starting its child"
    child_pid, wd_pid = map(int, line.split())
    gc = read_pid(Path(f"{out}.gc"))
    tracker.pgids.append(child_pid)
    tracker.pids += [gc, wd_pid]
    assert proc_alive(child_pid) and proc_alive(gc) and os.getpgid(gc) == child_pid
    return fake, child_pid, gc, wd_pid


@pytest.mark.parametrize("ignore", [False, True], ids=["group-dies-on-term", "group-ignores-term"])
def test_watchdog_kills_group_when_conch_is_sigkilled(
    tracker: Tracker, tmp_path: Path, ignore: bool
) -> None:
    out = tmp_path / "c"
    fake, child, gc, wd = start_fake_conch(tracker, out, ahead=600.0, push=False, ignore=ignore)
    start = time.monotonic()
    fake.kill()
    fake.wait()
    elapsed = wait_until(
        lambda: proc_dead(child) and proc_dead(gc),
        KILL_AFTER + 1.0 + SLACK,
        "the orphaned child group to be killed",
    )
    terms = term_times(out)
    assert child in terms and gc in terms
    assert terms[child] - start < 1.0 + SLACK  # SIGTERM right after conch's death
    if ignore:
        assert elapsed >= KILL_AFTER - 0.05
    wait_until(lambda: proc_dead(wd), KILL_AFTER + SLACK, "the watchdog to exit")


@pytest.mark.parametrize("ignore", [False, True], ids=["group-dies-on-term", "group-ignores-term"])
def test_watchdog_kills_group_at_deadline_when_conch_is_stopped(
    tracker: Tracker, tmp_path: Path, ignore: bool
) -> None:
    ahead = 1.5
    out = tmp_path / "c"
    fake, child, gc, wd = start_fake_conch(tracker, out, ahead=ahead, push=True, ignore=ignore)
    # Let it push a few deadlines: the initial one passes while the group is still alive.
    deadlines = Path(f"{out}.deadlines")
    wait_until(
        lambda: deadlines.exists() and len(deadlines.read_text().splitlines()) >= 3,
        10 + SLACK,
        "the fake conch to push deadlines",
    )
    os.kill(fake.pid, signal.SIGSTOP)
    try:
        wait_until(
            lambda: proc_dead(child) and proc_dead(gc),
            ahead + KILL_AFTER + SLACK + 1.0,
            "the stopped conch's child group to be killed",
        )
        died = time.monotonic()
        last = float(deadlines.read_text().splitlines()[-1])
        terms = term_times(out)
        assert child in terms and gc in terms
        for pid in (child, gc):
            # SIGTERM at the last pushed deadline (or the one pushed just before we stopped it,
            # at most one 0.1 s push interval later), not before it.
            assert last - 0.01 <= terms[pid] < last + 0.1 + SLACK
        if ignore:
            assert died >= last + KILL_AFTER - 0.05
        wait_until(lambda: proc_dead(wd), KILL_AFTER + SLACK, "the watchdog to exit")
        assert proc_alive(fake.pid)  # conch itself is untouched, merely stopped
    finally:
        os.kill(fake.pid, signal.SIGCONT)
        fake.kill()
        fake.wait()


def test_watchdog_disarm_leaves_the_group_alone(tracker: Tracker, tmp_path: Path) -> None:
    out = tmp_path / "c"
    c = start_ready_child(tracker, out)
    wd = Watchdog.start(c.pgid, KILL_AFTER, clock() + 0.3)
    wd.disarm()
    assert wd.returncode == EXIT_DISARMED
    assert not wd.alive()
    wd.update(time.monotonic())  # harmless after disarm
    wd.disarm()  # idempotent
    assert c.poll() is None and c.group_alive()
    assert term_times(out) == {}
    assert c.terminate_group(KILL_AFTER) == -signal.SIGTERM


def test_watchdog_deadline_updates_postpone_the_kill(tracker: Tracker, tmp_path: Path) -> None:
    out = tmp_path / "c"
    c = start_ready_child(tracker, out)
    ahead = 1.0
    wd = Watchdog.start(c.pgid, KILL_AFTER, clock() + ahead)
    try:
        # Keep pushing for well past the first deadline: the child must survive.
        end = time.monotonic() + 2.5 * ahead
        last = 0.0
        while time.monotonic() < end:
            last = clock() + ahead
            wd.update(last)
            assert c.poll() is None, "killed although the deadline was being pushed"
            time.sleep(0.1)
        assert term_times(out) == {}
        # Stop pushing: it fires at the last deadline.
        rc = c.wait(ahead + KILL_AFTER + SLACK)
        assert rc == -signal.SIGTERM
        t = term_times(out)[c.pid]
        assert last - 0.01 <= t < last + SLACK
        wait_until(lambda: not wd.alive(), KILL_AFTER + SLACK, "the watchdog to exit")
        assert wd.fired()
        assert wd.returncode == EXIT_FIRED
    finally:
        wd.disarm()


def test_watchdog_ignores_sigint_and_fires_on_sigterm(tracker: Tracker, tmp_path: Path) -> None:
    out = tmp_path / "c"
    c = start_ready_child(tracker, out)
    wd = Watchdog.start(c.pgid, KILL_AFTER, clock() + 600.0)
    try:
        # Signals sent before it has set its dispositions would hit Python's defaults.
        # (SIGINT and SIGHUP may be ignored from the start, under nohup: SIGTERM's handler is
        # set last)
        def handlers_set() -> bool:
            return ignores(wd.pid, signal.SIGINT, signal.SIGHUP) and catches(wd.pid, signal.SIGTERM)

        wait_until(handlers_set, SLACK, "its handlers")
        os.kill(wd.pid, signal.SIGINT)
        os.kill(wd.pid, signal.SIGHUP)
        wd.update(clock() + 600.0)
        assert not wd.broken and wd.alive() and c.poll() is None
        os.kill(wd.pid, signal.SIGTERM)
        assert c.wait(KILL_AFTER + SLACK) == -signal.SIGTERM
        wait_until(lambda: not wd.alive(), KILL_AFTER + SLACK, "the watchdog to exit")
        assert wd.fired()
    finally:
        wd.disarm()


def test_watchdog_update_after_its_death_does_not_raise(tracker: Tracker, tmp_path: Path) -> None:
    out = tmp_path / "c"
    c = start_ready_child(tracker, out)
    wd = Watchdog.start(c.pgid, KILL_AFTER, clock())  # fires at once
    assert c.wait(KILL_AFTER + SLACK) == -signal.SIGTERM
    wait_until(lambda: not wd.alive(), KILL_AFTER + SLACK, "the watchdog to exit")
    for _ in range(3):
        wd.update(clock() + 10)
    assert wd.broken
    wd.disarm()
    assert wd.returncode == EXIT_FIRED


def test_watchdog_refuses_dangerous_groups() -> None:
    for pgid in (0, 1, os.getpgrp()):
        with pytest.raises(ValueError):
            Watchdog.start(pgid, KILL_AFTER, clock() + 10)


def test_a_sealed_spawner_still_passes_no_inherited_descriptor() -> None:
    """conchd seals once (supervisor.seal_inherited_fds) instead of listing /proc/self/fd at
    every spawn: a descriptor it inherited (here: made inheritable before the seal) still does
    not reach the command. In a process of its own: sealing is for the life of a process."""
    script = """
import os, sys
from conch.supervisor import Child, seal_inherited_fds
fd = os.open(os.devnull, os.O_RDONLY)
os.set_inheritable(fd, True)  # as a descriptor inherited from conchd's parent
seal_inherited_fds()
c = Child.spawn(["sh", "-c", f"[ -e /proc/self/fd/{fd} ] && echo open || echo closed"],
                dict(os.environ))
c.open_gate()
sys.exit(c.wait(10))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=30)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "closed"
