# ruff: noqa: E402 - the imports follow the warning filters of the first cell
# %% [markdown]
# # Missing data: the observed-data likelihood, a masked Pyro model, and EM's maximum
#
# Real tables have holes. Write each row as its observed part $x_o$ and missing part $x_m$
# (which entries are which may differ from row to row). When the entries are missing
# *completely at random* the missingness carries no information, and the likelihood to
# maximize is that of what was observed,
#
# $$p(x_o) = \int p(x_o, x_m)\, dx_m = \int p(z) \prod_{d \in o} p(x_d \mid z)\, dz ,$$
#
# where the second form holds for any model whose likelihood **factorizes over features** given
# $z$: integrating $x_m$ out of $\prod_d p(x_d \mid z)$ just drops its factors. A VAE's
# likelihood does factorize, so a missing pixel is marginalized by leaving its term out of the
# sum, which is what Pyro's `Distribution.mask` does, before `.to_event(1)` sums the features.
#
# For PPCA the integral is exact: $x_o \sim \mathcal N(b_o, W_o W_o^\top + s^2 I)$, with $W_o$
# the rows of $W$ that are observed. EM maximizes it (`PPCA(method="em")`), and a LinearVAE
# trained on the observed entries must land on the same maximum. That is the check of this
# notebook.

# %%
# %matplotlib inline
import os
import warnings

SMALL = os.environ.get("PPVAE_NOTEBOOK_SMALL") == "1"  # the quick run of the test suite
LINEAR_EPOCHS = 150 if SMALL else 600  # full-batch SVI steps of the LinearVAE
VAE_EPOCHS = 3 if SMALL else 100  # minibatch epochs of the nonlinear VAE
RATE = 0.2  # share of entries missing completely at random
warnings.filterwarnings("ignore", message="ArviZ is undergoing")

# %%
import matplotlib.pyplot as plt
import torch

import ppvae
from ppvae import evaluate

torch.manual_seed(0)
ds = ppvae.load_dataset("digits", seed=0)
gen = torch.Generator().manual_seed(1)
train = ppvae.data.remove_at_random(ds.train, RATE, gen)
test = ppvae.data.remove_at_random(ds.test, RATE, gen)
print(f"train {tuple(train.shape)}, {float(torch.isnan(train).double().mean()):.1%} missing")

# %% [markdown]
# ## 1. The masked model
#
# ppvae passes a program with a `mask` argument the data with 0 at the missing entries and a
# boolean mask, True where observed. Every likelihood of ppvae builds its per-feature
# distribution and masks it; this is all the model does differently:

# %%
vae = ppvae.VAE(64, 2, hidden=(32,))
x, mask = ppvae.data.split_missing(train[:3])
params = vae.decoder(torch.randn(3, 2))
per_feature = vae.likelihood.features(params)  # Normal(loc, scale), batch shape (3, 64)
masked = per_feature.mask(mask).to_event(1)  # == vae.likelihood.masked(params, mask)
by_hand = (per_feature.log_prob(x) * mask).sum(-1)  # the observed entries' terms only
print(masked.log_prob(x), by_hand)
assert torch.allclose(masked.log_prob(x), by_hand)

# %% [markdown]
# ## 2. The LinearVAE lands on EM's maximum
#
# The guide has to be able to represent $p(z \mid x_o) = \mathcal N(M_n^{-1} W_o^\top (x_o -
# b_o),\, s^2 M_n^{-1})$ with $M_n = W_o^\top W_o + s^2 I$: its covariance differs from row to
# row and is not diagonal, so the full-rank guide, offset from this exact posterior, is the one
# whose ELBO can be tight; then the ELBO's maximum is the likelihood's. Both log-likelihoods
# below are exact (`exact_log_likelihood` of rows with NaN is their observed marginal).

# %%
em = ppvae.PPCA(8, method="em").fit(train.double())
h = torch.tensor(em.loglik_history_)
assert bool((h.diff() >= -1e-9).all()), "EM never decreases the observed-data likelihood"
lvae = ppvae.LinearVAE(64, 8, guide="fullrank")
history = ppvae.fit(lvae, train, epochs=LINEAR_EPOCHS, batch_size=len(train), seed=0)
r = evaluate.compare_to_ppca(lvae, em, train)
print(
    f"EM: {r['ppca_log_likelihood']:.4f}   LinearVAE: {r['vae_log_likelihood']:.4f} nats/row; "
    f"gap {r['loglik_gap']:.2e}, ELBO gap {r['elbo_gap']:.2e}, "
    f"covariance error {r['covariance_rel_error']:.2%}"
)
assert abs(r["loglik_gap"]) <= 0.02 and r["covariance_rel_error"] <= 0.05

fig, ax = plt.subplots(figsize=(6, 3.2))
ax.plot(history.train_elbo, label="LinearVAE ELBO (1 sample, training)")
ax.axhline(em.score(train.double()), color="k", ls="--", label="EM maximum of log p(x_o)")
ax.set_ylim(em.score(train.double()) - 20, em.score(train.double()) + 5)
ax.set_xlabel("full-batch step")
ax.set_ylabel("nats per row (observed entries)")
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# ## 3. Imputations with their uncertainty
#
# Given $x_o$, the missing entries of a PPCA row are Gaussian: mean $W_m \mu_n + b_m$ and
# covariance $W_m \Sigma_n W_m^\top + s^2 I$ (`PPCA.impute`). For any program,
# `evaluate.impute` estimates $E[x_m \mid x_o] = E_{p(z \mid x_o)} E[x_m \mid z]$ by
# self-normalized importance sampling from the guide, and draws multiple imputations by
# resampling. For the LinearVAE both must agree within the Monte Carlo error:

# %%
rows = test[:40]
imp = evaluate.impute(lvae, rows, num_samples=1000, multiple=3, seed=0)
exact = evaluate.linear._as_ppca(lvae)
ref, var = exact.impute(rows.double()), exact.impute_variance(rows.double())
miss = ~imp.mask
zscores = (imp.mean.double() - ref)[miss] / imp.mean_se.double()[miss]
print(f"z-scores against the exact conditional: RMS {float(zscores.pow(2).mean().sqrt()):.2f}")
assert 0.7 < float(zscores.pow(2).mean().sqrt()) < 1.4
err_linear = float(((imp.mean - ds.test[:40])[miss] ** 2).mean())

# %% [markdown]
# A nonlinear VAE trained on the same holes, and its imputations next to the truth; the
# bottom row is the conditional standard deviation, large where the stroke could go either way.

# %%
vae = ppvae.VAE(64, 8, hidden=(128,))
ppvae.fit(vae, train, epochs=VAE_EPOCHS, batch_size=64, seed=0)
imp_vae = evaluate.impute(vae, rows, num_samples=1000, seed=0)
err_vae = float(((imp_vae.mean - ds.test[:40])[miss] ** 2).mean())
col_mean = torch.nanmean(train, 0)
err_mean = float(((col_mean.expand_as(rows) - ds.test[:40])[miss] ** 2).mean())
print(
    f"imputation MSE on the missing entries: column means {err_mean:.4f}, "
    f"LinearVAE {err_linear:.4f}, VAE {err_vae:.4f}; "
    f"VAE rows with k-hat > 0.7: {imp_vae.khat_share:.0%}"
)

fig, axes = plt.subplots(4, 8, figsize=(8, 4.4))
for j in range(8):
    shown = torch.nan_to_num(rows[j], nan=0.5)
    for i, (img, name) in enumerate(
        [
            (shown, "input (grey: missing)"),
            (imp_vae.mean[j], "VAE imputation"),
            (ds.test[j], "truth"),
            (imp_vae.variance[j].sqrt(), "conditional sd"),
        ]
    ):
        axes[i, j].imshow(img.reshape(8, 8).detach(), cmap="gray")
        axes[i, j].axis("off")
        if j == 0:
            axes[i, j].set_title(name, fontsize=7, loc="left")
plt.show()

# %% [markdown]
# The LinearVAE's agreement with EM and with PPCA's exact conditional is the check: whatever
# ppvae does with holes, it does the exact thing on the model where the exact thing is known.
# The nonlinear VAE's imputations come with their k-hat: where it exceeds 0.7 the guide is a
# poor proposal for that row, and more samples are no remedy: the self-normalized estimate
# then converges so slowly that no practical number of draws makes it reliable (Vehtari et
# al. 2024). What helps is a better proposal: a guide trained longer or from a richer family
# (full-rank, IAF), one fitted to that row alone, or annealing from the guide toward
# $p(z \mid x_o)$ as AIS does.
