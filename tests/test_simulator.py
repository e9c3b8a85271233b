"""The simulator on its own: no kernel feature needed, runs anywhere numpy does.

* Scenarios: each expected answer below is what the real 6.18.44 kernel answered
  to the same operations on this project's reference machine (the differential
  test re-checks all of this against the live kernel, at random).
* PAGEMAP_SCAN: the validation errors (docs/kernel.md, 'Validation'), the stale
  walk_end, the rules of 'WP_MATCHING', and (hypothesis) one call's answer equals the core's
  ``scan_pages`` over the same categories.
* Soft-dirty: the kernel's model (new mappings dirty, VM_SOFTDIRTY, clear_refs).
* The backend: pagescan's Tracker API and the shared conformance suite on
  simulated memory, by pid and with ``with sim:``.
"""

from __future__ import annotations

import errno
import time
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from conftest import scaled
from hypothesis import strategies as st

import pagescan
from pagescan import HOLE, Category, Masks, simulator as S
from pagescan.errors import NoSuchProcess, OverlapError, RangeError
from pagescan.simulator import (MADV_DONTNEED, MADV_GUARD_INSTALL, MADV_GUARD_REMOVE,
                                MADV_HUGEPAGE, MADV_NOHUGEPAGE, MADV_PAGEOUT, MAP_ANONYMOUS,
                                MAP_FIXED, MAP_FIXED_NOREPLACE, MAP_PRIVATE, MAP_SHARED,
                                MREMAP_FIXED, MREMAP_MAYMOVE, PAGE_SIZE as P,
                                PM_SCAN_CHECK_WPASYNC, PM_SCAN_WP_MATCHING, PROT_READ,
                                PROT_WRITE, KernelConfig, SimProcess)

BASE = 0x7F0000000000
RW = PROT_READ | PROT_WRITE
HOST = KernelConfig(soft_dirty=False)             # the reference machine: no soft-dirty
NAMES = {1: "WPA", 2: "W", 4: "F", 8: "P", 16: "S", 32: "Z", 64: "H", 128: "SD", 256: "G"}


def cstr(c: int) -> str:
    return "|".join(v for k, v in NAMES.items() if c & k) or "0"


def view(sim: SimProcess, addr: int, n: int) -> list[tuple[int, int, str]]:
    """Runs of equal categories over n pages, page offsets relative to addr
    (the form the kernel experiments were recorded in); holes are left out."""
    regions, _ = sim.pm_scan_once(addr, addr + n * P, vec_len=n + 1)
    return [((s - addr) // P, (e - addr) // P, cstr(c)) for s, e, c in regions]


def fresh(config: KernelConfig = HOST, **kw: Any) -> SimProcess:
    return SimProcess(config=config, base=BASE, size=64 << 20, **kw)


def anon(sim: SimProcess, page: int, n: int, *, prot: int = RW, shared: bool = False,
         thp: bool | None = False) -> int:
    flags = (MAP_SHARED if shared else MAP_PRIVATE) | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE
    a = sim.mmap(n * P, prot, flags, addr=BASE + page * P)
    if thp is True:
        sim.madvise(a, n * P, MADV_HUGEPAGE)
    elif thp is False and not shared:
        sim.madvise(a, n * P, MADV_NOHUGEPAGE)
    return a


# ------------------------------------------------------------------ scenarios


def test_anonymous_faults_and_page_tables():
    sim = fresh()
    a = anon(sim, 0, 1024)
    assert view(sim, a, 1024) == [(0, 1024, "0")]                   # no PTE table yet
    sim.write(a + 5 * P)
    assert view(sim, a, 1024) == [(0, 5, "W"), (5, 6, "W|P"), (6, 512, "W"), (512, 1024, "0")]
    sim.read(a + 7 * P)                                             # the zero page
    assert view(sim, a, 1024)[2:4] == [(6, 7, "W"), (7, 8, "W|P|Z")]
    sim.madvise(a + 5 * P, P, MADV_DONTNEED)
    assert view(sim, a, 1024) == [(0, 7, "W"), (7, 8, "W|P|Z"), (8, 512, "W"),
                                  (512, 1024, "0")]
    sim.madvise(a, 512 * P, MADV_DONTNEED)                         # whole 2 MiB: reclaimed
    assert view(sim, a, 1024) == [(0, 1024, "0")]


def test_page_tables_outlive_unmaps_until_their_2mib_is_empty():
    sim = fresh()
    a = anon(sim, 0, 2048)
    sim.write(a + 5 * P)
    sim.write(a + 700 * P)
    sim.munmap(a + 700 * P, 10 * P)
    sim.mmap(10 * P, RW, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, addr=a + 700 * P)
    assert view(sim, a, 2048)[-2:] == [(6, 1024, "W"), (1024, 2048, "0")]
    sim.munmap(a + 512 * P, P)
    sim.munmap(a + 513 * P, 511 * P)                               # the 2 MiB is empty now
    sim.mmap(512 * P, RW, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, addr=a + 512 * P)
    assert view(sim, a, 2048)[-1] == (512, 2048, "0")


def test_uffd_wp_async_markers_and_faults():
    sim = fresh()
    a = anon(sim, 0, 2048)
    sim.write(a + 5 * P)
    sim.read(a + 6 * P)
    uf = sim.userfaultfd()
    uf.register(a, 1024 * P)
    assert view(sim, a, 2048) == [(0, 5, "WPA|W"), (5, 6, "WPA|W|P"), (6, 7, "WPA|W|P|Z"),
                                  (7, 1024, "WPA|W"), (1024, 2048, "0")]
    uf.writeprotect(a + 4 * P, 4 * P)
    assert view(sim, a, 10)[:5] == [(0, 4, "WPA|W"), (4, 5, "WPA|S"), (5, 6, "WPA|P"),
                                    (6, 7, "WPA|P|Z"), (7, 8, "WPA|S")]
    uf.writeprotect(a + 512 * P, 8 * P)                            # no table: one is made
    assert view(sim, a + 512 * P, 10)[0] == (0, 8, "WPA|S")
    sim.read(a + 513 * P)
    sim.write(a + 4 * P)
    sim.write(a + 6 * P)
    assert view(sim, a, 8) == [(0, 4, "WPA|W"), (4, 5, "WPA|W|P"), (5, 6, "WPA|P"),
                               (6, 7, "WPA|W|P"), (7, 8, "WPA|S")]
    assert view(sim, a + 512 * P, 3) == [(0, 1, "WPA|S"), (1, 2, "WPA|P|Z"), (2, 3, "WPA|S")]
    sim.madvise(a + 4 * P, 4 * P, MADV_DONTNEED)                   # anonymous: markers go too
    assert view(sim, a, 8) == [(0, 8, "WPA|W")]
    uf.unregister(a + 512 * P, 512 * P)                            # markers go with it
    assert view(sim, a + 512 * P, 512) == [(0, 1, "W"), (1, 2, "W|P|Z"), (2, 512, "W")]


def test_thp_units_and_splits():
    sim = fresh()
    a = anon(sim, 0, 2048, thp=True)
    sim.write(a + 5 * P)
    sim.read(a + 600 * P)
    assert view(sim, a, 2048) == [(0, 512, "W|P|H"), (512, 1024, "W|P|Z|H"),
                                  (1024, 2048, "0")]
    sim.madvise(a + 10 * P, P, MADV_DONTNEED)                      # split, one page zapped
    sim.madvise(a + 512 * P, P, MADV_DONTNEED)
    assert view(sim, a, 1024) == [(0, 10, "W|P"), (10, 11, "W"), (11, 512, "W|P"),
                                  (512, 513, "W"), (513, 1024, "W|P|Z")]
    b = anon(sim, 4096, 1024, thp=True)
    sim.read(b + 5 * P)
    sim.write(b + 7 * P)                                           # huge zero -> a new THP
    assert view(sim, b, 1024) == [(0, 512, "W|P|H"), (512, 1024, "0")]


def test_thp_write_protect_and_async_write_split():
    sim = fresh()
    a = anon(sim, 0, 2048, thp=True)
    sim.write(a + 5 * P)
    sim.read(a + 600 * P)
    uf = sim.userfaultfd()
    uf.register(a, 2048 * P)
    sim.write(a + 1100 * P)                                        # registered, no table: THP
    assert view(sim, a + 1024 * P, 1024) == [(0, 512, "WPA|W|P|H"), (512, 1024, "WPA|W")]
    uf.writeprotect(a, 512 * P)
    uf.writeprotect(a + 512 * P, 10 * P)                           # part of the huge zero
    sim.write(a + 7 * P)                                           # async: the PMD splits
    assert view(sim, a, 1024) == [(0, 7, "WPA|P"), (7, 8, "WPA|W|P"), (8, 512, "WPA|P"),
                                  (512, 522, "WPA|P|Z"), (522, 1024, "WPA|W|P|Z")]


def test_pageout_without_swap():
    sim = fresh()
    a = anon(sim, 0, 2048, thp=True)
    sim.write(a + 5 * P)
    sim.read(a + 600 * P)
    sim.write(a + 1030 * P)
    sim.madvise(a, 512 * P, MADV_PAGEOUT)          # split; untouched subpages: zero page
    sim.madvise(a + 1030 * P, P, MADV_PAGEOUT)
    assert view(sim, a, 2048) == [
        (0, 5, "W|P|Z"), (5, 6, "W|P"), (6, 512, "W|P|Z"), (512, 1024, "W|P|Z|H"),
        (1024, 1030, "W|P|Z"), (1030, 1031, "W|P"), (1031, 1536, "W|P|Z"), (1536, 2048, "0")]
    f = sim.memfd(1024 * P)
    f.write(100 * P, P)
    b = sim.mmap(1024 * P, RW, MAP_PRIVATE | MAP_FIXED, addr=BASE + 4096 * P, file=f)
    for i in (5, 100):
        sim.read(b + i * P)
    for i in (6, 101):
        sim.write(b + i * P)
    sim.madvise(b, 200 * P, MADV_PAGEOUT)          # page-cache pages are unmapped
    assert view(sim, b, 512) == [(0, 6, "W"), (6, 7, "W|P"), (7, 101, "W"), (101, 102, "W|P"),
                                 (102, 512, "W")]
    assert f.cached[100] and not f.cached[5]       # clean pages leave the cache


def test_file_fault_around_and_eof():
    sim = fresh()
    f = sim.memfd(2048 * P)
    f.write(0, 2048 * P)
    a = sim.mmap(2048 * P, RW, MAP_PRIVATE | MAP_FIXED, addr=BASE, file=f)
    sim.read(a + 20 * P)
    assert view(sim, a, 512) == [(0, 16, "W"), (16, 32, "W|F|P"), (32, 512, "W")]
    assert len(sim.prefaulted) == 15 and sim.skip_prefaulted(a + 17 * P)
    assert not sim.skip_prefaulted(a + 20 * P)                     # the faulting page
    assert view(sim, a, 20)[1:3] == [(16, 17, "W|F|P"), (17, 18, "W")]
    assert f.mapcount[17] == 0 and f.cached[17]
    sim.read(a + 17 * P)
    sim.mprotect(a + 36 * P, 4 * P, PROT_READ)
    sim.read(a + 34 * P)                                            # clamped to the VMA
    assert view(sim, a, 512)[1] == (16, 36, "W|F|P")
    g = sim.memfd(10 * P)
    b = sim.mmap(64 * P, RW, MAP_PRIVATE, addr=BASE + 4096 * P, file=g)
    g.write(0, 10 * P)
    sim.read(b + P)
    assert view(sim, b, 64) == [(0, 10, "W|F|P"), (10, 64, "W")]    # clamped to the file
    with pytest.raises(S.BusError):
        sim.read(b + 10 * P)


def test_shared_anonymous_memory():
    sim = fresh()
    a = anon(sim, 0, 1024, shared=True)
    sim.read(a + 5 * P)
    sim.write(a + 6 * P)
    assert view(sim, a, 1024) == [(0, 5, "W"), (5, 7, "W|F|P"), (7, 512, "W"),
                                  (512, 1024, "0")]
    uf = sim.userfaultfd()
    uf.register(a, 1024 * P)
    uf.writeprotect(a, 16 * P)
    sim.madvise(a, 16 * P, MADV_DONTNEED)          # file-backed: protected entries keep markers
    assert view(sim, a, 20) == [(0, 16, "WPA|S"), (16, 20, "WPA|W")]


def test_guard_regions():
    sim = fresh()
    a = anon(sim, 0, 2048)
    sim.write(a + 5 * P)
    sim.madvise(a + 4 * P, 4 * P, MADV_GUARD_INSTALL)
    sim.madvise(a + 600 * P, 2 * P, MADV_GUARD_INSTALL)            # makes a table
    assert view(sim, a, 1024) == [(0, 4, "W"), (4, 8, "W|S|G"), (8, 600, "W"),
                                  (600, 602, "W|S|G"), (602, 1024, "W")]
    sim.madvise(a + 512 * P, 512 * P, MADV_DONTNEED)                # guards stay, table too
    assert view(sim, a + 512 * P, 512)[1] == (88, 90, "W|S|G")
    with pytest.raises(S.SegmentationFault):
        sim.write(a + 4 * P)
    sim.madvise(a + 5 * P, P, MADV_GUARD_REMOVE)
    assert view(sim, a, 8)[1:] == [(4, 5, "W|S|G"), (5, 6, "W"), (6, 8, "W|S|G")]


def test_guard_install_over_uffd_wp_in_file_mappings_hangs():
    sim = fresh()
    f = sim.memfd(512 * P)
    a = sim.mmap(512 * P, RW, MAP_SHARED | MAP_FIXED, addr=BASE, file=f)
    uf = sim.userfaultfd()
    uf.register(a, 512 * P)
    sim.madvise(a, 4 * P, MADV_GUARD_INSTALL)                       # no protected entry: fine
    uf.writeprotect(a + 8 * P, 4 * P)
    before = sim.categories(a, 16).copy()
    with pytest.raises(S.KernelHang):
        sim.madvise(a + 8 * P, 4 * P, MADV_GUARD_INSTALL)
    assert np.array_equal(sim.categories(a, 16), before)


def test_errors_like_the_kernel():
    sim = fresh()
    a = anon(sim, 100, 100)
    anon(sim, 300, 100)
    codes = []
    for call in (lambda: sim.madvise(a, 300 * P, MADV_DONTNEED),           # hole: ENOMEM
                 lambda: sim.madvise(a + 1, P, MADV_DONTNEED),
                 lambda: sim.mprotect(a + 150 * P, 10 * P, PROT_READ),
                 lambda: sim.munmap(a, 0),
                 lambda: sim.mremap(a + 150 * P, P, P, MREMAP_MAYMOVE | MREMAP_FIXED,
                                    BASE + 2000 * P),
                 lambda: sim.mremap(a, 10 * P, 10 * P, MREMAP_FIXED, BASE + 2000 * P),
                 lambda: sim.mmap(P, RW, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE,
                                  addr=a)):
        with pytest.raises(OSError) as e:
            call()
        codes.append(errno.errorcode[e.value.errno])
    assert codes == ["ENOMEM", "EINVAL", "ENOMEM", "EINVAL", "EFAULT", "EINVAL", "EEXIST"]
    uf = sim.userfaultfd()
    with pytest.raises(OSError) as e:
        uf.register(a + 120 * P, 50 * P)                                   # only a hole
    assert e.value.errno == errno.EINVAL
    uf.register(a, 300 * P)                                                 # holes are fine
    with pytest.raises(OSError) as e:
        uf.writeprotect(a + 120 * P, 10 * P)
    assert e.value.errno == errno.ENOENT


def test_mremap_moves_and_multi_vma_moves():
    sim = fresh()
    a = anon(sim, 100, 100)
    sim.mmap(50 * P, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, addr=BASE + 250 * P)
    sim.write(a)
    sim.mremap(a, 300 * P, 300 * P, MREMAP_MAYMOVE | MREMAP_FIXED, BASE + 1000 * P)
    assert [(m.start - BASE) // P for m in sim.maps()] == [1000, 1150]   # gap kept
    assert view(sim, BASE + 1000 * P, 1)[0] == (0, 1, "W|P")
    with pytest.raises(OSError) as e:                      # resizing moves stay in one VMA
        sim.mremap(BASE + 1000 * P, 300 * P, 310 * P, MREMAP_MAYMOVE | MREMAP_FIXED,
                   BASE + 3000 * P)
    assert e.value.errno == errno.EFAULT


def test_fork_copies_page_tables_where_the_kernel_does():
    sim = fresh()
    a = anon(sim, 0, 512)                       # written: has an anon_vma, copied
    sim.write(a + 5 * P)
    b = anon(sim, 512, 512, shared=True)        # shared, no anon_vma: not copied
    sim.read(b + 1 * P)
    c = anon(sim, 1024, 512, prot=PROT_READ)    # only the zero page: not copied
    sim.read(c + 1 * P)
    d = anon(sim, 1536, 512)                    # a guard: copied
    sim.madvise(d + 3 * P, P, MADV_GUARD_INSTALL)
    uf = sim.userfaultfd()
    uf.register(a, 512 * P)
    uf.writeprotect(a, 10 * P)
    child = sim.fork()
    assert view(child, a, 10) == [(0, 5, "W"), (5, 6, "W|P"), (6, 10, "W")]   # no uffd
    assert view(child, b, 4) == [(0, 4, "0")]
    assert view(child, c, 4) == [(0, 4, "0")]
    assert view(child, d, 4) == [(0, 3, "W"), (3, 4, "W|S|G")]
    assert view(sim, a, 6)[-1] == (5, 6, "WPA|P")                             # parent intact
    pm = child.pagemap(a + 5 * P, 1)[0]
    assert pm >> 63 and not pm >> 56 & 1          # mapped twice: not exclusive
    child.exit()
    assert sim.pagemap(a + 5 * P, 1)[0] >> 56 & 1


def test_thp_disable_is_inherited():
    sim = fresh()
    a = anon(sim, 0, 1024, thp=True)
    sim.prctl_thp_disable(True)
    child = sim.fork()
    child.write(a)
    sim.write(a + 512 * P)
    assert view(child, a, 2)[0] == (0, 1, "W|P")                   # no THP in either
    assert view(sim, a + 512 * P, 1) == [(0, 1, "W|P")]
    sim.prctl_thp_disable(False)
    sim.write(a + 5 * P)                                           # block 0: a THP again
    assert view(sim, a, 1) == [(0, 1, "W|P|H")]


def test_pagemap_entries():
    sim = fresh()
    a = anon(sim, 0, 1024)
    sim.write(a + 1 * P)
    sim.read(a + 2 * P)
    sim.madvise(a + 3 * P, P, MADV_GUARD_INSTALL)
    uf = sim.userfaultfd()
    uf.register(a + 4 * P, 4 * P)
    uf.writeprotect(a + 4 * P, 4 * P)
    e = sim.pagemap(a, 8, show_pfn=True)
    assert e[0] == 0
    assert int(e[1]) >> 55 == 0x102                               # present, exclusive
    assert e[2] == 0x8000000000000000 | S.ZERO_PFN
    assert e[3] == 0x440000000000009F                              # guard marker
    assert e[4] == 0x420000000000003F                              # uffd-wp marker
    assert sim.pagemap(a + 3 * P, 1)[0] == 0x4400000000000000      # PFN field needs root


# ------------------------------------------------------------------ PAGEMAP_SCAN


@pytest.mark.parametrize("args,code", [
    (dict(start=BASE + 1, end=BASE + P), errno.EINVAL),
    (dict(start=BASE + 1, end=BASE - P), errno.EINVAL),            # alignment checked first
    (dict(start=BASE + P, end=BASE), errno.EFAULT),
    (dict(start=BASE, end=0x7FFFFFFFF001), errno.EFAULT),
    (dict(start=BASE, end=BASE + P, flags=4), errno.EINVAL),
    (dict(start=BASE, end=BASE + P, mask=0x200), errno.EINVAL),
    (dict(start=BASE, end=BASE + P, size=80), errno.EINVAL),
    (dict(start=BASE, end=BASE + P, vec=0, vec_len=1), errno.EINVAL),
    (dict(start=BASE, end=BASE + P, vec=0xFFFF888000000000, vec_len=1), errno.EFAULT),
    (dict(start=BASE, end=BASE + P, vec_len=1 << 60), errno.EFAULT),
])
def test_scan_validation(args, code):
    sim = fresh()
    anon(sim, 0, 16)
    with pytest.raises(OSError) as e:
        sim.pm_scan_once(**args)
    assert e.value.errno == code


def test_scan_edge_cases():
    sim = fresh()
    a = anon(sim, 0, 16)
    sim.write(a)
    assert sim.pm_scan_once(a, a, vec_len=8)[1] == a
    regions, walk_end = sim.pm_scan_once(a, a + 1, vec_len=8)        # end is rounded up
    assert [tuple(r) for r in regions] == [(a, a + P, 0x2 | 0x8)] and walk_end == a + P
    assert sim.pm_scan_once(a, 0x7FFFFFFFF000, vec_len=8)[1] == 0x7FFFFFFFF000
    regions, _ = sim.pm_scan_once(a, a + 16 * P, vec=0, vec_len=0)
    assert len(regions) == 0
    with pytest.raises(OSError) as e:
        SimProcess(config=KernelConfig(pagemap_scan=False)).pm_scan_once(0, P)
    assert e.value.errno == errno.ENOTTY


def test_stale_walk_end_after_the_bounce_buffer():
    sim = fresh()
    a = anon(sim, 0, 1400)
    for i in range(0, 1300, 2):                                  # 650 regions
        sim.write(a + i * P)
    regions, walk_end = sim.pm_scan_once(a, a + 1400 * P, mask=8, return_mask=8,
                                         vec_len=8192)
    assert len(regions) == 650
    assert walk_end == regions[512][0]                           # not end: stale
    full = sim.pm_scan(a, a + 1400 * P, 0, Masks(required=Category.PRESENT))
    assert len(full.regions) == 650 and full.walk_end == a + 1400 * P


def test_check_wpasync_eperm_is_not_atomic():
    sim = fresh()
    a = anon(sim, 0, 64)
    b = anon(sim, 64, 64, prot=PROT_READ)                        # a different VMA, unregistered
    uf = sim.userfaultfd()
    uf.register(a, 64 * P)
    sim.write(a + 3 * P)
    with pytest.raises(OSError) as e:
        sim.pm_scan_once(a, b + 64 * P, PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC,
                         mask=2, return_mask=2)
    assert e.value.errno == errno.EPERM
    assert e.value.walk_end == b + 64 * P
    assert view(sim, a, 64) == [(0, 3, "WPA|S"), (3, 4, "WPA|P"), (4, 64, "WPA|S")]


def test_wp_matching_vec_len_zero_protects_everything():
    sim = fresh()
    a = anon(sim, 0, 64)
    uf = sim.userfaultfd()
    uf.register(a, 64 * P)
    sim.write(a + 1 * P)
    sim.madvise(a + 5 * P, P, MADV_GUARD_INSTALL)
    sim.pm_scan_once(a, a + 64 * P, PM_SCAN_WP_MATCHING, mask=0x100, vec=0, vec_len=0)
    assert view(sim, a, 10) == [(0, 1, "WPA|S"), (1, 2, "WPA|P"), (2, 5, "WPA|S"),
                                (5, 6, "WPA|S|G"), (6, 10, "WPA|S")]
    sim.madvise(a + 5 * P, P, MADV_GUARD_REMOVE)
    assert view(sim, a, 7)[-2:] == [(5, 6, "WPA|W"), (6, 7, "WPA|S")]


def test_wp_matching_splits_a_partly_reported_thp():
    sim = fresh()
    a = anon(sim, 0, 1024, thp=True)
    uf = sim.userfaultfd()
    uf.register(a, 1024 * P)
    sim.write(a)
    sim.write(a + 512 * P)
    regions, walk_end = sim.pm_scan_once(a, a + 1024 * P, PM_SCAN_WP_MATCHING, mask=2,
                                         return_mask=0x1FF, max_pages=600)
    assert [tuple(r) for r in regions] == [(a, a + 512 * P, 0x4B),
                                           (a + 512 * P, a + 600 * P, 0x0B)]
    assert walk_end == a + 600 * P
    assert view(sim, a, 1024) == [(0, 512, "WPA|P|H"), (512, 600, "WPA|P"),
                                  (600, 1024, "WPA|W|P")]
    regions, walk_end = sim.pm_scan_once(a, a + 1024 * P, PM_SCAN_WP_MATCHING, mask=2,
                                         vec_len=1)
    assert walk_end == a + 1024 * P and len(regions) == 1       # no split: 424 pages fit


def test_a_thp_redone_per_pte_starts_a_new_region():
    """After the split, the kernel reuses the THP's emptied output slot: the redone
    pages never merge with the region before them."""
    sim = fresh()
    a = anon(sim, 0, 1024, thp=True)
    uf = sim.userfaultfd()
    uf.register(a, 1024 * P)
    sim.madvise(a, 512 * P, MADV_NOHUGEPAGE)       # [0, 512): small pages
    sim.write(a, 512 * P)
    sim.write(a + 512 * P)                         # [512, 1024): a THP
    twin = sim.fork()                             # the same layout, for a second scan
    twin_uf = twin.userfaultfd()
    twin_uf.register(a, 1024 * P)
    regions, walk_end = sim.pm_scan_once(a, a + 900 * P, PM_SCAN_WP_MATCHING, mask=2)
    assert [tuple(r) for r in regions] == [(a, a + 512 * P, 0xB),
                                           (a + 512 * P, a + 900 * P, 0xB)]
    assert walk_end == a + 900 * P
    # when the THP had merged into the region before it (here: only WRITTEN is
    # returned), that region is cut back and simply extended again
    regions, _ = twin.pm_scan_once(a, a + 900 * P, PM_SCAN_WP_MATCHING, mask=2,
                                   return_mask=2)
    assert [tuple(r) for r in regions] == [(a, a + 900 * P, 2)]


@st.composite
def layouts(draw: Any) -> SimProcess:
    """A random small process: mappings, faults, uffd, guards, THP."""
    sim = fresh()
    f = sim.memfd(4096 * P)
    uf = sim.userfaultfd()
    for _ in range(draw(st.integers(1, 25))):
        page = draw(st.integers(0, 4000))
        n = draw(st.integers(1, 600))
        n = min(n, 4096 - page)
        op = draw(st.sampled_from(["anon", "file", "shm", "w", "r", "dn", "reg", "wp", "g",
                                   "huge", "munmap"]))
        addr = BASE + page * P
        try:
            if op in ("anon", "shm"):
                sim.mmap(n * P, RW, (MAP_SHARED if op == "shm" else MAP_PRIVATE)
                         | MAP_ANONYMOUS | MAP_FIXED, addr=addr)
            elif op == "file":
                sim.mmap(n * P, RW, MAP_PRIVATE | MAP_FIXED, addr=addr, file=f)
            elif op in ("w", "r"):
                n = min(n, 20)
                if sim.access_fault(addr, n * P, write=op == "w") is None:
                    (sim.write if op == "w" else sim.read)(addr, n * P)
            elif op == "dn":
                sim.madvise(addr, n * P, MADV_DONTNEED)
            elif op == "reg":
                uf.register(addr, n * P)
            elif op == "wp":
                uf.writeprotect(addr, n * P)
            elif op == "g":
                sim.madvise(addr, min(n, 4) * P, MADV_GUARD_INSTALL)
            elif op == "huge":
                sim.madvise(addr, n * P, MADV_HUGEPAGE)
            else:
                sim.munmap(addr, n * P)
        except (OSError, S.KernelHang):
            pass
    return sim


@settings(deadline=None, max_examples=scaled(40, 150), suppress_health_check=[HealthCheck.too_slow])
@given(sim=layouts(), data=st.data())
def test_one_scan_equals_the_core_over_the_categories(sim: SimProcess, data: Any) -> None:
    """Without WP_MATCHING, one call answers exactly what scan_pages says over the
    true categories (bounce-buffer passes included)."""
    a = data.draw(st.integers(0, 4095))
    b = data.draw(st.integers(a + 1, 4096))
    cats = sim.categories(BASE + a * P, b - a)
    bits = st.integers(0, 0x1FF)
    inv, mask, anyof, ret = (data.draw(bits) for _ in range(4))
    inv &= mask | anyof
    max_pages = data.draw(st.sampled_from([0, 1, 7, 100]))
    vec_len = data.draw(st.sampled_from([1, 3, 512, 600]))
    regions, walk_end = sim.pm_scan_once(BASE + a * P, BASE + b * P, 0, inv, mask, anyof,
                                         ret, max_pages, vec_len)
    m = Masks.from_kernel(inverted=inv, mask=mask, anyof=anyof, return_mask=ret)
    want = pagescan.scan_pages(cats, BASE + a * P, P, m, max_pages, vec_len)
    assert [tuple(r) for r in regions] == [tuple(r) for r in want.regions]
    if len(regions) <= 512:                       # otherwise the kernel's is stale
        assert walk_end == want.walk_end


# ------------------------------------------------------------------ soft-dirty


def test_soft_dirty_model():
    sim = fresh(KernelConfig(soft_dirty=True))
    a = anon(sim, 0, 64, thp=None)
    sim.write(a + P)
    assert view(sim, a, 3) == [(0, 1, "W|SD"), (1, 2, "W|P|SD"), (2, 3, "W|SD")]  # VM_SOFTDIRTY
    sim.clear_refs(4)
    assert view(sim, a, 3) == [(0, 1, "W"), (1, 2, "W|P"), (2, 3, "W")]
    sim.read(a + 2 * P)                                         # a read is not a write
    sim.write(a + 3 * P)
    assert view(sim, a, 4)[2:] == [(2, 3, "W|P|Z"), (3, 4, "W|P|SD")]
    assert sim.pagemap(a + 3 * P, 1)[0] >> 55 & 1
    sim.mmap(16 * P, RW, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, addr=a + 64 * P)
    assert sim.maps()[0].end == a + 80 * P                      # merged, and the whole
    assert view(sim, a, 3)[0] == (0, 1, "W|SD")                 # VMA is soft-dirty again
    sim.clear_refs(4)
    sim.mremap(a + 3 * P, P, P, MREMAP_MAYMOVE | MREMAP_FIXED, a + 200 * P)
    assert view(sim, a + 200 * P, 1) == [(0, 1, "W|P|SD")]      # moved PTEs are dirty
    nosd = fresh()
    b = anon(nosd, 0, 4)
    nosd.write(b)
    nosd.clear_refs(4)
    assert view(nosd, b, 1) == [(0, 1, "W|P")]                  # no CONFIG_MEM_SOFT_DIRTY


# ------------------------------------------------------------------ the backend


# the shared conformance suite runs on every simulated mechanism in
# tests/test_conformance.py (SimHarness)


def test_probe_and_capabilities():
    p = pagescan.probe("simulator")
    assert p.ok, p.reason
    from pagescan.backends.simulator import SimulatorBackend
    assert not SimulatorBackend.capabilities.real
    assert "simulator" in pagescan.backend_names()


def test_tracker_by_pid_and_by_context():
    sim = SimProcess()
    a = sim.mmap(16 * P)
    with pagescan.track((a, 16 * P), backend="simulator", pid=sim.pid) as t:
        sim.write(a + 3 * P)
        assert [tuple(r) for r in t.written()] == [(a + 3 * P, a + 4 * P, 2)]
    with sim:
        with pagescan.track((a, 16 * P), backend="simulator") as t:
            assert len(t.written()) == 0
            sim.write(a)
            assert t.collect().regions.pages() == 1
    with pytest.raises(RangeError, match="simulated memory"):
        pagescan.track((a, 16 * P), backend="simulator")
    with pytest.raises(NoSuchProcess):
        pagescan.track((a, 16 * P), backend="simulator", pid=S.PID_BASE - 1)


def test_tracking_a_whole_simulated_process():
    sim = SimProcess()
    a = sim.mmap(16 * P)
    b = sim.mmap(8 * P)
    with pagescan.track(pid=sim.pid, backend="simulator") as t:
        sim.write(a + 3 * P)
        sim.write(b)
        assert [(r[0], r[1]) for r in t.written()] == [(b, b + P), (a + 3 * P, a + 4 * P)]


def test_trackers_of_different_processes_do_not_overlap():
    one, two = SimProcess(), SimProcess()
    a = one.mmap(16 * P, addr=BASE)
    b = two.mmap(16 * P, addr=BASE)
    assert a == b == BASE
    with one.track(a, 16 * P) as t1, two.track(b, 16 * P) as t2:
        one.write(a)
        assert t1.written().pages() == 1 and len(t2.written()) == 0
        with pytest.raises(OverlapError):
            one.track(a, P)


def test_tracker_errors_on_simulated_memory():
    sim = SimProcess()
    a = sim.mmap(16 * P)
    with pytest.raises(RangeError, match="not entirely mapped"):
        sim.track(a, 32 * P)
    t = sim.track(a, 16 * P)
    sim.munmap(a, 16 * P)
    with pytest.raises(RangeError, match="unmapped"):    # issue 12.8: the kernel walks
        t.written()                               # the hole without error; not "nothing"
    sim.mmap(16 * P, addr=a)                      # something else is mapped there
    with pytest.raises(RangeError, match="no longer"):
        t.written()
    t.close()
    sim.exit()
    with pytest.raises(NoSuchProcess):
        sim.track(a, P)


def test_thp_option():
    sim = SimProcess()
    a = sim.mmap(4 << 20, addr=BASE)
    huge = Masks(required=Category.HUGE)
    sim.madvise(a, 4 << 20, MADV_HUGEPAGE)
    with sim.track(a, 4 << 20, thp=True) as t:
        sim.madvise(a, 4 << 20, MADV_DONTNEED)      # tables go: a THP can fault in
        sim.write(a)
        assert t.scan(huge).regions.pages() == 512
    b = sim.mmap(4 << 20, addr=BASE + (8 << 20))
    sim.madvise(b, 4 << 20, MADV_HUGEPAGE)
    with sim.track(b, 4 << 20) as t:                  # thp=False: NOHUGEPAGE
        sim.madvise(b, 4 << 20, MADV_DONTNEED)
        sim.write(b)
        assert len(t.scan(huge).regions) == 0


def test_one_gib_is_comfortable():
    sim = SimProcess()
    n = 1 << 30
    a = sim.mmap(n)
    t0 = time.perf_counter()
    with sim.track(a, n) as t:
        for i in range(0, 262144, 97):
            sim.write(a + i * P)
        res = t.collect()
        assert res.regions.pages() == len(range(0, 262144, 97))
        sim.write(a, n)
        assert t.written().pages() == 262144
        assert t.scan(Masks(anyof=Category.PRESENT)).regions.pages() == 262144
    assert time.perf_counter() - t0 < 20


def test_config():
    with pytest.raises(ValueError):
        KernelConfig(thp="sometimes")
    host = KernelConfig.host()
    assert host.thp in ("always", "madvise", "never")
    old = fresh(KernelConfig(written_rules="6.18.0", soft_dirty=False))
    a = anon(old, 0, 1024)
    old.write(a)
    assert view(old, a, 3) == [(0, 1, "W|P"), (1, 3, "0")]        # pte_none: not WRITTEN
    regions, _ = old.pm_scan_once(a, a + 3 * P, mask=2, return_mask=2)
    assert [tuple(r) for r in regions] == [(a, a + 3 * P, 2)]      # the fast-path quirk


def test_hole_categories_and_window():
    sim = fresh()
    a = anon(sim, 10, 4)
    c = sim.categories(BASE, 20)
    assert (c[:10] == HOLE).all() and not (c[10:14] & np.uint64(HOLE)).any()
    with pytest.raises(OSError) as e:
        sim.mmap(P, addr=BASE + (64 << 20), flags=MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED)
    assert e.value.errno == errno.ENOMEM
    assert a == BASE + 10 * P
