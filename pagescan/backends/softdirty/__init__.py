"""Soft-dirty bits: ``/proc/PID/clear_refs`` + ``/proc/PID/pagemap`` (any process you
may ptrace-read; Linux with CONFIG_MEM_SOFT_DIRTY).

How it works: writing ``4`` to ``/proc/PID/clear_refs`` clears the soft-dirty bit of
every page of the process and write-protects its page table entries; the next write
to a page faults and sets the bit again. Bit 55 of a ``/proc/PID/pagemap`` entry is
that bit. In this backend WRITTEN *means* soft-dirty: a page reads WRITTEN (and
SOFT_DIRTY) when its bit is set. Pages the kernel has no entry for (never touched
since arming) are not written.

Two ways to read, chosen once by the probe and shown in ``Probe.details["path"]``:

* ``"pagemap_scan"``: where the PAGEMAP_SCAN ioctl reports PAGE_IS_SOFT_DIRTY (Linux
  6.7+; e.g. 6.12), the masks go to the kernel (the WRITTEN bit of the caller's masks
  becomes SOFT_DIRTY), and only matching runs come back;
* ``"pagemap_read"``: otherwise (6.1 has no ioctl: ENOTTY) the entries of the range
  are read in chunks of 64K entries per ``preadv`` into a reusable buffer and run
  through the core (``pagemap_to_categories`` then ``scan_pages``).

Either way only the VMAs listed in ``/proc/PID/maps`` are looked at, one VMA run at a
time, and the pieces are stitched so that ``max_pages``, ``max_regions`` and
``walk_end`` mean exactly what one scan over the whole range would mean. A tracker
of a whole process (``track(pid=...)``, range ``[0, 0x7FFFFFFFF000)``) covers every
mapping, read-only and PROT_NONE ones too: a page written and then made read-only
keeps its bit, which the next clear_refs would otherwise erase unseen (each collect
reads every mapping; a new read-only mapping reads as written once, as a new
writable one does).

**clear_refs resets the whole process, not a range** (``capabilities.range_reset``
is False). So that no write is lost to it, every reset of a tracker (and every
``collect``) first reads the soft-dirty state of every *other* live soft-dirty
tracker of that process, and of the parts of its own range that are not being
reset, and folds it into a per-range *pending* set; later scans report pending
pages as WRITTEN (not SOFT_DIRTY, which stays the kernel's own bit), and a reset of
the range clears them. The bookkeeping is per process, in this module: trackers in
*other* programs that use clear_refs on the same process are not coordinated with,
and each reset costs a read of every tracked range of that process.

Known inaccuracies of soft-dirty itself (the kernel's, shown by the VM tests):

* New mappings read as all written, untouched pages included: a new VMA carries
  VM_SOFTDIRTY until the next clear (``mmap``; also ``brk``).
* VMA merges add false positives: when a tracked mapping merges with a new one
  (an adjacent ``mmap`` with the same flags, or an ``mprotect`` that gives a new
  neighbour the tracked mapping's flags, or the other way round) the merged VMA is
  VM_SOFTDIRTY and every page of it reads as written. (``mprotect`` of tracked
  pages alone keeps their bits on 6.1 and 6.12.)
* Read and clear are two steps (``atomic_reset`` is False): a write that lands
  between the last read of pagemap and the write to clear_refs is lost. The backend
  uses the safest order the mechanism allows (scan; read every range that must keep
  its state; clear at once). For *another* process, ``freeze=True`` stops all of its
  threads (PTRACE_SEIZE + PTRACE_INTERRUPT, which needs ptrace *attach* permission)
  during scan, fold and clear, which closes the window. For the calling process the
  window between the last pagemap read and the clear_refs write remains: a write by
  another thread in that window can be lost.
* Only writes through this process's page tables are seen: writes by other
  processes to shared memory, and device writes to pinned pages (O_DIRECT, RDMA),
  are not. Kernel writes (``read()`` into a buffer) are seen.
* Arming clears first and applies MADV_NOHUGEPAGE after: the madvise may merge the
  range's VMA with a tracked neighbour, and a merge with a still-new (VM_SOFTDIRTY)
  VMA would make the neighbour read as all written.
* Transparent huge pages: for the calling process (``thp=False``) the range gets
  MADV_NOHUGEPAGE and the THPs already there are split when armed (a one-page
  MADV_HUGEPAGE/MADV_NOHUGEPAGE toggle per 2 MiB block: the VMA boundary splits
  the PMD), then the range is armed again (6.12: a split dirty PMD gives
  soft-dirty PTEs); answers are exact to the page. Another process's THPs cannot
  be split from here: they are reported in 2 MiB units, with a
  :class:`~pagescan.HugePageWarning` at ``track()`` and the runs in
  ``stats()["granularity"]``.
* MAP_SHARED mappings: a ``pwrite()`` to the file or a store through another
  mapping is not seen (:class:`~pagescan.SharedMappingWarning` at ``track()``).
* The probe (once per process) clears the soft-dirty bits of the calling process.

The package: :mod:`.runs` (page-run arithmetic), :mod:`.masks` (WRITTEN <->
SOFT_DIRTY mask translation), :mod:`.stitching` (per-VMA scans joined), :mod:`.target`
(per process: pending folding, reading through the :class:`~pagescan.kernel.Kernel`),
:mod:`.probe`, :mod:`.freeze` and :mod:`.backend`. Every kernel interaction goes
through the backend's ``kernel``, so the same code runs on the simulator
(``backend="simulator", mechanism="softdirty"``).
"""

from __future__ import annotations

from ...procfs import Mapping, parse_maps
from . import backend, freeze, masks, probe, runs, stitching, target
from .backend import SoftDirtyBackend
from .freeze import frozen, signal_to_deliver
from .masks import fix_bit, kernel_masks, user_categories, with_required
from .runs import Runs, runs_clip, runs_of, runs_subtract, runs_union, segments, split
from .stitching import stitch
from .target import CHUNK_PAGES, PATH_READ, PATH_SCAN, Target

#: a line of /proc/PID/maps (the one type of :mod:`pagescan.procfs`)
Vma = Mapping

__all__ = ["CHUNK_PAGES", "PATH_READ", "PATH_SCAN", "Mapping", "Runs", "SoftDirtyBackend",
           "Target", "Vma", "backend", "fix_bit", "freeze", "frozen", "kernel_masks",
           "masks", "parse_maps", "probe", "runs", "runs_clip", "runs_of", "runs_subtract",
           "runs_union", "segments", "signal_to_deliver", "split", "stitch",
           "stitching", "target", "user_categories", "with_required"]
