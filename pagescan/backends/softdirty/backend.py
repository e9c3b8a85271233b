"""The soft-dirty backend (see the package docs for how it works)."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import warnings
from collections.abc import Iterator
from typing import ClassVar

from ..._types import ALL_CATEGORIES, Category, Masks, ScanResult
from ...constants import MADV_HUGEPAGE, MADV_NOHUGEPAGE, PAGE_SIZE
from ...errors import HugePageWarning, KernelError, PagescanError, RangeError
from ...kernel import Kernel
from ..base import Backend, Capabilities, Probe
from .freeze import frozen
from .masks import W
from .probe import probe as _probe
from .runs import Runs, runs_union, segments
from .target import PATH_READ, PATH_SCAN, Target, _Range, acquire, release

__all__ = ["HUGE_SIZE", "SoftDirtyBackend"]

#: a PMD-mapped transparent huge page (x86-64, arm64 with 4K pages)
HUGE_SIZE = 512 * PAGE_SIZE

class SoftDirtyBackend(Backend):
    """Soft-dirty tracking of this process or another one (see the module docs).

    ``freeze=True`` (another process only) stops the target's threads during each
    reset and collect so that no write can fall between reading and clearing.
    """

    name: ClassVar[str] = "softdirty"
    priority: ClassVar[int] = 50
    capabilities: ClassVar[Capabilities] = Capabilities(
        atomic_reset=False,
        range_reset=False,
        other_processes=True,
        kernel_filtering=False,
        kernel_writes_seen=True,
        categories=int(Category.FILE | Category.PRESENT | Category.SWAPPED
                       | Category.SOFT_DIRTY | Category.GUARD),
        notes=(
            "a reset clears soft-dirty for the whole process (clear_refs): the state of "
            "the process's other tracked ranges is read and kept as pending first",
            "read and clear are two steps: a write between the last pagemap read and the "
            "clear_refs write can be lost (another process: freeze=True closes the window)",
            "new mappings, and mappings merged with new ones (mmap, mprotect), read as "
            "all written",
            "MAP_SHARED mappings: writes through other mappings of the object (another "
            "process, a second mmap) and write()/pwrite() to the file are not seen "
            "(SharedMappingWarning at track())",
            "own memory: transparent huge pages are split when armed (exact pages); "
            "another process's stay 2 MiB units (HugePageWarning, stats()['granularity'])",
            "with PAGEMAP_SCAN (Linux 6.7+) the masks are applied in the kernel",
        ),
    )

    @classmethod
    def probe(cls, kernel: Kernel | None = None) -> Probe:
        """Writes a page, clears soft-dirty, writes again, and reads bit 55. Run once
        per kernel (the answer cannot change; kept in ``kernel.probe_cache``); the
        clear folds live trackers first."""
        return _probe(kernel)

    def __init__(self, *, pid: int | None = None, thp: bool = False,
                 freeze: bool = False, kernel: Kernel | None = None) -> None:
        self.thp = thp
        self.freeze = freeze
        self._ranges: list[_Range] = []
        #: runs found mapped by THPs at arming that stay huge (see stats())
        self._coarse: Runs = []
        self._target: Target | None = None
        if freeze and (pid is None or pid == os.getpid()) and (kernel is None or kernel.is_self):
            raise ValueError("freeze=True stops another process while its soft-dirty bits "
                             "are read and cleared; it cannot stop the calling process")
        k = self.make_kernel(pid, kernel)
        try:
            p = _probe(k)             # (the Tracker refuses a backend whose probe fails)
        except BaseException:
            k.close()
            raise
        self._target = acquire(k, str(p.details.get("path", PATH_READ)),
                               int(p.details.get("kernel_categories",  # type: ignore[call-overload]
                                                 ALL_CATEGORIES)))
        self.kernel = self._target.kernel
        self.pid = self.kernel.pid
        self.path = self._target.path
        if self.path == PATH_SCAN:
            self.capabilities = dataclasses.replace(  # type: ignore[misc]
                SoftDirtyBackend.capabilities, kernel_filtering=True,
                categories=self._target.kernel_categories & ~W)

    # -- helpers -------------------------------------------------------------------

    def _live(self) -> Target:
        if self._target is None or self._target.closed:
            raise KernelError(errno.EBADF, "the soft-dirty backend is closed")
        return self._target

    def _range(self, start: int, end: int) -> _Range:
        for r in self._ranges:
            if r.start <= start and end <= r.end:
                return r
        raise RangeError(f"[0x{start:x}, 0x{end:x}) is not registered with this backend")

    @contextlib.contextmanager
    def _stopped(self, t: Target) -> Iterator[None]:
        if self.freeze and not t.is_self:
            with frozen(t.pid):
                yield
        else:
            yield

    # -- registration ----------------------------------------------------------------

    def register(self, start: int, end: int) -> None:
        t = self._live()
        rng = _Range(start, end)
        with t.lock:
            if not rng.whole:
                segs = segments(t.vmas_in(start, end), start, end)
                if segs != [(start, end)]:
                    raise RangeError(f"[0x{start:x}, 0x{end:x}) is not entirely mapped in "
                                     f"process {t.pid}")
            t.ranges.append(rng)
            self._ranges.append(rng)
            try:
                # the clear first: a new VMA next to a tracked one (VM_SOFTDIRTY until
                # a clear) that MADV_NOHUGEPAGE merges with it would make the merged
                # VMA, and so the neighbour's pages, read as all written
                self.reset(start, end)
                if t.is_self and not self.thp and not rng.whole:
                    self._no_huge(start, end)
                    # arm again after MADV_NOHUGEPAGE: it changes the range's VMA
                    # flags, and a mapping made next to the range between the clear
                    # and the madvise (Python's allocator maps 1 MiB arenas at any
                    # time) merged into it with VM_SOFTDIRTY would read as all
                    # written; a split PMD's PTEs may all come out soft-dirty too
                    # (6.12 x86: pte_mkdirty of a dirty THP sets the bit)
                    self.reset(start, end)
            except BaseException:
                t.ranges.remove(rng)
                self._ranges.remove(rng)
                raise
        self._check_huge(start, end, warn=not self.thp)

    def _madvise(self, start: int, length: int, advice: int) -> bool:
        """False where the kernel has no THP (EINVAL): nothing to do."""
        try:
            self.kernel.madvise(start, length, advice)
        except OSError as err:
            if isinstance(err, PagescanError):
                raise
            if err.errno == errno.EINVAL:
                return False
            raise KernelError(err.errno, f"madvise({advice}): {err.strerror}") from err
        return True

    def _no_huge(self, start: int, end: int) -> bool:
        """No THP in ``[start, end)`` (own memory): MADV_NOHUGEPAGE for the future,
        and every PMD-mapped THP there split into page table entries now. Splitting
        a VMA splits the PMDs it cuts (transhuge.rst: the huge page stays a folio,
        mapped by 512 PTEs that inherit the PMD's soft-dirty bit), so for each 2 MiB
        block with a THP one page of it is given MADV_HUGEPAGE (a VMA of its own)
        and at once MADV_NOHUGEPAGE again (merged back): no protection or content
        changes, nothing another thread could notice. Whether anything was (or may
        have been) split: then the range must be armed again (the PTEs of a split
        PMD can all come out soft-dirty)."""
        k = self.kernel
        huge = k.huge_mappings(start, end)
        if not self._madvise(start, end - start, MADV_NOHUGEPAGE):
            return False
        if huge is None:             # cannot tell (a model): every VMA of the range
            huge = [m for m in k.maps() if m.start < end and start < m.end]
        for v in huge:
            lo, hi = max(v.start, start), min(v.end, end)
            block = lo - lo % HUGE_SIZE
            while block < hi:
                q = max(block, lo)
                if q < min(block + HUGE_SIZE, hi):
                    self._madvise(q, PAGE_SIZE, MADV_HUGEPAGE)
                    self._madvise(q, PAGE_SIZE, MADV_NOHUGEPAGE)
                block += HUGE_SIZE
        return bool(huge)

    def _check_huge(self, start: int, end: int, warn: bool) -> None:
        """Note (stats()) and warn (HugePageWarning, unless ``thp=True`` asked for it)
        when THPs remain in the range: another process's memory cannot be split from
        here, so its huge pages read in 2 MiB units."""
        huge = self.kernel.huge_mappings(start, end)
        if not huge:
            return
        runs = [(max(v.start, start), min(v.end, end)) for v in huge]
        self._coarse = runs_union(self._coarse, runs)
        if not warn:
            return
        where = ("another process's memory cannot be split from here"
                 if not self.kernel.is_self else "they could not be split")
        warnings.warn(
            f"{len(runs)} mapping(s) of [0x{start:x}, 0x{end:x}) in process {self.pid} "
            f"have transparent huge pages ({where}): a write to one of their pages is "
            "reported as its whole 2 MiB huge page (stats()['granularity'])",
            HugePageWarning, stacklevel=5)

    def stats(self) -> dict[str, object]:
        """``granularity``: the runs of the tracked ranges that had transparent huge
        pages when armed and stay huge, so are reported in 2 MiB units (another
        process's THPs, or ``thp=True``); every other page is reported exactly."""
        return {"granularity": {"page": PAGE_SIZE, "huge_page": HUGE_SIZE,
                                "huge_page_runs": list(self._coarse)}}

    def unregister(self, start: int, end: int) -> None:
        t = self._target
        for r in list(self._ranges):
            if r.start == start and r.end == end:
                self._ranges.remove(r)
                if t is not None:
                    with t.lock:
                        if r in t.ranges:
                            t.ranges.remove(r)

    # -- tracking ------------------------------------------------------------------

    def reset(self, start: int, end: int) -> None:
        t = self._live()
        rng = self._range(start, end)
        with t.lock, self._stopped(t):
            t.fold_and_clear(rng, [(start, end)])

    def scan(self, start: int, end: int, masks: Masks, *, max_pages: int = 0,
             max_regions: int | None = None, reset: bool = False) -> ScanResult:
        t = self._live()
        rng = self._range(start, end)
        if max_regions is not None and max_regions < 1:
            raise ValueError("max_regions must be at least 1")
        with t.lock:
            if not reset:
                return t.scan(rng, start, end, masks, max_pages, max_regions, False)[0]
            with self._stopped(t):
                result, written = t.scan(rng, start, end, masks, max_pages, max_regions, True)
                t.fold_and_clear(rng, written)
            return result

    def pending(self) -> Runs:
        """The runs of pending written pages (folded in before another range's reset)."""
        return [run for r in self._ranges for run in r.pending]

    def close(self) -> None:
        t, self._target = self._target, None
        if t is None:
            return
        if not t.closed:                   # (closed: inherited through fork)
            with t.lock:
                for r in self._ranges:
                    if r in t.ranges:
                        t.ranges.remove(r)
        self._ranges.clear()
        release(t)
