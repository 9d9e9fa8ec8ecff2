"""Result files of the benchmarks: ``benchmarks/results/<name>.json`` with their provenance.

Every file a documentation page draws numbers from carries ``command`` (the command line that
wrote it), ``date`` (UTC, ISO 8601), ``machine`` (platform, processor, CPU count, load
average at the end) and ``versions`` (Python, torch, Pyro, NumPy, ppvae and its git commit);
``tests/test_docs.py`` checks it. ``write_result`` adds them and writes atomically.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
PROVENANCE = ("command", "date", "machine", "versions")


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=RESULTS.parent, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _git_commit() -> str | None:
    """HEAD's short hash, with "+modified" when tracked files differ from it."""
    head = _git("rev-parse", "--short", "HEAD")
    if not head:
        return None
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    return head + ("+modified" if dirty else "")


COMMIT_AT_START = _git_commit()
"""The commit when this process imported the module (a benchmark's start): a long run must
name the code it ran, not whatever HEAD became while it ran."""


def provenance(argv: list[str] | None = None) -> dict:
    """The command, date, machine and versions of this process's run."""
    import numpy
    import pyro
    import torch

    import ppvae

    argv = sys.argv if argv is None else argv
    script = os.path.relpath(argv[0], RESULTS.parents[1]) if argv else "?"
    return {
        "command": " ".join(["python", script, *argv[1:]]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        },
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "pyro": pyro.__version__,
            "numpy": numpy.__version__,
            "ppvae": ppvae.__version__,
            "git_commit": COMMIT_AT_START,
        },
    }


def write_result(name: str, result: dict, out: str | Path | None = None) -> Path:
    """Write ``result`` with its provenance to ``out`` (default ``results/<name>.json``)."""
    path = Path(out) if out is not None else RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {"benchmark": name, **provenance(), **result}
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(body, indent=1) + "\n")
    os.replace(tmp, path)
    return path
