"""pytest-benchmark suite: how accurate and how fast is each backend, on the
workloads of ``pagescan compare``.

Run:  python -m pytest benchmarks/bench_compare.py -q     (or: tox -e bench)

For every row ``pagescan compare --simulate all`` would show here (each backend
that works on this kernel, and the simulator playing each mechanism it has a
model of: uffd, soft-dirty, mprotect), every built-in workload
(``pagescan.compare.build_workloads``) is carried out through the public compare
API (``RealExecutor`` / ``SimExecutor`` + ``run_workload``), in this process:

* timed: the whole workload (its stores, kernel writes, madvise, mprotect, fork,
  writer threads and every ``collect(reset=True)``), ``ROUNDS`` rounds, each on
  fresh memory with a fresh tracker (allocation, population and arming are set
  up outside the timing);
* recorded in ``benchmark.extra_info``, beside the timing, from the workload's own
  ground truth: ``lost_writes`` (pages changed but not reported), ``false_positives``
  (reported but not changed), ``precision``, ``recall``, ``truth`` and ``reported``
  pages, ``failed_writes`` (``read()`` calls the kernel could not complete),
  ``reported_twice``; per round in ``lost_writes_per_round`` /
  ``false_positives_per_round`` (writer threads racing collects need not give
  the same answer twice).

A backend that refuses to go on (``run_workload`` returns no tally: e.g. the
range was remapped under it) is recorded as that ``outcome``, with no accuracy.
Backends that do not work here are skipped with their probe's reason. A
simulated row's time is the simulator's own cost, not the mechanism's speed on a
real kernel. A backend that loses writes does not fail the benchmark: losing
them is what is measured (``pagescan compare`` prints the same figures as a
table; ``tests/`` assert what each backend must get right).

Sizes: ``PAGESCAN_BENCH_COMPARE_PAGES`` pages per workload (default 8192 = 32 MiB
of 4 KiB pages, ``pagescan compare``'s default; a multiple of 512) and
``PAGESCAN_BENCH_COMPARE_ROUNDS`` rounds (default 5).
"""

from __future__ import annotations

import os
from typing import Any

import pytest

import pagescan
from pagescan.compare import (RealExecutor, SimExecutor, build_workloads, plan_rows,
                              run_workload)

NPAGES = int(os.environ.get("PAGESCAN_BENCH_COMPARE_PAGES", "8192"))
ROUNDS = int(os.environ.get("PAGESCAN_BENCH_COMPARE_ROUNDS", "5"))
SEED = 1

WORKLOADS = build_workloads(NPAGES, SEED)
ROWS, LEFT_OUT = plan_rows(simulate="all")


def _params() -> list[Any]:
    """A parameter per row; the real backends that do not work here, skipped with the
    reason (their simulated row, when the simulator can play them, still runs)."""
    out = [pytest.param(row, id=row.label.replace(" (simulated)", "-simulated"))
           for row in ROWS]
    real = {row.name for row in ROWS if row.kind == "real"}
    reasons = {gone["name"]: gone["reason"] for gone in LEFT_OUT}
    for name in sorted({row.name for row in ROWS} | set(reasons)):
        if name not in real:
            why = reasons.get(name) or pagescan.probe(name).reason
            out.append(pytest.param(None, id=name,
                                    marks=pytest.mark.skip(reason=f"{name}: {why}")))
    return out


@pytest.mark.parametrize("workload", WORKLOADS, ids=[w.name for w in WORKLOADS])
@pytest.mark.parametrize("row", _params())
def test_workload(benchmark: Any, row: Any, workload: Any) -> None:
    benchmark.group = f"compare: {workload.title} ({NPAGES} pages)"
    executors: list[Any] = []
    results: list[dict[str, Any]] = []

    def setup() -> tuple[tuple[Any, ...], dict[str, Any]]:
        ex = (RealExecutor(row.name, workload) if row.kind == "real"
              else SimExecutor(row.name, workload))
        executors.append(ex)
        return (ex,), {}

    def run(ex: Any) -> None:
        results.append(run_workload(workload, ex))

    def teardown(ex: Any) -> None:
        executors.remove(ex)
        ex.close()

    try:
        benchmark.pedantic(run, setup=setup, teardown=teardown, rounds=ROUNDS)
    finally:
        for ex in executors:                 # a round that raised: still release it
            ex.close()

    assert all(r["error"] is None for r in results), [r["error"] for r in results]
    info: dict[str, Any] = {"suite": "compare", "backend": row.label, "kind": row.kind,
                            "workload": workload.name, "pages": NPAGES}
    stopped = [r.get("refused") or r.get("program_error") for r in results
               if r["tally"] is None]
    if stopped:
        # the backend refused to go on (a remapped range, ...) or the program's own call
        # failed under the tracker: an outcome of the comparison, nothing to score
        info.update({"outcome": stopped[0], "rounds_stopped": len(stopped),
                     "lost_writes": None, "false_positives": None, "precision": None,
                     "recall": None})
        benchmark.extra_info.update(info)
        return
    tallies = [r["tally"] for r in results]
    total = {k: sum(t[k] for t in tallies) for k in
             ("truth", "reported", "tp", "fp", "lost", "failed_writes", "reported_twice")}
    tp, fp, lost = total["tp"], total["fp"], total["lost"]
    benchmark.extra_info.update(info)        # report.accuracy() prints these at the end
    benchmark.extra_info.update({
        "outcome": "scored",
        "rounds": len(tallies),
        # per round (the sums over every round divided by the rounds)
        "lost_writes": lost / len(tallies),
        "false_positives": fp / len(tallies),
        "truth": total["truth"] / len(tallies),
        "reported": total["reported"] / len(tallies),
        "failed_writes": total["failed_writes"] / len(tallies),
        "reported_twice": total["reported_twice"] / len(tallies),
        "precision": tp / (tp + fp) if tp + fp else None,
        "recall": tp / (tp + lost) if tp + lost else None,
        "lost_writes_per_round": [t["lost"] for t in tallies],
        "false_positives_per_round": [t["fp"] for t in tallies],
        "notes": sorted({n for r in results for n in r["notes"]}),
    })
    # the ground truth must be the workload's, whatever the backend did with it
    assert total["truth"] > 0
    assert total["tp"] + total["lost"] == total["truth"]
