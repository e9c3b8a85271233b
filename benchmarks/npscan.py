"""scan_pages in NumPy: the fastest vectorised version of the job we could write.

Same contract as ``pagescan.scan_pages`` (docs/kernel.md, 'Filter' and
'Output'): filter by the masks, merge adjacent matching pages with equal
``c & return_mask``, stop at ``max_pages`` / ``max_regions`` with the kernel's
``walk_end``, HOLE (bit 63 of 64-bit input) never matches. Returns
``ScanResult(regions, walk_end)`` with ``regions`` an ``(n, 3)`` uint64 ndarray
laid out as ``struct page_region``.

How it works. A matching page ``i`` continues the region of page ``i-1`` iff
``i-1`` matched too and ``o[i] == o[i-1]`` (``o = c & return_mask``): the last
region always ends just after the last matching page. So with
``cont[i] = match[i] & match[i-1] & (o[i] == o[i-1])`` the regions start at
``match & ~cont`` and end after ``match & ~cont[i+1]``. The limits are applied
afterwards: the walk stops at the (max_pages+1)-th matching page or at the start
of region ``max_regions``, whichever comes first, and everything before that is
reported.

Speed. The filter is folded into one AND and one compare per element:
``(c ^ inv) & mask == mask`` is ``c & (mask|HOLE) == mask & ~inv`` (the HOLE bit
is required to be 0), and ``(c ^ inv) & anyof != 0`` is
``c & anyof != inv & anyof``. Without ``anyof`` (the common case) a single key
``c & (mask|HOLE|return_mask)`` decides both matching and merging, and the
regions start and end exactly where the key changes (``_blocks_keyed``). The
array is processed in blocks of ``block`` pages so that the temporaries stay in
cache and the input is read from memory once; blocks overlap their neighbour by
one page to see across the seam. With limits set, the block loop stops as soon
as the stop point is known.
"""

from __future__ import annotations

import numpy as np

from pagescan._args import check_limits, check_page_size, check_range, check_uint_buffer
from pagescan._types import HOLE, ScanResult, coerce_masks

__all__ = ["BLOCK", "scan_pages"]

BLOCK = 1 << 18

_DTYPES = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def _filter_consts(itemsize: int, m) -> tuple[int | None, int, int | None, int, int, bool]:
    """(sel, want, anyof_sel, anyof_val, ret, never) for input of this width.

    ``match = (c & sel) == want`` (skipped when sel is None) and, when
    ``anyof_sel`` is not None, ``(c & anyof_sel) != anyof_val``. Bits above the
    input width are fixed (zero in ``c``), so they are decided here once.
    """
    top = (1 << (8 * itemsize)) - 1
    inv, mask, anyof, ret = m.inverted, m.mask, m.anyof, m.return_mask
    hole = HOLE if itemsize == 8 else 0
    want = mask & ~inv
    never = bool(want & ~top)                  # a required bit that cannot be set
    sel = (mask | hole) & top
    want &= top
    if anyof and (inv & anyof) & ~top:        # a high bit of x is 1: anyof always holds
        anyof = 0
    anyof &= top
    if anyof == 0 and m.anyof and not (inv & m.anyof) & ~top:
        never = True                          # anyof only names bits the input lacks
    return (sel if sel else None), want, (anyof if anyof else None), inv & anyof, ret & top, never


def _blocks_general(c, B, sel_t, want_t, asel_t, aval_t, ret_t, count):
    """Per block of B pages: (starts, ends, categories, matched) as page indices.

    Any masks. ``cont[j] = match[j-1] & match[j] & (o[j-1] == o[j])``; blocks
    overlap their neighbours by one page on each side to see across the seam.
    """
    n = c.size
    dt = c.dtype.type
    L = min(B + 2, n)
    t = np.empty(L, dtype=dt)                 # scratch, reused by every block
    match = np.empty(L, dtype=bool)
    tmpb = np.empty(L, dtype=bool)
    brk = np.empty(L + 1, dtype=bool)         # brk[j]: no merge between j-1 and j
    for s0 in range(0, n, B):
        e0 = min(s0 + B, n)
        lo = s0 - 1 if s0 else 0
        hi = e0 + 1 if e0 < n else n
        v = c[lo:hi]
        k = hi - lo
        mt = match[:k]
        if sel_t is not None:
            np.bitwise_and(v, sel_t, out=t[:k])
            np.equal(t[:k], want_t, out=mt)
        else:
            mt[:] = True
        if asel_t is not None:
            np.bitwise_and(v, asel_t, out=t[:k])
            np.not_equal(t[:k], aval_t, out=tmpb[:k])
            mt &= tmpb[:k]
        b = brk[1:k]
        if ret_t:
            np.bitwise_and(v, ret_t, out=t[:k])      # t = o for the rest of the block
            np.equal(t[1:k], t[:k - 1], out=b)
            b &= mt[1:]
        else:
            b[:] = mt[1:]
        b &= mt[:-1]
        np.logical_not(b, out=b)
        brk[0] = True                         # only used when lo == 0 (page 0)
        brk[k] = True                         # only used when hi == n (last page)
        off = s0 - lo
        cnt = e0 - s0
        mblk = mt[off:off + cnt]
        np.logical_and(mblk, brk[off:off + cnt], out=tmpb[:cnt])
        st = np.flatnonzero(tmpb[:cnt])
        np.logical_and(mblk, brk[off + 1:off + 1 + cnt], out=tmpb[:cnt])
        en = np.flatnonzero(tmpb[:cnt])
        ct = np.take(t[off:off + cnt], st) if ret_t else np.zeros(st.size, dt)
        st += s0
        en += s0 + 1
        yield st, en, ct, (int(np.count_nonzero(mblk)) if count else 0)


def _blocks_keyed(c, B, sel_t, want_t, key_t, ret_t, count):
    """The same for ``anyof == 0``, with one key per page: ``key = c & (sel|ret)``.

    A matching page has ``key & sel == want`` and a non-matching one does not,
    and two matching pages have equal keys iff their ``o`` are equal. So the
    region edges are exactly where the key changes, and a change at page g
    starts a region if g matches and ends one if g-1 does. Per block: one AND
    over the input, one compare, one flatnonzero; the rest is on the edges.
    """
    n = c.size
    dt = c.dtype.type
    L = min(B + 1, n)
    t = np.empty(L, dtype=dt)
    ne = np.empty(L, dtype=bool)
    for s0 in range(0, n, B):
        e0 = min(s0 + B, n)
        lo = s0 - 1 if s0 else 0
        v = c[lo:e0]
        k = e0 - lo
        key = t[:k]
        np.bitwise_and(v, key_t, out=key)
        np.not_equal(key[1:], key[:-1], out=ne[:k - 1])
        b = np.flatnonzero(ne[:k - 1])        # edge before page lo + b + 1
        b += 1
        kb = key[b]
        np.bitwise_and(kb, sel_t, out=kb)
        ms = kb == want_t                     # page at the edge matches: a start
        kb = key[b - 1]
        np.bitwise_and(kb, sel_t, out=kb)
        me = kb == want_t                     # page before the edge matches: an end
        st = b[ms]
        en = b[me]
        if s0 == 0 and (key[0] & sel_t) == want_t:
            st = np.concatenate(([0], st))    # page 0 matches: a region starts there
        if e0 == n and (key[k - 1] & sel_t) == want_t:
            en = np.concatenate((en, [k]))    # the last page matches: a region ends at n
        ct = np.bitwise_and(key[st], ret_t)
        st += lo
        en += lo
        matched = 0
        if count:
            off = s0 - lo
            np.bitwise_and(key[off:], sel_t, out=key[off:])
            matched = int(np.count_nonzero(key[off:] == want_t))
        yield st, en, ct, matched


def scan_pages(categories, start=0, page_size=4096, masks=None, max_pages=0,
               max_regions=None, *, block: int = BLOCK, kernel: str | None = None
               ) -> ScanResult:
    """``pagescan.scan_pages`` in NumPy. ``block``: pages per block; ``kernel``:
    ``"keyed"`` (only without anyof) or ``"general"``; by default keyed when it can."""
    mv = check_uint_buffer(categories, "categories")
    ps = check_page_size(page_size)
    start, end = check_range(start, len(mv), ps)      # start: the int, as the cores use
    m = coerce_masks(masks)
    mp, mr = check_limits(max_pages, max_regions)
    empty = np.empty((0, 3), dtype=np.uint64)
    n = len(mv)
    if m.matches_nothing or n == 0:
        return ScanResult(empty, end)
    dt = _DTYPES[mv.itemsize]
    c = np.frombuffer(mv, dtype=dt)
    sel, want, asel, aval, ret, never = _filter_consts(mv.itemsize, m)
    if never:
        return ScanResult(empty, end)
    limited = mp != 0 or mr >= 0
    B = max(int(block), 1)
    if kernel is None:
        kernel = "keyed" if asel is None else "general"
    if kernel == "keyed":
        if asel is not None:
            raise ValueError("the keyed kernel needs anyof == 0")
        blocks = _blocks_keyed(c, B, dt(sel or 0), dt(want), dt((sel or 0) | ret), dt(ret),
                               mp != 0)
    else:
        blocks = _blocks_general(c, B, dt(sel) if sel is not None else None, dt(want),
                                 dt(asel) if asel is not None else None, dt(aval), dt(ret),
                                 mp != 0)

    shift = np.uint64(ps.bit_length() - 1)    # page_size is a power of two
    st_parts: list[np.ndarray] = []           # region start addresses, u64
    en_parts: list[np.ndarray] = []           # region end addresses, u64
    ct_parts: list[np.ndarray] = []           # region categories
    n_starts = n_ends = matched = 0
    base = np.uint64(start)
    for st, en, ct, mb in blocks:
        if st.size:
            st = st.view(np.uint64)           # page index -> address, in place
            st <<= shift
            st += base
            st_parts.append(st)
            ct_parts.append(ct)
        if en.size:
            en = en.view(np.uint64)
            en <<= shift
            en += base
            en_parts.append(en)
        if limited:
            n_starts += st.size
            n_ends += en.size
            if mr >= 0 and n_starts > mr:
                break                         # the start of region max_regions is known
            if mp:
                matched += mb
                if matched > mp:
                    break                     # the (max_pages+1)-th match is known
    k = sum(p.size for p in st_parts)
    out = np.empty((k, 3), dtype=np.uint64)
    if k:
        np.concatenate(st_parts, out=out[:, 0])
        np.concatenate(ct_parts, out=out[:, 2], casting="unsafe")
    ke = sum(p.size for p in en_parts)       # == k unless the loop stopped early
    if ke:
        np.concatenate(en_parts, out=out[:ke, 1])
    if not limited:
        return ScanResult(out, end)
    # Where the walk stops: the (max_pages+1)-th matching page, or the start of
    # region max_regions, whichever comes first (both are reported as walk_end).
    stop = None
    if mp and k:
        lens = out[:ke, 1] - out[:ke, 0]      # bytes
        lens >>= shift
        cum = np.cumsum(lens)
        done = int(cum[-1]) if ke else 0
        if done > mp:
            r = int(np.searchsorted(cum, mp, side="right"))
            stop = int(out[r, 0]) + (mp - (int(cum[r - 1]) if r else 0)) * ps
        elif k > ke and matched > mp:         # inside the region still open
            stop = int(out[ke, 0]) + (mp - done) * ps
    if mr >= 0 and k > mr:
        q = int(out[mr, 0])
        stop = q if stop is None else min(stop, q)
    if stop is None:
        return ScanResult(out, end)
    keep = int(np.searchsorted(out[:, 0], np.uint64(stop), side="left"))
    out = out[:keep].copy()
    if keep and (keep > ke or int(out[-1, 1]) > stop):
        out[-1, 1] = stop                     # cut at the stop (or still open there)
    return ScanResult(out, stop)
