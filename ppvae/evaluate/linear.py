"""Exact quantities of linear-Gaussian models (PPCA, LinearVAE): the ground truth."""

from __future__ import annotations

import math

import torch

from ..data import check_data, split_missing
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
        NaN entries are missing: a row's value is then the exact marginal density of its
        observed entries, ``N(b_o, W_o W_o^T + s2 I)`` (the observed-data likelihood).

    Returns
    -------
    torch.Tensor, shape (N,), float64
        Log-densities in nats.
    """
    X = check_data(X, name="X", dtype=torch.float64, allow_nan=True)
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
        NaN entries are missing: every term is then that of the row's observed entries
        (``log p(x_o)``, ``E_q log p(x_o | z)``, ``KL(q || p(z | x_o))``).
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
    X = check_data(X, name="X", data_dim=W.shape[0], dtype=torch.float64, allow_nan=True).cpu()
    observed = ~torch.isnan(X)
    obs = observed.double()
    X0 = X.masked_fill(~observed, 0.0)
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
    d_obs = obs.sum(1)
    resid = (X0 - mean - m @ W.T) * obs
    # E_q ||x_o - b_o - W_o z||^2 = ||x_o - b_o - W_o m||^2 + tr(W_o S W_o^T), and
    # W_o^T W_o = sum_d obs_d w_d w_d^T
    WtW = (obs @ (W[:, :, None] * W[:, None, :]).reshape(W.shape[0], k * k)).reshape(n, k, k)
    expected_log_lik = -0.5 * (
        d_obs * math.log(2 * math.pi * s2) + ((resid * resid).sum(1) + (S * WtW).sum((-2, -1))) / s2
    )
    trace_S = S.diagonal(dim1=-2, dim2=-1).sum(-1)
    kl_prior = 0.5 * (trace_S + (m * m).sum(1) - k - logdet_S)
    # the exact posterior p(z | x_o) = N(mu_n, s2 M_n^-1) with M_n = W_o^T W_o + s2 I
    M = WtW + s2 * torch.eye(k, dtype=torch.float64)
    P = M / s2  # posterior precisions, (N, k, k)
    mu = torch.linalg.solve(M, ((X0 - mean) * obs) @ W)
    diff = mu - m
    logdet_post = -torch.linalg.slogdet(P)[1]
    kl_post = 0.5 * (
        (S * P).sum((-2, -1))
        + ((diff.unsqueeze(-2) @ P).squeeze(-2) * diff).sum(1)
        - k
        + logdet_post
        - logdet_S
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
        The data both were fitted to; NaN entries are missing (likelihoods and ELBOs are then
        those of each row's observed entries, and ``ppca`` should be ``PPCA(method="em")``).
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
    X = check_data(
        X, name="X", data_dim=linear_vae.data_dim, dtype=torch.float64, allow_nan=True
    ).cpu()
    _, W, s2 = linear_gaussian_params(linear_vae)
    _, W_ml, s2_ml = linear_gaussian_params(ppca)
    with torch.no_grad():
        param = next(linear_vae.parameters())
        x, mask = split_missing(X.to(device=param.device, dtype=param.dtype))
        out = linear_vae.encoder_output(x, mask)  # the guide's q(z | x_o) of each row
        loc, scale = linear_vae.q.moments(out)  # scale: per-dimension standard deviations
        if linear_vae.encoder.full_rank:
            parts = elbo_decomposition(linear_vae, X, loc, q_scale_tril=out[1])
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
