"""Shared test setup.

Kernel tests skip with the probe's reason where a feature is missing (a user's
laptop), but under ``CI=true`` a missing feature is a failure: CI must run them.
"""

from __future__ import annotations

import os

import pytest

CI = os.environ.get("CI") == "true"

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
