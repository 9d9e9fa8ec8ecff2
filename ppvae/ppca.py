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

so scoring N points costs O(N D k) with no D x D inverse. All log-likelihoods are in nats.

This module imports nothing from the model side of the package: it is the independent check.
"""

from __future__ import annotations

import math

import torch
from torch.distributions import MultivariateNormal

from .data import check_data

__all__ = ["PPCA"]

_LOG_2PI = math.log(2.0 * math.pi)


class PPCA:
    """Probabilistic PCA fitted by maximum likelihood in closed form.

    Parameters
    ----------
    latent_dim : int
        Number of latent dimensions k, with ``1 <= k < D``.

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

    Examples
    --------
    >>> import torch
    >>> from ppvae import PPCA
    >>> X = torch.randn(500, 10, dtype=torch.float64)
    >>> ppca = PPCA(latent_dim=2).fit(X)
    >>> ppca.log_prob(X).shape
    torch.Size([500])
    """

    def __init__(self, latent_dim: int):
        if isinstance(latent_dim, bool) or not isinstance(latent_dim, int) or latent_dim < 1:
            raise ValueError(f"latent_dim must be a positive integer, got {latent_dim!r}")
        self.latent_dim = latent_dim

    # ------------------------------------------------------------------ fitting
    def fit(self, X) -> PPCA:
        """Fit by maximum likelihood in closed form.

        Parameters
        ----------
        X : array-like or torch.Tensor, shape (N, D)
            Training data, N >= 2, finite. float64 input is fitted in float64; other
            dtypes are fitted in float32. The eigendecomposition always runs in float64.

        Returns
        -------
        self
        """
        X = check_data(X, name="X", min_rows=2)
        n, d = X.shape
        self._check_latent_dim(d)
        mean = X.mean(dim=0)
        centered = X - mean
        cov = (centered.T @ centered).to(torch.float64) / n
        self._set_from_covariance(mean, cov, n, X.dtype)
        return self

    def _check_latent_dim(self, d: int) -> None:
        if self.latent_dim >= d:
            raise ValueError(
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
            raise ValueError(
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
            raise ValueError(f"mean {tuple(mean.shape)} and W {tuple(W.shape)} do not match")
        if not float(noise_variance) > 0:
            raise ValueError(f"noise_variance must be positive, got {noise_variance}")
        obj = cls(int(W.shape[1]))
        obj.mean_, obj.W_, obj.noise_variance_ = mean, W, float(noise_variance)
        obj.n_features_in_ = int(W.shape[0])
        return obj

    # ------------------------------------------------------------------ helpers
    def _check_fitted(self) -> None:
        if not hasattr(self, "W_"):
            raise RuntimeError("this PPCA is not fitted yet; call fit(X) first")

    def _as_input(self, X) -> torch.Tensor:
        self._check_fitted()
        X = check_data(X, name="X", data_dim=self.n_features_in_)
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

        Returns
        -------
        torch.Tensor, shape (N,)
            Log-densities in nats, in the model's dtype.
        """
        X = self._as_input(X)
        d, k = self.W_.shape
        s2 = self.noise_variance_
        L = torch.linalg.cholesky(self._M())
        r = X - self.mean_
        a = torch.linalg.solve_triangular(L, (r @ self.W_).T, upper=False)  # (k, N)
        quad = ((r * r).sum(1) - (a * a).sum(0)) / s2
        logdet = (d - k) * math.log(s2) + 2.0 * L.diagonal().log().sum()
        return -0.5 * (d * _LOG_2PI + logdet + quad)

    def score(self, X) -> float:
        """Mean log-likelihood per sample, in nats (scikit-learn's ``score`` convention)."""
        return float(self.log_prob(X).mean())

    def posterior(self, X) -> MultivariateNormal:
        """Exact posterior ``p(z | x) = N(M^-1 W^T (x - mean), s2 M^-1)``.

        Returns
        -------
        torch.distributions.MultivariateNormal
            batch_shape (N,), event_shape (k,).
        """
        X = self._as_input(X)
        M = self._M()
        L = torch.linalg.cholesky(M)
        loc = torch.cholesky_solve(((X - self.mean_) @ self.W_).T, L).T  # (N, k)
        cov = self.noise_variance_ * torch.cholesky_inverse(L)
        cov = 0.5 * (cov + cov.T)
        return MultivariateNormal(loc, covariance_matrix=cov.expand(X.shape[0], -1, -1))

    def transform(self, X) -> torch.Tensor:
        """Posterior means ``E[z | x]``, shape (N, k)."""
        return self.posterior(X).mean

    def fit_transform(self, X) -> torch.Tensor:
        """``fit(X)`` then ``transform(X)``."""
        return self.fit(X).transform(X)

    def reconstruct(self, X) -> torch.Tensor:
        """``W E[z | x] + mean``, shape (N, D)."""
        return self.transform(X) @ self.W_.T + self.mean_

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw ``n`` samples from the marginal, shape (n, D)."""
        self._check_fitted()
        if n < 0:
            raise ValueError(f"n must be non-negative, got {n}")
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
