# C declarations of the mprotect backend's C side (_mprotect.h, compiled from
# _mprotect.c into pagescan._core): the SIGSEGV handler and its range table.
# Every function returns 0 (or a count) on success and -errno on failure, and
# touches no Python object, so all run without the GIL.

from libc.stdint cimport uint8_t, uint64_t, int64_t


cdef extern from "_mprotect.h" nogil:
    struct pagescan_mp_stats:
        uint64_t faults, coarsened, coarsen_events, reprotect_failed, retries
        int64_t error
        uint64_t error_addr
        int64_t mappings, budget

    const int PAGESCAN_MP_MAX_RANGES

    int pagescan_mp_install()
    int pagescan_mp_installed()
    int pagescan_mp_register(uint64_t start, uint64_t end, uint64_t* handle)
    int pagescan_mp_unregister(uint64_t handle, int leave)
    int64_t pagescan_mp_arm(uint64_t handle, uint64_t start, uint64_t end)
    int pagescan_mp_snapshot(uint64_t handle, uint64_t start, uint64_t end, uint8_t* out,
                             int* exact)
    int64_t pagescan_mp_reset_regions(uint64_t handle, const uint64_t* regions,
                                      size_t nregions, const uint8_t* snap,
                                      uint64_t snap_start, size_t snap_pages, int checked)
    int pagescan_mp_mark_written(uint64_t handle, uint64_t start, uint64_t end)
    int pagescan_mp_get_stats(uint64_t handle, pagescan_mp_stats* out)
    int pagescan_mp_live()
    void pagescan_mp_touch(uint64_t addr)
    int pagescan_mp_overlapping(uint64_t start, uint64_t end)
    void pagescan_mp_inject_enomem(int count)
    void pagescan_mp_set_budget(int64_t budget)
    int pagescan_mp_checks()
    void pagescan_mp_set_checks(int on)
