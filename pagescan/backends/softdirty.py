"""Soft-dirty bits: ``/proc/PID/clear_refs`` + ``/proc/PID/pagemap`` (any process you
may ptrace-read; Linux with CONFIG_MEM_SOFT_DIRTY).

How it works: writing ``4`` to ``/proc/PID/clear_refs`` clears the soft-dirty bit of
every page of the process and write-protects its page table entries; the next write
to a page faults and sets the bit again. Bit 55 of a ``/proc/PID/pagemap`` entry is
that bit. In this backend WRITTEN *means* soft-dirty: a page reads WRITTEN (and
SOFT_DIRTY) when its bit is set. Pages the kernel has no entry for (never touched
since arming) are not written.

Two ways to read, chosen once by the probe and shown in ``Probe.details["path"]``:

* ``"pagemap_scan"``: where the PAGEMAP_SCAN ioctl reports PAGE_IS_SOFT_DIRTY (Linux
  6.7+; e.g. 6.12), the masks go to the kernel (the WRITTEN bit of the caller's masks
  becomes SOFT_DIRTY), and only matching runs come back;
* ``"pagemap_read"``: otherwise (6.1 has no ioctl: ENOTTY) the entries of the range
  are read in chunks of 64K entries per ``preadv`` into a reusable buffer and run
  through the core (``pagemap_to_categories`` then ``scan_pages``).

Either way only the VMAs listed in ``/proc/PID/maps`` are looked at, one VMA run at a
time, and the pieces are stitched so that ``max_pages``, ``max_regions`` and
``walk_end`` mean exactly what one scan over the whole range would mean. A tracker
of a whole process (``track(pid=...)``, range ``[0, 0x7FFFFFFFF000)``) covers its
writable mappings only.

**clear_refs resets the whole process, not a range** (``capabilities.range_reset``
is False). So that no write is lost to it, every reset of a tracker (and every
``collect``) first reads the soft-dirty state of every *other* live soft-dirty
tracker of that process, and of the parts of its own range that are not being
reset, and folds it into a per-range *pending* set; later scans report pending
pages as WRITTEN (not SOFT_DIRTY, which stays the kernel's own bit), and a reset of
the range clears them. The bookkeeping is per process, in this module: trackers in
*other* programs that use clear_refs on the same process are not coordinated with,
and each reset costs a read of every tracked range of that process.

Known inaccuracies of soft-dirty itself (the kernel's, shown by the VM tests):

* New mappings read as all written, untouched pages included: a new VMA carries
  VM_SOFTDIRTY until the next clear (``mmap``; also ``brk``).
* VMA merges add false positives: when a tracked mapping merges with a new one
  (an adjacent ``mmap`` with the same flags, or an ``mprotect`` that gives a new
  neighbour the tracked mapping's flags, or the other way round) the merged VMA is
  VM_SOFTDIRTY and every page of it reads as written. (``mprotect`` of tracked
  pages alone keeps their bits on 6.1 and 6.12.)
* Read and clear are two steps (``atomic_reset`` is False): a write that lands
  between the last read of pagemap and the write to clear_refs is lost. The backend
  uses the safest order the mechanism allows (scan; read every range that must keep
  its state; clear at once). For *another* process, ``freeze=True`` stops all of its
  threads (PTRACE_SEIZE + PTRACE_INTERRUPT, which needs ptrace *attach* permission)
  during scan, fold and clear, which closes the window. For the calling process the
  window between the last pagemap read and the clear_refs write remains: a write by
  another thread in that window can be lost.
* Only writes through this process's page tables are seen: writes by other
  processes to shared memory, and device writes to pinned pages (O_DIRECT, RDMA),
  are not. Kernel writes (``read()`` into a buffer) are seen.
* Transparent huge pages are tracked as 2 MiB units. For the calling process the
  range gets MADV_NOHUGEPAGE unless ``thp=True``; another process's THPs stay.
* The probe (once per process) clears the soft-dirty bits of the calling process.
"""

from __future__ import annotations

import bisect
import contextlib
import ctypes
import dataclasses
import errno
import mmap
import os
import platform
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, ClassVar, NamedTuple

from .._impl import IMPLEMENTATION, impl
from .._types import ALL_CATEGORIES, HOLE, Category, Masks, ScanResult
from ..errors import AccessDenied, KernelError, NoSuchProcess, RangeError
from .base import Backend, Capabilities, Probe
from .._sysinfo import sysctl as _sysctl

__all__ = ["SoftDirtyBackend", "Vma", "parse_maps"]

PAGE_SIZE = mmap.PAGESIZE
#: one past the highest user address with 4-level paging (x86-64)
USER_TOP = 0x7FFFFFFFF000
#: pagemap entries per preadv (8 bytes each: 512 KiB)
CHUNK_PAGES = 1 << 16
PM_SOFT_DIRTY = 1 << 55
MADV_NOHUGEPAGE = 15

W = int(Category.WRITTEN)
SD = int(Category.SOFT_DIRTY)
WSD = W | SD

PATH_SCAN = "pagemap_scan"
PATH_READ = "pagemap_read"

#: page runs ``[(start, end), ...]``: sorted, disjoint, adjacent ones joined
Runs = list[tuple[int, int]]

# Byte tables for the low byte of each u64 category (WRITTEN is bit 1, SOFT_DIRTY 7):
# WRITTEN := SOFT_DIRTY, and WRITTEN |= 1 (a pending page), at C speed, no numpy.
_LOW = 0 if sys.byteorder == "little" else 7
_SD_TO_W = bytes((v & ~W) | (W if v & SD else 0) for v in range(256))
_OR_W = bytes(v | W for v in range(256))


# ------------------------------------------------------------------------ maps


class Vma(NamedTuple):
    """One line of ``/proc/PID/maps``."""

    start: int
    end: int
    perms: str
    path: str

    @property
    def writable(self) -> bool:
        return self.perms[1:2] == "w"


def parse_maps(text: str | bytes) -> list[Vma]:
    """The VMAs of a ``/proc/PID/maps`` text, in order."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "surrogateescape")
    out = []
    for line in text.splitlines():
        fields = line.split(None, 5)
        if len(fields) < 5:
            continue
        lo, _, hi = fields[0].partition("-")
        out.append(Vma(int(lo, 16), int(hi, 16), fields[1],
                       fields[5].strip() if len(fields) > 5 else ""))
    return out


def _special(vma: Vma) -> bool:
    """VM_PFNMAP mappings the kernel has no page entries for ([vvar], [vvar_vclock])."""
    return vma.path.startswith("[vvar")


def segments(vmas: Iterable[Vma], start: int, end: int, writable_only: bool = False) -> Runs:
    """The mapped parts of ``[start, end)``, adjacent VMAs joined: ``[(s, e), ...]``."""
    out: Runs = []
    for v in vmas:
        if v.end <= start or v.start >= end or _special(v):
            continue
        if writable_only and not v.writable:
            continue
        s, e = max(v.start, start), min(v.end, end)
        if out and out[-1][1] == s:
            out[-1] = (out[-1][0], e)
        else:
            out.append((s, e))
    return out


# ------------------------------------------------------------------------ runs


def runs_union(a: Sequence[tuple[int, int]], b: Sequence[tuple[int, int]]) -> Runs:
    """The union of two run lists, as a run list."""
    out: Runs = []
    for s, e in sorted([*a, *b]):
        if s >= e:
            continue
        if out and s <= out[-1][1]:
            if e > out[-1][1]:
                out[-1] = (out[-1][0], e)
        else:
            out.append((s, e))
    return out


def runs_subtract(a: Sequence[tuple[int, int]], b: Sequence[tuple[int, int]]) -> Runs:
    """``a`` minus ``b`` (both run lists)."""
    b = runs_union(b, ())
    out: Runs = []
    for s, e in a:
        i = bisect.bisect_right(b, (s, USER_TOP << 1)) - 1
        i = max(i, 0)
        while s < e and i < len(b):
            bs, be = b[i]
            if be <= s:
                i += 1
                continue
            if bs >= e:
                break
            if bs > s:
                out.append((s, bs))
            s = max(s, be)
            i += 1
        if s < e:
            out.append((s, e))
    return out


def runs_clip(a: Sequence[tuple[int, int]], start: int, end: int) -> Runs:
    """The parts of ``a`` inside ``[start, end)``."""
    out: Runs = []
    i = max(bisect.bisect_right(a, (start, USER_TOP << 1)) - 1, 0)
    for s, e in a[i:]:
        if s >= end:
            break
        s, e = max(s, start), min(e, end)
        if s < e:
            out.append((s, e))
    return out


def runs_of(regions: Iterable[Any]) -> Runs:
    """``(start, end)`` of each region (categories dropped), adjacent ones joined."""
    out: Runs = []
    for r in regions:
        s, e = r[0], r[1]
        if out and out[-1][1] == s:
            out[-1] = (out[-1][0], e)
        else:
            out.append((s, e))
    return out


# ------------------------------------------------------------------------ masks


def user_categories(kernel_cats: int, return_mask: int = ALL_CATEGORIES) -> int:
    """A PAGEMAP_SCAN category value in this backend's terms: the kernel's WRITTEN
    (any present page of an unregistered VMA) is dropped, SOFT_DIRTY gives WRITTEN."""
    c = kernel_cats & ~WSD
    if kernel_cats & SD:
        c |= WSD
    return c & return_mask


def kernel_masks(m: Masks, *, with_soft_dirty: bool = False,
                 kernel_categories: int = ALL_CATEGORIES) -> Masks | None:
    """The caller's filter as a PAGEMAP_SCAN filter, where WRITTEN and SOFT_DIRTY are
    one bit (the kernel's SOFT_DIRTY). ``None``: nothing can match.
    ``kernel_categories``: the categories the kernel knows (before 6.15 there is no
    GUARD, and a mask with its bit is EINVAL): the others are 0 on every page.

    With ``s`` the soft-dirty bit, each of ``s = 0`` and ``s = 1`` reduces the
    caller's condition to one on the other bits (the ``mask`` part is the same for
    both; the ``anyof`` part is: none, the other ``anyof`` bits, or impossible), and
    the pair is written back as a kernel filter on SOFT_DIRTY. ``return_mask``
    reports SOFT_DIRTY when WRITTEN or SOFT_DIRTY is asked for (or
    ``with_soft_dirty``: the caller needs the bit to know what to reset).
    """
    for bit in Category:
        if not kernel_categories & bit:
            fixed = fix_bit(m, int(bit), 0)
            if fixed is None:
                return None
            m = fixed
    if m.matches_nothing:
        return None
    inv, mask, anyof = m.inverted, m.mask, m.anyof
    rest_mask, rest_anyof, rest_inv = mask & ~WSD, anyof & ~WSD, inv & ~WSD

    def reduce(s: int) -> str:           # "none" | "rest" | "false"
        for b in (W, SD):
            if mask & b and not (s ^ bool(inv & b)):
                return "false"
        if not anyof:
            return "none"
        if any(anyof & b and (s ^ bool(inv & b)) for b in (W, SD)):
            return "none"
        return "rest" if rest_anyof else "false"

    r0, r1 = reduce(0), reduce(1)
    k_inv, k_mask, k_anyof = rest_inv, rest_mask, 0
    if r0 == r1 == "false":
        return None
    if r0 == r1:
        k_anyof = rest_anyof if r0 == "rest" else 0
    elif "false" in (r0, r1):
        ok = 0 if r1 == "false" else 1                  # the one value of s that can match
        k_mask |= SD
        k_inv |= SD if ok == 0 else 0
        k_anyof = rest_anyof if (r0 if ok == 0 else r1) == "rest" else 0
    else:                                               # one "none", the other "rest"
        free = 0 if r0 == "none" else 1                 # the value of s that satisfies anyof
        k_anyof = rest_anyof | SD
        k_inv |= SD if free == 0 else 0
    ret = m.return_mask
    k_ret = ret & ~WSD & kernel_categories
    if ret & WSD or with_soft_dirty:
        k_ret |= SD
    return Masks.from_kernel(inverted=k_inv, mask=k_mask, anyof=k_anyof, return_mask=k_ret)


def fix_bit(m: Masks, bit: int, value: int) -> Masks | None:
    """``m`` for pages whose ``bit`` is always ``value``, with the bit taken out of
    the filter; ``None`` when nothing can match."""
    if m.matches_nothing:
        return None
    inv, mask, anyof = m.inverted, m.mask, m.anyof
    x = bool(value) ^ bool(inv & bit)          # the bit after inversion
    if mask & bit and not x:
        return None
    mask &= ~bit
    if anyof & bit:
        if x:
            anyof = 0                          # anyof is satisfied by the bit
        else:
            anyof &= ~bit
            if not anyof:
                return None
    return Masks.from_kernel(inverted=inv & ~bit, mask=mask, anyof=anyof,
                             return_mask=m.return_mask)


def with_required(m: Masks, bit: int) -> Masks | None:
    """``m`` and also "has ``bit``", reporting no categories (``return_mask=0``);
    ``None`` when nothing can match."""
    r = fix_bit(m, bit, 1)
    if r is None:
        return None
    return Masks.from_kernel(inverted=r.inverted, mask=r.mask | bit, anyof=r.anyof,
                             return_mask=0)


# ------------------------------------------------------------------------ stitching

#: scan of one piece: (start, end, max_pages, max_regions) ->
#: (regions, walk_end, written) where written(limit) gives the runs of reported pages
#: with WRITTEN below ``limit``.
PieceScan = Callable[[int, int, int, "int | None"],
                     "tuple[Any, int, Callable[[int], Runs]]"]


def stitch(pieces: Iterable[tuple[int, int]], scan_piece: PieceScan, end: int, *,
           max_pages: int = 0, max_regions: int | None = None,
           want_written: bool = False) -> tuple[ScanResult, Runs]:
    """Scan ascending, disjoint pieces of a range (whatever lies between them has no
    mapping) and join the answers into what one scan of the whole range would give:
    regions merged across seams, ``max_pages`` counted across pieces, ``max_regions``
    counted after merging, and ``walk_end`` the first matching page not reported
    (the next piece's first match when ``max_pages`` was reached exactly at a seam).

    Returns ``(ScanResult, written)``: ``written`` (with ``want_written``) are the
    runs of reported pages that have WRITTEN, which a collect resets.
    """
    parts: list[Any] = []
    nreg = 0                     # regions in the answer so far
    found = 0                    # pages in the answer so far
    last: tuple[int, int] | None = None   # (end, categories) of the last region
    written: Runs = []
    for s, e in pieces:
        if max_pages and found >= max_pages:
            regs, _, _ = scan_piece(s, e, 1, 1)          # only: where is the next match?
            if len(regs):
                return ScanResult(impl.coalesce(*parts), regs[0][0]), runs_union(written, ())
            continue
        rem = None if max_regions is None else max_regions - nreg
        regs, walk_end, piece_written = scan_piece(
            s, e, max_pages - found if max_pages else 0, None if rem is None else rem + 1)
        n = len(regs)
        merge = bool(n and last is not None and last[0] == regs[0][0]
                     and last[1] == regs[0][2])
        stop = walk_end if walk_end < e else None
        if rem is not None and n - merge > rem:          # one region more than fits
            keep = rem + merge
            stop = regs[keep][0]
            regs = regs[:keep]
            n = keep
        if n:
            parts.append(regs)
            last = (regs[n - 1][1], regs[n - 1][2])
            nreg += n - merge
            found += regs.pages(PAGE_SIZE)
        if want_written:
            written.extend(piece_written(e if stop is None else stop))
        if stop is not None:
            return ScanResult(impl.coalesce(*parts), stop), runs_union(written, ())
    return ScanResult(impl.coalesce(*parts), end), runs_union(written, ())


def split(runs: Iterable[tuple[int, int]], pages: int) -> Iterator[tuple[int, int]]:
    """Runs cut into pieces of at most ``pages`` pages."""
    step = pages * PAGE_SIZE
    for s, e in runs:
        while s < e:
            yield s, min(s + step, e)
            s += step


# ------------------------------------------------------------------------ errors


def _owner(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Uid:"):
                    return line.split()[2]           # effective uid
    except OSError:
        pass
    return "?"


def proc_error(err: OSError, pid: int, what: str) -> Exception:
    """An OSError on ``/proc/PID/...`` as pagescan's error, naming the likely cause."""
    if isinstance(err, FileNotFoundError) or err.errno == errno.ESRCH:
        return NoSuchProcess(f"process {pid} does not exist or has exited ({what})")
    if err.errno in (errno.EACCES, errno.EPERM):
        scope = _sysctl("kernel.yama.ptrace_scope")
        if what.endswith("clear_refs"):
            need = (f"writing /proc/{pid}/clear_refs needs the same user as process {pid} "
                    "(and a dumpable process) or root")
        else:
            need = (f"{what} needs ptrace read access to process {pid}: the same user as "
                    "that process (which must be dumpable: not set-uid, no "
                    "prctl(PR_SET_DUMPABLE, 0)) or CAP_SYS_PTRACE")
        return AccessDenied(
            f"{need}; this process has uid {os.geteuid()}, process {pid} uid {_owner(pid)}"
            + (f"; kernel.yama.ptrace_scope={scope} (Yama restricts attaching, which "
               "freeze=True needs, not reading)" if scope is not None else ""))
    text = err.strerror or ""
    return KernelError(err.errno, text if text.startswith(what) else f"{what}: {text}")


# ------------------------------------------------------------------------ freezing

PTRACE_DETACH = 17
PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207
WALL = 0x40000000
_libc_handle: Any = None


def _libc() -> Any:
    global _libc_handle
    if _libc_handle is None:
        lib = ctypes.CDLL(None, use_errno=True)
        lib.ptrace.restype = ctypes.c_long
        lib.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
        lib.madvise.restype = ctypes.c_int
        lib.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        _libc_handle = lib
    return _libc_handle


def _alive(pid: int) -> bool:
    """Whether ``pid`` exists and is not exiting (a zombie or dead)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(") ", 1)[1][:1] not in ("Z", "X", "x")
    except (OSError, IndexError):
        return False


def signal_to_deliver(status: int) -> int:
    """The signal to hand back on PTRACE_DETACH for a thread whose first stop was
    ``status``: a signal-delivery-stop (a signal arrived before the interrupt) would
    be dropped by a detach with 0; an interrupt or group stop (event in bits 16-23)
    has nothing to give back."""
    if os.WIFSTOPPED(status) and status >> 16 == 0:
        return os.WSTOPSIG(status)
    return 0


@contextlib.contextmanager
def frozen(pid: int) -> Iterator[None]:
    """Every thread of process ``pid`` stopped (PTRACE_SEIZE + PTRACE_INTERRUPT)
    for the duration; detached (and so resumed) after. Threads created while
    stopping are caught by listing the threads again until no new one appears."""
    lib = _libc()
    seized: list[int] = []
    deliver: dict[int, int] = {}      # a signal that stopped a thread: given back on detach
    try:
        while True:
            try:
                tids = sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))
            except OSError as err:
                raise proc_error(err, pid, f"listing /proc/{pid}/task") from err
            new = [t for t in tids if t not in seized]
            if not new:
                break
            for tid in new:
                if lib.ptrace(PTRACE_SEIZE, tid, None, None) != 0:
                    e = ctypes.get_errno()
                    if e == errno.ESRCH:
                        continue                          # the thread has exited
                    if e == errno.EPERM and not _alive(pid):
                        raise NoSuchProcess(f"process {pid} has exited")
                    if e == errno.EPERM:
                        scope = _sysctl("kernel.yama.ptrace_scope")
                        raise AccessDenied(
                            f"freeze=True needs ptrace attach access to process {pid} "
                            "(the same user and, with kernel.yama.ptrace_scope=1, an "
                            "ancestor of it, or CAP_SYS_PTRACE); kernel.yama.ptrace_scope="
                            f"{scope}")
                    raise proc_error(OSError(e, os.strerror(e)), pid, "PTRACE_SEIZE")
                seized.append(tid)
                lib.ptrace(PTRACE_INTERRUPT, tid, None, None)
                try:
                    _, status = os.waitpid(tid, WALL)     # until it has stopped
                except ChildProcessError:
                    continue
                sig = signal_to_deliver(status)
                if sig:
                    deliver[tid] = sig
        yield
    finally:
        for tid in seized:
            lib.ptrace(PTRACE_DETACH, tid, None, ctypes.c_void_p(deliver.get(tid, 0)))


# ------------------------------------------------------------------------ per process


class _Range:
    """One tracked range and its pending written pages (folded before a clear)."""

    __slots__ = ("end", "pending", "start", "whole")

    def __init__(self, start: int, end: int) -> None:
        self.start, self.end = start, end
        #: a whole-process tracker: writable mappings only
        self.whole = start == 0 and end >= USER_TOP
        self.pending: Runs = []

    def span(self, vmas: Sequence[Vma]) -> Runs:
        return segments(vmas, self.start, self.end, self.whole)


class Target:
    """One process: its /proc files (opened once, so a reused pid is never
    mistaken for it) and every live soft-dirty range of it in this process."""

    def __init__(self, pid: int, path: str) -> None:
        self.pid = pid
        self.is_self = pid == os.getpid()
        self.path = path
        #: the categories PAGEMAP_SCAN knows here (no GUARD before 6.15)
        self.kernel_categories = ALL_CATEGORIES
        self.lock = threading.RLock()
        self.ranges: list[_Range] = []
        self.users = 0
        self.closed = False
        self._fds: dict[str, int] = {}
        self._open()
        self._raw = bytearray(8 * CHUNK_PAGES)
        self._cats = bytearray(8 * CHUNK_PAGES)

    # -- kernel I/O (a test double replaces these) -----------------------------------

    def _open(self) -> None:
        pid = self.pid
        try:
            for name, flags in (("pagemap", os.O_RDONLY), ("maps", os.O_RDONLY),
                                ("clear_refs", os.O_WRONLY)):
                try:
                    self._fds[name] = os.open(f"/proc/{pid}/{name}", flags | os.O_CLOEXEC)
                except OSError as err:
                    raise proc_error(err, pid, f"opening /proc/{pid}/{name}") from err
        except BaseException:
            self.close()
            raise

    def vmas(self) -> list[Vma]:
        fd = self._fds["maps"]
        chunks = []
        try:
            os.lseek(fd, 0, os.SEEK_SET)
            while True:
                b = os.read(fd, 1 << 16)
                if not b:
                    break
                chunks.append(b)
        except OSError as err:
            raise proc_error(err, self.pid, f"reading /proc/{self.pid}/maps") from err
        out = parse_maps(b"".join(chunks))
        if not out:
            raise NoSuchProcess(f"process {self.pid} has no address space left (it has "
                                "exited and is a zombie, or it is a kernel thread)")
        return out

    def read_pagemap(self, start: int, out: memoryview) -> None:
        """Fill ``out`` (bytes) with the entries from the page at ``start`` on."""
        fd, off, got, n = self._fds["pagemap"], start // PAGE_SIZE * 8, 0, len(out)
        while got < n:
            try:
                k = os.preadv(fd, [out[got:]], off + got)
            except OSError as err:
                raise proc_error(err, self.pid, f"reading /proc/{self.pid}/pagemap") from err
            if k <= 0:
                raise NoSuchProcess(f"process {self.pid} has exited (reading its pagemap "
                                    "returned nothing)")
            got += k

    def pm_scan(self, start: int, end: int, masks: Masks, max_pages: int,
                max_regions: int | None) -> ScanResult:
        try:
            return impl.pm_scan(self._fds["pagemap"], start, end, 0, masks, max_pages,
                                max_regions)
        except OSError as err:
            if not self.is_self:
                self.vmas()                # NoSuchProcess when it has exited
            raise proc_error(err, self.pid, "PAGEMAP_SCAN") from err

    def clear_refs(self) -> None:
        try:
            os.write(self._fds["clear_refs"], b"4")
        except OSError as err:
            raise proc_error(err, self.pid, f"writing /proc/{self.pid}/clear_refs") from err

    def close(self) -> None:
        self.closed = True
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    # -- categories ------------------------------------------------------------------

    def dense(self, start: int, end: int, pending: Runs) -> memoryview:
        """Categories (WRITTEN = soft-dirty, or pending) of the pages of ``[start, end)``
        (at most CHUNK_PAGES), as a u64 memoryview into a reused buffer."""
        n = (end - start) // PAGE_SIZE
        cats = memoryview(self._cats)[:8 * n].cast("Q")
        if self.path == PATH_SCAN:
            # every category the kernel reports, unfiltered; pages it does not report
            # (a VM_PFNMAP part) are holes
            self._fill(cats, 0, n, HOLE)
            every = Masks(return_mask=self.kernel_categories)
            for s, e, c in self.pm_scan(start, end, every, 0, None).regions:
                self._fill(cats, (s - start) // PAGE_SIZE, (e - start) // PAGE_SIZE,
                           user_categories(c))
        else:
            raw = memoryview(self._raw)[:8 * n]
            self.read_pagemap(start, raw)
            impl.pagemap_to_categories(raw.cast("Q"), out=cats)
            b = self._cats
            b[_LOW:8 * n:8] = b[_LOW:8 * n:8].translate(_SD_TO_W)
        b = self._cats
        for s, e in runs_clip(pending, start, end):
            i, j = (s - start) // PAGE_SIZE, (e - start) // PAGE_SIZE
            b[_LOW + 8 * i:8 * j:8] = b[_LOW + 8 * i:8 * j:8].translate(_OR_W)
        return cats

    @staticmethod
    def _fill(cats: memoryview, i: int, j: int, value: int) -> None:
        if j > i:
            cats[i:j] = memoryview(value.to_bytes(8, sys.byteorder) * (j - i)).cast("Q")

    def soft_dirty(self, runs: Runs) -> Runs:
        """The runs of pages inside ``runs`` (mapped parts) whose soft-dirty bit is set."""
        out: Runs = []
        if self.path == PATH_SCAN:
            k = Masks.from_kernel(mask=SD, return_mask=0)
            for s, e in runs:
                out.extend(runs_of(self.pm_scan(s, e, k, 0, None).regions))
        else:
            want = Masks(required=Category.SOFT_DIRTY, return_mask=0)
            for s, e in split(runs, CHUNK_PAGES):
                n = (e - s) // PAGE_SIZE
                raw = memoryview(self._raw)[:8 * n]
                self.read_pagemap(s, raw)
                cats = impl.pagemap_to_categories(
                    raw.cast("Q"), out=memoryview(self._cats)[:8 * n].cast("Q"))
                out.extend(runs_of(impl.scan_pages(cats, start=s, page_size=PAGE_SIZE,
                                                   masks=want).regions))
        return runs_union(out, ())

    # -- scan, fold, clear -----------------------------------------------------------

    def scan(self, rng: _Range, start: int, end: int, masks: Masks, max_pages: int,
             max_regions: int | None, want_written: bool) -> tuple[ScanResult, Runs]:
        if masks.matches_nothing:
            return ScanResult(impl.RegionArray(), end), []
        segs = segments(self.vmas(), start, end, rng.whole)
        pending = runs_clip(rng.pending, start, end)
        if self.path == PATH_SCAN:
            pieces = list(self._scan_pieces(segs, pending))
        else:
            pieces = [(s, e, True) for s, e in split(segs, CHUNK_PAGES)]
        kinds = {(s, e): dense for s, e, dense in pieces}
        k_masks = kernel_masks(masks, with_soft_dirty=want_written,
                               kernel_categories=self.kernel_categories)
        written_masks = with_required(masks, W) if want_written else None

        def scan_piece(s: int, e: int, mp: int, mr: int | None
                       ) -> tuple[Any, int, Callable[[int], Runs]]:
            if kinds[(s, e)]:
                cats = self.dense(s, e, pending)
                res = impl.scan_pages(cats, start=s, page_size=PAGE_SIZE, masks=masks,
                                      max_pages=mp, max_regions=mr)

                def written(limit: int) -> Runs:
                    n = (min(limit, e) - s) // PAGE_SIZE
                    if n <= 0 or written_masks is None:
                        return []
                    return runs_of(impl.scan_pages(cats[:n], start=s, page_size=PAGE_SIZE,
                                                   masks=written_masks).regions)
                return res.regions, res.walk_end, written
            return self._kernel_piece(s, e, masks, k_masks, mp, mr, want_written)

        return stitch([(s, e) for s, e, _ in pieces], scan_piece, end, max_pages=max_pages,
                      max_regions=max_regions, want_written=want_written)

    @staticmethod
    def _scan_pieces(segs: Runs, pending: Runs) -> Iterator[tuple[int, int, bool]]:
        """Segments cut at pending runs: kernel-filtered pieces, and dense pieces
        (at most CHUNK_PAGES) where pending pages must be ORed in."""
        for s, e in segs:
            for ps, pe in runs_clip(pending, s, e):
                if s < ps:
                    yield s, ps, False
                for a, b in split([(ps, pe)], CHUNK_PAGES):
                    yield a, b, True
                s = pe
            if s < e:
                yield s, e, False

    def _kernel_piece(self, s: int, e: int, masks: Masks, k_masks: Masks | None, mp: int,
                      mr: int | None, want_written: bool
                      ) -> tuple[Any, int, Callable[[int], Runs]]:
        if k_masks is None:
            return impl.RegionArray(), e, lambda limit: []
        ret = masks.return_mask
        # the kernel reports SOFT_DIRTY only for the caller (finer regions): merge after
        extra = bool(k_masks.return_mask & SD) and not ret & WSD
        res = self.pm_scan(s, e, k_masks, mp, None if extra else mr)
        raw = res.regions
        regs = impl.coalesce([(a, b, user_categories(c, ret)) for a, b, c in raw])

        def written(limit: int) -> Runs:
            return runs_of((a, min(b, limit)) for a, b, c in raw if c & SD and a < limit)
        return regs, res.walk_end, written

    def fold_and_clear(self, rng: _Range | None, reset: Runs) -> None:
        """Fold the soft-dirty state of every live range (for ``rng``: outside
        ``reset``) into its pending runs, drop ``reset`` from ``rng``'s pending runs,
        and clear the soft-dirty bits of the whole process."""
        if self.ranges:
            vmas = self.vmas()
            found = []
            for q in self.ranges:
                keep = q.span(vmas)
                if q is rng:
                    keep = runs_subtract(keep, reset)
                found.append(self.soft_dirty(keep) if keep else [])
            for q, dirty in zip(self.ranges, found, strict=True):
                if dirty:
                    q.pending = runs_union(q.pending, dirty)
        if rng is not None:
            rng.pending = runs_subtract(rng.pending, reset)
        self.clear_refs()


_targets: dict[int, Target] = {}
_targets_lock = threading.Lock()
#: what makes a Target for a pid (a test double can stand in)
target_factory: Callable[[int, str], Target] = Target


def _acquire(pid: int) -> Target:
    details = SoftDirtyBackend.probe().details
    with _targets_lock:
        t = _targets.get(pid)
        if t is None or t.closed:
            t = target_factory(pid, str(details.get("path", PATH_READ)))
            t.kernel_categories = int(details.get("kernel_categories",  # type: ignore[call-overload]
                                                  ALL_CATEGORIES))
            _targets[pid] = t
        t.users += 1
        return t


def _release(t: Target) -> None:
    with _targets_lock:
        t.users -= 1
        if t.users <= 0 and not t.closed:
            if _targets.get(t.pid) is t:
                del _targets[t.pid]
            t.close()


def _forget_after_fork() -> None:
    # the child has its own address space and no live trackers: start over, with new
    # locks (another thread may have held one at fork time)
    global _targets_lock, _probe_lock
    _targets_lock = threading.Lock()
    _probe_lock = threading.Lock()
    for t in list(_targets.values()):
        try:
            t.close()
        except OSError:
            pass
    _targets.clear()


os.register_at_fork(after_in_child=_forget_after_fork)


# ------------------------------------------------------------------------ probe

_probe_lock = threading.Lock()
_probe_result: Probe | None = None


def _entries(fd: int, addr: int, n: int) -> list[int]:
    b = os.pread(fd, 8 * n, addr // PAGE_SIZE * 8)
    return list(memoryview(b).cast("Q"))


def _clear_self() -> None:
    """clear_refs on the calling process, folding live trackers of it first."""
    with _targets_lock:
        t = _targets.get(os.getpid())
    if t is not None and not t.closed:
        with t.lock:
            t.fold_and_clear(None, [])
        return
    with open("/proc/self/clear_refs", "w") as f:
        f.write("4")


def _run_probe() -> Probe:
    details: dict[str, object] = {"kernel": platform.release()}
    try:
        pm = os.open("/proc/self/pagemap", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as err:
        return Probe(False, f"cannot open /proc/self/pagemap: {err.strerror} (is /proc "
                     "mounted?)", details)
    mem = mmap.mmap(-1, 2 * PAGE_SIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    view = (ctypes.c_char * (2 * PAGE_SIZE)).from_buffer(mem)
    addr = ctypes.addressof(view)
    try:
        mem[0] = mem[PAGE_SIZE] = 1
        try:
            _clear_self()
        except OSError as err:
            return Probe(False, f"writing /proc/self/clear_refs failed: {err.strerror}",
                         details)
        cleared = _entries(pm, addr, 2)
        mem[0] = 2
        after = _entries(pm, addr, 2)
        if not after[0] & PM_SOFT_DIRTY:
            return Probe(False, "CONFIG_MEM_SOFT_DIRTY is not set in this kernel: a page "
                         "written after 'echo 4 > /proc/self/clear_refs' does not have the "
                         "soft-dirty bit (55) in /proc/self/pagemap (the kernel accepts the "
                         "write to clear_refs all the same)", details)
        if cleared[0] & PM_SOFT_DIRTY or after[1] & PM_SOFT_DIRTY:
            return Probe(False, "writing 4 to /proc/self/clear_refs did not clear the "
                         "soft-dirty bit (55) of a page: soft-dirty tracking does not work "
                         "on this kernel", details)
        details["path"], details["path_reason"] = _choose_path(pm, addr)
        if details["path"] == PATH_SCAN:
            details["kernel_categories"] = _kernel_categories(pm, addr)
        return Probe(True, "", details)
    except OSError as err:
        return Probe(False, f"reading /proc/self/pagemap failed: {err.strerror}", details)
    finally:
        del view
        mem.close()
        os.close(pm)


def _choose_path(pm: int, addr: int) -> tuple[str, str]:
    if IMPLEMENTATION != "cython":
        return PATH_READ, "the compiled core is not loaded (PAGEMAP_SCAN needs it)"
    want = [(addr, addr + PAGE_SIZE, SD | int(Category.PRESENT)),
            (addr + PAGE_SIZE, addr + 2 * PAGE_SIZE, int(Category.PRESENT))]
    try:
        got = impl.pm_scan(pm, addr, addr + 2 * PAGE_SIZE, 0,
                           Masks(return_mask=SD | int(Category.PRESENT))).regions
    except OSError as err:
        if err.errno == errno.ENOTTY:
            return PATH_READ, (f"kernel {platform.release()} has no PAGEMAP_SCAN ioctl "
                               "(Linux 6.7+)")
        return PATH_READ, f"PAGEMAP_SCAN failed: {err.strerror}"
    if [tuple(r) for r in got] != want:
        return PATH_READ, "PAGEMAP_SCAN does not report PAGE_IS_SOFT_DIRTY here"
    return PATH_SCAN, "PAGEMAP_SCAN reports PAGE_IS_SOFT_DIRTY"


def _kernel_categories(pm: int, addr: int) -> int:
    """The categories PAGEMAP_SCAN accepts: GUARD (1 << 8) came in 6.15."""
    try:
        impl.pm_scan(pm, addr, addr + PAGE_SIZE, 0, Masks(return_mask=ALL_CATEGORIES))
    except OSError as err:
        if err.errno == errno.EINVAL:
            return ALL_CATEGORIES & ~int(Category.GUARD)
        raise
    return ALL_CATEGORIES


# ------------------------------------------------------------------------ backend


class SoftDirtyBackend(Backend):
    """Soft-dirty tracking of this process or another one (see the module docs).

    ``freeze=True`` (another process only) stops the target's threads during each
    reset and collect so that no write can fall between reading and clearing.
    """

    name: ClassVar[str] = "softdirty"
    priority: ClassVar[int] = 50
    capabilities: ClassVar[Capabilities] = Capabilities(
        atomic_reset=False,
        range_reset=False,
        other_processes=True,
        kernel_filtering=False,
        kernel_writes_seen=True,
        categories=int(Category.FILE | Category.PRESENT | Category.SWAPPED
                       | Category.SOFT_DIRTY | Category.GUARD),
        notes=(
            "a reset clears soft-dirty for the whole process (clear_refs): the state of "
            "the process's other tracked ranges is read and kept as pending first",
            "read and clear are two steps: a write between the last pagemap read and the "
            "clear_refs write can be lost (another process: freeze=True closes the window)",
            "new mappings, and mappings merged with new ones (mmap, mprotect), read as "
            "all written",
            "writes through other processes' mappings of shared memory are not seen",
            "with PAGEMAP_SCAN (Linux 6.7+) the masks are applied in the kernel",
        ),
    )

    @classmethod
    def probe(cls) -> Probe:
        """Writes a page, clears soft-dirty, writes again, and reads bit 55. Run once
        per process (the answer cannot change); the clear folds live trackers first."""
        global _probe_result
        with _probe_lock:
            if _probe_result is None:
                _probe_result = _run_probe()
            return _probe_result

    def __init__(self, *, pid: int | None = None, thp: bool = False,
                 freeze: bool = False) -> None:
        self.pid = os.getpid() if pid is None else pid
        self.thp = thp
        self.freeze = freeze
        self._ranges: list[_Range] = []
        self._target: Target | None = None
        if freeze and self.pid == os.getpid():
            raise ValueError("freeze=True stops another process while its soft-dirty bits "
                             "are read and cleared; it cannot stop the calling process")
        self._target = _acquire(self.pid)
        self.path = self._target.path
        if self.path == PATH_SCAN:
            self.capabilities = dataclasses.replace(  # type: ignore[misc]
                SoftDirtyBackend.capabilities, kernel_filtering=True,
                categories=self._target.kernel_categories & ~W)

    # -- helpers -------------------------------------------------------------------

    def _live(self) -> Target:
        if self._target is None or self._target.closed:
            raise KernelError(errno.EBADF, "the soft-dirty backend is closed")
        return self._target

    def _range(self, start: int, end: int) -> _Range:
        for r in self._ranges:
            if r.start <= start and end <= r.end:
                return r
        raise RangeError(f"[0x{start:x}, 0x{end:x}) is not registered with this backend")

    @contextlib.contextmanager
    def _stopped(self, t: Target) -> Iterator[None]:
        if self.freeze and not t.is_self:
            with frozen(t.pid):
                yield
        else:
            yield

    # -- registration ----------------------------------------------------------------

    def register(self, start: int, end: int) -> None:
        t = self._live()
        rng = _Range(start, end)
        with t.lock:
            if not rng.whole:
                segs = segments(t.vmas(), start, end)
                if segs != [(start, end)]:
                    raise RangeError(f"[0x{start:x}, 0x{end:x}) is not entirely mapped in "
                                     f"process {t.pid}")
                if t.is_self and not self.thp:
                    if _libc().madvise(start, end - start, MADV_NOHUGEPAGE) != 0:
                        e = ctypes.get_errno()
                        if e != errno.EINVAL:        # no THP in this kernel: nothing to do
                            raise KernelError(e, f"madvise(MADV_NOHUGEPAGE): {os.strerror(e)}")
            t.ranges.append(rng)
            self._ranges.append(rng)
            try:
                self.reset(start, end)
            except BaseException:
                t.ranges.remove(rng)
                self._ranges.remove(rng)
                raise

    def unregister(self, start: int, end: int) -> None:
        t = self._target
        for r in list(self._ranges):
            if r.start == start and r.end == end:
                self._ranges.remove(r)
                if t is not None:
                    with t.lock:
                        if r in t.ranges:
                            t.ranges.remove(r)

    # -- tracking ------------------------------------------------------------------

    def reset(self, start: int, end: int) -> None:
        t = self._live()
        rng = self._range(start, end)
        with t.lock, self._stopped(t):
            t.fold_and_clear(rng, [(start, end)])

    def scan(self, start: int, end: int, masks: Masks, *, max_pages: int = 0,
             max_regions: int | None = None, reset: bool = False) -> ScanResult:
        t = self._live()
        rng = self._range(start, end)
        if max_regions is not None and max_regions < 1:
            raise ValueError("max_regions must be at least 1")
        with t.lock:
            if not reset:
                return t.scan(rng, start, end, masks, max_pages, max_regions, False)[0]
            with self._stopped(t):
                result, written = t.scan(rng, start, end, masks, max_pages, max_regions, True)
                t.fold_and_clear(rng, written)
            return result

    def pending(self) -> Runs:
        """The runs of pending written pages (folded in before another range's reset)."""
        return [run for r in self._ranges for run in r.pending]

    def close(self) -> None:
        t, self._target = self._target, None
        if t is None:
            return
        if not t.closed:                   # (closed: inherited through fork)
            with t.lock:
                for r in self._ranges:
                    if r in t.ranges:
                        t.ranges.remove(r)
        self._ranges.clear()
        _release(t)
