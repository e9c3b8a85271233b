"""The soft-dirty backend on the host (no soft-dirty needed).

This kernel has no CONFIG_MEM_SOFT_DIRTY, so soft-dirty itself is tested in the qemu
lane (tests/vm/test_softdirty_vm.py). Here: parsing of real pagemap entries recorded
on this machine (tests/data) plus synthesised soft-dirty bits, the maps parser, the
mask translation for PAGEMAP_SCAN, the per-VMA stitching against one scan over a
dense array with holes, the pending-dirty folding (through a simulated process with
soft-dirty semantics standing in for the kernel), the probe's reason on this
machine, and the mapping of errors to AccessDenied / NoSuchProcess with real
processes.
"""

from __future__ import annotations

import array
import itertools
import json
import mmap
import os
import pathlib
import random
import signal
import struct
import subprocess
import sys
import threading
import time

import pytest

import pagescan
from pagescan import procfs
from pagescan import HOLE, AccessDenied, Category, Masks, NoSuchProcess, RangeError
from pagescan._impl import impl
from pagescan.backends import softdirty as sdmod
from pagescan.backends.softdirty import (PATH_READ, PATH_SCAN, SoftDirtyBackend, kernel_masks,
                                         parse_maps, runs_clip, runs_subtract, runs_union,
                                         segments, stitch, user_categories, with_required)
from pagescan.constants import USER_ADDRESS_LIMIT as USER_TOP
from pagescan.kernel import Kernel
from pagescan.procfs import Mapping as Vma

P = mmap.PAGESIZE
W, SD = int(Category.WRITTEN), int(Category.SOFT_DIRTY)
PRESENT, FILE, SWAPPED, GUARD = (int(Category.PRESENT), int(Category.FILE),
                                 int(Category.SWAPPED), int(Category.GUARD))
B55, B57, B58, B61, B62, B63 = (1 << 55, 1 << 57, 1 << 58, 1 << 61, 1 << 62, 1 << 63)
DATA = pathlib.Path(__file__).parent / "data"


# ------------------------------------------------------------------ a simulated process


class FakeProcess:
    """Soft-dirty as the kernel keeps it: VMAs (new ones VM_SOFTDIRTY), page entries,
    PTE soft-dirty bits; clear_refs clears both."""

    def __init__(self, vmas: list[Vma]) -> None:
        self.vmas = list(vmas)
        self.vma_dirty = {v.start for v in vmas}     # new VMAs are VM_SOFTDIRTY
        self.entries: dict[int, int] = {}            # page -> entry without bit 55
        self.dirty: set[int] = set()                 # pages with the PTE bit
        self.clears = 0
        self.before_clear = None                     # hook: runs just before a clear

    def vma_of(self, page: int) -> Vma | None:
        for v in self.vmas:
            if v.start <= page < v.end:
                return v
        return None

    def write(self, addr: int) -> None:
        page = addr - addr % P
        assert self.vma_of(page), hex(page)
        self.entries[page] = self.entries.get(page, 0) | B63 | (1 << 56) | 0x1234
        self.dirty.add(page)

    def entry(self, page: int) -> int:
        e = self.entries.get(page, 0)
        v = self.vma_of(page)
        if page in self.dirty or (v is not None and v.start in self.vma_dirty):
            e |= B55
        return e

    def clear(self) -> None:
        if self.before_clear:
            self.before_clear()
        self.dirty.clear()
        self.vma_dirty.clear()
        self.clears += 1

    # what the kernel's PAGEMAP_SCAN would answer (unregistered VMAs: present = WRITTEN)
    def kernel_categories(self, page: int) -> int:
        v = self.vma_of(page)
        if v is None or v.special:
            return HOLE
        return impl.pagemap_to_categories(array.array("Q", [self.entry(page)]))[0]


class FakeKernel(Kernel):
    """A Kernel whose process is a FakeProcess: what the backend reads through the
    seam (maps, pagemap entries, PAGEMAP_SCAN, clear_refs) comes from it."""

    real = True          # behaves as the real kernel of another process

    def __init__(self, pid: int, path: str, proc: FakeProcess,
                 kernel_categories: int = 0x1FF, is_self: bool = False) -> None:
        self.proc = proc
        self.pid = pid
        self.kernel_categories = kernel_categories
        self._self = is_self
        self._cache = {"softdirty": pagescan.backends.Probe(
            True, "", {"path": path, "kernel_categories": kernel_categories})}

    is_self = property(lambda self: self._self)
    release = property(lambda self: "fake")
    probe_cache = property(lambda self: self._cache)

    def maps(self) -> list[Vma]:
        return list(self.proc.vmas)

    def alive(self) -> bool:
        return True

    def status(self):
        return {}

    def pagemap_read(self, start: int, out: memoryview) -> None:
        n = len(out) // 8
        out[:] = struct.pack(f"<{n}Q", *(self.proc.entry(start + i * P) for i in range(n)))

    def pagemap_scan(self, start, end, flags=0, masks=None, max_pages=0, max_regions=None):
        if (masks.inverted | masks.mask | masks.anyof | masks.return_mask) & \
                ~self.kernel_categories:
            raise OSError(22, "PAGEMAP_SCAN: Invalid argument")   # as before 6.15
        cats = array.array("Q", [self.proc.kernel_categories(a) for a in range(start, end, P)])
        return impl.scan_pages(cats, start=start, masks=masks, max_pages=max_pages,
                               max_regions=max_regions)

    def clear_refs(self, value: int = 4) -> None:
        self.proc.clear()

    def mprotect(self, addr, length, prot):
        raise NotImplementedError

    def madvise(self, addr, length, advice):
        pass                                     # fake addresses: nothing to advise

    def is_mapped(self, addr, length):
        return True

    def scratch(self, npages):
        raise NotImplementedError

    def userfaultfd(self, features, optional=0):
        raise NotImplementedError


_fake_pids = itertools.count(10_000_000)


@pytest.fixture
def fake():
    """``fake(vmas, path) -> (FakeProcess, kernel)``: backends over ``kernel`` drive it."""
    made: list[int] = []

    def make(vmas, path=PATH_READ, kernel_categories=0x1FF):
        pid = next(_fake_pids)
        made.append(pid)
        proc = FakeProcess(vmas)
        return proc, FakeKernel(pid, path, proc, kernel_categories)

    yield make
    for pid in made:
        sdmod.target._targets.pop(pid, None)


def rw(start_page: int, npages: int, perms: str = "rw-p", path: str = "") -> Vma:
    return Vma(start_page * P, (start_page + npages) * P, perms, path=path)


def pages(regions) -> set[int]:
    return {a for s, e, *_ in regions for a in range(s, e, P)}


WRITTEN_ONLY = Masks(required=Category.WRITTEN, return_mask=Category.WRITTEN)


# ------------------------------------------------------------------ recorded pagemap data


def recorded() -> tuple[list[str], list[int]]:
    meta = json.loads((DATA / "pagemap-6.18.44.json").read_text())
    raw = (DATA / "pagemap-6.18.44.bin").read_bytes()
    return meta["kinds"], list(struct.unpack(f"<{len(raw) // 8}Q", raw))


def test_recorded_entries_have_the_documented_bits():
    kinds, entries = recorded()
    e = dict(zip(kinds, entries, strict=True))
    assert e["none"] == 0
    assert e["anon_written"] & B63 and not e["anon_written"] & (B61 | B62)
    assert e["zero_page"] & B63 and not e["zero_page"] & (1 << 56)   # never exclusive
    assert e["file"] & B63 and e["file"] & B61
    assert e["shmem_written"] & B63 and e["shmem_written"] & B61
    assert e["guard"] & B58 and e["guard"] & B62 and not e["guard"] & B63
    assert not any(x & B55 for x in entries), "this kernel has no soft-dirty: bit 55 is 0"


@pytest.mark.parametrize("path", [PATH_READ, PATH_SCAN])
@pytest.mark.parametrize("soft_dirty", [False, True], ids=["recorded", "bit55"])
def test_parsing_of_recorded_entries(fake, path, soft_dirty):
    """Recorded entries (and the same with bit 55 set, as a soft-dirty kernel gives
    them) through the backend's own conversion: WRITTEN is soft-dirty, nothing else."""
    kinds, entries = recorded()
    n = len(entries)
    proc, k = fake([rw(0x1000, n)], path)
    for i, e in enumerate(entries):
        proc.entries[0x1000 * P + i * P] = e
    proc.vma_dirty.clear()
    if soft_dirty:
        proc.dirty = {0x1000 * P + i * P for i in range(n)}
    expected = {"anon_written": PRESENT, "none": 0, "zero_page": PRESENT,
                "file": PRESENT | FILE, "shmem_written": PRESENT | FILE,
                "guard": SWAPPED | GUARD}
    t = sdmod.Target(k, path)
    cats = list(t.dense(0x1000 * P, (0x1000 + n) * P, []))
    for kind, c in zip(kinds, cats, strict=True):
        want = expected[kind] | (W | SD if soft_dirty else 0)
        assert c == want, (kind, path, hex(c), hex(want))
    # a pending page reads WRITTEN (not SOFT_DIRTY)
    cats = list(t.dense(0x1000 * P, (0x1000 + n) * P, [(0x1001 * P, 0x1002 * P)]))
    assert cats[1] == W | (SD if soft_dirty else 0)


def test_entries_that_uffd_wp_marks_are_written_when_soft_dirty(fake):
    # bit 57 (uffd-wp) is the uffd backend's WRITTEN; here only bit 55 counts
    proc, k = fake([rw(0x10, 2)])
    proc.entries[0x10 * P] = B63 | B57
    proc.entries[0x11 * P] = B63
    proc.vma_dirty.clear()
    proc.dirty = {0x10 * P}
    cats = list(sdmod.Target(k, PATH_READ).dense(0x10 * P, 0x12 * P, []))
    assert cats == [PRESENT | W | SD, PRESENT]


# ------------------------------------------------------------------ maps


MAPS = """\
55d0c0a00000-55d0c0a02000 r--p 00000000 08:01 1234                       /usr/bin/python3.11
55d0c0a02000-55d0c0a10000 r-xp 00002000 08:01 1234                       /usr/bin/python3.11
55d0c0c00000-55d0c0c02000 rw-p 00010000 08:01 1234                       /usr/bin/python3.11
55d0c1000000-55d0c1400000 rw-p 00000000 00:00 0                          [heap]
7f0000000000-7f0000100000 rw-p 00000000 00:00 0 $
7f0000100000-7f0000101000 ---p 00000000 00:00 0 $
7f0000200000-7f0000201000 rw-s 00000000 00:05 99                         /dev/shm/my file (deleted)
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]
7ffd00100000-7ffd00104000 r--p 00000000 00:00 0                          [vvar]
7ffd00104000-7ffd00106000 r-xp 00000000 00:00 0                          [vdso]
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
""".replace(" $\n", " \n")     # anonymous mappings end in a space, as in the kernel's text


def test_parse_maps():
    vmas = parse_maps(MAPS)
    assert len(vmas) == 11
    assert vmas[0] == Vma(0x55D0C0A00000, 0x55D0C0A02000, "r--p", 0, "08:01", 1234,
                          "/usr/bin/python3.11")
    assert vmas[4] == Vma(0x7F0000000000, 0x7F0000100000, "rw-p", path="")
    assert vmas[6].path == "/dev/shm/my file (deleted)" and vmas[6].writable
    assert not vmas[5].writable
    assert parse_maps(MAPS.encode()) == vmas
    assert parse_maps("") == []


def test_segments_of_a_whole_process_are_its_writable_mappings():
    vmas = parse_maps(MAPS)
    assert segments(vmas, 0, USER_TOP, writable_only=True) == [
        (0x55D0C0C00000, 0x55D0C0C02000), (0x55D0C1000000, 0x55D0C1400000),
        (0x7F0000000000, 0x7F0000100000), (0x7F0000200000, 0x7F0000201000),
        (0x7FFD00000000, 0x7FFD00021000)]
    # a range: every mapping in it, adjacent ones joined, clipped; [vvar] never
    assert segments(vmas, 0x55D0C0A01000, 0x55D0C0A05000) == [(0x55D0C0A01000, 0x55D0C0A05000)]
    assert segments(vmas, 0x7FFD00000000, 0x7FFD00200000) == [
        (0x7FFD00000000, 0x7FFD00021000), (0x7FFD00104000, 0x7FFD00106000)]


def test_segments_of_this_process_cover_its_writable_memory():
    buf = pagescan.allocate(3 * P)
    segs = segments(parse_maps(open("/proc/self/maps").read()), 0, USER_TOP, True)
    a = buf.address
    assert any(s <= a and a + 3 * P <= e for s, e in segs)


# ------------------------------------------------------------------ runs


def test_runs_against_page_sets():
    rnd = random.Random(7)

    def rand_runs():
        pts = sorted(rnd.sample(range(0, 60), rnd.randrange(0, 12)))
        return [(pts[i] * P, pts[i + 1] * P) for i in range(0, len(pts) - 1, 2)]

    def as_set(runs):
        return {a for s, e in runs for a in range(s, e, P)}

    def canonical(runs):
        return all(runs[i][1] < runs[i + 1][0] for i in range(len(runs) - 1)) and all(
            s < e for s, e in runs)

    for _ in range(500):
        a, b = runs_union(rand_runs(), ()), runs_union(rand_runs(), ())
        u = runs_union(a, b)
        assert as_set(u) == as_set(a) | as_set(b) and canonical(u)
        d = runs_subtract(a, b)
        assert as_set(d) == as_set(a) - as_set(b) and canonical(d)
        lo, hi = sorted(rnd.sample(range(0, 61), 2))
        c = runs_clip(a, lo * P, hi * P)
        assert as_set(c) == {x for x in as_set(a) if lo * P <= x < hi * P}


# ------------------------------------------------------------------ masks


BITS = [W, SD, PRESENT, FILE]


def random_masks(rnd: random.Random, bits=(W, SD, PRESENT, FILE, SWAPPED)) -> Masks:
    def sub():
        return sum(b for b in bits if rnd.random() < 0.3)
    if rnd.random() < 0.5:
        return Masks(required=sub(), anyof=sub(), excluded=sub(),
                     return_mask=rnd.choice([0, 0x1FF, W, SD, W | PRESENT, sub()]))
    return Masks.from_kernel(inverted=sub(), mask=sub(), anyof=sub(),
                             return_mask=rnd.choice([0, 0x1FF, W, SD, PRESENT, sub()]))


def test_kernel_masks_filter_like_the_callers_masks():
    """Every kernel category value (WRITTEN there is "present", SOFT_DIRTY the bit):
    the translated filter matches iff the caller's matches the page in this backend's
    terms, and the reported categories translate back to the caller's."""
    rnd = random.Random(1)
    values = [sum(b for b, on in zip(BITS, combo, strict=True) if on)
              for combo in itertools.product([0, 1], repeat=len(BITS))]
    for _ in range(3000):
        m = random_masks(rnd)
        for with_sd in (False, True):
            k = kernel_masks(m, with_soft_dirty=with_sd)
            for c in values:
                user = user_categories(c)
                assert (k is not None and k.matches(c)) == m.matches(user), (m, k, hex(c))
                if k is not None and k.matches(c):
                    assert user_categories(c & k.return_mask, m.return_mask) == \
                        user & m.return_mask
                    if with_sd:
                        assert k.return_mask & SD
                    assert not k.return_mask & W          # never the kernel's WRITTEN


def test_kernel_masks_before_guard_existed():
    """Before 6.15 PAGEMAP_SCAN has no GUARD (a mask with it is EINVAL): such a kernel
    never reports it, so GUARD is 0 on every page and leaves the kernel's masks."""
    rnd = random.Random(11)
    no_guard = 0xFF
    values = [sum(b for b, on in zip(BITS, combo, strict=True) if on)
              for combo in itertools.product([0, 1], repeat=len(BITS))]
    for _ in range(3000):
        m = random_masks(rnd, (W, SD, PRESENT, GUARD))
        k = kernel_masks(m, kernel_categories=no_guard)
        if k is not None:
            assert not (k.inverted | k.mask | k.anyof | k.return_mask) & GUARD
        for c in values:
            assert (k is not None and k.matches(c)) == m.matches(user_categories(c)), (m, k)


def test_fix_bit():
    rnd = random.Random(12)
    for _ in range(3000):
        m = random_masks(rnd)
        for bit, value in ((W, 0), (W, 1), (SWAPPED, 0), (PRESENT, 1)):
            r = sdmod.fix_bit(m, bit, value)
            if r is not None:
                assert not (r.inverted | r.mask | r.anyof) & bit
            for c in range(32):
                c = sum(b for i, b in enumerate([*BITS, SWAPPED]) if c >> i & 1)
                c = (c | bit) if value else (c & ~bit)
                assert (r is not None and r.matches(c)) == m.matches(c), (m, r, bit, value)


def test_with_required():
    rnd = random.Random(2)
    for _ in range(3000):
        m = random_masks(rnd)
        for bit in (W, PRESENT):
            r = with_required(m, bit)
            for c in range(32):
                c = sum(b for i, b in enumerate([*BITS, SWAPPED]) if c >> i & 1)
                want = m.matches(c) and bool(c & bit)
                assert (r is not None and r.matches(c)) == want, (m, r, hex(c))


# ------------------------------------------------------------------ stitching


def test_stitch_across_pieces_like_one_scan():
    """``stitch`` over pieces with gaps gives what one scan_pages over the dense array
    (HOLE in the gaps) gives, for every max_pages / max_regions."""
    rnd = random.Random(3)
    for _ in range(1500):
        n = rnd.randrange(1, 40)
        dense = array.array("Q", [rnd.choice([HOLE, 0, W, W, PRESENT, W | PRESENT])
                                  for _ in range(n)])
        base = 0x100 * P
        pieces = []
        i = 0
        while i < n:
            if dense[i] & HOLE:
                i += 1
                continue
            j = i + 1
            cut = rnd.randrange(1, 5)
            while j < n and not dense[j] & HOLE and j - i < cut:
                j += 1
            pieces.append((base + i * P, base + j * P))
            i = j
        m = random_masks(rnd, (W, PRESENT))
        mp = rnd.choice([0, 0, 1, 2, 3, 5, 8])
        mr = rnd.choice([None, None, 1, 2, 3, 4])

        def scan_piece(s, e, max_pages, max_regions, dense=dense, base=base, m=m):
            i, j = (s - base) // P, (e - base) // P
            res = impl.scan_pages(dense[i:j], start=s, masks=m, max_pages=max_pages,
                                  max_regions=max_regions)
            return res.regions, res.walk_end, lambda limit: []

        want = impl.scan_pages(dense, start=base, masks=m, max_pages=mp, max_regions=mr)
        got, _ = stitch(pieces, scan_piece, base + n * P, max_pages=mp, max_regions=mr)
        assert list(got.regions) == list(want.regions), (pieces, m, mp, mr)
        assert got.walk_end == want.walk_end, (pieces, m, mp, mr)


def random_process(rnd: random.Random, base_page: int = 0x200):
    """VMAs with gaps between some of them; random page states and soft-dirty bits."""
    vmas = []
    p = base_page
    for _ in range(rnd.randrange(1, 7)):
        p += rnd.choice([0, 0, 1, 3])
        size = rnd.randrange(1, 7)
        perms = rnd.choice(["rw-p", "rw-p", "rw-p", "r--p", "rw-s"])
        vmas.append(rw(p, size, perms))
        p += size
    proc = FakeProcess(vmas)
    proc.vma_dirty = {v.start for v in vmas if rnd.random() < 0.2}
    for v in vmas:
        for a in range(v.start, v.end, P):
            kind = rnd.random()
            if kind < 0.3:
                continue                                   # none
            if kind < 0.8:
                proc.entries[a] = B63 | (B61 if v.perms.endswith("s") else 0)
            elif kind < 0.9:
                proc.entries[a] = B62 | 0x40                # swapped
            else:
                proc.entries[a] = B63 | B61
            if rnd.random() < 0.5:
                proc.dirty.add(a)
    return proc, base_page * P, p * P


def model(proc: FakeProcess, lo: int, hi: int, pending, writable_only: bool):
    """This backend's categories, page by page, with HOLE where it must not look."""
    pend = {a for s, e in pending for a in range(s, e, P)}
    out = array.array("Q")
    for a in range(lo, hi, P):
        v = proc.vma_of(a)
        if v is None or (writable_only and not v.writable):
            out.append(HOLE)
            continue
        e = proc.entry(a)
        c = 0
        if e & B55:
            c |= W | SD
        c |= (PRESENT if e & B63 else 0) | (SWAPPED if e & B62 else 0) | \
            (FILE if e & B61 else 0) | (GUARD if e & B58 else 0)
        if a in pend:
            c |= W
        out.append(c)
    return out


@pytest.mark.parametrize(("path", "kernel_categories"),
                         [(PATH_READ, 0x1FF), (PATH_SCAN, 0x1FF), (PATH_SCAN, 0xFF)],
                         ids=["read", "scan", "scan-6.12"])
def test_scan_per_vma_matches_one_dense_scan(fake, monkeypatch, path, kernel_categories):
    """A whole-process tracker: scan per VMA, read-only ones too (in chunks of 3 pages here) with
    pending pages, stitched; compared with scan_pages over the dense array. Before
    6.15 PAGEMAP_SCAN refuses GUARD in a mask (EINVAL)."""
    monkeypatch.setattr(sdmod.target, "CHUNK_PAGES", 3)
    rnd = random.Random(4 if path == PATH_READ else kernel_categories)
    for case in range(300):
        proc0, lo, hi = random_process(rnd)
        proc, k = fake(proc0.vmas, path, kernel_categories)
        b = SoftDirtyBackend(kernel=k)
        b.register(0, USER_TOP)
        (rng,) = b._ranges
        proc.entries, proc.dirty, proc.vma_dirty = proc0.entries, proc0.dirty, proc0.vma_dirty
        pend = runs_union([(a, a + P) for a in range(lo, hi, P) if rnd.random() < 0.15], ())
        rng.pending = pend
        for _ in range(6):
            m = random_masks(rnd, (W, SD, PRESENT, FILE, SWAPPED, GUARD))
            mp = rnd.choice([0, 0, 1, 2, 3, 7])
            mr = rnd.choice([None, None, 1, 2, 3])
            s = lo + rnd.randrange(0, 3) * P
            e = max(s + P, hi - rnd.randrange(0, 3) * P)
            want = impl.scan_pages(model(proc, s, e, pend, False), start=s, masks=m,
                                   max_pages=mp, max_regions=mr)
            got = b.scan(s, e, m, max_pages=mp, max_regions=mr)
            ctx = (case, path, proc.vmas, m, mp, mr, hex(s), hex(e))
            assert list(got.regions) == list(want.regions), ctx
            assert got.walk_end == want.walk_end, ctx
        # the whole process at once: the same, walk_end = the top of user space
        m = random_masks(rnd)
        want = impl.scan_pages(model(proc, lo, hi, pend, False), start=lo, masks=m)
        got = b.scan(0, USER_TOP, m)
        assert list(got.regions) == list(want.regions)
        assert got.walk_end == USER_TOP
        b.close()


@pytest.mark.parametrize("path", [PATH_READ, PATH_SCAN])
def test_resuming_from_walk_end_gives_the_whole_answer(fake, monkeypatch, path):
    monkeypatch.setattr(sdmod.target, "CHUNK_PAGES", 4)
    rnd = random.Random(6)
    for _ in range(100):
        proc0, lo, hi = random_process(rnd)
        proc, k = fake(proc0.vmas, path)
        b = SoftDirtyBackend(kernel=k)
        b.register(0, USER_TOP)
        proc.entries, proc.dirty, proc.vma_dirty = proc0.entries, proc0.dirty, proc0.vma_dirty
        m = random_masks(rnd)
        full = b.scan(lo, hi, m)
        parts, start = [], lo
        mp, mr = rnd.choice([1, 2, 3]), rnd.choice([None, 1, 2])
        while start < hi:
            res = b.scan(start, hi, m, max_pages=mp, max_regions=mr)
            parts.append(res.regions)
            assert res.walk_end > start
            start = res.walk_end
        assert list(impl.coalesce(*parts)) == list(full.regions)
        b.close()


def test_explicit_range_over_adjacent_vmas(fake):
    proc, k = fake([rw(0x10, 2), rw(0x12, 2, "r--p"), rw(0x16, 2)])
    b = SoftDirtyBackend(kernel=k)
    b.register(0x10 * P, 0x14 * P)               # two adjacent VMAs: fine
    with pytest.raises(RangeError, match="not entirely mapped"):
        b.register(0x13 * P, 0x17 * P)           # a gap
    proc.write(0x10 * P)
    res = b.scan(0x10 * P, 0x14 * P, Masks())
    assert list(res.regions) == [(0x10 * P, 0x11 * P, W | SD | PRESENT),
                                 (0x11 * P, 0x14 * P, 0)]
    b.close()


# ------------------------------------------------------------------ pending folding


@pytest.mark.parametrize("path", [PATH_READ, PATH_SCAN])
def test_reset_of_one_tracker_keeps_the_others_writes(fake, path):
    proc, k = fake([rw(0x10, 8), rw(0x20, 8)], path)
    a, b = SoftDirtyBackend(kernel=k), SoftDirtyBackend(kernel=k)
    A, B = (0x10 * P, 0x18 * P), (0x20 * P, 0x28 * P)
    a.register(*A)
    b.register(*B)
    assert a.scan(*A, WRITTEN_ONLY).regions.pages() == 0       # armed: all clean
    assert b.scan(*B, WRITTEN_ONLY).regions.pages() == 0
    proc.write(A[0] + P)
    proc.write(B[0] + 2 * P)
    proc.write(B[0] + 3 * P)
    clears = proc.clears
    a.reset(*A)                                   # clear_refs: the whole process
    assert proc.clears == clears + 1 and not proc.dirty
    assert pages(a.scan(*A, WRITTEN_ONLY).regions) == set()
    assert pages(b.scan(*B, WRITTEN_ONLY).regions) == {B[0] + 2 * P, B[0] + 3 * P}
    assert b.pending() == [(B[0] + 2 * P, B[0] + 4 * P)]
    # pending pages are WRITTEN, not SOFT_DIRTY (that stays the kernel's bit)
    assert list(b.scan(B[0] + 2 * P, B[0] + 3 * P, Masks()).regions) == \
        [(B[0] + 2 * P, B[0] + 3 * P, W | PRESENT)]
    # a write after the fold, then a collect of B that reports one page only
    proc.write(B[0] + 6 * P)
    res = b.scan(*B, WRITTEN_ONLY, max_pages=1, reset=True)
    assert pages(res.regions) == {B[0] + 2 * P} and res.walk_end == B[0] + 3 * P
    assert pages(b.scan(*B, WRITTEN_ONLY).regions) == {B[0] + 3 * P, B[0] + 6 * P}
    # the rest, and then nothing
    assert pages(b.scan(*B, WRITTEN_ONLY, reset=True).regions) == {B[0] + 3 * P, B[0] + 6 * P}
    assert pages(b.scan(*B, WRITTEN_ONLY).regions) == set()
    assert b.pending() == []
    a.close()
    b.close()


@pytest.mark.parametrize("path", [PATH_READ, PATH_SCAN])
def test_reset_of_a_sub_range_keeps_the_rest_of_the_range(fake, path):
    proc, k = fake([rw(0x10, 8)], path)
    a = SoftDirtyBackend(kernel=k)
    A = (0x10 * P, 0x18 * P)
    a.register(*A)
    for i in (1, 2, 5, 6):
        proc.write(A[0] + i * P)
    a.reset(A[0], A[0] + 4 * P)
    assert pages(a.scan(*A, WRITTEN_ONLY).regions) == {A[0] + 5 * P, A[0] + 6 * P}
    a.reset(*A)
    assert pages(a.scan(*A, WRITTEN_ONLY).regions) == set()
    a.close()


@pytest.mark.parametrize("path", [PATH_READ, PATH_SCAN])
def test_collect_keeps_what_it_does_not_report(fake, monkeypatch, path):
    """Random collects (masks, max_pages, max_regions) by a whole-process tracker A
    while tracker B watches part of the same process: afterwards A reads WRITTEN
    exactly the written pages it did not report, and B still reads all of its own."""
    monkeypatch.setattr(sdmod.target, "CHUNK_PAGES", 3)
    rnd = random.Random(9)
    for case in range(200):
        proc0, _, hi = random_process(rnd)
        theirs = rw(hi // P + 2, 5)
        proc, k = fake([*proc0.vmas, theirs], path)
        a, b = SoftDirtyBackend(kernel=k), SoftDirtyBackend(kernel=k)
        a.register(0, USER_TOP)
        b.register(theirs.start, theirs.end)
        proc.entries = dict(proc0.entries)
        for page in proc0.dirty:
            proc.write(page)
        for i in range(5):
            if rnd.random() < 0.5:
                proc.write(theirs.start + i * P)
        before_a = pages(a.scan(0, USER_TOP, WRITTEN_ONLY).regions)
        before_b = pages(b.scan(theirs.start, theirs.end, WRITTEN_ONLY).regions)
        m = random_masks(rnd)
        mp, mr = rnd.choice([0, 0, 1, 2, 5]), rnd.choice([None, 1, 2])
        res = a.scan(0, USER_TOP, m, max_pages=mp, max_regions=mr, reset=True)
        reported = pages(res.regions) & before_a
        after_a = pages(a.scan(0, USER_TOP, WRITTEN_ONLY).regions)
        after_b = pages(b.scan(theirs.start, theirs.end, WRITTEN_ONLY).regions)
        ctx = (case, path, m, mp, mr)
        assert after_a == before_a - reported, ctx
        assert after_b == before_b, ctx
        a.close()
        b.close()


def test_a_write_after_the_fold_and_before_the_clear_is_the_window(fake):
    """The documented window: a write that lands between the fold's read and the
    clear_refs write is lost (for another process, freeze=True closes it)."""
    proc, k = fake([rw(0x10, 4), rw(0x20, 4)])
    a, b = SoftDirtyBackend(kernel=k), SoftDirtyBackend(kernel=k)
    a.register(0x10 * P, 0x14 * P)
    b.register(0x20 * P, 0x24 * P)
    proc.write(0x20 * P)
    proc.before_clear = lambda: proc.write(0x21 * P)
    a.reset(0x10 * P, 0x14 * P)
    proc.before_clear = None
    assert pages(b.scan(0x20 * P, 0x24 * P, WRITTEN_ONLY).regions) == {0x20 * P}
    assert SoftDirtyBackend.capabilities.atomic_reset is False
    assert SoftDirtyBackend.capabilities.range_reset is False
    a.close()
    b.close()


def test_new_mappings_read_as_written(fake):
    proc, k = fake([rw(0x10, 4)])
    b = SoftDirtyBackend(kernel=k)
    b.register(0, USER_TOP)
    proc.vmas.append(rw(0x30, 3))
    proc.vma_dirty.add(0x30 * P)                   # VM_SOFTDIRTY, untouched
    assert pages(b.scan(0, USER_TOP, WRITTEN_ONLY).regions) == {0x30 * P, 0x31 * P, 0x32 * P}
    b.close()


def test_unregistered_ranges_are_no_longer_folded(fake):
    proc, k = fake([rw(0x10, 4), rw(0x20, 4)])
    a, b = SoftDirtyBackend(kernel=k), SoftDirtyBackend(kernel=k)
    a.register(0x10 * P, 0x14 * P)
    b.register(0x20 * P, 0x24 * P)
    b.unregister(0x20 * P, 0x24 * P)
    proc.write(0x20 * P)
    a.reset(0x10 * P, 0x14 * P)
    assert b.pending() == []
    a.close()
    b.close()
    assert k.pid not in sdmod.target._targets                 # the last user closed it



# ------------------------------------------------------------------ issue 12: lost writes


@pytest.mark.parametrize("path", [PATH_READ, PATH_SCAN])
@pytest.mark.parametrize("perms", ["r--p", "---p", "r-xp"])
def test_whole_process_keeps_writes_to_a_mapping_made_read_only(fake, path, perms):
    """Issue 12 item 1: pages written, then mprotect(PROT_READ), then a collect (whose
    clear_refs clears every page's bit), then write access back: the writes must be
    reported (at the first collect: the span of a whole-process tracker includes
    read-only and PROT_NONE mappings), never lost."""
    proc, k = fake([rw(0x10, 8), rw(0x20, 8)], path)
    b = SoftDirtyBackend(kernel=k)
    b.register(0, USER_TOP)
    assert pages(b.scan(0, USER_TOP, WRITTEN_ONLY).regions) == set()
    proc.write(0x20 * P + P)
    proc.write(0x20 * P + 5 * P)
    proc.vmas[1] = rw(0x20, 8, perms)                        # mprotect(PROT_READ)
    got = pages(b.scan(0, USER_TOP, WRITTEN_ONLY, reset=True).regions)
    assert got == {0x20 * P + P, 0x20 * P + 5 * P}
    proc.vmas[1] = rw(0x20, 8)                               # write access back
    assert pages(b.scan(0, USER_TOP, WRITTEN_ONLY, reset=True).regions) == set()
    # the same through another tracker's reset (the fold before its clear_refs)
    a = SoftDirtyBackend(kernel=k)
    a.register(0x10 * P, 0x18 * P)
    proc.write(0x20 * P + 2 * P)
    proc.vmas[1] = rw(0x20, 8, perms)
    a.reset(0x10 * P, 0x18 * P)
    proc.vmas[1] = rw(0x20, 8)
    assert pages(b.scan(0, USER_TOP, WRITTEN_ONLY).regions) == {0x20 * P + 2 * P}
    a.close()
    b.close()


def test_simulated_whole_process_keeps_writes_to_a_mapping_made_read_only():
    """Item 1 over the simulated kernel (the real backend code): write, mprotect
    PROT_READ, collect, PROT_READ|PROT_WRITE, collect."""
    from pagescan.simulator import PROT_READ, PROT_WRITE, SimProcess
    sim = SimProcess()
    a = sim.mmap(64 * P)
    with pagescan.track(backend="simulator", pid=sim.pid, mechanism="softdirty") as t:
        t.collect()
        for i in range(20):
            sim.write(a + 3 * i * P)
        sim.mprotect(a, 64 * P, PROT_READ)
        first = pages(t.collect().regions)
        sim.mprotect(a, 64 * P, PROT_READ | PROT_WRITE)
        second = pages(t.collect().regions)
        assert {a + 3 * i * P for i in range(20)} <= first | second
        assert first == {a + 3 * i * P for i in range(20)}


def test_simulated_arming_a_neighbour_keeps_a_tracker_clean():
    """Issue 12 item 2: mmap 1040 pages at a, track [a+16P, +1024P), a new mapping
    over [a, +16P) (MAP_FIXED: VM_SOFTDIRTY), track it: the first tracker must still
    read 0 written pages (MADV_NOHUGEPAGE merges the two VMAs: done after the clear,
    the merged VMA is not VM_SOFTDIRTY)."""
    from pagescan.simulator import MAP_ANONYMOUS, MAP_FIXED, MAP_PRIVATE, SimProcess
    sim = SimProcess()
    a = sim.mmap(1040 * P)
    t1 = sim.track(a + 16 * P, 1024 * P, mechanism="softdirty")
    assert t1.written().pages() == 0
    sim.mmap(16 * P, flags=MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, addr=a)
    t2 = sim.track(a, 16 * P, mechanism="softdirty")
    assert [(m.start, m.end) for m in sim.maps() if m.start <= a < m.end] == \
        [(a, a + 1040 * P)]                                  # merged
    assert t1.written().pages() == 0
    assert t2.written().pages() == 0
    sim.write(a + 20 * P)
    assert pages(t1.written()) == {a + 20 * P}
    t1.close()
    t2.close()


def test_clear_refs_is_opened_on_first_use(child, monkeypatch):
    """A LinuxKernel for another process opens clear_refs lazily: reading (scan) with
    only ptrace-read rights must work although writing clear_refs is refused; and a
    lazy open checks that the pid still names the same process."""
    from pagescan import kernel as kmod
    real_open = kmod.procfs.open_proc

    def refuse_clear_refs(pid, name, flags=os.O_RDONLY):
        if name == "clear_refs":
            raise procfs.proc_error(PermissionError(13, "Permission denied"), pid,
                                    f"opening for writing /proc/{pid}/clear_refs")
        return real_open(pid, name, flags)
    monkeypatch.setattr(kmod.procfs, "open_proc", refuse_clear_refs)
    addr = child.alloc(4)
    child.write(addr + P)
    k = kmod.LinuxKernel(child.pid)              # before: AccessDenied here
    try:
        assert any(m.start <= addr < m.end for m in k.maps())
        buf = bytearray(8 * 4)
        k.pagemap_read(addr, memoryview(buf))
        assert struct.unpack("<4Q", buf)[1] & B63                 # present
        with pytest.raises(AccessDenied, match="clear_refs"):
            k.clear_refs()
    finally:
        k.close()
    monkeypatch.setattr(kmod.procfs, "open_proc", real_open)
    k = kmod.LinuxKernel(child.pid)
    try:
        monkeypatch.setattr(kmod, "_start_time", lambda pid: -1)   # as if reused
        with pytest.raises(NoSuchProcess, match="another process"):
            k.clear_refs()
    finally:
        k.close()

# ------------------------------------------------------------------ the probe


def bit55_works() -> bool:
    """An independent check: write, clear, write, read bit 55."""
    m = mmap.mmap(-1, P, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    import ctypes
    view = (ctypes.c_char * P).from_buffer(m)
    addr = ctypes.addressof(view)
    m[0] = 1
    with open("/proc/self/clear_refs", "w") as f:
        f.write("4")
    m[0] = 2
    with open("/proc/self/pagemap", "rb") as f:
        e = struct.unpack("<Q", os.pread(f.fileno(), 8, addr // P * 8))[0]
    del view
    m.close()
    return bool(e & B55)


def test_probe_reason_on_this_machine():
    p = pagescan.probe("softdirty")
    assert p is SoftDirtyBackend.probe()              # cached: run once per process
    assert p.details["kernel"] == os.uname().release
    if bit55_works():
        assert p.ok and p.details["path"] in (PATH_SCAN, PATH_READ), p
        return
    assert not p.ok
    assert p.reason.startswith("CONFIG_MEM_SOFT_DIRTY is not set in this kernel: "), p.reason
    assert "clear_refs" in p.reason and "55" in p.reason
    with pytest.raises(pagescan.BackendUnavailable, match="CONFIG_MEM_SOFT_DIRTY"):
        pagescan.track(pagescan.allocate(P), backend="softdirty")


def test_probe_folds_live_trackers_of_this_process(monkeypatch):
    """If the probe ever runs while trackers of this process live, its clear_refs
    goes through the same fold as a reset."""
    from pagescan import kernel as kmod
    proc = FakeProcess([rw(0x10, 4)])
    k = FakeKernel(os.getpid(), PATH_READ, proc, is_self=True)
    sdmod.target._targets.pop(os.getpid(), None)
    b = SoftDirtyBackend(thp=True, kernel=k)           # fake addresses: no madvise
    try:
        b.register(0x10 * P, 0x14 * P)
        proc.write(0x11 * P)
        monkeypatch.delitem(kmod.REAL_PROBES, "softdirty", raising=False)
        clears = proc.clears
        SoftDirtyBackend.probe()
        assert proc.clears == clears + 1                # the probe's clear went to it
        assert pages(b.scan(0x10 * P, 0x14 * P, WRITTEN_ONLY).regions) == {0x11 * P}
    finally:
        b.close()
        sdmod.target._targets.pop(os.getpid(), None)


# ------------------------------------------------------------------ real processes

CHILD = r"""
import mmap, sys, ctypes, signal
maps = []
usr1 = []
signal.signal(signal.SIGUSR1, lambda *_: usr1.append(1))
for line in sys.stdin:
    cmd, *args = line.split()
    if cmd == "alloc":
        m = mmap.mmap(-1, int(args[0]) * mmap.PAGESIZE)
        maps.append(m)
        print(ctypes.addressof(ctypes.c_char.from_buffer(m)), flush=True)
    elif cmd == "write":
        ctypes.c_char.from_address(int(args[0])).value = b"x"
        print("ok", flush=True)
    elif cmd == "usr1":
        print(len(usr1), flush=True)
    elif cmd == "exit":
        break
"""


class Child:
    """A Python process that allocates and writes memory on command."""

    def __init__(self) -> None:
        self.p = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)
        self.pid = self.p.pid

    def ask(self, line: str) -> str:
        self.p.stdin.write(line + "\n")
        self.p.stdin.flush()
        return self.p.stdout.readline().strip()

    def alloc(self, npages: int) -> int:
        return int(self.ask(f"alloc {npages}"))

    def write(self, addr: int) -> None:
        assert self.ask(f"write {addr}") == "ok"

    def close(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
        self.p.wait()
        self.p.stdin.close()
        self.p.stdout.close()


@pytest.fixture
def child():
    c = Child()
    yield c
    c.close()


def test_another_process_on_this_kernel(child):
    """The real I/O path against a live child: maps, pagemap, clear_refs (bit 55 never
    comes on this kernel, so only the other categories are checked here)."""
    addr = child.alloc(8)
    child.write(addr + 3 * P)
    b = SoftDirtyBackend(pid=child.pid)
    try:
        b.register(addr, addr + 8 * P)
        res = b.scan(addr, addr + 8 * P, Masks(required=Category.PRESENT))
        assert pages(res.regions) == {addr + 3 * P}
        b.register(0, USER_TOP)
        whole = b.scan(0, USER_TOP, Masks(required=Category.PRESENT, return_mask=0))
        assert addr + 3 * P in pages(whole.regions) and whole.walk_end == USER_TOP
    finally:
        b.close()


def test_an_own_buffer_on_this_kernel():
    buf = pagescan.allocate(4 * P)
    b = SoftDirtyBackend()
    try:
        b.register(buf.address, buf.address + 4 * P)
        buf[P] = 1
        res = b.scan(buf.address, buf.address + 4 * P, Masks(required=Category.PRESENT))
        assert list(res.regions) == [(buf.address + P, buf.address + 2 * P, PRESENT)]
    finally:
        b.close()


def test_no_such_process():
    pid_max = int(open("/proc/sys/kernel/pid_max").read())
    with pytest.raises(NoSuchProcess, match=f"process {pid_max + 1} does not exist"):
        SoftDirtyBackend(pid=pid_max + 1)


@pytest.mark.parametrize("reap", [False, True], ids=["zombie", "reaped"])
def test_a_process_that_exits_while_tracked(child, reap):
    addr = child.alloc(2)
    b = SoftDirtyBackend(pid=child.pid)
    try:
        b.register(addr, addr + 2 * P)
        child.p.send_signal(signal.SIGKILL)
        if reap:
            child.p.wait()
        else:
            deadline = time.monotonic() + 10
            while open(f"/proc/{child.pid}/stat").read().split(") ")[1][0] != "Z":
                assert time.monotonic() < deadline
                time.sleep(0.01)
        with pytest.raises(NoSuchProcess, match=str(child.pid)):
            b.scan(addr, addr + 2 * P, Masks())
        with pytest.raises(NoSuchProcess):
            b.reset(addr, addr + 2 * P)
    finally:
        b.close()


def in_child_as_nobody(fn) -> str:
    """Run ``fn`` in a forked child after setuid(65534); its result (or the exception's
    type and text) comes back through a pipe."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            try:
                out = f"ok {fn()}"
            except Exception as err:
                out = f"{type(err).__name__}: {err}"
            os.write(w, out.encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        out = f.read()
    os.waitpid(pid, 0)
    return out


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to uid 65534")
def test_access_denied_names_what_is_missing():
    out = in_child_as_nobody(lambda: SoftDirtyBackend(pid=1))
    assert out.startswith("AccessDenied: "), out
    assert "ptrace read access to process 1" in out
    assert "CAP_SYS_PTRACE" in out and "uid 65534" in out
    if os.path.exists("/proc/sys/kernel/yama/ptrace_scope"):
        assert "kernel.yama.ptrace_scope=" in out


def test_access_denied_is_a_permission_error():
    err = procfs.proc_error(PermissionError(13, "Permission denied"), 1, "reading x")
    assert isinstance(err, AccessDenied) and isinstance(err, PermissionError)
    err = procfs.proc_error(OSError(3, "No such process"), 5, "writing /proc/5/clear_refs")
    assert isinstance(err, NoSuchProcess) and isinstance(err, ProcessLookupError)
    err = procfs.proc_error(PermissionError(13, "x"), 5, "writing /proc/5/clear_refs")
    assert "clear_refs needs the same user" in str(err)


# ------------------------------------------------------------------ freeze


def task_states(pid: int) -> set[str]:
    out = set()
    for tid in os.listdir(f"/proc/{pid}/task"):
        stat = open(f"/proc/{pid}/task/{tid}/stat").read()
        out.add(stat.rsplit(") ", 1)[1][0])
    return out


def test_freeze_stops_every_thread_and_resumes(child):
    addr = child.alloc(1)
    assert "t" not in task_states(child.pid)
    with sdmod.frozen(child.pid):
        assert task_states(child.pid) == {"t"}        # tracing stop
        answered = []
        th = threading.Thread(target=lambda: answered.append(child.ask(f"write {addr}")))
        th.start()
        th.join(0.3)
        assert not answered                          # it cannot run
    th.join(10)
    assert answered == ["ok"]
    assert "t" not in task_states(child.pid)


def test_signal_to_deliver_on_detach():
    # waitpid statuses: (event << 16) | (signal << 8) | 0x7f for a stop
    assert sdmod.signal_to_deliver((128 << 16) | (signal.SIGTRAP << 8) | 0x7F) == 0
    assert sdmod.signal_to_deliver((128 << 16) | (signal.SIGSTOP << 8) | 0x7F) == 0
    assert sdmod.signal_to_deliver((signal.SIGUSR1 << 8) | 0x7F) == signal.SIGUSR1
    assert sdmod.signal_to_deliver(9) == 0                       # killed: not a stop


def test_freeze_loses_no_signal(child):
    """Signals sent around freezes are all delivered. One at a time: pending
    standard signals of one kind coalesce."""
    assert child.ask("usr1") == "0"                   # its handler is installed
    for i in range(1, 41):
        os.kill(child.pid, signal.SIGUSR1)
        with sdmod.frozen(child.pid):
            pass
        deadline = time.monotonic() + 5
        while int(child.ask("usr1")) < i:
            assert time.monotonic() < deadline, f"signal {i} was lost"


def test_freeze_is_for_other_processes():
    with pytest.raises(ValueError, match="cannot stop the calling process"):
        SoftDirtyBackend(freeze=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to uid 65534")
def test_freeze_without_attach_permission(child):
    pid = child.pid

    def attempt():
        with sdmod.frozen(pid):
            return "frozen"
    out = in_child_as_nobody(attempt)
    assert out.startswith("AccessDenied: freeze=True needs ptrace attach access"), out
    assert "kernel.yama.ptrace_scope" in out


# ------------------------------------------------------------------ fork


def test_a_forked_child_starts_with_no_targets():
    buf = pagescan.allocate(P)
    b = SoftDirtyBackend()
    b.register(buf.address, buf.address + P)
    try:
        assert os.getpid() in sdmod.target._targets
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.write(w, repr(sorted(sdmod.target._targets)).encode())
            os._exit(0)
        os.close(w)
        with os.fdopen(r) as f:
            assert f.read() == "[]"
        os.waitpid(pid, 0)
    finally:
        b.close()
