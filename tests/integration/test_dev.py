"""`conch dev` (conch.dev.main) against the real etcd binary, run in a subprocess.

Most run the real CLI (`python -m conch dev ...`); a few call conch.dev.main through `python -c`
to change something first (e.g. hide the etcd binary).
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import queue
import re
import signal
import socket
import subprocess
import sys
import termios
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import pytest

from conch.localetcd import free_port, port_available

HINT = re.compile(r"^conch dev: etcd (\S+) \((1 node|3 members)\) ready; data in (\S+); (.*)$")


def dev_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONCH_", "ETCDCTL_"))}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def dev_argv(nodes: int, port: int, cmd: list[str], prelude: str = "") -> list[str]:
    """`conch dev` through the CLI; with a prelude (code run first, e.g. to hide the etcd
    binary), conch.dev.main is called through `python -c`."""
    if not prelude:
        return [sys.executable, "-m", "conch", "dev", "--nodes", str(nodes), "--port", str(port),
                "--", *cmd]  # fmt: skip
    code = (
        "import json, sys\n"
        f"{prelude}\n"
        "from conch.dev import main\n"
        f"sys.exit(main({nodes}, {port}, json.loads(sys.argv[1])))\n"
    )
    return [sys.executable, "-c", code, json.dumps(cmd)]


class Lines:
    """Lines of a pipe, read by a thread, awaited with a deadline."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: list[str] = []
        self._q: queue.Queue[str | None] = queue.Queue()
        self._t = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._t.start()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self._q.put(line.rstrip("\n"))
        self._q.put(None)

    def wait_for(self, pattern: str | re.Pattern[str], timeout: float = 30.0) -> re.Match[str]:
        rx = re.compile(pattern)
        for line in self.lines:
            if m := rx.search(line):
                return m
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            assert left > 0, f"no line matching {rx.pattern!r}; got {self.lines}"
            try:
                got = self._q.get(timeout=left)
            except queue.Empty:
                continue
            assert got is not None, f"stream closed; no {rx.pattern!r} in {self.lines}"
            self.lines.append(got)
            if m := rx.search(got):
                return m

    def rest(self, timeout: float = 10.0) -> list[str]:
        """All lines once the stream is closed."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._q.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                assert time.monotonic() < deadline, "stream not closed"
                continue
            if line is None:
                return self.lines
            self.lines.append(line)


class Dev:
    def __init__(self, argv: list[str], env: dict[str, str], **popen: object) -> None:
        self.proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            **popen,  # type: ignore[call-overload]
        )
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self.out = Lines(self.proc.stdout)
        self.err = Lines(self.proc.stderr)

    def ready(self) -> tuple[list[str], Path]:
        """Endpoints from the export line, data dir from the hint line."""
        exp = self.out.wait_for(r"^export CONCH_ENDPOINTS=(\S+)$")
        hint = self.err.wait_for(HINT)
        return exp.group(1).split(","), Path(hint.group(3))

    def wait(self, timeout: float = 30.0) -> int:
        return int(self.proc.wait(timeout))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def spawn() -> Iterator[Callable[..., Dev]]:
    devs: list[Dev] = []

    def _spawn(argv: list[str], env: dict[str, str] | None = None, **popen: object) -> Dev:
        # a SIGHUP the test runner ignores (nohup, a background job) stays ignored in its
        # children, and conch dev then rightly keeps ignoring it: spawn with the default
        old = signal.signal(signal.SIGHUP, signal.SIG_DFL)
        try:
            d = Dev(argv, env or dev_env(), **popen)
        finally:
            signal.signal(signal.SIGHUP, old)
        devs.append(d)
        return d

    yield _spawn
    for d in devs:
        d.close()


def etcd_children(pid: int) -> list[int]:
    """pids of etcd processes whose parent is `pid`."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid and comm == "etcd":
            out.append(int(entry.name))
    return out


def pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def healthy(url: str) -> bool:
    with urllib.request.urlopen(url + "/health", timeout=5) as r:
        return b'"health":"true"' in r.read()


def three_free_ports() -> int:
    for _ in range(100):
        base = free_port()
        if base + 2 <= 65535 and port_available(base + 1) and port_available(base + 2):
            return base
    raise AssertionError("no 3 consecutive free ports")


def wait_until(cond: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_single_node_until_signal(spawn: Callable[..., Dev], sig: signal.Signals) -> None:
    port = free_port()
    dev = spawn(dev_argv(1, port, []))
    endpoints, data_dir = dev.ready()
    assert endpoints == [f"http://127.0.0.1:{port}"]
    hint = dev.err.wait_for(HINT)
    assert hint.group(1) == "3.5.1" and hint.group(2) == "1 node"
    assert hint.group(4) == "Ctrl-C to stop"
    assert data_dir.is_dir()
    assert healthy(endpoints[0])
    pids = etcd_children(dev.proc.pid)
    assert len(pids) == 1

    dev.proc.send_signal(sig)
    assert dev.wait() == 0
    assert not data_dir.exists()
    assert all(pid_gone(p) for p in pids)
    assert dev.out.rest() == [f"export CONCH_ENDPOINTS=http://127.0.0.1:{port}"]
    assert not any("Traceback" in line for line in dev.err.rest())


def test_three_members(spawn: Callable[..., Dev]) -> None:
    port = three_free_ports()
    dev = spawn(dev_argv(3, port, []))
    endpoints, data_dir = dev.ready()
    assert endpoints == [f"http://127.0.0.1:{port + i}" for i in range(3)]
    assert dev.err.wait_for(HINT).group(2) == "3 members"
    assert all(healthy(u) for u in endpoints)
    pids = etcd_children(dev.proc.pid)
    assert len(pids) == 3
    dev.proc.send_signal(signal.SIGINT)
    assert dev.wait() == 0
    assert not data_dir.exists()
    assert all(pid_gone(p) for p in pids)


def test_cmd_gets_endpoints_and_its_exit_code_is_returned(spawn: Callable[..., Dev]) -> None:
    port = free_port()
    cmd = ["sh", "-c", 'echo "$CONCH_ENDPOINTS"; echo "prefix=$CONCH_PREFIX"; exit 3']
    dev = spawn(dev_argv(1, port, cmd), dev_env(CONCH_PREFIX="/inherited/"))
    assert dev.wait() == 3
    # stdout is CMD's alone; the export line went to stderr with the hint
    assert dev.out.rest() == [f"http://127.0.0.1:{port}", "prefix=/inherited/"]
    err = dev.err.rest()
    assert f"conch dev: export CONCH_ENDPOINTS=http://127.0.0.1:{port}" in err
    data_dir = Path(next(m for line in err if (m := HINT.match(line))).group(3))
    assert not data_dir.exists()


def test_cmd_killed_by_signal_gives_128_plus_s(spawn: Callable[..., Dev]) -> None:
    dev = spawn(dev_argv(1, free_port(), ["sh", "-c", "kill -TERM $$"]))
    assert dev.wait() == 128 + signal.SIGTERM


def test_cmd_not_found(spawn: Callable[..., Dev]) -> None:
    dev = spawn(dev_argv(1, free_port(), ["conch-no-such-command-xyz"]))
    assert dev.wait() == 127
    assert "conch: error: conch-no-such-command-xyz: command not found" in dev.err.rest()


CATCHER = """
import signal, sys, time
n = 0
def on(sig, frame):
    global n
    n += 1
signal.signal(signal.SIGINT, on)
signal.signal(signal.SIGTERM, on)
print("started", flush=True)
while n == 0:
    signal.pause()
end = time.monotonic() + 0.5  # a duplicate delivery would land in this window
while time.monotonic() < end:
    time.sleep(0.02)
print("count", n, flush=True)
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_is_forwarded_to_cmd(spawn: Callable[..., Dev], sig: signal.Signals) -> None:
    dev = spawn(dev_argv(1, free_port(), [sys.executable, "-c", CATCHER]))
    dev.out.wait_for("^started$")
    data_dir = Path(dev.err.wait_for(HINT).group(3))
    pids = etcd_children(dev.proc.pid)
    dev.proc.send_signal(sig)
    assert dev.wait() == 128 + sig
    assert dev.out.rest()[-1] == "count 1"
    assert not data_dir.exists()
    assert all(pid_gone(p) for p in pids)


def test_terminal_ctrl_c_reaches_cmd_once(spawn: Callable[..., Dev]) -> None:
    """^C on the terminal goes to the whole foreground group (conch dev and CMD): conch dev must
    not forward it a second time."""
    master, slave = pty.openpty()
    try:

        def take_tty() -> None:  # after setsid: the pty becomes our controlling terminal
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        dev = spawn(
            dev_argv(1, free_port(), [sys.executable, "-c", CATCHER]),
            stdin=slave,
            start_new_session=True,
            preexec_fn=take_tty,
        )
        dev.out.wait_for("^started$")
        os.write(master, b"\x03")
        assert dev.wait() == 128 + signal.SIGINT
        assert dev.out.rest()[-1] == "count 1"
    finally:
        os.close(slave)
        os.close(master)


def test_port_in_use(spawn: Callable[..., Dev]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        dev = spawn(dev_argv(1, port, []))
        assert dev.wait() == 2
        assert dev.err.rest() == [f"conch: error: port {port} is in use (try --port)"]
        assert dev.out.rest() == []


def test_second_port_of_three_in_use(spawn: Callable[..., Dev]) -> None:
    port = three_free_ports()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port + 1))
        s.listen()
        dev = spawn(dev_argv(3, port, ["true"]))
        assert dev.wait() == 2
        assert dev.err.rest() == [f"conch: error: port {port + 1} is in use (try --port)"]


def test_no_etcd_binary(spawn: Callable[..., Dev]) -> None:
    prelude = (
        "import conch.localetcd as L\n"
        "_orig = L.find_binary\n"
        "L.find_binary = lambda name='etcd': _orig('etcd-no-such-binary')"
    )
    dev = spawn(dev_argv(1, free_port(), [], prelude))
    assert dev.wait() == 69
    err = dev.err.rest()
    assert len(err) == 1 and err[0].startswith("conch: error: ")
    assert "pip install 'conch[etcd]'" in err[0]


def test_bad_nodes(spawn: Callable[..., Dev]) -> None:
    dev = spawn(dev_argv(2, free_port(), []))
    assert dev.wait() == 2
    (line,) = dev.err.rest()
    assert line.startswith("conch: error: ") and "--nodes" in line
    # conch.dev.main checks it too, for callers other than the CLI
    dev = spawn(dev_argv(2, free_port(), [], prelude="pass"))
    assert dev.wait() == 2
    assert dev.err.rest() == ["conch: error: --nodes must be 1 or 3, not 2"]


def test_etcd_dying_on_its_own_ends_dev_with_69(spawn: Callable[..., Dev]) -> None:
    dev = spawn(dev_argv(1, free_port(), []))
    _, data_dir = dev.ready()
    (pid,) = etcd_children(dev.proc.pid)
    os.kill(pid, signal.SIGKILL)
    assert dev.wait() == 69
    assert "conch: error: etcd exited on its own" in dev.err.rest()
    assert not data_dir.exists()


def test_signal_during_startup_cleans_up(spawn: Callable[..., Dev]) -> None:
    dev = spawn(dev_argv(1, free_port(), []))
    wait_until(lambda: bool(etcd_children(dev.proc.pid)), 30, "etcd to be spawned")
    (pid,) = etcd_children(dev.proc.pid)
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    data_dir = Path(cmdline[cmdline.index(b"--data-dir") + 1].decode()).parent
    dev.proc.send_signal(signal.SIGTERM)
    # interrupted while starting: 128+15; if etcd was ready already: the normal stop, 0
    assert dev.wait() in (0, 128 + signal.SIGTERM)
    assert pid_gone(pid)
    assert not data_dir.exists()
    assert not any("Traceback" in line for line in dev.err.rest())
