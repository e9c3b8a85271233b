"""/proc/PID/pagemap, PAGEMAP_SCAN (validation, filter, merge, limits, the stale
walk_end, WP_MATCHING, CHECK_WPASYNC) and clear_refs of a simulated process."""

from __future__ import annotations

import errno
import itertools
from typing import Any

import numpy as np

from .._impl import impl
from .._types import ALL_CATEGORIES, HOLE, Masks, ScanResult, coerce_masks
from .constants import (BOUNCE_REGIONS, B_KIND, B_SD, B_SHARED, B_WP, FAKE_PFN_BASE, HUGE_ZERO_PFN,
                        K_HZP, K_NONE, K_TABLE, K_THP, MARKER_GUARD, MARKER_SWAP_TYPE,
                        MARKER_UFFD_WP, PAGE_SHIFT, PAGE_SIZE, PMD_PAGES, PM_FILE, PM_GUARD_REGION,
                        PM_MMAP_EXCLUSIVE, PM_PFN_MASK, PM_PRESENT, PM_SCAN_ARG_SIZE,
                        PM_SCAN_CHECK_WPASYNC, PM_SCAN_WP_MATCHING, PM_SOFT_DIRTY, PM_SWAP,
                        PM_UFFD_WP, P_EXISTS, P_FILE, P_GUARD, P_PRESENT, P_SD, P_SHARED, P_WP,
                        P_ZERO, U64, USER_TOP, WPALLOWED, WRITTEN, ZERO_PFN)

from .pagetable import _err
from .uffd import UffdMixin
from .vma import Vma


def _concat(parts: list[Any]) -> Any:
    """Region arrays one after the other, nothing merged."""
    return impl.RegionArray([tuple(r) for p in parts for r in p])


def _access_ok(addr: int, size: int) -> bool:
    """x86-64 access_ok(): the range lies below TASK_SIZE_MAX and does not wrap."""
    size &= U64
    total = addr + size
    return total <= U64 and total <= USER_TOP


class Pagemap(UffdMixin):
    """What /proc/PID/pagemap and its PAGEMAP_SCAN ioctl answer."""

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

    def pm_scan_once(self, start: int, end: int, flags: int = 0, inverted: int = 0,
                     mask: int = 0, anyof: int = 0, return_mask: int = ALL_CATEGORIES,
                     max_pages: int = 0, vec_len: int = 512, *, vec: int | None = None,
                     size: int = PM_SCAN_ARG_SIZE) -> tuple[Any, int]:
        """Exactly one PAGEMAP_SCAN ioctl, as the kernel answers it:
        ``(RegionArray, walk_end)`` (walk_end stale or not: docs/kernel.md, 'walk_end').

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
        of them when a later pass completes the range (docs/kernel.md, 'walk_end').

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
