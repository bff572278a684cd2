"""Layer 1: the holder record stored in a contender's key (conch.holder). Pure, no I/O."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conch.holder import REDACTED, HolderRecord, redact, rfc3339

RFC3339_MS = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z")

TEXT = st.text(max_size=40)  # any unicode, including lone surrogates and control characters
RECORDS = st.builds(
    HolderRecord,
    host=TEXT,
    pid=st.integers(min_value=0, max_value=2**22) | st.integers(),
    started=st.builds(rfc3339, st.floats(min_value=0, max_value=4_102_444_800)) | TEXT,
    cmd=st.lists(TEXT, max_size=8),
    version=TEXT,
)


def sample() -> HolderRecord:
    return HolderRecord(
        host="web-1",
        pid=4242,
        started="2026-11-21T23:57:49.123Z",
        cmd=["backup.sh", "--all"],
        version="0.1.0",
    )


# --- JSON --------------------------------------------------------------------------------


def test_to_json_shape() -> None:
    raw = sample().to_json()
    assert isinstance(raw, bytes)
    assert json.loads(raw) == {
        "host": "web-1",
        "pid": 4242,
        "started": "2026-11-21T23:57:49.123Z",
        "cmd": ["backup.sh", "--all"],
        "version": "0.1.0",
    }
    assert b"\n" not in raw


@settings(max_examples=300)
@given(RECORDS)
def test_json_round_trip(rec: HolderRecord) -> None:
    raw = rec.to_json()
    raw.decode("utf-8")  # valid UTF-8 whatever the strings were
    assert HolderRecord.from_json(raw) == rec


def test_from_json_ignores_unknown_fields() -> None:
    raw = json.dumps({**json.loads(sample().to_json()), "future": {"x": 1}}).encode()
    assert HolderRecord.from_json(raw) == sample()


def assert_well_typed(rec: HolderRecord) -> None:
    assert type(rec.host) is str
    assert type(rec.pid) is int  # not bool: --who --json promises an int
    assert type(rec.started) is str
    assert type(rec.cmd) is list and all(type(a) is str for a in rec.cmd)
    assert type(rec.version) is str


EMPTY = HolderRecord(host="", pid=0, started="", cmd=[], version="")


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"null",
        b"[1]",
        b"[]",
        b"1",
        b'"a string"',
        b"true",
        b"{",
        b"\xff\xfe\xfd",  # invalid UTF-8
        b"\x00",
        b"NaN",
        b"[" * 100_000,  # nesting deeper than the json module's recursion limit
        b'{"a":' * 100_000,
    ],
)
def test_from_json_garbage_gives_empty_record(raw: bytes) -> None:
    assert HolderRecord.from_json(raw) == EMPTY


@pytest.mark.parametrize(
    "raw",
    [
        b'{"pid": "12"}',
        b'{"pid": 1.5}',
        b'{"pid": true}',
        b'{"pid": null}',
        b'{"cmd": "not a list"}',
        b'{"cmd": [1, null, {"a": 1}]}',
        b'{"host": 7, "started": [], "version": {}}',
        b'{"host": null}',
        b'{"pid": NaN, "cmd": [Infinity]}',
    ],
)
def test_from_json_wrong_types_are_tolerated(raw: bytes) -> None:
    rec = HolderRecord.from_json(raw)
    assert_well_typed(rec)
    if b'"pid"' in raw:
        assert rec.pid == 0


@settings(max_examples=300)
@given(st.binary(max_size=64))
def test_from_json_never_raises_on_bytes(raw: bytes) -> None:
    assert_well_typed(HolderRecord.from_json(raw))


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)


@settings(max_examples=300)
@given(
    st.fixed_dictionaries(
        {},
        optional={k: JSONISH for k in ("host", "pid", "started", "cmd", "version")},
    )
)
def test_from_json_never_raises_on_any_json_object(d: dict[str, object]) -> None:
    assert_well_typed(HolderRecord.from_json(json.dumps(d).encode()))


# --- time stamps -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ts", "text"),
    [
        (0, "1970-01-01T00:00:00.000Z"),
        (0.0015, "1970-01-01T00:00:00.001Z"),
        (1_795_823_869.123, "2026-11-27T23:57:49.123Z"),
        (951_782_400.999, "2000-02-29T00:00:00.999Z"),
    ],
)
def test_rfc3339_examples(ts: float, text: str) -> None:
    assert rfc3339(ts) == text


@settings(max_examples=500)
@given(st.floats(min_value=0, max_value=4_102_444_800))  # 1970 .. 2100
def test_rfc3339_format_and_parse_back(ts: float) -> None:
    text = rfc3339(ts)
    assert RFC3339_MS.fullmatch(text), text
    back = datetime.fromisoformat(text)
    assert back.utcoffset() is not None and back.utcoffset().total_seconds() == 0
    assert abs(back.timestamp() - ts) < 0.001 + 1e-6, (ts, text)
    assert back.astimezone(UTC).timestamp() <= ts + 1e-6  # truncated, never in the future


def test_restamped_changes_only_started() -> None:
    rec = sample()
    new = rec.restamped(0)
    assert new.started == "1970-01-01T00:00:00.000Z"
    assert (new.host, new.pid, new.cmd, new.version) == (rec.host, rec.pid, rec.cmd, rec.version)
    assert rec.started == "2026-11-21T23:57:49.123Z"  # the original is untouched


# --- redaction -------------------------------------------------------------------------------


def test_redact_replaces_secret_inside_args() -> None:
    cmd = ["curl", "--user", "bob:hunter2", "https://x/?p=hunter2&q=1", "plain", "hunter"]
    assert redact(cmd, "hunter2") == [
        "curl",
        "--user",
        f"bob:{REDACTED}",
        f"https://x/?p={REDACTED}&q=1",
        "plain",
        "hunter",
    ]
    assert cmd[2] == "bob:hunter2"  # the input is not modified


@pytest.mark.parametrize("secret", [None, ""])
def test_redact_without_secret_is_a_copy(secret: str | None) -> None:
    cmd = ["a", "b"]
    out = redact(cmd, secret)
    assert out == cmd and out is not cmd


def test_redact_repeated_occurrences() -> None:
    assert redact(["pwpwpw", "xpwx"], "pw") == [REDACTED * 3, f"x{REDACTED}x"]


@settings(max_examples=300)
@given(
    st.lists(st.text(max_size=20), max_size=6),
    st.text(min_size=1, max_size=8).filter(lambda s: "*" not in s),
    st.integers(min_value=0, max_value=5),
)
def test_redact_leaves_no_trace_of_the_secret(cmd: list[str], secret: str, at: int) -> None:
    if cmd:
        i = at % len(cmd)
        cmd = [*cmd[:i], cmd[i] + secret + cmd[i], *cmd[i + 1 :]]
    out = redact(cmd, secret)
    assert len(out) == len(cmd)
    for before, after in zip(cmd, out, strict=True):
        assert secret not in after
        if secret not in before:
            assert after == before
