"""Write docs/cli.md, the command-line reference, from the click commands themselves.

    python tools/gencli.py           # (re)write docs/cli.md (commit the result)
    python tools/gencli.py --check   # exit 1 if docs/cli.md is stale (so does
                                     # tests/unit/test_cli_doc.py)

Every command is walked from its click object: `conch` (conch.cli.cli) with each subcommand,
the lazily added `cron` group included (list_commands/get_command), and `conchd`
(conch.cron.command.conchd). The global options are documented once, from the Option objects
that conch.clicommon.global_options adds; the exit codes from the EXIT_* constants of
conch/errors.py and their comments. What click cannot tell (environment variables read in code,
the variables a child gets, what an argument means) is in the tables below; the test checks
that each name there still occurs in the conch source. Help is rendered at a fixed width, so
the output does not depend on the terminal.
"""

from __future__ import annotations

import inspect
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "cli.md"
WIDTH = 100  # help text is rendered at this width, whatever the terminal

# environment variables conch reads in code, not through an option's `envvar`:
# (variable, the option it goes with, what it is)
ENV_READ_IN_CODE: list[tuple[str, str, str]] = [
    ("CONCH_PASSWORD", "--user",
     "the password for `--user NAME` (prefer it to `NAME:PASSWORD`: argv is visible to other "
     "users of the host); not passed to the watchdog process"),
    ("CONCH_COMPLETION_TIMEOUT", "TAB completion",
     "how long a TAB waits for etcd to name jobs, offices and semaphores (a duration; default "
     "1s, half of it for connecting): docs/completion.md"),
]  # fmt: skip

# the variables a child sees on top of the environment of the conch (or conchd) that starts it:
# (variable, who gets it, its value)
_ELECT_SEMA = "`conch elect`, `conch sema`: CMD"
_CRON = "`conchd`: a cron job's CMD"
_HOOK = "`conchd`: an `--on-failure` hook"
_BOTH = "`conchd`: a cron job's CMD and its `--on-failure` hook"
CHILD_ENV: list[tuple[str, str, str]] = [
    ("CONCH_NAME", _ELECT_SEMA, "NAME"),
    ("CONCH_REV", _ELECT_SEMA,
     "the fencing token: the etcd create revision of the holder's key; it grows strictly "
     "across successions (docs/guarantees.md)"),
    ("CONCH_LEASE", _ELECT_SEMA, "the holder's lease ID, in hex"),
    ("CONCH_TTL", _ELECT_SEMA, "the lease TTL etcd granted, in seconds"),
    ("CONCH_MAX", "`conch sema`: CMD", "N, the `--max` number of slots"),
    ("CONCH_JOB", _BOTH, "the job's NAME"),
    ("CONCH_TICK", _BOTH,
     "the tick, in RFC 3339 UTC as `cron ls` shows it (e.g. `2026-11-22T03:00:00Z`)"),
    ("CONCH_REV", _BOTH,
     "the revision of the tick's claim (the same for each retry); it grows with the tick"),
    ("CONCH_ATTEMPT", _CRON, "1, then 2, 3, ... for each `--retries` attempt"),
    ("CONCH_MANUAL", _CRON, "`1` in a run `conch cron run` asked for; unset otherwise"),
    ("CONCH_STATUS", _HOOK, "`failed` (a timed-out run is failed) or `lost`"),
    ("CONCH_EXIT_CODE", _HOOK, "the run's exit code; empty for a lost run"),
    ("CONCH_OUTPUT_FILE", _HOOK,
     "a temporary file holding the run's stored output; empty for a lost run; removed when "
     "the hook ends"),
    ("CONCH_ENDPOINTS", "`conch dev -- CMD`: CMD", "the dev cluster's endpoints"),
    ("ETCDCTL_ENDPOINTS", "`conch dev -- CMD`: CMD",
     "the same (an etcdctl in CMD cannot reach another cluster by accident)"),
]  # fmt: skip

# what an argument means (click arguments carry no help): (command path prefix, parameter
# name) -> text; the longest matching prefix wins. {max_name} is conch.keys.MAX_NAME_CHARS.
_NAME_RULE = "1 to {max_name} characters, no control characters"
ARG_HELP: dict[tuple[str, str], str] = {
    ("conch elect", "name"): "the office: one holder per NAME (under `--prefix`); " + _NAME_RULE,
    ("conch sema", "name"):
        "the semaphore (a NAME with another `--max` is another semaphore); " + _NAME_RULE,
    ("conch cron", "name"): "the job's name; " + _NAME_RULE,
    ("conch elect", "cmd"): "`-- CMD [ARG...]`: the command to run (not through a shell)",
    ("conch sema", "cmd"): "`-- CMD [ARG...]`: the command to run (not through a shell)",
    ("conch cron add", "cmd"):
        "`-- CMD [ARG...]`: the job's command (not through a shell), stored in its definition",
    ("conch dev", "cmd"):
        "`-- CMD [ARG...]`: run CMD against the dev cluster, then stop it (optional)",
}  # fmt: skip

EXIT_CODE_NOTES = """\
Besides these:

- **0**: done.
- **The child's code passes through**: `conch elect`, `conch sema` and `conch dev -- CMD` exit
  with CMD's code, `conch cron run --wait` with the run's. As `conch.errors.child_exit_code`
  says: {child_exit_code}
- **126**, **127**: CMD could not be executed, or was not found (as a POSIX shell reports them).
- **128+S**: `conchd` and `conch dev` too, after stopping their runs or CMD (143 after SIGTERM).
  As `conch.errors.signal_exit_code` says: {signal_exit_code}
- **1** is also: `conch cron add` of an existing NAME without `--replace`; a `conch cron`
  command naming no job; an internal error (a bug: `-v` shows the traceback).
- `conch cron run --wait`: **75** also when the run was `skipped` or `missed` (or the job is
  suspended), **70** when it was `lost` (its daemon's lease expired: the result is unknown).

Every error is one line on stderr, `conch: error: ...` (`conchd: error: ...`). More in
[guarantees.md](guarantees.md#exit-codes) and [cron.md](cron.md).
"""


@dataclass
class Entry:
    """One command: its click object and a context for it (its parents' included)."""

    command: click.Command
    ctx: click.Context

    @property
    def path(self) -> str:
        return self.ctx.command_path


def _context(command: click.Command, name: str, parent: click.Context | None) -> click.Context:
    """A context as click makes one to run `command` (its context_settings: -h), at WIDTH."""
    settings = {**command.context_settings, "terminal_width": WIDTH, "max_content_width": WIDTH}
    return click.Context(command, info_name=name, parent=parent, **settings)


def commands() -> list[Entry]:
    """`conch`, every command under it (depth first, in `--help` order), then `conchd`."""
    from conch.cli import cli
    from conch.cron.command import conchd

    out: list[Entry] = []

    def visit(command: click.Command, name: str, parent: click.Context | None) -> None:
        ctx = _context(command, name, parent)
        out.append(Entry(command, ctx))
        if isinstance(command, click.Group):
            for sub in command.list_commands(ctx):
                child = command.get_command(ctx, sub)
                if child is None:
                    raise LookupError(f"{ctx.command_path}: lists {sub!r} but cannot load it")
                visit(child, sub, ctx)

    visit(cli, "conch", None)
    visit(conchd, "conchd", None)
    return out


def global_entry() -> Entry:
    """A command with the global options alone (what conch.clicommon.global_options adds)."""
    from conch.clicommon import CMD_SETTINGS, global_options

    command = click.command("GLOBAL", context_settings=CMD_SETTINGS)(
        global_options(lambda **_: None)
    )
    return Entry(command, _context(command, "GLOBAL", None))


def all_params(e: Entry) -> list[click.Parameter]:
    """The command's parameters, its help option included."""
    return e.command.get_params(e.ctx)


def own_params(e: Entry, global_names: set[str]) -> list[click.Parameter]:
    """The command's parameters other than the global options; every global option must be
    there (they are documented once, as accepted by every command)."""
    params = all_params(e)
    missing = global_names - {str(p.name) for p in params}
    if missing:
        raise ValueError(f"{e.path}: lacks the global options {sorted(missing)}")
    return [p for p in params if p.name not in global_names]


# -- rendering -------------------------------------------------------------------------------


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _code(text: str) -> str:
    return f"`{text}`"


def _names(p: click.Parameter) -> str:
    if isinstance(p, click.Option):
        names = ", ".join(p.opts)
        if p.secondary_opts:
            names += " / " + ", ".join(p.secondary_opts)
        return _code(names)
    return _code(p.human_readable_name + ("..." if p.nargs == -1 else ""))


def _range(t: click.types.ParamType) -> str:
    if not isinstance(t, click.IntRange | click.FloatRange):
        return ""
    lo, hi = t.min, t.max
    if lo is not None and hi is not None:
        return f" ({lo}–{hi})"
    if lo is not None:
        return f" (≥ {lo})"
    return "" if hi is None else f" (≤ {hi})"


def _value(p: click.Parameter) -> str:
    if isinstance(p, click.Option) and p.is_flag:
        return "flag"
    if isinstance(p, click.Argument):
        if p.nargs == -1:
            return "any number" + (", required" if p.required else "")
        return "required" if p.required else "optional"
    if p.metavar:
        text = _code(p.metavar)
    elif isinstance(p.type, click.Choice):
        text = _code("|".join(str(c) for c in p.type.choices))
    else:
        text = _code(p.type.name.upper().removesuffix(" RANGE"))
    if isinstance(p, click.Option) and p.multiple:
        text += ", repeatable"
    return text + _range(p.type)


_UNSET = getattr(click.core, "UNSET", None)  # click >= 8.3: no default given
_DEFAULT_IN_HELP = re.compile(r"\s*\[default: ([^\]]*)\]")


def _help_and_default(e: Entry, p: click.Parameter) -> tuple[str, str]:
    """(help, default) of a parameter. A default written into the help text (`[default: X]`,
    for a default computed at run time) moves to the default column."""
    from conch.keys import MAX_NAME_CHARS

    if isinstance(p, click.Argument):
        matches = [k for k in ARG_HELP if k[1] == p.name and e.path.startswith(k[0])]
        if not matches:
            raise KeyError(f"{e.path} {p.human_readable_name}: add its meaning to ARG_HELP")
        key = max(matches, key=lambda k: len(k[0]))
        return ARG_HELP[key].format(max_name=MAX_NAME_CHARS), ""
    assert isinstance(p, click.Option)
    text = p.help or ""
    default = ""
    m = _DEFAULT_IN_HELP.search(text)
    if m:
        default, text = m.group(1), _DEFAULT_IN_HELP.sub("", text)
    if p.required:
        default = "required"
    elif not (default or p.is_flag or p.multiple or p.default is None or p.default is _UNSET):
        default = _code(str(p.default))
    return text, default


def _envvars(p: click.Parameter) -> str:
    env: Any = p.envvar
    if not env:
        return ""
    names = [env] if isinstance(env, str) else list(env)
    return ", else ".join(_code(n) for n in names)


def _table(e: Entry, params: list[click.Parameter], with_env: bool) -> list[str]:
    first = "Argument or option" if any(isinstance(p, click.Argument) for p in params) else "Option"
    head = [first, "Value", "Default", *(["Environment"] if with_env else []), "Description"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for p in params:
        text, default = _help_and_default(e, p)
        row = [_names(p), _value(p), default, *([_envvars(p)] if with_env else []), text]
        lines.append("| " + " | ".join(_cell(c) for c in row) + " |")
    return lines


def _help_block(e: Entry) -> list[str]:
    """The usage line and the help text, as `--help` prints them (at WIDTH)."""
    f = e.ctx.make_formatter()
    e.command.format_usage(e.ctx, f)
    e.command.format_help_text(e.ctx, f)
    text = "\n".join(line.rstrip() for line in f.getvalue().rstrip().splitlines())
    return ["```text", text, "```"]


def _anchor(title: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^a-z0-9 _-]", "", title.lower()).replace(" ", "-")


def _section(e: Entry, global_names: set[str]) -> list[str]:
    out = [f"## {e.path}", "", *_help_block(e), ""]
    if isinstance(e.command, click.Group):
        out += ["| Command | Summary |", "|---|---|"]
        for sub in e.command.list_commands(e.ctx):
            child = e.command.get_command(e.ctx, sub)
            assert child is not None
            title = f"{e.path} {sub}"
            link = f"[`{sub}`](#{_anchor(title)})"
            out.append(f"| {link} | {_cell(child.get_short_help_str(limit=WIDTH * 3))} |")
        out.append("")
    params = [p for p in own_params(e, global_names) if p.name not in ("help", "version")]
    if params:
        with_env = any(p.envvar for p in params)
        out += [*_table(e, params, with_env), ""]
    out += ["And the [global options](#global-options).", ""]
    return out


def _global_section(g: Entry) -> list[str]:
    out = [
        "## Global options",
        "",
        "Every command takes these: `conch`, each command under it, and `conchd`; before or "
        "after the command name. Given after the command name wins over before it, before it "
        "over the environment, the environment over the default "
        "([0004](decisions/0004-cli-conventions.md)).",
        "",
        *_table(g, all_params(g), with_env=True),
        "",
        "Read from the environment by the code (no option of their own):",
        "",
        "| Variable | With | Description |",
        "|---|---|---|",
    ]
    for name, option, text in ENV_READ_IN_CODE:
        out.append(f"| {_code(name)} | {_code(option)} | {_cell(text)} |")
    return [*out, ""]


def _child_env_section() -> list[str]:
    out = [
        "## Environment variables a child sees",
        "",
        "A child starts from the environment of the conch (or conchd) that runs it, unchanged "
        "(`CONCH_PASSWORD` included, so a nested conch works), plus:",
        "",
        "| Variable | Set for | Value |",
        "|---|---|---|",
    ]
    for name, who, text in CHILD_ENV:
        out.append(f"| {_code(name)} | {_cell(who)} | {_cell(text)} |")
    return [*out, ""]


_EXIT_LINE = re.compile(r"^(EXIT_[A-Z0-9_]+) = (\d+)\s*#\s*(.+?)\s*$")


def exit_codes() -> list[tuple[str, int, str]]:
    """(name, value, comment) of each EXIT_* constant in conch/errors.py, in source order."""
    from conch import errors

    found = []
    for line in inspect.getsource(errors).splitlines():
        m = _EXIT_LINE.match(line)
        if m:
            name, value, comment = m.group(1), int(m.group(2)), m.group(3)
            if getattr(errors, name) != value:
                raise ValueError(f"conch/errors.py: cannot read {name}'s value from its line")
            found.append((name, value, comment))
    names = {n for n in vars(errors) if n.startswith("EXIT_")}
    if names != {n for n, _v, _c in found}:
        raise ValueError(
            f"conch/errors.py: {sorted(names - {n for n, _v, _c in found})} need the form "
            "`EXIT_NAME = N  # what it means`"
        )
    return found


def _exit_section() -> list[str]:
    from conch import errors

    def doc(f: Any) -> str:
        return " ".join((inspect.getdoc(f) or "").split())

    out = ["## Exit codes", "", "| Code | Name | Meaning |", "|---|---|---|"]
    for name, value, comment in exit_codes():
        out.append(f"| {value} | {_code(name)} | {_cell(comment)} |")
    notes = EXIT_CODE_NOTES.format(child_exit_code=doc(errors.child_exit_code),
                                   signal_exit_code=doc(errors.signal_exit_code))  # fmt: skip
    return [*out, "", *notes.rstrip().splitlines(), ""]


def render() -> str:
    """docs/cli.md."""
    entries = commands()
    g = global_entry()
    global_names = {str(p.name) for p in all_params(g)}
    out = [
        "# Command-line reference",
        "",
        "<!-- Generated by tools/gencli.py from the click commands: do not edit. After changing "
        "a command, run `python tools/gencli.py`; tests/unit/test_cli_doc.py fails while this "
        "file is stale. -->",
        "",
        "`conch` is one command with subcommands; `conchd`, the cron daemon, is another. "
        "Durations (`D`): `500ms`, `10s`, `1m30s`, `2h`, or bare seconds (`10`, `2.5`); at "
        "most a year.",
        "",
        *(f"- [`{e.path}`](#{_anchor(e.path)})" for e in entries),
        "- [Global options](#global-options)",
        "- [Environment variables a child sees](#environment-variables-a-child-sees)",
        "- [Exit codes](#exit-codes)",
        "",
    ]
    for e in entries:
        out += _section(e, global_names)
    out += _global_section(g)
    out += _child_env_section()
    out += _exit_section()
    return "\n".join(out).rstrip() + "\n"


def main(argv: list[str]) -> int:
    if argv not in ([], ["--check"]):
        print("usage: python tools/gencli.py [--check]", file=sys.stderr)
        return 2
    text = render()
    rel = DOC.relative_to(ROOT)
    if argv == ["--check"]:
        current = DOC.read_text(encoding="utf-8") if DOC.exists() else None
        if current != text:
            print(f"gencli: {rel} is stale or missing; run: python tools/gencli.py",
                  file=sys.stderr)  # fmt: skip
            return 1
        print(f"gencli: {rel} is up to date")
        return 0
    DOC.write_text(text, encoding="utf-8")
    print(f"gencli: wrote {rel}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
