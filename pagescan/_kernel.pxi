# Included by _core.pyx: the system calls behind the uffd backend.
#
# PAGEMAP_SCAN on /proc/self/pagemap and the userfaultfd ioctls, each issued
# without the GIL. Failures raise OSError(errno, ...) exactly as the kernel said;
# the backends translate them into pagescan's errors with the likely cause.

from libc.errno cimport errno, ENOMEM
from libc.string cimport memmove

from pagescan cimport _kernel as kernel

import os as _os

PM_SCAN_WP_MATCHING = kernel.PM_SCAN_WP_MATCHING
PM_SCAN_CHECK_WPASYNC = kernel.PM_SCAN_CHECK_WPASYNC
FEATURE_WP_HUGETLBFS_SHMEM = kernel.UFFD_FEATURE_WP_HUGETLBFS_SHMEM
FEATURE_WP_UNPOPULATED = kernel.UFFD_FEATURE_WP_UNPOPULATED
FEATURE_WP_ASYNC = kernel.UFFD_FEATURE_WP_ASYNC
USER_MODE_ONLY = kernel.UFFD_USER_MODE_ONLY

cdef uint64_t PAGE_SHIFT = int(_os.sysconf("SC_PAGE_SIZE")).bit_length() - 1

# Regions asked of the kernel per call when the caller set no limit: the first
# chunk, then geometric growth (every call writes straight into the result).
# The kernel bounces regions through a kmalloc'd buffer of min(vec_len, 512)
# entries of 24 bytes: past 8 KiB (341 entries) that is a page allocation per call
# (SLUB's largest kmalloc cache is two pages), about 0.5 us on a small answer. So
# the first call of a scan asks for at most 341; a scan that fills it pays the big
# buffer on the calls after.
cdef enum:
    FIRST_CHUNK = 341
    MAX_CHUNK = 1 << 20


cdef inline _oserror(int err, str what):
    return OSError(err, f"{what}: {_os.strerror(err)}")


cdef int pm_call(int fd, kernel.pm_scan_arg* arg) noexcept nogil:
    """One PAGEMAP_SCAN; returns regions written or -errno."""
    cdef int r = kernel.ioctl(fd, kernel.PAGEMAP_SCAN, arg)
    return -errno if r < 0 else r


def pm_scan_once(fd, start, end, flags=0, inverted=0, mask=0, anyof=0, return_mask=0x1FF,
                 max_pages=0, vec_len=512):
    """Exactly one PAGEMAP_SCAN call, as the kernel answers it (walk_end included,
    stale or not): ``(RegionArray, walk_end)``. For tests and probes."""
    return _pm_scan_once(int_arg(fd, "fd"), u64_arg(start, "start"), u64_arg(end, "end"),
                         u64_arg(flags, "flags"), u64_arg(inverted, "inverted"),
                         u64_arg(mask, "mask"), u64_arg(anyof, "anyof"),
                         u64_arg(return_mask, "return_mask"), u64_arg(max_pages, "max_pages"),
                         u64_arg(vec_len, "vec_len"))


# the arguments as C values, checked by the def above (typed def arguments would
# let Cython truncate floats)
cdef _pm_scan_once(int fd, uint64_t start, uint64_t end, uint64_t flags, uint64_t inverted,
                   uint64_t mask, uint64_t anyof, uint64_t return_mask, uint64_t max_pages,
                   uint64_t vec_len):
    cdef RegionArray out = RegionArray.__new__(RegionArray)
    cdef kernel.pm_scan_arg a
    cdef int r
    out.reserve(vec_len if vec_len else 1)
    a.size = sizeof(a)
    a.flags = flags
    a.start = start
    a.end = end
    a.walk_end = 0
    a.vec = <uint64_t>out.data if vec_len else 0
    a.vec_len = vec_len
    a.max_pages = max_pages
    a.category_inverted = inverted
    a.category_mask = mask
    a.category_anyof_mask = anyof
    a.return_mask = return_mask
    with nogil:
        r = pm_call(fd, &a)
    if r < 0:
        raise _oserror(-r, "PAGEMAP_SCAN")
    out.n = r
    return out, a.walk_end


def pm_scan(fd, start, end, flags=0, masks=None, max_pages=0, max_regions=None, out=None):
    """PAGEMAP_SCAN over ``[start, end)`` until done: ``ScanResult(regions, walk_end)``.

    Resumes on walk_end when the result outgrows a call, coalesces regions split
    at call boundaries and returns the true resume point (the kernel's walk_end
    goes stale when one call passes its 512-region bounce buffer and then
    completes: a walk_end below the end of the last region reported is that
    stale value, and the true one is ``end``). Same meaning as scan_pages().

    With ``out`` (as for scan_pages: a ``RegionArray.empty(n)`` or a writable
    ``(n, 3)`` uint64 buffer) the kernel writes straight into it, whose capacity
    bounds the answer, nothing is allocated, and the result is
    ``ScanCount(nregions, walk_end)``.
    """
    return _pm_scan(int_arg(fd, "fd"), u64_arg(start, "start"), u64_arg(end, "end"),
                    u64_arg(flags, "flags"), masks, u64_arg(max_pages, "max_pages"),
                    max_regions, out)


# the arguments as C values, checked by the def above (typed def arguments would
# let Cython truncate floats)
cdef _pm_scan(int fd, uint64_t start, uint64_t end, uint64_t flags, masks, uint64_t max_pages,
              max_regions, out):
    m = _DEFAULT_MASKS if masks is None else coerce_masks(masks)
    _, mr = check_limits(max_pages, max_regions)
    if mr == 0:
        raise ValueError("max_regions must be at least 1 for a kernel scan")
    if out is not None:
        return pm_scan_into(fd, start, end, flags, m, max_pages, mr, out)
    cdef RegionArray out_ = RegionArray.__new__(RegionArray)
    if m.matches_nothing or start >= end:
        return pagescan_pair(ScanResult, out_, end if start < end else start)
    cdef int64_t limit = mr
    cdef kernel.pm_scan_arg a
    cdef Py_ssize_t chunk = FIRST_CHUNK, want, k0
    cdef uint64_t found = 0, walk_end = end, last_end
    cdef int r = 0
    cdef Py_ssize_t i
    cdef uint64_t* d
    cdef uint64_t shift = PAGE_SHIFT
    a.size = sizeof(a)
    a.flags = flags
    a.end = end
    a.category_inverted, a.category_mask, a.category_anyof_mask, a.return_mask = m.to_kernel()
    a.start = start
    # the first call writes to the stack: the result is then allocated at its size
    # (most answers are small: no malloc and free of a first chunk per call)
    cdef uint64_t first[3 * FIRST_CHUNK]
    d = first
    while True:
        want = chunk
        if limit >= 0 and want > limit - out_.n:
            want = limit - out_.n
        k0 = out_.n
        if d == NULL:
            out_.reserve(out_.n + want)
            d = out_.data
        a.walk_end = 0
        a.vec = <uint64_t>(d + 3 * k0)
        a.vec_len = want
        a.max_pages = (max_pages - found) if max_pages else 0
        with nogil:
            r = pm_call(fd, &a)
            if r > 0:
                last_end = d[3 * (k0 + r) - 2]
                if a.walk_end < last_end:        # stale: the call completed the range
                    a.walk_end = end
                for i in range(k0, k0 + r):
                    found += (d[3 * i + 1] - d[3 * i]) >> shift
                # coalesce the seam with the previous call's last region
                if k0 and d[3 * k0 - 2] == d[3 * k0] and d[3 * k0 - 1] == d[3 * k0 + 2]:
                    d[3 * k0 - 2] = d[3 * k0 + 1]
                    memmove(d + 3 * k0, d + 3 * (k0 + 1), (r - 1) * sizeof(kernel.page_region))
                    r -= 1
        if r < 0:
            raise _oserror(-r, "PAGEMAP_SCAN")
        if d == first and r:
            out_.reserve(r)
            memcpy(out_.data, first, <size_t>r * sizeof(kernel.page_region))
        d = NULL
        out_.n = k0 + r
        walk_end = a.walk_end
        if walk_end >= end or (max_pages and found >= max_pages):
            break
        if limit >= 0 and out_.n >= limit:
            break
        if walk_end <= a.start:
            break                                # no progress (hugetlb withdrawn): stop here
        a.start = walk_end
        if chunk < MAX_CHUNK:
            chunk *= 4
    return pagescan_pair(ScanResult, out_, walk_end)


cdef pm_scan_into(int fd, uint64_t start, uint64_t end, uint64_t flags, m,
                  uint64_t max_pages, int64_t mr, out):
    """pm_scan into the caller's buffer: each call hands the kernel the rest of it."""
    cdef _OutBuf ob = _OutBuf.__new__(_OutBuf)
    ob.acquire(out)
    if m.matches_nothing or start >= end:
        ob.set_count(0)
        return pagescan_pair(ScanCount, 0, end if start < end else start)
    cdef Py_ssize_t limit = ob.cap if mr < 0 or mr > ob.cap else <Py_ssize_t>mr
    cdef kernel.pm_scan_arg a
    cdef Py_ssize_t k = 0, k0, i
    cdef uint64_t found = 0, walk_end = end, last_end
    cdef int r = 0
    cdef uint64_t* d = ob.data
    cdef uint64_t shift = PAGE_SHIFT
    if limit == 0:
        raise ValueError("out has no room for a region (capacity 0)")
    a.size = sizeof(a)
    a.flags = flags
    a.end = end
    a.category_inverted, a.category_mask, a.category_anyof_mask, a.return_mask = m.to_kernel()
    a.start = start
    while True:
        k0 = k
        with nogil:
            a.walk_end = 0
            a.vec = <uint64_t>(d + 3 * k0)
            a.vec_len = <uint64_t>(limit - k0)
            if k0 == 0 and a.vec_len > FIRST_CHUNK:
                a.vec_len = FIRST_CHUNK          # small answers: a small kernel buffer
            a.max_pages = (max_pages - found) if max_pages else 0
            r = pm_call(fd, &a)
            if r > 0:
                last_end = d[3 * (k0 + r) - 2]
                if a.walk_end < last_end:        # stale: the call completed the range
                    a.walk_end = end
                if max_pages:
                    for i in range(k0, k0 + r):
                        found += (d[3 * i + 1] - d[3 * i]) >> shift
                if k0 and d[3 * k0 - 2] == d[3 * k0] and d[3 * k0 - 1] == d[3 * k0 + 2]:
                    d[3 * k0 - 2] = d[3 * k0 + 1]
                    memmove(d + 3 * k0, d + 3 * (k0 + 1), (r - 1) * sizeof(kernel.page_region))
                    r -= 1
        if r < 0:
            ob.set_count(k)
            raise _oserror(-r, "PAGEMAP_SCAN")
        k = k0 + r
        walk_end = a.walk_end
        if walk_end >= end or (max_pages and found >= max_pages) or k >= limit:
            break
        if walk_end <= a.start:
            break                                # no progress (hugetlb withdrawn): stop here
        a.start = walk_end
    ob.set_count(k)
    return pagescan_pair(ScanCount, k, walk_end)


def uffd_open(flags):
    """userfaultfd(2) with O_CLOEXEC|O_NONBLOCK plus ``flags`` (e.g. USER_MODE_ONLY)."""
    cdef int fl = int_arg(flags, "flags")
    cdef long fd
    with nogil:
        fd = kernel.userfaultfd(kernel.O_CLOEXEC | kernel.O_NONBLOCK | fl)
    if fd < 0:
        raise _oserror(errno, "userfaultfd")
    return fd


def uffd_api(fd_, features):
    """UFFDIO_API handshake; returns the features the kernel granted."""
    cdef int fd = int_arg(fd_, "fd")
    cdef kernel.uffdio_api a
    cdef int r
    a.api = kernel.UFFD_API
    a.features = u64_arg(features, "features")
    a.ioctls = 0
    with nogil:
        r = kernel.ioctl(fd, kernel.UFFDIO_API, &a)
    if r < 0:
        raise _oserror(errno, "UFFDIO_API")
    return a.features


def uffd_register_wp(fd_, start, length):
    """UFFDIO_REGISTER in write-protect mode."""
    cdef int fd = int_arg(fd_, "fd")
    cdef kernel.uffdio_register reg
    cdef int r
    reg.range.start = u64_arg(start, "start")
    reg.range.len = u64_arg(length, "length")
    reg.mode = kernel.UFFDIO_REGISTER_MODE_WP
    reg.ioctls = 0
    with nogil:
        r = kernel.ioctl(fd, kernel.UFFDIO_REGISTER, &reg)
    if r < 0:
        raise _oserror(errno, "UFFDIO_REGISTER")
    return reg.ioctls


def uffd_unregister(fd_, start, length):
    cdef int fd = int_arg(fd_, "fd")
    cdef kernel.uffdio_range rng
    cdef int r
    rng.start = u64_arg(start, "start")
    rng.len = u64_arg(length, "length")
    with nogil:
        r = kernel.ioctl(fd, kernel.UFFDIO_UNREGISTER, &rng)
    if r < 0:
        raise _oserror(errno, "UFFDIO_UNREGISTER")


def uffd_writeprotect(fd_, start, length, bint protect=True):
    """UFFDIO_WRITEPROTECT (set or clear) over a registered range."""
    cdef int fd = int_arg(fd_, "fd")
    cdef kernel.uffdio_writeprotect wp
    cdef int r
    wp.range.start = u64_arg(start, "start")
    wp.range.len = u64_arg(length, "length")
    wp.mode = kernel.UFFDIO_WRITEPROTECT_MODE_WP if protect else 0
    with nogil:
        r = kernel.ioctl(fd, kernel.UFFDIO_WRITEPROTECT, &wp)
    if r < 0:
        raise _oserror(errno, "UFFDIO_WRITEPROTECT")


def buffer_address(obj, bint writable=True):
    """``(address, nbytes)`` of a contiguous buffer. The caller keeps a buffer
    export (a memoryview) alive for as long as it uses the address."""
    cdef Py_buffer view
    PyObject_GetBuffer(obj, &view, PyBUF_ANY_CONTIGUOUS | (PyBUF_WRITABLE if writable else 0))
    addr = <uint64_t>view.buf
    n = view.len
    PyBuffer_Release(&view)
    return addr, n


def madvise(start, length, advice):
    """madvise(2) on an address range (the mmap module only takes its own maps)."""
    cdef uint64_t s = u64_arg(start, "start"), n = u64_arg(length, "length")
    cdef int adv = int_arg(advice, "advice")
    cdef int r
    with nogil:
        r = kernel.madvise(<void*>s, n, adv)
    if r < 0:
        raise _oserror(errno, "madvise")


def is_mapped(start, length):
    """Whether every page of the range has a VMA (msync(MS_ASYNC): ENOMEM on a hole;
    a no-op otherwise, and O(VMAs), not O(pages))."""
    cdef uint64_t s = u64_arg(start, "start"), n = u64_arg(length, "length")
    cdef int r
    with nogil:
        r = kernel.msync(<void*>s, n, kernel.MS_ASYNC)
    if r == 0:
        return True
    if errno == ENOMEM:
        return False
    raise _oserror(errno, "msync")
