"""Build the teaching notebooks from their sources in ``notebooks/src/``.

    python notebooks/_build.py          # rebuild every notebook that has a source
    python notebooks/_build.py 02       # only those whose name contains "02"

Each source ``src/NAME.py`` is plain, lintable Python in the "percent" format: a line
``# %%`` starts a code cell and ``# %% [markdown]`` a markdown cell, whose lines are comments
(the leading ``# `` is stripped). In a code cell, the comment ``# %matplotlib inline`` becomes
that IPython magic. Building writes ``NAME.ipynb`` without outputs and with stable cell ids;
``python notebooks/_execute.py`` then runs the notebooks at full size and saves the outputs.
Notebooks without a source in ``src/`` are left alone.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent
SRC = HERE / "src"
_HEADER = re.compile(r"^# %%(?:\s*\[(?P<kind>\w+)\])?\s*$")
_MAGIC = re.compile(r"^# (%matplotlib .*)$")

METADATA = {
    "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
    "language_info": {"name": "python", "pygments_lexer": "ipython3"},
}


def parse(text: str) -> list[tuple[str, str]]:
    """Split a percent-format source into ``(kind, source)`` cells, kind "code" or "markdown"."""
    cells: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        match = _HEADER.match(line)
        if match:
            cells.append(("markdown" if match["kind"] == "markdown" else "code", []))
        elif cells:
            cells[-1][1].append(line)
        elif line.strip() and not line.startswith("#"):
            raise ValueError(f"code before the first '# %%' cell marker: {line!r}")
    out = []
    for kind, lines in cells:
        if kind == "markdown":
            lines = [ln[2:] if ln.startswith("# ") else ln.lstrip("#") for ln in lines]
        else:
            lines = [_MAGIC.sub(r"\1", ln) for ln in lines]
        source = "\n".join(lines).strip("\n")
        if source.strip():
            out.append((kind, source))
    return out


def build(src: Path) -> Path:
    """Write ``notebooks/<src.stem>.ipynb`` from ``src``; returns its path."""
    cells = []
    for i, (kind, source) in enumerate(parse(src.read_text())):
        make = new_markdown_cell if kind == "markdown" else new_code_cell
        cell = make(source)
        cell["id"] = f"{src.stem[:50]}-{i:03d}"
        cells.append(cell)
    nb = new_notebook(cells=cells, metadata=METADATA)
    nbformat.validate(nb)
    target = HERE / f"{src.stem}.ipynb"
    nbformat.write(nb, target)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="build only sources whose name contains one")
    args = parser.parse_args(argv)
    sources = sorted(SRC.glob("*.py"))
    if args.names:
        sources = [s for s in sources if any(n in s.stem for n in args.names)]
    if not sources:
        print("no notebook sources matched", file=sys.stderr)
        return 1
    for src in sources:
        print(f"built {build(src).relative_to(HERE.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
