"""The kernel seam: what a backend asks of a kernel, for one process.

A backend never calls the operating system itself: it holds a :class:`Kernel`
(``self.kernel``) and asks it to read pagemap entries, run PAGEMAP_SCAN, write
``clear_refs``, register ranges with a userfaultfd, change protections, read
``/proc/PID/maps``. :class:`LinuxKernel` answers with system calls;
:class:`pagescan.simulator.SimKernel` answers from the simulator's model. So the
same backend code runs on the real kernel and on a simulated one
(``backend="simulator", mechanism="softdirty"``), and a third-party backend written
against this interface can be compared on the simulator too.

Errors: the calls that stand for a system call (``pagemap_scan``, ``mprotect``,
``madvise``, the userfaultfd ioctls) raise ``OSError`` with the kernel's errno, as
the kernel answered; the backend knows what the errno means for it. The calls
that read or write ``/proc`` files (``maps``, ``pagemap_read``, ``clear_refs``,
``status``) raise pagescan's errors (:class:`~pagescan.NoSuchProcess`,
:class:`~pagescan.AccessDenied`, :class:`~pagescan.KernelError`) through
:func:`pagescan.procfs.proc_error`.
"""

from __future__ import annotations

import abc
import contextlib
import ctypes
import errno
import fcntl
import functools
import mmap
import os
import platform
import struct
from collections.abc import Iterator
from typing import Any, ClassVar

from . import procfs
from ._impl import IMPLEMENTATION, impl
from ._sysinfo import has_capability, sysctl
from ._types import ALL_CATEGORIES, Category, Masks, ScanResult
from .constants import (PROCMAP_QUERY, PROCMAP_QUERY_COVERING_OR_NEXT_VMA, PROCMAP_QUERY_SIZE,
                        PROCMAP_QUERY_VMA_EXECUTABLE, PROCMAP_QUERY_VMA_READABLE,
                        PROCMAP_QUERY_VMA_SHARED, PROCMAP_QUERY_VMA_WRITABLE)
from .errors import KernelError, NoSuchProcess, PagescanError
from .procfs import Mapping

__all__ = [
    "PAGE_SIZE",
    "REAL_PROBES",
    "UFFD_FEATURE_WP_ASYNC",
    "UFFD_FEATURE_WP_HUGETLBFS_SHMEM",
    "UFFD_FEATURE_WP_UNPOPULATED",
    "Kernel",
    "LinuxKernel",
    "LinuxWriteTrap",
    "Scratch",
    "Uffd",
    "WriteTrap",
]

PAGE_SIZE = mmap.PAGESIZE
# (moves to pagescan.constants with H7's constants module)
UFFD_FEATURE_WP_HUGETLBFS_SHMEM = 1 << 12
UFFD_FEATURE_WP_UNPOPULATED = 1 << 13
UFFD_FEATURE_WP_ASYNC = 1 << 15
PM_SCAN_WP_MATCHING = 1 << 0
PM_SCAN_CHECK_WPASYNC = 1 << 1
CLEAR_REFS_SOFT_DIRTY = 4
CAP_SYS_PTRACE = 19


class Uffd(abc.ABC):
    """A userfaultfd in write-protect mode (what the uffd backend uses of one)."""

    #: the features the kernel granted (UFFDIO_API)
    features: int

    @property
    @abc.abstractmethod
    def closed(self) -> bool: ...

    @abc.abstractmethod
    def register_wp(self, addr: int, length: int) -> None:
        """UFFDIO_REGISTER in write-protect mode."""

    @abc.abstractmethod
    def unregister(self, addr: int, length: int) -> None:
        """UFFDIO_UNREGISTER."""

    @abc.abstractmethod
    def writeprotect(self, addr: int, length: int, on: bool = True) -> None:
        """UFFDIO_WRITEPROTECT: protect (arm) or unprotect the range."""

    @abc.abstractmethod
    def close(self) -> None:
        """close(): every range registered with it is unregistered."""


class Scratch(abc.ABC):
    """A few pages of private anonymous memory of the kernel's process, for probes:
    ``addr``, and :meth:`write` stores a byte as the program would."""

    addr: int
    npages: int

    @abc.abstractmethod
    def write(self, offset: int, value: int = 1) -> None: ...


# ------------------------------------------------------------------ write-fault trap
# What the mprotect backend asks of a kernel: a SIGSEGV write-fault trap over
# ranges of the process (pagescan/_mprotect.c on Linux, pagescan/simulator/sigsegv.py
# in the model). The backend's own logic (checks, budget, preparation, errors)
# stays in pagescan/backends/mprotect.py.


class WriteTrap(abc.ABC):
    """A process's write-fault trap: the SIGSEGV handler of the mprotect backend
    and its table of trapped ranges (one trap per process, shared by its trackers).

    Every page of a trapped range has a state: CLEAN (PROT_READ: the next write
    faults), UNPROT (a fault handler is giving write access back), DIRTY (written
    since the last reset), COLLECTING (a collect is re-protecting it), COARSE
    (unprotected without a write, the map count ran out). A write fault runs
    CLEAN -> UNPROT -> DIRTY; a reset or collect DIRTY -> COLLECTING -> CLEAN.

    A range is named by a handle; a stale handle gets ``OSError(ESTALE)``. Every
    call raises OSError with the errno of the failing step: EINVAL (bad or
    unaligned range), EEXIST (overlaps a trapped range), ENOSPC (table full),
    ENOMEM (not entirely mapped; mprotect past the map count), ENXIO (no longer
    the mapping it registered, see :meth:`checks_mappings`).
    """

    #: how many ranges can be trapped at once (by all trackers of the process)
    max_ranges: int

    @abc.abstractmethod
    def owner(self) -> int:
        """The pid of the process this trap belongs to, as seen now (it changes in
        the child of a fork(), whose copy of the memory is untracked)."""

    @abc.abstractmethod
    def install(self) -> bool:
        """Put the handler on top of the SIGSEGV handler in force (chaining to it);
        True when it was installed by this call."""

    @abc.abstractmethod
    def installed(self) -> bool:
        """Whether the SIGSEGV handler in force is this trap's."""

    @abc.abstractmethod
    def register(self, start: int, end: int) -> int:
        """Trap ``[start, end)`` (page-aligned, mapped): every page DIRTY, the
        protection unchanged. Returns the handle."""

    @abc.abstractmethod
    def unregister(self, handle: int, leave: bool = False) -> None:
        """PROT_READ|PROT_WRITE back on the whole range, then forget it; with
        ``leave`` (the caller found it is no longer the mapping it registered)
        the protection is left alone."""

    @abc.abstractmethod
    def arm(self, handle: int, start: int, end: int) -> int:
        """Reset ``[start, end)`` (part of the range): DIRTY pages back to PROT_READ
        and CLEAN. Returns how many pages could not be re-protected (left DIRTY)."""

    @abc.abstractmethod
    def scan(self, handle: int, start: int, end: int, masks: Masks | None = None,
             max_pages: int = 0, max_regions: int | None = None, reset: bool = False
             ) -> tuple[ScanResult, int]:
        """The regions of ``[start, end)`` matching ``masks`` (WPALLOWED on every
        page, WRITTEN unless CLEAN; the rules of scan_pages), and with ``reset``
        the written pages of those regions reset. Returns ``(result, left)``:
        ``left`` counts pages that could not be re-protected."""

    @abc.abstractmethod
    def mark_written(self, handle: int, start: int, end: int) -> None:
        """Give write access back to ``[start, end)`` and mark it DIRTY (before a
        kernel write into it, which does not fault into the handler)."""

    @abc.abstractmethod
    def stats(self, handle: int = 0) -> dict[str, int]:
        """Counters of one range, or (handle 0) of every range since the start:
        faults, coarsened, coarsen_events, reprotect_failed, retries, error,
        error_addr, mappings (estimated mappings the trapping adds), budget."""

    @abc.abstractmethod
    def set_budget(self, budget: int) -> None:
        """How many mappings the trapping of all ranges may add before a write
        fault coarsens instead of splitting a mapping."""

    @abc.abstractmethod
    def live(self) -> int:
        """How many ranges are trapped now."""

    @abc.abstractmethod
    def overlapping(self, start: int, end: int) -> int:
        """How many trapped ranges overlap ``[start, end)``."""

    @abc.abstractmethod
    def touch(self, addr: int) -> None:
        """Write-fault the page at ``addr`` without changing its contents."""

    @abc.abstractmethod
    def inject_enomem(self, count: int) -> None:
        """Test hook: the handler's next ``count`` mprotect() calls fail with
        ENOMEM, as when vm.max_map_count is reached."""

    def checks_mappings(self) -> bool:
        """Whether the trap itself makes sure that it changes the protection of its
        own mappings only. Then ``register`` records the identity of the range's
        VMAs (no file, or device, inode and file offset; shared or private), and
        ``arm``, ``scan``, ``mark_written`` and ``unregister`` first check that
        every VMA of their span still has it and a protection the trap sets
        (readable, not executable): where one does not (unmapped, replaced by
        another mapping, made PROT_NONE or PROT_EXEC) they raise
        ``OSError(ENXIO)`` and change nothing (``unregister`` forgets the range),
        and the handler passes a fault there on instead of unprotecting the page.
        On Linux this is PROCMAP_QUERY (6.11+). False: nothing is checked, the
        caller must compare ``/proc/PID/maps`` itself."""
        return False

    def set_mapping_checks(self, on: bool) -> None:  # noqa: B027 - optional test hook
        """Test hook: ``False`` makes :meth:`checks_mappings` false and ranges
        registered from then on unchecked, as on a kernel without the means."""


class Kernel(abc.ABC):
    """What a backend asks of a kernel, for ONE process (:attr:`pid`)."""

    #: the process
    pid: int
    #: whether this drives the real kernel (False for the simulator)
    real: ClassVar[bool] = True
    page_size: int = PAGE_SIZE

    @property
    @abc.abstractmethod
    def is_self(self) -> bool:
        """Whether the process is the calling one (its memory is ours)."""

    @property
    @abc.abstractmethod
    def release(self) -> str:
        """The kernel's release (``platform.release()``; the simulator's model)."""

    @property
    @abc.abstractmethod
    def probe_cache(self) -> dict[str, Any]:
        """Where backends keep what their probe found about this kernel (once per
        kernel: the real one, or a simulated process's)."""

    # -- /proc ---------------------------------------------------------------------

    @abc.abstractmethod
    def maps(self) -> list[Mapping]:
        """The mappings of the process (``/proc/PID/maps``)."""

    def mappings_in(self, start: int, end: int) -> list[Mapping]:
        """The mappings that overlap ``[start, end)`` (paths may be left empty where
        the kernel answers without them). A kernel may answer this more cheaply than
        :meth:`maps` (Linux 6.11+: PROCMAP_QUERY, no text to generate and parse)."""
        return [m for m in self.maps() if m.start < end and start < m.end]

    @abc.abstractmethod
    def alive(self) -> bool:
        """Whether the process exists and has not exited."""

    @abc.abstractmethod
    def status(self) -> dict[str, str]:
        """``/proc/PID/status`` fields."""

    def huge_mappings(self, start: int, end: int) -> list[Mapping] | None:
        """The mappings overlapping ``[start, end)`` that have PMD-mapped transparent
        huge pages now (``/proc/PID/smaps``: AnonHugePages, ShmemPmdMapped,
        FilePmdMapped); None when the kernel cannot tell (then any may have)."""
        return None

    @abc.abstractmethod
    def pagemap_read(self, start: int, out: memoryview) -> None:
        """Fill ``out`` (a writable byte buffer, a multiple of 8 bytes) with the
        ``/proc/PID/pagemap`` entries of the pages from ``start`` on."""

    @abc.abstractmethod
    def clear_refs(self, value: int = CLEAR_REFS_SOFT_DIRTY) -> None:
        """Write ``value`` to ``/proc/PID/clear_refs`` (4: clear soft-dirty of the
        whole process)."""

    # -- PAGEMAP_SCAN ----------------------------------------------------------------

    @abc.abstractmethod
    def pagemap_scan(self, start: int, end: int, flags: int = 0, masks: Masks | None = None,
                     max_pages: int = 0, max_regions: int | None = None) -> ScanResult:
        """PAGEMAP_SCAN over ``[start, end)`` until done (resuming on walk_end), as
        ``pagescan._core.pm_scan``. ENOTTY where the kernel has no PAGEMAP_SCAN."""

    def scan_categories(self) -> int:
        """The categories this kernel's PAGEMAP_SCAN accepts: GUARD arrived in 6.15 and
        older kernels refuse masks that name it (EINVAL). Found once per kernel."""
        cache = self.probe_cache
        if "scan_categories" not in cache:
            with self.scratch(1) as s:
                try:
                    self.pagemap_scan(s.addr, s.addr + self.page_size, 0,
                                      Masks(return_mask=ALL_CATEGORIES))
                except OSError as err:
                    if err.errno != errno.EINVAL:
                        raise
                    cache["scan_categories"] = ALL_CATEGORIES & ~int(Category.GUARD)
                else:
                    cache["scan_categories"] = ALL_CATEGORIES
        return int(cache["scan_categories"])

    # -- memory ----------------------------------------------------------------------

    @abc.abstractmethod
    def mprotect(self, addr: int, length: int, prot: int) -> None: ...

    @abc.abstractmethod
    def madvise(self, addr: int, length: int, advice: int) -> None: ...

    @abc.abstractmethod
    def is_mapped(self, addr: int, length: int) -> bool:
        """Whether every page of the range has a mapping."""

    @abc.abstractmethod
    def scratch(self, npages: int) -> contextlib.AbstractContextManager[Scratch]:
        """A context manager giving :class:`Scratch` pages (unmapped after)."""

    # -- userfaultfd -----------------------------------------------------------------

    @abc.abstractmethod
    def userfaultfd(self, features: int, optional: int = 0) -> Uffd:
        """A userfaultfd (user-mode only where the kernel has the flag) with the API
        handshake for ``features``, plus those of ``optional`` the kernel has. OSError
        with a text naming the cause when it is refused or a feature is missing."""

    # -- write-fault trap (the mprotect backend) -------------------------------------
    # The SIGSEGV handler that gives write access back to a PROT_READ page on its
    # first write and records it (see WriteTrap); the mprotect backend's own logic
    # (checks, map-count budget, preparation, errors) is in backends/mprotect.py.

    def write_trap(self) -> WriteTrap:
        """The write-fault trap of the process (one per process, shared by every
        tracker of it). ``OSError(ENOSYS)`` where there is none (a kernel object
        for another process, the pure-Python core)."""
        raise OSError(errno.ENOSYS, f"{type(self).__name__} has no write-fault trap")

    def max_map_count(self) -> int | None:
        """How many mappings a process may have (``vm.max_map_count``); None when
        unknown."""
        return None

    # <<< end of the write-fault trap section

    def close(self) -> None:  # noqa: B027 - optional: kernels holding nothing
        """Release what the kernel object holds (file descriptors)."""

    def __enter__(self) -> Kernel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ============================================================================ Linux

_HUGE_FIELDS = (b"AnonHugePages:", b"ShmemPmdMapped:", b"FilePmdMapped:")


def _smaps_huge(text: bytes) -> Iterator[tuple[Mapping, int]]:
    """Each mapping of a ``/proc/PID/smaps`` text with its kB mapped by PMDs."""
    cur: Mapping | None = None
    kb = 0
    for line in text.splitlines():
        head = line.split(None, 1)[0] if line.strip() else b""
        if head.endswith(b":"):
            if head in _HUGE_FIELDS:
                kb += int(line.split()[1])
            continue
        if cur is not None:
            yield cur, kb
        parsed = procfs.parse_maps(line)
        cur, kb = (parsed[0] if parsed else None), 0
    if cur is not None:
        yield cur, kb


def _start_time(pid: int) -> int:
    """The start time of process ``pid`` (``/proc/PID/stat`` field 22)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError as err:
        raise procfs.proc_error(err, pid, f"reading /proc/{pid}/stat") from err
    return int(stat.rsplit(b")", 1)[1].split()[19])

#: what backends' probes found about the running kernel (LinuxKernel.probe_cache)
REAL_PROBES: dict[str, Any] = {}


class _LinuxUffd(Uffd):
    __slots__ = ("fd", "features")

    def __init__(self, fd: int, features: int) -> None:
        self.fd = fd
        self.features = features

    @property
    def closed(self) -> bool:
        return self.fd < 0

    def register_wp(self, addr: int, length: int) -> None:
        impl.uffd_register_wp(self.fd, addr, length)

    def unregister(self, addr: int, length: int) -> None:
        impl.uffd_unregister(self.fd, addr, length)

    def writeprotect(self, addr: int, length: int, on: bool = True) -> None:
        impl.uffd_writeprotect(self.fd, addr, length, on)

    def close(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)


class _LinuxScratch(Scratch):
    def __init__(self, npages: int) -> None:
        self.npages = npages
        self.mem = mmap.mmap(-1, npages * PAGE_SIZE,
                             flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        import ctypes
        cell = ctypes.c_char.from_buffer(self.mem)
        self.addr = ctypes.addressof(cell)
        del cell

    def write(self, offset: int, value: int = 1) -> None:
        self.mem[offset] = value


class LinuxWriteTrap(WriteTrap):
    """The trap of this process: the C handler in pagescan._core (_mprotect.c)."""

    def __init__(self) -> None:
        if not hasattr(impl, "mp_register"):
            raise OSError(errno.ENOSYS, "pagescan._core was built without the mprotect "
                          "backend (_mprotect.c), or the pure-Python reference is loaded")
        self._c = impl
        self.max_ranges = int(impl.MP_MAX_RANGES)

    def owner(self) -> int:
        return os.getpid()

    def install(self) -> bool:
        return bool(self._c.mp_install())

    def installed(self) -> bool:
        return bool(self._c.mp_installed())

    def register(self, start: int, end: int) -> int:
        return int(self._c.mp_register(start, end))

    def unregister(self, handle: int, leave: bool = False) -> None:
        self._c.mp_unregister(handle, leave)

    def arm(self, handle: int, start: int, end: int) -> int:
        return int(self._c.mp_arm(handle, start, end))

    def scan(self, handle: int, start: int, end: int, masks: Masks | None = None,
             max_pages: int = 0, max_regions: int | None = None, reset: bool = False
             ) -> tuple[ScanResult, int]:
        result, left = self._c.mp_scan(handle, start, end, masks, max_pages, max_regions,
                                       reset)
        return result, int(left)

    def mark_written(self, handle: int, start: int, end: int) -> None:
        self._c.mp_mark_written(handle, start, end)

    def stats(self, handle: int = 0) -> dict[str, int]:
        return dict(self._c.mp_stats(handle))

    def set_budget(self, budget: int) -> None:
        self._c.mp_set_budget(budget)

    def live(self) -> int:
        return int(self._c.mp_live())

    def overlapping(self, start: int, end: int) -> int:
        return int(self._c.mp_overlapping(start, end))

    def touch(self, addr: int) -> None:
        self._c.mp_touch(addr)

    def inject_enomem(self, count: int) -> None:
        self._c.mp_inject_enomem(count)

    def checks_mappings(self) -> bool:
        return bool(self._c.mp_checks())

    def set_mapping_checks(self, on: bool) -> None:
        self._c.mp_set_checks(bool(on))


_LINUX_TRAP: list[LinuxWriteTrap] = []


#: room for a mapping's name (PATH_MAX, with its NUL)
_NAME_MAX = 4096
#: set once PROCMAP_QUERY was refused (a kernel before 6.11): ask /proc text instead
_PROCMAP_QUERY_MISSING: list[bool] = []


class LinuxKernel(Kernel):
    """The running Linux kernel, for process ``pid`` (None: the calling process).

    ``/proc/PID/pagemap`` is opened at once; for another process ``maps`` too, so
    that a reused pid is never mistaken for the process (the files stay bound to the
    process they were opened for). ``clear_refs`` is opened on its first use (reading
    needs ptrace-read rights only; clearing needs the right to write that file), and
    for another process only after checking that the pid still names the process
    this object was made for (its start time).
    """

    real: ClassVar[bool] = True

    def __init__(self, pid: int | None = None) -> None:
        self._self = pid is None or pid == os.getpid()
        self.pid = os.getpid() if pid is None else pid
        self._name = "self" if self._self else str(self.pid)
        self._fds: dict[str, int] = {}
        try:
            self._fds["pagemap"] = procfs.open_proc(self._name, "pagemap")
            if not self._self:
                self._fds["maps"] = procfs.open_proc(self.pid, "maps")
                self._started = _start_time(self.pid)
        except BaseException:
            self.close()
            raise
        # the hot path: PAGEMAP_SCAN straight into the compiled core, no Python frame
        if IMPLEMENTATION == "cython":
            self.pagemap_scan = functools.partial(  # type: ignore[method-assign]
                impl.pm_scan, self._fds["pagemap"])

    def __repr__(self) -> str:
        return f"<LinuxKernel pid={self.pid}{' (self)' if self._self else ''}>"

    @property
    def is_self(self) -> bool:
        return self._self

    @property
    def release(self) -> str:
        return platform.release()

    @property
    def probe_cache(self) -> dict[str, Any]:
        return REAL_PROBES

    @property
    def pagemap_fd(self) -> int:
        """The open ``/proc/PID/pagemap`` descriptor (for benchmarks and tools that
        call the core's ``pm_scan`` directly)."""
        return self._fd("pagemap")

    def _fd(self, name: str) -> int:
        fd = self._fds.get(name, -1)
        if fd < 0:
            if not self._fds:
                raise KernelError(errno.EBADF, "the kernel object is closed")
            flags = os.O_WRONLY if name == "clear_refs" else os.O_RDONLY
            fd = procfs.open_proc(self._name, name, flags)
            if not self._self:
                try:
                    # opened late: the pid must still name the process of the open
                    # pagemap and maps files (the start time of a reused pid differs)
                    same = _start_time(self.pid) == self._started
                except PagescanError:
                    same = False
                if not same:
                    os.close(fd)
                    raise NoSuchProcess(f"process {self.pid} has exited (its pid now "
                                        "names another process)")
            self._fds[name] = fd
        return fd

    # -- /proc ---------------------------------------------------------------------

    def maps(self) -> list[Mapping]:
        return procfs.read_maps_fd(self._fd("maps"), self.pid)

    def mappings_in(self, start: int, end: int) -> list[Mapping]:
        if not _PROCMAP_QUERY_MISSING:
            try:
                return self._query_mappings(start, end)
            except OSError as err:
                if err.errno not in (errno.ENOTTY, errno.EINVAL):   # before 6.11
                    raise procfs.proc_error(err, self.pid,
                                            f"querying /proc/{self.pid}/maps") from err
                _PROCMAP_QUERY_MISSING.append(True)
        try:
            text = procfs.read_fd(self._fd("maps"))
        except OSError as err:
            raise procfs.proc_error(err, self.pid, f"reading /proc/{self.pid}/maps") from err
        return procfs.parse_maps_in(text, start, end)

    def _query_mappings(self, start: int, end: int) -> list[Mapping]:
        """PROCMAP_QUERY, one ioctl per mapping, each with its name as /proc/PID/maps
        shows it (a file's path, ``[heap]``, ``[vvar]``, ...; ``""`` for none)."""
        fd = self._fd("maps")
        out: list[Mapping] = []
        addr = start
        q = bytearray(PROCMAP_QUERY_SIZE)
        name = ctypes.create_string_buffer(_NAME_MAX)
        name_addr = ctypes.addressof(name)
        while addr < end:
            struct.pack_into("<QQQ", q, 0, PROCMAP_QUERY_SIZE,
                             PROCMAP_QUERY_COVERING_OR_NEXT_VMA, addr)
            q[24:] = bytes(PROCMAP_QUERY_SIZE - 24)
            struct.pack_into("<IIQ", q, 80, _NAME_MAX, 0, name_addr)
            try:
                fcntl.ioctl(fd, PROCMAP_QUERY, q)
            except OSError as err:
                if err.errno == errno.ENOENT:        # no mapping at or after addr
                    break
                raise
            (lo, hi, flags, _psize, offset, inode,
             major, minor, name_size) = struct.unpack_from("<QQQQQQIII", q, 24)
            if lo >= end:
                break
            perms = "".join((
                "r" if flags & PROCMAP_QUERY_VMA_READABLE else "-",
                "w" if flags & PROCMAP_QUERY_VMA_WRITABLE else "-",
                "x" if flags & PROCMAP_QUERY_VMA_EXECUTABLE else "-",
                "s" if flags & PROCMAP_QUERY_VMA_SHARED else "p"))
            path = name.raw[:name_size - 1].decode(errors="surrogateescape") if name_size else ""
            out.append(Mapping(lo, hi, perms, offset, f"{major:02x}:{minor:02x}", inode, path))
            addr = hi
        return out

    def alive(self) -> bool:
        return self._self or procfs.alive(self.pid)

    def status(self) -> dict[str, str]:
        return procfs.read_status(self._name)

    def huge_mappings(self, start: int, end: int) -> list[Mapping] | None:
        fd = procfs.open_proc(self._name, "smaps")
        try:
            text = procfs.read_fd(fd)
        except OSError as err:
            raise procfs.proc_error(err, self.pid, f"reading /proc/{self.pid}/smaps") from err
        finally:
            os.close(fd)
        return [m for m, kb in _smaps_huge(text) if kb and m.start < end and start < m.end]

    def pagemap_read(self, start: int, out: memoryview) -> None:
        fd, off, got, n = self._fd("pagemap"), start // PAGE_SIZE * 8, 0, len(out)
        while got < n:
            try:
                k = os.preadv(fd, [out[got:]], off + got)
            except OSError as err:
                raise procfs.proc_error(err, self.pid,
                                        f"reading /proc/{self.pid}/pagemap") from err
            if k <= 0:
                raise NoSuchProcess(f"process {self.pid} has exited (reading its pagemap "
                                    "returned nothing)")
            got += k

    def clear_refs(self, value: int = CLEAR_REFS_SOFT_DIRTY) -> None:
        try:
            os.write(self._fd("clear_refs"), str(value).encode())
        except OSError as err:
            raise procfs.proc_error(err, self.pid,
                                    f"writing /proc/{self.pid}/clear_refs") from err

    # -- PAGEMAP_SCAN ----------------------------------------------------------------

    def pagemap_scan(self, start: int, end: int, flags: int = 0, masks: Masks | None = None,
                     max_pages: int = 0, max_regions: int | None = None) -> ScanResult:
        if IMPLEMENTATION != "cython":
            raise OSError(errno.ENOTTY, "PAGEMAP_SCAN needs the compiled core "
                          "(pagescan._core); the pure-Python reference is loaded")
        return impl.pm_scan(self._fd("pagemap"), start, end, flags, masks, max_pages,
                            max_regions)

    # -- memory ----------------------------------------------------------------------

    def _own(self, what: str) -> None:
        if not self._self:
            raise OSError(errno.EPERM, f"{what} works on the calling process only")

    def mprotect(self, addr: int, length: int, prot: int) -> None:
        self._own("mprotect")
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        if libc.mprotect(addr, length, prot) != 0:
            e = ctypes.get_errno()
            raise OSError(e, f"mprotect: {os.strerror(e)}")

    def madvise(self, addr: int, length: int, advice: int) -> None:
        self._own("madvise")
        if IMPLEMENTATION == "cython":
            impl.madvise(addr, length, advice)
            return
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        if libc.madvise(addr, length, advice) != 0:
            e = ctypes.get_errno()
            raise OSError(e, f"madvise: {os.strerror(e)}")

    def is_mapped(self, addr: int, length: int) -> bool:
        if self._self and IMPLEMENTATION == "cython":
            return bool(impl.is_mapped(addr, length))
        end = addr + length
        for m in self.maps():
            if m.end <= addr:
                continue
            if m.start > addr:
                return False
            addr = m.end
            if addr >= end:
                return True
        return False

    @contextlib.contextmanager
    def scratch(self, npages: int) -> Iterator[Scratch]:
        self._own("scratch memory")
        s = _LinuxScratch(npages)
        try:
            yield s
        finally:
            s.mem.close()

    # -- userfaultfd -----------------------------------------------------------------

    def userfaultfd(self, features: int, optional: int = 0) -> Uffd:
        self._own("userfaultfd")
        if IMPLEMENTATION != "cython":
            raise OSError(errno.ENOSYS, "userfaultfd needs the compiled core (pagescan._core)")
        fd = self._uffd_open()
        for extra in (optional, 0) if optional else (0,):
            try:
                got = impl.uffd_api(fd, features | extra)
            except OSError as err:
                os.close(fd)
                if err.errno != errno.EINVAL:
                    raise
                if extra == 0:
                    raise OSError(err.errno, self._missing(features)) from err
                fd = self._uffd_open()          # the API handshake is once per fd
            else:
                return _LinuxUffd(fd, got)
        raise AssertionError("unreachable")

    def _missing(self, features: int) -> str:
        if features & UFFD_FEATURE_WP_ASYNC:
            return (f"kernel {self.release} lacks UFFD_FEATURE_WP_ASYNC (userfaultfd "
                    "write-protect in async mode needs Linux 6.7+)")
        return f"kernel {self.release} refuses userfaultfd features 0x{features:x}"

    def _uffd_open(self) -> int:
        try:
            return int(impl.uffd_open(impl.USER_MODE_ONLY))
        except OSError as err:
            if err.errno == errno.EINVAL:            # before 5.11: no UFFD_USER_MODE_ONLY
                return int(impl.uffd_open(0))
            if err.errno == errno.ENOSYS:
                raise OSError(err.errno, "userfaultfd(2) is not available: the kernel was "
                              "built without CONFIG_USERFAULTFD, or seccomp (a container "
                              "runtime) blocks the system call") from err
            if err.errno == errno.EPERM:
                unpriv = sysctl("vm.unprivileged_userfaultfd")
                if unpriv == "0" and not has_capability(CAP_SYS_PTRACE):
                    raise OSError(err.errno, "userfaultfd(2) was refused: "
                                  "vm.unprivileged_userfaultfd=0 and this process lacks "
                                  "CAP_SYS_PTRACE (run 'sysctl vm.unprivileged_userfaultfd=1' "
                                  "or grant CAP_SYS_PTRACE)") from err
                raise OSError(err.errno, "userfaultfd(2) was refused (EPERM) although "
                              f"vm.unprivileged_userfaultfd={unpriv}: seccomp or a "
                              "container policy denies it") from err
            raise

    # -- write-fault trap -----------------------------------------------------------

    def write_trap(self) -> WriteTrap:
        self._own("the write-fault trap (a SIGSEGV handler)")
        if not _LINUX_TRAP:
            _LINUX_TRAP.append(LinuxWriteTrap())
        return _LINUX_TRAP[0]

    def max_map_count(self) -> int | None:
        value = sysctl("vm.max_map_count")
        try:
            return int(value) if value is not None else None
        except ValueError:
            return None

    def close(self) -> None:
        fds, self._fds = self._fds, {}
        for fd in fds.values():
            if fd >= 0:
                os.close(fd)
