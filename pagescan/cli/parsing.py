"""Parsers of the command's arguments: categories, address ranges, durations, sizes,
counts and process IDs. Each raises ``argparse.ArgumentTypeError`` with a message
that says what is expected (argparse turns it into a usage error, exit code 2)."""

from __future__ import annotations

import argparse

from .. import ALL_CATEGORIES, Category
from ..constants import PAGE_SIZE, USER_ADDRESS_LIMIT

__all__ = ["parse_categories", "parse_duration", "parse_pid", "parse_range", "parse_size",
           "positive_int"]


def parse_categories(text: str) -> int:
    """``"WRITTEN,PRESENT"`` (case-insensitive, ``PAGE_IS_`` prefix allowed), ``all``
    or ``none``/``0``, or a number -> the category bits."""
    value = 0
    for item in text.replace("|", ",").split(","):
        name = item.strip().upper()
        if not name:
            continue
        if name.startswith("PAGE_IS_"):
            name = name[8:]
        if name == "ALL":
            value |= ALL_CATEGORIES
        elif name in ("NONE", "0"):
            pass
        elif name in Category.__members__:
            value |= Category[name]
        else:
            try:
                n = int(name, 0)
            except ValueError:
                raise argparse.ArgumentTypeError(
                    f"unknown category {item.strip()!r}; known: "
                    + ",".join(Category.__members__) + " (or all, none)") from None
            if n < 0 or n & ~ALL_CATEGORIES:
                raise argparse.ArgumentTypeError(
                    f"{item.strip()!r} has bits outside the known categories "
                    f"(0x{ALL_CATEGORIES:x})")
            value |= n
    return value


def parse_range(text: str) -> tuple[int, int]:
    """``A-B`` (hex addresses, ``0x`` optional, as in /proc/PID/maps) -> ``(A, B)``."""
    a, sep, b = text.partition("-")
    if not sep:
        raise argparse.ArgumentTypeError(f"range {text!r} is not of the form A-B "
                                         "(hex addresses, e.g. 7f0000000000-7f0000100000)")
    try:
        start, end = int(a.strip(), 16), int(b.strip(), 16)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"range {text!r}: addresses are hexadecimal (e.g. 7f0000000000-7f0000100000)"
        ) from None
    if start % PAGE_SIZE:
        raise argparse.ArgumentTypeError(f"range {text!r}: start 0x{start:x} is not "
                                         f"page-aligned ({PAGE_SIZE})")
    if end <= start:
        raise argparse.ArgumentTypeError(f"range {text!r} is empty (end <= start)")
    if end > USER_ADDRESS_LIMIT:
        raise argparse.ArgumentTypeError(f"range {text!r} ends above the user address "
                                         f"space (0x{USER_ADDRESS_LIMIT:x})")
    return start, -(-end // PAGE_SIZE) * PAGE_SIZE


def parse_duration(text: str) -> float:
    """``1s``, ``250ms``, ``1.5``, ``2m`` -> seconds (> 0)."""
    t = text.strip().lower()
    scale = 1.0
    for suffix, mult in (("ms", 1e-3), ("us", 1e-6), ("s", 1.0), ("m", 60.0), ("h", 3600.0)):
        if t.endswith(suffix):
            t, scale = t[: -len(suffix)], mult
            break
    try:
        value = float(t) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration (e.g. 1s, 250ms)"
                                         ) from None
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: a duration must be positive")
    return value


def positive_int(text: str, what: str = "an integer") -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
    if n <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what} (must be > 0)")
    return n


def parse_pid(text: str) -> int:
    return positive_int(text, "a process ID")


def parse_size(text: str) -> int:
    """``32M``, ``8MiB``, ``1G``, ``4096k`` or a number of MiB -> pages (whole huge
    pages: a multiple of 512 with 4 KiB pages), 4M to 4G."""
    from ..compare.workloads import HUGE, HUGE_PAGES
    t = text.strip().lower().removesuffix("ib").removesuffix("b")
    mult = 1 << 20
    for suffix, m in (("k", 1 << 10), ("m", 1 << 20), ("g", 1 << 30)):
        if t.endswith(suffix):
            t, mult = t[:-1], m
            break
    try:
        nbytes = int(float(t) * mult)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (e.g. 32M)") from None
    if nbytes < 4 << 20:
        raise argparse.ArgumentTypeError(f"{text!r}: the size must be at least 4M")
    if nbytes > 4 << 30:
        raise argparse.ArgumentTypeError(f"{text!r}: the size must be at most 4G")
    return -(-nbytes // HUGE) * HUGE_PAGES
