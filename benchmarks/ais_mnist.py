"""IW against AIS on MNIST, with BDMC's bound on AIS's error (issue #16).

For a trained Burda et al. (2015) VAE (784-200-200-50 tanh, Bernoulli; ``--model``, written
by ``benchmarks/mnist_nll.py --save``), on the same ``--images`` statically binarized MNIST
test images, reports

* the importance-weighted estimate with K = ``--iw-samples`` (default 5000) and its PSIS k-hat
  share above 0.7;
* AIS from the guide at each T in ``--steps``, with ``--chains`` chains: mean log p(x), its
  standard error over images, the mean Monte Carlo standard error and ESS, the acceptance
  rate, and the wall time;
* BDMC at each T on ``--bdmc-points`` points simulated from the model: the mean lower and
  upper bounds and their gap (the error forward AIS with those settings can have on such
  data), and the wall time.

Prints JSON. Usage:
  python benchmarks/ais_mnist.py --data-root ../shared/data --model bench/vae.pt \\
      [--images 100] [--steps 100 500 2000] [--chains 16] [--threads 1]
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


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-root", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--images", type=int, default=100)
    p.add_argument("--iw-samples", type=int, default=5000)
    p.add_argument("--steps", type=int, nargs="+", default=[100, 500, 2000])
    p.add_argument("--chains", type=int, default=16)
    p.add_argument("--leapfrog", type=int, default=10)
    p.add_argument("--bdmc-points", type=int, default=100)
    p.add_argument("--bdmc-chains", type=int, default=4)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    vae = ppvae.load(args.model).eval()
    ds = ppvae.load_dataset("mnist", root=args.data_root, binarize="static", seed=args.seed)
    X = ds.test[: args.images].float()
    n = X.shape[0]

    t = time.perf_counter()
    torch.manual_seed(args.seed)
    iw = evaluate.estimate_log_likelihood(vae, X, args.iw_samples)
    out = {
        "benchmark": "ais_mnist",
        "model": args.model,
        "images": n,
        "iw": {
            "num_samples": args.iw_samples,
            "mean": iw.mean,
            "sem_over_images": float(iw.log_px.std() / math.sqrt(n)),
            "khat_share_gt_0.7": iw.khat_share,
            "seconds": time.perf_counter() - t,
        },
        "ais": [],
        "bdmc": [],
    }
    for T in args.steps:
        t = time.perf_counter()
        est = evaluate.ais_log_likelihood(
            vae,
            X,
            num_steps=T,
            num_chains=args.chains,
            leapfrog_steps=args.leapfrog,
            seed=args.seed,
        )
        diff = est.log_px - iw.log_px
        out["ais"].append(
            {
                "num_steps": T,
                "num_chains": args.chains,
                "mean": est.mean,
                "sem_over_images": float(est.log_px.std() / math.sqrt(n)),
                "minus_iw_mean": float(diff.mean()),
                "minus_iw_sem": float(diff.std() / math.sqrt(n)),
                "mc_se_mean": float(est.mc_se.mean()),
                "ess_mean": float(est.ess.mean()),
                "acceptance_mean": float(est.acceptance.mean()),
                "seconds": time.perf_counter() - t,
            }
        )
        print(json.dumps(out["ais"][-1]), flush=True)
    for T in args.steps:
        t = time.perf_counter()
        r = evaluate.bdmc(
            vae,
            args.bdmc_points,
            num_steps=T,
            num_chains=args.bdmc_chains,
            leapfrog_steps=args.leapfrog,
            seed=args.seed,
        )
        out["bdmc"].append({**r.summary(), "seconds": time.perf_counter() - t})
        print(json.dumps(out["bdmc"][-1]), flush=True)
    out.update(threads=args.threads, torch=torch.__version__)
    write_result("ais_mnist", out)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
