"""``pagescan watch``: pages and MiB written per second, per mapping and in total
(QEMU's calc-dirty-rate, for a process), of another process or of a demo writer."""

from __future__ import annotations

import argparse
import bisect
import dataclasses
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pagescan

from .. import procfs
from ..backends import backend_names, probe
from ..constants import PAGE_SIZE
from ..errors import AccessDenied, NoSuchProcess, PagescanError
from .doctor import loaded_class
from .exits import (EXIT_ERROR, EXIT_GONE, EXIT_INTERRUPTED, EXIT_OK, EXIT_UNAVAILABLE, PTRACE_HINT,
                    Exit, UsageError)
from .output import MIB, Display

__all__ = ["Sample", "attribute", "cmd_watch", "dirty_rate", "other_process_backend"]

Mapping = procfs.Mapping


@dataclasses.dataclass
class Sample:
    """One interval of a watch."""

    index: int
    t: float            # seconds since the watch started (end of the interval)
    interval: float     # seconds the interval really lasted
    pages: int
    mappings: list[dict[str, Any]]

    @property
    def pages_per_s(self) -> float:
        return self.pages / self.interval if self.interval > 0 else 0.0

    @property
    def mib_per_s(self) -> float:
        return self.pages_per_s * PAGE_SIZE / MIB

    def as_json(self) -> dict[str, Any]:
        return {"index": self.index, "t": round(self.t, 6),
                "interval": round(self.interval, 6), "pages": self.pages,
                "pages_per_s": round(self.pages_per_s, 3),
                "mib_per_s": round(self.mib_per_s, 6), "mappings": self.mappings}


def attribute(regions: Any, maps: Sequence[Mapping], interval: float) -> list[dict[str, Any]]:
    """Written pages per mapping, most written first."""
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
    out: list[dict[str, Any]] = []
    for i, n in counts.items():
        m = maps[i]
        rate = n / interval if interval > 0 else 0.0
        out.append({"start": m.start, "end": m.end, "path": m.label, "pages": n,
                    "pages_per_s": round(rate, 3),
                    "mib_per_s": round(rate * PAGE_SIZE / MIB, 6)})
    if other:
        rate = other / interval if interval > 0 else 0.0
        out.append({"start": None, "end": None, "path": "[unmapped since]", "pages": other,
                    "pages_per_s": round(rate, 3),
                    "mib_per_s": round(rate * PAGE_SIZE / MIB, 6)})
    out.sort(key=lambda d: (-d["pages"], d["start"] or 0))
    return out


def dirty_rate(tracker: Any, maps: Callable[[], Sequence[Mapping]], interval: float, *,
               count: int | None = None, duration: float | None = None,
               alive: Callable[[], bool] = lambda: True,
               stop: threading.Event | None = None) -> Iterator[Sample]:
    """Samples of the pages a tracker sees written, one per ``interval`` seconds,
    until ``count`` samples or ``duration`` seconds (or ``stop`` is set). Raises
    NoSuchProcess when ``alive()`` turns false (the watched process exited).

    Works with any tracker: ``pagescan.track(pid=PID)`` for another process,
    ``pagescan.track(buf)`` (uffd) for this process's own memory."""
    stop = stop or threading.Event()
    tracker.reset()
    t0 = last = time.monotonic()
    i = 0
    while count is None or i < count:
        deadline = t0 + (i + 1) * interval
        if duration is not None:
            deadline = min(deadline, t0 + duration)
        if stop.wait(max(0.0, deadline - time.monotonic())):
            return
        if not alive():
            raise NoSuchProcess("exited")
        try:
            res = tracker.collect(reset=True)
        except (PagescanError, OSError):
            if not alive():
                raise NoSuchProcess("exited") from None
            raise
        now = time.monotonic()
        dt = now - last
        last = now
        regions = res.regions
        pages = regions.pages(PAGE_SIZE) if hasattr(regions, "pages") else sum(
            (r[1] - r[0]) // PAGE_SIZE for r in regions)
        yield Sample(i, now - t0, dt, pages, attribute(regions, maps(), dt))
        i += 1
        if duration is not None and now - t0 >= duration - 1e-3:
            return


SIMULATE_HINT = (" (pagescan watch --demo --simulate plays the watch on a simulated "
                 "process with soft-dirty)")


def other_process_backend(name: str) -> str:
    """The backend to watch another process with; Exit(5) with every reason if none."""
    if name != "auto":
        if name not in backend_names():
            raise UsageError(f"unknown backend {name!r}; known: "
                             + ", ".join(backend_names()))
        cls = loaded_class(name)
        if cls is not None and not cls.capabilities.real:
            raise UsageError(f"backend {name!r} tracks simulated processes, not process "
                             "IDs of this machine: use watch --demo --simulate")
        p = probe(name)
        if not p.ok:
            raise Exit(EXIT_UNAVAILABLE, f"backend {name!r} is unavailable: {p.reason}"
                       + SIMULATE_HINT)
        if cls is not None and not cls.capabilities.other_processes:
            raise Exit(EXIT_UNAVAILABLE, f"backend {name!r} tracks only the memory of the "
                       "process that uses it, not another process's; use softdirty (or "
                       "watch --demo for this process's own memory)")
        return name
    reasons = []
    candidates = []
    for n in backend_names():
        cls = loaded_class(n)
        p = probe(n)
        caps = None if cls is None else cls.capabilities
        if caps is not None and not caps.real:
            continue          # the simulator is chosen by name only
        if caps is not None and not caps.other_processes:
            reasons.append(f"{n}: tracks only its own process")
        elif not p.ok or cls is None:
            reasons.append(f"{n}: {p.reason}")
        else:
            candidates.append((cls.priority, n))
    if not candidates:
        raise Exit(EXIT_UNAVAILABLE, "no backend here can watch another process's writes; "
                   + "; ".join(reasons) + SIMULATE_HINT)
    return max(candidates)[1]


def _demo_writer(store: Callable[[list[int]], None], npages: int, rate: float,
                 stop: threading.Event) -> None:
    """Store to ``rate`` random pages per second (of ``npages``) until ``stop``
    (``rate`` is checked by the parser: finite, 0 to DEMO_RATE_MAX; a writer that
    falls behind does not pile up debt: at most one tick's worth is carried)."""
    rnd = random.Random(1)
    tick = 0.01
    debt = 0.0
    next_t = time.monotonic()
    while not stop.is_set():
        debt = min(debt + rate * tick, rate * tick + 1)
        k = int(debt)
        debt -= k
        if k:
            store([rnd.randrange(npages) for _ in range(k)])
        next_t += tick
        stop.wait(max(0.0, next_t - time.monotonic()))


@dataclasses.dataclass
class _Watched:
    """What a watch looks at: a tracker, the mappings to attribute pages to, whether
    the process is alive, and (--demo) the writer to run and what to free after."""

    tracker: Any
    maps: Callable[[], Sequence[Mapping]]
    alive: Callable[[], bool]
    title: str
    pid: int
    store: Callable[[list[int]], None] | None = None
    npages: int = 0
    cleanup: Callable[[], None] = lambda: None


class _LockedTracker:
    """A tracker whose calls hold a lock the demo writer also takes (the simulated
    process is not thread-safe)."""

    def __init__(self, tracker: Any, lock: threading.Lock) -> None:
        self._t, self._lock = tracker, lock

    def reset(self) -> None:
        with self._lock:
            self._t.reset()

    def collect(self, reset: bool = True) -> Any:
        with self._lock:
            return self._t.collect(reset=reset)

    def close(self) -> None:
        with self._lock:
            self._t.close()


def _watch_demo(args: argparse.Namespace) -> _Watched:
    npages = args.demo_size * MIB // PAGE_SIZE
    if args.simulate:
        from .. import compare
        name = "softdirty" if args.backend == "auto" else args.backend
        if name not in compare.SIM_MODELS:
            raise UsageError(f"--simulate plays {', '.join(sorted(compare.SIM_MODELS))}, "
                             f"not {name!r}")
        ok, why = compare.sim_status()
        if not ok:
            raise Exit(EXIT_UNAVAILABLE, f"the simulator does not work here: {why}")
        w = compare.Workload("demo", "demo", "", npages, (), tuple(range(npages)))
        try:
            ex = compare.SimExecutor(name, w)
        except MemoryError:
            raise Exit(EXIT_ERROR, f"the simulator cannot hold the {args.demo_size} MiB "
                       "demo buffer; try a smaller --demo-size") from None
        lock = threading.Lock()

        def store_sim(pages: list[int]) -> None:
            with lock:
                ex.write(pages)
        maps_sim = [Mapping(ex.base, ex.base + ex.length, "rw-p", 0, "00:00", 0,
                            "[simulated demo buffer]")]
        return _Watched(_LockedTracker(ex.tracker, lock), lambda: maps_sim, lambda: True,
                        f"pagescan watch --demo --simulate: {args.demo_rate:g} pages/s "
                        f"written into {args.demo_size} MiB of simulated process "
                        f"{ex.sim.pid}, {ex.label}", ex.sim.pid, store_sim, npages, ex.close)
    try:
        mem = pagescan.allocate(npages * PAGE_SIZE)
    except (MemoryError, OSError, ValueError) as err:
        raise Exit(EXIT_ERROR, f"cannot allocate the {args.demo_size} MiB demo buffer "
                   f"({err}); try a smaller --demo-size") from None
    try:
        tracker = pagescan.track(mem, backend=args.backend)
    except BaseException:
        mem.close()
        raise

    def store(pages: list[int]) -> None:
        for p in pages:
            mem[p * PAGE_SIZE] = 1

    def cleanup() -> None:
        tracker.close()
        mem.close()
    maps_real = [Mapping(tracker.start, tracker.end, "rw-p", 0, "00:00", 0,
                         "[pagescan demo buffer]")]
    return _Watched(tracker, lambda: maps_real, lambda: True,
                    f"pagescan watch --demo: {args.demo_rate:g} pages/s written into "
                    f"{args.demo_size} MiB of this process, backend {tracker.backend}",
                    os.getpid(), store, npages, cleanup)


def _watch_process(args: argparse.Namespace) -> _Watched:
    pid = args.pid
    if args.simulate:
        raise UsageError("--simulate plays the watch on a simulated process running the "
                         "demo writer (use it with --demo): the simulator cannot see a real "
                         "process's writes")
    if not procfs.alive(pid):
        raise NoSuchProcess(f"no process with PID {pid}")
    procfs.read_maps(pid)      # permission check with a clear message before any backend
    name = other_process_backend(args.backend)
    try:
        tracker = pagescan.track(pid=pid, backend=name)
    except PermissionError as err:
        raise AccessDenied(f"cannot track process {pid}: {err}; " + PTRACE_HINT) from err

    def maps() -> Sequence[Mapping]:
        try:
            return procfs.read_maps(pid)
        except NoSuchProcess:
            return []
    return _Watched(tracker, maps, lambda: procfs.alive(pid),
                    f"pagescan watch {pid} ({procfs.process_name(pid)[:60]}), backend "
                    f"{tracker.backend}, every {args.interval:g} s", pid,
                    cleanup=tracker.close)


def cmd_watch(args: argparse.Namespace) -> int:
    if (args.pid is None) == (not args.demo):
        raise UsageError("give a PID to watch, or --demo (not both)")
    watched = _watch_demo(args) if args.demo else _watch_process(args)
    stop = threading.Event()
    writer = None
    if watched.store is not None:
        writer = threading.Thread(target=_demo_writer, daemon=True,
                                  args=(watched.store, watched.npages, args.demo_rate, stop))
    display = Display(sys.stdout, json_lines=args.json, top=args.top,
                      tty=sys.stdout.isatty() and not args.json, title=watched.title)
    old = signal.getsignal(signal.SIGINT)

    def on_sigint(signum: int, frame: Any) -> None:
        stop.set()
    signal.signal(signal.SIGINT, on_sigint)
    ended, code, message = "count", EXIT_OK, ""
    try:
        if writer is not None:
            writer.start()
        for sample in dirty_rate(watched.tracker, watched.maps, args.interval,
                                 count=args.count, duration=args.duration,
                                 alive=watched.alive, stop=stop):
            display.show(sample)
        if stop.is_set():
            ended, message = "interrupted", "interrupted"
            code = EXIT_OK if display.samples else EXIT_INTERRUPTED
        elif args.count is None:
            ended = "duration"
    except NoSuchProcess:
        secs = display.samples[-1].t if display.samples else 0.0
        ended, code = "exited", EXIT_GONE
        message = (f"process {watched.pid} exited after {len(display.samples)} samples "
                   f"({secs:.2f} s); watch ended")
    finally:
        stop.set()
        signal.signal(signal.SIGINT, old)
        if writer is not None:
            writer.join()
        watched.cleanup()
    display.summary(ended, message)
    if ended == "exited":
        sys.stderr.write(f"pagescan: {message}\n")
    return code
