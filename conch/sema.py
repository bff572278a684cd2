"""sema: run CMD while holding one of N slots, FIFO by create revision (the contention recipe).

Keys live under a directory that includes N, so a mismatched --max never interferes.
"""

from __future__ import annotations

from conch import core, keys
from conch.client import Client
from conch.contend import snapshot


def directory(prefix: str, name: str, slots: int) -> bytes:
    return keys.sema_dir(prefix, name, slots)


def spec(prefix: str, name: str, slots: int, cmd: list[str], **options: object) -> core.RunSpec:
    return core.RunSpec(
        kind="sema",
        name=name,
        directory=directory(prefix, name, slots),
        slots=slots,
        cmd=cmd,
        extra_env={"CONCH_MAX": str(slots)},
        **options,  # type: ignore[arg-type]
    )


def who(client: Client, prefix: str, name: str, slots: int) -> dict[str, object]:
    return snapshot(client, directory(prefix, name, slots), slots, name)
