"""Execute the teaching notebooks in place, at full size, saving their outputs.

    python notebooks/_execute.py             # every notebooks/*.ipynb
    python notebooks/_execute.py 01 03       # only those whose name contains "01" or "03"
    python notebooks/_execute.py --small     # the quick size of the tests; nothing is written

Each notebook runs in a fresh ``python3`` kernel of this interpreter, with the working
directory ``notebooks/``. At full size ``PPVAE_NOTEBOOK_SMALL`` is removed from the kernel's
environment; ``--small`` sets it to 1 and leaves the files untouched, since the committed
notebooks carry the outputs of a full-size run. Prints the wall time of each notebook.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent


def execute(path: Path, small: bool, timeout: int) -> tuple[nbformat.NotebookNode, float]:
    """Run one notebook in a fresh kernel; returns the executed notebook and its wall time."""
    nb = nbformat.read(path, as_version=4)
    env = {k: v for k, v in os.environ.items() if k != "PPVAE_NOTEBOOK_SMALL"}
    if small:
        env["PPVAE_NOTEBOOK_SMALL"] = "1"
    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
        record_timing=False,
    )
    start = time.perf_counter()
    client.execute(env=env)
    return nb, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="run only notebooks whose name contains one")
    parser.add_argument("--small", action="store_true", help="PPVAE_NOTEBOOK_SMALL=1, no writing")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per cell")
    args = parser.parse_args(argv)
    paths = sorted(HERE.glob("*.ipynb"))
    if args.names:
        paths = [p for p in paths if any(n in p.stem for n in args.names)]
    if not paths:
        print("no notebooks matched", file=sys.stderr)
        return 1
    total = 0.0
    for path in paths:
        nb, seconds = execute(path, args.small, args.timeout)
        total += seconds
        if not args.small:
            nbformat.write(nb, path)
        print(f"{path.name}: {seconds:.1f} s{'' if args.small else ', saved'}", flush=True)
    print(f"total: {total:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
