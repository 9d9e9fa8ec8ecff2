"""What AIS's number on test images rests on, measured on digits (issue #31, item 2).

A small nonlinear VAE (64-``--hidden``-``--latent-dim``, Gaussian likelihood, ELBO-trained
``--epochs`` epochs on the dequantized digits) is evaluated on ``--images`` test images:

* **IW**: the importance-weighted estimate with K = ``--iw-samples`` and its PSIS k-hat share;
* **pilot**: one adapted AIS run (T = ``--pilot-steps``, its own seed) whose final per-image
  step sizes give the fixed step (their median) for everything below; the pilot's chains are
  discarded, so the runs that use its step are unbiased given it;
* **T-sweep, adaptation off**: AIS at each T of ``--steps`` with that fixed step: mean
  log p(x), its standard error over images, the mean Monte Carlo standard error over chains,
  the paired difference to IW and to the previous T, acceptance, seconds. With the step fixed,
  E[w] = p(x) exactly for every T, so the sequence is a set of stochastic lower bounds whose
  convergence is what is measured;
* **T-sweep, adaptation on** (the library's default): the same T, and the paired difference
  adapted - fixed with its standard error (the bias adaptation could add shows there);
* **BDMC** at each T of ``--bdmc-steps`` (adaptation off, same step) on ``--bdmc-points``
  points simulated from the VAE: lower and upper bounds and their gap, with standard errors;
* **gaps**: :func:`ppvae.evaluate.inference_gaps` on the first ``--gap-images`` images with
  ``ais=`` at the largest T: the approximation gap against IW and against AIS.

All numbers are nats per image (log-densities of the dequantized [0, 1]^64 data). Writes
``--out`` (JSON) and prints it.

    python benchmarks/ais_certify.py --threads 1
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


def _sem(v: torch.Tensor) -> float:
    return float(v.double().std() / math.sqrt(v.numel()))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--latent-dim", type=int, default=4)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--images", type=int, default=50)
    p.add_argument("--iw-samples", type=int, default=5000)
    p.add_argument("--chains", type=int, default=8)
    p.add_argument("--leapfrog", type=int, default=10)
    p.add_argument("--pilot-steps", type=int, default=100)
    p.add_argument("--steps", type=int, nargs="+", default=[10, 30, 100, 300, 1000])
    p.add_argument("--bdmc-steps", type=int, nargs="+", default=[10, 100, 300])
    p.add_argument("--bdmc-points", type=int, default=50)
    p.add_argument("--gap-images", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="default benchmarks/results/ais_certify.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    t_all = time.perf_counter()

    ds = ppvae.load_dataset("digits", seed=args.seed)
    torch.manual_seed(args.seed)
    vae = ppvae.VAE(ds.data_dim, args.latent_dim, hidden=(args.hidden,))
    t = time.perf_counter()
    h = ppvae.fit(vae, ds.train, epochs=args.epochs, batch_size=100, seed=args.seed, progress=False)
    vae.eval()
    X = ds.test[: args.images].float()
    n = X.shape[0]
    out: dict = {
        "benchmark": "ais_certify",
        "model": f"VAE {ds.data_dim}-{args.hidden}-{args.latent_dim}, gaussian, ELBO",
        "epochs": args.epochs,
        "train_elbo": h.train_elbo[-1],
        "fit_seconds": time.perf_counter() - t,
        "images": n,
        "chains": args.chains,
        "leapfrog_steps": args.leapfrog,
    }

    t = time.perf_counter()
    torch.manual_seed(args.seed)
    iw = evaluate.estimate_log_likelihood(vae, X, args.iw_samples)
    out["iw"] = {
        "num_samples": args.iw_samples,
        "mean": iw.mean,
        "sem_over_images": _sem(iw.log_px),
        "mc_se_mean": float(iw.mc_se.mean()),
        "khat_share_gt_0.7": iw.khat_share,
        "seconds": time.perf_counter() - t,
    }
    print(json.dumps({"iw": out["iw"]}), flush=True)

    common = {"num_chains": args.chains, "leapfrog_steps": args.leapfrog}
    t = time.perf_counter()
    pilot = evaluate.ais_log_likelihood(
        vae, X, num_steps=args.pilot_steps, adapt=True, seed=args.seed + 1000, **common
    )
    step = float(pilot.step_size.median())
    out["pilot"] = {
        "num_steps": args.pilot_steps,
        "step_size_median": step,
        "step_size_range": [float(pilot.step_size.min()), float(pilot.step_size.max())],
        "acceptance_mean": float(pilot.acceptance.mean()),
        "seconds": time.perf_counter() - t,
    }
    print(json.dumps({"pilot": out["pilot"]}), flush=True)

    out["sweep"] = []
    previous = None
    fixed = {}
    for adapt in (False, True):
        for T in args.steps:
            t = time.perf_counter()
            est = evaluate.ais_log_likelihood(
                vae, X, num_steps=T, adapt=adapt, step_size=step, seed=args.seed + T, **common
            )
            diff = est.log_px - iw.log_px
            row = {
                "adapt": adapt,
                "num_steps": T,
                "mean": est.mean,
                "sem_over_images": _sem(est.log_px),
                "mc_se_mean": float(est.mc_se.mean()),
                "mc_se_of_mean": float(est.mc_se.pow(2).sum().sqrt() / n),
                "minus_iw": float(diff.mean()),
                "minus_iw_sem": _sem(diff),
                "ess_mean": float(est.ess.mean()),
                "acceptance_mean": float(est.acceptance.mean()),
                "seconds": time.perf_counter() - t,
            }
            if not adapt:
                if previous is not None:
                    d = est.log_px - previous.log_px
                    row["minus_previous_T"] = float(d.mean())
                    row["minus_previous_T_sem"] = _sem(d)
                previous = est
                fixed[T] = est
            else:
                d = est.log_px - fixed[T].log_px
                row["adapted_minus_fixed"] = float(d.mean())
                row["adapted_minus_fixed_sem"] = _sem(d)
            out["sweep"].append(row)
            print(json.dumps(row), flush=True)

    out["bdmc"] = []
    for T in args.bdmc_steps:
        t = time.perf_counter()
        r = evaluate.bdmc(
            vae,
            args.bdmc_points,
            num_steps=T,
            adapt=False,
            step_size=step,
            seed=args.seed + 7 * T,
            **common,
        )
        row = {
            **r.summary(),
            "adapt": False,
            "lower_sem": _sem(r.lower.log_px),
            "gap_sem": _sem(r.gap),
            "seconds": time.perf_counter() - t,
        }
        out["bdmc"].append(row)
        print(json.dumps(row), flush=True)

    t = time.perf_counter()
    T = max(args.steps)
    m = min(args.gap_images, n)
    torch.manual_seed(args.seed)
    g = evaluate.inference_gaps(
        vae,
        X[:m],
        num_samples=args.iw_samples,
        ais={"num_steps": T, "adapt": False, "step_size": step, "seed": args.seed, **common},
    )
    d = g["approximation_gap"] - g["approximation_gap_ais"]
    out["gaps"] = {
        "images": m,
        "ais_num_steps": T,
        "approximation_gap_iw": g["mean"]["approximation_gap"],
        "approximation_gap_ais": g["mean"]["approximation_gap_ais"],
        "approximation_gap_ais_sem": _sem(g["approximation_gap_ais"]),
        "iw_minus_ais_gap": float(d.mean()),
        "iw_minus_ais_gap_sem": _sem(d),
        "amortization_gap": g["mean"]["amortization_gap"],
        "seconds": time.perf_counter() - t,
    }
    print(json.dumps({"gaps": out["gaps"]}), flush=True)
    out.update(
        threads=args.threads,
        seconds_total=time.perf_counter() - t_all,
    )
    write_result("ais_certify", out, args.out)
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
