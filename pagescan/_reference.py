"""The core, in plain Python: the readable definition of what ``_core`` computes.

This module is the oracle for the compiled core's tests and the implementation
used when the extension is not built (``PAGESCAN_PUREPYTHON=1`` forces it). It
follows docs/kernel.md, 'Filter', 'Output' and 'walk_end' (filter, merge, limits,
walk_end) and 'pagemap entries', line by line; speed is not a goal here.
"""

from __future__ import annotations

import array
import builtins
import operator
import sys
from collections.abc import Iterable, Iterator
from typing import Any, overload

from ._args import (check_int, check_limits, check_page_size, check_range, check_region,
                    check_u64, check_uint_buffer)
from ._out import check_region_out
from ._types import (HOLE, Category, PageRegion, ScanCount, ScanResult, as_category, category_repr,
                     coerce_masks)
from .constants import (PM_FILE, PM_GUARD_REGION, PM_PFN_MASK, PM_PRESENT, PM_SOFT_DIRTY, PM_SWAP,
                        PM_UFFD_WP)

__all__ = ["IMPLEMENTATION", "RegionArray", "coalesce", "copy_regions", "pagemap_to_categories",
           "scan_pages"]

IMPLEMENTATION = "python"


class RegionArray:
    """Regions laid out as ``struct page_region`` (three u64 each: start, end, categories).

    Iterates as :class:`PageRegion`, ``categories`` a :class:`Category`. Values
    given (``RegionArray(regions)``, :meth:`append`) are ints in ``[0, 2**64)``:
    TypeError or ValueError naming the field otherwise. Pickles and copies.
    The pure-Python twin of the compiled class:
    numpy sees it through ``__array_interface__`` (no copy); on Python 3.12+
    ``memoryview()`` works too. On 3.11 use :meth:`memoryview`.
    """

    __slots__ = ("_capacity", "_data")

    def __init__(self, regions: Iterable[Iterable[int]] = (), *, capacity: int = 0) -> None:
        self._capacity = check_int(capacity, "capacity", maximum=sys.maxsize // 24)
        self._data = array.array("Q")
        for i, r in enumerate(regions):
            self._data.extend(check_region(r, f"regions[{i}]"))

    @classmethod
    def empty(cls, capacity: int) -> RegionArray:
        """An empty RegionArray with room for ``capacity`` regions: a result buffer
        for ``out=`` (see the compiled class; here it bounds the answer only)."""
        return cls(capacity=capacity)

    @property
    def capacity(self) -> int:
        """How many regions fit (the bound on a scan into it)."""
        return max(getattr(self, "_capacity", 0), len(self))

    def _append(self, start: int, end: int, categories: int) -> None:
        self._data.extend((start, end, categories))      # values known to be u64

    def append(self, start: int, end: int, categories: int) -> None:
        """Add one region at the end (ints in ``[0, 2**64)``; TypeError/ValueError
        naming the argument otherwise)."""
        self._data.extend((check_u64(start, "start"), check_u64(end, "end"),
                           check_u64(categories, "categories")))

    def __reduce__(self) -> tuple[Any, ...]:
        return (_regionarray_from_array, (array.array("Q", self._data),))

    # sequence protocol
    def __len__(self) -> int:
        return len(self._data) // 3

    @overload
    def __getitem__(self, i: int) -> PageRegion: ...
    @overload
    def __getitem__(self, i: slice) -> RegionArray: ...

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            out = RegionArray()
            for j in range(*i.indices(len(self))):
                out._append(*self[j])
            return out
        n = len(self)
        i = operator.index(i)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError("RegionArray index out of range")
        d = self._data
        return PageRegion(d[3 * i], d[3 * i + 1], as_category(d[3 * i + 2]))

    def __iter__(self) -> Iterator[PageRegion]:
        d = self._data
        for i in range(0, len(d), 3):
            yield PageRegion(d[i], d[i + 1], as_category(d[i + 2]))

    def __eq__(self, other: object) -> bool:
        try:
            return list(self) == [tuple(r) for r in other]  # type: ignore[attr-defined]
        except TypeError:
            return NotImplemented

    def __repr__(self) -> str:
        inner = ", ".join(f"(0x{s:x}, 0x{e:x}, {category_repr(c)})" for s, e, c in list(self)[:4])
        more = ", ..." if len(self) > 4 else ""
        return f"RegionArray([{inner}{more}], len={len(self)})"

    # totals
    def pages(self, page_size: int = 4096) -> int:
        """Total number of pages in all regions."""
        ps = check_page_size(page_size)
        return sum((e - s) // ps for s, e, _ in self if e > s)

    def addresses(self, page_size: int = 4096) -> array.array:
        """The address of every page of every region, ascending, as ``array('Q')``."""
        ps = check_page_size(page_size)
        if sum((e - s + ps - 1) // ps for s, e, _ in self if e > s) > sys.maxsize // 8:
            raise MemoryError(f"RegionArray.addresses: too many pages of {ps} bytes")
        out = array.array("Q")
        for s, e, _ in self:
            out.extend(range(s, e, ps))
        return out

    def tolist(self) -> list[PageRegion]:
        return list(self)

    # zero-copy views
    @property
    def nbytes(self) -> int:
        return len(self._data) * 8

    def memoryview(self) -> builtins.memoryview:
        """A read-only ``(n, 3)`` uint64 memoryview of the regions, no copy."""
        if not len(self):
            # memoryview.cast() refuses a shape with a 0 in it: an empty (0, 3) view
            # is the first 0 rows of a (1, 3) one (numpy >= 2.5 takes this buffer's
            # shape, and a (0,) view made np.asarray() one-dimensional)
            return memoryview(_ONE_ROW).toreadonly().cast("B").cast("Q", (1, 3))[:0]
        return memoryview(self._data).toreadonly().cast("B").cast("Q", (len(self), 3))

    def __buffer__(self, flags: int) -> builtins.memoryview:  # Python 3.12+
        return self.memoryview()

    @property
    def __array_interface__(self) -> dict[str, Any]:
        addr, _ = self._data.buffer_info()
        return {"shape": (len(self), 3), "typestr": "<u8", "data": (addr, True),
                "version": 3}


_ONE_ROW = array.array("Q", (0, 0, 0))


def _regionarray_from_array(data: array.array) -> RegionArray:
    """Unpickle: a RegionArray of the u64 triples in ``data``."""
    if not isinstance(data, array.array) or data.typecode not in ("Q", "L") \
            or data.itemsize != 8 or len(data) % 3:
        raise ValueError("RegionArray pickle data must be an array('Q') of triples")
    out = RegionArray()
    out._data.extend(data)
    return out


# --------------------------------------------------------------------------- scan


def scan_pages(categories: Any, start: int = 0, page_size: int = 4096, masks: Any = None,
               max_pages: int = 0, max_regions: int | None = None, out: Any = None
               ) -> Any:
    """Filter and merge per-page categories into regions, as PAGEMAP_SCAN does.

    ``categories[i]`` belongs to the page at ``start + i * page_size``. Returns
    ``ScanResult(regions, walk_end)``. The rules are the kernel's: docs/kernel.md,
    'Filter' and 'Output'.

    With ``out`` (a ``RegionArray.empty(capacity)`` or a writable ``(n, 3)``
    uint64 buffer) the regions are written into it, its capacity bounds the
    answer as ``max_regions`` does, and the result is ``ScanCount(nregions,
    walk_end)``: the regions are ``out[:nregions]`` (a RegionArray gets that length).
    """
    mv = check_uint_buffer(categories, "categories")
    ps = check_page_size(page_size)
    start, end = check_range(start, len(mv), ps)
    m = coerce_masks(masks)
    max_pages, max_regions = check_limits(max_pages, max_regions)
    if out is not None:
        cap = _out_capacity(out)
        if max_regions < 0 or max_regions > cap:
            max_regions = cap              # the buffer's capacity bounds the answer
        r = scan_pages(mv, start, ps, m, max_pages, max_regions)
        return ScanCount(copy_regions(r.regions, out), r.walk_end)
    out = RegionArray()
    is64 = mv.itemsize == 8
    if m.matches_nothing:
        return ScanResult(out, end)
    inverted, mask, anyof, ret = m.inverted, m.mask, m.anyof, m.return_mask

    found = 0                  # pages reported so far
    last_end = -1              # end of the last region (-1: no region yet)
    last_cats = 0
    for i, c in enumerate(mv):
        if is64 and c & HOLE:
            continue           # no mapping: never matches, and leaves a gap
        x = c ^ inverted
        if (x & mask) != mask or (anyof and not x & anyof):
            continue           # not matching: the next match starts a new region
        addr = start + i * ps
        if max_pages and found == max_pages:
            return ScanResult(out, addr)
        o = c & ret
        if addr == last_end and o == last_cats:
            out._data[-2] = last_end = addr + ps     # extend the last region
        else:
            if max_regions >= 0 and len(out) == max_regions:
                return ScanResult(out, addr)         # vec is full
            out._append(addr, addr + ps, o)
            last_end, last_cats = addr + ps, o
        found += 1
    return ScanResult(out, end)


def _out_capacity(out: Any) -> int:
    if isinstance(out, RegionArray):
        return out.capacity
    mv = check_region_out(out)
    assert mv.shape is not None
    return mv.shape[0]


def copy_regions(regions: Any, out: Any) -> int:
    """Copy ``regions`` (a sequence of ``(start, end, categories)``) into ``out``
    (as for ``scan_pages(out=)``); returns the count. ValueError if they do not fit."""
    cap = _out_capacity(out)
    rows = list(regions)
    if len(rows) > cap:
        raise ValueError(f"{len(rows)} regions do not fit in out (capacity {cap})")
    flat = array.array("Q", [v for i, r in enumerate(rows)
                             for v in check_region(r, f"regions[{i}]")])
    if isinstance(out, RegionArray):
        out._data[:] = flat
    elif rows:                              # (a view with a 0 in its shape cannot cast)
        dst = check_region_out(out).cast("B").cast("Q")
        dst[:len(flat)] = memoryview(flat)
    return len(rows)


# ------------------------------------------------------------------------ pagemap


def pagemap_to_categories(entries: Any, *, wpallowed: bool = False,
                          none_written: bool = False, zero_pfn: int | None = None,
                          out: Any = None, soft_dirty_written: bool = False) -> Any:
    """Categories derived from raw ``/proc/PID/pagemap`` entries.

    The rules: docs/kernel.md, 'pagemap entries'.

    Exact for PRESENT (bit 63), SWAPPED (62), GUARD (58), SOFT_DIRTY (55), FILE
    (61; the huge zero page also sets it) and WRITTEN of non-zero entries (not
    bit 57). What an entry cannot show comes from the caller:

    * ``wpallowed``: OR WPALLOWED into every page (a property of the VMA);
    * ``none_written``: whether an entry with no page (all zero, apart from bit
      55) reads as WRITTEN. The kernel's answer depends on PTE-table existence,
      which pagemap does not show; pass True for a uffd-wp registered range on
      6.18.y (exact there), False (the default) reports "not written" for pages
      that were never populated;
    * ``zero_pfn``: the shared zero page's PFN, to set PFNZERO (PFNs read as 0
      unless the opener had CAP_SYS_ADMIN);
    * HUGE is never derived (the PMD mapping is not visible in pagemap);
    * ``soft_dirty_written``: WRITTEN means "soft-dirty" (the soft-dirty backend's
      view): set iff bit 55 is, instead of from bit 57 and ``none_written``.

    Returns an ``array('Q')`` (or fills ``out``, a writable u64 buffer of the same
    length, and returns it).
    """
    mv = check_uint_buffer(entries, "entries", itemsizes=(8,))
    n = len(mv)
    if out is None:
        result: Any = array.array("Q", bytes(8 * n))
        dst = memoryview(result)
    else:
        dst = check_uint_buffer(out, "out", itemsizes=(8,))
        if dst.readonly:
            raise TypeError("out must be writable")
        if len(dst) != n:
            raise ValueError(f"out has {len(dst)} items; entries has {n}")
        result = out
    zpfn = None if zero_pfn is None else check_int(zero_pfn, "zero_pfn")
    base = int(Category.WPALLOWED) if wpallowed else 0
    for i, e in enumerate(mv):
        c = base
        if e & PM_SOFT_DIRTY:
            c |= Category.SOFT_DIRTY
        if e & ~PM_SOFT_DIRTY == 0:        # no page: unmapped, pte_none or no table
            if none_written:
                c |= Category.WRITTEN
        else:
            if e & PM_PRESENT:
                c |= Category.PRESENT
                if zpfn is not None and e & PM_PFN_MASK == zpfn:
                    c |= Category.PFNZERO
            if e & PM_SWAP:
                c |= Category.SWAPPED
            if e & PM_FILE:
                c |= Category.FILE
            if e & PM_GUARD_REGION:
                c |= Category.GUARD
            if not e & PM_UFFD_WP:
                c |= Category.WRITTEN
        if soft_dirty_written:
            c = (c & ~Category.WRITTEN) | (Category.WRITTEN if e & PM_SOFT_DIRTY else 0)
        dst[i] = int(c)
    return result


# ----------------------------------------------------------------------- coalesce


def coalesce(*parts: Iterable[Iterable[int]]) -> RegionArray:
    """Concatenate region lists in order, merging a region into the previous one
    when it starts where that one ends and has the same categories: the repair
    for a run that resumed calls split in two."""
    out = RegionArray()
    d = out._data
    for k, part in enumerate(parts):
        for i, r in enumerate(part):
            s, e, c = check_region(r, f"parts[{k}][{i}]")
            if len(d) and d[-2] == s and d[-1] == c:
                d[-2] = e
            else:
                out._append(s, e, c)
    return out

