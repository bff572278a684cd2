"""Shell completion (docs/completion.md) as a user's shell does it: real bash sources the script
`_CONCH_COMPLETE=bash_source conch` prints and calls its completion function with COMP_WORDS
and COMP_CWORD set, which runs conch against the session etcd; an interactive zsh on a
pseudo-terminal completes with its own completion system, the script installed on $fpath or
eval'd; fish answers `complete -C`. Every wait polls with a deadline. zsh and fish are skipped
where they are not installed (.ci/run installs them)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_for

BASH = shutil.which("bash")
SH = "/bin/sh"

pytestmark = pytest.mark.skipif(BASH is None, reason="bash is not installed")


@pytest.fixture(scope="module")
def conch_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding a `conch` that runs this checkout with this interpreter: the script
    bash sources runs the command it completes by its name, from PATH."""
    d = tmp_path_factory.mktemp("bin")
    exe = d / "conch"
    exe.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m conch "$@"\n')
    exe.chmod(0o755)
    return d


def source(shell: str, conch_dir: Path) -> str:
    """The completion script `conch` prints for `shell` (bash, zsh, fish)."""
    env = {**os.environ, "_CONCH_COMPLETE": f"{shell}_source"}
    env["PATH"] = f"{conch_dir}{os.pathsep}{env.get('PATH', '')}"
    r = subprocess.run([str(conch_dir / "conch")], env=env, capture_output=True, text=True,
                       timeout=60)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    return r.stdout


@pytest.fixture(scope="module")
def bash_script(conch_dir: Path) -> tuple[Path, str]:
    """(the bash completion script, the name of the function it registers for `conch`)."""
    text = source("bash", conch_dir)
    m = re.search(r"complete\b.*-F (\S+) conch\b", text)
    assert m, text
    path = conch_dir / "conch-complete.bash"
    path.write_text(text)
    return path, m.group(1)


@pytest.fixture
def shell_env(conch_env: dict[str, str]) -> dict[str, str]:
    """conch_env with a generous CONCH_COMPLETION_TIMEOUT: on a busy test machine (the suite
    runs in several processes on two cores) connecting alone can take longer than the 1 s a
    TAB gives etcd, and the tests of *what* completes are not about that budget. Its own tests
    build their environment from conch_env, with the default budget."""
    return {**conch_env, "CONCH_COMPLETION_TIMEOUT": "30s"}


class Completed:
    def __init__(self, r: subprocess.CompletedProcess[str], seconds: float) -> None:
        self.words = r.stdout.split("\n")[:-1]  # one candidate a line
        self.returncode, self.stderr, self.seconds = r.returncode, r.stderr, seconds


@pytest.fixture
def complete(
    bash_script: tuple[Path, str], conch_dir: Path, shell_env: dict[str, str]
) -> Iterator[Any]:
    """complete("conch cron rm ba") -> what bash offers for the last word (`"conch cron rm "`:
    for an empty one), in the environment of the `conch` fixture unless `env` is given."""
    path, func = bash_script

    def run(line: str, env: dict[str, str] | None = None) -> Completed:
        words = line.split(" ")
        script = (
            f". {shlex.quote(str(path))}\n"
            f"COMP_WORDS=({' '.join(shlex.quote(w) for w in words)})\n"
            f"COMP_CWORD={len(words) - 1}\n"
            f"COMP_LINE={shlex.quote(line)}\n"
            f"COMP_POINT={len(line)}\n"
            "COMPREPLY=()\n"
            f"{func} conch {shlex.quote(words[-1])} {shlex.quote(words[-2])} || exit 99\n"
            'for w in "${COMPREPLY[@]}"; do printf "%s\\n" "$w"; done\n'
        )
        e = {**(env if env is not None else shell_env)}
        e["PATH"] = f"{conch_dir}{os.pathsep}{os.environ.get('PATH', '')}"
        t0 = time.monotonic()
        r = subprocess.run([BASH or "bash", "--norc", "--noprofile", "-c", script], env=e,
                           capture_output=True, text=True, timeout=60)  # fmt: skip
        return Completed(r, time.monotonic() - t0)

    return run


def offered(c: Completed) -> list[str]:
    """The candidates, after checking that completing went quietly."""
    assert c.returncode == 0, c.stderr
    assert c.stderr == ""
    return c.words


def test_bash_completes_subcommands_of_conch_and_of_the_lazy_cron_group(complete):
    assert offered(complete("conch cr")) == ["cron"]
    assert offered(complete("conch ")) == ["cron", "dev", "elect", "sema"]
    assert offered(complete("conch cron s")) == ["show", "suspend"]
    assert offered(complete("conch cron r")) == ["resume", "rm", "run"]


def test_bash_completes_options_and_choices(complete):
    assert offered(complete("conch cron add x --hi")) == ["--history"]
    assert offered(complete("conch --pre")) == ["--prefix"]
    assert offered(complete("conch cron show x --js")) == ["--json"]
    assert offered(complete("conch cron add x --overlap ")) == ["forbid", "allow"]
    assert offered(complete("conch cron add x --tz Europe/Berl")) == ["Europe/Berlin"]


def test_bash_completes_job_names_from_etcd(conch, shell_env, complete):
    for name in ("backup", "batch", "bench", "nightly"):
        r = conch.run("cron", "add", name, "--schedule", "@daily", "--", "true")
        assert r.returncode == 0, r.stderr
    other = shell_env["CONCH_PREFIX"] + "other/"
    r = conch.run("cron", "add", "bait", "--schedule", "@daily", "--prefix", other, "--", "true")
    assert r.returncode == 0, r.stderr

    assert offered(complete("conch cron rm ba")) == ["backup", "batch"]
    for sub in ("run", "show", "logs", "suspend", "resume"):
        assert offered(complete(f"conch cron {sub} ")) == ["backup", "batch", "bench", "nightly"]
    assert offered(complete("conch cron logs --last 2 n")) == ["nightly"]
    assert offered(complete("conch cron rm x")) == []
    # `add` offers the existing jobs only to --replace
    assert offered(complete("conch cron add --replace be")) == ["bench"]
    assert offered(complete("conch cron add be")) == []
    # the global options on the line being completed win over the environment, wherever given
    assert offered(complete(f"conch --prefix {other} cron rm ba")) == ["bait"]
    assert offered(complete(f"conch cron --prefix {other} show ")) == ["bait"]
    assert offered(complete(f"conch cron show --prefix {other} b")) == ["bait"]
    env = {**shell_env, "CONCH_PREFIX": other}
    assert offered(complete("conch cron rm ", env=env)) == ["bait"]
    # what completed is what the command takes
    r = conch.run("cron", "rm", "batch")
    assert r.returncode == 0, r.stderr
    assert offered(complete("conch cron rm ba")) == ["backup"]


def test_bash_completes_held_office_and_semaphore_names(conch, complete):
    conch.start("elect", "office-a", "--", SH, "-c", "sleep 300")
    conch.start("sema", "pool-a", "--max", "2", "--", SH, "-c", "sleep 300")
    wait_for(lambda: conch.who("elect", "office-a")["holders"], what="the office held")
    wait_for(lambda: conch.who("sema", "pool-a", "--max", "2")["holders"], what="a slot held")
    assert offered(complete("conch elect off")) == ["office-a"]
    assert offered(complete("conch sema ")) == ["pool-a"]
    assert offered(complete("conch sema --max 2 p")) == ["pool-a"]
    assert offered(complete("conch elect pool")) == []


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_no_etcd_no_names_quickly_and_quietly(complete, conch_env):
    env = {**conch_env, "CONCH_ENDPOINTS": f"http://127.0.0.1:{_closed_port()}"}
    c = complete("conch cron rm ba", env=env)
    assert offered(c) == []
    assert c.seconds < 3, c.seconds  # the look-up gives up after 1 s; the rest is starting
    # subcommands and options need no etcd
    assert offered(complete("conch cron s", env=env)) == ["show", "suspend"]


def test_an_etcd_that_never_answers_gives_no_names_within_the_budget(complete, conch_env):
    # a listener that accepts connections and never says a word (its backlog completes the
    # TCP handshake): the gRPC handshake hangs, and only the deadline ends the look-up
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        env = {**conch_env, "CONCH_ENDPOINTS": f"http://127.0.0.1:{s.getsockname()[1]}"}
        for line in ("conch cron rm ba", "conch elect o", "conch --dial-timeout 30s cron run "):
            c = complete(line, env=env)
            assert offered(c) == []
            assert c.seconds < 3, (line, c.seconds)


def test_the_budget_is_the_environments_when_it_says(complete, conch_env):
    """CONCH_COMPLETION_TIMEOUT: an etcd that never answers holds the TAB for the half of it
    that connecting gets, no longer; a value that is no duration leaves the default."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        env = {**conch_env, "CONCH_ENDPOINTS": f"http://127.0.0.1:{s.getsockname()[1]}"}
        c = complete("conch cron rm ba", env={**env, "CONCH_COMPLETION_TIMEOUT": "4s"})
        assert offered(c) == []
        assert 2 <= c.seconds < 5, c.seconds
        c = complete("conch cron rm ba", env={**env, "CONCH_COMPLETION_TIMEOUT": "soon"})
        assert offered(c) == []
        assert c.seconds < 3, c.seconds


def test_bad_global_options_give_no_names_and_no_error(complete, conch_env):
    lines = (
        "conch --endpoints ftp://x cron rm b",
        "conch --dial-timeout bogus cron rm b",
        "conch --cacert /nonexistent cron show b",
        "conch --user bob cron rm b",  # no password
    )
    for line in lines:
        assert offered(complete(line)) == [], line


def test_zsh_and_fish_scripts(conch_dir):
    zsh = source("zsh", conch_dir)
    assert zsh.startswith("#compdef conch") and "_CONCH_COMPLETE=zsh_complete" in zsh
    fish = source("fish", conch_dir)
    assert "complete --no-files --command conch" in fish
    assert "_CONCH_COMPLETE=fish_complete" in fish


# -- zsh: its real completion system (compinit) in an interactive zsh on a pseudo-terminal ------
ZSH = shutil.which("zsh")


class ZshLine:
    """An interactive `zsh -f` on a pseudo-terminal with compinit loaded and conch's script
    installed as a user would (`fpath`: the file `_conch` on $fpath; `eval`: eval'd after
    compinit). complete(line) types the line and a key bound to a widget that runs zsh's
    complete-word, then writes the edited line to a file: what TAB made of it."""

    def __init__(self, install: str, script: Path, env: dict[str, str], out: Path) -> None:
        import pty
        import threading

        self.out = out
        master, slave = pty.openpty()
        self.proc = subprocess.Popen(
            [ZSH or "zsh", "-f", "-i"], stdin=slave, stdout=slave, stderr=slave,
            env={**env, "TERM": "dumb"}, start_new_session=True,
        )  # fmt: skip
        os.close(slave)
        self.master = master
        self.screen = bytearray()  # what zsh wrote, for failure messages
        threading.Thread(target=self._drain, daemon=True).start()
        if install == "fpath":
            self._send(f"fpath=({shlex.quote(str(script.parent))} $fpath)\n")
        self._send("autoload -Uz compinit && compinit -u -D\n")
        if install == "eval":
            self._send(f'eval "$(cat {shlex.quote(str(script))})"\n')
        self._send(
            'tab() { zle complete-word; print -r -- "[$BUFFER]" >> '
            f"{shlex.quote(str(out))}; zle send-break; }}; zle -N tab; bindkey '^X' tab\n"
        )

    def _drain(self) -> None:
        while True:
            try:
                data = os.read(self.master, 4096)
            except OSError:
                return
            if not data:
                return
            self.screen.extend(data)

    def _send(self, text: str) -> None:
        os.write(self.master, text.encode())

    def _lines(self) -> list[str]:
        return self.out.read_text().splitlines() if self.out.exists() else []

    def complete(self, line: str) -> str:
        n = len(self._lines())
        self._send(line + "\x18")
        try:
            wait_for(lambda: len(self._lines()) > n, timeout=20, what=f"zsh completing {line!r}")
        except AssertionError as e:
            raise AssertionError(f"{e}; zsh wrote: {bytes(self.screen)[-2000:]!r}") from None
        return self._lines()[-1][1:-1]

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
        os.close(self.master)


@pytest.fixture(params=["fpath", "eval"])
def zsh_line(request, conch_dir, shell_env, tmp_path) -> Iterator[ZshLine]:
    if ZSH is None:
        pytest.skip("zsh is not installed (.ci/run installs it)")
    script = tmp_path / "zfunc" / "_conch"
    script.parent.mkdir()
    script.write_text(source("zsh", conch_dir))
    env = {**shell_env, "PATH": f"{conch_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    session = ZshLine(request.param, script, env, tmp_path / "lines")
    try:
        yield session
    finally:
        session.close()


def test_zsh_completes_commands_options_and_job_names_at_every_tab(conch, zsh_line):
    """Each line twice in one shell: an autoloaded completion function must complete at its
    second call too (click's own script, installed on $fpath, did nothing at the second TAB of
    every session)."""
    for name in ("backup", "nightly"):
        r = conch.run("cron", "add", name, "--schedule", "@daily", "--", "true")
        assert r.returncode == 0, r.stderr
    expected = {
        "conch cr": "conch cron ",
        "conch cron add x --hi": "conch cron add x --history ",
        "conch cron rm ba": "conch cron rm backup ",
        "conch cron logs n": "conch cron logs nightly ",
        "conch --pre": "conch --prefix ",
    }
    for line, completed in [*expected.items(), *expected.items()]:
        assert zsh_line.complete(line) == completed, line


# -- fish: its own `complete -C`, which asks the registered completions as TAB does ---------------
FISH = shutil.which("fish")


@pytest.fixture
def fish_complete(conch_dir, shell_env, tmp_path):
    if FISH is None:
        pytest.skip("fish is not installed (.ci/run installs it)")
    script = tmp_path / "conch.fish"
    script.write_text(source("fish", conch_dir))
    env = {**shell_env, "PATH": f"{conch_dir}{os.pathsep}{os.environ.get('PATH', '')}"}

    def run(line: str) -> list[str]:
        command = f"source {shlex.quote(str(script))}; complete -C {shlex.quote(line)}"
        r = subprocess.run([FISH or "fish", "--no-config", "-c", command], env=env,
                           capture_output=True, text=True, timeout=60)  # fmt: skip
        assert r.returncode == 0 and r.stderr == "", r.stderr
        return [c.split("\t", 1)[0] for c in r.stdout.splitlines()]  # candidate<TAB>help

    return run


def test_fish_completes_commands_options_and_job_names(conch, fish_complete):
    for name in ("backup", "batch", "nightly"):
        r = conch.run("cron", "add", name, "--schedule", "@daily", "--", "true")
        assert r.returncode == 0, r.stderr
    assert fish_complete("conch cr") == ["cron"]
    assert fish_complete("conch cron s") == ["show", "suspend"]
    assert fish_complete("conch cron add x --hi") == ["--history"]
    assert fish_complete("conch cron add x --overlap ") == ["allow", "forbid"]
    assert fish_complete("conch cron rm ba") == ["backup", "batch"]
    assert fish_complete("conch cron run ") == ["backup", "batch", "nightly"]


@pytest.mark.skipif(ZSH is None, reason="zsh is not installed (.ci/run installs it)")
def test_zsh_reads_its_script(conch_dir, tmp_path):
    path = tmp_path / "_conch"
    path.write_text(source("zsh", conch_dir))
    r = subprocess.run(["zsh", "-n", str(path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


@pytest.mark.skipif(FISH is None, reason="fish is not installed (.ci/run installs it)")
def test_fish_reads_its_script(conch_dir, tmp_path):
    path = tmp_path / "conch.fish"
    path.write_text(source("fish", conch_dir))
    r = subprocess.run(["fish", "--no-execute", str(path)], capture_output=True, text=True,
                       timeout=60)  # fmt: skip
    assert r.returncode == 0, r.stderr
