"""``make run``, timed: the main job (``ppvae run`` at its defaults, on the digits) in a fresh
process, wall time and the stages it reports, and ``ppvae run --epochs 2`` beside it.

Each command runs ``--reps`` times, alternating, in fresh processes (interpreter start and
imports included, as a user sees them) at the thread count the environment gives; the JSON
records the medians, each run's stages (``stage_seconds`` of ``metrics.json``) and the exit
status. Run it on quiet cores: the target (issue 30) is ``make run`` within 30 s on 2 cores.

Usage: python benchmarks/main_job.py --reps 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _results import write_result  # benchmarks/, the script's folder

COMMANDS = {"make_run": [], "epochs_2": ["--epochs", "2"]}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    runs: dict = {name: [] for name in COMMANDS}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.reps):
            for name, extra in COMMANDS.items():
                out = Path(tmp) / f"{name}_{rep}"
                cmd = [sys.executable, "-m", "ppvae", "run", "--out", str(out), *extra]
                t = time.perf_counter()
                proc = subprocess.run(cmd, capture_output=True, text=True)
                wall = time.perf_counter() - t
                metrics = json.loads((out / "metrics.json").read_text())
                runs[name].append({"wall_seconds": wall, "exit_status": proc.returncode,
                                   "stage_seconds": metrics.get("stage_seconds")})  # fmt: skip
                print(name, round(wall, 1), proc.returncode, flush=True)
    result = {
        "runs": runs,
        "median_wall_seconds": {n: statistics.median(r["wall_seconds"] for r in v)
                                for n, v in runs.items()},
        "target_seconds": 30,
        "cpus": os.cpu_count(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "loadavg_at_end": os.getloadavg()[0],
    }
    write_result("main_job", result, args.out)
    print(json.dumps(result["median_wall_seconds"]))
    return result


if __name__ == "__main__":
    main()
