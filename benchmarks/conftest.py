"""Fixtures for the scan_pages benchmarks (benchmarks/bench_core.py) and the
equivalence tests (benchmarks/test_npscan.py).

* ``c_scan``: benchmarks/c/scan_loop.c compiled now, with ``cc -O2``, into a
  temporary directory, loaded through ctypes (nothing binary is committed);
  ``c_runs``: benchmarks/c/scan_runs.c, the run-at-a-time sketch, with -O3.
* ``workload``: a factory for the synthetic category arrays; each workload is
  built once per session and, before it is timed, the NumPy and both C versions are
  checked to give exactly pagescan's output on it (and the reference on the
  slice it is timed on).
* After the run, the ratios (core vs C, NumPy vs core, reference vs core) are
  printed by ``report.py`` from the timings of this same run.

Sizes: ``PAGESCAN_BENCH_PAGES`` (default 2**24) pages per workload and
``PAGESCAN_BENCH_REF_PAGES`` (default 2**16) for the pure-Python reference.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import cscan  # noqa: E402
import npscan  # noqa: E402
import report  # noqa: E402
import workloads  # noqa: E402

import pagescan  # noqa: E402
from pagescan import _core, _reference  # noqa: E402

from workloads import N_PAGES, REF_PAGES  # noqa: E402


@pytest.fixture(scope="session")
def c_scan(tmp_path_factory: pytest.TempPathFactory) -> cscan.CScan:
    """The plain C loop, c/scan_loop.c, built now with cc -O2."""
    so = cscan.build(tmp_path_factory.mktemp("scan_loop"))
    return cscan.CScan(so)


@pytest.fixture(scope="session")
def c_runs(tmp_path_factory: pytest.TempPathFactory) -> cscan.CScan:
    """c/scan_runs.c (run at a time, vectorisable), built now with cc -O3."""
    so = cscan.build(tmp_path_factory.mktemp("scan_runs"), cscan.RUNS_SOURCE, "-O3",
                     "PAGESCAN_BENCH_RUNS_CFLAGS")
    return cscan.CScan(so)


def assert_same(expected: Any, got: Any, what: str) -> None:
    """``expected`` and ``got`` are ScanResults; regions compared as (n, 3) u64 arrays."""
    e = np.asarray(expected.regions, dtype=np.uint64).reshape(-1, 3)
    g = np.asarray(got.regions, dtype=np.uint64).reshape(-1, 3)
    if e.shape != g.shape or not np.array_equal(e, g):
        bad = next((i for i in range(min(len(e), len(g))) if not np.array_equal(e[i], g[i])),
                   min(len(e), len(g)))
        raise AssertionError(
            f"{what}: regions differ: {len(e)} vs {len(g)} regions, first difference at "
            f"#{bad}: {e[bad].tolist() if bad < len(e) else None} vs "
            f"{g[bad].tolist() if bad < len(g) else None}")
    assert int(expected.walk_end) == int(got.walk_end), (
        f"{what}: walk_end {expected.walk_end:#x} vs {got.walk_end:#x}")


@dataclass
class Workload:
    name: str
    categories: np.ndarray
    masks: pagescan.Masks
    description: str
    regions: int = 0
    pages: int = 0
    ref_slice: np.ndarray = field(default=None)  # type: ignore[assignment]


@pytest.fixture(scope="session")
def workload(c_scan: cscan.CScan, c_runs: cscan.CScan):
    cache: dict[str, Workload] = {}

    def get(name: str) -> Workload:
        if name in cache:
            return cache[name]
        cats, masks, desc = workloads.make(name, N_PAGES)
        w = Workload(name, cats, masks, desc)
        core = _core.scan_pages(cats, masks=masks)
        w.regions, w.pages = len(core.regions), core.regions.pages()
        # Equivalence on the very data that is timed, with and without limits.
        for kw in ({}, {"max_pages": w.pages // 2 + 1}, {"max_regions": w.regions // 3},
                   {"max_pages": w.pages // 3, "max_regions": w.regions // 2},
                   {"start": 1 << 40, "page_size": 1 << 21}):
            if kw:
                core = _core.scan_pages(cats, masks=masks, **kw)
            assert_same(core, npscan.scan_pages(cats, masks=masks, **kw), f"numpy {name} {kw}")
            assert_same(core, c_scan.scan_pages(cats, masks=masks, **kw), f"C {name} {kw}")
            assert_same(core, c_runs.scan_pages(cats, masks=masks, **kw), f"C runs {name} {kw}")
        w.ref_slice = np.ascontiguousarray(cats[:REF_PAGES])
        assert_same(_core.scan_pages(w.ref_slice, masks=masks),
                    _reference.scan_pages(w.ref_slice, masks=masks), f"reference {name} slice")
        cache[name] = w
        return w

    return get


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter, exitstatus, config):
    bs = getattr(config, "_benchmarksession", None)
    if bs is None or not getattr(bs, "benchmarks", None):
        return
    records = [b.as_dict(include_data=False) for b in bs.benchmarks]
    lines = report.summarize(records)
    if lines:
        terminalreporter.write_sep("-", "scan_pages ratios (report.py)")
        for line in lines:
            terminalreporter.write_line(line)
    lines = report.limits(records)
    if lines:
        terminalreporter.write_sep("-", "the core at its limits (bench_limits.py, issue 14)")
        for line in lines:
            terminalreporter.write_line(line)
    lines = report.accuracy(records)
    if lines:
        terminalreporter.write_sep("-", "accuracy and time per backend and workload "
                                        "(bench_compare.py, per round)")
        for line in lines:
            terminalreporter.write_line(line)
