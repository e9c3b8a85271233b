"""Mask translation: the caller's filter (WRITTEN = soft-dirty) as a PAGEMAP_SCAN
filter on the kernel's SOFT_DIRTY bit, and back."""

from __future__ import annotations

from ..._types import ALL_CATEGORIES, Category, Masks

__all__ = ["SD", "WSD", "W", "fix_bit", "kernel_masks", "user_categories", "with_required"]

W = int(Category.WRITTEN)
SD = int(Category.SOFT_DIRTY)
WSD = W | SD


def user_categories(kernel_cats: int, return_mask: int = ALL_CATEGORIES) -> int:
    """A PAGEMAP_SCAN category value in this backend's terms: the kernel's WRITTEN
    (any present page of an unregistered VMA) is dropped, SOFT_DIRTY gives WRITTEN."""
    c = kernel_cats & ~WSD
    if kernel_cats & SD:
        c |= WSD
    return c & return_mask


def kernel_masks(m: Masks, *, with_soft_dirty: bool = False,
                 kernel_categories: int = ALL_CATEGORIES) -> Masks | None:
    """The caller's filter as a PAGEMAP_SCAN filter, where WRITTEN and SOFT_DIRTY are
    one bit (the kernel's SOFT_DIRTY). ``None``: nothing can match.
    ``kernel_categories``: the categories the kernel knows (before 6.15 there is no
    GUARD, and a mask with its bit is EINVAL): the others are 0 on every page.

    With ``s`` the soft-dirty bit, each of ``s = 0`` and ``s = 1`` reduces the
    caller's condition to one on the other bits (the ``mask`` part is the same for
    both; the ``anyof`` part is: none, the other ``anyof`` bits, or impossible), and
    the pair is written back as a kernel filter on SOFT_DIRTY. ``return_mask``
    reports SOFT_DIRTY when WRITTEN or SOFT_DIRTY is asked for (or
    ``with_soft_dirty``: the caller needs the bit to know what to reset).
    """
    for bit in Category:
        if not kernel_categories & bit:
            fixed = fix_bit(m, int(bit), 0)
            if fixed is None:
                return None
            m = fixed
    if m.matches_nothing:
        return None
    inv, mask, anyof = m.inverted, m.mask, m.anyof
    rest_mask, rest_anyof, rest_inv = mask & ~WSD, anyof & ~WSD, inv & ~WSD

    def reduce(s: int) -> str:           # "none" | "rest" | "false"
        for b in (W, SD):
            if mask & b and not (s ^ bool(inv & b)):
                return "false"
        if not anyof:
            return "none"
        if any(anyof & b and (s ^ bool(inv & b)) for b in (W, SD)):
            return "none"
        return "rest" if rest_anyof else "false"

    r0, r1 = reduce(0), reduce(1)
    k_inv, k_mask, k_anyof = rest_inv, rest_mask, 0
    if r0 == r1 == "false":
        return None
    if r0 == r1:
        k_anyof = rest_anyof if r0 == "rest" else 0
    elif "false" in (r0, r1):
        ok = 0 if r1 == "false" else 1                  # the one value of s that can match
        k_mask |= SD
        k_inv |= SD if ok == 0 else 0
        k_anyof = rest_anyof if (r0 if ok == 0 else r1) == "rest" else 0
    else:                                               # one "none", the other "rest"
        free = 0 if r0 == "none" else 1                 # the value of s that satisfies anyof
        k_anyof = rest_anyof | SD
        k_inv |= SD if free == 0 else 0
    ret = m.return_mask
    k_ret = ret & ~WSD & kernel_categories
    if ret & WSD or with_soft_dirty:
        k_ret |= SD
    return Masks.from_kernel(inverted=k_inv, mask=k_mask, anyof=k_anyof, return_mask=k_ret)


def fix_bit(m: Masks, bit: int, value: int) -> Masks | None:
    """``m`` for pages whose ``bit`` is always ``value``, with the bit taken out of
    the filter; ``None`` when nothing can match."""
    if m.matches_nothing:
        return None
    inv, mask, anyof = m.inverted, m.mask, m.anyof
    x = bool(value) ^ bool(inv & bit)          # the bit after inversion
    if mask & bit and not x:
        return None
    mask &= ~bit
    if anyof & bit:
        if x:
            anyof = 0                          # anyof is satisfied by the bit
        else:
            anyof &= ~bit
            if not anyof:
                return None
    return Masks.from_kernel(inverted=inv & ~bit, mask=mask, anyof=anyof,
                             return_mask=m.return_mask)


def with_required(m: Masks, bit: int) -> Masks | None:
    """``m`` and also "has ``bit``", reporting no categories (``return_mask=0``);
    ``None`` when nothing can match."""
    r = fix_bit(m, bit, 1)
    if r is None:
        return None
    return Masks.from_kernel(inverted=r.inverted, mask=r.mask | bit, anyof=r.anyof,
                             return_mask=0)
