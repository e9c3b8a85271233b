"""Tracker lifecycle: what happens to a tracker whose memory goes away, calls racing
close(), fork() while another thread holds the tracker's locks, failed track()
calls and bad arguments (issue 12 items 8, 11, 12, 15, 16)."""

from __future__ import annotations

import ctypes
import mmap
import os
import select
import signal
import sys
import threading
import warnings

import pytest

import pagescan
from pagescan import simulator as S
from pagescan import tracker as tracker_mod
from pagescan.constants import USER_ADDRESS_LIMIT
from pagescan.errors import RangeError, TrackerClosed

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


# ------------------------------------------------ item 12: calls racing close()


@pytest.mark.kernel
@pytest.mark.usefixtures("uffd_ok")
def test_collect_racing_close_only_tracker_closed_escapes() -> None:
    """Threads collect in a loop while the main thread closes the tracker, 300
    times, with a thread taking every descriptor number close() frees (/dev/null,
    as in the report): a call either completes or raises TrackerClosed; never
    EBADF, nor an ioctl on a reused descriptor. (The interleaving varies from run
    to run; the assertion holds for every one.)"""
    mem = pagescan.allocate(16 * PS)
    escaped: list[BaseException] = []
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)                  # threads interleave often (not timed)
    try:
        for _ in range(300):
            t = pagescan.track(mem, backend="uffd")
            go = threading.Barrier(4)
            stolen: list[int] = []

            running = [threading.Event(), threading.Event()]

            def collector(t: pagescan.Tracker = t, go: threading.Barrier = go,
                          running: threading.Event = running[0]) -> None:
                go.wait()
                try:
                    while True:
                        mem[0] = 1
                        t.collect()
                        t.written()
                        t.reset()
                        running.set()            # close() comes while calls go on
                except TrackerClosed:
                    return
                except BaseException as e:
                    escaped.append(e)

            def thief(t: pagescan.Tracker = t, go: threading.Barrier = go,
                      stolen: list[int] = stolen) -> None:
                go.wait()
                while not t.closed:
                    pass
                for _ in range(4):               # the numbers close() frees, at once
                    stolen.append(os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC))

            threads = [threading.Thread(target=collector, kwargs={"running": ev})
                       for ev in running]
            threads.append(threading.Thread(target=thief))
            for th in threads:
                th.start()
            go.wait()
            for ev in running:
                ev.wait()
            t.close()
            for th in threads:
                th.join()
            for fd in stolen:
                os.close(fd)
            with pytest.raises(TrackerClosed):
                t.collect()
            assert not escaped, f"{len(escaped)} calls failed otherwise: {escaped[:3]!r}"
    finally:
        sys.setswitchinterval(interval)
        mem.close()


@pytest.mark.kernel
@pytest.mark.usefixtures("uffd_ok")
def test_close_waits_for_a_call_in_flight() -> None:
    """close() does not unregister or close the descriptors while another
    thread's collect() is inside the backend: it waits for it to finish."""
    mem = pagescan.allocate(16 * PS)
    t = pagescan.track(mem, backend="uffd")
    backend = t._backend
    assert backend is not None
    inside, release, unregistered = threading.Event(), threading.Event(), threading.Event()
    in_scan = [False]
    seen: list[bool] = []
    real_scan, real_unregister = backend.scan, backend.unregister

    def scan(*a, **k):  # type: ignore[no-untyped-def]
        in_scan[0] = True
        inside.set()
        release.wait()
        try:
            return real_scan(*a, **k)
        finally:
            in_scan[0] = False

    def unregister(*a):  # type: ignore[no-untyped-def]
        seen.append(in_scan[0])
        unregistered.set()
        return real_unregister(*a)

    backend.scan, backend.unregister = scan, unregister  # type: ignore[method-assign]
    results: list[object] = []
    caller = threading.Thread(target=lambda: results.append(t.collect()))
    caller.start()
    inside.wait()
    closer = threading.Thread(target=t.close)
    closer.start()
    # until close() either waits for the call (it made its event) or went on
    while not (unregistered.is_set() or getattr(t, "_drained", None) is not None):
        unregistered.wait(0.001)
    release.set()
    caller.join()
    closer.join()
    assert seen == [False], "close() unregistered while a collect() was in the backend"
    assert len(results) == 1                     # the call in flight completed
    with pytest.raises(TrackerClosed):
        t.collect()
    mem.close()


# ------------------------------------------------ item 11: fork while a lock is held


def _in_child(fn, timeout: float = 60.0) -> str:  # type: ignore[no-untyped-def]
    """Run ``fn`` in a forked child; its result (a string) or its error. A child
    that does not answer within ``timeout`` hung: it is killed, and that fails."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:                                 # pragma: no cover - the child
        os.close(r)
        try:
            msg = str(fn())
        except BaseException as e:
            msg = f"error {type(e).__name__}: {e}"
        os.write(w, msg.encode())
        os._exit(0)
    os.close(w)
    try:
        ready, _, _ = select.select([r], [], [], timeout)
        if not ready:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail(f"the forked child hung (no answer in {timeout:.0f} s)")
        data = b""
        while chunk := os.read(r, 4096):
            data += chunk
        os.waitpid(pid, 0)
        return data.decode()
    finally:
        os.close(r)


class _Holder:
    """Another thread holding ``lock`` (as one inside track()/close()/a call
    would) until released."""

    def __init__(self, lock: threading.Lock) -> None:
        self.held, self.release = threading.Event(), threading.Event()
        self.thread = threading.Thread(target=self._run, args=(lock,))
        self.thread.start()
        self.held.wait()

    def _run(self, lock: threading.Lock) -> None:
        with lock:
            self.held.set()
            self.release.wait()

    def done(self) -> None:
        self.release.set()
        self.thread.join()


def _track_in_child(backend: str) -> str:
    mem = pagescan.allocate(8 * PS)
    with pagescan.track(mem, backend=backend) as t:
        mem[PS] = 1
        n = t.collect().regions.pages()
    mem.close()
    return f"ok {n}"


@pytest.mark.kernel
@pytest.mark.usefixtures("uffd_ok")
def test_fork_while_another_thread_is_in_track_or_close() -> None:
    """The registry lock of track()/close() held by another thread at fork(): the
    child's track() and close() complete (the lock is made anew in the child)."""
    h = _Holder(tracker_mod._live_lock)
    try:
        out = _in_child(lambda: _track_in_child("uffd"))
    finally:
        h.done()
    assert out == "ok 1"


@pytest.mark.kernel
@pytest.mark.usefixtures("uffd_ok")
def test_fork_while_another_thread_is_inside_a_call() -> None:
    """A tracker's own lock held by another thread at fork() (a call or close()
    in progress): in the child the inherited tracker answers TrackerClosed and
    closes at once, and new trackers work."""
    mem = pagescan.allocate(8 * PS)
    t = pagescan.track(mem, backend="uffd")
    h = _Holder(t._state)

    def child() -> str:
        try:
            t.collect()
        except TrackerClosed:
            pass
        else:
            return "the inherited tracker answered"
        t.close()
        return _track_in_child("uffd")

    try:
        out = _in_child(child)
    finally:
        h.done()
    assert out == "ok 1"
    assert t.collect().regions.pages() == 0      # the parent's tracker is unaffected
    t.close()
    mem.close()


def test_fork_while_another_thread_is_in_track_simulated() -> None:
    """The same with a simulated tracker (no kernel feature needed)."""
    h = _Holder(tracker_mod._live_lock)

    def child() -> str:
        sim = S.SimProcess()
        a = sim.mmap(8 * PS)
        with sim.track(a, 8 * PS, mechanism="uffd") as t:
            sim.write(a)
            return f"ok {t.collect().regions.pages()}"

    try:
        out = _in_child(child)
    finally:
        h.done()
    assert out == "ok 1"


# ------------------------------------------------ item 15: a failed track() keeps nothing


def _buffer(kind: str):  # type: ignore[no-untyped-def]
    if kind == "allocate":
        return pagescan.allocate(4 * PS)
    return mmap.mmap(-1, 4 * PS, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)


def _failures() -> list:
    return [
        pytest.param(dict(backend="nonesuch"), ValueError, id="unknown-backend"),
        pytest.param(dict(backend="softdirty"), pagescan.errors.BackendUnavailable,
                     id="unavailable-backend"),
        pytest.param(dict(backend="uffd", nonesuch_option=1), TypeError, id="bad-option"),
        pytest.param(dict(backend="uffd", pid=os.getpid() + 1 if os.getpid() < 2**22 else 1),
                     TypeError, id="buffer-of-another-pid"),
        pytest.param(dict(backend="uffd", pid=1.5), TypeError, id="float-pid"),
        pytest.param(dict(backend="simulator"), RangeError, id="not-simulated-memory"),
        pytest.param(dict(backend="uffd", overlap=True), pagescan.errors.OverlapError,
                     id="overlap"),
    ]


@pytest.mark.parametrize("kind", ["allocate", "mmap"])
@pytest.mark.parametrize(("kw", "exc"), _failures())
def test_failed_track_releases_the_buffer(kind: str, kw: dict, exc: type) -> None:
    """``except ...: buffer.close()`` works after every failure of track()."""
    kw = dict(kw)
    if kw["backend"] == "uffd" and not pagescan.probe("uffd").ok:
        pytest.skip("needs the uffd backend")
    mem = _buffer(kind)
    other = None
    if kw.pop("overlap", False):
        other = pagescan.track(mem, backend="uffd")
    try:
        try:
            pagescan.track(mem, **kw).close()
        except exc:
            if other is not None:
                other.close()
            mem.close()                      # BufferError before the fix
        else:
            if other is not None:
                other.close()
            mem.close()
            pytest.skip(f"track({kw}) works here")
    finally:
        if other is not None:
            other.close()
    assert mem.closed


@pytest.mark.parametrize("kind", ["allocate", "mmap"])
def test_failed_track_on_a_warning_turned_error_releases_the_buffer(kind: str) -> None:
    """A warning made an error (-W error) fails track(); the buffer is released."""
    mem = _buffer(kind)
    view = memoryview(mem)[1:]                   # not page-aligned: PartialPageWarning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(tracker_mod.PartialPageWarning):
            pagescan.track(view, backend="simulator")
    view.release()
    mem.close()


# ------------------------------------------------ item 16: bad addresses and numbers


class _OddIndex(int):
    """An int whose __index__ disagrees with its value."""

    def __index__(self) -> int:
        return 5


BACKENDS = ["uffd", "mprotect", "softdirty", "simulator"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("addr", "length", "exc", "match"), [
    (2**64 - PS, PS, RangeError, "address 0x.* past the end of user space"),
    (2**64, PS, ValueError, "address must be <="),
    (2**70, PS, ValueError, "address must be <="),
    (USER_ADDRESS_LIMIT, PS, RangeError, "address 0x.* past the end of user space"),
    (USER_ADDRESS_LIMIT - PS, 2 * PS, RangeError, "length .* past the end of user space"),
    (PS, 2**64 - PS, RangeError, "length .* past the end of user space"),
    (PS, 2**64, ValueError, "length must be <="),
    (-PS, PS, ValueError, "address must be >= 0"),
    (PS, -PS, ValueError, "length must be >= 0"),
    (PS, float(PS), TypeError, "length must be an int"),
    (PS, "4096", TypeError, "length must be an int"),
    (float(PS), PS, TypeError, "address must be an int"),
])
def test_bad_address_ranges_name_the_argument(backend: str, addr: object, length: object,
                                              exc: type, match: str) -> None:
    """Checked before any backend runs: the same documented exception, naming the
    argument, whatever the backend (no bare OverflowError from C conversions)."""
    with pytest.raises(exc, match=match):
        pagescan.track((addr, length), backend=backend)
    with pytest.raises(exc, match=match):
        pagescan.track(addr, length, backend=backend)


@pytest.mark.parametrize("bad", [2**64, 2**31, -1, 0])
def test_bad_pid_names_the_argument(bad: int) -> None:
    with pytest.raises(ValueError, match="pid must be"):
        pagescan.track((PS, PS), backend="simulator", pid=bad)


def test_int_subclass_with_odd_index_uses_its_value() -> None:
    """An int subclass is taken for its int value, as C code converting it does,
    not for what its __index__ says."""
    sim = S.SimProcess()
    a = sim.mmap(8 * PS)
    with pagescan.track((_OddIndex(a), _OddIndex(8 * PS)), backend="simulator",
                        pid=sim.pid) as t:
        assert (t.start, t.end) == (a, a + 8 * PS)
        sim.write(a + PS)
        assert t.written(start=_OddIndex(a + PS), end=_OddIndex(a + 2 * PS)).pages() == 1
        assert t.collect(max_pages=_OddIndex(1)).regions.pages() == 1
    sim.exit()


def test_bad_scan_arguments_on_a_live_tracker() -> None:
    sim = S.SimProcess()
    a = sim.mmap(8 * PS)
    with sim.track(a, 8 * PS, mechanism="uffd") as t:
        for kw, exc, match in [
            (dict(start=2**64), ValueError, "start must be <="),
            (dict(end=2**70), ValueError, "end must be <="),
            (dict(start=-PS), ValueError, "start must be >= 0"),
            (dict(start=float(a)), TypeError, "start must be an int"),
            (dict(max_pages=1.5), TypeError, "max_pages must be an int"),
            (dict(max_pages=2**64), ValueError, "max_pages must be <="),
        ]:
            with pytest.raises(exc, match=match):
                t.scan(**kw)
    sim.exit()


def test_watch_demo_with_an_unavailable_backend_is_a_message() -> None:
    """``PAGESCAN_BACKEND=softdirty pagescan watch --demo`` where soft-dirty does not
    work: the reason, not a BufferError traceback from closing the demo buffer."""
    if pagescan.probe("softdirty").ok:
        pytest.skip("soft-dirty works here")
    import subprocess
    env = dict(os.environ, PAGESCAN_BACKEND="softdirty")
    r = subprocess.run([sys.executable, "-m", "pagescan", "watch", "--demo", "--count", "1",
                        "--interval", "1ms"], env=env, capture_output=True, text=True,
                       timeout=120)
    assert "BufferError" not in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert "softdirty" in r.stderr and "unavailable" in r.stderr, r.stderr
