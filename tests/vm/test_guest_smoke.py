"""Smoke tests for the kernel test lane (vm/lane.py), meant to run inside its guests.

They check that the guest is what the lane promises: a stock Debian kernel with
soft-dirty, PAGEMAP_SCAN and userfaultfd WP async exactly where that kernel version
has them, and the host-built pagescan extension importable. Outside a guest
(``PAGESCAN_VM_KERNEL`` unset) they skip. Standard library + ctypes only: numpy
costs seconds to import under emulation.
"""

from __future__ import annotations

import array
import ctypes
import errno
import fcntl
import mmap
import os
import struct

import pytest

GUEST_KERNEL = os.environ.get("PAGESCAN_VM_KERNEL", "")
pytestmark = pytest.mark.skipif(not GUEST_KERNEL,
                                reason="not in a VM guest (PAGESCAN_VM_KERNEL unset)")

PAGE = mmap.PAGESIZE
PM_SOFT_DIRTY = 1 << 55
PM_PRESENT = 1 << 63
PAGEMAP_SCAN = 0xC0606610           # _IOWR('f', 16, struct pm_scan_arg)
PAGE_IS_PRESENT = 1 << 3
PAGE_IS_SOFT_DIRTY = 1 << 7
UFFDIO_API = 0xC018AA3F             # _IOWR(0xAA, 0x3F, struct uffdio_api)
UFFD_API = 0xAA
UFFD_FEATURE_WP_ASYNC = 1 << 15
NR_USERFAULTFD = 323                # x86-64

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long


def kernel_version() -> tuple[int, int]:
    major, minor = os.uname().release.split(".")[:2]
    return int(major), int(minor)


HAS_SCAN = kernel_version() >= (6, 7)       # PAGEMAP_SCAN and UFFD_FEATURE_WP_ASYNC


@pytest.fixture
def page():
    """One private anonymous page, written once (present), and its address."""
    m = mmap.mmap(-1, PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    view = (ctypes.c_char * PAGE).from_buffer(m)
    m[0] = 1
    yield m, ctypes.addressof(view)
    del view
    m.close()


def pagemap_entry(addr: int) -> int:
    with open("/proc/self/pagemap", "rb") as f:
        f.seek(addr // PAGE * 8)
        return struct.unpack("<Q", f.read(8))[0]


def clear_soft_dirty() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("4")


def pagemap_scan(addr: int) -> list[tuple[int, int, int]]:
    """PAGEMAP_SCAN over one page, reporting PRESENT and SOFT_DIRTY."""
    vec = (ctypes.c_uint64 * 12)()
    arg = bytearray(struct.pack(
        "<12Q", 96, 0, addr, addr + PAGE, 0, ctypes.addressof(vec), 4, 0,
        0, 0, PAGE_IS_PRESENT, PAGE_IS_PRESENT | PAGE_IS_SOFT_DIRTY))
    fd = os.open("/proc/self/pagemap", os.O_RDONLY)
    try:
        n = fcntl.ioctl(fd, PAGEMAP_SCAN, arg, True)
    finally:
        os.close(fd)
    return [tuple(vec[3 * i:3 * i + 3]) for i in range(n)]


def test_runs_in_the_announced_guest():
    assert os.environ.get("CI") == "true"
    assert GUEST_KERNEL == os.uname().release
    assert os.geteuid() == 0


def test_soft_dirty_tracks_writes(page):
    m, addr = page
    assert pagemap_entry(addr) & PM_PRESENT
    clear_soft_dirty()
    assert not pagemap_entry(addr) & PM_SOFT_DIRTY, "clear_refs 4 left the page soft-dirty"
    m[0] = 2
    entry = pagemap_entry(addr)
    assert entry & PM_PRESENT
    assert entry & PM_SOFT_DIRTY, "a write after clear_refs 4 did not set soft-dirty"


def test_pagemap_scan_where_the_kernel_has_it(page):
    m, addr = page
    if not HAS_SCAN:
        with pytest.raises(OSError) as exc:
            pagemap_scan(addr)
        assert exc.value.errno == errno.ENOTTY
        return
    clear_soft_dirty()
    assert pagemap_scan(addr) == [(addr, addr + PAGE, PAGE_IS_PRESENT)]
    m[0] = 3
    assert pagemap_scan(addr) == [(addr, addr + PAGE, PAGE_IS_PRESENT | PAGE_IS_SOFT_DIRTY)]


@pytest.mark.parametrize("features", [0, UFFD_FEATURE_WP_ASYNC], ids=["plain", "wp_async"])
def test_userfaultfd_api(features):
    fd = libc.syscall(NR_USERFAULTFD, os.O_CLOEXEC | os.O_NONBLOCK)
    assert fd >= 0, os.strerror(ctypes.get_errno())
    try:
        arg = bytearray(struct.pack("<QQQ", UFFD_API, features, 0))
        if features and not HAS_SCAN:
            with pytest.raises(OSError) as exc:
                fcntl.ioctl(fd, UFFDIO_API, arg, True)
            assert exc.value.errno == errno.EINVAL
            return
        fcntl.ioctl(fd, UFFDIO_API, arg, True)
        api, got, _ioctls = struct.unpack("<QQQ", arg)
        assert api == UFFD_API
        assert got & features == features
    finally:
        os.close(fd)


def test_host_built_extension_loads():
    import pagescan

    if not os.environ.get("PAGESCAN_PUREPYTHON"):
        assert pagescan.IMPLEMENTATION == "cython", pagescan.IMPORT_ERROR
    cats = array.array("Q", [1, 1, 0, 2])
    result = pagescan.scan_pages(cats, start=0x10000)
    assert [tuple(r) for r in result.regions] == [
        (0x10000, 0x12000, 1), (0x12000, 0x13000, 0), (0x13000, 0x14000, 2)]
    assert result.walk_end == 0x14000
