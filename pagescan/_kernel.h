/* Kernel ABI that the build machine's headers may lack (they are 6.1 here).
 *
 * PAGEMAP_SCAN and its structs arrived in Linux 6.7, UFFD_FEATURE_WP_ASYNC and
 * WP_UNPOPULATED in 6.7 too. The structs carry pagescan's own names so that
 * newer headers, which define them, never clash. Values: docs/kernel.md, 'ABI'
 * and 'pagemap entries'; pagescan/constants.py holds the same numbers (checked
 * by tests/test_constants.py).
 */
#ifndef PAGESCAN_KERNEL_H
#define PAGESCAN_KERNEL_H

#include <stdint.h>
#include <errno.h>
#include <fcntl.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <linux/userfaultfd.h>

struct pagescan_page_region {
    uint64_t start;
    uint64_t end;
    uint64_t categories;
};

struct pagescan_pm_scan_arg {
    uint64_t size;
    uint64_t flags;
    uint64_t start;
    uint64_t end;
    uint64_t walk_end;
    uint64_t vec;
    uint64_t vec_len;
    uint64_t max_pages;
    uint64_t category_inverted;
    uint64_t category_mask;
    uint64_t category_anyof_mask;
    uint64_t return_mask;
};

#define PAGESCAN_PAGEMAP_SCAN _IOWR('f', 16, struct pagescan_pm_scan_arg)
#define PAGESCAN_PM_SCAN_WP_MATCHING (1ULL << 0)
#define PAGESCAN_PM_SCAN_CHECK_WPASYNC (1ULL << 1)

/* /proc/PID/pagemap entry bits (fs/proc/task_mmu.c; the kernel keeps them
 * out of the uapi headers). */
#define PAGESCAN_PM_PFN_MASK ((1ULL << 55) - 1)
#define PAGESCAN_PM_SOFT_DIRTY (1ULL << 55)
#define PAGESCAN_PM_MMAP_EXCLUSIVE (1ULL << 56)
#define PAGESCAN_PM_UFFD_WP (1ULL << 57)
#define PAGESCAN_PM_GUARD_REGION (1ULL << 58)
#define PAGESCAN_PM_FILE (1ULL << 61)
#define PAGESCAN_PM_SWAP (1ULL << 62)
#define PAGESCAN_PM_PRESENT (1ULL << 63)

/* PROCMAP_QUERY (Linux 6.11, include/uapi/linux/fs.h): an ioctl on an open
 * /proc/PID/maps that describes one VMA (the one covering query_addr, or with
 * COVERING_OR_NEXT the next one after it) without formatting the whole file.
 * ENOENT: no such VMA; ENOTTY: a kernel without the ioctl. For a VMA without
 * a file, offset, inode and device are 0. */
struct pagescan_procmap_query {
    uint64_t size;              /* in: sizeof(struct pagescan_procmap_query) */
    uint64_t query_flags;       /* in */
    uint64_t query_addr;        /* in */
    uint64_t vma_start;         /* out */
    uint64_t vma_end;           /* out */
    uint64_t vma_flags;         /* out: PAGESCAN_PROCMAP_VMA_* */
    uint64_t vma_page_size;     /* out */
    uint64_t vma_offset;        /* out: file offset of vma_start */
    uint64_t inode;             /* out */
    uint32_t dev_major;         /* out */
    uint32_t dev_minor;         /* out */
    uint32_t vma_name_size;     /* in/out: 0, no name wanted */
    uint32_t build_id_size;     /* in/out: 0, no build id wanted */
    uint64_t vma_name_addr;     /* in */
    uint64_t build_id_addr;     /* in */
};

#define PAGESCAN_PROCMAP_QUERY _IOWR('f', 17, struct pagescan_procmap_query)
/* vma_flags (out), and as query_flags the flags the VMA must have. Only the C
 * side uses them: an enum, not #defines (tests/test_constants.py requires every
 * #define here to be in pagescan.constants). */
enum {
    PAGESCAN_PROCMAP_VMA_READABLE = 0x01,
    PAGESCAN_PROCMAP_VMA_WRITABLE = 0x02,
    PAGESCAN_PROCMAP_VMA_EXECUTABLE = 0x04,
    PAGESCAN_PROCMAP_VMA_SHARED = 0x08,
    PAGESCAN_PROCMAP_COVERING_OR_NEXT_VMA = 0x10,
    PAGESCAN_PROCMAP_FILE_BACKED_VMA = 0x20,
};

#ifndef UFFD_USER_MODE_ONLY
#define UFFD_USER_MODE_ONLY 1
#endif
#ifndef UFFD_FEATURE_WP_HUGETLBFS_SHMEM
#define UFFD_FEATURE_WP_HUGETLBFS_SHMEM (1ULL << 12)
#endif
#ifndef UFFD_FEATURE_WP_UNPOPULATED
#define UFFD_FEATURE_WP_UNPOPULATED (1ULL << 13)
#endif
#ifndef UFFD_FEATURE_WP_ASYNC
#define UFFD_FEATURE_WP_ASYNC (1ULL << 15)
#endif

_Static_assert(sizeof(struct pagescan_pm_scan_arg) == 96, "pm_scan_arg is 96 bytes");
_Static_assert(sizeof(struct pagescan_page_region) == 24, "page_region is 24 bytes");
/* (written this way round: tests/test_constants.py sums only all-u64 structs) */
_Static_assert(104 == sizeof(struct pagescan_procmap_query), "procmap_query is 104 bytes");

static inline long pagescan_userfaultfd(int flags) {
    return syscall(__NR_userfaultfd, flags);
}

#endif
