"""Executors: what carries out a workload's operations on memory tracked by a backend.

* :class:`RealExecutor`: real memory of this process, tracked through
  :func:`pagescan.track` by a backend that works on this kernel.
* :class:`SimExecutor`: a simulated process (:mod:`pagescan.simulator`), tracked
  through ``pagescan.track(..., backend="simulator", mechanism=NAME)``, which runs the
  real backend of that mechanism (its own code) over the simulated kernel.

Both only use public API: what they do to the memory is what a program does.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import random
import threading
import time
from collections.abc import Sequence
from typing import Any

import pagescan

from ..constants import (CLEAR_REFS_SOFT_DIRTY, MADV_COLLAPSE, MADV_DONTNEED, MADV_HUGEPAGE,
                         MADV_NOHUGEPAGE, MAP_ANONYMOUS, MAP_FIXED, MAP_PRIVATE, MREMAP_FIXED,
                         MREMAP_MAYMOVE, PAGE_SIZE, PROT_NONE, PROT_READ, PROT_WRITE)
from ..kernel import LinuxKernel
from .workloads import HUGE, Workload, runs_of

__all__ = ["SIM_MODELS", "Executor", "ProgramCallFailed", "RealExecutor", "SimExecutor",
           "WorkloadError", "sim_playable", "sim_status"]

PAGE = PAGE_SIZE


class WorkloadError(Exception):
    """An operation could not be carried out (recorded as the cell's outcome)."""


class ProgramCallFailed(WorkloadError):
    """A system call of the workload itself (the program's own mremap, mmap) failed
    under the tracker: an outcome of the mechanism (e.g. mprotect tracking splits the
    VMA, and mremap of a range spanning several VMAs is EFAULT before Linux 6.17)."""


class Executor:
    """Carries out a workload's operations on some memory tracked by some backend."""

    def write(self, pages: Sequence[int]) -> None:
        raise NotImplementedError

    def kernel_write(self, pages: Sequence[int]) -> list[int]:
        """read() into each page; returns the pages whose read() failed."""
        raise NotImplementedError

    def discard(self, pages: Sequence[int]) -> None:
        raise NotImplementedError

    def protect(self, pages: Sequence[int], prot: int) -> None:
        raise NotImplementedError

    def fork(self, child_pages: Sequence[int]) -> None:
        raise NotImplementedError

    def neighbour(self, npages: int) -> None:
        """Map ``npages`` new pages right after the buffer (over the reservation),
        write them, and put the reservation back."""
        raise NotImplementedError

    def move(self, pages: Sequence[int]) -> None:
        """mremap() the run ``pages`` past the buffer and back to its place."""
        raise NotImplementedError

    def collapse(self, pages: Sequence[int]) -> tuple[int, int]:
        """Collapse the 2 MiB blocks holding ``pages`` into THPs where the kernel
        lets it: (blocks collapsed, blocks tried)."""
        raise NotImplementedError

    def collect(self) -> set[int]:
        raise NotImplementedError

    def concurrent(self, pages: Sequence[int], threads: int) -> list[set[int]]:
        """Threads store to ``pages`` (once each) while collect(reset=True) runs in a
        loop; returns every collect's pages, a final one after the writers stop last."""
        raise NotImplementedError

    def race_note(self, collects: int, threads: int) -> str:
        return f"{collects} collects raced {threads} writer threads"

    def close(self) -> None:
        pass


class RealExecutor(Executor):
    """Real memory of this process, tracked through pagescan.track(backend=...)."""

    def __init__(self, backend: str, w: Workload) -> None:
        self.mem = pagescan.allocate((w.npages + w.tail) * PAGE, thp=w.thp)
        self.view = memoryview(self.mem)
        self.base = self.mem.address
        self.length = w.npages * PAGE
        self.thp = w.thp
        self.counter = 0
        self.kernel = LinuxKernel()
        if w.tail:                               # reserved, never touched: PROT_NONE
            self.kernel.mprotect(self.base + self.length, w.tail * PAGE, PROT_NONE)
        for first, end in runs_of(w.populate):
            self.view[first * PAGE:end * PAGE:PAGE] = b"\x01" * (end - first)
        target: Any = (self.base, self.length) if w.tail else self.mem
        self.tracker = pagescan.track(target, backend=backend, thp=w.thp)
        self._pipe = os.pipe()

    def _value(self) -> bytes:
        self.counter = self.counter % 254 + 1
        return bytes((self.counter + 1,))

    def write(self, pages: Sequence[int]) -> None:
        v = self._value()
        view = self.view
        for first, end in runs_of(pages):
            view[first * PAGE:end * PAGE:PAGE] = v * (end - first)

    def kernel_write(self, pages: Sequence[int]) -> list[int]:
        r, w = self._pipe
        block = self._value() * PAGE
        failed = []
        for p in pages:
            os.write(w, block)
            try:
                n = os.readv(r, [self.view[p * PAGE:(p + 1) * PAGE]])
            except OSError as err:
                if err.errno != errno.EFAULT:
                    raise
                n = 0                           # the kernel could not write the page
            if n < PAGE:
                os.read(r, PAGE - n)            # drain what did not arrive
                failed.append(p)
        return failed

    def discard(self, pages: Sequence[int]) -> None:
        for first, end in runs_of(pages):
            self.mem.madvise(MADV_DONTNEED, first * PAGE, (end - first) * PAGE)

    def protect(self, pages: Sequence[int], prot: int) -> None:
        for first, end in runs_of(pages):
            try:
                self.kernel.mprotect(self.base + first * PAGE, (end - first) * PAGE, prot)
            except OSError as err:
                raise WorkloadError(f"mprotect failed: {os.strerror(err.errno or 0)}") from None

    def fork(self, child_pages: Sequence[int]) -> None:
        pid = os.fork()
        if pid == 0:                             # the child: write its copy, leave
            code = 0
            try:
                self.write(child_pages)
            except BaseException:  # noqa: BLE001 - the exit status says it
                code = 1
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        if not os.WIFEXITED(status) or os.WEXITSTATUS(status):
            raise WorkloadError(f"the forked child failed (status {status:#x}): its writes "
                                "to its own copy did not complete")

    def _map_fixed(self, addr: int, length: int, prot: int) -> None:
        got = _libc().mmap(addr, length, prot, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0)
        if got != addr:
            raise ProgramCallFailed(f"mmap(MAP_FIXED) failed: "
                                    f"{os.strerror(ctypes.get_errno())}")

    def neighbour(self, npages: int) -> None:
        addr, length = self.base + self.length, npages * PAGE
        self._map_fixed(addr, length, PROT_READ | PROT_WRITE)      # a new mapping
        if not self.thp:     # the advice track(thp=False) gave the buffer: mergeable
            self.kernel.madvise(addr, length, MADV_NOHUGEPAGE)
        ctypes.memset(addr, 0x5A, length)
        self._map_fixed(addr, length, PROT_NONE)                   # the reservation again

    def _mremap(self, src: int, length: int, dst: int) -> None:
        got = _libc().mremap(src, length, length, MREMAP_MAYMOVE | MREMAP_FIXED, dst)
        if got != dst:
            raise ProgramCallFailed(f"mremap failed: {os.strerror(ctypes.get_errno())}")

    def move(self, pages: Sequence[int]) -> None:
        (first, end), = runs_of(pages)
        src, length = self.base + first * PAGE, (end - first) * PAGE
        dst = self.base + self.length + PAGE       # inside the reservation, one page on
        self._mremap(src, length, dst)
        self._mremap(dst, length, src)
        self._map_fixed(dst, length, PROT_NONE)    # the reservation again

    def collapse(self, pages: Sequence[int]) -> tuple[int, int]:
        lo, hi = self.base + min(pages) * PAGE, self.base + (max(pages) + 1) * PAGE
        self.kernel.madvise(lo, hi - lo, MADV_HUGEPAGE)
        done = tried = 0
        for blk in range(-(-lo // HUGE) * HUGE, hi - HUGE + 1, HUGE):
            tried += 1
            try:
                self.kernel.madvise(blk, HUGE, MADV_COLLAPSE)
                done += 1
            except OSError as err:
                if err.errno not in (errno.EAGAIN, errno.EINVAL, errno.ENOMEM, errno.EBUSY):
                    raise
        return done, tried

    def _pages(self, regions: Any) -> set[int]:
        base = self.base
        return {(a - base) // PAGE for a in regions.addresses(PAGE)}

    def collect(self) -> set[int]:
        return self._pages(self.tracker.collect(reset=True).regions)

    def concurrent(self, pages: Sequence[int], threads: int) -> list[set[int]]:
        order = list(pages)
        random.Random(len(order)).shuffle(order)
        parts = [order[i::threads] for i in range(threads)]
        view, v = self.view, self._value()
        start = threading.Barrier(threads + 1)

        def writer(mine: list[int]) -> None:
            start.wait()
            for i, p in enumerate(mine):
                view[p * PAGE] = v[0]
                if i % 16 == 15:
                    time.sleep(0)                # let the collector in
        ts = [threading.Thread(target=writer, args=(part,)) for part in parts]
        for t in ts:
            t.start()
        reports = []
        start.wait()
        while any(t.is_alive() for t in ts):
            reports.append(self.collect())
        for t in ts:
            t.join()
        reports.append(self.collect())
        return reports

    def close(self) -> None:
        self.tracker.close()
        self.view.release()
        for fd in self._pipe:
            os.close(fd)
        self.kernel.close()
        self.mem.close()




@functools.cache
def _libc() -> Any:
    """libc's mmap and mremap (the workloads' own mappings, as a program makes them)."""
    libc = ctypes.CDLL(None, use_errno=True)
    vp, sz, i = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int
    libc.mmap.restype = vp
    libc.mmap.argtypes = [vp, sz, i, i, i, ctypes.c_long]
    libc.mremap.restype = vp
    libc.mremap.argtypes = [vp, sz, sz, i, vp]
    return libc


# ============================================================ the simulator

#: the mechanisms the simulator plays (``mechanism=`` of the simulator backend), and
#: what a simulated row of each is
SIM_MODELS = {
    "uffd": "the uffd backend's own code on the simulated kernel (uffd-wp async + "
            "PAGEMAP_SCAN)",
    "softdirty": "the softdirty backend's own code, reading and clearing the simulated "
                 "kernel's soft-dirty bits (CONFIG_MEM_SOFT_DIRTY=y)",
    "mprotect": "the mprotect backend's own code on the simulated kernel (PROT_READ, a "
                "write fault runs the modelled SIGSEGV path: it unprotects and records "
                "the page; a collect re-protects)",
}


def sim_status() -> tuple[bool, str]:
    """Whether the simulator works here (its backend's probe), and why not."""
    p = pagescan.probe("simulator")
    return bool(p.ok), p.reason


def sim_playable() -> set[str]:
    """The backend names the simulator can play here (none when it does not work)."""
    return set(SIM_MODELS) if sim_status()[0] else set()


class SimExecutor(Executor):
    """A simulated process (:mod:`pagescan.simulator`), tracked by the real backend of
    ``mechanism`` running over the simulated kernel::

        pagescan.track((base, length), backend="simulator", pid=sim.pid,
                       mechanism=mechanism)

    The kernel simulated is this machine's (THP policy, page-table reclaim) with
    soft-dirty built in. Writer threads are played by a fixed interleaving: per
    collect, one store of each writer lands while the collect runs, the other
    stores between collects. Where the mechanism's collect is atomic
    (``capabilities.atomic_reset``) a store "during" it lands just before it; where
    it is not, the store lands when the collect writes ``clear_refs`` (between its
    last pagemap read and the clear: soft-dirty's window), or just after the collect
    when it writes none.
    """

    def __init__(self, mechanism: str, w: Workload) -> None:
        from .. import simulator as simmod
        if mechanism not in SIM_MODELS:
            raise WorkloadError(f"the simulator has no model of backend {mechanism!r}")
        self.name = mechanism
        self.label = f"{mechanism} (simulated)"
        length = w.npages * PAGE
        window = -(-(2 * length + 2 * w.tail * PAGE + 4 * HUGE) // HUGE) * HUGE
        self.sim = _racing_process_class()(
            config=simmod.KernelConfig.host(soft_dirty=True), size=window)
        self.base = self.sim.mmap(length + w.tail * PAGE)
        self.length = length
        self.thp = w.thp
        if w.tail:                               # reserved, never touched: PROT_NONE
            self.sim.mprotect(self.base + length, w.tail * PAGE, PROT_NONE)
        if w.thp:
            self.sim.madvise(self.base, length, MADV_HUGEPAGE)
        for first, end in runs_of(w.populate):
            self.sim.write(self.base + first * PAGE, (end - first) * PAGE)
        self._inside: list[int] = []          # stores that land inside the next collect
        self._landed_at_clear_refs = False
        self.sim.on_clear_refs = self._at_clear_refs
        self.tracker = pagescan.track((self.base, length), backend="simulator",
                                      pid=self.sim.pid, thp=w.thp, mechanism=mechanism)
        self.atomic = bool(self.tracker.capabilities.atomic_reset)

    def _at_clear_refs(self) -> None:
        """The simulated kernel is about to clear soft-dirty: the stores of writers
        racing the collect land now."""
        if self._inside:
            self._landed_at_clear_refs = True
            self._land()

    def _land(self) -> None:
        inside, self._inside = self._inside, []
        if inside:
            self.write(inside)

    def write(self, pages: Sequence[int]) -> None:
        for first, end in runs_of(pages):
            self.sim.write(self.base + first * PAGE, (end - first) * PAGE)

    def kernel_write(self, pages: Sequence[int]) -> list[int]:
        failed = []
        for p in pages:
            try:
                n = self.sim.kernel_write(self.base + p * PAGE, PAGE)
            except OSError as err:
                if err.errno != errno.EFAULT:
                    raise
                n = 0                       # copy_to_user() failed: EFAULT, no signal
            if n < PAGE:
                failed.append(p)
        return failed

    def discard(self, pages: Sequence[int]) -> None:
        for first, end in runs_of(pages):
            self.sim.madvise(self.base + first * PAGE, (end - first) * PAGE, MADV_DONTNEED)

    def protect(self, pages: Sequence[int], prot: int) -> None:
        for first, end in runs_of(pages):
            self.sim.mprotect(self.base + first * PAGE, (end - first) * PAGE, prot)

    def fork(self, child_pages: Sequence[int]) -> None:
        child = self.sim.fork()
        try:
            for first, end in runs_of(child_pages):
                child.write(self.base + first * PAGE, (end - first) * PAGE)
        finally:
            child.exit()

    def _map_fixed(self, addr: int, length: int, prot: int) -> None:
        self.sim.mmap(length, prot, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, addr=addr)

    def neighbour(self, npages: int) -> None:
        addr, length = self.base + self.length, npages * PAGE
        self._map_fixed(addr, length, PROT_READ | PROT_WRITE)
        if not self.thp:
            self.sim.madvise(addr, length, MADV_NOHUGEPAGE)
        self.sim.write(addr, length)
        self._map_fixed(addr, length, PROT_NONE)

    def move(self, pages: Sequence[int]) -> None:
        (first, end), = runs_of(pages)
        src, length = self.base + first * PAGE, (end - first) * PAGE
        dst = self.base + self.length + PAGE
        flags = MREMAP_MAYMOVE | MREMAP_FIXED
        try:
            self.sim.mremap(src, length, length, flags, dst)
            self.sim.mremap(dst, length, length, flags, src)
        except OSError as err:
            raise ProgramCallFailed(f"mremap failed: {os.strerror(err.errno or 0)}") from None
        self._map_fixed(dst, length, PROT_NONE)

    def collapse(self, pages: Sequence[int]) -> tuple[int, int]:
        """MADV_COLLAPSE is played by the simulator's khugepaged (the same rules for a
        fully populated block)."""
        lo, hi = self.base + min(pages) * PAGE, self.base + (max(pages) + 1) * PAGE
        self.sim.madvise(lo, hi - lo, MADV_HUGEPAGE)
        done = tried = 0
        for blk in range(-(-lo // HUGE) * HUGE, hi - HUGE + 1, HUGE):
            tried += 1
            done += bool(self.sim.khugepaged_collapse(blk))
        return done, tried

    def collect(self) -> set[int]:
        if self.atomic:
            self._land()                        # no window inside the collect
        regions = self.tracker.collect(reset=True).regions
        self._land()                            # if the collect wrote no clear_refs
        base = self.base
        return {(a - base) // PAGE for a in regions.addresses(PAGE)}

    def concurrent(self, pages: Sequence[int], threads: int) -> list[set[int]]:
        order = list(pages)
        random.Random(len(order)).shuffle(order)
        step = max(2 * threads, len(order) // 16)
        reports = []
        for i in range(0, len(order), step):
            chunk = order[i:i + step]
            self.write(chunk[:-threads])
            self._inside = chunk[-threads:]
            reports.append(self.collect())
        reports.append(self.collect())
        return reports

    def race_note(self, collects: int, threads: int) -> str:
        where = ("between its pagemap read and its clear_refs" if self._landed_at_clear_refs
                 else "just before it (the mechanism has no window inside a collect)"
                 if self.atomic else "just after it")
        return (f"simulated threads: {collects} collects, one store of each of the "
                f"{threads} writers landing inside each collect ({where}), the others "
                "between collects")

    def close(self) -> None:
        try:
            self.tracker.close()
        finally:
            self.sim.exit()


@functools.cache
def _racing_process_class() -> Any:
    """A :class:`pagescan.simulator.SimProcess` that calls ``on_clear_refs()`` when
    its kernel is asked to write ``clear_refs`` (before doing so): where writer
    threads racing a collect land."""
    from .. import simulator as simmod

    class RacingSimProcess(simmod.SimProcess):  # type: ignore[misc]
        on_clear_refs: Any = None

        def clear_refs(self, value: int = CLEAR_REFS_SOFT_DIRTY) -> None:
            if self.on_clear_refs is not None:
                self.on_clear_refs()
            super().clear_refs(value)

    return RacingSimProcess
