"""``pagescan compare``: every backend on the same built-in workloads, with ground truth.

A workload is an abstract sequence of operations on a buffer of pages (user
stores, kernel writes through ``read()``, ``madvise(MADV_DONTNEED)``, the
program's own ``mprotect`` calls, ``fork``, writer threads) separated by
``collect(reset=True)`` calls. The workload knows what it changed: that is the
ground truth, computed here from the operations themselves (and from what the
operations reported: a ``read()`` that failed wrote nothing), never from a
backend. The same sequence runs

* against real memory, through :func:`pagescan.track`, for every backend whose
  probe succeeds here; and
* against the simulator's simulated process for the backends that do not work on
  this machine (a row labelled ``NAME (simulated)``), where the simulator can
  play them.

For each collect, with ``R`` the pages reported and ``T`` the pages the workload
changed since the previous collect: true positives ``|R ∩ T|``, false positives
``|R - T|`` (pages reported but not changed) and lost writes ``|T - R|``
(pages changed but not reported). Writer threads racing collects are the
exception: every page is written once, and the union of every collect
(a final one after the writers stop included) must hold it.
Precision = TP / (TP + FP), recall = TP / (TP + lost), summed over workloads.

The speed columns (arm, scan, reset, first write per page) are measured on the
real backends in the same run (medians of ``--repeat`` rounds); they are not
meaningful for a simulated backend and are left empty there.

Every (backend, workload) pair runs in a child process of its own (``fork``), so
that a crash of one backend (a signal) is reported as that cell's outcome and
the rest of the comparison goes on.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import functools
import json
import math
import mmap
import os
import platform
import random
import select
import signal
import statistics
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from typing import IO, Any

PAGE = mmap.PAGESIZE
HUGE = 2 << 20
HUGE_PAGES = HUGE // PAGE

DESCRIPTION = """\
Run the built-in workloads on every backend that works here, and the simulator
playing the ones that do not, with ground truth from the workloads themselves.
For each backend: precision, recall, lost writes, false-positive pages, and (real
backends) arm / scan / reset times and the cost of a first write per page.

workloads:
""" + "\n"  # completed below, once the workloads are defined


# =============================================================== workloads


@dataclasses.dataclass(frozen=True)
class Op:
    """One step of a workload. ``pages`` are page indexes into the buffer."""

    kind: str                      # write kwrite discard protect fork collect concurrent
    pages: tuple[int, ...] = ()
    arg: int = 0                   # protect: the PROT_* bits; concurrent: threads


@dataclasses.dataclass(frozen=True)
class Workload:
    name: str
    title: str
    truth: str                     # what counts as changed, in words
    npages: int
    ops: tuple[Op, ...]
    populate: tuple[int, ...]      # pages written before tracking starts
    thp: bool = False              # transparent huge pages kept (MADV_HUGEPAGE, thp=True)


def _write(pages: Iterable[int]) -> Op:
    return Op("write", tuple(sorted(set(pages))))


def _collect() -> Op:
    return Op("collect")


def _sample(rng: random.Random, population: Sequence[int], k: int) -> list[int]:
    return rng.sample(list(population), min(k, len(population)))


def _runs(rng: random.Random, n: int, count: int, length: int) -> list[int]:
    """Pages of ``count`` disjoint runs of ``length`` pages at random places."""
    slots = n // length
    out: list[int] = []
    for s in rng.sample(range(slots), min(count, slots)):
        out.extend(range(s * length, (s + 1) * length))
    return sorted(out)


def build_workloads(npages: int, seed: int = 1, rounds: int = 3) -> list[Workload]:
    """The built-in workloads on a buffer of ``npages`` pages (a multiple of 512)."""
    n = npages
    k = max(8, n // 100)                       # pages per sparse round
    every = tuple(range(n))
    out = []

    def rng(name: str) -> random.Random:
        return random.Random(f"{seed}:{name}")

    r = rng("sparse")
    ops: list[Op] = []
    for _ in range(rounds + 1):
        ops += [_write(_sample(r, every, k)), _collect()]
    out.append(Workload("sparse", "sparse random writes",
                        "the pages stored to", n, tuple(ops), every))

    ops = []
    for i in range(rounds):
        lo = (i * n // 4) % (n // 2)
        ops += [_write(range(lo, lo + n // 2)), _collect()]
    out.append(Workload("sequential", "sequential streaming",
                        "the pages stored to", n, tuple(ops), every))

    r = rng("kernel")
    ops = []
    for _ in range(rounds):
        kw = _sample(r, every, max(8, k // 2))
        user = _sample(r, sorted(set(every) - set(kw)), max(8, k // 2))
        ops += [Op("kwrite", tuple(sorted(kw))), _write(user), _collect()]
    out.append(Workload("kernel", "kernel writes (read into the buffer)",
                        "the pages stored to, and those read() filled (a read() that "
                        "failed filled nothing)", n, tuple(ops), every))

    r = rng("threads")
    ops = [_write(_sample(r, every, k)), _collect(),
           Op("concurrent", tuple(_sample(r, every, n // 4)), 4)]
    out.append(Workload("threads", "writer threads during collect(reset=True)",
                        "4 threads store to n/4 pages once each while the main thread "
                        "collects; the union of the collects (and a final one) must hold "
                        "every page", n, tuple(ops), every))

    r = rng("dontneed")
    ops = [_write(_sample(r, every, k)), _collect()]
    for _ in range(rounds - 1):
        gone = _runs(r, n, 4, max(1, n // 64))
        ops += [Op("discard", tuple(gone)), _write(_sample(r, gone, len(gone) // 2)),
                _collect()]
    ops += [_write(_sample(r, every, k)), _collect()]
    out.append(Workload("dontneed", "madvise(DONTNEED) then rewrite",
                        "the pages stored to, and the pages the discard zeroed (their "
                        "contents changed)", n, tuple(ops), every))

    r = rng("mprotect")
    ops = []
    for _ in range(rounds):
        locked = _runs(r, n, 8, 16)
        free = sorted(set(every) - set(locked))
        ops += [Op("protect", tuple(locked), mmap.PROT_READ),
                _write(_sample(r, free, k)),
                Op("protect", tuple(locked), mmap.PROT_READ | mmap.PROT_WRITE),
                _write(_sample(r, locked, k // 2) + _sample(r, free, k // 2)),
                _collect()]
    out.append(Workload("mprotect", "mprotect churn",
                        "the pages stored to (the program itself makes runs read-only "
                        "and writable again between writes)", n, tuple(ops), every))

    for thp in (True, False):
        r = rng("thp")                           # the same operations for both
        ops = []
        half = n // 2
        for _ in range(rounds):
            ops += [_write(_sample(r, range(half), k) + _sample(r, range(half, n), k // 4)),
                    _collect()]
        name = "thp-on" if thp else "thp-off"
        out.append(Workload(name, f"THP {'on' if thp else 'off'}",
                            "the pages stored to (the first half populated before "
                            "tracking, the second half never touched)", n, tuple(ops),
                            tuple(range(half)), thp=thp))

    r = rng("fork")
    ops = []
    for _ in range(rounds - 1):
        child = _sample(r, every, n // 10)
        ops += [_write(_sample(r, every, k)), Op("fork", tuple(sorted(child))),
                _write(_sample(r, child, k // 2) + _sample(r, every, k // 2)), _collect()]
    ops += [_write(_sample(r, every, k)), _collect()]
    out.append(Workload("fork", "fork (a child writes its copy)",
                        "the parent's stores only (the child's go to its own copy)", n,
                        tuple(ops), every))
    return out


_SMALL = build_workloads(1024, rounds=2)      # the names and descriptions, once
WORKLOAD_NAMES = [w.name for w in _SMALL]
DESCRIPTION += "".join(f"  {w.name:<11} {w.title}: truth = {w.truth}\n" for w in _SMALL)
del _SMALL


# ================================================================ executors


class WorkloadError(Exception):
    """An operation could not be carried out (recorded as the cell's outcome)."""


class Executor:
    """Carries out a workload's operations on some memory tracked by some backend."""

    def write(self, pages: Sequence[int]) -> None:
        raise NotImplementedError

    def kernel_write(self, pages: Sequence[int]) -> list[int]:
        """read() into each page; returns the pages whose read() failed."""
        raise NotImplementedError

    def discard(self, pages: Sequence[int]) -> None:
        raise NotImplementedError

    def protect(self, pages: Sequence[int], prot: int) -> None:
        raise NotImplementedError

    def fork(self, child_pages: Sequence[int]) -> None:
        raise NotImplementedError

    def collect(self) -> set[int]:
        raise NotImplementedError

    def concurrent(self, pages: Sequence[int], threads: int) -> list[set[int]]:
        """Threads store to ``pages`` (once each) while collect(reset=True) runs in a
        loop; returns every collect's pages, a final one after the writers stop last."""
        raise NotImplementedError

    def race_note(self, collects: int, threads: int) -> str:
        return f"{collects} collects raced {threads} writer threads"

    def close(self) -> None:
        pass


def _runs_of(pages: Sequence[int]) -> list[tuple[int, int]]:
    """Sorted page indexes as ``(first, end)`` runs."""
    out: list[tuple[int, int]] = []
    for p in sorted(pages):
        if out and out[-1][1] == p:
            out[-1] = (out[-1][0], p + 1)
        else:
            out.append((p, p + 1))
    return out


class RealExecutor(Executor):
    """Real memory of this process, tracked through pagescan.track(backend=...)."""

    def __init__(self, backend: str, w: Workload) -> None:
        import pagescan
        self.mem = pagescan.allocate(w.npages * PAGE, thp=w.thp)
        self.view = memoryview(self.mem)
        self.base = self.mem.address
        self.counter = 0
        for first, end in _runs_of(w.populate):
            self.view[first * PAGE:end * PAGE:PAGE] = b"\x01" * (end - first)
        self.tracker = pagescan.track(self.mem, backend=backend, thp=w.thp)
        self._pipe = os.pipe()

    def _value(self) -> bytes:
        self.counter = self.counter % 254 + 1
        return bytes((self.counter + 1,))

    def write(self, pages: Sequence[int]) -> None:
        v = self._value()
        view = self.view
        for first, end in _runs_of(pages):
            view[first * PAGE:end * PAGE:PAGE] = v * (end - first)

    def kernel_write(self, pages: Sequence[int]) -> list[int]:
        r, w = self._pipe
        block = self._value() * PAGE
        failed = []
        for p in pages:
            os.write(w, block)
            try:
                n = os.readv(r, [self.view[p * PAGE:(p + 1) * PAGE]])
            except OSError as err:
                if err.errno != errno.EFAULT:
                    raise
                n = 0                           # the kernel could not write the page
            if n < PAGE:
                os.read(r, PAGE - n)            # drain what did not arrive
                failed.append(p)
        return failed

    def discard(self, pages: Sequence[int]) -> None:
        for first, end in _runs_of(pages):
            self.mem.madvise(mmap.MADV_DONTNEED, first * PAGE, (end - first) * PAGE)

    def protect(self, pages: Sequence[int], prot: int) -> None:
        import ctypes
        mprotect = ctypes.CDLL(None, use_errno=True).mprotect
        mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        for first, end in _runs_of(pages):
            if mprotect(self.base + first * PAGE, (end - first) * PAGE, prot) != 0:
                e = ctypes.get_errno()
                raise WorkloadError(f"mprotect failed: {os.strerror(e)}")

    def fork(self, child_pages: Sequence[int]) -> None:
        pid = os.fork()
        if pid == 0:                             # the child: write its copy, leave
            code = 0
            try:
                self.write(child_pages)
            except BaseException:  # noqa: BLE001 - the exit status says it
                code = 1
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        if not os.WIFEXITED(status) or os.WEXITSTATUS(status):
            raise WorkloadError(f"the forked child failed (status {status:#x}): its writes "
                                "to its own copy did not complete")

    def _pages(self, regions: Any) -> set[int]:
        base = self.base
        return {(a - base) // PAGE for a in regions.addresses(PAGE)}

    def collect(self) -> set[int]:
        return self._pages(self.tracker.collect(reset=True).regions)

    def concurrent(self, pages: Sequence[int], threads: int) -> list[set[int]]:
        order = list(pages)
        random.Random(len(order)).shuffle(order)
        parts = [order[i::threads] for i in range(threads)]
        view, v = self.view, self._value()
        start = threading.Barrier(threads + 1)

        def writer(mine: list[int]) -> None:
            start.wait()
            for i, p in enumerate(mine):
                view[p * PAGE] = v[0]
                if i % 16 == 15:
                    time.sleep(0)                # let the collector in
        ts = [threading.Thread(target=writer, args=(part,)) for part in parts]
        for t in ts:
            t.start()
        reports = []
        start.wait()
        while any(t.is_alive() for t in ts):
            reports.append(self.collect())
        for t in ts:
            t.join()
        reports.append(self.collect())
        return reports

    def close(self) -> None:
        self.tracker.close()
        self.view.release()
        for fd in self._pipe:
            os.close(fd)
        self.mem.close()


#: the backends the simulator can play, and how it plays each one
SIM_MODELS = {
    "uffd": "the simulator backend: uffd-wp async + PAGEMAP_SCAN on the simulated kernel",
    "softdirty": "the softdirty backend's own code, reading and clearing the simulated "
                 "kernel's soft-dirty bits (CONFIG_MEM_SOFT_DIRTY=y)",
    "mprotect": "the mprotect mechanism (PROT_READ, a write fault unprotects and records "
                "the page, a collect re-protects) on the simulated process",
}


def sim_status() -> tuple[bool, str]:
    """Whether the simulator works here (its backend's probe), and why not."""
    from ..backends import probe
    p = probe("simulator")
    return bool(p.ok), p.reason


def sim_playable() -> set[str]:
    """The backend names the simulator can play here (none when it does not work)."""
    return set(SIM_MODELS) if sim_status()[0] else set()


class SimExecutor(Executor):
    """The simulator's simulated process, tracked the way backend ``name`` would be.

    The kernel simulated is this machine's (THP policy, page-table reclaim) with
    soft-dirty built in. Writer threads are played by a fixed interleaving: per
    collect, one store of each writer lands while the collect runs (between
    reading and clearing where the mechanism has such a window: soft-dirty's
    clear_refs), the other stores between collects.
    """

    def __init__(self, name: str, w: Workload) -> None:
        import pagescan
        from .. import simulator as simmod
        if name not in SIM_MODELS:
            raise WorkloadError(f"the simulator has no model of backend {name!r}")
        self.simmod = simmod
        self.name = name
        self.label = f"{name} (simulated)"
        length = w.npages * PAGE
        window = -(-(2 * length + 4 * HUGE) // HUGE) * HUGE
        self.sim = simmod.SimProcess(config=simmod.KernelConfig.host(soft_dirty=True),
                                     size=window)
        self.base = self.sim.mmap(length)
        self.length = length
        if w.thp:
            self.sim.madvise(self.base, length, simmod.MADV_HUGEPAGE)
        for first, end in _runs_of(w.populate):
            self.sim.write(self.base + first * PAGE, (end - first) * PAGE)
        self._inside: list[int] = []          # stores that land inside the next collect
        self._restore: list[tuple[Any, str, Any]] = []
        self.mp: _SimMprotect | None = None
        self.tracker: Any = None
        if name == "uffd":
            self.tracker = pagescan.track((self.base, length), backend="simulator",
                                          pid=self.sim.pid, thp=w.thp)
        elif name == "softdirty":
            self.tracker = self._softdirty(w.thp)
        else:
            self.mp = _SimMprotect(self)

    def _softdirty(self, thp: bool) -> Any:
        """A real softdirty Tracker whose /proc files are the simulated process's."""
        import pagescan
        from ..backends import softdirty as sd
        from ..backends.base import Probe
        target_cls = _sim_softdirty_target()

        def factory(pid: int, path: str) -> Any:
            return target_cls(pid, sd.PATH_SCAN, self)
        for attr, value in (("_probe_result", Probe(True, "", {"path": sd.PATH_SCAN,
                                                                 "simulated": True})),
                            ("target_factory", factory)):
            self._restore.append((sd, attr, getattr(sd, attr)))
            setattr(sd, attr, value)
        return pagescan.track((self.base, self.length), backend="softdirty",
                              pid=self.sim.pid, thp=thp)

    def race(self) -> None:
        """The stores that land inside a collect, at the point the mechanism allows."""
        inside, self._inside = self._inside, []
        if inside:
            self.write(inside)

    def _store(self, pages: Sequence[int]) -> None:
        for first, end in _runs_of(pages):
            self.sim.write(self.base + first * PAGE, (end - first) * PAGE)

    def write(self, pages: Sequence[int]) -> None:
        if self.mp is not None:
            self.mp.write(pages)
        else:
            self._store(pages)

    def kernel_write(self, pages: Sequence[int]) -> list[int]:
        failed = []
        for p in pages:
            addr = self.base + p * PAGE
            if self.sim.access_fault(addr, PAGE, write=True) is not None:
                failed.append(p)            # copy_to_user() fails: EFAULT, no signal
            else:
                self.sim.write(addr, PAGE)
        return failed

    def discard(self, pages: Sequence[int]) -> None:
        for first, end in _runs_of(pages):
            self.sim.madvise(self.base + first * PAGE, (end - first) * PAGE,
                             self.simmod.MADV_DONTNEED)

    def protect(self, pages: Sequence[int], prot: int) -> None:
        for first, end in _runs_of(pages):
            self.sim.mprotect(self.base + first * PAGE, (end - first) * PAGE, prot)

    def fork(self, child_pages: Sequence[int]) -> None:
        child = self.sim.fork()
        try:
            if self.mp is not None:             # the backend's atfork hook in the child
                child.mprotect(self.base, self.length, mmap.PROT_READ | mmap.PROT_WRITE)
            for first, end in _runs_of(child_pages):
                child.write(self.base + first * PAGE, (end - first) * PAGE)
        finally:
            child.exit()

    def collect(self) -> set[int]:
        if self.mp is not None:
            self.race()                         # atomic: no window inside a collect
            return self.mp.collect()
        if self.name == "uffd":
            self.race()                         # one PAGEMAP_SCAN: no window
        regions = self.tracker.collect(reset=True).regions
        self.race()                             # if the mechanism had no use for them
        base = self.base
        return {(a - base) // PAGE for a in regions.addresses(PAGE)}

    def concurrent(self, pages: Sequence[int], threads: int) -> list[set[int]]:
        order = list(pages)
        random.Random(len(order)).shuffle(order)
        step = max(2 * threads, len(order) // 16)
        reports = []
        for i in range(0, len(order), step):
            chunk = order[i:i + step]
            self.write(chunk[:-threads])
            self._inside = chunk[-threads:]
            reports.append(self.collect())
        reports.append(self.collect())
        return reports

    def race_note(self, collects: int, threads: int) -> str:
        where = ("between its pagemap read and its clear_refs" if self.name == "softdirty"
                 else "just before it (the mechanism has no window inside a collect)")
        return (f"simulated threads: {collects} collects, one store of each of the "
                f"{threads} writers landing inside each collect ({where}), the others "
                "between collects")

    def close(self) -> None:
        try:
            if self.tracker is not None:
                self.tracker.close()
        finally:
            for obj, attr, value in reversed(self._restore):
                setattr(obj, attr, value)
            self.sim.exit()


class _SimMprotect:
    """The mprotect backend's mechanism, played on the simulated process: arming makes
    every page PROT_READ; a write fault on an armed page records it and makes it
    writable; a collect re-protects the pages it reports."""

    def __init__(self, ex: SimExecutor) -> None:
        self.ex, self.sim = ex, ex.sim
        self.armed = set(range(ex.length // PAGE))
        self.dirty: set[int] = set()
        self.sim.mprotect(ex.base, ex.length, mmap.PROT_READ)

    def write(self, pages: Sequence[int]) -> None:
        sim, base = self.sim, self.ex.base
        for p in sorted(pages):
            addr = base + p * PAGE
            if p in self.armed and sim.access_fault(addr, PAGE, write=True) is not None:
                self.armed.discard(p)           # the SIGSEGV handler
                self.dirty.add(p)
                sim.mprotect(addr, PAGE, mmap.PROT_READ | mmap.PROT_WRITE)
            sim.write(addr, PAGE)

    def collect(self) -> set[int]:
        got, self.dirty = self.dirty, set()
        if got:     # the backend re-protects the whole span of what it reports
            lo, hi = min(got), max(got) + 1
            self.sim.mprotect(self.ex.base + lo * PAGE, (hi - lo) * PAGE, mmap.PROT_READ)
        self.armed |= got
        return got


@functools.cache
def _sim_softdirty_target() -> type:
    """The softdirty backend's per-process Target, reading the simulated process's
    maps and pagemap and writing its clear_refs instead of /proc files."""
    from ..backends import softdirty as sd
    from ..errors import NoSuchProcess

    class SimTarget(sd.Target):
        def __init__(self, pid: int, path: str, ex: SimExecutor) -> None:
            self.ex, self.sim = ex, ex.sim
            super().__init__(pid, path)

        def _open(self) -> None:
            pass

        def _alive(self) -> None:
            if self.sim.exited:
                raise NoSuchProcess(f"the simulated process {self.pid} has exited")

        def vmas(self) -> list[Any]:
            self._alive()
            return [sd.Vma(v.start, v.end, v.perms, "") for v in self.sim.maps()]

        def read_pagemap(self, start: int, out: memoryview) -> None:
            self._alive()
            out[:] = self.sim.pagemap(start, len(out) // 8).tobytes()

        def pm_scan(self, start: int, end: int, masks: Any, max_pages: int,
                    max_regions: int | None) -> Any:
            self._alive()
            return self.sim.pm_scan(start, end, 0, masks, max_pages, max_regions)

        def clear_refs(self) -> None:
            self._alive()
            self.ex.race()          # stores between the last pagemap read and the clear
            self.sim.clear_refs(4)

        def close(self) -> None:
            self.closed = True

    return SimTarget


# ================================================================== results


@dataclasses.dataclass
class Tally:
    truth: int = 0
    reported: int = 0
    tp: int = 0
    fp: int = 0
    lost: int = 0
    failed_writes: int = 0
    reported_twice: int = 0

    def add_epoch(self, truth: set[int], reported: set[int]) -> None:
        self.truth += len(truth)
        self.reported += len(reported)
        self.tp += len(truth & reported)
        self.fp += len(reported - truth)
        self.lost += len(truth - reported)

    def add(self, other: Tally) -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    @property
    def precision(self) -> float | None:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else None

    @property
    def recall(self) -> float | None:
        return self.tp / (self.tp + self.lost) if self.tp + self.lost else None

    def as_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["precision"] = self.precision
        d["recall"] = self.recall
        return d


def run_workload(w: Workload, ex: Executor) -> dict[str, Any]:
    """Carry out ``w`` on ``ex``; the ground truth is kept here, from the operations."""
    tally = Tally()
    notes: list[str] = []
    truth: set[int] = set()
    holds_data = set(w.populate)          # pages whose contents are not all zero
    failed_kw = total_kw = 0
    t0 = time.perf_counter()
    for op in w.ops:
        pages = op.pages
        if op.kind == "write":
            ex.write(pages)
            truth.update(pages)
            holds_data.update(pages)
        elif op.kind == "kwrite":
            failed = set(ex.kernel_write(pages))
            ok = set(pages) - failed
            total_kw += len(pages)
            failed_kw += len(failed)
            truth |= ok
            holds_data |= ok
        elif op.kind == "discard":
            ex.discard(pages)
            truth |= holds_data & set(pages)
            holds_data -= set(pages)
        elif op.kind == "protect":
            ex.protect(pages, op.arg)
        elif op.kind == "fork":
            ex.fork(pages)
        elif op.kind == "collect":
            tally.add_epoch(truth, ex.collect())
            truth = set()
        elif op.kind == "concurrent":
            if truth:
                raise AssertionError("a concurrent step must follow a collect")
            reports = ex.concurrent(pages, op.arg)
            union: set[int] = set().union(*reports)
            tally.add_epoch(set(pages), union)
            tally.reported_twice += sum(len(r) for r in reports) - len(union)
            notes.append(ex.race_note(len(reports), op.arg))
        else:
            raise AssertionError(f"unknown operation {op.kind!r}")
    tally.failed_writes = failed_kw
    if failed_kw:
        notes.append(f"{failed_kw} of {total_kw} read() calls into tracked pages failed "
                     "(EFAULT: the kernel could not write to a write-protected page); "
                     "the data never arrived")
    return {"tally": tally.as_json(), "seconds": time.perf_counter() - t0, "notes": notes,
            "error": None}


def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else math.nan


def measure_speed(backend: str, npages: int, repeat: int) -> dict[str, Any]:
    """Arm / scan / reset times and the cost of a first write per page, on real
    memory of ``npages`` pages (all present), medians of ``repeat`` rounds."""
    import pagescan
    mem = pagescan.allocate(npages * PAGE)
    view = memoryview(mem)
    ones = b"\x01" * npages
    view[::PAGE] = ones                                  # populate
    sparse = sorted(random.Random(7).sample(range(npages), max(1, npages // 100)))
    base: list[float] = []
    arm: list[float] = []
    scan: list[float] = []
    reset: list[float] = []
    first: list[float] = []
    try:
        for _ in range(repeat):
            t0 = time.perf_counter()
            view[::PAGE] = ones                           # no tracker: the plain cost
            base.append(time.perf_counter() - t0)
        for i in range(repeat + 1):                      # round 0 warms up, not counted
            if i == 1:
                arm, scan, reset, first = [], [], [], []
            t0 = time.perf_counter()
            t = pagescan.track(mem, backend=backend)     # register + arm
            arm.append(time.perf_counter() - t0)
            try:
                v = bytes((i % 250 + 2,))
                for p in sparse:
                    view[p * PAGE] = v[0]
                t0 = time.perf_counter()
                got = t.written()
                scan.append(time.perf_counter() - t0)
                if got.pages(PAGE) < len(sparse):
                    raise WorkloadError(f"the scan reported {got.pages(PAGE)} of "
                                        f"{len(sparse)} pages written")
                t0 = time.perf_counter()
                t.reset()
                reset.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                view[::PAGE] = v * npages                 # the first write to every page
                first.append(time.perf_counter() - t0)
            finally:
                t.close()
    finally:
        view.release()
        try:
            mem.close()
        except BufferError:
            pass            # a track() that failed may pin it still: the child exits anyway
    b = min(base)
    return {"pages": npages, "repeat": repeat,
            "arm_ms": _median(arm) * 1e3, "scan_ms": _median(scan) * 1e3,
            "reset_ms": _median(reset) * 1e3,
            "first_write_us_per_page": max(0.0, (_median(first) - b) / npages * 1e6),
            "plain_write_us_per_page": b / npages * 1e6, "scan_written_pages": len(sparse)}


# ============================================================ child processes


def run_isolated(fn: Callable[[], dict[str, Any]], timeout: float) -> dict[str, Any]:
    """``fn()`` in a forked child; its JSON-able result, or an error dict when it
    raised, crashed on a signal or ran past ``timeout`` seconds."""
    r, w = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:                                       # child
        os.close(r)
        try:
            try:
                payload: dict[str, Any] = {"ok": fn()}
            except BaseException as err:  # noqa: BLE001 - reported to the parent
                payload = {"error": f"{type(err).__name__}: {err}",
                           "traceback": traceback.format_exc()}
            data = json.dumps(payload).encode()
            view = memoryview(data)
            while view:
                view = view[os.write(w, view):]
        finally:
            os._exit(0)
    os.close(w)
    chunks = []
    deadline = time.monotonic() + timeout
    timed_out = False
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                break
            ready, _, _ = select.select([r], [], [], left)
            if not ready:
                continue
            b = os.read(r, 1 << 16)
            if not b:
                break
            chunks.append(b)
    except BaseException:                              # Ctrl-C: take the child along
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise
    finally:
        os.close(r)
    if timed_out:
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    if timed_out:
        return {"error": f"timed out after {timeout:g} s (the child was killed)"}
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        return {"error": f"crashed: killed by {signal.Signals(sig).name}"}
    try:
        return json.loads(b"".join(chunks) or b"{}")  # type: ignore[no-any-return]
    except ValueError:
        return {"error": "the child process returned no result"}


# ================================================================== the run


@dataclasses.dataclass
class Row:
    """One line of the table: a backend, real or played by the simulator."""

    name: str
    kind: str                       # "real" or "simulated"
    probe_ok: bool
    probe_reason: str
    capabilities: dict[str, Any] | None

    @property
    def label(self) -> str:
        return self.name if self.kind == "real" else f"{self.name} (simulated)"


def plan_rows(only: Sequence[str] | None = None, simulate: str = "missing"
              ) -> tuple[list[Row], list[dict[str, str]]]:
    """The rows to run, and the backends left out (with the reason)."""
    from ..backends import backend_names, probe
    from ..cli import _backend_class, _capabilities_json
    rows: list[Row] = []
    left_out: list[dict[str, str]] = []
    names = backend_names()
    if only:
        unknown = [n for n in only if n not in names]
        if unknown:
            raise ValueError(f"unknown backend {', '.join(unknown)}; known: "
                             + ", ".join(names))
        names = [n for n in names if n in only]
    playable = sim_playable()
    for name in names:
        cls = _backend_class(name)
        caps = None if isinstance(cls, BaseException) else _capabilities_json(cls)
        if name == "simulator" or (caps is not None and not caps["real"]):
            continue                         # the simulator itself plays the others
        p = probe(name)
        if p.ok and simulate != "only":
            rows.append(Row(name, "real", True, "", caps))
        can_play = name in playable and simulate != "none"
        if can_play and (not p.ok or simulate in ("all", "only")):
            rows.append(Row(name, "simulated", bool(p.ok), p.reason, caps))
        elif not p.ok:
            why = p.reason
            if name not in SIM_MODELS:
                why += "; the simulator has no model of it"
            elif name not in playable:
                why += f"; the simulator cannot play it: {sim_status()[1]}"
            elif simulate == "none":
                why += "; --simulate none"
            left_out.append({"name": name, "reason": why})
    return rows, left_out


class Progress:
    """A progress bar on stderr, drawn only when stderr is a terminal."""

    def __init__(self, total: int, stream: IO[str] | None = None,
                 enabled: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.total, self.done = max(total, 1), 0
        self.t0 = time.monotonic()

    def step(self, label: str) -> None:
        if not self.enabled:
            return
        width = 28
        filled = int(width * self.done / self.total)
        bar = "#" * filled + "." * (width - filled)
        secs = time.monotonic() - self.t0
        self.stream.write(f"\r\x1b[2K[{bar}] {self.done}/{self.total} {secs:5.1f}s  "
                          f"{label[:60]}")
        self.stream.flush()

    def advance(self) -> None:
        self.done += 1

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\r\x1b[2K")
            self.stream.flush()


def _workload_job(row: Row, w: Workload) -> Callable[[], dict[str, Any]]:
    def job() -> dict[str, Any]:
        import warnings
        warnings.simplefilter("ignore")
        if row.kind == "real":
            ex: Executor = RealExecutor(row.name, w)
        else:
            ex = SimExecutor(row.name, w)
        try:
            return run_workload(w, ex)
        finally:
            ex.close()
    return job


def _speed_job(row: Row, npages: int, repeat: int) -> Callable[[], dict[str, Any]]:
    def job() -> dict[str, Any]:
        import warnings
        warnings.simplefilter("ignore")
        return measure_speed(row.name, npages, repeat)
    return job


def run_compare(*, npages: int, rounds: int = 3, repeat: int = 3, seed: int = 1,
                backends: Sequence[str] | None = None,
                workloads: Sequence[str] | None = None, simulate: str = "missing",
                timeout: float = 120.0, progress: Progress | None = None
                ) -> dict[str, Any]:
    """Run the comparison; the JSON-able report (see ``pagescan compare --json``)."""
    import pagescan
    t0 = time.monotonic()
    rows, left_out = plan_rows(backends, simulate)
    wls = build_workloads(npages, seed, rounds)
    if workloads:
        unknown = [n for n in workloads if n not in WORKLOAD_NAMES]
        if unknown:
            raise ValueError(f"unknown workload {', '.join(unknown)}; known: "
                             + ", ".join(WORKLOAD_NAMES))
        wls = [w for w in wls if w.name in workloads]
    jobs = sum(len(wls) + (row.kind == "real") for row in rows)
    progress = progress or Progress(jobs, enabled=False)
    progress.total = max(jobs, 1)
    out_rows = []
    for row in rows:
        cells = {}
        total = Tally()
        errors = 0
        for w in wls:
            progress.step(f"{row.label}: {w.title}")
            res = run_isolated(_workload_job(row, w), timeout)
            progress.advance()
            if "ok" in res:
                cell = res["ok"]
                t = Tally(**{k: cell["tally"][k] for k in
                             ("truth", "reported", "tp", "fp", "lost", "failed_writes",
                              "reported_twice")})
                total.add(t)
            else:
                errors += 1
                cell = {"tally": None, "seconds": None, "notes": [],
                        "error": res.get("error", "failed")}
            cells[w.name] = cell
        speed = None
        speed_error = None
        if row.kind == "real":
            progress.step(f"{row.label}: arm / scan / reset / first-write times")
            res = run_isolated(_speed_job(row, npages, repeat), timeout)
            progress.advance()
            if "ok" in res:
                speed = res["ok"]
            else:
                speed_error = res.get("error", "failed")
        out_rows.append({"name": row.name, "label": row.label, "kind": row.kind,
                         "model": SIM_MODELS[row.name] if row.kind == "simulated" else None,
                         "probe": {"ok": row.probe_ok, "reason": row.probe_reason},
                         "capabilities": row.capabilities,
                         "totals": total.as_json(), "workloads_failed": errors,
                         "speed": speed, "speed_error": speed_error, "workloads": cells})
    progress.close()
    return {
        "pagescan": pagescan.__version__,
        "implementation": pagescan.IMPLEMENTATION,
        "kernel": platform.release(),
        "pages": npages,
        "bytes": npages * PAGE,
        "seed": seed,
        "rounds": rounds,
        "workloads": [{"name": w.name, "title": w.title, "truth": w.truth,
                       "thp": w.thp, "operations": len(w.ops)} for w in wls],
        "rows": out_rows,
        "left_out": left_out,
        "seconds": time.monotonic() - t0,
    }


# ================================================================== output


def _f(x: float | None, fmt: str) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def format_table(rep: dict[str, Any]) -> str:
    rows = rep["rows"]
    lines = [f"pagescan compare: {len(rep['workloads'])} workloads on "
             f"{rep['bytes'] >> 20} MiB ({rep['pages']} pages), kernel {rep['kernel']}, "
             f"{rep['implementation']} core, seed {rep['seed']}, {rep['seconds']:.1f} s", ""]
    lw = max([len(r["label"]) for r in rows] + [7])
    head = (f"{'backend':<{lw}}  {'precision':>9} {'recall':>7} {'lost':>6} {'false+':>7}"
            f"  {'arm ms':>7} {'scan ms':>8} {'reset ms':>8} {'1st write':>10}")
    lines += [head, f"{'':<{lw}}  {'':>9} {'':>7} {'writes':>6} {'pages':>7}  "
              f"{'':>7} {'':>8} {'':>8} {'µs/page':>10}", "-" * len(head)]
    for r in rows:
        t, s = r["totals"], r["speed"] or {}
        lines.append(
            f"{r['label']:<{lw}}  {_f(t['precision'], '.4f'):>9} {_f(t['recall'], '.4f'):>7}"
            f" {t['lost']:>6} {t['fp']:>7}  {_f(s.get('arm_ms'), '.3f'):>7}"
            f" {_f(s.get('scan_ms'), '.3f'):>8} {_f(s.get('reset_ms'), '.3f'):>8}"
            f" {_f(s.get('first_write_us_per_page'), '.3f'):>10}")
    if not rows:
        lines.append("(no backend to compare)")
    lines += ["", "lost writes / false-positive pages, per workload (pages the workload "
              "changes in brackets; ! = some of its writes failed):"]
    ww = max(len(w["title"]) for w in rep["workloads"]) + 8
    cw = max([len(r["label"]) for r in rows] + [12])
    lines.append(f"{'workload':<{ww}}" + "".join(f"  {r['label']:>{cw}}" for r in rows))
    notes = []
    for w in rep["workloads"]:
        cells = []
        truth = None
        for r in rows:
            c = r["workloads"][w["name"]]
            if c["error"]:
                cells.append("error")
                notes.append(f"{r['label']} · {w['name']}: {c['error']}")
                continue
            t = c["tally"]
            truth = t["truth"] + t["failed_writes"]     # what the workload set out to change
            mark = "!" if t["failed_writes"] else ""
            cells.append(f"{t['lost']} / {t['fp']}{mark}")
            notes += [f"{r['label']} · {w['name']}: {n}" for n in c["notes"]
                      if "collects raced" not in n]
        title = f"{w['title']} [{truth}]" if truth is not None else w["title"]
        lines.append(f"{title:<{ww}}" + "".join(f"  {c:>{cw}}" for c in cells))
    for r in rows:
        if r["speed_error"]:
            notes.append(f"{r['label']} · speed: {r['speed_error']}")
        if r["kind"] == "simulated":
            why = r["probe"]["reason"]
            notes.append(f"{r['label']}: played by the simulator: {r['model']}"
                         + (f"; not available here: {why}" if why else ""))
    for lo in rep["left_out"]:
        notes.append(f"{lo['name']}: not compared: {lo['reason']}")
    if notes:
        lines += ["", "notes:"] + [f"  {n}" for n in notes]
    return "\n".join(lines) + "\n"


def plot(rep: dict[str, Any], path: str) -> None:
    """Bar charts of the report (matplotlib, the optional ``plot`` extra)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = rep["rows"]
    labels = [r["label"] for r in rows]
    wl = rep["workloads"]
    fig, axes = plt.subplots(2, 2, figsize=(13, 8.5))
    x = range(len(rows))
    ax = axes[0][0]
    prec = [r["totals"]["precision"] or 0 for r in rows]
    rec = [r["totals"]["recall"] or 0 for r in rows]
    ax.bar([i - 0.2 for i in x], prec, 0.4, label="precision")
    ax.bar([i + 0.2 for i in x], rec, 0.4, label="recall")
    ax.set_xticks(list(x), labels, rotation=15)
    ax.set_ylim(0, 1.05)
    ax.set_title("precision and recall (all workloads)")
    ax.legend(loc="lower right")
    for ax, key, title in ((axes[0][1], "lost", "lost writes per workload"),
                           (axes[1][0], "fp", "false-positive pages per workload")):
        width = 0.8 / max(len(rows), 1)
        for j, r in enumerate(rows):
            vals = [(r["workloads"][w["name"]]["tally"] or {}).get(key, 0) for w in wl]
            ax.bar([i + j * width for i in range(len(wl))], vals, width, label=r["label"])
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(wl))],
                      [w["name"] for w in wl], rotation=30)
        ax.set_yscale("symlog")
        ax.set_ylim(bottom=0)
        ax.set_title(title)
        ax.legend(fontsize=8)
    ax = axes[1][1]
    real = [r for r in rows if r["speed"]]
    keys = ("arm_ms", "scan_ms", "reset_ms", "first_write_us_per_page")
    width = 0.8 / max(len(real), 1)
    for j, r in enumerate(real):
        ax.bar([i + j * width for i in range(len(keys))], [r["speed"][k] for k in keys],
               width, label=r["label"])
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(keys))],
                  ["arm ms", "scan ms", "reset ms", "1st write µs/page"])
    ax.set_yscale("log")
    ax.set_title(f"speed on {rep['bytes'] >> 20} MiB (real backends)")
    if real:
        ax.legend(fontsize=8)
    fig.suptitle(f"pagescan compare — kernel {rep['kernel']}, {rep['pages']} pages")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ===================================================================== CLI


def parse_size(text: str) -> int:
    """``32M``, ``8MiB``, ``1G``, ``4096k`` or a number of MiB -> pages (a multiple of
    512, at least 1024)."""
    t = text.strip().lower().removesuffix("ib").removesuffix("b")
    mult = 1 << 20
    for suffix, m in (("k", 1 << 10), ("m", 1 << 20), ("g", 1 << 30)):
        if t.endswith(suffix):
            t, mult = t[:-1], m
            break
    try:
        nbytes = int(float(t) * mult)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (e.g. 32M)") from None
    if nbytes < 4 << 20:
        raise argparse.ArgumentTypeError(f"{text!r}: the size must be at least 4M")
    if nbytes > 4 << 30:
        raise argparse.ArgumentTypeError(f"{text!r}: the size must be at most 4G")
    return -(-nbytes // HUGE) * HUGE_PAGES


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--size", type=parse_size, default=None, metavar="SIZE",
                   help="buffer per workload and for the speed columns (default 32M; "
                   "--quick: 8M)")
    p.add_argument("--quick", action="store_true",
                   help="smaller and shorter: 8M, 2 rounds, 1 speed round")
    p.add_argument("--rounds", type=int, default=None, metavar="N",
                   help="collect rounds per workload (default 3; --quick 2)")
    p.add_argument("--repeat", type=int, default=None, metavar="N",
                   help="rounds of the speed measurement, medians (default 3; --quick 1)")
    p.add_argument("--backend", action="append", metavar="NAME",
                   help="only this backend (repeatable)")
    p.add_argument("--workload", action="append", metavar="NAME",
                   help="only this workload (repeatable): " + ", ".join(WORKLOAD_NAMES))
    p.add_argument("--simulate", choices=("missing", "all", "none", "only"),
                   default="missing", help="which backends the simulator plays: those "
                   "that do not work here (default), all of them too, none, or only "
                   "simulated rows")
    p.add_argument("--seed", type=int, default=1, help="seed of the workloads (default 1)")
    p.add_argument("--timeout", type=float, default=120.0, metavar="S",
                   help="seconds one (backend, workload) pair may take (default 120)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--plot", metavar="FILE.png",
                   help="also draw the report into FILE.png (needs matplotlib: "
                   "pip install 'pagescan[plot]')")


def run_cli(args: argparse.Namespace) -> int:
    from ..cli import EXIT_ERROR, EXIT_OK, EXIT_UNAVAILABLE, Exit, UsageError
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise Exit(EXIT_ERROR, "--plot needs matplotlib, which is not installed: "
                       "pip install 'pagescan[plot]' (or: pip install matplotlib)") from None
    npages = args.size or (8 << 20 if args.quick else 32 << 20) // PAGE
    rounds = args.rounds or (2 if args.quick else 3)
    repeat = args.repeat or (1 if args.quick else 3)
    if rounds < 2 or repeat < 1:
        raise UsageError("--rounds must be at least 2 and --repeat at least 1")
    progress = Progress(0)
    try:
        rep = run_compare(npages=npages, rounds=rounds, repeat=repeat, seed=args.seed,
                          backends=args.backend, workloads=args.workload,
                          simulate=args.simulate, timeout=args.timeout, progress=progress)
    except ValueError as err:
        raise UsageError(str(err)) from None
    finally:
        progress.close()
    if args.json:
        json.dump(rep, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(format_table(rep))
    if args.plot:
        plot(rep, args.plot)
        if not args.json:
            sys.stdout.write(f"plot written to {args.plot}\n")
    if not rep["rows"]:
        return EXIT_UNAVAILABLE
    failed = sum(r["workloads_failed"] + bool(r["speed_error"]) for r in rep["rows"])
    if failed:
        sys.stderr.write(f"pagescan compare: {failed} runs failed (their errors are in the "
                         "notes)\n")
        return EXIT_ERROR
    return EXIT_OK
