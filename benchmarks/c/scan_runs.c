/* scan_pages' job, run at a time: what a faster compiled core could look like.
 *
 * Same ABI, rules and output as scan_loop.c (docs/kernel.md, 'Filter' and
 * 'Output'), but instead of deciding region membership page by page it
 * alternates two tight loops:
 *
 *   skip:   while page i does not match                      -> i++
 *   extend: while (c & (mask|HOLE|ret)) == (want | o)
 *                 and the anyof test holds                   -> j++
 *
 * With x = c ^ inverted, "(x & mask) == mask" is "(c & S) == W" with
 * S = mask|HOLE and W = mask & ~inverted; a page continues the open region iff
 * it matches and c & ret == o, i.e. (c & (S|ret)) == (W|o) (the overlap of S
 * and ret agrees, since the region's first page matched). Once a run or a gap
 * is longer than a page (skip) or 8 pages (extend), the loops test 8 pages at
 * a time with a fixed-count, branch-free body that gcc -O3 vectorises, so long
 * runs and long gaps go at memory speed while short ones stay scalar; a region
 * is written once, when its run ends, and max_pages just shortens a run.
 * Built only for the benchmarks (benchmarks/conftest.py), as a suggestion.
 */
#include <stdint.h>
#include <stdlib.h>

struct page_region {
    uint64_t start;
    uint64_t end;
    uint64_t categories;
};

struct scan_out {
    struct page_region *data;
    int64_t n;
    int64_t cap;
    uint64_t walk_end;
};

static int grow(struct scan_out *out)
{
    int64_t newcap = out->cap ? 2 * out->cap : 64;
    struct page_region *p = realloc(out->data, (size_t)newcap * sizeof *p);
    if (!p)
        return -1;
    out->data = p;
    out->cap = newcap;
    return 0;
}

#define MATCHES(c) ((((c) & S) == W) & ((A == 0) | (((c) & A) != AV)))
#define EXTENDS(c) ((((c) & M) == K) & ((A == 0) | (((c) & A) != AV)))

#define DEFINE_SCAN(NAME, T, HOLE)                                                  \
int NAME(const T *cats, int64_t n, uint64_t start, uint64_t ps,                     \
         uint64_t inverted, uint64_t mask, uint64_t anyof, uint64_t ret,            \
         uint64_t max_pages, int64_t max_regions, struct scan_out *out)             \
{                                                                                   \
    const uint64_t S = mask | (HOLE), W = mask & ~inverted, M = S | ret;            \
    const uint64_t A = anyof, AV = inverted & anyof;                                \
    uint64_t found = 0, walk_end = start + (uint64_t)n * ps;                        \
    int64_t k = 0, i = 0;                                                           \
    int rc = 0;                                                                     \
    out->n = 0;                                                                     \
    while (i < n) {                                                                 \
        if (!MATCHES((uint64_t)cats[i])) {  /* skip non-matching pages */           \
            i++;                                                                    \
            while (i + 8 <= n) {                                                    \
                int any = 0;                                                        \
                for (int t = 0; t < 8; t++)                                         \
                    any |= MATCHES((uint64_t)cats[i + t]);                          \
                if (any)                                                            \
                    break;                                                          \
                i += 8;                                                             \
            }                                                                       \
            while (i < n && !MATCHES((uint64_t)cats[i]))                            \
                i++;                                                                \
            if (i >= n)                                                             \
                break;                                                              \
        }                                                                           \
        uint64_t addr = start + (uint64_t)i * ps;                                   \
        if (max_pages && found == max_pages) {                                      \
            walk_end = addr;                                                        \
            break;                                                                  \
        }                                                                           \
        /* a new region: the previous run stopped at a gap or a new o */            \
        if (max_regions >= 0 && k == max_regions) {                                 \
            walk_end = addr;                                                        \
            break;                                                                  \
        }                                                                           \
        const uint64_t o = (uint64_t)cats[i] & ret, K = W | o;                      \
        int64_t limit = n, j = i + 1;                                               \
        if (max_pages && (uint64_t)(n - i) > max_pages - found)                     \
            limit = i + (int64_t)(max_pages - found);                               \
        const int64_t first = limit - j > 8 ? j + 8 : limit;                        \
        while (j < first && EXTENDS((uint64_t)cats[j]))  /* short runs: scalar */   \
            j++;                                                                    \
        if (j == first) {                   /* a long run: 8 pages at a time */     \
            while (j + 8 <= limit) {                                                \
                int all = 1;                                                        \
                for (int t = 0; t < 8; t++)                                         \
                    all &= EXTENDS((uint64_t)cats[j + t]);                          \
                if (!all)                                                           \
                    break;                                                          \
                j += 8;                                                             \
            }                                                                       \
            while (j < limit && EXTENDS((uint64_t)cats[j]))                         \
                j++;                                                                \
        }                                                                           \
        if (k == out->cap && grow(out) < 0) {                                       \
            rc = -1;                                                                \
            break;                                                                  \
        }                                                                           \
        out->data[k].start = addr;                                                  \
        out->data[k].end = start + (uint64_t)j * ps;                                \
        out->data[k].categories = o;                                                \
        k++;                                                                        \
        found += (uint64_t)(j - i);                                                 \
        i = j;                                                                      \
    }                                                                               \
    out->n = k;                                                                     \
    out->walk_end = walk_end;                                                       \
    return rc;                                                                      \
}

DEFINE_SCAN(scan_u64, uint64_t, 1ULL << 63)
DEFINE_SCAN(scan_u32, uint32_t, 0)
DEFINE_SCAN(scan_u16, uint16_t, 0)
DEFINE_SCAN(scan_u8, uint8_t, 0)

void scan_free(struct scan_out *out)
{
    free(out->data);
    out->data = NULL;
    out->n = out->cap = 0;
}
