"""The core (scan_pages, RegionArray, pagemap_to_categories, coalesce, Masks).

Every behavioural test runs against both implementations, the compiled
``pagescan._core`` and the pure-Python ``pagescan._reference``, via the ``impl``
fixture. Expected values are written by hand from docs/kernel.md,
'Filter', 'Output', 'walk_end' and 'pagemap entries'.
"""

from __future__ import annotations

import array
import importlib
import itertools
import os
from pathlib import Path
import pickle
import subprocess
import sys

import numpy as np
import pytest

import pagescan
from pagescan import HOLE, Category, Masks, PageRegion, ScanResult
from pagescan import _reference

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

try:
    from pagescan import _core
except ImportError as err:  # pragma: no cover - only without a build
    _core = None
    _CORE_ERROR: BaseException | None = err
else:
    _CORE_ERROR = None

WPA = int(Category.WPALLOWED)
W = int(Category.WRITTEN)
F = int(Category.FILE)
P = int(Category.PRESENT)
S = int(Category.SWAPPED)
Z = int(Category.PFNZERO)
H = int(Category.HUGE)
SD = int(Category.SOFT_DIRTY)
G = int(Category.GUARD)

PS = 4096
BASE = 0x7F0000000000  # a typical user-space start, page aligned
U64_MAX = (1 << 64) - 1


def _need_core():
    if _core is None:
        msg = f"pagescan._core is not built: {_CORE_ERROR!r}"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)
    return _core


@pytest.fixture(params=["cython", "python"])
def impl(request):
    """The implementation module under test: pagescan._core or pagescan._reference."""
    if request.param == "cython":
        return _need_core()
    return _reference


@pytest.fixture
def core():
    return _need_core()


def pg(i, start=BASE, ps=PS):
    """Address of page ``i``."""
    return start + i * ps


def scan(impl, cats, typecode="Q", start=BASE, **kw):
    return impl.scan_pages(array.array(typecode, cats), start=start, **kw)


def regions(res):
    return [tuple(r) for r in res.regions]


# ------------------------------------------------------------------ module API


def test_module_exports(impl):
    for name in ("RegionArray", "scan_pages", "pagemap_to_categories", "coalesce",
                 "IMPLEMENTATION"):
        assert hasattr(impl, name), name
    assert impl.IMPLEMENTATION == ("cython" if impl is _core else "python")


def test_result_is_scanresult(impl):
    res = scan(impl, [W])
    assert isinstance(res, ScanResult)
    assert isinstance(res.regions, impl.RegionArray)
    assert isinstance(res.walk_end, int)
    _regs, walk_end = res
    assert walk_end == pg(1)


# ------------------------------------------------------------ merge rules (§4)


def test_merge_same_categories_contiguous(impl):
    res = scan(impl, [P | W, P | W, P, P, P | W])
    assert regions(res) == [(pg(0), pg(2), P | W), (pg(2), pg(4), P), (pg(4), pg(5), P | W)]
    assert res.walk_end == pg(5)


def test_return_mask_decides_merging(impl):
    cats = [P | W, P | W, P, P, P | W | F]
    res = scan(impl, cats, masks=Masks(return_mask=P))
    assert regions(res) == [(pg(0), pg(5), P)]
    res = scan(impl, cats, masks=Masks(return_mask=W))
    assert regions(res) == [(pg(0), pg(2), W), (pg(2), pg(4), 0), (pg(4), pg(5), W)]
    # categories outside return_mask never show up
    res = scan(impl, [0x1FF, 0x1FF], masks=Masks(return_mask=P | S))
    assert regions(res) == [(pg(0), pg(2), P | S)]


def test_return_mask_does_not_filter(impl):
    # 6.18 reports pages whose categories & return_mask == 0 (v7 dropped them)
    res = scan(impl, [P, W, P], masks=Masks(return_mask=S))
    assert regions(res) == [(pg(0), pg(3), 0)]


def test_non_matching_page_breaks_run(impl):
    res = scan(impl, [W, W, P, W], masks=Masks(required=W))
    assert regions(res) == [(pg(0), pg(2), W), (pg(3), pg(4), W)]
    assert res.walk_end == pg(4)
    # even with return_mask=0 the non-matching page splits the run
    res = scan(impl, [W, W, P, W], masks=Masks(required=W, return_mask=0))
    assert regions(res) == [(pg(0), pg(2), 0), (pg(3), pg(4), 0)]


def test_different_categories_same_output_merge(impl):
    res = scan(impl, [W, W | P, W | F | SD], masks=Masks(required=W, return_mask=W))
    assert regions(res) == [(pg(0), pg(3), W)]


def test_leading_and_trailing_non_matching(impl):
    res = scan(impl, [0, 0, W, W, 0, 0], masks=Masks(required=W))
    assert regions(res) == [(pg(2), pg(4), W)]
    assert res.walk_end == pg(6)


def test_nothing_matches(impl):
    res = scan(impl, [0, P, 0], masks=Masks(required=W))
    assert regions(res) == []
    assert res.walk_end == pg(3)


def test_return_mask_zero_gives_maximal_runs(impl):
    cats = [P, W, F | P, 0, S, P | W, 0x1FF]
    res = scan(impl, cats, masks=Masks(return_mask=0))
    assert regions(res) == [(pg(0), pg(7), 0)]
    res = scan(impl, [P, P | W, 0, P, P | F, P | S], masks=Masks(required=P, return_mask=0))
    assert regions(res) == [(pg(0), pg(2), 0), (pg(3), pg(6), 0)]


def test_every_category_value_once(impl):
    """All 512 category values, one page each: the pages reported are exactly the
    ones Masks.matches() accepts, and (return_mask=0) they form maximal runs."""
    cats = list(range(512))
    for masks in (Masks(required=W), Masks(excluded=P | F), Masks(anyof=S | G),
                  Masks(required=P, anyof=W | F, excluded=H),
                  Masks.from_kernel(inverted=P | W, mask=P, anyof=W | SD)):
        m0 = Masks.from_kernel(inverted=masks.inverted, mask=masks.mask, anyof=masks.anyof,
                               return_mask=0)
        res = scan(impl, cats, "H", masks=m0)
        got = list(res.regions.addresses())
        assert got == [pg(c) for c in cats if masks.matches(c)]
        # runs are maximal: no two regions touch
        rs = regions(res)
        assert all(a[1] < b[0] for a, b in itertools.pairwise(rs))


# ------------------------------------------------------------------- HOLE (§3)


@pytest.mark.parametrize("masks", [
    None,
    Masks(),
    Masks(return_mask=0),
    Masks(excluded=W),                                  # x = c ^ W: a hole's W bit is 0
    Masks(excluded=0x1FF),
    Masks.from_kernel(inverted=0x1FF, mask=0x1FF),      # matches only c == 0
    Masks.from_kernel(inverted=P, anyof=P),             # non-present pages
    Masks.from_kernel(),
], ids=repr)
def test_hole_never_matches_and_breaks_run(impl, masks):
    res = scan(impl, [0, HOLE, 0, HOLE | 0x1FF, HOLE | W, 0], masks=masks)
    rs = regions(res)
    assert [(s, e) for s, e, _ in rs] == [(pg(0), pg(1)), (pg(2), pg(3)), (pg(5), pg(6))]
    assert res.walk_end == pg(6)


def test_hole_only(impl):
    res = scan(impl, [HOLE] * 5)
    assert regions(res) == [] and res.walk_end == pg(5)


def test_hole_does_not_count_for_limits(impl):
    res = scan(impl, [W, HOLE, HOLE, W, W], max_pages=2)
    assert regions(res) == [(pg(0), pg(1), W), (pg(3), pg(4), W)]
    assert res.walk_end == pg(4)
    res = scan(impl, [W, HOLE, W], max_regions=1)
    assert regions(res) == [(pg(0), pg(1), W)]
    assert res.walk_end == pg(2)


def test_high_bits_other_than_63_are_not_holes(impl):
    res = scan(impl, [W, (1 << 62) | W, (0x7FFF << 48) | W, (1 << 9) | W])
    assert regions(res) == [(pg(0), pg(4), W)]


@pytest.mark.parametrize("typecode,top", [("B", 0x80), ("H", 0x8000), ("I", 0x80000000)])
def test_hole_only_in_64_bit_input(impl, typecode, top):
    # the top bit of a narrower item is just a (masked-out) category bit
    res = scan(impl, [W, top | W, W], typecode)
    expected_cat = (top | W) & 0x1FF
    if expected_cat == W:
        assert regions(res) == [(pg(0), pg(3), W)]
    else:
        assert regions(res) == [(pg(0), pg(1), W), (pg(1), pg(2), expected_cat),
                                (pg(2), pg(3), W)]


# ------------------------------------------------------------ stop rule (§4)


def test_max_pages_walk_end_is_next_matching_page(impl):
    cats = [W, W, 0, 0, W, W]
    m = Masks(required=W)
    res = scan(impl, cats, masks=m, max_pages=2)
    assert regions(res) == [(pg(0), pg(2), W)]
    assert res.walk_end == pg(4)          # not pg(2): non-matching pages are walked over
    res = scan(impl, cats, masks=m, max_pages=3)
    assert regions(res) == [(pg(0), pg(2), W), (pg(4), pg(5), W)]
    assert res.walk_end == pg(5)
    res = scan(impl, cats, masks=m, max_pages=1)
    assert regions(res) == [(pg(0), pg(1), W)]
    assert res.walk_end == pg(1)          # cut mid-run


def test_max_pages_reached_exactly(impl):
    m = Masks(required=W)
    res = scan(impl, [W, W, 0, 0], masks=m, max_pages=2)
    assert regions(res) == [(pg(0), pg(2), W)]
    assert res.walk_end == pg(4)          # no matching page after: end
    res = scan(impl, [W, 0, W], masks=m, max_pages=2)
    assert res.walk_end == pg(3)
    res = scan(impl, [W, 0, W], masks=m, max_pages=100)
    assert regions(res) == [(pg(0), pg(1), W), (pg(2), pg(3), W)]
    assert res.walk_end == pg(3)


def test_max_pages_zero_means_no_limit(impl):
    res = scan(impl, [W] * 10, max_pages=0)
    assert regions(res) == [(pg(0), pg(10), W)]
    assert res.walk_end == pg(10)


def test_max_regions_walk_end_is_page_needing_new_region(impl):
    res = scan(impl, [W, P, W, P], max_regions=2)
    assert regions(res) == [(pg(0), pg(1), W), (pg(1), pg(2), P)]
    assert res.walk_end == pg(2)
    # a page that only extends the last region does not need a new one
    res = scan(impl, [W, W, W, P, P], max_regions=1)
    assert regions(res) == [(pg(0), pg(3), W)]
    assert res.walk_end == pg(3)
    # a gap needs a new region even with the same categories
    res = scan(impl, [W, W, 0, W], masks=Masks(required=W), max_regions=1)
    assert regions(res) == [(pg(0), pg(2), W)]
    assert res.walk_end == pg(3)
    # non-matching pages before the next match are walked over
    res = scan(impl, [W, 0, 0, P], masks=Masks(anyof=W | P), max_regions=1)
    assert res.walk_end == pg(3)


def test_max_regions_not_reached(impl):
    res = scan(impl, [W, P, W], max_regions=3)
    assert len(res.regions) == 3 and res.walk_end == pg(3)
    res = scan(impl, [W, P, W, 0, 0], masks=Masks(anyof=W | P), max_regions=3)
    assert len(res.regions) == 3 and res.walk_end == pg(5)
    res = scan(impl, [W, P, W], max_regions=None)
    assert len(res.regions) == 3 and res.walk_end == pg(3)


def test_max_regions_zero(impl):
    m = Masks(required=W)
    res = scan(impl, [0, 0, W, W], masks=m, max_regions=0)
    assert regions(res) == [] and res.walk_end == pg(2)       # first matching page
    res = scan(impl, [W], masks=m, max_regions=0)
    assert regions(res) == [] and res.walk_end == pg(0)
    res = scan(impl, [0, P], masks=m, max_regions=0)
    assert regions(res) == [] and res.walk_end == pg(2)       # no match: end
    res = scan(impl, [], masks=m, max_regions=0)
    assert regions(res) == [] and res.walk_end == pg(0)


def test_both_limits_first_one_wins(impl):
    cats = [W, W, P, P, W, W]
    res = scan(impl, cats, max_pages=3, max_regions=5)
    assert regions(res) == [(pg(0), pg(2), W), (pg(2), pg(3), P)]
    assert res.walk_end == pg(3)
    res = scan(impl, cats, max_pages=5, max_regions=2)
    assert regions(res) == [(pg(0), pg(2), W), (pg(2), pg(4), P)]
    assert res.walk_end == pg(4)
    # max_pages is checked before the vec-full rule on the same page
    res = scan(impl, cats, max_pages=2, max_regions=1)
    assert regions(res) == [(pg(0), pg(2), W)]
    assert res.walk_end == pg(2)


def test_resume_and_coalesce_reproduces_full_scan(impl):
    cats = [W, W, W, 0, P, P, HOLE, P, W | P, W | P, 0, 0, W]
    full = scan(impl, cats)
    for kw in ({"max_pages": 1}, {"max_pages": 2}, {"max_regions": 1},
               {"max_pages": 3, "max_regions": 2}):
        parts, start = [], BASE
        for _ in range(100):
            off = (start - BASE) // PS
            res = scan(impl, cats[off:], start=start, **kw)
            parts.append(res.regions)
            if res.walk_end == pg(len(cats)):
                break
            assert res.walk_end > start
            start = res.walk_end
        assert impl.coalesce(*parts) == regions(full), kw


# --------------------------------------------------------------- filter (§3)


def test_inverted_applies_to_anyof(impl):
    cats = [P, 0, W, P | W, S]
    res = scan(impl, cats, masks=Masks.from_kernel(inverted=P, anyof=P))
    assert regions(res) == [(pg(1), pg(2), 0), (pg(2), pg(3), W), (pg(4), pg(5), S)]
    res = scan(impl, cats, masks=Masks.from_kernel(anyof=P))
    assert regions(res) == [(pg(0), pg(1), P), (pg(3), pg(4), P | W)]


def test_inverted_alone_changes_nothing(impl):
    cats = [P, 0, W, P | W, S]
    plain = scan(impl, cats)
    for inv in (P, 0x1FF, W | S):
        res = scan(impl, cats, masks=Masks.from_kernel(inverted=inv))
        assert regions(res) == regions(plain)


def test_kernel_mask_with_inversion(impl):
    # mask=P|W, inverted=W: present and not written
    res = scan(impl, [P, P | W, W, P | F], masks=Masks.from_kernel(inverted=W, mask=P | W))
    assert regions(res) == [(pg(0), pg(1), P), (pg(3), pg(4), P | F)]


def test_v7_masks(impl):
    cats = [P | W, P, W, P | W | F, P | S, 0]
    res = scan(impl, cats, masks=Masks(required=P, excluded=F))
    assert regions(res) == [(pg(0), pg(1), P | W), (pg(1), pg(2), P), (pg(4), pg(5), P | S)]
    res = scan(impl, cats, masks=Masks(anyof=W | S, excluded=F, return_mask=0))
    assert regions(res) == [(pg(0), pg(1), 0), (pg(2), pg(3), 0), (pg(4), pg(5), 0)]
    # anyof partly inside excluded: the excluded part is dropped from anyof
    res = scan(impl, cats, masks=Masks(anyof=F | S, excluded=F))
    assert regions(res) == [(pg(4), pg(5), P | S)]


@pytest.mark.parametrize("kw", [{}, {"max_regions": 0}, {"max_pages": 1},
                                {"max_regions": 3, "max_pages": 2}])
def test_anyof_inside_excluded_matches_nothing(impl, kw):
    m = Masks(anyof=W, excluded=W | P)
    assert m.matches_nothing
    res = scan(impl, [0, W, P, 0x1FF, 0], masks=m, **kw)
    assert regions(res) == [] and res.walk_end == pg(5)
    res = scan(impl, [], masks=m, **kw)
    assert regions(res) == [] and res.walk_end == pg(0)


@pytest.mark.parametrize("kw", [{}, {"max_regions": 0}, {"max_pages": 1}])
def test_required_and_excluded_same_category_matches_nothing(impl, kw):
    """Regression (issue 12.6): required=X, excluded=X matched pages lacking X."""
    m = Masks(required=W, excluded=W)
    assert m.matches_nothing
    assert not any(m.matches(c) for c in range(512))
    res = scan(impl, [0, W, P, P | W, 0x1FF, 0], masks=m, **kw)
    assert regions(res) == [] and res.walk_end == pg(6)
    # overlap in one bit is enough, whatever else is asked
    m = Masks(required=P | W, anyof=F | S, excluded=W | F)
    assert m.matches_nothing
    assert regions(scan(impl, [P, P | S, P | F, 0x1FF], masks=m)) == []
    # disjoint required and excluded still match as before
    assert not Masks(required=P, excluded=W).matches_nothing


def test_masks_none_is_everything(impl):
    res = scan(impl, [0, 0x1FF], masks=None)
    assert regions(res) == [(pg(0), pg(1), 0), (pg(1), pg(2), 0x1FF)]


# ------------------------------------------------------- input shapes and sizes


def test_empty_input(impl):
    for tc in "BHIQL":
        res = impl.scan_pages(array.array(tc), start=BASE)
        assert regions(res) == [] and res.walk_end == BASE
    res = impl.scan_pages(np.zeros(0, np.uint64), start=0, page_size=1)
    assert regions(res) == [] and res.walk_end == 0
    res = impl.scan_pages(b"", start=BASE)
    assert res.walk_end == BASE


CATS8 = [W, W, P | W, 0, 0, P, P, W | F, 0, W]
EXPECTED8 = [(pg(0), pg(2), W), (pg(2), pg(3), P | W), (pg(5), pg(7), P), (pg(7), pg(8), W | F),
             (pg(9), pg(10), W)]


@pytest.mark.parametrize("typecode", ["B", "H", "I", "Q", "L"])
def test_array_item_sizes(impl, typecode):
    res = scan(impl, CATS8, typecode, masks=Masks(anyof=W | P))
    assert regions(res) == EXPECTED8
    assert res.walk_end == pg(10)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32, np.uint64, np.uintp,
                                   np.dtype("<u8"), np.dtype("=u4")])
def test_numpy_item_sizes(impl, dtype):
    res = impl.scan_pages(np.array(CATS8, dtype=dtype), start=BASE, masks=Masks(anyof=W | P))
    assert regions(res) == EXPECTED8
    assert res.walk_end == pg(10)


def test_other_buffer_objects(impl):
    data = bytes(CATS8)
    for obj in (data, bytearray(data), memoryview(data), memoryview(bytearray(data))):
        res = impl.scan_pages(obj, start=BASE, masks=Masks(anyof=W | P))
        assert regions(res) == EXPECTED8
    # a contiguous slice of a numpy array
    arr = np.array([0] * 3 + CATS8, dtype=np.uint16)
    res = impl.scan_pages(arr[3:], start=BASE, masks=Masks(anyof=W | P))
    assert regions(res) == EXPECTED8
    # a memoryview cast to 'Q'
    mv = memoryview(array.array("Q", CATS8)).cast("B").cast("Q")
    assert regions(impl.scan_pages(mv, start=BASE, masks=Masks(anyof=W | P))) == EXPECTED8


def test_wide_values_use_only_low_bits(impl):
    cats = np.array([W | (1 << 20), W | (1 << 31), W], dtype=np.uint32)
    res = impl.scan_pages(cats, start=BASE)
    assert regions(res) == [(pg(0), pg(3), W)]
    cats = np.array([W | 0xFE00, W], dtype=np.uint16)
    assert regions(impl.scan_pages(cats, start=BASE)) == [(pg(0), pg(2), W)]


@pytest.mark.parametrize("ps", [1, 2, 512, 8192, 65536, 1 << 21, 1 << 30, 1 << 40])
def test_page_sizes(impl, ps):
    start = 3 * ps
    res = scan(impl, [W, W, 0, P, W], start=start, page_size=ps, masks=Masks(anyof=W | P))
    assert regions(res) == [(start, start + 2 * ps, W), (start + 3 * ps, start + 4 * ps, P),
                            (start + 4 * ps, start + 5 * ps, W)]
    assert res.walk_end == start + 5 * ps
    assert res.regions.pages(ps) == 4
    res = scan(impl, [W, W, 0, P, W], start=start, page_size=ps, max_pages=2,
               masks=Masks(anyof=W | P))
    assert res.walk_end == start + 3 * ps


def test_start_zero_and_top_of_address_space(impl):
    res = scan(impl, [W, W], start=0)
    assert regions(res) == [(0, 2 * PS, W)] and res.walk_end == 2 * PS
    top = U64_MAX + 1 - 2 * PS - PS      # the range ends at 2**64 - 4096
    res = scan(impl, [W, W], start=top)
    assert regions(res) == [(top, top + 2 * PS, W)]
    assert res.walk_end == top + 2 * PS == U64_MAX + 1 - PS
    res = scan(impl, [W], start=top, page_size=PS, max_regions=0)
    assert res.walk_end == top


def test_start_accepts_index_types(impl):
    res = scan(impl, [W], start=np.uint64(BASE), page_size=np.int64(PS), max_pages=np.int32(1),
               max_regions=np.uint8(1))
    assert regions(res) == [(pg(0), pg(1), W)]
    assert type(res.walk_end) is int


# --------------------------------------------------------------- bad input


def _cats():
    return array.array("B", [W, W])


BAD_SCAN_CALLS = [
    # (id, callable(impl), exception type, substrings of the message)
    ("float64", lambda m: m.scan_pages(np.zeros(3, np.float64)), TypeError, ["categories"]),
    ("float32", lambda m: m.scan_pages(np.zeros(3, np.float32)), TypeError, ["categories"]),
    ("array-d", lambda m: m.scan_pages(array.array("d", [1.0])), TypeError, ["categories"]),
    ("array-f", lambda m: m.scan_pages(array.array("f", [1.0])), TypeError, ["categories"]),
    ("array-q", lambda m: m.scan_pages(array.array("q", [1])), TypeError,
     ["categories", "signed"]),
    ("array-b", lambda m: m.scan_pages(array.array("b", [1])), TypeError,
     ["categories", "signed"]),
    ("np-int64", lambda m: m.scan_pages(np.zeros(3, np.int64)), TypeError,
     ["categories", "signed"]),
    ("np-int8", lambda m: m.scan_pages(np.zeros(3, np.int8)), TypeError,
     ["categories", "signed"]),
    ("np-bool", lambda m: m.scan_pages(np.zeros(3, np.bool_)), TypeError, ["categories"]),
    ("np-2d", lambda m: m.scan_pages(np.zeros((2, 3), np.uint64)), ValueError,
     ["categories", "1-dimensional"]),
    ("np-0d", lambda m: m.scan_pages(np.uint64(3)), (TypeError, ValueError), ["categories"]),
    ("np-strided", lambda m: m.scan_pages(np.zeros(10, np.uint64)[::2]), ValueError,
     ["categories", "contiguous"]),
    ("np-reversed", lambda m: m.scan_pages(np.zeros(10, np.uint8)[::-1]), ValueError,
     ["categories", "contiguous"]),
    ("np-bigendian", lambda m: m.scan_pages(np.zeros(3, ">u8")), TypeError,
     ["categories", "big-endian"]),
    ("np-bigendian-u4", lambda m: m.scan_pages(np.zeros(3, ">u4")), TypeError,
     ["categories", "big-endian"]),
    ("list", lambda m: m.scan_pages([1, 2, 3]), TypeError, ["categories", "list"]),
    ("none", lambda m: m.scan_pages(None), TypeError, ["categories"]),
    ("str", lambda m: m.scan_pages("abc"), TypeError, ["categories"]),
    ("int", lambda m: m.scan_pages(5), TypeError, ["categories"]),
    ("start-unaligned", lambda m: m.scan_pages(_cats(), start=BASE + 1), ValueError,
     ["start", "aligned"]),
    ("start-unaligned-ps", lambda m: m.scan_pages(_cats(), start=4096, page_size=8192),
     ValueError, ["start", "aligned"]),
    ("start-negative", lambda m: m.scan_pages(_cats(), start=-4096), ValueError, ["start"]),
    ("start-float", lambda m: m.scan_pages(_cats(), start=4096.0), TypeError, ["start"]),
    ("start-str", lambda m: m.scan_pages(_cats(), start="0"), TypeError, ["start"]),
    ("start-none", lambda m: m.scan_pages(_cats(), start=None), TypeError, ["start"]),
    ("start-bool", lambda m: m.scan_pages(_cats(), start=False), TypeError, ["start"]),
    ("start-2**64", lambda m: m.scan_pages(_cats(), start=1 << 64), ValueError, ["start"]),
    ("ps-3", lambda m: m.scan_pages(_cats(), page_size=3), ValueError,
     ["page_size", "power of two"]),
    ("ps-6144", lambda m: m.scan_pages(_cats(), page_size=6144), ValueError,
     ["page_size", "power of two"]),
    ("ps-0", lambda m: m.scan_pages(_cats(), page_size=0), ValueError, ["page_size"]),
    ("ps-negative", lambda m: m.scan_pages(_cats(), page_size=-4096), ValueError, ["page_size"]),
    ("ps-huge", lambda m: m.scan_pages(_cats(), page_size=1 << 41), ValueError, ["page_size"]),
    ("ps-float", lambda m: m.scan_pages(_cats(), page_size=4096.0), TypeError, ["page_size"]),
    ("ps-bool", lambda m: m.scan_pages(_cats(), page_size=True), TypeError, ["page_size"]),
    ("ps-none", lambda m: m.scan_pages(_cats(), page_size=None), TypeError, ["page_size"]),
    ("max_pages-negative", lambda m: m.scan_pages(_cats(), max_pages=-1), ValueError,
     ["max_pages"]),
    ("max_pages-float", lambda m: m.scan_pages(_cats(), max_pages=1.0), TypeError,
     ["max_pages"]),
    ("max_pages-str", lambda m: m.scan_pages(_cats(), max_pages="1"), TypeError,
     ["max_pages"]),
    ("max_pages-none", lambda m: m.scan_pages(_cats(), max_pages=None), TypeError,
     ["max_pages"]),
    ("max_pages-bool", lambda m: m.scan_pages(_cats(), max_pages=True), TypeError,
     ["max_pages"]),
    ("max_pages-2**64", lambda m: m.scan_pages(_cats(), max_pages=1 << 64), ValueError,
     ["max_pages"]),
    ("max_regions-negative", lambda m: m.scan_pages(_cats(), max_regions=-1), ValueError,
     ["max_regions"]),
    ("max_regions-float", lambda m: m.scan_pages(_cats(), max_regions=2.0), TypeError,
     ["max_regions"]),
    ("max_regions-str", lambda m: m.scan_pages(_cats(), max_regions="2"), TypeError,
     ["max_regions"]),
    ("max_regions-2**63", lambda m: m.scan_pages(_cats(), max_regions=1 << 63), ValueError,
     ["max_regions"]),
    ("masks-int", lambda m: m.scan_pages(_cats(), masks=0x1FF), TypeError, ["masks"]),
    ("masks-tuple", lambda m: m.scan_pages(_cats(), masks=(0, 0, 0, 0x1FF)), TypeError,
     ["masks"]),
    ("masks-dict", lambda m: m.scan_pages(_cats(), masks={"required": W}), TypeError,
     ["masks"]),
    ("masks-category", lambda m: m.scan_pages(_cats(), masks=Category.WRITTEN), TypeError,
     ["masks"]),
    ("overflow", lambda m: m.scan_pages(_cats(), start=(1 << 64) - 4096), ValueError,
     ["overflows"]),
    ("overflow-far", lambda m: m.scan_pages(np.zeros(1000, np.uint8), start=(1 << 64) - 8192),
     ValueError, ["overflows"]),
    ("overflow-ps", lambda m: m.scan_pages(_cats(), start=1 << 63, page_size=1 << 40),
     None, None),  # fits: 2 * 2**40 above 2**63
    ("overflow-end-exactly-2**64",
     lambda m: m.scan_pages(_cats(), start=(1 << 64) - 2 * 4096), ValueError, ["overflows"]),
]


@pytest.mark.parametrize("call,exc,words", [c[1:] for c in BAD_SCAN_CALLS],
                         ids=[c[0] for c in BAD_SCAN_CALLS])
def test_scan_pages_bad_input(impl, call, exc, words):
    if exc is None:
        call(impl)          # a boundary case that must be accepted
        return
    with pytest.raises(exc) as info:
        call(impl)
    msg = str(info.value)
    for w in words:
        assert w in msg, (w, msg)


@pytest.mark.parametrize("call", [c[1] for c in BAD_SCAN_CALLS if c[2] is not None],
                         ids=[c[0] for c in BAD_SCAN_CALLS if c[2] is not None])
def test_bad_input_same_error_in_both(core, call):
    errs = []
    for m in (core, _reference):
        with pytest.raises(Exception) as info:
            call(m)
        errs.append((type(info.value), str(info.value)))
    assert errs[0] == errs[1]


def test_overflow_whole_address_space(impl):
    # 2**24 pages of 2**40 bytes from 0 end exactly at 2**64: not representable
    cats = np.zeros(1 << 24, np.uint8)
    with pytest.raises(ValueError, match="overflows"):
        impl.scan_pages(cats, start=0, page_size=1 << 40)
    # one page less fits; a stop on the page at address 0 reports walk_end 0
    res = impl.scan_pages(cats[1:], start=0, page_size=1 << 40, max_regions=0)
    assert regions(res) == [] and res.walk_end == 0
    res = impl.scan_pages(cats[1:], start=0, page_size=1 << 40, max_pages=1)
    assert regions(res) == [(0, 1 << 40, 0)] and res.walk_end == 1 << 40


@pytest.mark.parametrize("name", ["required", "anyof", "excluded", "return_mask"])
@pytest.mark.parametrize("value,exc", [(0x200, ValueError), (0x400, ValueError),
                                       (1 << 63, ValueError), (-1, ValueError),
                                       (1.0, TypeError), (True, TypeError), ("1", TypeError),
                                       (None, TypeError)])
def test_masks_bad_bits(name, value, exc):
    with pytest.raises(exc, match=name):
        Masks(**{name: value})


@pytest.mark.parametrize("name", ["inverted", "mask", "anyof", "return_mask"])
@pytest.mark.parametrize("value,exc", [(0x200, ValueError), (0x3FF, ValueError),
                                       (1 << 64, ValueError), (-2, ValueError),
                                       (2.0, TypeError), (False, TypeError)])
def test_from_kernel_bad_bits(name, value, exc):
    with pytest.raises(exc, match=name):
        Masks.from_kernel(**{name: value})


def test_from_kernel_is_keyword_only():
    with pytest.raises(TypeError):
        Masks.from_kernel(0, 0, 0, 0)  # type: ignore[misc]


def test_masks_accept_category_and_numpy_ints():
    m = Masks(required=Category.WRITTEN | Category.PRESENT, excluded=Category.FILE)
    assert m.mask == W | P | F
    assert Masks(required=int(W)) == Masks(required=Category.WRITTEN)


# ------------------------------------------------------------------ RegionArray


@pytest.fixture
def sample(impl):
    res = scan(impl, [W, W, P, 0, W | P, W | P, W | P], masks=Masks(anyof=W | P))
    assert regions(res) == [(pg(0), pg(2), W), (pg(2), pg(3), P), (pg(4), pg(7), W | P)]
    return res.regions


def test_regionarray_numpy_view(impl, sample):
    a = np.asarray(sample)
    assert a.shape == (3, 3)
    assert a.dtype == np.uint64
    assert a.tolist() == [[pg(0), pg(2), W], [pg(2), pg(3), P], [pg(4), pg(7), W | P]]
    assert not a.flags.writeable
    b = np.asarray(sample)
    assert np.shares_memory(a, b)              # no copy: both views of the same memory
    assert a.__array_interface__["data"][0] == b.__array_interface__["data"][0]
    with pytest.raises(ValueError):
        a[0, 0] = 1


def test_regionarray_numpy_view_empty(impl):
    a = np.asarray(impl.RegionArray())
    assert a.shape == (0, 3) and a.dtype == np.uint64


def test_regionarray_memoryview_method(impl, sample):
    mv = sample.memoryview()
    assert mv.readonly
    assert mv.format in ("Q", "L") and mv.itemsize == 8
    assert mv.shape == (3, 3)
    assert mv.tolist() == [[pg(0), pg(2), W], [pg(2), pg(3), P], [pg(4), pg(7), W | P]]
    assert np.shares_memory(np.asarray(mv), np.asarray(sample))
    assert sample.nbytes == 72


def test_compiled_regionarray_buffer_protocol(core):
    res = scan(core, [W, W, P])
    ra = res.regions
    mv = memoryview(ra)
    assert mv.shape == (2, 3)
    assert mv.format == "Q"
    assert mv.readonly
    assert mv.ndim == 2 and mv.strides == (24, 8) and mv.nbytes == 48
    assert mv.tolist() == [[pg(0), pg(2), W], [pg(2), pg(3), P]]
    assert np.shares_memory(np.asarray(mv), np.asarray(ra))
    with pytest.raises(TypeError):
        mv[0, 0] = 5
    mv.release()
    empty = memoryview(core.RegionArray())
    assert empty.shape == (0, 3) and empty.format == "Q"


def test_compiled_regionarray_refuses_writable_buffer(core):
    import ctypes
    ra = core.RegionArray([(0, PS, W)])
    with pytest.raises((BufferError, TypeError)):
        (ctypes.c_uint64 * 3).from_buffer(ra)
    ra.append(PS, 2 * PS, P)       # the failed request left no export behind
    assert len(ra) == 2


def test_compiled_regionarray_no_growth_while_viewed(core):
    ra = core.RegionArray([(0, PS, W)])
    mv = memoryview(ra)
    with pytest.raises(BufferError):
        ra.append(PS, 2 * PS, P)   # capacity would suffice: refused all the same
    assert len(ra) == 1 and mv.shape == (1, 3)
    a = np.asarray(ra)
    mv.release()
    with pytest.raises(BufferError):
        ra.append(PS, 2 * PS, P)   # the numpy array still holds an export
    del a
    ra.append(PS, 2 * PS, P)
    assert ra == [(0, PS, W), (PS, 2 * PS, P)]
    with memoryview(ra) as m2:
        assert m2.shape == (2, 3)
        with pytest.raises(BufferError):
            ra.append(2 * PS, 3 * PS, 0)
    for i in range(200):       # grows past its first allocation once no view is left
        ra.append((i + 2) * PS, (i + 3) * PS, 0)
    assert len(ra) == 202 and ra[-1] == (201 * PS, 202 * PS, 0)


def test_append_checks_values(impl):
    ra = impl.RegionArray()
    with pytest.raises(ValueError, match="start must be >= 0"):
        ra.append(-1, 0, 0)
    with pytest.raises(ValueError, match="end must be <= "):
        ra.append(0, 1 << 64, 0)
    assert len(ra) == 0
    ra.append(0, PS, W)
    assert ra == [(0, PS, W)]


def test_regionarray_iteration(impl, sample):
    items = list(sample)
    assert all(type(r) is PageRegion for r in items)
    assert items[0].start == pg(0) and items[0].end == pg(2) and items[0].categories == W
    assert [tuple(r) for r in items] == [(pg(0), pg(2), W), (pg(2), pg(3), P),
                                         (pg(4), pg(7), W | P)]
    assert sample.tolist() == items
    assert len(sample) == 3
    assert len(impl.RegionArray()) == 0 and list(impl.RegionArray()) == []


def test_regionarray_totals(impl, sample):
    assert sample.pages() == 6
    assert sample.pages(PS) == 6
    assert sample.pages(1) == 6 * PS
    assert sample.pages(2 * PS) == 1 + 0 + 1     # whole pages of that size per region
    addrs = sample.addresses()
    assert isinstance(addrs, array.array) and addrs.typecode in ("Q", "L")
    assert list(addrs) == [pg(0), pg(1), pg(2), pg(4), pg(5), pg(6)]
    # another page size: as range(start, end, page_size) per region
    assert list(sample.addresses(2 * PS)) == [pg(0), pg(2), pg(4), pg(6)]
    assert list(impl.RegionArray().addresses()) == [] and impl.RegionArray().pages() == 0
    with pytest.raises(ValueError, match="page_size"):
        sample.pages(3)
    with pytest.raises(ValueError, match="page_size"):
        sample.addresses(0)


def test_regionarray_totals_odd_regions(impl):
    # regions that are not whole pages of the size asked for, or empty/backwards
    top = (1 << 64) - 2 * PS
    ra = impl.RegionArray([(0, 2 * PS, 0), (2 * PS, 3 * PS, 0), (4 * PS, 7 * PS, 0),
                           (9 * PS, 9 * PS, 0), (5, 3, 0), (top, (1 << 64) - 1, 1)])
    assert ra.pages(2 * PS) == 1 + 0 + 1 + 0 + 0 + 0
    assert list(ra.addresses(2 * PS)) == [0, 2 * PS, 4 * PS, 6 * PS, top]
    assert ra.pages() == 2 + 1 + 3 + 1
    assert list(ra.addresses()) == [0, PS, 2 * PS, 4 * PS, 5 * PS, 6 * PS, top, top + PS]
    assert len(ra.addresses(1 << 40)) == 4


def test_regionarray_totals_huge(impl):
    # overlapping user-built regions: the page total exceeds 64 bits, and an
    # address list that large is refused up front (never a short buffer overrun)
    ra = impl.RegionArray([(0, 1, 0), (0, U64_MAX, 0), (0, U64_MAX, 0)])
    assert ra.pages(1) == 1 + 2 * U64_MAX
    for rs in ([(0, U64_MAX, 0)], [(0, 1 << 62, 0)] * 3, [(0, 1, 0), (0, U64_MAX, 0)]):
        with pytest.raises(MemoryError):
            impl.RegionArray(rs).addresses(1)
    assert len(impl.RegionArray([(0, 1 << 50, 0)]).addresses(1 << 40)) == 1 << 10


def test_regionarray_indexing(impl, sample):
    assert sample[0] == (pg(0), pg(2), W) and type(sample[0]) is PageRegion
    assert sample[2] == (pg(4), pg(7), W | P)
    assert sample[-1] == sample[2]
    assert sample[-3] == sample[0]
    assert sample[np.int64(1)] == (pg(2), pg(3), P)
    for bad in (3, -4, 1 << 70, -(1 << 70)):
        with pytest.raises(IndexError):
            sample[bad]
    with pytest.raises(IndexError):
        impl.RegionArray()[0]
    with pytest.raises(TypeError):
        sample[1.0]
    with pytest.raises(TypeError):
        sample["0"]


def test_regionarray_slicing(impl, sample):
    s = sample[1:]
    assert isinstance(s, impl.RegionArray)
    assert s == [(pg(2), pg(3), P), (pg(4), pg(7), W | P)]
    assert sample[::-1] == list(reversed(list(sample)))
    assert sample[::2] == [sample[0], sample[2]]
    assert sample[5:] == [] and len(sample[5:]) == 0
    assert sample[-2:-1] == [sample[1]]
    assert sample[:] == sample
    assert np.asarray(s).shape == (2, 3)


def test_regionarray_equality(impl, sample):
    as_list = [(pg(0), pg(2), W), (pg(2), pg(3), P), (pg(4), pg(7), W | P)]
    assert sample == as_list
    assert sample == [list(t) for t in as_list]
    assert sample == [PageRegion(*t) for t in as_list]
    assert sample == impl.RegionArray(as_list)
    assert sample == _reference.RegionArray(as_list)
    assert sample != as_list[:2]
    assert sample != [*as_list, (pg(8), pg(9), 0)]
    assert sample != [(pg(0), pg(2), P), *as_list[1:]]
    assert not (sample == 5)
    assert sample != 5
    assert impl.RegionArray() == []
    assert repr(sample).startswith("RegionArray(")


def test_regionarray_constructor(impl):
    ra = impl.RegionArray([(0, PS, W), PageRegion(PS, 2 * PS, P), [2 * PS, 3 * PS, 0]])
    assert len(ra) == 3 and ra[1] == (PS, 2 * PS, P)
    with pytest.raises((TypeError, ValueError)):
        impl.RegionArray([(0, PS)])
    with pytest.raises(ValueError, match=r"regions\[0\] start must be >= 0"):
        impl.RegionArray([(-1, 0, 0)])


def test_regionarray_cross_implementation(core):
    cats = array.array("B", [W, W, P, 0, P])
    a = core.scan_pages(cats, start=BASE).regions
    b = _reference.scan_pages(cats, start=BASE).regions
    assert a == b and b == a
    assert np.array_equal(np.asarray(a), np.asarray(b))


# -------------------------------------------------------- pagemap (§7)

B55, B56, B57, B58, B61, B62, B63 = (1 << 55, 1 << 56, 1 << 57, 1 << 58, 1 << 61, 1 << 62,
                                     1 << 63)
PFN = 0x12345
ZERO_PFN = 0x4242
SWP_MARKER_UFFD_WP = 31 | (1 << 5)      # swap type 31, offset 1
SWP_MARKER_GUARD = 31 | (4 << 5)        # swap type 31, offset 4

PAGEMAP_CASES = [
    # (id, entry, expected categories with none_written=False)
    ("unmapped-or-none", 0, 0),
    ("soft-dirty-hole", B55, SD),
    ("present-anon", B63 | B56 | PFN, P | W),
    ("present-anon-shared", B63 | PFN, P | W),
    ("present-anon-no-pfn", B63, P | W),
    ("present-anon-uffd-wp", B63 | B57 | PFN, P),
    ("present-file", B63 | B61 | PFN, P | F | W),
    ("present-file-uffd-wp", B63 | B61 | B57, P | F),
    ("present-soft-dirty", B63 | B55 | B56 | PFN, P | W | SD),
    ("huge-zero-page", B63 | B61, P | F | W),
    ("swapped", B62 | (1 << 5) | 2, S | W),
    ("swapped-no-fields", B62, S | W),
    ("swapped-uffd-wp", B62 | B57 | (7 << 5), S),
    ("swapped-soft-dirty", B62 | B55, S | W | SD),
    ("uffd-wp-marker", B57 | B62 | SWP_MARKER_UFFD_WP, S),
    ("uffd-wp-marker-no-fields", B57 | B62, S),
    ("guard-marker", B58 | B62 | SWP_MARKER_GUARD, S | W | G),
    ("guard-marker-no-fields", B58 | B62, S | W | G),
    ("guard-marker-wp", B57 | B58 | B62, S | G),
    ("file-migration", B62 | B61, S | F | W),
    ("bits-59-60-ignored", B63 | (3 << 59), P | W),
]


@pytest.mark.parametrize("entry,expected", [c[1:] for c in PAGEMAP_CASES],
                         ids=[c[0] for c in PAGEMAP_CASES])
def test_pagemap_entry_kinds(impl, entry, expected):
    entries = array.array("Q", [entry])
    got = impl.pagemap_to_categories(entries)
    assert list(got) == [expected]
    is_none = entry & ~B55 == 0
    got = impl.pagemap_to_categories(entries, none_written=True)
    assert list(got) == [expected | (W if is_none else 0)]
    got = impl.pagemap_to_categories(entries, wpallowed=True)
    assert list(got) == [expected | WPA]
    got = impl.pagemap_to_categories(entries, wpallowed=True, none_written=True)
    assert list(got) == [expected | WPA | (W if is_none else 0)]


def test_pagemap_uffd_wp_marker_is_swapped_not_written(impl):
    [c] = impl.pagemap_to_categories(array.array("Q", [B57 | B62 | SWP_MARKER_UFFD_WP]))
    assert c & S and not c & W


def test_pagemap_zero_entries(impl):
    entries = np.zeros(4, np.uint64)
    assert list(impl.pagemap_to_categories(entries)) == [0] * 4
    assert list(impl.pagemap_to_categories(entries, none_written=False)) == [0] * 4
    assert list(impl.pagemap_to_categories(entries, none_written=True)) == [W] * 4
    entries[1] = B55
    assert list(impl.pagemap_to_categories(entries, none_written=True)) == [W, W | SD, W, W]


def test_pagemap_zero_pfn(impl):
    entries = array.array("Q", [B63 | ZERO_PFN, B63 | B56 | PFN, B63 | B55 | ZERO_PFN,
                                B62 | ZERO_PFN, ZERO_PFN, B63 | B61 | ZERO_PFN])
    got = impl.pagemap_to_categories(entries, zero_pfn=ZERO_PFN)
    assert list(got) == [P | W | Z, P | W, P | W | SD | Z, S | W, W, P | F | W | Z]
    # without zero_pfn PFNZERO is never derived
    got = impl.pagemap_to_categories(entries)
    assert list(got) == [P | W, P | W, P | W | SD, S | W, W, P | F | W]
    # the PFN field is bits 0-54: flags above it do not disturb the comparison
    got = impl.pagemap_to_categories(array.array("Q", [B63 | B57 | B56 | ZERO_PFN]),
                                     zero_pfn=ZERO_PFN)
    assert list(got) == [P | Z]
    # PFNs read as 0 without CAP_SYS_ADMIN: zero_pfn=0 then flags every present page
    got = impl.pagemap_to_categories(array.array("Q", [B63, 0]), zero_pfn=0)
    assert list(got) == [P | W | Z, 0]


def test_pagemap_never_derives_huge(impl):
    entries = np.array([B63 | B56 | PFN, B63 | B61, B62, B58 | B62, 0, B55], np.uint64)
    out = impl.pagemap_to_categories(entries, wpallowed=True, none_written=True, zero_pfn=PFN)
    assert all(not int(c) & H for c in out)
    assert all(int(c) & ~0x1FF == 0 for c in out)


def test_pagemap_returns_array(impl):
    got = impl.pagemap_to_categories(np.array([B63, 0], np.uint64))
    assert isinstance(got, array.array) and got.itemsize == 8
    assert list(got) == [P | W, 0]
    got = impl.pagemap_to_categories(array.array("Q"))
    assert isinstance(got, array.array) and len(got) == 0
    got = impl.pagemap_to_categories(array.array("L", [B62]))
    assert list(got) == [S | W]


def test_pagemap_result_feeds_scan(impl):
    entries = array.array("Q", [B63 | PFN, B63 | PFN, 0, B62, B57 | B62, B63 | B57])
    cats = impl.pagemap_to_categories(entries)
    res = impl.scan_pages(cats, start=BASE, masks=Masks(required=W))
    assert regions(res) == [(pg(0), pg(2), P | W), (pg(3), pg(4), S | W)]


def test_pagemap_out(impl):
    entries = np.array([B63 | PFN, B62, 0, B58 | B62], np.uint64)
    out = np.full(4, 0xDEAD, np.uint64)
    got = impl.pagemap_to_categories(entries, out=out)
    assert got is out
    assert out.tolist() == [P | W, S | W, 0, S | W | G]
    out2 = array.array("Q", [7] * 4)
    assert impl.pagemap_to_categories(entries, out=out2, wpallowed=True) is out2
    assert list(out2) == [P | W | WPA, S | W | WPA, WPA, S | W | G | WPA]
    out3 = bytearray(32)
    assert impl.pagemap_to_categories(entries, out=memoryview(out3).cast("Q")) is not None
    assert list(memoryview(out3).cast("Q")) == [P | W, S | W, 0, S | W | G]
    empty = np.zeros(0, np.uint64)
    assert impl.pagemap_to_categories(empty, out=np.zeros(0, np.uint64)).shape == (0,)


def test_pagemap_out_in_place(impl):
    buf = np.array([B63 | PFN, B62, 0, B57 | B62], np.uint64)
    got = impl.pagemap_to_categories(buf, out=buf, none_written=True)
    assert got is buf
    assert buf.tolist() == [P | W, S | W, W, S]


def _ro(a):
    a.flags.writeable = False
    return a


E2 = np.array([B63, B62], np.uint64)

BAD_PAGEMAP_CALLS = [
    ("entries-u32", lambda m: m.pagemap_to_categories(np.zeros(2, np.uint32)), TypeError,
     ["entries", "64-bit"]),
    ("entries-u8", lambda m: m.pagemap_to_categories(bytes(16)), TypeError, ["entries"]),
    ("entries-i64", lambda m: m.pagemap_to_categories(np.zeros(2, np.int64)), TypeError,
     ["entries", "signed"]),
    ("entries-f64", lambda m: m.pagemap_to_categories(np.zeros(2, np.float64)), TypeError,
     ["entries"]),
    ("entries-list", lambda m: m.pagemap_to_categories([B63]), TypeError, ["entries"]),
    ("entries-2d", lambda m: m.pagemap_to_categories(np.zeros((2, 2), np.uint64)), ValueError,
     ["entries"]),
    ("entries-strided", lambda m: m.pagemap_to_categories(np.zeros(4, np.uint64)[::2]),
     ValueError, ["entries", "contiguous"]),
    ("entries-bigendian", lambda m: m.pagemap_to_categories(np.zeros(2, ">u8")), TypeError,
     ["entries", "big-endian"]),
    ("out-short", lambda m: m.pagemap_to_categories(E2, out=np.zeros(1, np.uint64)),
     ValueError, ["out"]),
    ("out-long", lambda m: m.pagemap_to_categories(E2, out=np.zeros(3, np.uint64)),
     ValueError, ["out"]),
    ("out-u32", lambda m: m.pagemap_to_categories(E2, out=np.zeros(2, np.uint32)), TypeError,
     ["out"]),
    ("out-i64", lambda m: m.pagemap_to_categories(E2, out=np.zeros(2, np.int64)), TypeError,
     ["out", "signed"]),
    ("out-readonly", lambda m: m.pagemap_to_categories(E2, out=_ro(np.zeros(2, np.uint64))),
     TypeError, ["out", "writable"]),
    ("out-bytes", lambda m: m.pagemap_to_categories(E2, out=bytes(16)), TypeError, ["out"]),
    ("out-readonly-mv",
     lambda m: m.pagemap_to_categories(E2, out=memoryview(bytes(16)).cast("Q")), TypeError,
     ["out", "writable"]),
    ("out-list", lambda m: m.pagemap_to_categories(E2, out=[0, 0]), TypeError, ["out"]),
    ("out-strided", lambda m: m.pagemap_to_categories(E2, out=np.zeros(4, np.uint64)[::2]),
     ValueError, ["out", "contiguous"]),
    ("out-2d", lambda m: m.pagemap_to_categories(E2, out=np.zeros((2, 1), np.uint64)),
     ValueError, ["out"]),
    ("zero_pfn-negative", lambda m: m.pagemap_to_categories(E2, zero_pfn=-1), ValueError,
     ["zero_pfn"]),
    ("zero_pfn-float", lambda m: m.pagemap_to_categories(E2, zero_pfn=1.0), TypeError,
     ["zero_pfn"]),
    ("zero_pfn-2**64", lambda m: m.pagemap_to_categories(E2, zero_pfn=1 << 64), ValueError,
     ["zero_pfn"]),
]


@pytest.mark.parametrize("call,exc,words", [c[1:] for c in BAD_PAGEMAP_CALLS],
                         ids=[c[0] for c in BAD_PAGEMAP_CALLS])
def test_pagemap_bad_input(impl, call, exc, words):
    with pytest.raises(exc) as info:
        call(impl)
    for w in words:
        assert w in str(info.value), (w, str(info.value))


def test_pagemap_bad_out_leaves_it_alone(impl):
    out = np.full(1, 99, np.uint64)
    with pytest.raises(ValueError):
        impl.pagemap_to_categories(E2, out=out)
    assert out.tolist() == [99]
    out = np.full(2, 99, np.uint64)
    with pytest.raises(ValueError):
        impl.pagemap_to_categories(E2, out=out, zero_pfn=-1)
    assert out.tolist() == [99, 99]


def test_pagemap_keyword_only(impl):
    with pytest.raises(TypeError):
        impl.pagemap_to_categories(E2, True)


# --------------------------------------------------------------------- coalesce


def test_coalesce_merges_at_seams(impl):
    got = impl.coalesce([(0, PS, W)], [(PS, 2 * PS, W)])
    assert isinstance(got, impl.RegionArray)
    assert got == [(0, 2 * PS, W)]
    got = impl.coalesce([(0, PS, W)], [(PS, 2 * PS, W)], [(2 * PS, 5 * PS, W), (6 * PS, 7 * PS, W)])
    assert got == [(0, 5 * PS, W), (6 * PS, 7 * PS, W)]
    # an empty part in between does not stop the merge
    assert impl.coalesce([(0, PS, W)], [], [(PS, 2 * PS, W)]) == [(0, 2 * PS, W)]


def test_coalesce_keeps_apart(impl):
    assert impl.coalesce([(0, PS, W)], [(PS, 2 * PS, P)]) == [(0, PS, W), (PS, 2 * PS, P)]
    assert impl.coalesce([(0, PS, W)], [(2 * PS, 3 * PS, W)]) == [(0, PS, W),
                                                                   (2 * PS, 3 * PS, W)]
    assert impl.coalesce([(0, PS, 0)], [(PS, 2 * PS, W)]) == [(0, PS, 0), (PS, 2 * PS, W)]


def test_coalesce_inside_a_part(impl):
    assert impl.coalesce([(0, PS, W), (PS, 2 * PS, W)]) == [(0, 2 * PS, W)]


def test_coalesce_empty(impl):
    assert impl.coalesce() == []
    assert impl.coalesce([], []) == []
    assert isinstance(impl.coalesce(), impl.RegionArray)


def test_coalesce_accepts_regionarrays_and_lists(impl):
    a = scan(impl, [W, W], start=BASE).regions
    b = impl.RegionArray([(pg(2), pg(3), W), (pg(3), pg(4), P)])
    c = [PageRegion(pg(4), pg(5), P), [pg(6), pg(7), P]]
    d = _reference.RegionArray([(pg(7), pg(8), P)])
    got = impl.coalesce(a, b, c, d, iter([(pg(8), pg(9), P)]))
    assert got == [(pg(0), pg(3), W), (pg(3), pg(5), P), (pg(6), pg(9), P)]
    # the inputs are not modified
    assert a == [(pg(0), pg(2), W)] and len(b) == 2


def test_coalesce_of_viewed_regionarray(impl):
    a = impl.RegionArray([(0, PS, W)])
    view = np.asarray(a)
    got = impl.coalesce(a, [(PS, 2 * PS, W)])
    assert got == [(0, 2 * PS, W)]
    assert view.tolist() == [[0, PS, W]]


def test_coalesce_bad_parts(impl):
    with pytest.raises(TypeError):
        impl.coalesce(5)
    with pytest.raises((TypeError, ValueError)):
        impl.coalesce([(0, PS)])
    with pytest.raises(ValueError, match=r"parts\[0\]\[0\] start must be >= 0"):
        impl.coalesce([(-1, PS, 0)])


# ------------------------------------------------------------------------ Masks


def test_masks_v7_to_kernel_mapping():
    m = Masks(required=P | W, anyof=F | S | SD, excluded=S | G, return_mask=P | W)
    assert m.mask == P | W | S | G            # required | excluded
    assert m.inverted == S | G                # excluded
    assert m.anyof == F | SD                  # anyof & ~excluded
    assert m.return_mask == P | W
    assert not m.matches_nothing
    assert m.to_kernel() == (S | G, P | W | S | G, F | SD, P | W)


def test_masks_defaults():
    m = Masks()
    assert m.to_kernel() == (0, 0, 0, 0x1FF)
    assert Masks.from_kernel().to_kernel() == (0, 0, 0, 0x1FF)
    assert Masks() == Masks.from_kernel()
    assert pagescan.ALL_CATEGORIES == 0x1FF


def test_masks_from_kernel_taken_as_is():
    m = Masks.from_kernel(inverted=P, mask=W, anyof=P, return_mask=0)
    assert m.to_kernel() == (P, W, P, 0)
    assert not m.matches_nothing
    # inverted bits outside mask are kept: they still apply to anyof
    assert m.inverted == P


def test_masks_matches_nothing():
    m = Masks(anyof=W | P, excluded=W | P | F)
    assert m.matches_nothing
    with pytest.raises(ValueError, match="matches_nothing"):
        m.to_kernel()
    assert not any(m.matches(c) for c in range(512))
    assert "nothing" in repr(m)
    # anyof only partly excluded: fine
    m = Masks(anyof=W | P, excluded=W)
    assert not m.matches_nothing and m.anyof == P
    # anyof == 0 never means nothing
    assert not Masks(excluded=0x1FF).matches_nothing


def test_masks_matches():
    m = Masks(required=P, anyof=W | F, excluded=S)
    for c in range(512):
        want = (c & P == P) and not (c & S) and bool(c & (W | F))
        assert m.matches(c) == want, c
        assert not m.matches(c | HOLE)
    k = Masks.from_kernel(inverted=P, anyof=P)
    assert [c for c in range(16) if k.matches(c)] == [c for c in range(16) if not c & P]
    assert Masks().matches(0) and not Masks().matches(HOLE)
    assert Masks.from_kernel(inverted=0x1FF, mask=0x1FF).matches(0)
    assert not Masks.from_kernel(inverted=0x1FF, mask=0x1FF).matches(1)


@pytest.mark.parametrize("req,anyof,exc", [(0, 0, 0), (W, 0, 0), (0, W | P, 0), (0, 0, F),
                                           (P, W | F, F), (W, W, 0), (0, 0x1FF, 0x1F0),
                                           (0x1FF, 0, 0), (P, W, F | S)])
def test_masks_v7_semantics_exhaustive(req, anyof, exc):
    m = Masks(required=req, anyof=anyof, excluded=exc)
    for c in range(512):
        want = (c & req == req) and not (c & exc) and (anyof == 0 or bool(c & anyof))
        assert m.matches(c) == want, (c, m)


def test_masks_required_and_excluded_overlap():
    # a category both required and excluded can never be satisfied (issue 12.6)
    m = Masks(required=P | W, excluded=P)
    assert m.matches_nothing
    assert [c for c in range(512) if m.matches(c)] == []
    with pytest.raises(ValueError, match="matches_nothing"):
        m.to_kernel()


def test_masks_equality_and_hash():
    a = Masks(required=W, excluded=F)
    b = Masks.from_kernel(inverted=F, mask=W | F)
    assert a == b and hash(a) == hash(b)
    assert a != Masks(required=W)
    assert a != Masks(required=W, excluded=F, return_mask=W)
    assert len({a, b, Masks(required=W)}) == 2
    n1 = Masks(anyof=W, excluded=W)
    n2 = Masks(anyof=P, excluded=P | W)
    assert n1.matches_nothing and n2.matches_nothing
    assert n1 != Masks.from_kernel(inverted=W, mask=W)
    assert a != (F, W | F, 0, 0x1FF)
    assert (a == 5) is False


def test_masks_immutable():
    m = Masks(required=W)
    for name in ("inverted", "mask", "anyof", "return_mask", "matches_nothing", "other"):
        with pytest.raises(AttributeError):
            setattr(m, name, 1)
    with pytest.raises(AttributeError):
        del m.mask
    assert m.mask == W
    assert not hasattr(m, "__dict__")


@pytest.mark.parametrize("m", [Masks(), Masks(required=W, anyof=P | F, excluded=F, return_mask=W),
                               Masks(anyof=W, excluded=W),
                               Masks.from_kernel(inverted=P, mask=0, anyof=P, return_mask=0)],
                         ids=repr)
def test_masks_pickle(m):
    for proto in range(pickle.HIGHEST_PROTOCOL + 1):
        m2 = pickle.loads(pickle.dumps(m, proto))
        assert m2 == m and hash(m2) == hash(m)
        assert m2.matches_nothing == m.matches_nothing
        assert type(m2) is Masks
    import copy
    assert copy.copy(m) == m and copy.deepcopy(m) == m


def test_masks_repr():
    assert "WRITTEN" in repr(Masks(required=W))
    assert repr(Masks()).startswith("Masks.from_kernel(")


# ------------------------------------------------------------ implementation


def _implementation_in_subprocess(**env_changes):
    env = dict(os.environ)
    env.pop("PAGESCAN_PUREPYTHON", None)
    env.update(env_changes)
    out = subprocess.run(
        [sys.executable, "-c", "import pagescan; print(pagescan.IMPLEMENTATION)"],
        env=env, capture_output=True, text=True, check=True, timeout=60)
    return out.stdout.strip()


def test_env_var_forces_pure_python():
    assert _implementation_in_subprocess(PAGESCAN_PUREPYTHON="1") == "python"


def test_default_is_compiled():
    _need_core()
    assert _implementation_in_subprocess() == "cython"
    assert _implementation_in_subprocess(PAGESCAN_PUREPYTHON="0") == "cython"
    assert _implementation_in_subprocess(PAGESCAN_PUREPYTHON="") == "cython"


def test_implementation_matches_env():
    forced = os.environ.get("PAGESCAN_PUREPYTHON", "") not in ("", "0")
    if forced:
        assert pagescan.IMPLEMENTATION == "python"
        assert pagescan.scan_pages is _reference.scan_pages
    elif _core is not None:
        assert pagescan.IMPLEMENTATION == "cython"
        assert pagescan.scan_pages is _core.scan_pages
        assert pagescan.IMPORT_ERROR is None
    assert pagescan.IMPLEMENTATION in ("cython", "python")
    assert pagescan.RegionArray is importlib.import_module(
        "pagescan._core" if pagescan.IMPLEMENTATION == "cython" else "pagescan._reference"
    ).RegionArray


def test_compiled_core_loaded():
    """Fails, never skips, when the environment promises a compiled build."""
    expect = os.environ.get("PAGESCAN_EXPECT_COMPILED") == "1"
    if expect:
        assert pagescan.IMPLEMENTATION == "cython", (
            f"PAGESCAN_EXPECT_COMPILED=1 but pagescan.IMPLEMENTATION="
            f"{pagescan.IMPLEMENTATION!r} (import error: {pagescan.IMPORT_ERROR!r}; "
            f"PAGESCAN_PUREPYTHON={os.environ.get('PAGESCAN_PUREPYTHON')!r})")
        assert _core is not None
        assert _core.CORE_ABI == 1
        # the installed build is under test, not the source tree beside the tests
        source_tree = Path(__file__).resolve().parents[1] / "pagescan"
        assert Path(pagescan.__file__).resolve().parent != source_tree, pagescan.__file__
    elif pagescan.IMPLEMENTATION != "cython":
        pytest.skip("compiled core not loaded and PAGESCAN_EXPECT_COMPILED is not 1")


def test_public_api_reexports():
    for name in ("RegionArray", "scan_pages", "pagemap_to_categories", "coalesce"):
        assert getattr(pagescan, name) is getattr(
            _core if pagescan.IMPLEMENTATION == "cython" else _reference, name)


# ------------------------------------------- integer arguments (issue 12, item 16)


class _OddInt(int):
    """An int whose __index__ and __int__ disagree with its own value."""

    def __index__(self):
        return 0

    def __int__(self):
        return 0


# (id, value, expected exception or None, the value accepted)
INT_ARG_CASES = [
    ("float", 4096.7, TypeError, None),
    ("float-whole", 4096.0, TypeError, None),
    ("np-float64", np.float64(4096.0), TypeError, None),
    ("str", "4096", TypeError, None),
    ("none", None, TypeError, None),
    ("bool", True, TypeError, None),
    ("np-bool", np.bool_(True), TypeError, None),
    ("negative", -4096, ValueError, None),
    ("2**64", 1 << 64, ValueError, None),
    ("2**64-1", U64_MAX, None, U64_MAX),
    ("np-uint64", np.uint64(U64_MAX), None, U64_MAX),
    ("np-int32", np.int32(4096), None, 4096),
    ("np-uint8", np.uint8(3), None, 3),
    ("category", Category.WRITTEN | Category.PRESENT, None, W | P),
    ("int-subclass", _OddInt(8192), None, 8192),   # its own value, not __index__/__int__
]

# where a value goes: (id, callable(impl, v) -> RegionArray, name in the message)
REGION_VALUE_SITES = [
    ("init-start", lambda m, v: m.RegionArray([(0, 0, 0), (v, PS, W)]), "regions[1] start"),
    ("init-end", lambda m, v: m.RegionArray([(0, v, W)]), "regions[0] end"),
    ("init-categories", lambda m, v: m.RegionArray([PageRegion(0, PS, v)]),
     "regions[0] categories"),
    ("init-list", lambda m, v: m.RegionArray([[0, PS, v]]), "regions[0] categories"),
    ("append-start", lambda m, v: _appended(m, v, PS, W), "start"),
    ("append-end", lambda m, v: _appended(m, 0, v, W), "end"),
    ("append-categories", lambda m, v: _appended(m, 0, PS, v), "categories"),
    ("coalesce-start", lambda m, v: m.coalesce([], [(0, 0, 0), (v, PS, W)]),
     "parts[1][1] start"),
    ("coalesce-categories", lambda m, v: m.coalesce(iter([(0, PS, v)])),
     "parts[0][0] categories"),
]


def _appended(m, *values):
    ra = m.RegionArray()
    ra.append(*values)
    return ra


@pytest.mark.parametrize("case", INT_ARG_CASES, ids=[c[0] for c in INT_ARG_CASES])
@pytest.mark.parametrize("site", REGION_VALUE_SITES, ids=[s[0] for s in REGION_VALUE_SITES])
def test_region_values_are_checked(impl, site, case):
    """Floats were truncated by the compiled core (RegionArray([(4096.7, 8192.2, 2.9)])
    gave (4096, 8192, 2)); bools, negatives and values past 2**64 - 1 got through or
    raised a bare OverflowError. Both implementations: TypeError/ValueError naming
    the field, and the int's own value for what is accepted."""
    _sid, call, where = site
    _cid, value, exc, accepted = case
    if exc is not None:
        with pytest.raises(exc) as info:
            call(impl, value)
        assert str(info.value).startswith(where + " must "), str(info.value)
        return
    ra = call(impl, value)
    got = [tuple(r) for r in ra]
    assert accepted in got[-1]
    assert all(type(x) is int or type(x) is Category for r in got for x in r)


@pytest.mark.parametrize("case", [c for c in INT_ARG_CASES if c[2] is not None],
                         ids=[c[0] for c in INT_ARG_CASES if c[2] is not None])
@pytest.mark.parametrize("site", REGION_VALUE_SITES, ids=[s[0] for s in REGION_VALUE_SITES])
def test_region_values_same_error_in_both(core, site, case):
    errs = []
    for m in (core, _reference):
        with pytest.raises(Exception) as info:
            site[1](m, case[1])
        errs.append((type(info.value), str(info.value)))
    assert errs[0] == errs[1]


def test_region_float_example_from_issue(impl):
    with pytest.raises(TypeError, match=r"regions\[0\] start must be an int, not float"):
        impl.RegionArray([(4096.7, 8192.2, 2.9)])
    with pytest.raises(TypeError, match="start must be an int, not float"):
        impl.RegionArray().append(1.5, 2.5, 0)
    with pytest.raises(TypeError, match=r"parts\[0\]\[0\] end must be an int, not float"):
        impl.coalesce([(4096, 8192.2, 2)])


def test_region_shape_errors(impl):
    with pytest.raises(ValueError, match=r"regions\[0\] must be \(start, end, categories\)"):
        impl.RegionArray([(0, PS)])
    with pytest.raises(ValueError, match=r"regions\[0\] must be"):
        impl.RegionArray([(0, PS, W, 0)])
    with pytest.raises(TypeError):
        impl.RegionArray([5])
    with pytest.raises(TypeError):
        impl.RegionArray().append(0, PS)


def test_region_check_stops_at_the_bad_one(impl):
    ra = impl.RegionArray([(0, PS, W)])
    with pytest.raises(TypeError):
        ra.append(PS, 2 * PS, 1.0)
    assert ra == [(0, PS, W)]          # nothing half-added


SCAN_INT_ARGS = [
    # (keyword, value, expected regions, expected walk_end)
    ("start", _OddInt(2 * PS), [(2 * PS, 4 * PS, W)], 4 * PS),
    ("page_size", _OddInt(2 * PS), [(0, 4 * PS, W)], 4 * PS),
    ("max_pages", _OddInt(1), [(0, PS, W)], PS),
    ("max_regions", _OddInt(1), [(0, 2 * PS, W)], 2 * PS),
    ("start", np.uint64(2 * PS), [(2 * PS, 4 * PS, W)], 4 * PS),
    ("start", Category.WRITTEN * PS, [(2 * PS, 4 * PS, W)], 4 * PS),
]


@pytest.mark.parametrize("kw,value,want,walk_end", SCAN_INT_ARGS,
                         ids=[f"{a[0]}-{type(a[1]).__name__}" for a in SCAN_INT_ARGS])
def test_scan_pages_int_arguments_use_their_value(impl, kw, value, want, walk_end):
    """scan_pages checked start.__index__() but the compiled core converted the
    object: an int subclass whose __index__ disagrees gave a region [0x2000, 0x4000)
    with walk_end 0x2000 (ending before it starts). Each argument is converted
    once (operator.index: an int's own value) and that value is used."""
    res = impl.scan_pages(array.array("B", [W, W]), **{kw: value})
    assert regions(res) == want
    assert res.walk_end == walk_end and type(res.walk_end) is int
    for s, e, _c in res.regions:
        assert s < e <= res.walk_end


# ------------------------------------------------- pickling (issue 12, item 18)


@pytest.mark.parametrize("proto", range(2, pickle.HIGHEST_PROTOCOL + 1))
def test_regionarray_pickle(impl, sample, proto):
    for ra in (sample, impl.RegionArray(), impl.RegionArray([(0, U64_MAX, U64_MAX)])):
        ra2 = pickle.loads(pickle.dumps(ra, proto))
        assert type(ra2) is impl.RegionArray
        assert ra2 == ra and len(ra2) == len(ra)
        a = np.asarray(ra2)                 # the unpickled copy's own memory, viewable
        assert a.shape == (len(ra), 3) and a.dtype == np.uint64
        assert a.tolist() == [list(r) for r in ra]
        if len(ra):
            assert not np.shares_memory(a, np.asarray(ra))


@pytest.mark.parametrize("proto", range(2, pickle.HIGHEST_PROTOCOL + 1))
def test_scanresult_pickle(impl, proto):
    res = scan(impl, [W, W, P, 0, W], max_regions=2)
    res2 = pickle.loads(pickle.dumps(res, proto))
    assert type(res2) is ScanResult and type(res2.regions) is impl.RegionArray
    assert res2 == res and regions(res2) == regions(res) and res2.walk_end == pg(3)
    res2.regions.append(pg(9), pg(10), W)     # a copy, and it grows
    assert len(res2.regions) == 3 and len(res.regions) == 2


def test_regionarray_copy(impl, sample):
    import copy
    for ra in (copy.copy(sample), copy.deepcopy(sample)):
        assert type(ra) is impl.RegionArray and ra == sample
        ra.append(pg(9), pg(10), 0)
        assert len(ra) == 4 and len(sample) == 3
    res = scan(impl, [W])
    assert copy.deepcopy(res) == res


def test_regionarray_unpickle_refuses_bad_data(impl):
    ctor, (data,) = impl.RegionArray([(0, PS, W)]).__reduce__()
    assert ctor(data) == [(0, PS, W)]
    for bad in (array.array("Q", [1, 2]), array.array("I", [1, 2, 3]), b"x" * 24, [1, 2, 3]):
        with pytest.raises(ValueError, match="pickle data"):
            ctor(bad)


# ---------------------------------- PageRegion.categories is a Category (item 18)


def test_regions_carry_category(impl, sample):
    for r in [*sample, sample[0], sample[-1], *sample[1:]]:
        assert type(r) is PageRegion
        assert type(r.categories) is Category
    assert sample[0].categories is Category.WRITTEN
    assert sample[2].categories == Category.WRITTEN | Category.PRESENT == W | P
    assert sample.tolist()[1].categories is Category.PRESENT
    # a region with no category, and user-built ones with bits outside 0x1FF keep them
    ra = impl.RegionArray([(0, PS, 0), (PS, 2 * PS, HOLE | W), (0, PS, U64_MAX)])
    cats = [r.categories for r in ra]
    assert all(type(c) is Category for c in cats)
    assert [int(c) for c in cats] == [0, HOLE | W, U64_MAX]
    assert "Category.WRITTEN" in repr(sample) and "Category.PRESENT" in repr(sample)


def test_scan_regions_never_carry_hole(impl):
    # HOLE pages never match, so no region has bit 63 and every category is one of
    # the 512 known values, whatever the masks
    cats = array.array("Q", [HOLE | W, W, HOLE, HOLE | 0x1FF, 0x1FF, HOLE])
    for masks in (None, Masks(excluded=W), Masks(return_mask=0x1FF)):
        for r in scan(impl, cats, masks=masks).regions:
            assert type(r.categories) is Category and 0 <= r.categories <= 0x1FF


def test_regionarray_memoryview_empty(impl):
    """The reference's memoryview of an empty RegionArray was 1-D (0,): numpy 2.5
    takes that buffer's shape, so np.asarray() of an empty result was (0,)."""
    mv = impl.RegionArray().memoryview()
    assert mv.shape == (0, 3) and mv.ndim == 2 and mv.nbytes == 0 and mv.readonly
    assert mv.format in ("Q", "L") and mv.itemsize == 8
    assert np.asarray(mv).shape == (0, 3)
    assert np.asarray(impl.RegionArray([(0, PS, W)])[1:]).shape == (0, 3)


# the system-call primitives of the compiled core: the same integer checks
# (typed Cython arguments took floats and truncated them, and a negative gave a
# bare OverflowError); each bad value is refused before any system call
KERNEL_ARGS = [
    # (function, its integer arguments in order, which of them are C ints)
    ("pm_scan", ["fd", "start", "end", "flags"], {"fd"}),
    ("pm_scan_once", ["fd", "start", "end", "flags", "inverted", "mask", "anyof",
                      "return_mask", "max_pages", "vec_len"], {"fd"}),
    ("uffd_open", ["flags"], {"flags"}),
    ("uffd_api", ["fd", "features"], {"fd"}),
    ("uffd_register_wp", ["fd", "start", "length"], {"fd"}),
    ("uffd_unregister", ["fd", "start", "length"], {"fd"}),
    ("uffd_writeprotect", ["fd", "start", "length"], {"fd"}),
    ("madvise", ["start", "length", "advice"], {"advice"}),
    ("is_mapped", ["start", "length"], set()),
    ("mp_register", ["start", "end"], set()),
    ("mp_unregister", ["handle"], set()),
    ("mp_arm", ["handle", "start", "end"], set()),
    ("mp_mark_written", ["handle", "start", "end"], set()),
    ("mp_scan", ["handle", "start", "end"], set()),
    ("mp_stats", ["handle"], set()),
    ("mp_touch", ["addr"], set()),
    ("mp_overlapping", ["start", "end"], set()),
    ("mp_set_budget", ["budget"], set()),
    ("mp_inject_enomem", ["count"], {"count"}),
]
KERNEL_ARG_SITES = [(fn, names, i) for fn, names, _ in KERNEL_ARGS for i in range(len(names))]
KERNEL_BAD = [(4096.5, TypeError), (4096.0, TypeError), (np.float64(1), TypeError),
              (True, TypeError), ("1", TypeError), (None, TypeError), (-1, ValueError),
              (1 << 64, ValueError)]


@pytest.mark.parametrize("bad,exc", KERNEL_BAD, ids=[repr(b[0]) for b in KERNEL_BAD])
@pytest.mark.parametrize("fn,names,i", KERNEL_ARG_SITES,
                         ids=[f"{s[0]}-{s[1][s[2]]}" for s in KERNEL_ARG_SITES])
def test_kernel_primitive_int_arguments(core, fn, names, i, bad, exc):
    args = [0] * len(names)
    args[i] = bad
    with pytest.raises(exc) as info:
        getattr(core, fn)(*args)
    assert str(info.value).startswith(names[i] + " must "), str(info.value)


def test_kernel_primitive_int_arguments_accepted(core):
    import mmap
    m = mmap.mmap(-1, 2 * PS)
    addr, _n = core.buffer_address(m)
    try:
        for a, ln in ((np.uint64(addr), np.int32(PS)), (_OddInt(addr), _OddInt(2 * PS)),
                      (addr, Category.WRITTEN * PS)):
            assert core.is_mapped(a, ln) is True
        assert core.mp_overlapping(np.uint64(0), _OddInt(PS)) == 0
        assert isinstance(core.mp_stats(np.uint64(0)), dict)
        # a C int past 2**31 - 1 is a ValueError, not a bare OverflowError
        with pytest.raises(ValueError, match="fd must be <= 2147483647"):
            core.uffd_writeprotect(1 << 40, addr, PS)
    finally:
        del addr
        m.close()


@pytest.mark.parametrize("bad,exc,msg", [
    ((4096.7, 8192, 2), TypeError, "regions[1] start must be an int, not float"),
    ((0, 8192, True), TypeError, "regions[1] categories must be an int, not bool"),
    ((0, -1, 2), ValueError, "regions[1] end must be >= 0; got -1"),
    ((0, 1 << 64, 2), ValueError, "regions[1] end must be <= "),
])
def test_copy_regions_checks_values(impl, bad, exc, msg):
    """copy_regions (scan_pages(out=)'s copy) truncated floats in the compiled core."""
    out = impl.RegionArray.empty(4)
    with pytest.raises(exc) as info:
        impl.copy_regions([(0, PS, W), bad], out)
    assert str(info.value).startswith(msg)
    assert len(out) == 0
    assert impl.copy_regions([(0, PS, np.uint64(W)), (PS, 2 * PS, Category.PRESENT)], out) == 2
    assert [tuple(r) for r in out] == [(0, PS, W), (PS, 2 * PS, P)]
