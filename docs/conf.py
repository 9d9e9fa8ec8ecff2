"""Sphinx configuration of ppvae's documentation (``make docs``; no network at build time)."""

import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS / "_ext"))
sys.path.insert(0, str(DOCS.parent))

import ppvae  # noqa: E402

project = "ppvae"
author = "the ppvae developers"
release = version = ppvae.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "numpydoc",
    "numpydoc_template_cache",
    "myst_nb",
    "ppvae_docs",
]
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
exclude_patterns = ["_build", "**.ipynb_checkpoints"]

# api.rst is written at builder-inited (docs/_ext/ppvae_docs.py), before autosummary reads it
autosummary_generate = ["api.rst"]
autodoc_default_options = {"members": True, "inherited-members": False}
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False

nb_execution_mode = "off"  # the notebooks are rendered from their stored outputs
myst_enable_extensions = ["dollarmath", "colon_fence"]
myst_heading_anchors = 3

html_theme = "furo"
html_title = f"ppvae {release}"
html_static_path: list = []
