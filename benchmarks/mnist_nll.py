"""The MNIST VAE benchmark of Burda et al. (2015): one stochastic layer, test NLL by IW.

Dynamically binarized MNIST (the test set binarized once, seeded), encoder and decoder with
two tanh hidden layers of 200 units, z of 50 dimensions, Bernoulli likelihood, Adam; trained for
``--epochs`` and evaluated by importance sampling with K = 5000 (chunked, bounded memory).
Prints JSON: test NLL (nats, with its standard error over test images, its Monte Carlo error for
these images apart from it, and the PSIS k-hat share), epochs, wall
times, steps/s and the peak resident memory of the process. Burda et al. report 86.76 nats for
this model after 3,280 passes (their IWAE: 85.54 with k = 5, 84.78 with k = 50). ``--out`` names
the result file, so that seeds run side by side do not overwrite each other.

Configurations (issue #15): ``--elbo iwae|iwae-dreg --num-particles K`` trains on the
importance-weighted bound, ``--guide diagonal|fullrank|iaf`` chooses q(z | x); the JSON also
reports the active units (latent dimensions whose mean KL(q(z_j | x) || N(0, 1)) over 1,000
test images exceeds 0.01 nats, Burda et al.'s criterion up to their covariance form).

Usage: python benchmarks/mnist_nll.py --data-root ../shared/data --epochs 10 [--device cuda]
       python benchmarks/mnist_nll.py --data-root ../shared/data --elbo iwae --num-particles 5
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time

import torch
from _results import write_result  # benchmarks/, the script's folder

import ppvae


def peak_rss_mib() -> float:
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return kib / 1024 if sys.platform != "darwin" else kib / 2**20


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data-root", required=True)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--lr-decay", type=float, default=1.0, help="final lr factor (fit's lr_decay)")
    p.add_argument("--decay-start", type=float, default=0.0, help="share of steps held at lr")
    p.add_argument("--kl-warmup", type=int, default=0, help="epochs of linear KL warm-up")
    p.add_argument(
        "--curve-images",
        type=int,
        default=1000,
        help="test images whose one-sample ELBO is recorded after each epoch (0: none)",
    )
    p.add_argument("--save", default=None, help="write the trained model here (ppvae.save)")
    p.add_argument("--iw-samples", type=int, default=5000)
    p.add_argument("--n-test", type=int, default=None, help="test subset (default: all 10,000)")
    p.add_argument(
        "--elbo", default="auto", help="fit's ELBO estimator (default: fit's own, compiled)"
    )
    p.add_argument("--num-particles", type=int, default=1, help="K draws per image (iwae)")
    p.add_argument("--guide", default="diagonal", choices=("diagonal", "fullrank", "iaf"))
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=None, help="result file (default results/mnist_nll.json)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    ds = ppvae.load_dataset(
        "mnist", args.data_root, seed=args.seed, binarize="dynamic", n_test=args.n_test
    )
    torch.manual_seed(args.seed)
    vae = ppvae.VAE(
        784, 50, hidden=(200, 200), activation="tanh", likelihood="bernoulli", guide=args.guide
    )
    t0 = time.perf_counter()
    history = ppvae.fit(
        vae,
        ds.train,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        lr_decay=args.lr_decay,
        decay_start=args.decay_start,
        kl_warmup_epochs=args.kl_warmup,
        test=ds.test[: args.curve_images] if args.curve_images else None,
        seed=args.seed,
        binarize="dynamic",
        elbo=args.elbo,
        num_particles=args.num_particles,
        device=args.device,
    )
    train_s = time.perf_counter() - t0
    if args.save:
        ppvae.save(vae, args.save, history=history)
    rss_after_training = peak_rss_mib()
    t1 = time.perf_counter()
    torch.manual_seed(args.seed + 1)
    est = ppvae.evaluate.estimate_log_likelihood(
        vae.to(args.device), ds.test.to(args.device), num_samples=args.iw_samples
    )
    eval_s = time.perf_counter() - t1
    with torch.no_grad():
        loc, scale = vae.encode(ds.test[:1000].to(args.device))
        kl = 0.5 * (loc.pow(2) + scale.pow(2) - 1.0 - 2.0 * scale.log()).mean(0)
    active_units = int((kl > 0.01).sum())
    result = {
        "benchmark": "mnist_nll",
        "model": "784-200-200-50 tanh, Bernoulli (Burda et al. 2015, 1 layer)",
        "epochs": args.epochs,
        "test_images": int(ds.test.shape[0]),
        "iw_samples": args.iw_samples,
        "test_nll_nats": -est.mean,
        "test_nll_se": est.sem,
        "test_nll_mc_se": est.mc_se_of_mean,
        "khat_share_gt_0.7": est.khat_share,
        "active_units": active_units,
        "guide": args.guide,
        "num_particles": args.num_particles,
        "train_minutes": history.seconds / 60,
        "train_wall_seconds_with_curve": train_s,
        "final_train_elbo": history.train_elbo[-1] if history.train_elbo else None,
        "lr": args.lr,
        "lr_decay": args.lr_decay,
        "decay_start": args.decay_start,
        "kl_warmup_epochs": args.kl_warmup,
        "batch_size": args.batch_size,
        "train_curve": history.train_elbo,
        "test_curve_images": args.curve_images,
        "test_elbo_curve": history.test_elbo,
        "train_seconds": train_s,
        "steps_per_s": history.steps / history.seconds if history.steps else None,
        "eval_seconds": eval_s,
        "peak_rss_mib_training": rss_after_training,
        "peak_rss_mib_total": peak_rss_mib(),
        "device": args.device,
        "threads": torch.get_num_threads(),
        "elbo": args.elbo,
        "torch": torch.__version__,
        "reference_burda_2015_nats": 86.76,
        "reference_burda_2015_1layer": {"vae_k1": 86.76, "iwae_k5": 85.54, "iwae_k50": 84.78},
        "seed": args.seed,
    }
    print(json.dumps(result, indent=2))
    write_result("mnist_nll", result, args.out)


if __name__ == "__main__":
    main()
