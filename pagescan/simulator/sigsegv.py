"""The SIGSEGV path of a simulated process: the mprotect backend's write-fault trap.

The model of ``pagescan/_mprotect.c`` on a :class:`SimProcess`: a table of trapped
ranges with one state per page (CLEAN, UNPROT, DIRTY, COLLECTING, COARSE), the
handler that a store by ``sim.write()`` to a PROT_READ (or PROT_NONE) page of a
trapped range runs, and the collector's side. Every step the C code takes is
taken here on the model, in the same order and with the same rules: the
handler's ``mprotect(PROT_READ|PROT_WRITE)`` of one page splits the simulated VMA
as the kernel would, a reset's ``mprotect(PROT_READ)`` of a span merges them
again, the estimate of the mappings the trapping adds and the budget are
computed the same way, and past the budget (or on ENOMEM) the handler coarsens
along the same ladder (the gap to the nearest written page, aligned blocks of
64, 512, ... pages, the whole range).

So the mprotect backend's blind spots appear as they do for real:

* a kernel write (:meth:`SimProcess.kernel_write`, the model of ``read()`` into a
  buffer) does not fault into the handler: into a clean (PROT_READ) page it fails
  with EFAULT;
* ``madvise(MADV_DONTNEED)`` drops contents without a store: not seen;
* the program's own ``mprotect(PROT_READ|PROT_WRITE)`` on a clean page makes its
  later stores invisible.

And its check that a range is still the mapping it registered (PROCMAP_QUERY in
the C code) is taken through the model's VMAs: ``register`` records what each
part of the range is (no file, or which file at which offset; shared or
private), and before every change of protection the VMAs of the span must still
be that, with a protection the trap sets (readable, not executable); otherwise
the call raises ``OSError(ENXIO)`` and changes nothing, and the handler passes
the fault on. ``SimWriteTrap.procmap_query = False`` models a kernel without
PROCMAP_QUERY (nothing checked; the backend reads the maps at reset instead).

The model is single-threaded and deterministic: the transient states (UNPROT,
COLLECTING, COARSE) are entered and left within one call, never observed by
another. What the C code does when a fault cannot be handled (a message on
stderr, the fault passed on to the previous handler) is modelled as the
:class:`SegmentationFault` that ``sim.write()`` raises, with the sticky error
recorded for ``stats()``; the message is kept in :attr:`SimWriteTrap.messages`.
"""

from __future__ import annotations

import errno
from typing import Any

import numpy as np

from .._impl import impl
from .._types import Category, Masks, ScanResult
from ..kernel import WriteTrap
from .constants import B_KIND, K_TABLE, P_DATA, PAGE_SIZE, PROT_EXEC, PROT_READ, PROT_WRITE

__all__ = ["DEFAULT_MAX_MAP_COUNT", "MAX_RANGES", "SimWriteTrap", "kernel_write", "populate_write",
           "protection_fault", "touch", "write_trap"]

#: vm.max_map_count of the model (the kernel's default, DEFAULT_MAX_MAP_COUNT)
DEFAULT_MAX_MAP_COUNT = 65530
#: capacity of the range table, as in _mprotect.h
MAX_RANGES = 64
#: the gap to a written neighbour that coarsening fills first, as in _mprotect.c
NEIGHBOUR_PAGES = 64
#: past this many VMAs a scan checks an anonymous range quickly, as in _mprotect.c
QUICK_ABOVE_VMAS = 8

CLEAN, DIRTY, COLLECTING, UNPROT, COARSE = 0, 1, 2, 3, 4

_WPALLOWED = int(Category.WPALLOWED)
_WRITTEN = int(Category.WRITTEN)
_STAT_KEYS = ("faults", "coarsened", "coarsen_events", "reprotect_failed", "retries",
              "error", "error_addr", "mappings")
_INT64_MAX = (1 << 63) - 1


def _err(code: int, what: str) -> OSError:
    return OSError(code, f"{what}: {errno.errorcode.get(code, code)}")


#: what a VMA is, as PROCMAP_QUERY tells it: (file or 0, file page minus VMA page
#: or 0, shared); anonymous private memory is (0, 0, False) wherever it is
_Identity = tuple[int, int, bool]


def _identity(v: Any) -> _Identity:
    if v.file is None:
        return (0, 0, bool(v.shared))
    return (int(v.file.id), int(v.pgoff - v.start), bool(v.shared))


class _Range:
    __slots__ = ("cookie", "end", "ident", "npages", "slot", "st", "start", "state")

    def __init__(self, start: int, end: int, page_size: int, cookie: int, slot: int) -> None:
        self.start, self.end, self.cookie, self.slot = start, end, cookie, slot
        self.npages = (end - start) // page_size
        self.state = np.full(self.npages, DIRTY, dtype=np.uint8)
        self.st = dict.fromkeys(_STAT_KEYS, 0)
        #: (start, end, identity) of each part at register; None: unchecked
        self.ident: list[tuple[int, int, _Identity]] | None = None

    @property
    def handle(self) -> int:
        return (self.cookie << 8) | self.slot


class SimWriteTrap(WriteTrap):
    """The write-fault trap of one simulated process (``write_trap(sim)``)."""

    max_ranges = MAX_RANGES

    def __init__(self, proc: Any) -> None:
        self.proc = proc
        self.page_size = PAGE_SIZE
        #: the model's vm.max_map_count (what the backend computes its budget from;
        #: the model does not refuse splits past it: the budget and
        #: :meth:`inject_enomem` are how the handler is driven to coarsen)
        self.max_map_count = DEFAULT_MAX_MAP_COUNT
        self._shift = self.page_size.bit_length() - 1
        self._ranges: list[_Range | None] = [None] * MAX_RANGES
        self._next_cookie = 1
        self._totals = dict.fromkeys(_STAT_KEYS, 0)
        self._budget = _INT64_MAX
        self._inject = 0
        #: whether the modelled kernel has PROCMAP_QUERY (Linux 6.11): the trap
        #: checks its mappings (False: as before 6.11, nothing is checked)
        self.procmap_query = True
        self._checks_off = False
        #: what the C handler writes to stderr when a fault cannot be handled
        self.messages: list[str] = []

    # -- the process's SIGSEGV disposition ---------------------------------------------

    def owner(self) -> int:
        return int(self.proc.pid)

    def install(self) -> bool:
        if self.proc.sigsegv == self._handler:
            return False
        self.proc.sigsegv = self._handler
        return True

    def installed(self) -> bool:
        return bool(self.proc.sigsegv == self._handler)

    # -- helpers -------------------------------------------------------------------------

    def _lookup(self, handle: int) -> _Range:
        slot = handle & 0xFF
        r = self._ranges[slot] if slot < MAX_RANGES else None
        if r is None or r.cookie != handle >> 8:
            raise _err(errno.ESTALE, "mprotect tracker")
        return r

    def _sub(self, r: _Range, start: int, end: int) -> tuple[int, int]:
        ps = self.page_size
        if start % ps or end % ps or start >= end or start < r.start or end > r.end:
            raise _err(errno.EINVAL, "mprotect tracker")
        return (start - r.start) >> self._shift, (end - start) >> self._shift

    def _addr(self, r: _Range, i: int) -> int:
        return r.start + (i << self._shift)

    def _count(self, r: _Range, key: str, n: int) -> None:
        r.st[key] += n
        self._totals[key] += n

    def _add_mappings(self, r: _Range, delta: int) -> None:
        self._count(r, "mappings", delta)

    def _over_budget(self, delta: int) -> bool:
        return delta > 0 and self._totals["mappings"] + delta > self._budget

    def _mprotect(self, addr: int, length: int, prot: int) -> int:
        """mprotect() in the model: 0 or the errno."""
        try:
            self.proc.mprotect(addr, length, prot)
        except OSError as err:
            return err.errno or errno.EINVAL
        return 0

    def _handler_mprotect(self, addr: int, length: int, prot: int) -> int:
        if self._inject > 0:
            self._inject -= 1
            return errno.ENOMEM
        return self._mprotect(addr, length, prot)

    # -- is it still the tracked mapping? (PROCMAP_QUERY in the C code) ---------------

    def checks_mappings(self) -> bool:
        return self.procmap_query and not self._checks_off

    def set_mapping_checks(self, on: bool) -> None:
        self._checks_off = not on

    def _parts(self, proc: Any, start: int, end: int) -> list[tuple[int, int, _Identity]] | None:
        """The identity of [start, end), VMA by VMA, merged where it is the same;
        None where it is not all mapped."""
        a, b = proc._index(start), proc._index(end)
        parts: list[tuple[int, int, _Identity]] = []
        at = a
        for v in proc._vmas_in(a, b):
            if v.start > at:
                return None
            s, e, ident = proc._addr(max(v.start, a)), proc._addr(min(v.end, b)), _identity(v)
            if parts and parts[-1][1] == s and parts[-1][2] == ident:
                parts[-1] = (parts[-1][0], e, ident)
            else:
                parts.append((s, e, ident))
            at = v.end
        return parts if at >= b else None

    def _ours(self, r: _Range, start: int, end: int, proc: Any = None) -> bool:
        """check_span(): whether [start, end) of r is still the tracked mapping (True
        when it cannot be told): every VMA there readable, not executable, with the
        identity recorded at register; no hole."""
        if r.ident is None or not self.checks_mappings():
            return True
        proc = self.proc if proc is None else proc
        a, b = proc._index(start), proc._index(end)
        at = a
        for v in proc._vmas_in(a, b):
            if v.start > at or not v.prot & PROT_READ or v.prot & PROT_EXEC:
                return False
            vs, ve, ident = proc._addr(max(v.start, a)), proc._addr(min(v.end, b)), _identity(v)
            for s, e, want in r.ident:
                if s < ve and vs < e and want != ident:
                    return False
            at = v.end
        return at >= b

    def _vma_ok(self, r: _Range, v: Any, proc: Any) -> bool:
        if not v.prot & PROT_READ or v.prot & PROT_EXEC:
            return False
        vs, ve, ident = proc._addr(v.start), proc._addr(v.end), _identity(v)
        return all(want == ident for s, e, want in r.ident or () if s < ve and vs < e)

    def _scan_check(self, r: _Range, start: int, end: int) -> tuple[bool, bool]:
        """check_scan(): ``(ours, exact)``. A range of anonymous private memory split
        in more than QUICK_ABOVE_VMAS VMAs gets the quick check (the VMAs at both
        ends, no executable or file VMA in between: a hole or a PROT_NONE VMA
        inside is not seen, ``exact`` False); any other the walk of every VMA."""
        if (r.ident is None or not self.checks_mappings() or len(r.ident) != 1
                or r.ident[0][2] != (0, 0, False)
                or r.st["mappings"] + 1 <= QUICK_ABOVE_VMAS):
            return self._ours(r, start, end), True
        proc = self.proc
        for addr in (start, end - self.page_size):
            v = proc._vma_at(proc._index(addr))
            if v is None or not self._vma_ok(r, v, proc):
                return False, False
        bad = any(v.prot & PROT_EXEC or v.file is not None
                  for v in proc._vmas_in(proc._index(start), proc._index(end)))
        return not bad, False

    # -- the mapping estimate: boundaries between read-only and writable pages ------

    @staticmethod
    def _ro(r: _Range, a: int, b: int, self_page: int = -1) -> np.ndarray:
        s = r.state[a:b]
        ro = (s == CLEAN) | (s == COLLECTING)
        if a <= self_page < b:
            ro[self_page - a] = True
        return ro

    def _boundaries(self, r: _Range, a: int, b: int, self_page: int = -1) -> int:
        """Boundaries among pages [a, b] (pairs (i-1, i), a < i <= b)."""
        b = min(b, r.npages - 1)
        if a > b:
            return 0
        ro = self._ro(r, a, b + 1, self_page)
        return int(np.count_nonzero(ro[1:] != ro[:-1]))

    def _is_ro(self, r: _Range, i: int, self_page: int = -1) -> bool:
        return i == self_page or int(r.state[i]) in (CLEAN, COLLECTING)

    def _delta_writable(self, r: _Range, a: int, b: int, self_page: int) -> int:
        before = self._boundaries(r, a - 1 if a else 0, b, self_page)
        after = 0
        if a > 0:
            after += self._is_ro(r, a - 1, self_page)
        if b < r.npages:
            after += self._is_ro(r, b, self_page)
        return after - before

    def _delta_readonly(self, r: _Range, a: int, b: int) -> int:
        d = 0
        if a > 0:
            d += -1 if self._is_ro(r, a - 1) else 1
        if b < r.npages:
            d += -1 if self._is_ro(r, b) else 1
        return d

    def _window(self, r: _Range, a: int, b: int) -> int:
        return self._boundaries(r, a - 1 if a else 0, b)

    # -- the handler --------------------------------------------------------------------

    def _range_at(self, addr: int) -> _Range | None:
        for r in self._ranges:
            if r is not None and r.start <= addr < r.end:
                return r
        return None

    def _handler(self, addr: int) -> bool:
        """A write fault at ``addr`` (the model calls it where the kernel would send
        SIGSEGV). True: handled, the store is retried; False: passed on to the
        previous handler (none: the process gets the SegmentationFault)."""
        r = self._range_at(addr)
        if r is None or not protection_fault(self.proc, addr):
            return False                    # not ours, or not SEGV_ACCERR
        page = addr & ~(self.page_size - 1)
        i = (page - r.start) >> self._shift
        if not self._ours(r, page, page + self.page_size):
            return False                    # replaced, or PROT_NONE/PROT_EXEC: passed on
        # single-threaded: no other owner, the page is CLEAN or DIRTY
        r.state[i] = UNPROT
        delta = self._delta_writable(r, i, i + 1, i)
        if self._over_budget(delta):
            err = errno.ENOMEM
        else:
            err = self._handler_mprotect(page, self.page_size, PROT_READ | PROT_WRITE)
            if err == 0:
                self._add_mappings(r, delta)
        if err == errno.ENOMEM:
            err = self._coarsen(r, i)
        r.state[i] = DIRTY                  # conservative either way
        self._count(r, "faults", 1)
        if err:
            for st in (r.st, self._totals):
                if not st["error"]:
                    st["error"], st["error_addr"] = err, page
            self.messages.append(
                f"pagescan: the mprotect backend could not give write access back to the "
                f"tracked page at 0x{page:x}: mprotect() failed with errno {err}. Passing the "
                "fault on to the previous SIGSEGV handler.")
            return False
        return True

    def _claim_coarse(self, r: _Range, a: int, b: int, self_page: int) -> int:
        """CLEAN and DIRTY pages of [a, b) but self_page become COARSE; how many were
        CLEAN."""
        seg = r.state[a:b]
        take = (seg == CLEAN) | (seg == DIRTY)
        if a <= self_page < b:
            take[self_page - a] = False
        newly = int(np.count_nonzero(take & (seg == CLEAN)))
        seg[take] = COARSE
        return newly

    @staticmethod
    def _release_coarse(r: _Range, a: int, b: int) -> None:
        seg = r.state[a:b]
        seg[seg == COARSE] = DIRTY

    def _try_span(self, r: _Range, a: int, b: int, p: int, span: list[int]) -> int:
        delta = self._delta_writable(r, a, b, p)
        if self._over_budget(delta):
            return errno.ENOMEM
        if not self._ours(r, self._addr(r, a), self._addr(r, b)):
            return errno.ENXIO
        span[2] += self._claim_coarse(r, a, b, p)
        span[0], span[1] = min(span[0], a), max(span[1], b)
        err = self._handler_mprotect(self._addr(r, a), (b - a) << self._shift,
                                     PROT_READ | PROT_WRITE)
        if err == 0:
            self._add_mappings(r, delta)
        return err

    def _coarsen(self, r: _Range, p: int) -> int:
        """The C handler's coarsen(): a larger span than page p. 0 or the errno."""
        n = r.npages
        span = [p, p + 1, 0]            # lo, hi, newly unprotected
        err = errno.ENOMEM
        left = right = 0
        have_left = have_right = False
        q = p
        while q > 0 and p - q < NEIGHBOUR_PAGES:
            if r.state[q - 1] != CLEAN:
                have_left, left = True, q
                break
            q -= 1
        q = p + 1
        while q < n and q - p <= NEIGHBOUR_PAGES:
            if r.state[q] != CLEAN:
                have_right, right = True, q
                break
            q += 1
        done = False
        if have_left and have_right and right > p + 1 and right - p < p + 1 - left:
            err = self._try_span(r, p, right, p, span)
            done = err == 0
            have_right = False
        if not done and have_left and left < p:
            err = self._try_span(r, left, p + 1, p, span)
            done = err == 0
        if not done and have_right and right > p + 1:
            err = self._try_span(r, p, right, p, span)
            done = err == 0
        sz = 64
        while not done:
            if sz >= n:
                a, b = 0, n
            else:
                a = p & ~(sz - 1)
                b = min(a + sz, n)
            err = self._try_span(r, a, b, p, span)
            if err == 0 or err != errno.ENOMEM or (a == 0 and b == n):
                break
            sz *= 8
        self._release_coarse(r, span[0], span[1])
        self._count(r, "coarsen_events", 1)
        self._count(r, "coarsened", span[2])
        return err

    # -- registration --------------------------------------------------------------------

    def register(self, start: int, end: int) -> int:
        ps = self.page_size
        if start % ps or end % ps or start >= end:
            raise _err(errno.EINVAL, "mprotect tracker: register")
        free = None
        for slot, x in enumerate(self._ranges):
            if x is not None:
                if start < x.end and x.start < end:
                    raise _err(errno.EEXIST, "mprotect tracker: register")
            elif free is None:
                free = slot
        if free is None:
            raise _err(errno.ENOSPC, "mprotect tracker: register")
        if not _mapped(self.proc, start, end):        # mincore()
            raise _err(errno.ENOMEM, "mprotect tracker: register")
        r = _Range(start, end, ps, self._next_cookie, free)
        if self.checks_mappings():
            r.ident = self._parts(self.proc, start, end)
        self._next_cookie += 1
        self._ranges[free] = r
        return r.handle

    def unregister(self, handle: int, leave: bool = False) -> None:
        r = self._lookup(handle)
        if leave:
            rc = 0
        elif not self._ours(r, r.start, r.end):
            rc = errno.ENXIO                # left as it is
        else:
            rc = self._mprotect(r.start, r.end - r.start, PROT_READ | PROT_WRITE)
        if rc and rc != errno.ENXIO:
            # unmapped under the tracker, or the map count: run by run
            i = 0
            while i < r.npages:
                dirty = r.state[i] == DIRTY
                a = i
                while i < r.npages and (r.state[i] == DIRTY) == dirty:
                    i += 1
                if not dirty:
                    self._mprotect(self._addr(r, a), (i - a) << self._shift,
                                   PROT_READ | PROT_WRITE)
        self._totals["mappings"] -= r.st["mappings"]
        r.st["mappings"] = 0
        self._ranges[r.slot] = None
        if rc:
            raise _err(rc, "mprotect tracker: unregister")

    def live(self) -> int:
        return sum(r is not None for r in self._ranges)

    def overlapping(self, start: int, end: int) -> int:
        return sum(r is not None and start < r.end and r.start < end for r in self._ranges)

    def touch(self, addr: int) -> None:
        touch(self.proc, addr)

    def set_budget(self, budget: int) -> None:
        self._budget = int(budget)

    def inject_enomem(self, count: int) -> None:
        self._inject = int(count)

    # -- collection ------------------------------------------------------------------------

    def _protect_run(self, r: _Range, a: int, b: int) -> int:
        delta = self._delta_readonly(r, a, b)
        to = CLEAN
        if self._over_budget(delta) or self._mprotect(self._addr(r, a), (b - a) << self._shift,
                                                      PROT_READ):
            to = DIRTY
        else:
            self._add_mappings(r, delta)
        r.state[a:b] = to
        if to == DIRTY:
            self._count(r, "reprotect_failed", b - a)
            return b - a
        return 0

    def _protect_claimed(self, r: _Range, a: int, b: int) -> int:
        left = 0
        i = a
        while i < b:
            if r.state[i] != COLLECTING:
                i += 1
                continue
            s = i
            while i < b and r.state[i] == COLLECTING:
                i += 1
            left += self._protect_run(r, s, i)
        return left

    def arm(self, handle: int, start: int, end: int) -> int:
        r = self._lookup(handle)
        first, n = self._sub(r, start, end)
        if not self._ours(r, start, end):
            raise _err(errno.ENXIO, "mprotect")
        seg = r.state[first:first + n]
        before = self._window(r, first, first + n)
        seg[seg == DIRTY] = COLLECTING
        rc = self._mprotect(start, end - start, PROT_READ)
        if rc == 0:
            seg[seg == COLLECTING] = CLEAN
            self._add_mappings(r, self._window(r, first, first + n) - before)
            return 0
        if rc != errno.ENOMEM:
            seg[seg == COLLECTING] = DIRTY
            self._add_mappings(r, self._window(r, first, first + n) - before)
            raise _err(rc, "mprotect")
        return self._protect_claimed(r, first, first + n)

    def _snapshot(self, r: _Range, first: int, n: int) -> np.ndarray:
        return np.where(r.state[first:first + n] == CLEAN, _WPALLOWED,
                        _WPALLOWED | _WRITTEN).astype(np.uint8)

    def scan(self, handle: int, start: int, end: int, masks: Masks | None = None,
             max_pages: int = 0, max_regions: int | None = None, reset: bool = False
             ) -> tuple[ScanResult, int]:
        if end <= start:
            # as the compiled primitive: arguments checked, nothing to read
            return impl.scan_pages(np.zeros(0, np.uint8), end, self.page_size, masks,
                                   max_pages, max_regions), 0
        r = self._lookup(handle)
        first, n = self._sub(r, start, end)
        ours, exact = self._scan_check(r, start, end)
        if not ours:
            raise _err(errno.ENXIO, "mprotect tracker: scan")
        snap = self._snapshot(r, first, n)
        result = impl.scan_pages(snap, start, self.page_size, masks, max_pages, max_regions)
        left = 0
        if reset and len(result.regions):
            left = self._reset_regions(r, result.regions, snap, first, exact)
        return result, left

    def _reset_regions(self, r: _Range, regions: Any, snap: np.ndarray, base: int,
                       checked: bool = True) -> int:
        """Reset the reported pages the snapshot showed written, with one mprotect()
        over the span from the first to the last (as the C code does)."""
        claim = np.zeros(len(snap), dtype=bool)
        s0 = r.start + (base << self._shift)
        for reg in regions:
            a = (reg[0] - s0) >> self._shift
            b = (reg[1] - s0) >> self._shift
            claim[a:b] = True
        claim &= (snap & _WRITTEN) != 0
        idx = np.flatnonzero(claim)
        if not len(idx):
            return 0
        wlo, whi = base + int(idx[0]), base + int(idx[-1]) + 1
        before = self._window(r, wlo, whi)
        claim &= r.state[base:base + len(snap)] == DIRTY
        idx = np.flatnonzero(claim)
        if not len(idx):
            return 0
        lo, hi = base + int(idx[0]), base + int(idx[-1]) + 1
        if not checked and not self._ours(r, self._addr(r, lo), self._addr(r, hi)):
            raise _err(errno.ENXIO, "mprotect")
        r.state[base + idx] = COLLECTING
        if self._mprotect(self._addr(r, lo), (hi - lo) << self._shift, PROT_READ) == 0:
            seg = r.state[lo:hi]
            seg[seg == COLLECTING] = CLEAN
            self._add_mappings(r, self._window(r, wlo, whi) - before)
            return 0
        return self._protect_claimed(r, lo, hi)

    def mark_written(self, handle: int, start: int, end: int) -> None:
        r = self._lookup(handle)
        first, n = self._sub(r, start, end)
        if not self._ours(r, start, end):
            raise _err(errno.ENXIO, "mprotect")
        before = self._window(r, first, first + n)
        self._claim_coarse(r, first, first + n, -1)
        rc = self._mprotect(start, end - start, PROT_READ | PROT_WRITE)
        self._release_coarse(r, first, first + n)
        self._add_mappings(r, self._window(r, first, first + n) - before)
        if rc:
            raise _err(rc, "mprotect")

    def stats(self, handle: int = 0) -> dict[str, int]:
        src = self._totals if handle == 0 else self._lookup(handle).st
        out = {k: int(src[k]) for k in _STAT_KEYS}
        out["budget"] = self._budget
        return out

    # -- fork ------------------------------------------------------------------------------

    def at_fork(self, child: Any) -> None:
        """The C code's pthread_atfork hook, in the child: write access back to every
        trapped range, and nothing trapped (the child's handler has an empty table,
        which passes every fault on: the same as no handler)."""
        for r in self._ranges:
            if r is not None and self._ours(r, r.start, r.end, child):
                try:
                    child.mprotect(r.start, r.end - r.start, PROT_READ | PROT_WRITE)
                except OSError:
                    pass
        child.sigsegv = None


def protection_fault(proc: Any, addr: int) -> bool:
    """Whether a store at ``addr`` faults as SEGV_ACCERR: the page is mapped, by a
    mapping without PROT_WRITE (the kernel checks the VMA's permission before it
    looks at the page: a guard page of a PROT_READ mapping is ACCERR too)."""
    i = proc._index(addr - addr % PAGE_SIZE)
    v = proc._vma_at(i) if 0 <= i < proc.npages else None
    return v is not None and not v.prot & PROT_WRITE


def touch(proc: Any, addr: int) -> None:
    """A CAS of a byte with itself at ``addr``: a write fault, the contents unchanged
    (a page that held zeros holds zeros)."""
    page = addr - addr % PAGE_SIZE
    i = proc._index(page)
    had_data = 0 <= i < proc.npages and int(proc._pte[i]) & P_DATA
    proc.write(page, 1)
    if not had_data and int(proc._pmd[i >> 9]) & B_KIND == K_TABLE:
        proc._pte[i] &= ~P_DATA & 0xFFFF


def populate_write(proc: Any, addr: int, length: int) -> None:
    """madvise(MADV_POPULATE_WRITE): write-fault every page of the range, contents
    unchanged (as :func:`touch`). EINVAL: unaligned; ENOMEM: not mapped; EFAULT: a
    page cannot be written (PROT_READ ...)."""
    if addr % PAGE_SIZE or length < 0:
        raise _err(errno.EINVAL, "madvise")
    end = addr + -(-length // PAGE_SIZE) * PAGE_SIZE
    if not _mapped(proc, addr, end):
        raise _err(errno.ENOMEM, "madvise")
    for page in range(addr, end, PAGE_SIZE):
        if proc.access_fault(page, 1, write=True) is not None:
            raise _err(errno.EFAULT, "madvise")
        touch(proc, page)


def _mapped(proc: Any, start: int, end: int) -> bool:
    at = start
    for v in proc.maps():
        if v.end <= at:
            continue
        if v.start > at:
            return False
        at = v.end
        if at >= end:
            return True
    return False


def write_trap(proc: Any) -> SimWriteTrap:
    """The write-fault trap of a simulated process (one per process)."""
    trap = proc.__dict__.get("_write_trap")
    if trap is None:
        trap = proc._write_trap = SimWriteTrap(proc)
    return trap


def kernel_write(proc: Any, addr: int, length: int) -> int:
    """``read()`` into ``[addr, addr+length)`` of the simulated process: the kernel's
    copy_to_user(), page by page in order. A page whose store would fault (PROT_READ,
    PROT_NONE, unmapped, a guard) stops the copy without a signal: the SIGSEGV
    handler is never run. Returns the bytes copied; when the first page already
    fails, ``OSError(EFAULT)``, as read() does."""
    if length <= 0:
        return 0
    ps = PAGE_SIZE
    done = 0
    at = addr
    end = addr + length
    while at < end:
        step = min(end, (at // ps + 1) * ps) - at
        if proc.access_fault(at, step, write=True) is not None:
            break
        proc.write(at, step)            # does not fault: no handler runs
        done += step
        at += step
    if done == 0:
        raise OSError(errno.EFAULT, "Bad address")
    return done
