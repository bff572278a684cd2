"""`python -m conch.revoke`: revoke one lease, with the client settings read from stdin.

The watchdog runs this once it has killed a holder's process group after its conch died
(SIGKILL, OOM): the successor then starts at once instead of after the lease's TTL. The
settings come on stdin, never in argv or the environment (they may hold the etcd password).

    stdin: {"lease": ID, "endpoints": [...], "cacert": ..., "cert": ..., "key": ...,
            "user": ..., "password": ..., "dial_timeout": SECONDS}
    exit:  0 revoked (or already gone), 1 not revoked (the lease simply expires)
"""

from __future__ import annotations

import json
import sys

from conch.client import Client, ClientConfig, EtcdError


def document(config: ClientConfig, lease_id: int) -> str:
    """The one-line JSON document this command reads (written by conch for its watchdog)."""
    return json.dumps(
        {
            "lease": lease_id,
            "endpoints": list(config.endpoints),
            "cacert": config.cacert,
            "cert": config.cert,
            "key": config.key,
            "user": config.user,
            "password": config.password,
            "dial_timeout": config.dial_timeout,
        },
        separators=(",", ":"),
    )


def main() -> int:
    try:
        doc = json.loads(sys.stdin.read())
        lease_id = int(doc.pop("lease"))
        doc["endpoints"] = tuple(doc["endpoints"])
        config = ClientConfig(**doc)
    except (ValueError, TypeError, KeyError):
        return 1
    client = Client(config)
    try:
        client.lease_revoke(lease_id, timeout=config.dial_timeout)
    except EtcdError:
        return 1
    finally:
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
