"""Evaluation of trained models, in nats per data point.

For a data point x and guide samples ``z_1..z_K ~ q(z | x)``, the log importance weights are
``log w_k = log p(x, z_k) - log q(z_k | x)``. Then

* the ELBO estimate is ``mean_k log w_k``;
* the importance-weighted bound (Burda et al. 2015) is ``log (1/K) sum_k w_k``, a lower bound
  on log p(x) that grows with K and converges to log p(x) as K -> infinity.

Weights are computed from Pyro traces of the model replayed against the guide, vectorized over
K in a particle plate, so any model/guide pair whose sites live in the ``"data"`` plate works.
Work is split in chunks over data points and over K so that memory stays bounded.
"""

from __future__ import annotations

import math

import pyro
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample

from .data import check_data
from .vae import VAE

__all__ = ["elbo", "log_importance_weights", "log_likelihood"]

_DEFAULT_MAX_ELEMENTS = 2**23  # floats held per chunk of (K, N, D): 32 MiB in float32


def log_importance_weights(vae: VAE, x: torch.Tensor, num_samples: int) -> torch.Tensor:
    """``log p(x, z_k) - log q(z_k | x)`` for ``z_k ~ q(z | x)``.

    Parameters
    ----------
    vae : VAE
    x : torch.Tensor, shape (N, D)
        Already on the model's device.
    num_samples : int
        K.

    Returns
    -------
    torch.Tensor, shape (K, N)
    """
    with pyro.plate("_particles", num_samples, dim=-2):
        guide_tr = poutine.trace(vae.guide).get_trace(x)
        model_tr = poutine.trace(poutine.replay(vae.model, trace=guide_tr)).get_trace(x)
    n = x.shape[0]
    log_w = torch.zeros(num_samples, n, dtype=x.dtype, device=x.device)
    for sign, tr in ((1.0, model_tr), (-1.0, guide_tr)):
        tr.compute_log_prob()
        for name, site in tr.nodes.items():
            if site["type"] != "sample" or site_is_subsample(site) or "log_prob" not in site:
                continue
            lp = site["log_prob"]
            if lp.shape != (num_samples, n):
                raise ValueError(
                    f"site {name!r} has log-prob shape {tuple(lp.shape)}; per-point importance "
                    "weights need every sample site inside the 'data' plate"
                )
            log_w = log_w + sign * lp
    return log_w


def _prepare(vae: VAE, X, num_samples: int) -> torch.Tensor:
    if not isinstance(vae, VAE):
        raise TypeError(f"expected a ppvae VAE, got {type(vae).__name__}")
    if isinstance(num_samples, bool) or int(num_samples) != num_samples or num_samples < 1:
        raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
    X = check_data(X, name="X", data_dim=vae.data_dim, dtype=torch.float32)
    vae.likelihood.check_support(X, "X")
    device = next(vae.parameters()).device
    return X.to(device)


def _chunks(n: int, k: int, width: int, max_elements: int) -> tuple[int, int]:
    """Rows per chunk and samples per chunk so that k_chunk * n_chunk * width <= max."""
    k_chunk = max(1, min(k, max_elements // max(width, 1)))
    n_chunk = max(1, min(n, max_elements // (k_chunk * max(width, 1))))
    return n_chunk, k_chunk


def _reduce_weights(vae, X, num_samples, max_elements, reduce):
    width = max(vae.data_dim, vae.latent_dim)
    n_chunk, k_chunk = _chunks(X.shape[0], num_samples, width, max_elements)
    out = []
    was_training = vae.training
    vae.eval()
    try:
        with torch.no_grad():
            for i in range(0, X.shape[0], n_chunk):
                x = X[i : i + n_chunk]
                parts = []
                for j in range(0, num_samples, k_chunk):
                    k = min(k_chunk, num_samples - j)
                    parts.append(reduce(log_importance_weights(vae, x, k)))
                out.append(torch.stack(parts))
    finally:
        vae.train(was_training)
    return out


def elbo(vae: VAE, X, num_samples: int = 1, *, max_elements: int = _DEFAULT_MAX_ELEMENTS):
    """Monte Carlo ELBO of each data point, ``mean_k log w_k``.

    Parameters
    ----------
    vae : VAE
    X : array-like, shape (N, D)
    num_samples : int
        Guide samples per point.
    max_elements : int
        Bound on the floats in one chunk of (K, N, max(D, k)) work.

    Returns
    -------
    torch.Tensor, shape (N,)
        ELBO estimates in nats, on the CPU.
    """
    X = _prepare(vae, X, num_samples)
    parts = _reduce_weights(vae, X, num_samples, max_elements, lambda lw: lw.sum(0))
    return torch.cat([p.sum(0) for p in parts]).cpu() / num_samples


def log_likelihood(
    vae: VAE, X, num_samples: int = 1000, *, max_elements: int = _DEFAULT_MAX_ELEMENTS
):
    """Importance-weighted estimate of log p(x) (Burda et al. 2015).

    ``log (1/K) sum_k p(x, z_k) / q(z_k | x)`` with ``z_k ~ q(z | x)``: a stochastic lower
    bound on log p(x) whose expectation grows with K.

    Parameters
    ----------
    vae : VAE
    X : array-like, shape (N, D)
    num_samples : int
        K, importance samples per data point.
    max_elements : int
        Bound on the floats in one chunk of (K, N, max(D, k)) work.

    Returns
    -------
    torch.Tensor, shape (N,)
        Estimates in nats, on the CPU.
    """
    X = _prepare(vae, X, num_samples)
    parts = _reduce_weights(vae, X, num_samples, max_elements, lambda lw: lw.logsumexp(0))
    return torch.cat([p.logsumexp(0) for p in parts]).cpu() - math.log(num_samples)
