"""Masks.restrict(): the same filter for a kernel that knows fewer categories."""

from hypothesis import given
from hypothesis import strategies as st

from pagescan import ALL_CATEGORIES, Category, Masks

masks_bits = st.integers(0, ALL_CATEGORIES)
VALID = ALL_CATEGORIES & ~Category.GUARD        # a kernel older than 6.15


@given(masks_bits, masks_bits, masks_bits, masks_bits, st.integers(0, VALID))
def test_restrict_keeps_the_answer_for_every_possible_page(inv, mask, anyof, ret, c):
    c &= VALID                                  # such a kernel's pages never carry GUARD
    m = Masks.from_kernel(inverted=inv, mask=mask, anyof=anyof, return_mask=ret)
    r = m.restrict(VALID)
    assert r.matches(c) == m.matches(c)
    if not r.matches_nothing:
        assert not (r.inverted | r.mask | r.anyof | r.return_mask) & ~VALID


@given(masks_bits, masks_bits, masks_bits, masks_bits, st.integers(0, VALID))
def test_restrict_four_mask_form(req, anyof, exc, ret, c):
    c &= VALID
    m = Masks(required=req, anyof=anyof, excluded=exc, return_mask=ret)
    assert m.restrict(VALID).matches(c) == m.matches(c)


def test_restrict_is_identity_when_nothing_is_unknown():
    m = Masks(required=Category.WRITTEN, return_mask=Category.WRITTEN)
    assert m.restrict(VALID) is m
