"""What a simulated access or call gives instead of returning: the signals a
program would take, and calls the real kernel never returns from."""

from __future__ import annotations

__all__ = ["BusError", "KernelHang", "SegmentationFault", "SimFault", "UffdWouldBlock"]


class SimFault(Exception):
    """An access the simulated program would take a signal for. Pages before
    ``address`` were accessed; nothing changed from ``address`` on."""

    signal = "SIGSEGV"

    def __init__(self, address: int, reason: str) -> None:
        super().__init__(f"{self.signal} at 0x{address:x}: {reason}")
        self.address = address
        self.reason = reason


class SegmentationFault(SimFault):
    """SIGSEGV: no mapping, no permission, or a guard page."""


class BusError(SimFault):
    """SIGBUS: a file mapping accessed beyond the end of its file."""

    signal = "SIGBUS"


class UffdWouldBlock(SimFault):
    """A write to a page write-protected by a *sync* userfaultfd: the thread would
    sleep until a handler resolves the fault (not modelled)."""

    signal = "userfaultfd"


class KernelHang(RuntimeError):
    """The real kernel does not return from this call (it loops until the process
    is killed). Nothing was changed."""
