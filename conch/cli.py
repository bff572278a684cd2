"""The `conch` command line. Parsing and output only: the work is in the primitive modules.

Heavy modules (grpc, the generated stubs) are imported only by commands that talk to etcd.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, NoReturn

import click

from conch.clicommon import (
    CMD_SETTINGS,
    GLOBAL_PARAMS,
    command_globals,
    connect,
    global_options,
    globals_from,
    run_command,
)
from conch.errors import EXIT_NO_HOLDER, EXIT_UNAVAILABLE, ConchError, UsageError
from conch.options import Globals


@click.group(context_settings=CMD_SETTINGS)
@global_options
def cli(**_: Any) -> None:
    """Coordination primitives for shell users over etcd: elect, sema, dev.

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


def _run_options(f: Callable[..., Any]) -> Callable[..., Any]:
    opts = [
        click.option("--ttl", default="10s", show_default=True, metavar="D",
                     help="lease TTL"),
        click.option("--kill-after", default="10s", show_default=True, metavar="D",
                     help="SIGKILL the child group this long after SIGTERM"),
        click.option("--nonblock", is_flag=True, help="exit 75 unless acquired at once"),
        click.option("--timeout", metavar="D", help="exit 75 if not acquired within D"),
        click.option("--who", is_flag=True, help="print the holders; exit 1 if none"),
        click.option("--json", "as_json", is_flag=True, help="with --who: one JSON document"),
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
    as_json: bool,
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
    if who:
        if argv:
            raise UsageError("--who takes no command")
        options.client_config(g)  # validate before connecting
        client = connect(g)
        try:
            if kind == "elect":
                from conch import elect

                doc = elect.who(client, prefix, name)
            else:
                from conch import sema

                doc = sema.who(client, prefix, name, slots)
        finally:
            client.close()
        what = f"elect {name!r}" if kind == "elect" else f"sema {name!r} --max {slots}"
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
            return core.run(client, spec, sig)
        finally:
            client.close()


@cli.command(context_settings=CMD_SETTINGS)
@click.argument("name")
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

    conch elect NAME --who [--json]
    """
    g, _v, quiet = command_globals(ctx, kw)
    run_kw = {k: kw[k] for k in ("ttl", "kill_after", "nonblock", "timeout", "who", "as_json")}
    return _common_run("elect", name, cmd, g, quiet, restart=kw["restart"], **run_kw)


@cli.command(context_settings=CMD_SETTINGS)
@click.argument("name")
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

    conch sema NAME --max N --who [--json]
    """
    g, _v, quiet = command_globals(ctx, kw)
    run_kw = {k: kw[k] for k in ("ttl", "kill_after", "nonblock", "timeout", "who", "as_json")}
    return _common_run("sema", name, cmd, g, quiet, slots=slots, **run_kw)


@cli.command(context_settings=CMD_SETTINGS)
@click.option("--nodes", type=click.Choice(["1", "3"]), default="1", show_default=True)
@click.option("--port", type=click.IntRange(1, 65533), default=2379, show_default=True)
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


# --- cron ------------------------------------------------------------------------------------
# conch cron add | ls | rm. The recipe is conch/cron/ (model, store, listing), the daemon
# conch/cron/daemon.py; the decisions are in docs/cron.md.


def _cron_globals(ctx: click.Context, params: dict[str, Any]) -> tuple[Globals, bool, bool]:
    """command_globals over the chain conch > cron > add|ls|rm: the global option given on the
    command line nearest to the subcommand wins, else the environment, else the default."""
    merged: dict[str, Any] = {}
    for name in GLOBAL_PARAMS:
        value = params.get(name)
        c: click.Context | None = ctx
        while c is not None:
            if c.get_parameter_source(name) is click.core.ParameterSource.COMMANDLINE:
                value = c.params.get(name)
                break
            c = c.parent
        merged[name] = value
    return globals_from(merged)


def _cron_name(name: str) -> str:
    from conch import keys

    try:
        keys.validate_name(name)
    except ValueError as e:
        raise UsageError(f"invalid NAME {name!r}: {e}") from None
    return name


@cli.group(context_settings=CMD_SETTINGS)
@global_options
def cron(**_: Any) -> None:
    """Run a command once per tick, on one of any number of conchd daemons.

    \b
    conch cron add NAME --schedule SPEC [--tz ZONE] [--timeout D] [--kill-after D]
                   [--overlap forbid|allow] [--replace] -- CMD [ARG...]
    conch cron ls [--json]
    conch cron rm NAME
    """


@cron.command("add", context_settings=CMD_SETTINGS)
@click.argument("name")
@click.argument("cmd", nargs=-1, type=click.UNPROCESSED)
@click.option(
    "--schedule",
    "spec",
    required=True,
    metavar="SPEC",
    help="cron expression, @daily etc., or @every D",
)
@click.option(
    "--tz",
    default="UTC",
    show_default=True,
    metavar="ZONE",
    help="IANA time zone the cron expression is read in",
)
@click.option("--timeout", metavar="D", help="SIGTERM the run after D [default: no limit]")
@click.option(
    "--kill-after",
    default="10s",
    show_default=True,
    metavar="D",
    help="SIGKILL this long after SIGTERM",
)
@click.option(
    "--overlap",
    type=click.Choice(["forbid", "allow"]),
    default="forbid",
    show_default=True,
    help="forbid: skip a tick while the last run runs",
)
@click.option("--replace", is_flag=True, help="replace the job if NAME exists")
@global_options
@click.pass_context
def cron_add(
    ctx: click.Context,
    name: str,
    cmd: tuple[str, ...],
    spec: str,
    tz: str,
    timeout: str | None,
    kill_after: str,
    overlap: str,
    replace: bool,
    **kw: Any,
) -> int:
    """Define (or with --replace, change) job NAME: run CMD at each tick of SPEC."""
    from datetime import UTC, datetime

    from conch import options
    from conch.cron import model, store
    from conch.schedule import Schedule, ScheduleError

    g, _v, _quiet = _cron_globals(ctx, kw)
    _cron_name(name)
    argv = list(cmd)
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        raise UsageError("missing command: conch cron add NAME --schedule SPEC -- CMD [ARG...]")
    if not argv[0]:
        raise UsageError("empty command")
    if any("\x00" in a for a in argv):
        raise UsageError("the command contains a NUL byte")
    try:
        Schedule.parse(spec, tz)
    except ScheduleError as e:
        raise UsageError(str(e)) from None
    t = None if timeout is None else options.duration(timeout, "--timeout", allow_zero=False)
    k = options.duration(kill_after, "--kill-after")
    prefix = options.prefix(g)
    options.client_config(g)  # every check before the first byte goes to etcd
    job = store.host_record(argv, name, spec, tz, timeout=t, kill_after=k, overlap=overlap)
    try:
        model.check_definition_size(job)
    except model.DefinitionTooLarge as e:
        raise UsageError(str(e)) from None
    client = connect(g)
    try:
        store.add_job(client, prefix, job, replace, model.tick_of(datetime.now(UTC)))
    except store.JobExists:
        raise ConchError(
            f"cron job {name!r} already exists (conch cron add --replace changes it)", 1
        ) from None
    except _etcd_error() as e:
        raise ConchError(f"etcd unavailable: {e}", EXIT_UNAVAILABLE) from None
    finally:
        client.close()
    return 0


@cron.command("ls", context_settings=CMD_SETTINGS)
@click.option("--json", "as_json", is_flag=True, help="one JSON document (docs/cron.md)")
@global_options
@click.pass_context
def cron_ls(ctx: click.Context, as_json: bool, **kw: Any) -> int:
    """List the jobs: schedule, zone, next tick and the last results."""
    from datetime import UTC, datetime

    from conch import options
    from conch.cron import listing, store

    g, _v, _quiet = _cron_globals(ctx, kw)
    prefix = options.prefix(g)
    options.client_config(g)
    client = connect(g)
    try:
        snap = store.snapshot(client, prefix)
    except _etcd_error() as e:
        raise ConchError(f"etcd unavailable: {e}", EXIT_UNAVAILABLE) from None
    finally:
        client.close()
    doc = listing.list_doc(snap, datetime.now(UTC))
    if as_json:
        click.echo(json.dumps(doc))
    else:
        for line in listing.format_table(doc):
            click.echo(line)
    return 0


@cron.command("rm", context_settings=CMD_SETTINGS)
@click.argument("name")
@global_options
@click.pass_context
def cron_rm(ctx: click.Context, name: str, **kw: Any) -> int:
    """Remove job NAME and its history. A run in progress finishes and records its result."""
    from datetime import UTC, datetime

    from conch import options
    from conch.cron import model, store

    g, _v, _quiet = _cron_globals(ctx, kw)
    _cron_name(name)
    prefix = options.prefix(g)
    options.client_config(g)
    client = connect(g)
    try:
        existed = store.remove_job(client, prefix, name, model.tick_of(datetime.now(UTC)))
    except _etcd_error() as e:
        raise ConchError(f"etcd unavailable: {e}", EXIT_UNAVAILABLE) from None
    finally:
        client.close()
    if not existed:
        raise ConchError(f"no cron job {name!r}", 1)
    return 0


def _etcd_error() -> type[Exception]:
    from conch.client import EtcdError

    return EtcdError


# --- end of cron -----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> NoReturn:
    run_command(cli, argv, "conch")


if __name__ == "__main__":
    main()
