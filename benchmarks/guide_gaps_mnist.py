"""Approximation and amortization gaps of the diagonal and the IAF guide on MNIST (issue #15).

Trains Burda et al.'s (2015) VAE (784-200-200-50 tanh, Bernoulli, dynamically binarized
MNIST) once per ``--guides`` entry with the same seed, epochs, batch size and learning rate,
then splits each model's log p(x) - ELBO on the same ``--images`` statically binarized test
images with ``evaluate.inference_gaps(..., family="guide")``: the approximation gap is
measured against the guide's own family (for the IAF: per-point free encoder outputs, the
flow's weights fixed), so it says how much a flow guide closes of what the diagonal Gaussian
cannot represent. Prints JSON: per guide, the mean log p(x) (IW from the optimized local
guide), amortized and optimal ELBOs, both gaps, training minutes and steps/s.

Usage: python benchmarks/guide_gaps_mnist.py --data-root ../shared/data [--epochs 10]
       [--guides diagonal iaf] [--images 100] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from _results import write_result  # benchmarks/, the script's folder

import ppvae
from ppvae import evaluate


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-root", required=True)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--guides", nargs="+", default=["diagonal", "iaf"])
    p.add_argument("--images", type=int, default=100)
    p.add_argument("--iw-samples", type=int, default=1000)
    p.add_argument("--steps", type=int, default=500, help="local optimization steps")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    # as benchmarks/mnist_nll.py: training images as intensities, binarized afresh each step;
    # the test images binarized once (seeded)
    ds = ppvae.load_dataset("mnist", args.data_root, seed=args.seed, binarize="dynamic")
    X = ds.test[: args.images].float()
    out = {"benchmark": "guide_gaps_mnist", "epochs": args.epochs, "images": X.shape[0]}
    for guide in args.guides:
        torch.manual_seed(args.seed)
        vae = ppvae.VAE(
            784, 50, hidden=(200, 200), activation="tanh", likelihood="bernoulli", guide=guide
        )
        h = ppvae.fit(
            vae,
            ds.train,
            epochs=args.epochs,
            batch_size=100,
            lr=1e-3,
            binarize="dynamic",
            seed=args.seed,
            progress=False,
        )
        t = time.perf_counter()
        torch.manual_seed(args.seed + 1)
        per_point = evaluate.inference_gaps(
            vae, X, family="guide", num_samples=args.iw_samples, steps=args.steps
        )
        n = X.shape[0]
        out[guide] = {
            **per_point["mean"],
            "approximation_gap_sem": float(per_point["approximation_gap"].std() / n**0.5),
            "amortization_gap_sem": float(per_point["amortization_gap"].std() / n**0.5),
            "train_minutes": h.seconds / 60,
            "steps_per_s": args.epochs * (len(ds.train) // 100) / h.seconds,
            "gaps_seconds": time.perf_counter() - t,
            "elbo": h.config.get("elbo"),
        }
        print(json.dumps({guide: out[guide]}), flush=True)
    out.update(threads=args.threads, torch=torch.__version__)
    write_result("guide_gaps_mnist", out)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
