"""Sphinx configuration of fastreg's documentation (``make docs``)."""

import os
import sys

sys.path.insert(0, os.path.abspath(".."))  # fastreg, built in place

project = "fastreg"
author = "the fastreg contributors"
copyright = "2026, the fastreg contributors"

extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "myst_parser"]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]
autodoc_member_order = "bysource"
autodoc_typehints = "description"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
myst_heading_anchors = 3
suppress_warnings = ["myst.xref_missing"]  # links to files of the repository outside docs/
html_theme = "alabaster"
