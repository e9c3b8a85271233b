"""userfaultfd in write-protect mode: register, unregister, write-protect."""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

import numpy as np

from .constants import (B_KIND, B_WP, K_HZP, K_NONE, K_TABLE, K_THP, PAGE_SIZE, PMD_PAGES, P_EXISTS,
                        P_GUARD, P_PRESENT, P_SWAP, P_WP, UFFDIO_REGISTER_MODE_MINOR,
                        UFFDIO_REGISTER_MODE_MISSING, UFFDIO_REGISTER_MODE_WP,
                        UFFD_FEATURE_WP_ASYNC, UFFD_FEATURE_WP_HUGETLBFS_SHMEM,
                        UFFD_FEATURE_WP_UNPOPULATED, USER_TOP)

from .faults import Faults
from .pagetable import _err
from .vma import Vma

if TYPE_CHECKING:
    from .process import SimProcess


class SimUffd:
    """A userfaultfd of a simulated process (write-protect mode only)."""

    def __init__(self, proc: SimProcess, features: int) -> None:
        self._proc: SimProcess | None = proc
        self.features = features
        self.wp_async = bool(features & UFFD_FEATURE_WP_ASYNC)
        self.wp_unpopulated = bool(features & (UFFD_FEATURE_WP_UNPOPULATED
                                               | UFFD_FEATURE_WP_ASYNC))

    @property
    def closed(self) -> bool:
        return self._proc is None

    def _p(self) -> SimProcess:
        if self._proc is None:
            raise OSError(errno.EBADF, "the userfaultfd is closed")
        return self._proc

    def register(self, addr: int, length: int, mode: int = UFFDIO_REGISTER_MODE_WP) -> None:
        """UFFDIO_REGISTER."""
        self._p()._uffd_register(self, addr, length, mode)

    def unregister(self, addr: int, length: int) -> None:
        """UFFDIO_UNREGISTER."""
        self._p()._uffd_unregister(self, addr, length)

    def writeprotect(self, addr: int, length: int, protect: bool = True) -> None:
        """UFFDIO_WRITEPROTECT (mode WP to protect, 0 to unprotect)."""
        self._p()._uffd_writeprotect(addr, length, protect)

    def close(self) -> None:
        """close(): every VMA registered with it is unregistered."""
        p, self._proc = self._proc, None
        if p is not None:
            p._uffd_release(self)

    def __enter__(self) -> SimUffd:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class UffdMixin(Faults):
    """The userfaultfd system calls of a simulated process."""

    def userfaultfd(self, features: int = UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED
                    ) -> SimUffd:
        """userfaultfd(2) + UFFDIO_API with ``features`` (WP_ASYNC implies
        WP_UNPOPULATED, as the kernel does)."""
        self._live()
        known = UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED | \
            UFFD_FEATURE_WP_HUGETLBFS_SHMEM
        if features & ~known:
            raise NotImplementedError(f"userfaultfd features 0x{features & ~known:x} "
                                      "are not simulated")
        if features & UFFD_FEATURE_WP_ASYNC and not self.config.uffd_wp_async:
            raise _err(errno.EINVAL, "UFFDIO_API: this kernel lacks UFFD_FEATURE_WP_ASYNC")
        uf = SimUffd(self, features)  # type: ignore[arg-type]  # (self is a SimProcess)
        self._uffds.add(uf)
        return uf

    def _uffd_range(self, addr: int, length: int, what: str) -> tuple[int, int]:
        if addr % PAGE_SIZE or length <= 0 or length % PAGE_SIZE:
            raise _err(errno.EINVAL, f"{what}: the range is empty or not page-aligned")
        if addr + length > USER_TOP:
            raise _err(errno.EINVAL, f"{what}: the range leaves user space")
        a = self._index(addr)
        return max(a, 0), min(a + length // PAGE_SIZE, self.npages)

    def _uffd_register(self, uf: SimUffd, addr: int, length: int, mode: int) -> None:
        if mode & ~(UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_WP
                    | UFFDIO_REGISTER_MODE_MINOR) or not mode:
            raise _err(errno.EINVAL, "UFFDIO_REGISTER: bad mode")
        if mode != UFFDIO_REGISTER_MODE_WP:
            raise NotImplementedError("only UFFDIO_REGISTER_MODE_WP is simulated")
        a, b = self._uffd_range(addr, length, "UFFDIO_REGISTER")
        vs = self._vmas_in(a, b) if a < b else []
        if not vs:
            raise _err(errno.EINVAL, "UFFDIO_REGISTER: no mapping in the range")
        for v in vs:
            if v.uffd is not None and v.uffd is not uf:
                raise _err(errno.EBUSY, "UFFDIO_REGISTER: registered with another userfaultfd")
        self._modify(a, b, lambda v: v.uffd is not uf, lambda v: setattr(v, "uffd", uf))

    def _clear_uffd(self, v: Vma) -> None:
        """userfaultfd_clear_vma(): uffd-wp bits and markers go, then the context."""
        self._wp_range(v, v.start, v.end, False)
        v.uffd = None

    def _uffd_unregister(self, uf: SimUffd, addr: int, length: int) -> None:
        a, b = self._uffd_range(addr, length, "UFFDIO_UNREGISTER")
        vs = self._vmas_in(a, b) if a < b else []
        if not vs:
            raise _err(errno.EINVAL, "UFFDIO_UNREGISTER: no mapping in the range")
        for v in vs:
            if v.uffd is not None and v.uffd is not uf:
                # userfaultfd_unregister(): not through another userfaultfd than the
                # one that registered; nothing in the range is unregistered
                raise _err(errno.EINVAL, "UFFDIO_UNREGISTER: the range is registered "
                           "with another userfaultfd")
        self._modify(a, b, lambda v: v.uffd is not None, self._clear_uffd)

    def _uffd_release(self, uf: SimUffd) -> None:
        if self.exited:
            return
        changed = [v for v in self._vmas if v.uffd is uf]
        for v in changed:
            self._clear_uffd(v)
        self._try_merge(changed)

    def _uffd_writeprotect(self, addr: int, length: int, protect: bool) -> None:
        self._live()
        a, b = self._uffd_range(addr, length, "UFFDIO_WRITEPROTECT")
        vs = self._vmas_in(a, b) if a < b else []
        if not vs:
            raise _err(errno.ENOENT, "UFFDIO_WRITEPROTECT: no mapping in the range")
        for v in vs:
            if v.uffd is None:
                raise _err(errno.ENOENT, "UFFDIO_WRITEPROTECT: a mapping in the range is not "
                           "registered for write-protect")
            self._wp_range(v, max(v.start, a), min(v.end, b), protect)

    def _wp_range(self, v: Vma, a: int, b: int, protect: bool) -> None:
        """uffd_wp_range() / change_protection(MM_CP_UFFD_WP[_RESOLVE]) over [a, b)."""
        pte, pmd = self._pte, self._pmd
        markers = v.use_markers()
        for blk in range(a // PMD_PAGES, (b - 1) // PMD_PAGES + 1):
            lo, hi = max(a, blk * PMD_PAGES), min(b, (blk + 1) * PMD_PAGES)
            kind = pmd[blk] & B_KIND
            if kind in (K_THP, K_HZP):
                if hi - lo == PMD_PAGES:
                    pmd[blk] = (pmd[blk] | B_WP) if protect else (pmd[blk] & (0xFF ^ B_WP))
                    continue
                self._split_pmd(blk)
            elif kind == K_NONE:
                if not (protect and markers):
                    continue
                pmd[blk] = K_TABLE
            seg = pte[lo:hi]
            if protect:
                exists = seg & P_EXISTS != 0
                upd = exists & (seg & P_GUARD == 0)
                seg[upd] |= P_WP
                if markers:
                    seg[~exists] = P_WP
            else:
                marker = (seg & P_WP != 0) & (seg & (P_PRESENT | P_SWAP | P_GUARD) == 0)
                seg[marker] = 0
                upd = seg & P_GUARD == 0
                seg[upd] &= ~np.uint16(P_WP)
