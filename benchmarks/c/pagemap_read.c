/* The soft-dirty backend's "pagemap_read" job in plain C, for
 * benchmarks/bench_softdirty.py (built there with cc -O2 at session start, called
 * through ctypes, one call per operation; nothing binary is committed).
 *
 * pr_scan(fd, start, end, chunk, mode, out): pread the /proc/PID/pagemap entries
 * of [start, end) in chunks of `chunk` entries into one reusable u64 buffer (as
 * the backend does with CHUNK_PAGES = 64K entries = 512 KiB) and loop over them,
 * building regions {start, end, categories} into `out` (its array is reused and
 * grown; adjacent regions with the same categories are joined, across chunks too):
 *
 *   mode 0: the soft-dirty pages (bit 55), categories WRITTEN (1 << 1): what the
 *           backend returns for Masks(required=WRITTEN, return_mask=WRITTEN);
 *   mode 1: every page, with its categories as the backend computes them
 *           (pagemap_to_categories, then WRITTEN := SOFT_DIRTY): PRESENT (63),
 *           SWAPPED (62), FILE (61), GUARD (58), and WRITTEN|SOFT_DIRTY for bit 55.
 *
 * Returns the number of regions, or -errno.
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <unistd.h>

#define PAGE_SHIFT 12
#define PM_SOFT_DIRTY (1ULL << 55)
#define PM_GUARD (1ULL << 58)
#define PM_FILE (1ULL << 61)
#define PM_SWAP (1ULL << 62)
#define PM_PRESENT (1ULL << 63)

#define C_WRITTEN (1ULL << 1)
#define C_FILE (1ULL << 2)
#define C_PRESENT (1ULL << 3)
#define C_SWAPPED (1ULL << 4)
#define C_SOFT_DIRTY (1ULL << 7)
#define C_GUARD (1ULL << 8)

struct pr_out {
    uint64_t *data;   /* 3 u64 per region */
    int64_t n;
    int64_t cap;
};

static uint64_t *buf;
static int64_t buf_len;

static int push(struct pr_out *o, uint64_t s, uint64_t e, uint64_t c)
{
    if (o->n && o->data[3 * o->n - 2] == s && o->data[3 * o->n - 1] == c) {
        o->data[3 * o->n - 2] = e;
        return 0;
    }
    if (o->n == o->cap) {
        int64_t cap = o->cap ? 2 * o->cap : 256;
        uint64_t *d = realloc(o->data, (size_t)cap * 3 * sizeof(uint64_t));
        if (!d)
            return -ENOMEM;
        o->data = d;
        o->cap = cap;
    }
    o->data[3 * o->n] = s;
    o->data[3 * o->n + 1] = e;
    o->data[3 * o->n + 2] = c;
    o->n++;
    return 0;
}

static int read_all(int fd, uint64_t *dst, int64_t n, uint64_t first_page)
{
    char *p = (char *)dst;
    size_t want = (size_t)n * 8, got = 0;
    off_t off = (off_t)(first_page * 8);
    while (got < want) {
        ssize_t k = pread(fd, p + got, want - got, off + (off_t)got);
        if (k < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (k == 0)
            return -EIO;
        got += (size_t)k;
    }
    return 0;
}

static inline uint64_t categories(uint64_t e)
{
    uint64_t c = 0;
    if (e & PM_SOFT_DIRTY)
        c |= C_WRITTEN | C_SOFT_DIRTY;
    if (e & PM_PRESENT)
        c |= C_PRESENT;
    if (e & PM_SWAP)
        c |= C_SWAPPED;
    if (e & PM_FILE)
        c |= C_FILE;
    if (e & PM_GUARD)
        c |= C_GUARD;
    return c;
}

int64_t pr_scan(int fd, uint64_t start, uint64_t end, int64_t chunk, int mode,
                struct pr_out *out)
{
    if (chunk <= 0 || start > end)
        return -EINVAL;
    if (buf_len < chunk) {
        free(buf);
        buf = malloc((size_t)chunk * 8);
        if (!buf) {
            buf_len = 0;
            return -ENOMEM;
        }
        buf_len = chunk;
    }
    out->n = 0;
    uint64_t page = start >> PAGE_SHIFT, last = end >> PAGE_SHIFT;
    while (page < last) {
        int64_t n = (int64_t)(last - page) < chunk ? (int64_t)(last - page) : chunk;
        int r = read_all(fd, buf, n, page);
        if (r < 0)
            return r;
        int64_t i = 0;
        if (mode == 0) {
            while (i < n) {
                while (i < n && !(buf[i] & PM_SOFT_DIRTY))
                    i++;
                if (i == n)
                    break;
                int64_t j = i + 1;
                while (j < n && (buf[j] & PM_SOFT_DIRTY))
                    j++;
                r = push(out, (page + (uint64_t)i) << PAGE_SHIFT,
                         (page + (uint64_t)j) << PAGE_SHIFT, C_WRITTEN);
                if (r < 0)
                    return r;
                i = j;
            }
        } else {
            while (i < n) {
                uint64_t c = categories(buf[i]);
                int64_t j = i + 1;
                while (j < n && categories(buf[j]) == c)
                    j++;
                r = push(out, (page + (uint64_t)i) << PAGE_SHIFT,
                         (page + (uint64_t)j) << PAGE_SHIFT, c);
                if (r < 0)
                    return r;
                i = j;
            }
        }
        page += (uint64_t)n;
    }
    return out->n;
}

void pr_free(struct pr_out *out)
{
    free(out->data);
    out->data = NULL;
    out->n = out->cap = 0;
}
