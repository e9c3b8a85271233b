"""The address space of a simulated process: mmap, munmap, mprotect, madvise,
mremap, and the kernel's VMA split and merge rules."""

from __future__ import annotations

import errno
from typing import Any

import numpy as np

from .constants import (ANON, B_KIND, B_SD, B_SHARED, B_WP, FILE_PRIVATE, K_HZP, K_NONE, K_TABLE,
                        K_THP, MADV_DONTNEED, MADV_GUARD_INSTALL, MADV_GUARD_REMOVE, MADV_HUGEPAGE,
                        MADV_NOHUGEPAGE, MADV_PAGEOUT, MAP_ANONYMOUS, MAP_FIXED,
                        MAP_FIXED_NOREPLACE, MAP_PRIVATE, MAP_SHARED, MREMAP_DONTUNMAP,
                        MREMAP_FIXED, MREMAP_MAYMOVE, PAGE_SHIFT, PAGE_SIZE, PMD_PAGES, PROT_EXEC,
                        PROT_READ, PROT_WRITE, P_EXISTS, P_FILE, P_GUARD, P_PRESENT, P_SD, P_SHARED,
                        P_SWAP, P_WP, SHMEM, THP_DEFAULT, THP_HUGE, THP_NOHUGE, USER_TOP)
from .errors import KernelHang

from .pagetable import ANON_VMA_IDS, PageTables, _err
from .vma import SimFile, Vma, VmaInfo


class AddressSpace(PageTables):
    """VMAs: creation, change, split and merge."""

    def _anon_prepare(self, v: Vma) -> None:
        """anon_vma_prepare(): reuse a compatible neighbour's anon_vma, next first."""
        if v.anon_vma:
            return
        prev, nxt = self._neighbours(v)
        pairs: list[tuple[Vma, Vma, Vma]] = []
        if nxt is not None:
            pairs.append((nxt, v, nxt))
        if prev is not None:
            pairs.append((prev, prev, v))
        for other, a, b in pairs:
            if not other.anon_vma or other.fork_child:
                continue
            if (a.end == b.start and a.file is b.file and a.shared == b.shared
                    and a.thp == b.thp and a.uffd is b.uffd and a.account == b.account
                    and b.pgoff == a.pgoff + (b.start - a.start)):
                v.anon_vma = other.anon_vma
                return
        v.anon_vma = next(ANON_VMA_IDS)

    def _split_vma(self, v: Vma, at: int) -> Vma:
        """Split v at page ``at`` (v.start < at < v.end); returns the upper part."""
        self._split_pmds_at(at)
        upper = v.copy()
        upper.start = at
        upper.pgoff = v.pgoff + (at - v.start)
        v.end = at
        self._vmas.append(upper)
        self._rebuild()
        return upper

    def _isolate(self, a: int, b: int) -> list[Vma]:
        """Split VMAs at a and b; the VMAs now exactly inside [a, b)."""
        vs = self._vmas_in(a, b)
        if vs and vs[0].start < a:
            self._split_vma(vs[0], a)
        vs = self._vmas_in(a, b)
        if vs and vs[-1].end > b:
            self._split_vma(vs[-1], b)
        return self._vmas_in(a, b)

    def _modify(self, a: int, b: int, needs: Any, apply: Any) -> None:
        """vma_modify() over [a, b): each VMA whose flags must change is split to
        the range, changed, and merged with its neighbours where it can."""
        for v in self._vmas_in(a, b):
            if v not in self._vmas or not needs(v):
                continue
            lo, hi = max(a, v.start), min(b, v.end)
            if v.start < lo:
                v = self._split_vma(v, lo)
            if v.end > hi:
                self._split_vma(v, hi)
            apply(v)
            self._try_merge([v])

    @staticmethod
    def _anon_ok(a1: int, a2: int, owner: Vma | None) -> bool:
        """is_mergeable_anon_vma()."""
        if (not a1 or not a2) and (owner is None or not (owner.anon_vma and owner.fork_child)):
            return True
        return a1 == a2

    def _mergeable(self, x: Vma, y: Vma) -> bool:
        """Whether x and y (x right before y) can be one VMA."""
        if x.end != y.start or x.flags_key() != y.flags_key() or x.file is not y.file:
            return False
        if x.uffd is not y.uffd or x.kind != y.kind:
            return False
        if y.pgoff != x.pgoff + (x.end - x.start):
            return False
        return self._anon_ok(x.anon_vma, y.anon_vma, x if x.anon_vma else y)

    def _merge(self, x: Vma, y: Vma, *, softdirty: bool | None = None) -> Vma:
        """y is absorbed into x (x expands); the result keeps x's VM_SOFTDIRTY unless
        ``softdirty`` says otherwise."""
        x.end = y.end
        x.anon_vma = x.anon_vma or y.anon_vma
        x.fork_child = x.fork_child or y.fork_child
        x.maybe_guard = x.maybe_guard or y.maybe_guard
        if softdirty is not None:
            x.softdirty = softdirty
        self._vmas.remove(y)
        self._rebuild()
        return x

    def _try_merge(self, vs: list[Vma], *, new: bool = False) -> None:
        """Merge each VMA of ``vs`` (modified or new, in order) with its neighbours,
        as vma_modify() / vma_merge_new_range() do. The merged VMA takes the
        VM_SOFTDIRTY of the VMA that was modified or created (a new mapping is
        soft-dirty; checked on 6.1 and 6.12: a clean neighbour merged into a
        dirty one becomes dirty, and the other way round)."""
        for v in list(vs):
            if v not in self._vmas:
                continue
            sd = True if new else v.softdirty
            prev, nxt = self._neighbours(v)
            if prev is not None and nxt is not None and self._mergeable(prev, v) \
                    and self._mergeable(v, nxt) and not self._anon_ok(prev.anon_vma,
                                                                      nxt.anon_vma, None):
                nxt = None                       # prev and next are incompatible: left only
            cur = v
            if prev is not None and self._mergeable(prev, cur):
                cur = self._merge(prev, cur, softdirty=sd)
            if nxt is not None and self._mergeable(cur, nxt):
                if cur is v:                     # next absorbs v
                    nxt.start, nxt.pgoff = cur.start, cur.pgoff
                    nxt.anon_vma = nxt.anon_vma or cur.anon_vma
                    nxt.maybe_guard = nxt.maybe_guard or cur.maybe_guard
                    nxt.fork_child = nxt.fork_child or cur.fork_child
                    nxt.softdirty = sd
                    self._vmas.remove(cur)
                    self._rebuild()
                else:
                    self._merge(cur, nxt, softdirty=sd)

    def memfd(self, size: int, name: str = "memfd") -> SimFile:
        """A new tmpfs file (memfd_create + ftruncate)."""
        return SimFile(size, name)

    def _find_gap(self, n: int, hint: int | None) -> int:
        """get_unmapped_area(), top-down inside the window."""
        if hint is not None and 0 <= hint and hint + n <= self.npages \
                and not self._vmas_in(hint, hint + n):
            return hint
        top = self.npages
        for v in reversed(self._vmas):
            if top - v.end >= n:
                return top - n
            top = v.start
        if top >= n:
            return top - n
        raise _err(errno.ENOMEM, "mmap: no room left in the simulated address window")

    def mmap(self, length: int, prot: int = PROT_READ | PROT_WRITE,
             flags: int = MAP_PRIVATE | MAP_ANONYMOUS, *, addr: int = 0,
             file: SimFile | None = None, offset: int = 0) -> int:
        """mmap(2); returns the address. ``file`` for a file mapping (not anonymous)."""
        self._live()
        if length <= 0:
            raise _err(errno.EINVAL, "mmap: length is zero")
        n = -(-length // PAGE_SIZE)
        typ = flags & (MAP_SHARED | MAP_PRIVATE)
        if typ not in (MAP_SHARED, MAP_PRIVATE):
            raise _err(errno.EINVAL, "mmap: exactly one of MAP_SHARED and MAP_PRIVATE")
        if prot & ~(PROT_READ | PROT_WRITE | PROT_EXEC):
            raise _err(errno.EINVAL, "mmap: unknown prot bits")
        anon = bool(flags & MAP_ANONYMOUS)
        if not anon and file is None:
            raise _err(errno.EBADF, "mmap: a file mapping needs file=")
        if offset % PAGE_SIZE or offset < 0:
            raise _err(errno.EINVAL, "mmap: offset is not page-aligned")
        fixed = flags & (MAP_FIXED | MAP_FIXED_NOREPLACE)
        if fixed:
            if addr % PAGE_SIZE:
                raise _err(errno.EINVAL, "mmap: MAP_FIXED address is not page-aligned")
            if addr + n * PAGE_SIZE > USER_TOP:
                raise _err(errno.ENOMEM, "mmap: the range leaves user space")
            a = self._index(addr)
            if not self._in_window(a, a + n):
                raise _err(errno.ENOMEM, "mmap: outside the simulated address window "
                           f"[0x{self.base:x}, 0x{self.base + self.size:x})")
            if flags & MAP_FIXED_NOREPLACE and self._vmas_in(a, a + n):
                raise _err(errno.EEXIST, "mmap: MAP_FIXED_NOREPLACE over an existing mapping")
            if self._vmas_in(a, a + n):
                self._unmap(a, a + n)
        else:
            hint = self._index(addr) if addr and addr % PAGE_SIZE == 0 else None
            a = self._find_gap(n, hint)
        if anon and typ == MAP_SHARED:
            kind, f, pgoff = SHMEM, SimFile(n * PAGE_SIZE, "dev/zero"), 0
        elif anon:
            kind, f, pgoff = ANON, None, (self.base >> PAGE_SHIFT) + a
        else:
            kind, f, pgoff = (SHMEM if typ == MAP_SHARED else FILE_PRIVATE), file, \
                offset // PAGE_SIZE
        v = Vma(a, a + n, kind, prot, typ == MAP_SHARED, f, pgoff)
        self._vmas.append(v)
        self._rebuild()
        self._try_merge([v], new=True)
        return self._addr(a)

    def _unmap(self, a: int, b: int) -> None:
        vs = self._isolate(a, b)
        for v in vs:
            self._zap(v, v.start, v.end, "unmap")
            self._vmas.remove(v)
        self._rebuild()
        if vs:
            self._free_tables(vs[0].start, vs[-1].end)

    def munmap(self, addr: int, length: int) -> None:
        """munmap(2)."""
        self._live()
        a, b = self._pages(addr, length, "munmap")
        self._unmap(max(a, 0), min(b, self.npages))

    def _walk_mapped(self, a: int, b: int) -> tuple[list[Vma], bool]:
        """The VMAs intersecting [a, b) and whether [a, b) has unmapped parts."""
        vs = self._vmas_in(a, b)
        covered = sum(min(v.end, b) - max(v.start, a) for v in vs)
        return vs, covered != b - a

    def mprotect(self, addr: int, length: int, prot: int) -> None:
        """mprotect(2): applied VMA by VMA up to the first unmapped page (ENOMEM)."""
        self._live()
        if addr % PAGE_SIZE:
            raise _err(errno.EINVAL, "mprotect: address is not page-aligned")
        if prot & ~(PROT_READ | PROT_WRITE | PROT_EXEC):
            raise _err(errno.EINVAL, "mprotect: unknown prot bits")
        a, b = self._pages(addr, length, "mprotect", allow_zero=True)
        if a == b:
            return
        first = self._vma_at(a) if 0 <= a < self.npages else None
        if first is None:
            raise _err(errno.ENOMEM, "mprotect: the range starts in unmapped memory")
        stop = a
        for v in self._vmas_in(a, b):
            if v.start > stop:
                break
            stop = v.end
        stop = min(stop, b)
        def apply(v: Vma) -> None:
            # mprotect_fixup(): making a private mapping writable charges it
            # (VM_ACCOUNT); only an anonymous one without anon_vma is uncharged
            if prot & PROT_WRITE and not v.shared:
                v.account = True
            elif not prot & PROT_WRITE and v.anonymous and not v.anon_vma:
                v.account = False
            v.prot = prot

        self._modify(a, stop, lambda v: v.prot != prot, apply)
        if stop < b:
            raise _err(errno.ENOMEM, "mprotect: the range has unmapped pages")

    def madvise(self, addr: int, length: int, advice: int) -> None:
        """madvise(2) for DONTNEED, PAGEOUT, HUGEPAGE, NOHUGEPAGE, GUARD_INSTALL and
        GUARD_REMOVE. Mapped parts are advised; unmapped parts give ENOMEM."""
        self._live()
        if addr % PAGE_SIZE:
            raise _err(errno.EINVAL, "madvise: address is not page-aligned")
        known = (MADV_DONTNEED, MADV_PAGEOUT, MADV_HUGEPAGE, MADV_NOHUGEPAGE,
                 MADV_GUARD_INSTALL, MADV_GUARD_REMOVE)
        if advice not in known:
            if advice in range(0, 26) or advice in (100, 101):
                raise NotImplementedError(f"madvise advice {advice} is not simulated")
            raise _err(errno.EINVAL, f"madvise: unknown advice {advice}")
        if advice in (MADV_GUARD_INSTALL, MADV_GUARD_REMOVE) and not self.config.guard_regions:
            raise _err(errno.EINVAL, "madvise: guard regions need Linux 6.13+")
        a, b = self._pages(addr, length, "madvise", allow_zero=True)
        if a == b:
            return
        a, b = max(a, 0), min(b, self.npages)
        vs, holes = self._walk_mapped(a, b)
        if not vs:
            raise _err(errno.ENOMEM, "madvise: the range is not mapped")
        if advice == MADV_GUARD_INSTALL:
            self._guard_check(vs, a, b)
        if advice in (MADV_HUGEPAGE, MADV_NOHUGEPAGE):
            want = THP_HUGE if advice == MADV_HUGEPAGE else THP_NOHUGE
            self._modify(a, b, lambda v: v.thp != want, lambda v: setattr(v, "thp", want))
        else:
            for v in vs:
                lo, hi = max(v.start, a), min(v.end, b)
                if advice == MADV_DONTNEED:
                    self._zap(v, lo, hi, "dontneed")
                elif advice == MADV_PAGEOUT:
                    self._pageout(v, lo, hi)
                elif advice == MADV_GUARD_INSTALL:
                    self._guard_install(v, lo, hi)
                else:
                    self._guard_remove(lo, hi)
        if holes:
            raise _err(errno.ENOMEM, "madvise: the range has unmapped pages")

    def _guard_check(self, vs: list[Vma], a: int, b: int) -> None:
        """MADV_GUARD_INSTALL loops forever in a uffd-wp registered file-backed VMA
        that holds uffd-wp protected entries (the zap leaves uffd-wp markers, which
        the install walk will not overwrite, so it zaps again)."""
        for v in vs:
            if v.anonymous or v.uffd is None:
                continue
            lo, hi = max(v.start, a), min(v.end, b)
            pm = self._blocks(lo, hi)
            seg = self._pte[lo:hi]
            wp = (pm & B_KIND == K_TABLE) & (seg & P_WP != 0) & (seg & P_GUARD == 0)
            wp |= (pm & B_KIND != K_TABLE) & (pm & B_WP != 0)
            if wp.any():
                i = lo + int(np.argmax(wp))
                raise KernelHang(f"madvise(MADV_GUARD_INSTALL) over the uffd-wp protected "
                                 f"page 0x{self._addr(i):x} of a file-backed VMA never "
                                 "returns on Linux 6.18 (zap leaves a uffd-wp marker, the "
                                 "install walk refuses it, and retries forever)")

    def _guard_install(self, v: Vma, lo: int, hi: int) -> None:
        if v.anonymous:
            self._anon_prepare(v)
        v.maybe_guard = True                 # fork copies its page tables from now on
        self._zap(v, lo, hi, "guard")
        for blk in range(lo // PMD_PAGES, (hi - 1) // PMD_PAGES + 1):
            if self._pmd[blk] & B_KIND == K_NONE:
                self._pmd[blk] = K_TABLE
        seg = self._pte[lo:hi]
        seg[seg & P_GUARD == 0] = P_GUARD

    def _guard_remove(self, lo: int, hi: int) -> None:
        seg = self._pte[lo:hi]
        tab = self._blocks(lo, hi) & B_KIND == K_TABLE
        seg[tab & (seg & P_GUARD != 0)] = 0

    def _pageout(self, v: Vma, lo: int, hi: int) -> None:
        """MADV_PAGEOUT without swap: anonymous large folios are split (zero-filled
        subpages become the zero page); page-cache pages mapped once are unmapped
        (they stay in the cache)."""
        pte, pmd = self._pte, self._pmd
        for blk in range(lo // PMD_PAGES, (hi - 1) // PMD_PAGES + 1):
            b = int(pmd[blk])
            if b & B_KIND == K_THP and not b & B_SHARED:
                self._split_folio(int(self._folio[blk * PMD_PAGES]))
        seg = pte[lo:hi]
        tab = self._blocks(lo, hi) & B_KIND == K_TABLE
        fol = self._folio[lo:hi]
        big = tab & (fol != 0) & (seg & P_PRESENT != 0) & (seg & P_SHARED == 0)
        for fid in np.unique(fol[big]):
            self._split_folio(int(fid))
        seg = pte[lo:hi]
        f = v.file
        if f is None:
            return
        filep = tab & (seg & P_PRESENT != 0) & (seg & P_FILE != 0)
        if not filep.any():
            return
        f0 = v.fidx(lo)
        k = max(min(hi - lo, f.npages - f0), 0)      # no page past the end of the file
        filep = filep[:k]
        seg = seg[:k]
        mc = f.mapcount[f0:f0 + k]
        out = filep & (mc == 1)
        mc[out] = 0
        # a clean page (never written) leaves the page cache; a dirty one cannot be
        # written out without swap and stays
        cached = f.cached[f0:f0 + k]
        cached[out & ~f.dirty[f0:f0 + k]] = False
        if v.uffd is not None:
            seg[out] = np.where(seg[out] & P_WP != 0, P_WP, 0).astype(np.uint16)
        else:
            seg[out] = 0

    def mremap(self, old_addr: int, old_size: int, new_size: int, flags: int = 0,
               new_addr: int = 0) -> int:
        """mremap(2): shrink, grow in place, or move (MREMAP_MAYMOVE, MREMAP_FIXED)."""
        self._live()
        if flags & ~(MREMAP_MAYMOVE | MREMAP_FIXED | MREMAP_DONTUNMAP):
            raise _err(errno.EINVAL, "mremap: unknown flags")
        if flags & MREMAP_FIXED and not flags & MREMAP_MAYMOVE:
            raise _err(errno.EINVAL, "mremap: MREMAP_FIXED needs MREMAP_MAYMOVE")
        if flags & MREMAP_DONTUNMAP:
            raise NotImplementedError("MREMAP_DONTUNMAP is not simulated")
        if old_addr % PAGE_SIZE:
            raise _err(errno.EINVAL, "mremap: old address is not page-aligned")
        on = -(-old_size // PAGE_SIZE)
        nn = -(-new_size // PAGE_SIZE)
        if nn == 0:
            raise _err(errno.EINVAL, "mremap: new size is zero")
        if on == 0:
            raise NotImplementedError("mremap with old_size 0 (duplicating a shared "
                                      "mapping) is not simulated")
        a = self._index(old_addr)
        d = 0
        if flags & MREMAP_FIXED:
            if new_addr % PAGE_SIZE:
                raise _err(errno.EINVAL, "mremap: new address is not page-aligned")
            if new_addr + nn * PAGE_SIZE > USER_TOP:
                raise _err(errno.EINVAL, "mremap: the new range leaves user space")
            d = self._index(new_addr)
            if d < a + on and a < d + nn:
                raise _err(errno.EINVAL, "mremap: old and new ranges overlap")
            if not self._in_window(d, d + nn):
                raise _err(errno.ENOMEM, "mremap: outside the simulated address window")
        # check_prep_vma(): the old address must be mapped; a move or a growth must
        # not cross the end of its VMA (a shrink may: its tail is just unmapped)
        v = self._vma_at(a) if 0 <= a < self.npages else None
        if v is None:
            raise _err(errno.EFAULT, "mremap: the old address is not mapped")
        if flags & MREMAP_FIXED and on == nn and a + on > v.end \
                and self.config.mremap_multi_vma:
            return self._move_multi(a, on, d)
        if flags & MREMAP_FIXED or nn > on:
            if min(on, nn) > v.end - a:
                raise _err(errno.EFAULT, "mremap: the old range is not one mapping")
        if flags & MREMAP_FIXED:
            self._unmap(d, d + nn)
            if on > nn:
                self._unmap(a + nn, a + on)
                on = nn
            v = self._vma_at(a)
            assert v is not None
            return self._move(v, a, on, d, nn)
        if nn <= on:
            if nn < on:
                self._unmap(a + nn, a + on)
            return old_addr
        if v.end == a + on and a + nn <= self.npages and not self._vmas_in(a + on, a + nn):
            v.end = a + nn                                   # grow in place
            self._rebuild()
            nxt = self._neighbours(v)[1]
            if nxt is not None and self._mergeable(v, nxt):
                self._merge(v, nxt)
            return old_addr
        if not flags & MREMAP_MAYMOVE:
            raise _err(errno.ENOMEM, "mremap: cannot grow in place")
        d = self._find_gap(nn, None)
        return self._move(v, a, on, d, nn)

    def _move_multi(self, a: int, n: int, d: int) -> int:
        """Linux 6.17+: a MREMAP_FIXED move without resize may span several VMAs and
        the gaps between them; each VMA moves to the same offset at the target (only
        its own target range is unmapped first). A VMA registered with a userfaultfd
        stops the move with EFAULT (the VMAs before it stay moved)."""
        for v in self._vmas_in(a, a + n):
            if v.uffd is not None:
                raise _err(errno.EFAULT, "mremap: a multi-VMA move over a userfaultfd "
                           "registered mapping")
            lo, hi = max(a, v.start), min(a + n, v.end)
            t = d + (lo - a)
            self._unmap(t, t + (hi - lo))
            w = self._vma_at(lo)
            assert w is not None
            self._move(w, lo, hi - lo, t, hi - lo)
        return self._addr(d)

    def _move(self, v: Vma, a: int, on: int, d: int, nn: int) -> int:
        """move_vma(): [a, a+on) of v moves to d, as a VMA of nn pages.

        As the kernel does it: copy_vma() makes (or merges) the new VMA -- it may
        merge with v itself -- the page tables move, the new VMA loses its
        userfaultfd context, and only then is the old range unmapped."""
        src = v
        new = src.copy()
        if new.anonymous and not new.anon_vma:
            new.pgoff = (self.base >> PAGE_SHIFT) + d
        else:
            new.pgoff = src.pgoff + (a - src.start)
        new.start, new.end = d, d + nn
        # without UFFD_FEATURE_EVENT_REMAP the moved PTEs lose their uffd-wp state,
        # and the new VMA its registration -- after copy_vma() merged it
        clear_wp = src.uffd is not None
        pte, pmd = self._pte, self._pmd
        off = 0
        while off < on:
            s, t = a + off, d + off
            ext = min(PMD_PAGES - s % PMD_PAGES, PMD_PAGES - t % PMD_PAGES, on - off)
            sb, tb = s // PMD_PAGES, t // PMD_PAGES
            kind = pmd[sb] & B_KIND
            if kind == K_NONE:
                off += ext
                continue
            if ext == PMD_PAGES and kind in (K_THP, K_HZP) and pmd[tb] & B_KIND == K_NONE:
                b = int(pmd[sb])
                if clear_wp:
                    b &= ~B_WP
                pmd[tb] = b | B_SD
                pte[t:t + ext] = pte[s:s + ext]
                self._folio[t:t + ext] = self._folio[s:s + ext]
                pmd[sb] = K_NONE
                pte[s:s + ext] = 0
                self._folio[s:s + ext] = 0
                off += ext
                continue
            if kind in (K_THP, K_HZP):
                self._split_pmd(sb)
            whole_table = (ext == PMD_PAGES and not clear_wp
                           and pmd[tb] & B_KIND == K_NONE)
            if pmd[tb] & B_KIND == K_NONE:
                pmd[tb] = K_TABLE
            seg = pte[s:s + ext].copy()
            if not whole_table:                  # move_ptes(): per PTE
                exists = seg & P_EXISTS != 0
                seg[exists] |= P_SD
                if clear_wp:
                    marker = (seg & P_WP != 0) & (seg & (P_PRESENT | P_SWAP | P_GUARD) == 0)
                    seg[marker] = 0
                    seg &= ~np.uint16(P_WP)
            else:                                # move_normal_pmd(): the table moves
                pmd[sb] = K_NONE
            pte[t:t + ext] = seg
            self._folio[t:t + ext] = self._folio[s:s + ext]
            pte[s:s + ext] = 0
            self._folio[s:s + ext] = 0
            off += ext
        self._vmas.append(new)
        self._rebuild()
        self._try_merge([new])
        if clear_wp:
            w = self._vma_at(d)
            assert w is not None
            w.uffd = None                         # mremap_userfaultfd_prep()
        self._unmap(a, a + on)
        return self._addr(d)

    def maps(self) -> list[VmaInfo]:
        """The VMAs, as /proc/PID/maps lists them (with the model's extra facts)."""
        out = []
        for v in self._vmas:
            perms = "".join((("r" if v.prot & PROT_READ else "-"),
                             ("w" if v.prot & PROT_WRITE else "-"),
                             ("x" if v.prot & PROT_EXEC else "-"),
                             ("s" if v.shared else "p")))
            offset = v.pgoff * PAGE_SIZE if v.file is not None else 0
            thp = {THP_DEFAULT: "", THP_HUGE: "hg", THP_NOHUGE: "nh"}[v.thp]
            out.append(VmaInfo(self._addr(v.start), self._addr(v.end), perms, offset, v.kind,
                               thp, v.uffd is not None, v.softdirty, bool(v.anon_vma)))
        return out
