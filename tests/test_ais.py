"""AIS and BDMC checked against the exact log-likelihood of linear-Gaussian models.

A LinearVAE's marginal N(b, W W^T + s2 I) is exact for any parameters, so it is the ground
truth for an estimator that never looks at it. The LinearVAE here is trained with the
``"free"`` encoder for 40 full-batch epochs only, so its guide is a proposal of the kind that
AIS is for: the ELBO is 0.5-0.7 nats below log p(x) and the importance-weighted bound with as
many samples (8) as AIS has chains is 0.08-0.15 nats below (measured, seeds below).
"""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

import ppvae
from ppvae import LinearVAE, evaluate
from ppvae.errors import InputError

from .programs import StudentTVAE
from .test_ground_truth import ppca_sample

CHAINS, LEAPFROG = 8, 5


def _data(which, digits):
    if which == "digits":
        return digits.train.float(), digits.test[:100].float(), 8
    # unseen data: a PPCA with its own W, mean and noise (seed 7), D = 20, k = 3
    A = ppca_sample(n=1100, d=20, k=3, noise=0.7, seed=7).float()
    return A[:1000], A[1000:], 3


@pytest.fixture(scope="module", params=["digits", "synthetic PPCA"])
def trained(request, digits):
    X, Xt, k = _data(request.param, digits)
    torch.manual_seed(0)
    vae = LinearVAE(X.shape[1], k, encoder="free")
    ppvae.fit(vae, X, epochs=40, batch_size=len(X), seed=0, progress=False)
    return request.param, vae, Xt


def _mean_and_se(values: torch.Tensor) -> tuple[float, float]:
    return float(values.mean()), float(values.std() / math.sqrt(len(values)))


def test_ais_from_the_guide_lands_on_the_exact_log_likelihood(trained):
    """T = 200 transitions bring AIS within 0.02 nats/point of exact, where the IW bound with
    the same 8 samples per point is off by more than twice that.

    AIS is a lower bound in expectation whose bias shrinks with T (BDMC below measures it at
    ~0.005 nats for T = 200 on these models); the mean error over 100 points also carries Monte
    Carlo noise of sd ~0.006 (spread of per-point errors / sqrt(100), measured), so 0.02 leaves
    three standard errors above the bias. The bias can only make AIS too low, so the estimate
    must also not exceed exact by more than that noise."""
    name, vae, Xt = trained
    exact = evaluate.exact_log_likelihood(vae, Xt.double())
    est = evaluate.ais_log_likelihood(
        vae, Xt, num_steps=200, num_chains=CHAINS, leapfrog_steps=LEAPFROG, seed=0
    )
    assert isinstance(est, evaluate.LikelihoodEstimate)
    assert est.log_px.shape == est.mc_se.shape == est.ess.shape == (len(Xt),)
    err, se = _mean_and_se(est.log_px.double() - exact)
    assert abs(err) <= 0.02, (name, err, se)
    iw = evaluate.log_likelihood(vae, Xt, CHAINS).double()
    assert float((exact - iw).mean()) > 0.05, name  # the guide alone is not enough
    assert bool((est.ess >= 1).all()) and bool((est.ess <= CHAINS + 1e-4).all())
    assert 0.4 < float(est.acceptance.mean()) < 0.95  # adapted toward 0.65


def test_bdmc_brackets_the_exact_value_and_its_gap_shrinks_with_t(trained):
    """On data simulated from the model, forward AIS is a stochastic lower bound and reverse AIS
    from the true z a stochastic upper bound: their means over 100 points must bracket the mean
    exact log p(x) within 3 standard errors (spread over points / sqrt(n)), and the gap between
    them must shrink from T = 10 to T = 200. The gap's variance part falls as 1/T; measured over
    3 seeds each, 0.18-0.49 nats at T = 10 and 0.002-0.14 at T = 200, so the asserted halving
    has margin. Digits anneal from the guide, the synthetic data from the prior."""
    name, vae, _ = trained
    start = "guide" if name == "digits" else "prior"
    gaps = {}
    for T in (10, 200):
        r = evaluate.bdmc(
            vae, 100, num_steps=T, num_chains=4, leapfrog_steps=LEAPFROG, start=start, seed=T
        )
        exact = evaluate.exact_log_likelihood(vae, r.x.double())
        lower, lower_se = _mean_and_se(r.lower.log_px.double() - exact)
        upper, upper_se = _mean_and_se(r.upper.double() - exact)
        assert lower <= 3 * lower_se, (name, T, lower, lower_se)
        assert upper >= -3 * upper_se, (name, T, upper, upper_se)
        gaps[T] = float(r.gap.mean())
        assert r.summary()["gap_mean"] == pytest.approx(gaps[T])
    assert gaps[200] < 0.5 * gaps[10], (name, gaps)


def test_ais_on_a_users_program_agrees_with_large_k_importance_sampling(digits):
    """A user's Student-t VAE with a 2-d latent: IW with K = 5000 is then all but exact, and
    AIS (T = 50, 8 chains) must agree with it within 4 of its standard errors + 0.02."""
    X = digits.train[:300].float()
    torch.manual_seed(0)
    program = StudentTVAE(X.shape[1])
    ppvae.fit(program, X, epochs=20, batch_size=100, seed=0, progress=False)
    x = digits.test[:20].float()
    iw = evaluate.estimate_log_likelihood(program, x, 5000, psis=False)
    est = evaluate.ais_log_likelihood(program, x, num_steps=50, num_chains=8, seed=0)
    diff = est.log_px - iw.log_px
    bound = 4 * (est.mc_se.pow(2) + iw.mc_se.pow(2)).sqrt() + 0.02
    assert bool((diff.abs() <= bound).all()), (diff, bound)
    r = evaluate.bdmc(program, 5, num_steps=10, num_chains=2, data_dim=X.shape[1], seed=0)
    assert r.x.shape == (5, X.shape[1]) and r.z.shape == (5, 2)
    assert bool(torch.isfinite(r.gap).all())


def test_ais_is_reproducible_with_a_seed_and_leaves_the_global_generator_alone(trained):
    _, vae, Xt = trained
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = evaluate.ais_log_likelihood(vae, Xt[:5], num_steps=5, num_chains=2, seed=3)
    after = torch.rand(1)
    b = evaluate.ais_log_likelihood(vae, Xt[:5], num_steps=5, num_chains=2, seed=3)
    torch.testing.assert_close(a.log_px, b.log_px)
    assert before == after


def test_chunks_of_one_point_give_the_same_estimator(trained):
    """Bounded memory: rows annealed one at a time (max_elements=1) estimate the same thing as
    one chunk; both land within 0.5 nats/point of exact at T = 20 on 3 points (loose: per-point
    errors at T = 10 are up to ~1 nat, measured, while an unannealed bug is off by the
    0.5-0.7-nat ELBO gap or more)."""
    _, vae, Xt = trained
    exact = evaluate.exact_log_likelihood(vae, Xt[:3].double())
    for max_elements in (2**22, 1):
        est = evaluate.ais_log_likelihood(
            vae, Xt[:3], num_steps=20, num_chains=4, seed=0, max_elements=max_elements
        )
        assert est.log_px.shape == (3,)
        assert abs(float((est.log_px.double() - exact).mean())) < 0.5, max_elements


def _gamma_scale_program(x, num_data=None):
    with pyro.plate("data", x.shape[0]):
        s = pyro.sample("s", dist.Gamma(torch.ones(x.shape[0]), 1.0))
        pyro.sample("x", dist.Normal(0.0, s[:, None]).to_event(1), obs=x)


def _gamma_scale_guide(x, num_data=None):
    with pyro.plate("data", x.shape[0]):
        pyro.sample("s", dist.Gamma(torch.ones(x.shape[0]), 1.0))


def test_a_positive_latent_is_annealed_in_unconstrained_space():
    """A Gamma scale, in a program that does not broadcast over chains: moved as log s (the
    Jacobian in the density), one chain at a time; its AIS estimate agrees with the IW one
    (the checks against exact values are in test_pyro_idioms.py)."""
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    program = (_gamma_scale_program, _gamma_scale_guide)
    ais = evaluate.ais_log_likelihood(program, x, num_steps=25, num_chains=8, seed=0)
    pyro.set_rng_seed(0)
    iw = evaluate.estimate_log_likelihood(program, x, num_samples=1000)
    assert bool(((ais.log_px - iw.log_px).abs() < 4 * (ais.mc_se + iw.mc_se) + 0.05).all())


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_steps": 0}, "num_steps"),
        ({"num_chains": 1.5}, "num_chains"),
        ({"leapfrog_steps": True}, "leapfrog_steps"),
        ({"step_size": 0.0}, "step_size"),
        ({"target_accept": 1.0}, "target_accept"),
        ({"start": "posterior"}, "start"),
        ({"schedule": [0.0, 0.7, 0.5, 1.0]}, "schedule"),
    ],
)
def test_bad_settings_get_one_clear_error(trained, kwargs, match):
    _, vae, Xt = trained
    with pytest.raises(InputError, match=match):
        evaluate.ais_log_likelihood(vae, Xt[:2], **kwargs)


def test_bdmc_needs_the_data_dimension_of_a_function_pair():
    from .programs import student_t_functions

    with pytest.raises(InputError, match="data_dim"):
        evaluate.bdmc(student_t_functions(5), 3, num_steps=2)


def test_sigmoid_schedule_runs_from_zero_to_one():
    b = evaluate.sigmoid_schedule(10)
    assert b.shape == (11,) and float(b[0]) == 0.0 and float(b[-1]) == 1.0
    assert bool((b[1:] > b[:-1]).all())
    # denser at the ends than in the middle
    assert float(b[1] - b[0]) < float(b[6] - b[5])


def _certified(gap, minus_iw, sem=0.05):
    ais = {"n_points": 10, "num_steps": 50, "num_chains": 4, "mean": -80.0, "sem": 1.0}
    ais.update(minus_iw=minus_iw, minus_iw_sem=sem)
    bdmc = {"n_points": 5, "lower": -90.0, "upper": -90.0 + gap, "gap": gap}
    bdmc.update(gap_sem=0.1, gap_max=2 * gap)
    return {"ais": ais, "bdmc": bdmc}


@pytest.mark.parametrize(
    "certified, verdict",
    [
        (_certified(0.3, 1.2), "**Trust AIS**"),
        (_certified(5.0, 1.2), "has not converged"),
        (_certified(0.3, -1.0), "AIS falls below IW"),
        (None, "AIS was not run"),
    ],
)
def test_the_report_says_which_number_to_trust(certified, verdict):
    from ppvae.reports import trust_paragraph

    text = trust_paragraph(certified, 0.93, 5000)
    assert verdict in text
    assert "93%" in text  # the k-hat share is stated where the IW number is discussed


@pytest.mark.parametrize("gap, warned", [(0.3, False), (335.0, True)])
def test_the_printed_table_warns_when_bdmc_says_ais_has_not_converged(gap, warned):
    """The terminal shows the AIS number too, so it carries the report's verdict where BDMC's
    gap exceeds TRUSTED_GAP (on MNIST at run's defaults it was hundreds of nats)."""
    from ppvae.reports import run_table

    vae = {"iw_samples": 1000, "test_log_likelihood_iw": -80.0, "test_log_likelihood_iw_sem": 1.0,
           "test_elbo": -85.0, "test_bits_per_dim_iw": None, "fit_seconds": 1.0,
           "certified": _certified(gap, 1.2)}  # fmt: skip
    ppca = {"test_log_likelihood": -90.0, "test_bits_per_dim": None, "fit_seconds": 0.1}
    text = run_table({"dataset": "d", "ppca": ppca, "vae": vae, "units": "image"})
    assert ("AIS has not converged at T = 50" in text) == warned


def test_diverging_trajectories_are_rejected_not_raised(trained):
    """A step so large that the leapfrog leaves the floats: every proposal is rejected (no
    error from Pyro's validation), and AIS without moves is still a valid estimator, so the
    estimates stay finite."""
    _, vae, Xt = trained
    est = evaluate.ais_log_likelihood(
        vae, Xt[:3], num_steps=3, num_chains=2, step_size=1e30, adapt=False, seed=0
    )
    assert float(est.acceptance.max()) == 0.0
    assert bool(torch.isfinite(est.log_px).all())


def test_ais_with_adaptation_off_lands_on_the_exact_log_likelihood(trained):
    """With the step size fixed (``adapt=False``) the transitions do not depend on the chains'
    history, so E[w] = p(x) exactly and the only errors are Monte Carlo noise and AIS's
    (non-positive) bias at finite T. The mean error over 40 points must lie within 4 of its own
    standard errors (spread of the per-point errors / sqrt(40), which here is the Monte Carlo
    noise: the exact value is subtracted point by point). Measured at T = 50, 8 chains, step 0.5
    over 3 seeds on each model: errors -0.014 to +0.011 nats against standard errors of
    0.010-0.013, so the bias is below the noise and 4 standard errors (~0.05) leave room; the
    standard error itself must be below 0.03, or the check would say nothing."""
    name, vae, Xt = trained
    x = Xt[:40]
    exact = evaluate.exact_log_likelihood(vae, x.double())
    est = evaluate.ais_log_likelihood(
        vae, x, num_steps=50, num_chains=CHAINS, leapfrog_steps=LEAPFROG, adapt=False, seed=0
    )
    assert bool((est.step_size == 0.5).all())  # not adapted
    err, se = _mean_and_se(est.log_px.double() - exact)
    assert se < 0.03, (name, se)
    assert abs(err) <= 4 * se, (name, err, se)


def test_bdmc_with_adaptation_off_sandwiches_the_exact_value(trained):
    """BDMC at a fixed step size (T = 30, 40 simulated points): forward AIS's mean must not
    exceed the exact mean log p(x), nor reverse AIS's fall below it, by more than 3 standard
    errors; both bounds stay unbiased in their direction for any T when the step is fixed.
    Digits anneal from the guide, the synthetic data from the prior (measured at T = 50: gaps
    -0.01 and 0.11 nats)."""
    name, vae, _ = trained
    start = "guide" if name == "digits" else "prior"
    r = evaluate.bdmc(
        vae, 40, num_steps=30, num_chains=4, leapfrog_steps=LEAPFROG, adapt=False, start=start,
        seed=1,
    )
    exact = evaluate.exact_log_likelihood(vae, r.x.double())
    lower, lower_se = _mean_and_se(r.lower.log_px.double() - exact)
    upper, upper_se = _mean_and_se(r.upper.double() - exact)
    assert lower <= 3 * lower_se, (name, lower, lower_se)
    assert upper >= -3 * upper_se, (name, upper, upper_se)
    assert float(r.gap.mean()) < 0.5, name


def test_the_approximation_gap_gains_an_ais_estimate(digits):
    """``inference_gaps(..., ais=...)`` adds AIS's log p(x) and the approximation gap against
    it. On a LinearVAE, where the library's own ``log_px`` is exact, AIS's gap must agree with
    the exact gap within 4 Monte Carlo standard errors of the mean plus 0.02 nats of AIS bias
    at T = 50."""
    X = digits.train.float()
    torch.manual_seed(0)
    vae = LinearVAE(X.shape[1], 4, encoder="free")
    ppvae.fit(vae, X, epochs=20, batch_size=len(X), seed=0, progress=False)
    x = digits.test[:10].float()
    ais = {"num_steps": 50, "num_chains": CHAINS, "leapfrog_steps": LEAPFROG, "adapt": False}
    g = evaluate.inference_gaps(vae, x, steps=20, elbo_samples=200, ais={**ais, "seed": 0})
    assert g["log_px_ais"].shape == g["approximation_gap_ais"].shape == (10,)
    diff = g["approximation_gap_ais"] - g["approximation_gap"]  # = AIS - exact, per point
    mc = float(g["log_px_ais_mc_se"].pow(2).sum().sqrt() / 10)
    assert abs(float(diff.mean())) <= 4 * mc + 0.02, (float(diff.mean()), mc)
    assert g["mean"]["approximation_gap_ais"] == pytest.approx(
        float(g["approximation_gap_ais"].mean())
    )
    with pytest.raises(InputError, match="ais must be a dict"):
        evaluate.inference_gaps(vae, x, steps=1, ais=50)


def test_the_compiled_log_density_gives_the_eager_numbers(digits, monkeypatch):
    """For ppvae's own static VAE, AIS and BDMC trace log p(x, z) and log q0(z) once per
    shape (torch.jit.trace) instead of running Pyro at every leapfrog step; with the same
    seed every weight equals the eager one (the same operations, in the same order)."""
    from ppvae.evaluate import ais

    torch.manual_seed(0)
    vae = ppvae.VAE(64, 4, hidden=(16,))
    ppvae.fit(vae, digits.train[:200], epochs=2, seed=0, progress=False)
    traced = []
    original = ais._traced
    monkeypatch.setattr(ais, "_traced", lambda fn, z: traced.append(z.shape) or original(fn, z))
    kwargs = {"num_steps": 6, "num_chains": 3, "seed": 1, "progress": False}
    fast = evaluate.ais_log_likelihood(vae, digits.test[:7], **kwargs)
    fast_bdmc = evaluate.bdmc(vae, num_points=5, **kwargs)
    assert traced, "the compiled path was not taken"
    monkeypatch.setattr(ais, "known_static", lambda program: False)
    eager = evaluate.ais_log_likelihood(vae, digits.test[:7], **kwargs)
    eager_bdmc = evaluate.bdmc(vae, num_points=5, **kwargs)
    torch.testing.assert_close(fast.log_px, eager.log_px, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(fast_bdmc.gap, eager_bdmc.gap, rtol=1e-6, atol=1e-5)
    assert all(p.requires_grad for p in vae.parameters())  # unfrozen afterwards
