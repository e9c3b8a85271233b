"""A conformance suite every backend must pass (the Tracker API, write-watch
semantics, bad input), for pagescan's own backends and for third-party ones.

Subclass :class:`BackendConformance` in a pytest module and provide a
``harness`` fixture returning a :class:`Harness` for your backend::

    class TestMine(BackendConformance):
        @pytest.fixture
        def harness(self):
            return RealHarness("mine")

The suite needs only the standard library (it also runs inside the qemu guests
of the kernel lane, where importing numpy is slow).
"""

from __future__ import annotations

import mmap
from typing import Any

import pytest

import pagescan
from pagescan import writewatch
from pagescan.errors import OverlapError, RangeError, TrackerClosed

PS = mmap.PAGESIZE

__all__ = ["BackendConformance", "Harness", "RealHarness", "pages_of"]


def pages_of(regions: Any, base: int) -> set[int]:
    """Page indexes (relative to ``base``) covered by regions."""
    out: set[int] = set()
    for r in regions:
        out.update(range((r[0] - base) // PS, (r[1] - base) // PS))
    return out


class Harness:
    """How the suite gets memory, writes to it and tracks it, for one backend."""

    backend: str

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
