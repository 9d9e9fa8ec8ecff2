"""PPCA against dense formulas and scikit-learn. Tolerances are float64 round-off levels."""

import math

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA
from torch.distributions import MultivariateNormal

from ppvae import PPCA


def _ppca_data(n=400, d=12, k=3, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(d, k, generator=g, dtype=dtype) * 2.0
    mu = torch.randn(d, generator=g, dtype=dtype)
    z = torch.randn(n, k, generator=g, dtype=dtype)
    return mu + z @ W.T + 0.3 * torch.randn(n, d, generator=g, dtype=dtype)


def test_log_prob_equals_dense_gaussian():
    X = _ppca_data()
    ppca = PPCA(3).fit(X)
    dense = MultivariateNormal(ppca.mean_, covariance_matrix=ppca.covariance()).log_prob(X)
    lp = ppca.log_prob(X)
    assert lp.shape == (400,) and lp.dtype == torch.float64
    torch.testing.assert_close(lp, dense, rtol=0, atol=1e-8)


def test_closed_form_matches_tipping_bishop_formulas():
    X = _ppca_data(seed=1)
    n = X.shape[0]
    ppca = PPCA(3).fit(X)
    Xc = X - X.mean(0)
    S = Xc.T @ Xc / n  # 1/N, as in Tipping & Bishop
    evals = torch.linalg.eigvalsh(S).flip(0)
    assert math.isclose(ppca.noise_variance_, float(evals[3:].mean()), rel_tol=1e-10)
    # W W^T is rotation-invariant: it must equal U_k (L_k - s2) U_k^T
    WWt = ppca.W_ @ ppca.W_.T
    U = ppca.components_.T
    torch.testing.assert_close(WWt, U @ torch.diag(evals[:3] - ppca.noise_variance_) @ U.T)
    # columns of W are orthogonal with squared norms L_k - s2
    torch.testing.assert_close(
        ppca.W_.T @ ppca.W_, torch.diag(evals[:3] - ppca.noise_variance_), atol=1e-9, rtol=0
    )


def test_fit_is_a_likelihood_maximum():
    """Perturbing the MLE in any of its parameters lowers the training log-likelihood."""
    X = _ppca_data(seed=2)
    ppca = PPCA(3).fit(X)
    best = ppca.score(X)
    g = torch.Generator().manual_seed(0)
    for W, s2, mu in [
        (ppca.W_ * 1.01, ppca.noise_variance_, ppca.mean_),
        (ppca.W_ * 0.99, ppca.noise_variance_, ppca.mean_),
        (ppca.W_, ppca.noise_variance_ * 1.01, ppca.mean_),
        (ppca.W_, ppca.noise_variance_ * 0.99, ppca.mean_),
        (ppca.W_, ppca.noise_variance_, ppca.mean_ + 0.01),
        (
            ppca.W_ + 0.01 * torch.randn(ppca.W_.shape, generator=g, dtype=X.dtype),
            ppca.noise_variance_,
            ppca.mean_,
        ),
    ]:
        assert PPCA.from_params(mu, W, s2).score(X) < best


def test_score_matches_sklearn_after_ddof_correction():
    """scikit-learn normalizes the covariance by N-1; PPCA's MLE by N."""
    X = _ppca_data(n=300, seed=3)
    Xtest = _ppca_data(n=100, seed=4)
    n = X.shape[0]
    ppca = PPCA(3).fit(X)
    sk = PCA(n_components=3, svd_solver="full").fit(X.numpy())
    c = n / (n - 1)
    np.testing.assert_allclose(sk.noise_variance_, c * ppca.noise_variance_, rtol=1e-10)
    np.testing.assert_allclose(sk.get_covariance(), (c * ppca.covariance()).numpy(), atol=1e-10)
    rescaled = PPCA.from_params(ppca.mean_, ppca.W_ * math.sqrt(c), c * ppca.noise_variance_)
    assert math.isclose(rescaled.score(Xtest), sk.score(Xtest.numpy()), rel_tol=1e-10)
    # and the unscaled MLE is better than sklearn's on the training data (it is the maximum)
    assert ppca.score(X) > sk.score(X.numpy())


def test_posterior_equals_dense_bayes_rule():
    X = _ppca_data(n=50, seed=5)
    ppca = PPCA(3).fit(X)
    W, mu, C = ppca.W_, ppca.mean_, ppca.covariance()
    # joint Gaussian of (z, x): Cov(z, x) = W^T, Cov(x) = C
    gain = W.T @ torch.linalg.inv(C)
    post = ppca.posterior(X)
    torch.testing.assert_close(post.mean, (X - mu) @ gain.T, atol=1e-10, rtol=0)
    cov = torch.eye(3, dtype=X.dtype) - gain @ W
    torch.testing.assert_close(post.covariance_matrix[0], cov, atol=1e-10, rtol=0)
    torch.testing.assert_close(ppca.transform(X), post.mean)
    # Bayes' rule pointwise: log p(z|x) = log p(x|z) + log p(z) - log p(x)
    z = post.mean + 0.3
    log_lik = MultivariateNormal(
        z @ W.T + mu, covariance_matrix=ppca.noise_variance_ * torch.eye(12, dtype=X.dtype)
    ).log_prob(X)
    log_prior = MultivariateNormal(torch.zeros(3, dtype=X.dtype), torch.eye(3, dtype=X.dtype))
    lhs = post.log_prob(z)
    rhs = log_lik + log_prior.log_prob(z) - ppca.log_prob(X)
    torch.testing.assert_close(lhs, rhs, atol=1e-9, rtol=0)


def test_float32_fit_and_score():
    X64 = _ppca_data(seed=6)
    p32 = PPCA(3).fit(X64.float())
    p64 = PPCA(3).fit(X64)
    assert p32.W_.dtype == torch.float32 and p32.log_prob(X64.float()).dtype == torch.float32
    # float32 carries ~7 significant digits; log-densities here are O(10)
    torch.testing.assert_close(
        p32.log_prob(X64.float()).double(), p64.log_prob(X64), atol=1e-3, rtol=1e-5
    )


def test_sample_covariance_matches_model():
    X = _ppca_data(seed=7)
    ppca = PPCA(3).fit(X)
    S = ppca.sample(40000, generator=torch.Generator().manual_seed(0))
    assert S.shape == (40000, 12)
    C = ppca.covariance()
    emp = torch.cov(S.T)
    # sampling error of a covariance entry is about sqrt(2 / n) relative: ~0.7% at n = 40000
    assert float(torch.linalg.norm(emp - C) / torch.linalg.norm(C)) < 0.03
    assert float((S.mean(0) - ppca.mean_).abs().max()) < 5 * math.sqrt(
        float(C.diag().max()) / 40000
    )


def test_reconstruct_shape():
    X = _ppca_data(seed=8)
    ppca = PPCA(3).fit(X)
    assert ppca.reconstruct(X[:5]).shape == (5, 12)
    assert ppca.fit_transform(X).shape == (400, 3)


@pytest.mark.parametrize("k", [0, -1, 2.5, True, "3"])
def test_bad_latent_dim(k):
    with pytest.raises(ValueError, match="latent_dim"):
        PPCA(k)


def test_errors():
    X = _ppca_data()
    with pytest.raises(ValueError, match="smaller than the data dimension"):
        PPCA(12).fit(X)
    with pytest.raises(ValueError, match="at least 2 row"):
        PPCA(2).fit(X[:1])
    Xn = X.clone()
    Xn[3, 4] = float("nan")
    with pytest.raises(ValueError, match="method='em'"):
        PPCA(2).fit(Xn)
    with pytest.raises(RuntimeError, match="not fitted"):
        PPCA(2).log_prob(X)
    ppca = PPCA(2).fit(X)
    with pytest.raises(ValueError, match="expected 12 columns"):
        ppca.log_prob(X[:, :5])
    Xi = X.clone()
    Xi[0, 0] = float("inf")
    with pytest.raises(ValueError, match="infinite"):
        ppca.log_prob(Xi)


def test_degenerate_data_has_zero_noise():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(50, 2, generator=g, dtype=torch.float64) @ torch.randn(
        2, 6, generator=g, dtype=torch.float64
    )
    with pytest.raises(ValueError, match="noise variance is zero"):
        PPCA(2).fit(X)


def test_training_score_from_covariance_equals_the_pointwise_mean():
    X = _ppca_data(seed=9) + 100.0  # a large offset stresses the uncentred covariance
    ppca = PPCA(3).fit(X)
    fast = ppca.score(X)  # the fitted tensor: computed from S
    slow = float(ppca.log_prob(X).mean())
    assert abs(fast - slow) < 1e-9
    ref = PPCA(3).fit(X.T.contiguous().T)  # non-contiguous input takes the same path
    torch.testing.assert_close(ref.W_ @ ref.W_.T, ppca.W_ @ ppca.W_.T)
    X[0, 0] += 1.0  # modified in place: no stale shortcut
    assert abs(ppca.score(X) - float(ppca.log_prob(X).mean())) < 1e-9
    assert ppca.score(X) != fast
