"""Property tests: the compiled core computes exactly what the reference does.

Random categories of every item size, every mask form, random limits, start and
page size: ``pagescan._core`` and ``pagescan._reference`` must return the same
regions and walk_end (and both must agree with a small model written straight
from docs/kernel.md, 'Filter' and 'Output'). Resumed, limited calls stitched together with coalesce
must reproduce the unlimited call. Needs the compiled module: skipped when it is
not built, except under CI, where that is an error.
"""

from __future__ import annotations

import array
import functools
import itertools
import os
import pickle

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from conftest import scaled

from pagescan import HOLE, Masks
from pagescan import _reference as ref

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

try:
    from pagescan import _core as core
except ImportError as err:  # pragma: no cover - only without a build
    if IN_CI:
        raise ImportError(f"CI=true but pagescan._core cannot be imported: {err!r}") from err
    pytest.skip(f"pagescan._core is not built ({err!r}); these tests compare it with the "
                f"reference", allow_module_level=True)

U64_MAX = (1 << 64) - 1
IMPLS = [pytest.param(core, id="cython"), pytest.param(ref, id="python")]

common = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --------------------------------------------------------------- strategies

BITS = [1 << i for i in range(9)]
mask_bits = st.one_of(st.just(0), st.sampled_from(BITS), st.integers(0, 0x1FF),
                      st.sampled_from(BITS).flatmap(
                          lambda b: st.sampled_from(BITS).map(lambda c: b | c)))


def _item_values(itemsize: int):
    top = (1 << (8 * itemsize)) - 1
    low = st.integers(0, min(0x1FF, top))
    few_bits = st.sets(st.sampled_from(BITS[:4]), max_size=3).map(sum)
    if itemsize == 1:
        return st.one_of(few_bits, low)
    if itemsize < 8:
        return st.one_of(few_bits, low, st.integers(0, top))
    hole = st.integers(0, U64_MAX >> 1).map(lambda v: v | HOLE)
    high = st.tuples(st.integers(0, (1 << 54) - 1), low).map(lambda t: (t[0] << 9) | t[1])
    return st.one_of(few_bits, low, high, st.just(HOLE), hole, st.integers(0, top))


@st.composite
def category_arrays(draw, itemsizes=(1, 2, 4, 8), max_size=300):
    """(buffer, list of ints): few distinct values, so that runs form."""
    itemsize = draw(st.sampled_from(itemsizes))
    palette = draw(st.lists(_item_values(itemsize), min_size=1, max_size=5))
    values = draw(st.lists(st.sampled_from(palette), max_size=max_size))
    kind = draw(st.sampled_from(["array", "numpy"]))
    if kind == "array":
        tc = {1: "B", 2: "H", 4: "I", 8: draw(st.sampled_from("QL"))}[itemsize]
        buf = array.array(tc, values)
    else:
        buf = np.array(values, dtype={1: np.uint8, 2: np.uint16, 4: np.uint32,
                                      8: np.uint64}[itemsize])
    return buf, values


@st.composite
def masks_strategy(draw):
    form = draw(st.sampled_from(["none", "v7", "v7-nothing", "kernel"]))
    if form == "none":
        return None
    ret = draw(st.one_of(st.just(0x1FF), st.just(0), mask_bits))
    if form == "v7":
        return Masks(required=draw(mask_bits), anyof=draw(mask_bits),
                     excluded=draw(mask_bits), return_mask=ret)
    if form == "v7-nothing":
        anyof = draw(mask_bits.filter(bool))
        m = Masks(required=draw(mask_bits), anyof=anyof, excluded=anyof | draw(mask_bits),
                  return_mask=ret)
        assert m.matches_nothing
        return m
    return Masks.from_kernel(inverted=draw(mask_bits), mask=draw(mask_bits),
                             anyof=draw(mask_bits), return_mask=ret)


max_pages_st = st.one_of(st.just(0), st.just(0), st.integers(1, 10), st.integers(0, U64_MAX))
max_regions_st = st.one_of(st.none(), st.none(), st.just(0), st.integers(1, 6),
                           st.integers(0, (1 << 63) - 1))


@st.composite
def placement(draw, n):
    """(start, page_size) with start aligned and start + n*page_size <= 2**64 - 1."""
    ps = 1 << draw(st.one_of(st.just(12), st.integers(0, 40)))
    kmax = (U64_MAX - n * ps) // ps
    k = draw(st.one_of(st.just(0), st.integers(0, min(kmax, 1 << 20)), st.integers(0, kmax),
                       st.just(kmax)))
    return k * ps, ps


# ------------------------------------------------------------------ model


def model_scan(values, itemsize, start, ps, masks, max_pages, max_regions):
    """docs/kernel.md 'Filter' and 'Output', written independently of both implementations."""
    m = masks if masks is not None else Masks()
    end = start + len(values) * ps
    if m.matches_nothing:
        return [], end
    out: list[list[int]] = []
    found = 0
    for i, c in enumerate(values):
        if itemsize == 8 and c >> 63:
            continue
        x = c ^ m.inverted
        if x & m.mask != m.mask or (m.anyof and not x & m.anyof):
            continue
        addr = start + i * ps
        if max_pages and found == max_pages:
            return [tuple(r) for r in out], addr
        o = c & m.return_mask
        if out and out[-1][1] == addr and out[-1][2] == o:
            out[-1][1] += ps
        else:
            if max_regions is not None and len(out) == max_regions:
                return [tuple(r) for r in out], addr
            out.append([addr, addr + ps, o])
        found += 1
    return [tuple(r) for r in out], end


def as_list(regions):
    return [tuple(r) for r in regions]


# --------------------------------------------------------------- properties


@settings(common, max_examples=scaled(60, 300))
@given(data=st.data(), cats=category_arrays(), masks=masks_strategy(),
       max_pages=max_pages_st, max_regions=max_regions_st)
def test_scan_pages_compiled_equals_reference(data, cats, masks, max_pages, max_regions):
    buf, values = cats
    start, ps = data.draw(placement(len(values)))
    kw = dict(start=start, page_size=ps, masks=masks, max_pages=max_pages,
              max_regions=max_regions)
    a = core.scan_pages(buf, **kw)
    b = ref.scan_pages(buf, **kw)
    assert as_list(a.regions) == as_list(b.regions)
    assert a.walk_end == b.walk_end
    expected = model_scan(values, buf.itemsize, start, ps, masks, max_pages, max_regions)
    assert (as_list(b.regions), b.walk_end) == expected
    assert isinstance(a.regions, core.RegionArray) and isinstance(b.regions, ref.RegionArray)
    assert np.array_equal(np.asarray(a.regions), np.asarray(b.regions))
    assert a.regions.pages(ps) == b.regions.pages(ps)
    assert start <= a.walk_end <= start + len(values) * ps


@settings(common, max_examples=scaled(40, 150))
@given(data=st.data(), cats=category_arrays(itemsizes=(8,)), masks=masks_strategy())
def test_scan_64bit_holes_and_high_bits(data, cats, masks):
    """64-bit input with HOLE items and values with random high bits."""
    buf, values = cats
    values = [*values, HOLE]                       # always at least one hole
    buf = array.array("Q", values)
    start, ps = data.draw(placement(len(values)))
    mp = data.draw(max_pages_st)
    mr = data.draw(max_regions_st)
    a = core.scan_pages(buf, start, ps, masks, mp, mr)
    b = ref.scan_pages(buf, start, ps, masks, mp, mr)
    assert (as_list(a.regions), a.walk_end) == (as_list(b.regions), b.walk_end)
    for s, e, _ in a.regions:                      # no region covers a hole
        for addr in range(s, e, ps):
            assert not values[(addr - start) // ps] & HOLE


@settings(common, max_examples=scaled(30, 100))
@given(data=st.data(), cats=category_arrays(itemsizes=(1, 2, 4)), masks=masks_strategy())
def test_item_size_does_not_matter(data, cats, masks):
    """The same values widened to every larger item size give the same result."""
    _, values = cats
    itemsize = max(1, max((v.bit_length() + 7) // 8 for v in values) if values else 1)
    start, ps = data.draw(placement(len(values)))
    results = set()
    for tc in "BHIQ":
        if array.array(tc).itemsize < itemsize:
            continue
        for m in (core, ref):
            r = m.scan_pages(array.array(tc, values), start, ps, masks)
            results.add((tuple(as_list(r.regions)), r.walk_end))
    assert len(results) == 1


def _resume(impl, buf, start, ps, masks, max_pages, max_regions):
    """Scan to the end with limited calls, resuming at walk_end each time."""
    n = len(buf)
    end = start + n * ps
    parts = []
    cur = start
    for _ in range(n + 2):
        off = (cur - start) // ps
        res = impl.scan_pages(buf[off:], start=cur, page_size=ps, masks=masks,
                              max_pages=max_pages, max_regions=max_regions)
        parts.append(res.regions)
        assert cur <= res.walk_end <= end
        if res.walk_end == end:
            return parts
        assert res.walk_end > cur, "no progress"
        cur = res.walk_end
    raise AssertionError("resume loop did not finish")


@pytest.mark.parametrize("impl", IMPLS)
@settings(common, max_examples=scaled(30, 100))
@given(data=st.data(), cats=category_arrays(max_size=120), masks=masks_strategy(),
       max_pages=st.integers(0, 5), max_regions=st.one_of(st.none(), st.integers(1, 4)))
def test_resumed_calls_equal_single_call(impl, data, cats, masks, max_pages, max_regions):
    buf, values = cats
    start, ps = data.draw(placement(len(values)))
    full = impl.scan_pages(buf, start=start, page_size=ps, masks=masks)
    parts = _resume(impl, buf, start, ps, masks, max_pages, max_regions)
    assert as_list(impl.coalesce(*parts)) == as_list(full.regions)
    # coalesce is implementation-independent
    assert as_list(core.coalesce(*parts)) == as_list(ref.coalesce(*parts))
    # no part is empty except when nothing (more) matched
    assert all(len(p) for p in parts[:-1])


@pytest.mark.parametrize("impl", IMPLS)
@settings(common, max_examples=scaled(30, 100))
@given(data=st.data(), cats=category_arrays(max_size=120), masks=masks_strategy(),
       budget=st.integers(1, 40), max_regions=st.integers(1, 4))
def test_resumed_page_budget_equals_single_call(impl, data, cats, masks, budget, max_regions):
    """Calls limited by max_regions, sharing one max_pages budget, end exactly where
    a single call with that max_pages does (walk_end included)."""
    buf, values = cats
    start, ps = data.draw(placement(len(values)))
    end = start + len(values) * ps
    single = impl.scan_pages(buf, start=start, page_size=ps, masks=masks, max_pages=budget)
    parts, cur, left = [], start, budget
    while True:
        off = (cur - start) // ps
        res = impl.scan_pages(buf[off:], start=cur, page_size=ps, masks=masks, max_pages=left,
                              max_regions=max_regions)
        parts.append(res.regions)
        left -= res.regions.pages(ps)
        assert left >= 0
        if left == 0 or res.walk_end == end:
            break
        assert res.walk_end > cur
        cur = res.walk_end
    assert as_list(impl.coalesce(*parts)) == as_list(single.regions)
    assert res.walk_end == single.walk_end


@st.composite
def pagemap_entries(draw):
    flag_bits = [55, 56, 57, 58, 59, 60, 61, 62, 63]
    pfns = draw(st.lists(st.integers(0, (1 << 55) - 1), min_size=1, max_size=4))
    entry = st.one_of(
        st.just(0),
        st.just(1 << 55),
        st.tuples(st.sets(st.sampled_from(flag_bits)), st.sampled_from(pfns)).map(
            lambda t: sum(1 << b for b in t[0]) | t[1]),
        st.integers(0, U64_MAX),
    )
    values = draw(st.lists(entry, max_size=300))
    zero_pfn = draw(st.one_of(st.none(), st.sampled_from(pfns), st.integers(0, U64_MAX)))
    return values, zero_pfn


@settings(common, max_examples=scaled(40, 150))
@given(ent=pagemap_entries(), wpallowed=st.booleans(), none_written=st.booleans(),
       use_out=st.booleans(), as_numpy=st.booleans())
def test_pagemap_compiled_equals_reference(ent, wpallowed, none_written, use_out, as_numpy):
    values, zero_pfn = ent
    kw = dict(wpallowed=wpallowed, none_written=none_written, zero_pfn=zero_pfn)
    results = []
    for m in (core, ref):
        entries = np.array(values, np.uint64) if as_numpy else array.array("Q", values)
        if use_out:
            out = np.full(len(values), 0xABCDEF, np.uint64)
            got = m.pagemap_to_categories(entries, out=out, **kw)
            assert got is out
        else:
            got = m.pagemap_to_categories(entries, **kw)
            assert isinstance(got, array.array)
        results.append([int(v) for v in got])
    assert results[0] == results[1]
    assert all(0 <= c <= 0x1FF for c in results[0])
    assert not any(c & 0x40 for c in results[0])       # HUGE is never derived


@st.composite
def region_parts(draw):
    """Lists of (start, end, categories) on a small grid, so that seams touch."""
    nparts = draw(st.integers(0, 5))
    cats = draw(st.lists(st.integers(0, 0x1FF), min_size=1, max_size=3))
    parts = []
    addr = draw(st.integers(0, 4))
    for _ in range(nparts):
        part = []
        for _ in range(draw(st.integers(0, 6))):
            addr += draw(st.sampled_from([0, 0, 0, 1, 2]))
            length = draw(st.integers(1, 3))
            part.append((addr, addr + length, draw(st.sampled_from(cats))))
            addr += length
        parts.append(part)
    return parts


def model_coalesce(parts):
    out: list[list[int]] = []
    for part in parts:
        for s, e, c in part:
            if out and out[-1][1] == s and out[-1][2] == c:
                out[-1][1] = e
            else:
                out.append([s, e, c])
    return [tuple(r) for r in out]


@settings(common)
@given(parts=region_parts(), kinds=st.lists(st.sampled_from(["list", "core", "ref"]),
                                            min_size=5, max_size=5))
def test_coalesce_compiled_equals_reference(parts, kinds):
    wrap = {"list": list, "core": core.RegionArray, "ref": ref.RegionArray}
    mixed = [wrap[k](p) for k, p in zip(kinds, parts, strict=False)]
    a = core.coalesce(*mixed)
    b = ref.coalesce(*mixed)
    assert as_list(a) == as_list(b) == model_coalesce(parts)
    assert isinstance(a, core.RegionArray) and isinstance(b, ref.RegionArray)


@settings(common)
@given(regs=st.lists(st.tuples(st.integers(0, U64_MAX), st.integers(0, U64_MAX),
                               st.integers(0, U64_MAX)), max_size=8),
       shift=st.integers(0, 40), data=st.data())
def test_regionarray_compiled_equals_reference(regs, shift, data):
    ps = 1 << shift
    small = [(s % (1 << 20), s % (1 << 20) + e % (1 << 16), c) for s, e, c in regs]
    for rs in (regs, small):
        a, b = core.RegionArray(rs), ref.RegionArray(rs)
        assert a == b and a == rs and len(a) == len(b)
        assert a.pages(ps) == b.pages(ps)
        if rs is small:
            assert list(a.addresses(ps)) == list(b.addresses(ps))
        i = data.draw(st.integers(-len(rs) - 2, len(rs) + 2))
        if -len(rs) <= i < len(rs):
            assert a[i] == b[i] == rs[i]
        else:
            with pytest.raises(IndexError):
                a[i]
            with pytest.raises(IndexError):
                b[i]
        sl = slice(data.draw(st.integers(-10, 10) | st.none()),
                   data.draw(st.integers(-10, 10) | st.none()),
                   data.draw(st.sampled_from([None, 1, 2, -1, -3])))
        assert as_list(a[sl]) == as_list(b[sl]) == rs[sl]
        assert np.array_equal(np.asarray(a).reshape(-1, 3), np.asarray(b).reshape(-1, 3))


@settings(common, max_examples=scaled(25, 60))
@given(cats=category_arrays(), masks=masks_strategy())
def test_unlimited_scan_covers_exactly_the_matching_pages(cats, masks):
    buf, values = cats
    res = core.scan_pages(buf, start=0, page_size=1, masks=masks)
    m = masks if masks is not None else Masks()
    want = [i for i, c in enumerate(values)
            if not (buf.itemsize == 8 and c & HOLE) and m.matches(c & 0x1FF)]
    assert list(res.regions.addresses(1)) == want
    assert res.walk_end == len(values)
    rs = as_list(res.regions)
    # regions are ordered and a seam between touching regions means different categories
    for (_s1, e1, c1), (s2, _e2, c2) in itertools.pairwise(rs):
        assert e1 <= s2
        assert e1 < s2 or c1 != c2


# ------------------------------------- region values, pickling (issue 12, 16 and 18)

u64s = st.one_of(st.integers(0, U64_MAX), st.sampled_from([0, 1, 0x1FF, 1 << 63, U64_MAX]))
region_values = st.one_of(
    u64s,
    u64s.map(np.uint64),
    st.integers(-(1 << 70), -1),                    # ValueError
    st.integers(1 << 64, 1 << 70),                  # ValueError
    st.floats(allow_nan=True, allow_infinity=True),  # TypeError
    st.booleans(),                                  # TypeError
)


@settings(common, max_examples=scaled(60, 300))
@given(st.lists(st.tuples(region_values, region_values, region_values), max_size=6))
def test_regions_accepted_and_refused_alike(rows):
    """RegionArray(), append() and coalesce() of both cores accept exactly the same
    values (ints in [0, 2**64), numpy ints), refuse the rest with the same
    exception and message, and the result pickles back equal."""
    def outcome(make):
        try:
            ra = make()
        except (TypeError, ValueError) as e:
            return type(e), str(e)
        got = [tuple(r) for r in ra]
        assert all(type(r.categories).__name__ == "Category" for r in ra)
        ra2 = pickle.loads(pickle.dumps(ra, pickle.HIGHEST_PROTOCOL))
        assert [tuple(r) for r in ra2] == got and np.asarray(ra2).shape == (len(got), 3)
        return got

    def appended(m):
        ra = m.RegionArray()
        for r in rows:
            ra.append(*r)
        return ra

    for make in (lambda m: m.RegionArray(rows), appended, lambda m: m.coalesce(rows)):
        assert outcome(functools.partial(make, core)) == outcome(functools.partial(make, ref))


# --------------------------------------------------------- pagemap entries

# entries built from the bits that carry meaning (55-63), with or without low PFN
# bits (an entry whose bits other than 55 are all 0 reads as "no page")
_top_bits = st.one_of(st.integers(0, 511),
                      st.sets(st.integers(0, 8), max_size=2).map(lambda s: sum(1 << b for b in s)))
_entry = st.tuples(_top_bits, st.sampled_from([0, 1, 7, (1 << 55) - 1]),
                   st.integers(0, (1 << 55) - 1)).map(
    lambda t: (t[0] << 55) | (t[1] & t[2]))


@common
@given(entries=st.lists(_entry, max_size=40),
       fill=st.sampled_from([0, 1 << 55, 1 << 63, (1 << 63) | (1 << 57) | 5, 1]),
       pad=st.sampled_from([0, 2100]), wpallowed=st.booleans(),
       none_written=st.booleans(), soft_dirty_written=st.booleans(),
       zero_pfn=st.sampled_from([None, 0, 7]))
def test_pagemap_to_categories_matches_reference(entries, fill, pad, wpallowed, none_written,
                                                 soft_dirty_written, zero_pfn):
    """The compiled translation (a per-entry loop for short input, a table indexed by
    the top 9 bits from 2048 entries on) equals the reference, entry for entry."""
    data = array.array("Q", entries + [fill] * pad + entries)
    kw = dict(wpallowed=wpallowed, none_written=none_written,
              soft_dirty_written=soft_dirty_written, zero_pfn=zero_pfn)
    assert list(core.pagemap_to_categories(data, **kw)) == \
        list(ref.pagemap_to_categories(data, **kw))


@pytest.mark.parametrize("zero_pfn", [None, 5])
@pytest.mark.parametrize("flags", list(itertools.product([False, True], repeat=3)))
def test_pagemap_to_categories_every_top_bit_pattern(flags, zero_pfn):
    """Every value of bits 55-63 with no, one or all low bits, alone (the per-entry
    loop) and in one long input (the table): as the reference."""
    wpallowed, none_written, soft_dirty_written = flags
    kw = dict(wpallowed=wpallowed, none_written=none_written,
              soft_dirty_written=soft_dirty_written, zero_pfn=zero_pfn)
    every = array.array("Q", [(top << 55) | low for top in range(512)
                              for low in (0, 1, 5, (1 << 55) - 1)])
    assert len(every) >= 2048
    want = list(ref.pagemap_to_categories(every, **kw))
    assert list(core.pagemap_to_categories(every, **kw)) == want
    assert [core.pagemap_to_categories(every[i:i + 1], **kw)[0]
            for i in range(len(every))] == want


# ----------------------------------------------- the vector gap skip, per ISA

_ISAS = [isa for isa in ("avx2", "sse2") if core._simd(isa) == isa]
core._simd("auto")


@settings(common, max_examples=scaled(40, 200))
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(0, 3000),
       density=st.sampled_from([0.002, 0.02, 0.1, 0.5]),
       required=st.sampled_from([2, 10, 0x1FF]), max_regions=st.sampled_from([None, 1, 7]))
@pytest.mark.parametrize("isa", _ISAS or [pytest.param(None, marks=pytest.mark.skip(
    reason="no vector gap skip on this platform"))])
def test_sparse_u64_scan_under_each_isa(isa, seed, n, density, required, max_regions):
    """u64 categories with matches scattered over long gaps (the vector skip finds
    each one's place in its 8-page step, any position, near the end too): as the
    reference, AVX2 and SSE2 alike."""
    rng = np.random.default_rng(seed)
    gap = rng.choice(np.array([0, 8, 0x1FD, HOLE | 0x1FF], np.uint64), n)
    cats = np.where(rng.random(n) < density, np.uint64(0x1FF), gap).astype(np.uint64)
    masks = Masks(required=required)
    core._simd(isa)
    try:
        got = core.scan_pages(cats, start=1 << 30, masks=masks, max_regions=max_regions)
    finally:
        core._simd("auto")
    want = ref.scan_pages(cats, start=1 << 30, masks=masks, max_regions=max_regions)
    assert [tuple(r) for r in got.regions] == [tuple(r) for r in want.regions]
    assert got.walk_end == want.walk_end
