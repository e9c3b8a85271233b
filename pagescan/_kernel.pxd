# C declarations of the kernel ABI the compiled core uses: one block per header,
# only the names used. cimport it with a prefix:
#
#     from pagescan cimport _kernel as kernel
#     kernel.ioctl(fd, kernel.PAGEMAP_SCAN, &arg)
#
# What the build machine's headers may lack (PAGEMAP_SCAN, the pagemap entry
# bits, the newer userfaultfd features) comes from pagescan's own _kernel.h. The
# values equal pagescan.constants (tests/test_constants.py checks both).

from libc.stdint cimport uint64_t


cdef extern from "_kernel.h" nogil:
    # struct pm_scan_arg and struct page_region (include/uapi/linux/fs.h, 6.7+)
    struct pm_scan_arg "pagescan_pm_scan_arg":
        uint64_t size, flags, start, end, walk_end, vec, vec_len, max_pages
        uint64_t category_inverted, category_mask, category_anyof_mask, return_mask
    struct page_region "pagescan_page_region":
        uint64_t start, end, categories

    const unsigned long PAGEMAP_SCAN "PAGESCAN_PAGEMAP_SCAN"
    const uint64_t PM_SCAN_WP_MATCHING "PAGESCAN_PM_SCAN_WP_MATCHING"
    const uint64_t PM_SCAN_CHECK_WPASYNC "PAGESCAN_PM_SCAN_CHECK_WPASYNC"

    # /proc/PID/pagemap entry bits
    const uint64_t PM_PFN_MASK "PAGESCAN_PM_PFN_MASK"
    const uint64_t PM_SOFT_DIRTY "PAGESCAN_PM_SOFT_DIRTY"
    const uint64_t PM_UFFD_WP "PAGESCAN_PM_UFFD_WP"
    const uint64_t PM_GUARD_REGION "PAGESCAN_PM_GUARD_REGION"
    const uint64_t PM_FILE "PAGESCAN_PM_FILE"
    const uint64_t PM_SWAP "PAGESCAN_PM_SWAP"
    const uint64_t PM_PRESENT "PAGESCAN_PM_PRESENT"

    # userfaultfd: the flag and features older headers lack
    const int UFFD_USER_MODE_ONLY
    const uint64_t UFFD_FEATURE_WP_HUGETLBFS_SHMEM
    const uint64_t UFFD_FEATURE_WP_UNPOPULATED
    const uint64_t UFFD_FEATURE_WP_ASYNC

    long userfaultfd "pagescan_userfaultfd"(int flags)


cdef extern from "<linux/userfaultfd.h>" nogil:
    const uint64_t UFFD_API
    const unsigned long UFFDIO_API, UFFDIO_REGISTER, UFFDIO_UNREGISTER, UFFDIO_WRITEPROTECT
    const uint64_t UFFDIO_REGISTER_MODE_WP, UFFDIO_WRITEPROTECT_MODE_WP

    struct uffdio_api:
        uint64_t api, features, ioctls
    struct uffdio_range:
        uint64_t start, len
    struct uffdio_register:
        uffdio_range range
        uint64_t mode, ioctls
    struct uffdio_writeprotect:
        uffdio_range range
        uint64_t mode


cdef extern from "<sys/ioctl.h>" nogil:
    int ioctl(int fd, unsigned long request, ...)


cdef extern from "<fcntl.h>" nogil:
    const int O_CLOEXEC, O_NONBLOCK


cdef extern from "<sys/mman.h>" nogil:
    int madvise(void* addr, size_t length, int advice)
    int msync(void* addr, size_t length, int flags)
    const int MS_ASYNC


# The page categories (PAGE_IS_*, include/uapi/linux/fs.h): pagescan.Category.
cdef enum:
    PAGE_IS_WPALLOWED = 1 << 0
    PAGE_IS_WRITTEN = 1 << 1
    PAGE_IS_FILE = 1 << 2
    PAGE_IS_PRESENT = 1 << 3
    PAGE_IS_SWAPPED = 1 << 4
    PAGE_IS_PFNZERO = 1 << 5
    PAGE_IS_HUGE = 1 << 6
    PAGE_IS_SOFT_DIRTY = 1 << 7
    PAGE_IS_GUARD = 1 << 8
