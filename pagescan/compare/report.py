"""What the comparison shows: the table (:func:`format_table`), the plot
(:func:`plot`, matplotlib) and the progress bar of a run (:class:`Progress`). The
JSON is the report itself (:func:`pagescan.compare.run_compare`)."""

from __future__ import annotations

import math
import sys
import time
from typing import IO, Any

__all__ = ["Progress", "format_table", "plot"]


class Progress:
    """A progress bar on stderr, drawn only when stderr is a terminal."""

    def __init__(self, total: int, stream: IO[str] | None = None,
                 enabled: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.total, self.done = max(total, 1), 0
        self.t0 = time.monotonic()

    def step(self, label: str) -> None:
        if not self.enabled:
            return
        width = 28
        filled = int(width * self.done / self.total)
        bar = "#" * filled + "." * (width - filled)
        secs = time.monotonic() - self.t0
        self.stream.write(f"\r\x1b[2K[{bar}] {self.done}/{self.total} {secs:5.1f}s  "
                          f"{label[:60]}")
        self.stream.flush()

    def advance(self) -> None:
        self.done += 1

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\r\x1b[2K")
            self.stream.flush()



def _f(x: float | None, fmt: str) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def format_table(rep: dict[str, Any]) -> str:
    rows = rep["rows"]
    lines = [f"pagescan compare: {len(rep['workloads'])} workloads on "
             f"{rep['bytes'] >> 20} MiB ({rep['pages']} pages), kernel {rep['kernel']}, "
             f"{rep['implementation']} core, seed {rep['seed']}, {rep['seconds']:.1f} s", ""]
    lw = max([len(r["label"]) for r in rows] + [7])
    head = (f"{'backend':<{lw}}  {'precision':>9} {'recall':>7} {'lost':>6} {'false+':>7}"
            f"  {'arm ms':>7} {'scan ms':>8} {'reset ms':>8} {'1st write':>10}")
    lines += [head, f"{'':<{lw}}  {'':>9} {'':>7} {'writes':>6} {'pages':>7}  "
              f"{'':>7} {'':>8} {'':>8} {'µs/page':>10}", "-" * len(head)]
    for r in rows:
        t, s = r["totals"], r["speed"] or {}
        lines.append(
            f"{r['label']:<{lw}}  {_f(t['precision'], '.4f'):>9} {_f(t['recall'], '.4f'):>7}"
            f" {t['lost']:>6} {t['fp']:>7}  {_f(s.get('arm_ms'), '.3f'):>7}"
            f" {_f(s.get('scan_ms'), '.3f'):>8} {_f(s.get('reset_ms'), '.3f'):>8}"
            f" {_f(s.get('first_write_us_per_page'), '.3f'):>10}")
    if not rows:
        lines.append("(no backend to compare)")
    lines += ["", "lost writes / false-positive pages, per workload (pages the workload "
              "changes in brackets; ! = some of its writes failed):"]
    ww = max(len(w["title"]) for w in rep["workloads"]) + 8
    cw = max([len(r["label"]) for r in rows] + [12])
    lines.append(f"{'workload':<{ww}}" + "".join(f"  {r['label']:>{cw}}" for r in rows))
    notes = []
    for w in rep["workloads"]:
        cells = []
        truth = None
        for r in rows:
            c = r["workloads"][w["name"]]
            if c["error"]:
                cells.append("error")
                notes.append(f"{r['label']} · {w['name']}: {c['error']}")
                continue
            t = c["tally"]
            truth = t["truth"] + t["failed_writes"]     # what the workload set out to change
            mark = "!" if t["failed_writes"] else ""
            cells.append(f"{t['lost']} / {t['fp']}{mark}")
            notes += [f"{r['label']} · {w['name']}: {n}" for n in c["notes"]
                      if "collects raced" not in n]
        title = f"{w['title']} [{truth}]" if truth is not None else w["title"]
        lines.append(f"{title:<{ww}}" + "".join(f"  {c:>{cw}}" for c in cells))
    for r in rows:
        if r["speed_error"]:
            notes.append(f"{r['label']} · speed: {r['speed_error']}")
        if r["kind"] == "simulated":
            why = r["probe"]["reason"]
            notes.append(f"{r['label']}: played by the simulator: {r['model']}"
                         + (f"; not available here: {why}" if why else ""))
    for lo in rep["left_out"]:
        notes.append(f"{lo['name']}: not compared: {lo['reason']}")
    if notes:
        lines += ["", "notes:"] + [f"  {n}" for n in notes]
    return "\n".join(lines) + "\n"


def plot(rep: dict[str, Any], path: str) -> None:
    """Bar charts of the report (matplotlib, the optional ``plot`` extra)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = rep["rows"]
    labels = [r["label"] for r in rows]
    wl = rep["workloads"]
    fig, axes = plt.subplots(2, 2, figsize=(13, 8.5))
    x = range(len(rows))
    ax = axes[0][0]
    prec = [r["totals"]["precision"] or 0 for r in rows]
    rec = [r["totals"]["recall"] or 0 for r in rows]
    ax.bar([i - 0.2 for i in x], prec, 0.4, label="precision")
    ax.bar([i + 0.2 for i in x], rec, 0.4, label="recall")
    ax.set_xticks(list(x), labels, rotation=15)
    ax.set_ylim(0, 1.05)
    ax.set_title("precision and recall (all workloads)")
    ax.legend(loc="lower right")
    for ax, key, title in ((axes[0][1], "lost", "lost writes per workload"),
                           (axes[1][0], "fp", "false-positive pages per workload")):
        width = 0.8 / max(len(rows), 1)
        for j, r in enumerate(rows):
            vals = [(r["workloads"][w["name"]]["tally"] or {}).get(key, 0) for w in wl]
            ax.bar([i + j * width for i in range(len(wl))], vals, width, label=r["label"])
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(wl))],
                      [w["name"] for w in wl], rotation=30)
        ax.set_yscale("symlog")
        ax.set_ylim(bottom=0)
        ax.set_title(title)
        ax.legend(fontsize=8)
    ax = axes[1][1]
    real = [r for r in rows if r["speed"]]
    keys = ("arm_ms", "scan_ms", "reset_ms", "first_write_us_per_page")
    width = 0.8 / max(len(real), 1)
    for j, r in enumerate(real):
        ax.bar([i + j * width for i in range(len(keys))], [r["speed"][k] for k in keys],
               width, label=r["label"])
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(keys))],
                  ["arm ms", "scan ms", "reset ms", "1st write µs/page"])
    ax.set_yscale("log")
    ax.set_title(f"speed on {rep['bytes'] >> 20} MiB (real backends)")
    if real:
        ax.legend(fontsize=8)
    fig.suptitle(f"pagescan compare — kernel {rep['kernel']}, {rep['pages']} pages")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

