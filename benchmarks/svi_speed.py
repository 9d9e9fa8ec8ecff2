"""SVI step throughput: hand-written PyTorch vs Pyro's classic SVI vs ``ppvae.fit``.

In one process, in interleaved repetitions, at 1 and 2 threads, times

* (a) a hand-written PyTorch VAE step: the same networks (the VAE's own encoder and decoder
  modules), the same objective (minus the minibatch ELBO scaled to N, analytic KL), with
  ``torch.optim.Adam`` at its default settings (on CPU: one loop per tensor) and, as a second
  floor, with ``fused=True``, the kernel ``fit`` uses;
* (b) Pyro's classic loop: ``SVI(vae.model, vae.guide, pyro.optim.Adam, Trace_ELBO())`` with
  validation on, as in Pyro's tutorials;
* (c) ``ppvae.fit``: a whole epoch of ``fit`` (shuffling, indexing, guarded step, history)
  divided by its number of steps, with its default estimator (``elbo="auto"``: analytic KL,
  compiled by ``torch.jit.trace`` once per minibatch shape) and, as ``c_ppvae_fit_eager``,
  with the same estimator run eagerly (``elbo="meanfield"``);

for the 784-400-20 MLP VAE (Bernoulli) at batch 128, for the LinearVAE on digits,
full-batch, and for a user's program: the VAE class of Pyro's ``examples/vae/vae.py``
(784-400-50, ``model(x)`` without ``num_data``, no ppvae parts), which ``fit`` trains on its
eager path and classic SVI trains exactly as Pyro's example does. Prints JSON with steps/s
(median over repetitions) and the ratios c/a and b/c
(time per step, so c/a = 1.05 means fit is 5% slower than the hand-written loop);
``c_over_a_fused_adam`` compares fit with the hand-written loop on the same optimizer kernel,
which isolates the cost of Pyro and of fit's bookkeeping.

Usage: python benchmarks/svi_speed.py [--reps 5] [--steps 200] [--threads 1 2]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import pyro
import torch
from _results import write_result  # benchmarks/, the script's folder
from pyro.infer import SVI, Trace_ELBO
from torch.nn import functional as F

import ppvae
from ppvae import VAE, LinearVAE

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.programs import PyroExampleVAE


def _kl_std_normal(loc, scale):
    return 0.5 * (loc.pow(2) + scale.pow(2) - 1.0 - 2.0 * scale.log()).sum(-1)


def _bernoulli_logits(out, x):
    return -F.binary_cross_entropy_with_logits(out, x, reduction="none").sum(-1)


def _bernoulli_probs(out, x):
    return -F.binary_cross_entropy(out, x, reduction="none").sum(-1)


def hand_written_mlp(
    vae, X: torch.Tensor, batch: int, fused: bool = False, log_lik=_bernoulli_logits
):
    """(a) for a minibatch MLP VAE: its encoder and decoder, the minibatch ELBO scaled to N with
    an analytic KL, torch Adam; ``log_lik(decoder output, x)`` per row (Bernoulli on logits for
    ppvae's VAE, on probabilities for Pyro's example). Returns a function running steps."""
    opt = torch.optim.Adam(vae.parameters(), lr=1e-3, fused=fused)
    n = X.shape[0]

    def run(steps: int) -> None:
        perm = torch.randperm(n)
        for s in range(steps):
            i = (s * batch) % (n - batch + 1)
            xb = X[perm[i : i + batch]]
            loc, scale = vae.encoder(xb)
            z = loc + scale * torch.randn_like(loc)
            ll = log_lik(vae.decoder(z), xb)
            loss = -(n / xb.shape[0]) * (ll - _kl_std_normal(loc, scale)).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    return run


def hand_written_linear(vae: LinearVAE, X: torch.Tensor, fused: bool = False):
    """(a) for the LinearVAE, full batch: Gaussian likelihood, analytic KL."""
    opt = torch.optim.Adam(vae.parameters(), lr=0.05, betas=(0.9, 0.9), fused=fused)
    D = X.shape[1]
    half_log_2pi = 0.5 * math.log(2 * math.pi)

    def run(steps: int) -> None:
        for _ in range(steps):
            loc, scale = vae.encode(X)
            z = loc + scale * torch.randn_like(loc)
            mean = vae.decoder(z)
            sigma = vae.likelihood.scale
            ll = -0.5 * (X - mean).pow(2).sum(-1) / sigma**2 - D * (sigma.log() + half_log_2pi)
            loss = -(ll - _kl_std_normal(loc, scale)).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    return run


def classic_svi(vae, X: torch.Tensor, batch: int, lr: float, num_data: bool = True):
    """(b) Pyro's tutorial loop, validation on (``num_data=False``: the program takes only x,
    as in Pyro's example)."""
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": lr}), Trace_ELBO())
    n = X.shape[0]

    def run(steps: int) -> None:
        pyro.enable_validation(True)
        perm = torch.randperm(n)
        for s in range(steps):
            i = (s * batch) % (n - batch + 1)
            xb = X[perm[i : i + batch]]
            svi.step(xb, num_data=n) if num_data else svi.step(xb)
        pyro.enable_validation(False)

    return run


SETUP_SECONDS: dict[str, list[float]] = {}
COMPILE_SECONDS: dict[str, list[float]] = {}


def ppvae_fit(vae, X: torch.Tensor, batch: int, tag: str, **kwargs):
    """(c) ppvae.fit over ``steps`` steps; returns the seconds of its training loop.

    ``History.seconds`` times the loop (steps, shuffling, indexing, the per-epoch history),
    not the one-off setup before it (validating the data, building the objective), which
    is recorded separately under ``fit_setup_seconds``. The one-off compilation of a JIT
    estimator on the first step (``History.compile_seconds``) is taken out of the loop's
    time too and recorded under ``fit_compile_seconds``.
    """

    def run(steps: int) -> float:
        n_batches = max(1, X.shape[0] // batch)
        epochs = max(1, steps // n_batches)
        t = time.perf_counter()
        h = fit(vae, X, epochs=epochs, batch_size=batch, progress=False, **kwargs)
        SETUP_SECONDS.setdefault(tag, []).append(time.perf_counter() - t - h.seconds)
        COMPILE_SECONDS.setdefault(tag, []).append(h.compile_seconds)
        return (h.seconds - h.compile_seconds) * steps / h.steps

    return run


def fit(*args, **kwargs):
    return ppvae.fit(*args, **kwargs)


def measure(runners: dict, steps: int, reps: int) -> dict:
    times = {name: [] for name in runners}
    for run in runners.values():  # warm-up (allocations, JIT traces)
        run(min(steps, 10))
    for _ in range(reps):
        for name, run in runners.items():  # interleaved: drift hits every method alike
            t = time.perf_counter()
            loop_seconds = run(steps)
            times[name].append(loop_seconds or time.perf_counter() - t)
    return {name: steps / statistics.median(ts) for name, ts in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--steps", type=int, default=200, help="MLP steps per repetition")
    p.add_argument("--linear-steps", type=int, default=400)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = p.parse_args()
    pyro.enable_validation(False)
    torch.manual_seed(0)
    batch = 128
    X_mlp = (torch.rand(args.steps * batch, 784) < 0.2).float()  # binary pixels
    digits = ppvae.load_dataset("digits", seed=0).train
    results = {}
    for threads in args.threads:
        torch.set_num_threads(threads)
        torch.manual_seed(0)
        vaes = {k: VAE(784, 20, hidden=(400,), likelihood="bernoulli") for k in "abcde"}
        mlp = measure(
            {
                "a_hand_written": hand_written_mlp(vaes["a"], X_mlp, batch),
                "a_hand_written_fused_adam": hand_written_mlp(vaes["e"], X_mlp, batch, True),
                "b_pyro_classic_svi": classic_svi(vaes["b"], X_mlp, batch, 1e-3),
                "c_ppvae_fit": ppvae_fit(vaes["c"], X_mlp, batch, "mlp"),
                "c_ppvae_fit_eager": ppvae_fit(
                    vaes["d"], X_mlp, batch, "mlp_eager", elbo="meanfield"
                ),
            },
            args.steps,
            args.reps,
        )
        lins = {k: LinearVAE(64, 8) for k in "abcde"}
        lin = measure(
            {
                "a_hand_written": hand_written_linear(lins["a"], digits),
                "a_hand_written_fused_adam": hand_written_linear(lins["e"], digits, True),
                "b_pyro_classic_svi": classic_svi(lins["b"], digits, digits.shape[0], 0.05),
                "c_ppvae_fit": ppvae_fit(lins["c"], digits, digits.shape[0], "linear"),
                "c_ppvae_fit_eager": ppvae_fit(
                    lins["d"], digits, digits.shape[0], "linear_eager", elbo="meanfield"
                ),
            },
            args.linear_steps,
            args.reps,
        )
        torch.manual_seed(0)
        users = {k: PyroExampleVAE(784, z_dim=50, hidden_dim=400) for k in "abc"}
        pyro.clear_param_store()
        user = measure(
            {
                "a_hand_written": hand_written_mlp(
                    users["a"], X_mlp, batch, log_lik=_bernoulli_probs
                ),
                "b_pyro_classic_svi": classic_svi(users["b"], X_mlp, batch, 1e-3, False),
                "c_ppvae_fit": ppvae_fit(users["c"], X_mlp, batch, "user_program"),
            },
            args.steps,
            args.reps,
        )
        for name, r in (
            ("mlp_784_400_20_batch128", mlp),
            ("linear_vae_digits_full_batch", lin),
            ("user_program_pyro_example_vae_batch128", user),
        ):
            row = results[f"{name}_threads{threads}"] = {
                "steps_per_s": {k: round(v, 2) for k, v in r.items()},
                "c_over_a": round(r["a_hand_written"] / r["c_ppvae_fit"], 3),
                "b_over_c": round(r["c_ppvae_fit"] / r["b_pyro_classic_svi"], 3),
            }
            if "a_hand_written_fused_adam" in r:
                row["c_over_a_fused_adam"] = round(
                    r["a_hand_written_fused_adam"] / r["c_ppvae_fit"], 3
                )
            if "c_ppvae_fit_eager" in r:
                row["c_eager_over_a"] = round(r["a_hand_written"] / r["c_ppvae_fit_eager"], 3)
    result = {
        "benchmark": "svi_speed",
        "ratios": "time per step: c/a = fit vs hand-written, b/c = classic SVI vs fit",
        "results": results,
        "fit_setup_seconds": {
            k: round(statistics.median(v), 4) for k, v in SETUP_SECONDS.items()
        },
        "fit_compile_seconds": {
            k: round(statistics.median(v), 4) for k, v in COMPILE_SECONDS.items()
        },
        "torch": torch.__version__,
        "pyro": pyro.__version__,
    }
    print(json.dumps(result, indent=2))
    write_result("svi_speed", result)


if __name__ == "__main__":
    main()
