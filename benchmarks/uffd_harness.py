"""Shared pieces of the uffd benchmarks (bench_uffd.py): the C baseline, the
written patterns and the memory state each figure is measured on.

* ``build(outdir)`` compiles benchmarks/c/uffd_bench.c with ``cc -O2 -shared
  -fPIC`` (``CC`` and ``PAGESCAN_BENCH_CFLAGS`` override); ``UffdC(path)`` loads
  it through ctypes. Nothing binary is committed.
* ``PATTERNS``: which pages are written before a scan or collect is timed, as
  page indices into the 1 GiB buffer. "sparse" = scattered single pages (every
  k-th page: one region per written page, the most regions for the fraction);
  "dense" = contiguous runs of 256 pages (1 MiB) evenly spread.
* ``Arena``: one 1 GiB buffer, populated (every page resident), tracked by
  pagescan; the C side runs its system calls on the same mapping with its own
  /proc/self/pagemap fd and the tracker's userfaultfd (a range can be registered
  with one userfaultfd only, so both sides arm through the same one).
"""

from __future__ import annotations

import ctypes
import mmap
import os
import shlex
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

import pagescan
from pagescan._impl import impl

SOURCE = Path(__file__).resolve().parent / "c" / "uffd_bench.c"

PAGE = mmap.PAGESIZE
SIZE = int(os.environ.get("PAGESCAN_BENCH_UFFD_BYTES", 1 << 30))
NPAGES = SIZE // PAGE
SIZE_LABEL = f"{SIZE >> 30} GiB" if SIZE % (1 << 30) == 0 else f"{SIZE >> 20} MiB"
MADV_POPULATE_WRITE = 23
WRITTEN = int(pagescan.Category.WRITTEN)
DENSE_RUN = 256


def build(outdir: str | os.PathLike) -> Path:
    cc = os.environ.get("CC", "cc")
    cflags = shlex.split(os.environ.get("PAGESCAN_BENCH_CFLAGS", "-O2"))
    so = Path(outdir) / "uffd_bench.so"
    cmd = [cc, *cflags, "-shared", "-fPIC", "-Wall", "-o", str(so), str(SOURCE)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout}{proc.stderr}")
    return so


class Result(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("n", ctypes.c_int64), ("cap", ctypes.c_int64),
                ("walk_end", ctypes.c_uint64), ("pages", ctypes.c_uint64),
                ("calls", ctypes.c_int64), ("ns_inside", ctypes.c_uint64)]


def _errcheck_neg(result, func, args):
    if result < 0:
        raise OSError(-result, f"{func.__name__}: {os.strerror(-result)}")
    return result


class UffdC:
    """ctypes bindings of uffd_bench.c. Every function raises OSError on -errno."""

    def __init__(self, so_path: str | os.PathLike) -> None:
        lib = self.lib = ctypes.CDLL(str(so_path))
        u64, i64, i32, pres = ctypes.c_uint64, ctypes.c_int64, ctypes.c_int, ctypes.POINTER(Result)
        sigs = {
            "ub_scan": (i64, [i32, u64, u64, u64, u64, u64, u64, u64, u64, i64, pres]),
            "ub_written": (i64, [i32, u64, u64, pres]),
            "ub_collect": (i64, [i32, u64, u64, u64, pres]),
            "ub_pagemap_open": (i32, []),
            "ub_uffd_open": (i32, []),
            "ub_arm": (i32, [i32, u64, u64]),
            "ub_track": (i32, [u64, u64, i32, ctypes.POINTER(i32), ctypes.POINTER(i32)]),
            "ub_untrack": (i32, [i32, i32, u64, u64]),
        }
        for name, (res, args) in sigs.items():
            fn = getattr(lib, name)
            fn.restype, fn.argtypes = res, args
            fn.errcheck = _errcheck_neg
        lib.ub_result_free.restype, lib.ub_result_free.argtypes = None, [pres]
        lib.ub_set_clock.restype, lib.ub_set_clock.argtypes = None, [i32]
        lib.ub_write_all.restype = None
        lib.ub_write_all.argtypes = [u64, i64, ctypes.c_uint8]
        lib.ub_write_pages.restype = None
        lib.ub_write_pages.argtypes = [u64, ctypes.c_void_p, i64, ctypes.c_uint8]

    def write_pages(self, base: int, idx: np.ndarray, value: int = 1) -> None:
        assert idx.dtype == np.uint64 and idx.flags.c_contiguous
        self.lib.ub_write_pages(base, idx.ctypes.data, idx.size, value)

    @staticmethod
    def regions(r: Result) -> np.ndarray:
        """The result's regions as an (n, 3) u64 array (a copy)."""
        if r.n == 0:
            return np.empty((0, 3), np.uint64)
        buf = (ctypes.c_uint64 * (3 * r.n)).from_address(r.data)
        return np.array(buf, dtype=np.uint64).reshape(-1, 3)


# ------------------------------------------------------------------- patterns


def _sparse(frac: float) -> np.ndarray:
    return np.arange(0, NPAGES, round(1 / frac), dtype=np.uint64)


def _dense(frac: float) -> np.ndarray:
    runs = max(1, round(NPAGES * frac / DENSE_RUN))
    stride = NPAGES // runs
    starts = np.arange(runs, dtype=np.uint64) * np.uint64(stride)
    return (starts[:, None] + np.arange(DENSE_RUN, dtype=np.uint64)[None, :]).ravel()


#: name -> (page indices written, description)
PATTERNS: dict[str, tuple[np.ndarray, str]] = {
    "clean": (np.empty(0, np.uint64), "nothing written since arming"),
    "1%-sparse": (_sparse(0.01), "every 100th page: single-page regions"),
    "1%-dense": (_dense(0.01), f"runs of {DENSE_RUN} pages (1 MiB), evenly spread"),
    "50%-sparse": (_sparse(0.5), "every other page: single-page regions"),
    "50%-dense": (_dense(0.5), f"runs of {DENSE_RUN} pages alternating with gaps as long"),
    "100%": (np.arange(NPAGES, dtype=np.uint64), "every page: one region"),
}


def expected_regions(idx: np.ndarray, base: int) -> np.ndarray:
    """The (n, 3) regions a WRITTEN scan must return for these written pages."""
    if idx.size == 0:
        return np.empty((0, 3), np.uint64)
    idx = np.unique(idx)
    brk = np.flatnonzero(np.diff(idx) != 1) + 1
    first = idx[np.r_[0, brk]]
    last = idx[np.r_[brk - 1, idx.size - 1]]
    out = np.empty((first.size, 3), np.uint64)
    out[:, 0] = np.uint64(base) + first * np.uint64(PAGE)
    out[:, 1] = np.uint64(base) + (last + np.uint64(1)) * np.uint64(PAGE)
    out[:, 2] = WRITTEN
    return out


# ---------------------------------------------------------------------- memory


def populate(addr: int, length: int) -> None:
    """Make every page resident (MADV_POPULATE_WRITE), as if the buffer were in use."""
    impl.madvise(addr, length, MADV_POPULATE_WRITE)


def uffd_fd(tracker: Any) -> int:
    """The userfaultfd of a uffd tracker (a private detail of the backend: its
    ``pagescan.kernel.Uffd`` object, or a bare fd in older versions)."""
    be = tracker._backend
    uf = getattr(be, "_uffd", None)
    return int(uf.fd) if uf is not None else int(be._fd)


class Arena:
    """A populated buffer tracked by pagescan, plus the C side's handles on it."""

    def __init__(self, c: UffdC, *, thp: bool = False, size: int = SIZE) -> None:
        self.c = c
        self.thp = thp
        self.buf = pagescan.allocate(size, thp=thp)
        self.base = self.buf.address
        self.size = size
        self.npages = size // PAGE
        self.end = self.base + size
        if not thp:
            # exact pages from the first touch (track() would set it too, but after
            # the memory was populated)
            impl.madvise(self.base, size, 15)            # MADV_NOHUGEPAGE
        populate(self.base, size)
        self.array = np.frombuffer(self.buf, np.uint8)
        self.tracker = pagescan.track(self.buf, thp=thp)
        assert self.tracker.backend == "uffd", self.tracker.backend
        self.uffd = uffd_fd(self.tracker)                 # the C side arms through it
        self.pm = c.lib.ub_pagemap_open()                 # and scans through its own fd
        self.res = Result()

    # -- state ------------------------------------------------------------

    def arm(self) -> None:
        self.tracker.reset()

    def write(self, idx: np.ndarray, value: int = 1) -> None:
        self.c.write_pages(self.base, idx, value)

    def set_pattern(self, idx: np.ndarray) -> None:
        """Arm everything, then write exactly these pages (untimed setup)."""
        self.arm()
        if idx.size:
            self.write(idx)

    def refault(self) -> None:
        """Drop every page and arm again: the next write to a page populates it."""
        self.buf.madvise(mmap.MADV_DONTNEED)
        self.arm()

    def repopulate(self) -> None:
        """Drop every page, make them resident again (as huge pages with thp=True:
        MADV_DONTNEED frees the page tables here, CONFIG_PT_RECLAIM) and arm."""
        self.buf.madvise(mmap.MADV_DONTNEED)
        populate(self.base, self.size)
        self.arm()

    # -- the C side -------------------------------------------------------

    def c_written(self) -> int:
        return self.c.lib.ub_written(self.pm, self.base, self.end, ctypes.byref(self.res))

    def c_collect(self, max_pages: int = 0) -> int:
        return self.c.lib.ub_collect(self.pm, self.base, self.end, max_pages,
                                     ctypes.byref(self.res))

    def c_arm(self) -> None:
        self.c.lib.ub_arm(self.uffd, self.base, self.size)

    def c_free(self) -> None:
        self.c.lib.ub_result_free(ctypes.byref(self.res))

    def close(self) -> None:
        self.c_free()
        if self.pm >= 0:
            os.close(self.pm)
            self.pm = -1
        self.tracker.close()
        del self.array
        self.buf.close()


class HuskArena:
    """A populated buffer nobody tracks (for track() itself and the untracked baselines)."""

    def __init__(self, *, thp: bool = False, size: int = SIZE) -> None:
        self.buf = pagescan.allocate(size, thp=thp)
        self.base = self.buf.address
        self.size = size
        self.npages = size // PAGE
        if not thp:
            impl.madvise(self.base, size, 15)
        populate(self.base, size)
        self.array = np.frombuffer(self.buf, np.uint8)

    def close(self) -> None:
        del self.array
        self.buf.close()
