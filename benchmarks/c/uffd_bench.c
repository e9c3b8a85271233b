/* The uffd backend's system calls in plain C: the baseline bench_uffd.py holds
 * pagescan against.
 *
 * Each exported function is one measured operation, called through ctypes
 * (about 1 us of call overhead; the operations take 0.1-100 ms). It issues the
 * same system calls as pagescan (src/pagescan/backends/uffd.py and the pm_scan
 * loop in src/pagescan/_kernel.pxi) on the same memory:
 *
 *   track     userfaultfd(USER_MODE_ONLY) + UFFDIO_API(WP_ASYNC|WP_UNPOPULATED
 *             |WP_HUGETLBFS_SHMEM), open /proc/self/pagemap, one unfiltered
 *             PAGEMAP_SCAN (is the range mapped?), MADV_NOHUGEPAGE unless thp,
 *             UFFDIO_REGISTER(MODE_WP), UFFDIO_WRITEPROTECT
 *   arm       UFFDIO_WRITEPROTECT(MODE_WP) over the range
 *   scan      PAGEMAP_SCAN with CHECK_WPASYNC (+ WP_MATCHING for collect),
 *             resumed on walk_end with a growing vec: 512 regions, then x4 per
 *             call up to 2**20, regions merged across call seams, the kernel's
 *             stale walk_end corrected
 *   write     one byte per page, a plain C loop (the first-write cost)
 *
 * ub_scan also measures itself with clock_gettime (ns_inside; the clock is
 * chosen by ub_set_clock) so the ctypes overhead can be read off. Kernel structs and constants are defined here
 * (the build machine's headers are 6.1 and lack PAGEMAP_SCAN); values from
 * docs/kernel.md, 'ABI'.
 *
 * Built by bench_uffd.py at session start: cc -O2 -shared -fPIC (never committed).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>

/* ---- kernel ABI (include/uapi/linux/fs.h, userfaultfd.h) ---------------- */

struct page_region {
    uint64_t start, end, categories;
};

struct pm_scan_arg {
    uint64_t size, flags, start, end, walk_end, vec, vec_len, max_pages;
    uint64_t category_inverted, category_mask, category_anyof_mask, return_mask;
};

_Static_assert(sizeof(struct pm_scan_arg) == 96, "pm_scan_arg");
_Static_assert(sizeof(struct page_region) == 24, "page_region");

#define PAGEMAP_SCAN _IOWR('f', 16, struct pm_scan_arg)     /* 0xC0606610 */
#define PM_SCAN_WP_MATCHING (1ULL << 0)
#define PM_SCAN_CHECK_WPASYNC (1ULL << 1)
#define PAGE_IS_WRITTEN (1ULL << 1)

struct ub_uffdio_api { uint64_t api, features, ioctls; };
struct ub_uffdio_range { uint64_t start, len; };
struct ub_uffdio_register { struct ub_uffdio_range range; uint64_t mode, ioctls; };
struct ub_uffdio_writeprotect { struct ub_uffdio_range range; uint64_t mode; };

#define UB_UFFDIO 0xAA
#define UB_UFFD_API 0xAAULL
#define UB_UFFDIO_API _IOWR(UB_UFFDIO, 0x3F, struct ub_uffdio_api)
#define UB_UFFDIO_REGISTER _IOWR(UB_UFFDIO, 0x00, struct ub_uffdio_register)
#define UB_UFFDIO_UNREGISTER _IOR(UB_UFFDIO, 0x01, struct ub_uffdio_range)
#define UB_UFFDIO_WRITEPROTECT _IOWR(UB_UFFDIO, 0x06, struct ub_uffdio_writeprotect)
#define UB_UFFDIO_REGISTER_MODE_WP (1ULL << 1)
#define UB_UFFDIO_WRITEPROTECT_MODE_WP (1ULL << 0)
#define UB_UFFD_USER_MODE_ONLY 1
#define UB_FEATURE_WP_HUGETLBFS_SHMEM (1ULL << 12)
#define UB_FEATURE_WP_UNPOPULATED (1ULL << 13)
#define UB_FEATURE_WP_ASYNC (1ULL << 15)

#ifndef MADV_NOHUGEPAGE
#define MADV_NOHUGEPAGE 15
#endif

#define FIRST_CHUNK 512
#define MAX_CHUNK (1 << 20)

static clockid_t ub_clock_id = CLOCK_MONOTONIC;

/* The clock of ns_inside: 1 = the thread's CPU time, 0 = CLOCK_MONOTONIC. */
void ub_set_clock(int cpu)
{
    ub_clock_id = cpu ? CLOCK_THREAD_CPUTIME_ID : CLOCK_MONOTONIC;
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(ub_clock_id, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

/* ---- scan ------------------------------------------------------------------ */

struct ub_result {
    struct page_region *data;   /* malloc'ed; ub_result_free() */
    int64_t n, cap;
    uint64_t walk_end;
    uint64_t pages;             /* pages in all regions */
    int64_t calls;              /* PAGEMAP_SCAN calls made */
    uint64_t ns_inside;         /* time spent in ub_scan, measured in C */
};

void ub_result_free(struct ub_result *r)
{
    free(r->data);
    memset(r, 0, sizeof *r);
}

static int reserve(struct ub_result *r, int64_t need)
{
    if (need <= r->cap)
        return 0;
    int64_t newcap = r->cap ? 2 * r->cap : 64;
    if (newcap < need)
        newcap = need;
    struct page_region *p = realloc(r->data, (size_t)newcap * sizeof *p);
    if (!p)
        return -1;
    r->data = p;
    r->cap = newcap;
    return 0;
}

/* PAGEMAP_SCAN over [start, end) until done. Returns the number of regions, or
 * -errno. first_chunk 0 = FIRST_CHUNK; growth x4 up to MAX_CHUNK (pagescan's). */
int64_t ub_scan(int pm, uint64_t start, uint64_t end, uint64_t flags,
                uint64_t inverted, uint64_t mask, uint64_t anyof, uint64_t ret,
                uint64_t max_pages, int64_t first_chunk, struct ub_result *out)
{
    uint64_t t0 = now_ns();
    int64_t chunk = first_chunk > 0 ? first_chunk : FIRST_CHUNK;
    uint64_t found = 0;
    struct pm_scan_arg a = {
        .size = sizeof a, .flags = flags, .start = start, .end = end,
        .category_inverted = inverted, .category_mask = mask,
        .category_anyof_mask = anyof, .return_mask = ret,
    };
    out->n = 0;
    out->calls = 0;
    out->walk_end = end;
    for (;;) {
        int64_t k0 = out->n;
        if (reserve(out, k0 + chunk) < 0)
            return -ENOMEM;
        a.walk_end = 0;
        a.vec = (uint64_t)(uintptr_t)(out->data + k0);
        a.vec_len = (uint64_t)chunk;
        a.max_pages = max_pages ? max_pages - found : 0;
        int r = ioctl(pm, PAGEMAP_SCAN, &a);
        out->calls++;
        if (r < 0)
            return -errno;
        if (r > 0) {
            struct page_region *d = out->data;
            if (a.walk_end < d[k0 + r - 1].end)    /* stale walk_end: the call finished */
                a.walk_end = end;
            for (int64_t i = k0; i < k0 + r; i++)
                found += (d[i].end - d[i].start) >> 12;
            if (k0 && d[k0 - 1].end == d[k0].start && d[k0 - 1].categories == d[k0].categories) {
                d[k0 - 1].end = d[k0].end;
                memmove(d + k0, d + k0 + 1, (size_t)(r - 1) * sizeof *d);
                r--;
            }
        }
        out->n = k0 + r;
        out->walk_end = a.walk_end;
        if (a.walk_end >= end || (max_pages && found >= max_pages))
            break;
        if (a.walk_end <= a.start)
            break;
        a.start = a.walk_end;
        if (chunk < MAX_CHUNK)
            chunk *= 4;
    }
    out->pages = found;
    out->ns_inside = now_ns() - t0;
    return out->n;
}

/* t.written(): required WRITTEN, return WRITTEN, CHECK_WPASYNC. */
int64_t ub_written(int pm, uint64_t start, uint64_t end, struct ub_result *out)
{
    return ub_scan(pm, start, end, PM_SCAN_CHECK_WPASYNC, 0, PAGE_IS_WRITTEN, 0,
                   PAGE_IS_WRITTEN, 0, 0, out);
}

/* t.collect(reset=True, max_pages=): the same plus WP_MATCHING (get-and-reset). */
int64_t ub_collect(int pm, uint64_t start, uint64_t end, uint64_t max_pages,
                   struct ub_result *out)
{
    return ub_scan(pm, start, end, PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC, 0,
                   PAGE_IS_WRITTEN, 0, PAGE_IS_WRITTEN, max_pages, 0, out);
}

/* ---- userfaultfd ------------------------------------------------------------ */

int ub_pagemap_open(void)
{
    int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
    return fd < 0 ? -errno : fd;
}

/* userfaultfd with WP_ASYNC|WP_UNPOPULATED (+WP_HUGETLBFS_SHMEM when granted). */
int ub_uffd_open(void)
{
    uint64_t extras[2] = {UB_FEATURE_WP_HUGETLBFS_SHMEM, 0};
    for (int i = 0; i < 2; i++) {
        int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | UB_UFFD_USER_MODE_ONLY);
        if (fd < 0)
            return -errno;
        struct ub_uffdio_api api = {
            .api = UB_UFFD_API,
            .features = UB_FEATURE_WP_ASYNC | UB_FEATURE_WP_UNPOPULATED | extras[i],
        };
        if (ioctl(fd, UB_UFFDIO_API, &api) == 0)
            return fd;
        int err = errno;
        close(fd);
        if (err != EINVAL)
            return -err;
    }
    return -EINVAL;
}

int ub_arm(int uffd, uint64_t start, uint64_t len)
{
    struct ub_uffdio_writeprotect wp = {
        .range = {start, len}, .mode = UB_UFFDIO_WRITEPROTECT_MODE_WP,
    };
    return ioctl(uffd, UB_UFFDIO_WRITEPROTECT, &wp) < 0 ? -errno : 0;
}

/* pagescan.track(): fds, mapped check, madvise, register, arm. 0 or -errno. */
int ub_track(uint64_t start, uint64_t len, int thp, int *uffd_out, int *pm_out)
{
    int pm = ub_pagemap_open();
    if (pm < 0)
        return pm;
    int uffd = ub_uffd_open();
    if (uffd < 0) {
        close(pm);
        return uffd;
    }
    struct page_region regions[FIRST_CHUNK];
    struct pm_scan_arg a = {
        .size = sizeof a, .start = start, .end = start + len,
        .vec = (uint64_t)(uintptr_t)regions, .vec_len = FIRST_CHUNK, .return_mask = 0,
    };
    int err = 0;
    int r = ioctl(pm, PAGEMAP_SCAN, &a);
    if (r < 0)
        err = -errno;
    else if (r != 1 || regions[0].start != start || regions[0].end != start + len)
        err = -EFAULT;
    if (!err && !thp && madvise((void *)(uintptr_t)start, len, MADV_NOHUGEPAGE) < 0)
        err = -errno;
    if (!err) {
        struct ub_uffdio_register reg = {
            .range = {start, len}, .mode = UB_UFFDIO_REGISTER_MODE_WP,
        };
        if (ioctl(uffd, UB_UFFDIO_REGISTER, &reg) < 0)
            err = -errno;
    }
    if (!err)
        err = ub_arm(uffd, start, len);
    if (err) {
        close(uffd);
        close(pm);
        return err;
    }
    *uffd_out = uffd;
    *pm_out = pm;
    return 0;
}

int ub_untrack(int uffd, int pm, uint64_t start, uint64_t len)
{
    struct ub_uffdio_range rng = {start, len};
    int err = ioctl(uffd, UB_UFFDIO_UNREGISTER, &rng) < 0 ? -errno : 0;
    close(uffd);
    close(pm);
    return err;
}

/* ---- writes ------------------------------------------------------------------ */

/* One byte into every page of [base, base + npages*4096): the first-write loop. */
void ub_write_all(uint64_t base, int64_t npages, uint8_t value)
{
    volatile uint8_t *p = (volatile uint8_t *)(uintptr_t)base;
    for (int64_t i = 0; i < npages; i++)
        p[i << 12] = value;
}

/* One byte into each listed page (setup of the written patterns). */
void ub_write_pages(uint64_t base, const uint64_t *idx, int64_t n, uint8_t value)
{
    volatile uint8_t *p = (volatile uint8_t *)(uintptr_t)base;
    for (int64_t i = 0; i < n; i++)
        p[idx[i] << 12] = value;
}
