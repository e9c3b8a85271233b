"""The built-in workloads of ``pagescan compare``: abstract sequences of operations on
a buffer of pages, from which the ground truth is computed.

An operation (:class:`Op`) is a user store, a kernel write through ``read()``,
``madvise(MADV_DONTNEED)``, the program's own ``mprotect``, ``fork``, writer threads
racing collects, or ``collect(reset=True)``. Pages are indexes into the buffer.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterable, Sequence

from ..constants import PAGE_SIZE, PROT_READ, PROT_WRITE

__all__ = ["DESCRIPTION", "HUGE", "HUGE_PAGES", "OP_KINDS", "WORKLOAD_NAMES", "Op",
           "Workload", "build_workloads", "runs_of"]

#: a transparent huge page (PMD), and how many pages it holds
HUGE = 2 << 20
HUGE_PAGES = HUGE // PAGE_SIZE

@dataclasses.dataclass(frozen=True)
class Op:
    """One step of a workload. ``pages`` are page indexes into the buffer."""

    # write kwrite discard protect fork collect concurrent neighbour move collapse
    kind: str
    pages: tuple[int, ...] = ()
    arg: int = 0                   # protect: the PROT_* bits; concurrent: threads;
    #                                neighbour: pages of the new mapping


#: what each kind of operation does (the executors carry them out; ``pages`` are page
#: indexes into the tracked buffer)
OP_KINDS = {
    "write": "the program stores to the pages",
    "kwrite": "the kernel writes the pages: read() from a pipe into each",
    "discard": "madvise(MADV_DONTNEED) on the pages (they read as zero afterwards)",
    "protect": "the program's own mprotect(PROT_*) on the pages",
    "fork": "fork(); the child writes its copy of the pages and exits",
    "collect": "collect(reset=True): the pages reported since the last collect",
    "concurrent": "writer threads store to the pages once each while collects run",
    "neighbour": "a new anonymous mapping of ``arg`` pages is made right after the "
                 "buffer (mmap MAP_FIXED over a PROT_NONE reservation: the kernel "
                 "may merge it with the tracked VMA), written, and unmapped again",
    "move": "mremap() the run of pages (contiguous) away, past the buffer, and back "
            "to its place (MREMAP_MAYMOVE|MREMAP_FIXED): the contents do not change",
    "collapse": "madvise(MADV_HUGEPAGE) and madvise(MADV_COLLAPSE) on each 2 MiB block "
                "holding the pages: the kernel collapses them into transparent huge "
                "pages where it can (the contents do not change)",
}


@dataclasses.dataclass(frozen=True)
class Workload:
    name: str
    title: str
    truth: str                     # what counts as changed, in words
    npages: int
    ops: tuple[Op, ...]
    populate: tuple[int, ...]      # pages written before tracking starts
    thp: bool = False              # transparent huge pages kept (MADV_HUGEPAGE, thp=True)
    tail: int = 0                  # pages of address space reserved after the buffer
    #                                (PROT_NONE), for "neighbour" and "move"


def _write(pages: Iterable[int]) -> Op:
    return Op("write", tuple(sorted(set(pages))))


def _collect() -> Op:
    return Op("collect")


def _sample(rng: random.Random, population: Sequence[int], k: int) -> list[int]:
    return rng.sample(list(population), min(k, len(population)))


def _runs(rng: random.Random, n: int, count: int, length: int) -> list[int]:
    """Pages of ``count`` disjoint runs of ``length`` pages at random places."""
    slots = n // length
    out: list[int] = []
    for s in rng.sample(range(slots), min(count, slots)):
        out.extend(range(s * length, (s + 1) * length))
    return sorted(out)


def build_workloads(npages: int, seed: int = 1, rounds: int = 3) -> list[Workload]:
    """The built-in workloads on a buffer of ``npages`` pages (a multiple of 512)."""
    n = npages
    k = max(8, n // 100)                       # pages per sparse round
    every = tuple(range(n))
    out = []

    def rng(name: str) -> random.Random:
        return random.Random(f"{seed}:{name}")

    r = rng("sparse")
    ops: list[Op] = []
    for _ in range(rounds + 1):
        ops += [_write(_sample(r, every, k)), _collect()]
    out.append(Workload("sparse", "sparse random writes",
                        "the pages stored to", n, tuple(ops), every))

    ops = []
    for i in range(rounds):
        lo = (i * n // 4) % (n // 2)
        ops += [_write(range(lo, lo + n // 2)), _collect()]
    out.append(Workload("sequential", "sequential streaming",
                        "the pages stored to", n, tuple(ops), every))

    r = rng("kernel")
    ops = []
    for _ in range(rounds):
        kw = _sample(r, every, max(8, k // 2))
        user = _sample(r, sorted(set(every) - set(kw)), max(8, k // 2))
        ops += [Op("kwrite", tuple(sorted(kw))), _write(user), _collect()]
    out.append(Workload("kernel", "kernel writes (read into the buffer)",
                        "the pages stored to, and those read() filled (a read() that "
                        "failed filled nothing)", n, tuple(ops), every))

    r = rng("threads")
    ops = [_write(_sample(r, every, k)), _collect(),
           Op("concurrent", tuple(_sample(r, every, n // 4)), 4)]
    out.append(Workload("threads", "writer threads during collect(reset=True)",
                        "4 threads store to n/4 pages once each while the main thread "
                        "collects; the union of the collects (and a final one) must hold "
                        "every page", n, tuple(ops), every))

    r = rng("dontneed")
    ops = [_write(_sample(r, every, k)), _collect()]
    for _ in range(rounds - 1):
        gone = _runs(r, n, 4, max(1, n // 64))
        ops += [Op("discard", tuple(gone)), _write(_sample(r, gone, len(gone) // 2)),
                _collect()]
    ops += [_write(_sample(r, every, k)), _collect()]
    out.append(Workload("dontneed", "madvise(DONTNEED) then rewrite",
                        "the pages stored to, and the pages the discard zeroed (their "
                        "contents changed)", n, tuple(ops), every))

    r = rng("mprotect")
    ops = []
    for _ in range(rounds):
        locked = _runs(r, n, 8, 16)
        free = sorted(set(every) - set(locked))
        ops += [Op("protect", tuple(locked), PROT_READ),
                _write(_sample(r, free, k)),
                Op("protect", tuple(locked), PROT_READ | PROT_WRITE),
                _write(_sample(r, locked, k // 2) + _sample(r, free, k // 2)),
                _collect()]
    out.append(Workload("mprotect", "mprotect churn",
                        "the pages stored to (the program itself makes runs read-only "
                        "and writable again between writes)", n, tuple(ops), every))

    for thp in (True, False):
        r = rng("thp")                           # the same operations for both
        ops = []
        half = n // 2
        for _ in range(rounds):
            ops += [_write(_sample(r, range(half), k) + _sample(r, range(half, n), k // 4)),
                    _collect()]
        name = "thp-on" if thp else "thp-off"
        out.append(Workload(name, f"THP {'on' if thp else 'off'}",
                            "the pages stored to (the first half populated before "
                            "tracking, the second half never touched)", n, tuple(ops),
                            tuple(range(half)), thp=thp))

    r = rng("merge")
    side = max(16, n // 64)                      # pages of the new neighbour mapping
    ops = [_write(_sample(r, every, k)), _collect()]
    for _ in range(rounds - 1):
        ops += [Op("neighbour", (), side), _write(_sample(r, every, k)), _collect()]
    ops += [_write(_sample(r, every, k)), _collect()]
    out.append(Workload("merge", "a new mapping next to the buffer (VMA merge)",
                        "the pages stored to (a new mapping made, written and unmapped "
                        "right after the buffer changes none of them)", n, tuple(ops),
                        every, tail=side + 2))

    r = rng("mremap")
    run = max(16, n // 64)
    ops = [_write(_sample(r, every, k)), _collect()]
    for _ in range(rounds - 1):
        lo = r.randrange(0, n - run)
        moved = tuple(range(lo, lo + run))
        ops += [_write(_sample(r, every, k)), Op("move", moved),
                _write(_sample(r, every, k) + _sample(r, moved, max(1, run // 4))),
                _collect()]
    ops += [_write(_sample(r, every, k)), _collect()]
    out.append(Workload("mremap", "mremap away and back",
                        "the pages stored to (a run of pages moved away with mremap and "
                        "back to its place keeps its contents)", n, tuple(ops), every,
                        tail=run + 2))

    r = rng("collapse")
    blocks = [b * HUGE_PAGES for b in range(n // HUGE_PAGES)]
    ops = [_write(_sample(r, every, k)), _collect()]
    for _ in range(rounds - 1):
        ops += [_write(_sample(r, every, k)), Op("collapse", every), _collect(),
                _write(_sample(r, every, k)), _collect(),
                Op("discard", tuple(b + HUGE_PAGES // 2 for b in blocks)),
                _write(_sample(r, every, k)), _collect()]
    out.append(Workload("thp-collapse", "THP collapse, then split",
                        "the pages stored to, and the pages the discard zeroed (small "
                        "pages collapsed into huge ones with MADV_COLLAPSE keep their "
                        "contents; discarding one page of each then splits it)", n,
                        tuple(ops), every))

    r = rng("fork")
    ops = []
    for _ in range(rounds - 1):
        child = _sample(r, every, n // 10)
        ops += [_write(_sample(r, every, k)), Op("fork", tuple(sorted(child))),
                _write(_sample(r, child, k // 2) + _sample(r, every, k // 2)), _collect()]
    ops += [_write(_sample(r, every, k)), _collect()]
    out.append(Workload("fork", "fork (a child writes its copy)",
                        "the parent's stores only (the child's go to its own copy)", n,
                        tuple(ops), every))
    return out


_SMALL = build_workloads(1024, rounds=2)      # the names and descriptions, once
#: the names of the built-in workloads, in the order of the table
WORKLOAD_NAMES = [w.name for w in _SMALL]
#: what ``pagescan compare --help`` says, the workloads included
DESCRIPTION = """\
Run the built-in workloads on every backend that works here, and the simulator
playing the ones that do not, with ground truth from the workloads themselves.
For each backend: precision, recall, lost writes, false-positive pages, and (real
backends) arm / scan / reset times and the cost of a first write per page.

workloads:

""" + "".join(f"  {w.name:<11} {w.title}: truth = {w.truth}\n" for w in _SMALL)
del _SMALL




def runs_of(pages: Sequence[int]) -> list[tuple[int, int]]:
    """Sorted page indexes as ``(first, end)`` runs."""
    out: list[tuple[int, int]] = []
    for p in sorted(pages):
        if out and out[-1][1] == p:
            out[-1] = (out[-1][0], p + 1)
        else:
            out.append((p, p + 1))
    return out
