"""pytest-benchmark suite: scan_pages over 2**24 pages of u64 categories.

Run:  python -m pytest benchmarks/bench_core.py --benchmark-only -q

Workloads (benchmarks/workloads.py): ``dense`` (~90% WRITTEN in long runs,
return_mask WRITTEN|HUGE), ``sparse`` (~1% of pages match, in clusters of 1-4
pages), ``fragmented`` (~98% match and the reported category flips every ~2
pages: ~n/2 regions).

Implementations, each checked equal to pagescan's output before it is timed
(conftest.py):

* ``core``: the compiled core, ``pagescan._core.scan_pages``;
* ``c``: a plain C loop (benchmarks/c/scan_loop.c, built now with ``cc -O2``),
  one ctypes call over the whole buffer;
* ``numpy``: benchmarks/npscan.py, the vectorised version;
* ``c-runs``: benchmarks/c/scan_runs.c (-O3), a run-at-a-time loop sketching
  how the core could go faster (not a target, a suggestion; see its header);
* ``reference``: the pure-Python ``pagescan._reference.scan_pages``. It takes
  minutes on 2**24 pages, so it runs on the first 2**16 pages (its own group,
  next to the core on the same slice); compare them by
  ``extra_info['ns_per_page']``.

The ratios are printed at the end of the run (conftest.py -> report.py).
"""

from __future__ import annotations

import pytest

import npscan
from pagescan import _core, _reference
from workloads import N_PAGES, NAMES, REF_PAGES


def _pow2(n: int) -> str:
    return f"2**{n.bit_length() - 1}" if n & (n - 1) == 0 else str(n)


def full_group(name: str) -> str:
    return f"{name}: {_pow2(N_PAGES)} pages"


def slice_group(name: str) -> str:
    return f"{name}: {_pow2(REF_PAGES)}-page slice (reference; compare ns_per_page)"


FULL = [pytest.param(n, id=n, marks=pytest.mark.benchmark(group=full_group(n))) for n in NAMES]
SLICE = [pytest.param(n, id=n, marks=pytest.mark.benchmark(group=slice_group(n))) for n in NAMES]


def _record(benchmark, w, impl: str, npages: int, scope: str, nregions: int) -> None:
    info = benchmark.extra_info
    info.update(suite="scan_pages", workload=w.name, impl=impl, scope=scope, pages=npages,
                regions=nregions, masks=repr(w.masks), description=w.description)
    stats = getattr(getattr(benchmark, "stats", None), "stats", None)
    if stats is not None and getattr(stats, "data", None):
        info["ns_per_page"] = stats.min / npages * 1e9          # from the fastest round
        info["ns_per_page_median"] = stats.median / npages * 1e9


@pytest.mark.parametrize("impl", ["core", "c", "numpy", "c-runs"])
@pytest.mark.parametrize("name", FULL)
def test_scan_full(benchmark, workload, c_scan, c_runs, name, impl):
    w = workload(name)
    cats, masks = w.categories, w.masks
    if impl == "core":
        fn = _core.scan_pages
        result = benchmark(fn, cats, 0, 4096, masks)
        nreg = len(result.regions)
    elif impl in ("c", "c-runs"):
        nreg = benchmark((c_scan if impl == "c" else c_runs).prepare(cats, masks=masks))
    else:
        result = benchmark(npscan.scan_pages, cats, 0, 4096, masks)
        nreg = len(result.regions)
    assert nreg == w.regions
    _record(benchmark, w, impl, cats.size, "full", nreg)


@pytest.mark.parametrize("impl", ["reference", "core"])
@pytest.mark.parametrize("name", SLICE)
def test_scan_slice(benchmark, workload, name, impl):
    w = workload(name)
    cats = w.ref_slice
    fn = _reference.scan_pages if impl == "reference" else _core.scan_pages
    result = benchmark(fn, cats, 0, 4096, w.masks)
    _record(benchmark, w, impl, cats.size, "slice", len(result.regions))
