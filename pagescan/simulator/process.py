"""A simulated process (:class:`SimProcess`): the layers put together, plus fork,
exit, the pid registry and the current process."""

from __future__ import annotations

import itertools
import weakref
from typing import Any

import numpy as np

from .constants import (B_KIND, B_SHARED, B_WP, K_HZP, K_NONE, K_TABLE, K_THP, PAGE_SIZE, PID_BASE,
                        PMD_PAGES, PMD_SIZE, P_DATA, P_FILE, P_GUARD, P_PRESENT, P_SHARED, P_SWAP,
                        P_WP, P_ZERO, USER_TOP)

import contextvars

from .config import KernelConfig, _luts
from .pagemap import Pagemap
from .pagetable import ANON_VMA_IDS
from .uffd import SimUffd
from .vma import Vma

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


class SimProcess(Pagemap):
    """A simulated process: the VMAs and page tables of an address-space window.

    ``base`` and ``size`` (multiples of 2 MiB) bound where mappings may live; the
    page state costs 6 bytes per page of the window. ``config`` is the kernel being
    simulated.
    """

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
        #: what backends' probes found about this simulated kernel (SimKernel.probe_cache)
        self.probe_cache: dict[str, Any] = {}
        _registry[self.pid] = self

    def __repr__(self) -> str:
        state = "exited" if self.exited else f"{len(self._vmas)} VMAs"
        return (f"<SimProcess pid={self.pid} [0x{self.base:x}, 0x{self.base + self.size:x}) "
                f"{state}>")

    def __enter__(self) -> SimProcess:
        self._tokens.append(_current.set(self))
        return self

    def __exit__(self, *exc: object) -> None:
        _current.reset(self._tokens.pop())

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
        child.probe_cache = {}
        _registry[child.pid] = child
        self._children.add(child)
        for v in self._vmas:
            c = v.copy()
            c.uffd = None
            if v.anon_vma:
                c.anon_vma = next(ANON_VMA_IDS)
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
        trap = self.__dict__.get("_write_trap")
        if trap is not None:
            trap.at_fork(child)                 # the mprotect backend's atfork hook
        return child

    def kernel_write(self, addr: int, length: int) -> int:
        """The kernel stores into ``[addr, addr+length)`` for the program (``read()``
        into a buffer): page by page, without a signal; a page the store would
        fault on (PROT_READ ...) stops it. Returns the bytes stored; OSError(EFAULT)
        when the first page fails."""
        from .sigsegv import kernel_write
        self._live()
        return kernel_write(self, addr, length)

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

    def track(self, addr: int, length: int, **kw: Any) -> Any:
        """A :class:`pagescan.Tracker` of ``[addr, addr+length)`` of this simulated
        process (backend "simulator"); keyword arguments as for pagescan.track()."""
        from ..tracker import track
        return track((addr, length), backend="simulator", pid=self.pid, **kw)
