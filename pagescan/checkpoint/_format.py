"""The checkpoint file: layout, the index scan (which saves are complete), writing a
save, and applying saves to a buffer. See docs/checkpoint.md for the format.

Everything here works on a file descriptor with positional I/O (``pread``/``pwritev``),
so a forked child and its parent share the descriptor without sharing an offset.
"""

from __future__ import annotations

import array
import os
import signal
import struct
import sys
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import PagescanError

__all__ = [
    "CheckpointBusy", "CheckpointError", "CorruptCheckpoint", "NoSuchSave", "NotACheckpoint",
    "SaveFailed", "SaveInfo", "SizeMismatch", "UnsupportedVersion",
]

MAGIC = b"\x89PSCKPT\n"
VERSION = 1
#: magic, version, header size, page size, flags, buffer length, file id, created, segments
FIXED = struct.Struct("<8sIIIIQ16sdI")
SEGMENT = struct.Struct("<QQ")            # address, length (checkpoints of another process)
CRC = struct.Struct("<I")
#: tag, save number, payload length, runs, crc32 of the first 24 bytes, padding
RECORD = struct.Struct("<4sIQQI4x")
#: where the save's data record starts, its page bytes, time, crc32 of the data record,
#: crc32 of the commit record (its header and the 28 bytes before this field)
COMMIT = struct.Struct("<QQdII")
BASE, DELTA, DONE = b"BASE", b"DLTA", b"DONE"
RUN = 16                                    # one (offset, length) pair of u64
COMMIT_SIZE = RECORD.size + COMMIT.size

#: at most this many bytes or buffers per pwritev/preadv call
CHUNK = 8 << 20
IOV_MAX = 1024

#: test hook: "N:FD" makes a save's writer stop after N bytes of the save, write one
#: byte to FD and wait for a signal (the kill -9 tests; see docs/checkpoint.md)
STALL_ENV = "PAGESCAN_CHECKPOINT_STALL"


# ------------------------------------------------------------------------ errors


class CheckpointError(PagescanError):
    """Base class of the checkpoint errors."""


class NotACheckpoint(CheckpointError, ValueError):
    """The file is not a pagescan checkpoint (wrong magic number, empty)."""


class UnsupportedVersion(CheckpointError, ValueError):
    """The file is a checkpoint of a format version this pagescan cannot read."""


class CorruptCheckpoint(CheckpointError, ValueError):
    """A checksum or a structure check failed in a part of the file that was complete
    (not a torn tail): the file was damaged after it was written."""


class SizeMismatch(CheckpointError, ValueError):
    """The buffer's size (or page size) differs from the checkpoint's."""


class NoSuchSave(CheckpointError, LookupError):
    """The save number asked for is not in the file (never made, torn, or folded
    into a base by :func:`compact`)."""


class CheckpointBusy(CheckpointError):
    """Another open checkpoint (in this or another process) holds the file's lock."""


class SaveFailed(CheckpointError):
    """A save did not complete (write error, full disk, the writer was killed). The
    file still holds every earlier save; the pages of the failed save are written by
    the next one."""


# ------------------------------------------------------------------------ header


@dataclass(frozen=True)
class Header:
    length: int
    page_size: int
    file_id: bytes
    created: float
    segments: tuple[tuple[int, int], ...] = ()
    flags: int = 0

    @property
    def size(self) -> int:
        return header_size(len(self.segments))

    def pack(self) -> bytes:
        body = FIXED.pack(MAGIC, VERSION, self.size, self.page_size, self.flags, self.length,
                          self.file_id, self.created, len(self.segments))
        body += b"".join(SEGMENT.pack(a, n) for a, n in self.segments)
        return body + CRC.pack(zlib.crc32(body))


def header_size(nsegs: int) -> int:
    return FIXED.size + SEGMENT.size * nsegs + CRC.size


def read_header(fd: int, size: int, what: str) -> Header:
    head = os.pread(fd, FIXED.size, 0)
    if len(head) < len(MAGIC) or head[:len(MAGIC)] != MAGIC:
        if not head:
            raise NotACheckpoint(f"{what} is empty: not a pagescan checkpoint")
        raise NotACheckpoint(f"{what} is not a pagescan checkpoint (no magic number "
                             f"{MAGIC!r} at the start)")
    if len(head) >= 12:
        (version,) = struct.unpack_from("<I", head, 8)
        if version != VERSION:
            raise UnsupportedVersion(f"{what} is a checkpoint of format version {version}; "
                                     f"this pagescan reads version {VERSION}")
    if len(head) < FIXED.size:
        raise CorruptCheckpoint(f"{what}: the header is cut short ({size} bytes)")
    _, _, hsize, page, flags, length, file_id, created, nsegs = FIXED.unpack(head)
    if hsize != header_size(nsegs) or hsize > size:
        raise CorruptCheckpoint(f"{what}: bad header size {hsize} ({nsegs} segments, "
                                f"file of {size} bytes)")
    raw = os.pread(fd, hsize, 0)
    (crc,) = CRC.unpack_from(raw, hsize - CRC.size)
    if len(raw) != hsize or zlib.crc32(raw[:-CRC.size]) != crc:
        raise CorruptCheckpoint(f"{what}: header checksum mismatch")
    segs = tuple(SEGMENT.unpack_from(raw, FIXED.size + i * SEGMENT.size)
                 for i in range(nsegs))
    if length == 0 or page <= 0 or page & (page - 1):
        raise CorruptCheckpoint(f"{what}: bad buffer length {length} or page size {page}")
    if segs and sum(n for _, n in segs) != length:
        raise CorruptCheckpoint(f"{what}: the segments do not add up to the length")
    return Header(length, page, file_id, created, segs, flags)


# ------------------------------------------------------------------------ index


@dataclass(frozen=True)
class SaveInfo:
    """One complete save in a checkpoint file."""

    #: save number (1 for the first save of a file; kept by :func:`compact`)
    number: int
    #: "base" (the whole buffer) or "delta" (pages written since the previous save)
    kind: str
    #: byte offset of the save's data record in the file
    offset: int
    #: bytes the save occupies in the file (records, run list and page data)
    file_bytes: int
    #: bytes of buffer contents in the save
    data_bytes: int
    #: runs of contiguous bytes in the save
    runs: int
    #: when the save was committed (time.time())
    time: float
    #: crc32 of the data record (checked by restore and :func:`verify`)
    crc: int = field(repr=False, default=0)


@dataclass(frozen=True)
class Index:
    header: Header
    saves: list[SaveInfo]
    #: end of the last complete save: where the next save goes
    end: int
    #: size of the file; bytes past ``end`` are a torn tail (an incomplete save)
    size: int

    @property
    def torn_bytes(self) -> int:
        return self.size - self.end

    def find(self, number: int | None, what: str) -> int:
        """The position in ``saves`` of save ``number`` (None: the last)."""
        if not self.saves:
            raise NoSuchSave(f"{what} holds no complete save")
        if number is None:
            return len(self.saves) - 1
        first = self.saves[0].number
        i = number - first
        if not 0 <= i < len(self.saves):
            raise NoSuchSave(
                f"{what} holds saves {first}..{self.saves[-1].number}, not {number}"
                + (" (earlier saves were folded into a base by compact())"
                   if number < first else ""))
        return i


class _Torn(Exception):
    """The save starting at the current position is incomplete."""


def _zero_tail(fd: int, pos: int, size: int) -> bool:
    """Whether every byte from ``pos`` to the end of the file is zero (what a crash of
    the machine before fsync can leave: the size grew, the contents never landed)."""
    while pos < size:
        chunk = os.pread(fd, min(CHUNK, size - pos), pos)
        if not chunk:
            return True
        if chunk.count(0) != len(chunk):
            return False
        pos += len(chunk)
    return True


def _record(fd: int, pos: int, size: int, what: str,
            save_start: int) -> tuple[bytes, int, int, int]:
    if pos + RECORD.size > size:
        raise _Torn
    raw = os.pread(fd, RECORD.size, pos)
    if len(raw) < RECORD.size:
        raise _Torn
    tag, number, plen, nruns, crc = RECORD.unpack(raw)
    if zlib.crc32(raw[:24]) != crc:
        if _zero_tail(fd, save_start, size):
            raise _Torn
        raise CorruptCheckpoint(f"{what}: record header checksum mismatch at byte {pos}")
    return tag, number, plen, nruns


def scan(fd: int, what: str) -> Index:
    """Read the header and walk the records: the complete saves, and where a torn
    tail (a save cut short) starts. Checks every record header and commit record;
    page data is checked when it is read (:func:`apply`, :func:`verify`)."""
    size = os.fstat(fd).st_size
    header = read_header(fd, size, what)
    saves: list[SaveInfo] = []
    pos = header.size
    while pos < size:
        start = pos
        try:
            tag, number, plen, nruns = _record(fd, pos, size, what, start)
            where = f"{what}: save {number} at byte {pos}"
            if tag not in (BASE, DELTA):
                raise CorruptCheckpoint(f"{where}: expected a base or delta record, found "
                                        f"{tag!r}")
            if saves and number != saves[-1].number + 1:
                raise CorruptCheckpoint(f"{where}: follows save {saves[-1].number}")
            if not saves and tag != BASE:
                raise CorruptCheckpoint(f"{where}: the first save of a file must be a base")
            data = plen - RUN * nruns
            if plen < RUN * nruns or data > header.length or number == 0:
                raise CorruptCheckpoint(f"{where}: inconsistent sizes ({nruns} runs, "
                                        f"{plen} payload bytes)")
            pos += RECORD.size + plen
            ctag, cnum, cplen, _ = _record(fd, pos, size, what, start)
            if ctag != DONE or cnum != number or cplen != COMMIT.size:
                raise CorruptCheckpoint(f"{where}: the data record is not followed by its "
                                        "commit record")
            if pos + COMMIT_SIZE > size:
                raise _Torn
            raw = os.pread(fd, COMMIT_SIZE, pos)
            cstart, cdata, when, dcrc, ccrc = COMMIT.unpack_from(raw, RECORD.size)
            if zlib.crc32(raw[:-4]) != ccrc:
                if _zero_tail(fd, start, size):
                    raise _Torn
                raise CorruptCheckpoint(f"{where}: commit record checksum mismatch")
            if cstart != start or cdata != data:
                raise CorruptCheckpoint(f"{where}: the commit record does not match its save")
            pos += COMMIT_SIZE
        except _Torn:
            return Index(header, saves, start, size)
        saves.append(SaveInfo(number, "base" if tag == BASE else "delta", start, pos - start,
                              data, nruns, when, dcrc))
    return Index(header, saves, pos, size)


# ------------------------------------------------------------------------ writing


def _stall_config() -> tuple[int, int] | None:
    spec = os.environ.get(STALL_ENV)
    if not spec:
        return None
    n, _, fd = spec.partition(":")
    return int(n), int(fd)


def _stall(fd: int) -> None:
    os.write(fd, b"s")
    while True:                               # until the test kills this process
        signal.pause()


class Writer:
    """Appends one save at ``pos``: positional writes of many buffers per call, a crc32
    of every byte written. The test hook (STALL_ENV) stops it at an exact byte."""

    def __init__(self, fd: int, pos: int) -> None:
        self.fd = fd
        self.start = self.pos = pos
        self.crc = 0
        self.stall = _stall_config()
        self._bufs: list[Any] = []
        self._pending = 0

    def add(self, buf: Any, crc: bool = True) -> None:
        if crc:
            self.crc = zlib.crc32(buf, self.crc)
        self._bufs.append(buf)
        self._pending += len(buf)
        if len(self._bufs) >= IOV_MAX or self._pending >= CHUNK:
            self.flush()

    def flush(self) -> None:
        bufs, self._bufs, self._pending = self._bufs, [], 0
        if self.stall is not None:
            limit, notify = self.stall
            for b in bufs:
                room = self.start + limit - self.pos
                if len(b) >= room:
                    self._write([memoryview(b)[:room]])
                    _stall(notify)
                self._write([b])
            return
        self._write(bufs)

    def _write(self, bufs: list[Any]) -> None:
        views = [memoryview(b).cast("B") for b in bufs]
        while views:
            n = os.pwritev(self.fd, views, self.pos)
            if n <= 0:
                raise OSError(28, "pwritev wrote nothing")
            self.pos += n
            while views and n >= len(views[0]):
                n -= len(views[0])
                views.pop(0)
            if n:
                views[0] = views[0][n:]


def record_header(tag: bytes, number: int, plen: int, nruns: int) -> bytes:
    raw = RECORD.pack(tag, number, plen, nruns, 0)
    return RECORD.pack(tag, number, plen, nruns, zlib.crc32(raw[:24]))


def runs_bytes(runs: Sequence[tuple[int, int]]) -> bytes:
    flat = array.array("Q", [x for run in runs for x in run])
    if sys.byteorder != "little":
        flat.byteswap()
    return flat.tobytes()


def parse_runs(raw: bytes) -> list[tuple[int, int]]:
    """The inverse of :func:`runs_bytes`."""
    flat = array.array("Q")
    flat.frombytes(raw[:len(raw) // RUN * RUN])
    if sys.byteorder != "little":
        flat.byteswap()
    return list(zip(flat[0::2], flat[1::2], strict=True))


def save_size(runs: Sequence[tuple[int, int]]) -> int:
    """Bytes a save of ``runs`` adds to the file."""
    return RECORD.size + RUN * len(runs) + sum(n for _, n in runs) + COMMIT_SIZE


def _groups(runs: Sequence[tuple[int, int]]) -> Iterator[list[tuple[int, int]]]:
    """``runs`` in groups of at most CHUNK bytes (a longer run is cut)."""
    group: list[tuple[int, int]] = []
    size = 0
    for off, n in runs:
        while n:
            k = min(n, CHUNK - size)
            group.append((off, k))
            size += k
            off += k
            n -= k
            if size == CHUNK:
                yield group
                group, size = [], 0
    if group:
        yield group


def write_save(fd: int, pos: int, number: int, base: bool,
               runs: Sequence[tuple[int, int]], read: Callable[[int, int], Any] | None = None,
               sync: bool = True, *, view: memoryview | None = None) -> int:
    """Write save ``number`` (its data record and commit record) at ``pos``. The data:
    from ``view`` (bytes), gathered CHUNK bytes at a time into one copy (so that a
    store racing the save cannot make the bytes written differ from the bytes
    checksummed), or ``read(off, n)``, which gives ``n`` bytes at ``off`` (at most
    CHUNK at a time). Returns the end of the save. The commit record is written
    last, then fsync."""
    data = sum(n for _, n in runs)
    w = Writer(fd, pos)
    w.add(record_header(BASE if base else DELTA, number, RUN * len(runs) + data, len(runs)))
    w.add(runs_bytes(runs))
    if view is not None:
        for group in _groups(runs):
            w.add(b"".join([view[off:off + n] for off, n in group]))
    else:
        assert read is not None
        for off, n in runs:
            while n:
                k = min(n, CHUNK)
                w.add(read(off, k))
                off += k
                n -= k
    commit = record_header(DONE, number, COMMIT.size, 0)
    body = COMMIT.pack(pos, data, time.time(), w.crc, 0)[:-4]
    w.add(commit + body + CRC.pack(zlib.crc32(commit + body)), crc=False)
    w.flush()
    if sync:
        os.fsync(fd)
    return w.pos


# ------------------------------------------------------------------------ reading


def read_runs(fd: int, s: SaveInfo, length: int, what: str) -> tuple[list[tuple[int, int]], int]:
    """The runs of save ``s`` (checked against the buffer length), and the crc32 of its
    record header and run list (the start of its data crc)."""
    raw = os.pread(fd, RECORD.size + RUN * s.runs, s.offset)
    runs = parse_runs(raw[RECORD.size:])
    if len(runs) != s.runs:
        raise CorruptCheckpoint(f"{what}: the file ended inside save {s.number}")
    prev = 0
    total = 0
    for off, n in runs:
        if off < prev or n == 0 or off + n > length:
            raise CorruptCheckpoint(f"{what}: save {s.number} has a bad run list "
                                    f"(run {off}+{n}, buffer of {length} bytes)")
        prev = off + n
        total += n
    if total != s.data_bytes:
        raise CorruptCheckpoint(f"{what}: save {s.number}: run list and data size disagree")
    return runs, zlib.crc32(raw)


def _readinto(fd: int, views: list[memoryview], pos: int) -> None:
    """Fill ``views`` from the file at ``pos``. A view the kernel cannot write into
    (EFAULT: memory write-protected by the mprotect backend) is filled through a copy."""
    while views:
        try:
            n = os.preadv(fd, views, pos)
        except OSError as err:
            if err.errno != 14:                   # EFAULT
                raise
            v = views.pop(0)
            chunk = os.pread(fd, len(v), pos)
            if len(chunk) != len(v):
                raise CorruptCheckpoint("the file ended inside a save") from None
            v[:] = chunk
            pos += len(v)
            continue
        if n <= 0:
            raise CorruptCheckpoint("the file ended inside a save")
        pos += n
        while views and n >= len(views[0]):
            n -= len(views[0])
            views.pop(0)
        if n:
            views[0] = views[0][n:]


def apply(fd: int, s: SaveInfo, dest: memoryview | None, length: int, what: str) -> None:
    """Copy save ``s`` into ``dest`` (None: only check it), checking its crc32."""
    runs, crc = read_runs(fd, s, length, what)
    pos = s.offset + RECORD.size + RUN * s.runs
    if dest is None:                           # the page data is contiguous in the file
        left = s.data_bytes
        while left:
            chunk = os.pread(fd, min(CHUNK, left), pos)
            if not chunk:
                raise CorruptCheckpoint(f"{what}: the file ended inside save {s.number}")
            crc = zlib.crc32(chunk, crc)
            pos += len(chunk)
            left -= len(chunk)
    i = 0
    while dest is not None and i < len(runs):
        views: list[memoryview] = []
        total = 0
        while i < len(runs) and len(views) < IOV_MAX and total < CHUNK:
            off, n = runs[i]
            views.append(dest[off:off + n])
            total += n
            i += 1
        _readinto(fd, list(views), pos)
        for v in views:
            crc = zlib.crc32(v, crc)
        pos += total
    if crc != s.crc:
        raise CorruptCheckpoint(
            f"{what}: save {s.number}: page data checksum mismatch (the file was damaged"
            + ("; the destination buffer was partly overwritten)" if dest is not None
               else ")"))
