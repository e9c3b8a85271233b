"""Backend registry: the entry-point group ``pagescan.backends``.

The built-in backends register through the same group a third-party plugin
would use (see pyproject.toml). When pagescan runs from a source tree without
installed metadata, the built-ins are found through the same names below. A
backend that fails to load is not dropped silently: it stays listed, and its
probe reason carries the import error.
"""

from __future__ import annotations

import functools
import importlib
from importlib import metadata

from ..errors import BackendUnavailable
from .base import Backend, Capabilities, Probe

__all__ = ["Backend", "Capabilities", "Probe", "backend_class", "backend_names",
           "get_backend", "probe", "probe_all", "select"]

GROUP = "pagescan.backends"

BUILTIN = {
    "uffd": "pagescan.backends.uffd:UffdBackend",
    "softdirty": "pagescan.backends.softdirty:SoftDirtyBackend",
    "simulator": "pagescan.backends.simulator:SimulatorBackend",
    "mprotect": "pagescan.backends.mprotect:MprotectBackend",
}

_cache: dict[str, type[Backend] | BaseException] = {}


@functools.lru_cache(maxsize=1)
def _targets() -> dict[str, str]:
    """Registered backends, name -> "module:attr" (entry points are read once:
    scanning installed distributions costs milliseconds)."""
    found = {ep.name: ep.value for ep in metadata.entry_points(group=GROUP)}
    for name, target in BUILTIN.items():
        found.setdefault(name, target)
    return found


def backend_names() -> list[str]:
    """Every registered backend name, built-in and plugin."""
    return sorted(_targets())


def _load(name: str) -> type[Backend] | BaseException:
    if name not in _cache:
        targets = _targets()
        if name not in targets:
            raise ValueError(
                f"unknown backend {name!r}; known: {', '.join(sorted(targets))} "
                f"(or 'auto')")
        module, _, attr = targets[name].partition(":")
        try:
            cls = getattr(importlib.import_module(module), attr)
        except Exception as err:  # noqa: BLE001 - keep the reason: probe() shows it
            _cache[name] = err
        else:
            _cache[name] = cls
    return _cache[name]


def backend_class(name: str) -> type[Backend]:
    """The class registered as ``name``, whether or not it works here (``probe(name)``
    says that): its capabilities, priority, options. ValueError for an unknown name,
    BackendUnavailable (with the import error) when it fails to load."""
    cls = _load(name)
    if isinstance(cls, BaseException):
        raise BackendUnavailable(name, f"the backend failed to load: {cls!r}")
    return cls


def probe(name: str) -> Probe:
    """The probe of one backend (never raises for a known name)."""
    cls = _load(name)
    if isinstance(cls, BaseException):
        return Probe(False, f"the backend failed to load: {cls!r}")
    try:
        return cls.probe()
    except Exception as err:  # noqa: BLE001 - a probe must not raise; say so if it does
        return Probe(False, f"the probe raised {err!r}")


def probe_all() -> dict[str, Probe]:
    """Every backend's probe, by name."""
    return {name: probe(name) for name in backend_names()}


#: backends whose probe passed in this process. What a kernel supports does not
#: change while a process runs, so track() asks each backend once, not per call
#: (a probe maps memory, opens descriptors and issues ioctls: ~0.2 ms). probe() and
#: probe_all() always probe afresh; a failed probe is never cached.
_usable: set[str] = set()


def _probe_cached(name: str) -> Probe:
    if name in _usable:
        return Probe(True, "", {"cached": True})
    result = probe(name)
    if result.ok:
        _usable.add(name)
    return result


def get_backend(name: str) -> type[Backend]:
    """The class of a backend that works here, else BackendUnavailable with the reason."""
    result = _probe_cached(name)
    if not result.ok:
        raise BackendUnavailable(name, result.reason)
    cls = _load(name)
    assert not isinstance(cls, BaseException)
    return cls


def select(name: str = "auto") -> type[Backend]:
    """``"auto"``: the highest-priority real backend that probes OK; else by name."""
    if name != "auto":
        return get_backend(name)
    reasons = []
    ranked = []
    for n in backend_names():
        cls = _load(n)
        if isinstance(cls, BaseException):
            reasons.append(f"{n}: the backend failed to load: {cls!r}")
        elif not cls.capabilities.real:
            reasons.append(f"{n}: not a real-kernel backend")
        else:
            ranked.append((cls.priority, n, cls))
    # the best first: a lower-priority backend is probed only when those above fail
    for _, n, cls in sorted(ranked, key=lambda r: (r[0], r[1]), reverse=True):
        p = _probe_cached(n)
        if p.ok:
            return cls
        reasons.append(f"{n}: {p.reason}")
    raise BackendUnavailable("auto", "no backend works here; " + "; ".join(reasons))
