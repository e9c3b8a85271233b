"""Plain value types shared by the compiled core and the pure-Python reference.

Nothing here depends on which implementation is loaded: ``Category``, ``HOLE``,
``Masks``, ``PageRegion`` and ``ScanResult`` are the same objects for both.
"""

from __future__ import annotations

import enum
from typing import Any, NamedTuple

__all__ = [
    "ALL_CATEGORIES",
    "HOLE",
    "Category",
    "Masks",
    "PageRegion",
    "ScanCount",
    "ScanResult",
]


class Category(enum.IntFlag):
    """Page categories, with the kernel's names and values (``PAGE_IS_*``).

    ``WRITTEN`` means "written since tracking was last reset" for every backend.
    """

    WPALLOWED = 1 << 0
    WRITTEN = 1 << 1
    FILE = 1 << 2
    PRESENT = 1 << 3
    SWAPPED = 1 << 4
    PFNZERO = 1 << 5
    HUGE = 1 << 6
    SOFT_DIRTY = 1 << 7
    GUARD = 1 << 8


#: Every category bit the kernel knows (0x1FF); masks outside it are rejected.
ALL_CATEGORIES: int = 0x1FF

#: In 64-bit category input, an item with this bit set is a page with no mapping:
#: it never matches, whatever the masks, and it breaks runs.
HOLE: int = 1 << 63


def _mask_arg(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int or Category, not {type(value).__name__}")
    value = int(value)
    if value < 0 or value & ~ALL_CATEGORIES:
        raise ValueError(
            f"{name}=0x{value:x} has bits outside the known categories (0x{ALL_CATEGORIES:x})"
            if value >= 0
            else f"{name} must not be negative (got {value})"
        )
    return value


class Masks:
    """Which pages match, and which categories are reported for them.

    Two spellings of the same filter:

    * the original four masks: ``Masks(required=, anyof=, excluded=, return_mask=)``;
      a page matches iff it has every ``required`` category, none of the
      ``excluded`` ones, and (when ``anyof`` is non-zero) at least one of ``anyof``;
    * the kernel's form (``struct pm_scan_arg``): ``Masks.from_kernel(inverted=,
      mask=, anyof=, return_mask=)``: with ``x = categories ^ inverted`` a page
      matches iff ``x & mask == mask`` and (``anyof == 0`` or ``x & anyof``).

    The four masks map to the kernel's as ``mask = required | excluded``,
    ``inverted = excluded``, ``anyof = anyof & ~excluded``. When a category is both
    required and excluded, or ``anyof`` is non-zero but lies inside ``excluded``,
    nothing can match:
    :attr:`matches_nothing` is true and :meth:`to_kernel` refuses, since the
    kernel's form has no way to say it.

    ``return_mask`` never takes part in matching: it selects the categories
    reported for each region (and so decides which neighbouring pages merge).
    The default reports every category.
    """

    __slots__ = ("anyof", "inverted", "mask", "matches_nothing", "return_mask")

    inverted: int
    mask: int
    anyof: int
    return_mask: int
    matches_nothing: bool

    def __init__(
        self,
        required: int = 0,
        anyof: int = 0,
        excluded: int = 0,
        return_mask: int = ALL_CATEGORIES,
    ) -> None:
        required = _mask_arg(required, "required")
        anyof = _mask_arg(anyof, "anyof")
        excluded = _mask_arg(excluded, "excluded")
        return_mask = _mask_arg(return_mask, "return_mask")
        self._set(
            inverted=excluded,
            mask=required | excluded,
            anyof=anyof & ~excluded,
            return_mask=return_mask,
            # a category both required and excluded, or an anyof wholly inside
            # excluded, can never be satisfied
            matches_nothing=bool(required & excluded)
            or (anyof != 0 and anyof & ~excluded == 0),
        )

    def _set(self, *, inverted: int, mask: int, anyof: int, return_mask: int,
             matches_nothing: bool) -> None:
        object.__setattr__(self, "inverted", inverted)
        object.__setattr__(self, "mask", mask)
        object.__setattr__(self, "anyof", anyof)
        object.__setattr__(self, "return_mask", return_mask)
        object.__setattr__(self, "matches_nothing", matches_nothing)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Masks is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("Masks is immutable")

    @classmethod
    def from_kernel(
        cls, *, inverted: int = 0, mask: int = 0, anyof: int = 0,
        return_mask: int = ALL_CATEGORIES,
    ) -> Masks:
        """Build from the kernel's ``category_inverted``, ``category_mask``,
        ``category_anyof_mask`` and ``return_mask``, taken as they are."""
        self = cls.__new__(cls)
        self._set(
            inverted=_mask_arg(inverted, "inverted"),
            mask=_mask_arg(mask, "mask"),
            anyof=_mask_arg(anyof, "anyof"),
            return_mask=_mask_arg(return_mask, "return_mask"),
            matches_nothing=False,
        )
        return self

    def to_kernel(self) -> tuple[int, int, int, int]:
        """``(category_inverted, category_mask, category_anyof_mask, return_mask)``.

        Raises ValueError for masks that match nothing (``anyof`` inside
        ``excluded``): the kernel's form cannot express that, so callers check
        :attr:`matches_nothing` first and skip the scan.
        """
        if self.matches_nothing:
            raise ValueError(
                "these masks match nothing (a category both required and excluded, "
                "or anyof inside excluded); "
                "the kernel's form cannot express that: check Masks.matches_nothing"
            )
        return (self.inverted, self.mask, self.anyof, self.return_mask)

    def restrict(self, valid: int) -> Masks:
        """The same filter for a kernel that knows only the ``valid`` categories
        (GUARD arrived in 6.15): its pages never carry the others, so a required
        unknown category matches nothing, an excluded one is always satisfied, and
        unknown ``anyof`` bits drop out (an anyof bit that is inverted is always
        satisfied). The result's masks lie inside ``valid``."""
        if self.matches_nothing or not (self.inverted | self.mask | self.anyof
                                        | self.return_mask) & ~valid:
            return self
        unknown = ~valid & ALL_CATEGORIES
        if self.mask & unknown & ~self.inverted:
            return _masks_from_key(0, 0, 0, self.return_mask & valid, True)
        anyof = self.anyof
        if anyof & unknown & self.inverted:
            anyof = 0                           # always satisfied by an unknown bit
        elif anyof and not anyof & valid:
            return _masks_from_key(0, 0, 0, self.return_mask & valid, True)
        return Masks.from_kernel(inverted=self.inverted & valid, mask=self.mask & valid,
                                 anyof=anyof & valid, return_mask=self.return_mask & valid)

    def matches(self, categories: int) -> bool:
        """Whether one page with these categories matches (HOLE never does)."""
        if self.matches_nothing or categories & HOLE:
            return False
        x = categories ^ self.inverted
        return (x & self.mask) == self.mask and (self.anyof == 0 or bool(x & self.anyof))

    def _key(self) -> tuple[int, int, int, int, bool]:
        return (self.inverted, self.mask, self.anyof, self.return_mask, self.matches_nothing)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Masks):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        def f(v: int) -> str:
            return repr(Category(v)) if v else "0"
        if self.matches_nothing:
            return f"Masks(<matches nothing>, return_mask={f(self.return_mask)})"
        return (f"Masks.from_kernel(inverted={f(self.inverted)}, mask={f(self.mask)}, "
                f"anyof={f(self.anyof)}, return_mask={f(self.return_mask)})")

    def __reduce__(self) -> Any:
        return (_masks_from_key, self._key())


def _masks_from_key(inverted: int, mask: int, anyof: int, return_mask: int,
                    matches_nothing: bool) -> Masks:
    m = Masks.__new__(Masks)
    m._set(inverted=inverted, mask=mask, anyof=anyof, return_mask=return_mask,
           matches_nothing=matches_nothing)
    return m


def coerce_masks(masks: Any) -> Masks:
    """``None`` -> every page, every category; a Masks as it is; else TypeError."""
    if masks is None:
        return Masks()
    if isinstance(masks, Masks):
        return masks
    raise TypeError(f"masks must be a pagescan.Masks or None, not {type(masks).__name__}")


class PageRegion(NamedTuple):
    """One run of pages, as ``struct page_region``: ``[start, end)`` and categories.

    Iterating or indexing a RegionArray gives ``categories`` as a :class:`Category`
    (an ``int`` subclass, so it compares and computes as the plain value does).
    """

    start: int
    end: int
    categories: Category


#: Category(v) of every v in [0, ALL_CATEGORIES], made on first use (Category()
#: costs about a microsecond; a list lookup tens of nanoseconds). The compiled
#: core reads this same list.
_CATEGORY_CACHE: list[Category | None] = [None] * (ALL_CATEGORIES + 1)


def as_category(value: int) -> Category:
    """``Category(value)``, from the cache for the 512 values a scan can report.

    Values with other bits (only in user-built regions: a scan reports categories
    within ``return_mask``, and ``HOLE`` pages never match) keep those bits."""
    if 0 <= value <= ALL_CATEGORIES:
        c = _CATEGORY_CACHE[value]
        if c is None:
            c = _CATEGORY_CACHE[value] = Category(value)
        return c
    return Category(value)


def category_repr(value: int) -> str:
    """``Category.WRITTEN|Category.PRESENT`` (as the README shows regions), ``0``."""
    if not value:
        return "0"
    known = value & ALL_CATEGORIES
    parts = [f"Category.{c.name}" for c in Category if c & known]
    if value & ~ALL_CATEGORIES:
        parts.append(f"0x{value & ~ALL_CATEGORIES:x}")
    return "|".join(parts)


class ScanResult(NamedTuple):
    """What a scan returns: the regions, and where to resume.

    ``walk_end`` is the true resume point: the first matching page that was not
    reported, or the end of the range when everything was.
    """

    regions: Any  # RegionArray of the loaded implementation
    walk_end: int


class ScanCount(NamedTuple):
    """What a scan into a caller's buffer (``out=``) returns.

    ``nregions`` regions were written to the start of ``out`` (``out[:nregions]``;
    a ``RegionArray`` given as ``out`` also gets that length); ``walk_end`` has
    :class:`ScanResult`'s meaning. ``out``'s capacity bounds the answer as
    ``max_regions`` does: a full buffer stops the scan at the next matching page.
    """

    nregions: int
    walk_end: int
