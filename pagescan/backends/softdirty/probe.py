"""Whether soft-dirty works on a kernel, and which way to read it there.

The probe runs on a :class:`~pagescan.kernel.Kernel` (the running one, for the
calling process, or a simulated one) and is kept in that kernel's
``probe_cache``: once per kernel. It writes a page, clears soft-dirty, writes
again and reads bit 55; then it chooses the read path: ``"pagemap_scan"`` where
PAGEMAP_SCAN reports PAGE_IS_SOFT_DIRTY, else ``"pagemap_read"``. The clear goes
through the fold of the live trackers of that process, like a reset.
"""

from __future__ import annotations

import errno
import os
import threading

from ..._impl import IMPLEMENTATION
from ..._types import Category, Masks
from ...constants import PM_SOFT_DIRTY
from ...errors import PagescanError
from ...kernel import REAL_PROBES, Kernel, LinuxKernel
from ..base import Probe
from .masks import SD
from .target import PATH_READ, PATH_SCAN, live

__all__ = ["probe"]

_probe_lock = threading.Lock()
KEY = "softdirty"


def probe(kernel: Kernel | None = None) -> Probe:
    """The soft-dirty probe of ``kernel`` (None: the running kernel), cached in it."""
    if kernel is not None and kernel.real and not kernel.is_self:
        kernel = None                       # the probe is of the kernel: run it on us
    own = kernel is None
    if kernel is None:
        cached = REAL_PROBES.get(KEY)       # (inherited through fork, too: a child
        if cached is not None:              # that can no longer open its own /proc
            return cached                   # files still knows what works here)
        try:
            kernel = LinuxKernel()
        except (OSError, PagescanError) as err:
            return Probe(False, f"cannot open /proc/self/pagemap: "
                         f"{getattr(err, 'strerror', None) or err} (is /proc mounted?)",
                         {"kernel": os.uname().release})
    try:
        with _probe_lock:
            cache = kernel.probe_cache
            if KEY not in cache:
                cache[KEY] = _run(kernel)
            result: Probe = cache[KEY]
            return result
    finally:
        if own:
            kernel.close()


def _clear(kernel: Kernel) -> None:
    """clear_refs on the kernel's process, folding its live trackers first."""
    t = live(kernel.pid)
    if t is not None:
        with t.lock:
            t.fold_and_clear(None, [])
        return
    kernel.clear_refs(4)


def _entries(kernel: Kernel, addr: int, n: int) -> list[int]:
    b = bytearray(8 * n)
    kernel.pagemap_read(addr, memoryview(b))
    return list(memoryview(b).cast("Q"))


def _run(kernel: Kernel) -> Probe:
    details: dict[str, object] = {"kernel": kernel.release}
    ps = kernel.page_size
    try:
        with kernel.scratch(2) as mem:
            addr = mem.addr
            mem.write(0)
            mem.write(ps)
            try:
                _clear(kernel)
            except (OSError, PagescanError) as err:
                return Probe(False, "writing /proc/self/clear_refs failed: "
                             f"{getattr(err, 'strerror', None) or err}", details)
            cleared = _entries(kernel, addr, 2)
            mem.write(0, 2)
            after = _entries(kernel, addr, 2)
            if not after[0] & PM_SOFT_DIRTY:
                return Probe(False, "CONFIG_MEM_SOFT_DIRTY is not set in this kernel: a page "
                             "written after 'echo 4 > /proc/self/clear_refs' does not have "
                             "the soft-dirty bit (55) in /proc/self/pagemap (the kernel "
                             "accepts the write to clear_refs all the same)", details)
            if cleared[0] & PM_SOFT_DIRTY or after[1] & PM_SOFT_DIRTY:
                return Probe(False, "writing 4 to /proc/self/clear_refs did not clear the "
                             "soft-dirty bit (55) of a page: soft-dirty tracking does not "
                             "work on this kernel", details)
            details["path"], details["path_reason"] = _choose_path(kernel, addr)
            if details["path"] == PATH_SCAN:
                details["kernel_categories"] = kernel.scan_categories()
            return Probe(True, "", details)
    except (OSError, PagescanError) as err:
        return Probe(False, "reading /proc/self/pagemap failed: "
                     f"{getattr(err, 'strerror', None) or err}", details)


def _choose_path(kernel: Kernel, addr: int) -> tuple[str, str]:
    if kernel.real and IMPLEMENTATION != "cython":
        return PATH_READ, "the compiled core is not loaded (PAGEMAP_SCAN needs it)"
    ps = kernel.page_size
    want = [(addr, addr + ps, SD | int(Category.PRESENT)),
            (addr + ps, addr + 2 * ps, int(Category.PRESENT))]
    try:
        got = kernel.pagemap_scan(addr, addr + 2 * ps, 0,
                                  Masks(return_mask=SD | int(Category.PRESENT))).regions
    except OSError as err:
        if err.errno == errno.ENOTTY:
            return PATH_READ, (f"kernel {kernel.release} has no PAGEMAP_SCAN ioctl "
                               "(Linux 6.7+)")
        return PATH_READ, f"PAGEMAP_SCAN failed: {err.strerror}"
    if [tuple(r) for r in got] != want:
        return PATH_READ, "PAGEMAP_SCAN does not report PAGE_IS_SOFT_DIRTY here"
    return PATH_SCAN, "PAGEMAP_SCAN reports PAGE_IS_SOFT_DIRTY"


def _after_fork() -> None:
    global _probe_lock
    _probe_lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork)
