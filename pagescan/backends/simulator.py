"""The simulator backend: a real backend's own code, run over a simulated kernel.

``backend="simulator"`` builds the backend of the ``mechanism`` asked for
(``"uffd"``, the default, ``"softdirty"``, ``"mprotect"``, or any registered
backend name) over :class:`pagescan.simulator.SimKernel` instead of the running
kernel: the same class, the same code, every kernel interaction answered by the
model. So a bug in a backend shows in its simulated rows too, and a third-party
backend can be run on the simulator the same way.

Which simulated process a tracker watches is given the way another process is:
by pid. Every :class:`pagescan.simulator.SimProcess` has a pid above the
kernel's PID_MAX_LIMIT, so it can never name a real process::

    sim = SimProcess()
    addr = sim.mmap(1 << 30)
    t = pagescan.track((addr, 1 << 30), backend="simulator", pid=sim.pid)
    t = sim.track(addr, 1 << 30)                                   # the same, shorter
    t = sim.track(addr, 1 << 30, mechanism="softdirty")             # another mechanism

Without ``pid``, the process made current with ``with sim:`` is used. The
tracker's ``backend`` is ``"simulator"``; its ``capabilities`` are those of the
mechanism with ``real=False``; the backend object's ``mechanism`` names it.
Writes are made with ``sim.write()``: the simulator cannot see real memory.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from .._types import ALL_CATEGORIES
from ..errors import BackendUnavailable, NoSuchProcess, RangeError
from ..kernel import Kernel
from .base import Backend, Capabilities, Probe

__all__ = ["MECHANISMS", "SimulatorBackend", "simulated_process"]

#: the built-in mechanisms the simulator models
MECHANISMS = ("uffd", "softdirty", "mprotect")


def simulated_process(pid: int | None) -> Any:
    """The :class:`~pagescan.simulator.SimProcess` of ``pid`` (None: the current one,
    ``with sim:``); RangeError / NoSuchProcess when there is none."""
    from .. import simulator
    sim = simulator.current() if pid is None else simulator.lookup(pid)
    if sim is None:
        if pid is None:
            raise RangeError("the simulator backend tracks simulated memory: pass "
                             "pid=sim.pid (or use sim.track(), or 'with sim:') for a "
                             "pagescan.simulator.SimProcess")
        raise NoSuchProcess(f"no simulated process has pid {pid}")
    if sim.exited:
        raise NoSuchProcess(f"the simulated process {sim.pid} has exited")
    return sim


class SimulatorBackend(Backend):
    """Not a mechanism of its own: constructing it returns the ``mechanism``'s
    backend over a :class:`~pagescan.simulator.SimKernel` (see the module docs)."""

    name: ClassVar[str] = "simulator"
    priority: ClassVar[int] = 0
    capabilities: ClassVar[Capabilities] = Capabilities(
        atomic_reset=True,
        range_reset=True,
        other_processes=True,
        kernel_filtering=True,
        kernel_writes_seen=True,
        categories=ALL_CATEGORIES,
        real=False,
        notes=("tracks simulated memory (pagescan.simulator.SimProcess), by pid or "
               "'with sim:'; writes are made with sim.write()",
               "runs the real backend of mechanism= ('uffd' by default, 'softdirty', "
               "'mprotect') over the model of Linux 6.18.y; these capabilities are "
               "uffd's, a tracker's are its mechanism's"),
    )

    @classmethod
    def probe(cls, kernel: Kernel | None = None) -> Probe:
        try:
            import numpy  # noqa: F401

            from .. import simulator  # noqa: F401
        except ImportError as err:
            return Probe(False, f"the simulator needs numpy ({err}); pip install numpy")
        return Probe(True, "", {"model": "Linux 6.18.y, x86-64, 4 KiB pages",
                                "mechanisms": list(MECHANISMS)})

    def __new__(cls, *, pid: int | None = None, thp: bool = False,  # type: ignore[misc]
                mechanism: str = "uffd", kernel: Kernel | None = None,
                **options: Any) -> Backend:
        from .. import simulator
        from . import _load
        if not isinstance(mechanism, str) or mechanism == "simulator":
            raise ValueError(f"mechanism must be a backend name such as {MECHANISMS}, "
                             f"not {mechanism!r}")
        mech = _load(mechanism)
        if isinstance(mech, BaseException):
            raise BackendUnavailable(f"simulator/{mechanism}",
                                     f"the backend failed to load: {mech!r}")
        if kernel is None:
            kernel = simulator.SimKernel(simulated_process(pid))
        elif pid is not None and pid != kernel.pid:
            raise ValueError(f"pid={pid} is not the kernel's process ({kernel.pid})")
        try:
            p = mech.probe(kernel)
        except TypeError:                      # a backend whose probe takes no kernel
            p = Probe(True)
        if not p.ok:
            raise BackendUnavailable(f"simulator/{mechanism}", p.reason)
        backend = mech(thp=thp, kernel=kernel, **options)
        # the tracker shows the name users chose, and the mechanism's capabilities
        # as simulated ones
        backend.name = cls.name  # type: ignore[misc]
        backend.mechanism = mechanism  # type: ignore[attr-defined]
        caps = backend.capabilities
        backend.capabilities = dataclasses.replace(  # type: ignore[misc]
            caps, real=False, other_processes=True,
            notes=(f"simulated {mechanism} (the real backend over SimKernel)", *caps.notes))
        return backend
