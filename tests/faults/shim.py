"""Build and drive faultshim.c, the LD_PRELOAD shim: a skewed wall clock, a simulated host
suspend (CLOCK_BOOTTIME jumps, CLOCK_MONOTONIC does not) and failing execs, for processes
under test (conch, conchd and, through the inherited environment, their children).

    lib = build()                                      # compiled once, cached by source hash
    clock = ClockControl(tmp_path / "clock")           # before the process starts
    env = {**conch_env, **shim_env(lib, clock, fail_exec="never-runs")}
    p = subprocess.Popen([...], env=env)
    clock.set_realtime_offset(3600)                    # takes effect at once in p
    clock.set_boottime_offset(30)                      # "the host slept 30 s"

What the process sees: CLOCK_REALTIME (so time.time(), datetime.now(), gettimeofday, time,
`date`) + the realtime offset; CLOCK_BOOTTIME + the boottime offset; CLOCK_MONOTONIC
untouched. With `fail_exec=S`, every exec or posix_spawn whose argv has an element containing
S fails with EAGAIN (or `fail_errno`) without running anything: subprocess.Popen raises
OSError(EAGAIN) in the parent, a shell reports the failure of that command. With
`stop_after_spawn=S`, a posix_spawn that started a child whose argv has S stops the caller
(SIGSTOP to itself) at once: frozen in the instant after the spawn.

Limits (details in faultshim.c): dynamically linked programs only (not Go binaries such as
etcd and etcdctl, not raw syscalls); the offsets are the same for every process sharing a
control file; waits on absolute CLOCK_REALTIME deadlines in C code are not translated; a
control file is bound to a process when it starts (ClockControl() replaces, never truncates,
an existing file, so a running process keeps the old one).
"""

from __future__ import annotations

import contextlib
import hashlib
import mmap
import os
import shlex
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType

SOURCE = Path(__file__).with_name("faultshim.c")
CONTROL_ENV = "CONCH_FAULTSHIM_CONTROL"
FAIL_EXEC_ENV = "CONCH_FAULTSHIM_FAIL_EXEC"
FAIL_ERRNO_ENV = "CONCH_FAULTSHIM_FAIL_EXEC_ERRNO"
STOP_AFTER_SPAWN_ENV = "CONCH_FAULTSHIM_STOP_AFTER_SPAWN"

# struct faultshim_control in faultshim.c: magic, seq (seqlock), realtime_ns, boottime_ns
_MAGIC = b"CONCHFS1"
_LAYOUT = struct.Struct("=8sQqq")
_SEQ_AT, _REALTIME_AT, _BOOTTIME_AT = 8, 16, 24
_FLAGS = ["-shared", "-fPIC", "-O2"]
_LIBS = ["-ldl"]


class CompilerNotFound(RuntimeError):
    """No C compiler to build the shim with."""


def _compiler() -> list[str]:
    cc = os.environ.get("CC")
    if cc:
        return shlex.split(cc)
    for name in ("cc", "gcc", "clang"):
        path = shutil.which(name)
        if path:
            return [path]
    raise CompilerNotFound(
        "the fault shim needs a C compiler: none of cc, gcc, clang is on PATH and CC is unset "
        "(install gcc, e.g. `apt-get install gcc`, or set CC)"
    )


def _cache_dir() -> Path:
    d = Path(tempfile.gettempdir()) / f"conch-faultshim-{os.getuid()}"
    d.mkdir(mode=0o700, exist_ok=True)
    if d.stat().st_uid != os.getuid():
        raise RuntimeError(f"{d} belongs to another user; set dest_dir")
    return d


def build(dest_dir: Path | None = None) -> Path:
    """Compile faultshim.c into a shared library and return its path.

    Cached by a hash of the source and the compiler command (under
    $TMPDIR/conch-faultshim-<uid>/ unless `dest_dir`), so it compiles once per change. Safe
    when several processes build at once: each compiles to its own temporary name and
    os.replace()s it into place. Raises CompilerNotFound without a compiler, RuntimeError
    with the compiler's output when compilation fails.
    """
    cc = _compiler()
    source = SOURCE.read_bytes()
    key = hashlib.sha256(source + "\0".join(cc + _FLAGS + _LIBS).encode()).hexdigest()[:16]
    dest = Path(dest_dir) if dest_dir is not None else _cache_dir()
    lib = dest / f"faultshim-{key}.so"
    if lib.exists():
        return lib
    dest.mkdir(parents=True, exist_ok=True)
    if any(c in str(lib) for c in " :"):
        raise RuntimeError(f"LD_PRELOAD cannot name {lib} (a space or colon in the path)")
    fd, tmp = tempfile.mkstemp(prefix=f".{lib.name}.", suffix=".tmp", dir=dest)
    os.close(fd)
    try:
        try:
            r = subprocess.run(
                [*cc, *_FLAGS, "-o", tmp, str(SOURCE), *_LIBS],
                capture_output=True,
                text=True,
                timeout=120,
            )
        except FileNotFoundError as e:
            raise CompilerNotFound(f"the C compiler {shlex.join(cc)} does not exist: {e}") from e
        if r.returncode != 0:
            raise RuntimeError(f"compiling {SOURCE} failed ({shlex.join(cc)}):\n{r.stderr}")
        os.chmod(tmp, 0o755)
        os.replace(tmp, lib)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return lib


class ClockControl:
    """Owns a shim control file: the clock offsets of every process started with it.

    Create it before starting the processes (they map the file when they start); change the
    offsets at any time, they apply at once. One writer per file (this object).
    """

    def __init__(self, path: Path) -> None:
        """Create `path` with zero offsets (replacing any file there: never truncated in place,
        which would crash a process that still maps it)."""
        self.path = Path(path)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(_LAYOUT.pack(_MAGIC, 0, 0, 0))
        os.replace(tmp, self.path)
        with open(self.path, "r+b") as f:
            self._map: mmap.mmap | None = mmap.mmap(f.fileno(), _LAYOUT.size)
        self._realtime_ns = 0
        self._boottime_ns = 0

    @property
    def realtime_offset(self) -> float:
        """Seconds added to the wall clock."""
        return self._realtime_ns / 1e9

    @property
    def boottime_offset(self) -> float:
        """Seconds added to CLOCK_BOOTTIME."""
        return self._boottime_ns / 1e9

    def set_realtime_offset(self, seconds: float) -> None:
        """Skew the wall clock (CLOCK_REALTIME and friends) by `seconds` (may be negative)."""
        self._realtime_ns = round(seconds * 1e9)
        self._publish()

    def set_boottime_offset(self, seconds: float) -> None:
        """Add `seconds` to CLOCK_BOOTTIME: a host suspend of that length, as seen after the
        resume (BOOTTIME counts the suspend, MONOTONIC does not). Should only grow, as on a
        real host."""
        self._boottime_ns = round(seconds * 1e9)
        self._publish()

    def _publish(self) -> None:
        m = self._map
        if m is None:
            raise ValueError("ClockControl is closed")
        (seq,) = struct.unpack_from("=Q", m, _SEQ_AT)
        seq |= 1  # odd: readers retry until the update is complete
        struct.pack_into("=Q", m, _SEQ_AT, seq)
        struct.pack_into("=qq", m, _REALTIME_AT, self._realtime_ns, self._boottime_ns)
        struct.pack_into("=Q", m, _SEQ_AT, seq + 1)

    def close(self) -> None:
        """Unmap the file (the processes keep their offsets; the file stays)."""
        if self._map is not None:
            self._map.close()
            self._map = None

    def __enter__(self) -> ClockControl:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"<ClockControl {self.path} realtime{self.realtime_offset:+}s "
            f"boottime{self.boottime_offset:+}s>"
        )


def shim_env(
    lib: Path,
    control: ClockControl | None = None,
    fail_exec: str | None = None,
    fail_errno: int | None = None,
    base: dict[str, str] | None = None,
    stop_after_spawn: str | None = None,
) -> dict[str, str]:
    """Environment additions that load the shim into a process (and its children).

    LD_PRELOAD is `lib` appended to the LD_PRELOAD of `base` (default: os.environ). Merge the
    result over the process's environment: `env={**conch_env, **shim_env(lib, clock)}`.
    `fail_exec`: a non-empty substring; execs whose argv contains it fail with `fail_errno`
    (default EAGAIN). `stop_after_spawn`: a non-empty substring; a posix_spawn that started
    a child whose argv contains it then stops the caller (SIGSTOP to itself).
    """
    base = dict(os.environ) if base is None else base
    preload = [p for p in base.get("LD_PRELOAD", "").replace(":", " ").split() if p]
    env = {"LD_PRELOAD": " ".join([*(p for p in preload if p != str(lib)), str(lib)])}
    if control is not None:
        env[CONTROL_ENV] = str(control.path)
    if fail_exec is not None:
        if not fail_exec:
            raise ValueError("fail_exec must be a non-empty substring")
        env[FAIL_EXEC_ENV] = fail_exec
    if fail_errno is not None:
        env[FAIL_ERRNO_ENV] = str(int(fail_errno))
    if stop_after_spawn is not None:
        if not stop_after_spawn:
            raise ValueError("stop_after_spawn must be a non-empty substring")
        env[STOP_AFTER_SPAWN_ENV] = stop_after_spawn
    return env
