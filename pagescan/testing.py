"""A conformance suite every backend must pass (the Tracker API, write-watch
semantics, bad input), for pagescan's own backends and for third-party ones.

Subclass :class:`BackendConformance` in a pytest module and provide a
``harness`` fixture returning a :class:`Harness` for your backend::

    class TestMine(BackendConformance):
        @pytest.fixture
        def harness(self):
            return RealHarness("mine")

A backend written against :class:`pagescan.kernel.Kernel` runs on the simulator
too: :class:`SimHarness` tracks simulated memory with ``backend="simulator",
mechanism="mine"``, i.e. your backend's own code over a
:class:`~pagescan.simulator.SimKernel`::

    @pytest.fixture(params=[RealHarness, SimHarness])
    def harness(self, request):
        return request.param("mine")

The suite needs only the standard library (it also runs inside the qemu guests
of the kernel lane, where importing numpy is slow).
"""

from __future__ import annotations

import mmap
import threading
from typing import Any

import pytest

import pagescan
from pagescan import writewatch
from pagescan.errors import OverlapError, RangeError, TrackerClosed

PS = mmap.PAGESIZE

__all__ = ["BackendConformance", "Harness", "RealHarness", "SimHarness", "pages_of"]


def pages_of(regions: Any, base: int) -> set[int]:
    """Page indexes (relative to ``base``) covered by regions."""
    out: set[int] = set()
    for r in regions:
        out.update(range((r[0] - base) // PS, (r[1] - base) // PS))
    return out


class Harness:
    """How the suite gets memory, writes to it and tracks it, for one backend."""

    backend: str
    #: Whether other threads can write the memory (true for real memory).
    threads: bool = False

    def view(self, address: int, length: int) -> memoryview:
        """A writable view of the memory (for the concurrency tests)."""
        raise NotImplementedError

    def alloc(self, npages: int) -> int:
        """Map ``npages`` of private anonymous memory; return its address."""
        raise NotImplementedError

    def write(self, address: int, value: int = 1) -> None:
        """Store one byte at ``address`` (as the program would)."""
        raise NotImplementedError

    def free(self, address: int) -> None:
        raise NotImplementedError

    def track(self, address: int, length: int, **kw: Any) -> pagescan.Tracker:
        return pagescan.track((address, length), backend=self.backend, **kw)

    def alloc_write_watch(self, size: int) -> Any:
        return writewatch.alloc_write_watch(size, backend=self.backend)


class RealHarness(Harness):
    """Real memory of this process (uffd, mprotect, soft-dirty)."""

    threads = True

    def view(self, address: int, length: int) -> memoryview:
        for base, mem in self._maps.items():
            if base <= address and address + length <= base + len(mem):
                return memoryview(mem)[address - base: address - base + length]
        raise ValueError("not memory of this harness")

    def __init__(self, backend: str) -> None:
        self.backend = backend
        self._maps: dict[int, pagescan.Memory] = {}

    def alloc(self, npages: int) -> int:
        mem = pagescan.allocate(npages * PS)
        self._maps[mem.address] = mem
        return mem.address

    def write(self, address: int, value: int = 1) -> None:
        for base, mem in self._maps.items():
            if base <= address < base + len(mem):
                mem[address - base] = value
                return
        import ctypes
        ctypes.memset(address, value, 1)

    def free(self, address: int) -> None:
        self._maps.pop(address).close()


class SimHarness(Harness):
    """Simulated memory (:class:`pagescan.simulator.SimProcess`), tracked with
    ``backend="simulator"`` and the ``mechanism`` given: that backend's own code over
    a :class:`~pagescan.simulator.SimKernel`. ``config``: the simulated kernel (a
    :class:`~pagescan.simulator.KernelConfig`; default: the reference kernel)."""

    backend = "simulator"

    def __init__(self, mechanism: str = "uffd", config: Any = None) -> None:
        from pagescan.simulator import SimProcess
        self.mechanism = mechanism
        self.sim = SimProcess(config=config)
        self.sizes: dict[int, int] = {}

    def __repr__(self) -> str:
        return f"SimHarness({self.mechanism!r})"

    def alloc(self, npages: int) -> int:
        addr = int(self.sim.mmap(npages * PS))
        self.sizes[addr] = npages * PS
        return addr

    def write(self, address: int, value: int = 1) -> None:
        self.sim.write(address)

    def free(self, address: int) -> None:
        self.sim.munmap(address, self.sizes.pop(address))

    def track(self, address: int, length: int, **kw: Any) -> pagescan.Tracker:
        return pagescan.track((address, length), backend="simulator", pid=self.sim.pid,
                              mechanism=self.mechanism, **kw)

    def alloc_write_watch(self, size: int) -> Any:
        return writewatch.alloc_write_watch(size, backend="simulator", pid=self.sim.pid,
                                            mechanism=self.mechanism)


class BackendConformance:
    """The shared tests. Subclasses provide the ``harness`` fixture."""

    NPAGES = 64

    @pytest.fixture
    def mem(self, harness: Harness) -> Any:
        addr = harness.alloc(self.NPAGES)
        yield addr
        harness.free(addr)

    # ------------------------------------------------------------------ tracker

    def test_untouched_pages_never_read_as_written(self, harness: Harness, mem: int) -> None:
        with harness.track(mem, self.NPAGES * PS) as t:
            assert t.backend == harness.backend
            assert t.mechanism == getattr(harness, "mechanism", harness.backend)
            assert t.capabilities.real == (harness.backend != "simulator")
            assert len(t.written()) == 0

    def test_writes_are_reported_exactly(self, harness: Harness, mem: int) -> None:
        with harness.track(mem, self.NPAGES * PS) as t:
            for i in (0, 1, 2, 9, 63):
                harness.write(mem + i * PS + 17)
            assert pages_of(t.written(), mem) == {0, 1, 2, 9, 63}
            assert [tuple(r) for r in t.written()][0] == (mem, mem + 3 * PS,
                                                          pagescan.Category.WRITTEN)

    def test_collect_resets(self, harness: Harness, mem: int) -> None:
        with harness.track(mem, self.NPAGES * PS) as t:
            harness.write(mem + 5 * PS)
            res = t.collect()
            assert pages_of(res.regions, mem) == {5}
            assert res.walk_end == t.end
            assert len(t.written()) == 0
            harness.write(mem + 6 * PS)
            assert pages_of(t.collect(reset=False).regions, mem) == {6}
            assert pages_of(t.written(), mem) == {6}
            t.reset()
            assert len(t.written()) == 0
            harness.write(mem + 6 * PS)                 # written again after a reset
            assert pages_of(t.written(), mem) == {6}

    def test_collect_max_pages_resumes_without_loss(self, harness: Harness, mem: int) -> None:
        written = {3, 4, 5, 9, 30, 31, 60}
        with harness.track(mem, self.NPAGES * PS) as t:
            for i in written:
                harness.write(mem + i * PS)
            seen: list[int] = []
            start = t.start
            while True:
                res = t.collect(max_pages=2, start=start)
                got = sorted(pages_of(res.regions, mem))
                assert len(got) <= 2
                seen += got
                if res.walk_end >= t.end:
                    break
                start = res.walk_end
            assert sorted(seen) == sorted(written)
            assert len(t.written()) == 0

    def test_range_reset(self, harness: Harness, mem: int) -> None:
        with harness.track(mem, self.NPAGES * PS) as t:
            for i in (1, 10, 20):
                harness.write(mem + i * PS)
            t.reset(start=mem + 8 * PS, end=mem + 16 * PS)
            assert pages_of(t.written(), mem) == {1, 20}

    def test_scan_masks(self, harness: Harness, mem: int) -> None:
        W = pagescan.Category.WRITTEN
        with harness.track(mem, self.NPAGES * PS) as t:
            harness.write(mem + 2 * PS)
            clean = t.scan(pagescan.Masks(excluded=W, return_mask=0))
            assert pages_of(clean.regions, mem) == set(range(self.NPAGES)) - {2}
            first = t.scan(pagescan.Masks(excluded=W, return_mask=0), max_regions=1)
            assert list(first.regions) == [(mem, mem + 2 * PS, 0)]
            assert first.walk_end == mem + 3 * PS

    # ---------------------------------------------------------------- bad input

    def test_bad_input(self, harness: Harness, mem: int) -> None:
        with pytest.raises(RangeError, match="not page-aligned"):
            harness.track(mem + 1, PS)
        with pytest.raises(RangeError, match="zero"):
            harness.track(mem, 0)
        with harness.track(mem, 16 * PS) as t:
            with pytest.raises(OverlapError):
                harness.track(mem + 8 * PS, 16 * PS)
            with pytest.raises(RangeError, match="outside this tracker"):
                t.written(end=mem + 32 * PS)
            with pytest.raises(ValueError, match="max_pages"):
                t.collect(max_pages=-1)
        with pytest.raises(TrackerClosed):
            t.written()

    def test_close_leaves_memory_usable(self, harness: Harness, mem: int) -> None:
        t = harness.track(mem, self.NPAGES * PS)
        harness.write(mem)
        t.close()
        harness.write(mem + PS)
        with harness.track(mem, self.NPAGES * PS) as t2:
            harness.write(mem + 2 * PS)
            assert pages_of(t2.written(), mem) == {2}

    # -------------------------------------------------------------- write watch

    def test_write_watch(self, harness: Harness) -> None:
        ww = harness.alloc_write_watch(32 * PS)
        try:
            base = ww.address
            assert writewatch.get_write_watch(base, 32 * PS) == ([], PS)
            for i in (3, 4, 7, 20):
                harness.write(base + i * PS)
            addrs, gran = writewatch.get_write_watch(base, 32 * PS)
            assert gran == PS and addrs == [base + i * PS for i in (3, 4, 7, 20)]
            # max_count limits the answer; reset resets only what was reported
            addrs, _ = writewatch.get_write_watch(base, 32 * PS, reset=True, max_count=2)
            assert addrs == [base + 3 * PS, base + 4 * PS]
            addrs, _ = writewatch.get_write_watch(base, 32 * PS)
            assert addrs == [base + 7 * PS, base + 20 * PS]
            # an unaligned base covers the pages it touches
            addrs, _ = writewatch.get_write_watch(base + 7 * PS + 5, 10)
            assert addrs == [base + 7 * PS]
            writewatch.reset_write_watch(base, 32 * PS)
            assert writewatch.get_write_watch(base, 32 * PS)[0] == []
            with pytest.raises(writewatch.WriteWatchError, match="past the end"):
                writewatch.get_write_watch(base, 33 * PS)
            with pytest.raises(writewatch.WriteWatchError, match="size is zero"):
                writewatch.get_write_watch(base, 0)
            with pytest.raises(writewatch.WriteWatchError, match="not inside"):
                writewatch.get_write_watch(base - PS, PS)
            with pytest.raises(ValueError, match="max_count"):
                writewatch.get_write_watch(base, PS, max_count=-1)
        finally:
            ww.close()
        with pytest.raises(writewatch.WriteWatchError, match="not inside"):
            writewatch.get_write_watch(base, PS)

    # -------------------------------------------------------------- concurrency

    def test_writer_threads_during_collect_lose_no_write(self, harness: Harness) -> None:
        """The kernel selftest's transact test, as a checkpoint: writer threads
        write while a collector loops collect(reset=True) and copies every
        reported page into a shadow. After a final collect the shadow must equal
        memory: a write that no collect reported after it landed leaves a stale page."""
        if not harness.threads:
            pytest.skip("this harness has no concurrent writers")
        npages, writers, rounds = 96, 3, 300
        # without an atomic get-and-reset (soft-dirty: read, then clear) a write
        # can fall between the two steps: there the collector only reads
        atomic = pagescan.backends.get_backend(harness.backend).capabilities.atomic_reset
        addr = harness.alloc(npages)
        mv = harness.view(addr, npages * PS)
        shadow = bytearray(npages * PS)
        stop = threading.Event()
        collects = [0]
        try:
            with harness.track(addr, npages * PS) as t:
                def copy(regions: Any) -> None:
                    for r in regions:
                        lo, hi = r[0] - addr, r[1] - addr
                        shadow[lo:hi] = mv[lo:hi]

                collector_done = threading.Event()

                def writer(k: int) -> None:
                    n = 0       # at least `rounds`, and on until several collects ran
                    while n < rounds or (collects[0] < 6 and not collector_done.is_set()):
                        for p in range(k, npages, writers):
                            mv[p * PS + n % PS] = n % 255 + 1
                        n += 1

                def collector() -> None:
                    try:
                        while not stop.is_set():
                            copy(t.collect(reset=atomic).regions)
                            collects[0] += 1
                    finally:
                        collector_done.set()

                ths = [threading.Thread(target=writer, args=(k,)) for k in range(writers)]
                col = threading.Thread(target=collector)
                col.start()
                for th in ths:
                    th.start()
                for th in ths:
                    th.join(timeout=120)
                stop.set()
                col.join(timeout=60)
                copy(t.collect().regions)            # what is still pending
                assert len(t.written()) == 0 or not atomic
                lost = [p for p in range(npages)
                        if shadow[p * PS:(p + 1) * PS] != mv[p * PS:(p + 1) * PS]]
        finally:
            mv.release()
            harness.free(addr)
        assert collects[0] > 5
        assert not lost, f"writes lost on pages {lost}"

    def test_each_write_is_reported(self, harness: Harness) -> None:
        """Writers wait until their page was collected before writing it again, so
        every write must be reported (reports >= writes, page by page). A store
        whose fault was resolved, then re-protected by a racing collect before the
        store retired, faults again and is reported twice: rare, never a loss."""
        if not harness.threads:
            pytest.skip("this harness has no concurrent writers")
        npages, writers, rounds = 64, 3, 150
        if not pagescan.backends.get_backend(harness.backend).capabilities.atomic_reset:
            writers, rounds = 1, 10     # no atomic get-and-reset: one writer collects itself
        addr = harness.alloc(npages)
        mv = harness.view(addr, npages * PS)
        pending = [False] * npages                   # written, not yet reported
        writes = [0] * npages
        reports = [0] * npages
        reported = threading.Condition()         # a collect cleared pending pages
        stop = threading.Event()
        try:
            with harness.track(addr, npages * PS) as t:
                def writer(k: int) -> None:
                    for n in range(rounds):
                        for p in range(k, npages, writers):
                            def free(p: int = p) -> bool:
                                return not pending[p] or stop.is_set()

                            with reported:      # wait (not spin: the GIL) for a collect
                                reported.wait_for(free)
                                if pending[p]:
                                    return      # stopped
                                pending[p] = True
                                writes[p] += 1
                            mv[p * PS + n % PS] = n & 0xFF

                def report(regions: Any) -> None:
                    with reported:
                        for p in pages_of(regions, addr):
                            reports[p] += 1
                            pending[p] = False
                        reported.notify_all()

                def collector() -> None:
                    while not stop.is_set():
                        report(t.collect().regions)

                if writers == 1:
                    for n in range(rounds):
                        for p in range(npages):
                            writes[p] += 1
                            mv[p * PS + n % PS] = n & 0xFF
                            if p % 7 == 6 or p == npages - 1:
                                report(t.collect().regions)
                else:
                    ths = [threading.Thread(target=writer, args=(k,))
                           for k in range(writers)]
                    col = threading.Thread(target=collector)
                    col.start()
                    for th in ths:
                        th.start()
                    for th in ths:
                        th.join(timeout=120)
                    stop.set()
                    with reported:
                        reported.notify_all()
                    col.join(timeout=60)
                report(t.collect().regions)
        finally:
            mv.release()
            harness.free(addr)
        assert sum(writes) == npages * rounds
        if writers == 1:
            assert reports == writes                 # no concurrency: exactly once
        assert all(r >= w for r, w in zip(reports, writes, strict=True))
        assert sum(reports) - sum(writes) <= 0.05 * sum(writes)
