"""elect: run CMD on exactly one host, the elected leader (the contention recipe with N=1).

The leader is the live candidate with the lowest create revision (the etcd concurrency
package's rule); a waiter watches only the candidate just ahead of it.
"""

from __future__ import annotations

from conch import core, keys
from conch.client import Client
from conch.contend import snapshot


def directory(prefix: str, name: str) -> bytes:
    return keys.elect_dir(prefix, name)


def spec(prefix: str, name: str, cmd: list[str], **options: object) -> core.RunSpec:
    return core.RunSpec(
        kind="elect", name=name, directory=directory(prefix, name), slots=1, cmd=cmd, **options
    )  # type: ignore[arg-type]


def who(client: Client, prefix: str, name: str) -> dict[str, object]:
    return snapshot(client, directory(prefix, name), 1, name)
