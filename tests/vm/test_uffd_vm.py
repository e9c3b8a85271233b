"""The uffd backend inside the lane's guests: on kernels with PAGEMAP_SCAN (6.7+)
it passes the conformance suite (6.12 predates GUARD: masks are restricted);
on older ones its probe names the version it needs."""

from __future__ import annotations

import os

import pytest

import pagescan
from pagescan.testing import BackendConformance, RealHarness

RELEASE = os.environ.get("PAGESCAN_VM_KERNEL", "")
VERSION = tuple(int(x) for x in RELEASE.split("-")[0].split(".")[:2]) if RELEASE else (0, 0)


if VERSION >= (6, 7):
    class TestUffdInGuest(BackendConformance):
        @pytest.fixture
        def harness(self):
            p = pagescan.probe("uffd")
            assert p.ok, p.reason
            return RealHarness("uffd")

    def test_uffd_is_auto_on_new_kernels():
        assert pagescan.backends.select("auto").name == "uffd"
else:
    def test_uffd_probe_names_the_version_it_needs():
        p = pagescan.probe("uffd")
        assert not p.ok and "6.7+" in p.reason
