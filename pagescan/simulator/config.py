"""The kernel being simulated (:class:`KernelConfig`) and the category tables
derived from it."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import procfs
from .constants import (B_KIND, B_SD, B_WP, FILE, GUARD, HUGE, K_HZP, K_THP, PAGE_SIZE, PFNZERO,
                        PRESENT, P_EXISTS, P_FILE, P_GUARD, P_LUT, P_PRESENT, P_SD, P_WP, P_ZERO,
                        SOFT_DIRTY, SWAPPED, WRITTEN)


@dataclass(frozen=True)
class KernelConfig:
    """The kernel being simulated. The defaults are this project's reference kernel
    (6.18.y) with soft-dirty built in; :meth:`host` matches the running machine."""

    #: CONFIG_MEM_SOFT_DIRTY: SOFT_DIRTY categories, pagemap bit 55, clear_refs 4
    soft_dirty: bool = True
    #: /sys/kernel/mm/transparent_hugepage/enabled: "always", "madvise" or "never"
    thp: str = "madvise"
    #: .../transparent_hugepage/use_zero_page: huge zero page on read faults
    thp_zero_page: bool = True
    #: CONFIG_PT_RECLAIM: MADV_DONTNEED over a whole 2 MiB frees its PTE table
    pt_reclaim: bool = True
    #: fault_around_bytes / PAGE_SIZE
    fault_around_pages: int = 16
    #: "6.18.y" (pte_none and uffd no-table holes read WRITTEN) or "6.18.0"
    written_rules: str = "6.18.y"
    #: PAGEMAP_SCAN exists (6.7+); without it the ioctl fails with ENOTTY
    pagemap_scan: bool = True
    #: UFFD_FEATURE_WP_ASYNC exists (6.7+)
    uffd_wp_async: bool = True
    #: MADV_GUARD_INSTALL / REMOVE exist (6.13+; file-backed mappings 6.15+)
    guard_regions: bool = True
    #: a MREMAP_FIXED move without resize may span several VMAs (6.17+); before,
    #: EFAULT when the old range is not one VMA
    mremap_multi_vma: bool = True

    def __post_init__(self) -> None:
        if self.thp not in ("always", "madvise", "never"):
            raise ValueError(f"thp must be 'always', 'madvise' or 'never', not {self.thp!r}")
        if self.written_rules not in ("6.18.y", "6.18.0"):
            raise ValueError("written_rules must be '6.18.y' or '6.18.0'")
        if self.fault_around_pages < 1 or self.fault_around_pages & (self.fault_around_pages - 1):
            raise ValueError("fault_around_pages must be a power of two")

    @classmethod
    def host(cls, **overrides: Any) -> KernelConfig:
        """The settings of the running kernel where they can be read (THP policy,
        huge zero page, soft-dirty from ``/proc/config.gz`` or ``/boot/config-*``)."""
        kw: dict[str, Any] = {}
        base = "/sys/kernel/mm/transparent_hugepage/"
        try:
            with open(base + "enabled") as f:
                kw["thp"] = f.read().split("[")[1].split("]")[0]
            with open(base + "use_zero_page") as f:
                kw["thp_zero_page"] = f.read().strip() == "1"
        except (OSError, IndexError):
            kw["thp"] = "never"
        config = procfs.kernel_config()
        if config is not None:
            kw["soft_dirty"] = "CONFIG_MEM_SOFT_DIRTY=y" in config
            kw["pt_reclaim"] = "CONFIG_PT_RECLAIM=y" in config
        release = _release()
        if release is not None and release < (6, 17):
            kw["mremap_multi_vma"] = False
        probed = _probe_soft_dirty()
        if probed is not None:
            kw["soft_dirty"] = probed
        kw.update(overrides)
        return cls(**kw)


def _release() -> tuple[int, int] | None:
    """(major, minor) of the running kernel."""
    import platform
    m = re.match(r"(\d+)\.(\d+)", platform.release())
    return (int(m.group(1)), int(m.group(2))) if m else None


def _probe_soft_dirty() -> bool | None:
    """Whether this kernel has soft-dirty: a new mapping is VM_SOFTDIRTY, so its
    pages show pagemap bit 55 where CONFIG_MEM_SOFT_DIRTY is set, never otherwise."""
    import mmap
    try:
        m = mmap.mmap(-1, PAGE_SIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    except (OSError, AttributeError):
        return None
    try:
        m[0] = 1
        import ctypes
        cell = ctypes.c_char.from_buffer(m)
        addr = ctypes.addressof(cell)
        del cell                                 # no buffer export left: m can close
        with open("/proc/self/pagemap", "rb") as f:
            f.seek(addr // PAGE_SIZE * 8)
            entry = int.from_bytes(f.read(8), "little")
        return bool(entry >> 55 & 1)
    except (OSError, ValueError):
        return None
    finally:
        m.close()


def _luts(config: KernelConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Category lookup tables: by PTE bits (with and without the 6.18.0 fast-path
    quirk) and by PMD byte."""
    sd = config.soft_dirty
    y = config.written_rules == "6.18.y"

    def pte_cat(p: int, none_written: bool) -> int:
        c = 0
        if p & P_PRESENT:
            c = PRESENT | (0 if p & P_WP else WRITTEN)
            if p & P_FILE:
                c |= FILE
            if p & P_ZERO:
                c |= PFNZERO
        elif p & P_EXISTS:
            c = SWAPPED | (0 if p & P_WP else WRITTEN)
            if p & P_GUARD:
                c |= GUARD
        elif none_written:
            return WRITTEN
        if sd and p & P_SD and p & P_EXISTS:
            c |= SOFT_DIRTY
        return c

    # indexed by the whole uint16 PTE word (no masking: faster)
    low = np.arange(1 << 16) & P_LUT
    pte = np.array([pte_cat(p, y) for p in range(P_LUT + 1)], dtype=np.uint64)[low]
    pte_fast = np.array([pte_cat(p, True) for p in range(P_LUT + 1)], dtype=np.uint64)[low]
    pmd = np.zeros(256, dtype=np.uint64)
    for b in range(256):
        kind = b & B_KIND
        if kind in (K_THP, K_HZP):
            c = HUGE | PRESENT | (0 if b & B_WP else WRITTEN)
            if kind == K_HZP:
                c |= PFNZERO
            if sd and b & B_SD:
                c |= SOFT_DIRTY
            pmd[b] = c
    return pte, pte_fast, pmd
