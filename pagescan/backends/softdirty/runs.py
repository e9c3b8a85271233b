"""Page runs ``[(start, end), ...]`` (sorted, disjoint, adjacent ones joined): the
arithmetic the soft-dirty backend keeps its pending pages and VMA spans in."""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from ...constants import PAGE_SIZE, USER_ADDRESS_LIMIT as USER_TOP
from ...procfs import Mapping

__all__ = ["Runs", "runs_clip", "runs_of", "runs_subtract", "runs_union", "segments", "split"]

#: page runs ``[(start, end), ...]``: sorted, disjoint, adjacent ones joined
Runs = list[tuple[int, int]]


def segments(vmas: Iterable[Mapping], start: int, end: int, writable_only: bool = False) -> Runs:
    """The mapped parts of ``[start, end)``, adjacent VMAs joined: ``[(s, e), ...]``."""
    out: Runs = []
    for v in vmas:
        if v.end <= start or v.start >= end or v.special:
            continue
        if writable_only and not v.writable:
            continue
        s, e = max(v.start, start), min(v.end, end)
        if out and out[-1][1] == s:
            out[-1] = (out[-1][0], e)
        else:
            out.append((s, e))
    return out


def runs_union(a: Sequence[tuple[int, int]], b: Sequence[tuple[int, int]]) -> Runs:
    """The union of two run lists, as a run list."""
    out: Runs = []
    for s, e in sorted([*a, *b]):
        if s >= e:
            continue
        if out and s <= out[-1][1]:
            if e > out[-1][1]:
                out[-1] = (out[-1][0], e)
        else:
            out.append((s, e))
    return out


def runs_subtract(a: Sequence[tuple[int, int]], b: Sequence[tuple[int, int]]) -> Runs:
    """``a`` minus ``b`` (both run lists)."""
    b = runs_union(b, ())
    out: Runs = []
    for s, e in a:
        i = bisect.bisect_right(b, (s, USER_TOP << 1)) - 1
        i = max(i, 0)
        while s < e and i < len(b):
            bs, be = b[i]
            if be <= s:
                i += 1
                continue
            if bs >= e:
                break
            if bs > s:
                out.append((s, bs))
            s = max(s, be)
            i += 1
        if s < e:
            out.append((s, e))
    return out


def runs_clip(a: Sequence[tuple[int, int]], start: int, end: int) -> Runs:
    """The parts of ``a`` inside ``[start, end)``."""
    out: Runs = []
    i = max(bisect.bisect_right(a, (start, USER_TOP << 1)) - 1, 0)
    for s, e in a[i:]:
        if s >= end:
            break
        s, e = max(s, start), min(e, end)
        if s < e:
            out.append((s, e))
    return out


def runs_of(regions: Iterable[Any]) -> Runs:
    """``(start, end)`` of each region (categories dropped), adjacent ones joined."""
    out: Runs = []
    for r in regions:
        s, e = r[0], r[1]
        if out and out[-1][1] == s:
            out[-1] = (out[-1][0], e)
        else:
            out.append((s, e))
    return out


def split(runs: Iterable[tuple[int, int]], pages: int) -> Iterator[tuple[int, int]]:
    """Runs cut into pieces of at most ``pages`` pages."""
    step = pages * PAGE_SIZE
    for s, e in runs:
        while s < e:
            yield s, min(s + step, e)
            s += step
