"""Declares the Cython extension; everything else is in pyproject.toml.

The compiled core (``pagescan._core``) is optional: when it cannot be built (no C
compiler, no Python headers, no Cython), the package is installed with the
pure-Python core (``pagescan/_reference.py``), a warning says so in the build
output (``pip install -v .`` shows it), and at run time
``pagescan.IMPLEMENTATION == "python"`` (``pagescan doctor`` reports it, with the
reason the compiled core did not load). ``PAGESCAN_REQUIRE_COMPILED=1`` turns the
fallback into a build failure.
"""

from __future__ import annotations

import os
import sys
import textwrap

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

REQUIRE = os.environ.get("PAGESCAN_REQUIRE_COMPILED", "") not in ("", "0")


def warn_pure_python(why: str) -> None:
    if REQUIRE:
        raise SystemExit(f"pagescan: the compiled core could not be built ({why}) "
                         "and PAGESCAN_REQUIRE_COMPILED is set")
    bar = "=" * 78
    msg = textwrap.fill(
        f"WARNING: pagescan's compiled core (pagescan._core) could not be built: "
        f"{why.rstrip('. ')}. "
        "pagescan is installed with its pure-Python core instead "
        "(pagescan.IMPLEMENTATION == 'python'): scan_pages and friends give the same "
        "results, much slower; the uffd and mprotect backends need the compiled core "
        "(softdirty and the simulator work without it). "
        "Install a C compiler and the Python headers (e.g. apt install gcc python3-dev) "
        "and reinstall to get the compiled core; 'pagescan doctor' says which core is "
        "loaded.", 78)
    print(f"\n{bar}\n{msg}\n{bar}\n", file=sys.stderr, flush=True)


class OptionalBuildExt(build_ext):
    """build_ext that falls back to the pure-Python core instead of failing."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as err:  # noqa: BLE001 - any build failure means: no compiled core
            warn_pure_python(f"{type(err).__name__}: {err}")

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as err:  # noqa: BLE001 - compiler missing, failing, headers missing
            warn_pure_python(f"{type(err).__name__}: {err}")


def extensions() -> list[Extension]:
    ext = Extension(
        "pagescan._core",
        ["pagescan/_core.pyx", "pagescan/_mprotect.c"],
        include_dirs=["pagescan"],
        extra_compile_args=["-O3", "-Wno-unused-function"],
    )
    try:
        from Cython.Build import cythonize
    except ImportError as err:
        if os.path.exists("pagescan/_core.c"):      # an sdist carries the generated C
            ext.sources[0] = "pagescan/_core.c"
            return [ext]
        warn_pure_python(f"Cython is not installed ({err})")
        return []
    return cythonize([ext], compiler_directives={"language_level": "3"},  # type: ignore[no-any-return]
                     include_path=["pagescan"])


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
