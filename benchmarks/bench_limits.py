"""pytest-benchmark suite for issue 14: the core against its limits.

Run:  python -m pytest benchmarks/bench_limits.py --benchmark-only -q

* ``scan``: 2**24 u64 categories (``PAGESCAN_BENCH_PAGES``), masks required=WRITTEN,
  three patterns: ``dense`` (every page matches: one region), ``sparse`` (1% of
  the pages, at random), ``alternating`` (every other page: 2**23 one-page
  regions). Rows: ``floor`` (reading the input once, ``c.max()``: the memory
  floor), ``core-fresh`` (``scan_pages`` returning a new RegionArray),
  ``core-kept`` (``scan_pages(..., out=buf)`` into a RegionArray kept across
  calls), ``c-kept`` (benchmarks/c/scan_loop.c, -O2, through ctypes, writing
  into a result buffer it keeps across calls, as a C program keeps its ``vec``).
* ``per-call``: ``scan_pages`` on 16 pages, masks given or None, fresh or out=.
* ``collect``: ``Tracker.collect()`` on a 16-page uffd-tracked range (two pages
  written before each call), fresh and ``out=``, against uffd_bench.c's
  ``ub_collect`` (PAGEMAP_SCAN with WP_MATCHING) called through ctypes.

The ratios are printed at the end of the run (conftest.py -> report.limits).
"""

from __future__ import annotations

import ctypes

import numpy as np
import pytest

import cscan
import uffd_harness as H
import pagescan
from pagescan import Category, Masks, _core
from workloads import N_PAGES

SUITE = "limits"
PATTERNS = ("dense", "sparse", "alternating")
MASKS = Masks(required=Category.WRITTEN)
_W = np.uint64(int(Category.WRITTEN | Category.PRESENT))
_P = np.uint64(int(Category.PRESENT))


def _pattern(name: str, n: int) -> np.ndarray:
    if name == "dense":
        return np.full(n, _W, np.uint64)
    if name == "sparse":
        rng = np.random.default_rng(14)
        return np.where(rng.random(n) < 0.01, _W, _P).astype(np.uint64)
    return np.where(np.arange(n) % 2 == 0, _W, _P).astype(np.uint64)


@pytest.fixture(scope="module")
def patterns():
    cache: dict[str, tuple[np.ndarray, int]] = {}

    def get(name: str) -> tuple[np.ndarray, int]:
        if name not in cache:
            c = _pattern(name, N_PAGES)
            cache.clear()                       # one 128 MB pattern at a time
            cache[name] = (c, len(_core.scan_pages(c, masks=MASKS).regions))
        return cache[name]

    return get


def _info(benchmark, case: str, impl: str, **kw) -> None:
    benchmark.extra_info.update(suite=SUITE, case=case, impl=impl, **kw)


@pytest.mark.parametrize("impl", ["floor", "core-fresh", "core-kept", "c-kept"])
@pytest.mark.parametrize("name", PATTERNS)
def test_scan(benchmark, patterns, c_scan, name, impl):
    benchmark.group = f"limits: scan {N_PAGES} u64 pages, {name}"
    c, nreg = patterns(name)
    if impl == "floor":
        benchmark(c.max)
    elif impl == "core-fresh":
        r = benchmark(_core.scan_pages, c, 0, 4096, MASKS)
        assert len(r.regions) == nreg
    elif impl == "core-kept":
        out = _core.RegionArray.empty(nreg)
        r = benchmark(_core.scan_pages, c, 0, 4096, MASKS, out=out)
        assert r.nregions == nreg
        expected = _core.scan_pages(c, masks=MASKS).regions
        assert np.array_equal(np.asarray(out), np.asarray(expected))
    else:
        fn, args, *_ = c_scan._args(c, 0, 4096, MASKS, 0, None)
        res = cscan.ScanOut()
        ref = ctypes.byref(res)
        fn(*args, ref)                          # the buffer grows once, then is kept
        benchmark(fn, *args, ref)
        assert res.n == nreg
        c_scan.lib.scan_free(ref)
    _info(benchmark, f"scan {name}", impl, pages=int(c.size), regions=nreg)


@pytest.mark.parametrize("impl", ["masks-fresh", "masks-kept", "none-fresh", "none-kept"])
def test_per_call(benchmark, impl):
    benchmark.group = "limits: scan_pages per call, 16 pages"
    c = _pattern("alternating", 16)
    masks = None if impl.startswith("none") else MASKS
    if impl.endswith("kept"):
        out = _core.RegionArray.empty(16)
        benchmark(_core.scan_pages, c, 0, 4096, masks, out=out)
    else:
        benchmark(_core.scan_pages, c, 0, 4096, masks)
    _info(benchmark, "per-call", impl, pages=16)


@pytest.fixture(scope="module")
def small_tracked(tmp_path_factory):
    p = pagescan.probe("uffd")
    if not p.ok:
        pytest.skip(p.reason)
    c = H.UffdC(H.build(tmp_path_factory.mktemp("uffd_limits")))
    n = 16
    mem = pagescan.allocate(n * 4096)
    view = memoryview(mem)
    for i in range(n):
        view[i * 4096] = 1                      # populated
    t = pagescan.track(mem, backend="uffd")
    pm = c.lib.ub_pagemap_open()
    yield c, t, mem, pm
    t.close()
    import os
    os.close(pm)
    view.release()
    mem.close()


@pytest.mark.parametrize("impl", ["pagescan", "pagescan-out", "c-ctypes"])
def test_collect_small(benchmark, small_tracked, impl):
    benchmark.group = "limits: collect() on 16 pages, 2 written per call"
    c, t, mem, pm = small_tracked
    view = memoryview(mem)
    start, end = t.start, t.end

    def write():
        view[3 * 4096] = 2
        view[9 * 4096] = 2

    if impl == "pagescan":
        fn = t.collect
    elif impl == "pagescan-out":
        out = pagescan.RegionArray.empty(16)

        def fn():
            return t.collect(out=out)
    else:
        res = H.Result()
        ref = ctypes.byref(res)
        collect = c.lib.ub_collect

        def fn():
            return collect(pm, start, end, 0, ref)
    write()
    fn()
    write()
    r = fn()
    n = r if isinstance(r, int) else (len(r.regions) if hasattr(r, "regions") else r.nregions)
    assert n == 2, (impl, r)
    benchmark.pedantic(fn, setup=write, rounds=3000, iterations=1, warmup_rounds=50)
    if impl == "c-ctypes":
        c.lib.ub_result_free(ref)
    _info(benchmark, "collect 16 pages", impl, pages=16)
