"""The `conch` command line. Parsing and output only: the work is in the primitive modules.
`conch cron` is conch/cron/commands.py (added here lazily), the shared helpers conch/clicommon.py.

Heavy modules (grpc, the generated stubs) are imported only by commands that talk to etcd.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from typing import Any, NoReturn

import click

from conch.clicommon import CMD_SETTINGS, command_globals, connect, global_options, run_command
from conch.completion import elect_names, sema_names
from conch.errors import EXIT_NO_HOLDER, EXIT_UNAVAILABLE, ConchError, UsageError
from conch.options import Globals

# groups of commands that live in their own package, imported only when used (or listed by
# --help): `conch elect` does not load the cron commands
LAZY_GROUPS = {"cron": "conch.cron.commands"}


class _Conch(click.Group):
    """The `conch` group: its own commands, and LAZY_GROUPS."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *LAZY_GROUPS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in LAZY_GROUPS:
            module = importlib.import_module(LAZY_GROUPS[cmd_name])
            return getattr(module, cmd_name)  # a click.Command of the same name
        return super().get_command(ctx, cmd_name)


@click.group(cls=_Conch, context_settings=CMD_SETTINGS)
@global_options
def cli(**_: Any) -> None:
    """Coordination primitives for shell users over etcd: elect, sema, cron, dev.

    conchd, a separate command, is the cron daemon: it runs the `conch cron` jobs.

    Global options may come before or after the command name; each also from an
    environment variable (CONCH_ENDPOINTS, else ETCDCTL_ENDPOINTS; CONCH_PREFIX; ...).
    """


def _print_who(doc: dict[str, Any], as_json: bool, quiet: bool, what: str) -> int:
    holders = doc["holders"]
    if as_json:
        click.echo(json.dumps(doc))
    else:
        for h in holders:
            cmd = " ".join(h["cmd"])
            click.echo(
                f"rev={h['rev']} lease={h['lease']} host={h['host']} pid={h['pid']} "
                f"started={h['started']} cmd={cmd}"
            )
        if doc["max"] > 1 or doc["waiting"]:
            click.echo(f"holders={len(holders)}/{doc['max']} waiting={doc['waiting']}")
        if not holders and not quiet:
            click.echo(f"conch: {what} has no holder", err=True)
    return 0 if holders else EXIT_NO_HOLDER


def _watch_who(
    client: Any, directory: bytes, slots: int, name: str, as_json: bool, patience: float
) -> int:
    """`--who --watch`: one line (or JSON document) now and per change, until a signal (130 on
    SIGINT: click's Abort; SIGTERM ends the process: 143); EtcdError (69) when etcd stops
    answering for longer than --dial-timeout."""
    from conch import contend

    def emit(doc: dict[str, Any]) -> None:
        click.echo(json.dumps(doc) if as_json else _who_line(doc))

    contend.follow(client, directory, slots, name, emit, patience)
    return 0  # not reached: follow() returns only by an exception


def _who_line(doc: dict[str, Any]) -> str:
    """A `--who` document as one line: `holders=H/MAX waiting=W: rev=R host=H pid=P cmd=...;
    ...`."""
    holders = "; ".join(
        f"rev={h['rev']} lease={h['lease']} host={h['host']} pid={h['pid']} "
        f"started={h['started']} cmd={' '.join(h['cmd'])}"
        for h in doc["holders"]
    )
    return (f"holders={len(doc['holders'])}/{doc['max']} waiting={doc['waiting']}"
            + (f": {holders}" if holders else ""))  # fmt: skip


RUN_KW = ("ttl", "kill_after", "nonblock", "timeout", "who", "watch", "as_json", "metrics_addr")


def _run_options(f: Callable[..., Any]) -> Callable[..., Any]:
    opts = [
        click.option("--ttl", default="10s", show_default=True, metavar="D",
                     help="lease TTL"),
        click.option("--kill-after", default="10s", show_default=True, metavar="D",
                     help="SIGKILL the child group this long after SIGTERM"),
        click.option("--nonblock", is_flag=True, help="exit 75 unless acquired at once"),
        click.option("--timeout", metavar="D", help="exit 75 if not acquired within D"),
        click.option("--who", is_flag=True, help="print the holders; exit 1 if none"),
        click.option("--watch", is_flag=True,
                     help="with --who: and again on every change, until interrupted"),
        click.option("--json", "as_json", is_flag=True, help="with --who: one JSON document"),
        click.option("--metrics-addr", metavar="HOST:PORT",
                     help="serve Prometheus metrics (/metrics) and /healthz while conch runs"),
    ]  # fmt: skip
    for o in reversed(opts):
        f = o(f)
    return f


def _common_run(
    kind: str,
    name: str,
    cmd: tuple[str, ...],
    g: Globals,
    quiet: bool,
    *,
    ttl: str,
    kill_after: str,
    nonblock: bool,
    timeout: str | None,
    who: bool,
    watch: bool,
    as_json: bool,
    metrics_addr: str | None,
    restart: bool = False,
    slots: int = 1,
) -> int:
    from conch import keys, options

    try:
        keys.validate_name(name)
    except ValueError as e:
        raise UsageError(f"invalid NAME {name!r}: {e}") from None
    prefix = options.prefix(g)
    argv = list(cmd)
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if watch and not who:
        raise UsageError("--watch goes with --who")
    if metrics_addr is not None and who:
        raise UsageError("--metrics-addr goes with a command, not --who")
    if who:
        if argv:
            raise UsageError("--who takes no command")
        cfg = options.client_config(g)  # validate before connecting
        client = connect(g)
        what = f"elect {name!r}" if kind == "elect" else f"sema {name!r} --max {slots}"
        from conch.client import EtcdError

        try:
            if kind == "elect":
                from conch import elect

                if watch:
                    directory = elect.directory(prefix, name)
                    return _watch_who(client, directory, 1, name, as_json, cfg.dial_timeout)
                doc = elect.who(client, prefix, name)
            else:
                from conch import sema

                if watch:
                    directory = sema.directory(prefix, name, slots)
                    return _watch_who(client, directory, slots, name, as_json, cfg.dial_timeout)
                doc = sema.who(client, prefix, name, slots)
        except EtcdError as e:  # refused (no read access to the prefix) or unreachable: 69,
            # never 1, which would say "nobody holds it"
            raise ConchError(f"etcd unavailable: {e}", EXIT_UNAVAILABLE) from None
        finally:
            client.close()
        return _print_who(doc, as_json, quiet, what)
    if as_json:
        raise UsageError("--json goes with --who")
    if not argv:
        raise UsageError(f"missing command: conch {kind} NAME [OPTIONS] -- CMD [ARG...]")
    run_opts: dict[str, Any] = {
        "ttl": options.duration(ttl, "--ttl", minimum=1.0),
        "kill_after": options.duration(kill_after, "--kill-after"),
        "nonblock": nonblock,
        "timeout": None if timeout is None else options.duration(timeout, "--timeout"),
        "restart": restart,
    }
    cfg = options.client_config(g)  # every check before the first byte goes to etcd
    run_opts["secret"] = cfg.password
    metrics = None
    if metrics_addr is not None:  # bound before etcd is touched: a busy port writes nothing
        from conch.holdmetrics import HoldMetrics

        host, port = options.metrics_addr(metrics_addr)
        metrics = HoldMetrics(host, port, kind, name)

    from conch import core

    sig = core.Signals()
    with sig.installed():
        client = connect(g)
        try:
            if kind == "elect":
                from conch import elect

                spec = elect.spec(prefix, name, argv, **run_opts)
            else:
                from conch import sema

                spec = sema.spec(prefix, name, slots, argv, **run_opts)
            return core.run(client, spec, sig, metrics)
        finally:
            client.close()


@cli.command(context_settings=CMD_SETTINGS)
@click.argument("name", shell_complete=elect_names)
@click.argument("cmd", nargs=-1, type=click.UNPROCESSED)
@_run_options
@click.option("--restart", is_flag=True, help="keep the office; rerun the child when it exits")
@global_options
@click.pass_context
def elect(ctx: click.Context, name: str, cmd: tuple[str, ...], **kw: Any) -> int:
    """Run CMD on exactly one host: the elected leader.

    \b
    conch elect NAME [--ttl 10s] [--kill-after 10s] [--restart] [--nonblock] [--timeout D]
    -- CMD [ARG...]

    conch elect NAME --who [--watch] [--json]
    """
    g, _v, quiet = command_globals(ctx, kw)
    run_kw = {k: kw[k] for k in RUN_KW}
    return _common_run("elect", name, cmd, g, quiet, restart=kw["restart"], **run_kw)


@cli.command(context_settings=CMD_SETTINGS)
@click.argument("name", shell_complete=sema_names)
@click.argument("cmd", nargs=-1, type=click.UNPROCESSED)
@click.option("--max", "slots", type=click.IntRange(min=1), required=True, metavar="N",
              help="number of slots")  # fmt: skip
@_run_options
@global_options
@click.pass_context
def sema(ctx: click.Context, name: str, cmd: tuple[str, ...], slots: int, **kw: Any) -> int:
    """Run CMD while holding one of N slots, FIFO.

    \b
    conch sema NAME --max N [--ttl 10s] [--kill-after 10s] [--nonblock] [--timeout D]
    -- CMD [ARG...]

    conch sema NAME --max N --who [--watch] [--json]
    """
    g, _v, quiet = command_globals(ctx, kw)
    run_kw = {k: kw[k] for k in RUN_KW}
    return _common_run("sema", name, cmd, g, quiet, slots=slots, **run_kw)


@cli.command(context_settings=CMD_SETTINGS)
@click.option("--nodes", type=click.Choice(["1", "3"]), default="1", show_default=True,
              help="etcd members, on loopback")  # fmt: skip
@click.option("--port", type=click.IntRange(1, 65533), default=2379, show_default=True,
              help="client port (3 members: PORT, PORT+1, PORT+2)")  # fmt: skip
@click.argument("cmd", nargs=-1, type=click.UNPROCESSED)
@global_options
@click.pass_context
def dev(ctx: click.Context, nodes: str, port: int, cmd: tuple[str, ...], **kw: Any) -> int:
    """Start a throwaway local etcd (1 node, or 3 members on loopback).

    Prints the `export CONCH_ENDPOINTS=...` line and removes its data on exit. With
    `-- CMD`, runs CMD against it (CONCH_ENDPOINTS set), then stops and exits with CMD's code.
    """
    _g, _v, quiet = command_globals(ctx, kw)
    from conch import dev as devmod

    argv = list(cmd)
    if argv[:1] == ["--"]:
        argv = argv[1:]
    return devmod.main(int(nodes), port, argv, quiet=quiet)


def main(argv: list[str] | None = None) -> NoReturn:
    run_command(cli, argv, "conch")


if __name__ == "__main__":
    main()
