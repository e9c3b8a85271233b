"""Faults: what a read or a write of the simulated program does to the page
tables (zero page, fault-around, COW, THP and the huge zero page, uffd-wp async
resolution), and khugepaged."""

from __future__ import annotations

from collections.abc import Callable


import numpy as np

from .constants import (ANON, B_KIND, B_SD, B_SHARED, B_WP, K_HZP, K_NONE, K_TABLE, K_THP,
                        PAGE_SIZE, PMD_PAGES, PROT_WRITE, P_DATA, P_FILE, P_GUARD, P_PRESENT, P_SD,
                        P_SHARED, P_SWAP, P_WP, P_ZERO, THP_HUGE, THP_NOHUGE)
from .errors import BusError, SegmentationFault, SimFault, UffdWouldBlock

from .addrspace import AddressSpace
from .vma import Vma


class Faults(AddressSpace):
    """Accesses of the simulated program."""

    #: the program's SIGSEGV handler, called with the address of a store that
    #: faulted; True: it returned (the store is retried), False: the process gets
    #: the SegmentationFault. None: the default action. (simulator/sigsegv.py)
    sigsegv: Callable[[int], bool] | None = None

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

    def _sigbus(self, i: int, write: bool) -> None:
        """What the kernel does before it answers SIGBUS for page i, past the end
        of the mapped file: do_fault() takes the same path as for a page inside
        the file, and only __do_fault() finds no page. A write to a private
        mapping is do_cow_fault(), which prepares the anon_vma first (so fork
        then copies the VMA's tables, and its merging changes); a read is
        do_read_fault(), which maps the cached pages around first."""
        v = self._vma_at(i)
        if v is None or v.file is None:
            return
        if write:
            if not v.shared:
                self._anon_prepare(v)
            return
        blk = i // PMD_PAGES
        kind = int(self._pmd[blk]) & B_KIND
        if kind not in (K_NONE, K_TABLE) or self._pte[i] or v.uffd is not None \
                or self.config.fault_around_pages <= 1:
            return
        self._pmd[blk] = K_TABLE
        self._fault_around(v, i)
        if kind == K_NONE and not self.prefaulted:
            self._pmd[blk] = K_NONE          # filemap_map_pmd() installs a table only
            #                                  when it maps a page

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
        if i < hi:                           # (past the end of the file: beyond hi)
            m[i - lo] = False                # the faulting page itself is not "around"
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
        handled = -1
        while i < b:
            try:
                v = self._check(i, write)
            except BusError:
                self._sigbus(i, write)
                raise
            except SegmentationFault:
                # SIGSEGV: a handler the program installed (the mprotect backend's,
                # simulator/sigsegv.py) may fix the cause; the store is then retried
                if not write or self.sigsegv is None or handled == i \
                        or not self.sigsegv(self._addr(i)):
                    raise
                handled = i
                continue
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

    def prctl_thp_disable(self, disable: bool = True) -> None:
        """prctl(PR_SET_THP_DISABLE): no THP faults, no khugepaged, for this process
        and (inherited) its future children."""
        self._live()
        self.thp_disabled = bool(disable)

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
