"""Argument checks shared by the compiled core and the reference.

Both implementations call these so that they accept the same input and raise the
same exception, with the same message, for the same mistake.
"""

from __future__ import annotations

import operator
from typing import Any

_UNSIGNED = frozenset("BHILQN")
_SIGNED = frozenset("bhilqn")
U64_MAX = (1 << 64) - 1


def check_uint_buffer(obj: Any, name: str, *, itemsizes: tuple[int, ...] = (1, 2, 4, 8)
                      ) -> memoryview:
    """A 1-D, C-contiguous, native-endian buffer of unsigned integers, as a memoryview."""
    try:
        mv = memoryview(obj)
    except TypeError:
        raise TypeError(
            f"{name} must support the buffer protocol (array.array, numpy array, "
            f"memoryview), not {type(obj).__name__}") from None
    fmt = mv.format
    if fmt[:1] in ("@", "=", "<"):
        fmt = fmt[1:]
    elif fmt[:1] in (">", "!"):
        raise TypeError(f"{name} must be native-endian; got big-endian format {mv.format!r}")
    if fmt in _SIGNED:
        raise TypeError(f"{name} must hold unsigned integers; got signed format {mv.format!r}")
    if fmt not in _UNSIGNED:
        raise TypeError(f"{name} must hold unsigned 8, 16, 32 or 64-bit integers; "
                        f"got format {mv.format!r}")
    if mv.itemsize not in itemsizes:
        sizes = ", ".join(str(8 * s) for s in itemsizes)
        raise TypeError(f"{name} items must be {sizes}-bit; got {8 * mv.itemsize}-bit")
    if mv.ndim != 1:
        raise ValueError(f"{name} must be 1-dimensional; got {mv.ndim} dimensions")
    if not mv.c_contiguous:
        raise ValueError(f"{name} must be contiguous (a strided view was given)")
    return mv


def check_int(value: Any, name: str, *, minimum: int = 0, maximum: int = U64_MAX,
              allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    # operator.index(), not value.__index__(): for an int subclass it is the int's
    # own value (what C code converting the object sees), whatever __index__ says
    value = operator.index(value)
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}; got {value}")
    if value > maximum:
        raise ValueError(f"{name} must be <= {maximum}; got {value}")
    return value


def check_page_size(page_size: Any) -> int:
    ps = check_int(page_size, "page_size", minimum=1, maximum=1 << 40)
    assert ps is not None
    if ps & (ps - 1):
        raise ValueError(f"page_size must be a power of two; got {ps}")
    return ps


def check_range(start: Any, npages: int, page_size: int) -> tuple[int, int]:
    """Check ``start`` and that the range fits in 64 bits; return ``(start, end)``
    as ints (use that ``start``, not the object passed).

    ``end`` itself must be a u64 (``<= 2**64 - 1``): a region is three u64, so a
    region ending at 2**64 could not be represented.
    """
    s = check_int(start, "start")
    assert s is not None
    if s % page_size:
        raise ValueError(f"start=0x{s:x} is not aligned to page_size={page_size}")
    end = s + npages * page_size
    if end > U64_MAX:
        raise ValueError(f"start + {npages} pages of {page_size} bytes overflows 64 bits")
    return s, end


def check_u64(value: Any, name: str) -> int:
    """An int (or an object with ``__index__``; not a bool, float or str) in
    ``[0, 2**64 - 1]``, as an exact int."""
    v = check_int(value, name)
    assert v is not None
    return v


def check_region(region: Any, where: str) -> tuple[int, int, int]:
    """One region ``(start, end, categories)`` as three u64 ints (TypeError or
    ValueError naming ``where`` otherwise). RegionArray(), append() and coalesce()
    of both implementations go through it, so they accept and refuse the same."""
    t = region if isinstance(region, tuple) else tuple(region)
    if len(t) != 3:
        raise ValueError(f"{where} must be (start, end, categories); got {len(t)} items")
    return (check_u64(t[0], f"{where} start"), check_u64(t[1], f"{where} end"),
            check_u64(t[2], f"{where} categories"))


def check_limits(max_pages: Any, max_regions: Any) -> tuple[int, int]:
    """``(max_pages, max_regions)`` with 0 / -1 meaning "no limit" respectively."""
    mp = check_int(max_pages, "max_pages")
    mr = check_int(max_regions, "max_regions", allow_none=True, maximum=(1 << 63) - 1)
    assert mp is not None
    return mp, (-1 if mr is None else mr)
