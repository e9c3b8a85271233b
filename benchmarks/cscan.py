"""The C versions (benchmarks/c/*.c), built at run time and called via ctypes.

``build(outdir)`` compiles the plain loop, scan_loop.c, with
``cc -O2 -shared -fPIC`` (``CC`` and ``PAGESCAN_BENCH_CFLAGS`` override the
compiler and the optimisation flags) and returns the path of the shared object;
``build(outdir, RUNS_SOURCE, "-O3", "PAGESCAN_BENCH_RUNS_CFLAGS")`` builds the
run-at-a-time sketch scan_runs.c (-O3, as the Cython core is built).
``CScan(path)`` loads either.
``CScan.scan_pages`` has scan_pages' signature and returns
``ScanResult(regions as an (n, 3) uint64 ndarray, walk_end)``;
``CScan.prepare`` returns a zero-argument callable doing one raw call (scan and
free, nothing copied) for timing.
"""

from __future__ import annotations

import ctypes
import os
import shlex
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np

from pagescan._args import check_limits, check_page_size, check_range, check_uint_buffer
from pagescan._types import ScanResult, coerce_masks

SOURCE = Path(__file__).resolve().parent / "c" / "scan_loop.c"
RUNS_SOURCE = Path(__file__).resolve().parent / "c" / "scan_runs.c"


def build(outdir: str | os.PathLike, source: Path = SOURCE, default_flags: str = "-O2",
          flags_env: str = "PAGESCAN_BENCH_CFLAGS") -> Path:
    cc = os.environ.get("CC", "cc")
    cflags = shlex.split(os.environ.get(flags_env, default_flags))
    so = Path(outdir) / (source.stem + ".so")
    cmd = [cc, *cflags, "-shared", "-fPIC", "-Wall", "-o", str(so), str(source)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout}{proc.stderr}")
    return so


class ScanOut(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("n", ctypes.c_int64), ("cap", ctypes.c_int64),
                ("walk_end", ctypes.c_uint64)]


_ARGTYPES = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_uint64, ctypes.c_uint64,
             ctypes.c_uint64, ctypes.c_uint64, ctypes.c_uint64, ctypes.c_uint64,
             ctypes.c_uint64, ctypes.c_int64, ctypes.POINTER(ScanOut)]


class CScan:
    def __init__(self, so_path: str | os.PathLike, flags: str = "") -> None:
        self.path = Path(so_path)
        self.flags = flags
        self.lib = ctypes.CDLL(str(so_path))
        self.fns = {}
        for size, name in ((1, "scan_u8"), (2, "scan_u16"), (4, "scan_u32"), (8, "scan_u64")):
            fn = getattr(self.lib, name)
            fn.argtypes = _ARGTYPES
            fn.restype = ctypes.c_int
            self.fns[size] = fn
        self.lib.scan_free.argtypes = [ctypes.POINTER(ScanOut)]
        self.lib.scan_free.restype = None

    def _args(self, categories, start, page_size, masks, max_pages, max_regions):
        mv = check_uint_buffer(categories, "categories")
        ps = check_page_size(page_size)
        start, end = check_range(start, len(mv), ps)   # start: the int, as the cores use
        m = coerce_masks(masks)
        mp, mr = check_limits(max_pages, max_regions)
        arr = np.frombuffer(mv, dtype=f"u{mv.itemsize}") if len(mv) else None
        addr = arr.ctypes.data if arr is not None else None
        args = (addr, len(mv), start, ps, m.inverted, m.mask, m.anyof, m.return_mask,
                mp, mr)
        return self.fns[mv.itemsize], args, end, m.matches_nothing, arr

    def scan_pages(self, categories, start=0, page_size=4096, masks=None, max_pages=0,
                   max_regions=None) -> ScanResult:
        fn, args, end, nothing, keep = self._args(categories, start, page_size, masks,
                                                  max_pages, max_regions)
        if nothing:
            return ScanResult(np.empty((0, 3), np.uint64), end)
        out = ScanOut()
        try:
            if fn(*args, ctypes.byref(out)) < 0:
                raise MemoryError()
            n = out.n
            if n:
                buf = (ctypes.c_uint64 * (3 * n)).from_address(out.data)
                regions = np.frombuffer(buf, dtype=np.uint64).reshape(n, 3).copy()
            else:
                regions = np.empty((0, 3), np.uint64)
            walk_end = out.walk_end
        finally:
            self.lib.scan_free(ctypes.byref(out))
        del keep
        return ScanResult(regions, walk_end)

    def prepare(self, categories, start=0, page_size=4096, masks=None, max_pages=0,
                max_regions=None) -> Callable[[], int]:
        """One call over the whole buffer (scan + free), arguments converted up front.
        The returned callable keeps ``categories`` alive and returns the region count."""
        fn, args, _end, nothing, keep = self._args(categories, start, page_size, masks,
                                                   max_pages, max_regions)
        assert not nothing
        out = ScanOut()
        ref = ctypes.byref(out)
        free = self.lib.scan_free

        def run(keep=keep) -> int:
            fn(*args, ref)
            n = out.n
            free(ref)
            return n

        return run
