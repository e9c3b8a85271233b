"""``pagescan compare``: the command's options and output around
:func:`pagescan.compare.run_compare`."""

from __future__ import annotations

import argparse
import sys

from .. import compare
from ..constants import PAGE_SIZE
from .exits import EXIT_ERROR, EXIT_OK, EXIT_UNAVAILABLE, Exit, UsageError
from .output import dump_json
from .parsing import parse_size

__all__ = ["add_arguments", "cmd_compare"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--size", type=parse_size, default=None, metavar="SIZE",
                   help="buffer per workload and for the speed columns (default 32M; "
                   "--quick: 8M)")
    p.add_argument("--quick", action="store_true",
                   help="smaller and shorter: 8M, 2 rounds, 1 speed round")
    p.add_argument("--rounds", type=int, default=None, metavar="N",
                   help="collect rounds per workload (default 3; --quick 2)")
    p.add_argument("--repeat", type=int, default=None, metavar="N",
                   help="rounds of the speed measurement, medians (default 3; --quick 1)")
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
                   help="seconds one (backend, workload) pair may take (default 120)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--plot", metavar="FILE.png",
                   help="also draw the report into FILE.png (needs matplotlib: "
                   "pip install 'pagescan[plot]')")


def cmd_compare(args: argparse.Namespace) -> int:
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise Exit(EXIT_ERROR, "--plot needs matplotlib, which is not installed: "
                       "pip install 'pagescan[plot]' (or: pip install matplotlib)") from None
    npages = args.size or (8 << 20 if args.quick else 32 << 20) // PAGE_SIZE
    rounds = args.rounds or (2 if args.quick else 3)
    repeat = args.repeat or (1 if args.quick else 3)
    if rounds < 2 or repeat < 1:
        raise UsageError("--rounds must be at least 2 and --repeat at least 1")
    progress = compare.Progress(0)
    try:
        rep = compare.run_compare(npages=npages, rounds=rounds, repeat=repeat,
                                  seed=args.seed, backends=args.backend,
                                  workloads=args.workload, simulate=args.simulate,
                                  timeout=args.timeout, progress=progress)
    except ValueError as err:
        raise UsageError(str(err)) from None
    finally:
        progress.close()
    if args.json:
        dump_json(rep, sys.stdout)
    else:
        sys.stdout.write(compare.format_table(rep))
    if args.plot:
        compare.plot(rep, args.plot)
        if not args.json:
            sys.stdout.write(f"plot written to {args.plot}\n")
    if not rep["rows"]:
        return EXIT_UNAVAILABLE
    failed = sum(r["workloads_failed"] + bool(r["speed_error"]) for r in rep["rows"])
    if failed:
        sys.stderr.write(f"pagescan compare: {failed} runs failed (their errors are in the "
                         "notes)\n")
        return EXIT_ERROR
    return EXIT_OK
