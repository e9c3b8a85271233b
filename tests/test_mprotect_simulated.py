"""The mprotect mechanism on the simulator: MprotectBackend's own code over SimKernel,
whose write-fault trap models the C SIGSEGV handler (pagescan/simulator/sigsegv.py).

The simulated mechanism must be as (in)accurate as the real one: lost writes after
MADV_DONTNEED, invisible writes after the program's own mprotect(RW), EFAULT on
kernel writes, coarsening that never loses a write. The differential tests run the
same operations on the real backend (real memory of this process) and on the
simulated one and require the same answers, the same errors and the same mappings.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import random
import warnings
from typing import Any

import pytest
from conftest import require

import pagescan
from pagescan import Category, Masks
from pagescan.backends.mprotect import MapCountWarning, MprotectBackend
from pagescan.constants import (MADV_DONTNEED, MAP_ANONYMOUS, MAP_FIXED, MAP_PRIVATE, PROT_EXEC,
                                PROT_NONE, PROT_READ, PROT_WRITE)
from pagescan.errors import KernelError, OverlapError, RangeError, TrackerClosed
from pagescan.simulator import SimKernel, SimProcess
from pagescan.simulator.sigsegv import SimWriteTrap, write_trap
from pagescan.simulator.errors import SegmentationFault

P = 4096
RW = PROT_READ | PROT_WRITE


def pages_of(regions: Any, base: int) -> set[int]:
    out: set[int] = set()
    for s, e, _ in regions:
        out.update(range((s - base) // P, (e - base) // P))
    return out


def sim_track(sim: SimProcess, addr: int, length: int, **kw: Any) -> pagescan.Tracker:
    return pagescan.track((addr, length), backend="simulator", pid=sim.pid,
                          mechanism="mprotect", **kw)


def in_range(sim: SimProcess, start: int, end: int) -> list[tuple[int, int, str]]:
    """The simulated mappings over [start, end), clipped, as page offsets."""
    return [((max(v.start, start) - start) // P, (min(v.end, end) - start) // P, v.perms[:3])
            for v in sim.maps() if v.start < end and start < v.end]


@pytest.fixture
def sim() -> SimProcess:
    return SimProcess(base=0x7E0000000000, size=64 << 20)


# The shared conformance suite runs for simulator/mprotect from
# tests/test_conformance.py (pagescan.testing.SimHarness("mprotect")).


# --------------------------------------------------------- the backend's own code


def test_the_real_backend_class_runs_over_the_simulated_kernel(sim):
    a = sim.mmap(64 * P)
    with sim_track(sim, a, 64 * P) as t:
        b = t._backend
        assert type(b) is MprotectBackend and b.mechanism == "mprotect"
        assert isinstance(b.kernel, SimKernel) and isinstance(b._trap, SimWriteTrap)
        assert t.backend == "simulator"
        caps = t.capabilities
        assert not caps.real and not caps.kernel_writes_seen and caps.atomic_reset
        assert in_range(sim, a, a + 64 * P) == [(0, 64, "r--")]           # armed
        assert write_trap(sim).installed()
    assert in_range(sim, a, a + 64 * P) == [(0, 64, "rw-")]               # closed: RW


def test_writes_run_the_modelled_handler(sim):
    a = sim.mmap(64 * P)
    with sim_track(sim, a, 64 * P) as t:
        sim.write(a + 3 * P, 2 * P)
        sim.write(a + 10 * P + 5)
        sim.write(a + 10 * P + 6)                  # no second fault: the page is RW now
        assert pages_of(t.written(), a) == {3, 4, 10}
        st = t._backend.stats()
        assert st["faults"] == 3
        # the handler's mprotect(RW) split the mapping as the kernel's would
        assert in_range(sim, a, a + 64 * P) == [(0, 3, "r--"), (3, 5, "rw-"), (5, 10, "r--"),
                                                (10, 11, "rw-"), (11, 64, "r--")]
        assert st["mappings"] == len(in_range(sim, a, a + 64 * P)) - 1 == 4
        assert pages_of(t.collect().regions, a) == {3, 4, 10}
        assert in_range(sim, a, a + 64 * P) == [(0, 64, "r--")]           # merged back
        assert t._backend.stats()["mappings"] == 0


def test_mapping_estimate_matches_the_model():
    """stats()["mappings"] follows the model's own count, as test_mprotect checks
    it against the kernel's."""
    sim = SimProcess()
    a = sim.mmap(512 * P)
    with sim_track(sim, a, 512 * P) as t:
        def added() -> int:
            return len(in_range(sim, a, a + 512 * P)) - 1
        sim.write(a + 10 * P, 10 * P)
        for p in range(100, 300, 2):
            sim.write(a + p * P)
        sim.write(a + 511 * P)
        assert t._backend.stats()["mappings"] == added() == 2 + 200 + 1
        t.collect(max_pages=60)
        assert t._backend.stats()["mappings"] == added()
        t.reset(start=t.start + 200 * P, end=t.start + 250 * P)
        assert t._backend.stats()["mappings"] == added()
        t.collect()
        assert t._backend.stats()["mappings"] == added() == 0


def test_register_checks_as_for_real(sim):
    a = sim.mmap(16 * P)
    ro = sim.mmap(4 * P, prot=PROT_READ)
    with pytest.raises(RangeError, match="r--p"):
        sim_track(sim, ro, 4 * P)
    with pytest.raises(RangeError, match="not entirely mapped"):
        sim_track(sim, a, 32 * P)
    with sim_track(sim, a, 16 * P):
        with pytest.raises(OverlapError):
            sim_track(sim, a + 4 * P, 4 * P)
    with pytest.raises(ValueError, match="calling process"):
        MprotectBackend(pid=1)


def test_the_range_table_is_bounded(sim):
    a = sim.mmap(70 * P)
    ts = [sim_track(sim, a + i * P, P) for i in range(64)]
    try:
        with pytest.raises(KernelError, match="at most 64 ranges"):
            sim_track(sim, a + 64 * P, P)
    finally:
        for t in ts:
            t.close()
    assert write_trap(sim).live() == 0


def test_closed_tracker_refuses(sim):
    a = sim.mmap(8 * P)
    t = sim_track(sim, a, 8 * P)
    b = t._backend
    t.close()
    with pytest.raises(TrackerClosed):
        b.scan(a, a + 8 * P, Masks(Category.WRITTEN))


# ------------------------------------------------------------- the blind spots


def test_madvise_dontneed_is_no_write(sim):
    a = sim.mmap(16 * P)
    with sim_track(sim, a, 16 * P) as t:
        sim.write(a + 2 * P)
        t.collect()
        sim.madvise(a + 2 * P, 4 * P, MADV_DONTNEED)    # contents drop: not seen
        assert len(t.written()) == 0
        sim.write(a + 8 * P)
        sim.madvise(a + 8 * P, P, MADV_DONTNEED)        # a written page stays reported
        assert pages_of(t.written(), a) == {8}


def test_the_programs_own_mprotect_hides_later_writes(sim):
    a = sim.mmap(16 * P)
    with sim_track(sim, a, 16 * P) as t:
        sim.mprotect(a + 5 * P, P, RW)                  # the program's own call
        sim.write(a + 5 * P)                            # no fault: invisible
        assert len(t.written()) == 0


def test_a_page_the_program_made_prot_none_is_not_the_trackers(sim):
    """PROT_NONE is no protection the tracker sets: a store there is passed on (as
    without pagescan: the program's guard page), never unprotected, and the tracker
    refuses to go on rather than make the page PROT_READ at the next reset."""
    a = sim.mmap(16 * P)
    with sim_track(sim, a, 16 * P) as t:
        sim.mprotect(a + 7 * P, P, PROT_NONE)
        with pytest.raises(SegmentationFault):
            sim.write(a + 7 * P)                        # not unprotected
        with pytest.raises(SegmentationFault):
            sim.read(a + 7 * P)                         # not a write fault: passed on
        for call in (t.reset, t.collect, t.written):
            with pytest.raises(RangeError, match="no longer the tracked mapping"):
                call()
        assert in_range(sim, a, a + 16 * P)[1] == (7, 8, "---")


# ------------------------- a mapping replaced at the tracked address (issue 12 item 13)


def _replace(sim: SimProcess, a: int, n: int, prot: int, file: Any = None,
             offset: int = 0) -> None:
    sim.munmap(a, n * P)
    flags = MAP_PRIVATE | MAP_FIXED | (MAP_ANONYMOUS if file is None else 0)
    assert sim.mmap(n * P, prot, flags, addr=a, file=file, offset=offset) == a


@pytest.mark.parametrize("call", ["reset", "collect", "written", "mark_written", "close"])
def test_a_mapping_replaced_by_an_executable_one_is_left_alone(sim, call):
    """The model's check (PROCMAP_QUERY in the C code) over the model's VMAs: the
    same errors, and the new r-x mapping keeps its protection."""
    a = sim.mmap(16 * P)
    t = sim_track(sim, a, 16 * P)
    sim.write(a + 3 * P)                                # DIRTY: a collect re-protects it
    _replace(sim, a, 16, PROT_READ | PROT_EXEC)
    if call == "close":
        t.close()
    else:
        do = {"reset": t.reset, "collect": t.collect, "written": t.written,
              "mark_written": lambda: t._backend.mark_written(a, a + 16 * P)}[call]
        with pytest.raises(RangeError, match="no longer the tracked mapping: it was "
                                             "unmapped or replaced"):
            do()
        t.close()
    assert in_range(sim, a, a + 16 * P) == [(0, 16, "r-x")]


def test_a_store_to_a_replacing_mapping_is_passed_on(sim):
    a = sim.mmap(16 * P)
    with sim_track(sim, a, 16 * P) as t:
        _replace(sim, a, 16, PROT_READ | PROT_EXEC)
        with pytest.raises(SegmentationFault):
            sim.write(a + 3 * P)                        # not made writable
        assert in_range(sim, a, a + 16 * P) == [(0, 16, "r-x")]
        with pytest.raises(RangeError):
            t.written()


def test_a_mapping_replaced_by_a_file_mapping_is_left_alone(sim):
    a = sim.mmap(16 * P)
    f = sim.memfd(32 * P)
    with sim_track(sim, a, 16 * P) as t:
        sim.write(a + 3 * P)
        _replace(sim, a, 16, RW, file=f)
        for call in (t.reset, t.collect, t.written):
            with pytest.raises(RangeError, match="no longer the tracked mapping"):
                call()
        assert in_range(sim, a, a + 16 * P) == [(0, 16, "rw-")]
    # a tracked file mapping: another offset of the same file is another mapping
    with sim_track(sim, a, 16 * P) as t:
        _replace(sim, a, 16, RW, file=f, offset=8 * P)
        with pytest.raises(RangeError, match="no longer the tracked mapping"):
            t.reset()
        assert in_range(sim, a, a + 16 * P) == [(0, 16, "rw-")]


def test_a_new_anonymous_rw_mapping_is_indistinguishable(sim):
    """The documented limit, modelled: anonymous private read-write memory at the
    same place passes the check (PROCMAP_QUERY shows no anon_vma)."""
    a = sim.mmap(16 * P)
    with sim_track(sim, a, 16 * P) as t:
        _replace(sim, a, 16, RW)
        t.reset()
        assert in_range(sim, a, a + 16 * P) == [(0, 16, "r--")]


def test_a_range_split_in_many_mappings_is_checked_quickly_by_written(sim):
    """The model of the quick check past 8 VMAs (as on the host): an r-x mapping
    inside is seen by written(); a PROT_NONE page inside only by collect/reset,
    before any change of protection."""
    a = sim.mmap(64 * P)
    with sim_track(sim, a, 64 * P) as t:
        for i in range(0, 64, 4):
            sim.write(a + i * P)
        sim.mprotect(a + 33 * P, P, PROT_NONE)
        assert len(t.written()) == 16
        with pytest.raises(RangeError, match="no longer the tracked mapping"):
            t.collect()
        assert in_range(sim, a + 32 * P, a + 35 * P) == [(0, 1, "rw-"), (1, 2, "---"),
                                                        (2, 3, "r--")]
        assert in_range(sim, a, a + P) == [(0, 1, "rw-")]
        sim.mprotect(a + 33 * P, P, PROT_READ)
        sim.munmap(a + 21 * P, 2 * P)
        sim.mmap(2 * P, PROT_READ | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED,
                 addr=a + 21 * P)
        with pytest.raises(RangeError, match="no longer the tracked mapping"):
            t.written()

def test_without_procmap_query_only_reset_checks(sim):
    """A kernel before 6.11 (no PROCMAP_QUERY): the trap checks nothing; reset()
    compares the maps with the range at register. collect() does not (its
    documented gap): it re-protects the written page of the new mapping."""
    write_trap(sim).procmap_query = False
    a = sim.mmap(16 * P)
    with sim_track(sim, a, 16 * P) as t:
        assert not t._backend._trap_checks
        _replace(sim, a, 16, PROT_READ | PROT_EXEC)
        with pytest.raises(RangeError, match=r"no longer the tracked mapping.*r-xp"):
            t.reset()
        assert in_range(sim, a, a + 16 * P) == [(0, 16, "r-x")]
        assert len(t.written()) == 0                    # not checked: the gap
    assert in_range(sim, a, a + 16 * P) == [(0, 16, "r-x")]    # close() compared too


def test_kernel_write_fails_with_efault(sim):
    a = sim.mmap(64 * P)
    with sim_track(sim, a, 64 * P) as t:
        with pytest.raises(OSError) as info:
            sim.kernel_write(a + 10 * P, 3 * P)         # read() into a clean buffer
        assert info.value.errno == errno.EFAULT
        assert len(t.written()) == 0
        sim.write(a + 20 * P)                           # the first page was written
        assert sim.kernel_write(a + 20 * P, 3 * P) == P  # a short read
        t._backend.mark_written(a + 30 * P, a + 33 * P)  # the workaround
        assert sim.kernel_write(a + 30 * P, 3 * P) == 3 * P
        assert pages_of(t.written(), a) == {20, 30, 31, 32}


def test_fork_child_memory_is_untracked_and_writable(sim):
    a = sim.mmap(16 * P)
    with sim_track(sim, a, 16 * P) as t:
        sim.write(a + P)
        child = sim.fork()
        child.write(a, 16 * P)                          # the atfork hook made it RW
        assert {v.perms[:3] for v in child.maps()} == {"rw-"}
        child.exit()
        sim.write(a + 2 * P)
        assert pages_of(t.written(), a) == {1, 2}


# -------------------------------------------------------------------- coarsening


def test_coarsening_ladder_with_injected_enomem():
    """The same ladder and the same figures as test_mprotect's test on the real
    handler: the gap to a written neighbour, then aligned blocks of 64, 512."""
    sim = SimProcess()
    a = sim.mmap(256 * P)
    trap = write_trap(sim)
    with sim_track(sim, a, 256 * P) as t:
        trap.inject_enomem(1)
        sim.write(a + 100 * P)
        with pytest.warns(MapCountWarning, match="reported written without a write"):
            assert pages_of(t.written(), a) == set(range(64, 128))
        st = t._backend.stats()
        assert st["coarsened"] == 63 and st["coarsen_events"] == 1
        t.reset()
        sim.write(a + 10 * P)
        trap.inject_enomem(1)
        sim.write(a + 14 * P)
        assert pages_of(t.written(), a) == {10, 11, 12, 13, 14}
        t.reset()
        trap.inject_enomem(2)
        sim.write(a + 200 * P)
        assert pages_of(t.written(), a) == set(range(0, 256))
        st = t._backend.stats()
        assert st["coarsened"] == 63 + 3 + 255 and st["coarsen_events"] == 3
        assert st["error"] == 0
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert t.collect().regions.pages() == 256
        assert len(t.written()) == 0


def test_no_way_out_is_a_segfault_and_a_sticky_error(sim):
    a = sim.mmap(16 * P)
    trap = write_trap(sim)
    with sim_track(sim, a, 16 * P) as t:
        trap.inject_enomem(1000)                        # every mprotect of the handler
        with pytest.raises(SegmentationFault):
            sim.write(a + 3 * P)
        trap.inject_enomem(0)
        assert "could not give write access back" in trap.messages[-1]
        with pytest.raises(KernelError, match="could not be handled"):
            t.written()


@pytest.mark.parametrize("seed", range(6))
def test_budget_coarsening_never_loses_a_write(seed):
    """A small vm.max_map_count (the model's): scattered writes run the tracking
    out of its budget; every written page is still reported, extras counted."""
    sim = SimProcess()
    n = 2048
    a = sim.mmap(n * P)
    trap = write_trap(sim)
    trap.max_map_count = 1024 + 1 + 40              # a budget of 40 mappings
    rng = random.Random(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MapCountWarning)
        with sim_track(sim, a, n * P) as t:
            assert t._backend.stats()["budget"] == 40
            for _ in range(3):
                truth = {rng.randrange(n) for _ in range(rng.randrange(50, 200))}
                for p in sorted(truth, key=lambda _: rng.random()):
                    sim.write(a + p * P)
                st = t._backend.stats()
                assert st["mappings"] <= 40
                assert st["mappings"] == len(in_range(sim, a, a + n * P)) - 1
                got = pages_of(t.collect().regions, a)
                assert truth <= got                         # never a lost write
                assert len(got - truth) <= t._backend.stats()["coarsened"]
            assert t._backend.stats()["coarsen_events"] > 0


# ---------------------------------------------- differential: real vs simulated


_libc = ctypes.CDLL(None, use_errno=True)
_libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]


def real_in_range(start: int, end: int) -> list[tuple[int, int, str]]:
    out = []
    for m in pagescan.procfs.read_maps("self"):
        if m.start < end and start < m.end:
            out.append(((max(m.start, start) - start) // P, (min(m.end, end) - start) // P,
                        m.perms[:3]))
    return out


class Real:
    """The operations on real memory of this process, tracked by backend="mprotect"."""

    def __init__(self, npages: int, data: str) -> None:
        self.mem = pagescan.allocate(npages * P)
        self.base = self.mem.address
        self.n = npages
        self.data = data
        self.t = pagescan.track(self.mem, backend="mprotect")

    def write(self, p: int) -> None:
        self.mem[p * P + 7] = 1

    def dontneed(self, p: int, k: int) -> None:
        assert _libc.madvise(self.base + p * P, k * P, MADV_DONTNEED) == 0

    def protect(self, p: int, k: int, prot: int) -> None:
        assert _libc.mprotect(self.base + p * P, k * P, prot) == 0

    def kernel_write(self, p: int, k: int) -> int | str:
        fd = os.open(self.data, os.O_RDONLY)
        try:
            return os.preadv(fd, [memoryview(self.mem)[p * P:(p + k) * P]], 0)
        except OSError as err:
            return errno.errorcode[err.errno or 0]
        finally:
            os.close(fd)

    def inject(self, k: int) -> None:
        from pagescan import _core
        _core.mp_inject_enomem(k)

    def maps(self) -> list[tuple[int, int, str]]:
        return real_in_range(self.base, self.base + self.n * P)

    def close(self) -> None:
        self.inject(0)
        self.t.close()
        try:
            self.mem.close()
        except BufferError:
            pass


class Sim:
    """The same operations on a simulated process, tracked by the simulated mechanism."""

    def __init__(self, npages: int) -> None:
        self.sim = SimProcess()
        self.base = self.sim.mmap(npages * P)
        self.n = npages
        self.t = sim_track(self.sim, self.base, npages * P)

    def write(self, p: int) -> None:
        self.sim.write(self.base + p * P + 7)

    def dontneed(self, p: int, k: int) -> None:
        self.sim.madvise(self.base + p * P, k * P, MADV_DONTNEED)

    def protect(self, p: int, k: int, prot: int) -> None:
        self.sim.mprotect(self.base + p * P, k * P, prot)

    def kernel_write(self, p: int, k: int) -> int | str:
        try:
            return self.sim.kernel_write(self.base + p * P, k * P)
        except OSError as err:
            return errno.errorcode[err.errno or 0]

    def inject(self, k: int) -> None:
        write_trap(self.sim).inject_enomem(k)

    def maps(self) -> list[tuple[int, int, str]]:
        return in_range(self.sim, self.base, self.base + self.n * P)

    def close(self) -> None:
        self.t.close()


def run(side: Any, ops: list[tuple]) -> list[Any]:
    """Apply ``ops``; the observations, relative to the range."""
    t, base = side.t, side.base
    seen: list[Any] = []
    for op, *args in ops:
        if op == "write":
            side.write(*args)
        elif op == "dontneed":
            side.dontneed(*args)
        elif op == "protect":
            side.protect(*args)
        elif op == "kernel_write":
            seen.append(("kernel_write", side.kernel_write(*args)))
        elif op == "mark":
            p, k = args
            t._backend.mark_written(base + p * P, base + (p + k) * P)
        elif op == "inject":
            side.inject(*args)
        elif op == "collect":
            (max_pages,) = args
            seen.append(("collect", sorted(pages_of(t.collect(max_pages=max_pages).regions,
                                                    base))))
        elif op == "written":
            seen.append(("written", sorted(pages_of(t.written(), base))))
        elif op == "reset":
            p, k = args
            t.reset(start=base + p * P, end=base + (p + k) * P)
        st = t._backend.stats()
        seen.append((op, side.maps(), {k: st[k] for k in ("faults", "coarsened",
                                                           "coarsen_events", "mappings")}))
    return seen


def random_ops(seed: int, n: int) -> list[tuple]:
    rng = random.Random(seed)
    ops: list[tuple] = []
    for _ in range(120):
        r = rng.random()
        p = rng.randrange(n)
        k = rng.randint(1, min(8, n - p))
        if r < 0.45:
            ops.append(("write", p))
        elif r < 0.52:
            ops.append(("dontneed", p, k))
        elif r < 0.58:
            ops.append(("protect", p, k, rng.choice([RW, PROT_READ, RW])))
        elif r < 0.64:
            ops.append(("kernel_write", p, k))
        elif r < 0.68:
            ops.append(("mark", p, k))
        elif r < 0.72:
            ops.append(("inject", rng.randint(1, 2)))
            ops.append(("write", p))
        elif r < 0.84:
            ops.append(("collect", rng.choice([0, 0, 1, 3, 10])))
        elif r < 0.94:
            ops.append(("written",))
        else:
            ops.append(("reset", p, k))
    ops.append(("collect", 0))
    return ops


@pytest.fixture
def mprotect_real():
    p = pagescan.probe("mprotect")
    require(p.ok, p.reason)
    if mmap.PAGESIZE != P:
        pytest.skip(f"the model has 4 KiB pages, this machine {mmap.PAGESIZE}")


@pytest.mark.kernel
@pytest.mark.parametrize("seed", range(8))
def test_differential_real_and_simulated(mprotect_real, tmp_path, seed):
    """The same operations (stores, MADV_DONTNEED, the program's own mprotect, read()
    into tracked pages, mark_written, injected ENOMEM, collects with limits, partial
    resets) on the real handler and on the model: the same pages reported, the same
    read() results (EFAULT, short counts), the same mappings in the range and the
    same counters, after every operation."""
    n = 192
    data = tmp_path / "data"
    data.write_bytes(b"k" * (8 * P))
    ops = random_ops(seed, n)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MapCountWarning)
        real = Real(n, str(data))
        try:
            got_real = run(real, ops)
        finally:
            real.close()
        sim = Sim(n)
        try:
            got_sim = run(sim, ops)
        finally:
            sim.close()
    for i, (r, s) in enumerate(zip(got_real, got_sim, strict=True)):
        assert r == s, f"step {i}: {ops[min(i, len(ops) - 1)]}"


@pytest.mark.kernel
def test_differential_the_documented_cases(mprotect_real, tmp_path):
    """The blind spots one by one, real and simulated side by side."""
    data = tmp_path / "data"
    data.write_bytes(b"k" * (8 * P))
    ops = [
        ("write", 2), ("collect", 0),
        ("dontneed", 2, 4), ("written",),                       # lost: DONTNEED
        ("protect", 5, 1, RW), ("write", 5), ("written",),      # invisible: own mprotect
        ("kernel_write", 10, 3), ("written",),                  # EFAULT
        ("write", 20), ("kernel_write", 20, 3),                 # short read
        ("mark", 30, 3), ("kernel_write", 30, 3), ("written",),
        ("inject", 1), ("write", 100), ("written",),            # coarsened, not lost
        ("collect", 0), ("written",),
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MapCountWarning)
        real = Real(192, str(data))
        try:
            got_real = run(real, ops)
        finally:
            real.close()
        sim = Sim(192)
        try:
            got_sim = run(sim, ops)
        finally:
            sim.close()
    assert got_real == got_sim
    observed = [x for x in got_sim if len(x) == 2]
    assert observed == [
        ("collect", [2]),
        ("written", []),                                        # DONTNEED not seen
        ("written", []),                                        # own mprotect hides
        ("kernel_write", "EFAULT"), ("written", []),
        ("kernel_write", P),                                    # short read
        ("kernel_write", 3 * P), ("written", [20, 30, 31, 32]),
        ("written", [20, 30, 31, 32, *range(64, 128)]),        # coarsened, not lost
        ("collect", [20, 30, 31, 32, *range(64, 128)]), ("written", []),
    ]
