"""``pagescan serve --port N PID...``: an OpenMetrics / Prometheus endpoint of the
pages processes write (:class:`pagescan.monitoring.Metrics` served by
:class:`pagescan.monitoring.MetricsServer`, sampled by :func:`pagescan.monitor`)."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from typing import Any

from .. import monitoring
from ..cli.parsing import (DEMO_RATE_MAX, DEMO_SIZE_MAX, bounded_int, parse_demo_rate,
                           parse_demo_size, parse_duration, parse_pid)
from .exits import EXIT_ERROR, EXIT_OK, Exit, UsageError
from .watch import Watched, open_demo, open_process

__all__ = ["DESCRIPTION", "add_arguments", "cmd_serve"]

DESCRIPTION = (
    "Serve the pages written by each PID as OpenMetrics / Prometheus counters at "
    "http://HOST:PORT/metrics (pagescan_pages_written_total, pagescan_written_bytes_total "
    "per pid, comm, mapping, backend and exact; pagescan_backend_info with the mechanism's "
    "accuracy). Each process is sampled every --interval; OpenMetrics text when the scraper "
    "asks for it (Accept: application/openmetrics-text, as Prometheus does), the Prometheus "
    "0.0.4 text format otherwise. A process that exits has its series dropped (a line on "
    "stderr says so); the server goes on. Give at least one PID, or --demo. Runs until "
    "Ctrl-C, SIGTERM or --duration. The first line on stdout is the URL served.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("pids", type=parse_pid, nargs="*", metavar="PID",
                   help="processes to monitor (another process needs a backend that can "
                   "track it: softdirty)")
    p.add_argument("--port", type=bounded_int(0, 65535, "a TCP port"), default=9477,
                   metavar="N", help="TCP port (0: a free one; default 9477)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1; 0.0.0.0 for every one)")
    p.add_argument("--interval", type=parse_duration, default=1.0, metavar="T",
                   help="sampling interval (1s, 250ms, ...; default 1s)")
    p.add_argument("--duration", type=parse_duration, metavar="T",
                   help="stop after T (default: until Ctrl-C or SIGTERM)")
    p.add_argument("--backend", default="auto",
                   help="backend name (default: the best that can do it here)")
    p.add_argument("--demo", action="store_true",
                   help="also serve a writer thread in this process's own memory")
    p.add_argument("--demo-rate", type=parse_demo_rate, default=2000.0, metavar="PAGES",
                   help=f"pages per second the demo writer writes (0 to {DEMO_RATE_MAX:.0f}; "
                   "default 2000)")
    p.add_argument("--demo-size", type=parse_demo_size, default=64, metavar="MIB",
                   help=f"size of the demo buffer in MiB (1 to {DEMO_SIZE_MAX}; default 64)")
    p.add_argument("--simulate", action="store_true",
                   help="with --demo: the writer runs in a simulated process")


def cmd_serve(args: argparse.Namespace) -> int:
    if not args.pids and not args.demo:
        raise UsageError("give at least one PID to serve, or --demo (the server's own "
                         "memory is not worth watching)")
    if len(set(args.pids)) != len(args.pids):
        raise UsageError("a PID is given twice")
    watched: list[Watched] = []
    stop = threading.Event()
    writers: list[threading.Thread] = []
    server = None
    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for pid in args.pids:
            watched.append(open_process(args, pid))
        if args.demo:
            watched.append(open_demo(args))
        metrics = monitoring.Metrics()
        for w in watched:
            metrics.register(w.monitor)
        try:
            server = monitoring.MetricsServer(metrics, args.host, args.port)
        except OSError as err:
            raise Exit(EXIT_ERROR, f"cannot listen on {args.host} port {args.port}: "
                       f"{err.strerror or err}") from None

        def on_signal(signum: int, frame: Any) -> None:
            stop.set()
        for s in old:
            signal.signal(s, on_signal)
        sys.stdout.write(f"serving {server.url}\n")
        sys.stdout.flush()
        for w in watched:
            t = w.writer(args.demo_rate, stop)
            if t is not None:
                t.start()
                writers.append(t)

        def gone(mon: monitoring.Monitor) -> None:
            sys.stderr.write(f"pagescan serve: process {mon.pid} ({mon.comm}) exited; its "
                             "series are dropped\n")
            sys.stderr.flush()
        monitors = [w.monitor for w in watched]
        start = time.monotonic()
        ticks = 0
        while True:
            ticks += 1
            due = start + ticks * args.interval
            if args.duration is not None:
                due = min(due, start + args.duration)
            if stop.wait(max(0.0, due - time.monotonic())):
                break
            monitors = metrics.collect(monitors, on_exit=gone)
            # a round slower than the interval: skip the ticks missed, do not bunch them
            ticks = max(ticks, int((time.monotonic() - start) / args.interval))
            if args.duration is not None and time.monotonic() - start >= args.duration - 1e-3:
                break
    finally:
        stop.set()
        for s, h in old.items():
            signal.signal(s, h)
        for t in writers:
            t.join()
        if server is not None:
            server.close()
        for w in watched:
            w.close()
    return EXIT_OK
