"""Probabilistic PCA (Tipping & Bishop 1999): the exact, closed-form ground truth.

The model is ``z ~ N(0, I_k)``, ``x | z ~ N(W z + mean, s2 I_D)``, so that the marginal is
``x ~ N(mean, C)`` with ``C = W W^T + s2 I_D``. Its maximum-likelihood solution is available in
closed form from the eigendecomposition of the sample covariance ``S`` (normalised by 1/N)::

    W_ml  = U_k (L_k - s2 I)^(1/2)          (up to a rotation, fixed here to the identity)
    s2_ml = mean of the D - k discarded eigenvalues of S

and the posterior is ``p(z | x) = N(M^-1 W^T (x - mean), s2 M^-1)`` with ``M = W^T W + s2 I_k``.

Log-densities are computed with the Woodbury identity and the matrix determinant lemma::

    C^-1  = (I - W M^-1 W^T) / s2
    log|C| = (D - k) log s2 + log|M|

so scoring N points costs obs(N D k) with no D x D inverse. All log-likelihoods are in nats.

``method="em"`` fits the same model by expectation-maximization (Tipping & Bishop 1999,
Roweis 1998). Missing entries, given as NaN, are marginalized exactly: the E-step uses the
posterior of z given each row's observed entries only, the M-step solves for each row of W
and entry of the mean jointly over the rows where that feature is observed (Ilin & Raiko 2010),
and ``log_prob`` of a row with NaNs is the exact marginal density of its observed entries.

This module imports nothing from the model side of the package: it is the independent check.
"""

from __future__ import annotations

import math
import weakref

import numpy as np
import torch
from torch.distributions import MultivariateNormal

from .data import check_data
from .errors import InputError

__all__ = ["PPCA"]

_LOG_2PI = math.log(2.0 * math.pi)


class PPCA:
    """Probabilistic PCA fitted by maximum likelihood in closed form.

    Parameters
    ----------
    latent_dim : int
        Number of latent dimensions k, with ``1 <= k < D``.
    method : {"closed_form", "em"}
        Eigendecomposition of the sample covariance, or EM (which also handles NaN entries).
    max_iter : int
        Maximum EM iterations.
    tol : float
        EM stops when the mean log-likelihood improves by less than this (nats per sample).
    random_state : int
        Seed of EM's random initialization.

    Attributes
    ----------
    mean_ : torch.Tensor, shape (D,)
        Sample mean.
    W_ : torch.Tensor, shape (D, k)
        Maximum-likelihood loading matrix ``U_k (L_k - s2 I)^(1/2)``; each column's
        largest-magnitude entry is positive (a deterministic sign convention).
    noise_variance_ : float
        Isotropic noise variance s2.
    components_ : torch.Tensor, shape (k, D)
        Leading eigenvectors of the sample covariance, as rows.
    explained_variance_ : torch.Tensor, shape (k,)
        Leading eigenvalues of the sample covariance (normalised by 1/N).
    n_samples_, n_features_in_ : int
        N and D seen in ``fit``.
    loglik_history_ : list of float
        EM only: mean log-likelihood (nats per sample) at the start of each iteration and at
        the end; never decreases.
    n_iter_ : int
        EM only: iterations run.

    Examples
    --------
    >>> import torch
    >>> from ppvae import PPCA
    >>> X = torch.randn(500, 10, dtype=torch.float64)
    >>> ppca = PPCA(latent_dim=2).fit(X)
    >>> ppca.log_prob(X).shape
    torch.Size([500])
    """

    def __init__(
        self,
        latent_dim: int,
        method: str = "closed_form",
        max_iter: int = 1000,
        tol: float = 1e-8,
        random_state: int = 0,
    ):
        if isinstance(latent_dim, bool) or not isinstance(latent_dim, int) or latent_dim < 1:
            raise InputError(f"latent_dim must be a positive integer, got {latent_dim!r}")
        if method not in ("closed_form", "em"):
            raise InputError(f"method must be 'closed_form' or 'em', got {method!r}")
        if int(max_iter) != max_iter or max_iter < 1:
            raise InputError(f"max_iter must be a positive integer, got {max_iter!r}")
        if not tol >= 0:
            raise InputError(f"tol must be non-negative, got {tol!r}")
        self.latent_dim = latent_dim
        self.method = method
        self.max_iter = int(max_iter)
        self.tol = float(tol)
        self.random_state = random_state

    # ------------------------------------------------------------------ fitting
    def fit(self, X) -> PPCA:
        """Fit by maximum likelihood.

        Parameters
        ----------
        X : array-like or torch.Tensor, shape (N, D)
            Training data, N >= 2. float64 input is fitted in float64; other dtypes are
            fitted in float32. The eigendecomposition and EM run in float64. NaN marks a
            missing entry (``method="em"`` only); infinite values are rejected.

        Returns
        -------
        self
        """
        X = check_data(X, name="X", min_rows=2, allow_nan=True)
        n, d = X.shape
        self._check_latent_dim(d)
        if self.method == "closed_form" and bool(torch.isnan(X).any()):
            raise InputError(
                f"X: {int(torch.isnan(X).sum())} NaN (missing) value(s); the closed form needs "
                "complete data; PPCA(..., method='em') marginalizes missing values"
            )
        if self.method == "em":
            self._fit_em(X)
            return self
        mean = X.mean(dim=0)
        cov = _covariance(X, mean)
        self._set_from_covariance(mean, cov, n, X.dtype)
        # the training data's mean log-likelihood follows from S alone (see score)
        self._train = (weakref.ref(X), X._version, cov)
        return self

    def _check_latent_dim(self, d: int) -> None:
        if self.latent_dim >= d:
            raise InputError(
                f"latent_dim must be smaller than the data dimension D={d}, got {self.latent_dim}"
            )

    def _set_from_covariance(
        self, mean: torch.Tensor, cov: torch.Tensor, n: int, dtype: torch.dtype
    ) -> None:
        d, k = cov.shape[0], self.latent_dim
        evals, evecs = torch.linalg.eigh(cov)  # ascending
        evals = evals.flip(0).clamp_min(0.0)
        evecs = evecs.flip(1)
        s2 = float(evals[k:].mean())
        if not s2 > 1e-12 * max(float(evals[0]), 1e-300):
            raise InputError(
                "noise variance is zero: the data lie in a subspace of dimension <= latent_dim "
                f"({k}); use fewer latent dimensions or more (non-degenerate) data"
            )
        U = evecs[:, :k]
        # deterministic signs: the largest-magnitude entry of each column is positive
        idx = U.abs().argmax(dim=0)
        signs = torch.sign(U[idx, torch.arange(k)])
        U = U * torch.where(signs == 0, torch.ones_like(signs), signs)
        W = U * (evals[:k] - s2).clamp_min(0.0).sqrt()
        self.mean_ = mean.to(dtype)
        self.W_ = W.to(dtype)
        self.noise_variance_ = s2
        self.components_ = U.T.contiguous().to(dtype)
        self.explained_variance_ = evals[:k].to(dtype)
        self.n_samples_ = n
        self.n_features_in_ = d

    def _fit_em(self, X: torch.Tensor) -> None:
        n, d = X.shape
        k = self.latent_dim
        X64 = X.to(torch.float64)
        observed = ~torch.isnan(X64)
        _check_missing(observed)
        obs = observed.to(torch.float64)
        Xz = torch.where(observed, X64, torch.zeros((), dtype=torch.float64))
        n_obs = obs.sum(0)
        mean = Xz.sum(0) / n_obs
        var = ((Xz - mean) ** 2 * obs).sum(0) / n_obs
        gen = torch.Generator().manual_seed(int(self.random_state))
        W = torch.randn(d, k, generator=gen, dtype=torch.float64) * var.mean().sqrt() / math.sqrt(k)
        s2 = float(var.mean())
        history: list[float] = []
        eye_aug = torch.zeros(k + 1, k + 1, dtype=torch.float64)
        eye_aug[k, k] = 1.0
        for _ in range(self.max_iter):
            # E-step: posterior of z given each row's observed entries
            ll, m, Sigma = _masked_posterior(Xz, obs, mean, W, s2)
            history.append(float(ll.mean()))
            if len(history) > 1 and history[-1] - history[-2] < self.tol:
                break
            # M-step, jointly for each feature's (w_j, mean_j) over rows where it is observed:
            # regress x_nj on [z_n, 1] with E[[z;1][z;1]^T] = [[Sigma + m m^T, m], [m^T, 1]]
            m_aug = torch.cat([m, torch.ones(n, 1, dtype=torch.float64)], dim=1)
            Ezz = m_aug[:, :, None] * m_aug[:, None, :]
            Ezz[:, :k, :k] += Sigma
            A = (obs.T @ Ezz.reshape(n, -1)).reshape(d, k + 1, k + 1)
            B = Xz.T @ m_aug  # Xz is zero where missing
            sol = torch.linalg.solve(A, B.unsqueeze(-1)).squeeze(-1)  # (D, k + 1)
            W, mean = sol[:, :k], sol[:, k]
            resid = (Xz - m @ W.T - mean) * obs
            WW = (W[:, :, None] * W[:, None, :]).reshape(d, -1)  # rows: vec(w_j w_j^T)
            trace_term = ((obs @ WW) * Sigma.reshape(n, -1)).sum()
            s2 = float(((resid**2).sum() + trace_term) / obs.sum())
        else:
            ll, _, _ = _masked_posterior(Xz, obs, mean, W, s2)
            history.append(float(ll.mean()))
        self.loglik_history_ = history
        self.n_iter_ = len(history) - 1
        # report W in the canonical form U (L - s2)^(1/2): rotate by W's right singular vectors
        U, S, _ = torch.linalg.svd(W, full_matrices=False)
        idx = U.abs().argmax(dim=0)
        signs = torch.sign(U[idx, torch.arange(k)])
        U = U * torch.where(signs == 0, torch.ones_like(signs), signs)
        dtype = X.dtype
        self.mean_ = mean.to(dtype)
        self.W_ = (U * S).to(dtype)
        self.noise_variance_ = s2
        self.components_ = U.T.contiguous().to(dtype)
        self.explained_variance_ = (S**2 + s2).to(dtype)
        self.n_samples_ = n
        self.n_features_in_ = d

    @classmethod
    def from_params(cls, mean, W, noise_variance: float) -> PPCA:
        """Build a PPCA with given parameters instead of fitting it.

        Parameters
        ----------
        mean : tensor, shape (D,)
        W : tensor, shape (D, k)
        noise_variance : float
            s2 > 0.
        """
        W = torch.as_tensor(W)
        mean = torch.as_tensor(mean, dtype=W.dtype)
        if W.dim() != 2 or mean.shape != (W.shape[0],):
            raise InputError(f"mean {tuple(mean.shape)} and W {tuple(W.shape)} do not match")
        if not float(noise_variance) > 0:
            raise InputError(f"noise_variance must be positive, got {noise_variance}")
        obj = cls(int(W.shape[1]))
        obj.mean_, obj.W_, obj.noise_variance_ = mean, W, float(noise_variance)
        obj.n_features_in_ = int(W.shape[0])
        return obj

    # ------------------------------------------------------------------ helpers
    def _check_fitted(self) -> None:
        if not hasattr(self, "W_"):
            raise RuntimeError("this PPCA is not fitted yet; call fit(X) first")

    def _as_input(self, X, allow_nan: bool = False) -> torch.Tensor:
        self._check_fitted()
        X = check_data(X, name="X", data_dim=self.n_features_in_, allow_nan=allow_nan)
        return X.to(device=self.W_.device, dtype=self.W_.dtype)

    def _M(self) -> torch.Tensor:
        k = self.latent_dim
        eye = torch.eye(k, dtype=self.W_.dtype, device=self.W_.device)
        return self.W_.T @ self.W_ + self.noise_variance_ * eye

    # ------------------------------------------------------------------ densities
    def covariance(self) -> torch.Tensor:
        """Marginal covariance ``C = W W^T + s2 I``, shape (D, D)."""
        self._check_fitted()
        d = self.W_.shape[0]
        eye = torch.eye(d, dtype=self.W_.dtype, device=self.W_.device)
        return self.W_ @ self.W_.T + self.noise_variance_ * eye

    def log_prob(self, X) -> torch.Tensor:
        """Exact marginal log-likelihood ``log N(x | mean, W W^T + s2 I)`` of each row.

        Parameters
        ----------
        X : array-like, shape (N, D)
            NaN entries are missing: a row's log-density is then the exact marginal density
            of its observed entries, ``N(mean_o, W_o W_o^T + s2 I)``.

        Returns
        -------
        torch.Tensor, shape (N,)
            Log-densities in nats, in the model's dtype.
        """
        X = self._as_input(X, allow_nan=True)
        missing = torch.isnan(X)
        if bool(missing.any()):
            observed = ~missing
            _check_missing(observed, check_columns=False)
            obs = observed.to(torch.float64)
            Xz = torch.where(observed, X, torch.zeros((), dtype=X.dtype)).to(torch.float64)
            ll, _, _ = _masked_posterior(
                Xz, obs, self.mean_.double(), self.W_.double(), self.noise_variance_
            )
            return ll.to(X.dtype)
        d, k = self.W_.shape
        s2 = self.noise_variance_
        L = torch.linalg.cholesky(self._M())
        # ||x - mean||^2 and (x - mean)^T W without materializing the centred copy
        rW = X @ self.W_ - self.mean_ @ self.W_
        sq = (X * X).sum(1) - 2.0 * (X @ self.mean_) + self.mean_ @ self.mean_
        a = torch.linalg.solve_triangular(L, rW.T, upper=False)  # (k, N)
        quad = (sq - (a * a).sum(0)) / s2
        logdet = (d - k) * math.log(s2) + 2.0 * L.diagonal().log().sum()
        return -0.5 * (d * _LOG_2PI + logdet + quad)

    def score(self, X) -> float:
        """Mean log-likelihood per sample, in nats (scikit-learn's ``score`` convention).

        For the very tensor passed to ``fit`` (same object, unmodified), the mean is computed
        from its covariance S without another pass over the data:
        ``-(D log 2 pi + log|C| + tr(C^-1 S)) / 2`` with
        ``tr(C^-1 S) = (tr S - tr(M^-1 W^T S W)) / s2``.
        """
        train = getattr(self, "_train", None)
        if (
            train is not None
            and isinstance(X, torch.Tensor)
            and train[0]() is X
            and X._version == train[1]
        ):
            return self._score_from_covariance(train[2])
        return float(self.log_prob(X).mean())

    def _score_from_covariance(self, S: torch.Tensor) -> float:
        W = self.W_.to(torch.float64)
        d, k = W.shape
        s2 = self.noise_variance_
        M = W.T @ W + s2 * torch.eye(k, dtype=torch.float64, device=W.device)
        L = torch.linalg.cholesky(M)
        SW = S.to(W.device) @ W
        trace = (torch.trace(S) - torch.trace(torch.cholesky_solve(W.T @ SW, L))) / s2
        logdet = (d - k) * math.log(s2) + 2.0 * L.diagonal().log().sum()
        return float(-0.5 * (d * _LOG_2PI + logdet + trace))

    def posterior(self, X) -> MultivariateNormal:
        """Exact posterior ``p(z | x) = N(M^-1 W^T (x - mean), s2 M^-1)``.

        With NaN (missing) entries, each row's ``p(z | x_o)`` given its observed entries
        (its own ``M_n = W_o^T W_o + s2 I``, see :func:`_masked_posterior`).

        Returns
        -------
        torch.distributions.MultivariateNormal
            batch_shape (N,), event_shape (k,).
        """
        X = self._as_input(X, allow_nan=True)
        if bool(torch.isnan(X).any()):
            _, _, _, m, Sigma = self._observed_posterior(X)
            return MultivariateNormal(m.to(X.dtype), covariance_matrix=Sigma.to(X.dtype))
        M = self._M()
        L = torch.linalg.cholesky(M)
        loc = torch.cholesky_solve(((X - self.mean_) @ self.W_).T, L).T  # (N, k)
        cov = self.noise_variance_ * torch.cholesky_inverse(L)
        cov = 0.5 * (cov + cov.T)
        return MultivariateNormal(loc, covariance_matrix=cov.expand(X.shape[0], -1, -1))

    def impute(self, X, return_cov: bool = False):
        """Exact conditional mean (and covariance) of the missing (NaN) entries given the
        observed ones.

        With ``z | x_o ~ N(m_n, Sigma_n)`` (:func:`_masked_posterior`) and
        ``x_m = W_m z + mean_m + eps``, ``E[x_m | x_o] = W_m m_n + mean_m`` and
        ``Cov[x_m | x_o] = W_m Sigma_n W_m^T + s2 I``, which equals the Gaussian conditional
        ``C_mm - C_mo C_oo^-1 C_om`` of the marginal ``N(mean, W W^T + s2 I)``.

        Parameters
        ----------
        X : array-like, shape (N, D)
            NaN marks a missing entry; every row needs one observed entry.
        return_cov : bool
            Also return the conditional covariances.

        Returns
        -------
        mean : torch.Tensor, shape (N, D)
            ``X`` with every missing entry replaced by its conditional mean.
        cov : torch.Tensor, shape (N, D, D), only with ``return_cov``
            The conditional covariance of each row's missing entries, zero in the rows and
            columns of its observed entries. Without ``return_cov`` the diagonal is available
            as :meth:`impute_variance`.
        """
        X, observed, W, m, Sigma = self._observed_posterior(X)
        filled = torch.where(observed, X, (m @ W.T + self.mean_.double()).to(X.dtype))
        if not return_cov:
            return filled
        WS = torch.einsum("dk,nkl->ndl", W, Sigma)
        cov = WS @ W.T + self.noise_variance_ * torch.eye(W.shape[0], dtype=torch.float64)
        miss = (~observed).to(torch.float64)
        cov = cov * miss[:, :, None] * miss[:, None, :]
        return filled, cov.to(X.dtype)

    def impute_variance(self, X) -> torch.Tensor:
        """Conditional variance of each missing entry given the row's observed ones
        (``diag(W_m Sigma_n W_m^T) + s2``), 0 where observed, shape (N, D); no (N, D, D)
        array is formed."""
        X, observed, W, _, Sigma = self._observed_posterior(X)
        var = torch.einsum("dk,nkl,dl->nd", W, Sigma, W) + self.noise_variance_
        return (var * (~observed).to(var.dtype)).to(X.dtype)

    def _observed_posterior(self, X):
        """``(X, observed, W, m, Sigma)``: the checked input, its observed mask, W in float64
        and each row's posterior p(z | x_o) = N(m_n, Sigma_n) (see :func:`_masked_posterior`)."""
        X = self._as_input(X, allow_nan=True)
        observed = ~torch.isnan(X)
        _check_missing(observed, check_columns=False)
        Xz = torch.where(observed, X, torch.zeros((), dtype=X.dtype)).to(torch.float64)
        W = self.W_.double()
        obs = observed.to(torch.float64)
        _, m, Sigma = _masked_posterior(Xz, obs, self.mean_.double(), W, self.noise_variance_)
        return X, observed, W, m, Sigma

    def transform(self, X) -> torch.Tensor:
        """Posterior means ``E[z | x]``, shape (N, k)."""
        return self.posterior(X).mean

    def fit_transform(self, X) -> torch.Tensor:
        """``fit(X)`` then ``transform(X)``."""
        return self.fit(X).transform(X)

    def reconstruct(self, X) -> torch.Tensor:
        """``W E[z | x] + mean``, shape (N, D) (with NaN entries, ``E[z | x_o]``: every entry
        is then predicted from the observed ones)."""
        return self.transform(X) @ self.W_.T + self.mean_

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw ``n`` samples from the marginal, shape (n, D)."""
        self._check_fitted()
        if n < 0:
            raise InputError(f"n must be non-negative, got {n}")
        d, k = self.W_.shape
        kw = {"dtype": self.W_.dtype, "device": self.W_.device, "generator": generator}
        z = torch.randn(n, k, **kw)
        eps = torch.randn(n, d, **kw)
        return self.mean_ + z @ self.W_.T + math.sqrt(self.noise_variance_) * eps

    def __repr__(self) -> str:
        fitted = (
            f", D={self.n_features_in_}, noise_variance={self.noise_variance_:.4g}"
            if hasattr(self, "W_")
            else ""
        )
        return f"PPCA(latent_dim={self.latent_dim}{fitted})"


def _covariance(X: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """Sample covariance with 1/N, float64, shape (D, D).

    float64 data on the CPU use BLAS ``dsyrk`` on the uncentred data (half the flops of a
    general product, no centred copy): ``S = X^T X / N - mean mean^T``. Other inputs are
    centred first, which keeps float32 accurate.
    """
    n = X.shape[0]
    if X.dtype == torch.float64 and X.device.type == "cpu":
        try:
            from scipy.linalg.blas import dsyrk
        except ImportError:  # pragma: no cover - scipy comes with scikit-learn
            dsyrk = None
        if dsyrk is not None:
            a = X.numpy()
            a = np.ascontiguousarray(a).T  # (D, N) in Fortran order, no copy if C-contiguous
            upper = torch.from_numpy(dsyrk(1.0 / n, a, trans=0, lower=0))
            S = torch.triu(upper) + torch.triu(upper, diagonal=1).T
            return S - torch.outer(mean, mean)
    centered = X - mean
    return (centered.T @ centered).to(torch.float64) / n


def _check_missing(observed: torch.Tensor, check_columns: bool = True) -> None:
    empty_rows = (~observed).all(dim=1)
    if bool(empty_rows.any()):
        raise InputError(
            f"X: {int(empty_rows.sum())} row(s) have every entry missing (NaN), first at row "
            f"{int(empty_rows.nonzero()[0])}; drop them, they carry no information"
        )
    if check_columns:
        empty_cols = (~observed).all(dim=0)
        if bool(empty_cols.any()):
            raise InputError(
                f"X: column {int(empty_cols.nonzero()[0])} is missing (NaN) in every row"
            )


def _masked_posterior(Xz, obs, mean, W, s2):
    """Per-row marginal log-likelihood of the observed entries and posterior of z.

    Parameters
    ----------
    Xz : (N, D) data with missing entries set to 0.
    obs : (N, D) 1.0 where observed, 0.0 where missing.
    mean, W, s2 : model parameters, float64.

    Returns
    -------
    ll : (N,) log N(x_o | mean_o, W_o W_o^T + s2 I) in nats
    m : (N, k) posterior means E[z | x_o]
    Sigma : (N, k, k) posterior covariances s2 M_n^-1, M_n = W_o^T W_o + s2 I
    """
    n, d = Xz.shape
    k = W.shape[1]
    WW = (W[:, :, None] * W[:, None, :]).reshape(d, k * k)
    M = (obs @ WW).reshape(n, k, k) + s2 * torch.eye(k, dtype=W.dtype)
    L = torch.linalg.cholesky(M)
    r = (Xz - mean) * obs
    rhs = (r @ W).unsqueeze(-1)
    m = torch.cholesky_solve(rhs, L).squeeze(-1)
    d_obs = obs.sum(1)
    logdet = (d_obs - k) * math.log(s2) + 2.0 * L.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    quad = ((r * r).sum(1) - (rhs.squeeze(-1) * m).sum(1)) / s2
    ll = -0.5 * (d_obs * _LOG_2PI + logdet + quad)
    Sigma = s2 * torch.cholesky_inverse(L)
    return ll, m, Sigma
