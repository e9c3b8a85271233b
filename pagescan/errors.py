"""Every exception pagescan raises on purpose derives from :class:`PagescanError`.

Bad arguments raise the builtin ``TypeError``/``ValueError`` (naming the argument);
the classes here cover what the kernel or the process environment refuses.
"""

from __future__ import annotations

__all__ = [
    "AccessDenied",
    "BackendUnavailable",
    "HugePageWarning",
    "KernelError",
    "NoSuchProcess",
    "OverlapError",
    "PagescanError",
    "RangeError",
    "SharedMappingWarning",
    "TrackerClosed",
]


class PagescanError(Exception):
    """Base class of pagescan's own errors."""


class BackendUnavailable(PagescanError):
    """The requested backend cannot work here; ``reason`` says why (the probe's words)."""

    def __init__(self, backend: str, reason: str) -> None:
        super().__init__(f"backend {backend!r} is unavailable: {reason}")
        self.backend = backend
        self.reason = reason


class TrackerClosed(PagescanError, ValueError):
    """The tracker was closed; it cannot be used any more."""


class RangeError(PagescanError, ValueError):
    """An address range is unaligned, empty, unmapped or not part of the tracker."""


class OverlapError(PagescanError, ValueError):
    """The range overlaps memory that another live tracker already watches."""


class AccessDenied(PagescanError, PermissionError):
    """The kernel refused access (e.g. ptrace read access to another process)."""


class NoSuchProcess(PagescanError, ProcessLookupError):
    """The process does not exist (or exited while being tracked)."""


class KernelError(PagescanError, OSError):
    """A system call failed in a way pagescan cannot map to a more specific error."""


class HugePageWarning(UserWarning):
    """Part of the tracked range is mapped by transparent huge pages that the backend
    cannot split (another process's memory): writes there are reported in 2 MiB units
    (``Tracker.stats()["granularity"]`` says which parts)."""


class SharedMappingWarning(UserWarning):
    """The tracked range includes MAP_SHARED mappings (a shared file, shmem, memfd):
    only stores through the tracked mapping are seen, not ``write()``/``pwrite()`` to
    the file nor stores through another mapping of it (this or another process)."""
