"""Incremental checkpoints of a buffer: the first save writes everything, each later
save only the pages written since the previous one (found by a pagescan Tracker).

>>> ck = pagescan.checkpoint.open("state.ckpt", arr)   # numpy array, mmap, allocate()
>>> ck.save()                  # 1: the whole buffer
>>> arr[5] = 1; ck.save()      # 2: only the page written
>>> pagescan.checkpoint.restore("state.ckpt", into=arr)          # the last save
>>> old = pagescan.checkpoint.restore("state.ckpt", save=1)      # a new bytearray

A save is a snapshot of one instant even while other threads keep writing
(``mode="fork"``, the default for private memory): the written pages are collected
and reset, the process forks, and the child writes the pages from its copy-on-write
view of memory while the parent goes on, as Redis's BGSAVE does. ``mode="inline"``
copies in the calling process: a snapshot only when nothing else writes the buffer
during the save. The file is an append-only log (one save = a data record and a
commit record with a crc32, then fsync); a save cut short (kill -9, full disk) is
ignored by :func:`restore`, which returns the last complete save bit-exact.
See docs/checkpoint.md.
"""

from __future__ import annotations

import builtins
import fcntl
import gc
import os
import select
import time
import uuid
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..memory import PAGE_SIZE
from . import _format as fmt
from ._format import (CheckpointBusy, CheckpointError, CorruptCheckpoint, NoSuchSave,
                      NotACheckpoint, SaveFailed, SaveInfo, SizeMismatch, UnsupportedVersion)

__all__ = [
    "Checkpoint", "CheckpointBusy", "CheckpointError", "CheckpointInfo", "CorruptCheckpoint",
    "NoSuchSave", "NotACheckpoint", "PendingSave", "ProcessCheckpoint", "SaveFailed",
    "SaveInfo", "SizeMismatch", "UnsupportedVersion", "checkpoint_process", "compact",
    "info", "open", "restore", "verify",
]

Runs = list[tuple[int, int]]


def __getattr__(name: str) -> Any:
    if name in ("ProcessCheckpoint", "checkpoint_process"):
        from . import _process
        return getattr(_process, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ------------------------------------------------------------------------ helpers


def merge(*run_lists: Iterable[tuple[int, int]]) -> Runs:
    """The union of ``(offset, length)`` runs, sorted, touching runs joined (one
    pass after the sort, which costs little on a scan's already sorted runs)."""
    spans = sorted([(o, o + n) for runs in run_lists for o, n in runs if n > 0])
    out: Runs = []
    ps = pe = -1
    for s, e in spans:
        if s <= pe:
            if e > pe:
                pe = e
        else:
            if pe >= 0:
                out.append((ps, pe - ps))
            ps, pe = s, e
    if pe >= 0:
        out.append((ps, pe - ps))
    return out


def _byte_view(buf: Any, what: str) -> memoryview:
    try:
        mv = memoryview(buf)
    except TypeError:
        raise TypeError(f"{what} must be a writable buffer (numpy array, mmap, bytearray, "
                        f"pagescan.allocate()), not {type(buf).__name__}") from None
    if mv.readonly:
        mv.release()
        raise TypeError(f"{what} is read-only")
    if not mv.c_contiguous:
        mv.release()
        raise ValueError(f"{what} must be C-contiguous")
    return mv.cast("B") if mv.format != "B" or mv.ndim != 1 else mv


def _private(address: int, length: int) -> bool:
    """Whether ``[address, address + length)`` is private memory in /proc/self/maps
    (a fork gives the child a copy-on-write snapshot of it; shared memory it does not)."""
    end = address + length
    covered = address
    with builtins.open("/proc/self/maps") as f:
        for line in f:
            rng, perms = line.split(None, 2)[:2]
            lo, hi = (int(x, 16) for x in rng.split("-"))
            if hi <= address or lo >= end:
                continue
            if perms[3] != "p" or lo > covered:
                return False
            covered = max(covered, hi)
    return covered >= end


def _fsync_dir(path: str) -> None:
    fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _lock(fd: int, path: str) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise CheckpointBusy(f"{path} is open for saving elsewhere (an open Checkpoint in "
                             "this or another process holds its lock)") from None


def _create(path: str, header: fmt.Header) -> None:
    """A new checkpoint file with only a header, atomically (temporary file, fsync,
    rename), so that a crash never leaves a half-written header."""
    tmp = f"{path}.tmp{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        os.pwrite(fd, header.pack(), 0)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)
    _fsync_dir(path)


def _open_index(path: str) -> tuple[int, fmt.Index]:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return fd, fmt.scan(fd, path)
    except BaseException:
        os.close(fd)
        raise


# ------------------------------------------------------------------------ saving


class _Base:
    """What a checkpoint of a buffer and of another process share: the file, its lock,
    save numbering, the torn tail, and carrying the runs of a failed save over."""

    path: str
    length: int

    def _open_file(self, path: str, header: fmt.Header) -> None:
        self.path = os.fspath(path)
        self.length = header.length
        self._fd = -1
        self._pending: PendingSave | None = None
        #: writers that reported success and may not have exited yet
        self._zombies: list[int] = []
        #: runs of a save that failed (written by the next save)
        self._carry: Runs = []
        self._need_base = True
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            _create(self.path, header)
            fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
        self._fd = fd
        try:
            _lock(fd, self.path)
            if os.fstat(fd).st_size == 0:
                os.pwrite(fd, header.pack(), 0)
                os.fsync(fd)
            index = fmt.scan(fd, self.path)
            h = index.header
            if h.length != header.length or h.segments != header.segments:
                raise SizeMismatch(
                    f"{self.path} holds a checkpoint of {h.length} bytes"
                    + (f" in {len(h.segments)} segments" if h.segments else "")
                    + f"; the buffer has {header.length} bytes"
                    + (f" in {len(header.segments)} segments" if header.segments else ""))
            if h.page_size != header.page_size:
                raise SizeMismatch(f"{self.path} was written with {h.page_size}-byte pages; "
                                   f"this system has {header.page_size}")
        except BaseException:
            os.close(fd)
            self._fd = -1
            raise
        self._index = index
        self._end = index.end
        self._next = index.saves[-1].number + 1 if index.saves else 1

    @property
    def closed(self) -> bool:
        return self._fd < 0

    @property
    def last_save(self) -> int | None:
        """The number of the last complete save in the file (None: none yet)."""
        self._settle(raise_error=False)
        return self._next - 1 if self._next > 1 else None

    def _check_open(self) -> None:
        if self._fd < 0:
            raise CheckpointError(f"the checkpoint of {self.path} is closed")

    def _settle(self, raise_error: bool = True) -> None:
        """Wait for a save in flight; a failure not yet seen by its caller is raised."""
        p = self._pending
        if p is not None:
            p._join()
            if p._error is not None and raise_error and not p._seen:
                p._seen = True
                raise p._error

    def _prepare(self) -> None:
        """Before a save: the previous one is over; a torn tail is cut off."""
        self._settle()
        self._reap(block=False)
        if os.fstat(self._fd).st_size != self._end:
            os.ftruncate(self._fd, self._end)

    def _saved(self, p: PendingSave) -> None:
        """A save in flight is over (``p._error`` says how)."""
        if self._pending is p:
            self._pending = None
        if p._error is None:
            self._finished(p.number, p._end)
        else:
            self._failed(p._runs, p._base)

    def _reap(self, block: bool) -> None:
        """Collect the exit of writers that reported success."""
        for pid in list(self._zombies):
            try:
                done, _ = os.waitpid(pid, 0 if block else os.WNOHANG)
            except ChildProcessError:
                done = pid
            if done:
                self._zombies.remove(pid)

    def _finished(self, number: int, end: int) -> None:
        self._end = end
        self._next = number + 1
        self._need_base = False
        self._carry = []

    def _failed(self, runs: Runs, base: bool) -> None:
        self._carry = merge(self._carry, runs)
        self._need_base = self._need_base or base

    def compact(self) -> int:
        """:func:`compact` the file while it is open here (waits for a save in flight).
        Returns the number of the base now in the file."""
        self._check_open()
        self._prepare()
        fd = _compact(self.path, self._fd)
        os.close(self._fd)
        self._fd = fd
        self._index = fmt.scan(fd, self.path)
        self._end = self._index.end
        return self._next - 1

    def close(self) -> None:
        """Wait for a save in flight, then release the file (and the tracking).
        A failure of that save not yet seen is raised after closing."""
        if self._fd < 0:
            return
        try:
            self._settle()
        finally:
            self._reap(block=True)
            self._release()
            os.close(self._fd)
            self._fd = -1

    def _release(self) -> None:
        pass

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            if getattr(self, "_fd", -1) >= 0:
                self.close()
        except Exception:  # noqa: BLE001, S110 - nothing can be reported from __del__
            pass


class PendingSave:
    """A save whose pages a forked child is still writing (``save(wait=False)``)."""

    def __init__(self, owner: _Base, number: int, pid: int, status_fd: int, runs: Runs,
                 base: bool, end: int) -> None:
        self.number = number
        self._owner = owner
        self._pid = pid
        self._status_fd = status_fd
        self._runs = runs
        self._base = base
        self._end = end
        self._error: SaveFailed | None = None
        self._done = False
        self._seen = False

    @property
    def pid(self) -> int:
        """The writer process (0 for an inline save)."""
        return self._pid

    #: bytes of buffer contents in this save
    @property
    def data_bytes(self) -> int:
        return sum(n for _, n in self._runs)

    def done(self) -> bool:
        """Whether the save is over (without waiting)."""
        if not self._done and select.select([self._status_fd], [], [], 0)[0]:
            self._join()
        return self._done

    def wait(self) -> int:
        """Wait for the child; the save's number, or :class:`SaveFailed`."""
        self._join()
        self._seen = True
        if self._error is not None:
            raise self._error
        return self.number

    def _join(self) -> None:
        """The child writes "ok" to the status pipe once the save is committed and
        fsynced: that ends the save, without waiting for the child's exit (tearing down
        its copy of the page tables); it is reaped later. Anything else (an error
        message, or nothing: the child died) is a failure, judged with its exit status."""
        if self._done:
            return
        first = os.read(self._status_fd, 4096)
        if first == b"ok":
            os.close(self._status_fd)
            self._done = True
            self._owner._zombies.append(self._pid)
            self._owner._saved(self)
            return
        message = first
        while first:
            first = os.read(self._status_fd, 4096)
            message += first
        os.close(self._status_fd)
        try:
            _, status = os.waitpid(self._pid, 0)
        except ChildProcessError:
            status = -1             # reaped by someone else (a SIGCHLD handler)
        self._done = True
        if os.WIFSIGNALED(status) if status != -1 else False:
            why = f"the writer process was killed by signal {os.WTERMSIG(status)}"
        else:
            why = (message.decode(errors="replace") or (
                "the writer process ended without reporting" if status == -1 else
                f"the writer process exited with status {os.waitstatus_to_exitcode(status)}"))
        self._error = SaveFailed(f"save {self.number} of {self._owner.path} failed: {why}")
        self._owner._saved(self)

    def __repr__(self) -> str:
        state = "done" if self._done else "writing"
        return f"<PendingSave {self.number} of {self._owner.path!r} {state}>"


class Checkpoint(_Base):
    """An open checkpoint of one buffer: :meth:`save`, :meth:`close`. Create it with
    :func:`open`."""

    def __init__(self, path: str | os.PathLike[str], buf: Any, *, backend: str = "auto",
                 mode: str = "auto", restore: bool = False, **options: Any) -> None:
        from ..tracker import PartialPageWarning, track
        self._fd = -1
        self._tracker = None
        self._view: memoryview | None = None
        view = _byte_view(buf, "buf")
        if view.nbytes == 0:
            raise SizeMismatch("the buffer is empty: nothing to checkpoint")
        if mode not in ("auto", "fork", "inline"):
            raise ValueError(f"mode must be 'auto', 'fork' or 'inline', not {mode!r}")
        header = fmt.Header(view.nbytes, PAGE_SIZE, uuid.uuid4().bytes, time.time())
        try:
            self._open_file(os.fspath(path), header)
        except BaseException:
            view.release()
            raise
        self._view = view
        try:
            if restore and self._index.saves:
                _restore_into(self._fd, self._index, None, view, self.path)
            with warnings.catch_warnings():
                # a buffer that does not start or end on a page boundary shares its edge
                # pages: writes next to it only make a save a little larger
                warnings.simplefilter("ignore", PartialPageWarning)
                self._tracker = track(view, backend=backend, **options)
            private = _private(self._tracker.object_address, view.nbytes)
            if mode == "fork" and not private:
                raise CheckpointError(
                    "mode='fork' needs private memory: a child's copy-on-write view of "
                    "shared memory (MAP_SHARED, e.g. mmap.mmap(-1, n)) changes with the "
                    "parent's writes; use mode='inline' (and no concurrent writers) or "
                    "pagescan.allocate()")
            #: "fork" or "inline": how saves copy the pages
            self.mode = mode if mode != "auto" else ("fork" if private else "inline")
            if restore and self._index.saves:
                self._tracker.collect(reset=True)     # the buffer equals the last save
                self._need_base = False
        except BaseException:
            self._release()
            os.close(self._fd)
            self._fd = -1
            raise

    @property
    def tracker(self) -> Any:
        """The :class:`pagescan.Tracker` watching the buffer."""
        return self._tracker

    @property
    def backend(self) -> str:
        assert self._tracker is not None
        return str(self._tracker.backend)

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{self.mode}, {self.length} bytes"
        return f"<pagescan.checkpoint.Checkpoint {self.path!r} {state}>"

    def _dirty(self) -> Runs:
        """The written ``(offset, length)`` runs, collected and reset in one step."""
        assert self._tracker is not None
        t = self._tracker
        return [(o, e - o) for o, e in t.offsets(t.collect(reset=True).regions)]

    def save(self, *, wait: bool = True) -> Any:
        """Save the pages written since the previous save (the first save after
        :func:`open` saves the whole buffer). Returns the save's number; with
        ``wait=False`` (fork mode) a :class:`PendingSave` whose ``wait()`` returns it,
        while the child writes. A save in flight is waited for first; if it failed
        and nobody saw it, its :class:`SaveFailed` is raised (its pages are saved
        by the next save)."""
        self._check_open()
        self._prepare()
        number = self._next
        base = self._need_base
        dirty = self._dirty()                 # collected and reset in one step
        runs = [(0, self.length)] if base else merge(dirty, self._carry)
        if self.mode == "inline":
            return self._save_inline(number, base, runs, wait)
        return self._save_fork(number, base, runs, wait)

    def _save_inline(self, number: int, base: bool, runs: Runs, wait: bool) -> Any:
        view = self._view
        assert view is not None
        try:
            end = fmt.write_save(self._fd, self._end, number, base, runs, view=view)
        except BaseException as err:
            self._failed(runs, base)
            raise SaveFailed(f"save {number} of {self.path} failed: {err}") from err
        self._finished(number, end)
        if not wait:
            p = PendingSave(self, number, 0, -1, runs, base, end)
            p._done = p._seen = True
            return p
        return number

    def _save_fork(self, number: int, base: bool, runs: Runs, wait: bool) -> Any:
        assert self._tracker is not None
        assert self._view is not None
        pipes: list[int] = []
        # the run list's bytes and the save's size, made before the fork: after it,
        # every page of the heap this process touches is copied (copy-on-write)
        payload = fmt.runs_bytes(runs) + _END_OF_RUNS
        size = fmt.save_size(runs)
        try:
            r_runs, w_runs = os.pipe()
            pipes += (r_runs, w_runs)
            r_status, w_status = os.pipe()
            pipes += (r_status, w_status)
            pid = os.fork()
        except BaseException as err:
            for fd in pipes:
                os.close(fd)
            self._failed(runs, base)      # collected and reset: due in the next save
            raise SaveFailed(f"save {number} of {self.path} failed: {err}") from err
        if pid == 0:                                          # pragma: no cover - child
            _child(self._fd, self._end, number, base, self._view, r_runs, w_runs,
                   r_status, w_status)
        os.close(r_runs)
        os.close(w_status)
        p = PendingSave(self, number, pid, r_status, runs, base, 0)
        self._pending = p
        try:
            if not base:
                # pages written between the collect and the fork are in the child's view
                # but were not collected: the child saves them too (they are saved again
                # by the next save, as they are still marked written)
                t = self._tracker
                late = t.offsets(t.written())
                if late:
                    p._runs = runs = merge(runs, ((o, e - o) for o, e in late))
                    payload = fmt.runs_bytes(runs) + _END_OF_RUNS
                    size = fmt.save_size(runs)
            p._end = self._end + size
            # count, runs, and an end mark: a list cut short is refused by the child
            try:
                os.write(w_runs, len(runs).to_bytes(8, "little"))
                view = memoryview(payload)
                while view:
                    view = view[os.write(w_runs, view):]
            except BrokenPipeError:
                pass                          # the child died: its status says why
        except BaseException:
            os.close(w_runs)                  # a short run list: the child gives up
            p._join()                         # and the runs stay due
            p._seen = True
            raise
        os.close(w_runs)
        if not wait:
            return p
        return p.wait()

    def _release(self) -> None:
        t, self._tracker = self._tracker, None
        try:
            if t is not None:
                t.close()
        finally:
            view, self._view = self._view, None
            if view is not None:
                view.release()              # the buffer can be closed/resized again


_END_OF_RUNS = b"RUNS-END"


def _child(fd: int, pos: int, number: int, base: bool, view: memoryview, r_runs: int,
           w_runs: int, r_status: int, w_status: int) -> None:  # pragma: no cover
    """The forked writer: reads the run list from the parent, writes the save from its
    copy-on-write view of memory, reports, and leaves with os._exit (no atexit, no
    flushing of the parent's stdio buffers, no finalizers)."""
    code = 1
    try:
        gc.disable()
        os.close(w_runs)
        os.close(r_status)
        chunks = []
        while True:
            chunk = os.read(r_runs, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
        raw = b"".join(chunks)
        count = int.from_bytes(raw[:8], "little")
        if len(raw) != 8 + fmt.RUN * count + len(_END_OF_RUNS) or \
                not raw.endswith(_END_OF_RUNS):
            raise SaveFailed("the parent did not send the whole run list")
        runs = fmt.parse_runs(raw[8:-len(_END_OF_RUNS)])
        # straight from the child's memory, a snapshot nobody writes: no copy (a
        # gathering buffer would be page-faulted afresh in every child)
        fmt.write_save(fd, pos, number, base, runs, lambda off, n: view[off:off + n])
        os.write(w_status, b"ok")
        code = 0
    except BaseException as err:  # noqa: BLE001 - reported to the parent
        try:
            os.write(w_status, f"{type(err).__name__}: {err}".encode()[:4000])
        except BaseException:  # noqa: BLE001, S110
            pass
    finally:
        os._exit(code)


def open(path: str | os.PathLike[str], buf: Any, *, backend: str = "auto",
         mode: str = "auto", restore: bool = False, **options: Any) -> Checkpoint:
    """Open (or create) the checkpoint file ``path`` for the buffer ``buf``.

    ``buf``: a writable contiguous buffer (numpy array, mmap, bytearray, memory from
    :func:`pagescan.allocate`), tracked with ``pagescan.track(buf, backend=backend,
    **options)`` while the checkpoint is open. ``mode``: ``"fork"`` (a save is a
    snapshot of one instant while threads keep writing; private memory only),
    ``"inline"`` (copies in this process; a snapshot only if nothing writes the
    buffer during the save) or ``"auto"`` (fork for private memory, else inline).
    An existing file must be a checkpoint of a buffer of the same size; new saves
    are appended to it. The first save writes the whole buffer, unless
    ``restore=True``: then the last save of the file is first restored into ``buf``
    and saves continue incrementally from it.
    """
    return Checkpoint(path, buf, backend=backend, mode=mode, restore=restore, **options)


# ------------------------------------------------------------------------ reading


def _restore_into(fd: int, index: fmt.Index, save: int | None, dest: memoryview,
                  path: str) -> int:
    i = index.find(save, path)
    b = i
    while index.saves[b].kind != "base":
        b -= 1
    for s in index.saves[b:i + 1]:
        fmt.apply(fd, s, dest, index.header.length, path)
    return index.saves[i].number


def restore(path: str | os.PathLike[str], into: Any = None, *,
            save: int | None = None) -> Any:
    """The buffer as it was at save number ``save`` (default: the last complete save;
    a torn tail is ignored). ``into``: a writable buffer of exactly the checkpoint's
    size, filled and returned; None: a new ``bytearray`` of that size. Every byte read
    is checked against the save's crc32: damage raises :class:`CorruptCheckpoint`
    (and, with ``into``, leaves it partly overwritten)."""
    p = os.fspath(path)
    fd, index = _open_index(p)
    try:
        length = index.header.length
        index.find(save, p)                          # before allocating anything
        if into is None:
            out: Any = bytearray(length)
            view = memoryview(out)
        else:
            view = _byte_view(into, "into")
            out = into
            if view.nbytes != length:
                raise SizeMismatch(f"{p} holds {length} bytes; `into` has {view.nbytes}")
        try:
            _restore_into(fd, index, save, view, p)
        finally:
            view.release()
        return out
    finally:
        os.close(fd)


@dataclass(frozen=True)
class CheckpointInfo:
    """What :func:`info` finds in a checkpoint file."""

    path: str
    version: int
    #: the buffer's size in bytes, and the page size it was tracked with
    length: int
    page_size: int
    #: (address, length) of each range of another process (checkpoint_process)
    segments: tuple[tuple[int, int], ...]
    created: float
    saves: list[SaveInfo]
    file_size: int
    #: bytes after the last complete save: a save cut short, ignored
    torn_bytes: int


def info(path: str | os.PathLike[str]) -> CheckpointInfo:
    """The complete saves of a checkpoint file, and the size of a torn tail."""
    p = os.fspath(path)
    fd, index = _open_index(p)
    os.close(fd)
    h = index.header
    return CheckpointInfo(p, fmt.VERSION, h.length, h.page_size, h.segments, h.created,
                          index.saves, index.size, index.torn_bytes)


def verify(path: str | os.PathLike[str]) -> list[SaveInfo]:
    """Read every save and check its crc32 (:class:`CorruptCheckpoint` if one fails);
    returns the complete saves."""
    p = os.fspath(path)
    fd, index = _open_index(p)
    try:
        for s in index.saves:
            fmt.apply(fd, s, None, index.header.length, p)
        return index.saves
    finally:
        os.close(fd)


def _compact(path: str, fd: int) -> int:
    """Write a one-save file (a base of the last save, keeping its number) beside
    ``path`` and rename it over ``path``; returns a descriptor of the new file, locked."""
    from ..memory import allocate
    index = fmt.scan(fd, path)
    if not index.saves:
        raise NoSuchSave(f"{path} holds no complete save: nothing to compact")
    h = index.header
    image = allocate(h.length)
    try:
        view = memoryview(image)[:h.length]
        number = _restore_into(fd, index, None, view, path)
        tmp = f"{path}.compact{os.getpid()}"
        new = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            _lock(new, tmp)
            os.pwrite(new, h.pack(), 0)
            fmt.write_save(new, h.size, number, True, [(0, h.length)],
                           lambda off, n: view[off:off + n])
            os.rename(tmp, path)
        except BaseException:
            os.close(new)
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        _fsync_dir(path)
        view.release()
        return new
    finally:
        image.close()


def compact(path: str | os.PathLike[str]) -> int:
    """Fold every save into one base holding the last save (same number): the new
    file is written beside the old one, fsynced and renamed over it, so a crash
    leaves either file whole. Refused (:class:`CheckpointBusy`) while a
    :class:`Checkpoint` holds the file open; use its :meth:`Checkpoint.compact`.
    Returns the save number of the base."""
    p = os.fspath(path)
    fd = os.open(p, os.O_RDWR | os.O_CLOEXEC)
    try:
        _lock(fd, p)
        new = _compact(p, fd)
    finally:
        os.close(fd)
    try:
        return fmt.scan(new, p).saves[-1].number
    finally:
        os.close(new)
