"""PPCA as ground truth: EM with missing values, exact linear-VAE quantities, and the check of a
LinearVAE trained by SVI against the PPCA maximum-likelihood solution."""

import math

import pytest
import torch
from sklearn.datasets import load_breast_cancer
from torch.distributions import MultivariateNormal

import ppvae
from ppvae import PPCA, LinearVAE, evaluate
from ppvae.errors import InputError

# acceptance targets of the ground-truth check (nats/sample and relative errors)
TARGETS = {
    "loglik_gap": 0.01,
    "elbo_gap": 0.03,
    "noise_variance_rel_error": 0.01,
    "covariance_rel_error": 0.05,
}


def ppca_sample(n=5000, d=20, k=3, noise=0.5, seed=0):
    """Draws from a known PPCA: W ~ N(0, 1), mean ~ N(0, 1), noise std ``noise``."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(d, k, generator=g, dtype=torch.float64)
    mu = torch.randn(d, generator=g, dtype=torch.float64)
    z = torch.randn(n, k, generator=g, dtype=torch.float64)
    return mu + z @ W.T + noise * torch.randn(n, d, generator=g, dtype=torch.float64)


def cov_rel(a: PPCA, b: PPCA) -> float:
    Ca, Cb = a.W_ @ a.W_.T, b.W_ @ b.W_.T
    return float(torch.linalg.norm(Ca - Cb) / torch.linalg.norm(Cb))


# ---------------------------------------------------------------------- EM
def test_em_is_monotone_and_reaches_the_closed_form():
    X = ppca_sample(n=2000)
    cf = PPCA(3).fit(X)
    em = PPCA(3, method="em", tol=1e-12, max_iter=5000).fit(X)
    h = torch.tensor(em.loglik_history_, dtype=torch.float64)
    assert bool((h.diff() >= -1e-10).all()), "EM decreased the log-likelihood"
    assert abs(h[-1].item() - cf.score(X)) < 1e-7
    assert cov_rel(em, cf) < 1e-3
    assert abs(em.noise_variance_ / cf.noise_variance_ - 1) < 1e-5
    torch.testing.assert_close(em.mean_, cf.mean_, atol=1e-6, rtol=0)


def test_em_with_20_percent_missing_recovers_the_complete_data_mle():
    X = ppca_sample()
    cf = PPCA(3).fit(X)
    g = torch.Generator().manual_seed(1)
    Xm = X.clone()
    Xm[torch.rand(X.shape, generator=g) < 0.2] = float("nan")
    em = PPCA(3, method="em").fit(Xm)
    h = torch.tensor(em.loglik_history_, dtype=torch.float64)
    assert bool((h.diff() >= -1e-10).all())
    assert cov_rel(em, cf) < 0.05
    # and not by luck: mean imputation, the naive alternative, is far worse on s2
    imputed = torch.where(torch.isnan(Xm), torch.nanmean(Xm, 0), Xm)
    naive = PPCA(3).fit(imputed)
    assert abs(em.noise_variance_ / cf.noise_variance_ - 1) < 0.05
    assert abs(naive.noise_variance_ / cf.noise_variance_ - 1) > 0.1


def test_log_prob_with_missing_entries_is_the_exact_marginal():
    X = ppca_sample(n=200)
    ppca = PPCA(3).fit(X)
    Xm = X[:20].clone()
    g = torch.Generator().manual_seed(2)
    Xm[torch.rand(Xm.shape, generator=g) < 0.3] = float("nan")
    Xm[:3] = X[:3]  # a few complete rows
    lp = ppca.log_prob(Xm)
    C = ppca.covariance()
    for i in range(20):
        o = ~torch.isnan(Xm[i])
        dense = MultivariateNormal(ppca.mean_[o], C[o][:, o]).log_prob(Xm[i, o])
        assert abs(float(lp[i] - dense)) < 1e-9
    # complete rows in the same call take the same value as without any NaN
    full = ~torch.isnan(Xm).any(1)
    torch.testing.assert_close(lp[full], ppca.log_prob(X[:20][full]))


def test_missing_value_errors():
    X = ppca_sample(n=100)
    Xm = X.clone()
    Xm[5] = float("nan")
    with pytest.raises(ValueError, match="row"):
        PPCA(3, method="em").fit(Xm)
    with pytest.raises(ValueError, match="row"):
        PPCA(3).fit(X).log_prob(Xm)
    Xc = X.clone()
    Xc[:, 2] = float("nan")
    with pytest.raises(ValueError, match="column 2"):
        PPCA(3, method="em").fit(Xc)
    with pytest.raises(ValueError, match="method"):
        PPCA(3, method="svd")
    with pytest.raises(ValueError, match="smaller than the data dimension"):
        PPCA(20, method="em").fit(X)


# ---------------------------------------------------------------------- exact quantities
def _linear_vae_like(ppca: PPCA, seed=0) -> LinearVAE:
    torch.manual_seed(seed)
    vae = LinearVAE(ppca.n_features_in_, ppca.latent_dim).double()
    with torch.no_grad():
        vae.decoder.weight.copy_(ppca.W_ + 0.1 * torch.randn_like(ppca.W_))
        vae.decoder.bias.copy_(ppca.mean_)
    return vae


def test_exact_log_likelihood_of_a_linear_vae():
    X = ppca_sample(n=50, d=8, k=2)
    vae = _linear_vae_like(PPCA(2).fit(X))
    s2 = float(vae.noise_variance.detach())
    W, b = vae.W.detach(), vae.b.detach()
    dense = MultivariateNormal(b, W @ W.T + s2 * torch.eye(8, dtype=torch.float64)).log_prob(X)
    torch.testing.assert_close(evaluate.exact_log_likelihood(vae, X), dense, atol=1e-9, rtol=0)


@pytest.mark.parametrize("which", ["ppca", "linear_vae"])
def test_elbo_decomposition_identity(which):
    """log p(x) = ELBO(q) + KL(q || p(z|x)) for arbitrary diagonal Gaussian q, to 1e-9."""
    X = ppca_sample(n=40, d=10, k=3)
    ppca = PPCA(3).fit(X)
    model = ppca if which == "ppca" else _linear_vae_like(ppca)
    g = torch.Generator().manual_seed(3)
    for _ in range(4):
        q_loc = 2 * torch.randn(40, 3, generator=g, dtype=torch.float64)
        q_scale = torch.rand(40, 3, generator=g, dtype=torch.float64) * 2 + 0.05
        parts = evaluate.elbo_decomposition(model, X, q_loc, q_scale)
        err = parts["log_px"] - parts["elbo"] - parts["kl_to_posterior"]
        assert float(err.abs().max()) < 1e-9
        assert bool((parts["kl_to_posterior"] > 0).all())
    # the closed-form PPCA W has orthogonal columns: its posterior is diagonal and attainable
    post = ppca.posterior(X)
    parts = evaluate.elbo_decomposition(
        ppca, X, post.mean, post.covariance_matrix[0].diagonal().sqrt()
    )
    assert float(parts["kl_to_posterior"].abs().max()) < 1e-10
    torch.testing.assert_close(parts["elbo"], parts["log_px"], atol=1e-9, rtol=0)


def test_closed_form_elbo_matches_monte_carlo_elbo():
    """The trace-based MC evaluator agrees with the closed form within Monte Carlo error."""
    X = ppca_sample(n=300, d=10, k=3).float()
    vae = _linear_vae_like(PPCA(3).fit(X.double())).float()
    loc, scale = vae.encode(X)
    exact = evaluate.elbo_decomposition(vae, X.double(), loc, scale)["elbo"]
    torch.manual_seed(0)
    mc = evaluate.elbo(vae, X, num_samples=200).double()
    diff = mc - exact
    # per-point MC error ~ sd / sqrt(200); the mean of 300 such errors has SE ~ sd / 245
    assert abs(float(diff.mean())) < 4 * float(diff.std()) / math.sqrt(300) + 1e-4


def test_compare_to_ppca_rejects_bad_pairs(digits):
    ppca = PPCA(3).fit(digits.train.double())
    with pytest.raises(ValueError, match="needs a LinearVAE"):
        evaluate.compare_to_ppca(ppvae.VAE(64, 3), ppca, digits.train)
    with pytest.raises(ValueError, match="data_dim mismatch"):
        evaluate.compare_to_ppca(LinearVAE(10, 3), ppca, digits.train)
    with pytest.raises(ValueError, match="linear-Gaussian"):
        evaluate.exact_log_likelihood(ppvae.VAE(64, 3), digits.train)
    with pytest.raises(RuntimeError, match="not fitted"):
        evaluate.compare_to_ppca(LinearVAE(64, 3), PPCA(3), digits.train)


def test_linear_vae_save_load(tmp_path):
    vae = LinearVAE(6, 2, encoder="free")
    back = ppvae.load(ppvae.save(vae, tmp_path / "lin.pt"))
    assert isinstance(back, LinearVAE) and back.encoder_parameterization == "free"
    x = torch.rand(3, 6)
    torch.testing.assert_close(back.encode(x)[0], vae.encode(x)[0])


# ---------------------------------------------------------------------- the SVI check
def _standardized(x):
    x = torch.as_tensor(x, dtype=torch.float64)
    return (x - x.mean(0)) / x.std(0)


CASES = {
    "synthetic PPCA (D=20, k=3, N=5000)": (lambda ds: ppca_sample(), 3),
    "digits (k=8)": (lambda ds: ds.train.double(), 8),
    "breast cancer, standardized (569 x 30, k=5)": (
        lambda ds: _standardized(load_breast_cancer().data),
        5,
    ),
}


@pytest.mark.long_convergence
@pytest.mark.parametrize("case", list(CASES))
def test_linear_vae_trained_by_svi_recovers_the_ppca_mle(case, digits):
    make, k = CASES[case]
    X = make(digits)
    ppca = PPCA(k).fit(X)
    torch.manual_seed(0)
    vae = LinearVAE(X.shape[1], k)
    ppvae.fit(vae, X.float(), epochs=2000, batch_size=len(X), seed=0)
    r = evaluate.compare_to_ppca(vae, ppca, X)
    for key, tol in TARGETS.items():
        assert r[key] <= tol, (case, key, r[key])
    assert r["active_units"] == k
    assert max(r["principal_angles_deg"]) < 5.0


def exact_spectrum_sample(n: int, d: int, seed: int) -> torch.Tensor:
    """(n, d) float64 data, mean 0, whose sample covariance is exactly diag(9, 4, 2, 1, ..., 1)
    in a random orthonormal basis (whitened Gaussian draws, rescaled and rotated)."""
    g = torch.Generator().manual_seed(seed)
    Z = torch.randn(n, d, generator=g, dtype=torch.float64)
    Z = Z - Z.mean(0)
    L = torch.linalg.cholesky(Z.T @ Z / n)
    Z = torch.linalg.solve_triangular(L, Z.T, upper=False).T  # sample covariance = I exactly
    Q = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))[0]
    spectrum = torch.ones(d, dtype=torch.float64)
    spectrum[:3] = torch.tensor([9.0, 4.0, 2.0])
    return Z * spectrum.sqrt() @ Q.T


@pytest.mark.long_convergence
def test_posterior_collapse_beyond_the_eigenvalue_threshold():
    """With 3 sample-covariance eigenvalues above s2 and k = 6, three latents must collapse.

    The data are built so that the sample covariance is exactly diag(9, 4, 2, 1, ..., 1) in a
    random basis: the PPCA MLE for k = 6 then has s2 = 1 and three zero columns, and the
    linear VAE's surplus latent dimensions carry (almost) no information: KL -> 0.
    """
    n, d = 4000, 20
    X = exact_spectrum_sample(n, d, seed=4) + 3.0
    ppca = PPCA(6).fit(X)
    assert abs(ppca.noise_variance_ - 1.0) < 1e-9
    assert float(ppca.W_[:, 3:].norm()) < 1e-5
    torch.manual_seed(0)
    vae = LinearVAE(d, 6)
    ppvae.fit(vae, X.float(), epochs=2000, batch_size=n, seed=0)
    r = evaluate.compare_to_ppca(vae, ppca, X)
    kl = sorted(r["kl_per_dim"], reverse=True)
    assert r["active_units"] == 3, kl
    assert max(kl[3:]) < 0.01 and min(kl[:3]) > 0.1
    assert r["loglik_gap"] < 0.01 and r["noise_variance_rel_error"] < 0.01


def test_fixed_noise_collapses_every_dimension_at_or_below_it_exactly():
    """With s2 fixed at 1.5 the ELBO's maximum has ||w_j||^2 = max(lambda_j - s2, 0), and a
    dimension's mean KL at the exact posterior is 1/2 log(1 + ||w_j||^2 / s2): the spectrum
    below (9, 4, 2, 1, ..., 1 exactly) then leaves three active dimensions with those KLs and
    three with KL 0, while s2 stays fixed. 0.01 nats: 4x the largest residual measured after
    400 steps (0.0024, an active dimension; 0.0003 for the collapsed ones) and 14x below the
    smallest active KL; with s2 learned instead the deviation is 0.21."""
    n, d = 2000, 12
    X = (exact_spectrum_sample(n, d, seed=5) - 1.0).float()
    s2 = 1.5
    vae = LinearVAE(d, 6, noise_scale=math.sqrt(s2))
    ppvae.fit(vae, X, epochs=400, batch_size=n, seed=0)
    assert abs(float(vae.noise_variance) - s2) < 1e-6
    with torch.no_grad():
        loc, scale = vae.q.moments(vae.encoder_output(X))
    m, s = loc.double(), scale.double()
    kl = (0.5 * (s * s + m * m - 1.0 - 2.0 * s.log())).mean(0).sort(descending=True).values
    predicted = 0.5 * torch.log(torch.tensor([9.0, 4.0, 2.0, 1.5, 1.5, 1.5]) / s2).double()
    assert float((kl - predicted).abs().max()) < 0.01, (kl, predicted)
    col = (vae.W.detach().double() ** 2).sum(0).sort(descending=True).values
    torch.testing.assert_close(col[:3], torch.tensor([7.5, 2.5, 0.5]).double(), atol=0.05, rtol=0)


def test_fixed_noise_is_validated_and_saved(tmp_path):
    with pytest.raises(InputError, match="noise_scale must be positive"):
        LinearVAE(6, 2, noise_scale=0.0)
    vae = LinearVAE(6, 2, noise_scale=0.3)
    back = ppvae.load(ppvae.save(vae, tmp_path / "fixed.pt"))
    assert back.noise_scale == 0.3 and abs(float(back.noise_variance) - 0.09) < 1e-7
    assert not any(p.requires_grad and p.shape == (1,) for p in back.likelihood.parameters())


def test_diagonal_normal_entropy_is_the_sum_over_dimensions():
    from torch.distributions import Normal

    from ppvae.likelihoods import DiagonalNormal

    for scale in (torch.tensor([0.7]), torch.tensor([0.5, 1.0, 2.0, 0.3, 0.9])):
        h = DiagonalNormal(torch.zeros(3, 5), scale).entropy()
        expected = Normal(torch.zeros(5), scale.expand(5)).entropy().sum()
        torch.testing.assert_close(h, expected.expand(3), atol=1e-6, rtol=0)
