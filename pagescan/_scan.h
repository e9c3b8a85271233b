/* The run loop of scan_pages (pagescan/_core.pyx: scan_run), in plain C.
 *
 * The kernel's filter/merge/stop rules over n pages of categories (docs/kernel.md,
 * 'Filter' and 'Output'; pagescan/_reference.py is the readable definition), run
 * at a time: skip the pages that do not match, then extend the region while pages
 * continue it. A region whose next page does not continue it (fragmented memory's
 * common case) is written at once; the first 8 pages of a gap or a run are tested
 * one by one (one-page regions cost a few compares), longer ones 8 pages per step
 * with a fixed-count, branch-free body (long runs and gaps go near memory speed;
 * a long gap of u64 categories in vector registers, below). With x = c ^ inverted, "(x & mask) == mask" is "(c & S) == W" with
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

/* A long gap of u64 categories without anyof (the common case): the first page
 * from i on with (c & s) == w, 8 pages a step in vector registers (AVX2 where the
 * CPU has it, else SSE2), its place within the step from a movemask; fewer than 8
 * pages left: returns there, for the caller's scalar test. GCC does not vectorise
 * the scalar test by itself (a 64-bit compare per page, sparse 1%: 8.3 -> 6.9 ms
 * on 2^24 pages). Out of line, so that the run loop keeps its registers. The
 * caller tests the page it returns again: stopping early only costs time, stopping
 * late would lose a match (the tests run both instruction sets). */
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
__attribute__((target("avx2"), noinline)) static Py_ssize_t
pagescan_skip_u64_avx2(const uint64_t *c, Py_ssize_t i, Py_ssize_t n, uint64_t s, uint64_t w)
{
    const __m256i vs = _mm256_set1_epi64x((long long)s), vw = _mm256_set1_epi64x((long long)w);
    for (; i + 8 <= n; i += 8) {
        __m256i a = _mm256_loadu_si256((const __m256i *)(c + i));
        __m256i b = _mm256_loadu_si256((const __m256i *)(c + i + 4));
        __m256i ea = _mm256_cmpeq_epi64(_mm256_and_si256(a, vs), vw);
        __m256i eb = _mm256_cmpeq_epi64(_mm256_and_si256(b, vs), vw);
        if (!_mm256_testz_si256(_mm256_or_si256(ea, eb), _mm256_or_si256(ea, eb))) {
            unsigned m = (unsigned)_mm256_movemask_pd(_mm256_castsi256_pd(ea))
                       | (unsigned)_mm256_movemask_pd(_mm256_castsi256_pd(eb)) << 4;
            return i + __builtin_ctz(m);
        }
    }
    return i;
}

__attribute__((noinline)) static Py_ssize_t
pagescan_skip_u64_sse2(const uint64_t *c, Py_ssize_t i, Py_ssize_t n, uint64_t s, uint64_t w)
{
    const __m128i vs = _mm_set1_epi64x((long long)s), vw = _mm_set1_epi64x((long long)w);
    for (; i + 8 <= n; i += 8) {
        unsigned m = 0;
        for (int q = 0; q < 8; q += 2) {
            __m128i e = _mm_cmpeq_epi32(
                _mm_and_si128(_mm_loadu_si128((const __m128i *)(c + i + q)), vs), vw);
            e = _mm_and_si128(e, _mm_shuffle_epi32(e, _MM_SHUFFLE(2, 3, 0, 1)));
            m |= (unsigned)_mm_movemask_pd(_mm_castsi128_pd(e)) << q;
        }
        if (m)
            return i + __builtin_ctz(m);
    }
    return i;
}

/* "avx2" or "sse2": what pagescan_skip_u64 uses; the tests force each in turn
 * (pagescan._core._simd) */
static int pagescan_use_avx2 = -1;

static int pagescan_simd_set(int avx2)
{
    if (avx2 < 0 || (avx2 && !__builtin_cpu_supports("avx2")))
        avx2 = __builtin_cpu_supports("avx2") ? 1 : 0;
    pagescan_use_avx2 = avx2;
    return avx2;
}

static int pagescan_simd_get(void)
{
    return pagescan_use_avx2 < 0 ? pagescan_simd_set(-1) : pagescan_use_avx2;
}

static Py_ssize_t
pagescan_skip_u64(const uint64_t *c, Py_ssize_t i, Py_ssize_t n, uint64_t s, uint64_t w)
{
    return pagescan_simd_get() ? pagescan_skip_u64_avx2(c, i, n, s, w)
                               : pagescan_skip_u64_sse2(c, i, n, s, w);
}
#define PAGESCAN_HAVE_SKIP 1
#else
#define PAGESCAN_HAVE_SKIP 0
static int pagescan_simd_set(int avx2)
{
    (void)avx2;
    return -1;                          /* no vector skip on this platform */
}

static int pagescan_simd_get(void)
{
    return -1;
}

static Py_ssize_t
pagescan_skip_u64(const uint64_t *c, Py_ssize_t i, Py_ssize_t n, uint64_t s, uint64_t w)
{
    (void)c; (void)n; (void)s; (void)w;
    return i;
}
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
    /* the limits, folded so that the loop keeps few values live: pages still     \
       allowed (no limit: never reached), and the next k that needs a look (the   \
       buffer is full, or max_regions is reached) */                              \
    uint64_t left = max_pages ? max_pages : UINT64_MAX;                             \
    const Py_ssize_t kmax = max_regions >= 0 ? (Py_ssize_t)max_regions : PY_SSIZE_T_MAX; \
    Py_ssize_t i = 0, k = *nreg;                                                    \
    Py_ssize_t klim = *cap < kmax ? *cap : kmax;                                    \
    uint64_t *d = *data;                                                            \
    while (i < n) {                                                                 \
        if (!PS_MATCHES((uint64_t)cats[i])) {   /* skip the gap */                  \
            i++;                                                                    \
            const Py_ssize_t sfirst = n - i > 8 ? i + 8 : n;                        \
            while (i < sfirst && !PS_MATCHES((uint64_t)cats[i]))                    \
                i++;                                                                \
            if (i == sfirst) {                  /* a long gap: 8 at a time */       \
                if (PAGESCAN_HAVE_SKIP && sizeof(T) == 8 && !ANYOF)                 \
                    i = pagescan_skip_u64((const uint64_t *)cats, i, n, S, W);      \
                else while (i + 8 <= n) {                                           \
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
        if ((k >= klim) | (left == 0)) {                                            \
            if (left == 0 || k >= kmax) {                                           \
                *walk_end = start + (uint64_t)i * ps;                               \
                break;                                                              \
            }                                                                       \
            if (pagescan_grow(data, cap, k + 1) < 0) {                              \
                *nreg = k;                                                          \
                return -1;                                                          \
            }                                                                       \
            d = *data;                                                              \
            klim = *cap < kmax ? *cap : kmax;                                       \
        }                                                                           \
        const uint64_t o = (uint64_t)cats[i] & ret, K = W | o;                      \
        Py_ssize_t j = i + 1;                                                       \
        if (j < n && PS_EXTENDS((uint64_t)cats[j])) {   /* not a one-page region */ \
            Py_ssize_t limit = n;                                                   \
            if ((uint64_t)(n - i) > left)                                           \
                limit = i + (Py_ssize_t)left;                                       \
            const Py_ssize_t first = limit - j > 8 ? j + 8 : limit;                 \
            while (j < first && PS_EXTENDS((uint64_t)cats[j]))   /* short runs */   \
                j++;                                                                \
            if (j == first) {                     /* a long run: 8 at a time */     \
                while (j + 8 <= limit) {                                            \
                    int all = 1;                                                    \
                    for (int q = 0; q < 8; q++)                                     \
                        all &= PS_EXTENDS((uint64_t)cats[j + q]);                   \
                    if (!all)                                                       \
                        break;                                                      \
                    j += 8;                                                         \
                }                                                                   \
                while (j < limit && PS_EXTENDS((uint64_t)cats[j]))                  \
                    j++;                                                            \
            }                                                                       \
        }                                                                           \
        d[3 * k] = start + (uint64_t)i * ps;                                        \
        d[3 * k + 1] = start + (uint64_t)j * ps;                                    \
        d[3 * k + 2] = o;                                                           \
        k++;                                                                        \
        left -= (uint64_t)(j - i);                                                  \
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
 * sdw: WRITTEN is bit 55 (the soft-dirty backend's view). have_zero: PFNZERO for a
 * present page whose PFN is zpfn (a test of the low bits for every entry: then
 * entry by entry, no table). The category bits are pagescan.Category's
 * (PAGE_IS_*): the tests hold this against the reference. */
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
                            uint64_t base, uint64_t none_cat, int sdw,
                            int have_zero, uint64_t zpfn)
{
    const uint64_t pfn_mask = ((uint64_t)1 << 55) - 1;
    uint64_t table[512], none0, none1;
    Py_ssize_t i;
    if (have_zero) {
        for (i = 0; i < n; i++) {
            uint64_t e = src[i];
            dst[i] = pagescan_entry_categories(e, base, none_cat, sdw)
                   | ((uint64_t)((e >> 63) && (e & pfn_mask) == zpfn) << 5);   /* PFNZERO */
        }
        return;
    }
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
