"""Raw kernel access for the kernel-comparison tests: the oracle side.

Everything here talks to Linux directly through ctypes (libc ``mmap``,
``munmap``, ``mprotect``, ``madvise``, ``syscall`` and ``ioctl``) and uses
nothing from pagescan, so the tests compare pagescan against the kernel and not
against itself. x86-64 only (syscall numbers, ioctl encoding, 4 KiB pages).

See docs/kernel.md for the behaviour of PAGEMAP_SCAN.
"""

from __future__ import annotations

import ctypes
import errno as _errno
import os
import platform

PAGE = 4096
HUGE_PMD = 2 << 20

# --------------------------------------------------------------------- libc

_libc = ctypes.CDLL(None, use_errno=True)

_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long]
_libc.munmap.restype = ctypes.c_int
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mprotect.restype = ctypes.c_int
_libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_libc.madvise.restype = ctypes.c_int
_libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_libc.ioctl.restype = ctypes.c_int
_libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]
_libc.syscall.restype = ctypes.c_long

PROT_NONE = 0x0
PROT_READ = 0x1
PROT_WRITE = 0x2
PROT_EXEC = 0x4

MAP_SHARED = 0x01
MAP_PRIVATE = 0x02
MAP_FIXED = 0x10
MAP_ANONYMOUS = 0x20
MAP_NORESERVE = 0x4000
MAP_FIXED_NOREPLACE = 0x100000
MAP_FAILED = ctypes.c_void_p(-1).value

MADV_NORMAL = 0
MADV_RANDOM = 1
MADV_SEQUENTIAL = 2
MADV_WILLNEED = 3
MADV_DONTNEED = 4
MADV_FREE = 8
MADV_REMOVE = 9
MADV_DONTFORK = 10
MADV_DOFORK = 11
MADV_MERGEABLE = 12
MADV_UNMERGEABLE = 13
MADV_HUGEPAGE = 14
MADV_NOHUGEPAGE = 15
MADV_DONTDUMP = 16
MADV_DODUMP = 17
MADV_WIPEONFORK = 18
MADV_KEEPONFORK = 19
MADV_COLD = 20
MADV_PAGEOUT = 21
MADV_POPULATE_READ = 22
MADV_POPULATE_WRITE = 23
MADV_DONTNEED_LOCKED = 24
MADV_COLLAPSE = 25
MADV_GUARD_INSTALL = 102
MADV_GUARD_REMOVE = 103


def _err(what: str) -> OSError:
    e = ctypes.get_errno()
    return OSError(e, f"{what}: {os.strerror(e)}")


def mmap(addr: int, length: int, prot: int, flags: int, fd: int = -1, offset: int = 0) -> int:
    """libc mmap; returns the address, raises OSError on failure."""
    r = _libc.mmap(addr or None, length, prot, flags, fd, offset)
    if r is None or r == MAP_FAILED:
        raise _err(f"mmap(0x{addr:x}, {length}, {prot}, 0x{flags:x})")
    return int(r)


def munmap(addr: int, length: int) -> None:
    if _libc.munmap(addr, length) != 0:
        raise _err(f"munmap(0x{addr:x}, {length})")


def mprotect(addr: int, length: int, prot: int) -> None:
    if _libc.mprotect(addr, length, prot) != 0:
        raise _err(f"mprotect(0x{addr:x}, {length}, {prot})")


def madvise(addr: int, length: int, advice: int) -> None:
    if _libc.madvise(addr, length, advice) != 0:
        raise _err(f"madvise(0x{addr:x}, {length}, {advice})")


def ioctl(fd: int, request: int, arg: ctypes.Array | ctypes.Structure | None) -> int:
    """libc ioctl with a pointer argument (a ctypes object or None for NULL)."""
    ptr = None if arg is None else ctypes.addressof(arg)
    r = _libc.ioctl(fd, request, ptr)
    if r < 0:
        raise _err(f"ioctl(0x{request:x})")
    return r


def touch_read(addr: int, npages: int = 1) -> None:
    """Read one byte of each page (a read fault)."""
    for i in range(npages):
        ctypes.c_char.from_address(addr + i * PAGE).value  # noqa: B018


def touch_write(addr: int, npages: int = 1, byte: int = 0x5A) -> None:
    """Fill whole pages with a non-zero byte (a write fault; no zero-filled pages)."""
    ctypes.memset(addr, byte, npages * PAGE)


# ------------------------------------------------------------------- ioctls


def _IOC(direction: int, typ: int, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (typ << 8) | nr


def _IOWR(typ: int, nr: int, size: int) -> int:
    return _IOC(3, typ, nr, size)


def _IOR(typ: int, nr: int, size: int) -> int:
    return _IOC(2, typ, nr, size)


class PmScanArg(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in (
        "size", "flags", "start", "end", "walk_end", "vec", "vec_len", "max_pages",
        "category_inverted", "category_mask", "category_anyof_mask", "return_mask")]


class PageRegionC(ctypes.Structure):
    _fields_ = [("start", ctypes.c_uint64), ("end", ctypes.c_uint64),
                ("categories", ctypes.c_uint64)]


assert ctypes.sizeof(PmScanArg) == 96 and ctypes.sizeof(PageRegionC) == 24

PAGEMAP_SCAN = _IOWR(ord("f"), 16, ctypes.sizeof(PmScanArg))
assert PAGEMAP_SCAN == 0xC0606610
PM_SCAN_WP_MATCHING = 1 << 0
PM_SCAN_CHECK_WPASYNC = 1 << 1

PAGE_IS_WPALLOWED = 1 << 0
PAGE_IS_WRITTEN = 1 << 1
PAGE_IS_FILE = 1 << 2
PAGE_IS_PRESENT = 1 << 3
PAGE_IS_SWAPPED = 1 << 4
PAGE_IS_PFNZERO = 1 << 5
PAGE_IS_HUGE = 1 << 6
PAGE_IS_SOFT_DIRTY = 1 << 7
PAGE_IS_GUARD = 1 << 8
ALL_CATEGORIES = 0x1FF
HOLE = 1 << 63

# userfaultfd (struct layouts from <linux/userfaultfd.h>)
SYS_userfaultfd = 323
UFFD_USER_MODE_ONLY = 1
UFFD_API = 0xAA
UFFD_FEATURE_WP_HUGETLBFS_SHMEM = 1 << 12
UFFD_FEATURE_WP_UNPOPULATED = 1 << 13
UFFD_FEATURE_WP_ASYNC = 1 << 15
UFFDIO_REGISTER_MODE_MISSING = 1 << 0
UFFDIO_REGISTER_MODE_WP = 1 << 1
UFFDIO_WRITEPROTECT_MODE_WP = 1 << 0


class UffdioApi(ctypes.Structure):
    _fields_ = [("api", ctypes.c_uint64), ("features", ctypes.c_uint64),
                ("ioctls", ctypes.c_uint64)]


class UffdioRange(ctypes.Structure):
    _fields_ = [("start", ctypes.c_uint64), ("len", ctypes.c_uint64)]


class UffdioRegister(ctypes.Structure):
    _fields_ = [("range", UffdioRange), ("mode", ctypes.c_uint64),
                ("ioctls", ctypes.c_uint64)]


class UffdioWriteprotect(ctypes.Structure):
    _fields_ = [("range", UffdioRange), ("mode", ctypes.c_uint64)]


UFFDIO_API = _IOWR(UFFD_API, 0x3F, ctypes.sizeof(UffdioApi))
UFFDIO_REGISTER = _IOWR(UFFD_API, 0x00, ctypes.sizeof(UffdioRegister))
UFFDIO_UNREGISTER = _IOR(UFFD_API, 0x01, ctypes.sizeof(UffdioRange))
UFFDIO_WRITEPROTECT = _IOWR(UFFD_API, 0x06, ctypes.sizeof(UffdioWriteprotect))
assert UFFDIO_API == 0xC018AA3F
assert UFFDIO_REGISTER == 0xC020AA00
assert UFFDIO_WRITEPROTECT == 0xC018AA06


def userfaultfd(flags: int = os.O_CLOEXEC | os.O_NONBLOCK | UFFD_USER_MODE_ONLY) -> int:
    fd = _libc.syscall(ctypes.c_long(SYS_userfaultfd), ctypes.c_long(flags))
    if fd < 0:
        raise _err("userfaultfd")
    return int(fd)


def uffd_api(fd: int, features: int = UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED
             ) -> UffdioApi:
    a = UffdioApi(api=UFFD_API, features=features, ioctls=0)
    ioctl(fd, UFFDIO_API, a)
    return a


def uffd_register_wp(fd: int, addr: int, length: int) -> UffdioRegister:
    r = UffdioRegister(range=UffdioRange(addr, length), mode=UFFDIO_REGISTER_MODE_WP)
    ioctl(fd, UFFDIO_REGISTER, r)
    return r


def uffd_unregister(fd: int, addr: int, length: int) -> None:
    ioctl(fd, UFFDIO_UNREGISTER, UffdioRange(addr, length))


def uffd_writeprotect(fd: int, addr: int, length: int, protect: bool = True) -> None:
    w = UffdioWriteprotect(range=UffdioRange(addr, length),
                           mode=UFFDIO_WRITEPROTECT_MODE_WP if protect else 0)
    ioctl(fd, UFFDIO_WRITEPROTECT, w)


def open_uffd_wp_async() -> int:
    """A userfaultfd with WP_ASYNC | WP_UNPOPULATED negotiated."""
    fd = userfaultfd()
    try:
        uffd_api(fd)
    except BaseException:
        os.close(fd)
        raise
    return fd


# ------------------------------------------------------------ PAGEMAP_SCAN


class PagemapScanner:
    """One fd of /proc/self/pagemap and a reusable output buffer."""

    def __init__(self) -> None:
        self.fd = os.open("/proc/self/pagemap", os.O_RDONLY | os.O_CLOEXEC)
        self._vec = (PageRegionC * 0)()
        self._arg = PmScanArg()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def scan(self, start: int, end: int, *, vec_len: int, max_pages: int = 0,
             inverted: int = 0, mask: int = 0, anyof: int = 0,
             return_mask: int = ALL_CATEGORIES, flags: int = 0
             ) -> tuple[list[tuple[int, int, int]], int]:
        """ONE raw PAGEMAP_SCAN ioctl: ``(regions, walk_end)``, regions as tuples.

        Raises OSError on failure (``walk_end`` is then lost)."""
        if len(self._vec) < vec_len:
            self._vec = (PageRegionC * max(vec_len, 2 * len(self._vec)))()
        a = self._arg
        a.size = 96
        a.flags = flags
        a.start = start
        a.end = end
        a.walk_end = 0
        a.vec = ctypes.addressof(self._vec) if vec_len else 0
        a.vec_len = vec_len
        a.max_pages = max_pages
        a.category_inverted = inverted
        a.category_mask = mask
        a.category_anyof_mask = anyof
        a.return_mask = return_mask
        n = ioctl(self.fd, PAGEMAP_SCAN, a)
        v = self._vec
        return [(v[i].start, v[i].end, v[i].categories) for i in range(n)], a.walk_end


def pagemap_scan(start: int, end: int, **kw: int) -> tuple[list[tuple[int, int, int]], int]:
    """One-shot :meth:`PagemapScanner.scan` with a fresh fd."""
    s = PagemapScanner()
    try:
        return s.scan(start, end, **kw)
    finally:
        s.close()


def read_categories(scanner: PagemapScanner, start: int, npages: int) -> list[int]:
    """True categories of every page in ``[start, start + npages*PAGE)``: one
    unfiltered PAGEMAP_SCAN with room for a region per page; pages covered by no
    region (no VMA, or a VM_PFNMAP one) are HOLE."""
    end = start + npages * PAGE
    regions, _ = scanner.scan(start, end, vec_len=max(npages, 1),
                              return_mask=ALL_CATEGORIES)
    cats = [HOLE] * npages
    for s, e, c in regions:
        assert start <= s < e <= end and (s - start) % PAGE == 0 and (e - s) % PAGE == 0
        for i in range((s - start) // PAGE, (e - start) // PAGE):
            assert cats[i] == HOLE, "overlapping regions from the kernel"
            cats[i] = c
    return cats


# --------------------------------------------------------------- features


def ci_required() -> bool:
    return os.environ.get("CI") == "true"


_features: list[str | None] = []


def kernel_features() -> str | None:
    """None when PAGEMAP_SCAN and uffd-wp async both work here, else why not."""
    if not _features:
        _features.append(_probe())
    return _features[0]


def _probe() -> str | None:
    if platform.system() != "Linux" or platform.machine() != "x86_64":
        return f"needs Linux x86-64 (this is {platform.system()} {platform.machine()})"
    if os.sysconf("SC_PAGE_SIZE") != PAGE:
        return "needs 4 KiB pages"
    n = 4
    try:
        addr = mmap(0, n * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS)
    except OSError as e:
        return f"mmap failed: {e}"
    try:
        try:
            scanner = PagemapScanner()
        except OSError as e:
            return f"cannot open /proc/self/pagemap: {e}"
        try:
            return _probe_with(scanner, addr, n)
        finally:
            scanner.close()
    finally:
        munmap(addr, n * PAGE)


def _probe_with(scanner: PagemapScanner, addr: int, n: int) -> str | None:
    touch_write(addr, 1)
    try:
        regions, walk_end = scanner.scan(addr, addr + n * PAGE, vec_len=n)
    except OSError as e:
        if e.errno in (_errno.ENOTTY, _errno.EINVAL):
            return f"PAGEMAP_SCAN not supported by this kernel ({e})"
        return f"PAGEMAP_SCAN failed: {e}"
    if walk_end != addr + n * PAGE or not regions or regions[0][0] != addr \
            or not regions[0][2] & PAGE_IS_PRESENT:
        return f"PAGEMAP_SCAN gave unexpected output {regions!r} {walk_end:#x}"
    try:
        ufd = userfaultfd()
    except OSError as e:
        return f"userfaultfd unavailable: {e}"
    try:
        try:
            uffd_api(ufd)
        except OSError as e:
            return f"userfaultfd WP_ASYNC|WP_UNPOPULATED not supported: {e}"
        try:
            uffd_register_wp(ufd, addr, n * PAGE)
            uffd_writeprotect(ufd, addr, n * PAGE)
        except OSError as e:
            return f"userfaultfd WP registration failed: {e}"
        regions, _ = scanner.scan(addr, addr + n * PAGE, vec_len=n)
        if not regions or not all(c & PAGE_IS_WPALLOWED for _, _, c in regions):
            return f"uffd-wp async range not reported WPALLOWED: {regions!r}"
        if regions[0][2] & PAGE_IS_WRITTEN:
            return f"write-protected page still WRITTEN: {regions!r}"
        touch_write(addr, 1)  # async: resolved by the kernel, no handler
        regions, _ = scanner.scan(addr, addr + PAGE, vec_len=1)
        if not regions or not regions[0][2] & PAGE_IS_WRITTEN:
            return f"uffd-wp async write not reported WRITTEN: {regions!r}"
    finally:
        os.close(ufd)
    return None
