"""Tracker: watch a buffer or an address range with any backend.

>>> buf = pagescan.allocate(1 << 20)
>>> with pagescan.track(buf) as t:
...     buf[8192] = 1
...     t.written()            # RegionArray of (start, end, categories)
"""

from __future__ import annotations

import collections
import os
import threading
from threading import get_ident
import warnings
import weakref
from collections.abc import Iterable
from typing import Any

from ._args import U64_MAX, check_int
from .constants import USER_ADDRESS_LIMIT
from ._impl import impl as _impl
from ._out import out_capacity
from ._types import Category, Masks, ScanCount, coerce_masks
from .backends import select
from .backends.base import Backend, Capabilities
from .errors import OverlapError, RangeError, SharedMappingWarning, TrackerClosed
from .memory import PAGE_SIZE

__all__ = ["PartialPageWarning", "Tracker", "track"]

#: one past the highest user address with 4-level paging (x86-64)
_USER_TOP = USER_ADDRESS_LIMIT

WRITTEN_MASKS = Masks(required=Category.WRITTEN, return_mask=Category.WRITTEN)


class PartialPageWarning(UserWarning):
    """The tracked object does not start or end on a page boundary: its first or
    last page is shared with neighbouring memory, whose writes are reported too."""


def _warn_shared(backend: Backend, start: int, end: int, whole: bool) -> None:
    """SharedMappingWarning when ``[start, end)`` includes MAP_SHARED mappings: every
    mechanism watches the tracked process's own page tables, so a ``write()`` to the
    file or a store through another mapping of the object is not seen. For a whole
    process (``whole``) only its writable shared mappings count (almost every
    process maps some file read-only and shared: locale caches, fonts)."""
    kernel = getattr(backend, "kernel", None)      # (a third-party backend may have none)
    if kernel is None:
        return
    try:
        maps = kernel.maps() if whole else kernel.mappings_in(start, end)
    except OSError:
        return
    shared = [m for m in maps if m.shared and m.start < end and start < m.end
              and (m.writable or not whole)]
    if shared:
        first = shared[0]
        warnings.warn(
            f"[0x{start:x}, 0x{end:x}) includes {len(shared)} MAP_SHARED mapping(s) (the "
            f"first: 0x{first.start:x}-0x{first.end:x} {first.label}): only stores through "
            "the tracked process's own mapping are seen, not write()/pwrite() to the "
            "file nor stores through another mapping of it", SharedMappingWarning,
            stacklevel=4)


_live_lock = threading.Lock()
_live: weakref.WeakSet[Tracker] = weakref.WeakSet()
#: every Tracker not yet collected (its per-tracker lock is re-created after fork)
_all: weakref.WeakSet[Tracker] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    """In the child only the forking thread exists: a lock another thread held at
    fork() (inside track(), close(), or any call of a tracker) would stay held for
    ever, so every lock the tracking path takes is made anew."""
    global _live_lock
    _live_lock = threading.Lock()
    for t in list(_all):
        t._forked = True
        t._state = threading.Lock()
        t._inflight = collections.deque()
        t._closing = False
        t._drained = threading.Event()
    _live.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _resolve_target(target: Any, length: Any) -> tuple[int, int, Any]:
    """``(address, nbytes, pin)``: pin is a buffer export kept for the tracker's life."""
    from ._impl import impl
    if isinstance(target, tuple) and length is None:
        if len(target) != 2:
            raise TypeError("an address range is given as (address, length)")
        target, length = target
    if isinstance(target, int) and not isinstance(target, bool):
        addr = check_int(target, "address")
        n = check_int(length, "length")
        assert addr is not None and n is not None
        if addr % PAGE_SIZE:
            raise RangeError(f"address 0x{addr:x} is not page-aligned ({PAGE_SIZE})")
        if n == 0:
            raise RangeError("length is zero: nothing to track")
        if n % PAGE_SIZE:
            raise RangeError(f"length {n} is not a multiple of the page size ({PAGE_SIZE})")
        if addr >= USER_ADDRESS_LIMIT:
            raise RangeError(f"address 0x{addr:x} is past the end of user space "
                             f"(0x{USER_ADDRESS_LIMIT:x})")
        if n > USER_ADDRESS_LIMIT - addr:
            raise RangeError(f"length {n} from address 0x{addr:x} runs past the end of "
                             f"user space (0x{USER_ADDRESS_LIMIT:x})")
        return addr, n, None
    if length is not None:
        raise TypeError("address must be an int when a length is given, not "
                        f"{type(target).__name__} (a length is only given with an "
                        "integer address)")
    try:
        pin = memoryview(target)
    except TypeError:
        raise TypeError("track() takes pagescan.allocate() memory, an (address, length) "
                        "pair or a writable buffer-protocol object, not "
                        f"{type(target).__name__}") from None
    try:
        return _buffer_range(pin, target, impl)
    except BaseException:
        pin.release()               # the object stays usable (closable) at once
        raise


def _buffer_range(pin: memoryview, target: Any, impl: Any) -> tuple[int, int, Any]:
    if pin.readonly:
        raise TypeError(f"{type(target).__name__} is read-only: nothing can write to it")
    if not pin.contiguous:
        raise ValueError("the buffer must be contiguous")
    if pin.nbytes == 0:
        raise RangeError("the buffer is empty: nothing to track")
    if not hasattr(impl, "buffer_address"):
        import ctypes
        addr = ctypes.addressof(ctypes.c_char.from_buffer(pin.cast("B")))
    else:
        addr, _ = impl.buffer_address(pin)
    return int(addr), pin.nbytes, pin


class Tracker:
    """Watches one range of the process's memory for writes.

    Addresses are absolute; :meth:`offsets` turns regions into byte offsets into
    the tracked object. Create it with :func:`track`.
    """

    def __init__(self, target: Any = None, length: int | None = None, *, backend: str = "auto",
                 thp: bool = False, pid: int | None = None, partial_pages: bool = False,
                 **options: Any) -> None:
        self._forked = False
        self._backend: Backend | None = None
        self._pin: Any = None
        # calls in flight and what close() waits on: close() waits for other threads'
        # calls to finish before it closes the descriptors they use; calls after
        # close() raise TrackerClosed. ``_inflight`` holds the thread id of every call
        # in progress (once per nesting level): deque append/remove are atomic, so
        # the hot path takes no lock. A call announces itself, then looks at the
        # backend; close() takes the backend away, then looks at the calls.
        self._state = threading.Lock()          # serialises close()
        self._inflight: collections.deque[int] = collections.deque()
        self._closing = False
        self._drained = threading.Event()
        _all.add(self)
        if pid is not None:
            pid = check_int(pid, "pid", minimum=1, maximum=(1 << 31) - 1)
        self.pid = None if pid is None or pid == os.getpid() else pid
        if target is None:
            if self.pid is None:
                raise TypeError("track() needs memory to watch (or pid= of another process)")
            # every writable mapping of the other process: its backend skips the gaps
            addr, nbytes = 0, _USER_TOP
        else:
            addr, nbytes, self._pin = _resolve_target(target, length)
        try:
            if self.pid is not None and self._pin is not None:
                raise TypeError("memory of another process is given as (address, length)")
            #: Where the tracked object starts (an address).
            self.object_address = addr
            #: The tracked object's size in bytes.
            self.object_length = nbytes
            start = addr - addr % PAGE_SIZE
            end = -(-(addr + nbytes) // PAGE_SIZE) * PAGE_SIZE
            partial = start != addr or end != addr + nbytes
            if partial:
                warnings.warn(
                    f"the object at 0x{addr:x} ({nbytes} bytes) does not start and end on "
                    "page boundaries: its first/last page is shared with neighbouring "
                    "memory, whose writes are reported as well", PartialPageWarning,
                    stacklevel=3)
            #: The first address watched (page-aligned); the range is ``[start, end)``.
            self.start = start
            #: One past the last address watched (page-aligned).
            self.end = end
            cls = select(backend)
            with _live_lock:
                for other in _live:
                    if other.pid == self.pid and other.start < end and start < other.end:
                        raise OverlapError(
                            f"[0x{start:x}, 0x{end:x}) overlaps [0x{other.start:x}, "
                            f"0x{other.end:x}), which another live tracker watches; "
                            "close that one first")
                self._backend = cls(pid=self.pid, thp=thp, **options)
                if (partial and not partial_pages
                        and self._backend.capabilities.changes_protection):
                    self._backend.close()
                    self._backend = None
                    raise RangeError(
                        f"the object at 0x{addr:x} ({nbytes} bytes) does not fill its "
                        f"pages [0x{start:x}, 0x{end:x}), and the {backend!r} backend "
                        "changes their protection: a read()/recv() into a neighbouring "
                        "object on those pages would fail with EFAULT. Track page-aligned "
                        "memory (pagescan.allocate()), or pass partial_pages=True to "
                        "accept that")
                try:
                    self._backend.register(start, end)
                except BaseException:
                    self._backend.close()
                    self._backend = None
                    raise
                _live.add(self)
            _warn_shared(self._backend, start, end, whole=target is None)
        except BaseException:
            # nothing of a failed track() may outlive it: the buffer export above
            # would make ``except ...: buffer.close()`` raise BufferError
            self.close()
            raise

    # -- properties -------------------------------------------------------------

    @property
    def backend(self) -> str:
        return self._live().name

    @property
    def capabilities(self) -> Capabilities:
        """What this tracker's mechanism can do (with the simulator: the simulated
        mechanism's capabilities, ``real=False``)."""
        return self._live().capabilities

    @property
    def mechanism(self) -> str:
        """The tracking mechanism: the backend's name, or for ``backend="simulator"``
        the mechanism simulated (``"uffd"``, ``"softdirty"``, ``"mprotect"``)."""
        backend = self._live()
        return str(getattr(backend, "mechanism", backend.name))

    @property
    def closed(self) -> bool:
        return self._backend is None or self._forked

    @property
    def length(self) -> int:
        return self.end - self.start

    @property
    def pages(self) -> int:
        return (self.end - self.start) // PAGE_SIZE

    def __repr__(self) -> str:
        state = "closed" if self.closed else self.backend
        return f"<pagescan.Tracker [0x{self.start:x}, 0x{self.end:x}) {state}>"

    # -- helpers ----------------------------------------------------------------

    def _live(self) -> Backend:
        if self._forked:
            raise TrackerClosed(
                "this tracker was inherited through fork(): tracking does not carry into "
                "the child (the kernel drops userfaultfd registrations there, mprotect "
                "ranges are released); create a new tracker in the child")
        if self._backend is None:
            raise TrackerClosed("the tracker is closed")
        return self._backend

    def _enter(self) -> Backend:
        """The backend, counted as in use by this thread until :meth:`_leave`."""
        tid = get_ident()
        self._inflight.append(tid)
        backend = self._backend
        if backend is None or self._forked:
            self._leave()                       # (wakes a close() that saw this call)
            self._live()                        # raises TrackerClosed
        return backend  # type: ignore[return-value]

    def _leave(self) -> None:
        self._inflight.remove(get_ident())
        if self._closing:
            self._drained.set()

    def _range(self, start: int | None, end: int | None) -> tuple[int, int]:
        s = self.start if start is None else check_int(start, "start")
        e = self.end if end is None else check_int(end, "end")
        assert s is not None and e is not None
        if s % PAGE_SIZE or e % PAGE_SIZE:
            raise RangeError(f"[0x{s:x}, 0x{e:x}) is not page-aligned ({PAGE_SIZE})")
        if s >= e:
            raise RangeError(f"[0x{s:x}, 0x{e:x}) is empty")
        if s < self.start or e > self.end:
            raise RangeError(f"[0x{s:x}, 0x{e:x}) is outside this tracker's range "
                             f"[0x{self.start:x}, 0x{self.end:x})")
        return s, e

    # -- the API ------------------------------------------------------------------

    def scan(self, masks: Masks | None = None, *, start: int | None = None,
             end: int | None = None, max_pages: int = 0, max_regions: int | None = None,
             reset: bool = False, out: Any = None) -> Any:
        """Regions with any categories, filtered by ``masks`` (in the kernel where the
        backend can). ``reset=True`` resets the reported WRITTEN pages in the same
        step. Returns ``ScanResult(regions, walk_end)``; resume from ``walk_end``.

        ``out``: a result buffer the caller keeps across calls
        (``RegionArray.empty(n)`` or a writable ``(n, 3)`` uint64 array); the
        regions are written into it, its capacity bounds the answer as
        ``max_regions`` does, and the result is ``ScanCount(nregions, walk_end)``
        (the regions are ``out[:nregions]``). With the uffd backend the kernel writes
        straight into it and nothing is allocated; other backends copy into it."""
        backend = self._enter()
        try:
            s, e = self._range(start, end)
            m = coerce_masks(masks)
            max_pages = check_int(max_pages, "max_pages")  # type: ignore[assignment]
            max_regions = check_int(max_regions, "max_regions", minimum=1, allow_none=True)
            if out is not None:
                return self._scan_into(backend, s, e, m, max_pages, max_regions, reset, out)
            return backend.scan(s, e, m, max_pages=max_pages, max_regions=max_regions,
                                reset=reset)
        finally:
            self._leave()

    @staticmethod
    def _scan_into(backend: Backend, s: int, e: int, m: Masks, max_pages: int,
                   max_regions: int | None, reset: bool, out: Any) -> ScanCount:
        into = getattr(backend, "scan_into", None)
        if into is not None:
            result: ScanCount | None = into(s, e, m, out, max_pages=max_pages,
                                            max_regions=max_regions, reset=reset)
            if result is not None:
                return result
        cap = out_capacity(out, _impl.RegionArray)
        if cap == 0:
            raise ValueError("out has no room for a region (capacity 0)")
        if max_regions is None or max_regions > cap:
            max_regions = cap
        r = backend.scan(s, e, m, max_pages=max_pages, max_regions=max_regions, reset=reset)
        return ScanCount(_impl.copy_regions(r.regions, out), r.walk_end)

    def written(self, *, start: int | None = None, end: int | None = None) -> Any:
        """Pages written since arming or the last reset, as a RegionArray."""
        return self.scan(WRITTEN_MASKS, start=start, end=end).regions

    def collect(self, *, reset: bool = True, max_pages: int = 0, start: int | None = None,
                end: int | None = None, out: Any = None) -> Any:
        """Written pages, and (``reset=True``) reset them in the same step: a write
        racing the call is reported now or by a later collect, never lost (atomic
        where ``capabilities.atomic_reset``). ``max_pages`` bounds the answer;
        ``walk_end`` says where the next call should start for the rest.
        ``out``: a result buffer kept across calls, as for :meth:`scan` (returns
        ``ScanCount(nregions, walk_end)``; a full buffer bounds the answer)."""
        if (start is None and end is None and type(max_pages) is int
                and 0 <= max_pages <= U64_MAX):
            # the common call (the whole range, an int limit): what scan() does with
            # its checks known to pass, without their per-call cost
            backend = self._enter()
            try:
                if out is not None:
                    into = getattr(backend, "scan_into", None)
                    result = None if into is None else into(
                        self.start, self.end, WRITTEN_MASKS, out, max_pages=max_pages,
                        reset=reset)
                    if result is not None:
                        return result
                    return self._scan_into(backend, self.start, self.end, WRITTEN_MASKS,
                                           max_pages, None, reset, out)
                return backend.scan(self.start, self.end, WRITTEN_MASKS,
                                    max_pages=max_pages, reset=reset)
            finally:
                self._leave()
        return self.scan(WRITTEN_MASKS, start=start, end=end, max_pages=max_pages,
                         reset=reset, out=out)

    def reset(self, *, start: int | None = None, end: int | None = None) -> None:
        """Mark the range (default: everything tracked) not written."""
        backend = self._enter()
        try:
            s, e = self._range(start, end)
            backend.reset(s, e)
        finally:
            self._leave()

    def mark_written(self, start: int | None = None, end: int | None = None) -> None:
        """Report that ``[start, end)`` (default: everything tracked) is being written by
        something the mechanism cannot see: the kernel (``readinto()`` into tracked
        memory) or a device. Call it before such a write: the pages read as written,
        and with the mprotect backend they become writable, so the kernel's write
        does not fail with EFAULT. A no-op for backends that see every write
        (``capabilities.kernel_writes_seen``)."""
        backend = self._enter()
        try:
            s, e = self._range(start, end)
            backend.mark_written(s, e)
        finally:
            self._leave()

    def stats(self) -> dict[str, Any]:
        """The backend's statistics for this tracker (faults taken, pages coarsened,
        ...); ``{}`` for backends that keep none."""
        backend = self._enter()
        try:
            return dict(backend.stats())
        finally:
            self._leave()

    def offsets(self, regions: Iterable[Iterable[int]]) -> list[tuple[int, int]]:
        """Regions as ``(start, end)`` byte offsets into the tracked object, clipped to
        it (a shared first or last page is cut at the object's edges)."""
        base, size = self.object_address, self.object_length
        rows: Any
        try:                        # a RegionArray: its rows as lists, at C speed
            rows = memoryview(regions).tolist()  # type: ignore[arg-type]
        except TypeError:
            rows = regions
        out = []
        for r in rows:
            s, e = r[0], r[1]  # type: ignore[index]
            s, e = max(s - base, 0), min(e - base, size)
            if s < e:
                out.append((s, e))
        return out

    def written_offsets(self) -> list[tuple[int, int]]:
        """:meth:`written` as byte offsets into the tracked object."""
        return self.offsets(self.written())

    # -- lifetime ---------------------------------------------------------------------

    def close(self) -> None:
        """Stop tracking; the memory stays usable. Closing twice is harmless.

        Calls of other threads in progress finish first (close() waits for them);
        calls made after close() raise :class:`TrackerClosed`."""
        state = getattr(self, "_state", None)
        if state is None:                       # __init__ failed before it existed
            return
        tid = get_ident()
        with state:
            backend, self._backend = self._backend, None
        if backend is None:
            self._release_pin()
            return
        if not self._forked:
            # wait for the calls of other threads (a close() from inside a call of
            # this thread, e.g. a signal handler's, waits for the other threads only)
            self._closing = True
            drained = self._drained
            while True:
                drained.clear()
                if all(t == tid for t in list(self._inflight)):
                    break
                drained.wait()
        with _live_lock:
            _live.discard(self)
        try:
            if not self._forked:
                backend.unregister(self.start, self.end)
        finally:
            backend.close()
            self._release_pin()

    def _release_pin(self) -> None:
        pin, self._pin = getattr(self, "_pin", None), None
        if pin is not None:
            pin.release()

    def __enter__(self) -> Tracker:
        self._live()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001, S110 - nothing can be reported from __del__
            pass


def track(target: Any = None, length: int | None = None, *, backend: str = "auto",
          thp: bool = False, pid: int | None = None, partial_pages: bool = False,
          **options: Any) -> Tracker:
    """Start tracking writes to ``target``.

    ``target``: memory from :func:`pagescan.allocate`, a writable buffer-protocol
    object (numpy array, mmap, bytearray), or a page-aligned address with a
    ``length`` (or an ``(address, length)`` pair). ``backend``: a name, or
    ``"auto"`` for the best one that works here (``$PAGESCAN_BACKEND`` overrides
    "auto"). ``thp=False`` (default) keeps answers exact to the page by turning
    transparent huge pages off for the range; ``thp=True`` keeps them (a huge
    page then reports 2 MiB written). ``pid``: another process (backends with
    ``capabilities.other_processes``); with no ``target``, every writable
    mapping of that process is tracked. ``partial_pages``: an object that does not
    fill its pages is tracked with a :class:`PartialPageWarning` by backends that
    only read page state, and refused (:class:`RangeError`) by those that change
    the pages' protection (``capabilities.changes_protection``: mprotect), since
    the kernel's writes into neighbouring objects on those pages would fail with
    EFAULT; ``partial_pages=True`` accepts that. Other keyword ``options`` go to the
    backend (e.g. ``freeze=True`` for softdirty on another process: stop it while
    its bits are read and cleared).
    """
    if backend == "auto":
        backend = os.environ.get("PAGESCAN_BACKEND", "auto") or "auto"
    return Tracker(target, length, backend=backend, thp=thp, pid=pid,
                   partial_pages=partial_pages, **options)
