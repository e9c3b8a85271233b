"""The simulator's constants: the kernel ABI (from :mod:`pagescan.constants`), the
model's page size, and how the model stores page state."""

from __future__ import annotations

from .._types import Category
from ..constants import (  # noqa: F401 - re-exported: the simulator's API
    MADV_DONTNEED, MADV_GUARD_INSTALL, MADV_GUARD_REMOVE, MADV_HUGEPAGE, MADV_NOHUGEPAGE,
    MADV_PAGEOUT, MAP_ANONYMOUS, MAP_FIXED, MAP_FIXED_NOREPLACE, MAP_PRIVATE, MAP_SHARED,
    MREMAP_DONTUNMAP, MREMAP_FIXED, MREMAP_MAYMOVE, PM_FILE, PM_GUARD_REGION,
    PM_MMAP_EXCLUSIVE, PM_PFN_MASK, PM_PRESENT, PM_SCAN_ARG_SIZE, PM_SCAN_CHECK_WPASYNC,
    PM_SCAN_WP_MATCHING, PM_SOFT_DIRTY, PM_SWAP, PM_UFFD_WP, PROT_EXEC, PROT_NONE, PROT_READ,
    PROT_WRITE, UFFD_FEATURE_WP_ASYNC, UFFD_FEATURE_WP_HUGETLBFS_SHMEM,
    UFFD_FEATURE_WP_UNPOPULATED, UFFDIO_REGISTER_MODE_MINOR, UFFDIO_REGISTER_MODE_MISSING,
    UFFDIO_REGISTER_MODE_WP)

from ..constants import USER_ADDRESS_LIMIT

#: one past the highest user address with 4-level paging (x86-64 TASK_SIZE_MAX)
USER_TOP = USER_ADDRESS_LIMIT

# The model's pages are 4 KiB whatever the host's are (x86-64).
PAGE_SIZE = 4096
PAGE_SHIFT = 12
PMD_PAGES = 512
PMD_SIZE = PAGE_SIZE * PMD_PAGES
U64 = (1 << 64) - 1
#: simulated pids start above PID_MAX_LIMIT (4,194,304): never a real process
PID_BASE = (1 << 22) + 1

#: bounce buffer of PAGEMAP_SCAN, in regions (PAGEMAP_WALK_SIZE >> PAGE_SHIFT)
BOUNCE_REGIONS = 512

#: swap type of PTE markers in pagemap's frame field, and marker offsets
MARKER_SWAP_TYPE = 31
MARKER_UFFD_WP, MARKER_GUARD = 1, 4
#: the PFNs pagemap shows to a CAP_SYS_ADMIN opener (show_pfn=True): made up
ZERO_PFN = 0x3B32
HUGE_ZERO_PFN = 0x182C00
FAKE_PFN_BASE = 0x100000

_C = Category
WPALLOWED, WRITTEN = int(_C.WPALLOWED), int(_C.WRITTEN)
FILE, PRESENT = int(_C.FILE), int(_C.PRESENT)
SWAPPED, PFNZERO, HUGE = int(_C.SWAPPED), int(_C.PFNZERO), int(_C.HUGE)
SOFT_DIRTY, GUARD = int(_C.SOFT_DIRTY), int(_C.GUARD)

# ----------------------------------------------------------------- page state

# One uint16 per page: the PTE, plus what the model needs about the page behind it.
P_PRESENT = 1 << 0      # pte_present
P_FILE = 1 << 1         # the folio is not anonymous (page cache / shmem)
P_ZERO = 1 << 2         # the shared zero page
P_WP = 1 << 3           # uffd-wp: PTE bit, swap-PTE bit, or (alone) a uffd-wp marker
P_SD = 1 << 4           # soft-dirty (PTE bit or swap-PTE bit)
P_SWAP = 1 << 5         # a swap entry (never created: no swap device is modelled)
P_GUARD = 1 << 6        # a guard marker
P_DATA = 1 << 7         # anonymous page whose contents are not all zero
P_SHARED = 1 << 8       # anonymous page shared with a fork relative (COW)
P_EXISTS = P_PRESENT | P_SWAP | P_GUARD | P_WP     # not pte_none
P_LUT = 0x7F            # the bits categories depend on

# One uint8 per 2 MiB: what the PMD holds.
K_NONE, K_TABLE, K_THP, K_HZP = 0, 1, 2, 3      # no PTE table / table / THP / huge zero
B_KIND = 3
B_WP = 1 << 2           # PMD uffd-wp
B_SD = 1 << 3           # PMD soft-dirty
B_SHARED = 1 << 4       # THP shared with a fork relative

# VMA kinds
ANON, SHMEM, FILE_PRIVATE = "anon", "shmem", "file"
THP_DEFAULT, THP_HUGE, THP_NOHUGE = 0, 1, 2
