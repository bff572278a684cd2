"""Global options → a validated client configuration. Pure apart from checking that files exist.

Every check here runs before conch talks to etcd, so bad input never writes anything.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import urlsplit

from conch.client import ClientConfig
from conch.durations import format_duration, parse_duration
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


# The longest duration a flag accepts (a year): nothing longer is meaningful for a lease, a
# timeout or a dial timeout, and far beyond it deadlines overflow (gRPC's, thread waits').
MAX_FLAG_SECONDS = 365 * 86400.0


def duration(text: str, flag: str, *, minimum: float = 0.0, allow_zero: bool = True) -> float:
    """A flag's duration in seconds, in [minimum, MAX_FLAG_SECONDS]; UsageError otherwise."""
    try:
        value = parse_duration(text)
    except ValueError as e:
        raise UsageError(f"{flag}: {e}") from None
    if value > MAX_FLAG_SECONDS:
        raise UsageError(
            f"{flag}: {text!r} is too long (at most {format_duration(MAX_FLAG_SECONDS)})"
        )
    if value < minimum or (not allow_zero and value == 0):
        raise UsageError(
            f"{flag}: must be {'more than' if not allow_zero else 'at least'} "
            f"{minimum:g}s, got {text!r}"
        )
    return value


def parse_endpoints(text: str, tls: bool) -> tuple[str, ...]:
    """`URL[,URL...]` -> normalised `scheme://host:port` endpoints. UsageError for anything
    else; an endpoint with credentials (`http://user:pw@host`) is refused without echoing it:
    a password there would show in process lists, logs and error messages."""
    out: list[str] = []
    for raw in text.split(","):
        ep = raw.strip()
        if not ep:
            continue
        if "@" in ep.split("://", 1)[-1].split("/", 1)[0]:
            raise UsageError(
                "--endpoints: credentials in an endpoint URL are not accepted (they would "
                "show in process lists and logs); use --user NAME with CONCH_PASSWORD"
            )
        if "://" not in ep:
            ep = ("https://" if tls else "http://") + ep
        shown = ep if len(ep) <= 80 else ep[:77] + "..."
        try:
            u = urlsplit(ep)
            host, port = u.hostname, u.port
        except ValueError:
            raise UsageError(f"--endpoints: invalid endpoint {shown!r}") from None
        if u.scheme not in ("http", "https") or not host or u.path not in ("", "/"):
            raise UsageError(f"--endpoints: invalid endpoint {shown!r} (use http://HOST:PORT)")
        if u.query or u.fragment or port == 0:
            raise UsageError(f"--endpoints: invalid endpoint {shown!r} (use http://HOST:PORT)")
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


def _pem_kinds(path: str, flag: str) -> set[str]:
    """The kinds of PEM blocks in a file: {"CERTIFICATE", "PRIVATE KEY", ...}."""
    try:
        with open(path, "rb") as f:
            data = f.read(1 << 20)
    except OSError as e:
        raise UsageError(f"{flag}: cannot read file {path!r}: {e.strerror}") from None
    kinds = set()
    for line in data.splitlines():
        line = line.strip()
        if line.startswith(b"-----BEGIN ") and line.endswith(b"-----"):
            kind = line[11:-5].decode("ascii", "replace")
            kinds.add("PRIVATE KEY" if kind.endswith("PRIVATE KEY") else kind)
    return kinds


def _no_password() -> str:
    raise UsageError("--key: the private key is encrypted; conch needs an unencrypted key file")


def check_tls_files(cacert: str | None, cert: str | None, key: str | None) -> None:
    """Local checks of the TLS files, so that a wrong file is a usage error (exit 2) and not,
    after the whole dial timeout, an "unreachable" etcd: each parses as PEM of the right kind,
    and the key belongs to the certificate. (ssl is imported only when TLS files are given.)"""
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if cacert is not None:
        if "CERTIFICATE" not in _pem_kinds(cacert, "--cacert"):
            raise UsageError(f"--cacert: {cacert!r} holds no PEM certificate")
        try:
            ctx.load_verify_locations(cafile=cacert)
        except (ssl.SSLError, ValueError) as e:
            raise UsageError(f"--cacert: {cacert!r} is not a valid PEM CA bundle ({e})") from None
    if cert is None or key is None:
        return
    cert_kinds, key_kinds = _pem_kinds(cert, "--cert"), _pem_kinds(key, "--key")
    if "CERTIFICATE" not in cert_kinds:
        swapped = " (--cert and --key swapped?)" if "PRIVATE KEY" in cert_kinds else ""
        raise UsageError(f"--cert: {cert!r} holds no PEM certificate{swapped}")
    if "PRIVATE KEY" not in key_kinds:
        swapped = " (--cert and --key swapped?)" if "CERTIFICATE" in key_kinds else ""
        raise UsageError(f"--key: {key!r} holds no PEM private key{swapped}")
    try:
        ctx.load_cert_chain(cert, key, password=_no_password)
    except ssl.SSLError as e:
        if "KEY_VALUES_MISMATCH" in str(e) or "key values mismatch" in str(e):
            raise UsageError(
                f"--key: {key!r} is not the private key of the certificate in {cert!r}"
            ) from None
        raise UsageError(f"--cert/--key: cannot load {cert!r} with {key!r}: {e}") from None


def client_config(g: Globals) -> ClientConfig:
    cacert = _readable(g.cacert, "--cacert")
    cert = _readable(g.cert, "--cert")
    key = _readable(g.key, "--key")
    if (cert is None) != (key is None):
        raise UsageError("--cert and --key go together")
    if cacert or cert:
        check_tls_files(cacert, cert, key)
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


def metrics_addr(text: str) -> tuple[str, int]:
    """--metrics-addr of conchd and of conch elect|sema: `HOST:PORT`, `[V6]:PORT` or `:PORT`
    (every interface) -> (host, port). UsageError."""
    t = text.strip()
    if t.startswith("["):
        host, sep, rest = t[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
        ok = bool(sep and host and port)
    else:
        host, sep, port = t.rpartition(":")
        ok = bool(sep) and ":" not in host
    if not ok or not port.isascii() or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise UsageError(f"--metrics-addr: expected HOST:PORT (port 1-65535), got {text!r}")
    return host or "0.0.0.0", int(port)
