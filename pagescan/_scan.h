/* The run loop of scan_pages (pagescan/_core.pyx: scan_run), in plain C.
 *
 * The kernel's filter/merge/stop rules over n pages of categories (KERNEL-SPEC
 * §3-4; pagescan/_reference.py is the readable definition), run at a time:
 * skip the pages that do not match, then extend the region while pages continue
 * it. The first 8 pages of a gap or a run are tested one by one (one-page
 * regions cost a few compares), longer ones 8 pages per step with a fixed-count,
 * branch-free body the compiler vectorises (long runs and gaps go near memory
 * speed). With x = c ^ inverted, "(x & mask) == mask" is "(c & S) == W" with
 * S = mask|HOLE, W = mask & ~inverted (a HOLE never matches); a page continues
 * the open region with categories o iff it matches and c & ret == o, i.e.
 * (c & (S|ret)) == (W|o). Each item size is compiled twice: with the anyof test
 * and without it (anyof == 0), where the loops are a plain masked compare.
 *
 * Regions (struct page_region: three u64) are appended to *data from index
 * *nreg, growing it with realloc (geometric) when *cap is reached; a caller
 * whose buffer must not move passes max_regions <= *cap, so it never grows.
 * Returns 0, or -1 when realloc fails (*nreg then counts what was written).
 * *walk_end is set only when a limit stops the walk (the caller set it to end).
 */
#ifndef PAGESCAN_SCAN_H
#define PAGESCAN_SCAN_H

#include <stdint.h>
#include <stdlib.h>
#include <Python.h>

static int pagescan_grow(uint64_t **data, Py_ssize_t *cap, Py_ssize_t need)
{
    Py_ssize_t newcap = *cap ? *cap * 2 : 64;
    uint64_t *p;
    if (need <= *cap)
        return 0;
    if (newcap < need)
        newcap = need;
    p = (uint64_t *)realloc(*data, (size_t)newcap * 24);
    if (p == NULL)
        return -1;
    *data = p;
    *cap = newcap;
    return 0;
}

/* The loops start on a 64-byte boundary, wherever the linker puts the functions:
 * one-page regions ran 15% slower in some builds of the module than in others
 * (the same code at another alignment) before. */
#if defined(__GNUC__) && !defined(__clang__)
#define PAGESCAN_HOT __attribute__((noinline, aligned(64), optimize("align-loops=64")))
#elif defined(__GNUC__)
#define PAGESCAN_HOT __attribute__((noinline, aligned(64)))
#else
#define PAGESCAN_HOT
#endif

/* Built twice on x86-64 with GCC and glibc (an ifunc picks one at load): for AVX2
 * (4 u64 per compare in the 8-page steps) and for the baseline. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__GLIBC__)
#define PAGESCAN_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define PAGESCAN_CLONES
#endif

#define PS_MATCHES(c) ((((c) & S) == W) & (!ANYOF | (((c) & A) != AV)))
#define PS_EXTENDS(c) ((((c) & M) == K) & (!ANYOF | (((c) & A) != AV)))

#define PAGESCAN_DEFINE_SCAN(NAME, T, HOLE, ANY)                                    \
PAGESCAN_HOT PAGESCAN_CLONES static int                                              \
NAME(const T *cats, Py_ssize_t n, uint64_t start, uint64_t ps,                      \
                uint64_t inverted, uint64_t mask, uint64_t anyof, uint64_t ret,     \
                uint64_t max_pages, int64_t max_regions, uint64_t **data,           \
                Py_ssize_t *nreg, Py_ssize_t *cap, uint64_t *walk_end)              \
{                                                                                   \
    const uint64_t S = mask | (HOLE), W = mask & ~inverted, M = S | ret;            \
    const uint64_t A = anyof, AV = inverted & anyof;                                \
    const int ANYOF = (ANY);                                                        \
    uint64_t found = 0;                                                             \
    Py_ssize_t i = 0, k = *nreg, kcap = *cap;                                       \
    uint64_t *d = *data;                                                            \
    while (i < n) {                                                                 \
        if (!PS_MATCHES((uint64_t)cats[i])) {   /* skip the gap */                  \
            i++;                                                                    \
            const Py_ssize_t sfirst = n - i > 8 ? i + 8 : n;                        \
            while (i < sfirst && !PS_MATCHES((uint64_t)cats[i]))                    \
                i++;                                                                \
            if (i == sfirst) {                  /* a long gap: 8 at a time */       \
                while (i + 8 <= n) {                                                \
                    int any = 0;                                                    \
                    for (int q = 0; q < 8; q++)                                     \
                        any |= PS_MATCHES((uint64_t)cats[i + q]);                   \
                    if (any) {          /* where: the lowest bit, without a branch */ \
                        unsigned m = 0;                                             \
                        for (int q = 0; q < 8; q++)                                 \
                            m |= (unsigned)PS_MATCHES((uint64_t)cats[i + q]) << q;  \
                        i += __builtin_ctz(m);                                      \
                        break;                                                      \
                    }                                                               \
                    i += 8;                                                         \
                }                                                                   \
                while (i < n && !PS_MATCHES((uint64_t)cats[i]))                     \
                    i++;                                                            \
            }                                                                       \
            if (i >= n)                                                             \
                break;                                                              \
        }                                                                           \
        /* page i matches and starts a new region */                                \
        if ((max_pages && found == max_pages)                                       \
                || (max_regions >= 0 && k == max_regions)) {                        \
            *walk_end = start + (uint64_t)i * ps;                                   \
            break;                                                                  \
        }                                                                           \
        const uint64_t o = (uint64_t)cats[i] & ret, K = W | o;                      \
        Py_ssize_t limit = n, j = i + 1;                                            \
        if (max_pages && (uint64_t)(n - i) > max_pages - found)                     \
            limit = i + (Py_ssize_t)(max_pages - found);                            \
        const Py_ssize_t first = limit - j > 8 ? j + 8 : limit;                     \
        while (j < first && PS_EXTENDS((uint64_t)cats[j]))   /* short runs */       \
            j++;                                                                    \
        if (j == first) {                       /* a long run: 8 at a time */       \
            while (j + 8 <= limit) {                                                \
                int all = 1;                                                        \
                for (int q = 0; q < 8; q++)                                         \
                    all &= PS_EXTENDS((uint64_t)cats[j + q]);                       \
                if (!all)                                                           \
                    break;                                                          \
                j += 8;                                                             \
            }                                                                       \
            while (j < limit && PS_EXTENDS((uint64_t)cats[j]))                      \
                j++;                                                                \
        }                                                                           \
        if (k >= kcap) {                                                            \
            *data = d;                                                              \
            if (pagescan_grow(data, cap, k + 1) < 0) {                              \
                *nreg = k;                                                          \
                return -1;                                                          \
            }                                                                       \
            d = *data;                                                              \
            kcap = *cap;                                                            \
        }                                                                           \
        d[3 * k] = start + (uint64_t)i * ps;                                        \
        d[3 * k + 1] = start + (uint64_t)j * ps;                                    \
        d[3 * k + 2] = o;                                                           \
        k++;                                                                        \
        found += (uint64_t)(j - i);                                                 \
        i = j;                                                                      \
    }                                                                               \
    *nreg = k;                                                                      \
    return 0;                                                                       \
}

PAGESCAN_DEFINE_SCAN(pagescan_scan_u64_any, uint64_t, (uint64_t)1 << 63, 1)
PAGESCAN_DEFINE_SCAN(pagescan_scan_u64, uint64_t, (uint64_t)1 << 63, 0)
PAGESCAN_DEFINE_SCAN(pagescan_scan_u32_any, uint32_t, 0, 1)
PAGESCAN_DEFINE_SCAN(pagescan_scan_u32, uint32_t, 0, 0)
PAGESCAN_DEFINE_SCAN(pagescan_scan_u16_any, uint16_t, 0, 1)
PAGESCAN_DEFINE_SCAN(pagescan_scan_u16, uint16_t, 0, 0)
PAGESCAN_DEFINE_SCAN(pagescan_scan_u8_any, uint8_t, 0, 1)
PAGESCAN_DEFINE_SCAN(pagescan_scan_u8, uint8_t, 0, 0)

/* pagemap_to_categories' loop (pagescan/_core.pyx; docs/kernel.md, 'pagemap
 * entries'): /proc/PID/pagemap entries -> categories. Every category an entry
 * shows comes from its top 9 bits (55 SOFT_DIRTY, 57 UFFD_WP, 58 GUARD, 61 FILE,
 * 62 SWAP, 63 PRESENT), so a 512-entry table indexed by e >> 55 gives it in one
 * load; an entry with no page (zero apart from bit 55) takes none_cat instead (the
 * one test of the low bits, for the rare entry whose bits 56-63 are clear). The
 * branchy per-bit form cost 2.2 ns per entry, most of the soft-dirty read path's own
 * time; this one 0.7 (0.46 with AVX2, cloned for it where the compiler can).
 * sdw: WRITTEN is bit 55 (the soft-dirty backend's view). The PFNZERO test (which
 * needs the zero page's PFN) is the caller's. The category bits are
 * pagescan.Category's (PAGE_IS_*): the tests hold this against the reference. */
#define PS_BIT(e, from, to) ((((e) >> (from)) & 1) << (to))
static inline uint64_t
pagescan_entry_categories(uint64_t e, uint64_t base, uint64_t none_cat, int sdw)
{
    uint64_t sd = (e >> 55) & 1;
    uint64_t c = base | (sd << 7);
    if ((e & ~((uint64_t)1 << 55)) == 0)
        c |= none_cat;
    else
        c |= PS_BIT(e, 63, 3)                   /* PRESENT */
           | PS_BIT(e, 62, 4)                   /* SWAPPED */
           | PS_BIT(e, 61, 2)                   /* FILE */
           | PS_BIT(e, 58, 8)                   /* GUARD */
           | (PS_BIT(e, 57, 1) ^ 2);            /* WRITTEN: not uffd-wp */
    if (sdw)
        c = (c & ~(uint64_t)2) | (sd << 1);
    return c;
}
#undef PS_BIT


PAGESCAN_CLONES static void
pagescan_pagemap_categories(const uint64_t *src, uint64_t *dst, Py_ssize_t n,
                            uint64_t base, uint64_t none_cat, int sdw)
{
    uint64_t table[512], none0, none1;
    Py_ssize_t i;
    if (n < 2048) {                     /* the table costs about 512 entries' worth */
        for (i = 0; i < n; i++)
            dst[i] = pagescan_entry_categories(src[i], base, none_cat, sdw);
        return;
    }
    for (i = 0; i < 512; i++)           /* entries whose low 55 bits are not all 0 */
        table[i] = pagescan_entry_categories(((uint64_t)i << 55) | 1, base, none_cat, sdw);
    none0 = pagescan_entry_categories(0, base, none_cat, sdw);
    none1 = pagescan_entry_categories((uint64_t)1 << 55, base, none_cat, sdw);
    for (i = 0; i < n; i++) {
        uint64_t e = src[i];
        uint64_t c = table[e >> 55];
        if ((e >> 56) == 0 && (e << 9) == 0)
            c = (e >> 55) ? none1 : none0;
        dst[i] = c;
    }
}

#undef PS_MATCHES
#undef PS_EXTENDS
#endif
