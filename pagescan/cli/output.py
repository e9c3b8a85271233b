"""What the command prints: sizes and categories in words, JSON, the doctor's and
the scan's text reports, and the watch's refreshing display."""

from __future__ import annotations

import codecs
import json
import sys
from typing import IO, TYPE_CHECKING, Any

from .._describe import category_names
from ..constants import PAGE_SIZE

if TYPE_CHECKING:
    from .watch import Sample

__all__ = ["ASCII_ERRORS", "MIB", "Display", "category_names", "dump_json",
           "format_categories", "human_bytes", "safe_streams", "write_doctor", "write_scan"]

MIB = 1 << 20

#: ASCII stand-ins for the non-ASCII characters the command prints (units, the
#: separators of the compare report, set notation in the help)
ASCII_FALLBACK = {"\u00b5": "u", "\u03bc": "u", "\u00b7": "-", "\u2014": "--",
                  "\u2013": "-", "\u2229": "&", "\u222a": "|", "\u00d7": "x",
                  "\u2264": "<=", "\u2265": ">=", "\u2260": "!=", "\u2026": "...",
                  "\u2192": "->", "\u2018": "'", "\u2019": "'", "\u201c": '"',
                  "\u201d": '"', "\u00a0": " "}
#: the error handler :func:`safe_streams` installs
ASCII_ERRORS = "pagescan.ascii"


def _ascii_fallback(err: UnicodeError) -> tuple[str, int]:
    if not isinstance(err, UnicodeEncodeError):
        raise err
    text = err.object[err.start:err.end]
    return "".join(ASCII_FALLBACK.get(c, c.encode("ascii", "backslashreplace").decode())
                   for c in text), err.end


codecs.register_error(ASCII_ERRORS, _ascii_fallback)


def safe_streams() -> None:
    """Make stdout and stderr print what they cannot encode (a POSIX locale without
    UTF-8 mode, ``PYTHONIOENCODING=ascii``) as ASCII: ``µs`` as ``us``, other
    characters as ``\\uXXXX``, instead of raising UnicodeEncodeError."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        encoding = getattr(stream, "encoding", None) or "ascii"
        try:
            "".join(ASCII_FALLBACK).encode(encoding)
            continue                       # the stream can print everything we print
        except (UnicodeError, LookupError):
            pass
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            try:
                reconfigure(errors=ASCII_ERRORS)
            except (ValueError, OSError):  # a stream that cannot change (closed)
                pass


def format_categories(value: int) -> str:
    return ",".join(category_names(value)) or "-"


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" or n == int(n) else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def dump_json(obj: Any, out: IO[str]) -> None:
    json.dump(obj, out, indent=2)
    out.write("\n")


# ===================================================================== doctor


def write_doctor(rep: dict[str, Any], out: IO[str]) -> None:
    """The text of ``pagescan doctor`` from its report (:func:`~.doctor.doctor_report`)."""
    p = rep["pagescan"]
    out.write(f"pagescan {p['version']} ({p['implementation']} core"
              + (f"; compiled core failed to load: {p['import_error']}" if p["import_error"]
                 else "") + f"), Python {rep['python']}\n")
    k = rep["kernel"]
    out.write(f"kernel {k['release']} {k['machine']}, page size {rep['page_size']}, "
              f"euid {rep['euid']}\n\nbackends:\n")
    width = max(len(b["name"]) for b in rep["backends"])
    for b in rep["backends"]:
        state = "ok" if b["ok"] else "unavailable"
        kind = "" if b["real"] is not False else " (simulated, no kernel feature)"
        out.write(f"  {b['name']:<{width}}  {state}{kind}\n")
        if not b["ok"]:
            out.write(f"  {'':<{width}}    {b['reason']}\n")
        caps = b["capabilities"]
        if caps:
            flags = [f for f in ("atomic_reset", "range_reset", "other_processes",
                                 "kernel_filtering", "kernel_writes_seen") if caps.get(f)]
            out.write(f"  {'':<{width}}    can: {', '.join(flags) or '-'}\n")
    out.write("\nsettings:\n")
    sd = rep["soft_dirty"]
    avail = {True: "available", False: "not available", None: "unknown"}[sd["available"]]
    lines = [(s["name"], "-" if s["value"] is None else s["value"], s["note"])
             for s in rep["settings"]] + [("soft-dirty", avail, sd["reason"])]
    width = max(len(name) for name, _, _ in lines)
    vwidth = max(len(value) for _, value, _ in lines)
    for name, value, note in lines:
        out.write(f"  {name:<{width}} = {value:<{vwidth}}  {note}\n")


# ======================================================================= scan


def write_scan(rep: dict[str, Any], out: IO[str]) -> None:
    """The text of ``pagescan scan`` (like pmap) from its report
    (:func:`~.scan.scan_process`)."""
    out.write(f"{rep['pid']}:   {rep['command']}\n")
    out.write(f"{'Address':<25} {'Size':>10}  Mode  Mapping / categories\n")
    for m in rep["mappings"]:
        if not m["regions"]:
            continue
        out.write(f"{m['start']:012x}-{m['end']:012x} {human_bytes(m['end'] - m['start']):>10}"
                  f"  {m['perms']}  {m['path'] or '[anon]'}\n")
        for r in m["regions"]:
            out.write(f"  {r['start']:012x}-{r['end']:012x}"
                      f" {human_bytes(r['end'] - r['start']):>8}      "
                      f"{format_categories(r['flags'])}\n")
    t = rep["total"]
    hidden = t["mappings_scanned"] - t["mappings"]
    out.write(f"total: {t['pages']} pages ({human_bytes(t['bytes'])}) in {t['regions']} "
              f"regions of {t['mappings']} mappings"
              + (f" ({hidden} more without matching pages not listed)" if hidden else "")
              + f"; method {rep['method']}\n")
    for note in rep["notes"]:
        out.write(f"note: {note}\n")


# ====================================================================== watch


class Display:
    """The samples of a watch: refreshing on a terminal, one line per interval (and
    per mapping) when piped, one JSON object per line with ``json_lines``."""

    def __init__(self, out: IO[str], *, json_lines: bool, top: int, tty: bool,
                 title: str) -> None:
        self.out, self.json, self.top, self.tty, self.title = out, json_lines, top, tty, title
        self.samples: list[Sample] = []

    def show(self, s: Sample) -> None:
        self.samples.append(s)
        out = self.out
        if self.json:
            out.write(json.dumps(s.as_json()) + "\n")
        elif self.tty:
            lines = [self.title,
                     f"t={s.t:7.2f}s  total {s.pages_per_s:10.1f} pages/s  "
                     f"{s.mib_per_s:9.3f} MiB/s   ({s.pages} pages in {s.interval:.2f} s)",
                     "",
                     f"{'pages/s':>12} {'MiB/s':>10}  mapping"]
            for m in s.mappings[: self.top]:
                where = "" if m["start"] is None else f"{m['start']:012x}-{m['end']:012x} "
                lines.append(f"{m['pages_per_s']:12.1f} {m['mib_per_s']:10.3f}  "
                             f"{where}{m['path']}")
            if len(s.mappings) > self.top:
                lines.append(f"{'':>24}  ... {len(s.mappings) - self.top} more mappings")
            out.write("\x1b[H\x1b[2J" + "\n".join(lines) + "\n")
        else:
            out.write(f"t={s.t:.2f}s total pages/s={s.pages_per_s:.1f} "
                      f"MiB/s={s.mib_per_s:.3f} pages={s.pages}\n")
            for m in s.mappings[: self.top]:
                where = "-" if m["start"] is None else f"{m['start']:x}-{m['end']:x}"
                out.write(f"t={s.t:.2f}s   {where} {m['path']} pages/s={m['pages_per_s']:.1f} "
                          f"MiB/s={m['mib_per_s']:.3f} pages={m['pages']}\n")
        out.flush()

    def summary(self, ended: str, message: str) -> None:
        n = len(self.samples)
        pages = sum(s.pages for s in self.samples)
        secs = self.samples[-1].t if self.samples else 0.0
        rate = pages / secs if secs > 0 else 0.0
        if self.json:
            self.out.write(json.dumps({"summary": {
                "ended": ended, "message": message, "samples": n, "seconds": round(secs, 6),
                "pages": pages, "pages_per_s": round(rate, 3),
                "mib_per_s": round(rate * PAGE_SIZE / MIB, 6)}}) + "\n")
        else:
            self.out.write(f"{n} samples over {secs:.2f} s: {pages} pages written, "
                           f"mean {rate:.1f} pages/s = {rate * PAGE_SIZE / MIB:.3f} MiB/s\n")
        self.out.flush()
