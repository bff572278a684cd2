"""Which seeds the invariant tests run: the fixed CI set, `--seed N[,M...]`, or
`--random-seeds K` (tests/conftest.py defines the options)."""

from __future__ import annotations

import random

import pytest


def parametrize_seeds(metafunc: pytest.Metafunc, argname: str, ci_seeds: list[int]) -> None:
    """Parametrise `argname` with the seeds the command line asks for (ids show each seed)."""
    if argname not in metafunc.fixturenames:
        return
    given = metafunc.config.getoption("--seed")
    k = metafunc.config.getoption("--random-seeds")
    if given:
        seeds = [int(s) for s in str(given).split(",") if s.strip()]
    elif k:
        rng = random.SystemRandom()
        seeds = [rng.randrange(1_000_000) for _ in range(k)]
    else:
        seeds = ci_seeds
    metafunc.parametrize(argname, seeds, ids=[f"seed={s}" for s in seeds])
