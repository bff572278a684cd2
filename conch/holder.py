"""The holder record stored as the value of a contender's key. Pure: no I/O.

    {"host": str, "pid": int, "started": "RFC 3339 UTC", "cmd": [str], "version": str}

`started` is when the record was written: at enqueue time for a waiter, and re-written at the
moment of promotion for a holder (the promotion put), so for a holder it is when it took the
slot. `pid` is conch's own pid. Any occurrence of the etcd password in `cmd` is redacted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime

REDACTED = "***"
# The command in a holder record is for people reading `--who`; a record stays small (etcd
# refuses requests over 1.5 MiB by default, and every waiter's key holds one): beyond these
# bounds the command is abbreviated.
MAX_ARG_CHARS = 1024
MAX_ARGS = 64


def rfc3339(ts: float) -> str:
    """Unix seconds -> RFC 3339 UTC with millisecond precision, e.g. 2026-11-21T23:57:49.123Z."""
    dt = datetime.fromtimestamp(ts, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def redact(cmd: list[str], secret: str | None) -> list[str]:
    """The command as a holder record shows it: the password replaced, and abbreviated to
    MAX_ARGS arguments of MAX_ARG_CHARS characters ("..." marks a cut)."""
    shown = [arg.replace(secret, REDACTED) for arg in cmd] if secret else list(cmd)
    shown = [a if len(a) <= MAX_ARG_CHARS else a[:MAX_ARG_CHARS] + "..." for a in shown]
    if len(shown) > MAX_ARGS:
        shown = [*shown[:MAX_ARGS], f"... ({len(shown) - MAX_ARGS} more)"]
    return shown


@dataclass(frozen=True)
class HolderRecord:
    host: str
    pid: int
    started: str
    cmd: list[str]
    version: str

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "host": self.host,
                "pid": self.pid,
                "started": self.started,
                "cmd": self.cmd,
                "version": self.version,
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> HolderRecord:
        """Tolerant: a foreign or damaged value gives a record with empty fields, never raises."""
        try:
            d = json.loads(raw.decode("utf-8"))
            if not isinstance(d, dict):
                raise ValueError
        except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: "[[[[..."
            d = {}
        cmd = d.get("cmd")
        pid = d.get("pid")
        return cls(
            host=str(d.get("host", "")),
            pid=pid if isinstance(pid, int) and not isinstance(pid, bool) else 0,
            started=str(d.get("started", "")),
            cmd=[str(a) for a in cmd] if isinstance(cmd, list) else [],
            version=str(d.get("version", "")),
        )

    def restamped(self, ts: float) -> HolderRecord:
        return HolderRecord(self.host, self.pid, rfc3339(ts), self.cmd, self.version)
