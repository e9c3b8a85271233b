"""A simulated Linux process: its address space and the kernel's page tracking.

The model follows docs/kernel.md (Linux 6.18.y, x86-64, 4 KiB pages)
and was checked operation by operation against the real kernel
(tests/test_simulator_differential.py). It lets code that uses pagescan be tested
on any machine, soft-dirty be studied where the kernel lacks it, and tracking
mechanisms be compared deterministically.

>>> from pagescan.simulator import SimProcess
>>> sim = SimProcess()
>>> addr = sim.mmap(1 << 30)                        # 1 GiB of private anonymous memory
>>> with sim.track(addr, 1 << 30) as t:             # a pagescan.Tracker, backend "simulator"
...     sim.write(addr + 8192)                      # the simulated program stores
...     [(s - addr, e - addr) for s, e, _ in t.written()]
[(8192, 12288)]

What is modelled (see docs/simulator.md for the full list and every deliberate
difference from the kernel, with its reason):

* VMAs (private anonymous, shared anonymous, private and shared file mappings of
  a :class:`SimFile`), with the kernel's split and merge rules (flags, file and
  offset, userfaultfd context, anon_vma compatibility) and VM_SOFTDIRTY;
* per page: the PTE (present / zero page / page cache / anonymous, uffd-wp bit,
  soft-dirty bit, uffd-wp and guard markers), whether the page holds data, and
  per 2 MiB: whether a PTE table exists, or a PMD-mapped THP / huge zero page;
* faults (zero page on anonymous reads, fault-around on file reads, COW, THP and
  the huge zero page where the THP policy allows them, uffd-wp async resolution);
* mmap, munmap, mprotect, mremap, madvise (DONTNEED with page-table reclaim,
  HUGEPAGE / NOHUGEPAGE, GUARD_INSTALL / GUARD_REMOVE, PAGEOUT without swap),
  fork (copy-on-write; page tables copied where the kernel copies them),
  userfaultfd (register, unregister, write-protect; async or sync mode),
  clear_refs, PAGEMAP_SCAN (validation, filter, merge, limits, stale walk_end,
  WP_MATCHING with its THP and ``vec_len == 0`` rules, CHECK_WPASYNC) and
  /proc/PID/pagemap entries.

State lives in compact numpy arrays (2 bytes per page of PTE state, 4 bytes of
large-folio identity, 1 byte per 2 MiB), and PAGEMAP_SCAN runs through
pagescan's core (``scan_pages``) on categories computed vectorised, so 1 GiB
(262,144 pages) is comfortable.

Simulated addresses are plain integers in a window of the simulated address
space (``base``, ``size``); nothing in this process is touched. Accessing a page
raises :class:`SegmentationFault` or :class:`BusError` where the program would
get SIGSEGV / SIGBUS, with no change made from the faulting page on.

The package, one module per responsibility (each layer a class the next builds on):

* :mod:`.constants`, :mod:`.config` (:class:`KernelConfig`), :mod:`.errors`;
* :mod:`.vma`: files and VMAs; :mod:`.pagetable`: PTE/PMD state, zapping, categories;
* :mod:`.addrspace`: mmap, munmap, mprotect, madvise, mremap, VMA split and merge;
* :mod:`.faults`: reads and writes (zero page, fault-around, COW, THP), khugepaged;
* :mod:`.uffd`: userfaultfd write-protect; :mod:`.pagemap`: pagemap, PAGEMAP_SCAN,
  clear_refs; :mod:`.process`: :class:`SimProcess` (fork, exit, the pid registry);
* :mod:`.kernel`: :class:`SimKernel`, the simulated side of :class:`pagescan.kernel.Kernel`,
  which the real backends run over (``backend="simulator", mechanism=...``).
"""

from __future__ import annotations

from .config import KernelConfig
from .constants import (MADV_DONTNEED, MADV_GUARD_INSTALL, MADV_GUARD_REMOVE, MADV_HUGEPAGE,
                        MADV_NOHUGEPAGE, MADV_PAGEOUT, MAP_ANONYMOUS, MAP_FIXED,
                        MAP_FIXED_NOREPLACE, MAP_PRIVATE, MAP_SHARED, MREMAP_FIXED,
                        MREMAP_MAYMOVE, PAGE_SHIFT, PAGE_SIZE, PID_BASE, PM_SCAN_CHECK_WPASYNC,
                        PM_SCAN_WP_MATCHING, PMD_SIZE, PROT_EXEC, PROT_NONE, PROT_READ,
                        PROT_WRITE, UFFD_FEATURE_WP_ASYNC, UFFD_FEATURE_WP_HUGETLBFS_SHMEM,
                        UFFD_FEATURE_WP_UNPOPULATED, UFFDIO_REGISTER_MODE_WP, ZERO_PFN)
from .errors import BusError, KernelHang, SegmentationFault, SimFault, UffdWouldBlock
from .kernel import SimKernel
from .process import SimProcess, current, lookup
from .uffd import SimUffd
from .vma import SimFile, VmaInfo

__all__ = [
                        "MADV_DONTNEED",
                        "MADV_GUARD_INSTALL",
                        "MADV_GUARD_REMOVE",
                        "MADV_HUGEPAGE",
                        "MADV_NOHUGEPAGE",
                        "MADV_PAGEOUT",
                        "MAP_ANONYMOUS",
                        "MAP_FIXED",
                        "MAP_FIXED_NOREPLACE",
                        "MAP_PRIVATE",
                        "MAP_SHARED",
                        "MREMAP_FIXED",
                        "MREMAP_MAYMOVE",
                        "PAGE_SHIFT",
                        "PAGE_SIZE",
                        "PID_BASE",
                        "PMD_SIZE",
                        "PM_SCAN_CHECK_WPASYNC",
                        "PM_SCAN_WP_MATCHING",
                        "PROT_EXEC",
                        "PROT_NONE",
                        "PROT_READ",
                        "PROT_WRITE",
                        "UFFDIO_REGISTER_MODE_WP",
                        "UFFD_FEATURE_WP_ASYNC",
                        "UFFD_FEATURE_WP_HUGETLBFS_SHMEM",
                        "UFFD_FEATURE_WP_UNPOPULATED",
                        "ZERO_PFN",
                        "BusError",
                        "KernelConfig",
                        "KernelHang",
                        "SegmentationFault",
                        "SimFault",
                        "SimFile",
                        "SimKernel",
                        "SimProcess",
                        "SimUffd",
                        "UffdWouldBlock",
                        "VmaInfo",
                        "current",
                        "lookup",
]
