/* The mprotect backend's C side: a SIGSEGV handler and its table of tracked ranges.
 *
 * Every tracked page has a one-byte state, changed only with atomics:
 *
 *   CLEAN       PROT_READ; the next write faults.
 *   UNPROT      a fault handler owns the page and is giving write access back.
 *   DIRTY       PROT_READ|PROT_WRITE; written since the last reset.
 *   COLLECTING  a collector owns the page and is re-protecting it.
 *   COARSE      unprotected by a coarsening handler (vm.max_map_count ran out).
 *
 * Write fault on a page:  CLEAN|DIRTY -CAS-> UNPROT, mprotect(RW), store DIRTY.
 *                         (DIRTY faults only when a reset's mprotect raced the
 *                         handler: the same steps heal it.)
 *                         COLLECTING|UNPROT|COARSE: wait (sched_yield) until
 *                         the owner is done, then look again.
 * Collect/reset a page:   DIRTY -CAS-> COLLECTING, mprotect(READ), store CLEAN.
 *                         (a collect claims every reported written page first,
 *                         then makes one mprotect() call over their span)
 *
 * Only the owner of a page (the thread whose CAS won) changes its protection,
 * so no interleaving leaves a page writable while its state says CLEAN: a
 * write that lands before the collector's mprotect is in the page the collect
 * reports; one after it faults, waits for CLEAN and makes the page DIRTY again
 * for the next collect. Collectors never wait for handlers (they skip pages a
 * handler owns: those stay DIRTY), handlers only wait for collectors and for the
 * one coarsening handler, so nothing can deadlock.
 *
 * vm.max_map_count: every isolated written page splits a mapping in three. The
 * tracking keeps an estimate of the mappings it added (the boundaries between
 * read-only and writable pages inside its ranges) and a budget set from Python
 * (vm.max_map_count minus the rest of the process, minus a headroom, so that
 * malloc and thread stacks keep working). When a write would go past the
 * budget, or mprotect() fails with ENOMEM anyway, the handler coarsens instead
 * of splitting or looping: it gives
 * write access back to a larger span whose change merges mappings instead of
 * splitting them (the gap to the nearest written page, then aligned blocks of
 * 64, 512, 4096, ... pages, then the whole range) and marks every page of it
 * DIRTY: a conservative answer, never a lost write. When even the whole range
 * fails, the handler records a sticky error (scan() raises it), writes a
 * message naming vm.max_map_count to stderr and passes the fault on to the
 * previous SIGSEGV handler, which normally ends the process: it never loops.
 *
 * The handler is async-signal-safe: atomics, mprotect, sched_yield, sigaction,
 * pthread_sigmask, write; no allocation (state arrays are mmap'd by register).
 * Faults outside tracked ranges, and every fault that is not a write-protection
 * fault, go to the previous handler (faulthandler keeps working).
 */
#define _GNU_SOURCE
#include "_mprotect.h"
#include "_kernel.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <ucontext.h>
#include <unistd.h>

#define LOAD(p) __atomic_load_n((p), __ATOMIC_SEQ_CST)
#define LOAD_RELAXED(p) __atomic_load_n((p), __ATOMIC_RELAXED)
#define STORE(p, v) __atomic_store_n((p), (v), __ATOMIC_SEQ_CST)
/* a collector publishing pages after its mprotect(): the system call orders the
 * protection change before the stores, release orders the stores themselves */
#define STORE_RELEASE(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)
#define ADD(p, v) __atomic_add_fetch((p), (v), __ATOMIC_SEQ_CST)
#define CAS(p, expp, v) \
    __atomic_compare_exchange_n((p), (expp), (v), 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)

#define CLEAN PAGESCAN_MP_CLEAN
#define DIRTY PAGESCAN_MP_DIRTY
#define COLLECTING PAGESCAN_MP_COLLECTING
#define UNPROT PAGESCAN_MP_UNPROT
#define COARSE PAGESCAN_MP_COARSE

#define CAT_WPALLOWED 1
#define CAT_WRITTEN 2

/* the gap to a written neighbour that coarsening fills first */
#define NEIGHBOUR_PAGES 64
/* how long after unregister() a fault in the range is taken for one raised
 * before it (and retried) rather than for a genuine fault */
#define RETIRED_GRACE_NS 1000000000ULL

/* The identity of a part of a tracked range, as PROCMAP_QUERY describes its VMAs
 * at register: no file (inode and device 0: anonymous private memory), or a file
 * and where in it (the file offset of address x is x + base). */
struct mp_seg {
    uint64_t start, end;
    uint64_t inode, base;
    uint32_t dev_major, dev_minor;
    uint32_t shared, pad;
};

struct mp_range {
    uint64_t start, end;        /* written only while seq is odd          */
    uint8_t *state;             /* npages bytes, mmap'd                    */
    struct mp_seg *segs;        /* nsegs, in the same mapping (0: unchecked) */
    size_t nsegs;
    size_t npages, map_len;
    uint64_t cookie;            /* 0: never used                           */
    unsigned seq;               /* seqlock over start/end/state/npages     */
    int active;                 /* faults in the range are handled         */
    int retired;                /* unregistered: faults are retried ...    */
    uint64_t retired_ns;        /* ... for RETIRED_GRACE_NS after this     */
    int inflight;               /* handlers using the state array now      */
    struct pagescan_mp_stats st;   /* st.mappings: this range's estimate     */
};

static struct mp_range ranges[PAGESCAN_MP_MAX_RANGES];
static struct pagescan_mp_stats totals;
static uint64_t next_cookie = 1;
static uint64_t page_size, page_shift;

static struct sigaction prev_act[2];
static int prev_idx;
static int chain_depth;
static int coarsen_lock;
static int table_lock;
static int inject_enomem;
static int atfork_done;
static int64_t map_budget = INT64_MAX;

static void mp_handler(int sig, siginfo_t *si, void *ctx);

/* ------------------------------------------------------------------ helpers */

static void yield(void) { syscall(SYS_sched_yield); }

/* --- asynchronous signals

 * Every wait in this file is for a page, a lock or a seqlock that another
 * context owns: the handler waits for a collector (COLLECTING), another
 * handler (UNPROT), a coarsening handler or mark_written (COARSE,
 * coarsen_lock), and register/unregister (the seqlock). If the owner were the
 * very thread the handler runs on (an asynchronous signal handler that writes
 * tracked memory, run by the kernel in the middle of a collect or of the
 * SIGSEGV handler), the wait would never end. So no owner lets an asynchronous
 * signal in: the SIGSEGV handler runs with them blocked (sa_mask), and every
 * section that owns something a handler waits for blocks them
 * (pthread_sigmask) until it is done; they are delivered right after. The
 * synchronous signals (a fault of the code itself) are never blocked: blocked,
 * the kernel would kill the process instead of running their handler. */
static sigset_t async_signals;
static int async_signals_ready;

static void init_async_signals(void) {
    if (!LOAD(&async_signals_ready)) {
        sigset_t set;
        sigfillset(&set);
        sigdelset(&set, SIGSEGV);       /* blocked in its own handler anyway (no SA_NODEFER) */
        sigdelset(&set, SIGBUS);
        sigdelset(&set, SIGFPE);
        sigdelset(&set, SIGILL);
        sigdelset(&set, SIGTRAP);
        sigdelset(&set, SIGSYS);
        async_signals = set;
        STORE(&async_signals_ready, 1);
    }
}

/* Block asynchronous signals on this thread (a section owning pages/locks). */
static void block_async(sigset_t *old) {
    init_async_signals();
    pthread_sigmask(SIG_BLOCK, &async_signals, old);
}

static void unblock_async(const sigset_t *old) { pthread_sigmask(SIG_SETMASK, old, NULL); }

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);   /* async-signal-safe */
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static void spin_lock(int *lock) {
    int expected = 0;
    while (!CAS(lock, &expected, 1)) {
        expected = 0;
        yield();
    }
}

static void spin_unlock(int *lock) { STORE(lock, 0); }

static void init_page_size(void) {
    if (page_size == 0) {
        uint64_t ps = (uint64_t)sysconf(_SC_PAGESIZE), shift = 0;
        while (((uint64_t)1 << shift) < ps)
            shift++;
        page_shift = shift;
        STORE(&page_size, ps);
    }
}

static void count(struct mp_range *r, size_t field_offset, uint64_t n) {
    ADD((uint64_t *)((char *)&r->st + field_offset), n);
    ADD((uint64_t *)((char *)&totals + field_offset), n);
}

#define COUNT(r, field, n) count((r), offsetof(struct pagescan_mp_stats, field), (n))

/* --- the mapping estimate: boundaries between read-only and writable pages */

/* whether a page in this state is (or is about to be) read-only */
static int ro(uint8_t s) { return s == CLEAN || s == COLLECTING; }

static void add_mappings(struct mp_range *r, int64_t delta) {
    if (delta) {
        ADD(&r->st.mappings, delta);
        ADD(&totals.mappings, delta);
    }
}

static int over_budget(int64_t delta) {
    return delta > 0 && LOAD(&totals.mappings) + delta > LOAD(&map_budget);
}

/* Boundaries among pages [a, b] of r (pairs (i-1, i), a < i <= b), with page
 * `self` taken as read-only. */
static int64_t boundaries(struct mp_range *r, size_t a, size_t b, size_t self) {
    int64_t n = 0;
    size_t i;
    int prev;
    if (b >= r->npages)
        b = r->npages - 1;
    if (a > b)
        return 0;
    prev = a == self ? 1 : ro(LOAD_RELAXED(&r->state[a]));
    for (i = a + 1; i <= b; i++) {
        int cur = i == self ? 1 : ro(LOAD_RELAXED(&r->state[i]));
        n += cur != prev;
        prev = cur;
    }
    return n;
}

/* The change in boundaries if pages [a, b) became writable (self read-only now). */
static int64_t delta_writable(struct mp_range *r, size_t a, size_t b, size_t self) {
    int64_t before = boundaries(r, a ? a - 1 : 0, b, self), after = 0;
    if (a > 0)
        after += a - 1 == self || ro(LOAD_RELAXED(&r->state[a - 1]));
    if (b < r->npages)
        after += b == self || ro(LOAD_RELAXED(&r->state[b]));
    return after - before;
}

/* The change in boundaries if pages [a, b), writable now, became read-only. */
static int64_t delta_readonly(struct mp_range *r, size_t a, size_t b) {
    int64_t d = 0;
    if (a > 0)
        d += ro(LOAD_RELAXED(&r->state[a - 1])) ? -1 : 1;
    if (b < r->npages)
        d += ro(LOAD_RELAXED(&r->state[b])) ? -1 : 1;
    return d;
}

/* Boundaries that pages [a, b) take part in (with their neighbours): counted
 * before and after a change to [a, b), the difference is the change. */
static int64_t window(struct mp_range *r, size_t a, size_t b) {
    return boundaries(r, a ? a - 1 : 0, b, (size_t)-1);
}

/* mprotect() as the fault handler calls it (the test hook can make it fail) */
static int handler_mprotect(uint64_t addr, uint64_t len, int prot) {
    if (LOAD_RELAXED(&inject_enomem) > 0 && __atomic_sub_fetch(&inject_enomem, 1,
                                                               __ATOMIC_SEQ_CST) >= 0) {
        errno = ENOMEM;
        return -1;
    }
    return mprotect((void *)addr, len, prot);
}

/* The range of a handle, if it is still registered. */
static struct mp_range *lookup(uint64_t handle) {
    unsigned slot = handle & 0xFF;
    struct mp_range *r;
    if (slot >= PAGESCAN_MP_MAX_RANGES)
        return NULL;
    r = &ranges[slot];
    if (LOAD(&r->cookie) != handle >> 8 || !LOAD(&r->active))
        return NULL;
    return r;
}

static int sub_range(struct mp_range *r, uint64_t start, uint64_t end, size_t *first,
                     size_t *n) {
    if (start % page_size || end % page_size || start >= end || start < r->start
        || end > r->end)
        return -EINVAL;
    *first = (start - r->start) >> page_shift;
    *n = (end - start) >> page_shift;
    return 0;
}

/* --------------------------------------------- is it still the tracked mapping?
 *
 * A tracked range can be unmapped and something else mapped at its address
 * (munmap then mmap, or mmap(MAP_FIXED) over it). Changing the protection there
 * would change memory that is not the tracker's (r-x made r--, or rw-). So
 * before every change of protection the VMAs of the span are compared with the
 * identity recorded at register, through PROCMAP_QUERY (Linux 6.11) on an open
 * /proc/self/maps: one ioctl per VMA (about a microsecond), no text to format
 * or parse. A VMA is still the tracker's when it has the recorded identity (no
 * file, or the same device, inode and file offset; shared or private as
 * recorded) and a protection the tracker could have set: readable, not
 * executable (PROT_READ or PROT_READ|PROT_WRITE). A hole or any other VMA:
 * -ENXIO, and nothing is changed. The handler asks too, for the faulting page
 * (an ioctl is async-signal-safe), and passes a fault on a VMA that is not the
 * tracker's to the previous handler instead of giving write access to it.
 *
 * What it cannot tell: a new anonymous private mapping with PROT_READ or
 * PROT_READ|PROT_WRITE at the same place looks like the tracked one
 * (PROCMAP_QUERY shows no anon_vma), and so does the same file at the same
 * offset. A change between the check and the mprotect() (another thread
 * unmapping tracked memory while it is collected) is not seen.
 *
 * Without PROCMAP_QUERY (before 6.11: ENOTTY) nothing is checked here, and
 * pagescan_mp_checks() says so: the backend compares /proc/self/maps at reset. */

#define CHECK_UNKNOWN 0
#define CHECK_WORKS 1
#define CHECK_NONE (-1)
#define CANNOT_TELL 1

static int maps_fd = -1;        /* /proc/self/maps, opened by the first register */
static dev_t maps_dev;
static ino_t maps_ino;
static int procmap = CHECK_UNKNOWN;
static int checks_off;          /* test hook: as if the kernel had no PROCMAP_QUERY */
static int fd_lock;

static int raw_query(int fd, uint64_t addr, uint64_t want, struct pagescan_procmap_query *q) {
    memset(q, 0, sizeof(*q));
    q->size = sizeof(*q);
    q->query_flags = PAGESCAN_PROCMAP_COVERING_OR_NEXT_VMA | want;
    q->query_addr = addr;
    return ioctl(fd, PAGESCAN_PROCMAP_QUERY, q) < 0 ? -errno : 0;
}

/* Open /proc/self/maps (fd_lock held). */
static int open_maps(void) {
    struct stat st;
    int fd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    if (fstat(fd, &st) < 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    maps_dev = st.st_dev;
    maps_ino = st.st_ino;
    STORE(&maps_fd, fd);
    return 0;
}

/* Whether fd is still the file open_maps() opened (not closed by other code,
 * its number taken by another file). */
static int fd_is_ours(int fd) {
    struct stat st;
    return fd >= 0 && fstat(fd, &st) == 0 && st.st_dev == maps_dev && st.st_ino == maps_ino;
}

/* Open /proc/self/maps and find out whether the kernel has PROCMAP_QUERY (once). */
static void ensure_maps(void) {
    spin_lock(&fd_lock);
    if (LOAD(&procmap) != CHECK_NONE && LOAD(&maps_fd) < 0 && open_maps() < 0)
        STORE(&procmap, CHECK_NONE);            /* no /proc: nothing can be checked */
    if (LOAD(&procmap) == CHECK_UNKNOWN) {
        struct pagescan_procmap_query q;
        int rc = raw_query(maps_fd, (uint64_t)(uintptr_t)&procmap, 0, &q);
        STORE(&procmap, rc == 0 || rc == -ENOENT ? CHECK_WORKS : CHECK_NONE);
    }
    spin_unlock(&fd_lock);
}

/* The VMA covering addr, or the next one (that has the flags `want`): 0,
 * -ENOENT (none), or CANNOT_TELL. Outside the handler, a descriptor that other
 * code closed (and whose number may name another file now) is replaced. */
static int query_want(uint64_t addr, uint64_t want, struct pagescan_procmap_query *q,
                      int in_handler) {
    int fd = LOAD(&maps_fd), rc;
    if (LOAD(&procmap) != CHECK_WORKS || LOAD(&checks_off) || fd < 0)
        return CANNOT_TELL;
    rc = raw_query(fd, addr, want, q);
    if (rc == 0 || rc == -ENOENT)
        return rc;
    if (in_handler)
        return CANNOT_TELL;
    spin_lock(&fd_lock);
    if (LOAD(&maps_fd) == fd && !fd_is_ours(fd)) {
        STORE(&maps_fd, -1);                    /* not closed: the number is not ours */
        open_maps();
    }
    fd = LOAD(&maps_fd);
    rc = fd < 0 ? CANNOT_TELL : raw_query(fd, addr, want, q);
    spin_unlock(&fd_lock);
    return rc == 0 || rc == -ENOENT ? rc : CANNOT_TELL;
}

static int query(uint64_t addr, struct pagescan_procmap_query *q, int in_handler) {
    return query_want(addr, 0, q, in_handler);
}

static int seg_has_file(const struct mp_seg *g) {
    return g->inode != 0 || g->dev_major != 0 || g->dev_minor != 0;
}

static void seg_from_query(struct mp_seg *g, const struct pagescan_procmap_query *q) {
    memset(g, 0, sizeof(*g));
    g->inode = q->inode;
    g->dev_major = q->dev_major;
    g->dev_minor = q->dev_minor;
    g->shared = (q->vma_flags & PAGESCAN_PROCMAP_VMA_SHARED) != 0;
    g->base = seg_has_file(g) ? q->vma_offset - q->vma_start : 0;
}

static int same_identity(const struct mp_seg *x, const struct mp_seg *y) {
    return x->inode == y->inode && x->dev_major == y->dev_major
           && x->dev_minor == y->dev_minor && x->shared == y->shared && x->base == y->base;
}

/* The identity of [start, end), VMA by VMA, merged where it is the same, into
 * out[0, cap). Returns how many parts it has (also past cap), -ENOMEM where
 * the range is not mapped, -ENOSYS when it cannot be told. */
static long build_segs(uint64_t start, uint64_t end, struct mp_seg *out, size_t cap) {
    struct pagescan_procmap_query q;
    struct mp_seg cur, g;
    uint64_t at = start;
    size_t n = 0;
    while (at < end) {
        int rc = query(at, &q, 0);
        if (rc == CANNOT_TELL)
            return -ENOSYS;
        if (rc < 0 || q.vma_start > at)
            return -ENOMEM;
        seg_from_query(&g, &q);
        g.start = at;
        g.end = q.vma_end < end ? q.vma_end : end;
        if (n > 0 && same_identity(&cur, &g) && cur.end == g.start) {
            cur.end = g.end;
        } else {
            if (n > 0 && n <= cap)
                out[n - 1] = cur;
            cur = g;
            n++;
        }
        at = q.vma_end;
    }
    if (n > 0 && n <= cap)
        out[n - 1] = cur;
    return (long)n;
}

/* Whether the VMA q, over [at, b) of r, is the tracker's: readable, not
 * executable, with the identity of every part of r it overlaps. *k: the first
 * part that may overlap (advanced). */
static int vma_ok(const struct mp_range *r, const struct pagescan_procmap_query *q,
                  uint64_t at, uint64_t b, size_t *k) {
    struct mp_seg g;
    uint64_t e = q->vma_end < b ? q->vma_end : b;
    size_t j;
    if (!(q->vma_flags & PAGESCAN_PROCMAP_VMA_READABLE)
        || (q->vma_flags & PAGESCAN_PROCMAP_VMA_EXECUTABLE))
        return 0;
    seg_from_query(&g, q);
    while (*k < r->nsegs && r->segs[*k].end <= at)
        (*k)++;
    for (j = *k; j < r->nsegs && r->segs[j].start < e; j++) {
        const struct mp_seg *s = &r->segs[j];
        if (g.inode != s->inode || g.dev_major != s->dev_major || g.dev_minor != s->dev_minor
            || g.shared != s->shared || (seg_has_file(s) && g.base != s->base))
            return 0;
    }
    return 1;
}

/* 0 when [a, b) of r is still the tracked mapping (or it cannot be told),
 * -ENXIO when it is not: a hole, a VMA of another identity, or a protection
 * the tracker never sets (not readable, or executable). One ioctl per VMA. */
static int check_span(const struct mp_range *r, uint64_t a, uint64_t b, int in_handler) {
    struct pagescan_procmap_query q;
    uint64_t at = a;
    size_t k = 0;
    if (r->nsegs == 0)
        return 0;
    while (at < b) {
        int rc = query(at, &q, in_handler);
        if (rc == CANNOT_TELL)
            return 0;
        if (rc < 0 || q.vma_start > at || !vma_ok(r, &q, at, b, &k))
            return -ENXIO;
        at = q.vma_end;
    }
    return 0;
}

/* A range of anonymous private memory whose tracking split it into more VMAs
 * than this is checked by a scan with check_quick() (a walk would cost an ioctl
 * per VMA, more than the scan itself: two per isolated written page). */
#define QUICK_ABOVE_VMAS 8

static int anon_only(const struct mp_range *r) {
    return r->nsegs == 1 && !seg_has_file(&r->segs[0]) && !r->segs[0].shared;
}

/* The check of a scan that changes nothing, in four ioctls whatever the number
 * of VMAs, for a range of anonymous private memory: the VMAs at both ends are
 * the tracker's, and no VMA in between is executable or has a file (shmem and
 * other shared memory have one). Not seen: a hole or a PROT_NONE VMA strictly
 * inside (check_span() sees them before any change of protection there). */
static int check_quick(const struct mp_range *r, uint64_t a, uint64_t b) {
    static const uint64_t want[2] = {PAGESCAN_PROCMAP_VMA_EXECUTABLE,
                                     PAGESCAN_PROCMAP_FILE_BACKED_VMA};
    struct pagescan_procmap_query q;
    uint64_t ends[2] = {a, b - page_size};
    size_t k = 0;
    int i, rc;
    for (i = 0; i < 2; i++) {
        if ((rc = query(ends[i], &q, 0)) == CANNOT_TELL)
            return 0;
        if (rc < 0 || q.vma_start > ends[i] || !vma_ok(r, &q, ends[i], b, &k))
            return -ENXIO;
    }
    for (i = 0; i < 2; i++) {
        if ((rc = query_want(a, want[i], &q, 0)) == CANNOT_TELL)
            return 0;
        if (rc == 0 && q.vma_start < b)
            return -ENXIO;
    }
    return 0;
}

/* The check of a scan over [a, b): check_span() unless the range is split in
 * many VMAs (then check_quick(), *exact = 0: a reset must check its span). */
static int check_scan(const struct mp_range *r, uint64_t a, uint64_t b, int *exact) {
    *exact = 1;
    if (r->nsegs != 0 && anon_only(r)
        && LOAD(&r->st.mappings) + 1 > QUICK_ABOVE_VMAS) {
        *exact = 0;
        return check_quick(r, a, b);
    }
    return check_span(r, a, b, 0);
}

int pagescan_mp_checks(void) {
    ensure_maps();
    return LOAD(&procmap) == CHECK_WORKS && !LOAD(&checks_off);
}

void pagescan_mp_set_checks(int on) { STORE(&checks_off, !on); }

/* ------------------------------------------------------------- the handler */

/* The active range holding addr, with its inflight count raised; NULL if none.
 * *retired tells whether addr is in a range unregistered a moment ago. A slot
 * being written (odd seq) is waited for: the writer is another thread, in C,
 * for a few stores. */
static struct mp_range *enter(uint64_t addr, int *retired) {
    int i;
    for (i = 0; i < PAGESCAN_MP_MAX_RANGES; i++) {
        struct mp_range *r = &ranges[i];
        unsigned s1;
        uint64_t start, end;
        while ((s1 = LOAD(&r->seq)) & 1)
            yield();
        start = LOAD(&r->start);
        end = LOAD(&r->end);
        if (addr < start || addr >= end)
            continue;
        if (!LOAD(&r->active)) {
            if (LOAD(&r->retired) && LOAD(&r->seq) == s1
                && now_ns() - LOAD(&r->retired_ns) < RETIRED_GRACE_NS)
                *retired = 1;
            continue;
        }
        ADD(&r->inflight, 1);
        if (LOAD(&r->seq) != s1 || !LOAD(&r->active)) {
            ADD(&r->inflight, -1);
            continue;
        }
        return r;
    }
    return NULL;
}

static void leave(struct mp_range *r) { ADD(&r->inflight, -1); }

/* Claim the pages of [a, b) but `self` for coarsening (COARSE): CLEAN and DIRTY
 * ones; wait for collectors; skip pages other handlers own. Returns how many
 * were CLEAN (unprotected without a write). */
static uint64_t claim_coarse(struct mp_range *r, size_t a, size_t b, size_t self) {
    uint64_t newly = 0;
    size_t i;
    for (i = a; i < b; i++) {
        uint8_t *p = &r->state[i];
        if (i == self)
            continue;
        for (;;) {
            uint8_t s = LOAD(p);
            if (s == CLEAN || s == DIRTY) {
                if (CAS(p, &s, COARSE)) {
                    newly += s == CLEAN;
                    break;
                }
                continue;
            }
            if (s == COLLECTING) {
                yield();
                continue;
            }
            break;              /* UNPROT (another handler's) or COARSE (already ours) */
        }
    }
    return newly;
}

static void release_coarse(struct mp_range *r, size_t a, size_t b) {
    size_t i;
    for (i = a; i < b; i++) {
        uint8_t s = COARSE;
        CAS(&r->state[i], &s, DIRTY);
    }
}

/* Try to give write access back to [a, b) (pages of r); 0 or errno. */
static int try_span(struct mp_range *r, size_t a, size_t b, size_t self, size_t *lo,
                    size_t *hi, uint64_t *newly) {
    int64_t delta = delta_writable(r, a, b, self);
    if (over_budget(delta))
        return ENOMEM;          /* would add mappings past the budget: a larger span */
    if (check_span(r, r->start + (a << page_shift), r->start + (b << page_shift), 1) < 0)
        return ENXIO;           /* not all of it is the tracked mapping any more */
    *newly += claim_coarse(r, a, b, self);
    if (a < *lo)
        *lo = a;
    if (b > *hi)
        *hi = b;
    if (handler_mprotect(r->start + (a << page_shift), (uint64_t)(b - a) << page_shift,
                         PROT_READ | PROT_WRITE) == 0) {
        add_mappings(r, delta);
        return 0;
    }
    return errno;
}

/* mprotect(RW) of page p failed with ENOMEM, or would go past the budget:
 * unprotect a larger span instead. 0 on success, else the errno of the last
 * attempt. p is owned (UNPROT). */
static int coarsen(struct mp_range *r, size_t p) {
    size_t n = r->npages, lo = p, hi = p + 1, a, b, q, left = 0, right = 0;
    size_t sz;
    uint64_t newly = 0;
    int err = ENOMEM, have_left = 0, have_right = 0;
    spin_lock(&coarsen_lock);
    /* 1. fill the gap to the nearest page that is not CLEAN: the change then
     *    extends that page's mapping instead of splitting one */
    for (q = p; q > 0 && p - q < NEIGHBOUR_PAGES; q--) {
        if (LOAD(&r->state[q - 1]) != CLEAN) {
            have_left = 1;
            left = q;       /* span [q, p] */
            break;
        }
    }
    for (q = p + 1; q < n && q - p <= NEIGHBOUR_PAGES; q++) {
        if (LOAD(&r->state[q]) != CLEAN) {
            have_right = 1;
            right = q;      /* span [p, q) */
            break;
        }
    }
    if (have_left && have_right && right > p + 1 && right - p < p + 1 - left) {
        if ((err = try_span(r, p, right, p, &lo, &hi, &newly)) == 0)
            goto done;
        have_right = 0;
    }
    if (have_left && left < p && (err = try_span(r, left, p + 1, p, &lo, &hi, &newly)) == 0)
        goto done;
    if (have_right && right > p + 1 && (err = try_span(r, p, right, p, &lo, &hi, &newly)) == 0)
        goto done;
    /* 2. aligned blocks, 8 times larger each time, up to the whole range */
    for (sz = 64;; sz *= 8) {
        if (sz >= n) {
            a = 0;
            b = n;
        } else {
            a = p & ~(sz - 1);
            b = a + sz < n ? a + sz : n;
        }
        err = try_span(r, a, b, p, &lo, &hi, &newly);
        if (err == 0 || err != ENOMEM || (a == 0 && b == n))
            break;
    }
done:
    /* claimed pages become DIRTY whether it worked or not (conservative) */
    release_coarse(r, lo, hi);
    spin_unlock(&coarsen_lock);
    COUNT(r, coarsen_events, 1);
    COUNT(r, coarsened, newly);
    return err;
}

enum { HANDLED, NOT_OURS, RETRY, FAILED };

static int handle_write(uint64_t addr, int *err_out) {
    uint64_t page = addr & ~(page_size - 1);
    int retired = 0, result = HANDLED;
    struct mp_range *r = enter(addr, &retired);
    uint8_t *p;
    size_t i;
    if (r == NULL) {
        /* A fault raised before unregister() made the range writable: retry
         * the write. Past the grace period a fault there is genuine. */
        if (retired) {
            ADD(&totals.retries, 1);
            yield();
            return RETRY;
        }
        return NOT_OURS;
    }
    i = (page - r->start) >> page_shift;
    p = &r->state[i];
    if (check_span(r, page, page + page_size, 1) < 0) {
        /* unmapped and mapped again, or protected PROT_NONE/PROT_EXEC by the
         * program: not a tracking fault, and no write access to give */
        leave(r);
        return NOT_OURS;
    }
    for (;;) {
        uint8_t s = LOAD(p);
        if (s == CLEAN || s == DIRTY) {
            int err;
            int64_t delta;
            if (!CAS(p, &s, UNPROT))
                continue;
            delta = delta_writable(r, i, i + 1, i);
            if (over_budget(delta)) {
                err = ENOMEM;
            } else if (handler_mprotect(page, page_size, PROT_READ | PROT_WRITE) == 0) {
                add_mappings(r, delta);
                STORE(p, DIRTY);
                break;
            } else {
                err = errno;
            }
            if (err == ENOMEM)
                err = coarsen(r, i);
            STORE(p, DIRTY);                /* conservative either way */
            if (err != 0) {
                int64_t zero = 0;
                if (CAS(&r->st.error, &zero, (int64_t)err))
                    STORE(&r->st.error_addr, page);
                zero = 0;
                if (CAS(&totals.error, &zero, (int64_t)err))
                    STORE(&totals.error_addr, page);
                *err_out = err;
                result = FAILED;
            }
            break;
        }
        /* owned by a collector, another handler or the coarsening handler */
        while (LOAD(p) == s)
            yield();
        if (s != COLLECTING && LOAD(p) == DIRTY)
            break;                          /* the owner made it writable: retry the write */
    }
    COUNT(r, faults, 1);
    leave(r);
    return result;
}

/* --- an async-signal-safe message */

static size_t put_str(char *buf, size_t at, size_t cap, const char *s) {
    while (*s && at < cap)
        buf[at++] = *s++;
    return at;
}

static size_t put_num(char *buf, size_t at, size_t cap, uint64_t v, int base) {
    char tmp[24];
    int k = 0;
    do {
        tmp[k++] = "0123456789abcdef"[v % base];
        v /= base;
    } while (v && k < (int)sizeof(tmp));
    while (k && at < cap)
        buf[at++] = tmp[--k];
    return at;
}

static void report_failure(uint64_t addr, int err) {
    char buf[640];
    size_t n = 0, cap = sizeof(buf);
    ssize_t w;
    n = put_str(buf, n, cap, "pagescan: the mprotect backend could not give write access "
                             "back to the tracked page at 0x");
    n = put_num(buf, n, cap, addr, 16);
    n = put_str(buf, n, cap, ": mprotect() failed with errno ");
    n = put_num(buf, n, cap, (uint64_t)err, 10);
    if (err == ENOMEM)
        n = put_str(buf, n, cap, " (ENOMEM): the process has reached vm.max_map_count "
                                 "memory mappings (every isolated written page costs two) "
                                 "and coarsening to the whole range did not help; raise it "
                                 "(sysctl -w vm.max_map_count=...) or track with "
                                 "backend='uffd'");
    if (err == ENXIO)
        n = put_str(buf, n, cap, " (ENXIO): the tracked range around it is no longer the "
                                 "tracked mapping (unmapped or replaced)");
    n = put_str(buf, n, cap, ". Passing the fault on to the previous SIGSEGV handler.\n");
    w = write(2, buf, n);
    (void)w;
}

/* Hand the signal to the handler that was installed before this one. */
static void chain(int sig, siginfo_t *si, void *ctx) {
    struct sigaction *prev = &prev_act[LOAD(&prev_idx)];
    int nested = ADD(&chain_depth, 1) > 1;
    int is_default = !(prev->sa_flags & SA_SIGINFO)
                     && (prev->sa_handler == SIG_DFL || prev->sa_handler == SIG_IGN);
    /* A signal sent (raise/kill) while a chained handler runs is that handler
     * re-raising: give it the default action instead of chaining in a loop. */
    if (is_default || (nested && si->si_code <= 0)) {
        struct sigaction dfl;
        memset(&dfl, 0, sizeof(dfl));
        dfl.sa_handler = SIG_DFL;
        sigemptyset(&dfl.sa_mask);
        sigaction(sig, &dfl, NULL);
        if (si->si_code <= 0)
            raise(sig);         /* delivered when this handler returns */
        /* a fault re-raises itself when the instruction is retried */
    } else {
        sigset_t mask, old;
        /* the previous handler gets the mask it would have had without this one:
         * the interrupted code's, plus its own sa_mask (not our async block) */
        pthread_sigmask(SIG_SETMASK, NULL, &old);
        mask = ((ucontext_t *)ctx)->uc_sigmask;
        {
            int s;
            for (s = 1; s < NSIG; s++)
                if (sigismember(&prev->sa_mask, s) == 1)
                    sigaddset(&mask, s);
        }
        if (prev->sa_flags & SA_NODEFER)
            sigdelset(&mask, sig);
        else
            sigaddset(&mask, sig);
        pthread_sigmask(SIG_SETMASK, &mask, NULL);
        if (prev->sa_flags & SA_SIGINFO)
            prev->sa_sigaction(sig, si, ctx);
        else
            prev->sa_handler(sig);
        pthread_sigmask(SIG_SETMASK, &old, NULL);
    }
    ADD(&chain_depth, -1);
}

static int is_write_fault(void *ctx) {
#if defined(__x86_64__)
    /* bit 1 of the page-fault error code: the access was a write */
    return (((ucontext_t *)ctx)->uc_mcontext.gregs[REG_ERR] & 2) != 0;
#else
    /* No portable way to tell: a protection fault on a PROT_READ page of a
     * tracked range is a write (reads do not fault, and data is not executed). */
    (void)ctx;
    return 1;
#endif
}

static void mp_handler(int sig, siginfo_t *si, void *ctx) {
    int saved_errno = errno;
    if (sig == SIGSEGV && si->si_code == SEGV_ACCERR && LOAD_RELAXED(&page_size)
        && is_write_fault(ctx)) {
        int err = 0;
        switch (handle_write((uint64_t)(uintptr_t)si->si_addr, &err)) {
        case HANDLED:
        case RETRY:
            errno = saved_errno;
            return;
        case FAILED:
            report_failure((uint64_t)(uintptr_t)si->si_addr, err);
            break;
        default:
            break;
        }
    }
    chain(sig, si, ctx);
    errno = saved_errno;
}

/* ------------------------------------------------------------ installation */

/* In a child of fork(): only the forking thread exists, and the parent's
 * trackers are not the child's. Give write access back to every tracked range
 * and forget them, so that the child writes freely and nothing waits for a
 * collector that is not there. */
static void atfork_child(void) {
    int i, fd = maps_fd, any = 0;
    /* the inherited descriptor describes the parent's VMAs: the child's own */
    maps_fd = -1;
    fd_lock = 0;
    if (fd_is_ours(fd))
        close(fd);
    for (i = 0; i < PAGESCAN_MP_MAX_RANGES; i++)
        any |= ranges[i].active;
    if (any && procmap == CHECK_WORKS)
        open_maps();
    for (i = 0; i < PAGESCAN_MP_MAX_RANGES; i++) {
        struct mp_range *r = &ranges[i];
        if (r->active && check_span(r, r->start, r->end, 0) == 0)
            mprotect((void *)(uintptr_t)r->start, r->end - r->start, PROT_READ | PROT_WRITE);
        if (r->state)
            munmap(r->state, r->map_len);
        memset(r, 0, sizeof(*r));
    }
    totals.mappings = 0;
    chain_depth = 0;
    coarsen_lock = 0;
    table_lock = 0;
    next_cookie += PAGESCAN_MP_MAX_RANGES;
}

int pagescan_mp_installed(void) {
    struct sigaction cur;
    if (sigaction(SIGSEGV, NULL, &cur) < 0)
        return 0;
    return (cur.sa_flags & SA_SIGINFO) && cur.sa_sigaction == mp_handler;
}

int pagescan_mp_install(void) {
    struct sigaction cur, sa;
    int idx;
    init_page_size();
    if (sigaction(SIGSEGV, NULL, &cur) < 0)
        return -errno;
    if ((cur.sa_flags & SA_SIGINFO) && cur.sa_sigaction == mp_handler)
        return 0;
    idx = 1 - LOAD(&prev_idx);
    prev_act[idx] = cur;
    STORE(&prev_idx, idx);
    memset(&sa, 0, sizeof(sa));
    sa.sa_sigaction = mp_handler;
    init_async_signals();
    sa.sa_mask = async_signals;         /* see "asynchronous signals" above */
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_RESTART;
    if (sigaction(SIGSEGV, &sa, NULL) < 0)
        return -errno;
    if (!atfork_done) {
        int e = pthread_atfork(NULL, NULL, atfork_child);
        if (e != 0)
            return -e;
        atfork_done = 1;
    }
    return 1;
}

/* ------------------------------------------------------------ registration */

static int do_register(uint64_t start, uint64_t end, uint64_t *handle) {
    struct mp_range *r = NULL;
    size_t npages, map_len, seg_off, nsegs = 0;
    uint8_t *state;
    struct mp_seg *segs = NULL;
    long counted;
    int i, rc = 0;
    init_page_size();
    if (start % page_size || end % page_size || start >= end)
        return -EINVAL;
    npages = (end - start) >> page_shift;
    seg_off = (npages + 7) & ~(size_t)7;
    ensure_maps();
    spin_lock(&table_lock);
    for (i = 0; i < PAGESCAN_MP_MAX_RANGES; i++) {
        struct mp_range *x = &ranges[i];
        if (LOAD(&x->active)) {
            if (start < x->end && x->start < end) {
                rc = -EEXIST;
                goto out;
            }
        } else if (LOAD(&x->inflight) == 0 && x->state == NULL
                   && (r == NULL || x->cookie < r->cookie)) {
            r = x;      /* the least recently used free slot: a retired range stays
                           known (for its grace period) as long as possible */
        }
    }
    if (r == NULL) {
        rc = -ENOSPC;
        goto out;
    }
    /* the identity of the range's VMAs, checked before every protection change
     * (none recorded where PROCMAP_QUERY is missing: the range is unchecked) */
    counted = build_segs(start, end, NULL, 0);
    if (counted == -ENOMEM) {
        rc = -ENOMEM;
        goto out;
    }
    if (counted > 0)
        nsegs = (size_t)counted;
    map_len = (seg_off + nsegs * sizeof(struct mp_seg) + page_size - 1) & ~(page_size - 1);
    state = mmap(NULL, map_len, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (state == MAP_FAILED) {
        rc = -errno;
        goto out;
    }
    /* mincore() fails with ENOMEM unless every page of the range is mapped */
    if (mincore((void *)(uintptr_t)start, end - start, (unsigned char *)state) < 0) {
        rc = -errno;
        munmap(state, map_len);
        goto out;
    }
    if (nsegs) {
        segs = (struct mp_seg *)(void *)(state + seg_off);
        if (build_segs(start, end, segs, nsegs) != (long)nsegs) {
            rc = -EAGAIN;               /* the mappings changed while registering */
            munmap(state, map_len);
            goto out;
        }
    }
    memset(state, DIRTY, npages);
    ADD(&r->seq, 1);                    /* odd: fields being written */
    STORE(&r->retired, 0);
    STORE(&r->start, start);
    STORE(&r->end, end);
    r->state = state;
    r->segs = segs;
    r->nsegs = nsegs;
    r->npages = npages;
    r->map_len = map_len;
    memset(&r->st, 0, sizeof(r->st));
    STORE(&r->cookie, next_cookie++);
    ADD(&r->seq, 1);                    /* even: published */
    STORE(&r->active, 1);
    *handle = (r->cookie << 8) | (uint64_t)(r - ranges);
out:
    spin_unlock(&table_lock);
    return rc;
}

static int do_unregister(uint64_t handle, int leave) {
    struct mp_range *r;
    int rc = 0;
    spin_lock(&table_lock);
    r = lookup(handle);
    if (r == NULL) {
        spin_unlock(&table_lock);
        return -ESTALE;
    }
    /* writable first, while faults are still handled: no write can fault
     * after the range stops being tracked, except one already on its way
     * (it finds the range retired and is retried once). Memory that is no
     * longer the tracked mapping is left as it is. */
    if (leave || check_span(r, r->start, r->end, 0) < 0) {
        rc = leave ? 0 : -ENXIO;
    } else if (mprotect((void *)(uintptr_t)r->start, r->end - r->start,
                        PROT_READ | PROT_WRITE) < 0) {
        /* unmapped under the tracker (nothing left to do), or the map count:
         * give access back run by run (each change merges mappings) */
        size_t i = 0, a;
        rc = -errno;
        while (i < r->npages) {
            uint8_t s = LOAD(&r->state[i]);
            for (a = i; i < r->npages && (LOAD(&r->state[i]) == DIRTY) == (s == DIRTY); i++)
                ;
            if (s != DIRTY)
                mprotect((void *)(uintptr_t)(r->start + (a << page_shift)),
                         (i - a) << page_shift, PROT_READ | PROT_WRITE);
        }
    }
    STORE(&r->retired_ns, now_ns());
    STORE(&r->retired, 1);
    STORE(&r->active, 0);
    while (LOAD(&r->inflight) != 0)
        yield();
    ADD(&totals.mappings, -__atomic_exchange_n(&r->st.mappings, 0, __ATOMIC_SEQ_CST));
    ADD(&r->seq, 1);
    munmap(r->state, r->map_len);
    r->state = NULL;
    r->segs = NULL;
    r->nsegs = 0;
    r->npages = 0;
    ADD(&r->seq, 1);
    spin_unlock(&table_lock);
    return rc;
}

void pagescan_mp_touch(uint64_t addr) {
    uint8_t *p = (uint8_t *)(uintptr_t)addr;
    uint8_t v = LOAD(p);
    while (!CAS(p, &v, v))
        ;
}

int pagescan_mp_live(void) {
    int i, n = 0;
    for (i = 0; i < PAGESCAN_MP_MAX_RANGES; i++)
        n += LOAD(&ranges[i].active) != 0;
    return n;
}

int pagescan_mp_overlapping(uint64_t start, uint64_t end) {
    int i, n = 0;
    for (i = 0; i < PAGESCAN_MP_MAX_RANGES; i++) {
        struct mp_range *r = &ranges[i];
        if (LOAD(&r->active) && start < LOAD(&r->end) && LOAD(&r->start) < end)
            n++;
    }
    return n;
}

/* -------------------------------------------------------------- collection */

/* Re-protect pages [a, b) of r, which the caller owns (COLLECTING): CLEAN on
 * success, DIRTY (reported again later) when mprotect fails. Pages left DIRTY. */
static int64_t protect_run(struct mp_range *r, size_t a, size_t b) {
    size_t i;
    uint8_t to = CLEAN;
    int64_t delta = delta_readonly(r, a, b);
    if (over_budget(delta)
        || mprotect((void *)(uintptr_t)(r->start + (a << page_shift)), (b - a) << page_shift,
                    PROT_READ) < 0)
        to = DIRTY;
    else
        add_mappings(r, delta);
    for (i = a; i < b; i++)
        STORE_RELEASE(&r->state[i], to);
    if (to == DIRTY) {
        COUNT(r, reprotect_failed, b - a);
        return (int64_t)(b - a);
    }
    return 0;
}

/* protect_run() over every maximal run of COLLECTING pages in [a, b) */
static int64_t protect_claimed(struct mp_range *r, size_t a, size_t b) {
    int64_t left = 0;
    size_t i = a, s;
    while (i < b) {
        if (LOAD_RELAXED(&r->state[i]) != COLLECTING) {
            i++;
            continue;
        }
        for (s = i; i < b && LOAD_RELAXED(&r->state[i]) == COLLECTING; i++)
            ;
        left += protect_run(r, s, i);
    }
    return left;
}

static int64_t do_arm(uint64_t handle, uint64_t start, uint64_t end) {
    struct mp_range *r = lookup(handle);
    size_t first, n, i;
    int64_t before;
    int rc;
    if (r == NULL)
        return -ESTALE;
    if ((rc = sub_range(r, start, end, &first, &n)) < 0)
        return rc;
    if ((rc = check_span(r, start, end, 0)) < 0)
        return rc;
    before = window(r, first, first + n);
    for (i = first; i < first + n; i++) {
        uint8_t s = DIRTY;
        CAS(&r->state[i], &s, COLLECTING);
    }
    /* one call for the whole span: it merges mappings, it never splits one
     * except at the span's edges */
    if (mprotect((void *)(uintptr_t)start, end - start, PROT_READ) == 0) {
        for (i = first; i < first + n; i++)
            if (LOAD_RELAXED(&r->state[i]) == COLLECTING)
                STORE_RELEASE(&r->state[i], CLEAN);
        add_mappings(r, window(r, first, first + n) - before);
        return 0;
    }
    if (errno != ENOMEM) {
        rc = -errno;
        for (i = first; i < first + n; i++)
            if (LOAD_RELAXED(&r->state[i]) == COLLECTING)
                STORE(&r->state[i], DIRTY);
        add_mappings(r, window(r, first, first + n) - before);
        return rc;
    }
    /* ENOMEM: unmapped, or the map count at a span edge: run by run */
    return protect_claimed(r, first, first + n);   /* counts what it changes */
}

int pagescan_mp_snapshot(uint64_t handle, uint64_t start, uint64_t end, uint8_t *out,
                         int *exact) {
    struct mp_range *r = lookup(handle);
    size_t first, n, i;
    int rc;
    if (r == NULL)
        return -ESTALE;
    if ((rc = sub_range(r, start, end, &first, &n)) < 0)
        return rc;
    /* a scan is an error where the range is no longer the tracked mapping,
     * with or without a reset (which changes the protection of pages in it) */
    if ((rc = check_scan(r, start, end, exact)) < 0)
        return rc;
    for (i = 0; i < n; i++)
        out[i] = LOAD_RELAXED(&r->state[first + i]) == CLEAN
                     ? CAT_WPALLOWED : CAT_WPALLOWED | CAT_WRITTEN;
    return 0;
}

static int64_t do_reset_regions(uint64_t handle, const uint64_t *regions, size_t nregions,
                                 const uint8_t *snap, uint64_t snap_start, size_t snap_pages,
                                 int checked) {
    struct mp_range *r = lookup(handle);
    size_t k, base, first, n, i, lo = (size_t)-1, hi = 0, wlo = (size_t)-1, whi = 0;
    uint64_t snap_end = snap_start + ((uint64_t)snap_pages << page_shift);
    int64_t before = 0;
    int rc, pass;
    if (r == NULL)
        return -ESTALE;
    if ((rc = sub_range(r, snap_start, snap_end, &base, &n)) < 0)
        return rc;
    /* pass 0: the span of the reported pages that the snapshot showed written
     * (to count mappings before and after); pass 1: claim them */
    for (pass = 0; pass < 2; pass++) {
        if (pass == 1) {
            if (whi == 0)
                return 0;
            before = window(r, wlo, whi);
        }
        for (k = 0; k < nregions; k++) {
            uint64_t s = regions[3 * k], e = regions[3 * k + 1];
            if (s < snap_start || e > snap_end || s >= e)
                continue;
            first = (s - snap_start) >> page_shift;
            n = (e - s) >> page_shift;
            for (i = first; i < first + n; i++) {
                uint8_t st = DIRTY;
                if (!(snap[i] & CAT_WRITTEN))
                    continue;
                if (pass == 0) {
                    if (base + i < wlo)
                        wlo = base + i;
                    whi = base + i + 1;
                } else if (CAS(&r->state[base + i], &st, COLLECTING)) {
                    if (base + i < lo)
                        lo = base + i;
                    hi = base + i + 1;
                }
            }
        }
    }
    if (hi == 0)
        return 0;
    /* the snapshot's quick check did not walk every VMA: walk the span now */
    if (!checked && (rc = check_span(r, r->start + (lo << page_shift),
                                     r->start + (hi << page_shift), 0)) < 0) {
        for (i = lo; i < hi; i++)
            if (LOAD_RELAXED(&r->state[i]) == COLLECTING)
                STORE(&r->state[i], DIRTY);
        return rc;
    }
    /* One mprotect() over the span from the first to the last claimed page: the
     * mappings in between that are read-only already are left alone by the
     * kernel, so it costs what one call per run would, without the calls. A
     * page in between that is not ours (written after the snapshot, or being
     * unprotected by a handler) may become read-only too while it stays DIRTY:
     * its next write faults and the handler gives access back (never a loss). */
    if (mprotect((void *)(uintptr_t)(r->start + (lo << page_shift)), (hi - lo) << page_shift,
                 PROT_READ) == 0) {
        for (i = lo; i < hi; i++)
            if (LOAD_RELAXED(&r->state[i]) == COLLECTING)
                STORE_RELEASE(&r->state[i], CLEAN);
        add_mappings(r, window(r, wlo, whi) - before);
        return 0;
    }
    return protect_claimed(r, lo, hi);          /* ENOMEM at an edge: run by run */
}

static int do_mark_written(uint64_t handle, uint64_t start, uint64_t end) {
    struct mp_range *r = lookup(handle);
    size_t first, n;
    int64_t before;
    int rc = 0;
    if (r == NULL)
        return -ESTALE;
    if ((rc = sub_range(r, start, end, &first, &n)) < 0)
        return rc;
    if ((rc = check_span(r, start, end, 0)) < 0)
        return rc;
    spin_lock(&coarsen_lock);
    before = window(r, first, first + n);
    claim_coarse(r, first, first + n, (size_t)-1);
    if (mprotect((void *)(uintptr_t)start, end - start, PROT_READ | PROT_WRITE) < 0)
        rc = -errno;
    release_coarse(r, first, first + n);
    add_mappings(r, window(r, first, first + n) - before);
    spin_unlock(&coarsen_lock);
    return rc;
}

int pagescan_mp_get_stats(uint64_t handle, struct pagescan_mp_stats *out) {
    struct pagescan_mp_stats *src;
    if (handle == 0) {
        src = &totals;
    } else {
        struct mp_range *r = lookup(handle);
        if (r == NULL)
            return -ESTALE;
        src = &r->st;
    }
    out->faults = LOAD(&src->faults);
    out->coarsened = LOAD(&src->coarsened);
    out->coarsen_events = LOAD(&src->coarsen_events);
    out->reprotect_failed = LOAD(&src->reprotect_failed);
    out->retries = LOAD(&src->retries);
    out->error = LOAD(&src->error);
    out->error_addr = LOAD(&src->error_addr);
    out->mappings = LOAD(&src->mappings);
    out->budget = LOAD(&map_budget);
    return 0;
}

void pagescan_mp_set_budget(int64_t budget) { STORE(&map_budget, budget); }

void pagescan_mp_inject_enomem(int n) { STORE(&inject_enomem, n); }

/* ------------------------------------------- the entry points, signals blocked */

/* Each section below owns pages (COLLECTING, COARSE), coarsen_lock, or the
 * table lock and a range's seqlock while it runs: asynchronous signals wait
 * until it is done (see "asynchronous signals" at the top). */

int pagescan_mp_register(uint64_t start, uint64_t end, uint64_t *handle) {
    sigset_t old;
    int rc;
    block_async(&old);
    rc = do_register(start, end, handle);
    unblock_async(&old);
    return rc;
}

int pagescan_mp_unregister(uint64_t handle, int leave) {
    sigset_t old;
    int rc;
    block_async(&old);
    rc = do_unregister(handle, leave);
    unblock_async(&old);
    return rc;
}

int64_t pagescan_mp_arm(uint64_t handle, uint64_t start, uint64_t end) {
    sigset_t old;
    int64_t rc;
    block_async(&old);
    rc = do_arm(handle, start, end);
    unblock_async(&old);
    return rc;
}

int64_t pagescan_mp_reset_regions(uint64_t handle, const uint64_t *regions, size_t nregions,
                                  const uint8_t *snap, uint64_t snap_start, size_t snap_pages,
                                  int checked) {
    sigset_t old;
    int64_t rc;
    block_async(&old);
    rc = do_reset_regions(handle, regions, nregions, snap, snap_start, snap_pages, checked);
    unblock_async(&old);
    return rc;
}

int pagescan_mp_mark_written(uint64_t handle, uint64_t start, uint64_t end) {
    sigset_t old;
    int rc;
    block_async(&old);
    rc = do_mark_written(handle, start, end);
    unblock_async(&old);
    return rc;
}
