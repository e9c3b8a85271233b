"""scan_pages against the real PAGEMAP_SCAN ioctl, on a real memory layout.

One module-wide layout is built in this process, inside a reserved address
window: THPs (written, huge zero page, split, uffd-wp protected), guard pages,
a private file mapping, shared anonymous memory, uffd-wp async ranges, zero-page
reads, DONTNEED'd pages, a read-only part, PROT_NONE leftovers and unmapped
holes. Every page's true categories are read with ONE unfiltered raw
PAGEMAP_SCAN (kernelutil, which does not use pagescan), and then thousands of
random masks / limits / sub-ranges are given both to ``scan_pages`` (fed those
categories) and to the kernel (one raw call each); regions and walk_end must
agree exactly (docs/kernel.md, 'Filter' and 'Output'). ``max_regions`` stays <= 512, where the
kernel's walk_end is not stale.

Nothing touches the window between the category read and the comparisons, and
every test re-reads the layout at the end to prove it did not drift.
"""

from __future__ import annotations

import array
import errno
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kernelutil as ku
from conftest import scaled

import pagescan
from pagescan import HOLE, Category, Masks, coalesce, scan_pages

try:
    import numpy as np
except ImportError:  # pragma: no cover
    np = None

PAGE = ku.PAGE
PMD_PAGES = ku.HUGE_PMD // PAGE  # 512
PURE = pagescan.IMPLEMENTATION == "python"

# Fewer random cases under the pure-Python reference (slower; the case count
# can be overridden with PAGESCAN_KERNEL_CASES).
N_CASES = int(os.environ.get("PAGESCAN_KERNEL_CASES", "4000" if PURE else "20000"))
N_RESUME = 500 if PURE else 2000
N_HYPOTHESIS = scaled(100, 300) if PURE else scaled(150, 600)   # --slow: all
SEED = 0x5CA7


def _skip_or_fail(reason: str) -> None:
    if ku.ci_required():
        pytest.fail(f"kernel feature missing in CI: {reason}")
    pytest.skip(reason)


# ------------------------------------------------------------------- layout


@dataclass
class Layout:
    base: int
    npages: int
    scanner: ku.PagemapScanner
    cats: array.array = field(default_factory=lambda: array.array("Q"))
    # name -> (first page index, number of pages), for the sanity test
    parts: dict[str, tuple[int, int]] = field(default_factory=dict)
    guard_supported: bool = False
    thp_enabled: bool = False
    huge_zero: bool = False

    @property
    def end(self) -> int:
        return self.base + self.npages * PAGE

    def addr(self, page: int) -> int:
        return self.base + page * PAGE

    def reread(self) -> list[int]:
        return ku.read_categories(self.scanner, self.base, self.npages)


def _read_sysfs(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def _reserve_window(npages: int) -> int:
    """A PROT_NONE window of npages, 2 MiB aligned, far below the mmap area so
    that other mappings of this process do not land in its holes."""
    length = npages * PAGE
    flags = ku.MAP_PRIVATE | ku.MAP_ANONYMOUS | ku.MAP_NORESERVE
    rng = random.Random(os.getpid())
    for _ in range(32):
        hint = rng.randrange(0x1000_0000_0000, 0x4000_0000_0000, ku.HUGE_PMD)
        try:
            return ku.mmap(hint, length, ku.PROT_NONE, flags | ku.MAP_FIXED_NOREPLACE)
        except OSError:
            continue
    # Fallback: over-allocate anywhere and trim to a 2 MiB boundary.
    raw = ku.mmap(0, length + ku.HUGE_PMD, ku.PROT_NONE, flags)
    base = (raw + ku.HUGE_PMD - 1) & ~(ku.HUGE_PMD - 1)
    if base > raw:
        ku.munmap(raw, base - raw)
    tail = raw + length + ku.HUGE_PMD - (base + length)
    if tail:
        ku.munmap(base + length, tail)
    return base


def _build(stack: list) -> Layout:
    """Build the layout; append cleanups to ``stack``."""
    npages = 8 * PMD_PAGES  # 4096 pages, 16 MiB
    base = _reserve_window(npages)
    stack.append(lambda: ku.munmap(base, npages * PAGE))
    scanner = ku.PagemapScanner()
    stack.append(scanner.close)
    lay = Layout(base, npages, scanner)
    lay.thp_enabled = "[never]" not in _read_sysfs(
        "/sys/kernel/mm/transparent_hugepage/enabled")
    lay.huge_zero = _read_sysfs("/sys/kernel/mm/transparent_hugepage/use_zero_page") == "1"

    RW = ku.PROT_READ | ku.PROT_WRITE
    ANON = ku.MAP_PRIVATE | ku.MAP_ANONYMOUS | ku.MAP_FIXED

    def anon(page: int, n: int, prot: int = RW, flags: int = ANON) -> int:
        a = ku.mmap(lay.addr(page), n * PAGE, prot, flags)
        assert a == lay.addr(page)
        return a

    def part(name: str, page: int, n: int) -> None:
        lay.parts[name] = (page, n)

    uffd = ku.open_uffd_wp_async()
    stack.append(lambda: os.close(uffd))

    # [0, 512): THP, written in full (PMD-mapped: HUGE|PRESENT|WRITTEN).
    a = anon(0, PMD_PAGES)
    ku.madvise(a, ku.HUGE_PMD, ku.MADV_HUGEPAGE)
    ku.touch_write(a, PMD_PAGES)
    part("thp_written", 0, PMD_PAGES)

    # [512, 1024): THP region only read: the huge zero page.
    a = anon(PMD_PAGES, PMD_PAGES)
    ku.madvise(a, ku.HUGE_PMD, ku.MADV_HUGEPAGE)
    ku.touch_read(a, 1)
    part("thp_zero", PMD_PAGES, PMD_PAGES)

    # [1024, 1536): THP written, then half made read-only: the PMD is split, the
    # pages stay present but are PTE-mapped (no HUGE). NOHUGEPAGE keeps
    # khugepaged away.
    a = anon(2 * PMD_PAGES, PMD_PAGES)
    ku.madvise(a, ku.HUGE_PMD, ku.MADV_HUGEPAGE)
    ku.touch_write(a, PMD_PAGES)
    ku.mprotect(a + ku.HUGE_PMD // 2, ku.HUGE_PMD // 2, ku.PROT_READ)
    ku.madvise(a, ku.HUGE_PMD, ku.MADV_NOHUGEPAGE)
    part("thp_split", 2 * PMD_PAGES, PMD_PAGES)

    # [1536, 1600): uffd-wp async range, 64 pages.
    p0 = 3 * PMD_PAGES
    a = anon(p0, 64)
    ku.touch_write(a, 16)                          # 0-15 written before protection
    ku.uffd_register_wp(uffd, a, 64 * PAGE)
    ku.uffd_writeprotect(uffd, a, 48 * PAGE)       # 0-47 protected (markers for none)
    ku.touch_write(a + 2 * PAGE, 2)                # 2-3 written again
    ku.touch_write(a + 20 * PAGE, 4)               # 20-23 written (were markers)
    ku.touch_read(a + 30 * PAGE, 4)                # 30-33 read (were markers)
    ku.touch_write(a + 50 * PAGE, 3)               # 48-63 unprotected
    ku.touch_read(a + 55 * PAGE, 3)
    part("uffd_wp_kept", p0, 2)                    # present, protected
    part("uffd_rewritten", p0 + 2, 2)
    part("uffd_marker", p0 + 40, 8)                # untouched markers
    part("uffd_marker_written", p0 + 20, 4)
    part("uffd_marker_read", p0 + 30, 4)
    part("uffd_unprotected", p0 + 48, 16)

    # [1600, 1608): unmapped hole (the window's PROT_NONE is unmapped here).
    ku.munmap(lay.addr(p0 + 64), 8 * PAGE)
    part("hole1", p0 + 64, 8)

    # [1608, 1672): private file mapping of 64 pages over a 60-page file.
    p1 = p0 + 72
    fd, path = tempfile.mkstemp(prefix="pagescan-kernel-")
    os.unlink(path)
    stack.append(lambda: os.close(fd))
    for i in range(60):
        os.pwrite(fd, bytes([0x30 + i % 64]) * PAGE, i * PAGE)
    os.fsync(fd)                                   # clean, so PAGEOUT can drop pages
    a = ku.mmap(lay.addr(p1), 64 * PAGE, RW, ku.MAP_PRIVATE | ku.MAP_FIXED, fd, 0)
    ku.touch_read(a, 20)                           # 0-19 page cache
    ku.touch_write(a + 20 * PAGE, 10)              # 20-29 COW'd to anon
    try:
        ku.madvise(a + 5 * PAGE, 5 * PAGE, ku.MADV_PAGEOUT)  # 5-9 dropped, maybe
    except OSError:
        pass
    part("file_read", p1, 5)
    part("file_cow", p1 + 20, 10)
    part("file_untouched", p1 + 30, 34)

    # [1672, 1673): one-page hole.
    ku.munmap(lay.addr(p1 + 64), PAGE)
    part("hole2", p1 + 64, 1)

    # [1673, 1705): shared anonymous (shmem), 32 pages.
    p2 = p1 + 65
    a = anon(p2, 32, flags=ku.MAP_SHARED | ku.MAP_ANONYMOUS | ku.MAP_FIXED)
    ku.touch_write(a, 8)
    ku.touch_read(a + 8 * PAGE, 8)
    part("shmem_written", p2, 8)
    part("shmem_read", p2 + 8, 8)

    # [1705, 1800): private anon: zero-page reads, writes, DONTNEED, guards,
    # and a read-only part.
    p3 = p2 + 32
    a = anon(p3, 95)
    ku.touch_read(a, 40)                           # 0-39 zero page
    ku.touch_write(a + 40 * PAGE, 20)              # 40-59
    ku.madvise(a + 45 * PAGE, 5 * PAGE, ku.MADV_DONTNEED)   # 45-49 dropped
    try:
        ku.madvise(a + 60 * PAGE, 4 * PAGE, ku.MADV_GUARD_INSTALL)
        ku.madvise(a + 70 * PAGE, PAGE, ku.MADV_GUARD_INSTALL)
        lay.guard_supported = True
    except OSError as e:
        if e.errno != errno.EINVAL:
            raise
    ku.touch_write(a + 80 * PAGE, 3)
    ku.mprotect(a + 80 * PAGE, 10 * PAGE, ku.PROT_READ)
    ku.touch_read(a + 84 * PAGE, 3)
    part("zero_read", p3, 40)
    part("anon_written", p3 + 40, 5)
    part("anon_dontneed", p3 + 45, 5)
    part("guard", p3 + 60, 4)
    part("readonly_written", p3 + 80, 3)
    part("readonly_zero", p3 + 84, 3)

    # [1800, 2048): left PROT_NONE (a VMA; this PMD has a page table), with a hole.
    part("prot_none", p3 + 95, 100)             # VMA, none PTEs: WRITTEN on 6.18.y
    ku.munmap(lay.addr(1900), 4 * PAGE)
    part("hole3", 1900, 4)

    # [2048, 2304): uffd-wp registered, never touched: no page table at all.
    # [2304, 2560): still the window's PROT_NONE, in a PMD without a page table:
    # category 0 (matches an empty filter, unlike a hole).
    a = anon(4 * PMD_PAGES, PMD_PAGES // 2)
    ku.uffd_register_wp(uffd, a, ku.HUGE_PMD // 2)
    part("uffd_notable", 4 * PMD_PAGES, PMD_PAGES // 2)
    part("prot_none_notable", 4 * PMD_PAGES + PMD_PAGES // 2, PMD_PAGES // 2)

    # [2560, 3072): THP written, registered and write-protected whole.
    a = anon(5 * PMD_PAGES, PMD_PAGES)
    ku.madvise(a, ku.HUGE_PMD, ku.MADV_HUGEPAGE)
    ku.touch_write(a, PMD_PAGES)
    ku.uffd_register_wp(uffd, a, ku.HUGE_PMD)
    ku.uffd_writeprotect(uffd, a, ku.HUGE_PMD)
    part("uffd_thp", 5 * PMD_PAGES, PMD_PAGES)

    # [3072, 4096): a fine-grained random pattern (written, zero page, none,
    # the odd guard page): hundreds of short regions, more than the kernel's
    # 512-entry bounce buffer holds.
    p4 = 6 * PMD_PAGES
    a = anon(p4, 2 * PMD_PAGES)
    rnd = random.Random(1234)
    for i in range(1000):
        k = rnd.randrange(7)
        if k < 3:
            ku.touch_write(a + i * PAGE)
        elif k < 5:
            ku.touch_read(a + i * PAGE)
        elif k == 5 and lay.guard_supported and rnd.random() < 0.2:
            ku.madvise(a + i * PAGE, PAGE, ku.MADV_GUARD_INSTALL)
    ku.munmap(a + 100 * PAGE, PAGE)                # a one-page hole
    ku.munmap(a + 1022 * PAGE, 2 * PAGE)           # a hole at the window's end
    part("pattern", p4, 100)
    part("hole4", p4 + 1022, 2)

    lay.cats = array.array("Q", lay.reread())
    return lay


@pytest.fixture(scope="module")
def layout():
    reason = ku.kernel_features()
    if reason:
        _skip_or_fail(reason)
    stack: list = []
    try:
        lay = _build(stack)
        yield lay
    finally:
        for fn in reversed(stack):
            try:
                fn()
            except OSError:
                pass


def assert_layout_unchanged(lay: Layout) -> None:
    now = lay.reread()
    if list(lay.cats) != now:
        diff = [(i, lay.cats[i], now[i]) for i in range(lay.npages) if lay.cats[i] != now[i]]
        pytest.fail(f"the layout drifted during the test (page, before, after): {diff[:20]}"
                    f" ({len(diff)} pages); comparisons are unreliable")


# ------------------------------------------------------------ random cases


_BITS = [int(c) for c in Category]
# Bits the layout really has get picked more often than SOFT_DIRTY.
_WEIGHTS = [1.0 if c != Category.SOFT_DIRTY else 0.3 for c in Category]


def _rand_bits(rng: random.Random, p: float) -> int:
    return sum(b for b, w in zip(_BITS, _WEIGHTS, strict=True) if rng.random() < p * w)


def _rand_return_mask(rng: random.Random) -> int:
    r = rng.random()
    if r < 0.3:
        return ku.ALL_CATEGORIES
    if r < 0.45:
        return 0
    return _rand_bits(rng, 0.4)


def rand_masks(rng: random.Random) -> Masks:
    """Both spellings; sometimes anyof inside excluded (matches nothing)."""
    ret = _rand_return_mask(rng)
    r = rng.random()
    if r < 0.1:
        return Masks(return_mask=ret)
    if r < 0.5:
        required = _rand_bits(rng, 0.15)
        excluded = _rand_bits(rng, 0.15)
        anyof = 0 if rng.random() < 0.5 else _rand_bits(rng, 0.3)
        if rng.random() < 0.08:           # anyof inside excluded
            excluded |= _rand_bits(rng, 0.3) or int(Category.PRESENT)
            anyof = _rand_bits(rng, 0.5) & excluded or excluded
        return Masks(required=required, anyof=anyof, excluded=excluded, return_mask=ret)
    inverted = _rand_bits(rng, 0.25)
    mask = _rand_bits(rng, 0.15)
    anyof = 0 if rng.random() < 0.5 else _rand_bits(rng, 0.3)
    return Masks.from_kernel(inverted=inverted, mask=mask, anyof=anyof, return_mask=ret)


def rand_max_pages(rng: random.Random) -> int:
    r = rng.random()
    if r < 0.5:
        return 0
    if r < 0.75:
        return rng.randint(1, 8)
    if r < 0.95:
        return rng.randint(1, 600)
    return rng.randint(1, 4000)


def rand_max_regions(rng: random.Random) -> int:
    r = rng.random()
    if r < 0.3:
        return rng.randint(1, 4)
    if r < 0.6:
        return rng.randint(1, 32)
    if r < 0.9:
        return rng.randint(1, 512)
    return 512


def rand_range(rng: random.Random, n: int) -> tuple[int, int]:
    """Page indices [i, j) inside [0, n)."""
    r = rng.random()
    if r < 0.08:
        return 0, n
    if r < 0.12:
        i = rng.randint(0, n)
        return i, i
    if r < 0.4:
        i = rng.randrange(n)
        return i, min(n, i + rng.randint(1, 16))
    i, j = sorted(rng.sample(range(n + 1), 2))
    return i, j


def _cats_view(lay: Layout, i: int, j: int, use_numpy: bool):
    if use_numpy and np is not None:
        return np.frombuffer(lay.cats, dtype=np.uint64)[i:j]
    return memoryview(lay.cats)[i:j]


def _describe(lay: Layout, i: int, j: int) -> str:
    """The categories of pages [i, j) as runs, for failure messages."""
    runs: list[str] = []
    k = i
    while k < j:
        c = lay.cats[k]
        m = k
        while m < j and lay.cats[m] == c:
            m += 1
        runs.append(f"{m - k}x{'HOLE' if c == HOLE else hex(c)}")
        k = m
    return ", ".join(runs)


def compare_one(lay: Layout, masks: Masks, i: int, j: int, max_pages: int,
                max_regions: int | None, use_numpy: bool = False) -> None:
    """scan_pages on pages [i, j) vs one raw kernel call; fails with details."""
    start, end = lay.addr(i), lay.addr(j)
    res = scan_pages(_cats_view(lay, i, j, use_numpy), start=start, page_size=PAGE,
                     masks=masks, max_pages=max_pages, max_regions=max_regions)
    got = [tuple(r) for r in res.regions]
    if masks.matches_nothing:
        assert got == [] and res.walk_end == end, (masks, got, hex(res.walk_end))
        return
    inverted, mask, anyof, ret = masks.to_kernel()
    vec_len = max_regions if max_regions is not None else max(j - i, 1)
    want, walk_end = lay.scanner.scan(start, end, vec_len=vec_len, max_pages=max_pages,
                                      inverted=inverted, mask=mask, anyof=anyof,
                                      return_mask=ret)
    # The kernel's walk_end is stale past 512 regions (docs/kernel.md, 'walk_end').
    walk_ok = res.walk_end == walk_end or len(want) > 512
    if got != want or not walk_ok:
        assert_layout_unchanged(lay)
        pytest.fail(
            "scan_pages differs from PAGEMAP_SCAN\n"
            f"  pages [{i}, {j}) of the window at 0x{lay.base:x}: {_describe(lay, i, j)}\n"
            f"  masks={masks!r} (kernel form inverted=0x{inverted:x} mask=0x{mask:x} "
            f"anyof=0x{anyof:x} return=0x{ret:x})\n"
            f"  max_pages={max_pages} max_regions={max_regions} impl={pagescan.IMPLEMENTATION}\n"
            f"  scan_pages: {len(got)} regions {_fmt(got)} walk_end=0x{res.walk_end:x}\n"
            f"  kernel:     {len(want)} regions {_fmt(want)} walk_end=0x{walk_end:x}")


def _fmt(regions: list) -> str:
    s = ", ".join(f"(0x{a:x}, 0x{b:x}, 0x{c:x})" for a, b, c in regions[:8])
    return "[" + s + (", ..." if len(regions) > 8 else "") + "]"


# -------------------------------------------------------------------- tests


@pytest.mark.kernel
def test_layout_has_intended_categories(layout: Layout) -> None:
    """The layout really produced the page kinds it was built for."""
    C = Category
    cats = layout.cats

    def pages(name: str) -> list[int]:
        i, n = layout.parts[name]
        return list(cats[i:i + n])

    def all_have(name: str, has: int, lacks: int = 0) -> None:
        for k, c in enumerate(pages(name)):
            assert c != HOLE and c & has == has and not c & lacks, (
                f"{name}[{k}] = {C(c & 0x1FF)!r} (0x{c:x}): want {C(has)!r}, not {C(lacks)!r}")

    for h in ("hole1", "hole2", "hole3", "hole4"):
        assert all(c == HOLE for c in pages(h)), h
    if layout.thp_enabled:
        all_have("thp_written", C.HUGE | C.PRESENT | C.WRITTEN, C.FILE | C.PFNZERO)
        all_have("uffd_thp", C.HUGE | C.PRESENT | C.WPALLOWED, C.WRITTEN)
        if layout.huge_zero:
            all_have("thp_zero", C.HUGE | C.PRESENT | C.PFNZERO)
    all_have("thp_split", C.PRESENT | C.WRITTEN, C.HUGE)
    all_have("uffd_wp_kept", C.WPALLOWED | C.PRESENT, C.WRITTEN)
    all_have("uffd_rewritten", C.WPALLOWED | C.PRESENT | C.WRITTEN)
    all_have("uffd_marker", C.WPALLOWED | C.SWAPPED, C.WRITTEN | C.PRESENT)
    all_have("uffd_marker_written", C.WPALLOWED | C.PRESENT | C.WRITTEN)
    all_have("uffd_marker_read", C.WPALLOWED | C.PRESENT, C.WRITTEN)
    all_have("uffd_unprotected", C.WPALLOWED)
    all_have("uffd_notable", C.WPALLOWED, C.PRESENT)
    all_have("file_read", C.FILE | C.PRESENT | C.WRITTEN)
    all_have("file_cow", C.PRESENT | C.WRITTEN, C.FILE)
    all_have("file_untouched", 0, C.PRESENT)
    all_have("shmem_written", C.FILE | C.PRESENT | C.WRITTEN)
    all_have("shmem_read", C.FILE | C.PRESENT)
    all_have("zero_read", C.PFNZERO | C.PRESENT, C.FILE)
    all_have("anon_written", C.PRESENT | C.WRITTEN, C.PFNZERO)
    all_have("anon_dontneed", 0, C.PRESENT)
    all_have("readonly_written", C.PRESENT | C.WRITTEN)
    all_have("readonly_zero", C.PRESENT | C.PFNZERO)
    all_have("prot_none", 0, C.PRESENT | C.WPALLOWED)
    assert all(c == 0 for c in pages("prot_none_notable"))
    if layout.guard_supported:
        all_have("guard", C.GUARD, C.PRESENT)

    present = {c for c in cats if c != HOLE}
    union = 0
    for c in present:
        union |= c
    want = C.WPALLOWED | C.WRITTEN | C.FILE | C.PRESENT | C.SWAPPED | C.PFNZERO
    if layout.thp_enabled:
        want |= C.HUGE
    if layout.guard_supported:
        want |= C.GUARD
    assert union & want == want, f"missing {C(want & ~union)!r}"
    assert any(c & C.WPALLOWED and not c & C.WRITTEN for c in present)
    assert 0 in present                       # matches an empty filter, yet not HOLE
    assert len(present) >= 12, sorted(map(hex, present))
    # Enough structure for the limits to matter, and more regions than the
    # kernel's bounce buffer (512) holds.
    regions, _ = layout.scanner.scan(layout.base, layout.end, vec_len=layout.npages)
    assert len(regions) > 600, len(regions)


@pytest.mark.kernel
def test_random_cases_match_kernel(layout: Layout) -> None:
    rng = random.Random(SEED)
    n = layout.npages
    t0 = time.monotonic()
    nothing = 0
    for _ in range(N_CASES):
        masks = rand_masks(rng)
        nothing += masks.matches_nothing
        i, j = rand_range(rng, n)
        mr: int | None = rand_max_regions(rng)
        if rng.random() < 0.05:
            mr = None                     # unlimited: kernel vec_len = one per page
        compare_one(layout, masks, i, j, rand_max_pages(rng), mr,
                    use_numpy=rng.random() < 0.2)
    assert nothing > 0                    # the matches-nothing path was exercised
    assert_layout_unchanged(layout)
    print(f"{N_CASES} cases in {time.monotonic() - t0:.2f}s ({pagescan.IMPLEMENTATION})")


@pytest.mark.kernel
def test_every_single_filter_bit(layout: Layout) -> None:
    """Each category required / excluded / as anyof alone, whole window, no limits."""
    n = layout.npages
    for b in [int(c) for c in Category]:
        for m in (Masks(required=b), Masks(excluded=b), Masks(anyof=b),
                  Masks(required=b, return_mask=0), Masks.from_kernel(inverted=b, anyof=b),
                  Masks.from_kernel(inverted=b, mask=b, return_mask=b)):
            compare_one(layout, m, 0, n, 0, 512)
            compare_one(layout, m, 0, n, 1, 512)
            compare_one(layout, m, 0, n, 0, 1)
    assert_layout_unchanged(layout)


@pytest.mark.kernel
def test_max_pages_boundaries(layout: Layout) -> None:
    """max_pages exactly at, below and above the number of matching pages."""
    n = layout.npages
    rng = random.Random(SEED + 1)
    for _ in range(40 if PURE else 150):
        masks = rand_masks(rng)
        if masks.matches_nothing:
            continue
        i, j = rand_range(rng, n)
        full = scan_pages(memoryview(layout.cats)[i:j], start=layout.addr(i), masks=masks)
        total = full.regions.pages(PAGE)
        for mp in {max(total - 1, 1), total, total + 1, 1}:
            if mp:
                compare_one(layout, masks, i, j, mp, 512)
    assert_layout_unchanged(layout)


@pytest.mark.kernel
def test_resume_from_walk_end_reproduces_unlimited(layout: Layout) -> None:
    """Resuming from walk_end, call after call, and coalescing the parts gives
    the unlimited result; each call matches the kernel making the same call."""
    rng = random.Random(SEED + 2)
    n = layout.npages
    calls = 0
    for _ in range(N_RESUME):
        masks = rand_masks(rng)
        while masks.matches_nothing:
            masks = rand_masks(rng)
        i, j = rand_range(rng, n)
        mp = 0 if rng.random() < 0.3 else rng.randint(1, 64)
        mr = rng.randint(1, 64)
        inverted, mask, anyof, ret = masks.to_kernel()
        kw = {"inverted": inverted, "mask": mask, "anyof": anyof, "return_mask": ret}
        start, end = layout.addr(i), layout.addr(j)
        pos = start
        kparts: list[list] = []
        sparts: list = []
        for _step in range(n + 2):
            k = (pos - layout.base) // PAGE
            want, kwalk = layout.scanner.scan(pos, end, vec_len=mr, max_pages=mp, **kw)
            res = scan_pages(memoryview(layout.cats)[k:j], start=pos, masks=masks,
                             max_pages=mp, max_regions=mr)
            calls += 1
            got = [tuple(r) for r in res.regions]
            if got != want or res.walk_end != kwalk:
                compare_one(layout, masks, k, j, mp, mr)   # fails with the details
                pytest.fail("resume step differs (not reproducible as a single call?)")
            kparts.append(want)
            sparts.append(res.regions)
            if kwalk == end:
                break
            assert pos < kwalk < end and want, "no progress"
            pos = kwalk
        else:
            pytest.fail("resume loop did not finish")
        full_k, _ = layout.scanner.scan(start, end, vec_len=max(j - i, 1), **kw)
        full_s = scan_pages(memoryview(layout.cats)[i:j], start=start, masks=masks)
        assert [tuple(r) for r in full_s.regions] == full_k
        assert full_s.walk_end == end
        stitched = [tuple(r) for r in coalesce(*sparts)]
        assert stitched == full_k, (masks, i, j, mp, mr)
        assert [tuple(r) for r in coalesce(*kparts)] == full_k
    assert_layout_unchanged(layout)
    print(f"{N_RESUME} resume loops, {calls} calls")


@pytest.mark.kernel
def test_more_than_512_regions(layout: Layout) -> None:
    """Unlimited calls with more regions than the kernel's bounce buffer: the
    regions agree; the kernel's walk_end is stale (docs/kernel.md, 'walk_end': the
    last restart point, i.e. the start of region 512*k+1), scan_pages's is the
    true one (the end)."""
    n = layout.npages
    seen = 0
    for ret in (ku.ALL_CATEGORIES, int(Category.PRESENT | Category.PFNZERO | Category.GUARD),
                int(Category.WRITTEN)):
        for masks in (Masks(return_mask=ret), Masks(required=Category.WRITTEN, return_mask=ret),
                      Masks.from_kernel(inverted=Category.HUGE, mask=Category.HUGE,
                                        return_mask=ret)):
            inverted, mask, anyof, r = masks.to_kernel()
            want, kwalk = layout.scanner.scan(layout.base, layout.end, vec_len=n,
                                              inverted=inverted, mask=mask, anyof=anyof,
                                              return_mask=r)
            res = scan_pages(layout.cats, start=layout.base, masks=masks)
            assert [tuple(x) for x in res.regions] == want
            assert res.walk_end == layout.end
            if len(want) > 512:
                seen += 1
                stale = want[512 * ((len(want) - 1) // 512)][0]
                assert kwalk in (stale, layout.end), (hex(kwalk), hex(stale))
    assert seen
    assert_layout_unchanged(layout)


@pytest.mark.kernel
def test_max_regions_zero_gives_first_match(layout: Layout) -> None:
    """max_regions=0 (not comparable to the kernel's vec_len=0 WP-only mode):
    no regions, walk_end = the first matching page = where the kernel's first
    region starts with vec_len=1 (or the end when nothing matches)."""
    rng = random.Random(SEED + 3)
    for _ in range(300 if PURE else 1000):
        masks = rand_masks(rng)
        i, j = rand_range(rng, layout.npages)
        start, end = layout.addr(i), layout.addr(j)
        res = scan_pages(memoryview(layout.cats)[i:j], start=start, masks=masks,
                         max_pages=rand_max_pages(rng), max_regions=0)
        assert len(res.regions) == 0
        if masks.matches_nothing:
            assert res.walk_end == end
            continue
        inverted, mask, anyof, ret = masks.to_kernel()
        want, _ = layout.scanner.scan(start, end, vec_len=1, inverted=inverted, mask=mask,
                                      anyof=anyof, return_mask=ret)
        assert res.walk_end == (want[0][0] if want else end), (masks, i, j)
    assert_layout_unchanged(layout)


try:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover
    given = None


if given is not None:
    # Sparse masks (a few bits) match something often; dense ones rarely do.
    _mask_st = st.one_of(st.sets(st.sampled_from(_BITS), max_size=3).map(sum),
                         st.integers(0, 0x1FF))

    @st.composite
    def _case(draw):
        n = 8 * PMD_PAGES
        i = draw(st.integers(0, n))
        j = draw(st.integers(i, n))
        if draw(st.booleans()):
            masks = Masks(required=draw(_mask_st), anyof=draw(_mask_st),
                          excluded=draw(_mask_st), return_mask=draw(_mask_st))
        else:
            masks = Masks.from_kernel(inverted=draw(_mask_st), mask=draw(_mask_st),
                                      anyof=draw(_mask_st), return_mask=draw(_mask_st))
        max_pages = draw(st.one_of(st.just(0), st.integers(1, 20), st.integers(1, 4000)))
        max_regions = draw(st.one_of(st.integers(1, 8), st.integers(1, 512)))
        return masks, i, j, max_pages, max_regions

    @pytest.mark.kernel
    @settings(max_examples=N_HYPOTHESIS, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.function_scoped_fixture,
                                     HealthCheck.too_slow])
    @given(case=_case())
    def test_hypothesis_cases_match_kernel(layout: Layout, case) -> None:
        masks, i, j, max_pages, max_regions = case
        assert j <= layout.npages
        compare_one(layout, masks, i, j, max_pages, max_regions)

    @pytest.mark.kernel
    def test_layout_still_unchanged_after_hypothesis(layout: Layout) -> None:
        assert_layout_unchanged(layout)
