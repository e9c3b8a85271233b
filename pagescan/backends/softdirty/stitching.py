"""Stitching: the answers of scans of the mapped pieces of a range joined into what
one scan of the whole range would give."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from ..._impl import impl
from ..._types import ScanResult
from ...constants import PAGE_SIZE
from .runs import Runs, runs_union

__all__ = ["PieceScan", "stitch"]

# ------------------------------------------------------------------------ stitching

#: scan of one piece: (start, end, max_pages, max_regions) ->
#: (regions, walk_end, written) where written(limit) gives the runs of reported pages
#: with WRITTEN below ``limit``.
PieceScan = Callable[[int, int, int, "int | None"],
                     "tuple[Any, int, Callable[[int], Runs]]"]


def stitch(pieces: Iterable[tuple[int, int]], scan_piece: PieceScan, end: int, *,
           max_pages: int = 0, max_regions: int | None = None,
           want_written: bool = False) -> tuple[ScanResult, Runs]:
    """Scan ascending, disjoint pieces of a range (whatever lies between them has no
    mapping) and join the answers into what one scan of the whole range would give:
    regions merged across seams, ``max_pages`` counted across pieces, ``max_regions``
    counted after merging, and ``walk_end`` the first matching page not reported
    (the next piece's first match when ``max_pages`` was reached exactly at a seam).

    Returns ``(ScanResult, written)``: ``written`` (with ``want_written``) are the
    runs of reported pages that have WRITTEN, which a collect resets.
    """
    parts: list[Any] = []
    nreg = 0                     # regions in the answer so far
    found = 0                    # pages in the answer so far
    last: tuple[int, int] | None = None   # (end, categories) of the last region
    written: Runs = []
    for s, e in pieces:
        if max_pages and found >= max_pages:
            regs, _, _ = scan_piece(s, e, 1, 1)          # only: where is the next match?
            if len(regs):
                return ScanResult(impl.coalesce(*parts), regs[0][0]), runs_union(written, ())
            continue
        rem = None if max_regions is None else max_regions - nreg
        regs, walk_end, piece_written = scan_piece(
            s, e, max_pages - found if max_pages else 0, None if rem is None else rem + 1)
        n = len(regs)
        merge = bool(n and last is not None and last[0] == regs[0][0]
                     and last[1] == regs[0][2])
        stop = walk_end if walk_end < e else None
        if rem is not None and n - merge > rem:          # one region more than fits
            keep = rem + merge
            stop = regs[keep][0]
            regs = regs[:keep]
            n = keep
        if n:
            parts.append(regs)
            last = (regs[n - 1][1], regs[n - 1][2])
            nreg += n - merge
            found += regs.pages(PAGE_SIZE)
        if want_written:
            written.extend(piece_written(e if stop is None else stop))
        if stop is not None:
            return ScanResult(impl.coalesce(*parts), stop), runs_union(written, ())
    return ScanResult(impl.coalesce(*parts), end), runs_union(written, ())
