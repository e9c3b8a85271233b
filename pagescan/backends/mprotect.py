"""PROT_READ + a SIGSEGV handler written in C: write tracking on every Linux kernel.

How it works: arming (``reset``) makes the range PROT_READ. The first write to
a page faults; the handler (``_mprotect.c``, compiled into ``pagescan._core``)
records the page and gives write access back to it, and the write is retried.
A scan reads the per-page states and runs them through the core's filter/merge
rules, so masks, ``max_pages`` and ``max_regions`` behave as in every backend.

Get-and-reset is atomic: every page has a state changed with atomics only
(CLEAN -> UNPROT -> DIRTY in the handler, DIRTY -> COLLECTING -> CLEAN in a
collect, and only the owner of a page changes its protection), so a write
racing ``collect(reset=True)`` lands either before the collector's
``mprotect()``, in the page that collect reports, or after it, where it faults,
waits for the collector and is reported by the next collect. With ``max_pages``
only the pages reported are reset. Faults outside tracked ranges, and faults
that are not write-protection faults, go to the SIGSEGV handler that was there
before (``faulthandler`` keeps working); the handler is async-signal-safe.

Limits, each tested in tests/test_mprotect.py:

* Writes by the kernel are not seen, they fail: ``read()``/``readinto()`` from a
  file or socket into a tracked page that is clean (PROT_READ) fails with
  ``OSError(EFAULT)`` (or returns short, when part of the buffer was already
  written), since the kernel does not fault on user memory for a system call.
  Call :meth:`MprotectBackend.mark_written` on the part of the buffer first: it
  gives write access back and counts those pages as written (the uffd backend,
  ``capabilities.kernel_writes_seen``, sees such writes).
* ``vm.max_map_count`` (65530 by default): every isolated written page splits a
  mapping in three, so some 32k scattered written pages would exhaust it, and
  then ``mprotect()`` fails with ENOMEM (and so does every mmap/malloc of the
  process). The backend keeps an estimate of the mappings its tracking adds
  (``stats()["mappings"]``, exact unless other code changes the protection of
  tracked memory) under a budget: vm.max_map_count minus what the rest of the
  process uses, minus a headroom of 1/16 (at least 1024), set at every
  ``register``. A write that would go past the budget, or whose ``mprotect()``
  fails with ENOMEM anyway, makes the handler coarsen instead of splitting (or
  looping): it gives write access back to a larger span whose change merges
  mappings (the gap to the nearest written page, then aligned blocks of 64,
  512, ... pages, the whole range at worst) and reports all of it as written: a
  conservative answer, never a lost write. ``stats()["coarsened"]`` counts such
  pages and a :class:`MapCountWarning` is issued once per tracker. A reset that
  cannot re-protect a page (budget, or ENOMEM at a span edge) leaves it written
  (``stats()["reprotect_failed"]``). Only when even the whole range cannot be
  unprotected does the handler give up: it writes a message naming
  vm.max_map_count to stderr and passes the fault on to the previous handler
  (normally the end of the process, with faulthandler's traceback); if that
  handler recovers, the next ``scan()`` raises :class:`~pagescan.KernelError`.
  ``register`` write-faults one page of each private mapping of the range,
  contents unchanged: the kernel merges split mappings again only when they
  share an anon_vma, which a mapping gets at its first write fault; were that
  after arming, every written page would get its own, and the mappings of
  pages written once would never merge back.
* ``fork()``: the child inherits the handler but not the tracking. A
  ``pthread_atfork`` hook gives write access back to every tracked range in the
  child and forgets them, so the child writes freely (its copy is untracked);
  the Tracker it inherited raises :class:`~pagescan.TrackerClosed`. The parent
  is unaffected.
* Only stores through the page tables are seen. ``madvise(MADV_DONTNEED)``
  (the contents drop to zero) is no write; a program that changes the
  protection of tracked memory itself (``mprotect(PROT_READ|PROT_WRITE)`` on a
  clean page) makes its next writes invisible.
* Tracked memory must be readable and writable and not executable (PROT_EXEC
  would be lost); ``close()`` leaves it PROT_READ|PROT_WRITE. At most 64 ranges
  are tracked at once, by all trackers of the process.
* Every first write to a page costs a signal round trip (a few microseconds).
  Pages are exact to 4 KiB: ``thp`` is ignored (the kernel splits huge pages
  where protection changes).
* A SIGSEGV handler installed after a tracker was created sees the tracking
  faults first; creating a tracker puts this handler back on top. Enable
  faulthandler before tracking (``python -X faulthandler``, pytest does).
  ``faulthandler.disable()`` or anyone's ``sigaction(SIGSEGV)`` removes it: every
  ``reset``/``written``/``collect``/``mark_written`` checks (one sigaction() call)
  and puts it back on top, chaining to the handler in force (restored, not an
  error). A write to a clean tracked page between the removal and that call
  still goes to the other handler (by default: the end of the process).
* Asynchronous signal handlers may write tracked memory: the SIGSEGV handler
  runs with asynchronous signals blocked, and every section of a collect,
  reset, mark_written, register or close that owns pages or locks a handler
  waits for blocks them (``pthread_sigmask``, two calls per operation), so a
  handler never waits for the thread it interrupted; the signals are delivered
  right after. A Python signal handler that calls the tracker itself (not only
  writes) while the same thread is inside a call of that tracker still
  deadlocks on the tracker's lock.
* ``fork()`` while another thread is inside ``track()``/``close()``: the range
  table's lock is made anew in the child (``os.register_at_fork``; the C locks
  in the ``pthread_atfork`` hook), and an inherited tracker raises
  TrackerClosed before it takes its own lock.
* Unmapped or replaced memory: the backend changes the protection of the
  tracked mapping only. ``register`` records the identity of the range's
  mappings (no file, or device, inode and file offset; shared or private), and
  the trap (``WriteTrap.checks_mappings()``: PROCMAP_QUERY, Linux 6.11+, one
  ioctl per VMA) checks it before every protection change and at every scan:
  unmapped, replaced (``munmap`` + ``mmap``, ``mmap(MAP_FIXED)``), or made
  PROT_NONE/PROT_EXEC -> :class:`~pagescan.RangeError` ("no longer the tracked
  mapping: it was unmapped or replaced") from ``reset``/``written``/
  ``collect``/``mark_written``, nothing changed; ``close`` leaves it alone; the
  handler passes a store there on to the previous handler (a PROT_NONE page the
  program made is no longer let through). A range of anonymous memory split in
  more than 8 VMAs is checked by a scan in four ioctls (both ends, no executable
  or file-backed VMA inside), and a collect then checks the span it
  re-protects: a hole or PROT_NONE page inside is seen only by a call that
  would change its protection. Cannot be told apart: new anonymous private
  PROT_READ or PROT_READ|PROT_WRITE memory at the same address (no anon_vma in
  what the kernel shows), or the same file at the same offset; a replacement
  racing the check. Without PROCMAP_QUERY only ``reset`` and ``close`` check,
  reading ``/proc/self/maps`` (~0.5-1.5 ms); ``written``/``collect`` and the
  handler do not (checked on Debian 6.1 in the qemu lane: ENOTTY, the
  fallback). Do not unmap tracked memory while it is tracked.

Only the calling process's memory can be tracked.

Every step above is asked of the kernel seam (:class:`pagescan.kernel.WriteTrap`,
``kernel.write_trap()``): on Linux the C handler, on the simulator
(``backend="simulator", mechanism="mprotect"``) the model of it in
``pagescan/simulator/sigsegv.py``. The logic here runs unchanged over either.
"""

from __future__ import annotations

import errno
import itertools
import os
import platform
import sys
import threading
import warnings
from typing import Any, ClassVar

from .._impl import IMPLEMENTATION, impl
from .._types import Category, Masks, ScanResult
from ..constants import MADV_POPULATE_WRITE
from ..errors import KernelError, OverlapError, PagescanError, RangeError, TrackerClosed
from ..kernel import Kernel, LinuxKernel, WriteTrap
from ..procfs import Mapping
from .base import Backend, Capabilities, Probe

__all__ = ["MapCountWarning", "MprotectBackend"]

#: serializes handler installation and the range table's register/unregister
_table_lock = threading.Lock()


def _after_fork_in_child() -> None:
    """A thread of the parent may have held the lock at fork(): that thread does not
    exist in the child, so the child's copy would stay locked for good (its next
    track() would hang). The C side resets its own locks in a pthread_atfork hook."""
    global _table_lock
    _table_lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)

#: the categories this backend knows; masks that test others are refused
_KNOWN = int(Category.WRITTEN | Category.WPALLOWED)


class MapCountWarning(UserWarning):
    """The process ran out of memory mappings (vm.max_map_count): the mprotect
    backend reports some pages as written that were not (coarsening)."""


#: a part of a tracked range and what it is: (start, end, dev, inode, base, shared);
#: the file offset of address x is x + base (0 for memory without a file)
_Part = tuple[int, int, str, int, int, bool]

_NOT_OURS = ("is no longer the tracked mapping: it was unmapped or replaced since "
             "tracking started")


def _has_file(m: Mapping) -> bool:
    return m.inode != 0 or m.dev.strip("0:") != ""


def _identity(maps: list[Mapping], start: int, end: int) -> list[_Part]:
    """What ``[start, end)`` is, part by part (the mappings in ``/proc/PID/maps``)."""
    parts: list[_Part] = []
    for m in maps:
        s, e = max(m.start, start), min(m.end, end)
        if s >= e:
            continue
        part = (s, e, m.dev, m.inode, m.offset - m.start if _has_file(m) else 0, m.shared)
        if parts and parts[-1][1] == s and parts[-1][2:] == part[2:]:
            parts[-1] = (parts[-1][0], e, *part[2:])
        else:
            parts.append(part)
    return parts


def _foreign(maps: list[Mapping], identity: list[_Part], start: int, end: int) -> str | None:
    """What in ``[start, end)`` is no longer the tracked mapping (None: nothing):
    a hole, another mapping (device, inode, file offset, shared), or a protection
    the tracker never sets (not readable, executable). The same rules as the
    trap's own check (``_mprotect.c``, PROCMAP_QUERY), for kernels without it."""
    at = start
    for m in maps:
        if m.end <= at:
            continue
        if m.start >= end:
            break
        if m.start > at:
            return f"nothing is mapped at 0x{at:x}"
        if not m.readable or m.executable:
            return f"0x{m.start:x}-0x{m.end:x} is {m.perms}"
        base = m.offset - m.start if _has_file(m) else 0
        for s, e, dev, inode, b, shared in identity:
            if s < min(m.end, end) and max(m.start, start) < e and (
                    (dev, inode, shared) != (m.dev, m.inode, m.shared)
                    or ((inode or dev.strip("0:")) and b != base)):
                return f"0x{m.start:x}-0x{m.end:x} is {m.perms} {m.dev} {m.inode} {m.label}"
        at = m.end
    return None if at >= end else f"nothing is mapped at 0x{at:x}"


def _headroom(limit: int) -> int:
    """Mappings left to the rest of the process (malloc, thread stacks, Python's
    arenas) when the tracking has used its share of vm.max_map_count."""
    return max(1024, limit // 16)


class MprotectBackend(Backend):
    name: ClassVar[str] = "mprotect"
    priority: ClassVar[int] = 10
    capabilities: ClassVar[Capabilities] = Capabilities(
        atomic_reset=True,
        range_reset=True,
        other_processes=False,
        kernel_filtering=False,
        kernel_writes_seen=False,
        changes_protection=True,
        categories=int(Category.WPALLOWED),
        notes=("tracks the calling process only; works on every Linux kernel",
               "kernel writes (read()/readinto() into a clean tracked page) fail with "
               "EFAULT: call mark_written() on the buffer first",
               "past vm.max_map_count (~32k scattered written pages by default) pages are "
               "coarsened: reported written without a write, counted in stats()['coarsened']",
               "madvise(MADV_DONTNEED) and the program's own mprotect() calls on tracked "
               "memory are not seen",
               "tracked memory unmapped, replaced or made PROT_NONE/PROT_EXEC: RangeError, "
               "its protection left alone (checked with PROCMAP_QUERY, Linux 6.11+; before "
               "6.11 only reset() and close() check); new anonymous rw memory at the same address "
               "cannot be told apart",
               "each first write to a page costs a SIGSEGV round trip",
               "memory must be rw- (not executable); close() leaves it PROT_READ|PROT_WRITE",
               "fork(): the child's copy is untracked and writable"),
    )

    @classmethod
    def probe(cls, kernel: Kernel | None = None) -> Probe:
        if kernel is not None and not kernel.real:
            try:
                trap = kernel.write_trap()
            except OSError as err:
                return Probe(False, err.strerror or str(err), {})
            return Probe(True, "", {"kernel": kernel.release,
                                    "vm.max_map_count": kernel.max_map_count(),
                                    "handler_installed": trap.installed()})
        details: dict[str, object] = {"kernel": platform.release(),
                                      "machine": platform.machine()}
        if not sys.platform.startswith("linux"):
            return Probe(False, f"the mprotect backend needs Linux (this is {sys.platform})",
                         details)
        if IMPLEMENTATION != "cython":
            return Probe(False, "needs the compiled core (pagescan._core): the SIGSEGV "
                         "handler is C; the pure-Python reference is loaded", details)
        if not hasattr(impl, "mp_register"):
            return Probe(False, "pagescan._core was built without the mprotect backend "
                         "(_mprotect.c): rebuild with 'pip install .'", details)
        own = kernel is None
        try:
            k = LinuxKernel() if kernel is None else kernel
        except (OSError, PagescanError) as err:
            return Probe(False, getattr(err, "strerror", None) or str(err), details)
        try:
            details["vm.max_map_count"] = k.max_map_count()
            if not k.is_self:
                return Probe(False, "the mprotect backend tracks the calling process only",
                             details)
            details["write_fault_detection"] = (
                "page-fault error code" if platform.machine() in ("x86_64", "AMD64")
                else "every protection fault in a tracked range counts as a write")
            details["handler_installed"] = k.write_trap().installed()
        except (OSError, PagescanError) as err:
            return Probe(False, getattr(err, "strerror", None) or str(err), details)
        finally:
            if own:
                k.close()
        return Probe(True, "", details)

    def __init__(self, *, pid: int | None = None, thp: bool = False,
                 kernel: Kernel | None = None) -> None:
        if kernel is None and pid is not None and pid != os.getpid():
            raise ValueError("the mprotect backend tracks only the calling process's memory; "
                             "use backend='softdirty' for another process")
        super().__init__(pid=pid, thp=thp, kernel=kernel)
        self.thp = thp                      # ignored: protection is per 4 KiB page
        self._handle: int | None = None
        self._lock = threading.Lock()
        self._warned = False
        #: what the range was at register (for kernels where the trap cannot check)
        self._identity: list[_Part] | None = None
        self._trap_checks = False
        self._range: tuple[int, int] | None = None
        try:
            if not self.kernel.is_self:
                raise ValueError("the mprotect backend tracks only the calling process's "
                                 "memory; use backend='softdirty' for another process")
            try:
                self._trap: WriteTrap = self.kernel.write_trap()
            except OSError as err:
                raise KernelError(err.errno or errno.ENOSYS,
                                  f"the mprotect backend cannot work here: {err.strerror}"
                                  ) from err
        except BaseException:
            self.kernel.close()
            raise
        #: the process whose trap this is (another one after fork())
        self._owner = self._trap.owner()

    # -- /proc/PID/maps ------------------------------------------------------------

    def _read_maps(self, start: int, end: int) -> tuple[list[Mapping], int] | None:
        """The mappings that overlap ``[start, end)`` and how many mappings the
        process has in all; None when they cannot be read."""
        try:
            maps = self.kernel.maps()
        except (OSError, PagescanError):
            return None
        return [m for m in maps if m.start < end and start < m.end], len(maps)

    def _mappings(self, start: int, end: int) -> list[Mapping] | None:
        found = self._read_maps(start, end)
        return None if found is None else found[0]

    def _map_count_text(self) -> str:
        limit = self.kernel.max_map_count()
        try:
            used: int | None = len(self.kernel.maps())
        except (OSError, PagescanError):
            used = None
        return (f"vm.max_map_count={limit or '?'}, this process has {used or '?'} mappings; "
                "every isolated written page costs two")

    def _prepare(self, maps: list[Mapping], start: int, end: int) -> None:
        """Give every private mapping of the range its anon_vma before arming splits it.

        The kernel merges two neighbouring mappings only when they share an
        anon_vma; a mapping gets one at its first write fault. If that first fault
        came after arming split the mapping, every piece would get its own and the
        pieces could never merge again: every page written once would cost
        mappings for good. One page per mapping is write-faulted now, its contents
        unchanged (MADV_POPULATE_WRITE, or a CAS of a byte with itself before
        Linux 5.14)."""
        ps = self.kernel.page_size
        for m in maps:
            if m.shared:
                continue                    # shared: merged by file offset, no anon_vma
            page = max(m.start, start)
            if page >= min(m.end, end):
                continue
            try:
                self.kernel.madvise(page, ps, MADV_POPULATE_WRITE)
            except OSError:
                self._trap.touch(page)

    # -- registration -------------------------------------------------------

    def register(self, start: int, end: int) -> None:
        trap = self._trap
        if trap.overlapping(start, end):
            raise self._error(OSError(errno.EEXIST, "overlap"), start, end)
        found = self._read_maps(start, end)
        maps, total = found if found is not None else (None, None)
        if maps is not None:
            at = start
            for m in maps:
                if m.start > at:
                    break
                if m.perms[:2] != "rw" or m.executable:
                    raise RangeError(
                        f"[0x{max(m.start, start):x}, 0x{min(m.end, end):x}) is mapped "
                        f"{m.perms}: the mprotect backend tracks read-write, non-executable "
                        "memory only")
                at = m.end
            if at < end:
                raise RangeError(f"[0x{start:x}, 0x{end:x}) is not entirely mapped")
            self._prepare(maps, start, end)
            self._identity = _identity(maps, start, end)
        with _table_lock:
            limit = self.kernel.max_map_count()
            if limit is not None and total is not None:
                # the tracking's share: what the rest of the process does not use,
                # minus a headroom (set again by every register, as the process grows)
                others = total - trap.stats()["mappings"]
                trap.set_budget(max(0, limit - others - _headroom(limit)))
            try:
                trap.install()
                checks = trap.checks_mappings()
                handle = trap.register(start, end)
            except OSError as err:
                raise self._error(err, start, end) from err
        self._handle = handle
        self._trap_checks = checks
        self._range = (start, end)
        try:
            self._reset(start, end, verify=False)
        except BaseException:
            self.unregister(start, end)
            raise

    def unregister(self, start: int, end: int) -> None:
        if self._trap.owner() != self._owner:
            self._handle = None             # inherited through fork(): nothing to undo
            return
        with self._lock:
            handle, self._handle = self._handle, None
            if handle is None or self._trap.owner() != self._owner:
                return
            # where the trap cannot check (before 6.11), the maps tell whether the
            # range is still the tracked mapping (else its protection is left alone)
            leave = False
            if not self._trap_checks and self._range is not None:
                try:
                    self._verify(*self._range)
                except RangeError:
                    leave = True
            with _table_lock:
                try:
                    self._trap.unregister(handle, leave)
                except OSError as err:
                    # ENOMEM: unmapped under the tracker (nothing left to protect);
                    # ENXIO: no longer the tracked mapping (left alone); ESTALE:
                    # already gone
                    if err.errno not in (errno.ENOMEM, errno.ENXIO, errno.ESTALE):
                        raise KernelError(err.errno, err.strerror) from err

    # -- tracking -----------------------------------------------------------

    def _inherited(self) -> None:
        """Raise TrackerClosed in the child of a fork() (before taking ``self._lock``,
        which a parent's thread may have held at the fork)."""
        if self._trap.owner() != self._owner:
            raise TrackerClosed("this mprotect tracker was inherited through fork(): the "
                                "child's copy of the memory is untracked; create a new "
                                "tracker there")

    def _live(self) -> int:
        if self._trap.owner() != self._owner:
            raise TrackerClosed("this mprotect tracker was inherited through fork(): the "
                                "child's copy of the memory is untracked; create a new "
                                "tracker there")
        if self._handle is None:
            raise TrackerClosed("the mprotect backend is not tracking this range")
        return self._handle

    def reset(self, start: int, end: int) -> None:
        self._reset(start, end, verify=True)

    def _reset(self, start: int, end: int, *, verify: bool) -> None:
        self._inherited()
        with self._lock:
            handle = self._live()
            self._reinstall()
            if verify and not self._trap_checks:
                self._verify(start, end)
            try:
                left = self._trap.arm(handle, start, end)
            except OSError as err:
                raise self._error(err, start, end) from err
            self._after(handle, left, start, end)

    def scan(self, start: int, end: int, masks: Masks, *, max_pages: int = 0,
             max_regions: int | None = None, reset: bool = False) -> ScanResult:
        if not masks.matches_nothing and (masks.mask | masks.anyof) & ~_KNOWN:
            unknown = Category((masks.mask | masks.anyof) & ~_KNOWN)
            raise ValueError(f"the mprotect backend knows only WRITTEN and WPALLOWED; these "
                             f"masks test {unknown!r} (use backend='uffd' or 'softdirty')")
        self._inherited()
        with self._lock:
            handle = self._live()
            self._reinstall()
            self._check_error(handle)
            try:
                result, left = self._trap.scan(handle, start, end, masks, max_pages,
                                               max_regions, reset)
            except OSError as err:
                raise self._error(err, start, end) from err
            self._after(handle, left, start, end)
        return result

    def mark_written(self, start: int, end: int) -> None:
        """Give write access back to ``[start, end)`` (page-aligned, inside the
        tracked range) and count it as written: call it before a kernel write
        (``readinto()``) into tracked memory, which would otherwise fail with EFAULT."""
        self._inherited()
        with self._lock:
            handle = self._live()
            self._reinstall()
            try:
                self._trap.mark_written(handle, start, end)
            except OSError as err:
                raise self._error(err, start, end) from err

    def stats(self) -> dict[str, Any]:
        """Counters of this range: ``faults`` (write faults handled), ``coarsened``
        (pages reported written without a write, vm.max_map_count),
        ``coarsen_events``, ``reprotect_failed`` (pages a reset left written),
        ``error`` (sticky errno of a fault that could not be handled, else 0),
        ``mappings`` (the mappings this range's tracking adds now, estimated) and
        ``budget`` (how many all ranges may add together before coarsening)."""
        self._inherited()
        with self._lock:
            handle = self._live()
            return dict(self._trap.stats(handle))

    def _reinstall(self) -> None:
        """Put the SIGSEGV handler back on top if someone replaced it since
        (``faulthandler.disable()`` restores the handler faulthandler found, any
        ``sigaction(SIGSEGV)`` overrides it): re-installed on top, chaining to the
        handler in force now. One sigaction() call when nothing changed."""
        try:
            self._trap.install()
        except OSError as err:
            raise KernelError(err.errno or errno.EINVAL,
                              f"cannot re-install the SIGSEGV handler: {err.strerror}") from err

    def _verify(self, start: int, end: int) -> None:
        """Where the trap cannot check its mappings itself (a kernel without
        PROCMAP_QUERY, before 6.11): compare ``/proc/PID/maps`` with what the range
        was at register, before a reset changes protections. It costs a read of
        the whole maps file (~1.5 ms in a small process), so only ``reset`` does
        it: ``collect``/``written`` and the fault handler do not check there."""
        if self._identity is None:
            return
        maps = self._mappings(start, end)
        if maps is None:
            return
        what = _foreign(maps, self._identity, start, end)
        if what is not None:
            raise RangeError(f"[0x{start:x}, 0x{end:x}) {_NOT_OURS} ({what})")

    # -- errors -------------------------------------------------------------

    def _check_error(self, handle: int) -> None:
        st = self._trap.stats(handle)
        if st["error"]:
            err = int(st["error"])
            if err == errno.ENXIO:
                raise RangeError(f"a write to the tracked page at 0x{st['error_addr']:x} "
                                 f"could not be handled: the range around it {_NOT_OURS}")
            what = (f"the process ran out of memory mappings ({self._map_count_text()}) and "
                    "even unprotecting the whole range failed" if err == errno.ENOMEM
                    else os.strerror(err))
            raise KernelError(err, f"a write to the tracked page at 0x{st['error_addr']:x} "
                              f"could not be handled: {what}; the answers of this tracker "
                              "are no longer reliable (raise vm.max_map_count or use "
                              "backend='uffd')")

    def _after(self, handle: int, left: int, start: int, end: int) -> None:
        """After a reset: pages that could not be re-protected, and coarsening."""
        if left:
            maps = self._mappings(start, end)
            if maps is not None and (not maps or maps[0].start > start
                                     or any(a.end < b.start
                                            for a, b in itertools.pairwise(maps))
                                     or maps[-1].end < end):
                raise RangeError(f"[0x{start:x}, 0x{end:x}) is no longer mapped: it was "
                                 "unmapped while tracked")
        if self._warned:
            return
        st = self._trap.stats(handle)
        if st["coarsened"] or st["reprotect_failed"]:
            self._warned = True
            warnings.warn(
                f"the tracking used its share of vm.max_map_count ({st['budget']} "
                f"mappings; {self._map_count_text()}): {st['coarsened']} pages are reported "
                f"written without a write and {st['reprotect_failed']} could not be "
                "re-protected (answers are conservative, no write is lost); raise "
                "vm.max_map_count or use backend='uffd'", MapCountWarning, stacklevel=4)

    def _error(self, err: OSError, start: int, end: int) -> Exception:
        e = err.errno
        if e == errno.EEXIST:
            return OverlapError(f"[0x{start:x}, 0x{end:x}) overlaps a range the mprotect "
                                "backend already tracks")
        if e == errno.ENOSPC:
            return KernelError(e, "the mprotect backend tracks at most "
                               f"{self._trap.max_ranges} ranges at once: close a tracker first")
        if e == errno.ESTALE:
            return TrackerClosed("the mprotect backend no longer tracks this range")
        if e == errno.EINVAL:
            return RangeError(f"[0x{start:x}, 0x{end:x}): {err.strerror}")
        if e == errno.ENXIO:
            return RangeError(f"[0x{start:x}, 0x{end:x}) {_NOT_OURS} (or made PROT_NONE or "
                              "PROT_EXEC): its protection is left alone")
        if e == errno.ENOMEM:
            maps = self._mappings(start, end)
            if maps is not None and sum(min(m.end, end) - max(m.start, start) for m in maps) \
                    < end - start:
                return RangeError(f"[0x{start:x}, 0x{end:x}) is not entirely mapped")
            return KernelError(e, "mprotect() ran out of memory mappings: "
                               f"{self._map_count_text()}")
        return KernelError(e, err.strerror)

    def close(self) -> None:
        trap = getattr(self, "_trap", None)
        if self._handle is not None and trap is not None and trap.owner() == self._owner:
            self.unregister(0, 0)
        self._handle = None
        super().close()
