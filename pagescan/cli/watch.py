"""``pagescan watch``: pages and MiB written per second, per mapping and in total
(QEMU's calc-dirty-rate, for a process), of another process or of a demo writer;
``--openmetrics`` prints the counters of :class:`pagescan.monitoring.Metrics`
after every sample. Built on :func:`pagescan.monitor`: this module only chooses
what to watch (a PID, or the demo writer) and shows the samples."""

from __future__ import annotations

import argparse
import dataclasses
import random
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import pagescan

from .. import monitoring, procfs
from ..constants import PAGE_SIZE
from ..errors import AccessDenied, BackendUnavailable, NoSuchProcess
from .exits import (EXIT_ERROR, EXIT_GONE, EXIT_INTERRUPTED, EXIT_OK, EXIT_UNAVAILABLE, PTRACE_HINT,
                    Exit, UsageError)
from .output import MIB, Display

__all__ = ["Sample", "Watched", "cmd_watch", "open_demo", "open_process",
           "other_process_backend"]


@dataclasses.dataclass
class Sample:
    """One interval of a watch as the watch shows it (from a
    :class:`pagescan.monitoring.Sample`)."""

    index: int
    t: float            # seconds since the watch started (end of the interval)
    interval: float     # seconds the interval really lasted
    pages: int
    mappings: list[dict[str, Any]]

    @classmethod
    def of(cls, s: monitoring.Sample) -> Sample:
        maps = [{"start": m.start, "end": m.end, "path": m.label, "pages": m.pages,
                 "pages_per_s": round(m.pages_per_s, 3),
                 "mib_per_s": round(m.bytes_per_s / MIB, 6)} for m in s.mappings]
        return cls(s.index, s.elapsed, s.interval, s.pages, maps)

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


SIMULATE_HINT = (" (pagescan watch --demo --simulate plays the watch on a simulated "
                 "process with soft-dirty)")


def other_process_backend(name: str) -> str:
    """The backend to watch another process with
    (:func:`pagescan.monitoring.other_process_backend`); a usage error for a name
    that cannot, Exit(5) with every reason if none works here."""
    try:
        return monitoring.other_process_backend(name)
    except ValueError as err:
        hint = ": use watch --demo --simulate" if "simulated" in str(err) else ""
        raise UsageError(f"{err}{hint}") from None
    except BackendUnavailable as err:
        raise Exit(EXIT_UNAVAILABLE, f"{err}{SIMULATE_HINT}") from None


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
class Watched:
    """What a watch (or serve) looks at: a monitor, and with --demo the writer to
    run and what to free after."""

    monitor: monitoring.Monitor
    title: str
    store: Callable[[list[int]], None] | None = None
    npages: int = 0
    cleanup: Callable[[], None] = lambda: None

    def writer(self, rate: float, stop: threading.Event) -> threading.Thread | None:
        """The demo writer's thread (not started), or None."""
        if self.store is None:
            return None
        return threading.Thread(target=_demo_writer, daemon=True,
                                args=(self.store, self.npages, rate, stop))

    def close(self) -> None:
        self.monitor.close()
        self.cleanup()


def open_demo(args: argparse.Namespace, count: int | None = None,
              duration: float | None = None) -> Watched:
    """The --demo writer's buffer, tracked and monitored."""
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
        try:
            mon = monitoring.monitor(ex.tracker, args.interval, count=count,
                                     duration=duration, label="[simulated demo buffer]",
                                     lock=lock)
        except BaseException:
            ex.close()
            raise
        return Watched(mon, f"pagescan watch --demo --simulate: {args.demo_rate:g} pages/s "
                       f"written into {args.demo_size} MiB of simulated process "
                       f"{ex.sim.pid}, {ex.label}", store_sim, npages, ex.close)
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
    try:
        mon = monitoring.monitor(tracker, args.interval, count=count, duration=duration,
                                 label="[pagescan demo buffer]")
    except BaseException:
        cleanup()
        raise
    return Watched(mon, f"pagescan watch --demo: {args.demo_rate:g} pages/s written into "
                   f"{args.demo_size} MiB of this process, backend {tracker.backend}",
                   store, npages, cleanup)


def open_process(args: argparse.Namespace, pid: int, count: int | None = None,
                 duration: float | None = None) -> Watched:
    """Process ``pid`` monitored, with the backend of ``--backend``."""
    if args.simulate:
        raise UsageError("--simulate plays the watch on a simulated process running the "
                         "demo writer (use it with --demo): the simulator cannot see a real "
                         "process's writes")
    if not procfs.alive(pid):
        raise NoSuchProcess(f"no process with PID {pid}")
    procfs.read_maps(pid)      # permission check with a clear message before any backend
    name = other_process_backend(args.backend)
    try:
        mon = monitoring.monitor(pid, args.interval, backend=name, count=count,
                                 duration=duration)
    except PermissionError as err:
        raise AccessDenied(f"cannot track process {pid}: {err}; " + PTRACE_HINT) from err
    return Watched(mon, f"pagescan watch {pid} ({mon.comm[:60]}), backend {mon.backend}, "
                   f"every {args.interval:g} s")


def cmd_watch(args: argparse.Namespace) -> int:
    if (args.pid is None) == (not args.demo):
        raise UsageError("give a PID to watch, or --demo (not both)")
    if args.openmetrics and args.json:
        raise UsageError("--openmetrics and --json are two output formats: give one")
    if args.demo:
        watched = open_demo(args, args.count, args.duration)
    else:
        watched = open_process(args, args.pid, args.count, args.duration)
    mon = watched.monitor
    stop = threading.Event()
    writer = watched.writer(args.demo_rate, stop)
    display = Display(sys.stdout, json_lines=args.json, top=args.top,
                      tty=sys.stdout.isatty() and not args.json and not args.openmetrics,
                      title=watched.title)
    metrics = monitoring.Metrics() if args.openmetrics else None
    if metrics is not None:
        metrics.register(mon)
    old = signal.getsignal(signal.SIGINT)

    def on_sigint(signum: int, frame: Any) -> None:
        mon.stop()
    signal.signal(signal.SIGINT, on_sigint)
    ended, code, message = "count", EXIT_OK, ""
    shown: list[Sample] = []
    try:
        if writer is not None:
            writer.start()
        for sample in mon:
            view = Sample.of(sample)
            if metrics is None:
                display.show(view)
            else:
                shown.append(view)
                metrics.add(sample, mon.capabilities)
                sys.stdout.write(metrics.render(openmetrics=True))
                sys.stdout.flush()
        if mon.stopped:
            ended, message = "interrupted", "interrupted"
            code = EXIT_OK if display.samples or shown else EXIT_INTERRUPTED
        elif args.count is None:
            ended = "duration"
    except NoSuchProcess:
        done = display.samples or shown
        secs = done[-1].t if done else 0.0
        ended, code = "exited", EXIT_GONE
        message = (f"process {mon.pid} exited after {len(done)} samples "
                   f"({secs:.2f} s); watch ended")
    finally:
        stop.set()
        signal.signal(signal.SIGINT, old)
        if writer is not None:
            writer.join()
        watched.close()
    if metrics is None:
        display.summary(ended, message)
    if ended == "exited":
        sys.stderr.write(f"pagescan: {message}\n")
    return code
