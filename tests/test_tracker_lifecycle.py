"""Tracker lifecycle: what happens to a tracker whose memory goes away, calls racing
close(), fork() while another thread holds the tracker's locks, failed track()
calls and bad arguments (issue 12 items 8, 11, 12, 15, 16)."""

from __future__ import annotations

import ctypes
import mmap

import pytest

import pagescan
from pagescan import simulator as S
from pagescan.errors import RangeError

PS = pagescan.PAGE_SIZE
_libc = ctypes.CDLL(None, use_errno=True)
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.munmap.restype = ctypes.c_int
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long]
_libc.mmap.restype = ctypes.c_void_p

CALLS = {
    "scan": lambda t: t.scan(),
    "written": lambda t: t.written(),
    "collect": lambda t: t.collect(),
    "reset": lambda t: t.reset(),
}


def _map(npages: int) -> int:
    r = _libc.mmap(None, npages * PS, mmap.PROT_READ | mmap.PROT_WRITE,
                   mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
    assert r not in (None, ctypes.c_void_p(-1).value), ctypes.get_errno()
    return int(r)


def _unmap(addr: int, n: int) -> None:
    assert _libc.munmap(addr, n) == 0, ctypes.get_errno()


# ------------------------------------------------ item 8: the tracked range was unmapped


@pytest.mark.kernel
@pytest.mark.usefixtures("uffd_ok")
@pytest.mark.parametrize("call", sorted(CALLS))
@pytest.mark.parametrize("hole", ["all", "middle"])
def test_uffd_unmapped_range_is_a_range_error(call: str, hole: str) -> None:
    """Every call on a tracker whose memory was unmapped (wholly, or one page of
    it) raises RangeError; none answers "nothing written" for memory that is gone."""
    a = _map(4)
    t = pagescan.track((a, 4 * PS), backend="uffd")
    try:
        ctypes.memset(a, 1, 1)
        assert t.collect().regions.pages() == 1
        if hole == "all":
            _unmap(a, 4 * PS)
        else:
            _unmap(a + PS, PS)
        with pytest.raises(RangeError, match="unmapped"):
            CALLS[call](t)
    finally:
        t.close()
        _unmap(a, 4 * PS)


@pytest.mark.parametrize("call", sorted(CALLS))
@pytest.mark.parametrize("hole", ["all", "middle"])
def test_simulated_uffd_unmapped_range_is_a_range_error(call: str, hole: str) -> None:
    """The same on the simulator (the same backend code over the model)."""
    sim = S.SimProcess()
    a = sim.mmap(4 * PS)
    with sim.track(a, 4 * PS, mechanism="uffd") as t:
        sim.write(a)
        assert t.collect().regions.pages() == 1
        if hole == "all":
            sim.munmap(a, 4 * PS)
        else:
            sim.munmap(a + PS, PS)
        with pytest.raises(RangeError, match="unmapped"):
            CALLS[call](t)
    sim.exit()


@pytest.mark.kernel
@pytest.mark.usefixtures("uffd_ok")
def test_uffd_mapped_range_with_nothing_written_is_empty() -> None:
    """The check on the empty-result path does not refuse a range still mapped."""
    a = _map(4)
    try:
        with pagescan.track((a, 4 * PS), backend="uffd") as t:
            assert len(t.written()) == 0
            assert len(t.collect().regions) == 0
            t.reset()
            assert t.scan().regions.pages() == 4      # every mapped page, no gap
    finally:
        _unmap(a, 4 * PS)
