"""pagescan.procfs: the one parser of /proc/PID/maps, error translation, liveness."""

from __future__ import annotations

import mmap
import os
import subprocess
import sys

import pytest

from pagescan import AccessDenied, KernelError, NoSuchProcess, procfs
from pagescan.procfs import Mapping, parse_maps

MAPS = """\
55d0c0a00000-55d0c0a02000 r--p 00000000 08:01 1234                       /usr/bin/python3.11
55d0c1000000-55d0c1400000 rw-p 00000000 00:00 0                          [heap]
7f0000000000-7f0000100000 rw-p 00000000 00:00 0 $
7f0000200000-7f0000201000 rw-s 0000a000 00:05 99                         /dev/shm/my file (deleted)
7ffd00100000-7ffd00104000 r--p 00000000 00:00 0                          [vvar]
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
short line
""".replace(" $\n", " \n")


def test_parse_maps_fields():
    maps = parse_maps(MAPS)
    assert len(maps) == 6
    assert maps[0] == Mapping(0x55D0C0A00000, 0x55D0C0A02000, "r--p", 0, "08:01", 1234,
                              "/usr/bin/python3.11")
    assert maps[2].path == "" and maps[2].label == "[anon]" and maps[2].writable
    shm = maps[3]
    assert shm.path == "/dev/shm/my file (deleted)" and shm.offset == 0xA000
    assert shm.shared and shm.writable and shm.readable and not shm.executable
    assert shm.inode == 99 and shm.device == shm.dev == "00:05"
    assert maps[4].special and not maps[1].special
    assert maps[5].executable and not maps[5].readable
    assert parse_maps(MAPS.encode()) == maps
    assert parse_maps("") == []
    assert shm.as_json()["path"] == shm.path and shm.size == 4096


def test_read_maps_of_this_process_sees_a_new_mapping():
    import ctypes
    m = mmap.mmap(-1, 3 * mmap.PAGESIZE)
    cell = ctypes.c_char.from_buffer(m)
    a = ctypes.addressof(cell)
    del cell
    try:
        found = [x for x in procfs.read_maps(os.getpid()) if x.start <= a < x.end]
        assert len(found) == 1 and found[0].perms.startswith("rw")
        assert found == [x for x in procfs.read_maps("self") if x.start <= a < x.end]
    finally:
        m.close()
    assert procfs.map_count() > 5


def test_errors_name_the_cause():
    err = procfs.proc_error(PermissionError(13, "Permission denied"), 1, "reading x")
    assert isinstance(err, AccessDenied) and isinstance(err, PermissionError)
    assert "ptrace read access to process 1" in str(err)
    err = procfs.proc_error(OSError(3, "No such process"), 5, "writing /proc/5/clear_refs")
    assert isinstance(err, NoSuchProcess) and isinstance(err, ProcessLookupError)
    assert "no process with PID 5" in str(err) and "process 5 does not exist" in str(err)
    err = procfs.proc_error(PermissionError(13, "x"), 5, "writing /proc/5/clear_refs")
    assert "clear_refs needs the same user" in str(err)
    err = procfs.proc_error(OSError(5, "Input/output error"), 5, "reading y")
    assert isinstance(err, KernelError) and str(err).endswith("reading y: Input/output error")
    same = NoSuchProcess("x")
    assert procfs.proc_error(same, 1, "z") is same


def test_a_missing_process():
    pid_max = int(open("/proc/sys/kernel/pid_max").read())
    assert not procfs.alive(pid_max + 1)
    with pytest.raises(NoSuchProcess, match=f"no process with PID {pid_max + 1}"):
        procfs.read_maps(pid_max + 1)
    with pytest.raises(NoSuchProcess):
        procfs.open_pagemap(pid_max + 1)
    with pytest.raises(NoSuchProcess):
        procfs.read_status(pid_max + 1)
    assert procfs.process_name(pid_max + 1) == "?"


def test_liveness_of_a_zombie():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    os.waitid(os.P_PID, p.pid, os.WEXITED | os.WNOWAIT)    # exited, not reaped: a zombie
    try:
        assert not procfs.alive(p.pid)
        with pytest.raises(NoSuchProcess, match="has exited"):
            procfs.read_maps(p.pid)
    finally:
        p.wait()
    assert procfs.alive(os.getpid()) and procfs.alive("self")


def test_status_and_name():
    st = procfs.read_status()
    assert int(st["Pid"]) == os.getpid()
    assert procfs.owner_uid(os.getpid()) == str(os.geteuid())
    assert "python" in procfs.process_name(os.getpid()).lower() or \
        sys.executable in procfs.process_name(os.getpid())


def test_thp_settings_are_one_word():
    s = procfs.thp_settings()
    assert s["enabled"] in (None, "always", "madvise", "never")


def _key(m):
    return (m.start, m.end, m.perms, m.offset, m.inode)


@pytest.mark.parametrize("procmap_query", [True, False])
def test_mappings_in_equals_the_maps_that_overlap(monkeypatch, procmap_query):
    """LinuxKernel.mappings_in (PROCMAP_QUERY on 6.11+, else the maps text parsed
    only where it overlaps) gives what maps() gives for the range."""
    import mmap

    import pagescan
    from pagescan import kernel as kmod
    from pagescan._impl import impl

    if not procmap_query:
        monkeypatch.setattr(kmod, "_PROCMAP_QUERY_MISSING", [True])
    k = kmod.LinuxKernel()
    try:
        priv = pagescan.allocate(16 * pagescan.PAGE_SIZE)
        shared = mmap.mmap(-1, 4 * pagescan.PAGE_SIZE)
        a = impl.buffer_address(shared)[0]
        ranges = [(priv.address, priv.address + 16 * pagescan.PAGE_SIZE), (a, a + 4096),
                  (min(a, priv.address), max(a, priv.address) + (1 << 20)), (0, 4096)]
        for lo, hi in ranges:
            want = [_key(m) for m in k.maps() if m.start < hi and lo < m.end]
            assert [_key(m) for m in k.mappings_in(lo, hi)] == want
        assert [m.shared for m in k.mappings_in(a, a + 4096)] == [True]
        # each named mapping alone, name and device included: files, [stack], [vvar]
        # (which a soft-dirty scan must skip: the kernel has no page entries for it)
        named = [m for m in k.maps() if m.path and m.path != "[vsyscall]"]  # not a VMA
        assert any(m.path.startswith("/") for m in named)
        assert any(m.path == "[stack]" for m in named)
        for m in named:
            assert k.mappings_in(m.start, m.end) == [m], m
        priv.close()
        shared.close()
    finally:
        k.close()


def test_parse_maps_in_parses_only_the_overlap():
    text = ("1000-2000 rw-p 00000000 00:00 0\n"
            "2000-3000 r--s 00001000 08:01 12 /f\n"
            "5000-6000 rw-p 00000000 00:00 0 [heap]\n")
    assert [(m.start, m.end) for m in procfs.parse_maps_in(text, 0x1800, 0x5001)] == [
        (0x1000, 0x2000), (0x2000, 0x3000), (0x5000, 0x6000)]
    assert procfs.parse_maps_in(text, 0x3000, 0x5000) == []
    assert procfs.parse_maps_in(text, 0x2000, 0x2001)[0].path == "/f"
