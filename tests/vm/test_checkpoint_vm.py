"""pagescan.checkpoint over soft-dirty, inside the qemu lane's guests:
checkpoints of another process's ranges (process_vm_readv), ``pagescan checkpoint
PID --range A-B FILE``, and a fork-mode checkpoint of this process's own memory with
the softdirty backend.

    python vm/lane.py -- tests/vm/test_checkpoint_vm.py

Outside a guest (``PAGESCAN_VM_KERNEL`` unset) everything skips; in a guest a missing
feature is a failure under ``CI=true``. Standard library only, one small child.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import pagescan
import pagescan.checkpoint as ck
from guestutil import Child as GuestChild, P, softdirty_probe

GUEST_KERNEL = os.environ.get("PAGESCAN_VM_KERNEL", "")
pytestmark = pytest.mark.skipif(not GUEST_KERNEL,
                                reason="not in a VM guest (PAGESCAN_VM_KERNEL unset)")
#: child processes import the pagescan under test (source tree or site-packages)
IMPORT_ROOT = str(Path(pagescan.__file__).resolve().parent.parent)


@pytest.fixture(scope="module", autouse=True)
def softdirty_works():
    softdirty_probe()


# a child with private anonymous memory; "alloc N" -> address (pages filled with
# their index), "write ADDR BYTE" -> ok
CHILD = r"""
import mmap, sys, ctypes
maps = []
for line in sys.stdin:
    cmd, *args = line.split()
    if cmd == "alloc":
        n = int(args[0])
        m = mmap.mmap(-1, n * mmap.PAGESIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        for i in range(n):
            m[i * mmap.PAGESIZE:(i + 1) * mmap.PAGESIZE] = bytes([i % 256]) * mmap.PAGESIZE
        maps.append(m)
        print(ctypes.addressof(ctypes.c_char.from_buffer(m)), flush=True)
    elif cmd == "write":
        ctypes.c_char.from_address(int(args[0])).value = bytes([int(args[1])])
        print("ok", flush=True)
"""


class Child(GuestChild):
    def __init__(self) -> None:
        super().__init__(CHILD)

    def alloc(self, npages: int) -> int:
        return int(self.ask(f"alloc {npages}"))

    def write(self, addr: int, value: int) -> None:
        assert self.ask(f"write {addr} {value}") == "ok"


@pytest.fixture
def child():
    c = Child()
    yield c
    c.close()


def image(npages: int) -> bytearray:
    return bytearray(b"".join(bytes([i % 256]) * P for i in range(npages)))


@pytest.mark.parametrize("freeze", [False, True])
def test_checkpoint_of_another_process(child: Child, tmp_path: Path, freeze: bool) -> None:
    a, b = child.alloc(12), child.alloc(5)
    expect_a, expect_b = image(12), image(5)
    path = tmp_path / "proc.ckpt"
    ranges = [(a, a + 12 * P), (b, b + 5 * P)]
    with ck.checkpoint_process(child.pid, path, ranges, freeze=freeze) as c:
        assert c.backend == "softdirty"
        assert c.save() == 1
        for addr, off, v, exp in ((a, 3 * P + 7, 200, expect_a), (a, 11 * P, 201, expect_a),
                                  (b, 2 * P + 1, 202, expect_b)):
            child.write(addr + off, v)
            exp[off] = v
        assert c.save() == 2
        assert c.save() == 3                      # nothing written since
    saves = ck.info(path).saves
    assert [s.kind for s in saves] == ["base", "delta", "delta"]
    assert saves[1].data_bytes == 3 * P and saves[2].data_bytes == 0
    want = bytes(expect_a + expect_b)
    segs = ck.info(path).segments
    assert segs == tuple(sorted([(a, 12 * P), (b, 5 * P)]))
    if segs[0][0] != a:
        want = bytes(expect_b + expect_a)
    assert ck.restore(path) == want
    assert ck.restore(path, save=1) == (bytes(image(12) + image(5)) if segs[0][0] == a
                                         else bytes(image(5) + image(12)))


def test_cli_checkpoint(child: Child, tmp_path: Path) -> None:
    a = child.alloc(4)
    path = tmp_path / "cli.ckpt"
    env = dict(os.environ, PYTHONPATH=IMPORT_ROOT)
    out = subprocess.run([sys.executable, "-m", "pagescan", "checkpoint", str(child.pid),
                          "--range", f"{a:x}-{a + 4 * P:x}", str(path), "--count", "2",
                          "--interval", "1ms"], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert "save 1 (base)" in out.stdout and "save 2 (delta)" in out.stdout
    assert ck.restore(path) == bytes(image(4))
    child.close()
    gone = subprocess.run([sys.executable, "-m", "pagescan", "checkpoint", str(child.pid),
                           "--range", f"{a:x}-{a + 4 * P:x}", str(path)],
                          capture_output=True, text=True, env=env)
    assert gone.returncode == 3, gone.stderr


def test_own_memory_fork_mode_with_softdirty(tmp_path: Path) -> None:
    mem = pagescan.allocate(16 * P)
    path = tmp_path / "own.ckpt"
    with ck.open(path, mem, backend="softdirty") as c:
        assert c.mode == "fork"
        c.save()
        mem[5 * P] = 1
        pending = c.save(wait=False)
        mem[9 * P] = 2                            # after the fork: in save 3
        assert pending.wait() == 2
        c.save()
    saves = ck.info(path).saves
    assert saves[1].data_bytes == P and saves[2].data_bytes == P
    assert ck.restore(path, save=2) == bytes(5 * P) + b"\x01" + bytes(11 * P - 1)
    assert ck.restore(path) == bytes(mem)
