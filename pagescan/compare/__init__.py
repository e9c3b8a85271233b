"""``pagescan compare``: every backend on the same built-in workloads, with ground truth.

A workload is an abstract sequence of operations on a buffer of pages (user
stores, kernel writes through ``read()``, ``madvise(MADV_DONTNEED)``, the
program's own ``mprotect`` calls, ``fork``, writer threads) separated by
``collect(reset=True)`` calls. The workload knows what it changed: that is the
ground truth, computed here from the operations themselves (and from what the
operations reported: a ``read()`` that failed wrote nothing), never from a
backend. The same sequence runs

* against real memory, through :func:`pagescan.track`, for every backend whose
  probe succeeds here; and
* against a simulated process for the backends that do not work on this machine
  (a row labelled ``NAME (simulated)``): the same backend's own code, run by
  ``pagescan.track(..., backend="simulator", mechanism=NAME)`` over the
  simulator's kernel.

For each collect, with ``R`` the pages reported and ``T`` the pages the workload
changed since the previous collect: true positives ``|R ∩ T|``, false positives
``|R - T|`` (pages reported but not changed) and lost writes ``|T - R|``
(pages changed but not reported). Writer threads racing collects are the
exception: every page is written once, and the union of every collect
(a final one after the writers stop included) must hold it.
Precision = TP / (TP + FP), recall = TP / (TP + lost), summed over workloads.

The speed columns (arm, scan, reset, first write per page) are measured on the
real backends in the same run (medians of ``--repeat`` rounds); they are not
meaningful for a simulated backend and are left empty there.

Every (backend, workload) pair runs in a child process of its own (``fork``), so
that a crash of one backend (a signal) is reported as that cell's outcome and
the rest of the comparison goes on.

The package: :mod:`~pagescan.compare.workloads` (the operations and their ground
truth), :mod:`~pagescan.compare.executors` (real memory, or a simulated process
tracked by the real backend of the mechanism over the simulated kernel),
:mod:`~pagescan.compare.runner` (scoring, isolation, the rows, the run) and
:mod:`~pagescan.compare.report` (table, plot, progress). The command's options are
in :mod:`pagescan.cli.compare`.
"""

from __future__ import annotations

from .executors import (SIM_MODELS, Executor, RealExecutor, SimExecutor, WorkloadError,
                        sim_playable, sim_status)
from .report import Progress, combine, emulated, format_table, plot, where
from .runner import (SCHEMA_VERSION, Row, Tally, environment, measure_speed, plan_rows,
                     run_compare, run_isolated, run_workload, spread)
from .workloads import DESCRIPTION, OP_KINDS, WORKLOAD_NAMES, Op, Workload, build_workloads

__all__ = ["DESCRIPTION", "OP_KINDS", "SCHEMA_VERSION", "SIM_MODELS", "WORKLOAD_NAMES",
           "Executor", "Op", "Progress", "RealExecutor", "Row", "SimExecutor", "Tally",
           "Workload", "WorkloadError", "build_workloads", "combine", "emulated",
           "environment", "format_table", "measure_speed", "plan_rows", "plot",
           "run_compare", "run_isolated", "run_workload", "sim_playable", "sim_status",
           "spread", "where"]
