"""The ``pagescan`` command: doctor, scan, watch and compare.

* ``pagescan doctor``: which backends work on this kernel (and why not), which core
  implementation is loaded, the kernel and the settings that matter
  (:mod:`pagescan.cli.doctor`).
* ``pagescan scan PID``: the regions of each mapping of a process with their
  page categories (pmap with categories); ``--json`` (:mod:`pagescan.cli.scan`).
* ``pagescan watch PID``: pages and MiB written per second, per mapping and in
  total (QEMU's calc-dirty-rate, for a process) (:mod:`pagescan.cli.watch`).
* ``pagescan serve --port N PID...``: an OpenMetrics / Prometheus ``/metrics``
  endpoint of the pages the processes write (:mod:`pagescan.cli.serve`,
  :mod:`pagescan.monitoring`).
* ``pagescan compare``: the built-in workloads on every backend, with ground
  truth (:mod:`pagescan.compare`; the options in :mod:`pagescan.cli.compare`).
* ``pagescan checkpoint PID --range A-B FILE``: incremental checkpoints of ranges
  of a process; ``pagescan checkpoint-info FILE``: the saves of a checkpoint file
  (:mod:`pagescan.cli.checkpoint`, :mod:`pagescan.checkpoint`).

Argument parsers are in :mod:`pagescan.cli.parsing`, what is printed in
:mod:`pagescan.cli.output`; the exit codes, the same for every subcommand, are
listed in :mod:`pagescan.cli.exits`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from .. import Category
from ..errors import AccessDenied, BackendUnavailable, NoSuchProcess, PagescanError
from .exits import (EXIT_ACCESS, EXIT_ERROR, EXIT_GONE, EXIT_INTERRUPTED, EXIT_OK,
                    EXIT_UNAVAILABLE, EXIT_USAGE, Exit, UsageError)
from .output import safe_streams
from .parsing import (DEMO_RATE_MAX, DEMO_SIZE_MAX, parse_categories, parse_demo_rate,
                      parse_demo_size, parse_duration, parse_pid, parse_range, positive_int)

__all__ = ["EXIT_ACCESS", "EXIT_ERROR", "EXIT_GONE", "EXIT_INTERRUPTED", "EXIT_OK",
           "EXIT_UNAVAILABLE", "EXIT_USAGE", "build_parser", "main"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    import pagescan

    from .. import compare
    from . import compare as compare_cli
    from .doctor import cmd_doctor
    from .scan import cmd_scan
    from .watch import cmd_watch
    epilog = ("exit codes: 0 ok, 1 error, 2 usage error, 3 no such process (or it exited), "
              "4 access denied (ptrace read), 5 no backend works here for this, "
              "130 interrupted")
    p = _Parser(prog="pagescan", description="Which pages of memory were written: "
                "PAGEMAP_SCAN, uffd-wp async, soft-dirty, mprotect and a simulator.",
                epilog=epilog)
    p.add_argument("--version", action="version", version=f"pagescan {pagescan.__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    d = sub.add_parser("doctor", help="which backends work here, and why not",
                       description="Which backends work on this kernel (for each that does "
                       "not, the probe's reason), which core implementation is loaded, the "
                       "kernel version and the settings that matter.", epilog=epilog)
    d.add_argument("--json", action="store_true", help="print a JSON object")
    d.set_defaults(func=cmd_doctor, parser=d)

    cats = ",".join(Category.__members__)
    s = sub.add_parser("scan", help="the regions of each mapping of a process, with categories",
                       description="The regions of each mapping of process PID with their "
                       "page categories, like pmap. Categories: " + cats + " (comma-"
                       "separated, case-insensitive; 'all' or 'none').", epilog=epilog)
    s.add_argument("pid", type=parse_pid, metavar="PID")
    s.add_argument("--range", type=parse_range, metavar="A-B",
                   help="only [A, B): hex addresses as in /proc/PID/maps")
    s.add_argument("--required", type=parse_categories, default=0, metavar="CATS",
                   help="pages must have all of these")
    s.add_argument("--anyof", type=parse_categories, default=0, metavar="CATS",
                   help="pages must have at least one of these")
    s.add_argument("--excluded", type=parse_categories, default=0, metavar="CATS",
                   help="pages must have none of these")
    s.add_argument("--return", dest="return_mask", type=parse_categories, default=None,
                   metavar="CATS", help="categories reported per region (default: all)")
    s.add_argument("--method", choices=("auto", "ioctl", "pagemap"), default="auto",
                   help="PAGEMAP_SCAN (ioctl), or pagemap entries through "
                   "pagemap_to_categories (default: the ioctl where the kernel has it)")
    s.add_argument("--json", action="store_true", help="print a JSON object")
    s.set_defaults(func=cmd_scan, parser=s)

    w = sub.add_parser("watch", help="pages and MiB written per second, per mapping",
                       description="Pages and MiB written per second by process PID, per "
                       "mapping and in total (like QEMU's calc-dirty-rate, for a process). "
                       "Another process is watched with soft-dirty; --demo watches a built-in "
                       "writer in this process's own memory (uffd). Refreshes on a terminal, "
                       "prints plain lines when piped, JSON lines with --json. Runs until "
                       "--count/--duration, Ctrl-C, or the process exits (exit code 3).",
                       epilog=epilog)
    w.add_argument("pid", type=parse_pid, nargs="?", metavar="PID")
    w.add_argument("--interval", type=parse_duration, default=1.0, metavar="T",
                   help="sampling interval (1s, 250ms, ...; 1ms to 30 days; default 1s)")
    w.add_argument("--count", type=positive_int, metavar="N", help="stop after N samples")
    w.add_argument("--duration", type=parse_duration, metavar="T",
                   help="stop after T (1ms to 30 days)")
    w.add_argument("--backend", default="auto",
                   help="backend name (default: the best that can do it here)")
    w.add_argument("--top", type=positive_int, default=10, metavar="K",
                   help="mappings shown per sample (default 10; --json shows all)")
    w.add_argument("--json", action="store_true", help="one JSON object per sample, then "
                   "a summary object")
    w.add_argument("--demo", action="store_true",
                   help="watch a writer thread in this process's own memory instead of PID")
    w.add_argument("--demo-rate", type=parse_demo_rate, default=2000.0, metavar="PAGES",
                   help="pages per second the demo writer writes (0 to "
                   f"{DEMO_RATE_MAX:.0f}; default 2000)")
    w.add_argument("--demo-size", type=parse_demo_size, default=64, metavar="MIB",
                   help=f"size of the demo buffer in MiB (1 to {DEMO_SIZE_MAX}; default 64)")
    played = ", ".join(sorted(compare.SIM_MODELS))
    w.add_argument("--simulate", action="store_true",
                   help="with --demo: the writer runs in a simulated process, watched with "
                   f"--backend (softdirty by default; one of {played}) on the simulated "
                   "kernel")
    w.add_argument("--openmetrics", action="store_true", help="after every sample, print "
                   "the counters as OpenMetrics text (ending with '# EOF'), as pagescan "
                   "serve serves them")
    w.set_defaults(func=cmd_watch, parser=w)

    from . import serve as serve_cli
    v = sub.add_parser("serve", help="an OpenMetrics / Prometheus endpoint of the pages "
                       "processes write", description=serve_cli.DESCRIPTION, epilog=epilog)
    serve_cli.add_arguments(v)
    v.set_defaults(func=serve_cli.cmd_serve, parser=v)

    c = sub.add_parser("compare", help="every backend on the built-in workloads, with ground "
                       "truth", description=compare.DESCRIPTION, epilog=epilog,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    compare_cli.add_arguments(c)
    c.set_defaults(func=compare_cli.cmd_compare, parser=c)

    from . import checkpoint as checkpoint_cli
    k = sub.add_parser("checkpoint", help="incremental checkpoints of ranges of a process",
                       description=checkpoint_cli.DESCRIPTION, epilog=epilog)
    checkpoint_cli.add_arguments(k)
    k.set_defaults(func=checkpoint_cli.cmd_checkpoint, parser=k)
    ki = sub.add_parser("checkpoint-info", help="the saves of a checkpoint file",
                        description=checkpoint_cli.INFO_DESCRIPTION, epilog=epilog)
    checkpoint_cli.add_info_arguments(ki)
    ki.set_defaults(func=checkpoint_cli.cmd_checkpoint_info, parser=ki)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command with ``argv`` (default: ``sys.argv[1:]``); the exit code."""
    safe_streams()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except UsageError as err:
        args.parser.print_usage(sys.stderr)
        sys.stderr.write(f"pagescan {args.command}: error: {err}\n")
        return EXIT_USAGE
    except Exit as err:
        sys.stderr.write(f"pagescan {args.command}: {err.message}\n")
        return err.code
    except AccessDenied as err:
        sys.stderr.write(f"pagescan {args.command}: {err}\n")
        return EXIT_ACCESS
    except NoSuchProcess as err:
        sys.stderr.write(f"pagescan {args.command}: {err}\n")
        return EXIT_GONE
    except BackendUnavailable as err:
        sys.stderr.write(f"pagescan {args.command}: {err}\n")
        return EXIT_UNAVAILABLE
    except PagescanError as err:
        sys.stderr.write(f"pagescan {args.command}: {err}\n")
        return EXIT_ERROR
    except KeyboardInterrupt:
        sys.stderr.write("pagescan: interrupted\n")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # the reader went away (| head): not an error of ours
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return EXIT_OK
