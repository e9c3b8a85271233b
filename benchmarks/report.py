"""Ratios between the scan_pages implementations, from one benchmark run.

Called by conftest.py at the end of ``pytest benchmarks/bench_core.py``; also
usable on a saved run: ``python benchmarks/report.py RUN.json`` (a file written
with ``--benchmark-json`` or ``--benchmark-autosave``).

Per workload, from the same run:

* core / C: compiled core time over the plain C loop's (target: <= 2);
* NumPy / core: NumPy time over the compiled core's (target: >= 5);
* core / C run-at-a-time sketch (scan_runs.c): how much room is left;
* reference / core on the reference's slice, per page.

Both the min (the usual figure for a noisy machine) and the median are shown.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

SUITE = "scan_pages"                      # extra_info["suite"] of bench_core.py
CORE_VS_C_TARGET = 2.0
NUMPY_VS_CORE_TARGET = 5.0


def _key(rec: dict[str, Any]) -> tuple[str, str, str] | None:
    info = rec.get("extra_info") or {}
    if "impl" in info and "workload" in info:
        return info["workload"], info.get("scope", "full"), info["impl"]
    return None


def summarize(records: Iterable[dict[str, Any]]) -> list[str]:
    t: dict[str, dict[tuple[str, str], dict[str, Any]]] = defaultdict(dict)
    for rec in records:
        if (rec.get("extra_info") or {}).get("suite") != SUITE:
            continue                          # another suite's benchmark in this run
        k = _key(rec)
        stats = rec.get("stats") or {}
        if k is None or "min" not in stats:
            continue
        w, scope, impl = k
        t[w][scope, impl] = {"min": stats["min"], "median": stats["median"],
                             "pages": rec["extra_info"].get("pages", 0),
                             "regions": rec["extra_info"].get("regions")}
    lines: list[str] = []
    for w in sorted(t):
        row = t[w]
        lines.append(f"{w}:")
        order = {"core": 0, "c": 1, "numpy": 2, "c-runs": 3, "reference": 4}
        for (scope, impl), s in sorted(row.items(),
                                       key=lambda kv: (kv[0][0], order.get(kv[0][1], 9))):
            pages = s["pages"] or 1
            lines.append(f"  {impl:>9} ({scope}, {pages} pages, {s['regions']} regions): "
                         f"min {s['min'] * 1e3:9.3f} ms  median {s['median'] * 1e3:9.3f} ms  "
                         f"= {s['min'] / pages * 1e9:8.3f} ns/page")

        def ratio(a: tuple[str, str], b: tuple[str, str], label: str, target: str,
                  ok, row: dict = row) -> None:
            if a in row and b in row:
                rmin = row[a]["min"] / row[b]["min"]
                rmed = row[a]["median"] / row[b]["median"]
                tail = (f"target {target}: {'ok' if ok(rmin) else 'MISSED'}" if ok
                        else target)
                lines.append(f"  {label}: {rmin:6.2f}x (min)  {rmed:6.2f}x (median)   {tail}")

        ratio(("full", "core"), ("full", "c"), "core / C loop     ",
              f"<= {CORE_VS_C_TARGET:g}x", lambda r: r <= CORE_VS_C_TARGET)
        ratio(("full", "numpy"), ("full", "core"), "numpy / core      ",
              f">= {NUMPY_VS_CORE_TARGET:g}x", lambda r: r >= NUMPY_VS_CORE_TARGET)
        ratio(("full", "core"), ("full", "c-runs"), "core / C run-skip ",
              "(how much faster a run-at-a-time loop is)", None)
        ratio(("slice", "reference"), ("slice", "core"), "reference / core  ",
              "(same slice)", None)
    return lines


def _num(x: Any, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def accuracy(records: Iterable[dict[str, Any]]) -> list[str]:
    """The bench_compare.py rows (extra_info["suite"] == "compare"): per backend and
    workload, lost writes and false positives per round, precision, recall and the
    median time of one run of the workload."""
    rows = [r for r in records if (r.get("extra_info") or {}).get("suite") == "compare"]
    if not rows:
        return []
    rows.sort(key=lambda r: (r["extra_info"]["backend"], r["extra_info"]["workload"]))
    out = [f"{'backend':<22} {'workload':<11} {'lost':>8} {'false+':>8} {'precision':>9} "
           f"{'recall':>7} {'median ms':>10}"]
    for r in rows:
        i = r["extra_info"]
        if i.get("lost_writes") is None:
            out.append(f"{i['backend']:<22} {i['workload']:<11} {i.get('outcome', '-')}")
            continue
        out.append(f"{i['backend']:<22} {i['workload']:<11} {i['lost_writes']:>8.1f} "
                   f"{i['false_positives']:>8.1f} {_num(i['precision'], '.4f'):>9} "
                   f"{_num(i['recall'], '.4f'):>7} {r['stats']['median'] * 1e3:>10.3f}")
    return out


def limits(records: Iterable[dict[str, Any]]) -> list[str]:
    """The bench_limits.py rows (extra_info["suite"] == "limits", issue 14): per scan
    pattern ns/page of each row and the ratios core(kept buffer) / C(kept buffer),
    core(kept) / memory floor and fresh / kept; scan_pages per-call time against
    1 us; collect() on a small range against the C loop through ctypes."""
    t: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for rec in records:
        info = rec.get("extra_info") or {}
        if info.get("suite") != "limits" or "min" not in (rec.get("stats") or {}):
            continue
        t[info["case"]][info["impl"]] = {"min": rec["stats"]["min"],
                                         "median": rec["stats"]["median"],
                                         "pages": info.get("pages") or 1}
    out: list[str] = []

    def ratio(row: dict[str, Any], a: str, b: str, label: str, target: float | None) -> None:
        if a in row and b in row:
            r = row[a]["min"] / row[b]["min"]
            rm = row[a]["median"] / row[b]["median"]
            tail = "" if target is None else \
                f"   target <= {target:g}x: {'ok' if r <= target else 'MISSED'}"
            out.append(f"  {label:<22} {r:6.2f}x (min) {rm:6.2f}x (median){tail}")

    for case in sorted(k for k in t if k.startswith("scan ")):
        row = t[case]
        out.append(f"{case}:")
        for impl in ("floor", "core-fresh", "core-kept", "c-kept"):
            if impl in row:
                s = row[impl]
                out.append(f"  {impl:>10}: min {s['min'] * 1e3:9.3f} ms = "
                           f"{s['min'] / s['pages'] * 1e9:7.3f} ns/page")
        alt = case.endswith("alternating")
        ratio(row, "core-kept", "c-kept", "core kept / C kept", 1.5 if alt else None)
        ratio(row, "core-kept", "floor", "core kept / floor", None if alt else 2.0)
        ratio(row, "core-fresh", "core-kept", "core fresh / kept", None)
    if "per-call" in t:
        out.append("scan_pages per call, 16 pages (target <= 1 us):")
        for impl, s in sorted(t["per-call"].items()):
            us = s["min"] * 1e6
            out.append(f"  {impl:>12}: min {us:6.3f} us  median {s['median'] * 1e6:6.3f} us"
                       f"   {'ok' if us <= 1.0 else 'MISSED'}")
    for case in sorted(k for k in t if k.startswith("collect")):
        row = t[case]
        out.append(f"{case} (target <= 1.15x the C loop through ctypes):")
        for impl, s in sorted(row.items()):
            out.append(f"  {impl:>12}: min {s['min'] * 1e6:6.3f} us  "
                       f"median {s['median'] * 1e6:6.3f} us")
        ratio(row, "pagescan", "c-ctypes", "collect() / C", 1.15)
        ratio(row, "pagescan-out", "c-ctypes", "collect(out=) / C", 1.15)
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__)
        return 2
    with open(argv[1]) as f:
        data = json.load(f)
    records = data.get("benchmarks", [])
    for line in summarize(records) + limits(records) + accuracy(records):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
