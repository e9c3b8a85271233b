"""TRANSITIONAL (issue 11): the simulated softdirty row, until the softdirty backend
runs over the kernel seam (``pagescan.track(..., backend="simulator",
mechanism="softdirty")``). Delete this module then, with the three lines marked
TRANSITIONAL in :mod:`pagescan.compare.executors`.

It runs the softdirty backend's code with its /proc files replaced by the simulated
process's: it overwrites the module's ``_probe_result`` and ``target_factory`` for the
life of the executor (restored by ``SimExecutor.close()``) and subclasses its
``Target``. The uffd and mprotect rows already run their real backends over the
simulated kernel.
"""

from __future__ import annotations

import functools
from typing import Any


#: the mechanisms still played by this module
LEGACY = {"softdirty"}


def track(ex: Any, thp: bool) -> Any:
    """A softdirty tracker of the simulated process of ``ex`` (a SimExecutor)."""
    import pagescan
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
