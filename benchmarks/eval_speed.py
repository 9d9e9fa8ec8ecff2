"""Evaluation against its floor: ppvae's estimators, hand-written PyTorch, the matmuls alone.

In one process, in interleaved repetitions, for Burda et al.'s (2015) MNIST VAE (784-200-200-50
tanh, Bernoulli) at K importance samples, times

* (a) a hand-written batched computation of the same log weights: encoder once, ``z = loc +
  scale * eps`` for (K, n, 50) draws, decoder, Bernoulli log-probability by
  ``binary_cross_entropy_with_logits``, standard-normal prior and Gaussian log q, logsumexp
  over K, in chunks of the size ``log_likelihood`` uses;
* (b) ``evaluate.log_likelihood`` (Pyro traces of the model replayed against the guide);
* (c) ``evaluate.estimate_log_likelihood`` (b plus standard errors and PSIS k-hat);
* (d) the matmul floor: the encoder's and decoder's affine layers alone (``F.linear``, bias
  included, no activation, no sampling, no likelihood) on inputs of the same shapes, in the
  same chunks: the encoder once per chunk of images, the decoder on the (k, n, 50) draws;

and checks that (a) and (b) give the same values from the same seed. For AIS, it times one
HMC gradient evaluation of ppvae's annealing path (model and guide traced, autograd through
the decoder) against a hand-written gradient of the same log joint, at C chains x n points.

Prints JSON: seconds per image, ratios b/a, c/b and the AIS per-step ratio (medians over
repetitions, and b/a, c/b of the fastest repetitions), the projected time for all 10,000
MNIST test images, and peak resident memory.
Weights only affect the timing through their values' ranges, so the network is untrained
unless ``--model`` names a saved one (``ppvae.save``); images are MNIST test images from
``--data-root`` if given, else random binary images with MNIST's mean intensity.

Usage: python benchmarks/eval_speed.py [--data-root ../shared/data] [--images 20] [--reps 7]
       [--samples 5000] [--threads 1] [--model bench/iwae5.pt]
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import time

import torch
from _results import write_result  # benchmarks/, the script's folder
from torch.nn import functional as F

import ppvae
from ppvae import evaluate
from ppvae.evaluate import ais as ais_mod
from ppvae.evaluate._common import _DEFAULT_MAX_ELEMENTS, _chunks


def _normal_log_prob(z, loc, scale):
    return (-0.5 * ((z - loc) / scale).pow(2) - scale.log() - 0.5 * math.log(2 * math.pi)).sum(-1)


def hand_log_likelihood(vae, X, num_samples, max_elements=_DEFAULT_MAX_ELEMENTS):
    """log (1/K) sum_k p(x, z_k) / q(z_k | x), z_k ~ q, in plain PyTorch, (N,)."""
    n_chunk, k_chunk = _chunks(X.shape[0], num_samples, vae.eval_width, max_elements)
    out = []
    with torch.no_grad():
        for i in range(0, X.shape[0], n_chunk):
            x = X[i : i + n_chunk]
            loc, scale = vae.encode(x)
            blocks = []
            for j in range(0, num_samples, k_chunk):
                m = min(k_chunk, num_samples - j)
                eps = torch.randn(m, *loc.shape)
                z = loc + scale * eps
                logits = vae.decoder(z)
                log_lik = -F.binary_cross_entropy_with_logits(
                    logits, x.expand_as(logits), reduction="none"
                ).sum(-1)
                log_prior = (-0.5 * z.pow(2) - 0.5 * math.log(2 * math.pi)).sum(-1)
                blocks.append((log_lik + log_prior - _normal_log_prob(z, loc, scale)).logsumexp(0))
            out.append(torch.stack(blocks).logsumexp(0))
    return torch.cat(out) - math.log(num_samples)


def _linears(net) -> list:
    return [m for m in net.modules() if isinstance(m, torch.nn.Linear)]


def matmul_floor(vae, X, num_samples, max_elements=_DEFAULT_MAX_ELEMENTS) -> float:
    """Seconds of the networks' affine layers alone (``F.linear``, bias included) on inputs of
    the shapes ``log_likelihood`` feeds them, in its chunks; the inputs are drawn beforehand
    and not timed."""
    n_chunk, k_chunk = _chunks(X.shape[0], num_samples, vae.eval_width, max_elements)
    enc, dec = _linears(vae.encoder), _linears(vae.decoder)
    inputs: dict = {}

    def inp(rows: int, width: int) -> torch.Tensor:
        if (rows, width) not in inputs:
            inputs[(rows, width)] = torch.randn(rows, width)
        return inputs[(rows, width)]

    plan = []
    for i in range(0, X.shape[0], n_chunk):
        n = min(n_chunk, X.shape[0] - i)
        plan += [(lin, n) for lin in enc]
        for j in range(0, num_samples, k_chunk):
            m = min(k_chunk, num_samples - j)
            plan += [(lin, m * n) for lin in dec]
    for lin, rows in plan:  # draw the inputs before the clock starts
        inp(rows, lin.in_features)
    with torch.no_grad():
        t = time.perf_counter()
        for lin, rows in plan:
            F.linear(inp(rows, lin.in_features), lin.weight, lin.bias)
        return time.perf_counter() - t


def hand_log_joint_grad(vae, x, z):
    """Gradient of log p(x, z) + log q(z | x) mixture as AIS's path needs it, by hand."""
    with torch.enable_grad():
        z = z.detach().requires_grad_(True)
        logits = vae.decoder(z)
        log_lik = -F.binary_cross_entropy_with_logits(
            logits, x.expand_as(logits), reduction="none"
        ).sum(-1)
        log_joint = log_lik + (-0.5 * z.pow(2)).sum(-1)
        loc, scale = vae.encode(x)
        log_q = _normal_log_prob(z, loc, scale)
        (g,) = torch.autograd.grad((0.5 * log_q + 0.5 * log_joint).sum(), z)
    return g


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def _images(args) -> torch.Tensor:
    if args.data_root:
        ds = ppvae.load_dataset("mnist", root=args.data_root, binarize="static", seed=0)
        return ds.test[: args.images].float()
    g = torch.Generator().manual_seed(0)
    return torch.bernoulli(torch.full((args.images, 784), 0.13), generator=g)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-root", default=None)
    p.add_argument("--images", type=int, default=20)
    p.add_argument("--samples", type=int, default=5000)
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--model", default=None, help="a saved Burda VAE (ppvae.save)")
    p.add_argument("--ais-chains", type=int, default=16)
    p.add_argument("--ais-points", type=int, default=100)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.model:
        vae = ppvae.load(args.model)
    else:
        torch.manual_seed(0)
        vae = ppvae.VAE(784, 50, hidden=(200, 200), activation="tanh", likelihood="bernoulli")
    vae.eval()
    X = _images(args)
    K = args.samples

    # same draws, same values: ppvae's guide draws eps exactly as the hand-written loop does
    torch.manual_seed(1)
    a_vals = hand_log_likelihood(vae, X[:2], K)
    torch.manual_seed(1)
    b_vals = evaluate.log_likelihood(vae, X[:2], K)
    same = float((a_vals - b_vals).abs().max())

    times = {"a_hand": [], "b_log_likelihood": [], "c_estimate": [], "d_matmuls": []}
    for _ in range(args.reps):
        times["d_matmuls"].append(matmul_floor(vae, X, K))
        times["a_hand"].append(_timed(lambda: hand_log_likelihood(vae, X, K))[0])
        times["b_log_likelihood"].append(_timed(lambda: evaluate.log_likelihood(vae, X, K))[0])
        times["c_estimate"].append(
            _timed(lambda: evaluate.estimate_log_likelihood(vae, X, K))[0]
        )
    med = {k: statistics.median(v) for k, v in times.items()}
    best = {k: min(v) for k, v in times.items()}
    ratios_b = [b / a for a, b in zip(times["a_hand"], times["b_log_likelihood"], strict=True)]
    ratios_c = [c / b for b, c in zip(times["b_log_likelihood"], times["c_estimate"], strict=True)]
    ratios_cd = [c / d for d, c in zip(times["d_matmuls"], times["c_estimate"], strict=True)]
    ratios_ad = [a / d for d, a in zip(times["d_matmuls"], times["a_hand"], strict=True)]

    # AIS: one gradient evaluation of the annealing path vs the hand-written gradient
    xs = _images(argparse.Namespace(**{**vars(args), "images": args.ais_points}))
    ev, xs = evaluate._common._prepare(vae, xs, args.ais_chains)
    target = ais_mod._Target(ev, xs, "guide")
    z = torch.randn(args.ais_chains, xs.shape[0], 50)
    ais_t = {"hand": [], "ppvae": []}
    with ais_mod._Frozen(ev):
        for _ in range(args.reps):
            t_h = min(_timed(lambda: hand_log_joint_grad(vae, xs, z))[0] for _ in range(5))
            t_p = min(_timed(lambda: ais_mod._densities(target, z, 0.5))[0] for _ in range(5))
            ais_t["hand"].append(t_h)
            ais_t["ppvae"].append(t_p)
    ais_ratios = [p / h for h, p in zip(ais_t["hand"], ais_t["ppvae"], strict=True)]
    per_image = med["c_estimate"] / X.shape[0]
    result = {
        "benchmark": "eval_speed",
        "model": "784-200-200-50 tanh, Bernoulli (Burda et al. 2015)",
        "images": X.shape[0],
        "num_samples": K,
        "reps": args.reps,
        "threads": args.threads,
        "same_draws_max_abs_diff_nats": same,
        "seconds": med,
        "b_over_a_log_likelihood_vs_hand": statistics.median(ratios_b),
        "c_over_b_psis_overhead": statistics.median(ratios_c),
        # the floor: the encoder's and decoder's F.linear calls alone, same chunks
        "c_over_d_estimate_with_psis_vs_matmuls": statistics.median(ratios_cd),
        "a_over_d_hand_vs_matmuls": statistics.median(ratios_ad),
        # interference from other work on a shared machine only ever adds time, so
        # the ratio of the fastest repetitions is the least noisy estimate of the cost
        "best_seconds": best,
        "b_over_a_best": best["b_log_likelihood"] / best["a_hand"],
        "c_over_b_best": best["c_estimate"] / best["b_log_likelihood"],
        "c_over_d_best": best["c_estimate"] / best["d_matmuls"],
        "projected_seconds_10000_images": {
            "a_hand": med["a_hand"] / X.shape[0] * 10000,
            "b_log_likelihood": med["b_log_likelihood"] / X.shape[0] * 10000,
            "c_estimate": per_image * 10000,
        },
        "ais_gradient_seconds": {k: statistics.median(v) for k, v in ais_t.items()},
        "ais_gradient_ratio_ppvae_over_hand": statistics.median(ais_ratios),
        "ais_batch": [args.ais_chains, xs.shape[0]],
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "torch": torch.__version__,
    }
    print(json.dumps(result, indent=1))
    write_result("eval_speed", result)


if __name__ == "__main__":
    main()
