"""Run every python example of the README and the guide pages as written; record what it printed.

    python benchmarks/guide_examples.py [--threads 1] [--pages README.md python.md ...]

Each page runs in a fresh namespace, in a scratch directory (examples write ``runs/...``),
with Pyro's parameter store cleared. Writes ``benchmarks/results/guide_examples.json``:
per page, per block, the code's hash, its printed output and its wall time, with the command,
date, machine and versions; pages not run this time keep their earlier record. The
documentation shows these outputs (the ``{printed}`` directive) and quotes numbers from them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "docs" / "_ext"))

from _results import RESULTS, write_result  # noqa: E402
from examples import example_pages, run_page  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--pages", nargs="*", help="only these page file names")
    args = parser.parse_args(argv)

    import pyro
    import torch

    torch.set_num_threads(args.threads)
    previous = RESULTS / "guide_examples.json"
    pages = json.loads(previous.read_text())["pages"] if previous.exists() else {}
    todo = [p for p in example_pages() if not args.pages or p.name in args.pages]
    home = Path.cwd()
    for path in todo:
        with tempfile.TemporaryDirectory() as scratch:
            os.chdir(scratch)
            pyro.clear_param_store()
            try:
                pages[path.name] = run_page(path)
            finally:
                os.chdir(home)
        seconds = sum(b["seconds"] for b in pages[path.name])
        print(f"{path.name}: {len(pages[path.name])} blocks, {seconds:.1f} s", flush=True)
    write_result("guide_examples", {"threads": args.threads, "pages": pages})
    return 0


if __name__ == "__main__":
    sys.exit(main())
