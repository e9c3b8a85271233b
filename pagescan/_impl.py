"""The one place that picks the implementation of the core.

``PAGESCAN_PUREPYTHON=1`` forces the pure-Python reference. Otherwise the
compiled ``_core`` is used when it imports; when it does not, the reference is
used and ``IMPLEMENTATION`` says so (never silently: ``IMPORT_ERROR`` keeps the
reason, and the compiled test environment fails on it).
"""

from __future__ import annotations

import importlib.util
import os
from types import ModuleType

EXPECTED_CORE_ABI = 1

IMPORT_ERROR: BaseException | None = None
impl: ModuleType

if os.environ.get("PAGESCAN_PUREPYTHON", "") not in ("", "0"):
    from . import _reference as impl
else:
    try:
        from . import _core as impl  # type: ignore[no-redef]
    except ImportError as err:  # not built: fall back, but remember why
        if importlib.util.find_spec(f"{__package__}._core") is None:
            # no extension file at all: say so, not Python's "partially
            # initialized module" wording for a missing submodule
            IMPORT_ERROR = ImportError(
                "pagescan._core is not built (installed without a C compiler, or "
                "run from a source tree without 'python setup.py build_ext --inplace')")
            IMPORT_ERROR.__cause__ = err
        else:
            IMPORT_ERROR = err
        from . import _reference as impl  # type: ignore[no-redef]
    else:
        if getattr(impl, "CORE_ABI", None) != EXPECTED_CORE_ABI:
            raise ImportError(
                f"pagescan._core is stale (ABI {getattr(impl, 'CORE_ABI', None)}, "
                f"expected {EXPECTED_CORE_ABI}): rebuild with 'pip install .'")

IMPLEMENTATION: str = impl.IMPLEMENTATION
