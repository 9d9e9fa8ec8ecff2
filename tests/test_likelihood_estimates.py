"""Trustworthy likelihoods: importance sampling validated against exact values, PSIS, gaps."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

import ppvae
from ppvae import PPCA, LinearVAE, evaluate


def _linear_vae_at(ppca: PPCA) -> LinearVAE:
    """A LinearVAE whose decoder is the PPCA MLE (its encoder starts at the exact posterior)."""
    vae = LinearVAE(ppca.n_features_in_, ppca.latent_dim)
    with torch.no_grad():
        vae.decoder.weight.copy_(ppca.W_)
        vae.decoder.bias.copy_(ppca.mean_)
        s = math.sqrt(ppca.noise_variance_)
        vae.likelihood.raw_scale.fill_(math.log(math.expm1(s - vae.likelihood.min_scale)))
    return vae


@pytest.fixture(scope="module")
def trained_linear(digits):
    torch.manual_seed(0)
    vae = LinearVAE(64, 8)
    # 2000 steps of ppvae's own program: without per-site checks, as long_convergence tests run
    ppvae.fit(vae, digits.train, epochs=2000, batch_size=len(digits.train), seed=0, validate=False)
    return vae


def test_iw_estimate_with_k_5000_is_within_0_01_nats_of_exact(trained_linear, digits):
    exact = evaluate.exact_log_likelihood(trained_linear, digits.test.double())
    torch.manual_seed(0)
    est = evaluate.estimate_log_likelihood(trained_linear, digits.test, num_samples=5000)
    assert abs(est.mean - float(exact.mean())) < 0.01
    # the reported Monte Carlo error is honest: per-point errors are within a few of it
    z = (est.log_px.double() - exact) / est.mc_se.double().clamp_min(1e-6)
    assert float(z.abs().median()) < 3.0
    assert est.khat_share is not None and est.khat_share < 0.05


def test_exact_posterior_as_proposal_gives_the_exact_value_for_any_k(digits):
    ppca = PPCA(8).fit(digits.train.double())
    vae = _linear_vae_at(ppca)

    def ppca_guide(x, num_data=None):
        post = ppca.posterior(x.double())
        q = dist.MultivariateNormal(post.mean.float(), post.covariance_matrix.float())
        with pyro.plate("data", size=x.shape[0], subsample_size=x.shape[0]):
            return pyro.sample("z", q)

    exact = evaluate.exact_log_likelihood(vae, digits.test.double()).float()
    for k in (1, 3, 50):
        est = evaluate.log_likelihood(vae, digits.test, num_samples=k, guide=ppca_guide)
        # every weight equals p(x): float32 round-off only
        torch.testing.assert_close(est, exact, atol=2e-3, rtol=1e-5)


def test_psis_flags_a_bad_proposal(digits):
    """A guide far narrower than the posterior gives heavy-tailed weights: k-hat > 0.7."""
    ppca = PPCA(2).fit(digits.train.double())
    vae = _linear_vae_at(ppca)
    with torch.no_grad():
        vae.encoder.raw_scale.fill_(-3.0)  # guide scale = exp(-3) x the posterior's
    torch.manual_seed(0)
    bad = evaluate.estimate_log_likelihood(vae, digits.test[:100], num_samples=1000)
    torch.manual_seed(0)
    good = evaluate.estimate_log_likelihood(_linear_vae_at(ppca), digits.test[:100], 1000)
    assert bad.khat_share > 0.5 and good.khat_share < 0.1
    smooth = evaluate.estimate_log_likelihood(vae, digits.test[:100], 1000, smoothed=True)
    assert smooth.log_px.shape == (100,) and bool(torch.isfinite(smooth.log_px).all())
    with pytest.raises(ValueError, match="smoothed"):
        evaluate.estimate_log_likelihood(vae, digits.test[:5], 10, psis=False, smoothed=True)


def test_bits_per_dim_and_summary():
    est = evaluate.LikelihoodEstimate(
        log_px=torch.tensor([-100.0, -120.0]),
        mc_se=torch.zeros(2),
        khat=None,
        num_samples=10,
        data_dim=784,
    )
    assert math.isclose(est.bits_per_dim(), 110 / (784 * math.log(2)))
    assert math.isclose(est.bits_per_dim(256), -(-110 - 784 * math.log(256)) / (784 * math.log(2)))
    assert est.khat_share is None and math.isclose(est.sem, math.sqrt(200 / 2))


def test_estimates_work_for_every_prior_and_likelihood(digits):
    for prior, lik in (
        ("mog", "laplace"),
        ("vamp", "continuous-bernoulli"),
        ("hierarchical", "gaussian"),
    ):
        torch.manual_seed(0)
        vae = ppvae.VAE(64, 3, hidden=(16,), prior=prior, likelihood=lik)
        ppvae.fit(vae, digits.train[:200], epochs=2, batch_size=100)
        est = evaluate.estimate_log_likelihood(vae, digits.test[:20], num_samples=64)
        assert bool(torch.isfinite(est.log_px).all()) and est.khat.shape == (20,)


def test_inference_gaps(trained_linear, digits):
    # linear VAE near the PPCA MLE: its amortized Gaussian posterior is (nearly) exact
    x = digits.test[:60]
    g = evaluate.inference_gaps(trained_linear, x, steps=200)
    assert abs(g["mean"]["approximation_gap"]) < 0.005
    assert abs(g["mean"]["amortization_gap"]) < 0.005  # fresh MC estimates: either sign
    # the per-point ELBO estimate (log q at the sample, not the analytic entropy) has almost
    # no variance when q is near p(z|x): it matches the closed-form ELBO point by point
    loc, scale = trained_linear.encode(x)
    exact = evaluate.elbo_decomposition(
        trained_linear, x.double(), loc.detach().double(), scale.detach().double()
    )["elbo"]
    assert float((g["elbo_amortized"].double() - exact).abs().max()) < 0.01
    # a briefly trained nonlinear VAE has real gaps, both positive on average
    torch.manual_seed(0)
    vae = ppvae.VAE(64, 4, hidden=(32,))
    ppvae.fit(vae, digits.train, epochs=15, batch_size=128, lr=3e-3)
    g = evaluate.inference_gaps(vae, digits.test[:60], num_samples=500, steps=300)
    assert g["mean"]["amortization_gap"] > 0.05
    assert g["mean"]["approximation_gap"] > 0
    torch.testing.assert_close(
        g["log_px"], g["elbo_amortized"] + g["amortization_gap"] + g["approximation_gap"]
    )
    # many chunks of points: each chunk is scored with its own rows' local guide
    small = evaluate.inference_gaps(
        vae, digits.test[:30], num_samples=20, steps=5, max_elements=20 * 64 * 7
    )
    assert small["log_px"].shape == (30,) and bool(torch.isfinite(small["log_px"]).all())


def test_nuts_gold_standard_matches_the_exact_posterior(digits, tmp_path):
    ppca = PPCA(2).fit(digits.train.double())
    vae = _linear_vae_at(ppca)  # its guide is the exact posterior (W has orthogonal columns)
    x = digits.test[:1]
    r = evaluate.nuts_posterior(vae, x, num_samples=300, warmup_steps=200)[0]
    post = ppca.posterior(x.double())
    exact_mean = post.mean[0].float()
    exact_var = post.covariance_matrix[0].diagonal().float()
    assert r["r_hat_max"] < 1.05 and r["ess_bulk_min"] > 100
    # Monte Carlo error of the NUTS mean is sd / sqrt(ESS)
    mc_err = (exact_var / r["ess_bulk_min"]).sqrt()
    assert bool(((r["nuts_mean"] - exact_mean).abs() < 4 * mc_err).all())
    # variance: relative error of a variance from ESS draws is about sqrt(2 / ESS) < 0.15
    assert bool(((r["nuts_var"] / exact_var - 1).abs() < 0.45).all())
    torch.testing.assert_close(r["q_mean"], exact_mean, atol=1e-4, rtol=1e-4)
    assert ppvae.plots.nuts_vs_guide([r], tmp_path / "n.png").exists()


def test_standard_error_and_khat_share_by_value():
    """sem = sqrt(Var_n(log p) / n), exactly (the spread already holds each point's Monte Carlo
    variance: adding mean(mc_se^2) / n counted it twice); the Monte Carlo error of the mean for
    these points is sqrt(sum mc_se^2) / n; k-hat share counts > 0.7 only
    (0.6 is already heavy-tailed for raw weights, but 0.7 is the threshold for PSIS estimates)."""
    est = evaluate.LikelihoodEstimate(
        log_px=torch.tensor([-100.0, -120.0, -100.0, -120.0]),
        mc_se=torch.tensor([1.0, 3.0, 1.0, 3.0]),
        khat=torch.tensor([0.3, 0.6, 0.75, 0.8]),
        num_samples=10,
        data_dim=784,
    )
    var_data = 400.0 / 3  # unbiased variance of (-100, -120, -100, -120)
    assert math.isclose(est.sem, math.sqrt(var_data / 4), rel_tol=1e-6)
    assert math.isclose(est.mc_se_of_mean, math.sqrt(1 + 9 + 1 + 9) / 4, rel_tol=1e-6)
    assert est.khat_share == 0.5


def test_the_standard_error_of_the_mean_matches_its_spread_over_replicates():
    """Simulated per-point estimates L_i + e_i (between-point sd 2, Monte Carlo sd 1): the
    mean's spread over 2,000 replicate test sets is sqrt((4 + 1) / n), which ``sem`` reports;
    the old sqrt((Var + mean mc^2) / n) said sqrt(6 / n), 10% too wide."""
    g = torch.Generator().manual_seed(0)
    n, reps = 50, 2000
    truth = 2.0 * torch.randn(reps, n, generator=g)
    noisy = truth + torch.randn(reps, n, generator=g)
    means = noisy.mean(1)
    sems = [
        evaluate.LikelihoodEstimate(row, torch.ones(n), None, 10, 1).sem for row in noisy[:200]
    ]
    target = math.sqrt(5.0 / n)
    assert abs(float(means.std()) - target) < 0.05 * target  # sd of a sd from 2000 draws: 1.6%
    assert abs(sum(sems) / len(sems) - target) < 0.03 * target  # 200 sems: about 0.7% each
