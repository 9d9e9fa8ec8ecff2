# ruff: noqa: E402 - the imports follow the warning filters of the first cell
# %% [markdown]
# # A VAE from scratch, as two Pyro functions
#
# The VAEs of the other notebooks are `ppvae.VAE` objects. This one is not: it is a Pyro
# **model** and a Pyro **guide**, written as two plain functions the way one writes them for
# `pyro.infer.SVI`, with no ppvae parts in them. ppvae trains the pair with `ppvae.fit` and
# evaluates it with the same tools as its own models: the PSIS-checked likelihood, the
# inference gaps and a NUTS posterior.
#
# **Model and guide.** The model is a Pyro function whose sample sites define the joint density
# $p_\theta(x, z) = p(z)\,p_\theta(x \mid z)$: latent sites are drawn, the observed site is
# scored against the data (`obs=x`). The guide has the same latent sites and defines the
# approximate posterior $q_\phi(z \mid x)$. SVI maximizes the evidence lower bound over
# $\theta$ and $\phi$ together. For $N$ independent data points and a minibatch
# $\mathcal B$ of $B$ of them, drawn at random,
#
# $$\mathcal L(\theta, \phi) = \sum_{n=1}^N \mathbb E_{q_\phi(z_n \mid x_n)}
#   \big[\log p_\theta(x_n, z_n) - \log q_\phi(z_n \mid x_n)\big]
#   \;\le\; \sum_{n=1}^N \log p_\theta(x_n),$$
#
# $$\hat{\mathcal L}_{\mathcal B} = \frac{N}{B} \sum_{n \in \mathcal B}
#   \big[\log p_\theta(x_n, z_n) - \log q_\phi(z_n \mid x_n)\big],
#   \qquad z_n \sim q_\phi(\cdot \mid x_n).$$
#
# Each point lies in $\mathcal B$ with probability $B/N$, so
# $\mathbb E[\hat{\mathcal L}_{\mathcal B}] = \mathcal L$: the factor $N/B$ makes the minibatch
# estimate unbiased for the full-data ELBO.
#
# **The one contract.** Every site that belongs to one data point (the observation, the local
# latents) lives inside a `pyro.plate("data", ...)` whose dimension indexes the rows of `x`,
# with one log-density per point (pixel dimensions go to `.to_event(1)`). A model that takes
# only `x`, as below, is run by `ppvae.fit` under `ppvae.program.ScaleDataPlate`, which
# multiplies every site in that plate by $N/B$. Sites may have any names.

# %%
# %matplotlib inline
import os
import warnings

SMALL = os.environ.get("PPVAE_NOTEBOOK_SMALL") == "1"  # the quick run of the test suite
EPOCHS = 10 if SMALL else 100
NUM_IS = 200 if SMALL else 2000  # importance samples per test image
GAP_POINTS = 10 if SMALL else 100  # test images for the inference gaps
GAP_STEPS = 50 if SMALL else 500  # Adam steps of the per-image optimization
GAP_SAMPLES = 200 if SMALL else 1000  # samples per image of the ELBOs and log p(x) in the gaps
NUTS_DRAWS = 50 if SMALL else 500  # NUTS warm-up steps and draws per chain (2 chains)
POSTERIOR_IS = 5_000 if SMALL else 50_000  # guide draws for the importance-sampled E[z|x]
LATENT = 2  # latent dimension: a posterior that can be looked at directly
HIDDEN = 128
BATCH = 128
LR = 3e-3

# pyro and ppvae import tqdm.auto, which warns in Jupyter when ipywidgets is absent
warnings.filterwarnings("ignore", message="IProgress not found")
warnings.filterwarnings("ignore", message="ArviZ is undergoing a major refactor")

# %%
import logging
import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions import constraints
from torch import nn

import ppvae
from ppvae import evaluate

torch.set_num_threads(1)  # small matrices: one thread is the fastest
pyro.enable_validation(True)
logging.getLogger("pyro").setLevel(logging.WARNING)
plt.rcParams.update({"figure.dpi": 90, "axes.grid": True, "grid.alpha": 0.3})

data = ppvae.load_dataset("digits", seed=0)
N, D = data.train.shape
print(data)
print(f"SMALL={SMALL}: {EPOCHS} epochs, {NUM_IS} importance samples, gaps on {GAP_POINTS} "
      f"images with {GAP_STEPS} steps, NUTS {NUTS_DRAWS} + {NUTS_DRAWS} per chain")

# %% [markdown]
# ## 1. The program
#
# * prior $z \sim \mathcal N(0, I_2)$;
# * decoder: a 2-128-64 tanh network giving the location $\mu_\theta(z)$ of each pixel;
# * likelihood: **Laplace**, $p_\theta(x \mid z) = \prod_{d} \frac{1}{2 b_d}
#   \exp(-|x_d - \mu_{\theta, d}(z)| / b_d)$, with a learned scale $b_d$ per pixel, a
#   `pyro.param` constrained to be positive (Pyro optimizes $\log b_d$ and hands the model
#   $b_d$);
# * guide: a 64-128-4 tanh network giving the mean and (through a softplus) the standard
#   deviation of a diagonal Gaussian $q_\phi(z \mid x)$.
#
# The networks are ordinary `nn.Module`s, registered with `pyro.module` so that their
# parameters enter Pyro's param store, exactly as in Pyro's own VAE example. `model(x)` and
# `guide(x)` take only the minibatch.


# %%
def make_networks():
    """The decoder (z -> pixel locations) and the encoder (x -> guide mean, raw scale)."""
    decoder = nn.Sequential(nn.Linear(LATENT, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, D))
    encoder = nn.Sequential(nn.Linear(D, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, 2 * LATENT))
    return decoder, encoder


torch.manual_seed(0)
decoder, encoder = make_networks()


def model(x):
    """p(z) p(x | z): N(0, I) prior, Laplace likelihood with a learned per-pixel scale."""
    pyro.module("decoder", decoder)
    pixel_scale = pyro.param("pixel_scale", lambda: torch.full((D,), 0.2),
                             constraint=constraints.positive)
    with pyro.plate("data", x.shape[0]):  # the contract: per-image sites inside "data"
        prior = dist.Normal(x.new_zeros(LATENT), 1.0).expand([x.shape[0], LATENT])
        z = pyro.sample("z", prior.to_event(1))
        pyro.sample("x", dist.Laplace(decoder(z), pixel_scale).to_event(1), obs=x)


def guide(x):
    """q(z | x): a diagonal Gaussian from the encoder."""
    pyro.module("encoder", encoder)
    with pyro.plate("data", x.shape[0]):
        loc, raw_scale = encoder(x).chunk(2, dim=-1)
        pyro.sample("z", dist.Normal(loc, nn.functional.softplus(raw_scale) + 1e-3).to_event(1))


pyro.clear_param_store()  # the program's parameters live in Pyro's global param store

# %% [markdown]
# ## 2. The $N/B$ scale, concretely
#
# `ppvae.as_program(model, guide)` is the normal form `fit` works with; `.bind(num_data=N)`
# returns the model and guide that `fit` actually runs, wrapped in `ScaleDataPlate(N)`. Tracing
# the wrapped model on a minibatch of $B$ images shows the scale Pyro attaches to each site:
# the plate has size $B$, so `ScaleDataPlate` multiplies each per-image log-density by $N/B$,
# and the scaled minibatch ELBO estimates the full-data ELBO without bias (the formula at the
# top). The unwrapped model, or `bind(None)`, leaves the scale at 1. Because the scale is a constant
# factor, the Trace_ELBO loss of the bound program on the same draws is exactly $N/B$ times the
# unscaled one, up to float32 rounding (relative error ~1e-7 per operation, so 1e-5 is a wide
# margin).

# %%
program = ppvae.as_program(model, guide)
print(f"program {program.name}, takes num_data: {program.takes_num_data}")
x_batch = data.train[:BATCH]
scaled_model, scaled_guide = program.bind(num_data=N)
plain_model, plain_guide = program.bind(num_data=None)
trace = poutine.trace(scaled_model).get_trace(x_batch)
plain = poutine.trace(plain_model).get_trace(x_batch)
for site in ("z", "x"):
    node = trace.nodes[site]
    print(f"site {site!r}: value shape {tuple(node['value'].shape)}, scale {node['scale']:.4f} "
          f"(unbound: {plain.nodes[site]['scale']}); N/B = {N}/{BATCH} = {N / BATCH:.4f}")
    assert node["scale"] == N / BATCH and plain.nodes[site]["scale"] == 1.0
assert not program.takes_num_data  # model(x) takes only x: fit scales it from outside

losses = {}
for num_data in (None, N):
    bound_model, bound_guide = program.bind(num_data)
    pyro.set_rng_seed(0)  # the same draws of z for both
    losses[num_data] = pyro.infer.Trace_ELBO().loss(bound_model, bound_guide, x_batch)
print(f"loss with the N/B scale {losses[N]:.2f}, without {losses[None]:.2f}, "
      f"ratio {losses[N] / losses[None]:.6f}")
assert math.isclose(losses[N], N / BATCH * losses[None], rel_tol=1e-5)

# %% [markdown]
# ## 3. Training
#
# `ppvae.fit(model, guide, X)` is the SVI-like spelling: Adam on every parameter in Pyro's param
# store (the networks' and `pixel_scale`'s unconstrained logarithm), Pyro's `Trace_ELBO`
# estimator run eagerly (a user's program is never compiled unless asked), minibatches of 128
# in a seeded order. `History` reports the ELBO per image: the scaled loss divided by $N$. The
# test ELBO is one guide sample per test image after each epoch.

# %%
history = ppvae.fit(model, guide, data.train, epochs=EPOCHS, batch_size=BATCH, lr=LR, seed=0,
                    test=data.test, progress=False)
print(f"{history.epochs} epochs, {history.steps} steps in {history.seconds:.1f} s "
      f"({1000 * history.seconds / history.steps:.1f} ms per step); "
      f"settings {history.config['elbo']!r}, lr {history.config['lr']}")
print(f"final ELBO: train {history.train_elbo[-1]:.2f}, test {history.test_elbo[-1]:.2f} "
      "nats per image")
print("parameters in the param store:", sorted(pyro.get_param_store().keys()))
with torch.no_grad():
    b = pyro.param("pixel_scale")
print(f"learned Laplace scales b_d: min {float(b.min()):.4f}, median {float(b.median()):.4f}, "
      f"max {float(b.max()):.4f}")

fig, ax = plt.subplots(figsize=(7, 3.6))
epochs = np.arange(1, history.epochs + 1)
ax.plot(epochs, history.train_elbo, label="train (mean minibatch ELBO over the epoch)")
ax.plot(epochs, history.test_elbo, label="test (after the epoch, one sample per image)")
ax.set_xlabel("epoch")
ax.set_ylabel("ELBO, nats per image")
ax.set_title("The two-function VAE, trained by ppvae.fit")
ax.legend(fontsize=8, loc="lower right")
plt.show()

# %% [markdown]
# The train curve averages minibatch ELBOs taken *during* the epoch, while the parameters move;
# the test curve is measured after it. In the full-size run both still rise slowly at epoch
# 100, and the test ELBO ends about 2 nats below the train ELBO (a generalization gap, with
# 1438 training images). The Laplace scales are learned per pixel: the corner pixels of the
# digits are nearly constant, so their scale shrinks and their log-density grows, which is why
# ELBOs per image are positive (a density, not a probability).
#
# ## 4. The likelihood, checked by PSIS
#
# `estimate_log_likelihood((model, guide), X, num_samples=S)` draws $S$ samples
# $z_s \sim q_\phi(z \mid x)$ per test image and returns the importance-weighted estimate
# $\log \frac1S \sum_s w_s$, $w_s = p_\theta(x, z_s)/q_\phi(z_s \mid x)$, with its Monte Carlo
# standard error and the Pareto $\hat k$ of the weights. By Jensen's inequality (log is
# concave),
#
# $$\mathbb E\Big[\log \tfrac1S \textstyle\sum_s w_s\Big] \;\ge\; \mathbb E\big[\log w_1\big]
#   = \mathrm{ELBO}(x),$$
#
# and the left side rises to $\log p_\theta(x)$ as $S$ grows (Burda et al. 2015). The test
# below compares the two means over the test set from independent draws, so it allows four
# standard errors of their difference: the ELBO's from the spread of $\log w$ over its 100
# draws per image, the IW estimate's from its per-image Monte Carlo errors. (That second error
# assumes weights of finite variance, which the $\hat k$ below show fails for many images; heavy
# tails make a realized IW estimate fall *short* of its expectation more often than not, the
# direction that makes this check harder to pass. The printed margin is what to look at.)

# %%
pyro.set_rng_seed(1)
est = evaluate.estimate_log_likelihood((model, guide), data.test, num_samples=NUM_IS)
with torch.no_grad():
    log_w = evaluate.log_importance_weights((model, guide), data.test, num_samples=100)
elbo_per_image = log_w.mean(0)  # Monte Carlo ELBO per test image, 100 draws
M = len(data.test)
se_elbo = math.sqrt(float(log_w.double().var(0).sum()) / 100) / M
se_iw = math.sqrt(float(est.mc_se.double().pow(2).sum())) / M
se_diff = math.hypot(se_elbo, se_iw)
elbo_mean = float(elbo_per_image.mean())
print(f"test ELBO {elbo_mean:.3f} nats per image (Monte Carlo SE {se_elbo:.4f})")
print(f"IW estimate, S = {NUM_IS}: {est.mean:.3f} +- {est.sem:.3f} nats per image "
      f"(Monte Carlo SE {se_iw:.4f}; the +- is the spread over images)")
print(f"IW - ELBO = {est.mean - elbo_mean:.3f} nats per image "
      f"(4 standard errors of the difference: {4 * se_diff:.4f})")
assert est.mean >= elbo_mean - 4 * se_diff

threshold_s = min(1 - 1 / math.log10(NUM_IS), 0.7)
khat = est.khat.numpy()
shares = {
    "k-hat <= 0.5": float(np.mean(khat <= 0.5)),
    f"0.5 < k-hat <= {threshold_s:.3f}": float(np.mean((khat > 0.5) & (khat <= threshold_s))),
    f"{threshold_s:.3f} < k-hat <= 0.7": float(np.mean((khat > threshold_s) & (khat <= 0.7))),
    "k-hat > 0.7 (est.khat_share)": est.khat_share,
}
print(pd.Series(shares).to_string(float_format=lambda v: f"{v:.3f}"))
assert math.isclose(sum(shares.values()), 1.0)
print(f"{est.khat_share:.1%} of the test images have k-hat > 0.7: their IW estimates are lower "
      f"bounds of unknown tightness; {float(np.mean(khat > 0.5)):.1%} have k-hat > 0.5, "
      "where the raw weights have infinite variance and the Monte Carlo SE is not to be trusted")

fig, ax = plt.subplots(figsize=(7, 3.4))
ax.hist(khat, bins=np.linspace(min(-0.2, khat.min()), max(1.2, khat.max() + 0.05), 40))
ax.axvline(0.5, color="C2", ls="--", label="0.5: raw weights have infinite variance above")
ax.axvline(0.7, color="k", ls=":", label="0.7: estimate unreliable above")
ax.set_xlabel(r"Pareto $\hat k$ of the importance weights")
ax.set_ylabel("number of test images")
ax.set_title(f"PSIS diagnostics of the guide as proposal, S = {NUM_IS}")
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# What $\hat k$ says. PSIS fits a generalized Pareto distribution to the largest weights of
# each image; its shape $k$ governs which moments of the weights exist: only those of order
# below $1/k$. So:
#
# * **$\hat k \le 0.5$**: the weights have finite variance, the central limit theorem applies,
#   and the reported Monte Carlo standard error means what it says.
# * **$0.5 < \hat k \le 0.7$**: the variance of the raw weights is already infinite, so the
#   plain IW estimate converges slower than $1/\sqrt S$ and its standard error (a variance
#   estimate) understates the error; the Pareto-smoothed estimate (`smoothed=True`) still
#   converges usefully. Vehtari et al. (2024) put the practical limit at
#   $\min(1 - 1/\log_{10} S,\ 0.7)$, which is below 0.7 for $S < 2154$ (the column with the
#   threshold above).
# * **$\hat k > 0.7$**: the estimate of that image is unreliable: the number of samples needed
#   grows impractically fast, and more samples from this proposal do not fix it. The IW
#   estimate is then still a stochastic *lower* bound of $\log p(x)$ (the inequality above holds
#   for any proposal), but one of unknown tightness, and its standard error is meaningless.
#
# With a 2-D latent the posteriors of many images are sharp and not Gaussian, and the
# Gaussian guide, shared by all images, misses their tails: the share above 0.7 printed above
# is the share of test images whose likelihood this notebook cannot vouch for.
#
# ## 5. Where the gap comes from
#
# `inference_gaps` splits $\log p(x) - \mathrm{ELBO}(q_\phi)$ on a few test images (Cremer et
# al. 2018): for each image it optimizes a diagonal Gaussian $q^*_n$ of its own, started at the
# guide's, by Adam on a reparameterized ELBO. The **amortization gap**
# $\mathrm{ELBO}(q^*_n) - \mathrm{ELBO}(q_\phi)$ is the cost of one encoder for all images, the
# **approximation gap** $\log p(x) - \mathrm{ELBO}(q^*_n)$ the cost of the Gaussian family;
# $\log p(x)$ is the IW estimate with $q^*_n$ as proposal. The two gaps sum to the total by
# their definition, so that identity checks nothing. Two inequalities can fail, though:
#
# * $\mathrm{ELBO}(q^*_n) \ge \mathrm{ELBO}(q_\phi)$: per image, the library keeps the better of
#   the optimized and the starting Gaussian (compared on common draws), and re-estimates the
#   chosen one's ELBO on fresh draws, so only Monte Carlo error can push the mean below;
# * approximation gap $\ge 0$: Jensen again, for the IW estimate and the ELBO of the same
#   proposal $q^*_n$.
#
# Both hold up to four standard errors of a difference of two means of `GAP_SAMPLES` draws
# per image, estimated from the spread of the guide's $\log w$ on these images.

# %%
pyro.set_rng_seed(2)
x_gap = data.test[:GAP_POINTS]
gaps = evaluate.inference_gaps((model, guide), x_gap, num_samples=GAP_SAMPLES, steps=GAP_STEPS,
                               elbo_samples=GAP_SAMPLES)
mean = gaps["mean"]
with torch.no_grad():
    log_w_gap = evaluate.log_importance_weights((model, guide), x_gap, num_samples=GAP_SAMPLES)
se_mean = math.sqrt(float(log_w_gap.double().var(0).sum()) / GAP_SAMPLES) / GAP_POINTS
tolerance = 4 * math.sqrt(2) * se_mean
print(pd.Series(mean).to_string(float_format=lambda v: f"{v:.4f}"))
print(f"tolerance (4 SE of a difference of two means): {tolerance:.4f} nats per image")
assert mean["elbo_optimal"] >= mean["elbo_amortized"] - tolerance
assert mean["approximation_gap"] >= -tolerance

order = np.argsort((gaps["log_px"] - gaps["elbo_amortized"]).numpy())
fig, ax = plt.subplots(figsize=(9, 3.6))
idx = np.arange(GAP_POINTS)
approx, amort = gaps["approximation_gap"].numpy()[order], gaps["amortization_gap"].numpy()[order]
ax.bar(idx, approx, label=r"approximation gap: $\log p(x) - $ELBO$(q^*_n)$")
ax.bar(idx, amort, bottom=np.where(approx > 0, approx, 0),
       label=r"amortization gap: ELBO$(q^*_n) - $ELBO$(q_\phi)$")
ax.set_xlabel("test image (sorted by total gap)")
ax.set_ylabel("gap, nats per image")
ax.set_title(f"log p(x) - ELBO on {GAP_POINTS} test images: means approximation "
             f"{mean['approximation_gap']:.2f}, amortization {mean['amortization_gap']:.2f}")
ax.legend(fontsize=8, loc="upper left")
plt.show()

# %% [markdown]
# ## 6. The gold standard: NUTS
#
# With two latent dimensions the true posterior $p_\theta(z \mid x) \propto p(z)\,p_\theta(x
# \mid z)$ can be sampled by NUTS directly from the model function (`nuts_posterior` conditions
# it on one image, the parameters fixed). Two test images: the one whose $\hat k$ was lowest
# (the guide a good proposal) and the one whose $\hat k$ was highest. Two chains each; r-hat
# near 1 (below about 1.01 by current standards) says they agree.
#
# A check that NUTS and importance sampling target the same posterior: for the low-$\hat k$
# image the self-normalized importance-sampling estimate of $\mathbb E[z \mid x]$,
# $\sum_s \tilde w_s z_s$ with $\tilde w_s = w_s / \sum_{s'} w_{s'}$ and $z_s \sim q_\phi$, must
# agree with the NUTS mean within four standard errors of the difference, the NUTS error from
# ArviZ's `mcse_mean` and the importance-sampling error by the delta method,
# $\big(\sum_s \tilde w_s^2 (z_s - \hat\mu)^2\big)^{1/2}$, which is valid only for finite variance
# of the weights, $\hat k < 0.5$ (asserted first). The weights are computed from the program
# itself: trace the guide, replay the model on its draws.

# %%
i_low, i_high = int(np.argmin(khat)), int(np.argmax(khat))
chosen = {"lowest k-hat": i_low, "highest k-hat": i_high}
nuts = evaluate.nuts_posterior((model, guide), data.test[[i_low, i_high]],
                               num_samples=NUTS_DRAWS, warmup_steps=NUTS_DRAWS, seed=0)
for (label, i), res in zip(chosen.items(), nuts, strict=True):
    print(f"test image {i} ({label}, k-hat {khat[i]:.2f}): r-hat max {res['r_hat_max']:.3f}, "
          f"bulk ESS min {res['ess_bulk_min']:.0f}; NUTS mean {res['nuts_mean'].numpy().round(3)}, "
          f"q mean {res['q_mean'].numpy().round(3)}; NUTS sd "
          f"{res['nuts_var'].sqrt().numpy().round(3)}, q sd {res['q_var'].sqrt().numpy().round(3)}")

pyro.set_rng_seed(4)
gaps_two = evaluate.inference_gaps((model, guide), data.test[[i_low, i_high]],
                                   num_samples=GAP_SAMPLES, steps=GAP_STEPS,
                                   elbo_samples=GAP_SAMPLES)
for j, (label, i) in enumerate(chosen.items()):
    print(f"test image {i} ({label}): amortization gap "
          f"{float(gaps_two['amortization_gap'][j]):.2f}, approximation gap "
          f"{float(gaps_two['approximation_gap'][j]):.2f} nats")


def posterior_mean_is(x, num):
    """Self-normalized importance-sampling E[z | x] and its delta-method SE, q as proposal."""
    xs = x.expand(num, D)  # num copies of one image: one guide draw each
    with torch.no_grad():
        guide_tr = poutine.trace(guide).get_trace(xs)
        model_tr = poutine.trace(poutine.replay(model, trace=guide_tr)).get_trace(xs)
    model_tr.compute_log_prob()
    guide_tr.compute_log_prob()
    log_w = (model_tr.nodes["z"]["log_prob"] + model_tr.nodes["x"]["log_prob"]
             - guide_tr.nodes["z"]["log_prob"]).double()
    w = torch.softmax(log_w, 0)
    z = guide_tr.nodes["z"]["value"].double()
    mu = (w[:, None] * z).sum(0)
    return mu, (w[:, None] ** 2 * (z - mu) ** 2).sum(0).sqrt()


pyro.set_rng_seed(3)
assert khat[i_low] < 0.5, "the delta-method SE below needs finite-variance weights"
mu_is, se_is = posterior_mean_is(data.test[i_low : i_low + 1], POSTERIOR_IS)
res = nuts[0]
se_nuts = torch.tensor(res["summary"]["mcse_mean"], dtype=torch.float64)
diff = res["nuts_mean"].double() - mu_is
print(f"image {i_low}: E[z|x] by NUTS {res['nuts_mean'].numpy().round(4)}, by importance "
      f"sampling {mu_is.numpy().round(4)}; difference {diff.numpy().round(4)}, "
      f"4 SE {(4 * se_nuts.hypot(se_is)).numpy().round(4)}")
assert (diff.abs() <= 4 * se_nuts.hypot(se_is)).all()

fig, axes = plt.subplots(1, 3, figsize=(11, 3.8), gridspec_kw={"width_ratios": [1, 2.6, 2.6]})
axes[0].imshow(torch.cat([data.test[i_low], data.test[i_high]]).reshape(16, 8), cmap="gray_r")
axes[0].set_title("images (top: low,\nbottom: high k-hat)", fontsize=9)
axes[0].axis("off")
for ax, (label, i), res in zip(axes[1:], chosen.items(), nuts, strict=True):
    samples = res["samples"].reshape(-1, LATENT).numpy()
    q = torch.distributions.Normal(res["q_mean"], res["q_var"].sqrt()).sample((len(samples),))
    ax.scatter(q[:, 0], q[:, 1], s=4, alpha=0.4, color="C1", label=r"guide $q_\phi(z|x)$")
    ax.scatter(samples[:, 0], samples[:, 1], s=4, alpha=0.4, color="C0",
               label=r"NUTS $p_\theta(z|x)$")
    ax.plot(*res["nuts_mean"].numpy(), "k+", ms=10, mew=2, label="NUTS mean")
    ax.set_xlabel("$z_1$ (latent units)")
    ax.set_ylabel("$z_2$ (latent units)")
    ax.set_title(f"test image {i} ({label} {khat[i]:.2f}), r-hat {res['r_hat_max']:.3f}",
                 fontsize=9)
    legend = ax.legend(fontsize=7)
    for handle in legend.legend_handles[:2]:  # the two point clouds: larger legend markers
        handle.set_sizes([20])
plt.tight_layout()
plt.show()

# %% [markdown]
# Where $\hat k$ is low the guide's Gaussian overlaps the posterior. Where $\hat k$ is high
# the failure need not be one of shape: in the full-size run the guide's $q$ for that image
# sits beside the posterior mass altogether, so almost every draw from it has a negligible
# weight and a few draws at the posterior's edge dominate the estimate. The gaps of these two
# images (printed above) say which part is to blame: a large amortization gap with a small
# approximation gap means that a Gaussian fitted to this image alone would sit on the
# posterior, and only the shared encoder failed to find it. With the exact $\log p(x)$ the
# approximation gap would *equal* $\mathrm{KL}(q^*_n \,\|\, p(z \mid x))$; with the IW estimate
# in its place (a stochastic lower bound, looser where $\hat k$ is high) it is an *estimate* of
# that KL, biased low by IW's shortfall, not a bound on it. And $q^*_n$ is what `GAP_STEPS`
# Adam steps found, not the best Gaussian, which biases the approximation gap the other way.
#
# ## 7. The same program as an `nn.Module`
#
# A program can also be one module with `model` and `guide` methods; its parameters are then
# the module's own (the positive scale as the exponential of a free parameter, which is what
# `constraints.positive` does inside Pyro's param store). Built from the same seed, it starts
# from the same numbers, draws the same noise (fit seeds Pyro and the shuffling from
# `seed=0`), and runs the same floating-point operations: its training curves equal the
# functions version's exactly, epoch for epoch (checked at both sizes of this notebook).


# %%
class LaplaceVAE(nn.Module):
    def __init__(self):
        super().__init__()
        self.decoder, self.encoder = make_networks()
        self.log_scale = nn.Parameter(torch.full((D,), 0.2).log())

    def model(self, x):
        pyro.module("laplace_vae", self)
        with pyro.plate("data", x.shape[0]):
            prior = dist.Normal(x.new_zeros(LATENT), 1.0).expand([x.shape[0], LATENT])
            z = pyro.sample("z", prior.to_event(1))
            pyro.sample("x", dist.Laplace(self.decoder(z), self.log_scale.exp()).to_event(1),
                        obs=x)

    def guide(self, x):
        pyro.module("laplace_vae", self)
        with pyro.plate("data", x.shape[0]):
            loc, raw_scale = self.encoder(x).chunk(2, dim=-1)
            scale = nn.functional.softplus(raw_scale) + 1e-3
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))


pyro.clear_param_store()  # an unrelated program next: start from an empty store
torch.manual_seed(0)
vae = LaplaceVAE()
history_module = ppvae.fit(vae, data.train, epochs=EPOCHS, batch_size=BATCH, lr=LR, seed=0,
                           test=data.test, progress=False)
print(f"first-epoch train ELBO: functions {history.train_elbo[0]:.6f}, "
      f"module {history_module.train_elbo[0]:.6f}")
print(f"last-epoch test ELBO:   functions {history.test_elbo[-1]:.6f}, "
      f"module {history_module.test_elbo[-1]:.6f}")
assert history_module.train_elbo == history.train_elbo
assert history_module.test_elbo == history.test_elbo

# %% [markdown]
# ## Summary
#
# * A VAE is two Pyro functions; the one thing ppvae asks of them is the `"data"` plate around
#   the per-image sites. A model that takes only `x` is scaled by $N/B$ from outside
#   (`ScaleDataPlate`), which the trace showed site by site.
# * `ppvae.fit(model, guide, X)` trains the pair like `pyro.infer.SVI`; every evaluator takes
#   `(model, guide)`: the IW likelihood lies above the ELBO as Jensen requires, and PSIS
#   $\hat k$ flags the test images whose estimate is a lower bound of unknown tightness.
# * The gap splits into an approximation and an amortization part; NUTS on the same model
#   function gives the posterior the guide approximates, and agrees with importance sampling
#   where $\hat k$ says importance sampling can be trusted.
# * The same program as an `nn.Module` trains to the same numbers, bit for bit.
