"""Running the comparison: scoring a workload against its ground truth
(:class:`Tally`, :func:`run_workload`), the speed columns (:func:`measure_speed`),
each (backend, workload) pair in a child process of its own (:func:`run_isolated`),
which rows to run (:func:`plan_rows`) and the whole run (:func:`run_compare`)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import random
import select
import signal
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import pagescan

from .._describe import capabilities_json
from ..backends import backend_class, backend_names, probe
from ..constants import PAGE_SIZE
from ..errors import BackendUnavailable, RangeError
from .executors import (SIM_MODELS, Executor, ProgramCallFailed, RealExecutor, SimExecutor,
                        WorkloadError, sim_playable, sim_status)
from .report import Progress
from .workloads import WORKLOAD_NAMES, Workload, build_workloads

__all__ = ["SCHEMA_VERSION", "Row", "Tally", "environment", "measure_speed", "plan_rows",
           "run_compare", "run_isolated", "run_workload", "spread"]

PAGE = PAGE_SIZE


@dataclasses.dataclass
class Tally:
    truth: int = 0
    reported: int = 0
    tp: int = 0
    fp: int = 0
    lost: int = 0
    failed_writes: int = 0
    reported_twice: int = 0

    def add_epoch(self, truth: set[int], reported: set[int]) -> None:
        self.truth += len(truth)
        self.reported += len(reported)
        self.tp += len(truth & reported)
        self.fp += len(reported - truth)
        self.lost += len(truth - reported)

    def add(self, other: Tally) -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    @property
    def precision(self) -> float | None:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else None

    @property
    def recall(self) -> float | None:
        return self.tp / (self.tp + self.lost) if self.tp + self.lost else None

    def as_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["precision"] = self.precision
        d["recall"] = self.recall
        return d


def run_workload(w: Workload, ex: Executor) -> dict[str, Any]:
    """Carry out ``w`` on ``ex``; the ground truth is kept here, from the operations."""
    tally = Tally()
    notes: list[str] = []
    counters = dict.fromkeys(("failed_kw", "total_kw", "collapsed", "tried"), 0)
    t0 = time.perf_counter()
    try:
        _play(w, ex, tally, notes, counters)
    except (RangeError, ProgramCallFailed) as err:
        # the backend refuses to go on (e.g. the range was remapped under it), or the
        # program's own call failed under the tracker: an outcome, not a failure of
        # the comparison; what was reported until then is not scored
        key = "refused" if isinstance(err, RangeError) else "program_error"
        return {"tally": None, "seconds": time.perf_counter() - t0, "notes": notes,
                "error": None, "refused": None, "program_error": None,
                key: f"{type(err).__name__}: {err}"}
    failed_kw, total_kw = counters["failed_kw"], counters["total_kw"]
    collapsed, tried = counters["collapsed"], counters["tried"]
    tally.failed_writes = failed_kw
    if failed_kw:
        notes.append(f"{failed_kw} of {total_kw} read() calls into tracked pages failed "
                     "(EFAULT: the kernel could not write to a write-protected page); "
                     "the data never arrived")
    if tried:
        notes.append(f"MADV_COLLAPSE collapsed {collapsed} of {tried} 2 MiB blocks")
    return {"tally": tally.as_json(), "seconds": time.perf_counter() - t0, "notes": notes,
            "error": None, "refused": None, "program_error": None}


def _play(w: Workload, ex: Executor, tally: Tally, notes: list[str],
          counters: dict[str, int]) -> None:
    """The operations of ``w`` on ``ex``, scored into ``tally``."""
    truth: set[int] = set()
    holds_data = set(w.populate)          # pages whose contents are not all zero
    for op in w.ops:
        pages = op.pages
        if op.kind == "write":
            ex.write(pages)
            truth.update(pages)
            holds_data.update(pages)
        elif op.kind == "kwrite":
            failed = set(ex.kernel_write(pages))
            ok = set(pages) - failed
            counters["total_kw"] += len(pages)
            counters["failed_kw"] += len(failed)
            truth |= ok
            holds_data |= ok
        elif op.kind == "discard":
            ex.discard(pages)
            truth |= holds_data & set(pages)
            holds_data -= set(pages)
        elif op.kind == "protect":
            ex.protect(pages, op.arg)
        elif op.kind == "fork":
            ex.fork(pages)
        elif op.kind == "neighbour":
            ex.neighbour(op.arg)               # another mapping: no page of the buffer
        elif op.kind == "move":
            ex.move(pages)                     # away and back: the contents stay
        elif op.kind == "collapse":
            done, n = ex.collapse(pages)       # huge pages or not: the contents stay
            counters["collapsed"] += done
            counters["tried"] += n
        elif op.kind == "collect":
            tally.add_epoch(truth, ex.collect())
            truth = set()
        elif op.kind == "concurrent":
            if truth:
                raise AssertionError("a concurrent step must follow a collect")
            reports = ex.concurrent(pages, op.arg)
            union: set[int] = set().union(*reports)
            tally.add_epoch(set(pages), union)
            tally.reported_twice += sum(len(r) for r in reports) - len(union)
            notes.append(ex.race_note(len(reports), op.arg))
        else:
            raise AssertionError(f"unknown operation {op.kind!r}")


def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else math.nan


def spread(xs: list[float], scale: float = 1.0) -> dict[str, Any]:
    """Median, quartiles (inclusive method), min, max and count of ``xs`` (times
    ``scale``)."""
    v = sorted(x * scale for x in xs)
    if not v:
        return {"n": 0, "median": None, "q1": None, "q3": None, "min": None, "max": None}
    q1, _, q3 = statistics.quantiles(v, n=4, method="inclusive") if len(v) > 1 \
        else (v[0], v[0], v[0])
    return {"n": len(v), "median": statistics.median(v), "q1": q1, "q3": q3,
            "min": v[0], "max": v[-1]}


def measure_speed(backend: str, npages: int, repeat: int) -> dict[str, Any]:
    """Arm / scan / reset times and the cost of a first write per page, on real
    memory of ``npages`` pages (all present): medians of ``repeat`` rounds (after one
    round of warm-up), and in ``spread`` each one's median, quartiles, min and max."""
    mem = pagescan.allocate(npages * PAGE)
    view = memoryview(mem)
    ones = b"\x01" * npages
    view[::PAGE] = ones                                  # populate
    sparse = sorted(random.Random(7).sample(range(npages), max(1, npages // 100)))
    base: list[float] = []
    arm: list[float] = []
    scan: list[float] = []
    reset: list[float] = []
    first: list[float] = []
    try:
        for _ in range(repeat):
            t0 = time.perf_counter()
            view[::PAGE] = ones                           # no tracker: the plain cost
            base.append(time.perf_counter() - t0)
        for i in range(repeat + 1):                      # round 0 warms up, not counted
            if i == 1:
                arm, scan, reset, first = [], [], [], []
            t0 = time.perf_counter()
            t = pagescan.track(mem, backend=backend)     # register + arm
            arm.append(time.perf_counter() - t0)
            try:
                v = bytes((i % 250 + 2,))
                for p in sparse:
                    view[p * PAGE] = v[0]
                t0 = time.perf_counter()
                got = t.written()
                scan.append(time.perf_counter() - t0)
                if got.pages(PAGE) < len(sparse):
                    raise WorkloadError(f"the scan reported {got.pages(PAGE)} of "
                                        f"{len(sparse)} pages written")
                t0 = time.perf_counter()
                t.reset()
                reset.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                view[::PAGE] = v * npages                 # the first write to every page
                first.append(time.perf_counter() - t0)
            finally:
                t.close()
    finally:
        view.release()
        try:
            mem.close()
        except BufferError:
            pass            # a track() that failed may pin it still: the child exits anyway
    b = min(base)
    extra = [max(0.0, f - b) for f in first]
    spreads = {"arm_ms": spread(arm, 1e3), "scan_ms": spread(scan, 1e3),
               "reset_ms": spread(reset, 1e3),
               "first_write_us_per_page": spread(extra, 1e6 / npages)}
    out: dict[str, Any] = {"pages": npages, "repeat": repeat}
    out.update({k: v["median"] for k, v in spreads.items()})
    out.update({"plain_write_us_per_page": b / npages * 1e6,
                "scan_written_pages": len(sparse), "spread": spreads})
    return out


#: the version of the report's layout (``pagescan compare --json``, docs/compare.md);
#: raised when a key changes meaning or goes away
SCHEMA_VERSION = 2


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def environment() -> dict[str, Any]:
    """Where the run happens: what a reader needs to weigh its numbers."""
    thp = _read("/sys/kernel/mm/transparent_hugepage/enabled")
    cpuinfo = _read("/proc/cpuinfo") or ""
    model = next((ln.split(":", 1)[1].strip() for ln in cpuinfo.splitlines()
                  if ln.startswith("model name")), None)
    lane = os.environ.get("PAGESCAN_VM_KERNEL")
    return {
        "kernel": platform.release(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "thp": thp.split("[", 1)[1].split("]", 1)[0] if thp and "[" in thp else thp,
        # the qemu lane (vm/lane.py) sets PAGESCAN_VM_KERNEL in its guests: TCG, a
        # software emulation; its times are not comparable with a host's
        "emulated": lane is not None,
        "where": f"qemu guest (TCG software emulation), kernel {lane}" if lane
        else "host",
    }


# ============================================================ child processes


def run_isolated(fn: Callable[[], dict[str, Any]], timeout: float) -> dict[str, Any]:
    """``fn()`` in a forked child; its JSON-able result, or an error dict when it
    raised, crashed on a signal or ran past ``timeout`` seconds."""
    r, w = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:                                       # child
        os.close(r)
        try:
            try:
                payload: dict[str, Any] = {"ok": fn()}
            except BaseException as err:  # noqa: BLE001 - reported to the parent
                payload = {"error": f"{type(err).__name__}: {err}",
                           "traceback": traceback.format_exc()}
            data = json.dumps(payload).encode()
            view = memoryview(data)
            while view:
                view = view[os.write(w, view):]
        finally:
            os._exit(0)
    os.close(w)
    chunks = []
    deadline = time.monotonic() + timeout
    timed_out = False
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                break
            ready, _, _ = select.select([r], [], [], left)
            if not ready:
                continue
            b = os.read(r, 1 << 16)
            if not b:
                break
            chunks.append(b)
    except BaseException:                              # Ctrl-C: take the child along
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise
    finally:
        os.close(r)
    if timed_out:
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    if timed_out:
        return {"error": f"timed out after {timeout:g} s (the child was killed)"}
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        return {"error": f"crashed: killed by {signal.Signals(sig).name}"}
    try:
        return json.loads(b"".join(chunks) or b"{}")  # type: ignore[no-any-return]
    except ValueError:
        return {"error": "the child process returned no result"}


# ================================================================== the run


@dataclasses.dataclass
class Row:
    """One line of the table: a backend, real or played by the simulator."""

    name: str
    kind: str                       # "real" or "simulated"
    probe_ok: bool
    probe_reason: str
    capabilities: dict[str, Any] | None

    @property
    def label(self) -> str:
        return self.name if self.kind == "real" else f"{self.name} (simulated)"


def plan_rows(only: Sequence[str] | None = None, simulate: str = "missing"
              ) -> tuple[list[Row], list[dict[str, str]]]:
    """The rows to run, and the backends left out (with the reason)."""
    rows: list[Row] = []
    left_out: list[dict[str, str]] = []
    names = backend_names()
    if only:
        unknown = [n for n in only if n not in names]
        if unknown:
            raise ValueError(f"unknown backend {', '.join(unknown)}; known: "
                             + ", ".join(names))
        names = [n for n in names if n in only]
    playable = sim_playable()
    for name in names:
        try:
            caps = capabilities_json(getattr(backend_class(name), "capabilities", None))
        except BackendUnavailable:
            caps = None                      # it failed to load: its probe says why
        if name == "simulator" or (caps is not None and not caps["real"]):
            continue                         # the simulator itself plays the others
        p = probe(name)
        if p.ok and simulate != "only":
            rows.append(Row(name, "real", True, "", caps))
        can_play = name in playable and simulate != "none"
        if can_play and (not p.ok or simulate in ("all", "only")):
            rows.append(Row(name, "simulated", bool(p.ok), p.reason, caps))
        elif not p.ok:
            why = p.reason
            if name not in SIM_MODELS:
                why += "; the simulator has no model of it"
            elif name not in playable:
                why += f"; the simulator cannot play it: {sim_status()[1]}"
            elif simulate == "none":
                why += "; --simulate none"
            left_out.append({"name": name, "reason": why})
    return rows, left_out
def _workload_job(row: Row, w: Workload) -> Callable[[], dict[str, Any]]:
    def job() -> dict[str, Any]:
        import warnings
        warnings.simplefilter("ignore")
        if row.kind == "real":
            ex: Executor = RealExecutor(row.name, w)
        else:
            ex = SimExecutor(row.name, w)
        try:
            return run_workload(w, ex)
        finally:
            ex.close()
    return job


def _speed_job(row: Row, npages: int, repeat: int) -> Callable[[], dict[str, Any]]:
    def job() -> dict[str, Any]:
        import warnings
        warnings.simplefilter("ignore")
        return measure_speed(row.name, npages, repeat)
    return job


def run_compare(*, npages: int, rounds: int = 3, repeat: int = 3, seed: int = 1,
                backends: Sequence[str] | None = None,
                workloads: Sequence[str] | None = None, simulate: str = "missing",
                timeout: float = 120.0, progress: Progress | None = None
                ) -> dict[str, Any]:
    """Run the comparison; the JSON-able report (see ``pagescan compare --json``)."""
    t0 = time.monotonic()
    rows, left_out = plan_rows(backends, simulate)
    wls = build_workloads(npages, seed, rounds)
    if workloads:
        unknown = [n for n in workloads if n not in WORKLOAD_NAMES]
        if unknown:
            raise ValueError(f"unknown workload {', '.join(unknown)}; known: "
                             + ", ".join(WORKLOAD_NAMES))
        wls = [w for w in wls if w.name in workloads]
    jobs = sum(len(wls) + (row.kind == "real") for row in rows)
    progress = progress or Progress(jobs, enabled=False)
    progress.total = max(jobs, 1)
    out_rows = []
    for row in rows:
        cells = {}
        total = Tally()
        errors = refused = 0
        for w in wls:
            progress.step(f"{row.label}: {w.title}")
            res = run_isolated(_workload_job(row, w), timeout)
            progress.advance()
            if "ok" in res:
                cell = res["ok"]
                if cell["tally"] is None:
                    refused += 1
                else:
                    t = Tally(**{k: cell["tally"][k] for k in
                                 ("truth", "reported", "tp", "fp", "lost", "failed_writes",
                                  "reported_twice")})
                    total.add(t)
            else:
                errors += 1
                cell = {"tally": None, "seconds": None, "notes": [],
                        "error": res.get("error", "failed"), "refused": None,
                        "program_error": None}
            cells[w.name] = cell
        speed = None
        speed_error = None
        if row.kind == "real":
            progress.step(f"{row.label}: arm / scan / reset / first-write times")
            res = run_isolated(_speed_job(row, npages, repeat), timeout)
            progress.advance()
            if "ok" in res:
                speed = res["ok"]
            else:
                speed_error = res.get("error", "failed")
        out_rows.append({"name": row.name, "label": row.label, "kind": row.kind,
                         "model": SIM_MODELS[row.name] if row.kind == "simulated" else None,
                         "probe": {"ok": row.probe_ok, "reason": row.probe_reason},
                         "capabilities": row.capabilities,
                         "totals": total.as_json(), "workloads_failed": errors,
                         "workloads_refused": refused,
                         "speed": speed, "speed_error": speed_error, "workloads": cells})
    progress.close()
    return {
        "schema_version": SCHEMA_VERSION,
        "pagescan": pagescan.__version__,
        "implementation": pagescan.IMPLEMENTATION,
        "kernel": platform.release(),
        "environment": environment(),
        "pages": npages,
        "bytes": npages * PAGE,
        "seed": seed,
        "rounds": rounds,
        "repeat": repeat,
        "workloads": [{"name": w.name, "title": w.title, "truth": w.truth,
                       "thp": w.thp, "operations": len(w.ops)} for w in wls],
        "rows": out_rows,
        "left_out": left_out,
        "seconds": time.monotonic() - t0,
    }

