"""Upstream workaround (numpydoc 1.11): build numpydoc's Jinja environment once.

``numpydoc.docscrape_sphinx.get_doc_object`` makes a new ``SandboxedEnvironment`` for every
docstring, so its template is compiled again each time: 4,500 compilations and about 30 s of
this site's build (cProfile). The loader is the same on every call of one build, so one
environment, whose own cache then keeps the compiled template, renders the same pages.
"""

from __future__ import annotations

import numpydoc.docscrape_sphinx as docscrape_sphinx

_Original = docscrape_sphinx.SandboxedEnvironment
_environments: dict[int, object] = {}


def _one_environment(loader=None, **kwargs):
    key = id(type(loader))  # one builder per build: the loaders of its calls are alike
    if key not in _environments:
        _environments[key] = _Original(loader=loader, **kwargs)
    return _environments[key]


def setup(app):
    docscrape_sphinx.SandboxedEnvironment = _one_environment
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
