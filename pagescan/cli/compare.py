"""``pagescan compare``: the command's options and output around
:func:`pagescan.compare.run_compare`, and saved runs (``--from``, ``--against``)."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Any

from .. import compare
from ..constants import PAGE_SIZE
from .exits import EXIT_ERROR, EXIT_OK, EXIT_UNAVAILABLE, Exit, UsageError
from .output import dump_json
from .parsing import parse_size

__all__ = ["add_arguments", "check_plot_path", "cmd_compare", "load_report"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--size", type=parse_size, default=None, metavar="SIZE",
                   help="buffer per workload and for the speed columns (default 32M; "
                   "--quick: 8M)")
    p.add_argument("--quick", action="store_true",
                   help="smaller and shorter: 8M, 2 rounds, 3 speed runs")
    p.add_argument("--rounds", type=int, default=None, metavar="N",
                   help="collect rounds per workload, at least 2 (default 3; --quick 2)")
    p.add_argument("--repeat", type=int, default=None, metavar="N",
                   help="runs of the speed measurement, shown as median [interquartile "
                   "range] (default 7; --quick 3)")
    p.add_argument("--backend", action="append", metavar="NAME",
                   help="only this backend (repeatable)")
    p.add_argument("--workload", action="append", metavar="NAME",
                   help="only this workload (repeatable): " + ", ".join(compare.WORKLOAD_NAMES))
    p.add_argument("--simulate", choices=("missing", "all", "none", "only"),
                   default="missing", help="which backends the simulator plays: those "
                   "that do not work here (default), all of them too, none, or only "
                   "simulated rows")
    p.add_argument("--seed", type=int, default=1, help="seed of the workloads (default 1)")
    p.add_argument("--timeout", type=float, default=120.0, metavar="S",
                   help="seconds one (backend, workload) pair may take, more than 0 "
                   "(default 120)")
    p.add_argument("--json", action="store_true", help="print the report as JSON "
                   "(documented in docs/compare.md; save it to show later with --from)")
    p.add_argument("--plot", metavar="FILE.png",
                   help="also draw the report into FILE.png (or .svg, .pdf; needs "
                   "matplotlib: pip install 'pagescan[plot]')")
    p.add_argument("--from", dest="load", metavar="FILE.json",
                   help="do not run: show a report saved with --json")
    p.add_argument("--against", metavar="FILE.json", action="append",
                   help="put a saved report side by side with this run's (or --from's), "
                   "e.g. a qemu guest's and the host's (repeatable)")


def load_report(path: str) -> dict[str, Any]:
    """A report saved with ``pagescan compare --json`` (UsageError when it is not one)."""
    try:
        with open(path, encoding="utf-8") as f:
            rep = json.load(f)
    except OSError as err:
        raise UsageError(f"cannot read {path}: {err.strerror}") from None
    except ValueError as err:
        raise UsageError(f"{path} is not JSON: {err}") from None
    if not isinstance(rep, dict) or not {"rows", "workloads", "kernel"} <= set(rep):
        raise UsageError(f"{path} is not a report of pagescan compare --json")
    version = rep.get("schema_version", 1)
    if not isinstance(version, int) or version > compare.SCHEMA_VERSION:
        raise UsageError(f"{path} has schema_version {version!r}; this pagescan reads "
                         f"up to {compare.SCHEMA_VERSION}")
    return rep


#: what matplotlib's Agg canvas writes (the list matplotlib itself gives, when it is
#: installed, is the one used)
PLOT_FORMATS = ("eps", "jpeg", "jpg", "pdf", "pgf", "png", "ps", "raw", "rgba", "svg",
                "svgz", "tif", "tiff", "webp")


def check_plot_path(path: str) -> None:
    """Before the run (issue 12: not a traceback after it): the directory exists and
    is writable, the extension is a format matplotlib writes, matplotlib is there."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UsageError(f"--plot {path}: no such directory {folder}")
    if not os.access(folder, os.W_OK):
        raise UsageError(f"--plot {path}: the directory {folder} is not writable")
    if os.path.isdir(path):
        raise UsageError(f"--plot {path}: is a directory")
    ext = os.path.splitext(path)[1].lstrip(".").lower()
    try:
        from matplotlib.figure import Figure
    except ImportError:
        formats: Any = PLOT_FORMATS
        missing = True
    else:
        formats = Figure().canvas.get_supported_filetypes()
        missing = False
    if ext not in formats:
        what = f"a .{ext} file" if ext else "a file without an extension"
        raise UsageError(f"--plot {path}: cannot draw {what}; use one of: "
                         + ", ".join("." + f for f in sorted(formats)))
    if missing:
        raise Exit(EXIT_ERROR, "--plot needs matplotlib, which is not installed: "
                   "pip install 'pagescan[plot]' (or: pip install matplotlib)")


def cmd_compare(args: argparse.Namespace) -> int:
    if args.plot:
        check_plot_path(args.plot)
    if args.rounds is not None and args.rounds < 2:
        raise UsageError(f"--rounds must be at least 2 (got {args.rounds})")
    if args.repeat is not None and args.repeat < 1:
        raise UsageError(f"--repeat must be at least 1 (got {args.repeat})")
    if not (args.timeout > 0 and math.isfinite(args.timeout)):
        raise UsageError(f"--timeout must be a number of seconds above 0 (got {args.timeout:g})")
    others = [load_report(p) for p in args.against or []]
    if args.load:
        rep = load_report(args.load)
    else:
        rep = _run(args)
    shown = compare.combine([rep, *others], _tags([rep, *others])) if others else rep
    if args.json:
        dump_json(shown, sys.stdout)
    else:
        sys.stdout.write(compare.format_table(shown))
    if args.plot:
        compare.plot(shown, args.plot)
        if not args.json:
            sys.stdout.write(f"plot written to {args.plot}\n")
    if args.load:
        return EXIT_OK
    if not rep["rows"]:
        return EXIT_UNAVAILABLE
    failed = sum(r["workloads_failed"] + bool(r["speed_error"]) for r in rep["rows"])
    if failed:
        sys.stderr.write(f"pagescan compare: {failed} runs failed (their errors are in the "
                         "notes)\n")
        return EXIT_ERROR
    return EXIT_OK


def _tags(reports: list[dict[str, Any]]) -> list[str]:
    """Short names of runs side by side: the kernel release, numbered when two match."""
    base = [r["kernel"] + (" guest" if (r.get("environment") or {}).get("emulated") else "")
            for r in reports]
    return [b if base.count(b) == 1 else f"{b} #{i + 1}" for i, b in enumerate(base)]


def _run(args: argparse.Namespace) -> dict[str, Any]:
    npages = args.size or (8 << 20 if args.quick else 32 << 20) // PAGE_SIZE
    rounds = args.rounds if args.rounds is not None else (2 if args.quick else 3)
    repeat = args.repeat if args.repeat is not None else (3 if args.quick else 7)
    progress = compare.Progress(0)
    try:
        return compare.run_compare(npages=npages, rounds=rounds, repeat=repeat,
                                   seed=args.seed, backends=args.backend,
                                   workloads=args.workload, simulate=args.simulate,
                                   timeout=args.timeout, progress=progress)
    except ValueError as err:
        raise UsageError(str(err)) from None
    finally:
        progress.close()
