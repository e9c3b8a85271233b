"""Record real /proc/self/pagemap entries of known page kinds (the unit tests' data).

    python tests/data/record_pagemap.py        # writes pagemap-<kernel>.bin and .json

Each entry is one little-endian u64, in the order of the ``kinds`` list in the JSON
file. Run as root to record PFNs (bits 0-54); without CAP_SYS_ADMIN they read 0.
"""

from __future__ import annotations

import ctypes
import json
import mmap
import os
import platform
import struct
import sys
import tempfile

PAGE = mmap.PAGESIZE
MADV_GUARD_INSTALL = 102          # Linux 6.13+

libc = ctypes.CDLL(None, use_errno=True)
libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]


def address(m: mmap.mmap) -> int:
    return ctypes.addressof((ctypes.c_char * len(m)).from_buffer(m))


def entry(addr: int) -> int:
    with open("/proc/self/pagemap", "rb") as f:
        return struct.unpack("<Q", os.pread(f.fileno(), 8, addr // PAGE * 8))[0]


def main(outdir: str) -> None:
    kinds: list[str] = []
    entries: list[int] = []
    keep = []

    def add(kind: str, addr: int) -> None:
        kinds.append(kind)
        entries.append(entry(addr))

    anon = mmap.mmap(-1, 4 * PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    keep.append(anon)
    a = address(anon)
    anon[0] = 1                                  # written: present, exclusive
    _ = anon[2 * PAGE]                           # read fault: the shared zero page
    add("anon_written", a)
    add("none", a + PAGE)                        # never touched
    add("zero_page", a + 2 * PAGE)

    with tempfile.TemporaryFile() as f:
        f.write(b"x" * 2 * PAGE)
        f.flush()
        fm = mmap.mmap(f.fileno(), 2 * PAGE, flags=mmap.MAP_PRIVATE)
        keep.append(fm)
        _ = fm[0]                                # read: the page cache page is mapped
        add("file", address(fm))

    shm = mmap.mmap(-1, PAGE, flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)
    keep.append(shm)
    shm[0] = 1
    add("shmem_written", address(shm))

    guard = mmap.mmap(-1, PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    keep.append(guard)
    g = address(guard)
    if libc.madvise(g, PAGE, MADV_GUARD_INSTALL) == 0:
        add("guard", g)

    name = f"pagemap-{platform.release().split('-')[0]}"
    with open(os.path.join(outdir, name + ".bin"), "wb") as f:
        f.write(struct.pack(f"<{len(entries)}Q", *entries))
    with open(os.path.join(outdir, name + ".json"), "w") as f:
        json.dump({"kernel": platform.release(), "machine": platform.machine(),
                   "euid": os.geteuid(), "page_size": PAGE, "kinds": kinds}, f, indent=1)
        f.write("\n")
    for k, e in zip(kinds, entries, strict=True):
        print(f"{k:14} 0x{e:016x}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__)))
