/* The mprotect backend's C side: a SIGSEGV handler and its table of tracked ranges.
 *
 * Compiled into pagescan._core (pagescan/_mprotect.c); the Python-facing
 * wrappers are in _mprotect.pxi, the backend in backends/mprotect.py, whose
 * docstring describes the design. Every function returns 0 (or a count) on
 * success and -errno on failure; none of them raises or touches Python objects,
 * so all run without the GIL.
 *
 * A range is named by a handle: (registration cookie << 8) | slot. A stale handle
 * (unregistered, or inherited through fork) gets -ESTALE, never another range.
 */
#ifndef PAGESCAN_MPROTECT_H
#define PAGESCAN_MPROTECT_H

#include <stddef.h>
#include <stdint.h>

/* Capacity of the range table (one slot per tracker). */
#define PAGESCAN_MP_MAX_RANGES 64

/* Per-page states (one byte each, changed with atomics only). */
#define PAGESCAN_MP_CLEAN 0       /* PROT_READ: the next write faults              */
#define PAGESCAN_MP_DIRTY 1       /* PROT_READ|PROT_WRITE: written since the reset */
#define PAGESCAN_MP_COLLECTING 2  /* a collector is re-protecting it               */
#define PAGESCAN_MP_UNPROT 3      /* a fault handler is giving write access back   */
#define PAGESCAN_MP_COARSE 4      /* unprotected by coarsening (map count ran out) */

/* Statistics of one range (or, with the handle 0, of every range ever tracked). */
struct pagescan_mp_stats {
    uint64_t faults;            /* write faults handled                               */
    uint64_t coarsened;         /* pages unprotected without a write (coarsening)     */
    uint64_t coarsen_events;    /* faults that needed coarsening                      */
    uint64_t reprotect_failed;  /* pages a reset could not re-protect (left written)  */
    uint64_t retries;           /* faults on a just-unregistered range, retried       */
    int64_t error;              /* sticky: errno of a fault that could not be handled */
    uint64_t error_addr;        /* ... and its address                                */
    int64_t mappings;           /* estimated mappings the tracking added (boundaries
                                   between PROT_READ and PROT_READ|PROT_WRITE pages) */
    int64_t budget;             /* the most mappings all ranges may add together     */
};

/* Install the SIGSEGV handler (again on top, when another one replaced it since).
 * Returns 1 when it was installed now, 0 when it already was on top. */
int pagescan_mp_install(void);
/* Whether the SIGSEGV disposition in force is this handler. */
int pagescan_mp_installed(void);

/* Start tracking [start, end) (page-aligned): every page DIRTY, protection left
 * alone. -ENOMEM: not entirely mapped; -EEXIST: overlaps a tracked range;
 * -ENOSPC: the table is full. On success *handle names the range. */
int pagescan_mp_register(uint64_t start, uint64_t end, uint64_t *handle);
/* Stop tracking: PROT_READ|PROT_WRITE back on the whole range (not with
 * `leave`: the caller found it is no longer the tracked mapping), then retire
 * it. -ENXIO: retired, protection left alone (pagescan_mp_checks). */
int pagescan_mp_unregister(uint64_t handle, int leave);

/* Reset (arm) [start, end), a part of the range: every DIRTY page goes back to
 * PROT_READ and CLEAN. Returns how many pages could not be re-protected (left
 * DIRTY: reported as written again) or -errno (-ENXIO: no longer the tracked
 * mapping, see pagescan_mp_checks). */
int64_t pagescan_mp_arm(uint64_t handle, uint64_t start, uint64_t end);

/* Per-page categories of [start, end) into out[]: WPALLOWED for every page,
 * plus WRITTEN unless the page is CLEAN. -ENXIO: no longer the tracked mapping
 * (pagescan_mp_checks); *exact: whether every VMA of the span was checked (0:
 * a range split in many VMAs had the quick check, which does not see a hole
 * or a PROT_NONE VMA inside it; pass it on to pagescan_mp_reset_regions). */
int pagescan_mp_snapshot(uint64_t handle, uint64_t start, uint64_t end, uint8_t *out,
                         int *exact);

/* Reset exactly the pages of `regions` (page_region triples) that `snap` (a
 * snapshot of the range starting at snap_start, snap_pages long) shows written
 * and that are still DIRTY. `checked`: the snapshot's *exact (0: the span to
 * re-protect is checked first). Returns pages left DIRTY (not re-protected) or
 * -errno. */
int64_t pagescan_mp_reset_regions(uint64_t handle, const uint64_t *regions, size_t nregions,
                                  const uint8_t *snap, uint64_t snap_start, size_t snap_pages,
                                  int checked);

/* Give write access back to [start, end) and mark it DIRTY (before a kernel
 * write into the range: read() into a tracked buffer). */
int pagescan_mp_mark_written(uint64_t handle, uint64_t start, uint64_t end);

/* Statistics of one range (handle != 0) or global ones (handle == 0). */
int pagescan_mp_get_stats(uint64_t handle, struct pagescan_mp_stats *out);

/* Write fault the page at addr without changing its contents (a CAS of a byte
 * with itself): the mapping gets its anon_vma now, before arming splits it. */
void pagescan_mp_touch(uint64_t addr);

/* Live ranges in the table. */
int pagescan_mp_live(void);
/* How many live ranges overlap [start, end). */
int pagescan_mp_overlapping(uint64_t start, uint64_t end);

/* How many mappings the tracking of all ranges may add (vm.max_map_count minus
 * what the rest of the process uses, minus a headroom). Past it, a write that
 * would split a mapping coarsens instead, before mprotect() fails. */
void pagescan_mp_set_budget(int64_t budget);

/* Whether the range's mappings are checked before every protection change
 * (PROCMAP_QUERY, Linux 6.11): register records the identity of the range's
 * VMAs, and every call that changes protections (arm, scan, mark_written,
 * unregister, the fault handler) first checks that the
 * VMAs still have it and a protection the tracker sets (readable, not
 * executable). Where they do not (unmapped, replaced, made PROT_NONE or
 * PROT_EXEC), the call returns -ENXIO and changes nothing; the handler passes
 * the fault on. 0: this kernel cannot tell (the caller checks
 * /proc/self/maps itself). */
int pagescan_mp_checks(void);
/* Test hook: 0 makes pagescan_mp_checks() false and ranges registered from
 * then on unchecked, as on a kernel without PROCMAP_QUERY. */
void pagescan_mp_set_checks(int on);

/* Test hook: the next `count` mprotect() calls made by the fault handler fail
 * with ENOMEM, as when vm.max_map_count is reached. */
void pagescan_mp_inject_enomem(int count);

#endif
