"""Stacked autoencoder on digits: fine-tuned accuracy against logistic regression on raw pixels,
and layer-wise pretraining against random initialization when labels are scarce.

Prints JSON and writes it to ``benchmarks/results/autoencoders_digits.json``.
Usage: python benchmarks/autoencoders_digits.py [--seeds 5] [--labels 50]
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from _results import write_result  # benchmarks/, the script's folder
from sklearn.linear_model import LogisticRegression

import ppvae
from ppvae.autoencoders import StackedAutoencoder


def accuracy(stack, X, y) -> float:
    return float((stack.predict(X) == y).float().mean())


def run_stack(ds, rows, *, pretrain: bool, seed: int, args) -> float:
    torch.manual_seed(seed)
    stack = StackedAutoencoder(ds.data_dim, hidden=tuple(args.hidden), noise_level=args.noise)
    if pretrain:  # unsupervised: all training images, no labels
        ppvae.pretrain(
            stack, ds.train, epochs=args.pretrain_epochs, lr=args.lr, seed=seed, progress=False
        )
    ppvae.finetune(
        stack,
        ds.train[rows],
        ds.train_labels[rows],
        epochs=args.finetune_epochs if len(rows) > 500 else args.scarce_epochs,
        batch_size=min(128, len(rows)),
        lr=args.lr,
        seed=seed,
        progress=False,
    )
    return accuracy(stack, ds.test, ds.test_labels)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--labels", type=int, default=50)
    p.add_argument("--hidden", type=int, nargs="+", default=[128, 64])
    p.add_argument("--noise", type=float, default=0.0)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--pretrain-epochs", type=int, default=50)
    p.add_argument("--finetune-epochs", type=int, default=100)
    p.add_argument("--scarce-epochs", type=int, default=300)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    ds = ppvae.load_dataset("digits", seed=0)
    logreg = LogisticRegression(max_iter=5000).fit(ds.train.numpy(), ds.train_labels.numpy())
    lr_acc = float(logreg.score(ds.test.numpy(), ds.test_labels.numpy()))
    all_rows = torch.arange(len(ds.train))
    full = run_stack(ds, all_rows, pretrain=True, seed=0, args=args)
    scarce = {"pretrained": [], "random_init": [], "logistic_regression": []}
    for seed in range(args.seeds):
        g = torch.Generator().manual_seed(100 + seed)
        rows = torch.randperm(len(ds.train), generator=g)[: args.labels]
        scarce["pretrained"].append(run_stack(ds, rows, pretrain=True, seed=seed, args=args))
        scarce["random_init"].append(run_stack(ds, rows, pretrain=False, seed=seed, args=args))
        lr_small = LogisticRegression(max_iter=5000).fit(
            ds.train[rows].numpy(), ds.train_labels[rows].numpy()
        )
        scarce["logistic_regression"].append(
            float(lr_small.score(ds.test.numpy(), ds.test_labels.numpy()))
        )
    mean = {k: sum(v) / len(v) for k, v in scarce.items()}
    diffs = torch.tensor(scarce["pretrained"]) - torch.tensor(scarce["random_init"])
    result = {
        "config": vars(args),
        "all_labels": {"stacked_finetuned": full, "logistic_regression_raw": lr_acc},
        f"{args.labels}_labels": {
            "per_seed": scarce,
            "mean": mean,
            "pretrained_minus_random_mean": float(diffs.mean()),
            "pretrained_minus_random_se": float(diffs.std() / len(diffs) ** 0.5)
            if len(diffs) > 1
            else None,
        },
        "seconds": time.perf_counter() - t0,
    }
    print(json.dumps({"benchmark": "autoencoders_digits", **result}, indent=2))
    write_result("autoencoders_digits", result)


if __name__ == "__main__":
    main()
