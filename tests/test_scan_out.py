"""``out=``: scans into a result buffer the caller keeps (issue 14).

``scan_pages(..., out=buf)`` (both implementations), ``pm_scan(..., out=buf)`` and
``Tracker.scan/collect(out=buf)`` write the regions into ``buf`` (a
``RegionArray.empty(n)`` or a writable ``(n, 3)`` uint64 array), bounded by its
capacity as by ``max_regions``, and return ``ScanCount(nregions, walk_end)``:
property tests check that this is exactly the fresh result cut to the capacity.
"""

from __future__ import annotations

import array
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pagescan
from pagescan import Category, Masks, ScanCount
from pagescan import _reference as ref
from test_core_hypothesis import (category_arrays, masks_strategy, max_pages_st,
                                  max_regions_st, placement)

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
try:
    from pagescan import _core as core
except ImportError as err:  # pragma: no cover - only without a build
    if IN_CI:
        raise
    pytest.skip(f"pagescan._core is not built ({err!r})", allow_module_level=True)

IMPLS = [pytest.param(core, id="cython"), pytest.param(ref, id="python")]
PS = 4096
W, P = int(Category.WRITTEN), int(Category.PRESENT)
common = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _rows(out, n):
    return [tuple(int(v) for v in r) for r in (list(out)[:n] if hasattr(out, "capacity")
                                               else np.asarray(out)[:n].tolist())]


def _fresh(impl, buf, start, ps, masks, mp, mr, cap):
    lim = cap if mr is None or mr > cap else mr
    r = impl.scan_pages(buf, start, ps, masks, mp, lim)
    return [tuple(x) for x in r.regions], r.walk_end


@pytest.mark.parametrize("impl", IMPLS)
@common
@given(data=st.data(), arrays=category_arrays(), masks=masks_strategy(),
       max_pages=max_pages_st, max_regions=max_regions_st,
       cap=st.one_of(st.integers(0, 8), st.integers(0, 400)),
       kind=st.sampled_from(["regionarray", "numpy"]))
def test_out_equals_fresh(impl, data, arrays, masks, max_pages, max_regions, cap, kind):
    """out= gives the fresh result with max_regions bounded by the capacity, and
    reusing the same buffer for a second, different call gives that call's result."""
    buf, values = arrays
    start, ps = data.draw(placement(len(values)))
    out = impl.RegionArray.empty(cap) if kind == "regionarray" else \
        np.full((cap, 3), 0xAB, np.uint64)
    for mp, mr in ((max_pages, max_regions), (0, None)):
        got = impl.scan_pages(buf, start, ps, masks, mp, mr, out=out)
        assert isinstance(got, ScanCount)
        regions, walk_end = _fresh(impl, buf, start, ps, masks, mp, mr, cap)
        assert got == (len(regions), walk_end)
        assert _rows(out, got.nregions) == regions
        if kind == "regionarray":
            assert len(out) == got.nregions and out.capacity == cap


@common
@given(arrays=category_arrays(), masks=masks_strategy(), cap=st.integers(0, 40))
def test_out_same_in_both_implementations(arrays, masks, cap):
    buf, _ = arrays
    a, b = np.zeros((cap, 3), np.uint64), np.zeros((cap, 3), np.uint64)
    assert core.scan_pages(buf, masks=masks, out=a) == ref.scan_pages(buf, masks=masks, out=b)
    assert (a == b).all()


@pytest.mark.parametrize("impl", IMPLS)
def test_out_capacity_bounds_the_answer(impl):
    c = array.array("Q", [W, W, P, W, 0, W, P, W])
    out = impl.RegionArray.empty(2)
    assert impl.scan_pages(c, out=out, masks=Masks(required=W)) == (2, 5 * PS)
    assert list(out) == [(0, 2 * PS, W), (3 * PS, 4 * PS, W)]
    # max_regions below the capacity wins; the buffer's other rows are left alone
    arr = np.full((4, 3), 7, np.uint64)
    assert impl.scan_pages(c, masks=Masks(required=W), max_regions=1, out=arr) == (1, 3 * PS)
    assert arr.tolist() == [[0, 2 * PS, W], [7, 7, 7], [7, 7, 7], [7, 7, 7]]
    # capacity 0: as max_regions=0, walk_end is the first matching page
    assert impl.scan_pages(c, 0x10000, masks=Masks(required=W),
                           out=impl.RegionArray.empty(0)) == (0, 0x10000)
    # matches nothing: count 0, walk_end the end; a RegionArray out is emptied
    out = impl.RegionArray.empty(3)
    impl.scan_pages(c, out=out)
    assert len(out) == 3
    nothing = Masks(required=W, excluded=W)
    assert impl.scan_pages(c, masks=nothing, out=out) == (0, 8 * PS) and len(out) == 0


@pytest.mark.parametrize("impl", IMPLS)
def test_regionarray_capacity(impl):
    ra = impl.RegionArray.empty(5)
    assert len(ra) == 0 and ra.capacity == 5 and list(ra) == []
    assert impl.RegionArray(capacity=3).capacity == 3
    with pytest.raises(ValueError, match="capacity"):
        impl.RegionArray.empty(-1)
    with pytest.raises(TypeError, match="capacity"):
        impl.RegionArray.empty(2.0)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("bad, exc, msg", [
    (5, TypeError, "RegionArray or a writable"),
    (bytearray(48), TypeError, "unsigned 64-bit"),
    (np.zeros((2, 3), np.int64), TypeError, "unsigned 64-bit"),
    (np.zeros((2, 3), np.uint32), TypeError, "unsigned 64-bit"),
    (np.zeros((2, 4), np.uint64), ValueError, r"shape \(n, 3\)"),
    (np.zeros(6, np.uint64), ValueError, r"shape \(n, 3\)"),
    (np.zeros((4, 3), np.uint64)[::2], ValueError, "contiguous"),
    (np.zeros((2, 3), np.uint64).T.copy().T, ValueError, "contiguous"),
])
def test_out_bad_buffer(impl, bad, exc, msg):
    with pytest.raises(exc, match=msg):
        impl.scan_pages(array.array("Q", [W]), out=bad)


@pytest.mark.parametrize("impl", IMPLS)
def test_out_read_only(impl):
    ro = np.zeros((2, 3), np.uint64)
    ro.flags.writeable = False
    with pytest.raises(TypeError, match="writable"):
        impl.scan_pages(array.array("Q", [W]), out=ro)


def test_out_other_implementations_regionarray_refused():
    with pytest.raises(TypeError):
        core.scan_pages(array.array("Q", [W]), out=ref.RegionArray.empty(2))


def test_out_regionarray_with_a_view_reused():
    """A buffer view of the RegionArray stays valid across scans into it: out= never
    reallocates (the view sees the new rows)."""
    out = core.RegionArray.empty(4)
    core.scan_pages(array.array("Q", [W, P, W]), out=out)
    view = np.asarray(out)
    assert view.shape == (3, 3)
    core.scan_pages(array.array("Q", [P, W]), out=out)
    assert len(out) == 2 and view[:2].tolist() == [[0, PS, P], [PS, 2 * PS, W]]


@pytest.mark.parametrize("impl", IMPLS)
def test_copy_regions(impl):
    out = np.zeros((2, 3), np.uint64)
    assert impl.copy_regions([(0, PS, W)], out) == 1
    assert out[0].tolist() == [0, PS, W]
    with pytest.raises(ValueError, match="do not fit"):
        impl.copy_regions([(0, PS, W)] * 3, out)
    ra = impl.RegionArray.empty(2)
    assert impl.copy_regions(impl.RegionArray([(0, PS, W), (PS, 2 * PS, P)]), ra) == 2
    assert list(ra) == [(0, PS, W), (PS, 2 * PS, P)]


# ---------------------------------------------------------------- the kernel


def _pagemap_scan_or_skip(fd, start, end):
    from conftest import require
    try:
        core.pm_scan(fd, start, end, 0, None, 0, 1)
    except OSError as err:
        require(False, f"PAGEMAP_SCAN unavailable here: {err}")


def test_pm_scan_out_equals_fresh():
    """pm_scan(out=) on a live mapping with more than 512 regions (the kernel resumes
    and coalesces across calls) equals the fresh result cut to the capacity."""
    import mmap
    n = 1500
    m = mmap.mmap(-1, n * PS)
    try:
        fd = os.open("/proc/self/pagemap", os.O_RDONLY)
        try:
            start, _ = core.buffer_address(m)
            end = start + n * PS
            _pagemap_scan_or_skip(fd, start, end)
            for i in range(0, n, 3):            # present pages in runs of 1 and 2
                m[i * PS] = 1
                if i % 2:
                    m[(i + 1) * PS] = 1
            present = Masks(required=Category.PRESENT)
            # the kernel's own answer in one call: pm_scan's first call asks for at
            # most 341 regions (a small kernel bounce buffer) and resumes after it
            whole, _ = core.pm_scan_once(fd, start, end, 0, *present.to_kernel(), 0, 4 * n)
            assert len(whole) > 341
            assert [tuple(r) for r in core.pm_scan(fd, start, end, 0, present).regions] == \
                [tuple(r) for r in whole]
            for masks in (present, None):
                for mp in (0, 7, 1000):
                    for cap in (1, 2, 340, 341, 342, 511, 512, 513, 700, 2000):
                        fresh = core.pm_scan(fd, start, end, 0, masks, mp, cap)
                        for out in (core.RegionArray.empty(cap),
                                    np.zeros((cap, 3), np.uint64)):
                            got = core.pm_scan(fd, start, end, 0, masks, mp, None, out)
                            assert got == (len(fresh.regions), fresh.walk_end)
                            assert _rows(out, got.nregions) == [tuple(r) for r in fresh.regions]
        finally:
            os.close(fd)
    finally:
        m.close()


@pytest.mark.parametrize("backend", ["uffd", "mprotect"])
def test_tracker_collect_out(backend):
    """collect(out=) reports what collect() does, a full buffer bounding each answer
    (the rest reported by the next calls); scan(out=) equals scan(max_regions=cap)."""
    from conftest import require
    p = pagescan.probe(backend)
    require(p.ok, p.reason)
    n = 64
    mem = pagescan.allocate(n * PS)
    written = [1, 2, 5, 9, 10, 11, 30, 40, 63]
    with pagescan.track(mem, backend=backend) as t:
        v = memoryview(mem)
        for i in written:
            v[i * PS] = 1
        base = t.start
        out = np.zeros((2, 3), np.uint64)
        fresh = t.scan(Masks(required=Category.WRITTEN), max_regions=2)
        got = t.scan(Masks(required=Category.WRITTEN), out=out)
        assert got == (2, fresh.walk_end) and _rows(out, 2) == [tuple(r) for r in fresh.regions]
        seen, calls = [], 0
        ra = pagescan.RegionArray.empty(2)
        while True:
            r = t.collect(out=ra)
            calls += 1
            seen += [((s - base) // PS, (e - base) // PS) for s, e, _ in ra]
            if r.nregions < 2:
                break
        assert [i for s, e in seen for i in range(s, e)] == written
        assert calls == 4           # three full buffers, then an empty answer
        assert t.collect(out=ra) == (0, t.end) and len(ra) == 0


# ------------------------------------------- pagemap_to_categories(soft_dirty_written=)


@common
@given(entries=st.lists(st.one_of(st.integers(0, (1 << 64) - 1),
                                  st.sampled_from([0, 1 << 55, 1 << 57, 1 << 63, 1 << 62,
                                                   (1 << 63) | (1 << 55), (1 << 61) | 5])),
                        max_size=40),
       wpallowed=st.booleans(), none_written=st.booleans())
def test_pagemap_soft_dirty_written(entries, wpallowed, none_written):
    """soft_dirty_written=True is the soft-dirty backend's view: WRITTEN iff bit 55,
    every other category as without it; the same in both implementations."""
    raw = array.array("Q", entries)
    kw = {"wpallowed": wpallowed, "none_written": none_written}
    plain = list(core.pagemap_to_categories(raw, **kw))
    got = list(core.pagemap_to_categories(raw, soft_dirty_written=True, **kw))
    assert got == list(ref.pagemap_to_categories(raw, soft_dirty_written=True, **kw))
    assert got == [(c & ~W) | (W if e >> 55 & 1 else 0)
                   for c, e in zip(plain, entries, strict=True)]
