"""Gold-standard posteriors of a few points by NUTS."""

from __future__ import annotations

import sys

import pyro
import torch
from pyro import poutine

from ._common import (
    _EvalMode,
    _Frozen,
    _guide_moments,
    _prepare,
)


def nuts_posterior(
    program,
    X,
    *,
    num_samples: int = 500,
    warmup_steps: int = 500,
    num_chains: int = 2,
    seed: int = 0,
    point_estimates=None,
    progress: bool | None = False,
) -> list[dict]:
    """Gold-standard posteriors p(z | x) by NUTS for a few points, next to the guide's q(z | x).

    For each row x of X, ``pyro.infer.MCMC`` with ``NUTS`` samples the local latent sites of
    the program's model conditioned on x, its parameters fixed (global latents at the
    program's point estimates), running ``num_chains`` chains one after another from
    different seeds. ArviZ summarizes them (r-hat, bulk and tail ESS). Several latent sites
    are flattened into one vector, in the order the model samples them.

    Parameters
    ----------
    program : program
        A VAE, a module with Pyro ``model``/``guide`` methods, or a ``(model, guide)`` pair
        (see :mod:`ppvae.program`).
    X : array-like, shape (M, D)
        A few data points (each costs one MCMC run per chain).
    num_samples, warmup_steps, num_chains : int
        Per chain.
    seed : int

    point_estimates : True or dict, optional
        Plug-in values of the global latents (sites outside the data plate), which this
        estimator conditions on: a dict ``{site: value}``, or True (and by default) the
        module's ``point_estimates()``; a program with global latents and neither is refused.
    progress : bool or None
        Pyro's progress bar for each chain on stderr (None: only on a terminal).

    Returns
    -------
    list of dict, one per point
        ``samples`` (chains, draws, L) tensor, ``nuts_mean``/``nuts_var`` (L,),
        ``q_mean``/``q_var`` (L,) of the guide (its own moments where it defines them, else
        estimated from draws), ``r_hat_max``, ``ess_bulk_min``, ``ess_tail_min``, and
        ``summary`` (the ArviZ summary as a dict of columns).
    """
    import arviz as az
    from pyro.infer import MCMC, NUTS
    from pyro.infer.autoguide.initialization import init_to_value

    ev, X = _prepare(program, X, 1, any_rows="nuts_posterior", point_estimates=point_estimates)
    ev.require_continuous("nuts_posterior")
    # every latent moved in unconstrained space (biject_to of its support, the Jacobian in
    # the density); real-valued mixtures (mog, vamp priors) by the identity, which Pyro's
    # own default cannot do for their MixtureSameFamily support
    transforms = pyro_transforms(ev)
    model = poutine.condition(ev.program.model, data=ev.fixed) if ev.fixed else ev.program.model
    sites = list(ev.info.local_latents)
    results = []
    with _Frozen(ev), _EvalMode(ev.module):
        for i in range(X.shape[0]):
            x = X[i : i + 1]
            chains = []
            for c in range(num_chains):
                pyro.set_rng_seed(seed + 1000 * i + c)
                init = init_to_value(values=_guide_start(ev, x, sites))
                mcmc = MCMC(
                    NUTS(model, transforms=transforms, init_strategy=init),
                    num_samples=num_samples,
                    warmup_steps=warmup_steps,
                    disable_progbar=not (sys.stderr.isatty() if progress is None else progress),
                )
                mcmc.run(x)
                draws = mcmc.get_samples()
                chains.append(
                    torch.cat([draws[s].detach().reshape(num_samples, -1) for s in sites], -1).cpu()
                )
            samples = torch.stack(chains)  # (chains, draws, L)
            idata = az.from_dict(posterior={"z": samples.numpy()})
            summary = az.summary(idata, kind="all")
            q_loc, q_scale = _guide_moments(ev, x)
            flat = samples.reshape(-1, samples.shape[-1])
            results.append(
                {
                    "samples": samples,
                    "nuts_mean": flat.mean(0),
                    "nuts_var": flat.var(0),
                    "q_mean": q_loc[0].cpu(),
                    "q_var": (q_scale[0] ** 2).cpu(),
                    "r_hat_max": float(summary["r_hat"].max()),
                    "ess_bulk_min": float(summary["ess_bulk"].min()),
                    "ess_tail_min": float(summary["ess_tail"].min()),
                    "summary": summary.to_dict(orient="list"),
                }
            )
    return results


def _guide_start(ev, x, sites) -> dict:
    """Where each chain starts: the guide's mean of each local latent where its distribution
    has one (in the support of a convex support such as the positive reals or the simplex),
    else a draw. Pyro's default init_to_uniform needs ``biject_to`` of every support, which a
    mixture's has not."""
    guide = poutine.condition(ev.program.guide, data=ev.fixed)
    with torch.no_grad():
        nodes = poutine.trace(guide).get_trace(x).nodes
    start = {}
    for name in sites:
        value = nodes[name]["value"].detach()
        try:
            mean = nodes[name]["fn"].mean.detach()
            if mean.shape == value.shape and bool(torch.isfinite(mean).all()):
                value = mean
        except (NotImplementedError, AttributeError):
            pass
        start[name] = value
    return start


def pyro_transforms(ev) -> dict:
    """NUTS's ``transforms``: Pyro's map each latent's support onto the reals (the inverses of
    :class:`~ppvae.evaluate._common.LatentSpace`'s, which map the reals onto the support)."""
    return {name: t.inv for name, t in ev.space.transforms.items()}
