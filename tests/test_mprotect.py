"""The mprotect backend (PROT_READ + a SIGSEGV handler in C), on the real kernel.

Its limits are tested as much as its tracking: kernel writes fail with EFAULT,
vm.max_map_count runs out (coarsening, never a hang), faulthandler still works
for genuine crashes, fork() gives the child untracked writable memory. Tests
that can end a process (a genuine SIGSEGV) or could hang if the handler were
wrong run in a subprocess with a timeout.
"""

from __future__ import annotations

import ctypes
import errno
import json
import mmap
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import warnings

import numpy as np
import pytest
from conftest import require, scaled

import pagescan
from pagescan import Category, Masks
from pagescan.backends.mprotect import MapCountWarning, MprotectBackend
from pagescan.constants import MAP_FIXED, MAP_FIXED_NOREPLACE, PROT_EXEC, PROT_READ, PROT_WRITE
from pagescan.errors import KernelError, OverlapError, RangeError, TrackerClosed

PS = pagescan.PAGE_SIZE
pytestmark = [pytest.mark.kernel, pytest.mark.usefixtures("mprotect_ok")]

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long]


def _mmap_fixed_noreplace(addr: int, length: int, prot: int = 3,
                          flags: int = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS) -> int:
    """Map anonymous memory at ``addr`` unless something is there; the address or -1."""
    got = _libc.mmap(addr, length, prot, flags | MAP_FIXED_NOREPLACE, -1, 0)
    return -1 if got is None or got == ctypes.c_void_p(-1).value else got


@pytest.fixture
def mprotect_ok() -> None:
    p = pagescan.probe("mprotect")
    require(p.ok, p.reason)


def core():
    from pagescan import _core
    return _core


def pages_of(regions, base=0):
    out = set()
    for s, e, _ in regions:
        out.update(range((s - base) // PS, (e - base) // PS))
    return out


def close(mem):
    try:
        mem.close()
    except BufferError:
        pass


def perms(start: int, end: int) -> set[str]:
    """The permissions of the mappings that cover [start, end)."""
    out = set()
    with open("/proc/self/maps") as f:
        for line in f:
            rng, p = line.split()[:2]
            s, e = (int(x, 16) for x in rng.split("-"))
            if s < end and start < e:
                out.add(p[:3])
    return out


def run_python(code: str, *args: str, timeout: float = 120, env: dict | None = None):
    """Run ``code`` in a fresh interpreter; a hang is a test failure, not a stall."""
    try:
        return subprocess.run([sys.executable, *args, "-c", textwrap.dedent(code)],
                              capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, **(env or {})})
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"the child process hung for {timeout}s: {err.stderr!r}")


@pytest.fixture
def buf():
    mem = pagescan.allocate(256 * PS)
    yield mem
    close(mem)


@pytest.fixture(autouse=True)
def _no_injection():
    yield
    if pagescan.probe("mprotect").ok:
        core().mp_inject_enomem(0)


def track(obj, *a, **kw):
    return pagescan.track(obj, *a, backend="mprotect", **kw)


# The shared conformance suite runs for mprotect from tests/test_conformance.py.


# ----------------------------------------------------------------- registration


def test_registered_with_a_lower_priority_than_uffd():
    assert "mprotect" in pagescan.backend_names()
    from importlib import metadata
    eps = {ep.name: ep.value for ep in metadata.entry_points(group="pagescan.backends")}
    assert eps.get("mprotect") == "pagescan.backends.mprotect:MprotectBackend"
    caps = MprotectBackend.capabilities
    assert caps.atomic_reset and caps.range_reset and caps.real
    assert not caps.other_processes and not caps.kernel_filtering
    assert not caps.kernel_writes_seen
    assert MprotectBackend.priority < 100
    if pagescan.probe("uffd").ok:
        with pagescan.track(pagescan.allocate(PS)) as t:
            assert t.backend == "uffd"


def test_probe_details_and_pure_python_reason():
    p = pagescan.probe("mprotect")
    assert p.ok and p.details["vm.max_map_count"]
    r = run_python("import pagescan; print(pagescan.probe('mprotect').reason)",
                   env={"PAGESCAN_PUREPYTHON": "1"})
    assert "needs the compiled core" in r.stdout, r.stderr


def test_other_process_is_refused():
    with pytest.raises(ValueError, match="calling process"):
        MprotectBackend(pid=1)


# --------------------------------------------------------------- basic tracking


def test_untouched_pages_never_read_as_written(buf):
    buf[:] = b"\1" * len(buf)
    with track(buf) as t:
        assert t.backend == "mprotect"
        assert len(t.written()) == 0
        arr = np.frombuffer(buf, dtype=np.uint8)
        assert arr[::PS].sum() == 256            # reads do not fault
        assert len(t.written()) == 0
        assert t._backend.stats()["faults"] == 0
        del arr


def test_unpopulated_pages_never_read_as_written(buf):
    with track(buf) as t:
        assert t.written().pages() == 0


def test_writes_are_reported_exactly(buf):
    with track(buf) as t:
        for i in (0, 1, 2, 7, 100, 255):
            buf[i * PS + 123] = 1
        assert list(t.written()) == [(buf.address, buf.address + 3 * PS, Category.WRITTEN),
                                     (buf.address + 7 * PS, buf.address + 8 * PS, 2),
                                     (buf.address + 100 * PS, buf.address + 101 * PS, 2),
                                     (buf.address + 255 * PS, buf.address + 256 * PS, 2)]
        buf[PS + 1] = 2                          # a page already written: no fault
        assert t._backend.stats()["faults"] == 6
        assert buf[7 * PS + 123] == 1 and buf[PS + 1] == 2


def test_collect_and_reset(buf):
    with track(buf) as t:
        buf[5 * PS] = 1
        res = t.collect()
        assert pages_of(res.regions, buf.address) == {5}
        assert res.walk_end == t.end
        assert len(t.written()) == 0
        buf[5 * PS] = 2                          # faults again after the reset
        assert pages_of(t.collect(reset=False).regions, buf.address) == {5}
        assert pages_of(t.written(), buf.address) == {5}
        t.reset()
        assert len(t.written()) == 0
        assert perms(t.start, t.end) == {"r--"}


def test_reset_of_a_subrange(buf):
    with track(buf) as t:
        for i in (1, 10, 20):
            buf[i * PS] = 1
        t.reset(start=t.start + 8 * PS, end=t.start + 16 * PS)
        assert pages_of(t.written(), buf.address) == {1, 20}
        buf[10 * PS] = 1
        assert pages_of(t.written(), buf.address) == {1, 10, 20}


def test_collect_max_pages_resumes_and_resets_only_what_it_reported(buf):
    with track(buf) as t:
        written = {3, 4, 5, 9, 50, 51, 200}
        for i in written:
            buf[i * PS] = 1
        res = t.collect(max_pages=2)
        assert pages_of(res.regions, buf.address) == {3, 4}
        assert res.walk_end == buf.address + 5 * PS
        assert pages_of(t.written(), buf.address) == written - {3, 4}
        seen = [3, 4]
        start = res.walk_end
        while start < t.end:
            res = t.collect(max_pages=2, start=start)
            got = sorted(pages_of(res.regions, buf.address))
            assert len(got) <= 2
            seen += got
            start = res.walk_end
        assert sorted(seen) == sorted(written)
        assert len(t.written()) == 0


def test_scan_masks_and_limits(buf):
    W = Category.WRITTEN
    with track(buf) as t:
        buf[2 * PS] = 1
        every = t.scan()
        assert every.regions.pages() == 256
        assert all(c & Category.WPALLOWED for _, _, c in every.regions)
        clean = t.scan(Masks(excluded=W, return_mask=0))
        assert pages_of(clean.regions, buf.address) == set(range(256)) - {2}
        limited = t.scan(max_regions=1)
        assert len(limited.regions) == 1 and limited.walk_end == buf.address + 2 * PS
        # with a return mask without WRITTEN, reset still resets only written pages
        res = t.scan(Masks(return_mask=0), reset=True)
        assert list(res.regions) == [(t.start, t.end, 0)]
        assert len(t.written()) == 0
        with pytest.raises(ValueError, match="knows only WRITTEN and WPALLOWED"):
            t.scan(Masks(required=Category.PRESENT))
        with pytest.raises(ValueError, match="knows only"):
            t.scan(Masks(anyof=Category.SOFT_DIRTY | W))
        assert len(t.scan(Masks(anyof=W, excluded=W)).regions) == 0   # matches nothing


def nmaps() -> int:
    with open("/proc/self/maps") as f:
        return sum(1 for _ in f)


def test_mapping_estimate_matches_the_kernel():
    """stats()["mappings"] (what the budget is checked against) follows the
    kernel's own count through writes, collects with max_pages and resets.

    The tracked pages sit between two PROT_NONE guard pages of their own
    mapping: a written edge page would otherwise merge with whatever the kernel
    happened to map next to it, and the count would depend on the layout."""
    outer = pagescan.allocate(514 * PS)
    assert _libc.mprotect(outer.address, PS, 0) == 0                  # PROT_NONE
    assert _libc.mprotect(outer.address + 513 * PS, PS, 0) == 0
    mem = memoryview(outer)[PS: 513 * PS]
    arr = np.frombuffer(mem, dtype=np.uint8)
    with track(mem) as t:
        base = nmaps() - t._backend.stats()["mappings"]
        arr[10 * PS: 20 * PS] = 1                # one run
        arr[100 * PS: 300 * PS: 2 * PS] = 1      # 100 isolated pages
        arr[511 * PS] = 1                        # at the range's edge, beside the guard
        assert t._backend.stats()["mappings"] == nmaps() - base == 2 + 200 + 1
        t.collect(max_pages=60)                  # cuts the isolated pages
        assert t._backend.stats()["mappings"] == nmaps() - base
        t.reset(start=t.start + 200 * PS, end=t.start + 250 * PS)
        assert t._backend.stats()["mappings"] == nmaps() - base
        t.collect()
        assert t._backend.stats()["mappings"] == nmaps() - base == 0
    del arr
    mem.release()
    close(outer)


def test_multi_page_write_and_numpy_views(buf):
    arr = np.frombuffer(buf, dtype=np.uint64)
    with track(buf) as t:
        arr[PS // 8 * 10: PS // 8 * 13] = 7     # one vectorized store over 3 pages
        straddle = np.frombuffer(buf, dtype=np.uint8)
        straddle[20 * PS - 2: 20 * PS + 2] = 9   # across a page boundary
        assert pages_of(t.written(), buf.address) == {10, 11, 12, 19, 20}
        assert int(arr[PS // 8 * 12]) == 7
    del arr, straddle


# ------------------------------------------------------------------ what is refused


def test_read_only_and_executable_memory_are_refused():
    m = mmap.mmap(-1, 4 * PS, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    addr = pagescan.Memory.address.fget(m)  # type: ignore[attr-defined]
    try:
        assert _libc.mprotect(addr, 4 * PS, mmap.PROT_READ) == 0
        with pytest.raises(RangeError, match="read-write, non-executable"):
            track(addr, 4 * PS)
        assert _libc.mprotect(addr, 4 * PS, 7) == 0           # rwx
        with pytest.raises(RangeError, match="rwx"):
            track(addr, 4 * PS)
        assert _libc.mprotect(addr, 4 * PS, 3) == 0
    finally:
        m.close()


def test_unmapped_memory_is_refused(buf):
    hole = mmap.mmap(-1, 3 * PS, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    addr = pagescan.Memory.address.fget(hole)  # type: ignore[attr-defined]
    assert _libc.munmap(addr + PS, PS) == 0
    try:
        with pytest.raises(RangeError, match="not entirely mapped"):
            track(addr, 3 * PS)
        # the C side refuses it too (mincore), here below vm.mmap_min_addr: never mapped
        with pytest.raises(OSError) as info:
            h = core().mp_register(PS, 3 * PS)
            core().mp_unregister(h)
        assert info.value.errno == errno.ENOMEM
    finally:
        # fill the hole again at once: closing ``hole`` unmaps all three pages, and
        # whatever took the free page in between (the range table's state of a
        # later tracker) would be unmapped under its owner
        if _mmap_fixed_noreplace(addr + PS, PS) == addr + PS:
            hole.close()


def test_overlap_is_refused_by_the_table_too(buf):
    with track((buf.address, 16 * PS)):
        with pytest.raises(OverlapError):
            track((buf.address + 8 * PS, 16 * PS))
        b = MprotectBackend()                    # past the Tracker: the C table refuses
        with pytest.raises(OverlapError):
            b.register(buf.address + 8 * PS, buf.address + 16 * PS)


def test_the_range_table_is_bounded(buf):
    cap = core().MP_MAX_RANGES
    live = core().mp_live()
    trackers = []
    try:
        mem = pagescan.allocate((cap + 1) * PS)
        with pytest.raises(KernelError, match=f"at most {cap} ranges"):
            for i in range(cap + 1):
                trackers.append(track((mem.address + i * PS, PS)))
        assert len(trackers) == cap - live
    finally:
        for t in trackers:
            t.close()
    assert core().mp_live() == live
    mem.close()


def test_stale_handles_are_refused():
    mem = pagescan.allocate(4 * PS)
    h = core().mp_register(mem.address, mem.address + 4 * PS)
    core().mp_unregister(h)
    h2 = core().mp_register(mem.address, mem.address + 4 * PS)     # same slot, new cookie
    try:
        for call in (lambda: core().mp_unregister(h),
                     lambda: core().mp_scan(h, mem.address, mem.address + PS),
                     lambda: core().mp_arm(h, mem.address, mem.address + PS)):
            with pytest.raises(OSError) as info:
                call()
            assert info.value.errno == errno.ESTALE
        with pytest.raises(OSError) as info:
            core().mp_arm(h2, mem.address - PS, mem.address + PS)  # outside the range
        assert info.value.errno == errno.EINVAL
    finally:
        core().mp_unregister(h2)
    mem.close()


# ------------------------------------------------------------------------ close


def test_close_leaves_memory_writable(buf):
    t = track(buf)
    buf[0] = 1
    assert perms(t.start, t.end) == {"r--", "rw-"}
    t.close()
    assert perms(buf.address, buf.address + len(buf)) == {"rw-"}
    arr = np.frombuffer(buf, dtype=np.uint8)
    arr[::PS] = 5                                # every page, no handler involved
    assert int(arr[::PS].sum()) == 5 * 256
    del arr
    with pytest.raises(TrackerClosed):
        t.written()


def test_range_unmapped_while_tracked_raises():
    m = mmap.mmap(-1, 4 * PS, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    addr = pagescan.Memory.address.fget(m)  # type: ignore[attr-defined]
    t = track(addr, 4 * PS)
    m[PS] = 1
    assert _libc.munmap(addr, 4 * PS) == 0
    try:
        with pytest.raises(RangeError, match="no longer"):
            t.collect()
    finally:
        t.close()                                # harmless: nothing left to unprotect
    # map the hole again so that closing ``m`` unmaps nothing else
    if _mmap_fixed_noreplace(addr, 4 * PS) == addr:
        m.close()


# --------------------------------------- a mapping replaced at the tracked address
# (issue 12 item 13): the tracker changes the protection of its own mapping only


class _Replaced:
    """8 pages tracked by mprotect, page 1 written; then the mapping is unmapped and
    another mapped at the same address (``replace``). Cleans up after itself: the
    other mapping is unmapped and the hole filled again for ``mem`` to close."""

    def __init__(self) -> None:
        self.mem = mmap.mmap(-1, 8 * PS, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self.addr = pagescan.Memory.address.fget(self.mem)  # type: ignore[attr-defined]
        self.end = self.addr + 8 * PS
        self.tracker = track(self.addr, 8 * PS)
        self.mem[PS] = 1                             # DIRTY: a collect re-protects it
        self.files: list = []

    def replace(self, prot: int, fd: int = -1, offset: int = 0, unmap: bool = True) -> None:
        if unmap:
            assert _libc.munmap(self.addr, 8 * PS) == 0
        flags = (mmap.MAP_PRIVATE | (mmap.MAP_ANONYMOUS if fd < 0 else 0) | MAP_FIXED)
        assert _libc.mmap(self.addr, 8 * PS, prot, flags, fd, offset) == self.addr

    def file(self, tmp_path, name: str, pages: int = 16) -> int:
        f = open(tmp_path / name, "w+b")
        f.truncate(pages * PS)
        self.files.append(f)
        return f.fileno()

    def close(self) -> None:
        try:
            self.tracker.close()
        finally:
            _libc.munmap(self.addr, 8 * PS)
            if _mmap_fixed_noreplace(self.addr, 8 * PS) == self.addr:
                self.mem.close()
            for f in self.files:
                f.close()


@pytest.fixture
def replaced():
    r = _Replaced()
    yield r
    r.close()


def need_procmap_query() -> None:
    """collect/written/mark_written and the handler check only where the kernel has
    PROCMAP_QUERY (Linux 6.11+); before, only reset() does (tested below)."""
    require(core().mp_checks(), "the kernel has no PROCMAP_QUERY (Linux 6.11+): only "
            "reset() checks the tracked mapping")


@pytest.mark.parametrize("call", ["reset", "collect", "written", "mark_written"])
def test_a_mapping_replaced_by_an_executable_one_is_left_alone(replaced, call):
    """munmap + mmap(PROT_READ|PROT_EXEC) at the tracked address: every call raises
    RangeError and the new mapping keeps its r-x (a reset would make it r--, a
    collect the written page r--, mark_written rw-)."""
    r = replaced
    if call != "reset":
        need_procmap_query()
    r.replace(PROT_READ | PROT_EXEC)
    do = {"reset": r.tracker.reset, "collect": r.tracker.collect,
          "written": r.tracker.written,
          "mark_written": lambda: r.tracker._backend.mark_written(r.addr, r.end)}[call]
    with pytest.raises(RangeError, match="no longer the tracked mapping: it was unmapped "
                                         "or replaced"):
        do()
    assert perms(r.addr, r.end) == {"r-x"}
    r.tracker.close()                                # forgets it, leaves it alone
    assert perms(r.addr, r.end) == {"r-x"}


def test_mmap_fixed_replacing_the_tracked_range_is_seen_too(replaced):
    need_procmap_query()
    replaced.replace(PROT_READ | PROT_EXEC, unmap=False)     # MAP_FIXED replaces in one call
    with pytest.raises(RangeError, match="no longer the tracked mapping"):
        replaced.tracker.collect()
    assert perms(replaced.addr, replaced.end) == {"r-x"}


def test_a_mapping_replaced_by_a_file_mapping_is_left_alone(replaced, tmp_path):
    """A read-write private file mapping has a protection the tracker sets, but it is
    another mapping (a file, not anonymous memory): RangeError, still rw-."""
    need_procmap_query()
    r = replaced
    r.replace(PROT_READ | PROT_WRITE, r.file(tmp_path, "a"))
    for call in (r.tracker.reset, r.tracker.collect, r.tracker.written):
        with pytest.raises(RangeError, match="no longer the tracked mapping"):
            call()
        assert perms(r.addr, r.end) == {"rw-"}


def test_a_tracked_file_mapping_replaced_by_another_file_or_offset(tmp_path):
    """A tracked private file mapping is that file at that offset: another file, or
    the same file at another offset, is another mapping."""
    with open(tmp_path / "a", "w+b") as fa, open(tmp_path / "b", "w+b") as fb:
        for f in (fa, fb):
            f.truncate(16 * PS)
        m = mmap.mmap(fa.fileno(), 8 * PS, flags=mmap.MAP_PRIVATE)
        addr = pagescan.Memory.address.fget(m)  # type: ignore[attr-defined]
        try:
            for fd, offset, ours in ((fb.fileno(), 0, False), (fa.fileno(), 4 * PS, False),
                                     (fa.fileno(), 0, True)):
                # the tracked mapping: file a at offset 0
                assert _libc.mmap(addr, 8 * PS, PROT_READ | PROT_WRITE,
                                  mmap.MAP_PRIVATE | MAP_FIXED, fa.fileno(), 0) == addr
                t = track(addr, 8 * PS)
                m[PS] = 1
                assert _libc.mmap(addr, 8 * PS, PROT_READ | PROT_WRITE,
                                  mmap.MAP_PRIVATE | MAP_FIXED, fd, offset) == addr
                if ours:
                    # the same file at the same offset: the same mapping as far as
                    # the kernel tells (documented limit); tracking goes on
                    t.reset()
                    assert perms(addr, addr + 8 * PS) == {"r--"}
                else:
                    with pytest.raises(RangeError, match="no longer the tracked mapping"):
                        t.reset()
                    assert perms(addr, addr + 8 * PS) == {"rw-"}
                t.close()
                assert perms(addr, addr + 8 * PS) == {"rw-"}
        finally:
            m.close()


def test_a_new_anonymous_rw_mapping_is_indistinguishable(replaced):
    """The limit: anonymous private memory at the same place with a protection the
    tracker sets looks like the tracked mapping (no anon_vma in PROCMAP_QUERY or
    /proc/PID/maps). The tracker goes on tracking it; it is anonymous read-write
    memory of this process, as the tracked mapping was."""
    replaced.replace(PROT_READ | PROT_WRITE)
    replaced.tracker.reset()
    assert perms(replaced.addr, replaced.end) == {"r--"}


def test_the_check_costs_no_maps_read_where_procmap_query_works():
    p = pagescan.probe("mprotect")
    need_procmap_query()
    mem = pagescan.allocate(4 * PS)
    with track(mem) as t:
        assert t._backend._trap_checks
        t._backend.kernel.maps = None            # reset/collect must not read the maps
        t._backend.reset(t.start, t.end)
        assert len(t.collect().regions) == 0
    close(mem)
    assert p.ok


def test_without_procmap_query_reset_compares_the_maps(replaced):
    """A kernel without PROCMAP_QUERY (before 6.11, the test hook): the trap checks
    nothing, and reset() compares /proc/self/maps with the range at register."""
    r = replaced
    r.tracker.close()
    core().mp_set_checks(False)
    try:
        r.tracker = track(r.addr, 8 * PS)
        assert not r.tracker._backend._trap_checks
        r.mem[PS] = 1
        r.replace(PROT_READ | PROT_EXEC)
        with pytest.raises(RangeError, match=r"no longer the tracked mapping.*r-xp"):
            r.tracker.reset()
        assert perms(r.addr, r.end) == {"r-x"}
        r.tracker.close()                            # compares the maps too: left alone
        assert perms(r.addr, r.end) == {"r-x"}
    finally:
        core().mp_set_checks(True)


def test_a_range_split_in_many_mappings_is_checked_quickly_by_written():
    """Past 8 VMAs (16 isolated written pages: 33) a scan checks an anonymous range
    in four ioctls: the ends, and no executable or file VMA inside. An r-x mapping
    in the middle is seen by written(); a PROT_NONE page in the middle only by a
    call that would change its protection (collect, reset): never changed."""
    need_procmap_query()
    mem = pagescan.allocate(64 * PS)
    addr = mem.address
    arr = np.frombuffer(mem, dtype=np.uint8)
    t = track(mem)
    try:
        arr[::4 * PS] = 1                                   # pages 0, 4, ..., 60
        assert t._backend.stats()["mappings"] + 1 > 8
        assert _libc.mprotect(addr + 33 * PS, PS, 0) == 0   # PROT_NONE inside
        assert len(t.written()) == 16                       # quick: not seen
        with pytest.raises(RangeError, match="no longer the tracked mapping"):
            t.collect()                                     # the span 0..61 holds it
        assert perms(addr + 33 * PS, addr + 34 * PS) == {"---"}
        assert perms(addr, addr + PS) == {"rw-"}            # nothing re-protected
        assert _libc.mprotect(addr + 33 * PS, PS, 1) == 0   # PROT_READ: the tracker's
        assert _libc.mmap(addr + 21 * PS, 2 * PS, PROT_READ | PROT_EXEC,
                          mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_FIXED, -1, 0) \
            == addr + 21 * PS
        with pytest.raises(RangeError, match="no longer the tracked mapping"):
            t.written()                                     # quick: seen
        assert perms(addr + 21 * PS, addr + 23 * PS) == {"r-x"}
    finally:
        t.close()
        _libc.mprotect(addr, 64 * PS, PROT_READ | PROT_WRITE)
        del arr
        close(mem)

def test_the_maps_descriptor_closed_by_other_code_is_opened_again(replaced):
    """Other code may close every descriptor (os.closerange) and the number be taken
    by another file: the check opens /proc/self/maps again instead of asking an
    ioctl of whatever the number names now."""
    import gc

    from pagescan.kernel import LinuxKernel
    need_procmap_query()
    others = {fd for k in gc.get_objects() if isinstance(k, LinuxKernel)
              for fd in getattr(k, "_fds", {}).values()}
    ours = []
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") == f"/proc/{os.getpid()}/maps" \
                    and int(name) not in others:
                ours.append(int(name))
        except OSError:
            pass
    assert len(ours) == 1
    for fd in ours:
        os.close(fd)
    taken = [os.open("/dev/null", os.O_RDONLY) for _ in ours]   # the numbers reused
    try:
        replaced.replace(PROT_READ | PROT_EXEC)
        with pytest.raises(RangeError, match="no longer the tracked mapping"):
            replaced.tracker.collect()
        assert perms(replaced.addr, replaced.end) == {"r-x"}
    finally:
        for fd in taken:
            os.close(fd)

def test_a_write_to_a_replacing_mapping_is_not_made_writable():
    """The handler: a store to the new (r-x) mapping at a tracked address faults
    with SEGV_ACCERR in a tracked range. It is passed on (here: the default action,
    the end of the process), never unprotected: without pagescan it would end the
    process too."""
    need_procmap_query()
    code = """
        import ctypes, mmap, sys
        import pagescan
        PS = pagescan.PAGE_SIZE
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                              ctypes.c_int, ctypes.c_long]
        mem = pagescan.allocate(8 * PS)
        t = pagescan.track(mem, backend="mprotect")
        got = libc.mmap(mem.address, 8 * PS, 5, 0x22 | 0x10, -1, 0)   # r-x, MAP_FIXED
        assert got == mem.address, got
        print("replaced", flush=True)
        ctypes.memset(mem.address + PS, 1, 1)
        print("written: the r-x mapping was made writable", flush=True)
    """
    proc = run_python(code)
    assert "replaced" in proc.stdout, proc.stderr
    assert "written" not in proc.stdout
    assert proc.returncode == -signal.SIGSEGV, (proc.returncode, proc.stderr)


def test_writers_keep_running_while_trackers_come_and_go():
    """close() makes the range writable before it stops handling faults, and a
    fault already on its way when the range is retired is retried: writer
    threads never crash, and no store is lost, while trackers are created,
    collected and closed under them.

    Fixed counts synchronised by a barrier, not durations: in every cycle the
    main thread tracks the memory, then each writer fills its block twice while
    the main thread collects, and twice more while it closes the tracker. A
    fill is one memset() (ctypes releases the GIL), so the stores and their
    faults run beside the C side of arm/collect/unregister. (Writers storing
    from a Python loop until told to stop kept the GIL busy: every GIL release
    of the main thread then cost a switch interval, and 200 cycles took minutes
    on a loaded machine.)"""
    block, writers, cycles, fills = 21, 3, scaled(200, 1000), 2
    npages = block * writers
    mem = pagescan.allocate(npages * PS)
    base = mem.address
    memset = ctypes.CDLL(None).memset          # CDLL: the GIL is released during the call
    memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
    start, done = (threading.Barrier(writers + 1, timeout=120) for _ in range(2))
    errors: list[BaseException] = []

    def value(phase: int) -> int:
        return phase % 255 + 1

    def writer(k: int) -> None:
        try:
            for phase in range(2 * cycles):
                start.wait()                    # the main thread collects / closes now
                for _ in range(fills):
                    memset(base + k * block * PS, value(phase), block * PS)
                done.wait()
        except BaseException as err:            # reported below
            errors.append(err)
            start.abort()
            done.abort()

    faults0 = core().mp_stats()["faults"]
    threads = [threading.Thread(target=writer, args=(k,)) for k in range(writers)]
    for th in threads:
        th.start()
    try:
        for _ in range(cycles):
            t = track(mem)                      # every page clean
            start.wait()
            t.collect()                         # beside the writers' faults
            done.wait()
            start.wait()
            t.close()                           # beside the writers' stores
            done.wait()
            assert perms(base, base + len(mem)) == {"rw-"}
    except threading.BrokenBarrierError:
        assert errors, "a writer broke the barrier without an error"
    except BaseException:
        start.abort()                           # let the writers go
        done.abort()
        raise
    finally:
        for th in threads:
            th.join(timeout=120)
    assert not errors, errors
    # the first fills of each cycle found the pages clean: each one faulted
    assert core().mp_stats()["faults"] >= faults0 + cycles * npages
    last = bytes([value(2 * cycles - 1)]) * (npages * PS)
    assert bytes(mem) == last                   # every writer's last fill is in memory
    close(mem)


# ---------------------------------------------------------------------- threads


# ------------------------------------------------------------------ kernel writes


def test_kernel_write_fails_with_efault(buf, tmp_path):
    """read() into a clean tracked page: the kernel does not fault on it, the
    system call fails with EFAULT (documented; the uffd backend sees it)."""
    path = tmp_path / "data"
    path.write_bytes(b"k" * (4 * PS))
    with track(buf) as t:
        with open(path, "rb", buffering=0) as f:
            with pytest.raises(OSError) as info:
                f.readinto(memoryview(buf)[10 * PS: 13 * PS])
        assert info.value.errno == errno.EFAULT
        assert len(t.written()) == 0 and buf[10 * PS] == 0       # nothing was written
        # a buffer whose first page was written by the program: a short read
        buf[20 * PS] = 1
        with open(path, "rb", buffering=0) as f:
            assert f.readinto(memoryview(buf)[20 * PS: 23 * PS]) == PS
        # the workaround: mark the buffer written first
        t._backend.mark_written(t.start + 30 * PS, t.start + 33 * PS)
        with open(path, "rb", buffering=0) as f:
            assert f.readinto(memoryview(buf)[30 * PS: 33 * PS]) == 3 * PS
        assert pages_of(t.written(), buf.address) == {20, 30, 31, 32}
        assert bytes(buf[31 * PS: 31 * PS + 4]) == b"kkkk"


# ---------------------------------------------------------------- max_map_count


def test_coarsening_ladder_with_injected_enomem(buf):
    """mprotect() failing with ENOMEM (injected) makes the handler coarsen: the
    gap to a written neighbour first, then aligned blocks of 64, 512 pages."""
    with track(buf) as t:
        core().mp_inject_enomem(1)               # the page alone fails
        buf[100 * PS] = 1                        # no written neighbour: a 64-page block
        with pytest.warns(MapCountWarning, match="reported written without a write"):
            assert pages_of(t.written(), buf.address) == set(range(64, 128))
        st = t._backend.stats()
        assert st["coarsened"] == 63 and st["coarsen_events"] == 1
        t.reset()
        buf[10 * PS] = 1
        core().mp_inject_enomem(1)
        buf[14 * PS] = 1                         # fills the gap to page 10 instead
        assert pages_of(t.written(), buf.address) == {10, 11, 12, 13, 14}
        t.reset()
        core().mp_inject_enomem(2)               # the page and the 64 block fail
        buf[200 * PS] = 1
        assert pages_of(t.written(), buf.address) == set(range(0, 256))   # clamped 512
        st = t._backend.stats()
        assert st["coarsened"] == 63 + 3 + 255 and st["coarsen_events"] == 3
        assert st["error"] == 0
        with warnings.catch_warnings():
            warnings.simplefilter("error")       # warned once per tracker, not again
            assert t.collect().regions.pages() == 256
        assert len(t.written()) == 0


@pytest.mark.slow      # ~300 MiB, seconds; the injected-ENOMEM tests cover the ladder
def test_map_count_exhaustion_coarsens_never_hangs():
    """The issue's case for real: track ~300 MiB and write every other page,
    more isolated pages than vm.max_map_count allows mappings for. The tracking
    stops at its budget (a headroom below the limit, so the process can still
    allocate): no hang, no crash, every written page reported (coarsened extras
    allowed and counted), then collect(reset=True) works and the map count
    falls back."""
    limit = int(open("/proc/sys/vm/max_map_count").read())
    if limit > 300_000:
        pytest.skip(f"vm.max_map_count={limit}: exhausting it takes too much memory here")
    code = f"""
        import json, warnings, numpy as np, pagescan
        PS = pagescan.PAGE_SIZE
        def nmaps():
            return sum(1 for _ in open('/proc/self/maps'))
        n = max(300 * 256, 2 * ({limit} - nmaps()) + 8192)
        mem = pagescan.allocate(n * PS)
        arr = np.frombuffer(mem, np.uint8)
        arr[::PS] = 1
        out = {{"npages": n}}
        out["base_maps"] = nmaps()
        t = pagescan.track(mem, backend="mprotect")
        arr[::2 * PS] = 2                           # > limit/2 isolated written pages
        out["maps_at_peak"] = nmaps()
        out["limit"] = {limit}
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            got = t.written()
        out["warnings"] = [f"{{x.category.__name__}}: {{x.message}}" for x in w]
        pages = (np.asarray(got.addresses()) - mem.address) // PS
        written = np.arange(0, n, 2)
        out["missing"] = int(np.setdiff1d(written, pages).size)
        out["extra"] = int(np.setdiff1d(pages, written).size)
        out["stats"] = t._backend.stats()
        res = t.collect()
        out["collected"] = int(res.regions.pages())
        out["after_collect"] = len(t.written())
        out["maps_after_collect"] = nmaps()
        arr[1::2 * PS] = 3                          # tracking goes on
        out["second"] = int(t.written().pages())
        t.close()
        out["perms_ok"] = True
        arr[::PS] = 4
        print(json.dumps(out))
    """
    r = run_python(code, timeout=240)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    st = out["stats"]
    # it used its share, left the headroom, and its estimate is the kernel's count
    assert st["mappings"] >= st["budget"] - 2 and st["budget"] > limit // 2, out
    assert limit - out["maps_at_peak"] >= 1024, out
    assert abs(out["maps_at_peak"] - st["mappings"] - out["base_maps"]) < 50, out
    assert out["missing"] == 0, out                  # no write lost
    assert 0 < out["extra"] <= st["coarsened"], out
    assert st["error"] == 0 and st["faults"] >= out["npages"] // 2
    assert any("MapCountWarning" in w and "vm.max_map_count" in w for w in out["warnings"])
    assert out["collected"] == out["npages"] // 2 + out["extra"]
    assert out["after_collect"] == 0 and out["maps_after_collect"] < 1000
    assert out["second"] >= out["npages"] // 2


def test_real_enomem_coarsens_too():
    """With the budget out of the way, mprotect() itself fails with ENOMEM at
    vm.max_map_count: the handler coarsens on ENOMEM just the same (a ballast of
    mappings, released afterwards, gives the process room to scan again)."""
    limit = int(open("/proc/sys/vm/max_map_count").read())
    if limit > 300_000:
        pytest.skip(f"vm.max_map_count={limit}: exhausting it takes too much memory here")
    code = f"""
        import ctypes, functools, json, mmap, warnings, numpy as np, pagescan
        from pagescan import _core
        PS = pagescan.PAGE_SIZE
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        def nmaps():
            return sum(1 for _ in open('/proc/self/maps'))
        n = max(300 * 256, 2 * ({limit} - nmaps()) + 8192)
        mem = pagescan.allocate(n * PS)
        arr = np.frombuffer(mem, np.uint8)
        arr[::PS] = 1
        B = 8192
        ballast = pagescan.allocate(B * PS)
        release = functools.partial(libc.mprotect, ballast.address, B * PS, 3)
        t = pagescan.track(mem, backend="mprotect")
        _core.mp_set_budget(1 << 62)
        for i in range(0, B, 2):
            libc.mprotect(ballast.address + i * PS, PS, mmap.PROT_READ)
        arr[::2 * PS] = 2                           # runs into vm.max_map_count
        release()
        st = t._backend.stats()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            got = t.written()
        pages = (np.asarray(got.addresses()) - mem.address) // PS
        written = np.arange(0, n, 2)
        out = {{"stats": st, "npages": n,
               "missing": int(np.setdiff1d(written, pages).size),
               "extra": int(np.setdiff1d(pages, written).size)}}
        res = t.collect()
        out["after_collect"] = len(t.written())
        t.close()
        print(json.dumps(out))
    """
    r = run_python(code, timeout=240)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    st = out["stats"]
    assert st["coarsen_events"] > 0 and st["error"] == 0, out
    assert out["missing"] == 0 and 0 < out["extra"] <= st["coarsened"], out
    assert out["after_collect"] == 0


# No way out: every mprotect() the fault handler makes fails with ENOMEM, as at
# vm.max_map_count with not one mapping to spare. (Reaching the real limit
# here races with the interpreter freeing arenas, which frees a mapping; the
# real limit is exercised by the coarsening tests above.)
_EXHAUST = """
    import sys, pagescan
    PS = pagescan.PAGE_SIZE
    K = 16
    mem = pagescan.allocate(3 * K * PS)
    t = pagescan.track((mem.address + K * PS, K * PS), backend="mprotect")
    mv = memoryview(mem)
    pagescan._core.mp_inject_enomem(1 << 30)
    sys.stdout.write("at the limit\\n"); sys.stdout.flush()
"""


def test_map_count_with_no_way_out_fails_clearly_and_never_hangs():
    """When not even the whole range can be unprotected, the handler writes a
    message naming vm.max_map_count and passes the fault on: the process ends
    (SIGSEGV) instead of looping on the fault forever."""
    code = _EXHAUST + """
    mv[K * PS + 5] = 1          # the tracked write that cannot be given access
    print("survived")
    """
    r = run_python(code, timeout=120)
    assert "at the limit" in r.stdout, r.stderr
    assert "survived" not in r.stdout
    assert r.returncode == -signal.SIGSEGV, (r.returncode, r.stderr)
    assert "vm.max_map_count" in r.stderr and "mprotect backend" in r.stderr, r.stderr


def test_map_count_failure_with_faulthandler_shows_the_traceback():
    code = _EXHAUST + """
    def tracked_write():
        mv[K * PS + 5] = 1
    tracked_write()
    """
    r = run_python(code, "-X", "faulthandler", timeout=120)
    assert "at the limit" in r.stdout, r.stderr
    assert "vm.max_map_count" in r.stderr
    assert "Fatal Python error: Segmentation fault" in r.stderr
    assert "tracked_write" in r.stderr
    assert r.returncode == -signal.SIGSEGV


_RECOVER_C = r"""
#include <setjmp.h>
#include <signal.h>
#include <string.h>
static sigjmp_buf jb;
static volatile sig_atomic_t armed;
static void handler(int sig, siginfo_t *si, void *ctx) {
    (void)si; (void)ctx;
    if (armed) { armed = 0; siglongjmp(jb, 1); }
    signal(sig, SIG_DFL);
}
int recover_install(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_sigaction = handler;
    sa.sa_flags = SA_SIGINFO;
    sigemptyset(&sa.sa_mask);
    return sigaction(SIGSEGV, &sa, 0);
}
int recover_write(volatile char *p, char v) {
    if (sigsetjmp(jb, 1)) return -1;
    armed = 1;
    *p = v;
    armed = 0;
    return 0;
}
"""


def test_unhandled_fault_is_a_sticky_error_when_the_process_survives(tmp_path):
    """A previous SIGSEGV handler that recovers (siglongjmp) from the write the
    mprotect handler could not handle: the next scan() raises KernelError
    naming vm.max_map_count."""
    cc = shutil.which(os.environ.get("CC", "cc"))
    if cc is None:
        pytest.skip("no C compiler to build the recovering handler")
    src = tmp_path / "recover.c"
    so = tmp_path / "recover.so"
    src.write_text(_RECOVER_C)
    subprocess.run([cc, "-O2", "-shared", "-fPIC", "-o", str(so), str(src)], check=True)
    code = f"""
        import ctypes, pagescan
        from pagescan import _core
        lib = ctypes.CDLL({str(so)!r})
        lib.recover_write.argtypes = [ctypes.c_void_p, ctypes.c_char]
        assert lib.recover_install() == 0
        PS = pagescan.PAGE_SIZE
        mem = pagescan.allocate(8 * PS)
        t = pagescan.track(mem, backend="mprotect")
        assert lib.recover_write(mem.address + PS, b"x") == 0      # handled
        _core.mp_inject_enomem(1000)                                # every mprotect fails
        rc = lib.recover_write(mem.address + 3 * PS, b"y")
        _core.mp_inject_enomem(0)
        print("recovered", rc)
        try:
            t.written()
        except pagescan.KernelError as err:
            print("KernelError", err.errno, err)
        t.close()
        mem[5 * PS] = 1
        print("done")
    """
    r = run_python(code, timeout=60)
    assert "recovered -1" in r.stdout, r.stdout + r.stderr
    assert f"KernelError {errno.ENOMEM}" in r.stdout and "vm.max_map_count" in r.stdout
    assert "mprotect backend could not give write access back" in r.stderr
    assert "done" in r.stdout and r.returncode == 0


# ---------------------------------------------------------------- faulthandler


_CRASH = """
    import ctypes, faulthandler, pagescan
    PS = pagescan.PAGE_SIZE
    mem = pagescan.allocate(16 * PS)
    t = pagescan.track(mem, backend="mprotect")
    mem[3 * PS] = 1                              # a tracked write: handled
    assert len(t.written()) == 1
    print("tracked write ok", flush=True)
    def genuine_crash():
        {crash}
    genuine_crash()
    print("survived")
"""


@pytest.mark.parametrize("crash", ["ctypes.string_at(0)", "faulthandler._sigsegv()",
                                   "faulthandler._read_null()"])
def test_faulthandler_still_reports_genuine_crashes(crash):
    r = run_python(_CRASH.format(crash=crash), "-X", "faulthandler", timeout=60)
    assert "tracked write ok" in r.stdout, r.stderr
    assert "survived" not in r.stdout
    assert "Fatal Python error: Segmentation fault" in r.stderr, r.stderr
    assert "genuine_crash" in r.stderr
    assert r.returncode == -signal.SIGSEGV


def test_genuine_crash_without_faulthandler_dies_with_sigsegv():
    r = run_python(_CRASH.format(crash="ctypes.string_at(0)"), timeout=60)
    assert "tracked write ok" in r.stdout, r.stderr
    assert r.returncode == -signal.SIGSEGV


def test_faulthandler_enabled_after_tracking():
    """A handler installed later sees the tracking faults first; creating a
    tracker puts the mprotect handler back on top (chaining to faulthandler)."""
    code = """
        import faulthandler, pagescan
        from pagescan import _core
        PS = pagescan.PAGE_SIZE
        mem = pagescan.allocate(16 * PS)
        t = pagescan.track(mem, backend="mprotect")
        faulthandler.enable()
        print("on top after enable:", _core.mp_installed())
        t2 = pagescan.track(pagescan.allocate(PS), backend="mprotect")
        print("on top after a new tracker:", _core.mp_installed())
        mem[2 * PS] = 1
        print("written", t.written().pages(), flush=True)
        def genuine_crash():
            faulthandler._read_null()
        genuine_crash()
    """
    r = run_python(code, timeout=60)
    assert "on top after enable: False" in r.stdout
    assert "on top after a new tracker: True" in r.stdout
    assert "written 1" in r.stdout, r.stderr
    assert "Fatal Python error: Segmentation fault" in r.stderr
    assert r.returncode == -signal.SIGSEGV


# ------------------------------------------------------------------------ fork


def test_fork_child_memory_is_untracked_and_writable(buf):
    """The child inherits the handler, not the tracking: its copy of the range
    is writable again (pthread_atfork), the inherited tracker raises
    TrackerClosed, and a new tracker works in the child. The parent's tracking
    is unaffected."""
    with track(buf) as t:
        buf[PS] = 1
        pid = os.fork()
        if pid == 0:                             # child: report through the exit code
            code = 0
            try:
                try:
                    t.written()
                    code = 1
                except TrackerClosed:
                    pass
                if perms(t.start, t.end) != {"rw-"}:
                    code = 2
                arr = np.frombuffer(buf, dtype=np.uint8)
                arr[::PS] = 9                    # every page, no fault handling
                if core().mp_live() != 0:
                    code = 3
                t.close()
                with track(buf) as tc:
                    buf[3 * PS] = 1
                    if pages_of(tc.written(), buf.address) != {3}:
                        code = 4
                del arr
            except BaseException:
                code = 5
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert pages_of(t.written(), buf.address) == {1}
        assert buf[5 * PS] == 0                  # the child's writes were its own
        buf[9 * PS] = 1
        assert pages_of(t.written(), buf.address) == {1, 9}


def test_no_tracker_leaks():
    from pagescan import tracker
    assert not [t for t in tracker._live if not t.closed]
    assert core().mp_live() == 0


# ------------------------------------------------ signals, fork (issue 12: 9, 10, 11)


_ALARM_C = r"""
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/time.h>
static uint8_t *base;
static size_t npages, psz;
static uint64_t fired, done;
uint64_t counts[256];
/* an asynchronous signal handler that stores into tracked memory */
static void on_alarm(int sig) {
    uint64_t n = __atomic_fetch_add(&fired, 1, __ATOMIC_SEQ_CST) % npages;
    __atomic_add_fetch((uint64_t *)(base + n * psz), 1, __ATOMIC_SEQ_CST);
    __atomic_add_fetch(&counts[n], 1, __ATOMIC_SEQ_CST);
    __atomic_add_fetch(&done, 1, __ATOMIC_SEQ_CST);
    (void)sig;
}
int alarm_start(void *addr, size_t pages, size_t page_size, long usec) {
    struct sigaction sa;
    struct itimerval it;
    base = addr; npages = pages; psz = page_size;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_alarm;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    if (sigaction(SIGALRM, &sa, NULL) < 0) return -1;
    it.it_interval.tv_sec = 0; it.it_interval.tv_usec = usec;
    it.it_value = it.it_interval;
    return setitimer(ITIMER_REAL, &it, NULL);
}
/* disarm the timer, then wait for a handler still running (on any thread) */
int alarm_stop(void) {
    struct itimerval it;
    memset(&it, 0, sizeof(it));
    if (setitimer(ITIMER_REAL, &it, NULL) < 0) return -1;
    while (__atomic_load_n(&done, __ATOMIC_SEQ_CST) != __atomic_load_n(&fired, __ATOMIC_SEQ_CST))
        ;
    return 0;
}
uint64_t alarm_fired(void) { return __atomic_load_n(&fired, __ATOMIC_SEQ_CST); }
"""


def test_signal_handler_writing_tracked_memory_while_collecting(tmp_path):
    """Issue 12 item 9: SIGALRM every 20 µs, its (C) handler incrementing a counter
    in tracked memory, while the same (only) thread collects. The kernel runs the
    handler wherever the thread is: in the middle of a collect that owns the page
    (COLLECTING), or of the SIGSEGV handler that owns it (UNPROT). Unless those
    sections block asynchronous signals, the nested SIGSEGV handler waits for its
    own thread for ever (or the nested fault, with SIGSEGV blocked, kills the
    process). Must finish, and lose no write: every page whose store counter
    changed between two collects is reported by the next collect or the one after
    (a store during a collect, after its reset of that page)."""
    cc = shutil.which(os.environ.get("CC", "cc"))
    if cc is None:
        pytest.skip("no C compiler to build the signal handler")
    src, so = tmp_path / "alarm.c", tmp_path / "alarm.so"
    src.write_text(_ALARM_C)
    subprocess.run([cc, "-O2", "-shared", "-fPIC", "-o", str(so), str(src)], check=True)
    # SIGALRM is process-directed: blocked before numpy starts its OpenBLAS threads
    # (they inherit the mask), so that the handler runs on the collecting thread only
    code = f"""
        import signal
        signal.pthread_sigmask(signal.SIG_BLOCK, {{signal.SIGALRM}})
        import ctypes, numpy as np, pagescan
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {{signal.SIGALRM}})
        lib = ctypes.CDLL({str(so)!r})
        lib.alarm_start.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t,
                                    ctypes.c_long]
        lib.alarm_fired.restype = ctypes.c_uint64
        PS, N = pagescan.PAGE_SIZE, 64
        mem = pagescan.allocate(N * PS)
        t = pagescan.track(mem, backend="mprotect")
        counts = np.ctypeslib.as_array((ctypes.c_uint64 * 256).in_dll(lib, "counts"))[:N]

        def pages(result):
            return {{(s - mem.address) // PS + k for s, e, _ in result.regions
                    for k in range((e - s) // PS)}}

        reported, changed, prev = [], [], counts.copy()
        assert lib.alarm_start(mem.address, N, PS, 20) == 0
        try:
            for _ in range({scaled(150, 600)}):
                r = t.collect(reset=True)
                signal.pthread_sigmask(signal.SIG_BLOCK, {{signal.SIGALRM}})
                cur = counts.copy()
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {{signal.SIGALRM}})
                reported.append(pages(r))
                changed.append(set(np.flatnonzero(cur != prev).tolist()))
                prev = cur
        finally:
            lib.alarm_stop()
        reported.append(pages(t.collect(reset=True)))
        lost = sum(len(changed[k] - reported[k] - reported[k + 1])
                   for k in range(len(changed)))
        stored = int(np.frombuffer(mem, dtype=np.uint64)[::PS // 8].sum())
        print("fired", lib.alarm_fired(), "stored", stored, "counted", int(counts.sum()),
              "lost", lost, "faults", t.stats()["faults"], flush=True)
        t.close()
    """
    r = run_python(code, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    words = r.stdout.split()
    fired, stored, counted, lost = (int(words[words.index(k) + 1])
                                    for k in ("fired", "stored", "counted", "lost"))
    assert fired > 0 and stored == counted == fired, r.stdout
    assert lost == 0, r.stdout


@pytest.mark.parametrize("how", ["faulthandler.disable()",
                                 "signal.signal(signal.SIGSEGV, signal.SIG_DFL)"])
@pytest.mark.parametrize("call", ["t.written()", "t.collect()", "t.reset()"])
def test_replaced_sigsegv_handler_is_put_back_on_top(how, call):
    """Issue 12 item 10: faulthandler.disable() (or anyone's sigaction) removes the
    mprotect handler; a write to a clean tracked page would then kill the
    process. reset/scan (written, collect) put it back on top, chaining to the
    handler in force (documented: restored, not an error)."""
    code = f"""
        import faulthandler, signal, pagescan
        from pagescan import _core
        faulthandler.enable()
        PS = pagescan.PAGE_SIZE
        mem = pagescan.allocate(8 * PS)
        t = pagescan.track(mem, backend="mprotect")
        {how}
        print("installed after removal:", _core.mp_installed())
        {call}
        print("installed after the call:", _core.mp_installed(), flush=True)
        mem[2 * PS] = 7
        print("written", sorted((s - mem.address) // PS for s, e, _ in t.written()))
        t.close()
    """
    r = run_python(code, timeout=60)
    assert "installed after removal: False" in r.stdout, r.stdout + r.stderr
    assert "installed after the call: True" in r.stdout, r.stdout + r.stderr
    assert "written [2]" in r.stdout, r.stdout + r.stderr
    assert r.returncode == 0, r.stderr


def test_fork_while_another_thread_holds_the_table_lock():
    """Issue 12 item 11: fork() while another thread is inside track()/close()
    (holding the range table's lock, or a tracker's own lock): the child's copy
    of the lock stays held for good. The lock is made anew in the child: each
    child tracks and closes within the timeout, and the inherited tracker raises
    TrackerClosed instead of waiting for a lock that nobody will release."""
    code = """
        import os, threading, pagescan
        from pagescan.backends import mprotect
        PS = pagescan.PAGE_SIZE
        mem = pagescan.allocate(8 * PS)
        t = pagescan.track(mem, backend="mprotect")
        held, done = threading.Event(), threading.Event()
        def holder():
            with mprotect._table_lock, t._backend._lock:
                held.set()
                done.wait()
        th = threading.Thread(target=holder)
        th.start()
        held.wait()
        kids = []
        for _ in range(5):
            pid = os.fork()
            if pid == 0:
                code = 0
                try:
                    try:
                        t.written()
                        code = 1
                    except pagescan.TrackerClosed:
                        pass
                    m = pagescan.allocate(4 * PS)
                    with pagescan.track(m, backend="mprotect") as tc:
                        m[PS] = 1
                        if len(tc.written()) != 1:
                            code = 2
                finally:
                    os._exit(code)
            kids.append(pid)
        codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in kids]
        done.set()
        th.join()
        t.close()
        print("children", codes)
    """
    r = run_python(code, timeout=120)
    assert "children [0, 0, 0, 0, 0]" in r.stdout, r.stdout + r.stderr
