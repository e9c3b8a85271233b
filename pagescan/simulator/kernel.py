"""SimKernel: the simulated side of the kernel seam (:class:`pagescan.kernel.Kernel`).

A backend holding a ``SimKernel(sim)`` runs its own code against the model of
``sim`` (a :class:`~pagescan.simulator.SimProcess`): the uffd backend's
userfaultfd and PAGEMAP_SCAN, the soft-dirty backend's maps, pagemap reads,
PAGEMAP_SCAN and clear_refs. Errors are the kernel's: ``OSError`` with its errno
for system calls, pagescan's errors for /proc files (a process that exited
raises :class:`~pagescan.NoSuchProcess`).
"""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Iterator
from typing import Any, ClassVar

from .._types import Masks, ScanResult
from ..errors import NoSuchProcess
from ..kernel import CLEAR_REFS_SOFT_DIRTY, Kernel, Scratch, Uffd, WriteTrap
from ..constants import MADV_POPULATE_WRITE
from ..procfs import Mapping
from .constants import PAGE_SIZE, PROT_NONE, PROT_READ, PROT_WRITE
from .process import SimProcess
from .uffd import SimUffd

__all__ = ["SimKernel"]


class _SimUffd(Uffd):
    __slots__ = ("features", "uf")

    def __init__(self, uf: SimUffd) -> None:
        self.uf = uf
        self.features = uf.features

    @property
    def closed(self) -> bool:
        return self.uf.closed

    def register_wp(self, addr: int, length: int) -> None:
        self.uf.register(addr, length)

    def unregister(self, addr: int, length: int) -> None:
        self.uf.unregister(addr, length)

    def writeprotect(self, addr: int, length: int, on: bool = True) -> None:
        self.uf.writeprotect(addr, length, on)

    def close(self) -> None:
        self.uf.close()


class _SimScratch(Scratch):
    """Pages between two PROT_NONE guard pages: the scratch VMA merges with no
    neighbour, so the process's other VMAs are left as they were."""

    def __init__(self, sim: SimProcess, npages: int) -> None:
        self.sim = sim
        self.npages = npages
        self.base = sim.mmap((npages + 2) * PAGE_SIZE, PROT_NONE)
        self.addr = self.base + PAGE_SIZE
        sim.mprotect(self.addr, npages * PAGE_SIZE, PROT_READ | PROT_WRITE)

    def write(self, offset: int, value: int = 1) -> None:
        self.sim.write(self.addr + offset)


class SimKernel(Kernel):
    """The simulated kernel, for the simulated process ``sim``."""

    real: ClassVar[bool] = False
    page_size = PAGE_SIZE

    def __init__(self, sim: SimProcess) -> None:
        if not isinstance(sim, SimProcess):
            raise TypeError(f"SimKernel needs a pagescan.simulator.SimProcess, not "
                            f"{type(sim).__name__}")
        self.sim = sim
        self.pid = sim.pid

    def __repr__(self) -> str:
        return f"<SimKernel pid={self.pid}>"

    @property
    def is_self(self) -> bool:
        # the simulated program's memory is only reachable through the model: a
        # backend treats it as its own (no ptrace, no freeze), as for the caller
        return True

    @property
    def release(self) -> str:
        c = self.sim.config
        return (f"simulated Linux {c.written_rules} (soft_dirty={c.soft_dirty}, "
                f"pagemap_scan={c.pagemap_scan}, thp={c.thp})")

    @property
    def probe_cache(self) -> dict[str, Any]:
        return self.sim.probe_cache

    def _live(self) -> SimProcess:
        sim = self.sim
        if sim.exited:
            raise NoSuchProcess(f"no process with PID {sim.pid}: the simulated process "
                                f"{sim.pid} has exited")
        return sim

    # -- /proc ---------------------------------------------------------------------

    def maps(self) -> list[Mapping]:
        sim = self._live()
        out = []
        for v in sim.maps():
            if v.kind == "anon":
                path = ""
            elif v.kind == "shmem" and v.perms.endswith("s"):
                path = "/dev/zero (deleted)" if v.offset == 0 else "/memfd (deleted)"
            else:
                path = "/memfd (deleted)"
            out.append(Mapping(v.start, v.end, v.perms, v.offset, "00:00",
                               0 if v.kind == "anon" else 1, path))
        if not out:
            raise NoSuchProcess(f"process {sim.pid} has exited (no address space left)")
        return out

    def alive(self) -> bool:
        return not self.sim.exited

    def status(self) -> dict[str, str]:
        sim = self._live()
        return {"Name": "simulated", "State": "R (running)", "Pid": str(sim.pid)}

    def pagemap_read(self, start: int, out: memoryview) -> None:
        sim = self._live()
        n = len(out) // 8
        out[:8 * n] = sim.pagemap(start, n).astype("<u8").tobytes()

    def clear_refs(self, value: int = CLEAR_REFS_SOFT_DIRTY) -> None:
        sim = self._live()
        sim.clear_refs(value)

    # -- PAGEMAP_SCAN ----------------------------------------------------------------

    def pagemap_scan(self, start: int, end: int, flags: int = 0, masks: Masks | None = None,
                     max_pages: int = 0, max_regions: int | None = None) -> ScanResult:
        return self._live().pm_scan(start, end, flags, masks, max_pages, max_regions)

    # -- memory ----------------------------------------------------------------------

    def mprotect(self, addr: int, length: int, prot: int) -> None:
        self._live().mprotect(addr, length, prot)

    def madvise(self, addr: int, length: int, advice: int) -> None:
        if advice == MADV_POPULATE_WRITE:       # the mprotect backend's preparation
            from .sigsegv import populate_write
            populate_write(self._live(), addr, length)
            return
        self._live().madvise(addr, length, advice)

    def is_mapped(self, addr: int, length: int) -> bool:
        sim = self._live()
        a, b = addr, addr + length
        for v in sim.maps():
            if v.end <= a:
                continue
            if v.start > a:
                return False
            a = v.end
            if a >= b:
                return True
        return False

    @contextlib.contextmanager
    def scratch(self, npages: int) -> Iterator[Scratch]:
        s = _SimScratch(self._live(), npages)
        try:
            yield s
        finally:
            if not self.sim.exited:
                self.sim.munmap(s.base, (npages + 2) * PAGE_SIZE)

    # -- userfaultfd -----------------------------------------------------------------

    def userfaultfd(self, features: int, optional: int = 0) -> Uffd:
        sim = self._live()
        try:
            return _SimUffd(sim.userfaultfd(features | optional))
        except (OSError, NotImplementedError) as err:
            if not optional:
                if isinstance(err, OSError) and err.errno == errno.EINVAL:
                    raise OSError(err.errno, f"kernel {self.release} lacks "
                                  "UFFD_FEATURE_WP_ASYNC (userfaultfd write-protect in "
                                  "async mode needs Linux 6.7+)") from err
                raise
        return self.userfaultfd(features)

    # -- write-fault trap (simulator/sigsegv.py) -------------------------------------

    def write_trap(self) -> WriteTrap:
        from .sigsegv import write_trap
        return write_trap(self._live())

    def max_map_count(self) -> int | None:
        from .sigsegv import write_trap
        return write_trap(self._live()).max_map_count
