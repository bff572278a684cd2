"""conchd: the cron daemon. Any number of them serve one etcd; each tick runs on exactly one.

    conchd [GLOBAL OPTIONS] [--id ID] [--ttl 10s] [--metrics-addr HOST:PORT]

One daemon = one lease, a watch on the job definitions, a scheduler loop in the main thread,
and one thread per run (conch.cron.daemon). At each tick every daemon tries the claim
transaction (conch.cron.store.claim_many); the winner runs CMD in its own process group with
CONCH_JOB, CONCH_TICK and CONCH_REV, logs its output line by line prefixed with the job name,
and writes the result. The design and every decision are in docs/cron.md.

This module is the command line; `python -m conch.cron.command` runs it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import unicodedata
from typing import Any, NoReturn

import click

from conch.clicommon import (
    CMD_SETTINGS,
    command_globals,
    global_options,
    run_command,
    setup_logging,
)
from conch.errors import EXIT_UNAVAILABLE, ConchError, UsageError

# named: as `python -m conch.cron.command` this module is __main__, outside the "conch" logger
log = logging.getLogger("conch.cron.command")

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _validate_id(daemon_id: str) -> str:
    if not daemon_id or len(daemon_id) > 256:
        raise UsageError("--id: must be 1 to 256 characters")
    if any(unicodedata.category(ch) in ("Cc", "Cs") for ch in daemon_id):
        raise UsageError("--id: contains a control character")
    return daemon_id


@click.command(context_settings=CMD_SETTINGS)
@click.option(
    "--id",
    "daemon_id",
    metavar="ID",
    help="this daemon's id in run records [default: HOST:PID]",
)
@click.option(
    "--ttl",
    default="10s",
    show_default=True,
    metavar="D",
    help="lease TTL: a dead daemon's runs show as lost after this",
)
@click.option(
    "--metrics-addr",
    metavar="HOST:PORT",
    help="serve Prometheus metrics on HOST:PORT (/metrics)",
)
@click.option(
    "--label",
    "label",
    multiple=True,
    metavar="KEY=VALUE",
    help="this daemon's label: jobs added with --on KEY=VALUE need it (repeatable)",
)
@global_options
@click.pass_context
def conchd(
    ctx: click.Context,
    daemon_id: str | None,
    ttl: str,
    metrics_addr: str | None,
    label: tuple[str, ...],
    **kw: Any,
) -> int:
    """The conch cron daemon: runs each tick of every `conch cron` job on exactly one of
    any number of conchd instances.

    Global options also from the environment (CONCH_ENDPOINTS, CONCH_PREFIX, ...).
    SIGTERM/SIGINT/SIGHUP: stop claiming, forward the signal to running jobs, SIGKILL
    after their --kill-after, record their results, exit 128+S.
    """
    from conch import options
    from conch.client import Client, EtcdAuthError, EtcdError
    from conch.cron.daemon import Daemon
    from conch.cron.metrics import Metrics, NoMetrics
    from conch.cron.model import labels_of

    g, verbose, quiet = command_globals(ctx, kw)
    setup_logging(verbose, quiet, prog="conchd", level=logging.INFO)
    ttl_s = options.duration(ttl, "--ttl", minimum=1.0)
    did = _validate_id(daemon_id if daemon_id is not None else
                       f"{socket.gethostname()}:{os.getpid()}")  # fmt: skip
    prefix = options.prefix(g)
    cfg = options.client_config(g)
    try:
        labels = labels_of(label, "--label")
    except ValueError as e:
        raise UsageError(str(e)) from None
    addr = options.metrics_addr(metrics_addr) if metrics_addr is not None else None
    metrics: NoMetrics = Metrics(*addr) if addr is not None else NoMetrics()
    if addr is not None:
        log.info("metrics on http://%s:%d/metrics", *addr)
    with contextlib.suppress(ValueError):  # children must be reapable (not auto-reaped)
        if signal.getsignal(signal.SIGCHLD) == signal.SIG_IGN:
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    from conch.supervisor import seal_inherited_fds

    seal_inherited_fds()  # once: no spawn lists /proc/self/fd (runs spawn many children)
    client = Client(cfg)
    daemon = Daemon(client, prefix, did, ttl_s, metrics, labels)
    old = {s: signal.signal(s, daemon.on_signal) for s in STOP_SIGNALS}
    try:
        try:
            client.connect()
        except EtcdAuthError as e:
            raise ConchError(f"etcd refused the credentials: {e}", EXIT_UNAVAILABLE) from None
        except EtcdError as e:  # a daemon waits for etcd (e.g. at boot)
            log.warning("etcd unreachable at %s: %s; retrying", ",".join(cfg.endpoints), e)
        return daemon.serve()
    finally:
        client.close()
        for s, h in old.items():
            signal.signal(s, h)


def main(argv: list[str] | None = None) -> NoReturn:
    run_command(conchd, argv, "conchd")


if __name__ == "__main__":
    main()
