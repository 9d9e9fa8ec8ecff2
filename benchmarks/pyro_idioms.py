"""Programs written the ways Pyro's tutorials write them, each number against Pyro's own
computation or an exact value (the README's "Pyro programs as you write them").

1. Subsampling inside the plate (``pyro.plate("data", len(x), subsample_size=32)``), a user's
   VAE on the bundled digits: fit's last-epoch train ELBO against Pyro's own full-data
   ``Trace_ELBO`` of the trained program and against ``evaluate.elbo``.
2. A renamed plate (``pyro.plate("rows", ...)``) through ``as_program(..., data_plate="rows")``.
3. A global latent (a shift b with q(b) in the guide): ``estimate_log_likelihood`` against
   log E_q(b) p(x | b) by Gauss-Hermite quadrature, and the plug-in value.
4. A positive local latent (Gamma-Poisson): AIS from the prior and NUTS against the
   closed-form marginal and posterior mean.

Usage: python benchmarks/pyro_idioms.py [--out results.json]; about a minute on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import Trace_ELBO
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _results import write_result  # benchmarks/, the script's folder

import ppvae
from ppvae import evaluate
from tests import test_pyro_idioms as t


class SubsamplingVAE(nn.Module):
    """A user's VAE, Bernoulli on binarized digits, subsampling inside its plate."""

    def __init__(self, data_dim=64, z_dim=4, hidden=64, subsample=32, plate="data"):
        super().__init__()
        self.enc = nn.Sequential(
            nn.Linear(data_dim, hidden), nn.Tanh(), nn.Linear(hidden, 2 * z_dim)
        )
        self.dec = nn.Sequential(nn.Linear(z_dim, hidden), nn.Tanh(), nn.Linear(hidden, data_dim))
        self.z_dim, self.subsample, self.plate = z_dim, subsample, plate

    def model(self, x):
        pyro.module("dec", self.dec)
        with pyro.plate(self.plate, len(x), subsample_size=min(self.subsample, len(x))) as i:
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([len(i), self.z_dim]).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.dec(z)).to_event(1), obs=x[i])

    def guide(self, x):
        pyro.module("enc", self.enc)
        with pyro.plate(self.plate, len(x), subsample_size=min(self.subsample, len(x))) as i:
            loc, log_scale = self.enc(x[i]).chunk(2, -1)
            pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))


def subsampling(train, test, epochs: int) -> dict:
    pyro.clear_param_store()
    torch.manual_seed(0)
    vae = SubsamplingVAE()
    h = ppvae.fit(vae, train, epochs=epochs, batch_size=128, lr=3e-3, seed=0, progress=False)
    with torch.no_grad():  # Pyro's own estimate of the full-data ELBO (it subsamples 32 rows)
        pyro_full = torch.tensor([-Trace_ELBO().loss(vae.model, vae.guide, train) / len(train)
                                  for _ in range(500)])  # fmt: skip
    ours = float(evaluate.elbo(vae, train, num_samples=20).mean())
    renamed = SubsamplingVAE(plate="rows")
    renamed.load_state_dict(vae.state_dict())
    prog = ppvae.as_program(renamed, data_plate="rows")
    pyro.set_rng_seed(0)
    a = evaluate.log_likelihood(prog, test, num_samples=200)
    pyro.set_rng_seed(0)
    b = evaluate.log_likelihood(vae, test, num_samples=200)
    return {
        "epochs": epochs,
        "batch_size": 128,
        "subsample_size": 32,
        "fit_train_elbo_last_epoch": h.train_elbo[-1],
        "pyro_trace_elbo_full_data": float(pyro_full.mean()),
        "pyro_trace_elbo_full_data_se": float(pyro_full.std() / math.sqrt(len(pyro_full))),
        "evaluate_elbo_train": ours,
        "double_scaling_factor_this_replaced": 128 / 32,
        "renamed_plate_log_lik": float(a.mean()),
        "data_plate_log_lik_same_seed": float(b.mean()),
    }


def global_latent() -> dict:
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    x = t.data(200, seed=2) + 0.6
    exact, _ = t.over_q_b(x)
    est = evaluate.estimate_log_likelihood(t.global_program(), x, num_samples=5, global_samples=400)
    plug = evaluate.log_likelihood(t.global_program(), x, num_samples=5,
                                   point_estimates={"b": t.QB_LOC})  # fmt: skip
    return {
        "estimate_mean": est.mean,
        "estimate_mc_se_mean": float(est.mc_se.mean()),
        "exact_log_E_q_p_x_given_b": float(exact.mean()),
        "plug_in_mean": float(plug.mean()),
        "exact_plug_in": float(t.exact_log_px(x - t.QB_LOC).mean()),
    }


def constrained_latent() -> dict:
    pyro.set_rng_seed(0)
    x = t.counts(20)
    exact = t.gamma_poisson_log_px(x)
    ais = evaluate.ais_log_likelihood(t.gamma_poisson(), x, start="prior", num_steps=100,
                                      num_chains=32, seed=0)  # fmt: skip
    nuts = evaluate.nuts_posterior(t.gamma_poisson(), x[:1], num_samples=300, warmup_steps=200,
                                   num_chains=1)  # fmt: skip
    return {
        "ais_mean": ais.mean,
        "ais_mc_se_mean": float(ais.mc_se.mean()),
        "exact_mean": float(exact.mean()),
        "nuts_posterior_mean": float(nuts[0]["samples"].mean()),
        "nuts_ess_bulk": float(nuts[0]["ess_bulk_min"]),
        "exact_posterior_mean": float((t.A + x[0].sum()) / (t.B + 4)),
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    ds = ppvae.load_dataset("digits", seed=0)
    train, test = (ds.train > 0.5).float(), (ds.test > 0.5).float()
    start = time.perf_counter()
    result = {
        "subsampling_and_renamed_plate": subsampling(train, test, args.epochs),
        "global_latent": global_latent(),
        "constrained_latent": constrained_latent(),
    }
    result["seconds"] = time.perf_counter() - start
    print(json.dumps(result, indent=2))
    write_result("pyro_idioms", result, args.out)
    return result


if __name__ == "__main__":
    main()
