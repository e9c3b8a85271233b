"""The interface every backend implements, and what it reports about itself."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import ClassVar

from .._types import Masks, ScanResult
from ..kernel import Kernel

__all__ = ["Backend", "Capabilities", "Probe"]


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do; the same questions for every backend."""

    #: get-and-reset is one atomic step: a write racing a collect is reported by
    #: that collect or by a later one, never lost.
    atomic_reset: bool
    #: reset can be limited to a range (soft-dirty resets the whole process).
    range_reset: bool
    #: can track another process's memory.
    other_processes: bool
    #: masks are applied in the kernel (no per-page data copied to user space).
    kernel_filtering: bool
    #: writes made by the kernel (read() into a tracked buffer) are seen.
    kernel_writes_seen: bool
    #: categories this backend reports besides WRITTEN.
    categories: int
    #: drives the real kernel (False for the simulator).
    real: bool = True
    notes: tuple[str, ...] = field(default_factory=tuple)
    #: arming changes the protection of the tracked pages (mprotect): a page shared
    #: with neighbouring objects would make their kernel writes fail (EFAULT), so
    #: track() refuses objects that do not fill their pages unless
    #: ``partial_pages=True``.
    changes_protection: bool = False


@dataclass(frozen=True)
class Probe:
    """Whether a backend works here; when not, ``reason`` says why in words a user
    can act on. ``details`` holds what the probe found (kernel, path in use, ...)."""

    ok: bool
    reason: str = ""
    details: dict[str, object] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return self.ok


class Backend(abc.ABC):
    """One tracking mechanism. A Tracker owns one instance per tracked range.

    Ranges are byte addresses, page-aligned, ``[start, end)``. The Tracker checks
    arguments before they reach a backend; backends translate OSError into
    pagescan's errors with the likely cause.
    """

    #: registry name (``backend="..."``)
    name: ClassVar[str]
    capabilities: ClassVar[Capabilities]
    #: higher wins for ``backend="auto"``
    priority: ClassVar[int] = 0

    def __init__(self, *, pid: int | None = None, thp: bool = False,
                 kernel: Kernel | None = None) -> None:
        """``pid``: the process to track (None: this one); ``thp``: keep transparent
        huge pages in tracked ranges (coarser answers) instead of exact pages;
        ``kernel``: the kernel to drive (None: ``LinuxKernel(pid)``; the simulator
        passes a :class:`pagescan.simulator.SimKernel`). Every kernel interaction of
        a backend goes through ``self.kernel``."""
        self.kernel = self.make_kernel(pid, kernel)
        self.pid = self.kernel.pid
        self.thp = thp

    @staticmethod
    def make_kernel(pid: int | None, kernel: Kernel | None) -> Kernel:
        """``kernel``, or the real kernel for ``pid`` (checked to agree)."""
        if kernel is None:
            from ..kernel import LinuxKernel
            return LinuxKernel(pid)
        if pid is not None and pid != kernel.pid:
            raise ValueError(f"pid={pid} is not the kernel's process ({kernel.pid})")
        return kernel

    @classmethod
    @abc.abstractmethod
    def probe(cls, kernel: Kernel | None = None) -> Probe:
        """Whether this backend works here (on ``kernel``; None: the running kernel,
        for the calling process). Never raises."""

    def stats(self) -> dict[str, object]:
        """Backend statistics (what the mechanism did: faults, coarsening ...); {}
        for backends that keep none."""
        return {}

    def mark_written(self, start: int, end: int) -> None:  # noqa: B027 - optional
        """The program says ``[start, end)`` was written (by the kernel, a device:
        writes the mechanism cannot see). A no-op where every write is seen."""

    @abc.abstractmethod
    def register(self, start: int, end: int) -> None:
        """Start watching ``[start, end)``; every page reads as written until armed."""

    @abc.abstractmethod
    def unregister(self, start: int, end: int) -> None:
        """Stop watching; the memory stays usable."""

    @abc.abstractmethod
    def reset(self, start: int, end: int) -> None:
        """Mark every page of the range not written (arming is the first reset)."""

    @abc.abstractmethod
    def scan(self, start: int, end: int, masks: Masks, *, max_pages: int = 0,
             max_regions: int | None = None, reset: bool = False) -> ScanResult:
        """Regions of ``[start, end)`` matching ``masks``. With ``reset=True`` the
        reported WRITTEN pages are reset in the same step (atomically where
        ``capabilities.atomic_reset``)."""

    def close(self) -> None:
        """Release what the backend holds (file descriptors, the kernel object)."""
        k = getattr(self, "kernel", None)
        if k is not None:
            k.close()
