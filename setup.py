"""Declares the Cython extension; everything else is in pyproject.toml."""

from Cython.Build import cythonize
from setuptools import Extension, setup

extensions = [
    Extension(
        "pagescan._core",
        ["pagescan/_core.pyx", "pagescan/_mprotect.c"],
        include_dirs=["pagescan"],
        extra_compile_args=["-O3", "-Wno-unused-function"],
    )
]

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives={"language_level": "3"},
        include_path=["pagescan"],
    )
)
