# The mprotect backend's primitives (included by _core.pyx, after _kernel.pxi).
#
# The SIGSEGV handler and the range table are C (_mprotect.c, declared in
# _mprotect.h, and for Cython in _mprotect.pxd); these wrappers check nothing the
# backend has not checked, raise OSError with the call's name on -errno, and
# release the GIL around the C work.
# A scan takes a snapshot of the page states, runs the core's scan_run over it
# (the same filter/merge/limit rules as every other backend), then resets
# exactly the reported pages that the snapshot showed written.

from pagescan._mprotect cimport (
    pagescan_mp_stats, PAGESCAN_MP_MAX_RANGES, pagescan_mp_install, pagescan_mp_installed,
    pagescan_mp_register, pagescan_mp_unregister, pagescan_mp_arm, pagescan_mp_snapshot,
    pagescan_mp_reset_regions, pagescan_mp_mark_written, pagescan_mp_get_stats,
    pagescan_mp_live, pagescan_mp_touch, pagescan_mp_overlapping, pagescan_mp_inject_enomem,
    pagescan_mp_set_budget, pagescan_mp_checks, pagescan_mp_set_checks)

#: capacity of the mprotect backend's range table (trackers alive at once)
MP_MAX_RANGES = PAGESCAN_MP_MAX_RANGES


def mp_install():
    """Install the SIGSEGV handler, on top of whatever handler is in force now
    (which it chains to). True when it was installed by this call."""
    cdef int r = pagescan_mp_install()
    if r < 0:
        raise _oserror(-r, "sigaction(SIGSEGV)")
    return r == 1


def mp_installed():
    """Whether the SIGSEGV handler in force is the mprotect backend's."""
    return pagescan_mp_installed() == 1


def mp_register(start, end):
    """Track ``[start, end)``: every page DIRTY, protection unchanged. Returns a handle."""
    cdef uint64_t s = u64_arg(start, "start"), e = u64_arg(end, "end")
    cdef uint64_t handle = 0
    cdef int r
    with nogil:
        r = pagescan_mp_register(s, e, &handle)
    if r < 0:
        raise _oserror(-r, "mprotect tracker: register")
    return handle


def mp_unregister(handle, bint leave=False):
    """PROT_READ|PROT_WRITE back on the whole range (not with ``leave``: it is no
    longer the tracked mapping), then stop tracking it."""
    cdef uint64_t h = u64_arg(handle, "handle")
    cdef int r
    cdef int lv = leave
    with nogil:
        r = pagescan_mp_unregister(h, lv)
    if r < 0:
        raise _oserror(-r, "mprotect tracker: unregister")


def mp_arm(handle, start, end):
    """Reset ``[start, end)``: written pages back to PROT_READ. Returns how many
    pages could not be re-protected (they stay written)."""
    cdef uint64_t h = u64_arg(handle, "handle"), s = u64_arg(start, "start")
    cdef uint64_t e = u64_arg(end, "end")
    cdef int64_t r
    with nogil:
        r = pagescan_mp_arm(h, s, e)
    if r < 0:
        raise _oserror(<int>-r, "mprotect")
    return r


def mp_mark_written(handle, start, end):
    """Give write access back to ``[start, end)`` and count it written."""
    cdef uint64_t h = u64_arg(handle, "handle"), s = u64_arg(start, "start")
    cdef uint64_t e = u64_arg(end, "end")
    cdef int r
    with nogil:
        r = pagescan_mp_mark_written(h, s, e)
    if r < 0:
        raise _oserror(-r, "mprotect")


def mp_scan(handle, start, end, masks=None, max_pages=0, max_regions=None, bint reset=False):
    """``(ScanResult, left)``: the regions of ``[start, end)`` matching ``masks``
    (same rules as scan_pages), and with ``reset`` the written pages of those
    regions reset; ``left`` counts pages that could not be re-protected."""
    return _mp_scan(u64_arg(handle, "handle"), u64_arg(start, "start"), u64_arg(end, "end"),
                    masks, max_pages, max_regions, reset)


# the arguments as C values, checked by the def above (typed def arguments would
# let Cython truncate floats)
cdef _mp_scan(uint64_t handle, uint64_t start, uint64_t end, masks, max_pages, max_regions,
              bint reset):
    m = coerce_masks(masks)
    mp, mr = check_limits(max_pages, max_regions)
    cdef RegionArray out = RegionArray.__new__(RegionArray)
    cdef Filter f
    cdef uint64_t shift = PAGE_SHIFT
    cdef size_t n = <size_t>((end - start) >> shift) if end > start else 0
    cdef uint64_t walk_end = end
    cdef uint8_t* snap
    cdef int r = 0
    cdef int exact = 1
    cdef int64_t left = 0
    if n == 0:
        return pagescan_pair(ScanResult, out, end), 0
    snap = <uint8_t*>malloc(n)
    if snap == NULL:
        raise MemoryError()
    try:
        with nogil:
            r = pagescan_mp_snapshot(handle, start, end, snap, &exact)
        if r < 0:
            raise _oserror(-r, "mprotect tracker: scan")
        if m.matches_nothing:
            return pagescan_pair(ScanResult, out, end), 0
        f.inverted = m.inverted
        f.mask = m.mask
        f.anyof = m.anyof
        f.ret = m.return_mask
        f.max_pages = mp
        f.max_regions = mr
        with nogil:
            r = scan_run(<const uint8_t*>snap, <Py_ssize_t>n, start, <uint64_t>1 << shift, &f,
                         &out.data, &out.n, &out.cap, &walk_end)
            if r == 0 and reset and out.n:
                left = pagescan_mp_reset_regions(handle, out.data, <size_t>out.n, snap, start, n,
                                                 exact)
        if r < 0:
            raise MemoryError()
        if left < 0:
            raise _oserror(<int>-left, "mprotect")
    finally:
        free(snap)
    return pagescan_pair(ScanResult, out, walk_end), left


def mp_stats(handle=0):
    """Counters of one range, or (handle 0) of every range since the process started."""
    cdef pagescan_mp_stats st
    cdef int r = pagescan_mp_get_stats(u64_arg(handle, "handle"), &st)
    if r < 0:
        raise _oserror(-r, "mprotect tracker: stats")
    return {"faults": st.faults, "coarsened": st.coarsened,
            "coarsen_events": st.coarsen_events, "reprotect_failed": st.reprotect_failed,
            "retries": st.retries, "error": st.error, "error_addr": st.error_addr,
            "mappings": st.mappings, "budget": st.budget}


def mp_touch(addr):
    """Write fault the page at ``addr`` without changing its contents."""
    cdef uint64_t a = u64_arg(addr, "addr")
    with nogil:
        pagescan_mp_touch(a)


def mp_live():
    """How many ranges the mprotect backend tracks now (all trackers)."""
    return pagescan_mp_live()


def mp_overlapping(start, end):
    """How many ranges the mprotect backend tracks overlap ``[start, end)``."""
    return pagescan_mp_overlapping(u64_arg(start, "start"), u64_arg(end, "end"))


def mp_set_budget(budget):
    """How many mappings the tracking of all ranges may add before it coarsens."""
    pagescan_mp_set_budget(<int64_t>check_int(budget, "budget", maximum=(1 << 63) - 1))


def mp_inject_enomem(count):
    """Test hook: the fault handler's next ``count`` mprotect() calls fail with
    ENOMEM, as when vm.max_map_count is reached."""
    pagescan_mp_inject_enomem(int_arg(count, "count"))


def mp_checks():
    """Whether the trap checks, before every protection change, that a range is
    still the mapping it registered (PROCMAP_QUERY, Linux 6.11); ``OSError(ENXIO)``
    from arm/scan/mark_written/unregister where it is not."""
    cdef int r
    with nogil:
        r = pagescan_mp_checks()
    return r == 1


def mp_set_checks(bint on):
    """Test hook: False makes :func:`mp_checks` false and ranges registered from
    then on unchecked, as on a kernel without PROCMAP_QUERY."""
    pagescan_mp_set_checks(on)
