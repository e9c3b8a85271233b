"""Issue 12 items 1-4 for the soft-dirty backend on real kernels (the qemu lane's
Debian 6.1 and 6.12 guests):

    python vm/lane.py -- tests/vm/test_softdirty_edges_vm.py

1. a whole-process tracker loses no write to a mapping that is read-only at a collect;
2. arming a tracker next to another leaves the other clean;
3. transparent huge pages present before track() are reported exactly (own memory:
   split when armed; another process: HugePageWarning and stats()["granularity"]);
4. MAP_SHARED mappings give SharedMappingWarning.

Outside a guest (``PAGESCAN_VM_KERNEL`` unset) everything skips.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import re

import pytest

import pagescan
from pagescan import HugePageWarning, SharedMappingWarning
from pagescan.kernel import LinuxKernel
from guestutil import Child as GuestChild, P, libc, mmap_at, pages, require, softdirty_probe

GUEST_KERNEL = os.environ.get("PAGESCAN_VM_KERNEL", "")
pytestmark = pytest.mark.skipif(not GUEST_KERNEL,
                                reason="not in a VM guest (PAGESCAN_VM_KERNEL unset)")

HUGE = 512 * P
MADV_HUGEPAGE = 14

MAP_FIXED = 0x10


@pytest.fixture(scope="module", autouse=True)
def softdirty_works():
    return softdirty_probe()


def compact_memory() -> None:
    """Ask the guest kernel to defragment its memory, so that the huge pages a test
    makes can be allocated whatever earlier tests left behind (root in the guest)."""
    try:
        with open("/proc/sys/vm/compact_memory", "w") as f:
            f.write("1")
    except OSError:
        pass


def anon_huge_kb(pid: int | str = "self") -> int:
    text = open(f"/proc/{pid}/smaps_rollup").read()
    return int(re.search(r"^AnonHugePages:\s+(\d+) kB", text, re.M).group(1))


# a child that maps private memory, writes it, changes its protection, makes THPs
CHILD = r"""
import mmap, sys, ctypes
libc = ctypes.CDLL(None, use_errno=True)
libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
maps = []
for line in sys.stdin:
    cmd, *args = line.split()
    if cmd == "alloc":
        n = int(args[0]) * mmap.PAGESIZE
        m = mmap.mmap(-1, n, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        maps.append(m)
        a = ctypes.addressof(ctypes.c_char.from_buffer(m))
        if len(args) > 1:                       # "alloc N huge": THPs, 2 MiB-aligned
            a = -(-a // (2 << 20)) * (2 << 20)
            assert libc.madvise(a, int(args[2]), 14) == 0
            ctypes.memset(a, 1, int(args[2]))
        print(a, flush=True)
    elif cmd == "write":
        ctypes.c_char.from_address(int(args[0])).value = b"x"
        print("ok", flush=True)
    elif cmd == "protect":
        print(libc.mprotect(int(args[0]), int(args[1]), int(args[2])), flush=True)
"""


class Child(GuestChild):
    def __init__(self) -> None:
        super().__init__(CHILD)


@pytest.fixture
def child():
    c = Child()
    yield c
    c.close()


# ---------------------------------------------------------------------- item 1


def test_whole_process_writes_to_a_mapping_made_read_only_are_not_lost(child):
    """Child writes 20 pages, mprotect(PROT_READ), parent collects, child restores
    write access, parent collects again: every page is reported (at the first
    collect: the whole-process span includes read-only mappings)."""
    addr = int(child.ask("alloc 64"))
    want = {addr + 3 * i * P for i in range(20)}
    with pagescan.track(pid=child.pid, backend="softdirty") as t:
        t.collect()
        for a in sorted(want):
            assert child.ask(f"write {a}") == "ok"
        assert child.ask(f"protect {addr} {64 * P} 1") == "0"
        first = pages(t.collect().regions)
        assert child.ask(f"protect {addr} {64 * P} 3") == "0"
        second = pages(t.collect().regions)
        assert want <= first, sorted(want - first)
        assert not want & second


# ---------------------------------------------------------------------- item 2


def test_arming_a_neighbour_leaves_a_tracker_clean():
    a = mmap_at(None, 1040)
    try:
        with pagescan.track((a + 16 * P, 1024 * P), backend="softdirty") as t1:
            assert t1.written().pages() == 0
            assert mmap_at(a, 16, flags=MAP_FIXED) == a         # a new VMA: VM_SOFTDIRTY
            with pagescan.track((a, 16 * P), backend="softdirty") as t2:
                assert t1.written().pages() == 0           # was 1024
                assert t2.written().pages() == 0
                ctypes.c_char.from_address(a + 20 * P).value = b"x"
                assert pages(t1.written()) == {a + 20 * P}
    finally:
        libc.munmap(a, 1040 * P)


# ---------------------------------------------------------------------- item 3


def test_own_huge_pages_are_split_when_armed():
    m = mmap.mmap(-1, 3 * HUGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    base = ctypes.addressof(ctypes.c_char.from_buffer(m))
    a = -(-base // HUGE) * HUGE
    k = LinuxKernel()
    try:
        compact_memory()
        before = anon_huge_kb()
        k.madvise(a, 2 * HUGE, MADV_HUGEPAGE)
        ctypes.memset(a, 1, 2 * HUGE)
        require(anon_huge_kb() - before >= 2 * HUGE // 1024,
                f"no THP made (THP {open('/sys/kernel/mm/transparent_hugepage/enabled').read()})")
        assert k.huge_mappings(a, a + 2 * HUGE)
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("error", HugePageWarning)
            t = pagescan.track((a, 2 * HUGE), backend="softdirty")
        with t:
            assert k.huge_mappings(a, a + 2 * HUGE) == []        # split
            assert t.written().pages() == 0
            want = {a + i * 97 * P for i in range(10)}
            for p in want:
                ctypes.c_char.from_address(p + 9).value = b"y"
            assert pages(t.written()) == want                      # was 1024
            assert t.stats()["granularity"]["huge_page_runs"] == []
    finally:
        m.close()


def test_another_process_huge_pages_warn_and_say_the_granularity(child):
    compact_memory()
    addr = int(child.ask(f"alloc {3 * 512} huge {2 * HUGE}"))
    require(anon_huge_kb(child.pid) >= 2 * HUGE // 1024, "no THP made in the child")
    with pytest.warns(HugePageWarning, match="2 MiB"):
        t = pagescan.track((addr, 2 * HUGE), pid=child.pid, backend="softdirty")
    with t:
        assert t.stats()["granularity"]["huge_page_runs"] == [(addr, addr + 2 * HUGE)]
        assert child.ask(f"write {addr + 5 * P}") == "ok"
        got = pages(t.written())
        assert addr + 5 * P in got and len(got) == 512     # the THP: 2 MiB units


# ---------------------------------------------------------------------- item 4


def test_shared_mapping_warns():
    fd = os.memfd_create("pagescan-vm")
    os.ftruncate(fd, 4 * P)
    m = mmap.mmap(fd, 4 * P, flags=mmap.MAP_SHARED)
    a = ctypes.addressof(ctypes.c_char.from_buffer(m))
    try:
        with pytest.warns(SharedMappingWarning, match="MAP_SHARED"):
            t = pagescan.track((a, 4 * P), backend="softdirty")
        with t:
            os.pwrite(fd, b"z", P)                    # through the file: not seen
            assert t.written().pages() == 0
            m[2 * P] = 1
            assert pages(t.written()) == {a + 2 * P}
    finally:
        m.close()
        os.close(fd)
