"""The uffd backend and the Tracker API, on this machine's real kernel."""

from __future__ import annotations

import errno
import mmap
import os
import warnings

import numpy as np
import pytest

import pagescan
from pagescan import Category, Masks
from pagescan.errors import OverlapError, RangeError, TrackerClosed

PS = pagescan.PAGE_SIZE
pytestmark = [pytest.mark.kernel, pytest.mark.usefixtures("uffd_ok")]


def pages_of(regions, base=0):
    """The set of page indexes (relative to base) covered by regions."""
    out = set()
    for s, e, _ in regions:
        out.update(range((s - base) // PS, (e - base) // PS))
    return out


@pytest.fixture
def buf():
    mem = pagescan.allocate(256 * PS)
    yield mem
    close(mem)


def close(mem):
    """Unmap, unless a numpy view still holds it (then the GC does it later)."""
    try:
        mem.close()
    except BufferError:
        pass


# ---------------------------------------------------------------- basic tracking


def test_untouched_pages_never_read_as_written(buf):
    buf[:] = b"\1" * len(buf)           # populate everything before arming
    with pagescan.track(buf, backend="uffd") as t:
        assert t.backend == "uffd"
        assert len(t.written()) == 0
        arr = np.frombuffer(buf, dtype=np.uint8)
        _ = arr[::PS].sum()             # reads are not writes
        assert len(t.written()) == 0


def test_unpopulated_pages_never_read_as_written(buf):
    with pagescan.track(buf) as t:      # nothing was ever faulted in
        assert len(t.written()) == 0
        assert t.written().pages() == 0


def test_writes_are_reported_exactly(buf):
    with pagescan.track(buf) as t:
        for i in (0, 1, 2, 7, 100, 255):
            buf[i * PS + 123] = 1
        assert pages_of(t.written(), buf.address) == {0, 1, 2, 7, 100, 255}
        assert list(t.written()) == [(buf.address, buf.address + 3 * PS, Category.WRITTEN),
                                     (buf.address + 7 * PS, buf.address + 8 * PS, 2),
                                     (buf.address + 100 * PS, buf.address + 101 * PS, 2),
                                     (buf.address + 255 * PS, buf.address + 256 * PS, 2)]


def test_collect_resets_atomically_and_reset_clears(buf):
    with pagescan.track(buf) as t:
        buf[5 * PS] = 1
        res = t.collect()
        assert pages_of(res.regions, buf.address) == {5}
        assert res.walk_end == t.end
        assert len(t.written()) == 0
        assert len(t.collect().regions) == 0
        buf[6 * PS] = 1
        assert len(t.collect(reset=False).regions) == 1
        assert len(t.written()) == 1        # reset=False left it
        t.reset()
        assert len(t.written()) == 0


def test_collect_max_pages_resumes_without_loss(buf):
    with pagescan.track(buf) as t:
        written = {3, 4, 5, 9, 50, 51, 200}
        for i in written:
            buf[i * PS] = 1
        seen: list[int] = []
        start = t.start
        while True:
            res = t.collect(max_pages=2, start=start)
            got = sorted(pages_of(res.regions, buf.address))
            assert len(got) <= 2
            seen += got
            if res.walk_end >= t.end:
                break
            start = res.walk_end
        assert sorted(seen) == sorted(written)
        assert len(t.written()) == 0


def test_reset_of_a_subrange(buf):
    with pagescan.track(buf) as t:
        for i in (1, 10, 20):
            buf[i * PS] = 1
        t.reset(start=t.start + 8 * PS, end=t.start + 16 * PS)
        assert pages_of(t.written(), buf.address) == {1, 20}


def test_scan_with_masks_filters_in_the_kernel(buf):
    buf[0:PS] = b"\1" * PS              # present before arming
    with pagescan.track(buf) as t:
        buf[2 * PS] = 1
        present = t.scan(Masks(required=Category.PRESENT, return_mask=Category.PRESENT))
        assert pages_of(present.regions, buf.address) == {0, 2}
        clean_present = t.scan(Masks(required=Category.PRESENT, excluded=Category.WRITTEN,
                                     return_mask=0))
        assert pages_of(clean_present.regions, buf.address) == {0}
        every = t.scan()
        assert every.regions.pages() == 256
        assert all(c & Category.WPALLOWED for _, _, c in every.regions)
        limited = t.scan(max_regions=1)
        assert len(limited.regions) == 1 and limited.walk_end < t.end


def test_many_regions_past_the_bounce_buffer():
    mem = pagescan.allocate(4096 * PS)
    with pagescan.track(mem) as t:
        arr = np.frombuffer(mem, dtype=np.uint8)
        arr[:: 2 * PS] = 1                  # 2048 isolated pages: > 512 regions
        res = t.scan(Masks(required=Category.WRITTEN, return_mask=Category.WRITTEN))
        assert len(res.regions) == 2048
        assert res.walk_end == t.end        # not the kernel's stale walk_end
        col = t.collect()
        assert len(col.regions) == 2048 and col.walk_end == t.end
        assert len(t.written()) == 0
    arr = None  # drop the numpy view so the mapping can be closed
    close(mem)


# --------------------------------------------------------------- what can be tracked


def test_track_numpy_array_offsets_and_partial_page_warning():
    backing = pagescan.allocate(64 * PS)
    arr = np.frombuffer(backing, dtype=np.uint8)[100: 100 + 10 * PS]
    with pytest.warns(pagescan.PartialPageWarning):
        t = pagescan.track(arr)
    with t:
        assert t.start == backing.address and t.end == backing.address + 11 * PS
        arr[0] = 1
        arr[5 * PS] = 1
        assert t.written_offsets() == [(0, PS - 100), (5 * PS - 100, 6 * PS - 100)]
        arr[-1] = 1
        # the last page is shared: clipped at the object's end
        assert t.written_offsets()[-1] == (10 * PS - 100, 10 * PS)
    arr = None  # drop the numpy view so the mapping can be closed
    close(backing)


def test_track_aligned_objects_do_not_warn():
    for obj in (pagescan.allocate(8 * PS),
                mmap.mmap(-1, 8 * PS, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with pagescan.track(obj) as t:
                obj[3 * PS] = 7
                assert t.written_offsets() == [(3 * PS, 4 * PS)]
        obj.close()


def test_track_address_length_pair(buf):
    with pagescan.track((buf.address, 16 * PS)) as t:
        buf[PS] = 1
        buf[20 * PS] = 1                    # outside: not tracked
        assert pages_of(t.written(), buf.address) == {1}
    with pagescan.track(buf.address, 16 * PS) as t:
        assert t.length == 16 * PS


def test_bytearray_is_pinned_while_tracked():
    ba = bytearray(20 * PS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pagescan.PartialPageWarning)
        t = pagescan.track(ba)
    with t:
        with pytest.raises(BufferError):
            ba.extend(b"x")                 # cannot move under the tracker
        ba[5 * PS] = 1
        assert any(s <= t.object_address + 5 * PS < e for s, e, _ in t.written())
    ba.extend(b"x")                         # released on close


# -------------------------------------------------------------------- bad input


def test_bad_input_raises_specific_errors(buf):
    with pytest.raises(RangeError, match="not page-aligned"):
        pagescan.track(buf.address + 1, PS)
    with pytest.raises(RangeError, match="zero"):
        pagescan.track(buf.address, 0)
    with pytest.raises(RangeError, match="multiple of the page size"):
        pagescan.track(buf.address, 100)
    hole = mmap.mmap(-1, 3 * PS, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    base = pagescan.allocate(PS)  # just for an address helper
    addr = pagescan.Memory.address.fget(hole)  # type: ignore[attr-defined]
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.munmap(ctypes.c_void_p(addr + PS), PS) == 0
    with pytest.raises(RangeError, match="not entirely mapped"):
        pagescan.track(addr, 3 * PS)
    with pytest.raises(TypeError, match="read-only"):
        pagescan.track(b"immutable bytes")
    with pytest.raises(TypeError, match="buffer-protocol"):
        pagescan.track(3.5)
    base.close()


def test_unknown_backend_name(buf):
    with pytest.raises(ValueError, match="unknown backend 'nonesuch'"):
        pagescan.track(buf, backend="nonesuch")


def test_bad_ranges_and_limits_on_a_live_tracker(buf):
    with pagescan.track(buf) as t:
        with pytest.raises(RangeError, match="outside this tracker"):
            t.scan(start=t.start - PS)
        with pytest.raises(RangeError, match="outside this tracker"):
            t.collect(end=t.end + PS)
        with pytest.raises(RangeError, match="not page-aligned"):
            t.reset(start=t.start + 1)
        with pytest.raises(RangeError, match="empty"):
            t.written(start=t.start + PS, end=t.start + PS)
        with pytest.raises(ValueError, match="max_pages must be >= 0"):
            t.collect(max_pages=-1)
        with pytest.raises(ValueError, match="max_pages must be <="):
            t.collect(max_pages=1 << 70)
        with pytest.raises(ValueError, match="max_regions must be >= 1"):
            t.scan(max_regions=0)
        with pytest.raises(TypeError, match="masks must be"):
            t.scan(masks=0x2)
        with pytest.raises(TypeError, match="max_pages must be an int"):
            t.collect(max_pages="10")


def test_closed_tracker_raises_and_memory_stays_usable(buf):
    t = pagescan.track(buf)
    buf[0] = 1
    t.close()
    t.close()                               # twice is harmless
    assert t.closed
    for call in (t.written, t.collect, t.reset, t.scan):
        with pytest.raises(TrackerClosed):
            call()
    buf[PS] = 2                             # still writable, no fault handling needed
    assert buf[PS] == 2
    with pagescan.track(buf) as t2:         # the range can be tracked again
        buf[2 * PS] = 1
        assert pages_of(t2.written(), buf.address) == {2}


def test_overlapping_trackers_are_refused(buf):
    with pagescan.track((buf.address, 16 * PS)):
        with pytest.raises(OverlapError, match="overlaps"):
            pagescan.track((buf.address + 8 * PS, 16 * PS))
        with pagescan.track((buf.address + 16 * PS, 16 * PS)) as t2:  # adjacent is fine
            assert t2.length == 16 * PS


def test_range_unmapped_while_tracked_raises():
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    m = mmap.mmap(-1, 4 * PS, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    addr = pagescan.Memory.address.fget(m)  # type: ignore[attr-defined]
    t = pagescan.track(addr, 4 * PS)
    # replace the memory under the tracker with a fresh, unregistered mapping
    MAP_FIXED = 0x10
    libc.mmap.restype = ctypes.c_void_p
    r = libc.mmap(ctypes.c_void_p(addr), 4 * PS, 3, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
                  | MAP_FIXED, -1, 0)
    assert r == addr
    with pytest.raises(RangeError, match="unmapped or remapped"):
        t.written()
    t.close()


# --------------------------------------------------------------------------- THP


def _thp_enabled() -> bool:
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            return "[never]" not in f.read()
    except OSError:
        return False


@pytest.mark.parametrize("thp", [False, True])
def test_thp_choice(thp):
    if thp and not _thp_enabled():
        pytest.skip("transparent huge pages are disabled on this system")
    huge = 2 << 20
    mem = pagescan.allocate(3 * huge, thp=True)
    base = (mem.address + huge - 1) // huge * huge
    off = base - mem.address
    with pagescan.track(mem, thp=thp) as t:
        # free the page table of one aligned 2 MiB block, then write one byte in it:
        # with THP allowed, the fault brings a whole huge page.
        mem.madvise(mmap.MADV_DONTNEED, off, huge)
        t.reset()
        mem[off + 5 * PS] = 1
        written = t.written()
        if thp:
            assert written.pages() in (1, 512)      # 512 when a huge page was available
        else:
            assert list(written) == [(base + 5 * PS, base + 6 * PS, Category.WRITTEN)]
    mem.close()


# ----------------------------------------------------------------- kernel writes


def test_kernel_write_readinto_is_seen(buf, tmp_path):
    path = tmp_path / "data"
    path.write_bytes(b"k" * (3 * PS))
    with pagescan.track(buf) as t:
        with open(path, "rb", buffering=0) as f:
            n = f.readinto(memoryview(buf)[10 * PS: 13 * PS])
        assert n == 3 * PS
        assert pages_of(t.written(), buf.address) == {10, 11, 12}


# --------------------------------------------------------------------------- fork


def test_fork_child_view_is_defined(buf):
    with pagescan.track(buf) as t:
        buf[PS] = 1
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:                        # child: report through the exit code
            code = 0
            try:
                try:
                    t.written()
                    code = 1                # must have raised
                except TrackerClosed:
                    pass
                t.close()                   # harmless in the child
                with pagescan.track(buf) as tc:     # a fresh tracker works in the child
                    buf[3 * PS] = 1
                    if pages_of(tc.written(), buf.address) != {3}:
                        code = 2
            except BaseException:
                code = 3
            os._exit(code)
        os.close(w)
        os.close(r)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        # the parent's tracking is unaffected by the fork and by the child's writes
        assert pages_of(t.written(), buf.address) == {1}
        buf[9 * PS] = 1                     # copy-on-write break after fork is a write
        assert pages_of(t.written(), buf.address) == {1, 9}


# ------------------------------------------------------------------------ threads


# ------------------------------------------------------------------------- probe


def test_probe_reports_features():
    p = pagescan.probe("uffd")
    assert p.ok and p.reason == ""
    assert int(p.details["features"], 16) & (1 << 15)   # WP_ASYNC granted


@pytest.mark.parametrize("err,text", [
    (errno.ENOSYS, "CONFIG_USERFAULTFD"),
    (errno.EPERM, "refused"),
])
def test_probe_names_the_cause_of_userfaultfd_failures(monkeypatch, err, text):
    from pagescan import kernel
    from pagescan.backends import uffd

    def fail(flags):
        raise OSError(err, os.strerror(err))
    monkeypatch.setattr(kernel.impl, "uffd_open", fail)
    p = uffd.UffdBackend.probe()
    assert not p.ok and text in p.reason


def test_probe_eperm_with_sysctl_zero_names_the_sysctl(monkeypatch):
    from pagescan import kernel
    from pagescan.backends import uffd

    def fail(flags):
        raise OSError(errno.EPERM, "Operation not permitted")
    monkeypatch.setattr(kernel.impl, "uffd_open", fail)
    monkeypatch.setattr(kernel, "sysctl", lambda name: "0")
    monkeypatch.setattr(kernel, "has_capability", lambda bit: False)
    p = uffd.UffdBackend.probe()
    assert "vm.unprivileged_userfaultfd=0" in p.reason and "CAP_SYS_PTRACE" in p.reason
    monkeypatch.setattr(kernel, "has_capability", lambda bit: True)
    assert "seccomp" in uffd.UffdBackend.probe().reason


def test_probe_old_kernel_reasons(monkeypatch):
    from pagescan import kernel
    from pagescan.backends import uffd

    def api_einval(fd, features):
        raise OSError(errno.EINVAL, "Invalid argument")
    monkeypatch.setattr(kernel.impl, "uffd_api", api_einval)
    assert "needs Linux 6.7+" in uffd.UffdBackend.probe().reason
    monkeypatch.undo()

    def scan_enotty(*a, **k):
        raise OSError(errno.ENOTTY, "Inappropriate ioctl for device")
    monkeypatch.setattr(kernel.impl, "pm_scan", scan_enotty)
    r = uffd.UffdBackend.probe().reason
    assert "PAGEMAP_SCAN" in r and "6.7+" in r


def test_probe_without_proc(monkeypatch):
    from pagescan.backends import uffd
    real_open = os.open

    def no_proc(path, *a, **k):
        if str(path).startswith("/proc/self/pagemap"):
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
        return real_open(path, *a, **k)
    monkeypatch.setattr(os, "open", no_proc)
    assert "/proc is not mounted" in uffd.UffdBackend.probe().reason


def test_no_tracker_leaks():
    # every tracker the tests above made was closed
    from pagescan import tracker
    assert not [t for t in tracker._live if not t.closed]
