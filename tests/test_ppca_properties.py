"""Property-based checks of PPCA over random shapes and scales (hypothesis)."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.distributions import MultivariateNormal

from ppvae import PPCA


@st.composite
def problems(draw):
    d = draw(st.integers(2, 10))
    k = draw(st.integers(1, d - 1))
    n = draw(st.integers(d + 2, 60))
    scale = draw(st.sampled_from([1e-3, 1e-1, 1.0, 10.0, 1e3]))
    offset = draw(st.sampled_from([0.0, 1.0, -50.0]))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=torch.float64) * scale + offset * scale
    return X, k


@settings(max_examples=40, deadline=None)
@given(problems())
def test_log_prob_equals_the_dense_gaussian(problem):
    X, k = problem
    ppca = PPCA(k).fit(X)
    dense = MultivariateNormal(ppca.mean_, covariance_matrix=ppca.covariance()).log_prob(X)
    lp = ppca.log_prob(X)
    # both are O(D log scale); compare relative to the magnitudes involved
    tol = 1e-8 * (1.0 + float(dense.abs().max()))
    assert float((lp - dense).abs().max()) <= tol


@settings(max_examples=40, deadline=None)
@given(problems())
def test_posterior_equals_bayes_rule(problem):
    X, k = problem
    ppca = PPCA(k).fit(X)
    W, C = ppca.W_, ppca.covariance()
    gain = torch.linalg.solve(C, W).T  # W^T C^-1
    post = ppca.posterior(X)
    mean = (X - ppca.mean_) @ gain.T
    cov = torch.eye(k, dtype=X.dtype) - gain @ W
    scale = 1.0 + float(mean.abs().max())
    assert float((post.mean - mean).abs().max()) <= 1e-7 * scale
    assert float((post.covariance_matrix[0] - cov).abs().max()) <= 1e-8
