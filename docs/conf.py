"""Sphinx configuration of the pagescan documentation (``tox -e docs``).

autodoc imports the *installed* package (tox installs the wheel and runs
sphinx-build from outside the source tree), so the compiled core's docstrings
and signatures are the ones shown.
"""

from __future__ import annotations

import pagescan

project = "pagescan"
author = "the pagescan developers"
copyright = "2026, the pagescan developers (MIT licence)"
release = pagescan.__version__
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

# MyST: heading anchors so that "kernel.md#output" style links work, and
# ``{ref}`` targets for the sections of the kernel page.
myst_heading_anchors = 3
myst_enable_extensions = ["deflist"]

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_default_options = {"members": True, "show-inheritance": False}
napoleon_google_docstring = True
napoleon_numpy_docstring = True


html_theme = "alabaster"
html_title = f"pagescan {release}"
html_theme_options = {"description": "Which pages of memory were written since you last looked"}
