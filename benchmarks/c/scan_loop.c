/* A plain C loop doing scan_pages' job (docs/kernel.md, 'Filter' and 'Output'),
 * for the benchmarks.
 *
 * The baseline the compiled core is measured against: one pass over the
 * categories, the kernel's filter/merge/stop rules written the obvious way,
 * regions appended to a realloc-grown array of struct page_region (the same
 * growth policy as the core: 64, then doubling). Compiled by the benchmark
 * session (benchmarks/conftest.py) with `cc -O2 -shared -fPIC`; called through
 * ctypes once over the whole buffer.
 */
#include <stdint.h>
#include <stdlib.h>

struct page_region {
    uint64_t start;
    uint64_t end;          /* exclusive */
    uint64_t categories;
};

struct scan_out {
    struct page_region *data;   /* malloc'ed; release with scan_free() */
    int64_t n;                  /* regions written */
    int64_t cap;                /* regions allocated */
    uint64_t walk_end;          /* first matching page not reported, or end */
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

/* Returns 0, or -1 when out of memory. max_pages 0 = no limit; max_regions -1 = none.
 * Categories with bit 63 set (HOLE) never match; only 64-bit input has that bit. */
#define DEFINE_SCAN(NAME, T, HAS_HOLE)                                              \
int NAME(const T *cats, int64_t n, uint64_t start, uint64_t ps,                     \
         uint64_t inverted, uint64_t mask, uint64_t anyof, uint64_t ret,            \
         uint64_t max_pages, int64_t max_regions, struct scan_out *out)             \
{                                                                                   \
    uint64_t found = 0, walk_end = start + (uint64_t)n * ps;                        \
    int64_t k = 0;                      /* regions written; data[k-1] is open */     \
    int rc = 0;                                                                     \
    out->n = 0;                                                                     \
    for (int64_t i = 0; i < n; i++) {                                               \
        uint64_t c = cats[i];                                                       \
        if (HAS_HOLE && (c >> 63))                                                  \
            continue;                                                               \
        uint64_t x = c ^ inverted;                                                  \
        if ((x & mask) != mask)                                                     \
            continue;                                                               \
        if (anyof && !(x & anyof))                                                  \
            continue;                                                               \
        uint64_t addr = start + (uint64_t)i * ps;                                   \
        if (max_pages && found == max_pages) {                                      \
            walk_end = addr;                                                        \
            break;                                                                  \
        }                                                                           \
        uint64_t o = c & ret;                                                       \
        if (k && addr == out->data[k - 1].end && o == out->data[k - 1].categories) { \
            out->data[k - 1].end = addr + ps;                                       \
        } else {                                                                    \
            if (max_regions >= 0 && k == max_regions) {                             \
                walk_end = addr;                                                    \
                break;                                                              \
            }                                                                       \
            if (k == out->cap && grow(out) < 0) {                                   \
                rc = -1;                                                            \
                break;                                                              \
            }                                                                       \
            out->data[k].start = addr;                                              \
            out->data[k].end = addr + ps;                                           \
            out->data[k].categories = o;                                            \
            k++;                                                                    \
        }                                                                           \
        found++;                                                                    \
    }                                                                               \
    out->n = k;                                                                     \
    out->walk_end = walk_end;                                                       \
    return rc;                                                                      \
}

DEFINE_SCAN(scan_u64, uint64_t, 1)
DEFINE_SCAN(scan_u32, uint32_t, 0)
DEFINE_SCAN(scan_u16, uint16_t, 0)
DEFINE_SCAN(scan_u8, uint8_t, 0)

void scan_free(struct scan_out *out)
{
    free(out->data);
    out->data = NULL;
    out->n = out->cap = 0;
}
