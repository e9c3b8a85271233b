"""``pagescan checkpoint PID --range A-B FILE``: incremental checkpoints of ranges of
another process (:func:`pagescan.checkpoint.checkpoint_process`): the first save
writes the ranges whole, each later one (``--count``, every ``--interval``) only the
pages written since the save before. ``pagescan checkpoint-info FILE`` lists the
saves of a file."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from .exits import EXIT_OK, UsageError
from .parsing import parse_duration, parse_pid, parse_range, positive_int

__all__ = ["DESCRIPTION", "INFO_DESCRIPTION", "add_arguments", "add_info_arguments",
           "cmd_checkpoint", "cmd_checkpoint_info"]

DESCRIPTION = (
    "Incremental checkpoints of address ranges of process PID into FILE, an append-only "
    "log (see docs/checkpoint.md): the first save writes the ranges whole, each later "
    "save (--count, one every --interval) only the pages written since the save "
    "before, tracked with soft-dirty and read with process_vm_readv (both need ptrace "
    "read access to PID). --freeze stops the process during each save (ptrace attach), "
    "making it a snapshot of one instant. Restore with pagescan.checkpoint.restore(FILE); "
    "pagescan checkpoint-info FILE lists the saves of a file.")

INFO_DESCRIPTION = (
    "The complete saves of a checkpoint file (pagescan checkpoint, or "
    "pagescan.checkpoint.open), and the size of a torn tail (a save cut short, ignored).")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("pid", type=parse_pid, metavar="PID")
    p.add_argument("file", metavar="FILE", help="the checkpoint file (appended to)")
    p.add_argument("--range", dest="ranges", type=parse_range, action="append", default=[],
                   metavar="A-B", help="[A, B): hex addresses as in /proc/PID/maps "
                   "(repeat for several ranges)")
    p.add_argument("--count", type=positive_int, default=1, metavar="N",
                   help="saves to make (default 1)")
    p.add_argument("--interval", type=parse_duration, default=1.0, metavar="T",
                   help="time between saves (1s, 250ms, ...; default 1s)")
    p.add_argument("--backend", default="auto",
                   help="backend name (default: the best that can watch another process)")
    p.add_argument("--freeze", action="store_true",
                   help="stop the process while each save collects and reads its pages")
    p.add_argument("--json", action="store_true", help="one JSON object per save")


def add_info_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", metavar="FILE", help="a checkpoint file")
    p.add_argument("--json", action="store_true", help="print a JSON object")


def cmd_checkpoint_info(args: argparse.Namespace, out: Any = None) -> int:
    return _info(args.file, args.json, sys.stdout if out is None else out)


def _info(path: str, as_json: bool, out: Any) -> int:
    from .. import checkpoint
    i = checkpoint.info(path)
    if as_json:
        out.write(json.dumps({
            "path": i.path, "version": i.version, "length": i.length,
            "page_size": i.page_size, "segments": [list(s) for s in i.segments],
            "file_size": i.file_size, "torn_bytes": i.torn_bytes,
            "saves": [{"number": s.number, "kind": s.kind, "data_bytes": s.data_bytes,
                       "file_bytes": s.file_bytes, "runs": s.runs, "time": s.time}
                      for s in i.saves]}) + "\n")
        return EXIT_OK
    out.write(f"{i.path}: checkpoint of {i.length} bytes ({i.page_size}-byte pages), "
              f"{len(i.saves)} saves, {i.file_size} bytes"
              + (f", torn tail of {i.torn_bytes} bytes (ignored)" if i.torn_bytes else "")
              + "\n")
    for a, n in i.segments:
        out.write(f"  range {a:x}-{a + n:x}\n")
    for s in i.saves:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s.time))
        out.write(f"  save {s.number:>4} {s.kind:<5} {s.data_bytes:>12} bytes in {s.runs:>7} "
                  f"runs  {when}\n")
    return EXIT_OK


def cmd_checkpoint(args: argparse.Namespace, out: Any = None) -> int:
    from .. import checkpoint
    out = sys.stdout if out is None else out
    if not args.ranges:
        raise UsageError("give at least one --range A-B")
    with checkpoint.checkpoint_process(args.pid, args.file, args.ranges, backend=args.backend,
                                       freeze=args.freeze) as ck:
        for i in range(args.count):
            if i:
                time.sleep(args.interval)
            t0 = time.perf_counter()
            number = ck.save()
            took = time.perf_counter() - t0
            s = checkpoint.info(args.file).saves[-1]
            if args.json:
                out.write(json.dumps({"save": number, "kind": s.kind,
                                      "data_bytes": s.data_bytes, "runs": s.runs,
                                      "seconds": round(took, 6),
                                      "backend": ck.backend}) + "\n")
            else:
                out.write(f"save {number} ({s.kind}): {s.data_bytes} bytes in {s.runs} runs, "
                          f"{took * 1e3:.1f} ms ({ck.backend})\n")
            out.flush()
    return EXIT_OK
