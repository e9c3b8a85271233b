"""pagescan: which pages of memory were written since you last looked, exactly and fast.

The core (``scan_pages`` and friends) turns per-page categories into runs of
pages exactly as the kernel's PAGEMAP_SCAN ioctl does. ``IMPLEMENTATION`` says
whether the compiled core (``"cython"``) or the pure-Python reference
(``"python"``) is loaded; ``PAGESCAN_PUREPYTHON=1`` forces the latter.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._impl import IMPLEMENTATION, IMPORT_ERROR
from ._impl import impl as _impl
from ._types import ALL_CATEGORIES, HOLE, Category, Masks, PageRegion, ScanCount, ScanResult
from .backends import backend_names, probe, probe_all
from .errors import (AccessDenied, BackendUnavailable, HugePageWarning, KernelError,
                     NoSuchProcess, OverlapError, PagescanError, RangeError,
                     SharedMappingWarning, TrackerClosed)
from .memory import PAGE_SIZE, Memory, allocate
from ._version import __version__ as __version__
from .tracker import PartialPageWarning, Tracker, track

if TYPE_CHECKING:      # imported on first use (see __getattr__), typed for checkers
    from .monitoring import monitor as monitor

RegionArray = _impl.RegionArray
scan_pages = _impl.scan_pages
pagemap_to_categories = _impl.pagemap_to_categories
coalesce = _impl.coalesce

__all__ = [
    "ALL_CATEGORIES", "HOLE", "IMPLEMENTATION", "IMPORT_ERROR", "PAGE_SIZE", "AccessDenied",
    "BackendUnavailable", "Category", "HugePageWarning", "KernelError", "Masks", "Memory",
    "NoSuchProcess", "OverlapError", "PageRegion", "PagescanError", "PartialPageWarning",
    "RangeError", "RegionArray", "ScanCount", "ScanResult", "SharedMappingWarning", "Tracker",
    "TrackerClosed", "allocate", "backend_names",
    "checkpoint", "coalesce", "monitor", "monitoring", "pagemap_to_categories", "probe",
    "probe_all", "scan_pages", "track",
]

#: submodules imported on first use, so that ``import pagescan`` stays fast
_LAZY_SUBMODULES = frozenset({"checkpoint", "monitoring"})
#: functions of lazily imported submodules: name -> submodule
_LAZY_FUNCTIONS = {"monitor": "monitoring"}


def __getattr__(name: str) -> object:
    if name in _LAZY_SUBMODULES:
        import importlib
        return importlib.import_module(f"{__name__}.{name}")
    if name in _LAZY_FUNCTIONS:
        import importlib
        return getattr(importlib.import_module(f"{__name__}.{_LAZY_FUNCTIONS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
