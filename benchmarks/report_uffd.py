"""Ratios pagescan / C for the uffd benchmarks (bench_uffd.py), from one run.

Printed at the end of ``pytest benchmarks/bench_uffd.py``; also usable on a
saved run: ``python benchmarks/report_uffd.py RUN.json`` (written with
``--benchmark-json`` or ``--benchmark-autosave``).

Medians from the same run: the sides of a figure were timed interleaved, round
by round (bench_uffd.py); pytest-benchmark's stats hold the side it timed
(``extra_info['uffd_main']``), ``extra_info['uffd_sides']`` the others. The
target is pagescan <= 1.3x C on every scan and collect figure; track and arm
ratios are shown for information. ``core`` is
``pagescan._core.pm_scan`` called directly (the Cython loop without the Tracker
layer); ``C inside`` is the C side's own clock_gettime median (no ctypes call).
First-write figures are per page. THP figures compare thp=True to thp=False.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

TARGET = 1.3
TARGETED = ("scan", "collect")


def _ms(s: float | None) -> str:
    return "-" if s is None else f"{s * 1e3:10.3f} ms"


def _r(a: float | None, b: float | None) -> str:
    return "-" if a is None or not b else f"{a / b:5.2f}x"


def summarize(records: Iterable[dict[str, Any]]) -> list[str]:
    rows: dict[tuple[str, str], dict[str, dict[str, Any]]] = defaultdict(dict)
    order: list[tuple[str, str]] = []
    for rec in records:
        info = rec.get("extra_info") or {}
        stats = rec.get("stats") or {}
        if "uffd_figure" not in info or "median" not in stats:
            continue
        key = (info["uffd_kind"], info["uffd_figure"])
        if key not in rows:
            order.append(key)
        # the side pytest-benchmark timed, then those timed interleaved with it
        rows[key][info["uffd_main"]] = {"median": stats["median"], "min": stats["min"],
                                        "info": info}
        for side, st in (info.get("uffd_sides") or {}).items():
            rows[key][side] = {"median": st["median"], "min": st["min"], "info": info}
    if not rows:
        return []
    clocks = {side["info"].get("uffd_clock", "wall") for r in rows.values() for side in r.values()}
    lines: list[str] = [
        "clock: " + ", ".join(sorted(clocks))
        + " (cpu = the thread's CPU time, user + kernel; wall = perf_counter)"]
    worst = 0.0
    missed = []
    lines.append(f"{'figure':<32} {'pagescan':>13} {'core':>13} {'C':>13} "
                 f"{'pagescan/C':>10} {'(min)':>7} {'core/C':>7} {'C inside':>13}  target")
    for kind, fig in order:
        if kind in ("first-write", "thp"):
            continue
        row = rows[kind, fig]
        p, core, c = (row.get(s, {}).get("median") for s in ("pagescan", "core", "C"))
        pmin, cmin = (row.get(s, {}).get("min") for s in ("pagescan", "C"))
        inside = row.get("C", {}).get("info", {}).get("c_ns_inside")
        verdict = ""
        if kind in TARGETED and p is not None and c:
            ratio = p / c
            worst = max(worst, ratio)
            verdict = "ok" if ratio <= TARGET else "MISSED"
            if ratio > TARGET:
                missed.append(fig)
        else:
            verdict = "(info)"
        lines.append(f"{fig:<32} {_ms(p):>13} {_ms(core):>13} {_ms(c):>13} {_r(p, c):>10} "
                     f"{_r(pmin, cmin):>7} {_r(core, c):>7} "
                     f"{_ms(inside * 1e-9 if inside else None):>13}  {verdict}")
    if worst:
        lines.append(f"scan/collect: worst pagescan/C median ratio {worst:.2f}x "
                     f"(target <= {TARGET}x): "
                     + ("all met" if not missed else "MISSED on " + ", ".join(missed)))

    fw = [(fig, rows[kind, fig]) for kind, fig in order if kind == "first-write"]
    if fw:
        lines.append("")
        lines.append(f"{'first write, per page':<40} {'pagescan (NumPy)':>17} {'C loop':>12} "
                     f"{'ratio':>7}")
        for fig, row in fw:
            vals = {}
            for side in ("pagescan", "C"):
                if side in row:
                    n = row[side]["info"].get("pages_written") or 1
                    vals[side] = row[side]["median"] / n
            p, c = vals.get("pagescan"), vals.get("C")
            lines.append(f"{fig:<40} {_ns(p):>17} {_ns(c):>12} {_r(p, c):>7}")

    thp = [(fig, rows[kind, fig]) for kind, fig in order if kind == "thp"]
    if thp:
        lines.append("")
        lines.append(f"{'THP (pagescan)':<40} {'thp=False':>13} {'thp=True':>13} "
                     f"{'True/False':>10}")
        for fig, row in thp:
            off, on = row.get("thp=False"), row.get("thp=True")
            n = (off or on or {}).get("info", {}).get("pages_written")
            tail = ""
            if n:
                tail = (f"   per written page: {_ns(off['median'] / n if off else None)} / "
                        f"{_ns(on['median'] / n if on else None)}")
            lines.append(f"{fig:<40} {_ms(off and off['median']):>13} "
                         f"{_ms(on and on['median']):>13} "
                         f"{_r(on and on['median'], off and off['median']):>10}{tail}")
    return lines


def _ns(s: float | None) -> str:
    return "-" if s is None else f"{s * 1e9:8.0f} ns"


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__)
        return 2
    with open(argv[1]) as f:
        data = json.load(f)
    for line in summarize(data.get("benchmarks", [])):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
