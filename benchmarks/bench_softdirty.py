"""pytest-benchmark: the soft-dirty backend's pagemap_read path on 1 GiB vs plain C
and vs the PAGEMAP_SCAN ioctl.

Run:  python -m pytest benchmarks/bench_softdirty.py --benchmark-only -q -p no:cacheprovider
      (the ratios are printed at the end, after pytest-benchmark's table)

Memory: one ``pagescan.allocate(1 GiB)`` buffer, MADV_NOHUGEPAGE, then populated
with MADV_POPULATE_WRITE (every page resident, 4 KiB pages: 262,144 pagemap
entries = 2 MiB of pagemap per scan). Size: ``PAGESCAN_BENCH_SD_BYTES``.

Three sides, each timed by pytest-benchmark on the same mapping, same state, with
the process's CPU time (``time.process_time``: user + kernel, so other processes on
the machine cannot stretch one side's rounds), median over ``ROUNDS`` rounds:

* ``backend``: the public API, ``pagescan.track(buf, backend="softdirty")`` forced
  onto the ``"pagemap_read"`` path, then ``t.written()`` (Masks(required=WRITTEN),
  i.e. the soft-dirty pages) or ``t.scan(Masks())`` (no filter: every page with its
  categories). That is ``Target.scan``: /proc/self/maps read and cut into VMA
  segments, chunks of ``CHUNK_PAGES`` (64K) entries ``preadv``'d into the reusable
  buffer, ``pagemap_to_categories``, the SOFT_DIRTY -> WRITTEN byte translate,
  ``scan_pages``, and the stitching of the chunks' answers;
* ``C``: benchmarks/c/pagemap_read.c, built at session start with ``cc -O2``
  (``CC`` / ``PAGESCAN_BENCH_CFLAGS`` override), one ctypes call per operation:
  ``pread`` of the same range in the same chunk size into one reused buffer and a
  loop over the entries building the regions (soft-dirty runs of bit 55; or, with
  no filter, runs of equal categories computed as the backend does);
* ``PAGEMAP_SCAN``: ``pagescan._core.pm_scan`` over the same range with the
  kernel filter the backend's ``"pagemap_scan"`` path would send
  (``softdirty.kernel_masks``: for written(), mask = return_mask =
  PAGE_IS_SOFT_DIRTY), on this host's kernel, for context.

How the probe is bypassed: on a kernel without CONFIG_MEM_SOFT_DIRTY bit 55 is
never set and ``SoftDirtyBackend.probe()`` fails, but the read path does exactly
the same work whether the bit is set or not (the answer of written() is just
empty). So for the module's duration the backend's cached probe result
(the running kernel's ``probe_cache["softdirty"]``, what ``probe()`` returns once
computed) is replaced
by ``Probe(True, ..., details={..., "path": "pagemap_read"})`` (also on a kernel
*with* soft-dirty, to time the read path rather than the ioctl), the tracker is
created through the public ``pagescan.track`` and the real probe result is put
back at module teardown. Nothing in the backend's code is changed or bypassed
besides that decision. Before timing, the backend's answers are checked against
the C loop's (identical regions) and against PAGEMAP_SCAN's.

The in-VM figure (backend vs PAGEMAP_SCAN with a working PAGE_IS_SOFT_DIRTY, in
the test lane's guest kernel) is not measured here; the host figures stand in.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import shlex
import statistics
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

import pagescan
from pagescan.kernel import LinuxKernel
from pagescan import Category, Masks, _core
from pagescan._impl import IMPLEMENTATION, impl
from pagescan.backends import softdirty
from pagescan.backends.base import Probe
from pagescan.tracker import WRITTEN_MASKS

SOURCE = Path(__file__).resolve().parent / "c" / "pagemap_read.c"
PAGE = mmap.PAGESIZE
SIZE = int(os.environ.get("PAGESCAN_BENCH_SD_BYTES", 1 << 30))
SZ = f"{SIZE >> 30} GiB" if SIZE % (1 << 30) == 0 else f"{SIZE >> 20} MiB"
CHUNK = softdirty.CHUNK_PAGES
MADV_POPULATE_WRITE = 23
MADV_NOHUGEPAGE = 15
ROUNDS = int(os.environ.get("PAGESCAN_BENCH_SD_ROUNDS", 40))
TIMER = time.process_time

#: filter name -> (the backend's masks, the C loop's mode)
FILTERS = {"written": (WRITTEN_MASKS, 0), "no-filter": (Masks(), 1)}
SIDES = ["backend", "C", "PAGEMAP_SCAN"]

pytestmark = [
    pytest.mark.skipif(IMPLEMENTATION != "cython",
                       reason="PAGEMAP_SCAN needs the compiled core"),
    pytest.mark.benchmark(timer=TIMER),
]

#: filter -> side -> {"median": s, "min": s}, filled by the tests, printed at the end
_FIGURES: dict[str, dict[str, dict[str, float]]] = {}


# ------------------------------------------------------------------- summary


class _Summary:
    """Prints the backend/C and backend/PAGEMAP_SCAN ratios after the table."""

    @pytest.hookimpl(trylast=True)
    def pytest_terminal_summary(self, terminalreporter) -> None:
        if not _FIGURES:
            return
        w = terminalreporter.write_line
        terminalreporter.write_sep(
            "-", f"softdirty pagemap_read: {SZ} populated, CPU time, median (min)")
        for filt, sides in _FIGURES.items():
            def ms(side: str, stat: str, sides=sides) -> str:
                s = sides.get(side)
                return f"{1e3 * s[stat]:8.3f}" if s else "       -"
            w(f"{filt:>10}: " + "  ".join(
                f"{side} {ms(side, 'median')} ms ({ms(side, 'min').strip()})"
                for side in SIDES))
            b = sides.get("backend")
            for other in ("C", "PAGEMAP_SCAN"):
                o = sides.get(other)
                if b and o and o["median"] > 0:
                    w(f"{'':>10}  backend/{other}: {b['median'] / o['median']:.2f}x median, "
                      f"{b['min'] / o['min']:.2f}x min")


@pytest.fixture(scope="module", autouse=True)
def _summary(request):
    pm = request.config.pluginmanager
    if not pm.has_plugin("softdirty-summary"):
        pm.register(_Summary(), "softdirty-summary")
    yield


# ------------------------------------------------------------------- C side


class Out(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("n", ctypes.c_int64), ("cap", ctypes.c_int64)]


class PagemapC:
    def __init__(self, so: Path) -> None:
        lib = self.lib = ctypes.CDLL(str(so))
        lib.pr_scan.restype = ctypes.c_int64
        lib.pr_scan.argtypes = [ctypes.c_int, ctypes.c_uint64, ctypes.c_uint64,
                                ctypes.c_int64, ctypes.c_int, ctypes.POINTER(Out)]
        lib.pr_free.restype = None
        lib.pr_free.argtypes = [ctypes.POINTER(Out)]
        self.out = Out()
        self._ref = ctypes.byref(self.out)

    def scan(self, fd: int, start: int, end: int, mode: int) -> int:
        n = self.lib.pr_scan(fd, start, end, CHUNK, mode, self._ref)
        if n < 0:
            raise OSError(-n, f"pr_scan: {os.strerror(-n)}")
        return n

    def regions(self) -> np.ndarray:
        n = self.out.n
        if n == 0:
            return np.empty((0, 3), np.uint64)
        buf = (ctypes.c_uint64 * (3 * n)).from_address(self.out.data)
        return np.array(buf, dtype=np.uint64).reshape(-1, 3)

    def close(self) -> None:
        self.lib.pr_free(self._ref)


@pytest.fixture(scope="session")
def pagemap_c(tmp_path_factory):
    """benchmarks/c/pagemap_read.c, built now with cc -O2."""
    cc = os.environ.get("CC", "cc")
    cflags = shlex.split(os.environ.get("PAGESCAN_BENCH_CFLAGS", "-O2"))
    so = tmp_path_factory.mktemp("pagemap_read") / "pagemap_read.so"
    cmd = [cc, *cflags, "-shared", "-fPIC", "-Wall", "-o", str(so), str(SOURCE)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout}{proc.stderr}")
    c = PagemapC(so)
    yield c
    c.close()


# ------------------------------------------------------------------- memory


@pytest.fixture(scope="module")
def arena():
    """(buf, tracker, pagemap fd): 1 GiB populated, tracked by the soft-dirty backend
    on its pagemap_read path (the probe result forced for this module, see above)."""
    real = softdirty.SoftDirtyBackend.probe()
    forced = Probe(True, "", {**real.details, "path": softdirty.PATH_READ,
                              "path_reason": "forced by benchmarks/bench_softdirty.py"})
    buf = pagescan.allocate(SIZE)
    base = buf.address
    impl.madvise(base, SIZE, MADV_NOHUGEPAGE)
    impl.madvise(base, SIZE, MADV_POPULATE_WRITE)
    cache = LinuxKernel().probe_cache           # the running kernel's probe results
    cache["softdirty"] = forced
    tracker = None
    fd = os.open("/proc/self/pagemap", os.O_RDONLY | os.O_CLOEXEC)
    try:
        tracker = pagescan.track(buf, backend="softdirty")
        assert tracker._backend.path == softdirty.PATH_READ
        yield buf, tracker, fd
    finally:
        if tracker is not None:
            tracker.close()
        cache["softdirty"] = real
        os.close(fd)
        buf.close()


def _kernel_categories(fd: int, addr: int) -> int:
    with LinuxKernel() as k:
        return k.scan_categories()


def _as_array(regions) -> np.ndarray:
    return np.asarray(regions, dtype=np.uint64).reshape(-1, 3)


def _user(regions, return_mask: int) -> np.ndarray:
    """PAGEMAP_SCAN regions in the backend's terms (as its pagemap_scan path does)."""
    return _as_array(impl.coalesce(
        [(a, b, softdirty.user_categories(c, return_mask)) for a, b, c in regions]))


# ------------------------------------------------------------------- tests


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("filt", list(FILTERS))
def test_read(benchmark, filt, side, arena, pagemap_c):
    buf, tracker, fd = arena
    masks, mode = FILTERS[filt]
    start, end = buf.address, buf.address + SIZE
    benchmark.group = f"softdirty pagemap read {SZ}, {filt}"
    k_masks = softdirty.kernel_masks(masks, kernel_categories=_kernel_categories(fd, start))
    assert k_masks is not None

    def backend():
        return tracker.scan(masks)

    def c():
        return pagemap_c.scan(fd, start, end, mode)

    def pm():
        return _core.pm_scan(fd, start, end, 0, k_masks)

    # the same answer from every side, before timing
    want = _as_array(backend().regions)
    c()
    assert np.array_equal(pagemap_c.regions(), want), (filt, pagemap_c.regions()[:4], want[:4])
    assert np.array_equal(_user(pm().regions, masks.return_mask), want)
    if filt == "written":
        assert len(want) == 0 or softdirty.SoftDirtyBackend.probe().ok
    else:
        assert int(want[:, 1].max() - want[:, 0].min()) == SIZE
        assert all(int(x) & int(Category.PRESENT) for x in want[:, 2])

    op = {"backend": backend, "C": c, "PAGEMAP_SCAN": pm}[side]
    benchmark.pedantic(op, rounds=ROUNDS, warmup_rounds=2, iterations=1)
    benchmark.extra_info.update(side=side, filter=filt, regions=len(want),
                                entries=SIZE // PAGE, chunk=CHUNK, timer="process_time")
    stats = getattr(getattr(benchmark, "stats", None), "stats", None)
    if stats is not None:
        _FIGURES.setdefault(filt, {})[side] = {"median": statistics.median(stats.data),
                                               "min": min(stats.data)}
