"""Missing pixels on MNIST / Fashion-MNIST: mean imputation, PPCA-EM and a VAE trained on the
observed entries, compared by imputation error and observed-data log-likelihood, with times.

Two kinds of holes, in both splits: ``mcar`` (each pixel missing with probability
``--rate``, completely at random) and ``square`` (a 14 x 14 square at a random place per
image: structured missing completely at random, since where it falls depends on nothing in the
image, though it removes whole strokes together). Data are dequantized intensities in [0, 1];
log-likelihoods are densities of the observed entries, nats per image (higher is better);
imputation error is the mean squared error over the missing entries (lower is better).

    python benchmarks/missing_mnist.py --data-root ../shared/data --dataset mnist

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch
from _results import write_result  # benchmarks/, the script's folder

import ppvae
from ppvae import evaluate


def holes(X: torch.Tensor, kind: str, rate: float, gen: torch.Generator) -> torch.Tensor:
    if kind == "mcar":
        return ppvae.data.remove_at_random(X, rate, gen)
    n = X.shape[0]
    out = X.clone().reshape(n, 28, 28)
    top = torch.randint(0, 28 - 14 + 1, (n,), generator=gen)
    left = torch.randint(0, 28 - 14 + 1, (n,), generator=gen)
    for i in range(n):
        out[i, top[i] : top[i] + 14, left[i] : left[i] + 14] = float("nan")
    return out.reshape(n, -1)


def mean_imputation(train: torch.Tensor, test: torch.Tensor) -> dict:
    """Each pixel its observed training mean; as a model, independent Gaussians per pixel."""
    obs = ~torch.isnan(train)
    mean = torch.nansum(train, 0) / obs.sum(0).clamp_min(1)
    floor = 1.0 / (12 * 256**2)  # variance of the dequantization noise alone
    var = (torch.nansum((train - mean) ** 2, 0) / obs.sum(0).clamp_min(1)).clamp_min(floor)
    t_obs = ~torch.isnan(test)
    z = torch.nan_to_num(test - mean)
    ll = (-0.5 * (z * z / var + torch.log(2 * math.pi * var)) * t_obs).sum(1)
    return {"fill": mean.expand_as(test), "log_px": ll}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", required=True)
    p.add_argument("--dataset", default="mnist", choices=("mnist", "fashion-mnist"))
    p.add_argument("--holes", default="mcar,square")
    p.add_argument("--rate", type=float, default=0.5)
    p.add_argument("--n-train", type=int, default=10000)
    p.add_argument("--n-test", type=int, default=1000)
    p.add_argument("--latent-dim", type=int, default=20)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--em-iter", type=int, default=100)
    p.add_argument("--iw-samples", type=int, default=200)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    ds = ppvae.load_dataset(
        args.dataset, root=args.data_root, n_train=args.n_train, n_test=args.n_test, seed=0
    )
    results = {"dataset": args.dataset, "n_train": len(ds.train), "n_test": len(ds.test)}
    for kind in args.holes.split(","):
        gen = torch.Generator().manual_seed(args.seed)
        train, test = holes(ds.train, kind, args.rate, gen), holes(ds.test, kind, args.rate, gen)
        missing = torch.isnan(test)
        truth = ds.test[missing]
        row = {"missing_share_test": float(missing.double().mean())}

        t = time.perf_counter()
        mi = mean_imputation(train, test)
        row["mean_imputation"] = {
            "mse": float(((mi["fill"][missing] - truth) ** 2).mean()),
            "log_px": float(mi["log_px"].mean()),
            "seconds": time.perf_counter() - t,
        }

        t = time.perf_counter()
        em = ppvae.PPCA(args.latent_dim, method="em", max_iter=args.em_iter, tol=1e-4)
        em.fit(train.double())
        fit_s = time.perf_counter() - t
        filled = em.impute(test.double()).float()
        row["ppca_em"] = {
            "mse": float(((filled[missing] - truth) ** 2).mean()),
            "log_px": float(em.log_prob(test.double()).mean()),
            "em_iterations": em.n_iter_,
            "seconds": time.perf_counter() - t,
            "fit_seconds": fit_s,
        }

        t = time.perf_counter()
        torch.manual_seed(args.seed)
        vae = ppvae.VAE(784, args.latent_dim, hidden=(256,))
        h = ppvae.fit(vae, train, epochs=args.epochs, batch_size=100, seed=args.seed)
        fit_s = time.perf_counter() - t
        est = evaluate.estimate_log_likelihood(vae, test, num_samples=args.iw_samples)
        imp = evaluate.impute(vae, test, num_samples=args.iw_samples, seed=args.seed)
        row["vae"] = {
            "mse": float(((imp.mean[missing] - truth) ** 2).mean()),
            "log_px_iw": est.mean,
            "log_px_sem": est.sem,
            "khat_share_gt_0.7": est.khat_share,
            "impute_khat_share_gt_0.7": imp.khat_share,
            "epochs": args.epochs,
            "train_elbo": h.train_elbo[-1],
            "seconds": time.perf_counter() - t,
            "fit_seconds": fit_s,
        }
        results[kind] = row
        print(json.dumps({kind: row}), flush=True)
    print(json.dumps(results, indent=1))
    write_result("missing_mnist", results)


if __name__ == "__main__":
    main()
