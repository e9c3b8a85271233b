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

#define PS_MATCHES(c) ((((c) & S) == W) & (!ANYOF | (((c) & A) != AV)))
#define PS_EXTENDS(c) ((((c) & M) == K) & (!ANYOF | (((c) & A) != AV)))

#define PAGESCAN_DEFINE_SCAN(NAME, T, HOLE, ANY)                                    \
PAGESCAN_HOT static int                                                             \
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
                    if (any)                                                        \
                        break;                                                      \
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

#undef PS_MATCHES
#undef PS_EXTENDS
#endif
