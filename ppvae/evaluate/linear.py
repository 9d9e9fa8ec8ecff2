"""Exact quantities of linear-Gaussian models (PPCA, LinearVAE): the ground truth."""

from __future__ import annotations

import math

import torch

from ..data import check_data
from ..errors import InputError
from ..ppca import PPCA
from ..vae import LinearVAE


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
    raise InputError(
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


def elbo_decomposition(
    model, X, q_loc, q_scale=None, *, q_scale_tril=None
) -> dict[str, torch.Tensor]:
    """Closed-form ``log p(x) = ELBO(q) + KL(q(z) || p(z | x))`` for a Gaussian q.

    Parameters
    ----------
    model : LinearVAE or PPCA
        A linear-Gaussian model ``z ~ N(0, I)``, ``x | z ~ N(W z + b, s2 I)``.
    X : array-like, shape (N, D)
    q_loc : tensor, shape (N, k)
        Means of a Gaussian q(z) per data point.
    q_scale : tensor, shape (N, k) or (k,)
        Its standard deviations, for a diagonal q.
    q_scale_tril : tensor, shape (N, k, k) or (k, k), keyword-only
        Instead of ``q_scale``: lower-triangular scales L of a full-rank q, covariance L L^T.

    Returns
    -------
    dict of float64 tensors of shape (N,), in nats
        ``log_px`` (exact), ``elbo`` = E_q[log p(x | z)] - KL(q || p(z)), ``expected_log_lik``,
        ``kl_to_prior``, and ``kl_to_posterior`` = KL(q || p(z | x)).
    """
    mean, W, s2 = linear_gaussian_params(model)
    X = check_data(X, name="X", data_dim=W.shape[0], dtype=torch.float64).cpu()
    m = torch.as_tensor(q_loc).detach().double().cpu()
    n, k = m.shape
    if n != X.shape[0] or k != W.shape[1]:
        raise InputError(f"q_loc has shape {tuple(m.shape)}; expected ({X.shape[0]}, {W.shape[1]})")
    if (q_scale is None) == (q_scale_tril is None):
        raise InputError("give exactly one of q_scale (diagonal) and q_scale_tril (full rank)")
    if q_scale is not None:
        s = torch.as_tensor(q_scale).detach().double().cpu().expand_as(m)
        if not bool((s > 0).all()):
            raise InputError("q_scale must be positive")
        L = torch.diag_embed(s)
    else:
        L = torch.as_tensor(q_scale_tril).detach().double().cpu().expand(n, k, k)
        if not bool((L.diagonal(dim1=-2, dim2=-1) > 0).all()):
            raise InputError("q_scale_tril must have a positive diagonal")
    S = L @ L.transpose(-1, -2)  # q's covariance, (N, k, k)
    logdet_S = 2.0 * L.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    d = W.shape[0]
    resid = X - mean - m @ W.T
    # E_q ||x - b - W z||^2 = ||x - b - W m||^2 + tr(W S W^T)
    expected_log_lik = -0.5 * (
        d * math.log(2 * math.pi * s2)
        + ((resid * resid).sum(1) + (S * (W.T @ W)).sum((-2, -1))) / s2
    )
    trace_S = S.diagonal(dim1=-2, dim2=-1).sum(-1)
    kl_prior = 0.5 * (trace_S + (m * m).sum(1) - k - logdet_S)
    post = _as_ppca(model).posterior(X)
    P = torch.linalg.inv(post.covariance_matrix[0])  # posterior precision, (k, k)
    diff = post.mean - m
    logdet_post = torch.linalg.slogdet(post.covariance_matrix[0])[1]
    kl_post = 0.5 * (
        (S * P).sum((-2, -1)) + ((diff @ P) * diff).sum(1) - k + logdet_post - logdet_S
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
        raise InputError(
            f"compare_to_ppca needs a LinearVAE, got {type(linear_vae).__name__}; "
            "a nonlinear VAE has no closed-form likelihood to compare"
        )
    if not isinstance(ppca, PPCA):
        raise InputError(f"expected a fitted PPCA, got {type(ppca).__name__}")
    ppca._check_fitted()
    if linear_vae.data_dim != ppca.n_features_in_:
        raise InputError(
            f"data_dim mismatch: the LinearVAE has D={linear_vae.data_dim}, "
            f"the PPCA D={ppca.n_features_in_}"
        )
    X = check_data(X, name="X", data_dim=linear_vae.data_dim, dtype=torch.float64).cpu()
    _, W, s2 = linear_gaussian_params(linear_vae)
    _, W_ml, s2_ml = linear_gaussian_params(ppca)
    with torch.no_grad():
        param = next(linear_vae.parameters())
        x = X.to(device=param.device, dtype=param.dtype)
        loc, scale = linear_vae.encode(x)  # scale: per-dimension standard deviations
        if linear_vae.encoder.full_rank:
            L = linear_vae.guide_params()[2]
            parts = elbo_decomposition(linear_vae, X, loc, q_scale_tril=L)
        else:
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
