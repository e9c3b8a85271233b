"""pytest-benchmark suite: the mprotect backend next to the uffd backend, on 1 GiB.

Run:  python -m pytest benchmarks/bench_mprotect.py --benchmark-only -q
      (the mprotect/uffd ratios and the per-page first-write costs are printed
      at the end)

Both backends track a 1 GiB buffer of their own, populated (every page
resident, 4 KiB pages: MADV_NOHUGEPAGE then MADV_POPULATE_WRITE), in the same
process; every figure is timed through the public API (``pagescan.track``,
``t.written()``, ``t.collect()``, ``t.reset()``) with the same state set up
outside the timing:

* first write: ``t.reset()`` (arm), then one byte into every page (NumPy
  ``arr[::4096] = v``), or into every 100th page. mprotect pays a SIGSEGV round
  trip and an mprotect() per page (isolated pages split a mapping in three,
  consecutive ones extend the previous page's mapping); uffd-wp async resolves
  the fault in the kernel. Reported per page.
* scan: ``t.written()`` with a pattern of pages written since arming.
* collect: ``t.collect()`` (get-and-reset), the pattern written again (untimed)
  before every round. mprotect re-protects each run of written pages with one
  mprotect(); uffd does it inside PAGEMAP_SCAN (PM_SCAN_WP_MATCHING).
* arm: ``t.reset()`` on clean memory and after every page was written.

Patterns (page indices into the 1 GiB): "sparse" = every k-th page (one region
per written page), "dense" = runs of 256 pages evenly spread. No "50%-sparse"
here: 131072 isolated written pages would need 262145 mappings, four times
vm.max_map_count (65530): the mprotect backend coarsens past its mapping budget
(see backends/mprotect.py) and its answer (and time) would be another figure
than uffd's exact one. "10%-sparse" (26214 isolated pages, ~52k mappings) is
the sparsest pattern that fits under the budget at 1 GiB.

Size: ``PAGESCAN_BENCH_MPROTECT_BYTES`` (default 1 GiB).
"""

from __future__ import annotations

import mmap
import os
import statistics
from collections import defaultdict

import numpy as np
import pytest

import pagescan
from pagescan._impl import impl

PS = mmap.PAGESIZE
SIZE = int(os.environ.get("PAGESCAN_BENCH_MPROTECT_BYTES", 1 << 30))
NPAGES = SIZE // PS
LABEL = f"{SIZE >> 30} GiB" if SIZE % (1 << 30) == 0 else f"{SIZE >> 20} MiB"
MADV_NOHUGEPAGE = 15
MADV_POPULATE_WRITE = 23
DENSE_RUN = 256

BACKENDS = ["mprotect", "uffd"]
SCAN_ROUNDS = 20
COLLECT_ROUNDS = 8
FAULT_ROUNDS = 3

pytestmark = pytest.mark.skipif(
    not pagescan.probe("mprotect").ok,
    reason="the mprotect backend does not work here: " + pagescan.probe("mprotect").reason)


def _sparse(step: int) -> np.ndarray:
    return np.arange(0, NPAGES, step, dtype=np.int64)


def _dense(frac: float) -> np.ndarray:
    runs = max(1, round(NPAGES * frac / DENSE_RUN))
    starts = np.arange(runs, dtype=np.int64) * (NPAGES // runs)
    return (starts[:, None] + np.arange(DENSE_RUN, dtype=np.int64)[None, :]).ravel()


#: name -> page indices written
PATTERNS: dict[str, np.ndarray] = {
    "clean": np.empty(0, np.int64),
    "1%-sparse": _sparse(100),
    "10%-sparse": _sparse(10),
    "1%-dense": _dense(0.01),
    "50%-dense": _dense(0.5),
    "100%": np.arange(NPAGES, dtype=np.int64),
}


def expected_pages(idx: np.ndarray) -> int:
    return int(np.unique(idx).size)


class Arena:
    """A populated buffer of SIZE bytes tracked by one backend."""

    def __init__(self, backend: str) -> None:
        self.backend = backend
        self.buf = pagescan.allocate(SIZE)
        self.base = self.buf.address
        impl.madvise(self.base, SIZE, MADV_NOHUGEPAGE)
        impl.madvise(self.base, SIZE, MADV_POPULATE_WRITE)
        self.array = np.frombuffer(self.buf, np.uint8)
        self.tracker = pagescan.track(self.buf, backend=backend)
        assert self.tracker.backend == backend
        self._offsets: dict[str, np.ndarray] = {}

    def write(self, pattern: str, value: int = 1) -> None:
        if pattern not in self._offsets:
            self._offsets[pattern] = PATTERNS[pattern] * PS
        off = self._offsets[pattern]
        if off.size:
            self.array[off] = value

    def set_pattern(self, pattern: str) -> None:
        self.tracker.reset()
        self.write(pattern)

    def close(self) -> None:
        self.tracker.close()
        del self.array
        try:
            self.buf.close()
        except BufferError:
            pass


@pytest.fixture(scope="module")
def arena():
    made: dict[str, Arena] = {}

    def get(backend: str) -> Arena:
        if backend == "uffd":
            p = pagescan.probe("uffd")
            if not p.ok:
                pytest.skip(f"uffd: {p.reason}")
        if backend not in made:
            made[backend] = Arena(backend)
        return made[backend]

    yield get
    for a in made.values():
        a.close()


def record(benchmark, figure: str, backend: str, pages: int = 0) -> None:
    benchmark.extra_info.update(mp_figure=figure, mp_backend=backend, pages=pages)


# ---------------------------------------------------------------- first write


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("stride", [1, 100], ids=["every-page", "every-100th-page"])
def test_first_write(benchmark, backend, stride, arena):
    """One byte into each page after arming; the report divides by the pages."""
    what = "every page" if stride == 1 else "every 100th page (isolated pages)"
    benchmark.group = f"mprotect vs uffd: first write, {what} of {LABEL}, resident"
    a = arena(backend)
    step = PS * stride

    def target():
        a.array[::step] = 7

    benchmark.pedantic(target, setup=a.tracker.reset, rounds=FAULT_ROUNDS)
    pages = len(range(0, NPAGES, stride))
    assert a.tracker.written().pages() == pages
    record(benchmark, f"first write, {what}", backend, pages)


# ----------------------------------------------------------------------- scan


@pytest.mark.parametrize("pattern", list(PATTERNS))
@pytest.mark.parametrize("backend", BACKENDS)
def test_scan(benchmark, backend, pattern, arena):
    benchmark.group = f"mprotect vs uffd: scan (written) {LABEL}, {pattern}"
    a = arena(backend)
    a.set_pattern(pattern)
    result = benchmark.pedantic(a.tracker.written, rounds=SCAN_ROUNDS, warmup_rounds=1)
    assert result.pages() == expected_pages(PATTERNS[pattern])
    record(benchmark, f"scan {pattern}", backend, expected_pages(PATTERNS[pattern]))


# -------------------------------------------------------------------- collect


@pytest.mark.parametrize("pattern", list(PATTERNS))
@pytest.mark.parametrize("backend", BACKENDS)
def test_collect(benchmark, backend, pattern, arena):
    """get-and-reset: the pattern is written again (untimed) before each round."""
    benchmark.group = f"mprotect vs uffd: collect(reset=True) {LABEL}, {pattern}"
    a = arena(backend)
    a.set_pattern(pattern)
    result = benchmark.pedantic(a.tracker.collect, setup=lambda: a.write(pattern),
                                rounds=COLLECT_ROUNDS, warmup_rounds=1)
    assert result.regions.pages() == expected_pages(PATTERNS[pattern])
    assert len(a.tracker.written()) == 0, "collect left written pages behind"
    record(benchmark, f"collect {pattern}", backend, expected_pages(PATTERNS[pattern]))


# ------------------------------------------------------------------------ arm


@pytest.mark.parametrize("state", ["clean", "100%"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_arm(benchmark, backend, state, arena):
    benchmark.group = f"mprotect vs uffd: arm (reset) {LABEL}, {state} written"
    a = arena(backend)
    a.set_pattern(state)
    setup = (lambda: a.write(state)) if state != "clean" else None
    benchmark.pedantic(a.tracker.reset, setup=setup,
                       rounds=COLLECT_ROUNDS if setup else SCAN_ROUNDS, warmup_rounds=1)
    assert len(a.tracker.written()) == 0
    record(benchmark, f"arm, {state} written", backend)


# ---------------------------------------------------------------------- report


def summarize(records) -> list[str]:
    """mprotect/uffd median ratios, and first-write costs per page."""
    rows: dict[str, dict[str, dict]] = defaultdict(dict)
    order: list[str] = []
    for rec in records:
        info = rec.get("extra_info") or {}
        stats = rec.get("stats") or {}
        if "mp_figure" not in info or "median" not in stats:
            continue
        fig = info["mp_figure"]
        if fig not in rows:
            order.append(fig)
        rows[fig][info["mp_backend"]] = {"median": stats["median"], "pages": info["pages"]}
    if not rows:
        return []

    def ms(x):
        return "-" if x is None else f"{x * 1e3:10.3f} ms"

    lines = [f"{'figure':<44} {'mprotect':>13} {'uffd':>13} {'mprotect/uffd':>13}"
             f" {'mprotect ns/page':>17} {'uffd ns/page':>13}"]
    ratios = []
    for fig in order:
        mp = rows[fig].get("mprotect", {}).get("median")
        uf = rows[fig].get("uffd", {}).get("median")
        pages = rows[fig].get("mprotect", {}).get("pages") or 0
        ratio = f"{mp / uf:12.1f}x" if mp is not None and uf else "-"
        if mp is not None and uf:
            ratios.append(mp / uf)
        per = (f"{mp / pages * 1e9:17.0f}" if mp is not None and pages
               and fig.startswith("first write") else "")
        per_u = (f"{uf / pages * 1e9:13.0f}" if uf is not None and pages
                 and fig.startswith("first write") else "")
        lines.append(f"{fig:<44} {ms(mp):>13} {ms(uf):>13} {ratio:>13} {per:>17} {per_u:>13}")
    if ratios:
        lines.append(f"mprotect/uffd: median of the ratios {statistics.median(ratios):.1f}x, "
                     f"range {min(ratios):.1f}x .. {max(ratios):.1f}x over {len(ratios)} figures")
    return lines


class _Summary:
    def __init__(self, config) -> None:
        self.config = config

    @pytest.hookimpl(trylast=True)
    def pytest_terminal_summary(self, terminalreporter) -> None:
        bs = getattr(self.config, "_benchmarksession", None)
        if bs is None or not getattr(bs, "benchmarks", None):
            return
        lines = summarize(b.as_dict(include_data=False) for b in bs.benchmarks)
        if lines:
            terminalreporter.write_sep("-", f"mprotect vs uffd, {LABEL} (bench_mprotect.py)")
            for line in lines:
                terminalreporter.write_line(line)


@pytest.fixture(scope="module", autouse=True)
def _summary(request):
    pm = request.config.pluginmanager
    if not pm.has_plugin("mprotect-summary"):
        pm.register(_Summary(request.config), "mprotect-summary")
    yield
