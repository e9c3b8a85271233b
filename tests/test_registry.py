"""The backend registry: selection order and the per-process probe cache."""

from __future__ import annotations

import pytest

import pagescan
from pagescan import backends
from pagescan.backends import Probe


def test_a_passed_probe_is_asked_once_per_process(monkeypatch, uffd_ok):
    cls = backends.get_backend("uffd")
    calls = []

    def probe(*a, **k):
        calls.append(1)
        return Probe(False, "should not be asked again")

    monkeypatch.setattr(cls, "probe", classmethod(probe))
    assert backends.get_backend("uffd") is cls            # cached: no second probe
    assert backends.select("auto") is cls
    assert calls == []
    assert not backends.probe("uffd").ok                  # probe() itself always asks
    assert calls == [1]


def test_a_failed_probe_is_not_cached(monkeypatch):
    name = "uffd"
    cls = backends.backend_class(name)
    monkeypatch.setattr(backends, "_usable", set())
    monkeypatch.setattr(cls, "probe", classmethod(lambda c, *a, **k: Probe(False, "nope")))
    with pytest.raises(pagescan.BackendUnavailable, match="nope"):
        backends.get_backend(name)
    monkeypatch.setattr(cls, "probe", classmethod(lambda c, *a, **k: Probe(True)))
    assert backends.get_backend(name) is cls


def test_auto_probes_lower_priorities_only_when_the_best_fails(monkeypatch):
    monkeypatch.setattr(backends, "_usable", set())
    asked = []
    for name in backends.backend_names():
        cls = backends.backend_class(name)

        def probe(c, *a, _n=name, **k):
            asked.append(_n)
            return Probe(True)
        monkeypatch.setattr(cls, "probe", classmethod(probe))
    best = max((backends.backend_class(n).priority, n) for n in backends.backend_names()
               if backends.backend_class(n).capabilities.real)
    assert backends.select("auto") is backends.backend_class(best[1])
    assert asked == [best[1]]
