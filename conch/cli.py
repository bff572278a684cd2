"""The `conch` command line. Parsing and output only: the work is in the primitive modules.

Heavy modules (grpc, the generated stubs) are imported only by commands that talk to etcd.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn

import click

from conch import __version__
from conch.errors import EXIT_NO_HOLDER, EXIT_UNAVAILABLE, ConchError, UsageError
from conch.options import Globals

log = logging.getLogger("conch")

GLOBAL_PARAMS = ("endpoints", "prefix", "cacert", "cert", "key", "user", "dial_timeout",
                 "verbose", "quiet")  # fmt: skip


def _global_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """The global options, accepted before and after the subcommand name."""
    opts = [
        click.option("--endpoints", envvar=["CONCH_ENDPOINTS", "ETCDCTL_ENDPOINTS"],
                     metavar="URL[,URL...]",
                     help="etcd endpoints of one cluster [default: http://127.0.0.1:2379]"),
        click.option("--prefix", envvar="CONCH_PREFIX", default="/conch/", show_default=True,
                     help="key namespace"),
        click.option("--cacert", envvar="CONCH_CACERT", metavar="FILE", help="TLS CA bundle"),
        click.option("--cert", envvar="CONCH_CERT", metavar="FILE", help="TLS client cert"),
        click.option("--key", envvar="CONCH_KEY", metavar="FILE", help="TLS client key"),
        click.option("--user", envvar="CONCH_USER", metavar="NAME[:PASSWORD]",
                     help="etcd user (password also from CONCH_PASSWORD)"),
        click.option("--dial-timeout", envvar="CONCH_DIAL_TIMEOUT", default="5s",
                     show_default=True, metavar="D"),
        click.option("-v", "--verbose", is_flag=True, help="debug logging and tracebacks"),
        click.option("-q", "--quiet", is_flag=True, help="only errors on stderr"),
        click.version_option(__version__, "--version", message="%(prog)s %(version)s"),
    ]  # fmt: skip
    for o in reversed(opts):
        f = o(f)
    return f


def _globals(ctx: click.Context, params: dict[str, Any]) -> tuple[Globals, bool, bool]:
    """Merge global options: given after the subcommand > given before it > env > default."""
    merged: dict[str, Any] = {}
    parent = ctx.parent
    pparams = parent.params if parent is not None else {}
    for name in GLOBAL_PARAMS:
        src = ctx.get_parameter_source(name)
        psrc = parent.get_parameter_source(name) if parent is not None else None
        if src is click.core.ParameterSource.COMMANDLINE or psrc is None:
            merged[name] = params.get(name)
        elif psrc is click.core.ParameterSource.COMMANDLINE:
            merged[name] = pparams.get(name)
        else:
            merged[name] = params.get(name)
    verbose = bool(merged.pop("verbose"))
    quiet = bool(merged.pop("quiet"))
    _setup_logging(verbose, quiet)
    g = Globals(password=os.environ.get("CONCH_PASSWORD"), **merged)
    return g, verbose, quiet


def _setup_logging(
    verbose: bool, quiet: bool, *, prog: str = "conch", level: int = logging.WARNING
) -> None:
    """Log lines on stderr as `PROG: message`; -v: debug, -q: errors only."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{prog}: %(message)s"))
    root = logging.getLogger("conch")
    root.handlers[:] = [handler]
    root.propagate = False
    root.setLevel(logging.DEBUG if verbose else logging.ERROR if quiet else level)
    _state["verbose"] = verbose


_state: dict[str, Any] = {"verbose": False, "prog": "conch"}

CMD_SETTINGS = {"help_option_names": ["-h", "--help"]}


@click.group(context_settings=CMD_SETTINGS)
@_global_options
def cli(**_: Any) -> None:
    """Coordination primitives for shell users over etcd: elect, sema, dev.

    Global options may come before or after the command name; each also from an
    environment variable (CONCH_ENDPOINTS, else ETCDCTL_ENDPOINTS; CONCH_PREFIX; ...).
    """


def _connect(g: Globals) -> Any:
    from conch.client import Client, EtcdAuthError, EtcdError
    from conch.options import client_config

    cfg = client_config(g)
    client = Client(cfg)
    try:
        client.connect()
    except EtcdAuthError as e:
        raise ConchError(f"etcd refused the credentials: {e}", EXIT_UNAVAILABLE) from None
    except EtcdError as e:
        raise ConchError(
            f"etcd unreachable at {','.join(cfg.endpoints)}: {e}", EXIT_UNAVAILABLE
        ) from None
    return client


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
        client = _connect(g)
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
        client = _connect(g)
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
@_global_options
@click.pass_context
def elect(ctx: click.Context, name: str, cmd: tuple[str, ...], **kw: Any) -> int:
    """Run CMD on exactly one host: the elected leader.

    \b
    conch elect NAME [--ttl 10s] [--kill-after 10s] [--restart] [--nonblock] [--timeout D]
    -- CMD [ARG...]

    conch elect NAME --who [--json]
    """
    g, _v, quiet = _globals(ctx, kw)
    run_kw = {k: kw[k] for k in ("ttl", "kill_after", "nonblock", "timeout", "who", "as_json")}
    return _common_run("elect", name, cmd, g, quiet, restart=kw["restart"], **run_kw)


@cli.command(context_settings=CMD_SETTINGS)
@click.argument("name")
@click.argument("cmd", nargs=-1, type=click.UNPROCESSED)
@click.option("--max", "slots", type=click.IntRange(min=1), required=True, metavar="N",
              help="number of slots")  # fmt: skip
@_run_options
@_global_options
@click.pass_context
def sema(ctx: click.Context, name: str, cmd: tuple[str, ...], slots: int, **kw: Any) -> int:
    """Run CMD while holding one of N slots, FIFO.

    \b
    conch sema NAME --max N [--ttl 10s] [--kill-after 10s] [--nonblock] [--timeout D]
    -- CMD [ARG...]

    conch sema NAME --max N --who [--json]
    """
    g, _v, quiet = _globals(ctx, kw)
    run_kw = {k: kw[k] for k in ("ttl", "kill_after", "nonblock", "timeout", "who", "as_json")}
    return _common_run("sema", name, cmd, g, quiet, slots=slots, **run_kw)


@cli.command(context_settings=CMD_SETTINGS)
@click.option("--nodes", type=click.Choice(["1", "3"]), default="1", show_default=True)
@click.option("--port", type=click.IntRange(1, 65533), default=2379, show_default=True)
@click.argument("cmd", nargs=-1, type=click.UNPROCESSED)
@_global_options
@click.pass_context
def dev(ctx: click.Context, nodes: str, port: int, cmd: tuple[str, ...], **kw: Any) -> int:
    """Start a throwaway local etcd (1 node, or 3 members on loopback).

    Prints the `export CONCH_ENDPOINTS=...` line and removes its data on exit. With
    `-- CMD`, runs CMD against it (CONCH_ENDPOINTS set), then stops and exits with CMD's code.
    """
    _g, _v, quiet = _globals(ctx, kw)
    from conch import dev as devmod

    argv = list(cmd)
    if argv[:1] == ["--"]:
        argv = argv[1:]
    return devmod.main(int(nodes), port, argv, quiet=quiet)


# --- cron ------------------------------------------------------------------------------------
# conch cron add | ls | rm. The recipe is conch/cron/ (model, store, listing), the daemon
# conch/conchd.py; the decisions are in docs/cron.md.


def _cron_globals(ctx: click.Context, params: dict[str, Any]) -> tuple[Globals, bool, bool]:
    """_globals over the chain conch > cron > add|ls|rm: the global option given on the command
    line nearest to the subcommand wins, else the environment, else the default."""
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
    verbose = bool(merged.pop("verbose"))
    quiet = bool(merged.pop("quiet"))
    _setup_logging(verbose, quiet)
    return Globals(password=os.environ.get("CONCH_PASSWORD"), **merged), verbose, quiet


def _cron_name(name: str) -> str:
    from conch import keys

    try:
        keys.validate_name(name)
    except ValueError as e:
        raise UsageError(f"invalid NAME {name!r}: {e}") from None
    return name


@cli.group(context_settings=CMD_SETTINGS)
@_global_options
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
@_global_options
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
    client = _connect(g)
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
@_global_options
@click.pass_context
def cron_ls(ctx: click.Context, as_json: bool, **kw: Any) -> int:
    """List the jobs: schedule, zone, next tick and the last results."""
    from datetime import UTC, datetime

    from conch import options
    from conch.cron import listing, store

    g, _v, _quiet = _cron_globals(ctx, kw)
    prefix = options.prefix(g)
    options.client_config(g)
    client = _connect(g)
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
@_global_options
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
    client = _connect(g)
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


def _error(message: str, code: int) -> int:
    click.echo(f"{_state['prog']}: error: {message}", err=True)
    return code


def run_command(command: click.Command, argv: list[str] | None, prog: str) -> NoReturn:
    """Run a click command as a program: every failure is one `PROG: error: ...` line on stderr
    and its documented exit code; a traceback only with -v."""
    _state["prog"] = prog
    _exit(_run(command, argv))


def _run(command: click.Command, argv: list[str] | None) -> int:
    try:
        rv = command.main(args=argv, prog_name=_state["prog"], standalone_mode=False)
    except click.UsageError as e:
        msg = e.format_message()
        return _error(msg.splitlines()[0] if msg else "usage error", 2)
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.Abort:
        return _error("aborted", 130)
    except ConchError as e:
        if _state["verbose"]:
            log.exception("details")
        return _error(str(e), e.exit_code)
    except BrokenPipeError:
        return 1
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 0 if e.code is None else 1
    except Exception as e:
        if _state["verbose"]:
            log.exception("internal error")
        return _error(f"internal error: {e!r} (run with -v for details)", 1)
    return rv if isinstance(rv, int) else 0


def _exit(code: int) -> NoReturn:
    """End the process now with `code`, stdout and stderr flushed, skipping the interpreter's
    teardown: that would collect grpc channels, and a channel's close can wait for ever for
    calls a fault left behind (Client.close is bounded; a collected channel is not). A process
    whose outcome is decided must end; the kernel closes its connections."""
    for f in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a closed pipe: nothing more can be said
            f.flush()
    os._exit(code)


def main(argv: list[str] | None = None) -> NoReturn:
    run_command(cli, argv, "conch")


if __name__ == "__main__":
    main()
