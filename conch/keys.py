"""Names and the key layout. Pure: no I/O.

Every key conch writes lives under the user's prefix:

    {prefix}elect/{enc(NAME)}/{lease:016x}          one candidate per conch elect process
    {prefix}sema/{enc(NAME)}/{N}/{lease:016x}       one contender per conch sema process

`enc` percent-encodes every byte outside [A-Za-z0-9._~-] of the UTF-8 name, so an encoded
name never contains '/', and the range of one name (`.../{enc}/`) can never overlap the range
of another name, of another N, or of another primitive.
"""

from __future__ import annotations

import functools
import unicodedata
from urllib.parse import quote, unquote

MAX_NAME_CHARS = 128


def validate_name(name: str) -> None:
    """Raise ValueError with a user-facing message if NAME is not acceptable."""
    if not name:
        raise ValueError("name must not be empty")
    if len(name) > MAX_NAME_CHARS:
        raise ValueError(f"name is longer than {MAX_NAME_CHARS} characters")
    for ch in name:
        if unicodedata.category(ch) == "Cc":
            raise ValueError(f"name contains a control character ({ord(ch):#04x})")
        if 0xD800 <= ord(ch) <= 0xDFFF:
            raise ValueError("name is not valid UTF-8 (lone surrogate)")


@functools.lru_cache(maxsize=16384)  # conchd builds a job's keys many times a tick
def encode_name(name: str) -> str:
    validate_name(name)
    return quote(name, safe="", encoding="utf-8", errors="strict")


def decode_name(encoded: str) -> str:
    return unquote(encoded, encoding="utf-8", errors="strict")


@functools.lru_cache(maxsize=64)  # every key is built with it
def normalize_prefix(prefix: str) -> str:
    """Key namespace. A missing trailing '/' is added so that `/conch` and `/conchx` never mix."""
    if any(unicodedata.category(ch) == "Cc" for ch in prefix):
        raise ValueError("prefix contains a control character")
    if not prefix.endswith("/"):
        prefix += "/"
    return prefix


def lease_hex(lease_id: int) -> str:
    return format(lease_id, "016x")


def elect_root(prefix: str) -> bytes:
    """The range holding the candidates of every office (ends with '/')."""
    return f"{normalize_prefix(prefix)}elect/".encode()


def sema_root(prefix: str) -> bytes:
    """The range holding the contenders of every semaphore (ends with '/')."""
    return f"{normalize_prefix(prefix)}sema/".encode()


def elect_dir(prefix: str, name: str) -> bytes:
    """The range holding every candidate of office NAME (ends with '/')."""
    return elect_root(prefix) + f"{encode_name(name)}/".encode()


def sema_dir(prefix: str, name: str, slots: int) -> bytes:
    """The range holding every contender of semaphore NAME with --max N (ends with '/')."""
    if slots < 1:
        raise ValueError("--max must be at least 1")
    return sema_root(prefix) + f"{encode_name(name)}/{slots}/".encode()


def member_key(directory: bytes, lease_id: int) -> bytes:
    """A contender's own key: the lease id in the key lets a retried acquire find its own key."""
    return directory + lease_hex(lease_id).encode()


def prefix_range_end(prefix: bytes) -> bytes:
    """etcd range_end for 'every key starting with prefix' (etcd clientv3.GetPrefixRangeEnd)."""
    end = bytearray(prefix)
    for i in range(len(end) - 1, -1, -1):
        if end[i] < 0xFF:
            end[i] += 1
            return bytes(end[: i + 1])
    return b"\x00"  # every key


# --- cron --------------------------------------------------------------------------------------
#
#     {prefix}cron/jobs/{enc(NAME)}                 job definition JSON (no lease)
#     {prefix}cron/runs/{enc(NAME)}/{tick}          one run record per claimed tick (no lease:
#                                                   a claim is permanent, a tick never reruns)
#     {prefix}cron/alive/{enc(NAME)}/{tick}         "the run is alive": on the winner's lease
#     {prefix}cron/requests/{enc(NAME)}/{tick}      a `cron run` request, on the requester's
#                                                   lease; deleted by the claim of its run
#     {prefix}cron/hooks/{enc(NAME)}/{tick}         the claim of a run's --on-failure hook
#
# {tick} is the tick's Unix time in whole seconds, zero-padded to 12 digits, followed by
# `.ffffff` (microseconds, trailing zeros removed) only when the tick is not on a whole second:
# `001700000000`, `001700000000.5`. Keys of one job sort by tick ('.' sorts before digits).

TICK_DIGITS = 12


def cron_dir(prefix: str) -> bytes:
    return f"{normalize_prefix(prefix)}cron/".encode()


def cron_jobs_dir(prefix: str) -> bytes:
    """The range holding every job definition (ends with '/')."""
    return cron_dir(prefix) + b"jobs/"


def cron_job_key(prefix: str, name: str) -> bytes:
    return cron_jobs_dir(prefix) + encode_name(name).encode()


def cron_job_name(prefix: str, key: bytes) -> str:
    """NAME from a job key (inverse of cron_job_key). Raises ValueError on a foreign key."""
    d = cron_jobs_dir(prefix)
    if not key.startswith(d) or b"/" in key[len(d) :] or len(key) == len(d):
        raise ValueError(f"not a cron job key: {key!r}")
    return decode_name(key[len(d) :].decode("ascii"))


def cron_runs_root(prefix: str) -> bytes:
    """The range holding the run records of every job (ends with '/')."""
    return cron_dir(prefix) + b"runs/"


def cron_alive_root(prefix: str) -> bytes:
    """The range holding the alive markers of every job (ends with '/')."""
    return cron_dir(prefix) + b"alive/"


def cron_runs_dir(prefix: str, name: str) -> bytes:
    """The range holding the run records of job NAME (ends with '/')."""
    return cron_runs_root(prefix) + encode_name(name).encode() + b"/"


def cron_alive_dir(prefix: str, name: str) -> bytes:
    """The range holding the alive markers of job NAME's running runs (ends with '/')."""
    return cron_alive_root(prefix) + encode_name(name).encode() + b"/"


def cron_output_dir(prefix: str, name: str) -> bytes:
    """The range holding the output tails of job NAME's runs (ends with '/'): apart from the
    run records, so that listing runs never reads outputs."""
    return cron_dir(prefix) + b"output/" + encode_name(name).encode() + b"/"


def cron_hooks_dir(prefix: str, name: str) -> bytes:
    """The range holding the claims of job NAME's --on-failure hooks, one per run (ends with
    '/'): whoever creates a run's key runs its hook."""
    return cron_dir(prefix) + b"hooks/" + encode_name(name).encode() + b"/"


def cron_hook_key(prefix: str, name: str, tick: int) -> bytes:
    return cron_hooks_dir(prefix, name) + tick_token(tick).encode()


def cron_daemons_dir(prefix: str) -> bytes:
    """The range holding the conchd heartbeats (ends with '/')."""
    return cron_dir(prefix) + b"daemons/"


def cron_daemon_key(prefix: str, daemon_id: str) -> bytes:
    """The heartbeat of conchd `daemon_id` (on its lease)."""
    return cron_daemons_dir(prefix) + encode_name(daemon_id).encode()


def cron_mark_key(prefix: str, name: str) -> bytes:
    """Job NAME's low-water mark: the tick token of the newest tick claimed (docs/cron.md)."""
    return cron_dir(prefix) + b"marks/" + encode_name(name).encode()


def cron_requests_dir(prefix: str) -> bytes:
    """The range holding every `cron run` request (ends with '/')."""
    return cron_dir(prefix) + b"requests/"


def cron_request_key(prefix: str, name: str, tick: int) -> bytes:
    """A `cron run` request of job NAME, for the manual tick `tick` (on the requester's lease:
    it expires unclaimed after `cron run --timeout`)."""
    return cron_requests_dir(prefix) + encode_name(name).encode() + b"/" + tick_token(tick).encode()


def tick_token(tick: int) -> str:
    """A tick (Unix time in microseconds, >= 0) as the last segment of a run/alive key."""
    if tick < 0:
        raise ValueError("a tick before the Unix epoch")
    seconds, micros = divmod(tick, 1_000_000)
    if seconds >= 10**TICK_DIGITS:
        raise ValueError("a tick too far in the future")
    token = f"{seconds:0{TICK_DIGITS}d}"
    if micros:
        token += "." + f"{micros:06d}".rstrip("0")
    return token


def parse_tick_token(token: str) -> int:
    """Inverse of tick_token: Unix time in microseconds. Raises ValueError on a foreign token.
    Keys and mark values are read with :func:`cron_tick`."""
    whole, dot, frac = token.partition(".")
    if (
        len(whole) != TICK_DIGITS
        or not whole.isascii()
        or not whole.isdigit()
        or (dot and (not frac or len(frac) > 6 or not frac.isdigit() or frac.endswith("0")))
        or not frac.isascii()
    ):
        raise ValueError(f"not a tick token: {token!r}")
    return int(whole) * 1_000_000 + (int(frac.ljust(6, "0")) if frac else 0)


def cron_run_key(prefix: str, name: str, tick: int) -> bytes:
    return cron_runs_dir(prefix, name) + tick_token(tick).encode()


def cron_alive_key(prefix: str, name: str, tick: int) -> bytes:
    return cron_alive_dir(prefix, name) + tick_token(tick).encode()


def cron_output_key(prefix: str, name: str, tick: int) -> bytes:
    return cron_output_dir(prefix, name) + tick_token(tick).encode()


def cron_tick(data: bytes, directory: bytes = b"") -> int:
    """The tick (µs) of a run or alive key in `directory` (one job's cron_runs_dir or
    cron_alive_dir), or — `directory` empty — of a bare tick token (a mark's value, a key's
    last segment). Raises ValueError on anything else. Every reader of a tick key uses this."""
    if not data.startswith(directory):
        raise ValueError(f"not under {directory!r}: {data!r}")
    return parse_tick_token(data[len(directory) :].decode("ascii"))


def cron_split_tick_key(root: bytes, key: bytes) -> tuple[str, int]:
    """(NAME, tick in µs) from a run or alive key under `root` (cron_runs_root/alive_root).
    Raises ValueError on a key that is not laid out that way."""
    if not key.startswith(root):
        raise ValueError(f"not under {root!r}: {key!r}")
    enc, sep, token = key[len(root) :].partition(b"/")
    if not sep or not enc or b"/" in token:
        raise ValueError(f"not a cron run key: {key!r}")
    return decode_name(enc.decode("ascii")), cron_tick(token)
