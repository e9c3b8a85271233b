"""The simulator backend: the uffd backend's mechanism, run on a simulated process.

Which simulated process a tracker watches is given the way another process is:
by pid. Every :class:`pagescan.simulator.SimProcess` has a pid above the
kernel's PID_MAX_LIMIT, so it can never name a real process::

    sim = SimProcess()
    addr = sim.mmap(1 << 30)
    t = pagescan.track((addr, 1 << 30), backend="simulator", pid=sim.pid)
    t = sim.track(addr, 1 << 30)                     # the same, shorter

Without ``pid``, the process made current with ``with sim:`` is used. The
Tracker needs no change for this: it passes ``pid`` through, and its overlap
check is per pid, so trackers of different simulated processes never collide.

The mechanism is the uffd backend's, step for step, on the simulated kernel: a
userfaultfd with WP_ASYNC|WP_UNPOPULATED, MADV_NOHUGEPAGE unless ``thp=True``,
UFFDIO_REGISTER + UFFDIO_WRITEPROTECT to arm, PAGEMAP_SCAN with
PM_SCAN_CHECK_WPASYNC (and PM_SCAN_WP_MATCHING for get-and-reset) to read.
Writes are made with ``sim.write()``: the simulator cannot see real memory.
"""

from __future__ import annotations

import errno
from typing import Any, ClassVar

from .._types import ALL_CATEGORIES, Masks, ScanResult
from ..errors import KernelError, NoSuchProcess, RangeError
from .base import Backend, Capabilities, Probe

__all__ = ["SimulatorBackend"]

MADV_NOHUGEPAGE = 15


class SimulatorBackend(Backend):
    name: ClassVar[str] = "simulator"
    priority: ClassVar[int] = 0
    capabilities: ClassVar[Capabilities] = Capabilities(
        atomic_reset=True,
        range_reset=True,
        other_processes=True,
        kernel_filtering=True,
        kernel_writes_seen=True,
        categories=ALL_CATEGORIES,
        real=False,
        notes=("tracks simulated memory (pagescan.simulator.SimProcess), by pid or "
               "'with sim:'; writes are made with sim.write()",
               "deterministic; models Linux 6.18.y uffd-wp async + PAGEMAP_SCAN"),
    )

    @classmethod
    def probe(cls) -> Probe:
        try:
            import numpy  # noqa: F401

            from .. import simulator  # noqa: F401
        except ImportError as err:
            return Probe(False, f"the simulator needs numpy ({err}); pip install numpy")
        return Probe(True, "", {"model": "Linux 6.18.y, x86-64, 4 KiB pages"})

    def __init__(self, *, pid: int | None = None, thp: bool = False) -> None:
        from .. import simulator
        sim = simulator.current() if pid is None else simulator.lookup(pid)
        if sim is None:
            if pid is None:
                raise RangeError("the simulator backend tracks simulated memory: pass "
                                 "pid=sim.pid (or use sim.track(), or 'with sim:') for a "
                                 "pagescan.simulator.SimProcess")
            raise NoSuchProcess(f"no simulated process has pid {pid}")
        if sim.exited:
            raise NoSuchProcess(f"the simulated process {sim.pid} has exited")
        self.sim = sim
        self.thp = thp
        self._uffd: Any = sim.userfaultfd()

    # -- registration -----------------------------------------------------------

    def _mapped(self, start: int, end: int) -> bool:
        res = self.sim.pm_scan(start, end, 0, Masks(return_mask=0))
        return len(res.regions) == 1 and tuple(res.regions[0]) == (start, end, 0)

    def register(self, start: int, end: int) -> None:
        # track(pid=...) without a range: the whole process, every mapping in it
        whole = start == 0 and end >= self.sim.base + self.sim.size
        if not whole and not self._mapped(start, end):
            raise RangeError(f"[0x{start:x}, 0x{end:x}) is not entirely mapped in the "
                             f"simulated process {self.sim.pid}")
        try:
            if not self.thp:
                try:
                    self.sim.madvise(start, end - start, MADV_NOHUGEPAGE)
                except OSError as err:
                    if not (whole and err.errno == errno.ENOMEM):   # holes: fine
                        raise
            self._uffd.register(start, end - start)
        except OSError as err:
            if err.errno == errno.EBUSY:
                raise RangeError(f"[0x{start:x}, 0x{end:x}) is already registered with "
                                 "another userfaultfd") from err
            raise RangeError(f"[0x{start:x}, 0x{end:x}) cannot be registered for "
                             f"write-protect tracking: {err.strerror}") from err
        self.reset(start, end)

    def unregister(self, start: int, end: int) -> None:
        if self.sim.exited or self._uffd.closed:
            return
        try:
            self._uffd.unregister(start, end - start)
        except OSError as err:
            if err.errno not in (errno.EINVAL, errno.ENOMEM):
                raise KernelError(err.errno, err.strerror) from err

    # -- tracking ---------------------------------------------------------------

    def reset(self, start: int, end: int) -> None:
        try:
            self._uffd.writeprotect(start, end - start, True)
        except (OSError, ValueError) as err:
            raise self._error(err, start, end) from err

    def scan(self, start: int, end: int, masks: Masks, *, max_pages: int = 0,
             max_regions: int | None = None, reset: bool = False) -> ScanResult:
        from ..simulator import PM_SCAN_CHECK_WPASYNC, PM_SCAN_WP_MATCHING
        flags = PM_SCAN_CHECK_WPASYNC | (PM_SCAN_WP_MATCHING if reset else 0)
        try:
            return self.sim.pm_scan(start, end, flags, masks, max_pages, max_regions)
        except (OSError, ValueError) as err:
            raise self._error(err, start, end) from err

    def _error(self, err: Exception, start: int, end: int) -> Exception:
        if isinstance(err, ValueError):                  # the process exited
            return NoSuchProcess(f"the simulated process {self.sim.pid} has exited")
        assert isinstance(err, OSError)
        if err.errno in (errno.EPERM, errno.ENOENT):
            return RangeError(f"[0x{start:x}, 0x{end:x}) is no longer write-protect "
                              "tracked: it was unmapped or remapped since tracking started")
        return KernelError(err.errno, err.strerror)

    def close(self) -> None:
        uf, self._uffd = getattr(self, "_uffd", None), None
        if uf is not None:
            uf.close()
