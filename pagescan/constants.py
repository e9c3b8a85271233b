"""Kernel constants, in one place.

Every number pagescan takes from the Linux ABI is defined here once, with the
kernel's own name; the rest of the package imports it from here. The values are
checked by ``tests/test_constants.py`` against ``pagescan/_kernel.h``, the system's
kernel headers where they have the name (``<linux/userfaultfd.h>``,
``<asm-generic/mman-common.h>``, ``<linux/mman.h>``, ``<linux/capability.h>``) and
the compiled core's exported values.

The page categories (``PAGE_IS_*``) are :class:`pagescan.Category`; they are not
repeated here.

Sources: ``fs/proc/task_mmu.c`` (pagemap entry bits, ``clear_refs`` values),
``include/uapi/linux/fs.h`` (PAGEMAP_SCAN), ``include/uapi/linux/userfaultfd.h``,
``include/uapi/asm-generic/mman-common.h``, ``include/uapi/linux/mman.h``.
"""

from __future__ import annotations

import os

__all__ = [
    "CAP_SYS_ADMIN",
    "CAP_SYS_PTRACE",
    "CLEAR_REFS_ALL",
    "CLEAR_REFS_ANON",
    "CLEAR_REFS_MAPPED",
    "CLEAR_REFS_MM_HIWATER_RSS",
    "CLEAR_REFS_SOFT_DIRTY",
    "MADV_COLLAPSE",
    "MADV_DONTNEED",
    "MADV_GUARD_INSTALL",
    "MADV_GUARD_REMOVE",
    "MADV_HUGEPAGE",
    "MADV_NOHUGEPAGE",
    "MADV_PAGEOUT",
    "MADV_POPULATE_WRITE",
    "MAP_ANONYMOUS",
    "MAP_FIXED",
    "MAP_FIXED_NOREPLACE",
    "MAP_PRIVATE",
    "MAP_SHARED",
    "MREMAP_DONTUNMAP",
    "MREMAP_FIXED",
    "MREMAP_MAYMOVE",
    "PAGEMAP_ENTRY_SIZE",
    "PAGEMAP_SCAN",
    "PAGE_REGION_SIZE",
    "PAGE_SHIFT",
    "PAGE_SIZE",
    "PM_FILE",
    "PM_GUARD_REGION",
    "PM_MMAP_EXCLUSIVE",
    "PM_PFN_MASK",
    "PM_PRESENT",
    "PM_SCAN_ARG_SIZE",
    "PM_SCAN_CHECK_WPASYNC",
    "PM_SCAN_WP_MATCHING",
    "PM_SOFT_DIRTY",
    "PM_SWAP",
    "PM_UFFD_WP",
    "PROT_EXEC",
    "PROT_NONE",
    "PROT_READ",
    "PROT_WRITE",
    "UFFDIO_REGISTER_MODE_MINOR",
    "UFFDIO_REGISTER_MODE_MISSING",
    "UFFDIO_REGISTER_MODE_WP",
    "UFFDIO_WRITEPROTECT_MODE_WP",
    "UFFD_API",
    "UFFD_FEATURE_WP_ASYNC",
    "UFFD_FEATURE_WP_HUGETLBFS_SHMEM",
    "UFFD_FEATURE_WP_UNPOPULATED",
    "UFFD_USER_MODE_ONLY",
    "USER_ADDRESS_LIMIT",
]

# -- pages ------------------------------------------------------------------------------

#: The page size of the running system (``sysconf(_SC_PAGESIZE)``). The simulator
#: models 4 KiB pages whatever this is.
PAGE_SIZE: int = os.sysconf("SC_PAGE_SIZE")
#: ``PAGE_SIZE == 1 << PAGE_SHIFT``.
PAGE_SHIFT: int = PAGE_SIZE.bit_length() - 1

#: The end of user space on x86-64 with 4-level page tables (``TASK_SIZE_MAX``,
#: ``(1 << 47) - 4096``): no user mapping reaches past it.
USER_ADDRESS_LIMIT: int = 0x7FFFFFFFF000

# -- /proc/PID/pagemap entries (one u64 per page) --------------------------------------

PAGEMAP_ENTRY_SIZE: int = 8
#: bits 0-54: the page frame number when present (0 without CAP_SYS_ADMIN), or the
#: swap type (bits 0-4) and offset (bits 5-54) when swapped.
PM_PFN_MASK: int = (1 << 55) - 1
PM_SOFT_DIRTY: int = 1 << 55
PM_MMAP_EXCLUSIVE: int = 1 << 56
PM_UFFD_WP: int = 1 << 57
PM_GUARD_REGION: int = 1 << 58        # Linux 6.14+
PM_FILE: int = 1 << 61
PM_SWAP: int = 1 << 62
PM_PRESENT: int = 1 << 63

# -- /proc/PID/clear_refs (the value written) ------------------------------------------

CLEAR_REFS_ALL: int = 1
CLEAR_REFS_ANON: int = 2
CLEAR_REFS_MAPPED: int = 3
CLEAR_REFS_SOFT_DIRTY: int = 4
CLEAR_REFS_MM_HIWATER_RSS: int = 5

# -- PAGEMAP_SCAN (ioctl on /proc/PID/pagemap, Linux 6.7+) -----------------------------

#: ``_IOWR('f', 16, struct pm_scan_arg)``
PAGEMAP_SCAN: int = 0xC0606610
PM_SCAN_WP_MATCHING: int = 1 << 0
PM_SCAN_CHECK_WPASYNC: int = 1 << 1
#: ``sizeof(struct pm_scan_arg)``: twelve u64
PM_SCAN_ARG_SIZE: int = 96
#: ``sizeof(struct page_region)``: start, end, categories
PAGE_REGION_SIZE: int = 24

# -- PROCMAP_QUERY (ioctl on /proc/PID/maps, Linux 6.11+) -------------------------------

#: ``_IOWR('f', 17, struct procmap_query)``
PROCMAP_QUERY: int = 0xC0686611
#: ``sizeof(struct procmap_query)``
PROCMAP_QUERY_SIZE: int = 104
PROCMAP_QUERY_VMA_READABLE: int = 0x01
PROCMAP_QUERY_VMA_WRITABLE: int = 0x02
PROCMAP_QUERY_VMA_EXECUTABLE: int = 0x04
PROCMAP_QUERY_VMA_SHARED: int = 0x08
PROCMAP_QUERY_COVERING_OR_NEXT_VMA: int = 0x10
PROCMAP_QUERY_FILE_BACKED_VMA: int = 0x20

# -- userfaultfd ------------------------------------------------------------------------

UFFD_API: int = 0xAA
#: userfaultfd(2) flag: handle user-mode faults only (Linux 5.11+)
UFFD_USER_MODE_ONLY: int = 1
UFFD_FEATURE_WP_HUGETLBFS_SHMEM: int = 1 << 12
UFFD_FEATURE_WP_UNPOPULATED: int = 1 << 13     # Linux 6.7+
UFFD_FEATURE_WP_ASYNC: int = 1 << 15           # Linux 6.7+
UFFDIO_REGISTER_MODE_MISSING: int = 1 << 0
UFFDIO_REGISTER_MODE_WP: int = 1 << 1
UFFDIO_REGISTER_MODE_MINOR: int = 1 << 2
UFFDIO_WRITEPROTECT_MODE_WP: int = 1 << 0

# -- mmap / mprotect / madvise / mremap -------------------------------------------------

PROT_NONE: int = 0x0
PROT_READ: int = 0x1
PROT_WRITE: int = 0x2
PROT_EXEC: int = 0x4

MAP_SHARED: int = 0x01
MAP_PRIVATE: int = 0x02
MAP_FIXED: int = 0x10
MAP_ANONYMOUS: int = 0x20
MAP_FIXED_NOREPLACE: int = 0x100000

MREMAP_MAYMOVE: int = 1
MREMAP_FIXED: int = 2
MREMAP_DONTUNMAP: int = 4

MADV_DONTNEED: int = 4
MADV_HUGEPAGE: int = 14
MADV_NOHUGEPAGE: int = 15
MADV_PAGEOUT: int = 21
MADV_POPULATE_WRITE: int = 23
MADV_COLLAPSE: int = 25         # Linux 6.1+: collapse into THPs now (pagescan compare)
MADV_GUARD_INSTALL: int = 102   # Linux 6.13+
MADV_GUARD_REMOVE: int = 103    # Linux 6.13+

# -- capabilities -----------------------------------------------------------------------

CAP_SYS_PTRACE: int = 19
CAP_SYS_ADMIN: int = 21
