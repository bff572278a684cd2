"""The only module that talks to etcd: a thin client over etcd's native gRPC API.

INTERFACE STUB — being implemented. Everything else in conch uses only what is declared here.
grpc and the generated stubs are imported lazily (inside Client.connect), so importing this
module is cheap.

Design (docs/decisions/0001-etcd-client.md):
* one grpc channel per endpoint; calls go to the current endpoint; on UNAVAILABLE /
  DEADLINE_EXCEEDED / "no leader" the client fails over to the next endpoint and retries,
  until the call's deadline. No long quarantine: every endpoint is retried on the next round.
* every call carries metadata `hasleader: true` (require-leader), and the auth token if any.
* auth: Authenticate on connect; on "invalid auth token" re-authenticate once and retry.
* all operations conch issues are safe to retry (see the recipes), so retries are automatic.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum


class EtcdError(Exception):
    """Any etcd failure not covered below (message is safe to show: never holds a password)."""


class EtcdUnavailable(EtcdError):
    """No endpoint answered within the deadline."""


class EtcdAuthError(EtcdError):
    """Authentication refused, or permission denied."""


class WatchCompacted(EtcdError):
    """The watch's start revision was compacted: re-list, then watch again from the new revision."""

    def __init__(self, compact_revision: int) -> None:
        super().__init__(f"watch revision compacted (compact revision {compact_revision})")
        self.compact_revision = compact_revision


@dataclass(frozen=True)
class ClientConfig:
    endpoints: tuple[str, ...]  # "http://host:port" or "https://host:port"
    cacert: str | None = None
    cert: str | None = None
    key: str | None = None
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    dial_timeout: float = 5.0


@dataclass(frozen=True)
class KeyValue:
    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int


class EventType(Enum):
    PUT = 0
    DELETE = 1


@dataclass(frozen=True)
class Event:
    type: EventType
    kv: KeyValue  # for DELETE: key and mod_revision (the delete revision) are set


@dataclass(frozen=True)
class Compare:
    """One txn guard: `target(key) op value`; target in create|mod|version|value|lease,
    op in == != < >."""

    key: bytes
    target: str
    op: str
    value: int | bytes


@dataclass(frozen=True)
class Op:
    """One txn operation: kind in put|get|delete. `range_end` for get/delete over a range."""

    kind: str
    key: bytes
    value: bytes = b""
    lease: int = 0
    range_end: bytes | None = None


@dataclass(frozen=True)
class TxnResult:
    succeeded: bool
    revision: int  # header revision after the txn
    # one entry per op of the branch taken: list[KeyValue] for get, None for put/delete
    responses: list[list[KeyValue] | None]


class Watch:
    """A watch on one key or range. Events are delivered in revision order; the client resumes
    the stream after a broken connection from the last delivered revision + 1 (on any
    endpoint), so no event is lost or repeated."""

    def get(self, timeout: float | None) -> list[Event]:
        """Block until events arrive (return them) or timeout passes (return []).
        Raises WatchCompacted when the history needed is gone, EtcdError when canceled by
        the server for another reason and it cannot be re-established."""
        raise NotImplementedError

    def cancel(self) -> None:
        raise NotImplementedError


class Client:
    def __init__(self, config: ClientConfig) -> None:
        self.config = config

    # -- life cycle ---------------------------------------------------------------------
    def connect(self) -> None:
        """Reach some endpoint (and authenticate) within config.dial_timeout, or raise
        EtcdUnavailable / EtcdAuthError."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    # -- KV -----------------------------------------------------------------------------
    def get(self, key: bytes, timeout: float | None = None) -> tuple[KeyValue | None, int]:
        """(kv or None, header revision)."""
        raise NotImplementedError

    def get_range(
        self, key: bytes, range_end: bytes, timeout: float | None = None
    ) -> tuple[list[KeyValue], int]:
        """All keys in [key, range_end), sorted by key; and the header revision."""
        raise NotImplementedError

    def put(self, key: bytes, value: bytes, lease: int = 0, timeout: float | None = None) -> int:
        """Returns the header revision."""
        raise NotImplementedError

    def delete(self, key: bytes, range_end: bytes | None = None, timeout: float | None = None
               ) -> int:
        """Returns the number of keys deleted."""
        raise NotImplementedError

    def txn(
        self,
        compare: Sequence[Compare],
        success: Sequence[Op],
        failure: Sequence[Op] = (),
        timeout: float | None = None,
    ) -> TxnResult:
        raise NotImplementedError

    # -- leases -------------------------------------------------------------------------
    def lease_grant(self, ttl: int, timeout: float | None = None) -> tuple[int, int]:
        """(lease id, granted TTL seconds)."""
        raise NotImplementedError

    def lease_revoke(self, lease_id: int, timeout: float | None = None) -> None:
        """Revoke; a lease that is already gone is not an error."""
        raise NotImplementedError

    def lease_keepalive(self, lease_id: int, timeout: float) -> int:
        """Send one keepalive on the client's persistent LeaseKeepAlive stream and wait for
        its answer: returns the TTL the server granted (<= 0: the lease no longer exists).
        Raises EtcdError/EtcdUnavailable when no answer came within timeout (the stream is
        then re-opened, on the next endpoint if needed, by the next call)."""
        raise NotImplementedError

    # -- watch --------------------------------------------------------------------------
    def watch(
        self,
        key: bytes,
        range_end: bytes | None = None,
        start_revision: int = 0,
        no_put: bool = False,
        no_delete: bool = False,
    ) -> Watch:
        """Start a watch; returns once the server confirmed it was created."""
        raise NotImplementedError

    # -- maintenance ----------------------------------------------------------------------
    def status(self, timeout: float | None = None) -> dict[str, int | str]:
        """Maintenance.Status of the current endpoint: version, leader, raft_term, revision."""
        raise NotImplementedError
