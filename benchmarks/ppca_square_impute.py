"""Why PPCA-EM's conditional mean lost to column means on MNIST's 14 x 14 square (issue #31).

``benchmarks/missing_mnist.py`` reported, for a randomly placed 14 x 14 square missing in every
MNIST image (5,000 training and 500 test images, k = 20, 50 EM iterations), an imputation MSE
of 0.169 for PPCA-EM's conditional mean against 0.125 for the column means. This script takes
the same data and holes and separates the candidate causes:

* **the conditional mean itself**: :meth:`ppvae.PPCA.impute` against the Gaussian conditional
  ``C_mo C_oo^-1 (x_o - mean_o) + mean_m`` of the marginal ``N(mean, W W^T + s2 I)`` computed
  directly for a few test rows (a bug there would show as a mismatch);
* **the model, fitted without holes**: closed-form PPCA on the complete training images, its
  conditional mean on the same test squares (what an exact fit's linear fill achieves);
* **EM's iterations**: EM on the training images with their squares missing, imputation MSE and
  mean training log p(x_o) after each of ``--iters`` iteration counts (EM restarted from the
  same random start each time, so each row is EM stopped at that count).

Prints one JSON object (MSE over the missing test pixels, intensities in [0, 1]; log p(x_o) in
nats per image) and writes it to ``--out``.

    python benchmarks/ppca_square_impute.py --data-root ../shared/data --threads 1
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from _results import write_result  # benchmarks/, the script's folder
from missing_mnist import holes, mean_imputation  # the same holes as the README's table

import ppvae


def _direct_conditional_mean(ppca: ppvae.PPCA, x: torch.Tensor) -> torch.Tensor:
    """The Gaussian conditional mean of the NaN entries of one row x (D,), from the marginal
    covariance, with no use of PPCA's posterior over z."""
    W, mean, s2 = ppca.W_.double(), ppca.mean_.double(), ppca.noise_variance_
    C = W @ W.T + s2 * torch.eye(W.shape[0], dtype=torch.float64)
    o = ~torch.isnan(x)
    m = ~o
    sol = torch.linalg.solve(C[o][:, o], x[o].double() - mean[o])
    out = x.double().clone()
    out[m] = mean[m] + C[m][:, o] @ sol
    return out


def _full_covariance_fill(train: torch.Tensor, test: torch.Tensor) -> torch.Tensor:
    """Each test row's missing entries by the Gaussian conditional mean under the complete
    training images' full sample covariance (plus the dequantization noise's variance on the
    diagonal, which keeps it invertible): the best linear predictor the data allow, no rank
    or isotropic-noise restriction."""
    mean = train.mean(0)
    C = torch.cov(train.T) + torch.eye(train.shape[1], dtype=train.dtype) / (12 * 256**2)
    out = test.clone()
    for i in range(test.shape[0]):
        o = ~torch.isnan(test[i])
        m = ~o
        sol = torch.linalg.solve(C[o][:, o], test[i, o] - mean[o])
        out[i, m] = mean[m] + C[m][:, o] @ sol
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", required=True)
    p.add_argument("--n-train", type=int, default=5000)
    p.add_argument("--n-test", type=int, default=500)
    p.add_argument("--latent-dim", type=int, default=20)
    p.add_argument("--iters", type=int, nargs="+", default=[50, 200])
    p.add_argument("--more-k", type=int, nargs="*", default=[50, 100])
    p.add_argument("--tol", type=float, default=0.0, help="EM tolerance (0: run every iteration)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="default benchmarks/results/ppca_square_impute.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    ds = ppvae.load_dataset(
        "mnist", root=args.data_root, n_train=args.n_train, n_test=args.n_test, seed=0
    )
    gen = torch.Generator().manual_seed(args.seed)
    train, test = holes(ds.train, "square", 0.5, gen), holes(ds.test, "square", 0.5, gen)
    missing = torch.isnan(test)
    truth = ds.test[missing].double()

    def mse(filled: torch.Tensor) -> float:
        return float(((filled.double()[missing] - truth) ** 2).mean())

    out: dict = {
        "benchmark": "ppca_square_impute",
        "n_train": len(train),
        "n_test": len(test),
        "latent_dim": args.latent_dim,
        "missing_share_train": float(torch.isnan(train).double().mean()),
        "torch_threads": args.threads,
    }
    obs_share = (~torch.isnan(train)).double().mean(0).reshape(28, 28)
    out["observed_share_train"] = {
        "centre_pixel": float(obs_share[14, 14]),
        "min": float(obs_share.min()),
    }
    out["column_means_mse"] = mse(mean_imputation(train, test)["fill"])

    t = time.perf_counter()
    full = ppvae.PPCA(args.latent_dim).fit(ds.train.double())
    out["closed_form_complete_train"] = {
        "mse": mse(full.impute(test.double())),
        # the complete-data fit scored on the training images with their squares missing:
        # what EM's objective says of it
        "train_log_px_o": float(full.log_prob(train.double()).mean()),
        "seconds": time.perf_counter() - t,
    }
    direct = torch.stack([_direct_conditional_mean(full, test[i]) for i in range(5)])
    out["impute_vs_direct_conditional_max_abs"] = float(
        (full.impute(test[:5].double()) - direct).abs().max()
    )
    print(json.dumps({"closed_form_complete_train": out["closed_form_complete_train"]}), flush=True)
    for k in args.more_k:
        other = ppvae.PPCA(k).fit(ds.train.double())
        out[f"closed_form_complete_train_k{k}"] = {"mse": mse(other.impute(test.double()))}
    t = time.perf_counter()
    out["full_covariance_complete_train"] = {
        "mse": mse(_full_covariance_fill(ds.train.double(), test.double())),
        "seconds": time.perf_counter() - t,
    }
    shown = {k: v for k, v in out.items() if k.startswith(("closed", "full"))}
    print(json.dumps(shown), flush=True)

    out["em"] = []
    for n_iter in args.iters:
        t = time.perf_counter()
        em = ppvae.PPCA(args.latent_dim, method="em", max_iter=n_iter, tol=args.tol)
        em.fit(train.double())
        filled = em.impute(test.double())
        direct = torch.stack([_direct_conditional_mean(em, test[i]) for i in range(5)])
        row = {
            "max_iter": n_iter,
            "iterations_run": em.n_iter_,
            "train_log_px_o": em.loglik_history_[-1],
            "last_improvement": em.loglik_history_[-1] - em.loglik_history_[-2],
            "test_log_px_o": float(em.log_prob(test.double()).mean()),
            "mse": mse(filled),
            "impute_vs_direct_conditional_max_abs": float(
                (filled[:5] - direct).abs().max()
            ),
            "seconds": time.perf_counter() - t,
        }
        out["em"].append(row)
        print(json.dumps(row), flush=True)
    write_result("ppca_square_impute", out, args.out)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
