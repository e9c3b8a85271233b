"""Synthetic per-page category arrays for the scan_pages benchmarks.

Every workload is deterministic (fixed seed) and built with NumPy. ``make(name, n)``
returns ``(categories, masks, description)``; ``categories`` is a C-contiguous
``uint64`` array of ``n`` pages (HOLE = 1<<63 marks unmapped pages).
"""

from __future__ import annotations

import os

import numpy as np

from pagescan import HOLE, Category as K, Masks

NAMES = ("dense", "sparse", "fragmented")

#: Pages per workload, and pages of the slice the pure-Python reference runs on.
N_PAGES = int(os.environ.get("PAGESCAN_BENCH_PAGES", str(1 << 24)))
REF_PAGES = min(int(os.environ.get("PAGESCAN_BENCH_REF_PAGES", str(1 << 16))), N_PAGES)

_BASE = np.uint64(K.PRESENT | K.WPALLOWED)


def _runs(rng: np.random.Generator, n: int, mean_on: float, mean_off: float) -> np.ndarray:
    """Boolean array of n pages: alternating on/off runs with geometric lengths."""
    k = int(2.2 * n / (mean_on + mean_off)) + 16
    on = rng.geometric(1.0 / mean_on, size=k)
    off = rng.geometric(1.0 / mean_off, size=k)
    lengths = np.empty(2 * k, dtype=np.int64)
    lengths[0::2] = on
    lengths[1::2] = off
    bounds = np.cumsum(lengths)
    assert bounds[-1] >= n
    # +1 at every run boundary, then parity of the prefix count says on/off
    flips = np.zeros(n + 1, dtype=np.int8)
    b = bounds[bounds < n]
    flips[b] = 1
    return (np.cumsum(flips[:n], dtype=np.int64) & 1) == 0


def dense(n: int, seed: int = 1) -> tuple[np.ndarray, Masks, str]:
    """~90% WRITTEN in long runs (mean 2000 pages, gaps mean 220); 30% of the
    512-page (2 MiB) blocks are HUGE; ~1% of pages are holes in runs (mean 300).
    required=WRITTEN, return_mask=WRITTEN|HUGE: regions break at THP edges too."""
    rng = np.random.default_rng(seed)
    c = np.full(n, _BASE, dtype=np.uint64)
    c[_runs(rng, n, 2000, 220)] |= np.uint64(K.WRITTEN)
    nblk = (n + 511) // 512
    huge = np.repeat(rng.random(nblk) < 0.30, 512)[:n]
    c[huge] |= np.uint64(K.HUGE)
    c[_runs(rng, n, 300, 30000)] = np.uint64(HOLE)      # ~1% unmapped
    return c, Masks(required=K.WRITTEN, return_mask=K.WRITTEN | K.HUGE), _doc_line(dense)


def sparse(n: int, seed: int = 2) -> tuple[np.ndarray, Masks, str]:
    """~1% of pages WRITTEN, scattered in clusters of 1-4 pages (mean 2.5);
    the rest PRESENT|WPALLOWED. required=WRITTEN, return_mask=WRITTEN|HUGE:
    many small regions (~n/250)."""
    rng = np.random.default_rng(seed)
    c = np.full(n, _BASE, dtype=np.uint64)
    starts = np.flatnonzero(rng.random(n) < 0.004)
    lens = rng.integers(1, 5, size=starts.size)
    written = np.zeros(n + 8, dtype=np.int8)
    np.add.at(written, starts, 1)
    np.add.at(written, starts + lens, -1)
    c[np.cumsum(written[:n]) > 0] |= np.uint64(K.WRITTEN)
    return c, Masks(required=K.WRITTEN, return_mask=K.WRITTEN | K.HUGE), _doc_line(sparse)


def fragmented(n: int, seed: int = 3) -> tuple[np.ndarray, Masks, str]:
    """~98% of pages PRESENT (so they match required=PRESENT), WRITTEN at random
    (p=0.5) on each page; return_mask=WRITTEN, so the reported category flips
    every ~2 pages: ~n/2 regions, the output-bound worst case."""
    rng = np.random.default_rng(seed)
    c = np.where(rng.random(n) < 0.98, _BASE, np.uint64(K.WPALLOWED)).astype(np.uint64)
    c[rng.random(n) < 0.5] |= np.uint64(K.WRITTEN)
    return c, Masks(required=K.PRESENT, return_mask=K.WRITTEN), _doc_line(fragmented)


def _doc_line(f) -> str:
    return " ".join(f.__doc__.split())


def make(name: str, n: int) -> tuple[np.ndarray, Masks, str]:
    c, m, d = {"dense": dense, "sparse": sparse, "fragmented": fragmented}[name](n)
    assert c.dtype == np.uint64 and c.flags.c_contiguous and c.size == n
    return c, m, d
