"""TRANSITIONAL (issue 11): the simulated rows of mechanisms that do not run over the
simulated kernel yet. To be deleted as soon as ``pagescan.track(...,
backend="simulator", mechanism=NAME)`` works for NAME: each entry of ``LEGACY`` goes
with it (the SimExecutor then runs the real backend of the mechanism).

* uffd: the simulator backend's own re-implementation of the uffd mechanism.
* softdirty: the softdirty backend's code with its /proc files replaced by the
  simulated process's (it overwrites the module's ``_probe_result`` and
  ``target_factory`` for the life of the executor, and subclasses its ``Target``).
* mprotect: a model of the mechanism played here (``LegacyMprotect``).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from ..constants import PAGE_SIZE, PROT_READ, PROT_WRITE

#: the mechanisms still played by this module, and what their rows are
MODELS = {
    "uffd": "the simulator backend: uffd-wp async + PAGEMAP_SCAN on the simulated kernel",
    "softdirty": "the softdirty backend's own code, reading and clearing the simulated "
                 "kernel's soft-dirty bits (CONFIG_MEM_SOFT_DIRTY=y)",
    "mprotect": "the mprotect mechanism (PROT_READ, a write fault unprotects and records "
                "the page, a collect re-protects) on the simulated process",
}
LEGACY = set(MODELS)

PAGE = PAGE_SIZE


def track(ex: Any, mechanism: str, thp: bool) -> Any:
    """The tracker (None for mprotect: ``ex.mp`` plays it) of a legacy mechanism."""
    import pagescan
    if mechanism == "uffd":
        return pagescan.track((ex.base, ex.length), backend="simulator", pid=ex.sim.pid,
                              thp=thp)
    if mechanism == "softdirty":
        from ..backends import softdirty as sd
        from ..backends.base import Probe
        target_cls = _sim_softdirty_target()

        def factory(pid: int, path: str) -> Any:
            return target_cls(pid, sd.PATH_SCAN, ex)
        for attr, value in (("_probe_result", Probe(True, "", {"path": sd.PATH_SCAN,
                                                                 "simulated": True})),
                            ("target_factory", factory)):
            ex.restore.append((sd, attr, getattr(sd, attr)))
            setattr(sd, attr, value)
        return pagescan.track((ex.base, ex.length), backend="softdirty", pid=ex.sim.pid,
                              thp=thp)
    ex.mp = LegacyMprotect(ex)
    return None


class LegacyMprotect:
    """The mprotect backend's mechanism, played on the simulated process: arming makes
    every page PROT_READ; a write fault on an armed page records it and makes it
    writable; a collect re-protects the pages it reports."""

    def __init__(self, ex: Any) -> None:
        self.ex, self.sim = ex, ex.sim
        self.armed = set(range(ex.length // PAGE))
        self.dirty: set[int] = set()
        self.sim.mprotect(ex.base, ex.length, PROT_READ)

    def write(self, pages: Sequence[int]) -> None:
        sim, base = self.sim, self.ex.base
        for p in sorted(pages):
            addr = base + p * PAGE
            if p in self.armed and sim.access_fault(addr, PAGE, write=True) is not None:
                self.armed.discard(p)           # the SIGSEGV handler
                self.dirty.add(p)
                sim.mprotect(addr, PAGE, PROT_READ | PROT_WRITE)
            sim.write(addr, PAGE)

    def collect(self) -> set[int]:
        got, self.dirty = self.dirty, set()
        if got:     # the backend re-protects the whole span of what it reports
            lo, hi = min(got), max(got) + 1
            self.sim.mprotect(self.ex.base + lo * PAGE, (hi - lo) * PAGE, PROT_READ)
        self.armed |= got
        return got


@functools.cache
def _sim_softdirty_target() -> type:
    """The softdirty backend's per-process Target, reading the simulated process's
    maps and pagemap and writing its clear_refs instead of /proc files."""
    from ..backends import softdirty as sd
    from ..errors import NoSuchProcess

    class SimTarget(sd.Target):
        def __init__(self, pid: int, path: str, ex: Any) -> None:
            self.ex, self.sim = ex, ex.sim
            super().__init__(pid, path)

        def _open(self) -> None:
            pass

        def _alive(self) -> None:
            if self.sim.exited:
                raise NoSuchProcess(f"the simulated process {self.pid} has exited")

        def vmas(self) -> list[Any]:
            self._alive()
            return [sd.Vma(v.start, v.end, v.perms, "") for v in self.sim.maps()]

        def read_pagemap(self, start: int, out: memoryview) -> None:
            self._alive()
            out[:] = self.sim.pagemap(start, len(out) // 8).tobytes()

        def pm_scan(self, start: int, end: int, masks: Any, max_pages: int,
                    max_regions: int | None) -> Any:
            self._alive()
            return self.sim.pm_scan(start, end, 0, masks, max_pages, max_regions)

        def clear_refs(self) -> None:
            self._alive()
            self.sim.clear_refs(4)      # (the executor's process lands racing stores)

        def close(self) -> None:
            self.closed = True

    return SimTarget
