"""Layer 1: names and the key layout (conch.keys). Pure, no I/O."""

from __future__ import annotations

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from conch.keys import (
    MAX_NAME_CHARS,
    decode_name,
    elect_dir,
    encode_name,
    lease_hex,
    member_key,
    normalize_prefix,
    prefix_range_end,
    sema_dir,
    validate_name,
)

# Any unicode except control characters (Cc) and lone surrogates (Cs), 1..128 characters.
NAMES = st.text(
    alphabet=st.characters(exclude_categories=("Cc", "Cs")),
    min_size=1,
    max_size=MAX_NAME_CHARS,
)
# Names that look like paths or escapes, to make collisions likely if the encoding were weak.
TRICKY = st.text(alphabet="a/%2F.~-_ é\u00ff", min_size=1, max_size=12)
ANY_NAME = NAMES | TRICKY
SLOTS = st.integers(min_value=1, max_value=1000)
LEASES = st.integers(min_value=0, max_value=2**63 - 1)
PREFIX = "/conch/"


def in_range(key: bytes, start: bytes, end: bytes) -> bool:
    """etcd range semantics: [start, end), with end == b"\\x00" meaning 'to the last key'."""
    if end == b"\x00":
        return key >= start
    return start <= key < end


# --- encode / decode ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "encoded"),
    [
        ("a", "a"),
        ("a/b", "a%2Fb"),
        ("../a", "..%2Fa"),
        ("a%2Fb", "a%252Fb"),
        ("/", "%2F"),
        ("%", "%25"),
        (".", "."),
        ("..", ".."),
        ("a b", "a%20b"),
        ("é", "%C3%A9"),
        ("job-1_x.y~z", "job-1_x.y~z"),
        ("日本", "%E6%97%A5%E6%9C%AC"),
    ],
)
def test_encode_examples(name: str, encoded: str) -> None:
    assert encode_name(name) == encoded
    assert decode_name(encoded) == name


def test_tricky_names_have_distinct_non_overlapping_dirs() -> None:
    names = ["a", "a/b", "../a", "a%2Fb", "a%252Fb", "a/", "/a", "a/b/c", "ab", "a b"]
    encs = [encode_name(n) for n in names]
    assert len(set(encs)) == len(names)
    dirs = [elect_dir(PREFIX, n) for n in names] + [sema_dir(PREFIX, n, 2) for n in names]
    for i, d in enumerate(dirs):
        for j, e in enumerate(dirs):
            if i != j:
                assert not e.startswith(d), (d, e)
    assert elect_dir(PREFIX, "a") == b"/conch/elect/a/"
    assert elect_dir(PREFIX, "a/b") == b"/conch/elect/a%2Fb/"
    assert elect_dir(PREFIX, "../a") == b"/conch/elect/..%2Fa/"
    assert elect_dir(PREFIX, "a%2Fb") == b"/conch/elect/a%252Fb/"
    assert sema_dir(PREFIX, "a/b", 3) == b"/conch/sema/a%2Fb/3/"


@settings(max_examples=300)
@given(ANY_NAME)
def test_round_trip_and_no_slash(name: str) -> None:
    enc = encode_name(name)
    assert "/" not in enc
    assert enc.isascii()
    assert decode_name(enc) == name


@settings(max_examples=300)
@given(ANY_NAME, ANY_NAME)
def test_encoding_is_injective(a: str, b: str) -> None:
    assume(a != b)
    assert encode_name(a) != encode_name(b)


@settings(max_examples=300)
@given(ANY_NAME, ANY_NAME, SLOTS, SLOTS, LEASES)
def test_no_name_reaches_another_names_keys(a: str, b: str, n: int, m: int, lease: int) -> None:
    """Directories of distinct (primitive, name, N) are never prefixes of one another, so the
    range of one never contains a key of another."""
    dirs = {
        ("elect", a, 0): elect_dir(PREFIX, a),
        ("elect", b, 0): elect_dir(PREFIX, b),
        ("sema", a, n): sema_dir(PREFIX, a, n),
        ("sema", b, m): sema_dir(PREFIX, b, m),
    }
    for id1, d1 in dirs.items():
        end1 = prefix_range_end(d1)
        assert d1.endswith(b"/")
        for id2, d2 in dirs.items():
            if id1 == id2:
                continue
            assert not d2.startswith(d1), (id1, id2)
            key2 = member_key(d2, lease)
            assert not in_range(key2, d1, end1), (id1, id2, key2)


@settings(max_examples=200)
@given(ANY_NAME, SLOTS, SLOTS)
def test_sema_dirs_for_different_max_never_overlap(name: str, n: int, m: int) -> None:
    assume(n != m)
    a, b = sema_dir(PREFIX, name, n), sema_dir(PREFIX, name, m)
    assert not a.startswith(b)
    assert not b.startswith(a)


@pytest.mark.parametrize(("n", "m"), [(1, 10), (1, 11), (2, 20), (1, 100), (12, 1)])
def test_sema_dirs_numeric_prefix_cases(n: int, m: int) -> None:
    a, b = sema_dir(PREFIX, "x", n), sema_dir(PREFIX, "x", m)
    assert not a.startswith(b) and not b.startswith(a)
    assert not member_key(a, 1).startswith(b)
    assert not member_key(b, 1).startswith(a)


@settings(max_examples=200)
@given(ANY_NAME, SLOTS)
def test_elect_and_sema_never_overlap(name: str, n: int) -> None:
    e, s = elect_dir(PREFIX, name), sema_dir(PREFIX, name, n)
    assert not e.startswith(s) and not s.startswith(e)


def test_sema_dir_rejects_bad_slots() -> None:
    for bad in (0, -1):
        with pytest.raises(ValueError):
            sema_dir(PREFIX, "x", bad)


def test_member_key_layout() -> None:
    d = sema_dir(PREFIX, "job", 2)
    assert member_key(d, 0x1234) == b"/conch/sema/job/2/0000000000001234"
    assert lease_hex(0x1234) == "0000000000001234"
    assert lease_hex(2**63 - 1) == "7fffffffffffffff"
    assert len(lease_hex(1)) == 16


# --- validate_name -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "",
        "x" * (MAX_NAME_CHARS + 1),
        "a\nb",
        "\x00",
        "a\x00",
        "\x7f",
        "\x85",  # NEL, a C1 control character
        "\t",
        "\r",
        "\x1b[31m",
        "\ud800",  # lone surrogate
        "a\udfff",
    ],
)
def test_validate_name_rejects(name: str) -> None:
    with pytest.raises(ValueError) as info:
        validate_name(name)
    assert str(info.value)
    with pytest.raises(ValueError):
        encode_name(name)
    with pytest.raises(ValueError):
        elect_dir(PREFIX, name)
    with pytest.raises(ValueError):
        sema_dir(PREFIX, name, 1)


@pytest.mark.parametrize(
    "name", ["a", "x" * MAX_NAME_CHARS, "日" * MAX_NAME_CHARS, "a b", "../..", "%00", "🦀"]
)
def test_validate_name_accepts(name: str) -> None:
    validate_name(name)
    assert decode_name(encode_name(name)) == name


@settings(max_examples=200)
@given(
    NAMES,
    st.integers(min_value=0, max_value=MAX_NAME_CHARS),
    st.sampled_from("\n\x00\x7f\x85\x9f\x01"),
)
def test_validate_name_rejects_any_control_character(name: str, pos: int, ctrl: str) -> None:
    bad = (name[:pos] + ctrl + name[pos:])[:MAX_NAME_CHARS]
    assume(ctrl in bad)
    with pytest.raises(ValueError):
        validate_name(bad)


# --- prefix -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given_prefix", "normalized"),
    [("/conch", "/conch/"), ("/conch/", "/conch/"), ("", "/"), ("a", "a/"), ("/", "/")],
)
def test_normalize_prefix(given_prefix: str, normalized: str) -> None:
    assert normalize_prefix(given_prefix) == normalized


def test_normalize_prefix_rejects_control_characters() -> None:
    with pytest.raises(ValueError):
        normalize_prefix("/con\nch")


def test_prefixes_without_slash_do_not_mix() -> None:
    a = elect_dir("/conch", "x")
    b = elect_dir("/conchx", "x")
    assert a == elect_dir("/conch/", "x")
    assert not a.startswith(b) and not b.startswith(a)


# --- prefix_range_end ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prefix", "end"),
    [
        (b"a", b"b"),
        (b"a\xff", b"b"),
        (b"a\xff\xff", b"b"),
        (b"\xff", b"\x00"),
        (b"\xff\xff", b"\x00"),
        (b"", b"\x00"),
        (b"/conch/", b"/conch0"),
        (b"ab\x00", b"ab\x01"),
        (b"a\xfe", b"a\xff"),
    ],
)
def test_prefix_range_end_matches_etcd(prefix: bytes, end: bytes) -> None:
    assert prefix_range_end(prefix) == end


KEYS = st.binary(max_size=8)


@settings(max_examples=500)
@given(st.binary(min_size=1, max_size=6), st.binary(max_size=6) | st.none(), KEYS)
def test_prefix_range_contains_exactly_the_keys_with_the_prefix(
    p: bytes, suffix: bytes | None, other: bytes
) -> None:
    """Every key starting with p is in [p, end) and no other key is; when p is all 0xff the
    end is b"\\x00" (etcd: 'to the end of the key space') and the same holds."""
    end = prefix_range_end(p)
    key = p + suffix if suffix is not None else other
    assert in_range(key, p, end) == key.startswith(p), (p, end, key)
    if any(b != 0xFF for b in p):
        assert end != b"\x00"
        assert p < end
