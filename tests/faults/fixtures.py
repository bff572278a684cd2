"""pytest fixtures over the fault tools, for a conftest to re-export (in tests/conftest.py, right
after `import pytest`, where ruff's import sorting puts it):

    from faults.fixtures import clock_control, etcd_proxy, faultshim_lib, make_proxy  # noqa: F401

faultshim_lib  (session)  the compiled shim (errors, with the reason, if there is no compiler)
clock_control  (function) a ClockControl with zero offsets in the test's tmp_path
make_proxy     (function) make_proxy(upstream) -> a started Proxy, stopped after the test
etcd_proxy     (function) a started Proxy in front of the session etcd (`etcd` fixture)

Every proxy is stopped at teardown, and a test fails if one of its threads hit an unexpected
exception.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conch.localetcd import LocalCluster
from faults.proxy import Proxy
from faults.shim import ClockControl, build


@pytest.fixture(scope="session")
def faultshim_lib() -> Path:
    """The fault shim, compiled once (cached across sessions by source hash)."""
    return build()


@pytest.fixture
def clock_control(tmp_path: Path) -> Iterator[ClockControl]:
    """A control file with zero offsets: pass it to shim_env() before starting processes."""
    with ClockControl(tmp_path / "faultshim-clock") as control:
        yield control


@pytest.fixture
def make_proxy() -> Iterator[Callable[[str], Proxy]]:
    """make_proxy("http://127.0.0.1:2379") -> a started Proxy; all stopped after the test."""
    proxies: list[Proxy] = []

    def make(upstream: str) -> Proxy:
        proxy = Proxy(upstream).start()
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        proxy.stop()
    errors = [e for p in proxies for e in p.errors]
    assert not errors, f"proxy threads failed: {errors!r}"


@pytest.fixture
def etcd_proxy(etcd: LocalCluster, make_proxy: Callable[[str], Proxy]) -> Proxy:
    """A started Proxy in front of the session etcd (`Proxy.endpoint` is what to dial)."""
    return make_proxy(etcd.endpoints[0])
