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

static inline long pagescan_userfaultfd(int flags) {
    return syscall(__NR_userfaultfd, flags);
}

#endif
