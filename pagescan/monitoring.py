"""A dirty-rate monitor: pages and bytes written per interval, per mapping and in
total (QEMU's calc-dirty-rate, for a process), and the same as OpenMetrics /
Prometheus counters.

>>> for sample in pagescan.monitor(tracker, interval=1.0, count=3):   # doctest: +SKIP
...     print(sample.pages, sample.bytes_per_s, sample.mappings[:1])

:func:`monitor` takes a :class:`~pagescan.Tracker` (this process's own memory, any
backend) or a process ID (another process: a backend with
``capabilities.other_processes``, soft-dirty on real kernels, or a simulated
process's pid with ``backend="simulator"``). The :class:`Monitor` it returns is an
iterator (``for``), an async iterator (``async for``: the collect runs in the
event loop's default executor, the waits are ``asyncio.sleep``), and
:meth:`Monitor.sample` takes one sample now, for programs (and tests) that drive
the ticks themselves.

:class:`Metrics` turns samples into counters (``pagescan_pages_written_total``,
``pagescan_written_bytes_total``) per process and mapping and renders them as
OpenMetrics 1.0 or Prometheus 0.0.4 text; :class:`MetricsServer` serves them over
HTTP (``/metrics``) from a thread. ``pagescan watch --openmetrics`` and
``pagescan serve`` are built on these. The schema is in docs/monitor.md.
"""

from __future__ import annotations

import asyncio
import bisect
import math
import os
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from . import procfs
from .backends import backend_names, probe
from .backends.base import Capabilities
from .errors import BackendUnavailable, NoSuchProcess, PagescanError
from .memory import PAGE_SIZE
from .procfs import Mapping
from .tracker import Tracker, track

__all__ = ["OPENMETRICS_CONTENT_TYPE", "PROMETHEUS_CONTENT_TYPE", "MappingSample", "Metrics",
           "MetricsServer", "Monitor", "Sample", "is_exact", "monitor",
           "other_process_backend"]

#: the label of written pages outside every mapping read after the collect (unmapped
#: between the collect and the read of the maps)
UNMAPPED = "[unmapped since]"

OPENMETRICS_CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"
PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def is_exact(caps: Capabilities) -> bool:
    """Whether a mechanism's counts are exact: no write is lost to a collect
    (``atomic_reset``) and writes by the kernel are seen (``kernel_writes_seen``).
    True for uffd (and the simulator playing it); False for softdirty (read and
    clear are two steps, and new or merged mappings read as written) and mprotect
    (kernel writes fail, pages are coarsened past vm.max_map_count)."""
    return bool(caps.atomic_reset and caps.kernel_writes_seen)


# =================================================================== samples


class _Rates:
    """Pages and bytes per second of an interval (``pages``, ``bytes`` and
    ``interval`` are fields of the sample classes)."""

    pages: int
    bytes: int
    interval: float

    @property
    def pages_per_s(self) -> float:
        return self.pages / self.interval if self.interval > 0 else 0.0

    @property
    def bytes_per_s(self) -> float:
        return self.bytes / self.interval if self.interval > 0 else 0.0


@dataclass(frozen=True)
class MappingSample(_Rates):
    """The pages written in one mapping during one interval."""

    #: where the mapping starts and ends (``None`` for :data:`UNMAPPED`)
    start: int | None
    end: int | None
    #: the mapping's path in /proc/PID/maps, ``[anon]`` for anonymous memory,
    #: ``[heap]``, ``[stack]``..., or the ``label=`` given to :func:`monitor`
    label: str
    #: permissions as in /proc/PID/maps (``rw-p``); "" for :data:`UNMAPPED`
    perms: str
    #: distinct pages written during the interval
    pages: int
    #: ``pages * PAGE_SIZE``
    bytes: int
    #: the interval's length in seconds (to compute rates)
    interval: float

    def as_json(self) -> dict[str, Any]:
        return {"start": self.start, "end": self.end, "label": self.label,
                "perms": self.perms, "pages": self.pages, "bytes": self.bytes,
                "pages_per_s": round(self.pages_per_s, 3),
                "bytes_per_s": round(self.bytes_per_s, 3)}


@dataclass(frozen=True)
class Sample(_Rates):
    """One interval of a monitor: the pages written since the previous sample (or
    since the monitor started), in total and per mapping."""

    #: 0 for the first sample of the monitor, then 1, 2, ...
    index: int
    #: the process whose memory is watched (this process for a Tracker of its own
    #: memory; a simulated process's pid for the simulator)
    pid: int
    #: its command name (/proc/PID/comm; "simulated" for a simulated process)
    comm: str
    #: the tracker's backend (``uffd``, ``softdirty``, ``mprotect``, ``simulator``...)
    backend: str
    #: the mechanism that tracks (the backend, or the one the simulator plays)
    mechanism: str
    #: whether the mechanism's counts are exact (:func:`is_exact`)
    exact: bool
    #: ``time.monotonic()`` at the end of the interval (right after the collect)
    monotonic: float
    #: ``time.time()`` at the same moment (wall clock, seconds since the epoch)
    wall: float
    #: seconds from the monitor's start to the end of this interval
    elapsed: float
    #: seconds this interval really lasted (previous collect to this one)
    interval: float
    #: distinct pages written during the interval (a page written twice counts once)
    pages: int
    #: ``pages * PAGE_SIZE``
    bytes: int
    #: per mapping, most written first (then by address); only mappings written to
    mappings: tuple[MappingSample, ...] = field(default_factory=tuple)

    def as_json(self) -> dict[str, Any]:
        return {"index": self.index, "pid": self.pid, "comm": self.comm,
                "backend": self.backend, "mechanism": self.mechanism, "exact": self.exact,
                "monotonic": self.monotonic, "wall": self.wall,
                "elapsed": round(self.elapsed, 6), "interval": round(self.interval, 6),
                "pages": self.pages, "bytes": self.bytes,
                "pages_per_s": round(self.pages_per_s, 3),
                "bytes_per_s": round(self.bytes_per_s, 3),
                "mappings": [m.as_json() for m in self.mappings]}


def attribute(regions: Iterable[Any], maps: Sequence[Mapping],
              interval: float) -> tuple[MappingSample, ...]:
    """Written pages per mapping (``maps`` sorted by address), most written first."""
    starts = [m.start for m in maps]
    counts: dict[int, int] = {}
    other = 0
    for r in regions:
        a, b = int(r[0]), int(r[1])
        while a < b:
            i = bisect.bisect_right(starts, a) - 1
            if i < 0 or a >= maps[i].end:
                # not inside a mapping we know of (mapped since maps was read)
                nxt = starts[i + 1] if i + 1 < len(starts) else b
                step = min(b, max(nxt, a + PAGE_SIZE))
                other += (step - a) // PAGE_SIZE
                a = step
                continue
            e = min(b, maps[i].end)
            counts[i] = counts.get(i, 0) + (e - a) // PAGE_SIZE
            a = e
    out = [MappingSample(maps[i].start, maps[i].end, maps[i].label, maps[i].perms, n,
                         n * PAGE_SIZE, interval) for i, n in counts.items()]
    if other:
        out.append(MappingSample(None, None, UNMAPPED, "", other, other * PAGE_SIZE,
                                 interval))
    out.sort(key=lambda m: (-m.pages, m.start if m.start is not None else 1 << 64))
    return tuple(out)


# ============================================================ choosing a backend


def other_process_backend(name: str = "auto") -> str:
    """The backend to track another process with: ``name`` checked, or for
    ``"auto"`` the best real backend that can track other processes here.
    ValueError for an unknown name or one that cannot track another process of this
    machine; BackendUnavailable with every reason when none works."""
    from .backends import backend_class
    if name != "auto":
        if name not in backend_names():
            raise ValueError(f"unknown backend {name!r}; known: " + ", ".join(backend_names()))
        p = probe(name)
        try:
            cls = backend_class(name)
        except BackendUnavailable:
            cls = None
        if cls is not None and not cls.capabilities.real:
            raise ValueError(f"backend {name!r} tracks simulated processes, not process IDs "
                             "of this machine")
        if not p.ok:
            raise BackendUnavailable(name, p.reason)
        if cls is not None and not cls.capabilities.other_processes:
            raise BackendUnavailable(name, "it tracks only the memory of the process that "
                                     "uses it, not another process's")
        return name
    reasons, candidates = [], []
    for n in backend_names():
        p = probe(n)
        try:
            caps: Capabilities | None = backend_class(n).capabilities
        except BackendUnavailable:
            caps = None
        if caps is not None and not caps.real:
            continue          # the simulator is chosen by name only
        if caps is not None and not caps.other_processes:
            reasons.append(f"{n}: tracks only its own process")
        elif not p.ok or caps is None:
            reasons.append(f"{n}: {p.reason}")
        else:
            candidates.append((backend_class(n).priority, n))
    if not candidates:
        raise BackendUnavailable("auto", "no backend here can watch another process's "
                                 "writes; " + "; ".join(reasons))
    return max(candidates)[1]


def _simulated(pid: int) -> Any:
    """The live simulated process with this pid, or None (the simulator is not
    imported for this: no simulated process exists unless it was)."""
    sim_mod = sys.modules.get("pagescan.simulator")
    return None if sim_mod is None else sim_mod.lookup(pid)


# =================================================================== monitor


def _check_interval(interval: float) -> float:
    if isinstance(interval, bool) or not isinstance(interval, (int, float)):
        raise TypeError(f"interval must be a number of seconds, not {type(interval).__name__}")
    if not math.isfinite(interval) or interval <= 0:
        raise ValueError(f"interval must be a finite number of seconds > 0, not {interval!r}")
    return float(interval)


class Monitor:
    """Samples of the pages a tracker sees written; create it with :func:`monitor`.

    Iterate it (``for`` or ``async for``) for one :class:`Sample` every ``interval``
    seconds (on a fixed schedule from the start; ticks missed by a slow consumer
    are skipped, not bunched), until ``count`` samples, ``duration`` seconds or
    :meth:`stop`; or call :meth:`sample` for one now. When the watched process
    exits, the iteration (and :meth:`sample`) raises :class:`~pagescan.NoSuchProcess`.
    The first interval starts when the monitor is created (its tracker is reset
    then). ``close()`` (or ``with``) closes the tracker the monitor created for a
    pid; a Tracker that was passed in stays open.
    """

    def __init__(self, target: Tracker | int, interval: float = 1.0, *,
                 backend: str = "auto", count: int | None = None,
                 duration: float | None = None, label: str | None = None,
                 lock: Any = None, **options: Any) -> None:
        self.interval = _check_interval(interval)
        if count is not None and (isinstance(count, bool) or not isinstance(count, int)
                                  or count < 1):
            raise ValueError(f"count must be an integer > 0 or None, not {count!r}")
        self.count = count
        self.duration = None if duration is None else _check_interval(duration)
        self.label = label
        self._lock = lock
        self._stop = threading.Event()
        self._sampling = threading.Lock()
        self._sim: Any = None
        if isinstance(target, Tracker):
            if options or backend != "auto":
                raise TypeError("backend and options are given to track(), not to monitor() "
                                "of a Tracker")
            self.tracker, self._owns = target, False
        elif isinstance(target, int) and not isinstance(target, bool):
            if target == os.getpid():
                raise ValueError("to monitor this process's own memory, pass a Tracker of "
                                 "it (pagescan.track(buffer)): a whole-process tracker of "
                                 "itself would see its own bookkeeping")
            sim = _simulated(target)
            if sim is not None and backend in ("auto", "simulator"):
                backend = "simulator"
            elif backend == "simulator":
                raise NoSuchProcess(f"no simulated process with PID {target}")
            else:
                if not procfs.alive(target):
                    raise NoSuchProcess(f"no process with PID {target}")
                backend = other_process_backend(backend)
            self.tracker, self._owns = track(pid=target, backend=backend, **options), True
        else:
            raise TypeError(f"monitor() takes a pagescan.Tracker or a process ID, not "
                            f"{type(target).__name__}")
        t = self.tracker
        caps = t.capabilities
        #: the process watched
        self.pid = t.pid if t.pid is not None else os.getpid()
        if not caps.real:
            # a simulated process: the one the backend's simulated kernel drives (a
            # tracker made under "with sim:" has no pid), else by the tracker's pid
            kernel = getattr(t._live(), "kernel", None)
            self._sim = getattr(kernel, "sim", None)
            if self._sim is None and t.pid is not None:
                self._sim = _simulated(t.pid)
            if self._sim is None:
                if self._owns:
                    t.close()
                raise NoSuchProcess("the tracker's simulated process has exited")
            self.pid = self._sim.pid
        self.backend = t.backend
        self.mechanism = t.mechanism
        self.exact = is_exact(caps)
        self.capabilities = caps
        self.comm = self._comm()
        self._index = 0
        try:
            self._call(t.reset)
        except BaseException:
            self.close()
            raise
        self.started = self._last = time.monotonic()

    # -- the process ------------------------------------------------------------------

    def _comm(self) -> str:
        if self._sim is not None or not self.capabilities.real:
            return "simulated"
        try:
            return procfs.process_name(self.pid)
        except PagescanError:
            return "?"

    def alive(self) -> bool:
        """Whether the watched process is still there."""
        if not self.capabilities.real:
            return self._sim is not None and not self._sim.exited
        return self.tracker.pid is None or procfs.alive(self.pid)

    def _maps(self) -> list[Mapping]:
        t = self.tracker
        if self.label is not None:
            return [Mapping(t.start, t.end, "rw-p", 0, "00:00", 0, self.label)]
        if not self.capabilities.real:
            from .simulator import SimKernel
            return SimKernel(self._sim).maps()
        return procfs.read_maps("self" if t.pid is None else t.pid)

    def _call(self, fn: Callable[[], Any]) -> Any:
        if self._lock is None:
            return fn()
        with self._lock:
            return fn()

    def _gone(self) -> NoSuchProcess:
        return NoSuchProcess(f"process {self.pid} has exited")

    # -- sampling -----------------------------------------------------------------------

    def sample(self) -> Sample:
        """Collect now: the pages written since the previous sample (or the start)."""
        with self._sampling:
            if not self.alive():
                raise self._gone()
            try:
                res = self._call(lambda: self.tracker.collect(reset=True))
            except (PagescanError, OSError):
                if not self.alive():
                    raise self._gone() from None
                raise
            now, wall = time.monotonic(), time.time()
            dt = now - self._last
            self._last = now
            regions = res.regions
            pages = sum((int(r[1]) - int(r[0])) // PAGE_SIZE for r in regions)
            maps: list[Mapping] = []
            if pages:
                try:
                    maps = self._maps()
                except NoSuchProcess:
                    maps = []           # exited since the collect: this sample stands
            s = Sample(self._index, self.pid, self.comm, self.backend, self.mechanism,
                       self.exact, now, wall, now - self.started, dt, pages,
                       pages * PAGE_SIZE, attribute(regions, maps, dt))
            self._index += 1
            return s

    def stop(self) -> None:
        """End the iteration at its next tick (thread-safe; from a signal handler too)."""
        self._stop.set()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def _deadline(self, produced: int) -> float | None:
        """When the next sample is due, or None when the iteration is over."""
        if self.count is not None and produced >= self.count:
            return None
        now = time.monotonic()
        k = self._index + 1
        due = self.started + k * self.interval
        if due < now - self.interval:          # a slow consumer: skip missed ticks
            due = self.started + (math.floor((now - self.started) / self.interval) + 1) \
                * self.interval
        if self.duration is not None:
            end = self.started + self.duration
            if self._last >= end - 1e-3:
                return None
            due = min(due, end)
        return due

    def __iter__(self) -> Iterator[Sample]:
        produced = 0
        while True:
            due = self._deadline(produced)
            if due is None or self._stop.wait(max(0.0, due - time.monotonic())):
                return
            yield self.sample()
            produced += 1

    async def _aiter(self) -> AsyncIterator[Sample]:
        loop = asyncio.get_running_loop()
        produced = 0
        while True:
            due = self._deadline(produced)
            if due is None or self._stop.is_set():
                return
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if self._stop.is_set():
                return
            yield await loop.run_in_executor(None, self.sample)
            produced += 1

    def __aiter__(self) -> AsyncIterator[Sample]:
        return self._aiter()

    # -- lifetime -----------------------------------------------------------------------

    def close(self) -> None:
        """Stop; close the tracker this monitor created (not one passed in)."""
        self._stop.set()
        if self._owns:
            self._call(self.tracker.close)

    def __enter__(self) -> Monitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"<pagescan.Monitor pid={self.pid} backend={self.backend} "
                f"every {self.interval:g} s, {self._index} samples>")


def monitor(target: Tracker | int, interval: float = 1.0, *, backend: str = "auto",
            count: int | None = None, duration: float | None = None,
            label: str | None = None, lock: Any = None, **options: Any) -> Monitor:
    """A dirty-rate monitor of ``target``: a :class:`~pagescan.Tracker` (any backend;
    this process's own memory) or a process ID (another process: ``backend`` as for
    :func:`~pagescan.track` with ``pid=``, ``"auto"`` choosing the best backend that
    can track other processes here; a simulated process's pid is watched with
    ``backend="simulator"``, keyword ``options`` such as ``mechanism=`` go to it).

    ``interval``: seconds between samples when iterated; ``count`` / ``duration``:
    end the iteration after that many samples / seconds. ``label``: name every
    written page's mapping this (default: the mapping's path from /proc/PID/maps,
    ``[anon]`` for anonymous memory). ``lock``: held around every collect (the lock
    your writers take for memory that is not thread-safe, as a simulated process
    is). Returns a :class:`Monitor`; see :class:`Sample` for what it yields."""
    return Monitor(target, interval, backend=backend, count=count, duration=duration,
                   label=label, lock=lock, **options)


# ==================================================================== metrics


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(pairs: Sequence[tuple[str, str]]) -> str:
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in pairs) + "}"


def _bool(v: bool) -> str:
    return "true" if v else "false"


@dataclass
class _Process:
    pid: int
    comm: str
    backend: str
    mechanism: str
    exact: bool
    caps: Capabilities
    samples: int = 0
    last_wall: float = 0.0
    pages: dict[str, int] = field(default_factory=dict)


class Metrics:
    """Counters of the pages written per process and mapping, fed with samples
    (:meth:`add`), rendered as OpenMetrics or Prometheus text (:meth:`render`).
    Thread-safe: a collector thread adds while an HTTP thread renders."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._procs: dict[int, _Process] = {}

    def add(self, sample: Sample, capabilities: Capabilities | None = None) -> None:
        """Count a sample's pages (per mapping label: mappings with the same path,
        all anonymous ones..., add up)."""
        with self._lock:
            p = self._procs.get(sample.pid)
            if p is None:
                caps = capabilities or Capabilities(False, False, False, False, False, 0)
                p = self._procs[sample.pid] = _Process(sample.pid, sample.comm,
                                                       sample.backend, sample.mechanism,
                                                       sample.exact, caps)
            p.samples += 1
            p.last_wall = sample.wall
            for m in sample.mappings:
                p.pages[m.label] = p.pages.get(m.label, 0) + m.pages

    def register(self, mon: Monitor) -> None:
        """Show a monitored process before its first sample (counters at 0)."""
        with self._lock:
            if mon.pid not in self._procs:
                self._procs[mon.pid] = _Process(mon.pid, mon.comm, mon.backend,
                                                mon.mechanism, mon.exact, mon.capabilities)

    def forget(self, pid: int) -> None:
        """Drop a process's series (it exited): Prometheus marks them stale."""
        with self._lock:
            self._procs.pop(pid, None)

    def pids(self) -> list[int]:
        with self._lock:
            return sorted(self._procs)

    def collect(self, monitors: list[Monitor],
                on_exit: Callable[[Monitor], None] | None = None) -> list[Monitor]:
        """One sample of every monitor, counted; a monitor whose process exited is
        closed, its series dropped and ``on_exit`` called. Returns the monitors left."""
        left = []
        for mon in monitors:
            try:
                self.add(mon.sample(), mon.capabilities)
            except NoSuchProcess:
                self.forget(mon.pid)
                mon.close()
                if on_exit is not None:
                    on_exit(mon)
                continue
            left.append(mon)
        return left

    def render(self, openmetrics: bool = True) -> str:
        """The exposition: OpenMetrics 1.0 text (ends with ``# EOF``), or with
        ``openmetrics=False`` the Prometheus 0.0.4 text format."""
        with self._lock:
            procs = [self._procs[k] for k in sorted(self._procs)]
            snap = [(p, sorted(p.pages.items())) for p in procs]
        out: list[str] = []

        def family(name: str, kind: str, help_: str, unit: str = "") -> None:
            if openmetrics:
                out.append(f"# TYPE {name} {kind}")
                if unit:
                    out.append(f"# UNIT {name} {unit}")
                out.append(f"# HELP {name} {help_}")
            else:
                suffix = "_total" if kind == "counter" else ("_info" if kind == "info" else "")
                ptype = "gauge" if kind == "info" else kind
                out.append(f"# HELP {name}{suffix} {help_}")
                out.append(f"# TYPE {name}{suffix} {ptype}")

        def base(p: _Process) -> list[tuple[str, str]]:
            return [("pid", str(p.pid)), ("comm", p.comm), ("backend", p.backend),
                    ("exact", _bool(p.exact))]

        family("pagescan_pages_written", "counter",
               "Distinct pages seen written per sampling interval, summed over intervals")
        for p, pages in snap:
            for label, n in pages:
                lab = base(p)
                lab.insert(2, ("mapping", label))
                out.append(f"pagescan_pages_written_total{_labels(lab)} {n}")
        family("pagescan_written_bytes", "counter",
               "Bytes of the pages seen written (pages times the page size)", "bytes")
        for p, pages in snap:
            for label, n in pages:
                lab = base(p)
                lab.insert(2, ("mapping", label))
                out.append(f"pagescan_written_bytes_total{_labels(lab)} {n * PAGE_SIZE}")
        family("pagescan_samples", "counter", "Samples taken of the process")
        for p, _ in snap:
            out.append(f"pagescan_samples_total{_labels(base(p))} {p.samples}")
        family("pagescan_last_sample_timestamp_seconds", "gauge",
               "Wall-clock time of the latest sample", "seconds")
        for p, _ in snap:
            if p.samples:
                out.append(f"pagescan_last_sample_timestamp_seconds{_labels(base(p))} "
                           f"{p.last_wall:.3f}")
        family("pagescan_backend", "info",
               "The tracking mechanism of a monitored process and its accuracy")
        for p, _ in snap:
            c = p.caps
            lab = [("pid", str(p.pid)), ("comm", p.comm), ("backend", p.backend),
                   ("mechanism", p.mechanism), ("exact", _bool(p.exact)),
                   ("atomic_reset", _bool(c.atomic_reset)),
                   ("kernel_writes_seen", _bool(c.kernel_writes_seen)),
                   ("real", _bool(c.real))]
            out.append(f"pagescan_backend_info{_labels(lab)} 1")
        family("pagescan_monitored_processes", "gauge", "Processes being monitored")
        out.append(f"pagescan_monitored_processes {len(procs)}")
        if openmetrics:
            out.append("# EOF")
        return "\n".join(out) + "\n"


# ===================================================================== server


def wants_openmetrics(accept: str | None) -> bool:
    """Content negotiation: OpenMetrics when the Accept header names it (as
    Prometheus does), else the Prometheus 0.0.4 text format."""
    return bool(accept) and "application/openmetrics-text" in str(accept)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path not in ("/metrics", "/"):
            self._send(404, "text/plain; charset=utf-8", b"not found: try /metrics\n")
            return
        if path == "/":
            self._send(200, "text/plain; charset=utf-8",
                       b"pagescan: the metrics are at /metrics\n")
            return
        om = wants_openmetrics(self.headers.get("Accept"))
        body = self.server.metrics.render(openmetrics=om).encode()
        ctype = OPENMETRICS_CONTENT_TYPE if om else PROMETHEUS_CONTENT_TYPE
        self.server.scrapes.append((str(self.headers.get("Accept")), ctype))
        del self.server.scrapes[:-16]
        self._send(200, ctype, body)

    def _send(self, code: int, ctype: str, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass                                   # no line per scrape on stderr


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    metrics: Metrics
    scrapes: list[tuple[str, str]]


class MetricsServer:
    """``metrics`` served over HTTP at ``http://host:port/metrics`` by a thread
    (port 0: a free one, see :attr:`port`). ``close()`` stops it."""

    def __init__(self, metrics: Metrics, host: str = "127.0.0.1", port: int = 0) -> None:
        self.metrics = metrics
        self._httpd = _Server((host, port), _Handler)
        self._httpd.metrics = metrics
        self._httpd.scrapes = []
        self.host = host
        self.port = int(self._httpd.server_address[1])
        self._thread = threading.Thread(target=self._httpd.serve_forever,
                                        kwargs={"poll_interval": 0.1},
                                        name="pagescan-metrics", daemon=True)
        self._thread.start()

    @property
    def scrapes(self) -> list[tuple[str, str]]:
        """The latest scrapes of /metrics (at most 16): (Accept header, Content-Type
        served)."""
        return list(self._httpd.scrapes)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
