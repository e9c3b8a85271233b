"""``freeze=True``: every thread of another process stopped (PTRACE_SEIZE +
PTRACE_INTERRUPT) while its soft-dirty bits are read and cleared."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
from collections.abc import Iterator
from typing import Any

from ... import procfs
from ..._sysinfo import sysctl as _sysctl
from ...errors import AccessDenied, NoSuchProcess
from ...procfs import proc_error

__all__ = ["frozen", "signal_to_deliver"]

PTRACE_DETACH = 17
PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207
WALL = 0x40000000
_libc_handle: Any = None


def _libc() -> Any:
    global _libc_handle
    if _libc_handle is None:
        lib = ctypes.CDLL(None, use_errno=True)
        lib.ptrace.restype = ctypes.c_long
        lib.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
        lib.madvise.restype = ctypes.c_int
        lib.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        _libc_handle = lib
    return _libc_handle


def signal_to_deliver(status: int) -> int:
    """The signal to hand back on PTRACE_DETACH for a thread whose first stop was
    ``status``: a signal-delivery-stop (a signal arrived before the interrupt) would
    be dropped by a detach with 0; an interrupt or group stop (event in bits 16-23)
    has nothing to give back."""
    if os.WIFSTOPPED(status) and status >> 16 == 0:
        return os.WSTOPSIG(status)
    return 0


@contextlib.contextmanager
def frozen(pid: int) -> Iterator[None]:
    """Every thread of process ``pid`` stopped (PTRACE_SEIZE + PTRACE_INTERRUPT)
    for the duration; detached (and so resumed) after. Threads created while
    stopping are caught by listing the threads again until no new one appears."""
    lib = _libc()
    seized: list[int] = []
    deliver: dict[int, int] = {}      # a signal that stopped a thread: given back on detach
    try:
        while True:
            try:
                tids = sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))
            except OSError as err:
                raise proc_error(err, pid, f"listing /proc/{pid}/task") from err
            new = [t for t in tids if t not in seized]
            if not new:
                break
            for tid in new:
                if lib.ptrace(PTRACE_SEIZE, tid, None, None) != 0:
                    e = ctypes.get_errno()
                    if e == errno.ESRCH:
                        continue                          # the thread has exited
                    if e == errno.EPERM and not procfs.alive(pid):
                        raise NoSuchProcess(f"process {pid} has exited")
                    if e == errno.EPERM:
                        scope = _sysctl("kernel.yama.ptrace_scope")
                        raise AccessDenied(
                            f"freeze=True needs ptrace attach access to process {pid} "
                            "(the same user and, with kernel.yama.ptrace_scope=1, an "
                            "ancestor of it, or CAP_SYS_PTRACE); kernel.yama.ptrace_scope="
                            f"{scope}")
                    raise proc_error(OSError(e, os.strerror(e)), pid, "PTRACE_SEIZE")
                seized.append(tid)
                lib.ptrace(PTRACE_INTERRUPT, tid, None, None)
                try:
                    _, status = os.waitpid(tid, WALL)     # until it has stopped
                except ChildProcessError:
                    continue
                sig = signal_to_deliver(status)
                if sig:
                    deliver[tid] = sig
        yield
    finally:
        for tid in seized:
            lib.ptrace(PTRACE_DETACH, tid, None, ctypes.c_void_p(deliver.get(tid, 0)))
