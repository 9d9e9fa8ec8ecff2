"""The python examples of the README and the guide pages: found, run as written, recorded.

A page's examples are its fenced ```` ```python ```` blocks, run in order in one namespace of
their own (a page stands alone), in the current directory. ``benchmarks/guide_examples.py``
records what each block printed, with a hash of its code, in
``benchmarks/results/guide_examples.json``; the ``{printed}`` directive shows it on the page
and ``tests/test_docs.py`` checks that every page's blocks are the ones recorded.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import re
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def example_pages() -> list[Path]:
    """The README and every guide page that holds a python block."""
    pages = [REPO / "README.md", *sorted((REPO / "docs" / "guide").glob("*.md"))]
    return [p for p in pages if python_blocks(p)]


def python_blocks(path: Path) -> list[str]:
    return _BLOCK.findall(path.read_text())


def code_hash(code: str) -> str:
    return hashlib.sha256(code.encode()).hexdigest()[:16]


def run_page(path: Path) -> list[dict]:
    """Run a page's blocks in order in a fresh namespace; what each printed, and its time."""
    namespace: dict = {"__name__": "__main__"}
    records = []
    for i, code in enumerate(python_blocks(path)):
        buffer = io.StringIO()
        start = time.perf_counter()
        with contextlib.redirect_stdout(buffer):
            exec(compile(code, f"{path.name}, python block {i}", "exec"), namespace)
        records.append(
            {
                "code_sha256": code_hash(code),
                "printed": buffer.getvalue().rstrip("\n"),
                "seconds": round(time.perf_counter() - start, 2),
            }
        )
    return records
