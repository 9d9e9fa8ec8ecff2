"""The semi-supervised VAE (M2) on MNIST with few labels, against logistic regression.

For each seed: ``labelled_subset`` keeps ``--labels`` training labels (balanced), M2 trains on
all 60,000 images (the rest unlabelled) for ``--epochs`` or until ``--minutes`` of training
have passed, and the test error of q(y | x) on the 10,000 test images is measured after every
epoch (the curve). Two baselines on the same labelled images: scikit-learn's logistic
regression, and ppvae's stacked autoencoder (``--stacked-hidden``; greedy layer-wise
pretraining on all training images for ``--stacked-pretrain-epochs`` per layer, then
fine-tuning on the labelled ones for ``--stacked-finetune-epochs``). Kingma et al. (2014)
report 11.97% (+- 1.71) for M2 with 100 labels. Writes JSON, and beside it the curves
(``<out>_curve.png``) and the first seed's conditional samples, a row per class
(``<out>_samples.png``).

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
        print(f"epoch {len(self.curve)}: test error {self.curve[-1]:.4f} after "
              f"{run.history.seconds:.0f} s of training", flush=True)  # fmt: skip
        if run.history.seconds > self.seconds:
            run.stop = True


def logistic_regression_error(x, y, xt, yt) -> float:
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(max_iter=5000).fit(x.numpy(), y.numpy())
    return 1.0 - float(clf.score(xt.numpy(), yt.numpy()))


def stacked_autoencoder_error(x, x_lab, y_lab, xt, yt, args, seed: int) -> dict:
    """Test error of ppvae's stacked autoencoder: pretrained on ``x``, fine-tuned on the
    labelled rows."""
    torch.manual_seed(seed)
    stack = ppvae.StackedAutoencoder(x.shape[1], hidden=args.stacked_hidden, n_classes=10)
    t = time.perf_counter()
    ppvae.pretrain(stack, x, epochs=args.stacked_pretrain_epochs, seed=seed, progress=False)
    ppvae.finetune(stack, x_lab, y_lab, epochs=args.stacked_finetune_epochs,
                   batch_size=min(100, len(y_lab)), seed=seed, progress=False)  # fmt: skip
    return {"error": float((stack.cpu().predict(xt) != yt).float().mean()),
            "seconds": time.perf_counter() - t}  # fmt: skip


def figures(runs: list[dict], model, out: Path, labels: int) -> dict:
    """The curves of every seed with the baselines' means, and conditional samples."""
    from ppvae import plots

    stem = out.with_suffix("")
    means = {
        "logistic regression": statistics.mean(r["logistic_regression_error"] for r in runs),
        "stacked autoencoder": statistics.mean(r["stacked_autoencoder"]["error"] for r in runs),
        "Kingma et al. M2, 100 labels": 0.1197,
    }
    curve = runs[0]["curve"]
    plots.error_curve(range(1, len(curve) + 1), curve, f"{stem}_curve.png", reference=means,
                      title=f"M2 on MNIST, {labels} labels: q(y | x) test error (seed "
                      f"{runs[0]['seed']})")  # fmt: skip
    torch.manual_seed(0)
    rows = [model.sample(torch.full((8,), c)) for c in range(10)]
    plots.image_grid(rows, (28, 28), f"{stem}_samples.png",
                     row_labels=[str(c) for c in range(10)],
                     title="M2: E[x | y, z], z ~ p(z), a row per class")  # fmt: skip
    return {"curve": f"{stem.name}_curve.png", "samples": f"{stem.name}_samples.png"}


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
    p.add_argument("--labelled-per-batch", type=int, default=None,
                   help="labelled rows in every minibatch (fit's labelled_per_batch); "
                        "default: uniform minibatches")  # fmt: skip
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--stacked-hidden", type=int, nargs="+", default=[500, 500])
    p.add_argument("--stacked-pretrain-epochs", type=int, default=5)
    p.add_argument("--stacked-finetune-epochs", type=int, default=300)
    p.add_argument("--n-train", type=int, default=None, help="a subset, for a smoke run")
    p.add_argument("--baselines-only", action="store_true",
                   help="only the two baselines (for a run whose M2 result has none)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    ds = ppvae.load_dataset("mnist", root=args.data_root, seed=0)
    x, labels = ds.train, ds.train_labels
    if args.n_train is not None:
        x, labels = x[: args.n_train], labels[: args.n_train]
    xt, yt = (ds.test > 0.5).float(), ds.test_labels
    alpha = args.alpha if args.alpha is not None else 0.1 * len(x) / args.labels
    runs, model = [], None
    for seed in args.seeds:
        y = labelled_subset(labels, args.labels, seed=seed)
        lab = y >= 0
        baselines = {
            "logistic_regression_error": logistic_regression_error(
                (x[lab] > 0.5).float(), y[lab], xt, yt),
            "stacked_autoencoder": stacked_autoencoder_error(
                (x > 0.5).float(), (x[lab] > 0.5).float(), y[lab], xt, yt, args, seed),
        }  # fmt: skip
        if args.baselines_only:
            runs.append({"seed": seed, **baselines})
            print(json.dumps(runs[-1]), flush=True)
            continue
        m2 = ppvae.SemiSupervisedVAE(x.shape[1], 10, args.latent_dim, hidden=args.hidden,
                                     alpha=alpha)  # fmt: skip
        model = model or m2
        hook = TestError(m2, xt, yt, 60.0 * args.minutes)
        start = time.perf_counter()
        h = ppvae.fit(m2, x, labels=y, epochs=args.epochs, batch_size=args.batch_size,
                      lr=args.lr, seed=seed, binarize="dynamic", hooks=[hook],
                      labelled_per_batch=args.labelled_per_batch)  # fmt: skip
        runs.append({
            "seed": seed,
            "test_error": hook.curve[-1],
            "curve": hook.curve,
            "epochs": h.epochs,
            "train_seconds": h.seconds,
            "wall_seconds": time.perf_counter() - start,
            **baselines,
        })  # fmt: skip
        print(json.dumps(runs[-1]), flush=True)
    errors = [r["test_error"] for r in runs if "test_error" in r]
    result = {
        "labels": args.labels,
        "alpha": alpha,
        "runs": runs,
        "mean_test_error": statistics.mean(errors) if errors else None,
        "sd_test_error": statistics.stdev(errors) if len(errors) > 1 else None,
        "kingma_2014_m2_100_labels": 0.1197,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "torch": torch.__version__,
    }
    path = write_result("ssvae_mnist", result, args.out)
    if model is not None:
        result["figures"] = figures(runs, model, path, args.labels)
        write_result("ssvae_mnist", result, path)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
