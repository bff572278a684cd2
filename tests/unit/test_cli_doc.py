"""docs/cli.md is what tools/gencli.py generates from the click commands, and it covers every
command, option and environment variable; `conch --help` names every command. No etcd."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import click
import pytest
from click.testing import CliRunner

from conch.cli import cli

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "cli.md"
COMMANDS = {"cron", "dev", "elect", "sema"}


@pytest.fixture(scope="module")
def gencli() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gencli", ROOT / "tools" / "gencli.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gencli"] = module  # dataclasses look their module up
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules["gencli"]
    return module


@pytest.fixture(scope="module")
def doc() -> str:
    return DOC.read_text(encoding="utf-8")


def _sections(doc: str) -> dict[str, str]:
    """`## TITLE` -> the text up to the next such heading."""
    parts = re.split(r"^## (.+)$", doc, flags=re.M)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts), 2)}


def _source() -> str:
    return "\n".join(p.read_text(encoding="utf-8") for p in sorted((ROOT / "conch").rglob("*.py"))
                     if "_pb" not in p.parts)  # fmt: skip


def test_docs_cli_md_is_what_gencli_generates(gencli: ModuleType, doc: str) -> None:
    assert gencli.render() == doc, "docs/cli.md is stale: run `python tools/gencli.py`"


def test_gencli_check_reports_a_stale_file_in_one_line(
    gencli: ModuleType,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    stale = tmp_path / "cli.md"
    stale.write_text("# old\n", encoding="utf-8")
    monkeypatch.setattr(gencli, "ROOT", tmp_path)
    monkeypatch.setattr(gencli, "DOC", stale)
    assert gencli.main(["--check"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "python tools/gencli.py" in err
    assert gencli.main([]) == 0
    assert gencli.main(["--check"]) == 0
    assert stale.read_text(encoding="utf-8") == gencli.render()


def test_top_level_help_lists_every_command() -> None:
    result = CliRunner().invoke(cli, ["--help"], terminal_width=100)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    after = lines[lines.index("Commands:") + 1 :]
    listed = {m.group(1) for m in (re.match(r"  (\S+)", line) for line in after) if m}
    ctx = click.Context(cli, info_name="conch")
    assert listed == set(cli.list_commands(ctx)) >= COMMANDS
    # the docstring's first paragraph names them all too, and conchd
    first = " ".join(lines[2 : lines.index("", 2)])
    named = set(re.findall(r"[a-z]+", first))
    assert listed <= named, f"conch's docstring does not name {sorted(listed - named)}"
    assert "conchd" in result.output


def test_every_command_and_option_is_in_the_doc(gencli: ModuleType, doc: str) -> None:
    sections = _sections(doc)
    g = gencli.global_entry()
    global_params = gencli.all_params(g)
    global_names = {p.name for p in global_params}
    entries = gencli.commands()
    assert {e.path for e in entries} >= {f"conch {c}" for c in COMMANDS} | {"conch", "conchd"}
    assert {"conch cron add", "conch cron run", "conch cron logs"} <= {e.path for e in entries}

    def names(p: click.Parameter) -> list[str]:
        if isinstance(p, click.Option):
            return [*p.opts, *p.secondary_opts]
        return [p.human_readable_name]

    def documented(section: str) -> set[str]:
        """The names in the first column of the section's tables."""
        cells = re.findall(r"^\| `([^`]*)` \|", section, flags=re.M)
        return {n.removesuffix("...") for c in cells for n in re.split(r"[ ,/]+", c)}

    in_globals = documented(sections["Global options"])
    for e in entries:
        text = sections.get(e.path)
        assert text is not None, f"docs/cli.md has no section for {e.path}"
        here = documented(text)
        for p in e.command.get_params(e.ctx):
            for n in names(p):
                assert n in (in_globals if p.name in global_names else here), (
                    f"{e.path} {n} is not documented in docs/cli.md"
                )
    for p in global_params:
        for env in [p.envvar] if isinstance(p.envvar, str) else p.envvar or []:
            assert f"`{env}`" in sections["Global options"]


def test_every_listed_environment_variable_is_in_the_source(gencli: ModuleType) -> None:
    """What gencli lists by hand (read in code, or set for a child) still exists."""
    source = _source()
    listed = [n for n, _w, _t in gencli.ENV_READ_IN_CODE + gencli.CHILD_ENV]
    for name in listed:
        assert re.search(rf'"{name}"|\b{name}=', source), f"{name} no longer in conch/: gencli.py"


def test_every_conch_variable_in_the_source_is_in_the_doc(doc: str) -> None:
    used = set(re.findall(r"\b(?:CONCH|ETCDCTL)_[A-Z][A-Z_]*[A-Z]\b", _source()))
    assert {"CONCH_ENDPOINTS", "CONCH_PASSWORD", "CONCH_REV", "CONCH_OUTPUT_FILE"} <= used
    missing = sorted(n for n in used if f"`{n}`" not in doc)
    assert not missing, f"not in docs/cli.md (add them to tools/gencli.py): {missing}"


def test_every_exit_code_is_in_the_doc(gencli: ModuleType, doc: str) -> None:
    from conch import errors

    codes = gencli.exit_codes()
    assert {n for n, _v, _c in codes} == {n for n in vars(errors) if n.startswith("EXIT_")}
    exit_section = _sections(doc)["Exit codes"]
    for name, value, _comment in codes:
        assert f"| {value} | `{name}` |" in exit_section
