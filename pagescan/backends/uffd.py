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
Every kernel interaction goes through ``self.kernel`` (:class:`pagescan.kernel.Kernel`):
the same code runs on the simulator (``backend="simulator", mechanism="uffd"``).
"""

from __future__ import annotations

import errno
import functools
import os
from typing import Any, ClassVar

from .._impl import IMPLEMENTATION
from .._types import ALL_CATEGORIES, Category, Masks, ScanCount, ScanResult
from ..errors import KernelError, PagescanError, RangeError
from ..constants import MADV_NOHUGEPAGE, USER_ADDRESS_LIMIT
from ..kernel import (PM_SCAN_CHECK_WPASYNC, PM_SCAN_WP_MATCHING,
                      UFFD_FEATURE_WP_ASYNC, UFFD_FEATURE_WP_HUGETLBFS_SHMEM,
                      UFFD_FEATURE_WP_UNPOPULATED, Kernel, LinuxKernel)
from .base import Backend, Capabilities, Probe

__all__ = ["UffdBackend"]

FEATURES = UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED
WRITTEN_ONLY = Masks(required=Category.WRITTEN, return_mask=Category.WRITTEN)


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
    def probe(cls, kernel: Kernel | None = None) -> Probe:
        own = kernel is None
        if own and IMPLEMENTATION != "cython":
            return Probe(False, "needs the compiled core (pagescan._core); the pure-Python "
                         "reference is loaded", {})
        try:
            k = LinuxKernel() if kernel is None else kernel
        except (OSError, PagescanError) as err:
            return Probe(False, getattr(err, "strerror", None) or str(err), {})
        details: dict[str, object] = {"kernel": k.release}
        if not own and "uffd" in k.probe_cache:
            return k.probe_cache["uffd"]          # once per kernel (a simulated one)
        try:
            result = cls._probe(k, details)
            if not own:
                k.probe_cache["uffd"] = result
            return result
        except (OSError, PagescanError) as err:
            return Probe(False, getattr(err, "strerror", None) or str(err), details)
        finally:
            if own:
                k.close()

    @classmethod
    def _probe(cls, k: Kernel, details: dict[str, object]) -> Probe:
        flags = PM_SCAN_CHECK_WPASYNC
        with k.scratch(1) as mem:
            uf = k.userfaultfd(FEATURES, UFFD_FEATURE_WP_HUGETLBFS_SHMEM)
            try:
                details["features"] = hex(uf.features)
                addr, end = mem.addr, mem.addr + k.page_size
                uf.register_wp(addr, k.page_size)
                uf.writeprotect(addr, k.page_size)
                try:
                    before = k.pagemap_scan(addr, end, flags, WRITTEN_ONLY)
                except OSError as err:
                    if err.errno == errno.ENOTTY:
                        return Probe(False, f"kernel {k.release} has no PAGEMAP_SCAN "
                                     "ioctl (needs Linux 6.7+)", details)
                    raise
                details["kernel_categories"] = hex(k.scan_categories())
                mem.write(0)
                after = k.pagemap_scan(addr, end, flags, WRITTEN_ONLY)
                uf.unregister(addr, k.page_size)
            finally:
                uf.close()
        if len(before.regions) != 0 or len(after.regions) != 1:
            return Probe(False, "PAGEMAP_SCAN did not report a write to a write-protected "
                         "page (uffd-wp async is not working on this kernel)", details)
        return Probe(True, "", details)

    def __init__(self, *, pid: int | None = None, thp: bool = False,
                 kernel: Kernel | None = None) -> None:
        self._uffd = None
        self._whole = False
        if kernel is None and pid is not None and pid != os.getpid():
            raise ValueError("the uffd backend tracks only the calling process's memory; "
                             "use backend='softdirty' for another process")
        try:
            super().__init__(pid=pid, thp=thp, kernel=kernel)
            k = self.kernel
            if not k.is_self and k.real:
                raise ValueError("the uffd backend tracks only the calling process's "
                                 "memory; use backend='softdirty' for another process")
            self._uffd = k.userfaultfd(FEATURES, UFFD_FEATURE_WP_HUGETLBFS_SHMEM)
            self.features = self._uffd.features
            self._valid = k.scan_categories()
        except OSError as err:
            self.close()
            if isinstance(err, PagescanError):
                raise
            raise KernelError(err.errno, err.strerror) from err
        except BaseException:
            self.close()
            raise
        # the hot path: bound once (LinuxKernel.pagemap_scan is the compiled core's)
        self._pm_scan = k.pagemap_scan
        # the running kernel's pagemap_scan is the core's pm_scan itself (a partial),
        # which writes into a caller's buffer (out=); a simulated kernel's is not
        self._pm_out = isinstance(k, LinuxKernel) and isinstance(
            vars(k).get("pagemap_scan"), functools.partial)
        self._restricted: tuple[Masks | None, Masks] = (None, Masks())
        self._writeprotect = self._uffd.writeprotect

    # -- registration -------------------------------------------------------

    def register(self, start: int, end: int) -> None:
        k = self.kernel
        # a whole process (track(pid=...) of a simulated one): every mapping in it
        whole = self._whole = start == 0 and end >= USER_ADDRESS_LIMIT
        if not whole and not k.is_mapped(start, end - start):
            raise RangeError(f"[0x{start:x}, 0x{end:x}) is not entirely mapped")
        assert self._uffd is not None
        try:
            if not self.thp:
                try:
                    k.madvise(start, end - start, MADV_NOHUGEPAGE)
                except OSError as err:
                    if not (whole and err.errno == errno.ENOMEM):     # holes: fine
                        raise
            self._uffd.register_wp(start, end - start)
        except OSError as err:
            if isinstance(err, PagescanError):
                raise
            if err.errno == errno.EBUSY:
                raise RangeError(f"[0x{start:x}, 0x{end:x}) is already registered with "
                                 "another userfaultfd (another tracker or library)") from err
            if err.errno in (errno.EINVAL, errno.ENOMEM):
                raise RangeError(f"[0x{start:x}, 0x{end:x}) cannot be registered for "
                                 f"write-protect tracking: {err.strerror}") from err
            raise KernelError(err.errno, err.strerror) from err
        self.reset(start, end)

    def unregister(self, start: int, end: int) -> None:
        uf = self._uffd
        if uf is None or uf.closed or not self.kernel.alive():
            return
        try:
            uf.unregister(start, end - start)
        except OSError as err:
            if err.errno not in (errno.EINVAL, errno.ENOMEM):  # already unmapped: fine
                raise KernelError(err.errno, err.strerror) from err

    # -- tracking -----------------------------------------------------------

    def reset(self, start: int, end: int) -> None:
        try:
            self._writeprotect(start, end - start, True)
        except OSError as err:
            raise self._error(err, start, end) from err
        # UFFDIO_WRITEPROTECT skips holes between registered VMAs: a range that is
        # partly unmapped is refused here as it is by scan()
        self._check_mapped(start, end)

    def scan(self, start: int, end: int, masks: Masks, *, max_pages: int = 0,
             max_regions: int | None = None, reset: bool = False) -> ScanResult:
        flags = PM_SCAN_CHECK_WPASYNC | PM_SCAN_WP_MATCHING if reset else PM_SCAN_CHECK_WPASYNC
        if masks is not self._restricted[0]:             # Masks are immutable
            self._restricted = (masks, masks.restrict(self._valid))
        try:
            result = self._pm_scan(start, end, flags, self._restricted[1],
                                   max_pages, max_regions)
        except OSError as err:
            raise self._error(err, start, end) from err
        # CHECK_WPASYNC refuses (EPERM) a VMA that is not registered, but a hole has
        # no VMA: a range unmapped since arming walks without error and reads as
        # "nothing written". Checked (one msync) only when nothing was found, or
        # when an unfiltered scan (every mapped page reported) left gaps: a collect
        # that finds writes pays nothing for it.
        regions = result.regions
        if not regions or (not (masks.mask or masks.anyof) and regions.pages()
                           * self.kernel.page_size < result.walk_end - start):
            self._check_mapped(start, end)
        return result

    def scan_into(self, start: int, end: int, masks: Masks, out: Any, *, max_pages: int = 0,
                  max_regions: int | None = None, reset: bool = False) -> ScanCount | None:
        """scan() into the caller's buffer ``out``: PAGEMAP_SCAN writes straight into
        it (nothing allocated). None where the kernel cannot (then the caller copies)."""
        if not self._pm_out:
            return None
        flags = PM_SCAN_CHECK_WPASYNC | PM_SCAN_WP_MATCHING if reset else PM_SCAN_CHECK_WPASYNC
        if masks is not self._restricted[0]:             # Masks are immutable
            self._restricted = (masks, masks.restrict(self._valid))
        try:
            pm: Any = self._pm_scan                   # the core's pm_scan (takes out=)
            result: ScanCount = pm(start, end, flags, self._restricted[1],
                                   max_pages, max_regions, out)
        except OSError as err:
            raise self._error(err, start, end) from err
        # as scan(): a hole reads as "nothing written"; checked when nothing was found
        # or an unfiltered scan left gaps
        count = result[0]
        if not count:
            self._check_mapped(start, end)
        elif not (masks.mask or masks.anyof):
            ps = self.kernel.page_size
            if _pages(out, count, ps) * ps < result[1] - start:
                self._check_mapped(start, end)
        return result

    def _check_mapped(self, start: int, end: int) -> None:
        if not self._whole and not self.kernel.is_mapped(start, end - start):
            raise RangeError(f"[0x{start:x}, 0x{end:x}) is no longer write-protect "
                             "tracked: (part of) it was unmapped since tracking started")

    @staticmethod
    def _error(err: OSError, start: int, end: int) -> Exception:
        if isinstance(err, PagescanError):
            return err
        if err.errno in (errno.EPERM, errno.ENOENT):      # scan / UFFDIO_WRITEPROTECT
            return RangeError(f"[0x{start:x}, 0x{end:x}) is no longer write-protect "
                              "tracked: it was unmapped or remapped since tracking started")
        if err.errno == errno.EINVAL:
            return RangeError(f"[0x{start:x}, 0x{end:x}): {err.strerror}")
        return KernelError(err.errno, err.strerror)

    def close(self) -> None:
        uf, self._uffd = getattr(self, "_uffd", None), None
        if uf is not None:
            uf.close()
        super().close()


def _pages(out: Any, count: int, page_size: int) -> int:
    """Pages in the first ``count`` regions of a scan's ``out`` buffer."""
    if hasattr(out, "pages") and hasattr(out, "capacity"):    # a RegionArray: len == count
        return int(out.pages(page_size))
    flat = memoryview(out).cast("B").cast("Q")
    return sum((flat[3 * i + 1] - flat[3 * i]) // page_size for i in range(count))
