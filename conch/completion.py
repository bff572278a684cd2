"""Shell completion of what click cannot know: names that live in etcd, time zones, files
(docs/completion.md).

click completes commands and options itself (`_CONCH_COMPLETE=bash_source conch`); the
callbacks here complete the NAME of `conch cron rm|run|show|logs|suspend|resume` (and of
`cron add --replace`) from the job definitions, and the NAME of `conch elect|sema` from the
offices and semaphores held or waited for right now. etcd is asked with the global options
given on the command line being completed, else from the environment, like the command would;
the whole look-up is bounded (COMPLETION_BUDGET, or CONCH_COMPLETION_TIMEOUT): if etcd does not
answer in time, or anything at all fails, there are no candidates, and nothing is printed.

Light on purpose: click only at import; grpc, the stubs and conch.options when a name is asked
for.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from click.shell_completion import CompletionItem

    from conch.options import Globals

# the longest a TAB waits for etcd (seconds), connecting included, unless the environment's
# CONCH_COMPLETION_TIMEOUT says otherwise; the connection attempt gets at most half of it,
# whatever --dial-timeout says
COMPLETION_BUDGET = 1.0
BUDGET_VARIABLE = "CONCH_COMPLETION_TIMEOUT"
# the most keys read for one completion (a shell shows no more names usefully)
MAX_KEYS = 1000

# the global options that say where etcd is and how to reach it (conch.clicommon.GLOBAL_PARAMS
# without -v/-q)
_WHERE = ("endpoints", "prefix", "cacert", "cert", "key", "user", "dial_timeout")


def use_own_scripts() -> None:
    """Have click print conch's zsh script (ZshScript) for `_PROG_COMPLETE=zsh_source`.
    Called only when completing or printing a script: it imports click.shell_completion."""
    from click.shell_completion import ZshComplete, add_completion_class

    class ZshScript(ZshComplete):
        """click's zsh script with its function named `_PROG`, as the file on $fpath is named
        (docs/completion.md). zsh autoloads such a file as the body of `_PROG` and runs it at
        the first TAB: the body redefines `_PROG` as the completion function and calls it; later
        TABs call that function. click's own name, `_PROG_completion`, leaves `_PROG` the whole
        file, whose second run registers the function instead of completing: the second TAB of
        every shell session offered nothing (seen in tests/integration/test_completion.py)."""

        @property
        def func_name(self) -> str:
            return "_" + super().func_name.removeprefix("_").removesuffix("_completion")

    add_completion_class(ZshScript, "zsh")


def files(_ctx: click.Context, _param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """Let the shell complete a file name (the options that take a FILE)."""
    from click.shell_completion import CompletionItem

    return [CompletionItem(incomplete, type="file")]


def time_zones(_ctx: click.Context, _param: click.Parameter, incomplete: str) -> list[str]:
    """The IANA zones starting with `incomplete` (`cron add --tz`), from the system or tzdata."""
    import zoneinfo

    return sorted(z for z in zoneinfo.available_timezones() if z.startswith(incomplete))


def cron_jobs(ctx: click.Context, _param: click.Parameter, incomplete: str) -> list[str]:
    """The names of the cron jobs starting with `incomplete`."""
    from conch import keys

    return _lookup(ctx, incomplete, keys.cron_jobs_dir, _whole_key)


def cron_jobs_to_replace(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[str]:
    """`cron add NAME`: the existing jobs if --replace came before NAME, else nothing (a new
    job's name is the user's to invent)."""
    return cron_jobs(ctx, param, incomplete) if ctx.params.get("replace") else []


def elect_names(ctx: click.Context, _param: click.Parameter, incomplete: str) -> list[str]:
    """The offices (`conch elect NAME`) with a candidate right now."""
    from conch import keys

    return _lookup(ctx, incomplete, keys.elect_root, _first_segment)


def sema_names(ctx: click.Context, _param: click.Parameter, incomplete: str) -> list[str]:
    """The semaphores (`conch sema NAME`) with a contender right now."""
    from conch import keys

    return _lookup(ctx, incomplete, keys.sema_root, _first_segment)


def _whole_key(rest: bytes) -> bytes | None:
    """A job key: the encoded name is all that follows the directory."""
    return rest if rest and b"/" not in rest else None


def _first_segment(rest: bytes) -> bytes | None:
    """An elect or sema key: the encoded name, then `/` and the member's own part."""
    enc, sep, _ = rest.partition(b"/")
    return enc if enc and sep else None


def command_line_globals(ctx: click.Context) -> Globals:
    """The global options of the command line being completed, as the command would merge them:
    the one given nearest to the command wins, else the environment, else the default."""
    from click.core import ParameterSource

    from conch.options import Globals

    merged: dict[str, str] = {}
    for name in _WHERE:
        value = ctx.params.get(name)
        c: click.Context | None = ctx
        while c is not None:
            if c.get_parameter_source(name) is ParameterSource.COMMANDLINE:
                value = c.params.get(name)
                break
            c = c.parent
        if isinstance(value, str):
            merged[name] = value
    return Globals(password=os.environ.get("CONCH_PASSWORD"), **merged)


def _lookup(
    ctx: click.Context,
    incomplete: str,
    directory: Callable[[str], bytes],
    name_of: Callable[[bytes], bytes | None],
) -> list[str]:
    """The names under `directory(prefix)` starting with `incomplete`, sorted; [] if etcd does
    not answer within COMPLETION_BUDGET or anything fails. The look-up runs on a thread of its
    own, so that nothing (a slow DNS answer, a TLS handshake that hangs) holds the shell longer:
    conch ends the process with os._exit right after completing. The budget is etcd's: it
    starts once grpc and the stubs are loaded (work of this process, which cannot hang, and
    which takes several times longer on a busy machine)."""
    found: list[list[str]] = []

    def work() -> None:
        with contextlib.suppress(Exception):
            found.append(_names(ctx, incomplete, directory, name_of, deadline))

    with _silenced():
        try:
            import conch.client  # noqa: F401
        except Exception:
            return []
        budget = _budget()
        deadline = time.monotonic() + budget
        worker = threading.Thread(target=work, name="conch-complete", daemon=True)
        worker.start()
        worker.join(budget + 0.1)
    return found[0] if found else []


def _budget() -> float:
    """COMPLETION_BUDGET, or the duration in CONCH_COMPLETION_TIMEOUT when that is one (above
    zero); a TAB has no way to report a bad value, so one is ignored."""
    from conch.durations import parse_duration

    try:
        seconds = parse_duration(os.environ.get(BUDGET_VARIABLE, ""))
    except ValueError:
        return COMPLETION_BUDGET
    return seconds if seconds > 0 else COMPLETION_BUDGET


def _names(
    ctx: click.Context,
    incomplete: str,
    directory: Callable[[str], bytes],
    name_of: Callable[[bytes], bytes | None],
    deadline: float,
) -> list[str]:
    from dataclasses import replace
    from urllib.parse import quote

    from conch import keys, options
    from conch.client import Client

    g = command_line_globals(ctx)
    prefix = options.prefix(g)
    cfg = options.client_config(g)
    budget = deadline - time.monotonic()
    cfg = replace(cfg, dial_timeout=min(cfg.dial_timeout, budget / 2))
    d = directory(prefix)
    # the keys of the names starting with `incomplete` (percent-encoding works character by
    # character: the encoding of a name's beginning begins the encoding of the name)
    start = d + quote(incomplete, safe="", encoding="utf-8", errors="strict").encode()
    client = Client(cfg, call_timeout=budget, attempt_timeout=cfg.dial_timeout)
    try:
        client.connect()
        left = deadline - time.monotonic()
        if left <= 0:
            return []
        kvs, _rev, _more = client.get_page(start, keys.prefix_range_end(start), MAX_KEYS,
                                           timeout=left, keys_only=True)  # fmt: skip
    finally:
        client.close(timeout=0.1)
    names: set[str] = set()
    for kv in kvs:
        enc = name_of(kv.key[len(d) :])
        if enc is None:
            continue
        try:
            name = keys.decode_name(enc.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            continue
        if name.startswith(incomplete):
            names.add(name)
    return sorted(names)


@contextlib.contextmanager
def _silenced() -> Iterator[None]:
    """Nothing on the terminal while completing: conch's log records are dropped, and file
    descriptor 2 points to /dev/null (grpc's C core writes there on its own)."""
    logger = logging.getLogger("conch")
    handlers, propagate = logger.handlers[:], logger.propagate
    logger.handlers[:] = [logging.NullHandler()]
    logger.propagate = False
    saved = -1
    try:
        saved = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)
    except OSError:
        pass
    try:
        yield
    finally:
        if saved >= 0:
            with contextlib.suppress(OSError):
                os.dup2(saved, 2)
            os.close(saved)
        logger.handlers[:] = handlers
        logger.propagate = propagate
