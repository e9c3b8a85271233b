"""JSON-able descriptions shared by the command (``pagescan.cli``) and the comparison
(``pagescan.compare``): category names and a backend's capabilities."""

from __future__ import annotations

import dataclasses
from typing import Any

from ._types import Category
from .backends import Capabilities

__all__ = ["capabilities_json", "category_names"]


def category_names(value: int) -> list[str]:
    """The names of the categories set in ``value`` (``["WRITTEN", "PRESENT"]``)."""
    return [c.name for c in Category if value & c and c.name]


def capabilities_json(caps: Capabilities | None) -> dict[str, Any] | None:
    """A backend's :class:`~pagescan.backends.Capabilities` as a JSON-able dict
    (categories by name); None when a backend does not declare them properly."""
    if caps is None or not dataclasses.is_dataclass(caps) or isinstance(caps, type):
        return None
    d = dataclasses.asdict(caps)
    d["categories"] = category_names(int(d.get("categories", 0)))
    d["notes"] = list(d.get("notes", ()))
    return d
