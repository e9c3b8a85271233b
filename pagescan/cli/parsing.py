"""Parsers of the command's arguments: categories, address ranges, durations, sizes,
counts, rates and process IDs. Each raises ``argparse.ArgumentTypeError`` with a
message that says what is expected and the allowed range (argparse prefixes the
option's name and turns it into a usage error, exit code 2). Every number is
checked for what ``float()``/``int()`` accept but a command cannot use: ``inf``,
``nan``, negative, zero, values past the range (which would overflow a C type, a
timeout or memory later), and garbage."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

from .. import ALL_CATEGORIES, Category
from ..constants import PAGE_SIZE, USER_ADDRESS_LIMIT

__all__ = ["DEMO_RATE_MAX", "DEMO_SIZE_MAX", "DURATION_MAX", "DURATION_MIN", "PID_MAX",
           "bounded_int", "parse_categories", "parse_demo_rate", "parse_demo_size",
           "parse_duration", "parse_pid", "parse_range", "parse_size", "positive_int"]

#: shortest and longest duration (--interval, --duration): 1 ms to 30 days
DURATION_MIN = 1e-3
DURATION_MAX = 30 * 86400.0
#: the kernel's PID_MAX_LIMIT on 64-bit (no process ID is larger)
PID_MAX = 1 << 22
#: pages per second the watch demo's writer can be asked for (a Python thread)
DEMO_RATE_MAX = 1_000_000.0
#: the watch demo's buffer, MiB
DEMO_SIZE_MAX = 4096
#: more digits than any value an option takes (int() refuses past 4300 digits)
_MAX_DIGITS = 40


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
    allowed = "from 1ms to 30 days (e.g. 1s, 250ms, 2m)"
    try:
        value = _finite(t) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration; a duration is "
                                         + allowed) from None
    if not DURATION_MIN <= value <= DURATION_MAX:
        raise argparse.ArgumentTypeError(f"{text!r} is out of range: a duration is "
                                         + allowed)
    return value


def _finite(text: str) -> float:
    """``float(text)`` for a finite number written in decimal (not inf, nan, hex)."""
    t = text.strip()
    if len(t) > _MAX_DIGITS or not t or t.lower().lstrip("+-")[:1] not in set("0123456789."):
        raise ValueError(text)
    value = float(t)
    if not math.isfinite(value):
        raise ValueError(text)
    return value


def _int(text: str) -> int:
    """``int(text)`` (decimal), refusing absurdly long input before int() sees it."""
    t = text.strip()
    if len(t) > _MAX_DIGITS:
        raise ValueError(text)
    return int(t, 10)


def bounded_int(lo: int, hi: int | None, what: str) -> Callable[[str], int]:
    """A parser of a decimal integer in ``[lo, hi]`` (``hi`` None: no upper bound
    but ``_MAX_DIGITS`` digits), whose messages name ``what`` and the range."""
    allowed = f"from {lo} to {hi}" if hi is not None else f"at least {lo}"

    def parse(text: str) -> int:
        try:
            n = _int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what} (an integer "
                                             f"{allowed})") from None
        if n < lo or (hi is not None and n > hi):
            raise argparse.ArgumentTypeError(f"{text!r} is out of range: {what} is "
                                             f"an integer {allowed}")
        return n
    parse.__name__ = what.replace(" ", "_")
    return parse


def positive_int(text: str, what: str = "an integer") -> int:
    """A decimal integer > 0 (at most 40 digits: counts, --top)."""
    try:
        n = _int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what} > 0") from None
    if n <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is out of range: {what} must be > 0")
    return n


def parse_pid(text: str) -> int:
    """A process ID: 1 to the kernel's PID_MAX_LIMIT (4194304)."""
    return bounded_int(1, PID_MAX, "a process ID")(text)


def parse_demo_rate(text: str) -> float:
    """``watch --demo-rate``: pages per second, 0 (no writes) to 1000000."""
    allowed = f"from 0 to {DEMO_RATE_MAX:.0f} pages per second"
    try:
        value = _finite(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a rate: a number {allowed}"
                                         ) from None
    if not 0 <= value <= DEMO_RATE_MAX:
        raise argparse.ArgumentTypeError(f"{text!r} is out of range: the rate is {allowed}")
    return value


def parse_demo_size(text: str) -> int:
    """``watch --demo-size``: MiB, 1 to 4096."""
    return bounded_int(1, DEMO_SIZE_MAX, "a size in MiB")(text)


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
    allowed = "from 4M to 4G (e.g. 32M, 1G)"
    try:
        nbytes = int(_finite(t) * mult)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size: a size is {allowed}"
                                         ) from None
    if not 4 << 20 <= nbytes <= 4 << 30:
        raise argparse.ArgumentTypeError(f"{text!r} is out of range: a size is {allowed}")
    return -(-nbytes // HUGE) * HUGE_PAGES
