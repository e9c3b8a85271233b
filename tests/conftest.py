"""Shared test setup.

Kernel tests skip with the probe's reason where a feature is missing (a user's
laptop), but under ``CI=true`` a missing feature is a failure: CI must run them.

Two tiers: the default run keeps a fast, representative example of every test;
``--slow`` (or ``PAGESCAN_SLOW=1``; ``tox -e slow``) adds the long stress and
differential runs (tests marked ``slow``, all seeds, more hypothesis examples).
Without it, slow tests are deselected, not skipped (under CI=true a skip is a
failure).
"""

from __future__ import annotations

import os

import pytest

CI = os.environ.get("CI") == "true"

#: whether the slow tier runs (set from --slow / PAGESCAN_SLOW=1 by pytest_configure)
SLOW = os.environ.get("PAGESCAN_SLOW", "") not in ("", "0")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--slow", action="store_true", default=False,
                     help="also run the slow tier: long stress and differential runs "
                          "(tests marked slow, every seed, more hypothesis examples); "
                          "same as PAGESCAN_SLOW=1")


def pytest_configure(config: pytest.Config) -> None:
    global SLOW
    SLOW = SLOW or bool(config.getoption("--slow"))
    config.addinivalue_line(
        "markers", "slow: a long stress/differential run, only with --slow (PAGESCAN_SLOW=1)")
    try:
        from hypothesis import settings
    except ImportError:
        return
    # the default run tries fewer examples; explicit max_examples go through scaled()
    settings.register_profile("pagescan-fast", max_examples=25)
    settings.register_profile("pagescan-slow", max_examples=200)
    settings.load_profile("pagescan-slow" if SLOW else "pagescan-fast")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if SLOW:
        return
    keep, slow = [], []
    for item in items:
        (slow if item.get_closest_marker("slow") else keep).append(item)
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = keep


def scaled(default: int, slow: int) -> int:
    """A size (examples, rounds, steps) for the tier that runs: ``default``, or
    ``slow`` under --slow."""
    return slow if SLOW else default


def slow_seeds(n_default: int, n_all: int) -> list:
    """``range(n_all)`` as pytest params: the first ``n_default`` in the default
    run, the others marked slow."""
    return [pytest.param(i, marks=() if i < n_default else pytest.mark.slow)
            for i in range(n_all)]

# tests/vm runs inside the qemu guests of the kernel lane (vm/lane.py), not here
collect_ignore = [] if os.environ.get("PAGESCAN_VM_KERNEL") else ["vm"]


def require(ok: bool, reason: str) -> None:
    """Skip (or, under CI=true, fail) when a kernel feature is missing."""
    if ok:
        return
    if CI:
        pytest.fail(f"CI=true and a required kernel feature is missing: {reason}")
    pytest.skip(reason)


@pytest.fixture
def uffd_ok() -> None:
    import pagescan
    p = pagescan.probe("uffd")
    require(p.ok, p.reason)


@pytest.fixture
def mprotect_ok() -> None:
    import pagescan
    p = pagescan.probe("mprotect")
    require(p.ok, p.reason)
