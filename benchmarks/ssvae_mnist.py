"""The semi-supervised VAE (M2) on MNIST with few labels, against logistic regression.

For each seed: ``labelled_subset`` keeps ``--labels`` training labels (balanced), M2 trains on
all 60,000 images (the rest unlabelled) for ``--epochs`` or until ``--minutes`` of training
have passed, and the test error of q(y | x) on the 10,000 test images is measured after every
epoch (the curve); scikit-learn's logistic regression is fitted on the same labelled images.
Kingma et al. (2014) report 11.97% (+- 1.71) for M2 with 100 labels. Writes JSON.

Usage: python benchmarks/ssvae_mnist.py --data-root ../shared/data --labels 100 \
           --seeds 0 1 2 --minutes 60 --out ssvae_mnist.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _results import write_result  # benchmarks/, the script's folder

import ppvae
from ppvae.data import labelled_subset
from ppvae.train.hooks import Hook


class TestError(Hook):
    """q(y | x)'s test error after every epoch, and a stop at the time budget."""

    def __init__(self, model, x, y, seconds: float):
        self.model, self.x, self.y, self.seconds = model, x, y, seconds
        self.curve: list[float] = []

    def on_epoch_end(self, run) -> None:
        with run.untimed():
            self.curve.append(float((self.model.classify(self.x) != self.y).float().mean()))
        if run.history.seconds > self.seconds:
            run.stop = True


def logistic_regression_error(x, y, xt, yt) -> float:
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(max_iter=5000).fit(x.numpy(), y.numpy())
    return 1.0 - float(clf.score(xt.numpy(), yt.numpy()))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", required=True)
    p.add_argument("--labels", type=int, default=100)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--epochs", type=int, default=1000)
    p.add_argument("--minutes", type=float, default=60.0)
    p.add_argument("--latent-dim", type=int, default=50)
    p.add_argument("--hidden", type=int, nargs="+", default=[500])
    p.add_argument("--alpha", type=float, default=None,
                   help="weight of log q(y|x) per labelled row (default 0.1 N / labels)")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--n-train", type=int, default=None, help="a subset, for a smoke run")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    ds = ppvae.load_dataset("mnist", root=args.data_root, seed=0)
    x, labels = ds.train, ds.train_labels
    if args.n_train is not None:
        x, labels = x[: args.n_train], labels[: args.n_train]
    xt, yt = (ds.test > 0.5).float(), ds.test_labels
    alpha = args.alpha if args.alpha is not None else 0.1 * len(x) / args.labels
    runs = []
    for seed in args.seeds:
        y = labelled_subset(labels, args.labels, seed=seed)
        lab = y >= 0
        model = ppvae.SemiSupervisedVAE(x.shape[1], 10, args.latent_dim, hidden=args.hidden,
                                        alpha=alpha)  # fmt: skip
        hook = TestError(model, xt, yt, 60.0 * args.minutes)
        start = time.perf_counter()
        h = ppvae.fit(model, x, labels=y, epochs=args.epochs, batch_size=args.batch_size,
                      lr=args.lr, seed=seed, binarize="dynamic", hooks=[hook])  # fmt: skip
        runs.append({
            "seed": seed,
            "test_error": hook.curve[-1],
            "curve": hook.curve,
            "epochs": h.epochs,
            "train_seconds": h.seconds,
            "wall_seconds": time.perf_counter() - start,
            "logistic_regression_error": logistic_regression_error(
                (x[lab] > 0.5).float(), y[lab], xt, yt),
        })  # fmt: skip
        print(json.dumps(runs[-1]), flush=True)
    errors = [r["test_error"] for r in runs]
    result = {
        "labels": args.labels,
        "alpha": alpha,
        "runs": runs,
        "mean_test_error": statistics.mean(errors),
        "sd_test_error": statistics.stdev(errors) if len(errors) > 1 else None,
        "kingma_2014_m2_100_labels": 0.1197,
        "torch": torch.__version__,
    }
    write_result("ssvae_mnist", result, args.out)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
