"""Files (:class:`SimFile`), VMAs and the /proc/PID/maps view of them."""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from .constants import (ANON, PAGE_SIZE, PROT_WRITE, THP_DEFAULT)

if TYPE_CHECKING:
    from .uffd import SimUffd


class SimFile:
    """A tmpfs file (like memfd_create): its size and which pages are in its page
    cache. Shared by every mapping of it, in every simulated process."""

    _ids = itertools.count(1)

    def __init__(self, size: int, name: str = "memfd") -> None:
        if size < 0:
            raise ValueError("size must be >= 0")
        self.name = name
        self.id = next(SimFile._ids)
        self.size = size
        n = -(-size // PAGE_SIZE)
        self.cached = np.zeros(n, dtype=bool)
        #: written (pwrite, or through a shared mapping): reclaim cannot drop it
        #: without swap; a clean page (allocated by a read fault) it can
        self.dirty = np.zeros(n, dtype=bool)
        #: mappings of each page (PTEs in all processes), for pagemap bit 56 and PAGEOUT
        self.mapcount = np.zeros(n, dtype=np.int32)

    @property
    def npages(self) -> int:
        return len(self.cached)

    def write(self, offset: int, length: int) -> None:
        """pwrite(): the pages of ``[offset, offset+length)`` enter the page cache."""
        if offset < 0 or length < 0 or offset + length > self.size:
            raise ValueError("write beyond the end of the file (no resize is modelled)")
        if length:
            s = slice(offset // PAGE_SIZE, -(-(offset + length) // PAGE_SIZE))
            self.cached[s] = True
            self.dirty[s] = True

    def __repr__(self) -> str:
        return f"<SimFile {self.name!r} {self.size} bytes, {int(self.cached.sum())} cached>"


class Vma:
    """One VMA; ``start``/``end`` are page indexes in the process's window."""

    __slots__ = (
        "account",
        "anon_vma",
        "end",
        "file",
        "fork_child",
        "kind",
        "maybe_guard",
        "pgoff",
        "prot",
        "shared",
        "softdirty",
        "start",
        "thp",
        "uffd",
    )

    def __init__(self, start: int, end: int, kind: str, prot: int, shared: bool,
                 file: SimFile | None, pgoff: int) -> None:
        self.start, self.end = start, end
        self.kind, self.prot, self.shared = kind, prot, shared
        self.file, self.pgoff = file, pgoff
        self.thp = THP_DEFAULT
        self.uffd: SimUffd | None = None
        self.softdirty = True
        self.anon_vma = 0                # 0: none; else an anon_vma identity
        self.fork_child = False          # anon_vma_chain not singular (forked)
        self.maybe_guard = False         # VM_MAYBE_GUARD: guard markers may exist (sticky)
        #: VM_ACCOUNT: private and writable at some point (commit charged); never cleared
        self.account = not shared and bool(prot & PROT_WRITE)

    def copy(self) -> Vma:
        v = Vma(self.start, self.end, self.kind, self.prot, self.shared, self.file, self.pgoff)
        v.thp, v.uffd, v.softdirty = self.thp, self.uffd, self.softdirty
        v.anon_vma, v.fork_child = self.anon_vma, self.fork_child
        v.maybe_guard, v.account = self.maybe_guard, self.account
        return v

    @property
    def anonymous(self) -> bool:
        """vma_is_anonymous(): private anonymous (shmem and files are not)."""
        return self.kind == ANON

    def flags_key(self) -> tuple:
        """What must be equal for two VMAs to merge (VM_SOFTDIRTY excluded)."""
        return (self.prot, self.shared, self.thp, self.uffd is not None, self.account)

    def wp_async(self) -> bool:
        """WP-async: registered in WP mode with WP_ASYNC (and markers in use)."""
        u = self.uffd
        return u is not None and u.wp_async and self.use_markers()

    def use_markers(self) -> bool:
        """userfaultfd_wp_use_markers(): file-backed always, anonymous with WP_UNPOPULATED."""
        u = self.uffd
        return u is not None and (not self.anonymous or u.wp_unpopulated)

    def fidx(self, i: int) -> int:
        return self.pgoff + (i - self.start)


class VmaInfo(NamedTuple):
    """A line of /proc/PID/maps, plus what the model knows of the VMA."""

    start: int
    end: int
    perms: str
    offset: int
    kind: str
    thp: str
    uffd_wp: bool
    softdirty: bool
    anon_vma: bool
