"""Page-aligned anonymous memory to track: :func:`allocate`."""

from __future__ import annotations

import mmap
from typing import TypeVar

from ._args import check_int
from .constants import MADV_HUGEPAGE, MAP_ANONYMOUS, MAP_PRIVATE, PAGE_SIZE, PROT_READ, PROT_WRITE

__all__ = ["PAGE_SIZE", "Memory", "allocate"]

M = TypeVar("M", bound="Memory")


class Memory(mmap.mmap):
    """Private anonymous memory (``mmap`` with MAP_PRIVATE|MAP_ANONYMOUS).

    A writable buffer: slice it, ``memoryview`` it, wrap it with
    ``numpy.frombuffer``. ``address`` is where it starts (page-aligned).
    """

    @property
    def address(self) -> int:
        """The address of the first byte (page-aligned)."""
        from ._impl import impl
        if hasattr(impl, "buffer_address"):
            return int(impl.buffer_address(self)[0])
        import ctypes
        return ctypes.addressof(ctypes.c_char.from_buffer(self))

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"0x{self.address:x}, {len(self)} bytes"
        return f"<pagescan.Memory {state}>"


def map_anonymous(size: int, cls: type[M]) -> M:
    """A new private anonymous mapping of ``size`` bytes rounded up to pages."""
    n = check_int(size, "size", minimum=1, maximum=1 << 47)
    assert n is not None
    n = (n + PAGE_SIZE - 1) // PAGE_SIZE * PAGE_SIZE
    return cls(-1, n, flags=MAP_PRIVATE | MAP_ANONYMOUS, prot=PROT_READ | PROT_WRITE)


def allocate(size: int, *, thp: bool = False) -> Memory:
    """``size`` bytes (rounded up to whole pages) of zeroed, page-aligned private
    anonymous memory. ``thp=True`` asks for transparent huge pages
    (MADV_HUGEPAGE); the default leaves the system's policy alone."""
    mem = map_anonymous(size, Memory)
    if thp:
        mem.madvise(MADV_HUGEPAGE)
    return mem
