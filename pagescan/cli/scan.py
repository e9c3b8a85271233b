"""``pagescan scan PID``: the regions of each mapping of a process with their page
categories (pmap with categories), from PAGEMAP_SCAN or, where the kernel or the
loaded core has none, from ``/proc/PID/pagemap`` entries."""

from __future__ import annotations

import argparse
import array
import errno
import functools
import platform
import sys
from typing import Any

import pagescan

from .. import procfs
from .._describe import category_names
from .. import ALL_CATEGORIES, Masks
from ..constants import PAGE_SIZE, PM_PFN_MASK, PM_PRESENT, USER_ADDRESS_LIMIT
from ..errors import AccessDenied, NoSuchProcess, PagescanError
from ..kernel import LinuxKernel
from .exits import EXIT_OK, EXIT_UNAVAILABLE, PTRACE_HINT, Exit, UsageError
from .output import dump_json, write_scan

__all__ = ["Scanner", "cmd_scan", "scan_process", "zero_pfn"]

Region = tuple[int, int, int]


@functools.cache
def zero_pfn() -> int | None:
    """The shared zero page's PFN, read from our own pagemap after a read fault
    (None when PFNs are hidden, i.e. without CAP_SYS_ADMIN)."""
    m = pagescan.allocate(PAGE_SIZE)
    entry = array.array("Q", [0])
    try:
        m[0]  # a read fault maps the zero page
        with LinuxKernel() as k:
            k.pagemap_read(m.address, memoryview(entry).cast("B"))
    except (OSError, PagescanError):
        return None
    finally:
        m.close()
    pfn = entry[0] & PM_PFN_MASK
    return pfn if entry[0] & PM_PRESENT and pfn else None


class Scanner:
    """Scans ranges of one process through the kernel seam
    (:class:`pagescan.kernel.LinuxKernel`): PAGEMAP_SCAN, else pagemap entries
    turned into categories by the core (:func:`pagescan.pagemap_to_categories`,
    :func:`pagescan.scan_pages`)."""

    CHUNK = 1 << 16   # pages per pagemap read in the fallback

    def __init__(self, pid: int, method: str) -> None:
        compiled = pagescan.IMPLEMENTATION == "cython"
        self.pid = pid
        self.method = method
        self.notes: list[str] = []
        if method == "auto":
            self.method = "ioctl" if compiled else "pagemap"
            if self.method == "pagemap":
                self.notes.append("the pure-Python core is loaded: categories come from "
                                  "/proc/PID/pagemap entries")
        elif method == "ioctl" and not compiled:
            raise Exit(EXIT_UNAVAILABLE, "--method ioctl needs the compiled core "
                       "(pagescan._core); the pure-Python reference is loaded")
        self.kernel = LinuxKernel(pid)
        self._pfnmap: set[int] | None = None

    def close(self) -> None:
        self.kernel.close()

    def _gone(self, err: OSError) -> PagescanError:
        if err.errno == errno.ESRCH or not procfs.alive(self.pid):
            return NoSuchProcess(f"process {self.pid} exited during the scan")
        if err.errno in (errno.EACCES, errno.EPERM):
            return AccessDenied(f"PAGEMAP_SCAN on /proc/{self.pid}/pagemap was refused; "
                                + PTRACE_HINT)
        return PagescanError(f"scanning process {self.pid} failed: {err}")

    def scan(self, m: procfs.Mapping, start: int, end: int, masks: Masks) -> list[Region]:
        if self.method == "ioctl":
            try:
                res = self.kernel.pagemap_scan(start, end, 0, masks)
            except OSError as err:
                if err.errno == errno.ENOTTY:
                    self.method = "pagemap"
                    self.notes.append(f"kernel {platform.release()} has no PAGEMAP_SCAN "
                                      "(needs 6.7+): categories come from pagemap entries")
                    return self.scan(m, start, end, masks)
                raise self._gone(err) from err
            return [tuple(r) for r in res.regions]  # type: ignore[misc]
        return self._scan_pagemap(m, start, end, masks)

    def _scan_pagemap(self, m: procfs.Mapping, start: int, end: int, masks: Masks
                      ) -> list[Region]:
        if self._pfnmap is None:
            self._pfnmap = procfs.pfnmap_starts(self.pid)
            self.notes.append("from pagemap entries: WRITTEN of never-populated pages, "
                              "HUGE and WPALLOWED cannot be derived"
                              + ("" if zero_pfn() else
                                 ", nor PFNZERO (PFNs are hidden without CAP_SYS_ADMIN)"))
        if m.start in self._pfnmap:
            return []
        parts = []
        addr = start
        while addr < end:
            n = min(self.CHUNK, (end - addr) // PAGE_SIZE)
            entries = array.array("Q", bytes(n * 8))
            self.kernel.pagemap_read(addr, memoryview(entries).cast("B"))
            cats = pagescan.pagemap_to_categories(entries, zero_pfn=zero_pfn())
            parts.append(pagescan.scan_pages(cats, start=addr, page_size=PAGE_SIZE,
                                             masks=masks).regions)
            addr += n * PAGE_SIZE
        return [tuple(r) for r in pagescan.coalesce(*parts)]  # type: ignore[misc]


def scan_process(pid: int, masks: Masks, rng: tuple[int, int] | None = None,
                 method: str = "auto") -> dict[str, Any]:
    """The JSON-able result of ``pagescan scan``."""
    maps = procfs.read_maps(pid)
    scanner = Scanner(pid, method)
    lo, hi = rng if rng else (0, 1 << 64)
    out_maps = []
    total_pages = total_regions = 0
    try:
        for m in maps:
            s, e = max(m.start, lo), min(m.end, hi)
            if s >= e:
                continue
            entry: dict[str, Any] = m.as_json()
            if s >= USER_ADDRESS_LIMIT:
                entry["regions"] = []
                entry["note"] = "above the user address range: the kernel does not walk it"
                out_maps.append(entry)
                continue
            regions = [] if masks.matches_nothing else scanner.scan(m, s, e, masks)
            pages = sum((b - a) // PAGE_SIZE for a, b, _ in regions)
            total_pages += pages
            total_regions += len(regions)
            entry["regions"] = [{"start": a, "end": b, "pages": (b - a) // PAGE_SIZE,
                                 "categories": category_names(c), "flags": c}
                                for a, b, c in regions]
            out_maps.append(entry)
    finally:
        scanner.close()
    return {
        "pid": pid,
        "command": procfs.process_name(pid),
        "method": "PAGEMAP_SCAN" if scanner.method == "ioctl" else "pagemap",
        "range": {"start": lo, "end": min(hi, USER_ADDRESS_LIMIT)},
        "masks": {"required": category_names(masks.mask & ~masks.inverted),
                  "anyof": category_names(masks.anyof),
                  "excluded": category_names(masks.inverted),
                  "return": category_names(masks.return_mask)},
        "page_size": PAGE_SIZE,
        "mappings": out_maps,
        "total": {"mappings": len(out_maps), "regions": total_regions, "pages": total_pages,
                  "bytes": total_pages * PAGE_SIZE},
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
        dump_json(rep, sys.stdout)
    else:
        write_scan(rep, sys.stdout)
    return EXIT_OK
