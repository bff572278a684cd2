"""What every conch program's command line shares (`conch`, its `cron` commands, `conchd`): the
global options and their merging, logging, connecting, and running a click command as a
program (one `PROG: error: ...` line and the documented exit code for every failure).

Light on purpose: click and conch.options only; grpc is imported by `connect` alone.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn

import click

from conch import __version__
from conch.completion import files
from conch.errors import EXIT_UNAVAILABLE, ConchError
from conch.options import Globals

if TYPE_CHECKING:
    from conch.client import Client

log = logging.getLogger("conch")

CMD_SETTINGS = {"help_option_names": ["-h", "--help"]}
GLOBAL_PARAMS = ("endpoints", "prefix", "cacert", "cert", "key", "user", "dial_timeout",
                 "verbose", "quiet")  # fmt: skip

_state: dict[str, Any] = {"verbose": False, "prog": "conch"}


def global_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """The global options, accepted before and after the subcommand name."""
    opts = [
        click.option("--endpoints", envvar=["CONCH_ENDPOINTS", "ETCDCTL_ENDPOINTS"],
                     metavar="URL[,URL...]",
                     help="etcd endpoints of one cluster [default: http://127.0.0.1:2379]"),
        click.option("--prefix", envvar="CONCH_PREFIX", default="/conch/", show_default=True,
                     help="key namespace"),
        click.option("--cacert", envvar="CONCH_CACERT", metavar="FILE", help="TLS CA bundle",
                     shell_complete=files),
        click.option("--cert", envvar="CONCH_CERT", metavar="FILE", help="TLS client cert",
                     shell_complete=files),
        click.option("--key", envvar="CONCH_KEY", metavar="FILE", help="TLS client key",
                     shell_complete=files),
        click.option("--user", envvar="CONCH_USER", metavar="NAME[:PASSWORD]",
                     help="etcd user (password also from CONCH_PASSWORD)"),
        click.option("--dial-timeout", envvar="CONCH_DIAL_TIMEOUT", default="5s",
                     show_default=True, metavar="D",
                     help="time allowed to reach etcd and authenticate"),
        click.option("-v", "--verbose", is_flag=True, help="debug logging and tracebacks"),
        click.option("-q", "--quiet", is_flag=True, help="only errors on stderr"),
        click.version_option(__version__, "--version", message="%(prog)s %(version)s"),
    ]  # fmt: skip
    for o in reversed(opts):
        f = o(f)
    return f


def command_globals(ctx: click.Context, params: dict[str, Any]) -> tuple[Globals, bool, bool]:
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
    return globals_from(merged)


def globals_from(merged: dict[str, Any]) -> tuple[Globals, bool, bool]:
    """(Globals, verbose, quiet) from the merged values of GLOBAL_PARAMS; sets up logging."""
    verbose = bool(merged.pop("verbose"))
    quiet = bool(merged.pop("quiet"))
    setup_logging(verbose, quiet)
    g = Globals(password=os.environ.get("CONCH_PASSWORD"), **merged)
    return g, verbose, quiet


def setup_logging(
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


def connect(g: Globals) -> Client:
    """A client connected to the cluster of the global options (ConchError 69 if it cannot)."""
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


def _error(message: str, code: int) -> int:
    click.echo(f"{_state['prog']}: error: {message}", err=True)
    return code


def run_command(command: click.Command, argv: list[str] | None, prog: str) -> NoReturn:
    """Run a click command as a program: every failure is one `PROG: error: ...` line on stderr
    and its documented exit code; a traceback only with -v."""
    _state["prog"] = prog
    if f"_{prog.upper()}_COMPLETE" in os.environ:  # click's completion protocol
        from conch.completion import use_own_scripts

        use_own_scripts()
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
