"""The benchmark's stand-ins compute exactly what pagescan computes.

Random small inputs (every item width, HOLE, runs, all mask forms, limits,
page sizes, start offsets): benchmarks/npscan.py and the C loops
(benchmarks/c/scan_loop.c, scan_runs.c) must equal the compiled core, and the
compiled core must equal the pure-Python reference. Run:

    python -m pytest benchmarks/test_npscan.py -q
"""

from __future__ import annotations

import numpy as np
import pytest

import npscan
from conftest import assert_same
from pagescan import HOLE, Masks, _core, _reference

U64 = (1 << 64) - 1
CASES = 1500


def same_outcome(f_expected, f_got, cats, kw: dict, what: str, **got_kw) -> None:
    """``f_expected(cats, **kw)`` and ``f_got(cats, **kw, **got_kw)`` return equal
    ScanResults, or both raise the same exception with the same message."""
    try:
        expected = f_expected(cats, **kw)
    except Exception as e:
        with pytest.raises(type(e)) as info:
            f_got(cats, **kw, **got_kw)
        assert str(info.value) == str(e), what
        return
    assert_same(expected, f_got(cats, **kw, **got_kw), what)


def random_case(rng: np.random.Generator, *, high_start: bool = True):
    itemsize = int(rng.choice([1, 2, 4, 8, 8, 8]))
    dt = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[itemsize]
    n = int(rng.choice([0, 1, 2, 3, int(rng.integers(0, 40)), int(rng.integers(0, 400))]))
    # a few distinct values, repeated in runs, so that regions merge
    palette_bits = min(8 * itemsize, 10) if itemsize < 8 else 10
    palette = rng.integers(0, 1 << palette_bits, size=int(rng.integers(1, 6)), dtype=np.uint64)
    if itemsize == 8:
        palette[rng.random(palette.size) < 0.15] |= np.uint64(HOLE)
        if rng.random() < 0.2:               # junk in the unused high bits
            palette |= rng.integers(0, 1 << 54, size=palette.size, dtype=np.uint64) << np.uint64(9)
    runs = rng.geometric(0.3, size=n + 1)
    vals = palette[rng.integers(0, palette.size, size=runs.size)]
    cats = np.repeat(vals, runs)[:n].astype(dt)
    if rng.random() < 0.3:                    # sprinkle single random pages
        idx = rng.integers(0, max(n, 1), size=n // 5)
        if n:
            cats[idx] = rng.integers(0, 1 << palette_bits, size=idx.size).astype(dt)

    def sub() -> int:
        return int(rng.integers(0, 0x200)) & int(rng.choice([0x1FF, 0xF, 0x3, 0x2, 0x0, 0x100]))

    r = rng.random()
    if r < 0.1:
        masks = None
    elif r < 0.55:
        masks = Masks(required=sub(), anyof=sub(), excluded=sub(), return_mask=sub())
    else:
        masks = Masks.from_kernel(inverted=sub(), mask=sub(), anyof=sub(), return_mask=sub())
    ps = int(rng.choice([1, 2, 4096, 4096, 1 << 21]))
    if high_start and rng.random() < 0.1 and n:   # end at 2**64 (rejected) or just below
        start = (1 << 64) - n * ps - ps * int(rng.integers(0, 2))
    else:
        start = int(rng.integers(0, 1 << 20)) * ps
    max_pages = 0 if rng.random() < 0.5 else int(rng.integers(0, n + 2))
    max_regions = None if rng.random() < 0.5 else int(rng.integers(0, n // 2 + 2))
    return cats, dict(start=start, page_size=ps, masks=masks, max_pages=max_pages,
                      max_regions=max_regions)


@pytest.mark.parametrize("seed", range(4))
def test_numpy_equals_core(seed):
    rng = np.random.default_rng(1000 + seed)
    for i in range(CASES):
        cats, kw = random_case(rng)
        block = int(rng.choice([1, 2, 3, 7, 64, npscan.BLOCK]))
        kernel = None if rng.random() < 0.7 else "general"   # None: keyed when anyof == 0
        same_outcome(_core.scan_pages, npscan.scan_pages, cats, kw,
                     f"numpy case {seed}/{i} block={block} kernel={kernel} {cats.dtype} "
                     f"{cats.tolist()} {kw}", block=block, kernel=kernel)


@pytest.mark.parametrize("seed", range(4))
def test_c_loop_equals_core(seed, c_scan):
    rng = np.random.default_rng(2000 + seed)
    for i in range(CASES):
        cats, kw = random_case(rng)
        same_outcome(_core.scan_pages, c_scan.scan_pages, cats, kw,
                     f"C case {seed}/{i} {cats.dtype} {cats.tolist()} {kw}")


@pytest.mark.parametrize("seed", range(4))
def test_c_runs_equals_core(seed, c_runs):
    rng = np.random.default_rng(4000 + seed)
    for i in range(CASES):
        cats, kw = random_case(rng)
        same_outcome(_core.scan_pages, c_runs.scan_pages, cats, kw,
                     f"C runs case {seed}/{i} {cats.dtype} {cats.tolist()} {kw}")


@pytest.mark.parametrize("seed", range(4))
def test_core_equals_reference(seed):
    """The oracle itself."""
    rng = np.random.default_rng(3000 + seed)
    for i in range(CASES):
        cats, kw = random_case(rng)
        same_outcome(_reference.scan_pages, _core.scan_pages, cats, kw,
                     f"reference case {seed}/{i} {cats.dtype} {cats.tolist()} {kw}")


def test_larger_random_blocks(c_scan, c_runs):
    """A few 200k-page inputs, so that npscan crosses many block seams."""
    rng = np.random.default_rng(7)
    for _ in range(6):
        n = 200_000
        runs = rng.geometric(0.02, size=n)
        vals = rng.integers(0, 0x200, size=n, dtype=np.uint64)
        vals[rng.random(n) < 0.05] |= np.uint64(HOLE)
        cats = np.repeat(vals, runs)[:n]
        masks = Masks(required=int(rng.integers(0, 4)), return_mask=int(rng.integers(0, 0x200)))
        for kw in ({}, {"max_pages": int(rng.integers(1, n))},
                   {"max_regions": int(rng.integers(0, 3000))}):
            core = _core.scan_pages(cats, masks=masks, **kw)
            for kernel in ("keyed", "general"):
                for block in (npscan.BLOCK, 4096, 1000):
                    assert_same(core, npscan.scan_pages(cats, masks=masks, block=block,
                                                        kernel=kernel, **kw),
                                f"numpy {kernel} block={block} {kw}")
            assert_same(core, c_scan.scan_pages(cats, masks=masks, **kw), f"C {kw}")
            assert_same(core, c_runs.scan_pages(cats, masks=masks, **kw), f"C runs {kw}")


def test_top_of_address_space(c_scan, c_runs):
    """The last page below 2**64 is scanned alike; a range ending at 2**64 is
    rejected alike (``check_range``: ``end`` must be a u64)."""
    cats = np.array([2, 2, 3], dtype=np.uint64)
    top = (1 << 64) - 4 * 4096
    for impl in (_reference, _core, npscan, c_scan, c_runs):
        r = impl.scan_pages(cats, start=top)
        assert [tuple(map(int, x)) for x in r.regions] == [(top, top + 8192, 2),
                                                         (top + 8192, top + 12288, 3)]
        assert r.walk_end == U64 + 1 - 4096
        with pytest.raises(ValueError, match="overflows 64 bits"):
            impl.scan_pages(cats, start=top + 4096)
