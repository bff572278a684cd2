"""Names and the key layout. Pure: no I/O.

Every key conch writes lives under the user's prefix:

    {prefix}elect/{enc(NAME)}/{lease:016x}          one candidate per conch elect process
    {prefix}sema/{enc(NAME)}/{N}/{lease:016x}       one contender per conch sema process

`enc` percent-encodes every byte outside [A-Za-z0-9._~-] of the UTF-8 name, so an encoded
name never contains '/', and the range of one name (`.../{enc}/`) can never overlap the range
of another name, of another N, or of another primitive.
"""

from __future__ import annotations

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


def encode_name(name: str) -> str:
    validate_name(name)
    return quote(name, safe="", encoding="utf-8", errors="strict")


def decode_name(encoded: str) -> str:
    return unquote(encoded, encoding="utf-8", errors="strict")


def normalize_prefix(prefix: str) -> str:
    """Key namespace. A missing trailing '/' is added so that `/conch` and `/conchx` never mix."""
    if any(unicodedata.category(ch) == "Cc" for ch in prefix):
        raise ValueError("prefix contains a control character")
    if not prefix.endswith("/"):
        prefix += "/"
    return prefix


def lease_hex(lease_id: int) -> str:
    return format(lease_id, "016x")


def elect_dir(prefix: str, name: str) -> bytes:
    """The range holding every candidate of office NAME (ends with '/')."""
    return f"{normalize_prefix(prefix)}elect/{encode_name(name)}/".encode()


def sema_dir(prefix: str, name: str, slots: int) -> bytes:
    """The range holding every contender of semaphore NAME with --max N (ends with '/')."""
    if slots < 1:
        raise ValueError("--max must be at least 1")
    return f"{normalize_prefix(prefix)}sema/{encode_name(name)}/{slots}/".encode()


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
