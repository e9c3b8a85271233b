"""Every backend that works here, and every mechanism simulated, passes the same
conformance suite (pagescan.testing), from this one module.

``real-*``: the backend on this machine's kernel (skipped, with the probe's reason,
where it does not work; a failure under CI=true). ``sim-*``: the same backend's
code over the simulated kernel (backend="simulator", mechanism=...)."""

from __future__ import annotations

import pytest
from conftest import require

import pagescan
from pagescan.testing import BackendConformance, RealHarness, SimHarness

REAL = ["uffd", "mprotect"]        # softdirty: not on this kernel (tests/vm, in the lane)
SIMULATED = ["uffd", "softdirty", "mprotect"]


PARAMS = ([pytest.param(("real", n), id=f"real-{n}", marks=pytest.mark.kernel) for n in REAL]
          + [pytest.param(("sim", n), id=f"sim-{n}") for n in SIMULATED])


@pytest.mark.parametrize("harness", PARAMS, indirect=True)
class TestConformance(BackendConformance):
    @pytest.fixture
    def harness(self, request):
        kind, name = request.param
        if kind == "sim":
            return SimHarness(name)
        p = pagescan.probe(name)
        require(p.ok, p.reason)
        return RealHarness(name)
