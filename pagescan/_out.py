"""The ``out=`` argument of the scans, shared by the compiled core and the reference.

A scan into a caller's buffer writes ``struct page_region`` triples (start, end,
categories) into a ``RegionArray.empty(capacity)`` of the loaded implementation,
or into any writable, C-contiguous ``(n, 3)`` buffer of unsigned 64-bit integers
(a NumPy ``np.empty((n, 3), np.uint64)``); both implementations check the buffer
here, so they raise the same errors.
"""

from __future__ import annotations

from typing import Any

_UNSIGNED_64 = frozenset("QLN")


def check_region_out(obj: Any, name: str = "out") -> memoryview:
    """A writable, C-contiguous ``(n, 3)`` buffer of u64 (``struct page_region[n]``)."""
    try:
        mv = memoryview(obj)
    except TypeError:
        raise TypeError(f"{name} must be a RegionArray or a writable (n, 3) uint64 buffer, "
                        f"not {type(obj).__name__}") from None
    fmt = mv.format
    if fmt[:1] in ("@", "=", "<"):
        fmt = fmt[1:]
    if fmt not in _UNSIGNED_64 or mv.itemsize != 8:
        raise TypeError(f"{name} must hold unsigned 64-bit integers; got format {mv.format!r}")
    if mv.readonly:
        raise TypeError(f"{name} must be writable")
    if mv.ndim != 2 or mv.shape is None or mv.shape[1] != 3:
        raise ValueError(f"{name} must have shape (n, 3); got {mv.shape}")
    if not mv.c_contiguous:
        raise ValueError(f"{name} must be contiguous (a strided view was given)")
    return mv


def out_capacity(out: Any, region_array: type) -> int:
    """How many regions ``out`` holds: a ``region_array`` (the loaded
    implementation's RegionArray) by its ``capacity``, else a checked buffer's rows."""
    if isinstance(out, region_array):
        return int(out.capacity)  # type: ignore[attr-defined]
    mv = check_region_out(out)
    assert mv.shape is not None
    return mv.shape[0]
