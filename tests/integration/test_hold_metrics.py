"""`conch elect|sema ... --metrics-addr HOST:PORT` against a real etcd: Prometheus metrics
(is-holder, acquisitions, lease losses, child restarts, wait and hand-over latency) and
/healthz while conch runs."""

from __future__ import annotations

import signal
import socket
import urllib.error
import urllib.request

from conftest import wait_for

SH = "/bin/sh"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError:
        return 0, ""


def value(text: str, sample: str) -> float | None:
    got = [ln.split()[-1] for ln in text.splitlines() if ln.startswith(sample + " ")]
    return float(got[0]) if got else None


def test_metrics_and_healthz_of_a_restarted_service_and_a_waiter(conch, tmp_path):
    release = tmp_path / "release"
    p1, p2 = _free_port(), _free_port()
    lv = 'kind="elect",name="svc"'
    # a --restart service whose child exits every 0.1 s: acquired once, restarted
    leader = conch.start("elect", "svc", "--restart", "--metrics-addr", f"127.0.0.1:{p1}",
                         "--", SH, "-c", f"[ -e {release} ] && sleep 30; sleep 0.1")  # fmt: skip

    def restarted() -> str | None:
        code, text = get(p1, "/metrics")
        n = value(text, f"conch_child_restarts_total{{{lv}}}") if code == 200 else None
        return text if n is not None and n >= 1 else None

    text = wait_for(restarted, timeout=60, what="a restart counted")
    assert value(text, f"conch_acquisitions_total{{{lv}}}") == 1
    assert value(text, f"conch_handover_seconds_count{{{lv}}}") == 1
    assert value(text, f"conch_wait_seconds_count{{{lv}}}") == 1
    assert value(text, f"conch_lease_losses_total{{{lv}}}") == 0
    assert get(p1, "/healthz") == (200, "ok\n")
    release.touch()  # the next child stays: the office is held
    wait_for(lambda: value(get(p1, "/metrics")[1], f"conch_holder{{{lv}}}") == 1, timeout=30,
             what="conch_holder 1")  # fmt: skip
    # a second candidate waits: healthy (its lease is trusted), not a holder, nothing acquired
    waiter = conch.start("elect", "svc", "--metrics-addr", f"127.0.0.1:{p2}", "--", "true")
    wait_for(lambda: get(p2, "/healthz") == (200, "ok\n"), timeout=30, what="waiter healthy")
    text = get(p2, "/metrics")[1]
    assert value(text, f"conch_holder{{{lv}}}") == 0
    assert value(text, f"conch_acquisitions_total{{{lv}}}") == 0
    assert get(p2, "/nope")[0] == 404
    leader.send_signal(signal.SIGTERM)
    assert leader.wait(30) == 143
    assert waiter.wait(30) == 0  # it acquired and ran `true`


def test_metrics_addr_usage_errors_write_nothing(conch, etcdctl, prefix):
    r = conch.run("elect", "x", "--metrics-addr", "nonsense", "--", "true")
    assert r.returncode == 2 and "--metrics-addr" in r.stderr and "Traceback" not in r.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = conch.run("sema", "x", "--max", "2", "--metrics-addr", f"127.0.0.1:{port}", "--",
                      "true")  # fmt: skip
        assert r.returncode == 2 and "cannot listen" in r.stderr, r.stderr
    r = conch.run("elect", "x", "--who", "--metrics-addr", "127.0.0.1:1")
    assert r.returncode == 2
    assert etcdctl("get", "--prefix", prefix, "--keys-only").strip() == ""
