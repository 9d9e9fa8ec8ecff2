"""Programs written the ways Pyro's own tutorials write them (issue: every way a Pyro user
writes a program gives the right number or a clear refusal).

Each number is checked against Pyro's own computation or an exact value: a linear-Gaussian
model whose guide is the exact posterior has importance weights equal to log p(x) at every
draw, so its likelihood estimates are exact whatever the number of samples.
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

import ppvae
from ppvae import evaluate
from ppvae.errors import ProgramError
from ppvae.train.iwae import IWAE_ELBO

W = torch.tensor([1.5, -0.5, 0.8])
S2 = 0.5


def exact_log_px(x: torch.Tensor) -> torch.Tensor:
    """log N(x; 0, w w^T + s2 I), (..., N)."""
    cov = (torch.outer(W, W) + S2 * torch.eye(3)).to(x.dtype)
    return dist.MultivariateNormal(torch.zeros(3, dtype=x.dtype), cov).log_prob(x)


def posterior(x: torch.Tensor):
    prec = 1.0 + W.dot(W) / S2
    return (x @ W / S2) / prec, (1.0 / prec) ** 0.5


def linear_program(plate: str = "data", subsample_size=None, min_rows: bool = False):
    """z ~ N(0, 1), x | z ~ N(w z, s2 I), guide the exact posterior; the plate subsamples
    ``subsample_size`` rows (``min(s, len(x))`` with ``min_rows``)."""

    def size(x):
        if subsample_size is None:
            return None
        return min(subsample_size, len(x)) if min_rows else subsample_size

    def model(x):
        bias = pyro.param("bias", torch.zeros(()))  # a parameter for fit to step (stays ~0)
        with pyro.plate(plate, len(x), subsample_size=size(x)) as i:
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            loc = z[:, None] * W + bias
            pyro.sample("x", dist.Normal(loc, S2**0.5).to_event(1), obs=x[i])

    def guide(x):
        with pyro.plate(plate, len(x), subsample_size=size(x)) as i:
            loc, scale = posterior(x[i])
            pyro.sample("z", dist.Normal(loc, scale))

    return model, guide


def data(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, generator=g)
    return z[:, None] * W + S2**0.5 * torch.randn(n, 3, generator=g)


# ------------------------------------------------------------------ subsampling in the plate
@pytest.mark.parametrize("batch_size", [50, 200])
def test_subsampling_inside_the_plate_is_scaled_once(batch_size):
    """Pyro scales a subsample of s out of B rows by B / s; fit adds N / B, not N / s again.
    With the exact posterior as guide each row's ELBO is log p(x) at every draw, so the
    minibatch objective is N / s times a sum of s exact values: its mean over steps is the
    full-data ELBO per point (Pyro's Trace_ELBO on all rows) up to the sampling of rows."""
    pyro.clear_param_store()
    x = data(200)
    model, guide = linear_program(subsample_size=16)
    history = ppvae.fit(model, guide, x, epochs=20, batch_size=batch_size, lr=1e-9,
                        progress=False)  # fmt: skip
    full = -Trace_ELBO().loss(*linear_program(), x) / x.shape[0]
    assert full == pytest.approx(float(exact_log_px(x).mean()), abs=1e-4)
    # rows drawn at random: the per-point spread of log p(x) over sqrt(steps x 16) draws
    sd = float(exact_log_px(x).std())
    steps = history.steps
    assert abs(sum(history.train_elbo) / 20 - full) < 4 * sd / math.sqrt(steps * 16)
    # the double scaling this replaces was off by B / s (4x, 12.5x): far outside that
    assert abs(full) * (batch_size / 16 - 1) > 20 * sd / math.sqrt(steps * 16)


@pytest.mark.parametrize("min_rows", [False, True])
def test_estimators_give_every_row_its_own_value_under_subsampling(min_rows):
    """Evaluators call a subsampling program on blocks of exactly s rows (a short last block
    overlapping the one before), so that each of the 23 rows gets its exact log p(x)."""
    pyro.clear_param_store()
    x = data(23, seed=1)
    program = ppvae.as_program(*linear_program(subsample_size=5, min_rows=min_rows))
    for estimate in (
        evaluate.log_likelihood(program, x, num_samples=3),
        evaluate.elbo(program, x, num_samples=2),
        evaluate.estimate_log_likelihood(program, x, num_samples=8).log_px,
    ):
        torch.testing.assert_close(estimate, exact_log_px(x), atol=1e-4, rtol=0)


def test_a_fixed_size_plate_trains_with_all_rows_and_is_refused_otherwise():
    pyro.clear_param_store()
    x = data(40)

    def model(x):
        bias = pyro.param("bias", torch.zeros(()))
        with pyro.plate("data", 40):  # closed over the data's size
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z[:, None] * W + bias, S2**0.5).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", 40):
            loc, scale = posterior(x)
            pyro.sample("z", dist.Normal(loc, scale))

    history = ppvae.fit(model, guide, x, epochs=2, batch_size=40, lr=1e-9, progress=False)
    assert history.train_elbo[-1] == pytest.approx(float(exact_log_px(x).mean()), abs=1e-4)
    pyro.clear_param_store()
    with pytest.raises(ProgramError, match=r"plate 'data'.*size 40.*batch_size=40"):
        ppvae.fit(model, guide, x, epochs=1, batch_size=8, progress=False)
    with pytest.raises(ProgramError, match=r"plate 'data'.*40"):
        evaluate.log_likelihood((model, guide), x, num_samples=2)


def test_a_subsample_larger_than_the_minibatch_is_refused_naming_it():
    pyro.clear_param_store()
    with pytest.raises(ProgramError, match=r"subsamples 32 rows.*16 rows.*min\(32, len\(x\)\)"):
        ppvae.fit(*linear_program(subsample_size=32), data(100), batch_size=16, epochs=1,
                  progress=False)  # fmt: skip
    with pytest.raises(ProgramError, match=r"last minibatch.*holds 4 rows.*fewer than the 32"):
        ppvae.fit(*linear_program(subsample_size=32), data(100), batch_size=48, epochs=1,
                  progress=False)  # fmt: skip
    # min(s, len(x)) takes the short minibatch as it is
    ppvae.fit(*linear_program(subsample_size=32, min_rows=True), data(100), batch_size=48,
              epochs=1, progress=False)  # fmt: skip


# ------------------------------------------------------------------------ a renamed plate
def test_a_renamed_plate_is_named_once_and_used_everywhere():
    pyro.clear_param_store()
    x = data(30)
    model, guide = linear_program(plate="rows")
    with pytest.raises(ProgramError, match=r"no sample site inside a plate named 'data'.*data_pl"):
        ppvae.fit(model, guide, x, epochs=1, progress=False)
    program = ppvae.as_program(model, guide, data_plate="rows")
    history = ppvae.fit(program, x, epochs=3, batch_size=10, lr=1e-9, progress=False)
    assert history.train_elbo[-1] == pytest.approx(float(exact_log_px(x).mean()), abs=1e-3)
    torch.testing.assert_close(
        evaluate.log_likelihood(program, x, num_samples=4), exact_log_px(x), atol=1e-4, rtol=0
    )
    with pytest.raises(ProgramError, match="plate named 'obs'"):
        evaluate.elbo(ppvae.as_program(model, guide, data_plate="obs"), x)


# ------------------------------------------------------------------------ a global latent
QB_LOC, QB_SCALE = 0.7, 0.2


def global_program():
    """b ~ N(0, 1) global, z_i ~ N(0, 1), x_i | z_i, b ~ N(w z_i + b, s2 I); the guide's
    q(b) = N(0.7, 0.2^2) (learned parameters) and q(z_i | x_i, b) the exact posterior, so that
    every local weight is log p(x_i | b) exactly."""

    def model(x):
        b = pyro.sample("b", dist.Normal(0.0, 1.0))
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z[:, None] * W + b, S2**0.5).to_event(1), obs=x)

    def guide(x):
        loc = pyro.param("qb_loc", torch.tensor(QB_LOC))
        scale = pyro.param("qb_scale", torch.tensor(QB_SCALE), constraint=dist.constraints.positive)
        b = pyro.sample("b", dist.Normal(loc, scale))
        with pyro.plate("data", len(x)):
            z_loc, z_scale = posterior(x - b)
            pyro.sample("z", dist.Normal(z_loc, z_scale))

    return model, guide


def log_px_given_b(x, b) -> torch.Tensor:
    """(len(b), N): log p(x_i | b) in closed form."""
    b = torch.as_tensor(b, dtype=x.dtype)
    return exact_log_px(x[None] - b[:, None, None])


def over_q_b(x, nodes: int = 80):
    """Gauss-Hermite over q(b): log E_q p(x | b) and E_q log p(x | b), (N,) each."""
    import numpy as np

    t, w = np.polynomial.hermite_e.hermegauss(nodes)
    w = torch.tensor(w / w.sum(), dtype=torch.float64)
    lp = log_px_given_b(x.double(), QB_LOC + QB_SCALE * torch.tensor(t)).double()
    return (lp + w.log()[:, None]).logsumexp(0), (lp * w[:, None]).sum(0)


def test_likelihoods_average_over_the_global_posterior():
    """log_likelihood and estimate_log_likelihood estimate log E_q(b) p(x | b) (exact by
    quadrature); the plug-in point_estimates gives log p(x | b-hat) exactly."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    x = data(20, seed=2) + 0.6
    program = global_program()
    exact_predictive, _ = over_q_b(x)
    est = evaluate.estimate_log_likelihood(program, x, num_samples=5, global_samples=200)
    # the S per-draw values are exact, so the only error is the mean over S draws of b:
    # within 4 of its own standard errors at every point (and these are not tiny)
    err = (est.log_px.double() - exact_predictive).abs()
    assert bool((err < 4 * est.mc_se.double()).all()), (err, est.mc_se)
    assert float(est.mc_se.mean()) > 1e-3
    iw = evaluate.log_likelihood(program, x, num_samples=1, global_samples=200)
    assert float((iw.double() - exact_predictive).abs().max()) < 4 * float(est.mc_se.max())
    # plug-in: conditional on b = 0.7, exact at any K
    plug = evaluate.log_likelihood(program, x, num_samples=2, point_estimates={"b": QB_LOC})
    torch.testing.assert_close(plug, exact_log_px(x - QB_LOC), atol=1e-4, rtol=0)
    # the averaged value is not the plug-in one (the test can tell them apart)
    assert float((exact_predictive - exact_log_px(x - QB_LOC).double()).abs().mean()) > 0.02


def test_held_out_elbo_charges_no_global_kl_and_ignores_chunking():
    pyro.clear_param_store()
    x = data(30, seed=3) + 0.6
    program = global_program()
    _, expected_log_lik = over_q_b(x)
    pyro.set_rng_seed(1)
    small = evaluate.elbo(program, x, global_samples=50, max_elements=256)
    pyro.set_rng_seed(1)
    chunked_once = evaluate.elbo(program, x, global_samples=50)
    # the global draws are made once, before chunking: the same values either way
    torch.testing.assert_close(small, chunked_once, atol=1e-5, rtol=0)
    large = evaluate.elbo(program, x, global_samples=400)
    # E_q(b) log p(x | b), no KL(q(b) || p(b)) = 1.37 nats: the mean over 400 draws of b
    draws = QB_LOC + QB_SCALE * torch.randn(4000, generator=torch.Generator().manual_seed(0))
    sd = float(log_px_given_b(x, draws).mean(1).std())
    tol = 4 * sd / math.sqrt(400)
    assert abs(float(large.mean()) - float(expected_log_lik.mean())) < tol
    kl = float(torch.distributions.kl_divergence(
        dist.Normal(QB_LOC, QB_SCALE), dist.Normal(0.0, 1.0)))  # fmt: skip
    assert kl / 30 > tol  # charging it per test point would be caught


def test_train_and_test_elbo_of_a_global_latent_program():
    """History.train_elbo is the full-data ELBO per point (the global KL once, over N);
    History.test_elbo is E_q(b) mean_i log p(x_i | b) on the test rows (no KL)."""
    pyro.clear_param_store()
    train, test = data(60, seed=4) + 0.6, data(10, seed=5) + 0.6
    h = ppvae.fit(*global_program(), train, test=test, epochs=50, batch_size=60, lr=1e-9,
                  progress=False)  # fmt: skip
    kl = float(torch.distributions.kl_divergence(
        dist.Normal(QB_LOC, QB_SCALE), dist.Normal(0.0, 1.0)))  # fmt: skip
    _, train_ll = over_q_b(train)
    full_data_elbo = (float(train_ll.sum()) - kl) / 60
    # each step's value: one draw of b (sd of the mean over rows of log p(x_i | b))
    draws = QB_LOC + QB_SCALE * torch.randn(4000, generator=torch.Generator().manual_seed(0))
    sd_step = float(log_px_given_b(train, draws).mean(1).std())
    assert abs(sum(h.train_elbo) / 50 - full_data_elbo) < 4 * sd_step / math.sqrt(h.steps)
    _, test_ll = over_q_b(test)
    sd_test = float(log_px_given_b(test, draws).mean(1).std())
    mean_test = sum(h.test_elbo) / 50
    assert abs(mean_test - float(test_ll.mean())) < 4 * sd_test / math.sqrt(50)


# ------------------------------------------------------------------ a hierarchical guide
def test_guide_moments_of_a_two_layer_guide_are_its_marginal_moments():
    """q(z1 | x) q(z2 | z1): the moments of z2 are those of its marginal, not of q(z2 | z1)
    at one draw of z1. Checked against 20,000 draws per point, within 4 Monte Carlo SEs."""
    from ppvae.evaluate._common import _guide_moments, _prepare

    def model(x):
        with pyro.plate("data", len(x)):
            z1 = pyro.sample("z1", dist.Normal(0.0, 1.0))
            z2 = pyro.sample("z2", dist.Normal(z1, 1.0))
            pyro.sample("x", dist.Normal((z1 + z2)[:, None] * W, 1.0).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", len(x)):
            z1 = pyro.sample("z1", dist.Normal(x[:, 0], 0.8))
            pyro.sample("z2", dist.Normal(z1 - 1.0, 0.3))

    x = data(4, seed=6)
    pyro.set_rng_seed(0)
    ev, xs = _prepare((model, guide), x, 1)
    loc, scale = _guide_moments(ev, xs)
    with pyro.plate("draws", 20000, dim=-2):
        tr = pyro.poutine.trace(guide).get_trace(x)
    z = torch.stack([tr.nodes["z1"]["value"], tr.nodes["z2"]["value"]], -1)  # (S, N, 2)
    ref_loc, ref_sd = z.mean(0), z.std(0)
    se = ref_sd * (1 / 2000 + 1 / 20000) ** 0.5  # of the difference of two means
    assert bool(((loc - ref_loc).abs() < 4 * se).all()), (loc, ref_loc)
    se_sd = ref_sd * (1 / 4000 + 1 / 40000) ** 0.5  # Gaussian: var(sd-hat) = sd^2 / 2S
    assert bool(((scale - ref_sd).abs() < 4 * se_sd).all()), (scale, ref_sd)
    # z1's moments are exactly its own parameters; z2's are not those of q(z2 | z1)
    assert float((ref_sd[:, 1] - 0.3).abs().min()) > 0.2


# ------------------------------------------------- constrained and mixture local latents
A, B = 2.0, 1.0


def gamma_poisson(exact_guide: bool = False):
    """lam_i ~ Gamma(2, 1) (positive), x_id ~ Poisson(lam_i) for d < 4: the marginal is in
    closed form. The guide is the exact posterior Gamma(2 + sum x, 1 + 4), or a deliberately
    wider Gamma (so that AIS and the gaps have something to do)."""

    def model(x):
        with pyro.plate("data", len(x)):
            lam = pyro.sample("lam", dist.Gamma(A, B))
            rate = lam.unsqueeze(-1).expand(*lam.shape, x.shape[1])
            pyro.sample("x", dist.Poisson(rate).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", len(x)):
            shape, rate = A + x.sum(-1), B + x.shape[1]
            if not exact_guide:
                shape, rate = shape / 4, rate / 4  # same mean, twice the spread
            pyro.sample("lam", dist.Gamma(shape, rate))

    return model, guide


def gamma_poisson_log_px(x: torch.Tensor) -> torch.Tensor:
    s, d = x.sum(-1), x.shape[1]
    return (
        A * math.log(B) - math.lgamma(A) + torch.lgamma(A + s) - (A + s) * math.log(B + d)
        - torch.lgamma(x + 1).sum(-1)
    )  # fmt: skip


def counts(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    lam = torch._standard_gamma(torch.full((n,), A), generator=g) / B
    return torch.poisson(lam[:, None].expand(n, 4).contiguous(), generator=g)


def test_a_positive_latent_is_moved_in_unconstrained_space():
    """AIS from the prior and NUTS move lam = exp(u) with the Jacobian: AIS lands on the
    closed-form marginal, NUTS on the posterior mean (2 + sum x) / 5, the gaps' local
    log-normal guides give an IW estimate of the exact value."""
    pyro.set_rng_seed(0)
    x = counts(4)
    exact = gamma_poisson_log_px(x)
    program = gamma_poisson()
    ais = evaluate.ais_log_likelihood(program, x, start="prior", num_steps=60, num_chains=24,
                                      seed=0)  # fmt: skip
    # within 4 of AIS's own Monte Carlo errors at every point, and a tenth of a nat on average
    # (the Jacobian's log lam is 0.5-2 nats here: leaving it out is far outside)
    err = (ais.log_px - exact).abs()
    assert bool((err < 4 * ais.mc_se).all()) and float(err.mean()) < 0.1, (ais.log_px, exact)
    nuts = evaluate.nuts_posterior(program, x[:1], num_samples=100, warmup_steps=100,
                                   num_chains=1)  # fmt: skip
    for row, result in zip(x[:1], nuts, strict=True):
        post = dist.Gamma(A + row.sum(), B + 4)
        draws = result["samples"].reshape(-1)
        assert bool((draws > 0).all())
        # within 4 SE (by the chain's bulk ESS) of the exact posterior mean
        se = float(post.stddev) / math.sqrt(min(100, float(result["ess_bulk_min"])))
        assert abs(float(draws.mean()) - float(post.mean)) < 4 * se
    # Pyro's transforms go from the support to the reals (the other way, chains stuck)
    from ppvae.evaluate._common import _prepare
    from ppvae.evaluate.mcmc import pyro_transforms

    to_reals = pyro_transforms(_prepare(program, x, 1)[0])["lam"]
    assert float(to_reals(torch.tensor(2.0))) == pytest.approx(math.log(2.0))
    gaps = evaluate.inference_gaps(program, x, num_samples=400, steps=60, lr=0.05)
    # IW with K = 500 from a log-normal close to the Gamma posterior: errors of a few
    # hundredths (measured at most 0.04); dropping the Jacobian shifts it by nats
    torch.testing.assert_close(gaps["log_px"], exact, atol=0.1, rtol=0)
    assert float(gaps["amortization_gap"].mean()) > 0.05  # the wide guide leaves one


def test_ppvae_mixture_priors_reach_nuts_and_ais_from_the_prior():
    """VAE(prior="mog" | "vamp"): real-valued mixtures, moved by the identity (Pyro's own
    NUTS raised NotImplementedError for MixtureSameFamilyConstraint)."""
    x = (torch.rand(3, 6, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    for prior in ("mog", "vamp"):
        torch.manual_seed(0)
        vae = ppvae.VAE(data_dim=6, latent_dim=2, hidden=(8,), prior=prior,
                        likelihood="bernoulli")  # fmt: skip
        nuts = evaluate.nuts_posterior(vae, x[:1], num_samples=20, warmup_steps=20,
                                       num_chains=1)  # fmt: skip
        assert nuts[0]["samples"].shape == (1, 20, 2)
        ais = evaluate.ais_log_likelihood(vae, x, start="prior", num_steps=10, num_chains=4,
                                          seed=0)  # fmt: skip
        iw = evaluate.log_likelihood(vae, x, num_samples=3000)
        # a 2-d latent: both estimate log p(x) to a few tenths with these budgets
        assert float((ais.log_px - iw).abs().max()) < 0.5


def test_a_discrete_local_latent_is_refused_where_gradients_move_it():
    def model(x):
        with pyro.plate("data", len(x)):
            c = pyro.sample("c", dist.Bernoulli(0.5))
            pyro.sample("x", dist.Normal(c[:, None] * W, 1.0).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", len(x)):
            pyro.sample("c", dist.Bernoulli(0.5))

    x = data(4)
    with pytest.raises(ProgramError, match=r"'c' is discrete.*ais_log_likelihood"):
        evaluate.ais_log_likelihood((model, guide), x, num_steps=2, num_chains=2)
    with pytest.raises(ProgramError, match=r"'c' is discrete.*nuts_posterior"):
        evaluate.nuts_posterior((model, guide), x[:1], num_samples=2, warmup_steps=2)


# ------------------------------------------------------------------- the mask contract
def masked_program(honour: bool):
    def model(x, mask=None):
        loc = pyro.param("loc", torch.zeros(3))
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            obs = dist.Normal(z[:, None] * W + loc, 1.0)
            if honour and mask is not None:
                obs = obs.mask(mask)
            pyro.sample("x", obs.to_event(1), obs=x)

    def guide(x, mask=None):
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(posterior(x)[0], 1.0))

    return model, guide


def test_a_program_that_takes_mask_but_ignores_it_is_refused_naming_the_site():
    x = data(20)
    x[3, 1] = x[7, 0] = float("nan")
    pyro.clear_param_store()
    with pytest.raises(ProgramError, match=r"takes mask.*site 'x' changes when a missing entry"):
        ppvae.fit(*masked_program(honour=False), x, epochs=1, progress=False)
    with pytest.raises(ProgramError, match=r"site 'x' changes when a missing entry"):
        evaluate.log_likelihood(masked_program(honour=False), x, num_samples=2)
    pyro.clear_param_store()
    ppvae.fit(*masked_program(honour=True), x, epochs=1, progress=False)
    assert evaluate.log_likelihood(masked_program(honour=True), x, num_samples=2).shape == (20,)


# ------------------------------------------------------------- saving a user's own parts
class StudentTPrior(ppvae.Prior):
    """A user's prior: independent Student-t coordinates with a learned scale."""

    def __init__(self, latent_dim: int, df: float = 4.0):
        super().__init__(latent_dim)
        self.df = float(df)
        self.log_scale = torch.nn.Parameter(torch.zeros(latent_dim))

    def distribution(self):
        zero = torch.zeros(self.latent_dim, device=self.log_scale.device)
        return dist.StudentT(self.df, zero, self.log_scale.exp()).to_event(1)

    def init_kwargs(self) -> dict:
        return {"latent_dim": self.latent_dim, "df": self.df}


def test_a_vae_with_a_users_prior_saves_and_loads_with_its_class(tmp_path):
    x = (torch.rand(40, 6, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    torch.manual_seed(0)
    vae = ppvae.VAE(data_dim=6, latent_dim=2, hidden=(8,), likelihood="bernoulli",
                    prior=StudentTPrior(2, df=3.0))  # fmt: skip
    ppvae.fit(vae, x, epochs=2, batch_size=20, progress=False)
    path = ppvae.save(vae, tmp_path / "model.pt")
    loaded = ppvae.load(path)
    assert type(loaded.prior) is StudentTPrior and loaded.prior.df == 3.0
    for key, value in vae.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    pyro.set_rng_seed(0)
    before = evaluate.log_likelihood(vae, x, num_samples=16)
    pyro.set_rng_seed(0)
    torch.testing.assert_close(evaluate.log_likelihood(loaded, x, num_samples=16), before)


def test_a_saved_class_that_cannot_be_imported_is_one_clear_error(tmp_path, monkeypatch):
    module = tmp_path / "my_priors.py"
    module.write_text(
        "import torch, pyro.distributions as dist, ppvae\n"
        "class Laplace(ppvae.Prior):\n"
        "    def distribution(self):\n"
        "        return dist.Laplace(torch.zeros(self.latent_dim), 1.0).to_event(1)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import my_priors

    vae = ppvae.VAE(data_dim=4, latent_dim=2, hidden=(4,), prior=my_priors.Laplace(2))
    path = ppvae.save(vae, tmp_path / "model.pt")
    assert type(ppvae.load(path).prior).__name__ == "Laplace"
    monkeypatch.syspath_prepend(str(tmp_path / "elsewhere"))
    monkeypatch.delitem(__import__("sys").modules, "my_priors")
    monkeypatch.setattr(__import__("sys"), "path", [p for p in __import__("sys").path
                                                    if p != str(tmp_path)])  # fmt: skip
    with pytest.raises(ppvae.errors.InputError, match=r"'my_priors:Laplace'.*cannot be imported"):
        ppvae.load(path)

    def local():
        class Inside(ppvae.Prior):
            def distribution(self):
                return dist.Normal(torch.zeros(2), 1.0).to_event(1)

        return Inside(2)

    with pytest.raises(ppvae.errors.InputError, match="defined inside a function"):
        ppvae.save(ppvae.VAE(data_dim=4, latent_dim=2, hidden=(4,), prior=local()),
                   tmp_path / "other.pt")  # fmt: skip


MIX_LOCS = torch.tensor([-2.0, 0.5, 2.5])
MIX_W = torch.tensor([1.2, -0.7])


def mixture_program():
    """c ~ Cat(1/3), z | c ~ N(mu_c, 1), x | z ~ N(w z + bias, 0.5 I): the component c is
    marked for parallel enumeration in the model; the guide q(z | x) is one Gaussian."""

    def model(x):
        bias = pyro.param("mix_bias", torch.zeros(()))
        with pyro.plate("data", len(x)):
            c = pyro.sample("c", dist.Categorical(torch.ones(3) / 3),
                            infer={"enumerate": "parallel"})  # fmt: skip
            z = pyro.sample("z", dist.Normal(MIX_LOCS[c], 1.0))
            loc = z.unsqueeze(-1) * MIX_W + bias
            pyro.sample("x", dist.Normal(loc, 0.5**0.5).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(*mixture_guide(x)))

    return model, guide


def mixture_guide(x):
    prec = 1.0 + MIX_W.dot(MIX_W) / 0.5
    return (x @ MIX_W / 0.5) / prec, 1.5 / prec**0.5


def mixture_exact(x, nodes: int = 120):
    """(log p(x), ELBO of the guide), (N,) each: p(x) a mixture of three Gaussians; the ELBO
    E_q[log sum_c p(c) p(z | c) p(x | z) - log q(z)] by Gauss-Hermite over z."""
    import numpy as np

    x = x.double()
    W, locs = MIX_W.double(), MIX_LOCS.double()
    cov = torch.outer(W, W) + 0.5 * torch.eye(2, dtype=torch.float64)
    comps = dist.MultivariateNormal(locs[:, None, None] * W, cov).log_prob(x)  # (3, N)
    log_px = comps.logsumexp(0) - math.log(3)
    t, w = np.polynomial.hermite_e.hermegauss(nodes)
    t, w = torch.tensor(t), torch.tensor(w / w.sum())
    m, sd = mixture_guide(x.float())
    z = m.double()[None] + float(sd) * t[:, None]  # (nodes, N)
    log_pz = (dist.Normal(locs[:, None, None], 1.0).log_prob(z) - math.log(3)).logsumexp(0)
    log_px_z = dist.Normal(z[..., None] * W, 0.5**0.5).log_prob(x).sum(-1)
    log_q = dist.Normal(m.double(), float(sd)).log_prob(z)
    elbo = ((log_pz + log_px_z - log_q) * w[:, None]).sum(0)
    return log_px, elbo


def test_an_enumerated_mixture_is_summed_out_in_training_and_evaluation():
    """The component is summed out inside each weight: the ELBO and the likelihood estimate
    agree with the exact values (drawing it instead cost about log 3 nats)."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    g = torch.Generator().manual_seed(11)
    c = torch.randint(0, 3, (40,), generator=g)
    z = MIX_LOCS[c] + torch.randn(40, generator=g)
    x = z[:, None] * MIX_W + 0.5**0.5 * torch.randn(40, 2, generator=g)
    exact_log_px, exact_elbo = mixture_exact(x)
    program = mixture_program()
    est = evaluate.estimate_log_likelihood(program, x, num_samples=2000)
    err = (est.log_px.double() - exact_log_px).abs()
    assert bool((err < 4 * est.mc_se.double() + 1e-3).all()), (err.max(), est.mc_se.max())
    elbo = evaluate.elbo(program, x, num_samples=2000)
    # per point, the mean of 2000 draws of log w: its SD is below 1 nat here (guide close)
    assert float((elbo.double() - exact_elbo).abs().max()) < 4 * 1.0 / math.sqrt(2000)
    assert float((exact_log_px - exact_elbo).mean()) > 0.05  # the two differ
    # training: TraceEnum_ELBO chosen; with the parameter held (lr ~ 0), the full-batch train
    # ELBO averages 50 one-draw estimates of the exact ELBO (SD of a step's mean < 0.2)
    h = ppvae.fit(*program, x, epochs=50, batch_size=40, lr=1e-9, progress=False)
    assert h.config["elbo"] == "enum"
    assert abs(sum(h.train_elbo) / 50 - float(exact_elbo.mean())) < 4 * 0.2 / math.sqrt(50)
    with pytest.raises(ppvae.errors.InputError, match=r"elbo='trace'.*'c' is marked"):
        ppvae.fit(*program, x, epochs=1, elbo="trace", progress=False)
    with pytest.raises(ProgramError, match=r"'c' is enumerated.*ais_log_likelihood"):
        evaluate.ais_log_likelihood(program, x, num_steps=2, num_chains=2)


def test_a_discrete_latent_not_enumerated_trains_with_a_warning_naming_it():
    def model(x):
        p = pyro.param("p", torch.tensor(0.5), constraint=dist.constraints.unit_interval)
        with pyro.plate("data", len(x)):
            c = pyro.sample("c", dist.Bernoulli(p))
            pyro.sample("x", dist.Normal(c[:, None] * W, 1.0).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", len(x)):
            pyro.sample("c", dist.Bernoulli(0.5))

    pyro.clear_param_store()
    with pytest.warns(RuntimeWarning, match=r"'c' is discrete and not marked for enumeration"):
        ppvae.fit(model, guide, data(20), epochs=1, progress=False)


# ------------------------------------------------------------------------------ History
def test_history_test_elbo_is_the_elbo_whatever_the_objective():
    """With elbo="iwae" (K = 20) test_elbo is the one-draw ELBO and the IWAE bound goes to
    test_objective; config["elbo"] names the estimator that ran."""
    x = data(60)
    test = data(200, seed=9)
    torch.manual_seed(0)
    vae = ppvae.VAE(data_dim=3, latent_dim=2, hidden=(8,))  # an ELBO well below IW-20
    h = ppvae.fit(vae, x, test=test, epochs=3, batch_size=30, elbo="iwae", num_particles=20,
                  lr=1e-2, progress=False)  # fmt: skip
    assert h.config["elbo"] == "iwae" and h.config["elbo_requested"] == "iwae"
    assert len(h.test_elbo) == len(h.test_objective) == 3
    pyro.set_rng_seed(0)
    elbo = float(evaluate.elbo(vae, test, num_samples=200).mean())
    iw20 = float(evaluate.log_likelihood(vae, test, num_samples=20).mean())
    # the last epoch's values: the ELBO (one draw per point, the analytic-KL estimator) and the
    # IW-20 bound, each within 4 SD of its own estimator's noise (measured over 30 repeats),
    # and apart by more than that
    with torch.no_grad():
        repeats = torch.tensor([
            [-TraceMeanField_ELBO().loss(vae.model, vae.guide, test) / 200,
             -IWAE_ELBO(num_particles=20).loss(vae.model, vae.guide, test) / 200]
            for _ in range(30)
        ])  # fmt: skip
    tol = 4 * repeats.std(0)
    assert abs(h.test_elbo[-1] - elbo) < float(tol[0]), (h.test_elbo[-1], elbo)
    assert abs(h.test_objective[-1] - iw20) < float(tol[1]), (h.test_objective[-1], iw20)
    assert iw20 - elbo > float(tol.max())
    torch.manual_seed(0)
    h2 = ppvae.fit(ppvae.LinearVAE(data_dim=3, latent_dim=1), x, epochs=1, progress=False)
    assert h2.config["elbo"] == "jit-meanfield" and h2.config["elbo_requested"] == "auto"
    assert h2.test_objective == []


def test_a_simplex_latent_is_annealed_through_stick_breaking():
    """theta_i ~ Dirichlet(alpha) on the simplex (3 values, 2 free), x_i ~ Multinomial(8,
    theta_i): the Dirichlet-multinomial marginal is in closed form. AIS from the prior moves
    theta through the stick-breaking bijection with its Jacobian."""
    alpha = torch.tensor([1.5, 2.0, 0.8])

    def model(x):
        with pyro.plate("data", len(x)):
            theta = pyro.sample("theta", dist.Dirichlet(alpha))
            pyro.sample("x", dist.Multinomial(8, theta), obs=x)

    def guide(x):
        with pyro.plate("data", len(x)):
            pyro.sample("theta", dist.Dirichlet(alpha + x))  # the exact posterior

    g = torch.Generator().manual_seed(3)
    theta = torch._standard_gamma(alpha.expand(5, 3).contiguous(), generator=g)
    theta = theta / theta.sum(-1, keepdim=True)
    x = torch.stack([torch.multinomial(t, 8, replacement=True, generator=g).bincount(minlength=3)
                     for t in theta]).float()  # fmt: skip
    a0, n = float(alpha.sum()), 8.0
    exact = (
        math.lgamma(a0) - math.lgamma(a0 + n) + math.lgamma(n + 1)
        + (torch.lgamma(alpha + x) - torch.lgamma(alpha) - torch.lgamma(x + 1)).sum(-1)
    )  # fmt: skip
    ais = evaluate.ais_log_likelihood((model, guide), x, start="prior", num_steps=100,
                                      num_chains=16, seed=0)  # fmt: skip
    err = (ais.log_px - exact).abs()
    assert bool((err < 4 * ais.mc_se + 0.02).all()), (ais.log_px, exact)
    # the exact posterior as proposal: IW is exact at any K
    iw = evaluate.log_likelihood((model, guide), x, num_samples=3)
    torch.testing.assert_close(iw, exact.float(), atol=1e-4, rtol=0)
