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
from .ppca import PPCA
from .vae import VAE, LinearVAE

__all__ = [
    "compare_to_ppca",
    "elbo",
    "elbo_decomposition",
    "exact_log_likelihood",
    "global_point_estimates",
    "linear_gaussian_params",
    "log_importance_weights",
    "log_likelihood",
]

_DEFAULT_MAX_ELEMENTS = 2**23  # floats held per chunk of (K, N, D): 32 MiB in float32


def global_point_estimates(vae: VAE) -> dict[str, torch.Tensor]:
    """Plug-in values of the prior's global latents (none for most priors)."""
    estimates = getattr(vae.prior, "point_estimates", None)
    return dict(estimates()) if callable(estimates) else {}


def log_importance_weights(vae: VAE, x: torch.Tensor, num_samples: int) -> torch.Tensor:
    """``log p(x, z_k) - log q(z_k | x)`` for ``z_k ~ q(z | x)``.

    Global latent variables of the prior (e.g. the scale ``tau`` of
    :class:`~ppvae.priors.HierarchicalGaussian`) are fixed at the prior's
    ``point_estimates()``, so the weights, and the likelihoods built from them, are
    conditional on those values.

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
    fixed = global_point_estimates(vae)
    model = poutine.condition(vae.model, data=fixed) if fixed else vae.model
    guide = poutine.block(vae.guide, hide=list(fixed)) if fixed else vae.guide
    with pyro.plate("_particles", num_samples, dim=-2):
        guide_tr = poutine.trace(guide).get_trace(x)
        model_tr = poutine.trace(poutine.replay(model, trace=guide_tr)).get_trace(x)
    n = x.shape[0]
    log_w = torch.zeros(num_samples, n, dtype=x.dtype, device=x.device)
    for sign, tr in ((1.0, model_tr), (-1.0, guide_tr)):
        tr.compute_log_prob()
        for name, site in tr.nodes.items():
            if (
                site["type"] != "sample"
                or name in fixed
                or site_is_subsample(site)
                or "log_prob" not in site
            ):
                continue
            lp = site["log_prob"]
            if lp.shape != (num_samples, n):
                raise ValueError(
                    f"site {name!r} has log-prob shape {tuple(lp.shape)}; per-point importance "
                    "weights need every sample site inside the 'data' plate (a prior with "
                    "global latents must provide point_estimates())"
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


# ---------------------------------------------------------------------- exact, linear models
def linear_gaussian_params(model) -> tuple[torch.Tensor, torch.Tensor, float]:
    """``(mean, W, s2)`` in float64 of a linear-Gaussian model: a fitted PPCA or a LinearVAE.

    Raises
    ------
    ValueError
        For any other model (a nonlinear VAE has no closed-form marginal).
    """
    if isinstance(model, PPCA):
        model._check_fitted()
        return model.mean_.double().cpu(), model.W_.double().cpu(), float(model.noise_variance_)
    if isinstance(model, LinearVAE):
        with torch.no_grad():
            return (
                model.b.detach().double().cpu(),
                model.W.detach().double().cpu(),
                float(model.noise_variance),
            )
    raise ValueError(
        f"expected a PPCA or a LinearVAE (a linear-Gaussian model), got {type(model).__name__}; "
        "exact quantities exist only for linear-Gaussian models"
    )


def _as_ppca(model) -> PPCA:
    mean, W, s2 = linear_gaussian_params(model)
    return PPCA.from_params(mean, W, s2)


def exact_log_likelihood(model, X) -> torch.Tensor:
    """Exact log p(x) of a linear-Gaussian model, whose marginal is ``N(b, W W^T + s2 I)``.

    Parameters
    ----------
    model : LinearVAE or PPCA
    X : array-like, shape (N, D)

    Returns
    -------
    torch.Tensor, shape (N,), float64
        Log-densities in nats.
    """
    X = check_data(X, name="X", dtype=torch.float64)
    return _as_ppca(model).log_prob(X.cpu())


def elbo_decomposition(model, X, q_loc, q_scale) -> dict[str, torch.Tensor]:
    """Closed-form ``log p(x) = ELBO(q) + KL(q(z) || p(z | x))`` for a Gaussian q.

    Parameters
    ----------
    model : LinearVAE or PPCA
        A linear-Gaussian model ``z ~ N(0, I)``, ``x | z ~ N(W z + b, s2 I)``.
    X : array-like, shape (N, D)
    q_loc : tensor, shape (N, k)
        Means of a diagonal Gaussian q(z) per data point.
    q_scale : tensor, shape (N, k) or (k,)
        Its standard deviations.

    Returns
    -------
    dict of float64 tensors of shape (N,), in nats
        ``log_px`` (exact), ``elbo`` = E_q[log p(x | z)] - KL(q || p(z)), ``expected_log_lik``,
        ``kl_to_prior``, and ``kl_to_posterior`` = KL(q || p(z | x)).
    """
    mean, W, s2 = linear_gaussian_params(model)
    X = check_data(X, name="X", data_dim=W.shape[0], dtype=torch.float64).cpu()
    m = torch.as_tensor(q_loc).detach().double().cpu()
    s = torch.as_tensor(q_scale).detach().double().cpu().expand_as(m)
    n, k = m.shape
    if n != X.shape[0] or k != W.shape[1]:
        raise ValueError(f"q_loc has shape {tuple(m.shape)}; expected ({X.shape[0]}, {W.shape[1]})")
    if not bool((s > 0).all()):
        raise ValueError("q_scale must be positive")
    d = W.shape[0]
    resid = X - mean - m @ W.T
    col_sq = (W * W).sum(0)  # ||W_:j||^2
    expected_log_lik = -0.5 * (
        d * math.log(2 * math.pi * s2) + ((resid * resid).sum(1) + (s * s) @ col_sq) / s2
    )
    kl_prior = 0.5 * (s * s + m * m - 1.0 - 2.0 * s.log()).sum(1)
    post = _as_ppca(model).posterior(X)
    P = torch.linalg.inv(post.covariance_matrix[0])  # posterior precision, (k, k)
    diff = post.mean - m
    logdet_post = torch.linalg.slogdet(post.covariance_matrix[0])[1]
    kl_post = 0.5 * (
        (P.diagonal() * s * s).sum(1)
        + ((diff @ P) * diff).sum(1)
        - k
        + logdet_post
        - 2.0 * s.log().sum(1)
    )
    elbo_ = expected_log_lik - kl_prior
    return {
        "log_px": _as_ppca(model).log_prob(X),
        "elbo": elbo_,
        "expected_log_lik": expected_log_lik,
        "kl_to_prior": kl_prior,
        "kl_to_posterior": kl_post,
    }


def _principal_angles_deg(A: torch.Tensor, B: torch.Tensor) -> list[float]:
    qa = torch.linalg.qr(A)[0]
    qb = torch.linalg.qr(B)[0]
    cos = torch.linalg.svdvals(qa.T @ qb).clamp(-1.0, 1.0)
    return torch.rad2deg(torch.arccos(cos)).tolist()


def compare_to_ppca(linear_vae: LinearVAE, ppca: PPCA, X, kl_threshold: float = 0.01) -> dict:
    """Check a trained linear VAE against the PPCA maximum-likelihood solution.

    Parameters
    ----------
    linear_vae : LinearVAE
    ppca : PPCA
        Fitted (by maximum likelihood) to the same data.
    X : array-like, shape (N, D)
        The data both were fitted to.
    kl_threshold : float
        A latent dimension is *active* when its mean KL(q(z_j | x) || p(z_j)) exceeds this
        (nats).

    Returns
    -------
    dict
        ``loglik_gap`` (PPCA MLE minus the VAE's exact log-likelihood, nats/sample),
        ``elbo_gap`` (the VAE's exact log-likelihood minus its closed-form ELBO, nats/sample),
        ``noise_variance_rel_error``, ``covariance_rel_error``
        (``||W W^T - W_ml W_ml^T||_F / ||W_ml W_ml^T||_F``), ``principal_angles_deg``
        (between the VAE's active columns of W and the PPCA subspace), ``active_units``,
        ``kl_per_dim`` and the log-likelihoods themselves.
    """
    if not isinstance(linear_vae, LinearVAE):
        raise ValueError(
            f"compare_to_ppca needs a LinearVAE, got {type(linear_vae).__name__}; "
            "a nonlinear VAE has no closed-form likelihood to compare"
        )
    if not isinstance(ppca, PPCA):
        raise ValueError(f"expected a fitted PPCA, got {type(ppca).__name__}")
    ppca._check_fitted()
    if linear_vae.data_dim != ppca.n_features_in_:
        raise ValueError(
            f"data_dim mismatch: the LinearVAE has D={linear_vae.data_dim}, "
            f"the PPCA D={ppca.n_features_in_}"
        )
    X = check_data(X, name="X", data_dim=linear_vae.data_dim, dtype=torch.float64).cpu()
    _, W, s2 = linear_gaussian_params(linear_vae)
    _, W_ml, s2_ml = linear_gaussian_params(ppca)
    with torch.no_grad():
        param = next(linear_vae.parameters())
        loc, scale = linear_vae.encode(X.to(device=param.device, dtype=param.dtype))
    parts = elbo_decomposition(linear_vae, X, loc, scale)
    ll_ml = float(ppca.log_prob(X).mean())
    ll = float(parts["log_px"].mean())
    m, s = loc.double().cpu(), scale.double().cpu()
    kl_dim = (0.5 * (s * s + m * m - 1.0 - 2.0 * s.log())).mean(0)
    active = kl_dim > kl_threshold
    C, C_ml = W @ W.T, W_ml @ W_ml.T
    angles = _principal_angles_deg(W[:, active], W_ml) if int(active.sum()) > 0 else []
    return {
        "loglik_gap": ll_ml - ll,
        "elbo_gap": ll - float(parts["elbo"].mean()),
        "noise_variance_rel_error": abs(s2 - s2_ml) / s2_ml,
        "covariance_rel_error": float(torch.linalg.norm(C - C_ml) / torch.linalg.norm(C_ml)),
        "principal_angles_deg": angles,
        "active_units": int(active.sum()),
        "kl_per_dim": kl_dim.tolist(),
        "ppca_log_likelihood": ll_ml,
        "vae_log_likelihood": ll,
        "vae_elbo": float(parts["elbo"].mean()),
    }
