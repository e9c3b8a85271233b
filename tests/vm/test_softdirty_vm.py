"""The soft-dirty backend for real, inside the qemu lane's Debian 6.1 and 6.12 guests.

    python vm/lane.py -- tests/vm/test_softdirty_vm.py

Outside a guest (``PAGESCAN_VM_KERNEL`` unset) everything skips; in a guest a missing
feature is a failure under ``CI=true`` (the lane sets it). Standard library and
ctypes only, and few child processes: Python runs ~14x slower under emulation.
"""

from __future__ import annotations

import ctypes
import os

import pytest

import pagescan
from pagescan import AccessDenied, Category, Masks, NoSuchProcess
from pagescan.backends.softdirty import SoftDirtyBackend
from pagescan.constants import USER_ADDRESS_LIMIT as USER_TOP
from pagescan.testing import BackendConformance, RealHarness
from guestutil import Child as GuestChild, P, PROT_RW, libc, mmap_at, pages, softdirty_probe

GUEST_KERNEL = os.environ.get("PAGESCAN_VM_KERNEL", "")
pytestmark = pytest.mark.skipif(not GUEST_KERNEL,
                                reason="not in a VM guest (PAGESCAN_VM_KERNEL unset)")

W = Category.WRITTEN
WRITTEN_ONLY = Masks(required=W, return_mask=W)
KERNEL = tuple(int(x) for x in os.uname().release.split(".")[:2])
HAS_PAGEMAP_SCAN = KERNEL >= (6, 7)

PROT_READ = 1
MAP_FIXED, MAP_FIXED_NOREPLACE = 0x10, 0x100000


@pytest.fixture(scope="module", autouse=True)
def softdirty_works():
    return softdirty_probe()


def write(addr: int) -> None:
    ctypes.c_char.from_address(addr).value = b"x"


# ---------------------------------------------------------------------- the probe


def test_probe_path_and_auto_selection(softdirty_works):
    p = softdirty_works
    assert p.details["path"] == ("pagemap_scan" if HAS_PAGEMAP_SCAN else "pagemap_read"), p
    buf = pagescan.allocate(2 * P)
    if HAS_PAGEMAP_SCAN:
        with pagescan.track(buf, backend="softdirty") as t:
            assert t.capabilities.kernel_filtering
        return
    uffd = pagescan.probe("uffd")
    assert not uffd.ok and "6.7+" in uffd.reason, uffd
    with pagescan.track(buf) as t:                  # auto: the best that works
        assert t.backend == "softdirty"
        assert not t.capabilities.kernel_filtering


# ---------------------------------------------------------------------- own memory


def test_own_memory_write_reset_untouched():
    buf = pagescan.allocate(16 * P)
    a = buf.address
    buf[:] = b"\1" * (16 * P)                        # every page written before arming
    with pagescan.track(buf, backend="softdirty") as t:
        assert t.written().pages() == 0              # arming cleared them
        buf[3 * P] = 2
        buf[4 * P + 17] = 2
        buf[9 * P] = 2
        assert pages(t.written()) == {a + 3 * P, a + 4 * P, a + 9 * P}
        assert list(t.written()) == [(a + 3 * P, a + 5 * P, W), (a + 9 * P, a + 10 * P, W)]
        full = t.scan(Masks(required=W, return_mask=W | Category.SOFT_DIRTY))
        assert list(full.regions) == [(a + 3 * P, a + 5 * P, W | Category.SOFT_DIRTY),
                                      (a + 9 * P, a + 10 * P, W | Category.SOFT_DIRTY)]
        res = t.collect(max_pages=2)                 # the first two, then the rest
        assert pages(res.regions) == {a + 3 * P, a + 4 * P} and res.walk_end == a + 9 * P
        assert pages(t.written()) == {a + 9 * P}
        buf[0] = 3
        assert pages(t.collect().regions) == {a, a + 9 * P}
        assert t.written().pages() == 0
        buf[15 * P] = 3
        t.reset()
        assert t.written().pages() == 0
        # never-written pages were never reported
        assert not {a + i * P for i in (1, 2, 5, 6, 7, 8, 10, 11, 12, 13, 14)} & \
            pages(t.scan(Masks(required=W)).regions)


def test_two_trackers_fold_pending_writes():
    """clear_refs clears the whole process: a reset of one tracker must not lose the
    other's writes (they are folded into its pending set first)."""
    x, y = pagescan.allocate(4 * P), pagescan.allocate(4 * P)
    with pagescan.track(x, backend="softdirty") as tx, \
            pagescan.track(y, backend="softdirty") as ty:
        y[P] = 1
        y[3 * P] = 1
        x[0] = 1
        tx.reset()
        assert tx.written().pages() == 0
        assert pages(ty.written()) == {y.address + P, y.address + 3 * P}
        # a pending page reads WRITTEN without the kernel's SOFT_DIRTY
        assert list(ty.scan(Masks(return_mask=W | Category.SOFT_DIRTY),
                            start=y.address + P, end=y.address + 2 * P).regions) == \
            [(y.address + P, y.address + 2 * P, W)]
        x[2 * P] = 1
        assert pages(ty.collect().regions) == {y.address + P, y.address + 3 * P}
        assert ty.written().pages() == 0
        assert pages(tx.written()) == {x.address + 2 * P}      # folded by ty's collect


# ---------------------------------------------------------------------- inaccuracies


def test_new_mapping_reads_as_written():
    a = mmap_at(None, 4)
    try:
        with pagescan.track((a, 4 * P), backend="softdirty") as t:
            assert t.written().pages() == 0
            mmap_at(a + P, 2, flags=MAP_FIXED)       # a new mapping, never touched
            assert pages(t.written()) == {a + P, a + 2 * P}
    finally:
        libc.munmap(a, 4 * P)


def test_mprotect_merge_is_a_false_positive():
    """A new read-only mapping next to a tracked one, then mprotect to read-write: the
    VMAs merge, the merged VMA is VM_SOFTDIRTY, every page reads as written."""
    a = mmap_at(None, 8)
    libc.munmap(a + 4 * P, 4 * P)
    try:
        for i in range(4):
            write(a + i * P)
        # thp=True: no MADV_NOHUGEPAGE, so the flags can match the neighbour's
        with pagescan.track((a, 4 * P), backend="softdirty", thp=True) as t:
            b = mmap_at(a + 4 * P, 4, PROT_READ, MAP_FIXED_NOREPLACE)
            assert b == a + 4 * P
            assert t.written().pages() == 0          # no merge yet: still clean
            assert libc.mprotect(b, 4 * P, PROT_RW) == 0
            assert pages(t.written()) == {a + i * P for i in range(4)}   # none written
    finally:
        libc.munmap(a, 8 * P)


# ---------------------------------------------------------------------- another process

CHILD = r"""
import mmap, sys, ctypes
maps = []
for line in sys.stdin:
    cmd, *args = line.split()
    if cmd == "alloc":
        m = mmap.mmap(-1, int(args[0]) * mmap.PAGESIZE)
        maps.append(m)
        print(ctypes.addressof(ctypes.c_char.from_buffer(m)), flush=True)
    elif cmd == "write":
        ctypes.c_char.from_address(int(args[0])).value = b"x"
        print("ok", flush=True)
"""


class Child(GuestChild):
    def __init__(self) -> None:
        super().__init__(CHILD)

    def write(self, addr: int) -> None:
        assert self.ask(f"write {addr}") == "ok"


@pytest.fixture(scope="module")
def child():
    c = Child()
    yield c
    c.close()


def test_child_range(child):
    addr = int(child.ask("alloc 8"))
    child.write(addr)                                 # before arming: not reported
    with pagescan.track((addr, 8 * P), pid=child.pid, backend="softdirty") as t:
        assert t.written().pages() == 0
        child.write(addr + 2 * P)
        child.write(addr + 6 * P)
        assert pages(t.written()) == {addr + 2 * P, addr + 6 * P}
        assert pages(t.collect().regions) == {addr + 2 * P, addr + 6 * P}
        assert t.written().pages() == 0
        child.write(addr + 7 * P)
        t.reset()
        assert t.written().pages() == 0


def test_child_whole_process_and_freeze(child):
    addr = int(child.ask("alloc 4"))
    with pagescan.track(pid=child.pid, backend="softdirty") as t:
        child.write(addr + P)
        child.write(addr + 2 * P)
        got = pages(t.written())
        assert {addr + P, addr + 2 * P} <= got and addr not in got
        res = t.collect(max_pages=1)                 # the lowest written page of all
        (first,) = pages(res.regions)
        assert first < res.walk_end
        assert res.walk_end <= addr + P or first == addr + P
        # what was not reported stays written: checked on the child's own mapping (the
        # rest of its memory is its own business: Python allocates and frees after
        # replying)
        rest = pages(t.written())
        assert {addr + P, addr + 2 * P} - pages(res.regions) <= rest
    # freeze=True: the child is stopped during read + clear
    b = SoftDirtyBackend(pid=child.pid, freeze=True)
    try:
        b.register(0, USER_TOP)
        child.write(addr + 3 * P)
        res = b.scan(0, USER_TOP, WRITTEN_ONLY, reset=True)
        assert addr + 3 * P in pages(res.regions)
        assert addr + 3 * P not in pages(b.scan(0, USER_TOP, WRITTEN_ONLY).regions)
        assert child.ask(f"write {addr}") == "ok"    # it runs again
    finally:
        b.close()


def test_child_exit_is_no_such_process():
    c = Child()
    try:
        addr = int(c.ask("alloc 2"))
        t = pagescan.track((addr, 2 * P), pid=c.pid, backend="softdirty")
        c.p.kill()
        c.p.wait()
        with pytest.raises(NoSuchProcess):
            t.written()
        with pytest.raises(NoSuchProcess):
            t.reset()
        t.close()
    finally:
        c.close()


def test_access_denied_as_nobody():
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            try:
                pagescan.track(pid=1, backend="softdirty")
                out = "tracked"
            except Exception as err:
                out = f"{type(err).__name__}: {err}"
            os.write(w, out.encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        out = f.read()
    os.waitpid(pid, 0)
    assert out.startswith(AccessDenied.__name__), out
    assert "ptrace read access to process 1" in out, out


# ---------------------------------------------------------------------- conformance


class TestSoftDirtyConformance(BackendConformance):
    """The suite every backend passes (pagescan.testing), on real soft-dirty."""

    @pytest.fixture
    def harness(self):
        return RealHarness("softdirty")
