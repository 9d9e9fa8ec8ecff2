"""``ppvae run`` at its defaults on MNIST or Fashion-MNIST: wall time, stage times and checks.

Runs the command as a user would (a fresh interpreter, ``--no-progress``), times it, and reads
its ``metrics.json``: the time of each stage, the LinearVAE check against PPCA (each quantity
and its target), PPCA's and the VAE's test log-likelihoods, and AIS/BDMC. Writes JSON.

Usage: python benchmarks/run_mnist.py --data-root ../shared/data --dataset mnist --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import write_result  # benchmarks/, the script's folder


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", required=True)
    p.add_argument("--dataset", default="mnist", choices=["mnist", "fashion-mnist"])
    p.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of the run")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "ppvae", "run", "--dataset", args.dataset,
               "--data-root", args.data_root, "--out", tmp, "--force", "--no-progress"]  # fmt: skip
        t = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t
        print(proc.stdout[-4000:], proc.stderr[-2000:], sep="\n")
        m = json.loads((Path(tmp) / "metrics.json").read_text())
    check = m["ppca_check"]
    vae = m["vae"]
    result = {
        "dataset": args.dataset,
        "threads": args.threads,
        "exit_code": proc.returncode,
        "wall_seconds": wall,
        "seconds_total": m["seconds_total"],
        "stage_seconds": m["stage_seconds"],
        "vae_epochs": vae["epochs"],
        "check": {k: check[k] for k in (*check["targets"], "passed", "epochs", "batch_size", "lr")},
        "check_targets": check["targets"],
        "ppca_test_log_likelihood": m["ppca"]["test_log_likelihood"],
        "vae_test_log_likelihood_iw": vae["test_log_likelihood_iw"],
        "vae_khat_share_gt_0.7": vae["khat_share_gt_0.7"],
        "certified": vae.get("certified"),
    }
    write_result(f"run_{args.dataset.replace('-', '_')}", result, args.out)
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
