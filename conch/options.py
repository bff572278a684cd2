"""Global options → a validated client configuration. Pure apart from checking that files exist.

Every check here runs before conch talks to etcd, so bad input never writes anything.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import urlsplit

from conch.client import ClientConfig
from conch.durations import parse_duration
from conch.errors import UsageError
from conch.keys import normalize_prefix

DEFAULT_ENDPOINT = "http://127.0.0.1:2379"


@dataclass(frozen=True)
class Globals:
    endpoints: str | None = None
    prefix: str = "/conch/"
    cacert: str | None = None
    cert: str | None = None
    key: str | None = None
    user: str | None = None
    password: str | None = None  # from CONCH_PASSWORD (or the NAME:PASSWORD form)
    dial_timeout: str = "5s"


def duration(text: str, flag: str, *, minimum: float = 0.0, allow_zero: bool = True) -> float:
    try:
        value = parse_duration(text)
    except ValueError as e:
        raise UsageError(f"{flag}: {e}") from None
    if value < minimum or (not allow_zero and value == 0):
        raise UsageError(
            f"{flag}: must be {'more than' if not allow_zero else 'at least'} "
            f"{minimum:g}s, got {text!r}"
        )
    return value


def parse_endpoints(text: str, tls: bool) -> tuple[str, ...]:
    out: list[str] = []
    for raw in text.split(","):
        ep = raw.strip()
        if not ep:
            continue
        if "://" not in ep:
            ep = ("https://" if tls else "http://") + ep
        u = urlsplit(ep)
        if u.scheme not in ("http", "https") or not u.hostname or u.path not in ("", "/"):
            raise UsageError(
                f"--endpoints: invalid endpoint {raw.strip()!r} (use http://HOST:PORT)"
            )
        try:
            port = u.port
        except ValueError:
            raise UsageError(f"--endpoints: invalid port in {raw.strip()!r}") from None
        if port is None:
            ep = f"{u.scheme}://{u.netloc}:2379"
        out.append(ep.rstrip("/"))
    if not out:
        raise UsageError("--endpoints: no endpoint given")
    return tuple(out)


def _readable(path: str | None, flag: str) -> str | None:
    if path is None:
        return None
    if not os.path.isfile(path) or not os.access(path, os.R_OK):
        raise UsageError(f"{flag}: cannot read file {path!r}")
    return path


def client_config(g: Globals) -> ClientConfig:
    cacert = _readable(g.cacert, "--cacert")
    cert = _readable(g.cert, "--cert")
    key = _readable(g.key, "--key")
    if (cert is None) != (key is None):
        raise UsageError("--cert and --key go together")
    tls = bool(cacert or cert)
    endpoints = parse_endpoints(g.endpoints or DEFAULT_ENDPOINT, tls)
    user, password = None, None
    if g.user:
        user, sep, pw = g.user.partition(":")
        if not user:
            raise UsageError("--user: empty user name")
        password = pw if sep else g.password
        if password is None:
            raise UsageError(
                f"--user {user}: no password (give NAME:PASSWORD or set CONCH_PASSWORD)"
            )
    dial = duration(g.dial_timeout, "--dial-timeout", allow_zero=False)
    return ClientConfig(
        endpoints=endpoints,
        cacert=cacert,
        cert=cert,
        key=key,
        user=user,
        password=password,
        dial_timeout=dial,
    )


def prefix(g: Globals) -> str:
    try:
        return normalize_prefix(g.prefix)
    except ValueError as e:
        raise UsageError(f"--prefix: {e}") from None
