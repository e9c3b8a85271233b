"""Incremental checkpoints of ranges of another process's memory: tracked with a
backend that can watch another process (soft-dirty: ``pagescan.track((addr, n),
pid=PID)``), pages read with ``process_vm_readv(2)``.

The ranges are saved as one logical buffer, the ranges one after the other (the
file's header lists them as segments); :func:`pagescan.checkpoint.restore` returns
that buffer.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import itertools
import os
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

from ..errors import BackendUnavailable, KernelError, RangeError
from ..memory import PAGE_SIZE
from . import _Base, merge
from . import _format as fmt

__all__ = ["ProcessCheckpoint", "checkpoint_process"]


class _Iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


_libc: Any = None


def _process_vm_readv() -> Any:
    global _libc
    if _libc is None:
        lib = ctypes.CDLL(None, use_errno=True)
        f = lib.process_vm_readv
        f.restype = ctypes.c_ssize_t
        f.argtypes = [ctypes.c_int, ctypes.POINTER(_Iovec), ctypes.c_ulong,
                      ctypes.POINTER(_Iovec), ctypes.c_ulong, ctypes.c_ulong]
        _libc = f
    return _libc


def read_process(pid: int, parts: Sequence[tuple[int, int]], out: bytearray) -> None:
    """Fill ``out`` with the bytes of process ``pid`` at the ``(address, length)``
    parts, one after the other (``process_vm_readv``, in one call where it can)."""
    readv = _process_vm_readv()
    buf = (ctypes.c_char * len(out)).from_buffer(out)
    base = ctypes.addressof(buf)
    done = 0
    todo = [(a, n) for a, n in parts if n]
    while todo:
        batch = todo[:1024]
        local = _Iovec(base + done, sum(n for _, n in batch))
        remote = (_Iovec * len(batch))(*(_Iovec(a, n) for a, n in batch))
        got = readv(pid, ctypes.byref(local), 1, remote, len(batch), 0)
        if got < 0:
            e = ctypes.get_errno()
            from ..procfs import proc_error
            if e == errno.EFAULT:
                raise RangeError(f"process_vm_readv: part of 0x{batch[0][0]:x}.. is not "
                                 f"mapped (readable) in process {pid} any more")
            raise proc_error(OSError(e, os.strerror(e)), pid, "process_vm_readv")
        if got == 0:
            raise RangeError(f"process_vm_readv read nothing at 0x{batch[0][0]:x} of process "
                             f"{pid}: the range is no longer mapped")
        done += got
        rest = []
        for a, n in todo:              # skip what was read (a short read stops at a part)
            if got >= n:
                got -= n
                continue
            rest.append((a + got, n - got))
            got = 0
        todo = rest
    del buf


def _other_process_backend(name: str) -> str:
    """``"auto"``: the highest-priority backend that works here and can track another
    process (softdirty); else ``name`` unchanged."""
    from ..backends import backend_class, backend_names, probe
    if name != "auto":
        if not backend_class(name).capabilities.other_processes:
            raise BackendUnavailable(name, "it cannot track another process's memory "
                                     "(capabilities.other_processes is False); softdirty can")
        return name
    found = []
    reasons = []
    for n in backend_names():
        p = probe(n)
        try:
            cls = backend_class(n)
        except Exception as err:  # noqa: BLE001 - a backend that fails to load
            reasons.append(f"{n}: {err}")
            continue
        caps = cls.capabilities
        if p.ok and caps.other_processes and caps.real:
            found.append((cls.priority, n))
        elif caps.other_processes and caps.real:
            reasons.append(f"{n}: {p.reason}")
    if not found:
        raise BackendUnavailable("auto", "no backend here can track another process; "
                                 + "; ".join(reasons))
    return max(found)[1]


class ProcessCheckpoint(_Base):
    """An open checkpoint of ranges of another process. Create it with
    :func:`checkpoint_process`."""

    def __init__(self, pid: int, path: str | os.PathLike[str],
                 ranges: Sequence[tuple[int, int]], *, backend: str = "auto",
                 freeze: bool = False, **options: Any) -> None:
        from ..tracker import track
        self._fd = -1
        self._trackers: list[Any] = []
        self.pid = pid
        self.freeze = freeze
        segs: list[tuple[int, int]] = []
        for r in ranges:
            start, end = int(r[0]), int(r[1])
            if start % PAGE_SIZE or end % PAGE_SIZE or start >= end:
                raise RangeError(f"[0x{start:x}, 0x{end:x}) is not a non-empty page-aligned "
                                 "range")
            segs.append((start, end - start))
        if not segs:
            raise RangeError("no range to checkpoint")
        segs.sort()
        for (a, n), (b, _) in itertools.pairwise(segs):
            if a + n > b:
                raise RangeError(f"ranges overlap at 0x{b:x}")
        self.segments = tuple(segs)
        header = fmt.Header(sum(n for _, n in segs), PAGE_SIZE, uuid.uuid4().bytes,
                            time.time(), self.segments)
        backend = _other_process_backend(backend)
        try:
            for a, n in segs:                  # first: no file is made if this fails
                self._trackers.append(track((a, n), pid=pid, backend=backend, **options))
            self._open_file(os.fspath(path), header)
        except BaseException:
            self._release()
            raise
        #: how saves read the pages: with the process stopped (freeze) or running
        self.mode = "frozen" if freeze else "running"

    @property
    def backend(self) -> str:
        return str(self._trackers[0].backend)

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{len(self.segments)} ranges, {self.length} bytes"
        return f"<pagescan.checkpoint.ProcessCheckpoint pid {self.pid} {self.path!r} {state}>"

    def _parts(self, off: int, n: int) -> list[tuple[int, int]]:
        """The process addresses of logical bytes ``[off, off + n)``."""
        out = []
        logical = 0
        for a, length in self.segments:
            lo, hi = max(off, logical), min(off + n, logical + length)
            if lo < hi:
                out.append((a + lo - logical, hi - lo))
            logical += length
        return out

    @contextlib.contextmanager
    def _stopped(self) -> Iterator[None]:
        if self.freeze:
            from ..backends.softdirty.freeze import frozen
            with frozen(self.pid):
                yield
        else:
            yield

    def save(self) -> int:
        """Save the pages written since the previous save (the first: every range
        whole). With ``freeze=True`` the process is stopped while the written pages
        are collected and read (a snapshot of one instant); else it runs, and a page
        written during the save may be saved with contents newer than its
        neighbours' (it is saved again by the next save)."""
        self._check_open()
        self._prepare()
        number = self._next
        base = self._need_base
        scratch = bytearray(fmt.CHUNK)
        view = memoryview(scratch)

        def read(off: int, n: int) -> Any:
            read_process(self.pid, self._parts(off, n), scratch)
            return bytes(view[:n])

        runs: list[tuple[int, int]] = []
        try:
            with self._stopped():
                logical = 0
                dirty = []
                for t, (_, length) in zip(self._trackers, self.segments, strict=True):
                    for s, e in t.offsets(t.collect(reset=True).regions):
                        dirty.append((logical + s, e - s))
                    logical += length
                runs = [(0, self.length)] if base else merge(dirty, self._carry)
                end = fmt.write_save(self._fd, self._end, number, base, runs, read,
                                     sync=False)
            os.fsync(self._fd)
        except BaseException as err:
            self._failed(runs if runs else [(0, self.length)], base)
            if isinstance(err, (KernelError, RangeError)) or not isinstance(err, Exception):
                raise
            raise fmt.SaveFailed(f"save {number} of {self.path} failed: {err}") from err
        self._finished(number, end)
        return number

    def _release(self) -> None:
        trackers, self._trackers = self._trackers, []
        for t in trackers:
            t.close()


def checkpoint_process(pid: int, path: str | os.PathLike[str],
                       ranges: Sequence[tuple[int, int]], *, backend: str = "auto",
                       freeze: bool = False, **options: Any) -> ProcessCheckpoint:
    """Open (or create) the checkpoint file ``path`` for the ``(start, end)`` address
    ranges (page-aligned, end exclusive) of process ``pid``. Pages are tracked with
    ``pagescan.track((start, end - start), pid=pid, backend=backend, **options)``
    (a backend that can watch another process: softdirty) and read with
    ``process_vm_readv``; both need ptrace read access to the process. ``freeze=True``
    stops the process (PTRACE_SEIZE + PTRACE_INTERRUPT, so ptrace attach access)
    during each save, which makes the save a snapshot of one instant."""
    return ProcessCheckpoint(pid, path, ranges, backend=backend, freeze=freeze, **options)
