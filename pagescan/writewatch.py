"""Windows write-watch semantics: GetWriteWatch() / ResetWriteWatch().

PAGEMAP_SCAN was made to emulate these for Wine. This module gives Python the
same contract on any pagescan backend::

    mem = alloc_write_watch(1 << 20)          # VirtualAlloc(MEM_WRITE_WATCH)
    mem[8192] = 1
    addresses, granularity = get_write_watch(mem.address, len(mem), reset=True)

Following the documented Windows behaviour:

* granularity is the page size; addresses are page addresses, ascending;
* ``max_count`` limits the answer (``None``: no limit); with ``reset=True``
  only the pages reported are reset, the rest stay written;
* the range must lie inside one write-watched allocation, its size must be
  positive; otherwise :class:`WriteWatchError` (a ValueError) says what is wrong.
  Like Windows, the base address need not be page-aligned: the range covers
  every page it touches.

With the uffd backend a get-and-reset is atomic: one PAGEMAP_SCAN with
PM_SCAN_WP_MATCHING and ``max_pages`` from the count, as Wine does in C.

On the simulator (``backend="simulator"``) the allocation is made in a simulated
process: the one given by ``pid=``, else the current one (``with sim:``), else a
new :class:`~pagescan.simulator.SimProcess` that lives as long as the allocation
(``mem.sim``). The program writes to it with ``mem.sim.write(address)``; the
other options (``mechanism="softdirty"``) go to the backend. Addresses of
simulated processes can coincide with real ones and with each other's: the
functions below take the allocation object in place of an address to say which.
"""

from __future__ import annotations

import bisect
import threading
from typing import Any

from ._args import check_int
from .errors import RangeError
from .memory import PAGE_SIZE, Memory, map_anonymous
from .tracker import Tracker, track

__all__ = ["SimWatchedMemory", "WatchedMemory", "WriteWatchError", "alloc_write_watch",
           "get_write_watch", "reset_write_watch"]


class WriteWatchError(RangeError):
    """The range is not inside a write-watched allocation, or its size or address is bad."""


class WatchedMemory(Memory):
    """Memory from :func:`alloc_write_watch`: a writable buffer, watched from birth.
    ``close()`` stops watching and frees it."""

    tracker: Tracker

    def close(self) -> None:
        t = getattr(self, "tracker", None)
        if t is not None and not t.closed:
            _forget(self)
            t.close()
        super().close()


class SimWatchedMemory:
    """A write-watched allocation in a simulated process (``backend="simulator"``):
    ``address``, ``len()``, ``sim`` (write with ``sim.write(address)``), ``tracker``.
    ``close()`` stops watching and unmaps it (and ends a process made for it)."""

    tracker: Tracker

    def __init__(self, sim: Any, size: int, owns_sim: bool) -> None:
        self.sim = sim
        self.size = -(-size // PAGE_SIZE) * PAGE_SIZE
        self.address = sim.mmap(self.size)
        self._owns_sim = owns_sim
        self.closed = False

    def __len__(self) -> int:
        return self.size

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"0x{self.address:x}, {self.size} bytes"
        return f"<pagescan.writewatch.SimWatchedMemory pid={self.sim.pid} {state}>"

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        t = getattr(self, "tracker", None)
        if t is not None and not t.closed:
            _forget(self)
            t.close()
        if self._owns_sim:
            self.sim.exit()
        elif not self.sim.exited:
            self.sim.munmap(self.address, self.size)


_lock = threading.Lock()
_starts: list[int] = []                 # sorted allocation starts (may repeat: simulated)
_allocs: dict[int, list[Any]] = {}      # start -> allocations starting there


def _forget(mem: Any) -> None:
    with _lock:
        start = mem.tracker.start
        found = _allocs.get(start, [])
        if mem in found:
            found.remove(mem)
            _starts.remove(start)
            if not found:
                del _allocs[start]


def _remember(mem: Any) -> None:
    with _lock:
        bisect.insort(_starts, mem.tracker.start)
        _allocs.setdefault(mem.tracker.start, []).append(mem)


def alloc_write_watch(size: int, *, backend: str = "auto", pid: int | None = None,
                      **options: Any) -> Any:
    """``size`` bytes (rounded up to pages) of zeroed memory, write-watched from birth:
    the analogue of ``VirtualAlloc(MEM_RESERVE|MEM_COMMIT|MEM_WRITE_WATCH)``.
    ``backend="simulator"``: in a simulated process (see the module docs); ``pid``
    names it. ``options`` go to the backend."""
    check_int(size, "size", minimum=1, maximum=1 << 47)
    if backend == "simulator":
        from . import simulator
        sim = simulator.lookup(pid) if pid is not None else simulator.current()
        if pid is not None and sim is None:
            from .errors import NoSuchProcess
            raise NoSuchProcess(f"no simulated process has pid {pid}")
        owns = sim is None
        if sim is None:
            sim = simulator.SimProcess()
        smem = SimWatchedMemory(sim, size, owns)
        try:
            smem.tracker = track((smem.address, smem.size), backend=backend, pid=sim.pid,
                                 **options)
        except BaseException:
            smem.close()
            raise
        _remember(smem)
        return smem
    if pid is not None:
        raise TypeError("pid= names a simulated process (backend='simulator'); real "
                        "write-watched memory is allocated in this process")
    mem = map_anonymous(size, WatchedMemory)
    try:
        mem.tracker = track((mem.address, len(mem)), backend=backend, **options)
    except BaseException:
        Memory.close(mem)
        raise
    _remember(mem)
    return mem


def _find(address: Any, size: Any) -> tuple[Tracker, int, int]:
    """The tracker of the allocation holding ``[address, address+size)``, and the
    page-aligned range to act on. ``address`` may be the allocation object."""
    only = None
    if isinstance(address, (WatchedMemory, SimWatchedMemory)):
        only = address
        address = address.address
    addr = check_int(address, "address")
    n = check_int(size, "size")
    assert addr is not None and n is not None
    if n == 0:
        raise WriteWatchError("size is zero")
    start = addr - addr % PAGE_SIZE
    end = -(-(addr + n) // PAGE_SIZE) * PAGE_SIZE
    with _lock:
        i = bisect.bisect_right(_starts, addr)
        cands = [m for s in sorted(set(_starts[:i]), reverse=True) for m in _allocs[s]
                 if m.tracker.start <= addr < m.tracker.end]
    if only is not None:
        cands = [m for m in cands if m is only]
    elif len(cands) > 1:
        # the same address in several processes: a real allocation, else the current
        # simulated process's
        real = [m for m in cands if isinstance(m, WatchedMemory)]
        if real:
            cands = real
        else:
            from . import simulator
            cur = simulator.current()
            mine = [m for m in cands if cur is not None and m.sim is cur]
            if len(mine) != 1:
                raise WriteWatchError(f"0x{addr:x} is inside write-watched allocations of "
                                      "several simulated processes: pass the allocation "
                                      "object as the address")
            cands = mine
    if not cands:
        raise WriteWatchError(f"0x{addr:x} is not inside a write-watched allocation "
                              "(use alloc_write_watch())")
    t = cands[0].tracker
    if end > t.end:
        raise WriteWatchError(f"[0x{addr:x}, 0x{addr + n:x}) runs past the end of its "
                              f"write-watched allocation [0x{t.start:x}, 0x{t.end:x})")
    return t, start, end


def get_write_watch(address: Any, size: int, *, reset: bool = False,
                    max_count: int | None = None) -> tuple[list[int], int]:
    """Addresses of the pages written in ``[address, address+size)`` since the
    allocation or the last reset, ascending, at most ``max_count`` of them;
    ``(addresses, granularity)``. ``reset=True`` resets exactly the pages reported
    (atomically with the uffd backend): ``GetWriteWatch(WRITE_WATCH_FLAG_RESET)``."""
    t, start, end = _find(address, size)
    count = check_int(max_count, "max_count", allow_none=True)
    if count == 0:
        return [], PAGE_SIZE
    res = t.collect(reset=reset, max_pages=count or 0, start=start, end=end)
    return res.regions.addresses(PAGE_SIZE).tolist(), PAGE_SIZE


def reset_write_watch(address: Any, size: int) -> None:
    """Mark every page of the range not written: ``ResetWriteWatch``."""
    t, start, end = _find(address, size)
    t.reset(start=start, end=end)
