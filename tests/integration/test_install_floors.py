"""`pip install conch` into an environment that already has protobuf 5.x keeps that protobuf
(docs/decisions/0007-dependency-floors.md): conch's floors are low enough, its generated stubs
import there without a version error or warning, and the CLI runs.

Needs the package registry (pip installs protobuf and conch's dependencies into a fresh venv);
skipped, with the reason, when it cannot be reached."""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent

# The oldest protobuf conch allows (pyproject.toml), so this is also the strictest 5.x to keep.
PROTOBUF_5 = "5.26.1"

# what pip prints when it cannot reach the registry or the registry lacks the release
_UNREACHABLE = (
    "No matching distribution found",
    "Could not find a version that satisfies",
    "NewConnectionError",
    "Max retries exceeded",
    "Temporary failure in name resolution",
    "Network is unreachable",
    "Connection refused",
    "ProxyError",
)


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, capture_output=True, text=True, timeout=timeout, env=_env(), stdin=subprocess.DEVNULL
    )


def _pip_install(py: Path, *reqs: str) -> None:
    r = _run([str(py), "-m", "pip", "install", "-q", *reqs], timeout=240)
    if r.returncode != 0:
        out = r.stdout + r.stderr
        if any(s in out for s in _UNREACHABLE):
            pytest.skip(f"package registry not reachable (pip install {' '.join(reqs)}): {out}")
        raise AssertionError(f"pip install {' '.join(reqs)} failed:\n{out}")


def _copy_source(dst: Path) -> Path:
    """What `pip install <repo>` reads, copied, so that the build leaves no build/ or
    egg-info behind in the checkout."""
    src = dst / "conch-src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(
        ROOT / "conch", src / "conch", ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
    )
    return src


def test_pip_install_keeps_an_installed_protobuf_5(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    r = _run([sys.executable, "-m", "venv", str(venv)], timeout=120)  # no system site-packages
    assert r.returncode == 0, r.stderr
    py = venv / "bin" / "python"

    _pip_install(py, f"protobuf=={PROTOBUF_5}")
    _pip_install(py, str(_copy_source(tmp_path)))  # not editable: a built wheel, as users get

    r = _run([str(py), "-c", "import importlib.metadata as m; print(m.version('protobuf'))"], 60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == PROTOBUF_5, f"pip replaced protobuf {PROTOBUF_5}: {r.stdout}"

    # the generated stubs check their runtimes at import: an error, or (grpc) a RuntimeWarning
    r = _run([str(py), "-W", "error", "-c", "import conch.client; conch.client._pb()"], 60)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""

    r = _run([str(venv / "bin" / "conch"), "--version"], 60)
    assert r.returncode == 0, r.stderr
    assert importlib.metadata.version("conch") in r.stdout
