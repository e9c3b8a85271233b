"""What the comparison shows: the table (:func:`format_table`), the plot
(:func:`plot`, matplotlib) and the progress bar of a run (:class:`Progress`). The
JSON is the report itself (:func:`pagescan.compare.run_compare`)."""

from __future__ import annotations

import math
import sys
import time
from typing import IO, Any

__all__ = ["COLOURS", "Progress", "combine", "emulated", "format_table", "plot", "where"]


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


def _num(x: float | None) -> str:
    """A time with three significant digits (no exponent below 1e6)."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if x == 0:
        return "0"
    digits = max(0, 2 - math.floor(math.log10(abs(x))))
    return f"{x:.{digits}f}"


def _time(s: dict[str, Any], key: str) -> str:
    """``median [q1-q3]`` of one speed column (a report of schema 1 has medians only)."""
    sp = (s.get("spread") or {}).get(key)
    if not sp:
        return _num(s.get(key))
    if sp["n"] < 2:
        return _num(sp["median"])
    return f"{_num(sp['median'])} [{_num(sp['q1'])}-{_num(sp['q3'])}]"


SPEED_COLUMNS = (("arm_ms", "arm ms"), ("scan_ms", "scan ms"), ("reset_ms", "reset ms"),
                 ("first_write_us_per_page", "1st write µs/page"))


def where(rep: dict[str, Any]) -> str:
    """Where a report was measured, in words."""
    env = rep.get("environment") or {}
    return env.get("where") or "host"


def emulated(rep: dict[str, Any]) -> bool:
    return bool((rep.get("environment") or {}).get("emulated"))


def _header(rep: dict[str, Any]) -> list[str]:
    env = rep.get("environment") or {}
    thp = f", THP {env['thp']}" if env.get("thp") else ""
    lines = [f"pagescan compare: {len(rep['workloads'])} workloads on "
             f"{rep['bytes'] >> 20} MiB ({rep['pages']} pages), kernel {rep['kernel']} "
             f"({where(rep)}), {rep['implementation']} core{thp}, seed {rep['seed']}, "
             f"{rep['seconds']:.1f} s"]
    if any(r["speed"] for r in rep["rows"]):
        n = rep.get("repeat")
        lines.append(f"times: median [interquartile range] of {n} runs (after one warm-up "
                     f"run), on {rep['bytes'] >> 20} MiB; the runs column says how many"
                     if n else "times: medians")
    if emulated(rep):
        lines.append("NOTE: measured inside a qemu guest under TCG (software emulation): "
                     "the accuracy columns are the real kernel's; the times are not "
                     "comparable with a host's")
    return lines


def format_table(rep: dict[str, Any]) -> str:
    """The report as text: one line per backend, then lost writes / false positives
    per workload, then the notes. A combined report (:func:`combine`) has a line per
    run in its header."""
    rows = rep["rows"]
    if "runs" in rep:                      # two saved runs side by side
        lines = [f"pagescan compare: {len(rep['runs'])} saved runs side by side, on the "
                 f"{len(rep['workloads'])} workloads they share", ""]
        for tag, run in zip(rep["tags"], rep["runs"], strict=True):
            lines += [f"[{tag}] {ln}" for ln in _header(run)]
        lines += ["", "totals over the shared workloads only"]
    else:
        lines = _header(rep)
    lines.append("")
    lw = max([len(r["label"]) for r in rows] + [7])
    times = [[_time(r["speed"] or {}, k) for k, _ in SPEED_COLUMNS] for r in rows]
    tw = [max([len(h)] + [len(t[i]) for t in times]) for i, (_, h) in enumerate(SPEED_COLUMNS)]
    head = (f"{'backend':<{lw}}  {'precision':>9} {'recall':>7} {'lost':>6} {'false+':>7}"
            f" {'runs':>4}  "
            + "  ".join(f"{h:>{w}}" for (_, h), w in zip(SPEED_COLUMNS, tw, strict=True)))
    lines += [head, "-" * len(head)]
    for r, t_ in zip(rows, times, strict=True):
        t, s = r["totals"], r["speed"] or {}
        runs = str(s.get("repeat", "")) if s else "-"
        lines.append(
            f"{r['label']:<{lw}}  {_f(t['precision'], '.4f'):>9} {_f(t['recall'], '.4f'):>7}"
            f" {t['lost']:>6} {t['fp']:>7} {runs:>4}  "
            + "  ".join(f"{x:>{w}}" for x, w in zip(t_, tw, strict=True)))
    if not rows:
        lines.append("(no backend to compare)")
    lines += ["", "lost writes / false-positive pages, per workload (pages the workload "
              "changes in brackets; ! = some of its writes failed; refused = the backend "
              "stopped with an error of its API; call failed = the program's own system "
              "call failed under the tracker; see the notes):"]
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
            if c.get("refused"):
                cells.append("refused")
                notes.append(f"{r['label']} · {w['name']}: refused: {c['refused']}")
                continue
            if c.get("program_error"):
                cells.append("call failed")
                notes.append(f"{r['label']} · {w['name']}: the program's own call failed "
                             f"under the tracker: {c['program_error']}")
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


def _retally(row: dict[str, Any], names: list[str]) -> dict[str, Any]:
    keys = ("truth", "reported", "tp", "fp", "lost", "failed_writes", "reported_twice")
    tot: dict[str, Any] = dict.fromkeys(keys, 0)
    for n in names:
        t = row["workloads"][n]["tally"]
        if t:
            for k in keys:
                tot[k] += t.get(k, 0)
    tp = tot["tp"]
    tot["precision"] = tp / (tp + tot["fp"]) if tp + tot["fp"] else None
    tot["recall"] = tp / (tp + tot["lost"]) if tp + tot["lost"] else None
    return tot


def combine(reports: list[dict[str, Any]], tags: list[str] | None = None
            ) -> dict[str, Any]:
    """Saved runs side by side (``pagescan compare --from A --against B``): one report
    whose rows are every run's rows, labelled ``backend @tag``, on the workloads every
    run has (by name), totals recomputed over those. Runs with different sizes or
    seeds are put side by side all the same; the header says what each was."""
    if not reports:
        raise ValueError("nothing to combine")
    tags = tags or [f"{i + 1}:{r['kernel']}" for i, r in enumerate(reports)]
    if len(tags) != len(reports):
        raise ValueError(f"{len(tags)} tags for {len(reports)} reports")
    shared = [w for w in reports[0]["workloads"]
              if all(any(x["name"] == w["name"] for x in r["workloads"]) for r in reports[1:])]
    names = [w["name"] for w in shared]
    rows = []
    for tag, rep in zip(tags, reports, strict=True):
        for r in rep["rows"]:
            rows.append(dict(r, label=f"{r['label']} @{tag}",
                             workloads={n: r["workloads"][n] for n in names},
                             totals=_retally(r, names)))
    return {"schema_version": reports[0].get("schema_version", 1), "runs": reports,
            "tags": tags, "workloads": shared, "rows": rows,
            "left_out": [dict(lo, name=f"{lo['name']} @{tag}")
                         for tag, rep in zip(tags, reports, strict=True) for lo in rep["left_out"]],
            "kernel": " vs ".join(r["kernel"] for r in reports),
            "bytes": reports[0]["bytes"], "pages": reports[0]["pages"],
            "seed": reports[0]["seed"]}


#: a colour per backend, the same in every panel and every plot
COLOURS = {"uffd": "#1f77b4", "softdirty": "#d62728", "mprotect": "#2ca02c",
           "simulator": "#7f7f7f"}
_EXTRA = ["#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf", "#ff7f0e"]


def _colour(name: str) -> str:
    if name not in COLOURS:
        COLOURS[name] = _EXTRA[(len(COLOURS) - 4) % len(_EXTRA)]
    return COLOURS[name]


def plot(rep: dict[str, Any], path: str) -> None:
    """Bar charts of the report (matplotlib, the optional ``plot`` extra): lost writes
    and false positives per workload (symlog scale: 0, 1, 10, ... 1000 on one axis;
    every value written over its bar, a zero drawn as a hollow circle, a cell with no
    result as an x), precision and recall, and the times (median with the
    interquartile range as an error bar; log scale). One colour per backend in every
    panel (hatched: simulated); one legend, above the panels."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch
    rows = rep["rows"]
    wl = rep["workloads"]
    runs = rep.get("runs") or [rep]
    tags = rep.get("tags") or [None]

    def style(r: dict[str, Any]) -> dict[str, Any]:
        hatch = "//" if r["kind"] == "simulated" else None
        if len(runs) > 1 and not r["label"].endswith(f"@{tags[0]}"):
            hatch = (hatch or "") + ".."
        return {"color": _colour(r["name"]), "hatch": hatch, "edgecolor": "black",
                "linewidth": 0.5}

    fig = plt.figure(figsize=(15, 13.5))
    grid = fig.add_gridspec(3, 2, height_ratios=[1, 1, 0.9], hspace=0.55, wspace=0.18)
    nr = max(len(rows), 1)
    width = 0.84 / nr
    top = 1.0
    for k, (key, title) in enumerate((("lost", "lost writes per workload (pages changed, "
                                        "not reported)"),
                                       ("fp", "false-positive pages per workload (reported, "
                                        "not changed)"))):
        ax = fig.add_subplot(grid[k, :])
        for j, r in enumerate(rows):
            xs, vals, zeros, missing = [], [], [], []
            for i, w in enumerate(wl):
                x = i - 0.42 + (j + 0.5) * width
                t = r["workloads"][w["name"]]["tally"]
                if t is None:
                    missing.append(x)
                elif t[key] == 0:
                    zeros.append(x)
                else:
                    xs.append(x)
                    vals.append(t[key])
            ax.bar(xs, vals, width, **style(r))
            for x, v in zip(xs, vals, strict=True):
                ax.annotate(str(v), (x, v), xytext=(0, 2), textcoords="offset points",
                            ha="center", va="bottom", fontsize=6.5, rotation=90)
            top = max([top, *vals])
            ax.plot(zeros, [0] * len(zeros), "o", markersize=5, markerfacecolor="white",
                    markeredgecolor=_colour(r["name"]), markeredgewidth=1.5, clip_on=False)
            ax.plot(missing, [0] * len(missing), "x", markersize=7,
                    color=_colour(r["name"]), markeredgewidth=2, clip_on=False)
        ax.set_yscale("symlog", linthresh=1)
        ax.set_ylim(0, top * 8)
        ax.set_xlim(-0.5, len(wl) - 0.5)
        ax.set_xticks(range(len(wl)), [w["name"] for w in wl])
        ax.set_title(title + "  (o = 0, x = no result: error, refused or call failed)", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    ax = fig.add_subplot(grid[2, 0])
    for j, r in enumerate(rows):
        vals = [r["totals"]["precision"], r["totals"]["recall"]]
        for i, v in enumerate(vals):
            x = i - 0.42 + (j + 0.5) * width
            if v is None:
                ax.plot([x], [0], "x", color=_colour(r["name"]), clip_on=False)
                continue
            ax.bar([x], [v], width, **style(r))
            ax.annotate(f"{v:.3f}", (x, v), xytext=(0, 2), textcoords="offset points",
                        ha="center", va="bottom", fontsize=6.5, rotation=90)
    ax.set_xticks([0, 1], ["precision", "recall"])
    ax.set_ylim(0, 1.25)
    ax.set_yticks([0, 0.25, 0.5, 0.75, 1.0])
    ax.set_title("precision and recall (all workloads)", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax = fig.add_subplot(grid[2, 1])
    real = [r for r in rows if r["speed"]]
    w2 = 0.84 / max(len(real), 1)
    for j, r in enumerate(real):
        sp = r["speed"].get("spread") or {}
        for i, (key, _) in enumerate(SPEED_COLUMNS):
            med = r["speed"].get(key)
            if med is None or med <= 0:
                continue
            x = i - 0.42 + (j + 0.5) * w2
            ax.bar([x], [med], w2, **style(r))
            q = sp.get(key)
            if q and q["n"] > 1:
                ax.errorbar([x], [med], yerr=[[med - q["q1"]], [q["q3"] - med]],
                            fmt="none", ecolor="black", capsize=2, linewidth=1)
    ax.set_xticks(range(len(SPEED_COLUMNS)), [h for _, h in SPEED_COLUMNS])
    ax.set_yscale("log")
    n = {str(r["speed"].get("repeat")) for r in real}
    ax.set_title(f"times on {rep['bytes'] >> 20} MiB: median, bar = interquartile range, "
                 f"{'/'.join(sorted(n)) or '-'} runs (real backends)", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    handles = [Patch(facecolor=_colour(r["name"]), edgecolor="black",
                     hatch=style(r)["hatch"], label=r["label"]) for r in rows]
    fig.legend(handles=handles, loc="upper center", ncol=min(len(handles), 4),
               bbox_to_anchor=(0.5, 0.955), fontsize=9, frameon=False)
    if len(runs) > 1:
        what = " vs ".join(f"{t}: {where(x)}" for t, x in zip(tags, runs, strict=True))
    else:
        what = f"kernel {rep['kernel']} ({where(rep)}), {rep['pages']} pages"
    sup = f"pagescan compare — {what}"
    if any(emulated(x) for x in runs):
        sup += "\ntimes under qemu TCG (software emulation) are not comparable with a host's"
    fig.suptitle(sup, fontsize=12, y=0.995)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
