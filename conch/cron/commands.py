"""`conch cron add | ls | run | show | logs | rm | suspend | resume` (docs/cron.md).
conch/cli.py adds the `cron` group to `conch` when it is asked for; the cron package's heavy
parts (conch.cron.store, the schedule parser, grpc) are imported by the commands themselves."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

import click

from conch.clicommon import CMD_SETTINGS, GLOBAL_PARAMS, connect, global_options, globals_from
from conch.completion import cron_jobs, cron_jobs_to_replace, time_zones
from conch.cron.model import HISTORY, MAX_HISTORY, MAX_RETRIES
from conch.errors import EXIT_NOT_ACQUIRED, EXIT_UNAVAILABLE, ConchError, UsageError
from conch.options import Globals

if TYPE_CHECKING:
    from conch.client import Client
    from conch.cron.model import Tick

T = TypeVar("T")


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


@click.group(context_settings=CMD_SETTINGS)
@global_options
def cron(**_: Any) -> None:
    """Run a command once per tick, on one of any number of conchd daemons.

    \b
    conch cron add NAME --schedule SPEC [--tz ZONE] [--timeout D] [--kill-after D]
                   [--overlap forbid|allow] [--history N] [--retries N] [--retry-delay D]
                   [--starting-deadline D] [--on-failure CMD]
                   [--on KEY=VALUE]... [--replace] -- CMD [ARG...]
    conch cron ls [--json]
    conch cron run NAME [--wait] [--timeout D] [--json]
    conch cron show NAME [--json]
    conch cron logs NAME [--tick T] [--last K] [--json]
    conch cron suspend NAME | conch cron resume NAME
    conch cron rm NAME
    """


@cron.command("add", context_settings=CMD_SETTINGS)
@click.argument("name", shell_complete=cron_jobs_to_replace)
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
    shell_complete=time_zones,
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
@click.option(
    "--history",
    type=click.IntRange(1, MAX_HISTORY),
    default=HISTORY,
    show_default=True,
    metavar="N",
    help=f"results kept (1-{MAX_HISTORY}; runs in progress too)",
)
@click.option(
    "--retries",
    type=click.IntRange(0, MAX_RETRIES),
    default=0,
    show_default=True,
    metavar="N",
    help=f"run a failed or timed-out run again, up to N more times (0-{MAX_RETRIES})",
)
@click.option(
    "--retry-delay",
    default="10s",
    show_default=True,
    metavar="D",
    help="before the first retry; doubling after each",
)
@click.option(
    "--starting-deadline",
    metavar="D",
    help="a tick not started within D of its time is recorded missed, not run [default: none]",
)
@click.option(
    "--on-failure",
    metavar="CMD",
    help="run CMD (/bin/sh -c) once per failed, timed-out or lost run (docs/cron.md)",
)
@click.option(
    "--on",
    "on",
    multiple=True,
    metavar="KEY=VALUE",
    help="only conchd daemons with this --label claim it (repeatable: all must match)",
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
    history: int,
    retries: int,
    retry_delay: str,
    starting_deadline: str | None,
    on_failure: str | None,
    on: tuple[str, ...],
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
        Schedule.parse(spec, tz, name)
    except ScheduleError as e:
        raise UsageError(str(e)) from None
    t = None if timeout is None else options.duration(timeout, "--timeout", allow_zero=False)
    k = options.duration(kill_after, "--kill-after")
    delay = options.duration(retry_delay, "--retry-delay")
    deadline = (
        None
        if starting_deadline is None
        else options.duration(starting_deadline, "--starting-deadline", allow_zero=False)
    )
    if on_failure is not None and (not on_failure.strip() or "\x00" in on_failure):
        raise UsageError("--on-failure: give a non-empty shell command")
    try:
        wanted = model.labels_of(on, "--on")
    except ValueError as e:
        raise UsageError(str(e)) from None
    prefix = options.prefix(g)
    options.client_config(g)  # every check before the first byte goes to etcd
    job = store.host_record(
        argv,
        name,
        spec,
        tz,
        timeout=t,
        kill_after=k,
        overlap=overlap,
        history=history,
        on=wanted,
        retries=retries,
        retry_delay=delay,
        starting_deadline=deadline,
        on_failure=on_failure,
    )
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
    # read a page of jobs at a time, at one revision, and print as it goes: bounded memory
    # whatever the number of jobs (an etcd error midway: exit 69, the output incomplete)
    warnings: list[str] = []
    try:
        daemons = store.live_daemons(client, prefix).values()

        def checked(docs: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
            for doc in docs:  # a job no live daemon may claim: said on stderr, at the end
                if (w := listing.unclaimable(doc, daemons)) is not None:
                    warnings.append(w)
                yield doc

        docs = checked(listing.list_doc(store.scan_jobs(client, prefix), datetime.now(UTC)))
        if as_json:
            out = sys.stdout
            out.write("[")
            for i, doc in enumerate(docs):
                out.write((", " if i else "") + json.dumps(doc))
            out.write("]\n")
            out.flush()
        else:
            for line in listing.format_table(docs):
                click.echo(line)
    except _etcd_error() as e:
        raise ConchError(f"etcd unavailable: {e}", EXIT_UNAVAILABLE) from None
    finally:
        client.close()
    for w in warnings:
        click.echo(f"conch: warning: {w}", err=True)
    return 0


@cron.command("rm", context_settings=CMD_SETTINGS)
@click.argument("name", shell_complete=cron_jobs)
@global_options
@click.pass_context
def cron_rm(ctx: click.Context, name: str, **kw: Any) -> int:
    """Remove job NAME and its history. A run in progress finishes and records its result."""
    from conch.cron import store

    if not _on_job(ctx, name, kw, lambda client, prefix, now: store.remove_job(
            client, prefix, name, now)):  # fmt: skip
        raise ConchError(f"no cron job {name!r}", 1)
    return 0


@cron.command("run", context_settings=CMD_SETTINGS)
@click.argument("name", shell_complete=cron_jobs)
@click.option("--wait", is_flag=True,
              help="wait for the result: print the output, exit with the job's code")  # fmt: skip
@click.option("--timeout", "timeout_text", default="60s", show_default=True, metavar="D",
              help="unclaimed after D, the request lapses (--wait: exit 75)")  # fmt: skip
@click.option("--json", "as_json", is_flag=True,
              help="one JSON document: the request, or the run (--wait)")  # fmt: skip
@global_options
@click.pass_context
def cron_run(
    ctx: click.Context, name: str, wait: bool, timeout_text: str, as_json: bool, **kw: Any
) -> int:
    """Run job NAME once now, on exactly one conchd daemon (a tick of its own, marked manual).
    Prints the run's tick; with --wait, its output, and exits with its exit code."""
    from conch import options
    from conch.cron import manual

    timeout = options.duration(timeout_text, "--timeout", allow_zero=False)
    got = _on_job(ctx, name, kw, lambda client, prefix, _now: _run_now(
        client, prefix, name, timeout, wait, as_json))  # fmt: skip
    if got is manual.RequestRefused.NO_JOB:
        raise ConchError(f"no cron job {name!r}", 1)
    if got is manual.RequestRefused.SUSPENDED:  # no daemon would claim it: as unclaimed
        raise ConchError(f"cron job {name!r} is suspended: no conchd daemon claims it (conch "
                         f"cron resume {name} first); nothing run", EXIT_NOT_ACQUIRED)  # fmt: skip
    return got


def _run_now(
    client: Client, prefix: str, name: str, timeout: float, wait: bool, as_json: bool
) -> Any:
    """`cron run`: the request, and with `wait` its result (an exit code) — or why not."""
    from conch.cron import manual
    from conch.cron.model import format_tick

    tick = manual.request(client, prefix, name, timeout)
    if isinstance(tick, manual.RequestRefused):
        return tick
    if not wait:
        text = format_tick(tick)
        click.echo(json.dumps({"name": name, "tick": text}) if as_json else text)
        return 0
    label = f"cron job {name!r} tick {format_tick(tick)}"

    def claimed(rec: Any) -> None:
        click.echo(f"conch: {label}: claimed by {rec.daemon} on {rec.host}", err=True)

    try:
        got = manual.wait(client, prefix, name, tick, timeout, claimed)
    except KeyboardInterrupt:
        if manual.withdraw(client, prefix, name, tick):
            click.echo(f"conch: {label}: request withdrawn", err=True)
        raise
    if as_json and got.record is not None:  # the run as `cron logs --json` gives it
        from conch.cron.listing import run_doc

        alive = got.outcome is not manual.Outcome.LOST
        click.echo(json.dumps({"name": name, **run_doc(tick, got.record, alive),
                               "output": got.output}))  # fmt: skip
    return _manual_exit(label, got, printed=as_json)


def _manual_exit(label: str, got: Any, printed: bool) -> int:
    """What `cron run --wait` prints (unless the JSON document is `printed`) and exits with,
    for what became of the run."""
    from conch.cron import manual
    from conch.cron.model import RunStatus
    from conch.errors import EXIT_LEASE_LOST

    if got.outcome is manual.Outcome.UNCLAIMED:
        raise ConchError(f"{label}: no conchd daemon claimed it in time; nothing run",
                         EXIT_NOT_ACQUIRED)  # fmt: skip
    rec = got.record
    if got.outcome is manual.Outcome.LOST:
        raise ConchError(f"{label}: lost: daemon {rec.daemon} on {rec.host} lost its lease "
                         "while the run ran (its result is unknown)", EXIT_LEASE_LOST)  # fmt: skip
    if rec.status in (RunStatus.SKIPPED, RunStatus.MISSED):
        raise ConchError(f"{label}: {rec.status}: {rec.reason}; nothing run", EXIT_NOT_ACQUIRED)
    if got.output and not printed:
        sys.stdout.write(got.output if got.output.endswith("\n") else got.output + "\n")
        sys.stdout.flush()
    code = rec.exit_code if rec.exit_code is not None else 1
    how = f"{rec.status}, exit code {code}"
    if rec.timed_out:
        how += ", timed out"
    if rec.attempt > 1:
        how += f", attempt {rec.attempt}"
    click.echo(f"conch: {label}: {how} on {rec.host} after {rec.duration or 0:.3f}s", err=True)
    return code


@cron.command("suspend", context_settings=CMD_SETTINGS)
@click.argument("name", shell_complete=cron_jobs)
@global_options
@click.pass_context
def cron_suspend(ctx: click.Context, name: str, **kw: Any) -> int:
    """Suspend job NAME: no daemon claims it until `cron resume`. A run in progress finishes."""
    return _suspend(ctx, name, True, kw)


@cron.command("resume", context_settings=CMD_SETTINGS)
@click.argument("name", shell_complete=cron_jobs)
@global_options
@click.pass_context
def cron_resume(ctx: click.Context, name: str, **kw: Any) -> int:
    """Resume job NAME: claimed again from its next tick (never a tick that passed)."""
    return _suspend(ctx, name, False, kw)


def _suspend(ctx: click.Context, name: str, suspended: bool, kw: dict[str, Any]) -> int:
    from conch.cron import store

    done = _on_job(ctx, name, kw, lambda client, prefix, now: store.set_suspended(
        client, prefix, name, suspended, now))  # fmt: skip
    if done is store.Suspension.NO_JOB:
        raise ConchError(f"no cron job {name!r}", 1)
    return 0


@cron.command("show", context_settings=CMD_SETTINGS)
@click.argument("name", shell_complete=cron_jobs)
@click.option("--json", "as_json", is_flag=True, help="one JSON document (docs/cron.md)")
@global_options
@click.pass_context
def cron_show(ctx: click.Context, name: str, as_json: bool, **kw: Any) -> int:
    """Show job NAME: its definition and every kept run."""
    from datetime import UTC, datetime

    from conch.cron import listing, store

    view = _on_job(ctx, name, kw, lambda client, prefix, _now: store.job_view(
        client, prefix, name))  # fmt: skip
    if view is None:
        raise ConchError(f"no cron job {name!r}", 1)
    doc = listing.show_doc(view, datetime.now(UTC))
    _print(doc, as_json, listing.format_show)
    return 0


@cron.command("logs", context_settings=CMD_SETTINGS)
@click.argument("name", shell_complete=cron_jobs)
@click.option("--tick", "tick_text", metavar="T", help="the run of this tick (as `ls` shows it)")
@click.option("--last", type=int, default=1, show_default=True, metavar="K",
              help="the K newest runs")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="one JSON document (docs/cron.md)")
@global_options
@click.pass_context
def cron_logs(
    ctx: click.Context, name: str, tick_text: str | None, last: int, as_json: bool, **kw: Any
) -> int:
    """Print the stored output of job NAME's runs (the newest first), a header each."""
    from conch.cron import listing, store

    if last < 1:
        raise UsageError(f"--last must be at least 1, not {last}")
    tick = None if tick_text is None else _parse_tick(tick_text)
    view = _on_job(ctx, name, kw, lambda client, prefix, _now: store.job_view(
        client, prefix, name, outputs=True))  # fmt: skip
    if view is None:
        raise ConchError(f"no cron job {name!r}", 1)
    if tick is not None:
        if tick not in view.runs:
            raise ConchError(f"no kept run of {name!r} at tick {tick_text}", 1)
        ticks = [tick]
    else:
        ticks = sorted(view.runs, reverse=True)[:last]
    doc = listing.logs_doc(view, ticks)
    _print(doc, as_json, lambda d: listing.format_logs(name, d))
    return 0


def _parse_tick(text: str) -> int:
    """A tick as `ls` prints it (RFC 3339; `Z` or an offset)."""
    from datetime import datetime

    from conch.cron import model

    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        t = None
    if t is None or t.utcoffset() is None:
        raise UsageError(f"--tick {text!r}: use a tick as `cron ls` prints it, e.g. "
                         "2026-01-02T03:04:05Z")  # fmt: skip
    return model.tick_of(t)


def _print(doc: Any, as_json: bool, text: Callable[[Any], list[str]]) -> None:
    if as_json:
        click.echo(json.dumps(doc))
    else:
        for line in text(doc):
            click.echo(line)


def _on_job(
    ctx: click.Context, name: str, kw: dict[str, Any], op: Callable[[Client, str, Tick], T]
) -> T:
    """One etcd operation on job NAME, every check made before it: op(client, prefix, the
    current tick on this host's clock). etcd unreachable: exit 69; a damaged definition: 1."""
    from datetime import UTC, datetime

    from conch import options
    from conch.cron import model

    g, _v, _quiet = _cron_globals(ctx, kw)
    _cron_name(name)
    prefix = options.prefix(g)
    options.client_config(g)
    client = connect(g)
    try:
        return op(client, prefix, model.tick_of(datetime.now(UTC)))
    except _etcd_error() as e:
        raise ConchError(f"etcd unavailable: {e}", EXIT_UNAVAILABLE) from None
    except ValueError as e:  # a damaged definition: `cron add --replace` writes a good one
        raise ConchError(str(e), 1) from None
    finally:
        client.close()


def _etcd_error() -> type[Exception]:
    from conch.client import EtcdError

    return EtcdError
