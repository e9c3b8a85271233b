"""pytest-benchmark suite: the simulator on 1 GiB, next to the real kernel.

Run:  python -m pytest benchmarks/bench_simulator.py --benchmark-only -q
      (a table of operations per second and scan speed, simulated vs real, is
      printed at the end of the module)

Both sides track 1 GiB (262,144 pages, populated, 4 KiB pages) the same way:
``pagescan.track(...)`` with the uffd backend on real memory, and with the
simulator backend (the same mechanism on the simulated kernel) on a
``SimProcess``. Each figure is timed on the same state on both sides, rebuilt
outside the timing before every round:

* ``write``: 10,000 stores to distinct random pages of armed memory, one Python
  statement each (``view[off] = 1`` on real memory, ``sim.write(addr)`` on the
  simulated one): the first write after arming, i.e. a uffd-wp fault on the real
  kernel;
* ``dontneed+write``: 1,000 times MADV_DONTNEED one page, then write it again;
* ``written``: ``t.written()`` with nothing, 1 % (every 100th page) or 50 % (runs
  of 256 pages) written;
* ``collect``: ``t.collect()`` (get-and-reset, PM_SCAN_WP_MATCHING) on the same
  patterns, rewritten before every round;
* ``categories``: every page's categories, unfiltered (one PAGEMAP_SCAN with all
  categories returned vs ``sim.categories()``);
* ``setup`` (simulator only): a new SimProcess, mmap 1 GiB, populate, track.

Size: ``PAGESCAN_BENCH_SIM_BYTES`` (default 1 GiB). The real side needs the uffd
backend (Linux 6.7+); without it only the simulated side runs.
"""

from __future__ import annotations

import os
import random
from typing import Any
from collections.abc import Callable

import numpy as np
import pytest

import pagescan
from pagescan import Masks, simulator as S
from pagescan._impl import impl

SIZE = int(os.environ.get("PAGESCAN_BENCH_SIM_BYTES", str(1 << 30)))
PAGE = 4096
NPAGES = SIZE // PAGE
N_WRITES = 10_000
N_DONTNEED = 1_000
PATTERNS = {
    "none": lambda: np.zeros(0, dtype=np.int64),
    "1%": lambda: np.arange(0, NPAGES, 100, dtype=np.int64),
    "50%": lambda: np.flatnonzero((np.arange(NPAGES) // 256) % 2 == 0),
}
_UFFD = pagescan.probe("uffd")
SIDES = ["sim", pytest.param("real", marks=pytest.mark.skipif(
    not _UFFD.ok, reason=f"the uffd backend does not work here: {_UFFD.reason}"))]


class SimSide:
    def __init__(self) -> None:
        self.sim = S.SimProcess(config=S.KernelConfig.host(), size=SIZE + (64 << 20))
        self.base = self.sim.mmap(SIZE)
        self.sim.write(self.base, SIZE)
        self.tracker = self.sim.track(self.base, SIZE)

    def write_pages(self, pages: np.ndarray) -> None:
        w, base = self.sim.write, self.base
        for p in pages.tolist():
            w(base + p * PAGE)

    def write_runs(self, pages: np.ndarray) -> None:
        """Write a pattern fast (setup, untimed)."""
        if not len(pages):
            return
        cuts = np.flatnonzero(np.diff(pages) != 1) + 1
        for run in np.split(pages, cuts):
            self.sim.write(self.base + int(run[0]) * PAGE, len(run) * PAGE)

    def dontneed_write(self, pages: np.ndarray) -> None:
        sim, base = self.sim, self.base
        for p in pages.tolist():
            a = base + p * PAGE
            sim.madvise(a, PAGE, S.MADV_DONTNEED)
            sim.write(a)

    def categories(self) -> Any:
        return self.sim.categories(self.base, NPAGES)

    def close(self) -> None:
        self.tracker.close()
        self.sim.exit()


class RealSide:
    def __init__(self) -> None:
        self.mem = pagescan.allocate(SIZE)
        self.arr = np.frombuffer(self.mem, dtype=np.uint8)
        self.arr[::PAGE] = 1                                   # populate
        self.view = memoryview(self.mem)
        self.base = self.mem.address
        self.tracker = pagescan.track(self.mem, backend="uffd")
        self.pm = os.open("/proc/self/pagemap", os.O_RDONLY)

    def write_pages(self, pages: np.ndarray) -> None:
        v = self.view
        for p in pages.tolist():
            v[p * PAGE] = 1

    def write_runs(self, pages: np.ndarray) -> None:
        self.arr[pages * PAGE] = 2

    def dontneed_write(self, pages: np.ndarray) -> None:
        v, madvise, base = self.view, impl.madvise, self.base
        for p in pages.tolist():
            madvise(base + p * PAGE, PAGE, S.MADV_DONTNEED)
            v[p * PAGE] = 1

    def categories(self) -> Any:
        return impl.pm_scan(self.pm, self.base, self.base + SIZE, 0, Masks())

    def close(self) -> None:
        self.tracker.close()
        os.close(self.pm)
        self.view.release()
        del self.arr
        self.mem.close()


_sides: dict[str, Any] = {}


@pytest.fixture(scope="module")
def sides():
    yield _sides
    for s in _sides.values():
        s.close()
    _sides.clear()


def side(sides: dict[str, Any], name: str) -> Any:
    if name not in sides:
        sides[name] = SimSide() if name == "sim" else RealSide()
    return sides[name]


def pedantic(benchmark: Any, fn: Callable[[], Any], setup: Callable[[], None],
             rounds: int) -> Any:
    def _setup() -> tuple[tuple, dict]:
        setup()
        return (), {}
    return benchmark.pedantic(fn, setup=_setup, rounds=rounds, iterations=1)


@pytest.mark.benchmark(group="sim-vs-real: write")
@pytest.mark.parametrize("who", SIDES)
def test_write(benchmark: Any, sides: dict, who: str) -> None:
    s = side(sides, who)
    pages = np.array(random.Random(1).sample(range(NPAGES), N_WRITES), dtype=np.int64)
    benchmark.extra_info.update(side=who, ops=N_WRITES)
    pedantic(benchmark, lambda: s.write_pages(pages), s.tracker.reset, rounds=5)
    assert s.tracker.written().pages() == N_WRITES


@pytest.mark.benchmark(group="sim-vs-real: dontneed+write")
@pytest.mark.parametrize("who", SIDES)
def test_dontneed_write(benchmark: Any, sides: dict, who: str) -> None:
    s = side(sides, who)
    pages = np.array(random.Random(2).sample(range(NPAGES), N_DONTNEED), dtype=np.int64)
    benchmark.extra_info.update(side=who, ops=2 * N_DONTNEED)
    pedantic(benchmark, lambda: s.dontneed_write(pages), lambda: None, rounds=5)


@pytest.mark.benchmark(group="sim-vs-real: written")
@pytest.mark.parametrize("pattern", list(PATTERNS))
@pytest.mark.parametrize("who", SIDES)
def test_written(benchmark: Any, sides: dict, who: str, pattern: str) -> None:
    s = side(sides, who)
    pages = PATTERNS[pattern]()
    s.tracker.reset()
    s.write_runs(pages)
    benchmark.extra_info.update(side=who, pages=NPAGES)
    res = benchmark.pedantic(s.tracker.written, rounds=10, iterations=1)
    assert res.pages() == len(pages)


@pytest.mark.benchmark(group="sim-vs-real: collect")
@pytest.mark.parametrize("pattern", list(PATTERNS))
@pytest.mark.parametrize("who", SIDES)
def test_collect(benchmark: Any, sides: dict, who: str, pattern: str) -> None:
    s = side(sides, who)
    pages = PATTERNS[pattern]()
    s.tracker.reset()
    benchmark.extra_info.update(side=who, pages=NPAGES)
    res = pedantic(benchmark, s.tracker.collect, lambda: s.write_runs(pages), rounds=10)
    assert res.regions.pages() == len(pages)


@pytest.mark.benchmark(group="sim-vs-real: categories")
@pytest.mark.parametrize("who", SIDES)
def test_categories(benchmark: Any, sides: dict, who: str) -> None:
    s = side(sides, who)
    benchmark.extra_info.update(side=who, pages=NPAGES)
    benchmark.pedantic(s.categories, rounds=10, iterations=1)


@pytest.mark.benchmark(group="sim: setup")
def test_setup(benchmark: Any) -> None:
    def setup_1gib() -> None:
        s = SimSide()
        s.close()
    benchmark.extra_info.update(side="sim", pages=NPAGES)
    benchmark.pedantic(setup_1gib, rounds=3, iterations=1)


# ------------------------------------------------------------------ the report


@pytest.fixture(scope="module", autouse=True)
def report(request: Any):
    yield
    bs = getattr(request.config, "_benchmarksession", None)
    tr = request.config.pluginmanager.getplugin("terminalreporter")
    if bs is None or tr is None or not getattr(bs, "benchmarks", None):
        return
    rows: dict[tuple[str, str], dict[str, float]] = {}
    for b in bs.benchmarks:
        if b.fullname.split("::")[0].split("/")[-1] != "bench_simulator.py":
            continue
        d = b.as_dict(include_data=False)
        info = d.get("extra_info", {})
        name = d["name"].split("[")[0].removeprefix("test_")
        param = d.get("param") or ""
        label = name + ("" if not param or param in ("sim", "real")
                        else " " + param.replace("sim-", "").replace("real-", ""))
        rows.setdefault((label, info.get("side", "sim")), {}).update(
            median=d["stats"]["median"], ops=info.get("ops", 0), pages=info.get("pages", 0))
    tr.write_sep("-", f"simulator vs real kernel, {SIZE >> 20} MiB (medians)")
    labels = sorted({k[0] for k in rows})
    for label in labels:
        sim, real = rows.get((label, "sim")), rows.get((label, "real"))
        parts = []
        for who, r in (("sim", sim), ("real", real)):
            if r is None:
                continue
            if r["ops"]:
                parts.append(f"{who} {r['ops'] / r['median']:>12,.0f} ops/s")
            else:
                parts.append(f"{who} {r['median'] * 1e3:8.2f} ms "
                             f"({r['pages'] / r['median'] / 1e6:7.1f} Mpages/s)")
        ratio = f"   sim/real time {sim['median'] / real['median']:6.2f}x" if sim and real else ""
        tr.write_line(f"  {label:<22} " + "   ".join(parts) + ratio)
