"""Tracking at the edges of what a mechanism sees (issue 12, items 3 and 4), on this
host (uffd, mprotect) and on the simulator (every mechanism, soft-dirty included):

* transparent huge pages that exist before ``track()``: the default (``thp=False``)
  answers exactly to the page;
* MAP_SHARED mappings (a shared file, shmem): ``track()`` says that writes through
  another mapping or ``pwrite()`` are not seen (SharedMappingWarning).

Soft-dirty on a real kernel (THP split when arming) is in tests/vm/test_softdirty_vm.py.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import re
import warnings

import pytest

import pagescan
from pagescan import HugePageWarning, SharedMappingWarning
from pagescan.constants import MADV_HUGEPAGE, MAP_ANONYMOUS, MAP_PRIVATE, MAP_SHARED
from pagescan.simulator import KernelConfig, SimFile, SimProcess

from conftest import require

P = mmap.PAGESIZE
HUGE = 512 * P


def anon_huge_kb() -> int:
    text = open("/proc/self/smaps_rollup").read()
    return int(re.search(r"^AnonHugePages:\s+(\d+) kB", text, re.M).group(1))


def address(m: mmap.mmap) -> int:
    return ctypes.addressof(ctypes.c_char.from_buffer(m))


@pytest.fixture
def huge_region():
    """Two 2 MiB-aligned blocks of private anonymous memory, each mapped by a THP
    (MADV_HUGEPAGE, then written): ``(address, length)``."""
    if not os.path.exists("/sys/kernel/mm/transparent_hugepage/enabled"):
        require(False, "this kernel has no transparent huge pages")
    m = mmap.mmap(-1, 3 * HUGE, flags=MAP_PRIVATE | MAP_ANONYMOUS)
    base = address(m)
    a = -(-base // HUGE) * HUGE
    before = anon_huge_kb()
    pagescan.kernel.LinuxKernel().madvise(a, 2 * HUGE, MADV_HUGEPAGE)
    ctypes.memset(a, 1, 2 * HUGE)
    require(anon_huge_kb() - before >= 2 * HUGE // 1024,
            "no THP was made for a 2 MiB-aligned MADV_HUGEPAGE region (THP 'never', or "
            "no huge page free)")
    yield a, 2 * HUGE
    m.close()


def ten_stores(a: int) -> set[int]:
    pages = {a + i * 97 * P for i in range(10)}
    for p in pages:
        ctypes.memset(p + 5, 2, 1)
    return pages


def written_pages(t: pagescan.Tracker) -> set[int]:
    return {a for r in t.written() for a in range(r.start, r.end, P)}


# ------------------------------------------------------------------ item 3: huge pages


@pytest.mark.parametrize("backend", ["uffd", "mprotect"])
def test_huge_pages_present_before_track_are_exact(huge_region, backend):
    """10 single-page stores into memory that was a THP at track(): 10 pages (uffd:
    the async write-protect fault splits the huge PMD; mprotect: the protection
    change does)."""
    p = pagescan.probe(backend)
    require(p.ok, p.reason)
    a, n = huge_region
    with warnings.catch_warnings():
        warnings.simplefilter("error", HugePageWarning)
        t = pagescan.track((a, n), backend=backend)
    with t:
        assert written_pages(t) == set()
        assert written_pages(t) == set()
        want = ten_stores(a)
        assert written_pages(t) == want
        t.reset()
        assert written_pages(t) == set()


@pytest.mark.parametrize("thp_mode", ["always", "madvise"])
def test_simulated_softdirty_splits_huge_pages_when_arming(thp_mode):
    """The real soft-dirty backend over the model: memory that is a THP at track()
    is split when armed (a write to one page is one page, not 512)."""
    sim = SimProcess(config=KernelConfig(thp=thp_mode))
    a = sim.mmap(3 * HUGE)
    a = -(-a // HUGE) * HUGE
    sim.madvise(a, 2 * HUGE, MADV_HUGEPAGE)
    sim.write(a, 2 * HUGE)
    t = sim.track(a, 2 * HUGE, mechanism="softdirty")
    assert t.written().pages() == 0
    for i in range(10):
        sim.write(a + i * 97 * P)
    assert {r.start for r in t.written()} == {a + i * 97 * P for i in range(10)}
    assert t.written().pages() == 10
    assert t.stats()["granularity"]["huge_page_runs"] == []
    # the huge pages stay split: later writes are exact too
    t.reset()
    sim.write(a + HUGE + 3 * P)
    assert t.written().pages() == 1
    t.close()


# ------------------------------------------------------------------ item 4: MAP_SHARED


def no_shared_warning(**kw):
    with warnings.catch_warnings():
        warnings.simplefilter("error", SharedMappingWarning)
        return pagescan.track(**kw)


@pytest.mark.parametrize("backend", ["uffd", "mprotect"])
def test_shared_file_mapping_warns_and_pwrite_is_not_seen(backend, tmp_path):
    p = pagescan.probe(backend)
    require(p.ok, p.reason)
    path = tmp_path / "shared"
    path.write_bytes(b"\0" * 8 * P)
    fd = os.open(path, os.O_RDWR)
    m = mmap.mmap(fd, 8 * P, flags=MAP_SHARED)
    a = address(m)
    try:
        with pytest.warns(SharedMappingWarning, match="MAP_SHARED"):
            t = pagescan.track((a, 8 * P), backend=backend)
        with t:
            assert written_pages(t) == set()
            os.pwrite(fd, b"x", 3 * P)                 # through the file: not seen
            assert m[3 * P] == ord("x")
            assert written_pages(t) == set()
            m[5 * P] = 1                               # through the tracked mapping: seen
            assert written_pages(t) == {a + 5 * P}
    finally:
        m.close()
        os.close(fd)


@pytest.mark.parametrize("backend", ["uffd", "mprotect"])
def test_shmem_mapping_warns_and_a_second_mapping_is_not_seen(backend):
    p = pagescan.probe(backend)
    require(p.ok, p.reason)
    fd = os.memfd_create("pagescan-test")
    os.ftruncate(fd, 4 * P)
    m1 = mmap.mmap(fd, 4 * P, flags=MAP_SHARED)
    m2 = mmap.mmap(fd, 4 * P, flags=MAP_SHARED)
    a = address(m1)
    try:
        with pytest.warns(SharedMappingWarning):
            t = pagescan.track((a, 4 * P), backend=backend)
        with t:
            m2[2 * P] = 7                              # the other mapping: not seen
            assert m1[2 * P] == 7
            assert written_pages(t) == set()
            m1[P] = 1
            assert written_pages(t) == {a + P}
    finally:
        m1.close()
        m2.close()
        os.close(fd)


@pytest.mark.parametrize("backend", ["uffd", "mprotect"])
def test_private_memory_gives_no_shared_warning(backend):
    p = pagescan.probe(backend)
    require(p.ok, p.reason)
    buf = pagescan.allocate(4 * P)
    with no_shared_warning(target=buf, backend=backend):
        pass
    buf.close()


@pytest.mark.parametrize("mechanism", ["uffd", "softdirty", "mprotect"])
def test_simulated_shared_mappings_warn_for_every_mechanism(mechanism):
    sim = SimProcess()
    private = sim.mmap(4 * P)
    shared = sim.mmap(4 * P, flags=MAP_SHARED | MAP_ANONYMOUS)
    f = SimFile(4 * P)
    on_file = sim.mmap(4 * P, flags=MAP_SHARED, file=f)
    with no_shared_warning(target=(private, 4 * P), backend="simulator", pid=sim.pid,
                           mechanism=mechanism) as t:
        assert t.written().pages() == 0
    for addr in (shared, on_file):
        with pytest.warns(SharedMappingWarning, match="MAP_SHARED"):
            t = pagescan.track((addr, 4 * P), backend="simulator", pid=sim.pid,
                               mechanism=mechanism)
        t.close()


def test_shared_mapping_warning_names_the_limitation():
    assert issubclass(SharedMappingWarning, UserWarning)
    assert issubclass(HugePageWarning, UserWarning)
    assert "pwrite" in SharedMappingWarning.__doc__


def test_simulated_whole_process_warns_for_writable_shared_mappings_only():
    """A whole-process tracker: read-only shared mappings (locale caches, fonts: in
    almost every process) give no warning, a writable one does."""
    from pagescan.simulator import PROT_READ, PROT_WRITE
    sim = SimProcess()
    sim.mmap(4 * P)
    sim.mmap(4 * P, prot=PROT_READ, flags=MAP_SHARED, file=SimFile(4 * P))
    with no_shared_warning(backend="simulator", pid=sim.pid, mechanism="softdirty"):
        pass
    shared = sim.mmap(4 * P, prot=PROT_READ | PROT_WRITE, flags=MAP_SHARED | MAP_ANONYMOUS)
    with pytest.warns(SharedMappingWarning, match=f"0x{shared:x}"):
        t = pagescan.track(backend="simulator", pid=sim.pid, mechanism="softdirty")
    t.close()


# ---------------------------------------------------------------- partial pages (12.14)


def test_a_sub_page_object_is_refused_by_a_backend_that_changes_protection(mprotect_ok):
    """Regression (issue 12.14): mprotect tracking a 64-byte bytearray made the
    kernel's writes into neighbouring objects on its page fail with EFAULT."""
    import warnings

    buf = bytearray(64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pagescan.PartialPageWarning)
        with pytest.raises(pagescan.RangeError, match="partial_pages=True"):
            pagescan.track(buf, backend="mprotect")
        buf.append(1)                 # nothing left exported or protected: it can grow
        with pytest.warns(pagescan.PartialPageWarning):
            t = pagescan.track(buf, backend="mprotect", partial_pages=True)
        with t:
            assert t.capabilities.changes_protection


def test_a_sub_page_object_only_warns_where_protection_is_untouched(uffd_ok):
    buf = bytearray(64)
    with pytest.warns(pagescan.PartialPageWarning):
        t = pagescan.track(buf, backend="uffd")
    with t:
        assert not t.capabilities.changes_protection
