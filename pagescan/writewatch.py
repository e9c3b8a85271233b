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
"""

from __future__ import annotations

import bisect
import threading
from typing import Any

from ._args import check_int
from .errors import RangeError
from .memory import PAGE_SIZE, Memory, map_anonymous
from .tracker import Tracker, track

__all__ = ["WatchedMemory", "WriteWatchError", "alloc_write_watch", "get_write_watch",
           "reset_write_watch"]


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


_lock = threading.Lock()
_starts: list[int] = []                 # sorted allocation starts
_allocs: dict[int, WatchedMemory] = {}  # start -> memory


def _forget(mem: WatchedMemory) -> None:
    with _lock:
        start = mem.tracker.start
        if _allocs.get(start) is mem:
            del _allocs[start]
            _starts.remove(start)


def alloc_write_watch(size: int, *, backend: str = "auto") -> WatchedMemory:
    """``size`` bytes (rounded up to pages) of zeroed memory, write-watched from birth:
    the analogue of ``VirtualAlloc(MEM_RESERVE|MEM_COMMIT|MEM_WRITE_WATCH)``."""
    mem = map_anonymous(size, WatchedMemory)
    try:
        mem.tracker = track((mem.address, len(mem)), backend=backend)
    except BaseException:
        Memory.close(mem)
        raise
    with _lock:
        bisect.insort(_starts, mem.tracker.start)
        _allocs[mem.tracker.start] = mem
    return mem


def _find(address: Any, size: Any) -> tuple[Tracker, int, int]:
    """The tracker of the allocation holding ``[address, address+size)``, and the
    page-aligned range to act on."""
    if isinstance(address, WatchedMemory):
        address = address.address
    addr = check_int(address, "address")
    n = check_int(size, "size")
    assert addr is not None and n is not None
    if n == 0:
        raise WriteWatchError("size is zero")
    start = addr - addr % PAGE_SIZE
    end = -(-(addr + n) // PAGE_SIZE) * PAGE_SIZE
    with _lock:
        i = bisect.bisect_right(_starts, addr) - 1
        mem = _allocs[_starts[i]] if i >= 0 else None
    if mem is None or not (mem.tracker.start <= addr < mem.tracker.end):
        raise WriteWatchError(f"0x{addr:x} is not inside a write-watched allocation "
                              "(use alloc_write_watch())")
    t = mem.tracker
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
