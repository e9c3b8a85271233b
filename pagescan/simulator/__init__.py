"""A simulated Linux process: its address space and the kernel's page tracking.

The model follows KERNEL-SPEC.md (Linux 6.18.y, x86-64, 4 KiB pages)
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
"""

from __future__ import annotations

import bisect
import contextvars
import errno
import itertools
import os
import weakref
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from ._impl import impl
from ._types import ALL_CATEGORIES, HOLE, Category, Masks, ScanResult, coerce_masks

__all__ = [
    "MADV_DONTNEED", "MADV_GUARD_INSTALL", "MADV_GUARD_REMOVE", "MADV_HUGEPAGE", "MADV_NOHUGEPAGE",
    "MADV_PAGEOUT", "MAP_ANONYMOUS", "MAP_FIXED", "MAP_FIXED_NOREPLACE", "MAP_PRIVATE",
    "MAP_SHARED", "MREMAP_FIXED", "MREMAP_MAYMOVE", "PAGE_SIZE", "PMD_SIZE",
    "PM_SCAN_CHECK_WPASYNC", "PM_SCAN_WP_MATCHING", "PROT_EXEC", "PROT_NONE", "PROT_READ",
    "PROT_WRITE", "UFFDIO_REGISTER_MODE_WP", "UFFD_FEATURE_WP_ASYNC",
    "UFFD_FEATURE_WP_HUGETLBFS_SHMEM", "UFFD_FEATURE_WP_UNPOPULATED", "BusError", "KernelConfig",
    "KernelHang", "SegmentationFault", "SimFault", "SimFile", "SimProcess", "SimUffd",
    "UffdWouldBlock", "VmaInfo", "current", "lookup",
]

PAGE_SIZE = 4096
PAGE_SHIFT = 12
PMD_PAGES = 512
PMD_SIZE = PAGE_SIZE * PMD_PAGES
#: one past the highest user address with 4-level paging (x86-64 TASK_SIZE_MAX)
USER_TOP = 0x7FFFFFFFF000
U64 = (1 << 64) - 1
#: simulated pids start above PID_MAX_LIMIT (4,194,304): never a real process
PID_BASE = (1 << 22) + 1

PROT_NONE, PROT_READ, PROT_WRITE, PROT_EXEC = 0, 1, 2, 4
MAP_SHARED, MAP_PRIVATE, MAP_FIXED, MAP_ANONYMOUS = 0x01, 0x02, 0x10, 0x20
MAP_FIXED_NOREPLACE = 0x100000
MADV_DONTNEED, MADV_HUGEPAGE, MADV_NOHUGEPAGE, MADV_PAGEOUT = 4, 14, 15, 21
MADV_GUARD_INSTALL, MADV_GUARD_REMOVE = 102, 103
MREMAP_MAYMOVE, MREMAP_FIXED, MREMAP_DONTUNMAP = 1, 2, 4
UFFD_FEATURE_WP_HUGETLBFS_SHMEM = 1 << 12
UFFD_FEATURE_WP_UNPOPULATED = 1 << 13
UFFD_FEATURE_WP_ASYNC = 1 << 15
UFFDIO_REGISTER_MODE_MISSING, UFFDIO_REGISTER_MODE_WP, UFFDIO_REGISTER_MODE_MINOR = 1, 2, 4
PM_SCAN_WP_MATCHING, PM_SCAN_CHECK_WPASYNC = 1, 2
PM_SCAN_ARG_SIZE = 96
#: bounce buffer of PAGEMAP_SCAN, in regions (PAGEMAP_WALK_SIZE >> PAGE_SHIFT)
BOUNCE_REGIONS = 512

# /proc/PID/pagemap entry bits (KERNEL-SPEC §7)
PM_PFN_MASK = (1 << 55) - 1
PM_SOFT_DIRTY = 1 << 55
PM_MMAP_EXCLUSIVE = 1 << 56
PM_UFFD_WP = 1 << 57
PM_GUARD_REGION = 1 << 58
PM_FILE = 1 << 61
PM_SWAP = 1 << 62
PM_PRESENT = 1 << 63
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


# ----------------------------------------------------------------- exceptions


class SimFault(Exception):
    """An access the simulated program would take a signal for. Pages before
    ``address`` were accessed; nothing changed from ``address`` on."""

    signal = "SIGSEGV"

    def __init__(self, address: int, reason: str) -> None:
        super().__init__(f"{self.signal} at 0x{address:x}: {reason}")
        self.address = address
        self.reason = reason


class SegmentationFault(SimFault):
    """SIGSEGV: no mapping, no permission, or a guard page."""


class BusError(SimFault):
    """SIGBUS: a file mapping accessed beyond the end of its file."""

    signal = "SIGBUS"


class UffdWouldBlock(SimFault):
    """A write to a page write-protected by a *sync* userfaultfd: the thread would
    sleep until a handler resolves the fault (not modelled)."""

    signal = "userfaultfd"


class KernelHang(RuntimeError):
    """The real kernel does not return from this call (it loops until the process
    is killed). Nothing was changed."""


# ----------------------------------------------------------------- configuration


@dataclass(frozen=True)
class KernelConfig:
    """The kernel being simulated. The defaults are this project's reference kernel
    (6.18.y) with soft-dirty built in; :meth:`host` matches the running machine."""

    #: CONFIG_MEM_SOFT_DIRTY: SOFT_DIRTY categories, pagemap bit 55, clear_refs 4
    soft_dirty: bool = True
    #: /sys/kernel/mm/transparent_hugepage/enabled: "always", "madvise" or "never"
    thp: str = "madvise"
    #: .../transparent_hugepage/use_zero_page: huge zero page on read faults
    thp_zero_page: bool = True
    #: CONFIG_PT_RECLAIM: MADV_DONTNEED over a whole 2 MiB frees its PTE table
    pt_reclaim: bool = True
    #: fault_around_bytes / PAGE_SIZE
    fault_around_pages: int = 16
    #: "6.18.y" (pte_none and uffd no-table holes read WRITTEN) or "6.18.0"
    written_rules: str = "6.18.y"
    #: PAGEMAP_SCAN exists (6.7+); without it the ioctl fails with ENOTTY
    pagemap_scan: bool = True
    #: UFFD_FEATURE_WP_ASYNC exists (6.7+)
    uffd_wp_async: bool = True
    #: MADV_GUARD_INSTALL / REMOVE exist (6.13+; file-backed mappings 6.15+)
    guard_regions: bool = True

    def __post_init__(self) -> None:
        if self.thp not in ("always", "madvise", "never"):
            raise ValueError(f"thp must be 'always', 'madvise' or 'never', not {self.thp!r}")
        if self.written_rules not in ("6.18.y", "6.18.0"):
            raise ValueError("written_rules must be '6.18.y' or '6.18.0'")
        if self.fault_around_pages < 1 or self.fault_around_pages & (self.fault_around_pages - 1):
            raise ValueError("fault_around_pages must be a power of two")

    @classmethod
    def host(cls, **overrides: Any) -> KernelConfig:
        """The settings of the running kernel where they can be read (THP policy,
        huge zero page, soft-dirty from /proc/config.gz or /boot/config-*)."""
        kw: dict[str, Any] = {}
        base = "/sys/kernel/mm/transparent_hugepage/"
        try:
            with open(base + "enabled") as f:
                kw["thp"] = f.read().split("[")[1].split("]")[0]
            with open(base + "use_zero_page") as f:
                kw["thp_zero_page"] = f.read().strip() == "1"
        except (OSError, IndexError):
            kw["thp"] = "never"
        config = _kernel_config()
        if config is not None:
            kw["soft_dirty"] = "CONFIG_MEM_SOFT_DIRTY=y" in config
            kw["pt_reclaim"] = "CONFIG_PT_RECLAIM=y" in config
        probed = _probe_soft_dirty()
        if probed is not None:
            kw["soft_dirty"] = probed
        kw.update(overrides)
        return cls(**kw)


def _probe_soft_dirty() -> bool | None:
    """Whether this kernel has soft-dirty: a new mapping is VM_SOFTDIRTY, so its
    pages show pagemap bit 55 where CONFIG_MEM_SOFT_DIRTY is set, never otherwise."""
    import mmap
    try:
        m = mmap.mmap(-1, PAGE_SIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    except (OSError, AttributeError):
        return None
    try:
        m[0] = 1
        import ctypes
        cell = ctypes.c_char.from_buffer(m)
        addr = ctypes.addressof(cell)
        del cell                                 # no buffer export left: m can close
        with open("/proc/self/pagemap", "rb") as f:
            f.seek(addr // PAGE_SIZE * 8)
            entry = int.from_bytes(f.read(8), "little")
        return bool(entry >> 55 & 1)
    except (OSError, ValueError):
        return None
    finally:
        m.close()


def _kernel_config() -> str | None:
    import gzip
    try:
        with gzip.open("/proc/config.gz", "rt") as f:
            return f.read()
    except OSError:
        pass
    try:
        with open(f"/boot/config-{os.uname().release}") as f:
            return f.read()
    except OSError:
        return None


def _luts(config: KernelConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Category lookup tables: by PTE bits (with and without the 6.18.0 fast-path
    quirk) and by PMD byte."""
    sd = config.soft_dirty
    y = config.written_rules == "6.18.y"

    def pte_cat(p: int, none_written: bool) -> int:
        c = 0
        if p & P_PRESENT:
            c = PRESENT | (0 if p & P_WP else WRITTEN)
            if p & P_FILE:
                c |= FILE
            if p & P_ZERO:
                c |= PFNZERO
        elif p & P_EXISTS:
            c = SWAPPED | (0 if p & P_WP else WRITTEN)
            if p & P_GUARD:
                c |= GUARD
        elif none_written:
            return WRITTEN
        if sd and p & P_SD and p & P_EXISTS:
            c |= SOFT_DIRTY
        return c

    # indexed by the whole uint16 PTE word (no masking: faster)
    low = np.arange(1 << 16) & P_LUT
    pte = np.array([pte_cat(p, y) for p in range(P_LUT + 1)], dtype=np.uint64)[low]
    pte_fast = np.array([pte_cat(p, True) for p in range(P_LUT + 1)], dtype=np.uint64)[low]
    pmd = np.zeros(256, dtype=np.uint64)
    for b in range(256):
        kind = b & B_KIND
        if kind in (K_THP, K_HZP):
            c = HUGE | PRESENT | (0 if b & B_WP else WRITTEN)
            if kind == K_HZP:
                c |= PFNZERO
            if sd and b & B_SD:
                c |= SOFT_DIRTY
            pmd[b] = c
    return pte, pte_fast, pmd


# ----------------------------------------------------------------- files


class SimFile:
    """A tmpfs file (like memfd_create): its size and which pages are in its page
    cache. Shared by every mapping of it, in every simulated process."""

    _ids = itertools.count(1)

    def __init__(self, size: int, name: str = "memfd") -> None:
        if size < 0:
            raise ValueError("size must be >= 0")
        self.name = name
        self.id = next(SimFile._ids)
        self.size = size
        n = -(-size // PAGE_SIZE)
        self.cached = np.zeros(n, dtype=bool)
        #: written (pwrite, or through a shared mapping): reclaim cannot drop it
        #: without swap; a clean page (allocated by a read fault) it can
        self.dirty = np.zeros(n, dtype=bool)
        #: mappings of each page (PTEs in all processes), for pagemap bit 56 and PAGEOUT
        self.mapcount = np.zeros(n, dtype=np.int32)

    @property
    def npages(self) -> int:
        return len(self.cached)

    def write(self, offset: int, length: int) -> None:
        """pwrite(): the pages of ``[offset, offset+length)`` enter the page cache."""
        if offset < 0 or length < 0 or offset + length > self.size:
            raise ValueError("write beyond the end of the file (no resize is modelled)")
        if length:
            s = slice(offset // PAGE_SIZE, -(-(offset + length) // PAGE_SIZE))
            self.cached[s] = True
            self.dirty[s] = True

    def __repr__(self) -> str:
        return f"<SimFile {self.name!r} {self.size} bytes, {int(self.cached.sum())} cached>"


# ----------------------------------------------------------------- VMAs


class Vma:
    """One VMA; ``start``/``end`` are page indexes in the process's window."""

    __slots__ = (
        "account",
        "anon_vma",
        "end",
        "file",
        "fork_child",
        "kind",
        "maybe_guard",
        "pgoff",
        "prot",
        "shared",
        "softdirty",
        "start",
        "thp",
        "uffd",
    )

    def __init__(self, start: int, end: int, kind: str, prot: int, shared: bool,
                 file: SimFile | None, pgoff: int) -> None:
        self.start, self.end = start, end
        self.kind, self.prot, self.shared = kind, prot, shared
        self.file, self.pgoff = file, pgoff
        self.thp = THP_DEFAULT
        self.uffd: SimUffd | None = None
        self.softdirty = True
        self.anon_vma = 0                # 0: none; else an anon_vma identity
        self.fork_child = False          # anon_vma_chain not singular (forked)
        self.maybe_guard = False         # VM_MAYBE_GUARD: guard markers may exist (sticky)
        #: VM_ACCOUNT: private and writable at some point (commit charged); never cleared
        self.account = not shared and bool(prot & PROT_WRITE)

    def copy(self) -> Vma:
        v = Vma(self.start, self.end, self.kind, self.prot, self.shared, self.file, self.pgoff)
        v.thp, v.uffd, v.softdirty = self.thp, self.uffd, self.softdirty
        v.anon_vma, v.fork_child = self.anon_vma, self.fork_child
        v.maybe_guard, v.account = self.maybe_guard, self.account
        return v

    @property
    def anonymous(self) -> bool:
        """vma_is_anonymous(): private anonymous (shmem and files are not)."""
        return self.kind == ANON

    def flags_key(self) -> tuple:
        """What must be equal for two VMAs to merge (VM_SOFTDIRTY excluded)."""
        return (self.prot, self.shared, self.thp, self.uffd is not None, self.account)

    def wp_async(self) -> bool:
        """WP-async: registered in WP mode with WP_ASYNC (and markers in use)."""
        u = self.uffd
        return u is not None and u.wp_async and self.use_markers()

    def use_markers(self) -> bool:
        """userfaultfd_wp_use_markers(): file-backed always, anonymous with WP_UNPOPULATED."""
        u = self.uffd
        return u is not None and (not self.anonymous or u.wp_unpopulated)

    def fidx(self, i: int) -> int:
        return self.pgoff + (i - self.start)


class VmaInfo(NamedTuple):
    """A line of /proc/PID/maps, plus what the model knows of the VMA."""

    start: int
    end: int
    perms: str
    offset: int
    kind: str
    thp: str
    uffd_wp: bool
    softdirty: bool
    anon_vma: bool


# ----------------------------------------------------------------- userfaultfd


class SimUffd:
    """A userfaultfd of a simulated process (write-protect mode only)."""

    def __init__(self, proc: SimProcess, features: int) -> None:
        self._proc: SimProcess | None = proc
        self.features = features
        self.wp_async = bool(features & UFFD_FEATURE_WP_ASYNC)
        self.wp_unpopulated = bool(features & (UFFD_FEATURE_WP_UNPOPULATED
                                               | UFFD_FEATURE_WP_ASYNC))

    @property
    def closed(self) -> bool:
        return self._proc is None

    def _p(self) -> SimProcess:
        if self._proc is None:
            raise OSError(errno.EBADF, "the userfaultfd is closed")
        return self._proc

    def register(self, addr: int, length: int, mode: int = UFFDIO_REGISTER_MODE_WP) -> None:
        """UFFDIO_REGISTER."""
        self._p()._uffd_register(self, addr, length, mode)

    def unregister(self, addr: int, length: int) -> None:
        """UFFDIO_UNREGISTER."""
        self._p()._uffd_unregister(self, addr, length)

    def writeprotect(self, addr: int, length: int, protect: bool = True) -> None:
        """UFFDIO_WRITEPROTECT (mode WP to protect, 0 to unprotect)."""
        self._p()._uffd_writeprotect(addr, length, protect)

    def close(self) -> None:
        """close(): every VMA registered with it is unregistered."""
        p, self._proc = self._proc, None
        if p is not None:
            p._uffd_release(self)

    def __enter__(self) -> SimUffd:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ----------------------------------------------------------------- the process

_registry: weakref.WeakValueDictionary[int, SimProcess] = weakref.WeakValueDictionary()
_pids = itertools.count(PID_BASE)
_current: contextvars.ContextVar[SimProcess | None] = contextvars.ContextVar(
    "pagescan_simulator_current", default=None)


def current() -> SimProcess | None:
    """The simulated process made current with ``with sim:`` (or None)."""
    return _current.get()


def lookup(pid: int) -> SimProcess | None:
    """The live simulated process with this pid (or None)."""
    return _registry.get(pid)


def _err(code: int, what: str) -> OSError:
    return OSError(code, f"{what}: {os.strerror(code)}")


def _concat(parts: list[Any]) -> Any:
    """Region arrays one after the other, nothing merged."""
    return impl.RegionArray([tuple(r) for p in parts for r in p])


def _access_ok(addr: int, size: int) -> bool:
    """x86-64 access_ok(): the range lies below TASK_SIZE_MAX and does not wrap."""
    size &= U64
    total = addr + size
    return total <= U64 and total <= USER_TOP


class SimProcess:
    """A simulated process: the VMAs and page tables of an address-space window.

    ``base`` and ``size`` (multiples of 2 MiB) bound where mappings may live; the
    page state costs 6 bytes per page of the window. ``config`` is the kernel being
    simulated.
    """

    _anon_vma_ids = itertools.count(1)
    _folio_ids = itertools.count(1)

    def __init__(self, *, config: KernelConfig | None = None, base: int = 0x7F0000000000,
                 size: int = 4 << 30) -> None:
        if base % PMD_SIZE or size % PMD_SIZE or size <= 0:
            raise ValueError("base and size must be positive multiples of 2 MiB")
        if base + size > USER_TOP or base <= 0:
            raise ValueError(f"the window must lie inside user space (below 0x{USER_TOP:x})")
        self.config = config if config is not None else KernelConfig()
        self.base, self.size = base, size
        self.npages = size // PAGE_SIZE
        self._pte = np.zeros(self.npages, dtype=np.uint16)
        self._folio = np.zeros(self.npages, dtype=np.uint32)
        self._pmd = np.zeros(self.npages // PMD_PAGES, dtype=np.uint8)
        self._vmas: list[Vma] = []
        self._starts: list[int] = []
        self._uffds: weakref.WeakSet[SimUffd] = weakref.WeakSet()
        self._lut, self._lut_fast, self._pmd_lut = _luts(self.config)
        self.pid = next(_pids)
        self.exited = False
        self._parent: SimProcess | None = None
        self._children: weakref.WeakSet[SimProcess] = weakref.WeakSet()
        self._tokens: list[contextvars.Token] = []
        #: prctl(PR_SET_THP_DISABLE): no THP for this process (inherited by fork)
        self.thp_disabled = False
        #: page indexes mapped by fault-around during the last read()/write()
        self.prefaulted: list[int] = []
        _registry[self.pid] = self

    def __repr__(self) -> str:
        state = "exited" if self.exited else f"{len(self._vmas)} VMAs"
        return (f"<SimProcess pid={self.pid} [0x{self.base:x}, 0x{self.base + self.size:x}) "
                f"{state}>")

    # -- context: the current process for backend="simulator" without pid --------

    def __enter__(self) -> SimProcess:
        self._tokens.append(_current.set(self))
        return self

    def __exit__(self, *exc: object) -> None:
        _current.reset(self._tokens.pop())

    # -- small helpers ---------------------------------------------------------------

    def _live(self) -> None:
        if self.exited:
            raise ValueError("the simulated process has exited")

    def _index(self, addr: int) -> int:
        """Page index of an address (which may lie outside the window)."""
        return (addr - self.base) >> PAGE_SHIFT

    def _addr(self, i: int) -> int:
        return self.base + (i << PAGE_SHIFT)

    def _rebuild(self) -> None:
        self._vmas.sort(key=lambda v: v.start)
        self._starts = [v.start for v in self._vmas]

    def _vma_at(self, i: int) -> Vma | None:
        k = bisect.bisect_right(self._starts, i) - 1
        if k >= 0:
            v = self._vmas[k]
            if i < v.end:
                return v
        return None

    def _vmas_in(self, a: int, b: int) -> list[Vma]:
        """VMAs intersecting page range [a, b), in order."""
        k = max(bisect.bisect_right(self._starts, a) - 1, 0)
        out = []
        for v in self._vmas[k:]:
            if v.start >= b:
                break
            if v.end > a:
                out.append(v)
        return out

    def _neighbours(self, v: Vma) -> tuple[Vma | None, Vma | None]:
        k = self._vmas.index(v)
        prev = self._vmas[k - 1] if k > 0 else None
        nxt = self._vmas[k + 1] if k + 1 < len(self._vmas) else None
        return prev, nxt

    def _pages(self, addr: int, length: int, what: str, *, allow_zero: bool = False
               ) -> tuple[int, int]:
        """Validate an (address, length) of a system call: page indexes [a, b)."""
        if addr % PAGE_SIZE:
            raise _err(errno.EINVAL, f"{what}: address 0x{addr:x} is not page-aligned")
        if length < 0:
            raise _err(errno.EINVAL, f"{what}: negative length")
        n = -(-length // PAGE_SIZE)
        if n == 0 and not allow_zero:
            raise _err(errno.EINVAL, f"{what}: length is zero")
        if addr + n * PAGE_SIZE > USER_TOP or addr < 0:
            raise _err(errno.EINVAL, f"{what}: the range leaves user space")
        return self._index(addr), self._index(addr) + n

    def _in_window(self, a: int, b: int) -> bool:
        return 0 <= a and b <= self.npages

    def _anon_prepare(self, v: Vma) -> None:
        """anon_vma_prepare(): reuse a compatible neighbour's anon_vma, next first."""
        if v.anon_vma:
            return
        prev, nxt = self._neighbours(v)
        pairs: list[tuple[Vma, Vma, Vma]] = []
        if nxt is not None:
            pairs.append((nxt, v, nxt))
        if prev is not None:
            pairs.append((prev, prev, v))
        for other, a, b in pairs:
            if not other.anon_vma or other.fork_child:
                continue
            if (a.end == b.start and a.file is b.file and a.shared == b.shared
                    and a.thp == b.thp and a.uffd is b.uffd and a.account == b.account
                    and b.pgoff == a.pgoff + (b.start - a.start)):
                v.anon_vma = other.anon_vma
                return
        v.anon_vma = next(SimProcess._anon_vma_ids)

    # -- page-table helpers --------------------------------------------------------

    def _split_pmd(self, blk: int) -> None:
        """__split_huge_pmd(): a PMD-mapped THP or huge zero page becomes a table."""
        b = int(self._pmd[blk])
        kind = b & B_KIND
        s = slice(blk * PMD_PAGES, (blk + 1) * PMD_PAGES)
        if kind == K_THP:
            bits = P_PRESENT | (P_WP if b & B_WP else 0) | (P_SD if b & B_SD else 0) \
                | (P_SHARED if b & B_SHARED else 0)
            self._pte[s] = (self._pte[s] & P_DATA) | bits
        elif kind == K_HZP:
            self._pte[s] = P_PRESENT | P_ZERO | (P_WP if b & B_WP else 0)
            self._folio[s] = 0
        else:
            return
        self._pmd[blk] = K_TABLE

    def _split_pmds_at(self, i: int) -> None:
        """vma_adjust_trans_huge(): a VMA boundary at page i splits the PMD around it."""
        if 0 <= i < self.npages and i % PMD_PAGES:
            self._split_pmd(i // PMD_PAGES)

    def _new_folio(self) -> int:
        return next(SimProcess._folio_ids) & 0xFFFFFFFF or next(SimProcess._folio_ids)

    def _split_folio(self, fid: int) -> None:
        """split_folio() of an anonymous large folio (reclaim): the PMD mapping, if
        any, is split, and mapped subpages that hold only zeroes are remapped to
        the shared zero page (keeping their uffd-wp and soft-dirty bits)."""
        idx = np.flatnonzero(self._folio == fid)
        if not len(idx):
            return
        for blk in np.unique(idx // PMD_PAGES):
            if self._pmd[blk] & B_KIND == K_THP:
                self._split_pmd(int(blk))
        p = self._pte[idx]
        zero = (p & P_PRESENT != 0) & (p & (P_DATA | P_ZERO | P_FILE) == 0)
        self._pte[idx[zero]] = (p[zero] & (P_WP | P_SD)) | P_PRESENT | P_ZERO
        self._folio[idx] = 0

    def _file_unmap(self, v: Vma, a: int, b: int, p: np.ndarray) -> None:
        """Drop the page-cache mapcount of the FILE PTEs ``p`` (pages [a, b) of v)."""
        f = v.file
        if f is None:
            return
        m = (p & P_PRESENT != 0) & (p & P_FILE != 0)
        if m.any():
            f0 = v.fidx(a)
            mc = f.mapcount[f0:f0 + (b - a)]
            mc[m[:len(mc)]] -= 1

    def _file_map(self, v: Vma, i: int) -> None:
        f = v.file
        assert f is not None
        fi = v.fidx(i)
        f.cached[fi] = True
        f.mapcount[fi] += 1

    # -- zapping ---------------------------------------------------------------------

    def _zap(self, v: Vma, a: int, b: int, mode: str) -> None:
        """zap_page_range over [a, b) of v. ``mode``: "dontneed" (madvise, with
        page-table reclaim), "guard" (before installing guard markers), "unmap"
        (munmap: everything goes, markers too)."""
        pte, pmd = self._pte, self._pmd
        keep_file_wp = mode != "unmap" and not v.anonymous and v.uffd is not None
        for blk in range(a // PMD_PAGES, (b - 1) // PMD_PAGES + 1):
            lo, hi = max(a, blk * PMD_PAGES), min(b, (blk + 1) * PMD_PAGES)
            kind = pmd[blk] & B_KIND
            if kind == K_NONE:
                continue
            whole = hi - lo == PMD_PAGES
            if kind in (K_THP, K_HZP):
                if whole:
                    pmd[blk] = K_NONE
                    pte[lo:hi] = 0
                    self._folio[lo:hi] = 0
                    continue
                self._split_pmd(blk)
            seg = pte[lo:hi]
            self._file_unmap(v, lo, hi, seg)
            if mode == "unmap":
                new = np.zeros_like(seg)
            else:
                new = np.where(seg & P_GUARD != 0, seg, 0).astype(np.uint16)  # guards stay
                if keep_file_wp:
                    # file-backed uffd-wp: a protected entry leaves a uffd-wp marker
                    wp = (seg & P_WP != 0) & (seg & P_GUARD == 0)
                    new[wp] = P_WP
            skipped = bool(new.any())
            pte[lo:hi] = new
            self._folio[lo:hi] = 0
            if (mode == "dontneed" and whole and not skipped and self.config.pt_reclaim):
                pmd[blk] = K_NONE

    def _free_tables(self, a: int, b: int) -> None:
        """free_pgtables() after unmapping [a, b): a PTE table goes when no VMA is
        left in its 2 MiB."""
        for blk in range(max(a, 0) // PMD_PAGES, (min(b, self.npages) - 1) // PMD_PAGES + 1):
            if not self._vmas_in(blk * PMD_PAGES, (blk + 1) * PMD_PAGES):
                s = slice(blk * PMD_PAGES, (blk + 1) * PMD_PAGES)
                self._pmd[blk] = K_NONE
                self._pte[s] = 0
                self._folio[s] = 0

    # -- VMA split / merge -------------------------------------------------------------

    def _split_vma(self, v: Vma, at: int) -> Vma:
        """Split v at page ``at`` (v.start < at < v.end); returns the upper part."""
        self._split_pmds_at(at)
        upper = v.copy()
        upper.start = at
        upper.pgoff = v.pgoff + (at - v.start)
        v.end = at
        self._vmas.append(upper)
        self._rebuild()
        return upper

    def _isolate(self, a: int, b: int) -> list[Vma]:
        """Split VMAs at a and b; the VMAs now exactly inside [a, b)."""
        vs = self._vmas_in(a, b)
        if vs and vs[0].start < a:
            self._split_vma(vs[0], a)
        vs = self._vmas_in(a, b)
        if vs and vs[-1].end > b:
            self._split_vma(vs[-1], b)
        return self._vmas_in(a, b)

    def _modify(self, a: int, b: int, needs: Any, apply: Any) -> None:
        """vma_modify() over [a, b): each VMA whose flags must change is split to
        the range, changed, and merged with its neighbours where it can."""
        for v in self._vmas_in(a, b):
            if v not in self._vmas or not needs(v):
                continue
            lo, hi = max(a, v.start), min(b, v.end)
            if v.start < lo:
                v = self._split_vma(v, lo)
            if v.end > hi:
                self._split_vma(v, hi)
            apply(v)
            self._try_merge([v])

    @staticmethod
    def _anon_ok(a1: int, a2: int, owner: Vma | None) -> bool:
        """is_mergeable_anon_vma()."""
        if (not a1 or not a2) and (owner is None or not (owner.anon_vma and owner.fork_child)):
            return True
        return a1 == a2

    def _mergeable(self, x: Vma, y: Vma) -> bool:
        """Whether x and y (x right before y) can be one VMA."""
        if x.end != y.start or x.flags_key() != y.flags_key() or x.file is not y.file:
            return False
        if x.uffd is not y.uffd or x.kind != y.kind:
            return False
        if y.pgoff != x.pgoff + (x.end - x.start):
            return False
        return self._anon_ok(x.anon_vma, y.anon_vma, x if x.anon_vma else y)

    def _merge(self, x: Vma, y: Vma, *, softdirty: bool | None = None) -> Vma:
        """y is absorbed into x (x expands); the result keeps x's VM_SOFTDIRTY unless
        ``softdirty`` says otherwise."""
        x.end = y.end
        x.anon_vma = x.anon_vma or y.anon_vma
        x.fork_child = x.fork_child or y.fork_child
        x.maybe_guard = x.maybe_guard or y.maybe_guard
        if softdirty is not None:
            x.softdirty = softdirty
        self._vmas.remove(y)
        self._rebuild()
        return x

    def _try_merge(self, vs: list[Vma], *, new: bool = False) -> None:
        """Merge each VMA of ``vs`` (modified or new, in order) with its neighbours,
        as vma_modify() / vma_merge_new_range() do. The merged VMA takes the
        VM_SOFTDIRTY of the VMA that was modified or created (a new mapping is
        soft-dirty; checked on 6.1 and 6.12: a clean neighbour merged into a
        dirty one becomes dirty, and the other way round)."""
        for v in list(vs):
            if v not in self._vmas:
                continue
            sd = True if new else v.softdirty
            prev, nxt = self._neighbours(v)
            if prev is not None and nxt is not None and self._mergeable(prev, v) \
                    and self._mergeable(v, nxt) and not self._anon_ok(prev.anon_vma,
                                                                      nxt.anon_vma, None):
                nxt = None                       # prev and next are incompatible: left only
            cur = v
            if prev is not None and self._mergeable(prev, cur):
                cur = self._merge(prev, cur, softdirty=sd)
            if nxt is not None and self._mergeable(cur, nxt):
                if cur is v:                     # next absorbs v
                    nxt.start, nxt.pgoff = cur.start, cur.pgoff
                    nxt.anon_vma = nxt.anon_vma or cur.anon_vma
                    nxt.maybe_guard = nxt.maybe_guard or cur.maybe_guard
                    nxt.fork_child = nxt.fork_child or cur.fork_child
                    nxt.softdirty = sd
                    self._vmas.remove(cur)
                    self._rebuild()
                else:
                    self._merge(cur, nxt, softdirty=sd)

    # -- categories ---------------------------------------------------------------------

    def _blocks(self, a: int, b: int) -> np.ndarray:
        """The PMD byte of every page of [a, b)."""
        b0 = a // PMD_PAGES
        b1 = (b - 1) // PMD_PAGES + 1
        return np.repeat(self._pmd[b0:b1], PMD_PAGES)[a - b0 * PMD_PAGES:b - b0 * PMD_PAGES]

    def _vma_base(self, v: Vma) -> int:
        c = WPALLOWED if v.wp_async() else 0
        if self.config.soft_dirty and v.softdirty:
            c |= SOFT_DIRTY
        return c

    def _vma_categories(self, v: Vma, a: int, b: int, *, fast: bool = False) -> np.ndarray:
        lut = self._lut_fast if fast else self._lut
        c = lut[self._pte[a:b]]
        b0 = a // PMD_PAGES
        kinds = self._pmd[b0:(b - 1) // PMD_PAGES + 1] & B_KIND
        other = np.flatnonzero(kinds != K_TABLE)
        if len(other):
            hole = WRITTEN if v.uffd is not None and self.config.written_rules == "6.18.y" \
                else 0
            if len(other) > 64:                      # many: vectorised
                pm = self._blocks(a, b)
                kind = pm & B_KIND
                c = np.where(kind != K_TABLE, self._pmd_lut[pm], c)
                if hole:
                    c[kind == K_NONE] |= np.uint64(hole)
            else:
                for k in other.tolist():
                    blk = b0 + k
                    x, y = max(a, blk * PMD_PAGES), min(b, (blk + 1) * PMD_PAGES)
                    pb = int(self._pmd[blk])
                    val = int(self._pmd_lut[pb]) | (hole if pb & B_KIND == K_NONE else 0)
                    c[x - a:y - a] = val
        base = self._vma_base(v)
        if base:
            c |= np.uint64(base)
        return c

    def categories(self, addr: int, npages: int) -> np.ndarray:
        """The PAGEMAP_SCAN categories of every page of ``[addr, addr + npages*4096)``
        (uint64; ``HOLE`` where no VMA is mapped)."""
        self._live()
        a = self._index(addr)
        out = np.full(npages, HOLE, dtype=np.uint64)
        for v in self._vmas_in(a, a + npages):
            lo, hi = max(v.start, a), min(v.end, a + npages)
            out[lo - a:hi - a] = self._vma_categories(v, lo, hi)
        return out

    # -- faults ---------------------------------------------------------------------------

    def _thp_ok(self, v: Vma, blk: int) -> bool:
        """thp_vma_allowable_order() for a PMD fault of an anonymous VMA."""
        mode = self.config.thp
        if mode == "never" or not v.anonymous or v.thp == THP_NOHUGE or self.thp_disabled:
            return False
        if mode == "madvise" and v.thp != THP_HUGE:
            return False
        return v.start <= blk * PMD_PAGES and (blk + 1) * PMD_PAGES <= v.end

    def _check(self, i: int, write: bool) -> Vma:
        """The VMA of page i if the access is allowed, else the fault."""
        v = self._vma_at(i) if 0 <= i < self.npages else None
        if v is None:
            raise SegmentationFault(self._addr(i), "no mapping")
        prot = v.prot
        if write and not prot & PROT_WRITE:
            raise SegmentationFault(self._addr(i), "the mapping is not writable")
        if not prot:
            raise SegmentationFault(self._addr(i), "the mapping is PROT_NONE")
        f = v.file
        if f is not None and v.pgoff + (i - v.start) >= len(f.cached):
            raise BusError(self._addr(i), "beyond the end of the mapped file")
        b = int(self._pmd[i >> 9])
        if b & B_KIND == K_TABLE:
            p = int(self._pte[i])
            if p & P_GUARD:
                raise SegmentationFault(self._addr(i), "a guard page")
            if write and p & P_WP and v.uffd is not None and not v.uffd.wp_async:
                raise UffdWouldBlock(self._addr(i), "a sync userfaultfd write-protects the page")
        elif write and b & B_WP and v.uffd is not None and not v.uffd.wp_async:
            raise UffdWouldBlock(self._addr(i), "a sync userfaultfd write-protects the page")
        return v

    def _fault(self, i: int, write: bool, v: Vma | None = None) -> None:
        """One access to page i (``v``: its VMA, when the access was checked)."""
        if v is None:
            v = self._check(i, write)
        pte, pmd = self._pte, self._pmd
        blk = i // PMD_PAGES
        b = int(pmd[blk])
        kind = b & B_KIND
        if kind == K_NONE:
            if self._thp_ok(v, blk):
                s = slice(blk * PMD_PAGES, (blk + 1) * PMD_PAGES)
                if write:
                    self._anon_prepare(v)
                    pmd[blk] = K_THP | B_SD
                    pte[s] = 0
                    pte[i] = P_DATA
                    self._folio[s] = self._new_folio()
                    return
                if self.config.thp_zero_page:
                    self._anon_prepare(v)
                    pmd[blk] = K_HZP
                    pte[s] = 0
                    return
            pmd[blk] = K_TABLE
        elif kind == K_THP:
            if not write:
                return
            if not b & (B_WP | B_SHARED):
                pte[i] |= P_DATA
                pmd[blk] = b | B_SD
                return
            self._split_pmd(blk)             # uffd-wp async or COW: per PTE
        elif kind == K_HZP:
            if not write:
                return
            if not b & B_WP:                 # do_huge_zero_wp_pmd(): a new THP
                s = slice(blk * PMD_PAGES, (blk + 1) * PMD_PAGES)
                pmd[blk] = K_THP | B_SD
                pte[s] = 0
                pte[i] = P_DATA
                self._folio[s] = self._new_folio()
                return
            self._split_pmd(blk)
        p = int(pte[i])
        if p and not p & P_PRESENT and v.uffd is None:
            p = 0                            # a leftover marker: pte_marker_clear()
            pte[i] = 0
        if not p & P_PRESENT:                # none or uffd-wp marker: a missing fault
            marker = p & P_WP
            if v.anonymous:
                if write:
                    self._anon_prepare(v)
                    pte[i] = P_PRESENT | P_DATA | P_SD
                else:
                    pte[i] = P_PRESENT | P_ZERO | marker
            elif write and not v.shared:     # do_cow_fault()
                self._anon_prepare(v)
                assert v.file is not None
                v.file.cached[v.fidx(i)] = True
                pte[i] = P_PRESENT | P_DATA | P_SD
            elif write:                      # do_shared_fault()
                self._file_map(v, i)
                assert v.file is not None
                v.file.dirty[v.fidx(i)] = True
                pte[i] = P_PRESENT | P_FILE | P_SD
            else:                            # do_read_fault()
                if not p and v.uffd is None and self.config.fault_around_pages > 1:
                    self._fault_around(v, i)
                if not pte[i] & P_PRESENT:
                    self._file_map(v, i)
                    pte[i] = P_PRESENT | P_FILE | marker
            return
        if not write:
            return
        if p & P_ZERO or (p & P_FILE and not v.shared):      # COW to a new anon page
            self._anon_prepare(v)
            if p & P_FILE:
                assert v.file is not None
                v.file.mapcount[v.fidx(i)] -= 1
            pte[i] = P_PRESENT | P_DATA | P_SD
            self._folio[i] = 0
        elif p & P_FILE:                                      # shared: write-enable
            assert v.file is not None
            v.file.dirty[v.fidx(i)] = True
            pte[i] = (p & ~P_WP) | P_SD
        else:                                                 # anonymous: reuse or copy
            if p & P_SHARED:
                self._folio[i] = 0
            pte[i] = (p & ~(P_WP | P_SHARED)) | P_SD | P_DATA

    def _fault_around(self, v: Vma, i: int) -> None:
        """do_fault_around(): map the page-cache pages around i that are in the cache,
        within the same 16-page window, PTE table, VMA and file."""
        n = self.config.fault_around_pages
        pte_off = i % PMD_PAGES
        vma_off = i - v.start
        frm = max(pte_off & ~(n - 1), pte_off - min(pte_off, vma_off))
        to = min(frm + n, PMD_PAGES, pte_off + (v.end - v.start) - vma_off)
        lo, hi = i - pte_off + frm, i - pte_off + to
        f = v.file
        assert f is not None
        f0 = v.fidx(lo)
        hi = min(hi, lo + max(f.npages - f0, 0))
        if hi <= lo:
            return
        seg = self._pte[lo:hi]
        m = (seg == 0) & f.cached[f0:f0 + (hi - lo)]
        m[i - lo] = False                    # the faulting page itself is not "around"
        seg[m] = P_PRESENT | P_FILE
        f.mapcount[f0:f0 + (hi - lo)][m] += 1
        self.prefaulted.extend((np.flatnonzero(m) + lo).tolist())

    def _access(self, addr: int, length: int, write: bool) -> None:
        self._live()
        self.prefaulted = []
        if length <= 0:
            return
        a = self._index(addr - addr % PAGE_SIZE)
        b = self._index(addr + length - 1) + 1
        i = a
        while i < b:
            v = self._check(i, write)
            hi = min(b, v.end, (i // PMD_PAGES + 1) * PMD_PAGES)
            if hi - i > 1 and v.kind == ANON and int(self._pmd[i >> 9]) & B_KIND == K_TABLE:
                i = (self._write_anon_run if write else self._read_anon_run)(v, i, hi)
                continue
            self._fault(i, write, v)
            i += 1

    def _write_anon_run(self, v: Vma, lo: int, hi: int) -> int:
        """Vectorised writes to pages [lo, hi) of a PTE table of an anonymous VMA;
        stops before a page that would fault. Returns where it stopped."""
        seg = self._pte[lo:hi]
        bad = seg & P_GUARD != 0
        if v.uffd is not None and not v.uffd.wp_async:
            bad |= seg & P_WP != 0
        if bad.any():
            hi = lo + int(np.argmax(bad))
            seg = seg[:hi - lo]
            if hi == lo:
                self._fault(lo, True)        # raises
        self._anon_prepare(v)
        present = seg & P_PRESENT != 0
        fresh = ~present | (seg & (P_ZERO | P_SHARED) != 0)
        seg[:] = np.where(fresh, P_PRESENT | P_DATA | P_SD,
                          (seg & np.uint16(~(P_WP | P_SHARED) & 0xFFFF)) | P_SD | P_DATA
                          ).astype(np.uint16)
        self._folio[lo:hi][fresh] = 0
        return hi

    def _read_anon_run(self, v: Vma, lo: int, hi: int) -> int:
        """Vectorised reads of pages [lo, hi) of a PTE table of an anonymous VMA:
        none entries and uffd-wp markers become the zero page (a marker's bit kept
        where the VMA is registered); stops before a guard page."""
        seg = self._pte[lo:hi]
        bad = seg & P_GUARD != 0
        if bad.any():
            hi = lo + int(np.argmax(bad))
            seg = seg[:hi - lo]
            if hi == lo:
                self._fault(lo, False)       # raises
        missing = seg & P_PRESENT == 0
        if missing.any():
            wp = (seg & P_WP) if v.uffd is not None else np.zeros_like(seg)
            seg[missing] = (P_PRESENT | P_ZERO | wp[missing]).astype(np.uint16)
        return hi

    def read(self, addr: int, length: int = 1) -> None:
        """The program reads every page of ``[addr, addr+length)``, in order."""
        self._access(addr, length, False)

    def write(self, addr: int, length: int = 1) -> None:
        """The program writes (non-zero data) to every page of ``[addr, addr+length)``."""
        self._access(addr, length, True)

    def access_fault(self, addr: int, length: int = 1, *, write: bool = False
                     ) -> SimFault | None:
        """The fault an access would take (without making it), or None."""
        a = self._index(addr - addr % PAGE_SIZE)
        b = self._index(addr + max(length, 1) - 1) + 1
        for i in range(a, b):
            try:
                self._check(i, write)
            except SimFault as f:
                return f
        return None

    # -- mmap / munmap ------------------------------------------------------------------

    def memfd(self, size: int, name: str = "memfd") -> SimFile:
        """A new tmpfs file (memfd_create + ftruncate)."""
        return SimFile(size, name)

    def _find_gap(self, n: int, hint: int | None) -> int:
        """get_unmapped_area(), top-down inside the window."""
        if hint is not None and 0 <= hint and hint + n <= self.npages \
                and not self._vmas_in(hint, hint + n):
            return hint
        top = self.npages
        for v in reversed(self._vmas):
            if top - v.end >= n:
                return top - n
            top = v.start
        if top >= n:
            return top - n
        raise _err(errno.ENOMEM, "mmap: no room left in the simulated address window")

    def mmap(self, length: int, prot: int = PROT_READ | PROT_WRITE,
             flags: int = MAP_PRIVATE | MAP_ANONYMOUS, *, addr: int = 0,
             file: SimFile | None = None, offset: int = 0) -> int:
        """mmap(2); returns the address. ``file`` for a file mapping (not anonymous)."""
        self._live()
        if length <= 0:
            raise _err(errno.EINVAL, "mmap: length is zero")
        n = -(-length // PAGE_SIZE)
        typ = flags & (MAP_SHARED | MAP_PRIVATE)
        if typ not in (MAP_SHARED, MAP_PRIVATE):
            raise _err(errno.EINVAL, "mmap: exactly one of MAP_SHARED and MAP_PRIVATE")
        if prot & ~(PROT_READ | PROT_WRITE | PROT_EXEC):
            raise _err(errno.EINVAL, "mmap: unknown prot bits")
        anon = bool(flags & MAP_ANONYMOUS)
        if not anon and file is None:
            raise _err(errno.EBADF, "mmap: a file mapping needs file=")
        if offset % PAGE_SIZE or offset < 0:
            raise _err(errno.EINVAL, "mmap: offset is not page-aligned")
        fixed = flags & (MAP_FIXED | MAP_FIXED_NOREPLACE)
        if fixed:
            if addr % PAGE_SIZE:
                raise _err(errno.EINVAL, "mmap: MAP_FIXED address is not page-aligned")
            if addr + n * PAGE_SIZE > USER_TOP:
                raise _err(errno.ENOMEM, "mmap: the range leaves user space")
            a = self._index(addr)
            if not self._in_window(a, a + n):
                raise _err(errno.ENOMEM, "mmap: outside the simulated address window "
                           f"[0x{self.base:x}, 0x{self.base + self.size:x})")
            if flags & MAP_FIXED_NOREPLACE and self._vmas_in(a, a + n):
                raise _err(errno.EEXIST, "mmap: MAP_FIXED_NOREPLACE over an existing mapping")
            if self._vmas_in(a, a + n):
                self._unmap(a, a + n)
        else:
            hint = self._index(addr) if addr and addr % PAGE_SIZE == 0 else None
            a = self._find_gap(n, hint)
        if anon and typ == MAP_SHARED:
            kind, f, pgoff = SHMEM, SimFile(n * PAGE_SIZE, "dev/zero"), 0
        elif anon:
            kind, f, pgoff = ANON, None, (self.base >> PAGE_SHIFT) + a
        else:
            kind, f, pgoff = (SHMEM if typ == MAP_SHARED else FILE_PRIVATE), file, \
                offset // PAGE_SIZE
        v = Vma(a, a + n, kind, prot, typ == MAP_SHARED, f, pgoff)
        self._vmas.append(v)
        self._rebuild()
        self._try_merge([v], new=True)
        return self._addr(a)

    def _unmap(self, a: int, b: int) -> None:
        vs = self._isolate(a, b)
        for v in vs:
            self._zap(v, v.start, v.end, "unmap")
            self._vmas.remove(v)
        self._rebuild()
        if vs:
            self._free_tables(vs[0].start, vs[-1].end)

    def munmap(self, addr: int, length: int) -> None:
        """munmap(2)."""
        self._live()
        a, b = self._pages(addr, length, "munmap")
        self._unmap(max(a, 0), min(b, self.npages))

    # -- mprotect / madvise ----------------------------------------------------------------

    def _walk_mapped(self, a: int, b: int) -> tuple[list[Vma], bool]:
        """The VMAs intersecting [a, b) and whether [a, b) has unmapped parts."""
        vs = self._vmas_in(a, b)
        covered = sum(min(v.end, b) - max(v.start, a) for v in vs)
        return vs, covered != b - a

    def mprotect(self, addr: int, length: int, prot: int) -> None:
        """mprotect(2): applied VMA by VMA up to the first unmapped page (ENOMEM)."""
        self._live()
        if addr % PAGE_SIZE:
            raise _err(errno.EINVAL, "mprotect: address is not page-aligned")
        if prot & ~(PROT_READ | PROT_WRITE | PROT_EXEC):
            raise _err(errno.EINVAL, "mprotect: unknown prot bits")
        a, b = self._pages(addr, length, "mprotect", allow_zero=True)
        if a == b:
            return
        first = self._vma_at(a) if 0 <= a < self.npages else None
        if first is None:
            raise _err(errno.ENOMEM, "mprotect: the range starts in unmapped memory")
        stop = a
        for v in self._vmas_in(a, b):
            if v.start > stop:
                break
            stop = v.end
        stop = min(stop, b)
        def apply(v: Vma) -> None:
            # mprotect_fixup(): making a private mapping writable charges it
            # (VM_ACCOUNT); only an anonymous one without anon_vma is uncharged
            if prot & PROT_WRITE and not v.shared:
                v.account = True
            elif not prot & PROT_WRITE and v.anonymous and not v.anon_vma:
                v.account = False
            v.prot = prot

        self._modify(a, stop, lambda v: v.prot != prot, apply)
        if stop < b:
            raise _err(errno.ENOMEM, "mprotect: the range has unmapped pages")

    def madvise(self, addr: int, length: int, advice: int) -> None:
        """madvise(2) for DONTNEED, PAGEOUT, HUGEPAGE, NOHUGEPAGE, GUARD_INSTALL and
        GUARD_REMOVE. Mapped parts are advised; unmapped parts give ENOMEM."""
        self._live()
        if addr % PAGE_SIZE:
            raise _err(errno.EINVAL, "madvise: address is not page-aligned")
        known = (MADV_DONTNEED, MADV_PAGEOUT, MADV_HUGEPAGE, MADV_NOHUGEPAGE,
                 MADV_GUARD_INSTALL, MADV_GUARD_REMOVE)
        if advice not in known:
            if advice in range(0, 26) or advice in (100, 101):
                raise NotImplementedError(f"madvise advice {advice} is not simulated")
            raise _err(errno.EINVAL, f"madvise: unknown advice {advice}")
        if advice in (MADV_GUARD_INSTALL, MADV_GUARD_REMOVE) and not self.config.guard_regions:
            raise _err(errno.EINVAL, "madvise: guard regions need Linux 6.13+")
        a, b = self._pages(addr, length, "madvise", allow_zero=True)
        if a == b:
            return
        a, b = max(a, 0), min(b, self.npages)
        vs, holes = self._walk_mapped(a, b)
        if not vs:
            raise _err(errno.ENOMEM, "madvise: the range is not mapped")
        if advice == MADV_GUARD_INSTALL:
            self._guard_check(vs, a, b)
        if advice in (MADV_HUGEPAGE, MADV_NOHUGEPAGE):
            want = THP_HUGE if advice == MADV_HUGEPAGE else THP_NOHUGE
            self._modify(a, b, lambda v: v.thp != want, lambda v: setattr(v, "thp", want))
        else:
            for v in vs:
                lo, hi = max(v.start, a), min(v.end, b)
                if advice == MADV_DONTNEED:
                    self._zap(v, lo, hi, "dontneed")
                elif advice == MADV_PAGEOUT:
                    self._pageout(v, lo, hi)
                elif advice == MADV_GUARD_INSTALL:
                    self._guard_install(v, lo, hi)
                else:
                    self._guard_remove(lo, hi)
        if holes:
            raise _err(errno.ENOMEM, "madvise: the range has unmapped pages")

    def _guard_check(self, vs: list[Vma], a: int, b: int) -> None:
        """MADV_GUARD_INSTALL loops forever in a uffd-wp registered file-backed VMA
        that holds uffd-wp protected entries (the zap leaves uffd-wp markers, which
        the install walk will not overwrite, so it zaps again)."""
        for v in vs:
            if v.anonymous or v.uffd is None:
                continue
            lo, hi = max(v.start, a), min(v.end, b)
            pm = self._blocks(lo, hi)
            seg = self._pte[lo:hi]
            wp = (pm & B_KIND == K_TABLE) & (seg & P_WP != 0) & (seg & P_GUARD == 0)
            wp |= (pm & B_KIND != K_TABLE) & (pm & B_WP != 0)
            if wp.any():
                i = lo + int(np.argmax(wp))
                raise KernelHang(f"madvise(MADV_GUARD_INSTALL) over the uffd-wp protected "
                                 f"page 0x{self._addr(i):x} of a file-backed VMA never "
                                 "returns on Linux 6.18 (zap leaves a uffd-wp marker, the "
                                 "install walk refuses it, and retries forever)")

    def _guard_install(self, v: Vma, lo: int, hi: int) -> None:
        if v.anonymous:
            self._anon_prepare(v)
        v.maybe_guard = True                 # fork copies its page tables from now on
        self._zap(v, lo, hi, "guard")
        for blk in range(lo // PMD_PAGES, (hi - 1) // PMD_PAGES + 1):
            if self._pmd[blk] & B_KIND == K_NONE:
                self._pmd[blk] = K_TABLE
        seg = self._pte[lo:hi]
        seg[seg & P_GUARD == 0] = P_GUARD

    def _guard_remove(self, lo: int, hi: int) -> None:
        seg = self._pte[lo:hi]
        tab = self._blocks(lo, hi) & B_KIND == K_TABLE
        seg[tab & (seg & P_GUARD != 0)] = 0

    def _pageout(self, v: Vma, lo: int, hi: int) -> None:
        """MADV_PAGEOUT without swap: anonymous large folios are split (zero-filled
        subpages become the zero page); page-cache pages mapped once are unmapped
        (they stay in the cache)."""
        pte, pmd = self._pte, self._pmd
        for blk in range(lo // PMD_PAGES, (hi - 1) // PMD_PAGES + 1):
            b = int(pmd[blk])
            if b & B_KIND == K_THP and not b & B_SHARED:
                self._split_folio(int(self._folio[blk * PMD_PAGES]))
        seg = pte[lo:hi]
        tab = self._blocks(lo, hi) & B_KIND == K_TABLE
        fol = self._folio[lo:hi]
        big = tab & (fol != 0) & (seg & P_PRESENT != 0) & (seg & P_SHARED == 0)
        for fid in np.unique(fol[big]):
            self._split_folio(int(fid))
        seg = pte[lo:hi]
        f = v.file
        if f is None:
            return
        filep = tab & (seg & P_PRESENT != 0) & (seg & P_FILE != 0)
        if not filep.any():
            return
        f0 = v.fidx(lo)
        k = max(min(hi - lo, f.npages - f0), 0)      # no page past the end of the file
        filep = filep[:k]
        seg = seg[:k]
        mc = f.mapcount[f0:f0 + k]
        out = filep & (mc == 1)
        mc[out] = 0
        # a clean page (never written) leaves the page cache; a dirty one cannot be
        # written out without swap and stays
        cached = f.cached[f0:f0 + k]
        cached[out & ~f.dirty[f0:f0 + k]] = False
        if v.uffd is not None:
            seg[out] = np.where(seg[out] & P_WP != 0, P_WP, 0).astype(np.uint16)
        else:
            seg[out] = 0

    # -- mremap ----------------------------------------------------------------------------

    def mremap(self, old_addr: int, old_size: int, new_size: int, flags: int = 0,
               new_addr: int = 0) -> int:
        """mremap(2): shrink, grow in place, or move (MREMAP_MAYMOVE, MREMAP_FIXED)."""
        self._live()
        if flags & ~(MREMAP_MAYMOVE | MREMAP_FIXED | MREMAP_DONTUNMAP):
            raise _err(errno.EINVAL, "mremap: unknown flags")
        if flags & MREMAP_FIXED and not flags & MREMAP_MAYMOVE:
            raise _err(errno.EINVAL, "mremap: MREMAP_FIXED needs MREMAP_MAYMOVE")
        if flags & MREMAP_DONTUNMAP:
            raise NotImplementedError("MREMAP_DONTUNMAP is not simulated")
        if old_addr % PAGE_SIZE:
            raise _err(errno.EINVAL, "mremap: old address is not page-aligned")
        on = -(-old_size // PAGE_SIZE)
        nn = -(-new_size // PAGE_SIZE)
        if nn == 0:
            raise _err(errno.EINVAL, "mremap: new size is zero")
        if on == 0:
            raise NotImplementedError("mremap with old_size 0 (duplicating a shared "
                                      "mapping) is not simulated")
        a = self._index(old_addr)
        d = 0
        if flags & MREMAP_FIXED:
            if new_addr % PAGE_SIZE:
                raise _err(errno.EINVAL, "mremap: new address is not page-aligned")
            if new_addr + nn * PAGE_SIZE > USER_TOP:
                raise _err(errno.EINVAL, "mremap: the new range leaves user space")
            d = self._index(new_addr)
            if d < a + on and a < d + nn:
                raise _err(errno.EINVAL, "mremap: old and new ranges overlap")
            if not self._in_window(d, d + nn):
                raise _err(errno.ENOMEM, "mremap: outside the simulated address window")
        # check_prep_vma(): the old address must be mapped; a move or a growth must
        # not cross the end of its VMA (a shrink may: its tail is just unmapped)
        v = self._vma_at(a) if 0 <= a < self.npages else None
        if v is None:
            raise _err(errno.EFAULT, "mremap: the old address is not mapped")
        if flags & MREMAP_FIXED and on == nn and a + on > v.end:
            return self._move_multi(a, on, d)
        if flags & MREMAP_FIXED or nn > on:
            if min(on, nn) > v.end - a:
                raise _err(errno.EFAULT, "mremap: the old range is not one mapping")
        if flags & MREMAP_FIXED:
            self._unmap(d, d + nn)
            if on > nn:
                self._unmap(a + nn, a + on)
                on = nn
            v = self._vma_at(a)
            assert v is not None
            return self._move(v, a, on, d, nn)
        if nn <= on:
            if nn < on:
                self._unmap(a + nn, a + on)
            return old_addr
        if v.end == a + on and a + nn <= self.npages and not self._vmas_in(a + on, a + nn):
            v.end = a + nn                                   # grow in place
            self._rebuild()
            nxt = self._neighbours(v)[1]
            if nxt is not None and self._mergeable(v, nxt):
                self._merge(v, nxt)
            return old_addr
        if not flags & MREMAP_MAYMOVE:
            raise _err(errno.ENOMEM, "mremap: cannot grow in place")
        d = self._find_gap(nn, None)
        return self._move(v, a, on, d, nn)

    def _move_multi(self, a: int, n: int, d: int) -> int:
        """Linux 6.17+: a MREMAP_FIXED move without resize may span several VMAs and
        the gaps between them; each VMA moves to the same offset at the target (only
        its own target range is unmapped first). A VMA registered with a userfaultfd
        stops the move with EFAULT (the VMAs before it stay moved)."""
        for v in self._vmas_in(a, a + n):
            if v.uffd is not None:
                raise _err(errno.EFAULT, "mremap: a multi-VMA move over a userfaultfd "
                           "registered mapping")
            lo, hi = max(a, v.start), min(a + n, v.end)
            t = d + (lo - a)
            self._unmap(t, t + (hi - lo))
            w = self._vma_at(lo)
            assert w is not None
            self._move(w, lo, hi - lo, t, hi - lo)
        return self._addr(d)

    def _move(self, v: Vma, a: int, on: int, d: int, nn: int) -> int:
        """move_vma(): [a, a+on) of v moves to d, as a VMA of nn pages.

        As the kernel does it: copy_vma() makes (or merges) the new VMA -- it may
        merge with v itself -- the page tables move, the new VMA loses its
        userfaultfd context, and only then is the old range unmapped."""
        src = v
        new = src.copy()
        if new.anonymous and not new.anon_vma:
            new.pgoff = (self.base >> PAGE_SHIFT) + d
        else:
            new.pgoff = src.pgoff + (a - src.start)
        new.start, new.end = d, d + nn
        # without UFFD_FEATURE_EVENT_REMAP the moved PTEs lose their uffd-wp state,
        # and the new VMA its registration -- after copy_vma() merged it
        clear_wp = src.uffd is not None
        pte, pmd = self._pte, self._pmd
        off = 0
        while off < on:
            s, t = a + off, d + off
            ext = min(PMD_PAGES - s % PMD_PAGES, PMD_PAGES - t % PMD_PAGES, on - off)
            sb, tb = s // PMD_PAGES, t // PMD_PAGES
            kind = pmd[sb] & B_KIND
            if kind == K_NONE:
                off += ext
                continue
            if ext == PMD_PAGES and kind in (K_THP, K_HZP) and pmd[tb] & B_KIND == K_NONE:
                b = int(pmd[sb])
                if clear_wp:
                    b &= ~B_WP
                pmd[tb] = b | B_SD
                pte[t:t + ext] = pte[s:s + ext]
                self._folio[t:t + ext] = self._folio[s:s + ext]
                pmd[sb] = K_NONE
                pte[s:s + ext] = 0
                self._folio[s:s + ext] = 0
                off += ext
                continue
            if kind in (K_THP, K_HZP):
                self._split_pmd(sb)
            whole_table = (ext == PMD_PAGES and not clear_wp
                           and pmd[tb] & B_KIND == K_NONE)
            if pmd[tb] & B_KIND == K_NONE:
                pmd[tb] = K_TABLE
            seg = pte[s:s + ext].copy()
            if not whole_table:                  # move_ptes(): per PTE
                exists = seg & P_EXISTS != 0
                seg[exists] |= P_SD
                if clear_wp:
                    marker = (seg & P_WP != 0) & (seg & (P_PRESENT | P_SWAP | P_GUARD) == 0)
                    seg[marker] = 0
                    seg &= ~np.uint16(P_WP)
            else:                                # move_normal_pmd(): the table moves
                pmd[sb] = K_NONE
            pte[t:t + ext] = seg
            self._folio[t:t + ext] = self._folio[s:s + ext]
            pte[s:s + ext] = 0
            self._folio[s:s + ext] = 0
            off += ext
        self._vmas.append(new)
        self._rebuild()
        self._try_merge([new])
        if clear_wp:
            w = self._vma_at(d)
            assert w is not None
            w.uffd = None                         # mremap_userfaultfd_prep()
        self._unmap(a, a + on)
        return self._addr(d)

    # -- fork / exit -----------------------------------------------------------------------

    def fork(self) -> SimProcess:
        """fork(2): the child, with copy-on-write memory. userfaultfd registrations
        are not inherited (no UFFD_FEATURE_EVENT_FORK); page tables are copied only
        for VMAs with an anon_vma (others fault in again in the child)."""
        self._live()
        child = SimProcess.__new__(SimProcess)
        child.config, child.base, child.size, child.npages = \
            self.config, self.base, self.size, self.npages
        child._pte = np.zeros_like(self._pte)
        child._folio = np.zeros_like(self._folio)
        child._pmd = np.zeros_like(self._pmd)
        child._vmas = []
        child._uffds = weakref.WeakSet()
        child._lut, child._lut_fast, child._pmd_lut = self._lut, self._lut_fast, self._pmd_lut
        child.pid = next(_pids)
        child.exited = False
        child._parent = self
        child._children = weakref.WeakSet()
        child._tokens = []
        child.thp_disabled = self.thp_disabled
        child.prefaulted = []
        _registry[child.pid] = child
        self._children.add(child)
        for v in self._vmas:
            c = v.copy()
            c.uffd = None
            if v.anon_vma:
                c.anon_vma = next(SimProcess._anon_vma_ids)
                c.fork_child = True
            child._vmas.append(c)
            if not (v.anon_vma or v.maybe_guard):     # vma_needs_copy()
                continue
            s = slice(v.start, v.end)
            for blk in range(v.start // PMD_PAGES, (v.end - 1) // PMD_PAGES + 1):
                b = int(self._pmd[blk])
                kind = b & B_KIND
                if kind == K_THP:                # copy_huge_pmd(): shared, not uffd-wp
                    child._pmd[blk] = (b & ~B_WP) | B_SHARED
                    self._pmd[blk] = b | B_SHARED
                elif kind == K_HZP:              # a fresh huge zero PMD
                    child._pmd[blk] = K_HZP
                elif kind == K_TABLE and child._pmd[blk] & B_KIND == K_NONE:
                    child._pmd[blk] = K_TABLE
            p = self._pte[s].copy()
            tab = self._blocks(v.start, v.end) & B_KIND == K_TABLE
            anon = tab & (p & P_PRESENT != 0) & (p & (P_FILE | P_ZERO) == 0)
            self._pte[s][anon] |= P_SHARED
            cp = p.copy()
            cp[anon] |= P_SHARED
            marker = (cp & P_WP != 0) & (cp & (P_PRESENT | P_SWAP | P_GUARD) == 0)
            cp[marker] = 0
            cp &= ~np.uint16(P_WP)
            cp[cp & P_GUARD != 0] = P_GUARD          # copy_pte_marker(): a fresh marker
            cp[~tab] = p[~tab] & P_DATA              # THP subpage data rides along
            child._pte[s] = cp
            child._folio[s] = self._folio[s]
            if v.file is not None:
                fm = tab & (p & P_PRESENT != 0) & (p & P_FILE != 0)
                if fm.any():
                    f0 = v.fidx(v.start)
                    k = max(min(v.end - v.start, v.file.npages - f0), 0)
                    v.file.mapcount[f0:f0 + k][fm[:k]] += 1
        child._rebuild()
        return child

    def exit(self) -> None:
        """The process exits: its memory is unmapped. A parent whose last child
        exits owns its pages exclusively again."""
        if self.exited:
            return
        for uf in list(self._uffds):
            uf._proc = None
        self._unmap(0, self.npages)
        self.exited = True
        parent = self._parent
        if parent is not None and not parent.exited:
            parent._children.discard(self)
            if not any(not c.exited for c in parent._children) and parent._parent is None:
                parent._pte &= ~np.uint16(P_SHARED)
                parent._pmd &= ~np.uint8(B_SHARED)

    # -- userfaultfd --------------------------------------------------------------------------

    def userfaultfd(self, features: int = UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED
                    ) -> SimUffd:
        """userfaultfd(2) + UFFDIO_API with ``features`` (WP_ASYNC implies
        WP_UNPOPULATED, as the kernel does)."""
        self._live()
        known = UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED | \
            UFFD_FEATURE_WP_HUGETLBFS_SHMEM
        if features & ~known:
            raise NotImplementedError(f"userfaultfd features 0x{features & ~known:x} "
                                      "are not simulated")
        if features & UFFD_FEATURE_WP_ASYNC and not self.config.uffd_wp_async:
            raise _err(errno.EINVAL, "UFFDIO_API: this kernel lacks UFFD_FEATURE_WP_ASYNC")
        uf = SimUffd(self, features)
        self._uffds.add(uf)
        return uf

    def _uffd_range(self, addr: int, length: int, what: str) -> tuple[int, int]:
        if addr % PAGE_SIZE or length <= 0 or length % PAGE_SIZE:
            raise _err(errno.EINVAL, f"{what}: the range is empty or not page-aligned")
        if addr + length > USER_TOP:
            raise _err(errno.EINVAL, f"{what}: the range leaves user space")
        a = self._index(addr)
        return max(a, 0), min(a + length // PAGE_SIZE, self.npages)

    def _uffd_register(self, uf: SimUffd, addr: int, length: int, mode: int) -> None:
        if mode & ~(UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_WP
                    | UFFDIO_REGISTER_MODE_MINOR) or not mode:
            raise _err(errno.EINVAL, "UFFDIO_REGISTER: bad mode")
        if mode != UFFDIO_REGISTER_MODE_WP:
            raise NotImplementedError("only UFFDIO_REGISTER_MODE_WP is simulated")
        a, b = self._uffd_range(addr, length, "UFFDIO_REGISTER")
        vs = self._vmas_in(a, b) if a < b else []
        if not vs:
            raise _err(errno.EINVAL, "UFFDIO_REGISTER: no mapping in the range")
        for v in vs:
            if v.uffd is not None and v.uffd is not uf:
                raise _err(errno.EBUSY, "UFFDIO_REGISTER: registered with another userfaultfd")
        self._modify(a, b, lambda v: v.uffd is not uf, lambda v: setattr(v, "uffd", uf))

    def _clear_uffd(self, v: Vma) -> None:
        """userfaultfd_clear_vma(): uffd-wp bits and markers go, then the context."""
        self._wp_range(v, v.start, v.end, False)
        v.uffd = None

    def _uffd_unregister(self, uf: SimUffd, addr: int, length: int) -> None:
        a, b = self._uffd_range(addr, length, "UFFDIO_UNREGISTER")
        vs = self._vmas_in(a, b) if a < b else []
        if not vs:
            raise _err(errno.EINVAL, "UFFDIO_UNREGISTER: no mapping in the range")
        self._modify(a, b, lambda v: v.uffd is not None, self._clear_uffd)

    def _uffd_release(self, uf: SimUffd) -> None:
        if self.exited:
            return
        changed = [v for v in self._vmas if v.uffd is uf]
        for v in changed:
            self._clear_uffd(v)
        self._try_merge(changed)

    def _uffd_writeprotect(self, addr: int, length: int, protect: bool) -> None:
        self._live()
        a, b = self._uffd_range(addr, length, "UFFDIO_WRITEPROTECT")
        vs = self._vmas_in(a, b) if a < b else []
        if not vs:
            raise _err(errno.ENOENT, "UFFDIO_WRITEPROTECT: no mapping in the range")
        for v in vs:
            if v.uffd is None:
                raise _err(errno.ENOENT, "UFFDIO_WRITEPROTECT: a mapping in the range is not "
                           "registered for write-protect")
            self._wp_range(v, max(v.start, a), min(v.end, b), protect)

    def _wp_range(self, v: Vma, a: int, b: int, protect: bool) -> None:
        """uffd_wp_range() / change_protection(MM_CP_UFFD_WP[_RESOLVE]) over [a, b)."""
        pte, pmd = self._pte, self._pmd
        markers = v.use_markers()
        for blk in range(a // PMD_PAGES, (b - 1) // PMD_PAGES + 1):
            lo, hi = max(a, blk * PMD_PAGES), min(b, (blk + 1) * PMD_PAGES)
            kind = pmd[blk] & B_KIND
            if kind in (K_THP, K_HZP):
                if hi - lo == PMD_PAGES:
                    pmd[blk] = (pmd[blk] | B_WP) if protect else (pmd[blk] & (0xFF ^ B_WP))
                    continue
                self._split_pmd(blk)
            elif kind == K_NONE:
                if not (protect and markers):
                    continue
                pmd[blk] = K_TABLE
            seg = pte[lo:hi]
            if protect:
                exists = seg & P_EXISTS != 0
                upd = exists & (seg & P_GUARD == 0)
                seg[upd] |= P_WP
                if markers:
                    seg[~exists] = P_WP
            else:
                marker = (seg & P_WP != 0) & (seg & (P_PRESENT | P_SWAP | P_GUARD) == 0)
                seg[marker] = 0
                upd = seg & P_GUARD == 0
                seg[upd] &= ~np.uint16(P_WP)

    def prctl_thp_disable(self, disable: bool = True) -> None:
        """prctl(PR_SET_THP_DISABLE): no THP faults, no khugepaged, for this process
        and (inherited) its future children."""
        self._live()
        self.thp_disabled = bool(disable)

    # -- clear_refs ---------------------------------------------------------------------------

    def clear_refs(self, value: int = 4) -> None:
        """Write ``value`` to /proc/PID/clear_refs. 4 clears soft-dirty over the whole
        process (VM_SOFTDIRTY of every VMA, every PTE and PMD); 1-3 and 5 change
        nothing the model shows. Without CONFIG_MEM_SOFT_DIRTY, 4 does nothing."""
        self._live()
        if value not in (1, 2, 3, 4, 5):
            raise _err(errno.EINVAL, "clear_refs: value must be 1-5")
        if value != 4 or not self.config.soft_dirty:
            return
        for v in self._vmas:
            v.softdirty = False
        self._pte &= ~np.uint16(P_SD)
        self._pmd &= ~np.uint8(B_SD)

    # -- khugepaged, and fault-around's best effort --------------------------------------------

    def skip_prefaulted(self, addr: int) -> bool:
        """What the real kernel does when fault-around finds a page-cache folio
        locked at that moment (by migration or reclaim elsewhere): it leaves the
        page unmapped. Undoes the fault-around mapping of the page at ``addr`` made
        by the last read(); returns whether there was one."""
        i = self._index(addr)
        if i not in self.prefaulted:
            return False
        v = self._vma_at(i)
        assert v is not None and v.file is not None
        self._pte[i] = 0
        v.file.mapcount[v.fidx(i)] -= 1
        self.prefaulted.remove(i)
        return True

    def khugepaged_collapse(self, addr: int) -> bool:
        """What khugepaged may do at any time on the real kernel (the simulator never
        does it by itself): collapse the 2 MiB at ``addr`` into a THP when its rules
        allow. Returns whether it did."""
        self._live()
        blk = self._index(addr) // PMD_PAGES
        if not 0 <= blk < len(self._pmd) or self._pmd[blk] & B_KIND != K_TABLE:
            return False
        s0 = blk * PMD_PAGES
        v = self._vma_at(s0)
        if v is None or not self._thp_ok(v, blk) or not v.prot & PROT_WRITE:
            return False
        seg = self._pte[s0:s0 + PMD_PAGES]
        if (seg & (P_WP | P_GUARD | P_SWAP | P_FILE)).any():
            return False
        present = (seg & P_PRESENT != 0) & (seg & P_ZERO == 0)
        if not present.any():
            return False
        if v.uffd is not None and not present.all():
            return False
        if (seg & P_SHARED).any():
            return False
        self._pte[s0:s0 + PMD_PAGES] = seg & P_DATA
        self._folio[s0:s0 + PMD_PAGES] = self._new_folio()
        self._pmd[blk] = K_THP | B_SD
        return True

    # -- PAGEMAP_SCAN ---------------------------------------------------------------------------

    def pm_scan_once(self, start: int, end: int, flags: int = 0, inverted: int = 0,
                     mask: int = 0, anyof: int = 0, return_mask: int = ALL_CATEGORIES,
                     max_pages: int = 0, vec_len: int = 512, *, vec: int | None = None,
                     size: int = PM_SCAN_ARG_SIZE) -> tuple[Any, int]:
        """Exactly one PAGEMAP_SCAN ioctl, as the kernel answers it:
        ``(RegionArray, walk_end)`` (walk_end stale or not, KERNEL-SPEC §4).

        ``vec`` is the user address of the output array (default: a valid one; 0
        for NULL), ``size`` the argument's size: they exist to reach the kernel's
        validation errors. Errors raise OSError with the kernel's errno; an EPERM
        from PM_SCAN_CHECK_WPASYNC carries ``regions`` and ``walk_end``."""
        self._live()
        if not self.config.pagemap_scan:
            raise _err(errno.ENOTTY, "PAGEMAP_SCAN: this kernel has no PAGEMAP_SCAN")
        vals = (start, end, flags, inverted, mask, anyof, return_mask, max_pages, vec_len)
        if any(not isinstance(x, int) or x < 0 or x > U64 for x in vals):
            raise ValueError("PAGEMAP_SCAN arguments are unsigned 64-bit integers")
        if size != PM_SCAN_ARG_SIZE:
            raise _err(errno.EINVAL, "PAGEMAP_SCAN: size is not 96")
        if flags & ~(PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC):
            raise _err(errno.EINVAL, "PAGEMAP_SCAN: unknown flags")
        if (inverted | mask | anyof | return_mask) & ~ALL_CATEGORIES:
            raise _err(errno.EINVAL, "PAGEMAP_SCAN: unknown category bits")
        if start % PAGE_SIZE:
            raise _err(errno.EINVAL, "PAGEMAP_SCAN: start is not page-aligned")
        if not _access_ok(start, (end - start) & U64):
            raise _err(errno.EFAULT, "PAGEMAP_SCAN: the range is not user memory")
        vec_addr = 0x1000 if vec is None else vec
        if vec_addr == 0 and vec_len:
            raise _err(errno.EINVAL, "PAGEMAP_SCAN: vec is NULL but vec_len is not zero")
        if vec_addr and not _access_ok(vec_addr, min(vec_len * 24, U64)):
            raise _err(errno.EFAULT, "PAGEMAP_SCAN: vec is not user memory")
        end = -(-end // PAGE_SIZE) * PAGE_SIZE
        masks = Masks.from_kernel(inverted=inverted, mask=mask, anyof=anyof,
                                  return_mask=return_mask)
        return self._scan(start, end, flags, masks, max_pages, vec_len)

    def _walked(self, a: int, b: int, flags: int, masks: Masks
                ) -> tuple[list[tuple[Vma, int, int, int]], int | None]:
        """pagemap_scan_test_walk(): the VMA parts walked, with their VMA category,
        and where a CHECK_WPASYNC failure stops the walk."""
        out: list[tuple[Vma, int, int, int]] = []
        for v in self._vmas_in(max(a, 0), min(b, self.npages)):
            lo, hi = max(v.start, a), min(v.end, b)
            wp_allowed = v.wp_async()
            if not wp_allowed:
                if flags & PM_SCAN_CHECK_WPASYNC:
                    return out, lo
                if flags & PM_SCAN_WP_MATCHING:
                    continue
            cat = self._vma_base(v)
            req = masks.mask & WPALLOWED
            if (cat ^ masks.inverted) & req != req:
                continue
            out.append((v, lo, hi, cat))
        return out, None

    def _fast_path(self, masks: Masks) -> bool:
        """The 6.18.0 WRITTEN-only fast path that reports pte_none as WRITTEN."""
        return (self.config.written_rules == "6.18.0" and not masks.anyof
                and not masks.inverted and masks.mask == WRITTEN
                and masks.return_mask == WRITTEN)

    def _scan(self, start: int, end: int, flags: int, masks: Masks, max_pages: int,
              vec_len: int) -> tuple[Any, int]:
        RegionArray = impl.RegionArray
        if start >= end:
            return RegionArray(), end
        a = self._index(start)
        b = self._index(end) if end <= self.base + self.size else self.npages
        b = max(min(b, self.npages), 0)
        wp = bool(flags & PM_SCAN_WP_MATCHING)
        # walk_end writes by THPs reported in part (max_pages) before being split:
        # (walk position, value); the kernel leaves the last write in place
        thp_writes: list[tuple[int, int]] = []
        breaks: list[int] = []
        while True:
            walked, stop = self._walked(a, b if b > a else a, flags, masks)
            if vec_len == 0:
                if wp:
                    self._wp_all(walked, masks)
                if stop is not None:
                    raise self._eperm(RegionArray(), end)
                return RegionArray(), end
            hi = stop if stop is not None else (walked[-1][2] if walked else a)
            lo = walked[0][1] if walked else hi
            if hi <= lo:
                regions, walk_end, done, reported, cats = RegionArray(), end, True, None, None
            else:
                # categories are computed for as much of the range as the walk needs:
                # a walk that stops inside [lo, top) stops there on the whole range too
                top = min(hi, lo + max((hi - lo) // 8, 1 << 14))
                while True:
                    cats = self._walk_categories(walked, lo, top, masks)
                    regions, walk_end, done, restart = self._passes(
                        cats, lo, masks, max_pages, vec_len, breaks)
                    if top >= hi or not done:
                        break
                    top = hi
                hi = top
                if done:
                    writes = thp_writes + ([(restart, restart)] if restart is not None else [])
                    # nothing past hi can match; else the last stale write stays
                    walk_end = max(writes, key=lambda w: w[0])[1] if writes else end
                reported = None
            if wp and cats is not None and len(regions):
                reported = self._reported(regions, lo, hi - lo)
                part = self._partial_thp(reported, cats, lo, hi)
                if part is not None:
                    blk, x, r, chunk = part
                    if r < chunk:                # cut by max_pages: walk_end was written
                        thp_writes.append((self._addr(x) + 1, self._addr(x + r)))
                    starts = np.asarray(regions, dtype=np.uint64).reshape(-1, 3)[:, 0]
                    if np.any(starts == np.uint64(self._addr(x))):
                        # its own output slot is emptied, not merged into: the redone
                        # pages start a region there (had it merged into the previous
                        # region, that one is cut back and extended again)
                        breaks.append(x)
                    self._split_pmd(blk)         # redo as if there was no THP
                    continue
                self._wp_reported(walked, reported, cats, lo, hi)
            if stop is not None and done:
                raise self._eperm(regions, walk_end)
            return regions, walk_end

    def _walk_categories(self, walked: list, lo: int, hi: int, masks: Masks) -> np.ndarray:
        fast = self._fast_path(masks)
        parts = [(v, max(x, lo), min(y, hi)) for v, x, y, _ in walked if x < hi and y > lo]
        if len(parts) == 1 and parts[0][1] == lo and parts[0][2] == hi:
            return self._vma_categories(parts[0][0], lo, hi, fast=fast)
        cats = np.empty(hi - lo, dtype=np.uint64)
        at = lo
        for v, x, y in parts:
            cats[at - lo:x - lo] = HOLE
            cats[x - lo:y - lo] = self._vma_categories(v, x, y, fast=fast)
            at = y
        cats[at - lo:] = HOLE
        return cats

    def _eperm(self, regions: Any, walk_end: int) -> OSError:
        e = _err(errno.EPERM, "PAGEMAP_SCAN: PM_SCAN_CHECK_WPASYNC and the range has "
                 "memory that is not uffd-wp async registered")
        e.regions = regions               # type: ignore[attr-defined]
        e.walk_end = walk_end             # type: ignore[attr-defined]
        return e

    def _passes(self, cats: np.ndarray, lo: int, masks: Masks, max_pages: int,
                vec_len: int, breaks: list[int]) -> tuple[Any, int, bool, int | None]:
        """The walk, whose regions go out through a bounce buffer of 512. Returns
        (regions, walk_end as the kernel writes it, whether the walk completed, the
        last point where a full buffer made the walk restart).

        A pass ends when its buffer is full and a page needs a new region; the next
        pass starts there with an empty buffer. That changes no region (a new region
        began there anyway), so one scan gives the regions; the restart points are
        the starts of regions 513, 1025, ... The kernel leaves walk_end at the last
        of them when a later pass completes the range (KERNEL-SPEC §4).

        ``breaks``: pages where a region must start anew (a THP split and redone
        per PTE by WP_MATCHING leaves its output slot emptied, not merged)."""
        start = self._addr(lo)
        end = start + len(cats) * PAGE_SIZE
        cuts = [b for b in sorted(set(breaks)) if lo < b < lo + len(cats)]
        bounds = [lo, *cuts, lo + len(cats)]
        parts: list[Any] = []
        found = count = 0
        walk_end, done = end, True
        for x, y in itertools.pairwise(bounds):
            left_pages = max_pages - found if max_pages else 0
            if max_pages and left_pages == 0:
                left_regions = 0          # the next match stops the walk
            else:
                left_regions = vec_len - count
            res = impl.scan_pages(cats[x - lo:y - lo], self._addr(x), PAGE_SIZE, masks,
                                  left_pages, left_regions)
            parts.append(res.regions)
            found += res.regions.pages(PAGE_SIZE)
            count += len(res.regions)
            if res.walk_end < self._addr(y):
                walk_end, done = res.walk_end, False
                break
        regions = parts[0] if len(parts) == 1 else _concat(parts)
        restart = None
        if count > BOUNCE_REGIONS:
            restart = int(regions[(count - 1) // BOUNCE_REGIONS * BOUNCE_REGIONS][0])
        if done:
            return regions, restart if restart is not None else end, True, restart
        return regions, walk_end, False, restart

    def _reported(self, regions: Any, lo: int, n: int) -> np.ndarray:
        """Pages [lo, lo+n) covered by the (sorted, disjoint) regions."""
        r = np.asarray(regions, dtype=np.uint64).reshape(-1, 3)[:, :2]
        b = ((r - np.uint64(self.base)) >> np.uint64(PAGE_SHIFT)).astype(np.int64) - lo
        edges = np.concatenate(([0], b.ravel(), [n]))      # gap, region, gap, ..., gap
        runs = np.diff(edges)
        flags = np.zeros(len(runs), dtype=bool)
        flags[1::2] = True
        return np.repeat(flags, runs)

    def _partial_thp(self, reported: np.ndarray, cats: np.ndarray, lo: int, hi: int
                     ) -> tuple[int, int, int, int] | None:
        """The first PMD-mapped block WP_MATCHING would protect only in part:
        (block, first page walked, pages reported, pages walked)."""
        b0 = lo // PMD_PAGES
        kinds = self._pmd[b0:(hi - 1) // PMD_PAGES + 1] & B_KIND
        for k in np.flatnonzero(kinds >= K_THP).tolist():
            blk = b0 + k
            x, y = max(lo, blk * PMD_PAGES), min(hi, (blk + 1) * PMD_PAGES)
            r = int(reported[x - lo:y - lo].sum())
            if 0 < r < PMD_PAGES and int(cats[x - lo]) & WRITTEN:
                return blk, x, r, y - x
        return None

    def _wp_reported(self, walked: list, reported: np.ndarray, cats: np.ndarray, lo: int,
                     hi: int) -> None:
        """Protect the reported pages that were WRITTEN."""
        todo = reported & (cats & np.uint64(WRITTEN) != 0)
        if not todo.any():
            return
        pmd = self._pmd
        hit = np.unique((np.flatnonzero(todo) + lo) // PMD_PAGES)
        kind = pmd[hit] & B_KIND
        huge = hit[(kind == K_THP) | (kind == K_HZP)]
        pmd[huge] |= B_WP                        # whole ones (partial ones were split)
        none = hit[kind == K_NONE]
        pmd[none] = K_TABLE                      # uffd_wp_range() makes the table
        if len(huge):
            todo &= (self._blocks(lo, hi) & B_KIND) == K_TABLE
        seg = self._pte[lo:hi]
        seg[todo] |= P_WP

    def _wp_all(self, walked: list, masks: Masks) -> None:
        """WP_MATCHING with vec_len == 0: every entry of existing PTE tables in the
        walked VMAs; THPs and no-table holes through the filter."""
        pte, pmd = self._pte, self._pmd
        for _v, a, b, base in walked:
            hole_cat = base | (WRITTEN if self.config.written_rules == "6.18.y" else 0)
            for blk in range(a // PMD_PAGES, (b - 1) // PMD_PAGES + 1):
                lo, hi = max(a, blk * PMD_PAGES), min(b, (blk + 1) * PMD_PAGES)
                kind = pmd[blk] & B_KIND
                if kind in (K_THP, K_HZP):
                    c = int(self._pmd_lut[pmd[blk]]) | base
                    if not masks.matches(c) or not c & WRITTEN:
                        continue
                    if hi - lo == PMD_PAGES:
                        pmd[blk] |= B_WP
                        continue
                    self._split_pmd(blk)
                elif kind == K_NONE:
                    if not masks.matches(hole_cat):
                        continue
                    pmd[blk] = K_TABLE
                pte[lo:hi] |= P_WP

    def pm_scan(self, start: int, end: int, flags: int = 0, masks: Masks | None = None,
                max_pages: int = 0, max_regions: int | None = None) -> ScanResult:
        """PAGEMAP_SCAN over ``[start, end)`` until done, as ``impl.pm_scan`` does on
        the real kernel: resumes on walk_end, coalesces, repairs a stale walk_end."""
        m = coerce_masks(masks)
        RegionArray = impl.RegionArray
        if max_regions is not None and max_regions < 1:
            raise ValueError("max_regions must be at least 1 for a kernel scan")
        if m.matches_nothing or start >= end:
            return ScanResult(RegionArray(), end if start < end else start)
        inv, mask, anyof, ret = m.to_kernel()
        parts: list[Any] = []
        count = found = 0
        chunk = 512
        s = start
        while True:
            want = chunk if max_regions is None else min(chunk, max_regions - count)
            regions, walk_end = self.pm_scan_once(
                s, end, flags, inv, mask, anyof, ret,
                (max_pages - found) if max_pages else 0, want)
            if len(regions):
                if walk_end < regions[len(regions) - 1][1]:
                    walk_end = end                      # stale: the call completed
                found += regions.pages(PAGE_SIZE)
                count += len(regions)
                parts.append(regions)
            if walk_end >= end or (max_pages and found >= max_pages):
                break
            if max_regions is not None and count >= max_regions:
                break
            if walk_end <= s:
                break
            s = walk_end
            chunk = min(chunk * 4, 1 << 20)
        out = impl.coalesce(*parts) if len(parts) > 1 else (parts[0] if parts else RegionArray())
        return ScanResult(out, walk_end)

    # -- /proc/PID/pagemap, /proc/PID/maps -----------------------------------------------------

    def pagemap(self, addr: int, npages: int, *, show_pfn: bool = False) -> np.ndarray:
        """The /proc/PID/pagemap entries of ``npages`` pages from ``addr`` (uint64).
        ``show_pfn``: as read by a CAP_SYS_ADMIN opener (PFNs are made up; marker
        swap entries are the kernel's)."""
        self._live()
        a = self._index(addr)
        out = np.zeros(npages, dtype=np.uint64)
        sd = self.config.soft_dirty
        for v in self._vmas_in(a, a + npages):
            lo, hi = max(v.start, a), min(v.end, a + npages)
            p = self._pte[lo:hi].astype(np.uint64)
            pm = self._blocks(lo, hi)
            kind = pm & B_KIND
            e = np.zeros(hi - lo, dtype=np.uint64)
            present = (p & P_PRESENT) != 0
            nonpres = ~present & ((p & P_EXISTS) != 0)
            e[present] |= np.uint64(PM_PRESENT)
            e[nonpres] |= np.uint64(PM_SWAP)
            e[(p & P_WP) != 0] |= np.uint64(PM_UFFD_WP)
            e[nonpres & ((p & P_GUARD) != 0)] |= np.uint64(PM_GUARD_REGION)
            e[present & ((p & P_FILE) != 0)] |= np.uint64(PM_FILE)
            if sd:
                e[((p & P_SD) != 0) & ((p & P_EXISTS) != 0)] |= np.uint64(PM_SOFT_DIRTY)
            excl = present & ((p & (P_ZERO | P_SHARED | P_FILE)) == 0)
            if v.file is not None:
                f0 = v.fidx(lo)
                mc = np.zeros(hi - lo, dtype=np.int32)
                k = max(min(hi - lo, v.file.npages - f0), 0)
                mc[:k] = v.file.mapcount[f0:f0 + k]
                excl |= present & ((p & P_FILE) != 0) & (mc == 1)
            e[excl] |= np.uint64(PM_MMAP_EXCLUSIVE)
            if show_pfn:
                idx = np.arange(lo, hi, dtype=np.uint64)
                e[present] |= (np.uint64(FAKE_PFN_BASE) + idx[present])
                z = present & ((p & P_ZERO) != 0)
                e[z] = (e[z] & ~np.uint64(PM_PFN_MASK)) | np.uint64(ZERO_PFN)
                frame_g = MARKER_SWAP_TYPE | (MARKER_GUARD << 5)
                frame_w = MARKER_SWAP_TYPE | (MARKER_UFFD_WP << 5)
                g = nonpres & ((p & P_GUARD) != 0)
                w = nonpres & ~g & ((p & P_WP) != 0)
                e[g] |= np.uint64(frame_g)
                e[w] |= np.uint64(frame_w)
            tab = kind == K_TABLE
            e[~tab] = 0
            for k2 in (K_THP, K_HZP):
                m = kind == k2
                if not m.any():
                    continue
                bb = pm[m]
                val = np.full(int(m.sum()), PM_PRESENT, dtype=np.uint64)
                val[(bb & B_WP) != 0] |= np.uint64(PM_UFFD_WP)
                if sd:
                    val[(bb & B_SD) != 0] |= np.uint64(PM_SOFT_DIRTY)
                if k2 == K_HZP:
                    val |= np.uint64(PM_FILE)
                else:
                    val[(bb & B_SHARED) == 0] |= np.uint64(PM_MMAP_EXCLUSIVE)
                if show_pfn:
                    sub = np.flatnonzero(m).astype(np.uint64) + np.uint64(lo)
                    base_pfn = HUGE_ZERO_PFN if k2 == K_HZP else FAKE_PFN_BASE
                    val |= np.uint64(base_pfn) + (sub % np.uint64(PMD_PAGES)
                                                  if k2 == K_HZP else sub)
                e[m] = val
            if sd and v.softdirty:
                e |= np.uint64(PM_SOFT_DIRTY)
            out[lo - a:hi - a] = e
        return out

    def maps(self) -> list[VmaInfo]:
        """The VMAs, as /proc/PID/maps lists them (with the model's extra facts)."""
        out = []
        for v in self._vmas:
            perms = "".join((("r" if v.prot & PROT_READ else "-"),
                             ("w" if v.prot & PROT_WRITE else "-"),
                             ("x" if v.prot & PROT_EXEC else "-"),
                             ("s" if v.shared else "p")))
            offset = v.pgoff * PAGE_SIZE if v.file is not None else 0
            thp = {THP_DEFAULT: "", THP_HUGE: "hg", THP_NOHUGE: "nh"}[v.thp]
            out.append(VmaInfo(self._addr(v.start), self._addr(v.end), perms, offset, v.kind,
                               thp, v.uffd is not None, v.softdirty, bool(v.anon_vma)))
        return out

    # -- pagescan --------------------------------------------------------------------------------

    def track(self, addr: int, length: int, **kw: Any) -> Any:
        """A :class:`pagescan.Tracker` of ``[addr, addr+length)`` of this simulated
        process (backend "simulator"); keyword arguments as for pagescan.track()."""
        from .tracker import track
        return track((addr, length), backend="simulator", pid=self.pid, **kw)
