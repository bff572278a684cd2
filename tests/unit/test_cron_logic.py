"""Layer 1: the pure parts of cron (conch.cron, conch.keys' cron layout, conchd's flag parsing).
No I/O."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conch import keys, options
from conch.cron import listing, model
from conch.errors import UsageError

TICKS = st.integers(min_value=0, max_value=10**12 * 1_000_000 - 1)


# -- tick key codec ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("us", "token"),
    [
        (0, "000000000000"),
        (1_700_000_000_000_000, "001700000000"),
        (1_700_000_000_500_000, "001700000000.5"),
        (1_700_000_000_000_001, "001700000000.000001"),
        (1_700_000_000_250_000, "001700000000.25"),
    ],
)
def test_tick_token_table(us: int, token: str) -> None:
    assert keys.tick_token(us) == token
    assert keys.parse_tick_token(token) == us


@given(TICKS)
def test_tick_token_round_trips(us: int) -> None:
    assert keys.parse_tick_token(keys.tick_token(us)) == us


@given(TICKS, TICKS)
def test_tick_tokens_sort_like_ticks(a: int, b: int) -> None:
    ta, tb = keys.tick_token(a), keys.tick_token(b)
    assert (a < b) == (ta < tb) and (a == b) == (ta == tb)
    # also as the last segment of keys, as etcd sorts them (bytes)
    ka, kb = keys.cron_run_key("/p/", "j", a), keys.cron_run_key("/p/", "j", b)
    assert (a < b) == (ka < kb)


@pytest.mark.parametrize(
    "bad",
    ["", "1700000000", "0017000000000", "001700000000.", "001700000000.50", "001700000000.1234567",
     "00170000000a", "001700000000.x", "-01700000000", "００1700000000", "001700000000.５"],
)  # fmt: skip
def test_parse_tick_token_rejects_foreign_tokens(bad: str) -> None:
    with pytest.raises(ValueError):
        keys.parse_tick_token(bad)


def test_tick_token_range() -> None:
    with pytest.raises(ValueError):
        keys.tick_token(-1)
    with pytest.raises(ValueError):
        keys.tick_token(10**12 * 1_000_000)


def test_cron_key_layout() -> None:
    p = "/conch"
    assert keys.cron_job_key(p, "a/b") == b"/conch/cron/jobs/a%2Fb"
    assert keys.cron_run_key(p, "a/b", 1_000_000) == b"/conch/cron/runs/a%2Fb/000000000001"
    assert keys.cron_alive_key(p, "a b", 0) == b"/conch/cron/alive/a%20b/000000000000"
    assert keys.cron_job_name(p, b"/conch/cron/jobs/a%2Fb") == "a/b"
    for foreign in (b"/conch/cron/jobs/", b"/conch/cron/jobs/a/b", b"/conch/elect/x"):
        with pytest.raises(ValueError):
            keys.cron_job_name(p, foreign)
    d = keys.cron_alive_dir(p, "a/b")
    assert keys.cron_tick(keys.cron_alive_key(p, "a/b", 7_500_000), d) == 7_500_000
    assert keys.cron_tick(b"000000000007") == 7_000_000  # a mark's value
    for foreign in (b"", b"\xff", d, d + b"x", d + b"000000000007/1", b"/x/000000000007"):
        with pytest.raises(ValueError):
            keys.cron_tick(foreign, d if foreign.startswith(d) else b"")
    with pytest.raises(ValueError):
        keys.cron_tick(b"/other/000000000007", d)
    root = keys.cron_runs_root(p)
    assert keys.cron_split_tick_key(root, root + b"a%2Fb/000000000007") == ("a/b", 7_000_000)
    for foreign in (root + b"a", root + b"a/", root + b"a/1/2", b"/other/x/000000000001"):
        with pytest.raises(ValueError):
            keys.cron_split_tick_key(root, foreign)


@given(st.text(alphabet="ab/%.é ", min_size=1, max_size=6),
       st.text(alphabet="ab/%.é ", min_size=1, max_size=6))  # fmt: skip
def test_one_jobs_ranges_never_hold_another_jobs_keys(a: str, b: str) -> None:
    if a == b:
        return
    for d in (keys.cron_runs_dir, keys.cron_alive_dir):
        assert not d("/p/", b).startswith(d("/p/", a))
    assert not keys.cron_job_key("/p/", b).startswith(keys.cron_job_key("/p/", a) + b"/")


# -- status derivation ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stored", "alive", "shown"),
    [
        ("running", True, "running"),
        ("running", False, "lost"),  # the winner's lease expired without a result
        ("ok", False, "ok"),
        ("ok", True, "ok"),  # cannot happen (one txn), but a result always wins
        ("failed", False, "failed"),
        ("skipped", False, "skipped"),
        ("", False, "lost"),  # a damaged record
        ("", True, "lost"),
    ],
)
def test_derive_status(stored: str, alive: bool, shown: str) -> None:
    assert model.derive_status(stored, alive) == shown


def test_result_status() -> None:
    assert model.result_status(0) == "ok"
    assert [model.result_status(c) for c in (1, 3, 127, 137, 143)] == ["failed"] * 5


# -- history pruning -----------------------------------------------------------------------


def test_prune_keeps_the_newest() -> None:
    assert model.prune_choice([5, 1, 4, 2, 3], set(), keep=3) == [1, 2]
    assert model.prune_choice([1, 2, 3], set(), keep=3) == []
    assert model.prune_choice([1, 2, 3], set(), keep=5) == []
    assert model.prune_choice([1, 2, 3], set(), keep=0) == [1, 2, 3]


def test_prune_never_deletes_an_alive_run() -> None:
    # a long run (tick 1) outlasted many newer ticks: its record stays while it is alive
    assert model.prune_choice([1, 2, 3, 4, 5], {1}, keep=2) == [2, 3]
    assert model.prune_choice([1, 2, 3], {1, 2, 3}, keep=0) == []


@given(st.lists(st.integers(0, 50), max_size=40), st.sets(st.integers(0, 50)), st.integers(0, 25))
def test_prune_properties(ticks: list[int], alive: set[int], keep: int) -> None:
    doomed = model.prune_choice(ticks, alive, keep)
    assert doomed == sorted(set(doomed))
    assert not set(doomed) & alive
    newest = sorted(set(ticks), reverse=True)[:keep]
    assert not set(doomed) & set(newest)
    assert set(doomed) == {t for t in set(ticks) - alive if t not in newest}


# -- records -------------------------------------------------------------------------------


def test_job_json_round_trip() -> None:
    j = model.Job("n", "@every 1s", "Europe/Berlin", ("sh", "-c", "x"), 5.0, 2.0, "allow")
    assert model.Job.from_json("n", j.to_json()) == j
    # the key's name wins over the value's
    assert model.Job.from_json("other", j.to_json()).name == "other"


@pytest.mark.parametrize(
    "raw",
    [b"", b"null", b"[]", b"{}", b'{"schedule":"@daily"}', b'{"schedule":"@daily","cmd":[]}',
     b'{"schedule":"@daily","cmd":[1]}', b'{"schedule":"@daily","cmd":["x"],"overlap":"maybe"}',
     b"\xff", b"[" * 100000],
)  # fmt: skip
def test_damaged_job_definitions_are_rejected(raw: bytes) -> None:
    with pytest.raises(ValueError):
        model.Job.from_json("n", raw)


def test_job_defaults_for_missing_or_bad_numbers() -> None:
    j = model.Job.from_json("n", b'{"schedule":"@daily","cmd":["x"],"timeout":0,"kill_after":"x"}')
    assert (j.tz, j.timeout, j.kill_after, j.overlap) == ("UTC", None, 10.0, "forbid")


def test_run_record_round_trip_and_tolerance() -> None:
    r = model.RunRecord(tick="t", status="ok", daemon="d", host="h", claim="c", exit_code=0, rev=7)
    assert model.RunRecord.from_json(r.to_json()) == r
    for raw in (b"", b"garbage", b"[]", b'{"status":"weird","exit_code":true}', b"[" * 100000):
        d = model.RunRecord.from_json(raw)
        assert d.status == "" and d.exit_code is None
        assert model.derive_status(d.status, False) == "lost"


def test_run_doc_fields() -> None:
    r = model.RunRecord(tick="", status="running", daemon="d", host="h", claim="c", started="s")
    doc = listing.run_doc(1_000_000, r, alive=False)
    assert doc["tick"] == "1970-01-01T00:00:01Z" and doc["status"] == "lost"
    assert (doc["exit_code"], doc["host"], doc["started"], doc["finished"]) == (
        None,
        "h",
        "s",
        None,
    )


# -- time formatting -----------------------------------------------------------------------


def test_format_tick() -> None:
    assert model.format_tick(0) == "1970-01-01T00:00:00Z"
    assert model.format_tick(1_700_000_000_500_000) == "2023-11-14T22:13:20.5Z"


@given(st.integers(0, 4_000_000_000 * 1_000_000))
def test_tick_of_is_exact(us: int) -> None:
    assert model.tick_of(model.tick_datetime(us)) == us


def test_tick_of_other_zones() -> None:
    t = datetime(2026, 3, 8, 3, 0, tzinfo=UTC)
    assert model.tick_of(t.astimezone(timedelta_zone(-4))) == model.tick_of(t)


def timedelta_zone(hours: int):  # type: ignore[no-untyped-def]
    from datetime import timezone

    return timezone(timedelta(hours=hours))


# -- ls table ------------------------------------------------------------------------------


def test_format_table() -> None:
    doc = [
        {"name": "backup", "schedule": "0 3 * * *", "tz": "UTC", "cmd": ["sh", "-c", "a b"],
         "next_tick": "2026-01-01T03:00:00Z",
         "runs": [{"status": s} for s in ("running", "ok", "lost", "failed", "skipped", "ok")]},
        {"name": "x", "schedule": "", "tz": "", "cmd": [], "next_tick": None, "runs": []},
    ]  # fmt: skip
    header, row, damaged = listing.format_table(doc)
    assert header.split()[:3] == ["NAME", "SCHEDULE", "TZ"]
    assert "running ok lost failed skipped ..." in row and row.endswith("sh -c 'a b'")
    assert "(damaged definition)" in damaged


# -- conchd flags --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "addr"),
    [("127.0.0.1:9100", ("127.0.0.1", 9100)), (":9100", ("0.0.0.0", 9100)),
     ("[::1]:9100", ("::1", 9100)), ("localhost:1", ("localhost", 1))],
)  # fmt: skip
def test_parse_metrics_addr(text: str, addr: tuple[str, int]) -> None:
    assert options.metrics_addr(text) == addr


@pytest.mark.parametrize("bad", ["", "9100", "host:", "host:0", "host:65536", "::1:9100", "[::1]",
                                 "[::1]9100", "h:port", "h:９１"])  # fmt: skip
def test_parse_metrics_addr_rejects(bad: str) -> None:
    with pytest.raises(UsageError):
        options.metrics_addr(bad)


def test_a_records_output_is_stored_apart_and_an_old_records_is_still_read() -> None:
    from conch.cron.model import RunRecord, RunStatus

    rec = RunRecord("t", RunStatus.OK, "d", "h", "c", output="secret-ish tail")
    assert b"output" not in rec.to_json() and b"secret-ish" not in rec.to_json()
    old = b'{"tick":"t","status":"ok","daemon":"d","host":"h","claim":"c","output":"old tail"}'
    assert RunRecord.from_json(old).output == "old tail"


def test_a_suspended_job_round_trips_and_only_true_suspends() -> None:
    job = model.Job("j", "@daily", "UTC", ("true",), suspended=True)
    assert model.Job.from_json("j", job.to_json()).suspended is True
    plain = model.Job("j", "@daily", "UTC", ("t",))
    assert model.Job.from_json("j", plain.to_json()).suspended is False
    for odd in ('"yes"', "1", "null"):
        raw = b'{"schedule":"@daily","cmd":["t"],"suspended":' + odd.encode() + b"}"
        assert model.Job.from_json("j", raw).suspended is False


def test_the_table_shows_a_suspended_job_and_a_resolved_h() -> None:
    doc = [{"name": "j", "schedule": "H 3 * * *", "resolved_schedule": "34 3 * * *",
            "suspended": True, "tz": "UTC", "cmd": ["t"], "next_tick": None,
            "runs": []}]  # fmt: skip
    _header, row = listing.format_table(doc)
    assert "H 3 * * * = 34 3 * * *" in row and "suspended" in row


def test_show_and_logs_text_forms() -> None:
    from conch.cron.store import JobView

    job = model.Job("j", "H 3 * * *", "Europe/Berlin", ("sh", "-c", "x y"), timeout=5.0,
                    created="2026-01-01T00:00:00.000Z", host="h1", version="0.1.0")  # fmt: skip
    rec = model.RunRecord(tick="t", status=model.RunStatus.FAILED, daemon="d1", host="h2",
                          claim="c", started="s", finished="f", duration=1.5,
                          exit_code=3)  # fmt: skip
    view = JobView("j", job, runs={2_000_000: rec}, outputs={2_000_000: "a\nb\n"})
    doc = listing.show_doc(view, datetime(2026, 1, 1, tzinfo=UTC))
    assert doc["created"] == "2026-01-01T00:00:00.000Z" and doc["added_on"] == "h1"
    text = "\n".join(listing.format_show(doc))
    assert "schedule:   H 3 * * * = " in text and "(Europe/Berlin)" in text
    assert "command:    sh -c 'x y'" in text and "timeout:    5s, kill-after 10s" in text
    assert "1970-01-01T00:00:02Z  failed  3     1.500s" in text
    damaged = listing.format_show(listing.show_doc(JobView("k", None), datetime.now(UTC)))
    assert "command:    (damaged definition)" in damaged and "runs: none" in damaged
    logs = listing.logs_doc(view, [2_000_000])
    assert logs[0]["output"] == "a\nb\n" and logs[0]["exit_code"] == 3
    assert listing.format_logs("j", logs) == [
        "== j tick 1970-01-01T00:00:02Z: failed, exit 3, 1.500s, daemon d1 on h2 ==",
        "a",
        "b",
    ]


def test_history_round_trips_and_odd_values_fall_back_to_the_default() -> None:
    job = model.Job("j", "@daily", "UTC", ("true",), history=3)
    assert model.Job.from_json("j", job.to_json()).history == 3
    for odd in ("0", "1001", '"5"', "2.5", "true", "null"):
        raw = b'{"schedule":"@daily","cmd":["t"],"history":' + odd.encode() + b"}"
        assert model.Job.from_json("j", raw).history == model.HISTORY


@pytest.mark.parametrize(
    ("texts", "why"),
    [(["role"], "use KEY=VALUE"), (["=db"], "use KEY=VALUE"), (["a=b\n"], "control character"),
     (["k=" + "v" * 300], "at most 256"), (["k=1", "k=2"], "k given two values")],
)  # fmt: skip
def test_bad_labels_are_refused(texts: list[str], why: str) -> None:
    with pytest.raises(ValueError, match=why):
        model.labels_of(texts, "--on")


def test_labels_match_and_round_trip() -> None:
    on = model.labels_of(["zone=b", "role=db", "role=db"], "--on")
    assert on == (("role", "db"), ("zone", "b"))
    assert model.labels_match(on, {"role": "db", "zone": "b", "extra": "x"})
    assert not model.labels_match(on, {"role": "db"})
    assert model.labels_match((), {})  # a job without --on: any daemon
    assert model.labels_of(["empty="], "--label") == (("empty", ""),)
    job = model.Job("j", "@daily", "UTC", ("t",), on=on)
    assert model.Job.from_json("j", job.to_json()).on == on
    with pytest.raises(ValueError, match="bad labels"):
        model.Job.from_json("j", b'{"schedule":"@daily","cmd":["t"],"on":{"role":1}}')
    assert model.beat_labels(b'{"time":1,"labels":{"role":"db"}}') == (("role", "db"),)
    assert model.beat_labels(b'{"time":1}') == () == model.beat_labels(b"\xff")
    doc = {"name": "j", "on": {"role": "db"}}
    assert listing.unclaimable(doc, [(("role", "web"),)]) is not None
    assert listing.unclaimable(doc, [(("role", "web"),), (("role", "db"),)]) is None


def test_retries_and_attempts_round_trip_with_tolerant_fallbacks() -> None:
    job = model.Job("j", "@daily", "UTC", ("t",), retries=3, retry_delay=0.5)
    back = model.Job.from_json("j", job.to_json())
    assert (back.retries, back.retry_delay) == (3, 0.5)
    raw = b'{"schedule":"@daily","cmd":["t"],"retries":-2,"retry_delay":"x"}'
    odd = model.Job.from_json("j", raw)
    assert (odd.retries, odd.retry_delay) == (0, model.RETRY_DELAY)
    first = model.RunRecord(tick="t", status=model.RunStatus.FAILED, daemon="d", host="h",
                            claim="c", exit_code=1)  # fmt: skip
    rec = model.RunRecord(tick="t", status=model.RunStatus.OK, daemon="d", host="h", claim="c",
                          attempt=2, attempts=[first.summary()])  # fmt: skip
    back_rec = model.RunRecord.from_json(rec.to_json())
    assert back_rec.attempt == 2 and back_rec.attempts == [first.summary()]
    old = model.RunRecord.from_json(b'{"status":"ok","attempts":"nope"}')  # an older conch's
    assert old.attempt == 1 and old.attempts == []


# -- cron run: the manual tick ------------------------------------------------------------------


@given(st.integers(min_value=0, max_value=4_000_000_000_000_000))
def test_a_manual_tick_is_never_a_scheduled_one(now):
    from conch.cron.manual import manual_tick
    from conch.schedule import Schedule

    for spec in ("* * * * *", "@every 1s", "@every 1.5s", "0 0 * * *"):
        s = Schedule.parse(spec, "UTC", "j")
        t = manual_tick(s, now)
        assert now <= t <= now + 1
        assert s.next_after(model.tick_datetime(t - 1)) != model.tick_datetime(t)
    assert manual_tick(None, now) == now


def test_a_manual_tick_on_a_scheduled_one_moves_a_microsecond():
    from conch.cron.manual import manual_tick
    from conch.schedule import Schedule

    minute = 1_700_000_040 * 1_000_000  # a whole minute
    assert manual_tick(Schedule.parse("* * * * *", "UTC", "j"), minute) == minute + 1
    assert manual_tick(Schedule.parse("0 0 * * *", "UTC", "j"), minute) == minute
