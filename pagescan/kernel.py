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
import errno
import functools
import mmap
import os
import platform
from collections.abc import Iterator
from typing import Any, ClassVar

from . import procfs
from ._impl import IMPLEMENTATION, impl
from ._sysinfo import has_capability, sysctl
from ._types import ALL_CATEGORIES, Category, Masks, ScanResult
from .errors import KernelError, NoSuchProcess
from .procfs import Mapping

__all__ = [
    "PAGE_SIZE",
    "UFFD_FEATURE_WP_ASYNC",
    "UFFD_FEATURE_WP_HUGETLBFS_SHMEM",
    "UFFD_FEATURE_WP_UNPOPULATED",
    "Kernel",
    "LinuxKernel",
    "Scratch",
    "Uffd",
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

    @abc.abstractmethod
    def alive(self) -> bool:
        """Whether the process exists and has not exited."""

    @abc.abstractmethod
    def status(self) -> dict[str, str]:
        """``/proc/PID/status`` fields."""

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
    # >>> H5: the per-page CLEAN->UNPROT->DIRTY->COLLECTING state machine behind the
    # >>> mprotect backend (register / arm / scan / mark_written / stats ...) goes here,
    # >>> implemented by LinuxKernel with the C SIGSEGV handler (pagescan._core mp_*)
    # >>> and by SimKernel with the modelled SIGSEGV path (pagescan/simulator/).
    # <<< end of the write-fault trap section

    def close(self) -> None:  # noqa: B027 - optional: kernels holding nothing
        """Release what the kernel object holds (file descriptors)."""

    def __enter__(self) -> Kernel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ============================================================================ Linux

_REAL_CACHE: dict[str, Any] = {}


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


class LinuxKernel(Kernel):
    """The running Linux kernel, for process ``pid`` (None: the calling process).

    ``/proc/PID/pagemap`` is opened at once; for another process ``maps`` and
    ``clear_refs`` too, so that a reused pid is never mistaken for the process
    (the files stay bound to the process they were opened for).
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
                self._fds["clear_refs"] = procfs.open_proc(self.pid, "clear_refs",
                                                           os.O_WRONLY)
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
        return _REAL_CACHE

    def _fd(self, name: str) -> int:
        fd = self._fds.get(name, -1)
        if fd < 0:
            if not self._fds:
                raise KernelError(errno.EBADF, "the kernel object is closed")
            flags = os.O_WRONLY if name == "clear_refs" else os.O_RDONLY
            fd = self._fds[name] = procfs.open_proc(self._name, name, flags)
        return fd

    # -- /proc ---------------------------------------------------------------------

    def maps(self) -> list[Mapping]:
        return procfs.read_maps_fd(self._fd("maps"), self.pid)

    def alive(self) -> bool:
        return self._self or procfs.alive(self.pid)

    def status(self) -> dict[str, str]:
        return procfs.read_status(self._name)

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

    def close(self) -> None:
        fds, self._fds = self._fds, {}
        for fd in fds.values():
            if fd >= 0:
                os.close(fd)
