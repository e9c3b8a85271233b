"""The simulator's soft-dirty model against a real soft-dirty kernel (the qemu lane).

    python vm/lane.py -- tests/vm/test_simulator_softdirty_vm.py

The host kernel has no CONFIG_MEM_SOFT_DIRTY, so the soft-dirty half of the
simulator is checked here, inside the lane's Debian 6.1 and 6.12 guests: the same
operations go to real memory and to a SimProcess, and after every step pagemap
bit 55 (soft-dirty), bit 63 (present), bit 61 (file) and the VMA list must agree;
on 6.7+ also the SOFT_DIRTY category of PAGEMAP_SCAN. Operations whose behaviour
changed after these kernels are left out (guard regions, multi-VMA mremap, THP:
MADV_NOHUGEPAGE everywhere, PAGEOUT). Outside a guest (``PAGESCAN_VM_KERNEL``
unset) it skips. Kept small: Python runs ~14x slower under emulation.
"""

from __future__ import annotations

import ctypes
import errno
import os
import random
import struct
import sys

import pytest

GUEST_KERNEL = os.environ.get("PAGESCAN_VM_KERNEL", "")
pytestmark = pytest.mark.skipif(not GUEST_KERNEL,
                                reason="not in a VM guest (PAGESCAN_VM_KERNEL unset)")

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PAGE = 4096
NPAGES = 2048                        # an 8 MiB window
BASE = 0x5A5A00000000
KERNEL = tuple(int(x) for x in os.uname().release.split(".")[:2])
HAS_SCAN = KERNEL >= (6, 7)
PM_SD, PM_FILE, PM_PRESENT = 1 << 55, 1 << 61, 1 << 63
BITS = PM_SD | PM_FILE | PM_PRESENT
FILE_PAGES = 4096


def require(ok: bool, reason: str) -> None:
    if ok:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true and a requirement is missing: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def lanes():
    try:
        import numpy  # noqa: F401

        from pagescan import simulator as S
    except ImportError as e:                     # numpy must be there for the simulator
        require(False, f"the simulator needs numpy: {e}")
    import kernelutil as ku
    return S, ku


class Real:
    """Real memory of this process in the window (ctypes, like the host's lane)."""

    def __init__(self, ku) -> None:
        self.ku = ku
        self.fd = os.memfd_create("sim-sd", os.MFD_CLOEXEC)
        os.ftruncate(self.fd, FILE_PAGES * PAGE)
        self.pm = os.open("/proc/self/pagemap", os.O_RDONLY)
        libc = ku._libc
        libc.mremap.restype = ctypes.c_void_p
        libc.mremap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t,
                                ctypes.c_int, ctypes.c_void_p]

    def addr(self, page: int) -> int:
        return BASE + page * PAGE

    def mmap(self, page: int, n: int, prot: int, kind: str, pgoff: int) -> None:
        ku = self.ku
        flags = ku.MAP_FIXED | (ku.MAP_SHARED if kind == "shm" else ku.MAP_PRIVATE)
        fd = -1
        if kind in ("anon", "shm"):
            flags |= ku.MAP_ANONYMOUS
        else:
            fd = self.fd
        ku.mmap(self.addr(page), n * PAGE, prot, flags, fd, pgoff * PAGE)
        if kind == "anon":
            ku.madvise(self.addr(page), n * PAGE, ku.MADV_NOHUGEPAGE)

    def munmap(self, page: int, n: int) -> None:
        self.ku.munmap(self.addr(page), n * PAGE)

    def mprotect(self, page: int, n: int, prot: int) -> None:
        self.ku.mprotect(self.addr(page), n * PAGE, prot)

    def dontneed(self, page: int, n: int) -> None:
        self.ku.madvise(self.addr(page), n * PAGE, self.ku.MADV_DONTNEED)

    def mremap(self, page: int, n: int, dest: int) -> None:
        r = self.ku._libc.mremap(self.addr(page), n * PAGE, n * PAGE, 3, self.addr(dest))
        if r is None or r == self.ku.MAP_FAILED:
            raise self.ku._err("mremap")

    def touch(self, page: int, n: int, write: bool) -> None:
        if write:
            ctypes.memset(self.addr(page), 0x5A, n * PAGE)
        else:
            self.ku.touch_read(self.addr(page), n)

    def clear_refs(self) -> None:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("4")

    def pagemap(self) -> list[int]:
        data = os.pread(self.pm, 8 * NPAGES, BASE // PAGE * 8)
        return [e & BITS for e in struct.unpack(f"<{NPAGES}Q", data)]

    def soft_dirty_pages(self) -> list[tuple[int, int]]:
        """SOFT_DIRTY|PRESENT runs from one PAGEMAP_SCAN (6.7+)."""
        regions, _ = self.ku.pagemap_scan(BASE, BASE + NPAGES * PAGE, vec_len=NPAGES,
                                          return_mask=0x88)
        return [((s - BASE) // PAGE, (e - BASE) // PAGE, c) for s, e, c in regions if c]

    def maps(self) -> list[tuple[int, int, str]]:
        out = []
        with open("/proc/self/maps") as f:
            for line in f:
                rng, perms = line.split()[:2]
                s, e = (int(x, 16) for x in rng.split("-"))
                if s < BASE + NPAGES * PAGE and e > BASE:
                    out.append(((s - BASE) // PAGE, (e - BASE) // PAGE, perms))
        return out

    def close(self) -> None:
        self.ku.munmap(BASE, NPAGES * PAGE)
        os.close(self.fd)
        os.close(self.pm)


class Sim:
    """The same operations on the simulator, configured as the guest kernel."""

    def __init__(self, S) -> None:
        self.S = S
        self.p = S.SimProcess(config=S.KernelConfig.host(
            soft_dirty=True, guard_regions=False, pagemap_scan=HAS_SCAN,
            uffd_wp_async=HAS_SCAN, written_rules="6.18.0"), base=BASE, size=NPAGES * PAGE)
        self.file = S.SimFile(FILE_PAGES * PAGE)

    def addr(self, page: int) -> int:
        return BASE + page * PAGE

    def mmap(self, page: int, n: int, prot: int, kind: str, pgoff: int) -> None:
        S = self.S
        flags = S.MAP_FIXED | (S.MAP_SHARED if kind == "shm" else S.MAP_PRIVATE)
        f = None
        if kind in ("anon", "shm"):
            flags |= S.MAP_ANONYMOUS
        else:
            f = self.file
        self.p.mmap(n * PAGE, prot, flags, addr=self.addr(page), file=f, offset=pgoff * PAGE)
        if kind == "anon":
            self.p.madvise(self.addr(page), n * PAGE, S.MADV_NOHUGEPAGE)

    def munmap(self, page: int, n: int) -> None:
        self.p.munmap(self.addr(page), n * PAGE)

    def mprotect(self, page: int, n: int, prot: int) -> None:
        self.p.mprotect(self.addr(page), n * PAGE, prot)

    def dontneed(self, page: int, n: int) -> None:
        self.p.madvise(self.addr(page), n * PAGE, self.S.MADV_DONTNEED)

    def mremap(self, page: int, n: int, dest: int) -> None:
        self.p.mremap(self.addr(page), n * PAGE, n * PAGE, 3, self.addr(dest))

    def touch(self, page: int, n: int, write: bool) -> None:
        (self.p.write if write else self.p.read)(self.addr(page), n * PAGE)

    def clear_refs(self) -> None:
        self.p.clear_refs(4)

    def pagemap(self) -> list[int]:
        return [int(e) & BITS for e in self.p.pagemap(BASE, NPAGES)]

    def soft_dirty_pages(self) -> list[tuple[int, int]]:
        regions, _ = self.p.pm_scan_once(BASE, BASE + NPAGES * PAGE, return_mask=0x88,
                                         vec_len=NPAGES)
        return [((s - BASE) // PAGE, (e - BASE) // PAGE, c) for s, e, c in regions if c]

    def maps(self) -> list[tuple[int, int, str]]:
        return [((m.start - BASE) // PAGE, (m.end - BASE) // PAGE, m.perms)
                for m in self.p.maps()]


def _run(op, *args):
    try:
        op(*args)
        return None
    except OSError as e:
        return e.errno


def compare(sim: Sim, real: Real, what: str) -> None:
    assert sim.maps() == real.maps(), f"after {what}: VMAs differ"
    ps, pr = sim.pagemap(), real.pagemap()
    if ps != pr:
        bad = [i for i in range(NPAGES) if ps[i] != pr[i]][:5]
        detail = ", ".join(f"page {i}: sim {ps[i] >> 55:03b} real {pr[i] >> 55:03b}"
                           for i in bad)
        raise AssertionError(f"after {what}: pagemap bits 63/61/55 differ: {detail}")
    if HAS_SCAN:
        assert sim.soft_dirty_pages() == real.soft_dirty_pages(), \
            f"after {what}: PAGEMAP_SCAN SOFT_DIRTY differs"


def test_soft_dirty_model_against_the_kernel(lanes):
    """A scripted part (the rules that matter) and a seeded random part."""
    S, ku = lanes
    try:
        a = ku.mmap(BASE, NPAGES * PAGE, 0, ku.MAP_PRIVATE | ku.MAP_ANONYMOUS
                    | ku.MAP_FIXED_NOREPLACE)
        ku.munmap(a, NPAGES * PAGE)
    except OSError as e:
        require(False, f"the window is not free: {e}")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("4")
    real, sim = Real(ku), Sim(S)
    RW, R = 3, 1
    script = [
        ("mmap", 0, 64, RW, "anon", 0),                # new mappings are soft-dirty
        ("touch", 1, 1, True), ("touch", 2, 1, False),
        ("clear_refs",),                               # everything clean
        ("touch", 3, 1, True), ("touch", 4, 1, False),  # a write dirties, a read does not
        ("mmap", 64, 16, RW, "anon", 0),               # merges: the whole VMA is dirty
        ("clear_refs",),
        ("mprotect", 40, 40, R),                       # split off, still clean
        ("munmap", 0, 16), ("mmap", 0, 16, RW, "anon", 0),   # [0, 40) dirty again
        ("mprotect", 40, 40, RW),                      # merged: takes the clean part's flag
        ("clear_refs",),
        ("mprotect", 8, 8, R), ("touch", 20, 1, True), ("mprotect", 8, 8, RW),
        ("dontneed", 3, 2),
        ("mmap", 512, 600, RW, "file", 7), ("touch", 520, 2, False), ("touch", 530, 1, True),
        ("mmap", 1200, 40, RW, "shm", 0), ("touch", 1201, 1, True), ("touch", 1202, 1, False),
        ("clear_refs",),
        ("touch", 521, 1, False), ("touch", 1203, 1, True),
        ("mremap", 512, 40, 1400),                     # moved PTEs are dirty
        ("clear_refs",),
        ("mremap", 1400, 20, 1600),
    ]
    rng = random.Random(0x5D)
    for _ in range(60):
        x = rng.random()
        p = rng.randrange(NPAGES)
        n = max(1, min(NPAGES - p, rng.choice([1, 4, 16, rng.randint(1, 700)])))
        if x < 0.12:
            kind = rng.choice(["anon", "anon", "file", "shm"])
            script.append(("mmap", p, n, rng.choice([RW, RW, R]), kind,
                           rng.randrange(FILE_PAGES - n) if kind == "file" else 0))
        elif x < 0.2:
            script.append(("munmap", p, n))
        elif x < 0.3:
            script.append(("mprotect", p, n, rng.choice([RW, R])))
        elif x < 0.38:
            script.append(("dontneed", p, n))
        elif x < 0.45:
            script.append(("clear_refs",))
        elif x < 0.5:
            script.append(("mremap", p, min(n, 16), rng.randrange(NPAGES - 16)))
        else:
            script.append(("touch", p, min(n, 8), rng.random() < 0.6))
    done = 0
    try:
        compare(sim, real, "start")
        for step in script:
            name, args = step[0], step[1:]
            if name == "touch":
                if sim.p.access_fault(sim.addr(args[0]), args[1] * PAGE,
                                      write=args[2]) is not None:
                    continue
            if name == "mremap":
                v = sim.p._vma_at(args[0])
                if v is None or v.end < args[0] + args[1] or \
                        (args[2] < args[0] + args[1] and args[0] < args[2] + args[1]):
                    continue                               # one VMA only (6.17 changed more)
            es, er = _run(getattr(sim, name), *args), _run(getattr(real, name), *args)
            assert es == er, f"{step}: simulator {errno.errorcode.get(es, es)}, " \
                             f"kernel {errno.errorcode.get(er, er)}"
            compare(sim, real, repr(step))
            done += 1
    finally:
        real.close()
    assert done > 50, f"only {done} steps ran"
