"""pagescan.checkpoint: incremental checkpoints of a buffer.

Round trips over several saves (numpy arrays, allocate() memory, mmap), restore by
number, compact, torn tails at every byte of the last save, a kill -9 of the writer
(and of a whole process) mid-save, a full disk (RLIMIT_FSIZE), damaged and foreign
files, and writer threads running during fork-mode saves: every restore must be the
memory of one instant (stripes carry a generation counter written in a fixed page
order, so a torn copy is visible). Synchronisation is by pipes and conditions only.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import random
import signal
import subprocess
import sys
import threading
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest

import pagescan
import pagescan.checkpoint as ck
from pagescan.checkpoint import _format as fmt

from conftest import require, scaled

P = mmap.PAGESIZE
#: where the pagescan under test is imported from (the source tree or site-packages):
#: child Python processes import the same one
IMPORT_ROOT = str(Path(pagescan.__file__).resolve().parent.parent)
CHILD_ENV = dict(os.environ, PYTHONPATH=IMPORT_ROOT)


def _backends() -> list[str]:
    return ["uffd", "mprotect"]


@pytest.fixture(params=_backends())
def backend(request: pytest.FixtureRequest) -> str:
    p = pagescan.probe(request.param)
    require(p.ok, p.reason)
    return str(request.param)


def write_random_pages(arr: np.ndarray, rng: random.Random, n: int) -> None:
    """Change ``n`` random pages of a uint8 array (one random byte each)."""
    for _ in range(n):
        off = rng.randrange(arr.nbytes)
        arr[off] = (int(arr[off]) + 1 + rng.randrange(255)) % 256


# ------------------------------------------------------------------------ round trips


@pytest.mark.parametrize("mode", ["fork", "inline"])
def test_round_trip_numpy_every_save(tmp_path: Path, backend: str, mode: str) -> None:
    rng = random.Random(1)
    arr = np.zeros(300 * P + 123, dtype=np.uint8)       # not a whole number of pages
    arr[:] = np.frombuffer(rng.randbytes(arr.nbytes), dtype=np.uint8)
    path = tmp_path / "a.ckpt"
    snaps = []
    with ck.open(path, arr, backend=backend, mode=mode, partial_pages=True) as c:
        assert c.mode == mode and c.backend == backend
        for i in range(6):
            if i:
                write_random_pages(arr, rng, 1 + 7 * i)
            assert c.save() == i + 1
            snaps.append(arr.copy())
    saves = ck.info(path).saves
    assert [s.number for s in saves] == [1, 2, 3, 4, 5, 6]
    assert saves[0].kind == "base" and saves[0].data_bytes == arr.nbytes
    for s in saves[1:]:
        assert s.kind == "delta"
        assert s.data_bytes <= (1 + 7 * (s.number - 1)) * P + 2 * P   # only pages written
    for n, snap in enumerate(snaps, 1):
        got = np.frombuffer(ck.restore(path, save=n), dtype=np.uint8)
        assert got.tobytes() == snap.tobytes()
    out = np.empty_like(arr)
    assert ck.restore(path, into=out) is out
    assert out.tobytes() == arr.tobytes()
    assert ck.verify(path) == saves


def test_a_delta_holds_only_the_pages_written(tmp_path: Path, backend: str) -> None:
    mem = pagescan.allocate(64 * P)
    with ck.open(tmp_path / "m.ckpt", mem, backend=backend) as c:
        c.save()
        mem[3 * P + 5] = 1
        mem[40 * P:42 * P] = b"x" * (2 * P)
        c.save()
        c.save()                                  # nothing written: an empty delta
    saves = ck.info(tmp_path / "m.ckpt").saves
    assert saves[1].data_bytes == 3 * P and saves[1].runs == 2
    assert saves[2].data_bytes == 0 and saves[2].runs == 0
    assert ck.restore(tmp_path / "m.ckpt", save=3) == bytes(mem)


def test_mmap_shared_memory_saves_inline(tmp_path: Path) -> None:
    m = mmap.mmap(-1, 16 * P)                      # MAP_SHARED: fork gives no snapshot
    with pytest.raises(ck.CheckpointError, match="private memory"):
        ck.open(tmp_path / "s.ckpt", m, mode="fork")
    with ck.open(tmp_path / "s.ckpt", m) as c:
        assert c.mode == "inline"
        c.save()
        m[5 * P] = 9
        c.save()
    assert ck.restore(tmp_path / "s.ckpt") == m[:]
    assert ck.info(tmp_path / "s.ckpt").saves[1].data_bytes == P
    m.close()


def test_file_backed_private_mmap(tmp_path: Path) -> None:
    f = tmp_path / "data"
    f.write_bytes(bytes(range(256)) * (8 * P // 256))
    with f.open("r+b") as fh:
        m = mmap.mmap(fh.fileno(), 0, flags=mmap.MAP_PRIVATE)
    with ck.open(tmp_path / "f.ckpt", m) as c:
        assert c.mode == "fork"
        c.save()
        m[P:P + 3] = b"abc"
        c.save()
    assert ck.restore(tmp_path / "f.ckpt", save=1) == f.read_bytes()
    assert ck.restore(tmp_path / "f.ckpt") == m[:]
    m.close()


def test_reopen_with_restore_continues_incrementally(tmp_path: Path) -> None:
    path = tmp_path / "r.ckpt"
    # page-aligned memory: a numpy array's own allocation shares its first and last
    # pages with other objects, whose writes would be saved too (and data_bytes vary)
    a = np.frombuffer(pagescan.allocate(32 * P), dtype=np.uint64)
    a[:] = np.arange(a.size, dtype=np.uint64)
    with ck.open(path, a) as c:
        c.save()
        a[7] = 77
        c.save()
    b = np.frombuffer(pagescan.allocate(32 * P), dtype=np.uint64)
    with ck.open(path, b, restore=True) as c:
        assert (b == a).all()
        b[1000] = 5
        assert c.save() == 3
    s = ck.info(path).saves[2]
    assert s.kind == "delta" and s.data_bytes == P
    assert (np.frombuffer(ck.restore(path), dtype=np.uint64) == b).all()
    with ck.open(path, np.zeros_like(a)) as c:       # no restore: a new base
        assert c.save() == 4
    assert ck.info(path).saves[3].kind == "base"


def test_pending_save_and_the_parent_going_on(tmp_path: Path) -> None:
    mem = pagescan.allocate(32 * P)
    path = tmp_path / "p.ckpt"
    with ck.open(path, mem) as c:
        c.save()
        mem[0] = 1
        pending = c.save(wait=False)
        mem[P] = 2                     # after the fork: not in save 2, in save 3
        assert pending.wait() == 2 and pending.done()
        assert c.last_save == 2
        c.save()
    with pytest.raises(ChildProcessError):        # every writer was reaped by close()
        os.waitpid(pending.pid, os.WNOHANG)
    assert ck.restore(path, save=2)[:P + 1] == b"\x01" + bytes(P)
    assert ck.restore(path, save=3) == bytes(mem)


def test_a_write_between_collect_and_fork_is_in_the_save(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        backend: str) -> None:
    """Regression: a page written after the collect but before the fork is in the
    child's view; the save must hold it, or that save mixes two instants (the page
    would keep its older contents while other pages show the fork's instant)."""
    mem = pagescan.allocate(16 * P)
    path = tmp_path / "w.ckpt"
    real_fork = os.fork

    def fork_after_a_write() -> int:
        mem[9 * P] = 42                               # after collect, before fork
        return real_fork()

    with ck.open(path, mem, backend=backend) as c:
        c.save()
        mem[2 * P] = 1
        monkeypatch.setattr(os, "fork", fork_after_a_write)
        c.save()
        monkeypatch.setattr(os, "fork", real_fork)
        assert ck.restore(path, save=2) == bytes(mem)
        c.save()                                      # still marked written: saved again
    assert ck.info(path).saves[2].data_bytes == P


def test_restore_size_and_type_errors(tmp_path: Path) -> None:
    mem = pagescan.allocate(4 * P)
    path = tmp_path / "e.ckpt"
    with ck.open(path, mem) as c:
        c.save()
    with pytest.raises(ck.SizeMismatch):
        ck.restore(path, into=bytearray(4 * P + 1))
    with pytest.raises(TypeError, match="read-only"):
        ck.restore(path, into=bytes(4 * P))
    with pytest.raises(ck.SizeMismatch, match="16384 bytes"):
        ck.open(path, pagescan.allocate(8 * P))
    with pytest.raises(ck.NoSuchSave, match=r"saves 1\.\.1"):
        ck.restore(path, save=2)
    with pytest.raises(ValueError, match="mode"):
        ck.open(tmp_path / "x.ckpt", mem, mode="threads")


def test_page_size_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "ps.ckpt"
    path.write_bytes(fmt.Header(4 * P, P * 4, b"\0" * 16, 0.0).pack())
    with pytest.raises(ck.SizeMismatch, match="pages"):
        ck.open(path, pagescan.allocate(4 * P))


def test_busy_and_closed(tmp_path: Path) -> None:
    mem = pagescan.allocate(4 * P)
    path = tmp_path / "b.ckpt"
    c = ck.open(path, mem)
    c.save()
    with pytest.raises(ck.CheckpointBusy):
        ck.open(path, pagescan.allocate(4 * P))
    with pytest.raises(ck.CheckpointBusy):
        ck.compact(path)
    c.close()
    c.close()
    with pytest.raises(ck.CheckpointError, match="closed"):
        c.save()
    assert mem.closed is False


# ------------------------------------------------------------------------ compact


def test_compact(tmp_path: Path) -> None:
    rng = random.Random(2)
    arr = np.zeros(50 * P, dtype=np.uint8)
    path = tmp_path / "c.ckpt"
    with ck.open(path, arr) as c:
        for _ in range(5):
            write_random_pages(arr, rng, 5)
            c.save()
    before = path.stat().st_size
    assert ck.compact(path) == 5
    saves = ck.info(path).saves
    assert [(s.number, s.kind) for s in saves] == [(5, "base")]
    assert path.stat().st_size < before
    assert ck.restore(path) == arr.tobytes()
    with pytest.raises(ck.NoSuchSave, match="folded"):
        ck.restore(path, save=4)
    assert not [p for p in tmp_path.iterdir() if p.name != "c.ckpt"]   # no temporary left


def test_compact_while_open_then_save_on(tmp_path: Path) -> None:
    mem = pagescan.allocate(20 * P)
    path = tmp_path / "co.ckpt"
    with ck.open(path, mem) as c:
        c.save()
        mem[P] = 1
        c.save()
        assert c.compact() == 2
        mem[3 * P] = 3
        assert c.save() == 3
    saves = ck.info(path).saves
    assert [(s.number, s.kind) for s in saves] == [(2, "base"), (3, "delta")]
    assert saves[1].data_bytes == P
    assert ck.restore(path) == bytes(mem)


# ------------------------------------------------------------------------ torn tails


def _three_saves(path: Path) -> tuple[bytes, bytes, int]:
    """A small file with saves 1-3; the contents of save 2, of save 3, and where
    save 3 starts."""
    mem = pagescan.allocate(16 * P)
    mem[:] = bytes(range(256)) * (16 * P // 256)
    with ck.open(path, mem) as c:
        c.save()
        mem[2 * P:2 * P + 10] = b"0123456789"
        c.save()
        second = bytes(mem)
        mem[5 * P] = 0xAA
        mem[11 * P + 7] = 0xBB
        c.save()
    return second, bytes(mem), ck.info(path).saves[2].offset


def test_torn_tail_at_every_byte_of_the_last_save(tmp_path: Path) -> None:
    path = tmp_path / "t.ckpt"
    second, third, start = _three_saves(path)
    whole = path.read_bytes()
    cut_file = tmp_path / "cut.ckpt"
    # every byte under --slow; by default both ends of each record boundary region
    # and every 7th byte between (the same checks, a seventh of the restores)
    step = scaled(7, 1)
    cuts = sorted({*range(start, len(whole), step), *range(start, start + 64),
                   *range(max(start, len(whole) - 64), len(whole))})
    for cut in cuts:
        cut_file.write_bytes(whole[:cut])
        i = ck.info(cut_file)
        assert [s.number for s in i.saves] == [1, 2], cut
        assert i.torn_bytes == cut - start, cut
        assert ck.restore(cut_file) == second, cut
    cut_file.write_bytes(whole)
    assert ck.restore(cut_file) == third


def test_the_next_save_cuts_the_torn_tail(tmp_path: Path) -> None:
    path = tmp_path / "t.ckpt"
    second, _, start = _three_saves(path)
    with path.open("r+b") as f:
        f.truncate(start + 100)
    mem = pagescan.allocate(16 * P)
    with ck.open(path, mem, restore=True) as c:
        assert bytes(mem) == second
        mem[P] = 1
        assert c.save() == 3
    i = ck.info(path)
    assert i.torn_bytes == 0 and [s.number for s in i.saves] == [1, 2, 3]
    assert ck.restore(path) == bytes(mem)


def test_torn_first_save_and_zero_tail(tmp_path: Path) -> None:
    path = tmp_path / "z.ckpt"
    second, third, start = _three_saves(path)
    whole = path.read_bytes()
    path.write_bytes(whole + bytes(3 * P))        # a crash before fsync: size, no data
    i = ck.info(path)
    assert i.torn_bytes == 3 * P and ck.restore(path) == third
    path.write_bytes(whole[:start] + bytes(len(whole) - start))
    assert ck.restore(path) == second
    first = ck.info(path).saves[0]
    path.write_bytes(whole[:first.offset + first.file_bytes - 1])
    assert ck.info(path).saves == []
    with pytest.raises(ck.NoSuchSave, match="no complete save"):
        ck.restore(path)


# ------------------------------------------------------------------------ kill -9


def _stall_pipe(monkeypatch: pytest.MonkeyPatch, nbytes: int) -> int:
    r, w = os.pipe()
    monkeypatch.setenv(fmt.STALL_ENV, f"{nbytes}:{w}")
    return r


def test_kill_9_of_the_writer_mid_save(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mem = pagescan.allocate(64 * P)
    path = tmp_path / "k.ckpt"
    with ck.open(path, mem) as c:
        c.save()
        mem[10 * P:14 * P] = b"k" * (4 * P)
        c.save()
        second = bytes(mem)
        mem[20 * P:30 * P] = b"q" * (10 * P)
        r = _stall_pipe(monkeypatch, 3 * P + 17)
        pending = c.save(wait=False)
        assert os.read(r, 1) == b"s"              # the writer is stopped mid-save
        os.kill(pending.pid, signal.SIGKILL)
        with pytest.raises(ck.SaveFailed, match="killed by signal 9"):
            pending.wait()
        monkeypatch.delenv(fmt.STALL_ENV)
        i = ck.info(path)
        assert i.torn_bytes == 3 * P + 17 and [s.number for s in i.saves] == [1, 2]
        assert ck.restore(path) == second
        mem[40 * P] = 1
        assert c.save() == 3                      # the failed save's pages, and new ones
        assert ck.info(path).saves[2].data_bytes == 11 * P
    assert ck.info(path).torn_bytes == 0
    assert ck.restore(path) == bytes(mem)


def test_a_failed_save_not_waited_for_is_raised_by_the_next(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    mem = pagescan.allocate(8 * P)
    path = tmp_path / "n.ckpt"
    with ck.open(path, mem) as c:
        c.save()
        mem[P] = 1
        r = _stall_pipe(monkeypatch, 10)
        pending = c.save(wait=False)
        os.read(r, 1)
        monkeypatch.delenv(fmt.STALL_ENV)
        os.kill(pending.pid, signal.SIGKILL)
        with pytest.raises(ck.SaveFailed):
            c.save()
        assert c.save() == 2
    assert ck.restore(path) == bytes(mem)


PROGRAM = """
import os, sys
import pagescan, pagescan.checkpoint as ck
mem = pagescan.allocate(32 * 4096)
mem[:] = bytes(range(256)) * 512
c = ck.open(sys.argv[1], mem, mode="inline")
c.save()
mem[4096 * 3:4096 * 3 + 5] = b"hello"
c.save()
mem[4096 * 9:4096 * 12] = b"z" * (3 * 4096)
os.environ["{env}"] = "{stall}:" + sys.argv[2]
c.save()
print("not reached")
"""


def test_kill_9_of_a_whole_process_mid_save(tmp_path: Path) -> None:
    path = tmp_path / "proc.ckpt"
    r, w = os.pipe()
    prog = PROGRAM.format(env=fmt.STALL_ENV, stall=2 * P + 5)
    proc = subprocess.Popen([sys.executable, "-c", prog, str(path), str(w)], pass_fds=(w,),
                            stdout=subprocess.PIPE, env=CHILD_ENV)
    os.close(w)
    try:
        assert os.read(r, 1) == b"s"
    finally:
        proc.kill()
        out, _ = proc.communicate()
        os.close(r)
    assert proc.returncode == -signal.SIGKILL and b"not reached" not in out
    expected = bytearray(bytes(range(256)) * 512)
    expected[3 * P:3 * P + 5] = b"hello"
    i = ck.info(path)
    assert [s.number for s in i.saves] == [1, 2] and i.torn_bytes == 2 * P + 5
    assert ck.restore(path) == expected
    mem = pagescan.allocate(32 * P)
    with ck.open(path, mem, restore=True) as c:
        assert bytes(mem) == expected
        mem[0] = 1
        assert c.save() == 3
    assert ck.info(path).torn_bytes == 0 and ck.restore(path) == bytes(mem)


FULL_DISK = """
import os, resource, sys
import pagescan, pagescan.checkpoint as ck
mem = pagescan.allocate(32 * 4096)
c = ck.open(sys.argv[1], mem)
c.save()
size = os.path.getsize(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (size + 4096, resource.RLIM_INFINITY))
mem[4096 * 4:4096 * 8] = b"f" * (4 * 4096)
try:
    c.save()
except ck.SaveFailed as err:
    print("failed:", err)
resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
mem[4096 * 20] = 7
print("saved", c.save())
c.close()
assert ck.restore(sys.argv[1]) == bytes(mem)
print("ok")
"""


def test_full_disk_mid_save(tmp_path: Path) -> None:
    """A write that fails with EFBIG (RLIMIT_FSIZE, as a full disk fails with ENOSPC)
    leaves a torn tail; the next save cuts it and writes the failed save's pages."""
    path = tmp_path / "full.ckpt"
    out = subprocess.run([sys.executable, "-c", FULL_DISK, str(path)], env=CHILD_ENV,
                         capture_output=True, text=True, check=True).stdout
    assert "File too large" in out and "saved 2" in out and out.endswith("ok\n")
    i = ck.info(path)
    assert [s.number for s in i.saves] == [1, 2] and i.saves[1].data_bytes == 5 * P


# ------------------------------------------------------------------------ bad files


def test_foreign_and_damaged_files(tmp_path: Path) -> None:
    path = tmp_path / "g.ckpt"
    _three_saves(path)
    good = path.read_bytes()
    saves = ck.info(path).saves
    bad = tmp_path / "bad"

    def check(data: bytes, exc: type[Exception], match: str, call=ck.info) -> None:
        bad.write_bytes(data)
        with pytest.raises(exc, match=match):
            call(bad)

    check(b"", ck.NotACheckpoint, "empty")
    check(b"\x89PNG\r\n\x1a\n" + bytes(100), ck.NotACheckpoint, "magic")
    check(b"hello world\n" * 10, ck.NotACheckpoint, "magic")
    check(good[:20], ck.CorruptCheckpoint, "header is cut short")
    check(good[:8] + (2).to_bytes(4, "little") + good[12:], ck.UnsupportedVersion,
          "version 2")
    flip = bytearray(good)
    flip[40] ^= 1                                         # inside the header
    check(bytes(flip), ck.CorruptCheckpoint, "header checksum")
    flip = bytearray(good)
    flip[saves[1].offset + 8] ^= 1                        # save 2's record header
    check(bytes(flip), ck.CorruptCheckpoint, "record header checksum")
    flip = bytearray(good)
    flip[saves[1].offset + saves[1].file_bytes - 10] ^= 1  # save 2's commit record
    check(bytes(flip), ck.CorruptCheckpoint, "commit record checksum")
    flip = bytearray(good)
    flip[saves[1].offset + 32 + 16 * saves[1].runs + 3] ^= 1   # save 2's page data
    bad.write_bytes(bytes(flip))
    assert ck.restore(bad, save=1) == ck.restore(path, save=1)   # before the damage
    check(bytes(flip), ck.CorruptCheckpoint, "page data checksum", ck.restore)
    check(bytes(flip), ck.CorruptCheckpoint, "page data checksum", ck.verify)
    flip = bytearray(good)
    flip[saves[2].offset + 32 + 16 * saves[2].runs + 3] ^= 1   # the last save's data
    check(bytes(flip), ck.CorruptCheckpoint, "page data checksum", ck.restore)
    flip = bytearray(good)
    flip[saves[2].offset + 32 + 9] ^= 1                   # the last save's run list
    check(bytes(flip), ck.CorruptCheckpoint, "run list", ck.restore)
    # a damaged save in the middle is never taken for a torn tail
    swapped = good[:saves[1].offset] + good[saves[2].offset:]
    check(swapped, ck.CorruptCheckpoint, "follows save 1")
    bad.write_bytes(b"x" * 9)
    with pytest.raises(ck.NotACheckpoint):
        ck.open(bad, pagescan.allocate(16 * P))
    assert bad.read_bytes() == b"x" * 9                   # left alone
    assert issubclass(ck.CheckpointError, pagescan.PagescanError)


# ------------------------------------------------------------------------ consistency


STRIPES, STRIPE_PAGES = 4, 8
WORDS = P // 8


def torn_stripes(image: bytes | np.ndarray) -> list[tuple[int, list[int]]]:
    """Stripes whose generations are not those of one instant: writers write
    generation g to pages 0..K-1 of a stripe in order, so at any instant a stripe
    reads g, .., g, g-1, .., g-1."""
    gens = np.frombuffer(image, dtype=np.uint64)[::WORDS].reshape(STRIPES, STRIPE_PAGES)
    bad = []
    for s, row in enumerate(gens.tolist()):
        ok = all(a >= b for a, b in pairwise(row)) and row[-1] >= row[0] - 1
        if not ok:
            bad.append((s, row))
    return bad


def test_the_torn_stripe_check_sees_a_torn_copy() -> None:
    image = np.zeros(STRIPES * STRIPE_PAGES * WORDS, dtype=np.uint64)
    for s in range(STRIPES):
        image[s * STRIPE_PAGES * WORDS:(s + 1) * STRIPE_PAGES * WORDS:WORDS] = 5
    image[3 * WORDS] = 4                                     # 5 5 5 4 5 5 5 5: torn
    assert torn_stripes(image) == [(0, [5, 5, 5, 4, 5, 5, 5, 5])]
    image[3 * WORDS] = 5
    image[5 * WORDS:STRIPE_PAGES * WORDS:WORDS] = 4          # 5 5 5 5 5 4 4 4: an instant
    assert torn_stripes(image) == []
    image[STRIPE_PAGES * WORDS] = 7                          # 7 5 5 ...: two rounds apart
    assert torn_stripes(image)[0][0] == 1


@pytest.mark.parametrize("rounds", [25])
def test_saves_are_snapshots_of_one_instant_while_threads_write(tmp_path: Path,
                                                               backend: str,
                                                               rounds: int) -> None:
    mem = pagescan.allocate(STRIPES * STRIPE_PAGES * P)
    gens = np.frombuffer(mem, dtype=np.uint64)
    stop = threading.Event()
    progress = [0] * STRIPES
    cond = threading.Condition()

    def writer(s: int) -> None:
        base = s * STRIPE_PAGES * WORDS
        g = 0
        while not stop.is_set():
            g += 1
            for k in range(STRIPE_PAGES):
                gens[base + k * WORDS] = g
            with cond:
                progress[s] = g
                cond.notify_all()

    path = tmp_path / "threads.ckpt"
    threads = [threading.Thread(target=writer, args=(s,)) for s in range(STRIPES)]
    with ck.open(path, mem, backend=backend, mode="fork") as c:
        for t in threads:
            t.start()
        try:
            for _ in range(rounds):
                with cond:                      # every writer has moved on since
                    seen = list(progress)
                    cond.wait_for(lambda seen=seen: all(
                        p > q for p, q in zip(progress, seen, strict=True)))
                c.save()
        finally:
            stop.set()
            for t in threads:
                t.join()
        last = c.save()                          # writers stopped: the final memory
    assert last == rounds + 1
    for n in range(1, rounds + 1):
        image = ck.restore(path, save=n)
        assert torn_stripes(image) == [], f"save {n}"
    assert ck.restore(path) == bytes(mem)        # no write lost
    first, later = (np.frombuffer(ck.restore(path, save=n), dtype=np.uint64)[0]
                    for n in (1, rounds))
    assert later > first                         # the writers ran during the saves


# ------------------------------------------------------------------------ another process


def test_read_process_reads_another_process(tmp_path: Path) -> None:
    from pagescan.checkpoint._process import read_process
    m = mmap.mmap(-1, 3 * P, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    m[:] = bytes(range(256)) * (3 * P // 256)
    anchor = ctypes.c_char.from_buffer(m)
    addr = ctypes.addressof(anchor)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:                                  # pragma: no cover - child
        os.read(r, 1)
        os._exit(0)
    try:
        out = bytearray(P + 100)
        read_process(pid, [(addr + P, P), (addr + 50, 100)], out)
        assert out[:P] == m[P:2 * P] and out[P:] == m[50:150]
        with pytest.raises(pagescan.RangeError, match="not mapped"):
            read_process(pid, [(addr, P), (0x1000, 100)], bytearray(P + 100))
    finally:
        os.write(w, b"x")
        os.waitpid(pid, 0)
    with pytest.raises(pagescan.NoSuchProcess):
        read_process(pid, [(addr, 10)], bytearray(10))
    del anchor
    m.close()


def test_checkpoint_process_needs_a_backend_for_other_processes(tmp_path: Path) -> None:
    path = tmp_path / "p.ckpt"
    with pytest.raises(pagescan.BackendUnavailable, match="another process"):
        ck.checkpoint_process(os.getppid(), path, [(0x10000, 0x20000)], backend="uffd")
    if not pagescan.probe("softdirty").ok:
        with pytest.raises(pagescan.BackendUnavailable, match="another process"):
            ck.checkpoint_process(os.getppid(), path, [(0x10000, 0x20000)])
    with pytest.raises(pagescan.RangeError):
        ck.checkpoint_process(os.getppid(), path, [(0x10001, 0x20000)])
    assert not path.exists()


def test_cli_checkpoint_info_and_usage(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                       ) -> None:
    import json

    from pagescan.cli import main
    path = tmp_path / "cli.ckpt"
    _three_saves(path)
    assert main(["checkpoint-info", str(path)]) == 0
    text = capsys.readouterr().out
    assert "3 saves" in text and "save    3 delta" in text
    assert main(["checkpoint-info", str(path), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [s["kind"] for s in doc["saves"]] == ["base", "delta", "delta"]
    with pytest.raises(SystemExit) as exc:
        main(["checkpoint", "123"])                                       # no FILE
    assert exc.value.code == 2
    assert main(["checkpoint", "123", str(tmp_path / "n.ckpt")]) == 2      # no --range
    assert "--range" in capsys.readouterr().err
    assert not (tmp_path / "n.ckpt").exists()
    (tmp_path / "junk").write_bytes(b"junk" * 30)
    assert main(["checkpoint-info", str(tmp_path / "junk")]) == 1
    assert "not a pagescan checkpoint" in capsys.readouterr().err


def test_import_pagescan_does_not_load_checkpoint() -> None:
    code = ("import sys, pagescan; assert 'pagescan.checkpoint' not in sys.modules; "
            "assert pagescan.checkpoint.open; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=CHILD_ENV, check=True).stdout
    assert out == "ok\n"


def test_a_writer_reaped_by_someone_else(tmp_path: Path) -> None:
    """A SIGCHLD handler that reaps every child takes the writer's exit status: the
    save is judged by what the writer reported through its pipe."""
    mem = pagescan.allocate(8 * P)
    path = tmp_path / "reaped.ckpt"
    with ck.open(path, mem) as c:
        c.save()
        mem[P] = 1
        pending = c.save(wait=False)
        os.waitpid(pending.pid, 0)                # what such a handler does
        assert pending.wait() == 2
    assert ck.restore(path) == bytes(mem)


def test_pages_collected_by_a_save_that_fails_early_stay_due(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    """Regression: the collect resets the written pages; a save that fails after it
    (fork refused, an error before the child has its run list) must leave them due
    for the next save, not drop them."""
    mem = pagescan.allocate(16 * P)
    path = tmp_path / "early.ckpt"
    with ck.open(path, mem) as c:
        c.save()
        mem[2 * P] = 1

        def no_fork() -> int:
            raise OSError(12, "Cannot allocate memory")

        monkeypatch.setattr(os, "fork", no_fork)
        with pytest.raises(ck.SaveFailed, match="Cannot allocate memory"):
            c.save()
        monkeypatch.undo()
        mem[4 * P] = 1

        def broken() -> None:
            raise RuntimeError("written() failed")

        monkeypatch.setattr(c.tracker, "written", broken)
        with pytest.raises(RuntimeError, match="written"):
            c.save()
        monkeypatch.undo()
        assert [s.number for s in ck.info(path).saves] == [1]    # no save made of it
        assert c.save() == 2
    assert ck.info(path).saves[1].data_bytes == 2 * P
    assert ck.restore(path) == bytes(mem)


def test_merge_joins_touching_and_overlapping_runs():
    """merge() (a save's runs: one scan's, sorted, plus the carry of a failed save)
    gives the bytes of its inputs as sorted runs, touching and overlapping ones
    joined, with and without carry."""
    import itertools
    import random

    from pagescan.checkpoint import merge
    rng = random.Random(7)
    for _ in range(300):
        runs, pos = [], 0
        for _ in range(rng.randrange(0, 12)):
            pos += rng.choice([0, 0, 1, 4096, 9000])        # touching, or a gap
            n = rng.choice([1, 4096, 8192, 12288])
            runs.append((pos, n))
            pos = pos + n - rng.choice([0, 0, 0, 1])         # sometimes overlapping
        carry = [(rng.randrange(0, 60000), rng.randrange(1, 9000))
                 for _ in range(rng.choice([0, 0, 2]))]
        got = merge(runs, carry)
        covered = {b for o, n in [*runs, *carry] for b in range(o, o + n)}
        assert {b for o, n in got for b in range(o, o + n)} == covered
        assert all(o + n < o2 for (o, n), (o2, _) in itertools.pairwise(got)), got
        assert all(n > 0 for _, n in got)
