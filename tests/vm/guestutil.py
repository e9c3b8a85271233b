"""What the guest tests share: the requirement check, raw mappings at chosen
addresses, page sets. Imported by the tests in this folder (pytest puts it on
sys.path), in the guest and nowhere else; numpy-free like the tests."""

from __future__ import annotations

import ctypes
import mmap
import os
import subprocess
import sys

import pytest

import pagescan
from pagescan.backends import Probe
from pagescan.constants import MAP_ANONYMOUS, MAP_PRIVATE, PROT_READ, PROT_WRITE

GUEST_KERNEL = os.environ.get("PAGESCAN_VM_KERNEL", "")
P = mmap.PAGESIZE
PROT_RW = PROT_READ | PROT_WRITE
MAP_PRIVATE_ANON = MAP_PRIVATE | MAP_ANONYMOUS

libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                      ctypes.c_int, ctypes.c_long]
libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]


def require(ok: bool, reason: str) -> None:
    """Skip when a kernel feature is missing; under ``CI=true`` fail instead."""
    if ok:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true and a required kernel feature is missing: {reason}")
    pytest.skip(reason)


def softdirty_probe() -> Probe:
    """The soft-dirty backend's probe, required to pass."""
    p = pagescan.probe("softdirty")
    require(p.ok, p.reason)
    return p


def pages(regions) -> set[int]:
    """The page addresses of ``(start, end, categories)`` regions."""
    return {a for s, e, _ in regions for a in range(s, e, P)}


def mmap_at(addr: int | None, npages: int, prot: int = PROT_RW, flags: int = 0) -> int:
    """Private anonymous memory of ``npages`` at ``addr`` (a hint, or exact with
    MAP_FIXED / MAP_FIXED_NOREPLACE in ``flags``)."""
    a = libc.mmap(addr, npages * P, prot, MAP_PRIVATE_ANON | flags, -1, 0)
    assert a not in (None, ctypes.c_void_p(-1).value), os.strerror(ctypes.get_errno())
    return a


class Child:
    """A Python child process (``python -S -c script``) driven over pipes: the script
    reads one command a line from stdin and answers each with one line."""

    def __init__(self, script: str) -> None:
        self.p = subprocess.Popen([sys.executable, "-S", "-c", script],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.pid = self.p.pid

    def ask(self, line: str) -> str:
        assert self.p.stdin is not None and self.p.stdout is not None
        self.p.stdin.write(line + "\n")
        self.p.stdin.flush()
        return self.p.stdout.readline().strip()

    def close(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
        self.p.wait()
