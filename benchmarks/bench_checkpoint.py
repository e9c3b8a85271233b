"""pytest-benchmark: incremental checkpoints (pagescan.checkpoint) of a 1 GiB numpy
array against ``numpy.save`` of the whole array.

Run:  python -m pytest benchmarks/bench_checkpoint.py --benchmark-only -q -s
      (the table of ratios is printed at the end of the module)

Size: ``PAGESCAN_BENCH_CKPT_BYTES`` (default 1 GiB; e.g. 64M for a quick run).
Files go to a temporary directory on disk (pytest's ``tmp_path_factory``; set
``PAGESCAN_BENCH_CKPT_DIR`` to use another file system).

* ``numpy.save``: the whole array, ``np.save`` to a file (no fsync), and the same
  followed by ``os.fsync`` (a checkpoint save is durable: it ends with fsync).
* ``save[f-mode]``: between two rounds a fraction f (1%, 10%, 50%) of the array's
  pages, chosen at random (fixed seed), get one byte changed (not timed); the timed
  call is ``ck.save()``: in fork mode (the default: collect + fork + the child
  writing the pages + fsync + the parent waiting), and for 1% also in inline mode
  (no fork: what a quiescent program pays). ``extra_info["bytes_per_save"]`` is
  what the save added to the file.
* ``restore[f]``: ``restore(path, into=other_array)`` of the last save of that
  file (the base and every delta), against ``numpy.load`` of the whole array.

Wall-clock time (``time.perf_counter``): a save's work is done in a child process
and in the kernel, which the parent's CPU time would not see.
"""

from __future__ import annotations

import os
import random
import shutil
import time
import zlib
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import pagescan.checkpoint as ck
from pagescan import PAGE_SIZE



def _size(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    text = text.strip().lower()
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


SIZE = _size(os.environ.get("PAGESCAN_BENCH_CKPT_BYTES") or "1G") // PAGE_SIZE * PAGE_SIZE
PAGES = SIZE // PAGE_SIZE
FRACTIONS = (0.01, 0.10, 0.50)
SAVE_ROUNDS = 5
ROUNDS = 3

RESULTS: dict[str, dict[str, float]] = {}
#: crc32 of the array at each file's last save
LAST: dict[float, int] = {}

pytestmark = pytest.mark.benchmark(timer=time.perf_counter, disable_gc=True, warmup=False)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    where = os.environ.get("PAGESCAN_BENCH_CKPT_DIR")
    d = Path(where) / f"pagescan-bench-{os.getpid()}" if where else \
        tmp_path_factory.mktemp("checkpoint")
    d.mkdir(parents=True, exist_ok=True)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def array() -> np.ndarray:
    a = np.empty(SIZE, dtype=np.uint8)
    a.reshape(-1, 256)[:] = np.arange(256, dtype=np.uint8)   # no page is zero
    return a


@pytest.fixture(scope="module", autouse=True)
def report(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    tr = request.config.pluginmanager.get_plugin("terminalreporter")
    if tr is None or "numpy.save" not in RESULTS:
        return
    ref = RESULTS["numpy.save"]
    refs = RESULTS.get("numpy.save+fsync", ref)
    tr.write_line("")
    tr.write_line(f"checkpoint of a {SIZE / (1 << 20):.0f} MiB numpy array "
                  f"({PAGES} pages); medians")
    tr.write_line(f"  numpy.save: {ref['time'] * 1e3:9.1f} ms ({refs['time'] * 1e3:.1f} ms "
                  f"with fsync), {ref['bytes'] / (1 << 20):.1f} MiB;  numpy.load: "
                  f"{RESULTS.get('numpy.load', {}).get('time', 0) * 1e3:.1f} ms")
    tr.write_line(f"  {'written':>8} {'save ms':>9} {'MiB/save':>9} {'x less time':>12} "
                  f"{'(vs +fsync)':>11} {'x fewer bytes':>14} {'restore ms':>11}")
    rows = [(f, f"save[{f}]", f"{f:.0%}") for f in FRACTIONS]
    rows.append((FRACTIONS[0], f"save-inline[{FRACTIONS[0]}]", f"{FRACTIONS[0]:.0%} inl"))
    for f, key, label in rows:
        r = RESULTS.get(key)
        if not r:
            continue
        rest = RESULTS.get(f"restore[{f}]", {}).get("time", float("nan"))
        tr.write_line(f"  {label:>8} {r['time'] * 1e3:9.1f} {r['bytes'] / (1 << 20):9.2f} "
                      f"{ref['time'] / r['time']:12.1f} {refs['time'] / r['time']:11.1f} "
                      f"{ref['bytes'] / r['bytes']:14.1f} {rest * 1e3:11.1f}")


def _median(benchmark: Any) -> float:
    return float(benchmark.stats.stats.median)


def test_numpy_save(benchmark: Any, array: np.ndarray, workdir: Path) -> None:
    path = workdir / "whole.npy"
    benchmark.pedantic(np.save, args=(path, array), rounds=ROUNDS, iterations=1)
    benchmark.extra_info["bytes_per_save"] = path.stat().st_size
    RESULTS["numpy.save"] = {"time": _median(benchmark), "bytes": path.stat().st_size}


def test_numpy_save_fsync(benchmark: Any, array: np.ndarray, workdir: Path) -> None:
    path = workdir / "whole-fsync.npy"

    def save() -> None:
        with path.open("wb") as f:
            np.save(f, array)
            f.flush()
            os.fsync(f.fileno())

    benchmark.pedantic(save, rounds=ROUNDS, iterations=1)
    benchmark.extra_info["bytes_per_save"] = path.stat().st_size
    RESULTS["numpy.save+fsync"] = {"time": _median(benchmark), "bytes": path.stat().st_size}


def test_numpy_load(benchmark: Any, workdir: Path) -> None:
    path = workdir / "whole.npy"
    if not path.exists():
        pytest.skip("test_numpy_save did not run")
    benchmark.pedantic(np.load, args=(path,), rounds=ROUNDS, iterations=1)
    RESULTS["numpy.load"] = {"time": _median(benchmark)}


@pytest.mark.parametrize(("fraction", "mode"), [(f, "fork") for f in FRACTIONS]
                         + [(FRACTIONS[0], "inline")])
def test_save(benchmark: Any, array: np.ndarray, workdir: Path, fraction: float,
              mode: str) -> None:
    path = workdir / f"ck-{fraction}-{mode}.ckpt"
    rng = random.Random(int(fraction * 1000))
    n = max(1, int(PAGES * fraction))
    with ck.open(path, array, mode=mode) as c:
        assert c.mode == mode
        c.save()                                          # the base (not timed)
        sizes = []

        def write_pages() -> None:
            idx = np.array(rng.sample(range(PAGES), n), dtype=np.int64) * PAGE_SIZE + 100
            array[idx] += 1
            sizes.append(path.stat().st_size)

        benchmark.pedantic(c.save, setup=write_pages, rounds=SAVE_ROUNDS, iterations=1)
        sizes.append(path.stat().st_size)
    if mode == "fork":
        LAST[fraction] = zlib.crc32(array)
    per_save = [b - a for a, b in pairwise(sizes)]
    assert all(p >= n * PAGE_SIZE for p in per_save)
    benchmark.extra_info.update(bytes_per_save=int(np.median(per_save)), pages_written=n,
                                fraction=fraction, size=SIZE, mode=mode)
    key = f"save[{fraction}]" if mode == "fork" else f"save-{mode}[{fraction}]"
    RESULTS[key] = {"time": _median(benchmark), "bytes": float(np.median(per_save))}
    if mode != "fork":
        path.unlink()


@pytest.mark.parametrize("fraction", FRACTIONS)
def test_restore(benchmark: Any, array: np.ndarray, workdir: Path, fraction: float) -> None:
    path = workdir / f"ck-{fraction}-fork.ckpt"
    if not path.exists():
        pytest.skip("test_save did not run")
    out = np.empty_like(array)
    benchmark.pedantic(ck.restore, args=(path,), kwargs={"into": out}, rounds=ROUNDS,
                       iterations=1)
    assert zlib.crc32(out) == LAST[fraction]
    info = ck.info(path)
    benchmark.extra_info.update(file_bytes=info.file_size, saves=len(info.saves))
    RESULTS[f"restore[{fraction}]"] = {"time": _median(benchmark)}
    path.unlink()
