"""userfaultfd write-protect in async mode + PAGEMAP_SCAN (Linux 6.7+).

How it works: a userfaultfd opened with UFFD_USER_MODE_ONLY and the features
WP_ASYNC|WP_UNPOPULATED registers the range in WP mode; UFFDIO_WRITEPROTECT
arms it (untouched pages get uffd-wp markers, so they never read as written).
A write then clears the page's uffd-wp bit in the fault handler, with no
message to user space: the page reads WRITTEN in PAGEMAP_SCAN. Reading is one
PAGEMAP_SCAN per result chunk with the masks applied in the kernel;
PM_SCAN_WP_MATCHING re-protects exactly the pages it reports, under the page
table lock, which makes get-and-reset atomic. PM_SCAN_CHECK_WPASYNC makes the
kernel refuse (EPERM) a range that is not, or no longer, registered, instead of
answering for memory the tracker does not watch.

THP: a transparent huge page that faults in after arming (typically after
MADV_DONTNEED freed the page table) is written as one 2 MiB unit and reads as
512 written pages. (On 6.18.y the freed range already reads as written, since a
missing page table in a registered range reads WRITTEN; on 6.18.0-style kernels
the huge page is what coarsens the answer.) A huge page present when tracking
starts is split by its first write, so it stays exact. By default the backend
applies MADV_NOHUGEPAGE to the range (as Wine does) so every write is exact to
the page; ``thp=True`` keeps huge pages (faster faults, coarser answers).

Only the calling process's memory can be tracked; the ioctls run without the GIL.
"""

from __future__ import annotations

import errno
import mmap
import os
import platform
from typing import ClassVar

from .._impl import IMPLEMENTATION, impl
from .._types import ALL_CATEGORIES, Category, Masks, ScanResult
from ..errors import KernelError, RangeError
from .base import Backend, Capabilities, Probe
from .._sysinfo import has_capability as _has_cap, sysctl as _sysctl

__all__ = ["UffdBackend"]

PAGE_SIZE = mmap.PAGESIZE
MADV_NOHUGEPAGE = 15
CAP_SYS_PTRACE = 19


def _open_uffd() -> tuple[int, int]:
    """A userfaultfd with WP_ASYNC|WP_UNPOPULATED (plus WP_HUGETLBFS_SHMEM when
    the kernel has it); ``(fd, features)``. OSError carries a cause-naming text."""
    core = impl
    kernel = platform.release()
    try:
        fd = core.uffd_open(core.USER_MODE_ONLY)
    except OSError as err:
        if err.errno == errno.EINVAL:          # before 5.11: no UFFD_USER_MODE_ONLY
            fd = core.uffd_open(0)
        elif err.errno == errno.ENOSYS:
            raise OSError(err.errno, "userfaultfd(2) is not available: the kernel was built "
                          "without CONFIG_USERFAULTFD, or seccomp (a container runtime) "
                          "blocks the system call") from err
        elif err.errno == errno.EPERM:
            unpriv = _sysctl("vm.unprivileged_userfaultfd")
            if unpriv == "0" and not _has_cap(CAP_SYS_PTRACE):
                raise OSError(err.errno, "userfaultfd(2) was refused: "
                              "vm.unprivileged_userfaultfd=0 and this process lacks "
                              "CAP_SYS_PTRACE (run 'sysctl vm.unprivileged_userfaultfd=1' "
                              "or grant CAP_SYS_PTRACE)") from err
            raise OSError(err.errno, "userfaultfd(2) was refused (EPERM) although "
                          f"vm.unprivileged_userfaultfd={unpriv}: seccomp or a container "
                          "policy denies it") from err
        else:
            raise
    want = core.FEATURE_WP_ASYNC | core.FEATURE_WP_UNPOPULATED
    for extra in (core.FEATURE_WP_HUGETLBFS_SHMEM, 0):
        try:
            got = core.uffd_api(fd, want | extra)
        except OSError as err:
            os.close(fd)
            if err.errno != errno.EINVAL:
                raise
            if extra == 0:
                raise OSError(err.errno, f"kernel {kernel} lacks UFFD_FEATURE_WP_ASYNC "
                              "(userfaultfd write-protect in async mode needs Linux 6.7+)"
                              ) from err
            fd = core.uffd_open(core.USER_MODE_ONLY)   # the API handshake is once per fd
        else:
            return fd, got
    raise AssertionError("unreachable")


def _open_pagemap() -> int:
    try:
        return os.open("/proc/self/pagemap", os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError as err:
        raise OSError(err.errno, "/proc/self/pagemap does not exist: /proc is not mounted"
                      ) from err


_VALID: list[int] = []


def _valid_categories(pm: int) -> int:
    """What this kernel's PAGEMAP_SCAN knows, found once per process."""
    if not _VALID:
        mem = mmap.mmap(-1, PAGE_SIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        try:
            _VALID.append(UffdBackend._kernel_categories(pm, impl.buffer_address(mem)[0]))
        finally:
            mem.close()
    return _VALID[0]


class UffdBackend(Backend):
    name: ClassVar[str] = "uffd"
    priority: ClassVar[int] = 100
    capabilities: ClassVar[Capabilities] = Capabilities(
        atomic_reset=True,
        range_reset=True,
        other_processes=False,
        kernel_filtering=True,
        kernel_writes_seen=True,
        categories=ALL_CATEGORIES,
        notes=("tracks the calling process only",
               "THP faulted in after arming reads as 2 MiB written unless thp=False"),
    )

    @classmethod
    def probe(cls) -> Probe:
        details: dict[str, object] = {"kernel": platform.release()}
        if IMPLEMENTATION != "cython":
            return Probe(False, "needs the compiled core (pagescan._core); the pure-Python "
                         "reference is loaded", details)
        core = impl
        try:
            pm = _open_pagemap()
        except OSError as err:
            return Probe(False, err.strerror or str(err), details)
        fd = -1
        mem = mmap.mmap(-1, PAGE_SIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        try:
            fd, features = _open_uffd()
            details["features"] = hex(features)
            addr, _ = core.buffer_address(mem)
            core.uffd_register_wp(fd, addr, PAGE_SIZE)
            core.uffd_writeprotect(fd, addr, PAGE_SIZE)
            flags = core.PM_SCAN_CHECK_WPASYNC
            masks = Masks(required=Category.WRITTEN, return_mask=Category.WRITTEN)
            try:
                before = core.pm_scan(pm, addr, addr + PAGE_SIZE, flags, masks)
            except OSError as err:
                if err.errno == errno.ENOTTY:
                    return Probe(False, f"kernel {platform.release()} has no PAGEMAP_SCAN "
                                 "ioctl (needs Linux 6.7+)", details)
                raise
            details["kernel_categories"] = hex(cls._kernel_categories(pm, addr))
            mem[0] = 1
            after = core.pm_scan(pm, addr, addr + PAGE_SIZE, flags, masks)
            core.uffd_unregister(fd, addr, PAGE_SIZE)
            if len(before.regions) != 0 or len(after.regions) != 1:
                return Probe(False, "PAGEMAP_SCAN did not report a write to a write-protected "
                             "page (uffd-wp async is not working on this kernel)", details)
        except OSError as err:
            return Probe(False, err.strerror or str(err), details)
        finally:
            if fd >= 0:
                os.close(fd)
            os.close(pm)
            mem.close()
        return Probe(True, "", details)

    @staticmethod
    def _kernel_categories(pm: int, addr: int) -> int:
        """The categories this kernel's PAGEMAP_SCAN accepts: GUARD arrived in 6.15
        and older kernels refuse masks that name it (EINVAL)."""
        try:
            impl.pm_scan(pm, addr, addr + PAGE_SIZE, 0, Masks(return_mask=ALL_CATEGORIES))
        except OSError as err:
            if err.errno != errno.EINVAL:
                raise
            return ALL_CATEGORIES & ~Category.GUARD
        return ALL_CATEGORIES

    def __init__(self, *, pid: int | None = None, thp: bool = False) -> None:
        if pid is not None and pid != os.getpid():
            raise ValueError("the uffd backend tracks only the calling process's memory; "
                             "use backend='softdirty' for another process")
        self._core = impl
        self.thp = thp
        self._pm = -1
        self._fd = -1
        try:
            self._pm = _open_pagemap()
            self._fd, self.features = _open_uffd()
        except OSError as err:
            self.close()
            raise KernelError(err.errno, err.strerror) from err
        self._valid = _valid_categories(self._pm)

    # -- registration -------------------------------------------------------

    def register(self, start: int, end: int) -> None:
        if not self._core.is_mapped(start, end - start):
            raise RangeError(f"[0x{start:x}, 0x{end:x}) is not entirely mapped")
        core = self._core
        try:
            if not self.thp:
                core.madvise(start, end - start, MADV_NOHUGEPAGE)
            core.uffd_register_wp(self._fd, start, end - start)
        except OSError as err:
            if err.errno == errno.EBUSY:
                raise RangeError(f"[0x{start:x}, 0x{end:x}) is already registered with "
                                 "another userfaultfd (another tracker or library)") from err
            if err.errno in (errno.EINVAL, errno.ENOMEM):
                raise RangeError(f"[0x{start:x}, 0x{end:x}) cannot be registered for "
                                 f"write-protect tracking: {err.strerror}") from err
            raise KernelError(err.errno, err.strerror) from err
        self.reset(start, end)

    def unregister(self, start: int, end: int) -> None:
        try:
            self._core.uffd_unregister(self._fd, start, end - start)
        except OSError as err:
            if err.errno not in (errno.EINVAL, errno.ENOMEM):  # already unmapped: fine
                raise KernelError(err.errno, err.strerror) from err

    # -- tracking -----------------------------------------------------------

    def reset(self, start: int, end: int) -> None:
        try:
            self._core.uffd_writeprotect(self._fd, start, end - start, True)
        except OSError as err:
            raise self._error(err, start, end) from err

    def scan(self, start: int, end: int, masks: Masks, *, max_pages: int = 0,
             max_regions: int | None = None, reset: bool = False) -> ScanResult:
        core = self._core
        flags = core.PM_SCAN_CHECK_WPASYNC
        if reset:
            flags |= core.PM_SCAN_WP_MATCHING
        try:
            return core.pm_scan(self._pm, start, end, flags, masks.restrict(self._valid),
                                max_pages, max_regions)
        except OSError as err:
            raise self._error(err, start, end) from err

    @staticmethod
    def _error(err: OSError, start: int, end: int) -> Exception:
        if err.errno == errno.EPERM:
            return RangeError(f"[0x{start:x}, 0x{end:x}) is no longer write-protect "
                              "tracked: it was unmapped or remapped since tracking started")
        if err.errno in (errno.ENOENT, errno.EINVAL):
            return RangeError(f"[0x{start:x}, 0x{end:x}): {err.strerror}")
        return KernelError(err.errno, err.strerror)

    def close(self) -> None:
        for attr in ("_fd", "_pm"):
            fd = getattr(self, attr, -1)
            if fd >= 0:
                os.close(fd)
                setattr(self, attr, -1)
