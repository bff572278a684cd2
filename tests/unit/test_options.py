"""Global options → client configuration (pure; files are checked for readability only)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conch.errors import UsageError
from conch.options import Globals, client_config, duration, parse_endpoints, prefix


def test_default_endpoint_and_timeout() -> None:
    cfg = client_config(Globals())
    assert cfg.endpoints == ("http://127.0.0.1:2379",)
    assert cfg.dial_timeout == 5.0
    assert cfg.user is None and cfg.password is None


@pytest.mark.parametrize(
    ("text", "tls", "expected"),
    [
        ("http://a:1", False, ("http://a:1",)),
        ("http://a:1,http://b:2", False, ("http://a:1", "http://b:2")),
        (" http://a:1 , http://b:2/ ", False, ("http://a:1", "http://b:2")),
        ("a:1", False, ("http://a:1",)),
        ("a:1", True, ("https://a:1",)),
        ("https://a", False, ("https://a:2379",)),
        ("http://[::1]:2379", False, ("http://[::1]:2379",)),
    ],
)
def test_parse_endpoints(text: str, tls: bool, expected: tuple[str, ...]) -> None:
    assert parse_endpoints(text, tls) == expected


@pytest.mark.parametrize("text", ["", ",", "ftp://a:1", "http://", "http://a:1/path", "http://a:x"])
def test_bad_endpoints(text: str) -> None:
    with pytest.raises(UsageError) as e:
        parse_endpoints(text, False)
    assert e.value.exit_code == 2


def test_user_password_forms() -> None:
    cfg = client_config(Globals(user="root:pw"))
    assert (cfg.user, cfg.password) == ("root", "pw")
    cfg = client_config(Globals(user="root", password="fromenv"))
    assert (cfg.user, cfg.password) == ("root", "fromenv")
    cfg = client_config(Globals(user="root:a:b"))  # the first colon splits
    assert (cfg.user, cfg.password) == ("root", "a:b")
    with pytest.raises(UsageError):
        client_config(Globals(user="root"))  # no password anywhere
    with pytest.raises(UsageError):
        client_config(Globals(user=":pw"))


@given(st.text(min_size=1).filter(lambda s: ":" not in s), st.text())
def test_password_never_in_usage_errors_or_repr(user: str, tail: str) -> None:
    secret = f"S3CRET-{tail}"
    for bad in ({"dial_timeout": "nope"}, {"endpoints": "ftp://x"}, {"cacert": "/nonexistent"}):
        with pytest.raises(UsageError) as e:
            client_config(Globals(user=f"{user}:{secret}", **bad))
        assert secret not in str(e.value)
    cfg = client_config(Globals(user=f"{user}:{secret}"))
    assert secret not in repr(cfg)


def test_tls_files_must_exist(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import trustme

    ca = tmp_path / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(ca))
    assert client_config(Globals(cacert=str(ca), endpoints="h:1")).endpoints == ("https://h:1",)
    with pytest.raises(UsageError, match="cacert"):
        client_config(Globals(cacert=str(tmp_path / "missing.pem")))
    with pytest.raises(UsageError, match="go together"):
        client_config(Globals(cert=str(ca)))


def test_durations_of_flags() -> None:
    assert duration("1m30s", "--ttl") == 90.0
    assert duration("0", "--kill-after") == 0.0
    with pytest.raises(UsageError, match="--ttl"):
        duration("0.5s", "--ttl", minimum=1.0)
    with pytest.raises(UsageError, match="--dial-timeout"):
        duration("0", "--dial-timeout", allow_zero=False)
    with pytest.raises(UsageError, match="--timeout"):
        duration("soon", "--timeout")


def test_prefix_normalised_and_checked() -> None:
    assert prefix(Globals(prefix="/conch")) == "/conch/"
    assert prefix(Globals(prefix="/x/")) == "/x/"
    with pytest.raises(UsageError):
        prefix(Globals(prefix="/a\nb/"))
