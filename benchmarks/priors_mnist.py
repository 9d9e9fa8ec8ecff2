"""Priors on dynamically binarized MNIST: standard normal vs VampPrior vs mixture of Gaussians.

    python benchmarks/priors_mnist.py --data-root ../shared/data [--epochs 10] [--n-test 10000]

Same encoder/decoder (MLP 784-300-300-k, ReLU), same epoch budget, batch and learning rate
for every prior; test NLL is the importance-weighted estimate with K samples per image
(nats, lower is better). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from _results import write_result  # benchmarks/, the script's folder

import ppvae
from ppvae import evaluate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_root = Path(__file__).resolve().parents[2] / "shared" / "data"
    ap.add_argument("--data-root", default=str(default_root))
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--latent-dim", type=int, default=40)
    ap.add_argument("--hidden", default="300,300")
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--iw-samples", type=int, default=1000)
    ap.add_argument("--n-train", type=int, default=None)
    ap.add_argument("--n-test", type=int, default=None)
    ap.add_argument("--priors", default="standard,vamp,mog")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ds = ppvae.load_dataset(
        "mnist",
        root=args.data_root,
        binarize="dynamic",
        seed=args.seed,
        n_train=args.n_train,
        n_test=args.n_test,
    )
    hidden = tuple(int(h) for h in args.hidden.split(","))
    results = {}
    for prior in args.priors.split(","):
        torch.manual_seed(args.seed)
        spec = {
            "vamp": {"name": "vamp", "n_pseudo_inputs": 500},
            "mog": {"name": "mog", "n_components": 10},
        }.get(prior, prior)
        vae = ppvae.VAE(
            ds.data_dim, args.latent_dim, hidden=hidden, likelihood="bernoulli", prior=spec
        )
        t = time.perf_counter()
        history = ppvae.fit(
            vae,
            ds.train,
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            seed=args.seed,
            binarize="dynamic",
            progress=False,
        )
        train_s = time.perf_counter() - t
        torch.manual_seed(args.seed)
        t = time.perf_counter()
        ll = evaluate.log_likelihood(vae, ds.test, num_samples=args.iw_samples)
        eval_s = time.perf_counter() - t
        results[prior] = {
            "test_nll": -float(ll.mean()),
            "test_nll_sem": float(ll.std() / math.sqrt(len(ll))),
            "final_train_elbo": history.train_elbo[-1],
            "train_seconds": train_s,
            "eval_seconds": eval_s,
            "steps_per_second": history.steps / train_s,
        }
        print(json.dumps({prior: results[prior]}), flush=True, file=__import__("sys").stderr)
    report = {
        "benchmark": "priors_mnist",
        "data": "MNIST, dynamically binarized train, test binarized once (seeded)",
        "n_train": int(ds.train.shape[0]),
        "n_test": int(ds.test.shape[0]),
        "epochs": args.epochs,
        "latent_dim": args.latent_dim,
        "hidden": list(hidden),
        "iw_samples": args.iw_samples,
        "threads": args.threads,
        "results": results,
    }
    if "standard" in results:
        for prior in results:
            report["results"][prior]["nll_minus_standard"] = (
                results[prior]["test_nll"] - results["standard"]["test_nll"]
            )
    print(json.dumps(report, indent=2))
    write_result("priors_mnist", report)


if __name__ == "__main__":
    main()
