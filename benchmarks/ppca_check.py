"""Benchmark the PPCA ground truth: `ppvae check-ppca` wall time, and closed-form PPCA against
scikit-learn's PCA on a 60000 x 784 float64 matrix, measured side by side in one process.

    python benchmarks/ppca_check.py [--data-root ../shared/data] [--repeats 3] [--threads 2]

Prints one JSON object. Targets (issue #3): check-ppca on digits under 60 s on 2 CPU cores;
PPCA fit + score at most 0.6x the time of sklearn PCA(k).fit + score.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _results import write_result  # benchmarks/, the script's folder
from sklearn.decomposition import PCA

import ppvae
from ppvae import workflows


def _matrix(data_root: str | None) -> tuple[torch.Tensor, str]:
    if data_root and (Path(data_root) / "MNIST" / "raw").is_dir():
        ds = ppvae.load_dataset("mnist", root=data_root)
        return ds.train.double(), "MNIST train, dequantized"
    g = torch.Generator().manual_seed(0)  # stand-in of the same shape: rank-50 signal + noise
    X = torch.randn(60000, 50, generator=g, dtype=torch.float64) @ torch.randn(
        50, 784, generator=g, dtype=torch.float64
    )
    return X + torch.randn(60000, 784, generator=g, dtype=torch.float64), "synthetic"


def bench_ppca_vs_sklearn(X: torch.Tensor, k: int, repeats: int) -> dict:
    Xn = X.numpy()
    test = X[:10000].clone()  # a different tensor: scored pointwise (no training shortcut)
    ours, theirs, ours_test = [], [], []
    for _ in range(repeats):  # interleaved, so drift in machine load hits both alike
        t = time.perf_counter()
        p = ppvae.PPCA(k).fit(X)
        s_ours = p.score(X)
        ours.append(time.perf_counter() - t)
        t = time.perf_counter()
        p.score(test)
        ours_test.append(time.perf_counter() - t)
        t = time.perf_counter()
        sk = PCA(k).fit(Xn)
        s_sk = sk.score(Xn)
        theirs.append(time.perf_counter() - t)
    n = X.shape[0]
    # sklearn's covariance uses 1/(N-1): its score differs from the MLE's by O(1/N) per dim
    return {
        "shape": list(X.shape),
        "latent_dim": k,
        "ppca_fit_score_s": statistics.median(ours),
        "sklearn_fit_score_s": statistics.median(theirs),
        "ratio_ppca_over_sklearn": statistics.median(ours) / statistics.median(theirs),
        "target_ratio": 0.6,
        "ppca_score_10000_other_rows_s": statistics.median(ours_test),
        "score_nats_ppca": s_ours,
        "score_nats_sklearn": s_sk,
        "sklearn_solver": sk._fit_svd_solver,
        "n": n,
        "all_ppca_s": ours,
        "all_sklearn_s": theirs,
    }


def bench_check_ppca(repeats: int) -> dict:
    times, results = [], None
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as out:
            t = time.perf_counter()
            results = workflows.check_ppca("digits", out=out, progress=False).metrics
            times.append(time.perf_counter() - t)
    return {
        "check_ppca_digits_s": statistics.median(times),
        "all_s": times,
        "target_s": 60,
        "passed_targets": results["passed"],
        "loglik_gap": results["loglik_gap"],
        "elbo_gap": results["elbo_gap"],
        "noise_variance_rel_error": results["noise_variance_rel_error"],
        "covariance_rel_error": results["covariance_rel_error"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--data-root", default=str(Path(__file__).resolve().parents[2] / "shared" / "data")
    )
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--latent-dim", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    X, source = _matrix(args.data_root)
    report = {
        "benchmark": "ppca_check",
        "threads": args.threads,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "data": source,
        "ppca_vs_sklearn": bench_ppca_vs_sklearn(X, args.latent_dim, args.repeats),
    }
    del X
    report["check_ppca"] = bench_check_ppca(max(1, args.repeats - 2))
    print(json.dumps(report, indent=2))
    write_result("ppca_check", report)


if __name__ == "__main__":
    main()
