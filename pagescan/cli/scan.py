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

from .. import ALL_CATEGORIES, Category, Masks, procfs
from .._describe import category_names
from ..constants import PAGE_SIZE, PM_PFN_MASK, PM_PRESENT, USER_ADDRESS_LIMIT
from ..errors import AccessDenied, NoSuchProcess, PagescanError
from ..kernel import Kernel, LinuxKernel
from .exits import EXIT_OK, EXIT_UNAVAILABLE, PTRACE_HINT, Exit, UsageError
from .output import dump_json, write_scan

__all__ = ["UNREGISTERED_WRITTEN", "Scanner", "cmd_scan", "scan_process", "zero_pfn"]

Region = tuple[int, int, int]

WRITTEN = int(Category.WRITTEN)
WPALLOWED = int(Category.WPALLOWED)

#: what WRITTEN means on memory that no userfaultfd registered for write-protect
UNREGISTERED_WRITTEN = (
    "WRITTEN means 'not write-protected by userfaultfd'; in memory that no userfaultfd "
    "registered for write-protect (regions without WPALLOWED) the kernel reports every "
    "page WRITTEN, which says nothing about writes")


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

    def __init__(self, pid: int, method: str, kernel: Kernel | None = None) -> None:
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
        self.kernel = LinuxKernel(pid) if kernel is None else kernel
        self._pfnmap: set[int] | None = None
        #: the categories this kernel's PAGEMAP_SCAN accepts (probed on first use)
        self.valid: int | None = None

    def close(self) -> None:
        self.kernel.close()

    def _gone(self, err: OSError) -> PagescanError:
        if err.errno == errno.ESRCH or not procfs.alive(self.pid):
            return NoSuchProcess(f"process {self.pid} exited during the scan")
        if err.errno in (errno.EACCES, errno.EPERM):
            return AccessDenied(f"PAGEMAP_SCAN on /proc/{self.pid}/pagemap was refused; "
                                + PTRACE_HINT)
        return PagescanError(f"scanning process {self.pid} failed: {err}")

    def _probe_valid(self) -> int:
        """The categories the kernel's PAGEMAP_SCAN accepts
        (:meth:`Kernel.scan_categories`, as the backends ask it: GUARD only from
        6.15 on; older kernels refuse a mask naming it with EINVAL). The probe
        scans scratch pages of the calling process, so for another process it
        asks through a kernel object of our own."""
        if self.kernel.is_self:
            valid = self.kernel.scan_categories()
        else:
            with LinuxKernel() as own:
                valid = own.scan_categories()
        missing = ALL_CATEGORIES & ~valid
        if missing:
            names = ",".join(category_names(missing))
            self.notes.append(f"kernel {self.kernel.release}'s PAGEMAP_SCAN does not know "
                              f"{names} (GUARD needs 6.15+): no page is reported with it")
        return valid

    def restrict(self, masks: Masks) -> Masks:
        """``masks`` as this kernel's PAGEMAP_SCAN accepts them."""
        if self.valid is None:
            self.valid = self._probe_valid()
        return masks.restrict(self.valid)

    def scan(self, m: procfs.Mapping, start: int, end: int, masks: Masks) -> list[Region]:
        if self.method == "ioctl":
            try:
                kmasks = self.restrict(masks)
                if kmasks.matches_nothing:
                    return []
                res = self.kernel.pagemap_scan(start, end, 0, kmasks)
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


def _drop_unregistered_written(regions: list[Region]) -> list[Region]:
    """The regions without WRITTEN where WPALLOWED is absent (memory no userfaultfd
    registered for write-protect, where the kernel marks every page WRITTEN),
    neighbours with equal categories merged again."""
    out: list[Region] = []
    for a, b, c in regions:
        if not c & WPALLOWED:
            c &= ~WRITTEN
        if out and out[-1][1] == a and out[-1][2] == c:
            out[-1] = (out[-1][0], b, c)
        else:
            out.append((a, b, c))
    return out


def scan_process(pid: int, masks: Masks, rng: tuple[int, int] | None = None,
                 method: str = "auto", *, written: str = "registered",
                 kernel: Kernel | None = None) -> dict[str, Any]:
    """The JSON-able result of ``pagescan scan``.

    ``written``: ``"registered"`` reports WRITTEN only where it means something,
    in memory registered with a userfaultfd for write-protect (WPALLOWED); elsewhere
    the kernel marks every page WRITTEN ("not write-protected") and it is left out.
    ``"all"`` reports the kernel's answer as it is (with a note where WRITTEN is
    meaningless). ``kernel``: the kernel object to scan through (default:
    ``LinuxKernel(pid)``)."""
    if written not in ("registered", "all"):
        raise ValueError(f"written={written!r}: 'registered' or 'all'")
    maps = procfs.read_maps(pid)
    scanner = Scanner(pid, method, kernel)
    unregistered_written = False
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
            if any(c & WRITTEN and not c & WPALLOWED for _, _, c in regions):
                unregistered_written = True
                if written == "registered":
                    regions = _drop_unregistered_written(regions)
            if not regions and not (masks.matches_nothing or masks.mask | masks.anyof):
                entry["note"] = ("the kernel walks no pages of this mapping (VM_PFNMAP "
                                 "or VM_IO, such as [vvar])")
            pages = sum((b - a) // PAGE_SIZE for a, b, _ in regions)
            total_pages += pages
            total_regions += len(regions)
            entry["regions"] = [{"start": a, "end": b, "pages": (b - a) // PAGE_SIZE,
                                 "categories": category_names(c), "flags": c}
                                for a, b, c in regions]
            out_maps.append(entry)
    finally:
        scanner.close()
    if unregistered_written and written == "registered":
        scanner.notes.append("WRITTEN is shown only in memory registered with a "
                             "userfaultfd for write-protect (WPALLOWED): elsewhere the "
                             "kernel reports every page WRITTEN, which says nothing about "
                             "writes (--return with WRITTEN, or all, shows it anyway)")
    elif unregistered_written:
        scanner.notes.append(UNREGISTERED_WRITTEN)
    shown = sum(1 for entry in out_maps if entry["regions"])
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
        # mappings: those with at least one region (the text lists those);
        # mappings_scanned: every mapping in the range (the list above)
        "total": {"mappings": shown, "mappings_scanned": len(out_maps),
                  "regions": total_regions, "pages": total_pages,
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
    named = args.required | args.anyof | args.excluded
    explicit = args.return_mask is not None and args.return_mask & WRITTEN
    written = "all" if explicit or named & WRITTEN else "registered"
    rep = scan_process(args.pid, masks, args.range, args.method, written=written)
    if args.json:
        dump_json(rep, sys.stdout)
    else:
        write_scan(rep, sys.stdout)
    return EXIT_OK
