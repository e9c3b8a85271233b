"""The ``pagescan`` command: doctor, scan, watch and compare.

* ``pagescan doctor``: which backends work on this kernel (and why not), the
  kernel and the settings that matter.
* ``pagescan scan PID``: the regions of each mapping of a process with their
  page categories (pmap with categories); ``--json``.
* ``pagescan watch PID``: pages and MiB written per second, per mapping and in
  total (QEMU's calc-dirty-rate, for a process).
* ``pagescan compare``: the built-in workloads on every backend, with ground
  truth (see :mod:`pagescan.compare`).

Exit codes (the same for every subcommand):

===  ==============================================================================
0    success
1    an error of the kernel or environment not covered below
2    usage error (bad option, bad range, unknown category)
3    no such process, or the process exited while being watched or scanned
4    access denied: no ptrace read access to the process
5    no backend works here for what was asked (the probe's reason is printed)
130  interrupted (Ctrl-C) before anything was measured
===  ==============================================================================
"""

from __future__ import annotations

import argparse
import array
import bisect
import dataclasses
import errno
import functools
import json
import os
import platform
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import IO, Any, NoReturn

from .._types import ALL_CATEGORIES, Category, Masks
from ..errors import AccessDenied, BackendUnavailable, NoSuchProcess, PagescanError
from .._sysinfo import sysctl as _sysctl

__all__ = ["EXIT_ACCESS", "EXIT_ERROR", "EXIT_GONE", "EXIT_OK", "EXIT_UNAVAILABLE",
           "EXIT_USAGE", "Mapping", "main", "read_maps"]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_GONE = 3
EXIT_ACCESS = 4
EXIT_UNAVAILABLE = 5
EXIT_INTERRUPTED = 130

PAGE = os.sysconf("SC_PAGE_SIZE")
#: one past the highest user address with 4-level paging (x86-64)
USER_TOP = 0x7FFFFFFFF000
MIB = 1 << 20

PTRACE_HINT = ("reading another process's page tables needs ptrace read access to it "
               "(PTRACE_MODE_READ): run as the user that owns the process (which must "
               "be dumpable), or with CAP_SYS_PTRACE (e.g. with sudo)")


class UsageError(Exception):
    """A bad argument found after parsing (exit code 2)."""


class Exit(Exception):
    """End the command with ``code`` after printing ``message`` to stderr."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# =============================================================== /proc helpers


@dataclasses.dataclass(frozen=True)
class Mapping:
    """One line of /proc/PID/maps."""

    start: int
    end: int
    perms: str
    offset: int
    device: str
    inode: int
    path: str

    @property
    def label(self) -> str:
        return self.path or "[anon]"

    def as_json(self) -> dict[str, Any]:
        return {"start": self.start, "end": self.end, "perms": self.perms,
                "offset": self.offset, "device": self.device, "inode": self.inode,
                "path": self.path}


def _proc_error(err: OSError, pid: int, what: str) -> PagescanError:
    if isinstance(err, PermissionError):
        return AccessDenied(f"cannot read /proc/{pid}/{what}: permission denied; "
                            + PTRACE_HINT)
    if isinstance(err, (FileNotFoundError, ProcessLookupError)) or err.errno == errno.ESRCH:
        return NoSuchProcess(f"no process with PID {pid}")
    return PagescanError(f"cannot read /proc/{pid}/{what}: {err.strerror or err}")


def process_exists(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie, whose memory is gone, is not)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    state = stat[stat.rfind(b")") + 2:][:1]
    return state not in (b"Z", b"X", b"x")


def process_name(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().replace(b"\0", b" ").strip().decode(errors="replace")
        if cmd:
            return cmd
        with open(f"/proc/{pid}/comm") as f:
            return f"[{f.read().strip()}]"
    except OSError:
        return "?"


def read_maps(pid: int) -> list[Mapping]:
    """The mappings of a process, from /proc/PID/maps (AccessDenied, NoSuchProcess)."""
    try:
        with open(f"/proc/{pid}/maps") as f:
            lines = f.read().splitlines()
    except OSError as err:
        raise _proc_error(err, pid, "maps") from err
    if not lines and not process_exists(pid):
        raise NoSuchProcess(f"process {pid} has exited")
    out = []
    for line in lines:
        parts = line.split(maxsplit=5)
        if len(parts) < 5:
            continue
        a, _, b = parts[0].partition("-")
        out.append(Mapping(int(a, 16), int(b, 16), parts[1], int(parts[2], 16), parts[3],
                           int(parts[4]), parts[5] if len(parts) > 5 else ""))
    return out


def _pfnmap_starts(pid: int) -> set[int]:
    """Starts of the VM_PFNMAP mappings (smaps ``VmFlags: pf``), which the kernel's
    page walk skips: the pagemap fallback leaves them out as PAGEMAP_SCAN does."""
    out: set[int] = set()
    try:
        with open(f"/proc/{pid}/smaps") as f:
            start = None
            for line in f:
                head = line.split(maxsplit=1)[0] if line.strip() else ""
                if "-" in head and not head.endswith(":"):
                    start = int(head.partition("-")[0], 16)
                elif head == "VmFlags:" and start is not None and " pf" in " " + line[8:]:
                    out.add(start)
    except OSError:
        pass
    return out


def open_pagemap(pid: int) -> int:
    try:
        return os.open(f"/proc/{pid}/pagemap", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as err:
        raise _proc_error(err, pid, "pagemap") from err


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _selected(value: str | None) -> str | None:
    """``always [madvise] never`` -> ``madvise``."""
    if value and "[" in value:
        return value[value.index("[") + 1:value.index("]")]
    return value


# ==================================================================== parsing


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


def category_names(value: int) -> list[str]:
    return [c.name for c in Category if value & c and c.name]


def format_categories(value: int) -> str:
    return ",".join(category_names(value)) or "-"


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
    if start % PAGE:
        raise argparse.ArgumentTypeError(f"range {text!r}: start 0x{start:x} is not "
                                         f"page-aligned ({PAGE})")
    if end <= start:
        raise argparse.ArgumentTypeError(f"range {text!r} is empty (end <= start)")
    if end > USER_TOP:
        raise argparse.ArgumentTypeError(f"range {text!r} ends above the user address "
                                         f"space (0x{USER_TOP:x})")
    return start, -(-end // PAGE) * PAGE


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


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" or n == int(n) else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _dump_json(obj: Any, out: IO[str]) -> None:
    json.dump(obj, out, indent=2)
    out.write("\n")


# ==================================================================== doctor


SETTINGS = (
    ("vm.unprivileged_userfaultfd", "sysctl",
     "0: userfaultfd is limited to user-mode faults (UFFD_USER_MODE_ONLY, which the uffd "
     "backend uses) unless the process has CAP_SYS_PTRACE"),
    ("vm.max_map_count", "sysctl",
     "the mprotect backend splits a mapping at every protected/unprotected edge: "
     "scattered writes can need one mapping per page"),
    ("kernel.yama.ptrace_scope", "sysctl",
     "Yama's ptrace policy (attach); scan/watch of another process need only read access"),
    ("transparent_hugepage/enabled", "/sys/kernel/mm/transparent_hugepage/enabled",
     "a write into a huge page reads as 2 MiB written; tracked ranges get MADV_NOHUGEPAGE "
     "unless thp=True"),
    ("transparent_hugepage/defrag", "/sys/kernel/mm/transparent_hugepage/defrag",
     "how hard a huge page fault tries to find 2 MiB of memory"),
    ("vm.nr_hugepages", "sysctl", "hugetlb pages reserved (tracked whole, 2 MiB each)"),
)


def soft_dirty_status() -> tuple[bool | None, str]:
    """Whether the kernel has soft-dirty (CONFIG_MEM_SOFT_DIRTY), and how it is known."""
    release = platform.release()
    for path in ("/proc/config.gz", f"/boot/config-{release}"):
        try:
            if path.endswith(".gz"):
                import gzip
                with gzip.open(path, "rt") as g:
                    text = g.read()
            else:
                with open(path) as f:
                    text = f.read()
        except OSError:
            continue
        if "CONFIG_MEM_SOFT_DIRTY=y" in text:
            return True, f"CONFIG_MEM_SOFT_DIRTY=y ({path})"
        return False, f"CONFIG_MEM_SOFT_DIRTY is not set in kernel {release} ({path})"
    return None, "unknown: the kernel config is not readable (see the softdirty backend's probe)"


def _backend_class(name: str) -> Any:
    """The backend class, or the exception that kept it from loading."""
    from ..backends import _load  # the registry's loader: the same class probe() uses
    return _load(name)


def _capabilities_json(cls: Any) -> dict[str, Any] | None:
    caps = getattr(cls, "capabilities", None)
    if caps is None or not dataclasses.is_dataclass(caps) or isinstance(caps, type):
        return None
    d = dataclasses.asdict(caps)
    d["categories"] = category_names(int(d.get("categories", 0)))
    d["notes"] = list(d.get("notes", ()))
    return d


def doctor_report() -> dict[str, Any]:
    import pagescan
    from ..backends import probe_all
    backends = []
    for name, p in probe_all().items():
        cls = _backend_class(name)
        caps = None if isinstance(cls, BaseException) else _capabilities_json(cls)
        backends.append({"name": name, "ok": bool(p.ok), "reason": p.reason,
                         "real": bool(caps["real"]) if caps else None,
                         "capabilities": caps,
                         "details": {k: str(v) for k, v in p.details.items()}})
    settings = []
    for name, source, note in SETTINGS:
        raw = _sysctl(name) if source == "sysctl" else _read(source)
        value = _selected(raw) if source != "sysctl" else raw
        if value is None and name == "kernel.yama.ptrace_scope":
            note = "not present: the Yama LSM is not enabled (only the default ptrace checks apply)"
        settings.append({"name": name, "value": value, "note": note})
    sd_ok, sd_reason = soft_dirty_status()
    return {
        "pagescan": {"version": pagescan.__version__,
                     "implementation": pagescan.IMPLEMENTATION,
                     "import_error": None if pagescan.IMPORT_ERROR is None
                     else repr(pagescan.IMPORT_ERROR)},
        "python": platform.python_version(),
        "kernel": {"release": platform.release(), "machine": platform.machine(),
                   "version": _read("/proc/version")},
        "page_size": PAGE,
        "euid": os.geteuid(),
        "backends": backends,
        "settings": settings,
        "soft_dirty": {"available": sd_ok, "reason": sd_reason},
    }


def cmd_doctor(args: argparse.Namespace) -> int:
    rep = doctor_report()
    working = [b for b in rep["backends"] if b["ok"] and b["real"] is not False]
    if args.json:
        _dump_json(rep, sys.stdout)
        return EXIT_OK if working else EXIT_UNAVAILABLE
    out = sys.stdout
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
    if not working:
        out.write("\nno real backend works on this machine (reasons above)\n")
    return EXIT_OK if working else EXIT_UNAVAILABLE


# ====================================================================== scan


@functools.cache
def zero_pfn() -> int | None:
    """The shared zero page's PFN, read from our own pagemap after a read fault
    (None when PFNs are hidden, i.e. without CAP_SYS_ADMIN)."""
    from ..memory import Memory, map_anonymous
    m = map_anonymous(PAGE, Memory)
    try:
        m[0]  # a read fault maps the zero page
        addr = m.address
        fd = os.open("/proc/self/pagemap", os.O_RDONLY | os.O_CLOEXEC)
        try:
            entry = int.from_bytes(os.pread(fd, 8, addr // PAGE * 8), "little")
        finally:
            os.close(fd)
    except OSError:
        return None
    finally:
        m.close()
    pfn = entry & ((1 << 55) - 1)
    return pfn if entry >> 63 and pfn else None


class _Scanner:
    """Scans ranges of one process: PAGEMAP_SCAN, else pagemap entries."""

    CHUNK = 1 << 16   # pages per pagemap read in the fallback

    def __init__(self, pid: int, method: str) -> None:
        from .._impl import impl
        self.pid = pid
        self.impl = impl
        self.fd = open_pagemap(pid)
        self.method = method
        self.notes: list[str] = []
        if method == "auto":
            self.method = "ioctl" if hasattr(impl, "pm_scan") else "pagemap"
            if self.method == "pagemap":
                self.notes.append("the pure-Python core is loaded: categories come from "
                                  "/proc/PID/pagemap entries")
        elif method == "ioctl" and not hasattr(impl, "pm_scan"):
            raise Exit(EXIT_UNAVAILABLE, "--method ioctl needs the compiled core "
                       "(pagescan._core); the pure-Python reference is loaded")
        self._pfnmap: set[int] | None = None

    def close(self) -> None:
        os.close(self.fd)

    def _gone(self, err: OSError) -> PagescanError:
        if err.errno == errno.ESRCH or not process_exists(self.pid):
            return NoSuchProcess(f"process {self.pid} exited during the scan")
        if err.errno in (errno.EACCES, errno.EPERM):
            return AccessDenied(f"PAGEMAP_SCAN on /proc/{self.pid}/pagemap was refused; "
                                + PTRACE_HINT)
        return PagescanError(f"scanning process {self.pid} failed: {err}")

    def scan(self, m: Mapping, start: int, end: int, masks: Masks) -> list[tuple[int, int, int]]:
        if self.method == "ioctl":
            try:
                res = self.impl.pm_scan(self.fd, start, end, 0, masks)
            except OSError as err:
                if err.errno == errno.ENOTTY:
                    self.method = "pagemap"
                    self.notes.append(f"kernel {platform.release()} has no PAGEMAP_SCAN "
                                      "(needs 6.7+): categories come from pagemap entries")
                    return self.scan(m, start, end, masks)
                raise self._gone(err) from err
            return [tuple(r) for r in res.regions]  # type: ignore[misc]
        return self._scan_pagemap(m, start, end, masks)

    def _scan_pagemap(self, m: Mapping, start: int, end: int, masks: Masks
                      ) -> list[tuple[int, int, int]]:
        if self._pfnmap is None:
            self._pfnmap = _pfnmap_starts(self.pid)
            self.notes.append("from pagemap entries: WRITTEN of never-populated pages, "
                              "HUGE and WPALLOWED cannot be derived"
                              + ("" if zero_pfn() else
                                 ", nor PFNZERO (PFNs are hidden without CAP_SYS_ADMIN)"))
        if m.start in self._pfnmap:
            return []
        impl = self.impl
        parts = []
        addr = start
        while addr < end:
            n = min(self.CHUNK, (end - addr) // PAGE)
            try:
                data = os.pread(self.fd, n * 8, addr // PAGE * 8)
            except OSError as err:
                raise self._gone(err) from err
            if len(data) != n * 8:
                if not process_exists(self.pid):
                    raise NoSuchProcess(f"process {self.pid} exited during the scan")
                n = len(data) // 8
                if n == 0:
                    break
                data = data[: n * 8]
            entries = array.array("Q")
            entries.frombytes(data)
            cats = impl.pagemap_to_categories(entries, zero_pfn=zero_pfn())
            parts.append(impl.scan_pages(cats, start=addr, page_size=PAGE, masks=masks).regions)
            addr += n * PAGE
        return [tuple(r) for r in impl.coalesce(*parts)]  # type: ignore[misc]


def scan_process(pid: int, masks: Masks, rng: tuple[int, int] | None = None,
                 method: str = "auto") -> dict[str, Any]:
    """The JSON-able result of ``pagescan scan``."""
    maps = read_maps(pid)
    scanner = _Scanner(pid, method)
    lo, hi = rng if rng else (0, 1 << 64)
    out_maps = []
    total_pages = total_regions = 0
    try:
        for m in maps:
            s, e = max(m.start, lo), min(m.end, hi)
            if s >= e:
                continue
            entry = m.as_json()
            if s >= USER_TOP:
                entry["regions"] = []
                entry["note"] = "above the user address range: the kernel does not walk it"
                out_maps.append(entry)
                continue
            regions = [] if masks.matches_nothing else scanner.scan(m, s, e, masks)
            pages = sum((b - a) // PAGE for a, b, _ in regions)
            total_pages += pages
            total_regions += len(regions)
            entry["regions"] = [{"start": a, "end": b, "pages": (b - a) // PAGE,
                                 "categories": category_names(c), "flags": c}
                                for a, b, c in regions]
            out_maps.append(entry)
    finally:
        scanner.close()
    return {
        "pid": pid,
        "command": process_name(pid),
        "method": "PAGEMAP_SCAN" if scanner.method == "ioctl" else "pagemap",
        "range": {"start": lo, "end": min(hi, USER_TOP)},
        "masks": {"required": category_names(masks.mask & ~masks.inverted),
                  "anyof": category_names(masks.anyof),
                  "excluded": category_names(masks.inverted),
                  "return": category_names(masks.return_mask)},
        "page_size": PAGE,
        "mappings": out_maps,
        "total": {"mappings": len(out_maps), "regions": total_regions, "pages": total_pages,
                  "bytes": total_pages * PAGE},
        "notes": scanner.notes,
    }


def cmd_scan(args: argparse.Namespace) -> int:
    try:
        masks = Masks(required=args.required, anyof=args.anyof, excluded=args.excluded,
                      return_mask=ALL_CATEGORIES if args.return_mask is None
                      else args.return_mask)
    except ValueError as err:
        raise UsageError(str(err)) from None
    rep = scan_process(args.pid, masks, args.range, args.method)
    if args.json:
        _dump_json(rep, sys.stdout)
        return EXIT_OK
    out = sys.stdout
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
    shown = sum(1 for m in rep["mappings"] if m["regions"])
    out.write(f"total: {t['pages']} pages ({human_bytes(t['bytes'])}) in {t['regions']} "
              f"regions of {shown} mappings; method {rep['method']}\n")
    for note in rep["notes"]:
        out.write(f"note: {note}\n")
    return EXIT_OK


# ===================================================================== watch


@dataclasses.dataclass
class Sample:
    """One interval of a watch."""

    index: int
    t: float            # seconds since the watch started (end of the interval)
    interval: float     # seconds the interval really lasted
    pages: int
    mappings: list[dict[str, Any]]

    @property
    def pages_per_s(self) -> float:
        return self.pages / self.interval if self.interval > 0 else 0.0

    @property
    def mib_per_s(self) -> float:
        return self.pages_per_s * PAGE / MIB

    def as_json(self) -> dict[str, Any]:
        return {"index": self.index, "t": round(self.t, 6),
                "interval": round(self.interval, 6), "pages": self.pages,
                "pages_per_s": round(self.pages_per_s, 3),
                "mib_per_s": round(self.mib_per_s, 6), "mappings": self.mappings}


def attribute(regions: Any, maps: Sequence[Mapping], interval: float) -> list[dict[str, Any]]:
    """Written pages per mapping, most written first."""
    starts = [m.start for m in maps]
    counts: dict[int, int] = {}
    other = 0
    for r in regions:
        a, b = int(r[0]), int(r[1])
        while a < b:
            i = bisect.bisect_right(starts, a) - 1
            if i < 0 or a >= maps[i].end:
                # not inside a mapping we know of (mapped since maps was read)
                nxt = starts[i + 1] if i + 1 < len(starts) else b
                step = min(b, max(nxt, a + PAGE))
                other += (step - a) // PAGE
                a = step
                continue
            e = min(b, maps[i].end)
            counts[i] = counts.get(i, 0) + (e - a) // PAGE
            a = e
    out: list[dict[str, Any]] = []
    for i, n in counts.items():
        m = maps[i]
        rate = n / interval if interval > 0 else 0.0
        out.append({"start": m.start, "end": m.end, "path": m.label, "pages": n,
                    "pages_per_s": round(rate, 3), "mib_per_s": round(rate * PAGE / MIB, 6)})
    if other:
        rate = other / interval if interval > 0 else 0.0
        out.append({"start": None, "end": None, "path": "[unmapped since]", "pages": other,
                    "pages_per_s": round(rate, 3), "mib_per_s": round(rate * PAGE / MIB, 6)})
    out.sort(key=lambda d: (-d["pages"], d["start"] or 0))
    return out


def dirty_rate(tracker: Any, maps: Callable[[], Sequence[Mapping]], interval: float, *,
               count: int | None = None, duration: float | None = None,
               alive: Callable[[], bool] = lambda: True,
               stop: threading.Event | None = None) -> Iterator[Sample]:
    """Samples of the pages a tracker sees written, one per ``interval`` seconds,
    until ``count`` samples or ``duration`` seconds (or ``stop`` is set). Raises
    NoSuchProcess when ``alive()`` turns false (the watched process exited).

    Works with any tracker: ``pagescan.track(pid=PID)`` for another process,
    ``pagescan.track(buf)`` (uffd) for this process's own memory."""
    stop = stop or threading.Event()
    tracker.reset()
    t0 = last = time.monotonic()
    i = 0
    while count is None or i < count:
        deadline = t0 + (i + 1) * interval
        if duration is not None:
            deadline = min(deadline, t0 + duration)
        if stop.wait(max(0.0, deadline - time.monotonic())):
            return
        if not alive():
            raise NoSuchProcess("exited")
        try:
            res = tracker.collect(reset=True)
        except (PagescanError, OSError):
            if not alive():
                raise NoSuchProcess("exited") from None
            raise
        now = time.monotonic()
        dt = now - last
        last = now
        regions = res.regions
        pages = regions.pages(PAGE) if hasattr(regions, "pages") else sum(
            (r[1] - r[0]) // PAGE for r in regions)
        yield Sample(i, now - t0, dt, pages, attribute(regions, maps(), dt))
        i += 1
        if duration is not None and now - t0 >= duration - 1e-3:
            return


class _Display:
    """Refreshing on a terminal; one line per interval (and per mapping) when piped."""

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
                "mib_per_s": round(rate * PAGE / MIB, 6)}}) + "\n")
        else:
            self.out.write(f"{n} samples over {secs:.2f} s: {pages} pages written, "
                           f"mean {rate:.1f} pages/s = {rate * PAGE / MIB:.3f} MiB/s\n")
        self.out.flush()


SIMULATE_HINT = (" (pagescan watch --demo --simulate plays the watch on a simulated "
                 "process with soft-dirty)")


def _other_process_backend(name: str) -> str:
    """The backend to watch another process with; Exit(5) with every reason if none."""
    from ..backends import backend_names, probe
    if name != "auto":
        cls = _backend_class(name) if name in backend_names() else None
        if cls is None:
            raise UsageError(f"unknown backend {name!r}; known: "
                             + ", ".join(backend_names()))
        if not isinstance(cls, BaseException) and not cls.capabilities.real:
            raise UsageError(f"backend {name!r} tracks simulated processes, not process "
                             "IDs of this machine: use watch --demo --simulate")
        p = probe(name)
        if not p.ok:
            raise Exit(EXIT_UNAVAILABLE, f"backend {name!r} is unavailable: {p.reason}"
                       + SIMULATE_HINT)
        if not isinstance(cls, BaseException) and not cls.capabilities.other_processes:
            raise Exit(EXIT_UNAVAILABLE, f"backend {name!r} tracks only the memory of the "
                       "process that uses it, not another process's; use softdirty (or "
                       "watch --demo for this process's own memory)")
        return name
    reasons = []
    candidates = []
    for n in backend_names():
        cls = _backend_class(n)
        p = probe(n)
        caps = None if isinstance(cls, BaseException) else cls.capabilities
        if caps is not None and not caps.real:
            continue          # the simulator is chosen by name only
        if caps is not None and not caps.other_processes:
            reasons.append(f"{n}: tracks only its own process")
        elif not p.ok:
            reasons.append(f"{n}: {p.reason}")
        else:
            candidates.append((cls.priority, n))
    if not candidates:
        raise Exit(EXIT_UNAVAILABLE, "no backend here can watch another process's writes; "
                   + "; ".join(reasons) + SIMULATE_HINT)
    return max(candidates)[1]


def _demo_writer(store: Callable[[list[int]], None], npages: int, rate: float,
                 stop: threading.Event) -> None:
    """Store to ``rate`` random pages per second (of ``npages``) until ``stop``."""
    import random
    rnd = random.Random(1)
    tick = 0.01
    debt = 0.0
    next_t = time.monotonic()
    while not stop.is_set():
        debt += rate * tick
        k = int(debt)
        debt -= k
        if k:
            store([rnd.randrange(npages) for _ in range(k)])
        next_t += tick
        stop.wait(max(0.0, next_t - time.monotonic()))


@dataclasses.dataclass
class _Watched:
    """What a watch looks at: a tracker, the mappings to attribute pages to, whether
    the process is alive, and (--demo) the writer to run and what to free after."""

    tracker: Any
    maps: Callable[[], Sequence[Mapping]]
    alive: Callable[[], bool]
    title: str
    pid: int
    store: Callable[[list[int]], None] | None = None
    npages: int = 0
    cleanup: Callable[[], None] = lambda: None


class _LockedTracker:
    """A tracker whose calls hold a lock the demo writer also takes (the simulated
    process is not thread-safe)."""

    def __init__(self, tracker: Any, lock: threading.Lock) -> None:
        self._t, self._lock = tracker, lock

    def reset(self) -> None:
        with self._lock:
            self._t.reset()

    def collect(self, reset: bool = True) -> Any:
        with self._lock:
            return self._t.collect(reset=reset)

    def close(self) -> None:
        with self._lock:
            self._t.close()


def _watch_demo(args: argparse.Namespace) -> _Watched:
    import pagescan
    npages = args.demo_size * MIB // PAGE
    if args.simulate:
        from .. import compare
        name = "softdirty" if args.backend == "auto" else args.backend
        if name not in ("softdirty", "uffd"):
            raise UsageError(f"--simulate plays softdirty or uffd, not {name!r}")
        ok, why = compare.sim_status()
        if not ok:
            raise Exit(EXIT_UNAVAILABLE, f"the simulator does not work here: {why}")
        w = compare.Workload("demo", "demo", "", npages, (), tuple(range(npages)))
        ex = compare.SimExecutor(name, w)
        lock = threading.Lock()

        def store_sim(pages: list[int]) -> None:
            with lock:
                ex.write(pages)
        maps_sim = [Mapping(ex.base, ex.base + ex.length, "rw-p", 0, "00:00", 0,
                            "[simulated demo buffer]")]
        return _Watched(_LockedTracker(ex.tracker, lock), lambda: maps_sim, lambda: True,
                        f"pagescan watch --demo --simulate: {args.demo_rate:g} pages/s "
                        f"written into {args.demo_size} MiB of simulated process "
                        f"{ex.sim.pid}, {ex.label}", ex.sim.pid, store_sim, npages, ex.close)
    mem = pagescan.allocate(npages * PAGE)
    try:
        tracker = pagescan.track(mem, backend=args.backend)
    except BaseException:
        mem.close()
        raise

    def store(pages: list[int]) -> None:
        for p in pages:
            mem[p * PAGE] = 1

    def cleanup() -> None:
        tracker.close()
        mem.close()
    maps_real = [Mapping(tracker.start, tracker.end, "rw-p", 0, "00:00", 0,
                         "[pagescan demo buffer]")]
    return _Watched(tracker, lambda: maps_real, lambda: True,
                    f"pagescan watch --demo: {args.demo_rate:g} pages/s written into "
                    f"{args.demo_size} MiB of this process, backend {tracker.backend}",
                    os.getpid(), store, npages, cleanup)


def _watch_process(args: argparse.Namespace) -> _Watched:
    import pagescan
    pid = args.pid
    if args.simulate:
        raise UsageError("--simulate plays the watch on a simulated process running the "
                         "demo writer (use it with --demo): the simulator cannot see a real "
                         "process's writes")
    if not process_exists(pid):
        raise NoSuchProcess(f"no process with PID {pid}")
    read_maps(pid)      # permission check with a clear message before any backend
    name = _other_process_backend(args.backend)
    try:
        tracker = pagescan.track(pid=pid, backend=name)
    except PermissionError as err:
        raise AccessDenied(f"cannot track process {pid}: {err}; " + PTRACE_HINT) from err

    def maps() -> Sequence[Mapping]:
        try:
            return read_maps(pid)
        except NoSuchProcess:
            return []
    return _Watched(tracker, maps, lambda: process_exists(pid),
                    f"pagescan watch {pid} ({process_name(pid)[:60]}), backend "
                    f"{tracker.backend}, every {args.interval:g} s", pid,
                    cleanup=tracker.close)


def cmd_watch(args: argparse.Namespace) -> int:
    if (args.pid is None) == (not args.demo):
        raise UsageError("give a PID to watch, or --demo (not both)")
    watched = _watch_demo(args) if args.demo else _watch_process(args)
    stop = threading.Event()
    writer = None
    if watched.store is not None:
        writer = threading.Thread(target=_demo_writer, daemon=True,
                                  args=(watched.store, watched.npages, args.demo_rate, stop))
    display = _Display(sys.stdout, json_lines=args.json, top=args.top,
                       tty=sys.stdout.isatty() and not args.json, title=watched.title)
    old = signal.getsignal(signal.SIGINT)

    def on_sigint(signum: int, frame: Any) -> None:
        stop.set()
    signal.signal(signal.SIGINT, on_sigint)
    ended, code, message = "count", EXIT_OK, ""
    try:
        if writer is not None:
            writer.start()
        for sample in dirty_rate(watched.tracker, watched.maps, args.interval,
                                 count=args.count, duration=args.duration,
                                 alive=watched.alive, stop=stop):
            display.show(sample)
        if stop.is_set():
            ended, message = "interrupted", "interrupted"
            code = EXIT_OK if display.samples else EXIT_INTERRUPTED
        elif args.count is None:
            ended = "duration"
    except NoSuchProcess:
        secs = display.samples[-1].t if display.samples else 0.0
        ended, code = "exited", EXIT_GONE
        message = (f"process {watched.pid} exited after {len(display.samples)} samples "
                   f"({secs:.2f} s); watch ended")
    finally:
        stop.set()
        signal.signal(signal.SIGINT, old)
        if writer is not None:
            writer.join()
        watched.cleanup()
    display.summary(ended, message)
    if ended == "exited":
        sys.stderr.write(f"pagescan: {message}\n")
    return code


# =================================================================== compare


def cmd_compare(args: argparse.Namespace) -> int:
    from .. import compare
    return compare.run_cli(args)


# ====================================================================== main


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    epilog = ("exit codes: 0 ok, 1 error, 2 usage error, 3 no such process (or it exited), "
              "4 access denied (ptrace read), 5 no backend works here for this, "
              "130 interrupted")
    p = _Parser(prog="pagescan", description="Which pages of memory were written: "
                "PAGEMAP_SCAN, uffd-wp async, soft-dirty, mprotect and a simulator.",
                epilog=epilog)
    import pagescan
    p.add_argument("--version", action="version", version=f"pagescan {pagescan.__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    d = sub.add_parser("doctor", help="which backends work here, and why not",
                       description="Which backends work on this kernel (for each that does "
                       "not, the probe's reason), the kernel version and the settings that "
                       "matter.", epilog=epilog)
    d.add_argument("--json", action="store_true", help="print a JSON object")
    d.set_defaults(func=cmd_doctor, parser=d)

    cats = ",".join(Category.__members__)
    s = sub.add_parser("scan", help="the regions of each mapping of a process, with categories",
                       description="The regions of each mapping of process PID with their "
                       "page categories, like pmap. Categories: " + cats + " (comma-"
                       "separated, case-insensitive; 'all' or 'none').", epilog=epilog)
    s.add_argument("pid", type=parse_pid, metavar="PID")
    s.add_argument("--range", type=parse_range, metavar="A-B",
                   help="only [A, B): hex addresses as in /proc/PID/maps")
    s.add_argument("--required", type=parse_categories, default=0, metavar="CATS",
                   help="pages must have all of these")
    s.add_argument("--anyof", type=parse_categories, default=0, metavar="CATS",
                   help="pages must have at least one of these")
    s.add_argument("--excluded", type=parse_categories, default=0, metavar="CATS",
                   help="pages must have none of these")
    s.add_argument("--return", dest="return_mask", type=parse_categories, default=None,
                   metavar="CATS", help="categories reported per region (default: all)")
    s.add_argument("--method", choices=("auto", "ioctl", "pagemap"), default="auto",
                   help="PAGEMAP_SCAN (ioctl), or pagemap entries through "
                   "pagemap_to_categories (default: the ioctl where the kernel has it)")
    s.add_argument("--json", action="store_true", help="print a JSON object")
    s.set_defaults(func=cmd_scan, parser=s)

    w = sub.add_parser("watch", help="pages and MiB written per second, per mapping",
                       description="Pages and MiB written per second by process PID, per "
                       "mapping and in total (like QEMU's calc-dirty-rate, for a process). "
                       "Another process is watched with soft-dirty; --demo watches a built-in "
                       "writer in this process's own memory (uffd). Refreshes on a terminal, "
                       "prints plain lines when piped, JSON lines with --json. Runs until "
                       "--count/--duration, Ctrl-C, or the process exits (exit code 3).",
                       epilog=epilog)
    w.add_argument("pid", type=parse_pid, nargs="?", metavar="PID")
    w.add_argument("--interval", type=parse_duration, default=1.0, metavar="T",
                   help="sampling interval (1s, 250ms, ...; default 1s)")
    w.add_argument("--count", type=positive_int, metavar="N", help="stop after N samples")
    w.add_argument("--duration", type=parse_duration, metavar="T", help="stop after T")
    w.add_argument("--backend", default="auto",
                   help="backend name (default: the best that can do it here)")
    w.add_argument("--top", type=positive_int, default=10, metavar="K",
                   help="mappings shown per sample (default 10; --json shows all)")
    w.add_argument("--json", action="store_true", help="one JSON object per sample, then "
                   "a summary object")
    w.add_argument("--demo", action="store_true",
                   help="watch a writer thread in this process's own memory instead of PID")
    w.add_argument("--demo-rate", type=float, default=2000.0, metavar="PAGES",
                   help="pages per second the demo writer writes (default 2000)")
    w.add_argument("--demo-size", type=positive_int, default=64, metavar="MIB",
                   help="size of the demo buffer in MiB (default 64)")
    w.add_argument("--simulate", action="store_true",
                   help="with --demo: the writer runs in a simulated process, watched with "
                   "--backend (softdirty by default) on the simulated kernel")
    w.set_defaults(func=cmd_watch, parser=w)

    from .. import compare
    c = sub.add_parser("compare", help="every backend on the built-in workloads, with ground "
                       "truth", description=compare.DESCRIPTION, epilog=epilog,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    compare.add_arguments(c)
    c.set_defaults(func=cmd_compare, parser=c)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except UsageError as err:
        args.parser.print_usage(sys.stderr)
        sys.stderr.write(f"pagescan {args.command}: error: {err}\n")
        return EXIT_USAGE
    except Exit as err:
        sys.stderr.write(f"pagescan {args.command}: {err.message}\n")
        return err.code
    except AccessDenied as err:
        sys.stderr.write(f"pagescan {args.command}: {err}\n")
        return EXIT_ACCESS
    except NoSuchProcess as err:
        sys.stderr.write(f"pagescan {args.command}: {err}\n")
        return EXIT_GONE
    except BackendUnavailable as err:
        sys.stderr.write(f"pagescan {args.command}: {err}\n")
        return EXIT_UNAVAILABLE
    except PagescanError as err:
        sys.stderr.write(f"pagescan {args.command}: {err}\n")
        return EXIT_ERROR
    except KeyboardInterrupt:
        sys.stderr.write("pagescan: interrupted\n")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # the reader went away (| head): not an error of ours
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return EXIT_OK
