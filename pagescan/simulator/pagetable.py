"""The page tables of a simulated process: per-page PTE state, per-2 MiB PMD
state, large folios, VMA lookup, zapping, and the PAGEMAP_SCAN categories of
every page (the lowest layer of :class:`~pagescan.simulator.SimProcess`)."""

from __future__ import annotations

import bisect
import errno
import itertools
import os
import weakref
from typing import TYPE_CHECKING, Any

import numpy as np

from .._types import HOLE
from .constants import (B_KIND, B_SD, B_SHARED, B_WP, K_HZP, K_NONE, K_TABLE, K_THP, PAGE_SHIFT,
                        PAGE_SIZE, PMD_PAGES, P_DATA, P_FILE, P_GUARD, P_PRESENT, P_SD, P_SHARED,
                        P_WP, P_ZERO, SOFT_DIRTY, USER_TOP, WPALLOWED, WRITTEN)

from .config import KernelConfig
from .vma import Vma

if TYPE_CHECKING:
    import contextvars

    from .process import SimProcess
    from .uffd import SimUffd

#: anon_vma and large-folio identities (unique over every simulated process)
ANON_VMA_IDS = itertools.count(1)
FOLIO_IDS = itertools.count(1)


def _err(code: int, what: str) -> OSError:
    return OSError(code, f"{what}: {os.strerror(code)}")


class PageTables:
    """The state of a simulated process and the page-table operations on it."""

    config: KernelConfig
    base: int
    size: int
    npages: int
    pid: int
    exited: bool
    thp_disabled: bool
    prefaulted: list[int]
    probe_cache: dict[str, Any]
    _pte: np.ndarray
    _folio: np.ndarray
    _pmd: np.ndarray
    _vmas: list[Vma]
    _starts: list[int]
    _uffds: weakref.WeakSet[SimUffd]
    _lut: np.ndarray
    _lut_fast: np.ndarray
    _pmd_lut: np.ndarray
    _parent: SimProcess | None
    _children: weakref.WeakSet[SimProcess]
    _tokens: list[contextvars.Token[SimProcess | None]]

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
        return next(FOLIO_IDS) & 0xFFFFFFFF or next(FOLIO_IDS)

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
