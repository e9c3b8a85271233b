"""pagescan: which pages of memory were written since you last looked, exactly and fast.

The core (``scan_pages`` and friends) turns per-page categories into runs of
pages exactly as the kernel's PAGEMAP_SCAN ioctl does. ``IMPLEMENTATION`` says
whether the compiled core (``"cython"``) or the pure-Python reference
(``"python"``) is loaded; ``PAGESCAN_PUREPYTHON=1`` forces the latter.
"""

from __future__ import annotations

from ._impl import IMPLEMENTATION, IMPORT_ERROR, impl as _impl
from ._types import ALL_CATEGORIES, HOLE, Category, Masks, PageRegion, ScanResult
from .errors import (AccessDenied, BackendUnavailable, KernelError, NoSuchProcess,
                     OverlapError, PagescanError, RangeError, TrackerClosed)

from .memory import PAGE_SIZE, Memory, allocate
from .tracker import PartialPageWarning, Tracker, track
from .backends import backend_names, probe, probe_all

__version__ = "0.1.0"

RegionArray = _impl.RegionArray
scan_pages = _impl.scan_pages
pagemap_to_categories = _impl.pagemap_to_categories
coalesce = _impl.coalesce

__all__ = [
    "IMPLEMENTATION", "IMPORT_ERROR", "ALL_CATEGORIES", "HOLE", "Category", "Masks",
    "PageRegion", "ScanResult", "RegionArray", "scan_pages", "pagemap_to_categories",
    "coalesce", "PagescanError", "BackendUnavailable", "TrackerClosed", "RangeError",
    "OverlapError", "AccessDenied", "NoSuchProcess", "KernelError", "PAGE_SIZE", "Memory",
    "allocate", "PartialPageWarning", "Tracker", "track", "backend_names", "probe",
    "probe_all",
]
