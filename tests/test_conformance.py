"""Every backend that works on this machine passes the same conformance suite."""

from __future__ import annotations

import pytest
from conftest import require

import pagescan
from pagescan.testing import BackendConformance, RealHarness


@pytest.mark.kernel
class TestUffd(BackendConformance):
    @pytest.fixture
    def harness(self):
        p = pagescan.probe("uffd")
        require(p.ok, p.reason)
        return RealHarness("uffd")
