"""Bad input is a usage error: one line on stderr, exit 2, nothing written to etcd, no secret
echoed — found locally, at parse time, never after a dial timeout or as an etcd refusal
(issue 7, items 10-12). Run as real processes against the session etcd."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_for

CONCHD = [sys.executable, "-m", "conch.cron.command"]
HUGE = "9999999999999999999s"


def assert_usage_error(r: subprocess.CompletedProcess[str], prog: str = "conch") -> str:
    assert r.returncode == 2, (r.args, r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), r.stderr
    assert "Traceback" not in r.stderr
    return lines[0]


def run_conchd(env: dict[str, str], *args: str, timeout: float = 30) -> Any:
    return subprocess.run(
        [*CONCHD, *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def nothing_under(etcdctl: Any, prefix: str) -> bool:
    return etcdctl("get", "--prefix", "--keys-only", prefix).strip() == ""


# -- item 10: credentials in an endpoint URL -----------------------------------------------------


def test_credentials_in_an_endpoint_are_refused_and_never_echoed(conch, conch_env, etcd, prefix,
                                                                  etcdctl):  # fmt: skip
    host = etcd.endpoints[0].split("://", 1)[1]
    secret = "s3cr3t-pw"
    url = f"http://alice:{secret}@{host}"
    for args in (
        ("--endpoints", url, "elect", "x", "--", "true"),
        ("--endpoints", f"{etcd.endpoints_csv},{url}", "sema", "x", "--max", "2", "--", "true"),
        ("--endpoints", url, "cron", "ls"),
        ("--endpoints", f"alice:{secret}@{host}", "elect", "x", "--who"),
    ):
        line = assert_usage_error(conch.run(*args))
        assert secret not in line and "--user" in line
    r = conch.run("elect", "x", "--", "true", env={"CONCH_ENDPOINTS": url})
    assert secret not in assert_usage_error(r)
    # conchd refuses it at start, before logging its start line (which names the endpoints)
    r = run_conchd({**conch_env, "CONCH_ENDPOINTS": url})
    assert secret not in r.stdout + assert_usage_error(r, "conchd")
    assert nothing_under(etcdctl, prefix)


# -- item 11: out-of-range durations and addresses ------------------------------------------------


def test_out_of_range_values_are_usage_errors(conch, conch_env, prefix, etcdctl):
    cases = [
        ("elect", "x", "--dial-timeout", HUGE, "--", "true"),
        ("elect", "x", "--ttl", HUGE, "--", "true"),
        ("elect", "x", "--ttl", "9000000001s", "--", "true"),
        ("elect", "x", "--kill-after", HUGE, "--", "true"),
        ("elect", "x", "--timeout", HUGE, "--", "true"),
        ("sema", "x", "--max", "2", "--ttl", "8761h", "--", "true"),
        ("--endpoints", "http://[::1", "elect", "x", "--", "true"),
        ("--endpoints", "http://127.0.0.1:99999", "elect", "x", "--", "true"),
        ("--endpoints", "http://127.0.0.1:0", "elect", "x", "--", "true"),
        ("cron", "add", "j", "--schedule", "@every 1s", "--kill-after", HUGE, "--", "true"),
        ("cron", "add", "j", "--schedule", "@every 1s", "--timeout", HUGE, "--", "true"),
    ]
    for args in cases:
        assert_usage_error(conch.run(*args))
    for args in (("--ttl", HUGE), ("--dial-timeout", HUGE), ("--endpoints", "http://[::1")):
        assert_usage_error(run_conchd(conch_env, *args), "conchd")
    assert nothing_under(etcdctl, prefix)
    # the longest accepted value still works end to end (a year)
    r = conch.run("elect", "x", "--ttl", "1s", "--kill-after", "8760h", "--", "true")
    assert r.returncode == 0, r.stderr


def test_a_stored_job_with_an_out_of_range_kill_after_is_ignored(conch, conch_env, prefix,
                                                                 etcdctl, tmp_path):  # fmt: skip
    """A definition written by hand (or by a conch without the checks) with an absurd value is
    refused by conchd with a warning, instead of breaking its shutdown."""
    from conch import keys

    key = keys.cron_job_key(prefix, "bad").decode()
    value = '{"schedule":"@every 1s","tz":"UTC","cmd":["true"],"kill_after":1e19}'
    etcdctl("put", key, value)
    log = tmp_path / "conchd.log"
    with open(log, "wb") as f:
        p = subprocess.Popen([*CONCHD, "--id", "d1"], env=conch_env, stdout=f,
                             stderr=subprocess.STDOUT)  # fmt: skip
    try:
        wait_for(lambda: "ignored" in log.read_text(), what="the warning")
        assert "kill_after" in log.read_text()
    finally:
        p.terminate()
        assert p.wait(30) == 143
    assert "Traceback" not in log.read_text()


# -- item 12: local mistakes are not "etcd unreachable" ------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    import trustme

    d = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    cert = ca.issue_cert("conch-client")
    other = trustme.CA().issue_cert("someone-else")
    files = {
        "ca": d / "ca.pem",
        "cert": d / "cert.pem",
        "key": d / "key.pem",
        "other_key": d / "other-key.pem",
        "garbage": d / "garbage.pem",
    }
    ca.cert_pem.write_to_path(str(files["ca"]))
    cert.cert_chain_pems[0].write_to_path(str(files["cert"]))
    cert.private_key_pem.write_to_path(str(files["key"]))
    other.private_key_pem.write_to_path(str(files["other_key"]))
    files["garbage"].write_text("this is not a certificate\n")
    return files


def test_bad_tls_files_are_usage_errors_at_once(conch, conch_env, pki, prefix, etcdctl):
    ep = ("--endpoints", "https://127.0.0.1:1", "--dial-timeout", "30s")
    cases = [
        (("--cacert", str(pki["garbage"])), "--cacert"),
        (("--cacert", str(pki["key"])), "--cacert"),
        (("--cert", str(pki["garbage"]), "--key", str(pki["key"])), "--cert"),
        (("--cert", str(pki["key"]), "--key", str(pki["cert"])), "swapped"),
        (("--cert", str(pki["cert"]), "--key", str(pki["other_key"])), "not the private key"),
    ]
    for tls, says in cases:
        t0 = time.monotonic()
        line = assert_usage_error(conch.run(*ep, *tls, "elect", "x", "--", "true"))
        assert says in line, line
        assert time.monotonic() - t0 < 10.0  # not after the 30 s dial timeout
        line = assert_usage_error(run_conchd(conch_env, *ep, *tls), "conchd")
        assert says in line, line
    # the right files pass the checks (and then find nobody on port 1: 69)
    good = ("--cacert", str(pki["ca"]), "--cert", str(pki["cert"]), "--key", str(pki["key"]))
    r = conch.run("--endpoints", "https://127.0.0.1:1", "--dial-timeout", "1s", *good,
                  "elect", "x", "--", "true")  # fmt: skip
    assert r.returncode == 69, r.stderr
    assert nothing_under(etcdctl, prefix)


def test_a_command_too_large_for_etcd_is_a_usage_error(conch, prefix, etcdctl):
    big = ["x" * 100_000] * 17  # 1.7 MB: over etcd's 1.5 MiB request limit
    line = assert_usage_error(conch.run("cron", "add", "big", "--schedule", "@every 1m",
                                        "--", "echo", *big))  # fmt: skip
    assert "bytes" in line and len(line) < 500
    assert nothing_under(etcdctl, prefix)


def test_elect_with_a_huge_command_runs_and_who_abbreviates_it(conch, tmp_path):
    """The holder record is informational: a command beyond etcd's request limit is
    abbreviated there, and conch runs it (it used to fail with 69, "request is too large")."""
    big = ["y" * 100_000] * 17  # 1.7 MB: over etcd's 1.5 MiB request limit
    out = tmp_path / "argc"
    r = conch.run("elect", "huge", "--", "/bin/sh", "-c", f'echo "$#" > {out}', "sh", *big)
    assert r.returncode == 0, r.stderr[-500:]
    assert out.read_text().strip() == str(len(big))
