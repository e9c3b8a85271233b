"""pytest-benchmark suite: the uffd backend on 1 GiB, next to plain C.

Run:  python -m pytest benchmarks/bench_uffd.py --benchmark-only -q
      (the pagescan/C ratios are printed at the end; ``python
      benchmarks/report_uffd.py RUN.json`` prints them from a saved
      ``--benchmark-json`` run)

Every figure is timed on the same mapping in the same state by:

* ``pagescan``: the public API (``t.written()``, ``t.collect()``, ...);
* ``C``: benchmarks/c/uffd_bench.c, built now with ``cc -O2``, called through
  ctypes, one call per operation, doing the same system calls (same flags,
  masks, chunk sizes 512 then x4, resume loop, seam merge);
* ``core`` (scan and collect only): ``pagescan._core.pm_scan`` called directly,
  the Cython loop without the Tracker layer, to split any overhead.

Interleaved: the sides take turns round by round (their order rotating), each
after its own untimed setup, so background load hits them alike. pytest-benchmark
times the ``pagescan`` side (its table shows one row per figure); the other
sides are timed the same way (the same clock around one call) in the round's
setup/teardown and kept in ``extra_info``. The clock is the thread's CPU time
(user + kernel) unless ``PAGESCAN_BENCH_UFFD_CLOCK=wall``: other processes on
the machine then cannot stretch one side's rounds and not the other's. The
report compares medians (and minima) of the same run. Each side's answer is
checked against the expected regions before timing.

Memory: 1 GiB, populated (every page resident, 4 KiB pages), tracked once.
Before each round the state is rebuilt outside the timing (arm, then write the
pattern's pages from C):

* track: ``pagescan.track(buf)`` on populated memory vs the same syscalls in C
  (userfaultfd + UFFDIO_API, pagemap open, mapped check, MADV_NOHUGEPAGE,
  UFFDIO_REGISTER, UFFDIO_WRITEPROTECT); untracked again after every round;
* arm: ``t.reset()`` vs UFFDIO_WRITEPROTECT, on clean and on fully written memory;
* scan: ``t.written()`` with nothing, 1%, 50% or 100% of the pages written,
  sparse (every k-th page) and dense (runs of 256 pages);
* collect: ``t.collect()`` (reset=True: PM_SCAN_WP_MATCHING|CHECK_WPASYNC), the
  pattern written again before every round;
* first write: one byte into every page after arming. pagescan side: NumPy
  ``arr[::4096] = v`` (what a Python user writes); C: a loop. "resident" pages
  take the uffd-wp fault only, "unpopulated" ones (MADV_DONTNEED, then armed) a
  page allocation too; the same on untracked memory for comparison;
* THP: ``thp=True`` (allocate(thp=True), huge pages kept) vs ``thp=False``
  (the default: MADV_NOHUGEPAGE, 4 KiB pages), both through pagescan: track,
  arm, scan, collect, first write (every page; every 100th page, where each
  write splits a huge page), first touch of unpopulated memory.

Size: ``PAGESCAN_BENCH_UFFD_BYTES`` (default 1 GiB).
"""

from __future__ import annotations

import ctypes
import mmap
import os
import statistics
import time
from collections.abc import Callable

import numpy as np
import pytest

import pagescan
import report_uffd
import uffd_harness as H
from pagescan import _core
from pagescan.tracker import WRITTEN_MASKS

#: The clock: "cpu" (default) = the thread's CPU time, user + kernel
#: (CLOCK_THREAD_CPUTIME_ID), which leaves out the time the thread waits while
#: other processes run; "wall" = time.perf_counter (pytest-benchmark's default).
#: On a shared 2-CPU machine the wall clock of a 2 ms scan varied 3x between
#: otherwise identical rounds; the CPU time does not.
CLOCK = os.environ.get("PAGESCAN_BENCH_UFFD_CLOCK", "cpu")
TIMER = {"cpu": time.thread_time, "wall": time.perf_counter}[CLOCK]

_PROBE = pagescan.backends.probe("uffd")
pytestmark = [
    pytest.mark.skipif(not _PROBE.ok,
                       reason=f"the uffd backend does not work here: {_PROBE.reason}"),
    pytest.mark.benchmark(timer=TIMER),
]

SCAN_ROUNDS = 40
COLLECT_ROUNDS = 15
HEAVY_ROUNDS = 7        # setups that fault in every page
FAULT_ROUNDS = 3        # rounds that populate 1 GiB page by page

SCAN_PATTERNS = list(H.PATTERNS)
SZ = H.SIZE_LABEL

Step = Callable[[], object]


# ------------------------------------------------------------------- fixtures


class _Summary:
    """Prints the ratios after pytest-benchmark's table (report_uffd.py)."""

    def __init__(self, config) -> None:
        self.config = config

    @pytest.hookimpl(trylast=True)
    def pytest_terminal_summary(self, terminalreporter) -> None:
        bs = getattr(self.config, "_benchmarksession", None)
        if bs is None or not getattr(bs, "benchmarks", None):
            return
        lines = report_uffd.summarize(b.as_dict(include_data=False) for b in bs.benchmarks)
        if lines:
            terminalreporter.write_sep("-", "uffd backend: pagescan vs C (report_uffd.py)")
            for line in lines:
                terminalreporter.write_line(line)


@pytest.fixture(scope="module", autouse=True)
def _summary(request):
    pm = request.config.pluginmanager
    if not pm.has_plugin("uffd-summary"):
        pm.register(_Summary(request.config), "uffd-summary")
    yield


@pytest.fixture(scope="module")
def uffd_c(tmp_path_factory) -> H.UffdC:
    c = H.UffdC(H.build(tmp_path_factory.mktemp("uffd_bench")))
    c.lib.ub_set_clock(CLOCK == "cpu")
    return c


@pytest.fixture(scope="module")
def arena(uffd_c):
    a = H.Arena(uffd_c, thp=False)
    yield a
    a.close()


@pytest.fixture(scope="module")
def husk():
    h = H.HuskArena(thp=False)
    yield h
    h.close()


@pytest.fixture(scope="module")
def thp_arenas(uffd_c, arena):
    """{thp: Arena}: thp=False is the main arena; thp=True one with huge pages."""
    a = H.Arena(uffd_c, thp=True)
    yield {False: arena, True: a}
    a.close()


@pytest.fixture(scope="module")
def thp_husks(husk):
    h = H.HuskArena(thp=True)
    yield {False: husk, True: h}
    h.close()


# ------------------------------------------------------------- interleaving


def interleaved(benchmark, sides: dict[str, tuple[Step | None, Step, Step | None]], *,
                rounds: int, warmup: int = 1) -> dict[str, list[float]]:
    """Time every side ``rounds`` times, taking turns (rotating order).

    ``sides``: name -> (setup, op, teardown); the first side is timed by
    pytest-benchmark, the others here (TIMER around the call, as pytest-benchmark
    does with the module's timer) from its setup/teardown hooks. Returns the others'
    samples in seconds, warm-up rounds dropped.
    """
    names = list(sides)
    main = names[0]
    samples: dict[str, list[float]] = {n: [] for n in names[1:]}
    state = {"round": 0, "after": []}

    def run(name: str) -> None:
        setup, op, teardown = sides[name]
        if setup:
            setup()
        t0 = TIMER()
        op()
        t1 = TIMER()
        if teardown:
            teardown()
        if state["round"] > warmup:
            samples[name].append(t1 - t0)

    def setup() -> None:
        state["round"] += 1
        k = state["round"] % len(names)
        order = names[k:] + names[:k]
        i = order.index(main)
        state["after"] = order[i + 1:]
        for n in order[:i]:
            run(n)
        if sides[main][0]:
            sides[main][0]()

    def teardown() -> None:
        if sides[main][2]:
            sides[main][2]()
        for n in state["after"]:
            run(n)

    benchmark.pedantic(sides[main][1], setup=setup, teardown=teardown, rounds=rounds,
                       warmup_rounds=warmup)
    return samples


def record(benchmark, kind: str, figure: str, main: str, others: dict[str, list[float]],
           **info) -> None:
    benchmark.extra_info.update(
        uffd_kind=kind, uffd_figure=figure, uffd_main=main, uffd_clock=CLOCK,
        uffd_sides={n: {"median": statistics.median(xs), "min": min(xs), "rounds": len(xs)}
                    for n, xs in others.items() if xs},
        **info)


def _check_regions(got, expected, what: str) -> None:
    g = np.asarray(got, dtype=np.uint64).reshape(-1, 3)
    if g.shape != expected.shape or not np.array_equal(g, expected):
        raise AssertionError(f"{what}: {len(g)} regions, expected {len(expected)}")


def _ops(arena: H.Arena, *, reset: bool) -> dict[str, Step]:
    """The scan (reset=False: written()) or collect (reset=True) of each side."""
    t = arena.tracker
    flags = _core.PM_SCAN_CHECK_WPASYNC | (_core.PM_SCAN_WP_MATCHING if reset else 0)
    pm, s, e = t._backend.kernel.pagemap_fd, t.start, t.end

    def core():
        return _core.pm_scan(pm, s, e, flags, WRITTEN_MASKS)
    return {"pagescan": t.collect if reset else t.written, "core": core,
            "C": arena.c_collect if reset else arena.c_written}


def _answer(side: str, arena: H.Arena, result):
    if side == "C":
        return H.UffdC.regions(arena.res)
    return result.regions if hasattr(result, "regions") else result


# ---------------------------------------------------------------------- track


def _release(held: list, c_untrack) -> None:
    """Untrack what a round left tracked (--benchmark-disable runs no teardown)."""
    while held:
        if isinstance(held[-1], tuple):
            c_untrack()
        else:
            held.pop().close()


def test_track(benchmark, husk, uffd_c):
    benchmark.group = f"uffd track: register + arm {SZ} (populated)"
    held: list = []
    lib = uffd_c.lib

    def c_track():
        u, p = ctypes.c_int(-1), ctypes.c_int(-1)
        lib.ub_track(husk.base, husk.size, 0, ctypes.byref(u), ctypes.byref(p))
        held.append((u.value, p.value))

    def c_untrack():
        u, p = held.pop()
        lib.ub_untrack(u, p, husk.base, husk.size)

    others = interleaved(benchmark, {
        "pagescan": (None, lambda: held.append(pagescan.track(husk.buf)),
                     lambda: held.pop().close()),
        "C": (None, c_track, c_untrack),
    }, rounds=HEAVY_ROUNDS)
    _release(held, c_untrack)
    record(benchmark, "track", "track (register + arm)", "pagescan", others)


# ------------------------------------------------------------------------ arm


@pytest.mark.parametrize("state", ["clean", "100%"])
def test_arm(benchmark, state, arena):
    benchmark.group = f"uffd arm (reset) {SZ}, {state} written"
    idx = H.PATTERNS[state][0]
    arena.set_pattern(idx)
    setup = (lambda: arena.write(idx)) if idx.size else None
    others = interleaved(benchmark, {
        "pagescan": (setup, arena.tracker.reset, None),
        "C": (setup, arena.c_arm, None),
    }, rounds=HEAVY_ROUNDS if idx.size else SCAN_ROUNDS)
    assert len(arena.tracker.written()) == 0
    record(benchmark, "arm", f"arm, {state} written", "pagescan", others,
           pages_written=int(idx.size))


# ----------------------------------------------------------------------- scan


@pytest.mark.parametrize("pattern", SCAN_PATTERNS)
def test_scan(benchmark, pattern, arena):
    idx, desc = H.PATTERNS[pattern]
    benchmark.group = f"uffd scan (written) {SZ}, {pattern}"
    arena.set_pattern(idx)
    expected = H.expected_regions(idx, arena.base)
    ops = _ops(arena, reset=False)
    for side, op in ops.items():
        arena.c_free()
        _check_regions(_answer(side, arena, op()), expected, f"{side} scan {pattern}")
    inside: list[int] = []
    others = interleaved(benchmark, {
        "pagescan": (None, ops["pagescan"], None),
        "core": (None, ops["core"], None),
        "C": (arena.c_free, ops["C"], lambda: inside.append(arena.res.ns_inside)),
    }, rounds=SCAN_ROUNDS)
    record(benchmark, "scan", f"scan {pattern}", "pagescan", others,
           pages_written=int(idx.size), regions=len(expected), pattern=desc,
           c_ns_inside=statistics.median(inside), c_calls=int(arena.res.calls))


# -------------------------------------------------------------------- collect


@pytest.mark.parametrize("pattern", SCAN_PATTERNS)
def test_collect(benchmark, pattern, arena):
    idx, desc = H.PATTERNS[pattern]
    benchmark.group = f"uffd collect(reset=True) {SZ}, {pattern}"
    arena.set_pattern(idx)
    expected = H.expected_regions(idx, arena.base)
    ops = _ops(arena, reset=True)

    def rewrite():
        arena.c_free()
        if idx.size:
            arena.write(idx)

    for side, op in ops.items():
        rewrite()
        _check_regions(_answer(side, arena, op()), expected, f"{side} collect {pattern}")
        assert len(arena.tracker.written()) == 0, f"{side}: collect left written pages"
    inside: list[int] = []
    rounds = COLLECT_ROUNDS if idx.size < H.NPAGES // 4 else HEAVY_ROUNDS
    others = interleaved(benchmark, {
        "pagescan": (rewrite, ops["pagescan"], None),
        "core": (rewrite, ops["core"], None),
        "C": (rewrite, ops["C"], lambda: inside.append(arena.res.ns_inside)),
    }, rounds=rounds)
    record(benchmark, "collect", f"collect {pattern}", "pagescan", others,
           pages_written=int(idx.size), regions=len(expected), pattern=desc,
           c_ns_inside=statistics.median(inside))


# ---------------------------------------------------------------- first write


def _numpy_writer(array: np.ndarray, stride: int = 1) -> Step:
    step = H.PAGE * stride

    def w():
        array[::step] = 7
    return w


def _c_writer(lib, base: int, npages: int) -> Step:
    return lambda: lib.ub_write_all(base, npages, 7)


@pytest.mark.parametrize("memory", ["resident", "unpopulated"])
@pytest.mark.parametrize("tracked", ["tracked", "untracked"])
def test_first_write(benchmark, tracked, memory, arena, husk, uffd_c):
    """One byte into each page of the buffer; the report divides by the pages."""
    benchmark.group = f"uffd first write, every page of {SZ}, {memory}, {tracked}"
    if tracked == "tracked":
        a, setup = arena, (arena.arm if memory == "resident" else arena.refault)
    else:
        a = husk
        setup = (None if memory == "resident"
                 else (lambda: husk.buf.madvise(mmap.MADV_DONTNEED)))
    others = interleaved(benchmark, {
        "pagescan": (setup, _numpy_writer(a.array), None),
        "C": (setup, _c_writer(uffd_c.lib, a.base, a.npages), None),
    }, rounds=FAULT_ROUNDS if memory == "unpopulated" else HEAVY_ROUNDS)
    if tracked == "tracked":
        assert arena.tracker.written().pages() == arena.npages
    record(benchmark, "first-write", f"first write, {memory}, {tracked}", "pagescan",
           others, pages_written=a.npages)


# ------------------------------------------------------------------------ THP
#
# Both sides through pagescan; the thp=True side is the one pytest-benchmark
# times, thp=False (the default) is interleaved with it.


def _thp_record(benchmark, figure: str, others, **info) -> None:
    others = {"thp=False": others.get("thp=False", [])}
    record(benchmark, "thp", figure, "thp=True", others, **info)


def test_thp_track(benchmark, thp_husks):
    benchmark.group = f"uffd THP: track (register + arm) {SZ}, populated"
    held: list = []
    sides = {}
    for thp in (True, False):
        h = thp_husks[thp]
        def track(h=h, thp=thp):
            held.append(pagescan.track(h.buf, thp=thp))
        sides[f"thp={thp}"] = (None, track, lambda: held.pop().close())
    others = interleaved(benchmark, sides, rounds=HEAVY_ROUNDS)
    _release(held, None)
    _thp_record(benchmark, "track (register + arm)", others)


def test_thp_arm(benchmark, thp_arenas):
    benchmark.group = f"uffd THP: arm (reset) {SZ}, clean"
    huge = {}
    for thp, a in thp_arenas.items():
        a.repopulate()
        huge[thp] = a.tracker.scan(pagescan.Masks(required=pagescan.Category.HUGE)
                                   ).regions.pages()
    assert huge[True] == thp_arenas[True].npages, "no huge pages: THP unavailable?"
    others = interleaved(benchmark, {f"thp={thp}": (None, thp_arenas[thp].tracker.reset, None)
                                     for thp in (True, False)}, rounds=SCAN_ROUNDS)
    _thp_record(benchmark, "arm, clean", others, huge_pages={str(k): int(v)
                                                             for k, v in huge.items()})


@pytest.mark.parametrize("pattern", ["clean", "1%-dense"])
def test_thp_scan(benchmark, pattern, thp_arenas):
    """written() on huge pages (clean), and with 10 of 512 huge pages split by writes."""
    benchmark.group = f"uffd THP: scan (written) {SZ}, {pattern}"
    idx = H.PATTERNS[pattern][0]
    for a in thp_arenas.values():
        a.repopulate()
        a.write(idx)
        _check_regions(a.tracker.written(), H.expected_regions(idx, a.base),
                       f"thp={a.thp} scan {pattern}")
    others = interleaved(benchmark, {f"thp={thp}": (None, thp_arenas[thp].tracker.written, None)
                                     for thp in (True, False)}, rounds=SCAN_ROUNDS)
    _thp_record(benchmark, f"scan {pattern}", others)


def test_thp_collect(benchmark, thp_arenas):
    benchmark.group = f"uffd THP: collect(reset=True) {SZ}, 1%-dense"
    idx = H.PATTERNS["1%-dense"][0]
    for a in thp_arenas.values():
        a.repopulate()
        a.write(idx)
        _check_regions(a.tracker.collect().regions, H.expected_regions(idx, a.base),
                       f"thp={a.thp} collect")
    others = interleaved(benchmark, {
        f"thp={thp}": ((lambda a=thp_arenas[thp]: a.write(idx)), thp_arenas[thp].tracker.collect,
                       None) for thp in (True, False)}, rounds=COLLECT_ROUNDS)
    _thp_record(benchmark, "collect 1%-dense", others)


@pytest.mark.parametrize("stride", [1, 100], ids=["every-page", "1%-sparse"])
def test_thp_first_write(benchmark, stride, thp_arenas):
    """Resident memory, armed: every page (one split per huge page, then 511 plain
    uffd-wp faults), or every 100th page (each write splits or hits a split page)."""
    what = "every page" if stride == 1 else "every 100th page"
    benchmark.group = f"uffd THP: first write, resident, {what}"
    others = interleaved(benchmark, {
        f"thp={thp}": (thp_arenas[thp].repopulate, _numpy_writer(thp_arenas[thp].array, stride),
                       None) for thp in (True, False)}, rounds=HEAVY_ROUNDS)
    for a in thp_arenas.values():
        assert a.tracker.written().pages() == len(range(0, a.npages, stride))
    _thp_record(benchmark, f"first write, resident, {what}", others,
                pages_written=len(range(0, H.NPAGES, stride)))


@pytest.mark.parametrize("tracked", ["tracked", "untracked"])
def test_thp_populate(benchmark, tracked, thp_arenas, thp_husks):
    """First touch of unpopulated memory. Tracked: arming fills the page tables with
    uffd-wp markers, so no huge page can fault in; untracked: huge pages do."""
    benchmark.group = f"uffd THP: first write, unpopulated, every page, {tracked}"
    sides = {}
    for thp in (True, False):
        if tracked == "tracked":
            a = thp_arenas[thp]
            setup = a.refault
        else:
            a = thp_husks[thp]
            def setup(a=a):
                a.buf.madvise(mmap.MADV_DONTNEED)
        sides[f"thp={thp}"] = (setup, _numpy_writer(a.array), None)
    others = interleaved(benchmark, sides, rounds=FAULT_ROUNDS)
    _thp_record(benchmark, f"first write, unpopulated, {tracked}", others,
                pages_written=H.NPAGES)
