"""Per process: the soft-dirty state of every live range of it (one :class:`Target`
per process, shared by its trackers), read through the process's
:class:`~pagescan.kernel.Kernel`: maps, pagemap entries, PAGEMAP_SCAN, clear_refs."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from ..._impl import impl
from ..._types import ALL_CATEGORIES, HOLE, Category, Masks, ScanResult
from ...constants import PAGE_SIZE, USER_ADDRESS_LIMIT as USER_TOP
from ...errors import PagescanError
from ...kernel import Kernel
from ...procfs import Mapping, proc_error
from .masks import SD, W, WSD, kernel_masks, user_categories, with_required
from .runs import Runs, runs_clip, runs_of, runs_subtract, runs_union, segments, split
from .stitching import stitch

__all__ = ["CHUNK_PAGES", "PATH_READ", "PATH_SCAN", "Target", "acquire", "release"]

#: pagemap entries per preadv (8 bytes each: 512 KiB)
CHUNK_PAGES = 1 << 16
PATH_SCAN = "pagemap_scan"
PATH_READ = "pagemap_read"

# Byte tables for the low byte of each u64 category (WRITTEN is bit 1, SOFT_DIRTY 7):
# WRITTEN := SOFT_DIRTY, and WRITTEN |= 1 (a pending page), at C speed, no numpy.
_LOW = 0 if sys.byteorder == "little" else 7
_OR_W = bytes(v | W for v in range(256))

# ------------------------------------------------------------------------ per process


def _whole(start: int, end: int) -> bool:
    """Whether ``[start, end)`` is the whole user address space."""
    return start == 0 and end >= USER_TOP


class _Range:
    """One tracked range and its pending written pages (folded before a clear)."""

    __slots__ = ("end", "pending", "start", "whole")

    def __init__(self, start: int, end: int) -> None:
        self.start, self.end = start, end
        #: a whole-process tracker: every mapping of the process, read-only and
        #: PROT_NONE ones too (a page written before an mprotect(PROT_READ) keeps its
        #: bit, which clear_refs would erase unseen if the span left it out)
        self.whole = _whole(start, end)
        self.pending: Runs = []

    def span(self, vmas: Sequence[Mapping]) -> Runs:
        return segments(vmas, self.start, self.end)


class Target:
    """One process: its kernel object (whose /proc files are opened once, so a
    reused pid is never mistaken for it) and every live soft-dirty range of it in
    this process."""

    def __init__(self, kernel: Kernel, path: str,
                 kernel_categories: int = ALL_CATEGORIES) -> None:
        self.kernel = kernel
        self.pid = kernel.pid
        self.is_self = kernel.is_self
        self.path = path
        #: the categories PAGEMAP_SCAN knows here (no GUARD before 6.15)
        self.kernel_categories = kernel_categories
        self.lock = threading.RLock()
        self.ranges: list[_Range] = []
        self.users = 0
        self.closed = False
        self._raw = bytearray(8 * CHUNK_PAGES)
        self._cats = bytearray(8 * CHUNK_PAGES)

    # -- kernel I/O ----------------------------------------------------------------

    def vmas(self) -> list[Mapping]:
        return self.kernel.maps()

    def vmas_in(self, start: int, end: int) -> list[Mapping]:
        """The mappings overlapping ``[start, end)``: for a bounded range the kernel's
        answer for it alone (6.11+: PROCMAP_QUERY, a few ioctls instead of generating
        and parsing the whole maps text, which cost 0.5 ms a scan); for the whole
        address space, all of maps."""
        if _whole(start, end):
            return self.kernel.maps()
        return self.kernel.mappings_in(start, end)

    def read_pagemap(self, start: int, out: memoryview) -> None:
        """Fill ``out`` (bytes) with the entries from the page at ``start`` on."""
        self.kernel.pagemap_read(start, out)

    def pm_scan(self, start: int, end: int, masks: Masks, max_pages: int,
                max_regions: int | None) -> ScanResult:
        try:
            return self.kernel.pagemap_scan(start, end, 0, masks, max_pages, max_regions)
        except OSError as err:
            if isinstance(err, PagescanError):
                raise
            if not self.is_self or not self.kernel.real:
                self.vmas()                # NoSuchProcess when it has exited
            raise proc_error(err, self.pid, "PAGEMAP_SCAN") from err

    def clear_refs(self) -> None:
        self.kernel.clear_refs(4)

    def close(self) -> None:
        self.closed = True
        self.kernel.close()

    # -- categories ------------------------------------------------------------------

    def dense(self, start: int, end: int, pending: Runs) -> memoryview:
        """Categories (WRITTEN = soft-dirty, or pending) of the pages of ``[start, end)``
        (at most CHUNK_PAGES), as a u64 memoryview into a reused buffer."""
        n = (end - start) // PAGE_SIZE
        cats = memoryview(self._cats)[:8 * n].cast("Q")
        if self.path == PATH_SCAN:
            # every category the kernel reports, unfiltered; pages it does not report
            # (a VM_PFNMAP part) are holes
            self._fill(cats, 0, n, HOLE)
            every = Masks(return_mask=self.kernel_categories)
            for s, e, c in self.pm_scan(start, end, every, 0, None).regions:
                self._fill(cats, (s - start) // PAGE_SIZE, (e - start) // PAGE_SIZE,
                           user_categories(c))
        else:
            raw = memoryview(self._raw)[:8 * n]
            self.read_pagemap(start, raw)
            # WRITTEN = soft-dirty, set in the same pass (no per-page translate after)
            impl.pagemap_to_categories(raw.cast("Q"), out=cats, soft_dirty_written=True)
        b = self._cats
        for s, e in runs_clip(pending, start, end):
            i, j = (s - start) // PAGE_SIZE, (e - start) // PAGE_SIZE
            b[_LOW + 8 * i:8 * j:8] = b[_LOW + 8 * i:8 * j:8].translate(_OR_W)
        return cats

    @staticmethod
    def _fill(cats: memoryview, i: int, j: int, value: int) -> None:
        if j > i:
            cats[i:j] = memoryview(value.to_bytes(8, sys.byteorder) * (j - i)).cast("Q")

    def soft_dirty(self, runs: Runs) -> Runs:
        """The runs of pages inside ``runs`` (mapped parts) whose soft-dirty bit is set."""
        out: Runs = []
        if self.path == PATH_SCAN:
            k = Masks.from_kernel(mask=SD, return_mask=0)
            for s, e in runs:
                out.extend(runs_of(self.pm_scan(s, e, k, 0, None).regions))
        else:
            want = Masks(required=Category.SOFT_DIRTY, return_mask=0)
            for s, e in split(runs, CHUNK_PAGES):
                n = (e - s) // PAGE_SIZE
                raw = memoryview(self._raw)[:8 * n]
                self.read_pagemap(s, raw)
                cats = impl.pagemap_to_categories(
                    raw.cast("Q"), out=memoryview(self._cats)[:8 * n].cast("Q"))
                out.extend(runs_of(impl.scan_pages(cats, start=s, page_size=PAGE_SIZE,
                                                   masks=want).regions))
        return runs_union(out, ())

    # -- scan, fold, clear -----------------------------------------------------------

    def scan(self, rng: _Range, start: int, end: int, masks: Masks, max_pages: int,
             max_regions: int | None, want_written: bool) -> tuple[ScanResult, Runs]:
        if masks.matches_nothing:
            return ScanResult(impl.RegionArray(), end), []
        segs = segments(self.vmas_in(start, end), start, end)
        pending = runs_clip(rng.pending, start, end)
        if self.path == PATH_SCAN:
            pieces = list(self._scan_pieces(segs, pending))
        else:
            pieces = [(s, e, True) for s, e in split(segs, CHUNK_PAGES)]
        kinds = {(s, e): dense for s, e, dense in pieces}
        k_masks = kernel_masks(masks, with_soft_dirty=want_written,
                               kernel_categories=self.kernel_categories)
        written_masks = with_required(masks, W) if want_written else None

        def scan_piece(s: int, e: int, mp: int, mr: int | None
                       ) -> tuple[Any, int, Callable[[int], Runs]]:
            if kinds[(s, e)]:
                cats = self.dense(s, e, pending)
                res = impl.scan_pages(cats, start=s, page_size=PAGE_SIZE, masks=masks,
                                      max_pages=mp, max_regions=mr)

                def written(limit: int) -> Runs:
                    n = (min(limit, e) - s) // PAGE_SIZE
                    if n <= 0 or written_masks is None:
                        return []
                    return runs_of(impl.scan_pages(cats[:n], start=s, page_size=PAGE_SIZE,
                                                   masks=written_masks).regions)
                return res.regions, res.walk_end, written
            return self._kernel_piece(s, e, masks, k_masks, mp, mr, want_written)

        return stitch([(s, e) for s, e, _ in pieces], scan_piece, end, max_pages=max_pages,
                      max_regions=max_regions, want_written=want_written)

    @staticmethod
    def _scan_pieces(segs: Runs, pending: Runs) -> Iterator[tuple[int, int, bool]]:
        """Segments cut at pending runs: kernel-filtered pieces, and dense pieces
        (at most CHUNK_PAGES) where pending pages must be ORed in."""
        for s, e in segs:
            for ps, pe in runs_clip(pending, s, e):
                if s < ps:
                    yield s, ps, False
                for a, b in split([(ps, pe)], CHUNK_PAGES):
                    yield a, b, True
                s = pe
            if s < e:
                yield s, e, False

    def _kernel_piece(self, s: int, e: int, masks: Masks, k_masks: Masks | None, mp: int,
                      mr: int | None, want_written: bool
                      ) -> tuple[Any, int, Callable[[int], Runs]]:
        if k_masks is None:
            return impl.RegionArray(), e, lambda limit: []
        ret = masks.return_mask
        # the kernel reports SOFT_DIRTY only for the caller (finer regions): merge after
        extra = bool(k_masks.return_mask & SD) and not ret & WSD
        res = self.pm_scan(s, e, k_masks, mp, None if extra else mr)
        raw = res.regions
        regs = impl.coalesce([(a, b, user_categories(c, ret)) for a, b, c in raw])

        def written(limit: int) -> Runs:
            return runs_of((a, min(b, limit)) for a, b, c in raw if c & SD and a < limit)
        return regs, res.walk_end, written

    def fold_and_clear(self, rng: _Range | None, reset: Runs) -> None:
        """Fold the soft-dirty state of every live range (for ``rng``: outside
        ``reset``) into its pending runs, drop ``reset`` from ``rng``'s pending runs,
        and clear the soft-dirty bits of the whole process."""
        if self.ranges:
            every = self.vmas() if any(q.whole for q in self.ranges) else None
            found = []
            for q in self.ranges:
                keep = q.span(every if every is not None else self.vmas_in(q.start, q.end))
                if q is rng:
                    keep = runs_subtract(keep, reset)
                found.append(self.soft_dirty(keep) if keep else [])
            for q, dirty in zip(self.ranges, found, strict=True):
                if dirty:
                    q.pending = runs_union(q.pending, dirty)
        if rng is not None:
            rng.pending = runs_subtract(rng.pending, reset)
        self.clear_refs()


_targets: dict[int, Target] = {}
_targets_lock = threading.Lock()


def acquire(kernel: Kernel, path: str, kernel_categories: int) -> Target:
    """The Target of the kernel's process (made with ``kernel`` when there is none;
    else ``kernel`` is closed and the live one shared), one more user."""
    with _targets_lock:
        t = _targets.get(kernel.pid)
        if t is None or t.closed:
            t = _targets[kernel.pid] = Target(kernel, path, kernel_categories)
        elif t.kernel is not kernel:
            kernel.close()
        t.users += 1
        return t


def release(t: Target) -> None:
    with _targets_lock:
        t.users -= 1
        if t.users <= 0 and not t.closed:
            if _targets.get(t.pid) is t:
                del _targets[t.pid]
            t.close()


def live(pid: int) -> Target | None:
    """The live Target of ``pid``, if any."""
    with _targets_lock:
        t = _targets.get(pid)
    return t if t is not None and not t.closed else None


def _forget_after_fork() -> None:
    # the child has its own address space and no live trackers: start over, with new
    # locks (another thread may have held one at fork time)
    global _targets_lock
    _targets_lock = threading.Lock()
    for t in list(_targets.values()):
        if t.kernel.real:
            try:
                t.close()
            except OSError:
                pass
    _targets.clear()


os.register_at_fork(after_in_child=_forget_after_fork)
