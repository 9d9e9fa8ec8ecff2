# ruff: noqa: E402 - the imports follow the warning filters of the first cell
# %% [markdown]
# # The autoencoder family as Pyro programs
#
# An autoencoder has an encoder $f$ that maps $x \in \mathbb R^D$ to a code $z = f(x)$ and a
# decoder $g$ that maps the code back. The classic members differ only in what is added to the
# reconstruction loss, or in what the encoder is shown:
#
# | model | encoder input | objective per example, besides reconstruction | property |
# |---|---|---|---|
# | vanilla (linear) | $x$ | none | spans the PCA subspace |
# | denoising | corrupted $\tilde x$ | none (target is the clean $x$) | undoes corruption |
# | sparse, KL | $x$ | $\beta\sum_j \mathrm{KL}(\rho\,\Vert\,\hat\rho_j)$ | mean activation $\rho$ |
# | sparse, L1 | $x$ | $\lambda_1 \Vert h\Vert_1$ | few active units |
# | contractive | $x$ | $\lambda\,\Vert J_f(x)\Vert_F^2$ | flat encoder |
# | stacked | $h^{(l-1)}$ | greedy layer-wise, then supervised | features for a classifier |
#
# In `ppvae` every member is a Pyro model/guide pair trained by `ppvae.fit`, like the VAE.
# This notebook writes out each objective, checks that Pyro's loss is that objective,
# trains each model on the 8×8 digits and shows, and asserts, its defining property.

# %%
# %matplotlib inline
import os
import warnings

SMALL = os.environ.get("PPVAE_NOTEBOOK_SMALL") == "1"  # the quick run of the test suite
EPOCHS = 20 if SMALL else 40  # minibatch epochs (B = 128, Adam 1e-2) of each nonlinear AE
LINEAR_EPOCHS = (3, 10, 30, 100, 300) if SMALL else (3, 10, 30, 100, 300, 1000)
CAE_LAMBDAS = (0.0, 0.05, 0.5) if SMALL else (0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5)
PRETRAIN_EPOCHS = 10 if SMALL else 50  # per layer of the stacked autoencoder
FINETUNE_EPOCHS = 20 if SMALL else 100  # all labels
SCARCE_EPOCHS = 60 if SMALL else 300  # 50 labels: one minibatch per epoch
SCARCE_SEEDS = 2 if SMALL else 10  # label subsets
N_LABELS = 50

# pyro and ppvae import tqdm.auto, which warns in Jupyter when ipywidgets is absent
warnings.filterwarnings("ignore", message="IProgress not found")
warnings.filterwarnings("ignore", message="ArviZ is undergoing a major refactor")

# %%
import copy
import logging
import math
import time

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pyro
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO
from sklearn.linear_model import LogisticRegression

import ppvae
from ppvae.autoencoders import (
    Autoencoder,
    ContractiveAutoencoder,
    DenoisingAutoencoder,
    SparseAutoencoder,
    StackedAutoencoder,
    bernoulli_kl,
    jacobian_frobenius_sq,
)

torch.set_num_threads(1)  # small matrices: one thread is the fastest
pyro.enable_validation(True)
pyro.set_rng_seed(0)
logging.getLogger("pyro").setLevel(logging.WARNING)
plt.rcParams.update({"figure.dpi": 90, "axes.grid": True, "grid.alpha": 0.3})

data = ppvae.load_dataset("digits", seed=0)
N, D = data.train.shape
SHAPE = data.image_shape
print(data)
print(f"SMALL={SMALL}: {EPOCHS} epochs per autoencoder, pretraining {PRETRAIN_EPOCHS} epochs "
      f"per layer, fine-tuning {FINETUNE_EPOCHS} epochs")


def train(model, epochs=EPOCHS, **kwargs):
    """The setting of every nonlinear autoencoder below: minibatches of 128, Adam 1e-2."""
    kwargs = {"batch_size": 128, "lr": 1e-2, **kwargs}
    ppvae.fit(model, data.train, epochs=epochs, seed=0, progress=False, **kwargs)
    return model


def masked(x, level, seed):
    """x with each pixel set to 0 with probability `level` (seeded)."""
    g = torch.Generator().manual_seed(seed)
    return x * (torch.rand(x.shape, generator=g) >= level)


# %% [markdown]
# ## 1. An autoencoder as a Pyro program
#
# Write $\ell(x, \hat x) = \Vert x - \hat x\Vert^2 + \tfrac D2 \log \pi$, which is
# $-\log \mathcal N(x;\, \hat x,\, \tfrac12 I)$: the squared error plus a constant. Every member
# is the same program:
#
# * **guide**: $z_i = f(\tilde x_i)$ recorded at site `"z"` as a point mass `Delta` (so
#   $\log q = 0$); $\tilde x_i = x_i$ except for the denoising autoencoder;
# * **model**: a flat improper prior on $z$ (`ImproperUniform`, $\log p(z) = 0$, so there is no
#   KL term), the likelihood $x_i \sim \mathcal N(g(z_i), \tfrac12 I)$ at site `"x"`, and each
#   regularizer $\Omega$ as a `pyro.factor` site with log-weight $-\Omega$.
#
# The ELBO is then the log-likelihood minus the penalties. On a minibatch $\mathcal B$ of $B$
# rows the data plate scales the per-example sites by $N/B$, so `Trace_ELBO`'s loss is $N$ times
# the textbook objective
#
# $$J = \frac1B \sum_{i\in\mathcal B}\big[\ell(x_i, g(f(\tilde x_i))) + \Omega_i\big]
#   + \Omega_{\mathcal B},$$
#
# with a per-example penalty $\Omega_i$ (L1, contraction) or a batch-level one
# $\Omega_{\mathcal B}$ (the KL sparsity penalty on batch-mean activations, counted once per
# batch under `poutine.scale(N)`). The trace of the KL-sparse autoencoder shows these sites:

# %%
B = 128
xb = data.train[:B]
torch.manual_seed(0)
probe = SparseAutoencoder(D, 32, penalty="kl", rho=0.05, beta=3.0)
guide_trace = poutine.trace(probe.guide).get_trace(xb, num_data=N)
replayed = poutine.replay(probe.model, trace=guide_trace)  # z from the guide
model_trace = poutine.trace(replayed).get_trace(xb, num_data=N)
rows = []
for prog, tr in (("guide", guide_trace), ("model", model_trace)):
    for name, site in tr.nodes.items():
        if site["type"] == "sample":
            fn = site["fn"]
            log_p = fn.log_prob(site["value"]).detach().sum()
            base = getattr(fn, "base_dist", fn)  # Delta(...).to_event(1) is Independent(Delta)
            rows.append({"program": prog, "site": name, "distribution": type(base).__name__,
                         "observed": site["is_observed"], "scale": float(site["scale"]),
                         "value shape": tuple(site["value"].shape),
                         "sum log p (unscaled)": float(log_p)})
pd.DataFrame(rows)

# %% [markdown]
# `Delta` and `ImproperUniform` contribute $\log q = \log p = 0$; the only terms are the
# likelihood and the factor (Pyro implements a factor as a `Unit` distribution whose log-density
# is the factor's value). Now the identity for five members, on one minibatch of $B = 128$ with
# $N = 1438$: the loss computed by Pyro against $N \cdot J$ computed directly in PyTorch. The
# denoising autoencoder draws its mask from torch's RNG, reseeded identically for both.


# %%
def ell(x, x_hat):
    """-log N(x; x_hat, I/2) per row: squared error + D/2 log(pi)."""
    return (x - x_hat).pow(2).sum(-1) + 0.5 * x.shape[-1] * math.log(math.pi)


torch.manual_seed(0)
programs = {
    "vanilla": Autoencoder(D, 16, hidden=(64,)),
    "denoising (mask 0.3)": DenoisingAutoencoder(D, 16, hidden=(64,), noise_level=0.3),
    "sparse KL (rho 0.05, beta 3)": SparseAutoencoder(D, 32, penalty="kl", rho=0.05, beta=3.0),
    "sparse L1 (l1 0.2)": SparseAutoencoder(D, 32, penalty="l1", l1=0.2),
    "contractive (lam 0.05)": ContractiveAutoencoder(D, 32, lam=0.05),
}


def textbook_objective(name, m, x):
    """J on the minibatch x, written with plain torch operations."""
    if name.startswith("denoising"):
        x_in = x * (torch.rand_like(x) >= m.noise_level)  # the guide's mask, same RNG draw
        return ell(x, m.decoder(m.encoder(x_in))).mean()
    h = m.encoder(x)
    rec = ell(x, m.decoder(h))
    if name.startswith("sparse KL"):
        rho_hat = h.mean(0)
        rho = m.rho
        kl = rho * torch.log(rho / rho_hat) + (1 - rho) * torch.log((1 - rho) / (1 - rho_hat))
        return rec.mean() + m.beta * kl.sum()
    if name.startswith("sparse L1"):
        return (rec + m.l1 * h.abs().sum(-1)).mean()
    if name.startswith("contractive"):
        jac = torch.func.vmap(torch.func.jacrev(m.encoder))(x)  # (B, k, D), by autodiff
        return (rec + m.lam * jac.pow(2).sum((-2, -1))).mean()
    return rec.mean()


rows = {}
with torch.no_grad():
    for name, m in programs.items():
        torch.manual_seed(7)
        loss = Trace_ELBO().loss(m.model, m.guide, xb, num_data=N)
        torch.manual_seed(7)
        J = float(textbook_objective(name, m, xb))
        rows[name] = {"Pyro loss / N": loss / N, "J (direct)": J,
                      "relative difference": abs(loss - N * J) / abs(N * J)}
        assert math.isclose(loss, N * J, rel_tol=1e-5), (name, loss, N * J)
pd.DataFrame(rows).transpose()

# %% [markdown]
# ## 2. Vanilla: the linear autoencoder learns the PCA subspace
#
# $$J_{\text{AE}}(f, g) = \frac1N\sum_{i=1}^N \Vert x_i - g(f(x_i))\Vert^2
#   \quad (+\ \tfrac D2\log\pi),$$
#
# with affine $f(x) = Wx + b$, $W \in \mathbb R^{k\times D}$, and $g(z) = Vz + c$
# (`Autoencoder(D, k)`, `hidden=()`). Baldi and Hornik (1989): at the optimum, the column space
# of $V$ is the span of the top $k$ eigenvectors $U_k$ of the data covariance
# $S = \sum_j \lambda_j u_j u_j^\top$ ($\lambda_1 \ge \lambda_2 \ge \dots$), and the error is
# $E_{\text{PCA}} = \sum_{j>k}\lambda_j$. The axes inside the subspace are not identified.
#
# A trained autoencoder is never exactly at the optimum, but its excess error *certifies* how
# close its subspace is. Let $Q$ be an orthonormal basis of the column space of $V$ and
# $\theta_1, \dots, \theta_k$ the principal angles between $\operatorname{span} Q$ and
# $\operatorname{span} U_k$. Every reconstruction lies in a translate of
# $\operatorname{span} Q$, so $E_{\text{AE}} \ge \operatorname{tr}S - \operatorname{tr}(Q^\top S Q)$
# (orthogonal projection of the centred data is the best such reconstruction), while
# $E_{\text{PCA}} = \operatorname{tr}S - \operatorname{tr}(U_k^\top S U_k)$ and
# $\operatorname{tr}(U_k^\top S U_k) - \operatorname{tr}(Q^\top S Q)
# \ge (\lambda_k - \lambda_{k+1})\sum_i \sin^2\theta_i$. Together:
#
# $$\sin^2\theta_{\max} \;\le\; \sum_{i=1}^k \sin^2\theta_i \;\le\;
#   \frac{E_{\text{AE}} - E_{\text{PCA}}}{\lambda_k - \lambda_{k+1}}.$$
#
# With $k = 4$, full-batch Adam ($3\cdot10^{-2}$): the same initial weights trained for
# increasing numbers of epochs (`fit` is deterministic, so each run is the beginning of the
# longest one).

# %%
K = 4
X64 = data.train.double()
Xc = X64 - X64.mean(0)
lam, U = torch.linalg.eigh(Xc.T @ Xc / N)
lam, U = lam.flip(0), U.flip(1)  # descending
E_pca = float(lam[K:].sum())
gap = float(lam[K - 1] - lam[K])
print(f"E_PCA = {E_pca:.4f}, eigengap lambda_{K} - lambda_{K + 1} = {gap:.4f} (squared units)")

rows = []
for epochs in LINEAR_EPOCHS:
    torch.manual_seed(0)
    linear = Autoencoder(D, K)
    ppvae.fit(linear, data.train, epochs=epochs, batch_size=N, lr=3e-2, seed=0, progress=False)
    E_ae = float((linear.reconstruct(data.train).double() - X64).pow(2).sum(-1).mean().detach())
    Q, _ = torch.linalg.qr(linear.decoder[0].weight.detach().double())
    cosines = torch.linalg.svdvals(U[:, :K].T @ Q).clamp(max=1.0)
    sin2 = 1 - cosines.pow(2)
    excess = E_ae - E_pca
    bound = max(excess, 0.0) / gap
    rows.append({"epochs": epochs, "E_AE": E_ae, "excess": excess,
                 "sum sin^2": float(sin2.sum()), "sin^2 max": float(sin2.max()),
                 "bound": bound,
                 "theta_max (deg)": math.degrees(float(torch.arccos(cosines).max())),
                 "certified (deg)": math.degrees(math.asin(min(1.0, math.sqrt(bound))))})
    assert excess > -1e-6, "no rank-k autoencoder beats PCA"
    assert float(sin2.max()) <= float(sin2.sum()) + 1e-9 <= bound + 1e-7
linear_table = pd.DataFrame(rows).set_index("epochs")
if not SMALL:
    assert linear_table["certified (deg)"].iloc[-1] < 1.0
print(linear_table.to_string(float_format=lambda v: f"{v:.3g}"))

# %%
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8), constrained_layout=True)
j = np.arange(1, 21)
ax1.semilogy(j, lam[:20].numpy(), "o-", ms=4)
ax1.axvspan(0.5, K + 0.5, color="C1", alpha=0.15, label=f"top k = {K}: PCA subspace")
ax1.annotate("", xy=(K + 1, float(lam[K])), xytext=(K + 1, float(lam[K - 1])),
             arrowprops={"arrowstyle": "<->", "color": "C3"})
ax1.text(K + 1.3, float(lam[K]), f"gap {gap:.3f}", color="C3", fontsize=9)
ax1.set_xlabel("eigenvalue index j")
ax1.set_ylabel(r"$\lambda_j$ (squared pixel intensity)")
ax1.set_title("Covariance spectrum of the training digits")
ax1.legend()
ax2.loglog(linear_table.index, linear_table["certified (deg)"], "s--", label="certified bound")
ax2.loglog(linear_table.index, linear_table["theta_max (deg)"], "o-",
           label=r"measured $\theta_{\max}$")
ax2.set_xlabel("full-batch epochs (Adam steps)")
ax2.set_ylabel("largest principal angle (degrees)")
ax2.set_title("Linear AE subspace vs PCA subspace")
ax2.legend()
plt.show()

# %% [markdown]
# The bound uses only the autoencoder's error and the spectrum of $S$; the measured angle sits
# below it at every stage. Only the span is determined: replacing $(W, V)$ by
# $(AW, VA^{-1})$ for any invertible $k\times k$ matrix $A$ leaves the error unchanged, so the
# columns of $V$ need not be eigenvectors.
#
# ## 3. Denoising: reconstruct the clean x from a corrupted one
#
# $$J_{\text{DAE}} = \frac1N\sum_{i=1}^N \mathbb E_{\tilde x \sim C(\tilde x\mid x_i)}
#   \Vert x_i - g(f(\tilde x))\Vert^2,$$
#
# with masking noise $C$: each pixel is set to 0 independently with probability $0.3$. In the
# Pyro program the corruption is part of the guide's input (one draw per step), the target at
# `"x"` stays clean. Same 64–64–16 architecture (ReLU hidden layer, linear code) and budget for
# a vanilla autoencoder and the DAE; then test digits are masked (a fixed draw, 30%) and both
# reconstruct them.

# %%
torch.manual_seed(0)
vanilla = train(Autoencoder(D, 16, hidden=(64,)))
torch.manual_seed(0)
dae = train(DenoisingAutoencoder(D, 16, hidden=(64,), noise="mask", noise_level=0.3))

levels = np.linspace(0.0, 0.6, 7)
curve = pd.DataFrame(
    {name: [m.reconstruction_error(masked(data.test, p, seed=5), data.test) for p in levels]
     for name, m in (("vanilla AE", vanilla), ("denoising AE", dae))}, index=levels)
curve.index.name = "masking probability"
noisy = masked(data.test, 0.3, seed=5)
err_ae, err_dae = curve.loc[0.3, "vanilla AE"], curve.loc[0.3, "denoising AE"]
print(f"30% masked test digits, squared error to the clean digit per image: "
      f"vanilla {err_ae:.3f}, denoising {err_dae:.3f} (ratio {err_dae / err_ae:.2f})")
assert err_dae < err_ae
if not SMALL:
    assert err_dae < 0.8 * err_ae

# %%
show = torch.arange(10) * 7
with torch.no_grad():
    grid = {"clean": data.test[show], "30% masked": noisy[show],
            "vanilla AE": vanilla.reconstruct(noisy[show]),
            "denoising AE": dae.reconstruct(noisy[show])}
fig = plt.figure(figsize=(12, 4.2), constrained_layout=True)
left, right = fig.subfigures(1, 2, width_ratios=[1.5, 1])
axes = left.subplots(4, 10)
for r, (label, imgs) in enumerate(grid.items()):
    for c in range(10):
        ax = axes[r, c]
        ax.imshow(imgs[c].reshape(SHAPE).clamp(0, 1), cmap="gray", vmin=0, vmax=1)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.grid(False)
    axes[r, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=9)
left.suptitle("Test digits (8 x 8 pixels, intensity 0 to 1)", fontsize=10)
ax = right.subplots()
for name in curve:
    ax.plot(curve.index, curve[name], "o-", label=name)
ax.axvline(0.3, color="0.5", ls=":", label="training noise level")
ax.set_xlabel("masking probability of the test digits")
ax.set_ylabel("squared error to the clean digit (per image)")
ax.set_title("Reconstruction of corrupted inputs")
ax.legend()
plt.show()
curve.round(3).transpose()

# %% [markdown]
# The price of denoising: on clean digits (masking probability 0) the DAE reconstructs worse
# than the vanilla AE, because it was trained on inputs with 30% of the pixels missing (masking
# does not rescale the remaining pixels). From 20% masking on it is the better of the two.

# %% [markdown]
# ## 4. Sparse autoencoders
#
# **KL penalty** (sigmoid code $h = \sigma(Wx + b) \in (0, 1)^k$): push each unit's mean
# activation $\hat\rho_j$ toward a small target $\rho$,
#
# $$J_{\text{KL}} = \frac1B\sum_{i\in\mathcal B}\Vert x_i - g(h_i)\Vert^2
#   + \beta \sum_{j=1}^k \mathrm{KL}(\rho\,\Vert\,\hat\rho_j),\qquad
#   \hat\rho_j = \frac1B\sum_{i\in\mathcal B} h_{ij},$$
#
# $\mathrm{KL}(\rho\Vert\hat\rho) = \rho\log\frac{\rho}{\hat\rho}
# + (1-\rho)\log\frac{1-\rho}{1-\hat\rho}$ (`bernoulli_kl`). $\hat\rho_j$ is a minibatch mean,
# so this is a batch-level term. Here $k = 32$, $\rho = 0.05$, $\beta = 3$. The reference is
# the same 64–32 sigmoid autoencoder without a penalty (written as a contractive autoencoder
# with $\lambda = 0$, reused in section 5).

# %%
RHO = 0.05
torch.manual_seed(0)
sae_kl = train(SparseAutoencoder(D, 32, penalty="kl", rho=RHO, beta=3.0))
torch.manual_seed(0)
sigmoid_ae = train(ContractiveAutoencoder(D, 32, lam=0.0))  # no penalty
with torch.no_grad():
    rho_hat = sae_kl.encode(data.train).mean(0)
    rho_hat_plain = sigmoid_ae.encode(data.train).mean(0)
    penalty = float(bernoulli_kl(RHO, rho_hat).sum())
print(f"KL-sparse: mean over units of rho_hat_j = {float(rho_hat.mean()):.4f} (target {RHO}), "
      f"range {float(rho_hat.min()):.3f}-{float(rho_hat.max()):.3f}, "
      f"sum_j KL(rho || rho_hat_j) = {penalty:.4f} nats")
print(f"no penalty: mean over units of rho_hat_j = {float(rho_hat_plain.mean()):.4f}")
assert abs(float(rho_hat.mean()) - RHO) < 0.02

fig, ax = plt.subplots(figsize=(7, 3.5), constrained_layout=True)
bins = np.linspace(0, 1, 41)
ax.hist(rho_hat_plain.numpy(), bins=bins, alpha=0.6, label="sigmoid AE, no penalty")
ax.hist(rho_hat.numpy(), bins=bins, alpha=0.8, label=rf"KL-sparse, $\rho$ = {RHO}, $\beta$ = 3")
ax.axvline(RHO, color="k", ls="--", label=r"target $\rho$")
ax.set_xlabel(r"mean activation of a code unit over the training digits, $\hat\rho_j$")
ax.set_ylabel("number of code units (of 32)")
ax.legend()
plt.show()

# %% [markdown]
# **L1 penalty** (ReLU code $h = \max(0, Wx + b)$, softplus output so that reconstructions are
# non-negative):
#
# $$J_{\text{L1}} = \frac1N\sum_{i=1}^N \big[\Vert x_i - g(h_i)\Vert^2
#   + \lambda_1\Vert h_i\Vert_1\big], \qquad \lambda_1 = 0.2.$$
#
# Against the same 64–32 ReLU code without a penalty: the mean code norm
# $\frac1M\sum_i\Vert h_i\Vert_1$ and the share of active ($h_{ij} > 0$) units on the test
# digits.

# %%
torch.manual_seed(0)
relu_ae = train(Autoencoder(D, 32, code_activation="relu"))
torch.manual_seed(0)
sae_l1 = train(SparseAutoencoder(D, 32, penalty="l1", l1=0.2))
with torch.no_grad():
    codes = {"ReLU AE, no penalty": relu_ae.encode(data.test),
             "L1-sparse, l1 = 0.2": sae_l1.encode(data.test)}
l1_table = pd.DataFrame({
    name: {"mean ||h||_1": float(h.abs().sum(-1).mean()),
           "active share": float((h > 0).float().mean()),
           "active units per image": float((h > 0).float().sum(-1).mean()),
           "units never active": int((h <= 0).all(0).sum()),
           "test squared error": m.reconstruction_error(data.test)}
    for (name, h), m in zip(codes.items(), (relu_ae, sae_l1), strict=True)}).T
(n1, d1), (n2, d2) = l1_table[["mean ||h||_1", "active share"]].values
assert n2 < n1 and d2 < d1
if not SMALL:
    assert n2 < 0.5 * n1 and d2 < 0.75 * d1

fig, ax = plt.subplots(figsize=(7, 3.5), constrained_layout=True)
for name, h in codes.items():
    ax.hist((h > 0).sum(-1).numpy(), bins=np.arange(34) - 0.5, alpha=0.7, label=name)
ax.set_xlabel("active code units in one test image (of 32)")
ax.set_ylabel("number of test images")
ax.legend()
plt.show()
l1_table.round(3)

# %% [markdown]
# The first-layer filters (rows of $W$, one 8×8 tile per code unit, each tile on its own
# symmetric colour scale: red positive, blue negative weights). Both penalties shift the
# weights toward negative values, the KL penalty most (share in the titles): a unit then stays
# near zero unless an image covers its few positive pixels. Neither ReLU code uses all 32
# units: about half never fire on a test digit (the table's "units never active"; the all-blue
# tiles). Those are *dead units*, an artefact of the training setting, not a property of the
# code: a ReLU unit pushed negative on every input gets no gradient and never recovers, and
# Adam's early steps at a learning rate of 1e-2 push many there. The cell below counts them on
# the training digits; with the full-size settings (40 epochs, these seeds): none at
# initialization, 16 of 32 after training at 1e-2, 2 at 1e-3. Among its live units the
# unpenalized ReLU code fires nearly all on every image, so on the digits it acts almost as a
# linear code. The L1 penalty
# makes the live units take turns, at a higher reconstruction error. One caution on the
# table: with an untied decoder $\Vert h\Vert_1$ is not scale-free (halve the code and double
# the decoder's weights, and the reconstruction is unchanged), so its drop is partly
# rescaling; the active share, a count, is scale-free, and it drops too.

# %%
with torch.no_grad():
    at_init = Autoencoder(D, 32, code_activation="relu")
    dead_init = int((at_init.encode(data.train) <= 0).all(0).sum())
    dead_1e2 = int((relu_ae.encode(data.train) <= 0).all(0).sum())
torch.manual_seed(0)
relu_slow = train(Autoencoder(D, 32, code_activation="relu"), lr=1e-3)
with torch.no_grad():
    dead_1e3 = int((relu_slow.encode(data.train) <= 0).all(0).sum())
print(f"ReLU units (of 32) that fire on no training digit: {dead_init} at initialization, "
      f"{dead_1e2} after {EPOCHS} epochs of Adam at 1e-2, {dead_1e3} at 1e-3 "
      f"(test squared error {relu_slow.reconstruction_error(data.test):.3f} vs "
      f"{relu_ae.reconstruction_error(data.test):.3f})")
assert dead_1e3 < dead_1e2, "the dead units come from the large learning rate"


# %%
def filter_tiles(subfig, weights, title, cols=8):
    w = weights.detach()
    axes = subfig.subplots(math.ceil(len(w) / cols), cols)
    for ax, tile in zip(axes.flat, w, strict=True):
        lim = float(tile.abs().max())
        ax.imshow(tile.reshape(SHAPE), cmap="RdBu_r", vmin=-lim, vmax=lim)
        ax.set_axis_off()
    subfig.suptitle(title, fontsize=10)


filter_models = {"sigmoid AE, no penalty": sigmoid_ae, "KL-sparse": sae_kl,
                 "ReLU AE, no penalty": relu_ae, "L1-sparse": sae_l1}
fig = plt.figure(figsize=(12, 6), constrained_layout=True)
for sub, (name, m) in zip(fig.subfigures(2, 2).flat, filter_models.items(), strict=True):
    W = m.first_layer_features()
    negative = float((W < 0).float().mean())
    filter_tiles(sub, W, f"{name}: 32 filters (8 x 8 input weights), {negative:.0%} negative")
plt.show()

# %% [markdown]
# ## 5. Contractive: a flat encoder
#
# $$J_{\text{CAE}} = \frac1N\sum_{i=1}^N \big[\Vert x_i - g(f(x_i))\Vert^2
#   + \lambda\,\Vert J_f(x_i)\Vert_F^2\big], \qquad
#   \Vert J_f(x)\Vert_F^2 = \sum_{j=1}^k \big(h_j(1-h_j)\big)^2 \Vert W_{j\cdot}\Vert^2$$
#
# for one sigmoid layer $h = \sigma(Wx + b)$ (the closed form `jacobian_frobenius_sq` uses; other
# encoders go through `torch.func`). First the closed form against autodiff:

# %%
x_small = data.test[:20]
closed = jacobian_frobenius_sq(sae_kl.encoder, x_small).detach()
autodiff = torch.func.vmap(torch.func.jacrev(sae_kl.encoder))(x_small).pow(2).sum((-2, -1)).detach()
print(f"max relative difference: {float(((closed - autodiff) / autodiff).abs().max()):.2e}")
torch.testing.assert_close(closed, autodiff, rtol=1e-5, atol=1e-8)

# %% [markdown]
# The penalty trades reconstruction for flatness. The same 64–32 sigmoid autoencoder for
# several $\lambda$ ($\lambda = 0$ is the unpenalized one of section 4), measured on the test
# digits: the mean $\Vert J_f(x)\Vert_F$ against the reconstruction error.

# %%
caes = {0.0: sigmoid_ae}
for lam_c in CAE_LAMBDAS:
    if lam_c not in caes:
        torch.manual_seed(0)
        caes[lam_c] = train(ContractiveAutoencoder(D, 32, lam=lam_c))
with torch.no_grad():
    cae_table = pd.DataFrame({
        lam_c: {"mean ||J_f||_F": float(m.contraction(data.test).sqrt().mean()),
                "test squared error": m.reconstruction_error(data.test)}
        for lam_c, m in sorted(caes.items())}).T
cae_table.index.name = "lambda"
(j0, e0), (j1, e1) = cae_table.loc[0.0], cae_table.loc[0.05]
print(f"lambda 0.05 vs 0: Jacobian norm x{j1 / j0:.2f}, reconstruction error x{e1 / e0:.2f}")
assert e1 < 1.3 * e0 and j1 < j0
if not SMALL:
    assert j1 < 0.75 * j0

fig, ax = plt.subplots(figsize=(7, 4), constrained_layout=True)
ax.plot(cae_table["test squared error"], cae_table["mean ||J_f||_F"], "o-")
for lam_c, (jf, err) in cae_table.iterrows():
    ax.annotate(rf"$\lambda$={lam_c:g}", (err, jf), textcoords="offset points", xytext=(6, 4),
                fontsize=9)
ax.set_xlabel("test reconstruction error (squared error per image)")
ax.set_ylabel(r"mean $\Vert J_f(x)\Vert_F$ on test digits (code units per pixel unit)")
ax.set_title("Contractive AE: flatness vs reconstruction")
plt.show()
cae_table.round(4)

# %% [markdown]
# That comparison is not scale-free. The decoder is untied, so shrinking the encoder's weights
# shrinks $\Vert J_f\Vert_F$ *and* the code's spread, and the decoder can scale back up: part
# of the flattening is rescaling. A scale-free version measures the Jacobian in units of each
# code unit's spread over the test digits, $\tilde J = \mathrm{diag}(1/\mathrm{sd}_j)\,J_f(x)$:
# how far an image's code moves per unit of input, relative to how far codes vary between
# digits. Its singular values (mean over test images of the largest and of the median) say
# whether the encoder is flatter in all directions or only rescaled.

# %%
def scale_free_jacobian(m, x):
    """Mean over images of ||diag(1/sd) J_f(x)||_F and of its largest and median singular
    values, sd the per-unit standard deviation of the code over x (units with sd < 1e-3
    dropped)."""
    with torch.no_grad():
        sd = m.encode(x).std(0)
    live = sd > 1e-3
    jac = torch.func.vmap(torch.func.jacrev(m.encoder))(x).detach()[:, live] / sd[live, None]
    sv = torch.linalg.svdvals(jac)  # (N, live units), descending
    return {"code sd (mean)": float(sd.mean()),
            "scale-free ||J||_F": float(jac.pow(2).sum((-2, -1)).sqrt().mean()),
            "largest sv": float(sv[:, 0].mean()), "median sv": float(sv.median(1).values.mean())}


sf_table = pd.DataFrame({lam_c: scale_free_jacobian(m, data.test)
                         for lam_c, m in sorted(caes.items())}).T
sf_table.insert(0, "mean ||J_f||_F", cae_table["mean ||J_f||_F"])
sf_table.index.name = "lambda"
s0, s1 = sf_table.loc[0.0, "scale-free ||J||_F"], sf_table.loc[0.05, "scale-free ||J||_F"]
print(f"lambda 0.05 vs 0: Jacobian norm x{j1 / j0:.2f}, scale-free x{s1 / s0:.2f}")
if not SMALL:
    assert s1 < s0, "flatter even in units of the code's spread"
sf_table.round(3)

# %% [markdown]
# With the full-size settings (40 epochs, these seeds), $\lambda = 0.05$ cut the raw norm to
# 0.61 of the unpenalized one but
# the scale-free norm only to 0.81: about half of the flattening, on a log scale, is the
# code's spread shrinking (mean sd 0.178 to 0.136), the rest is a flatter encoder. At
# $\lambda = 0.5$ the raw norm falls to 0.27 of it, the scale-free one to 0.69, with the median
# singular value down by 2.5x and the largest not at all: the penalty flattens the encoder in
# most input directions and leaves the one it needs most.

# %% [markdown]
# ## 6. Stacked: greedy pretraining, then fine-tuning
#
# Layers $h^{(l)} = \sigma(W_l h^{(l-1)} + b_l)$, $h^{(0)} = x$, widths 128 and 64. Layer $l$
# is pretrained as an autoencoder of the layer below, which stays frozen:
#
# $$\min_{W_l, b_l, V_l, c_l}\ \frac1N\sum_{i=1}^N
#   \big\Vert h^{(l-1)}_i - \big(V_l h^{(l)}_i + c_l\big)\big\Vert^2,$$
#
# (`ppvae.pretrain`: `fit` on `stack.layer_program(l)`, no labels). Fine-tuning then trains all
# layers and a softmax head $(A, a)$ on labels by maximum likelihood (`ppvae.finetune`, the
# Pyro program `y_i ~ Categorical(logits = A h^{(L)}_i + a)`):
#
# $$\min\ -\frac1N\sum_{i=1}^N \log\operatorname{softmax}\big(A h^{(L)}(x_i) + a\big)_{y_i}.$$
#
# Adam $3\cdot10^{-3}$ throughout. Baselines: multinomial logistic regression on the raw pixels
# (scikit-learn), and the same stack fine-tuned from its random initialization.

# %%
t_stack = time.perf_counter()


def accuracy(stack):
    return float((stack.predict(data.test) == data.test_labels).float().mean())


def finetune(stack, rows, epochs, seed=0):
    ppvae.finetune(stack, data.train[rows], data.train_labels[rows], epochs=epochs,
                   batch_size=min(128, len(rows)), lr=3e-3, seed=seed, progress=False)
    return accuracy(stack)


logreg = LogisticRegression(max_iter=5000).fit(data.train.numpy(), data.train_labels.numpy())
acc_logreg = logreg.score(data.test.numpy(), data.test_labels.numpy())

torch.manual_seed(0)
pretrained = StackedAutoencoder(D, hidden=(128, 64))
random_init = copy.deepcopy(pretrained)  # the same initial weights, never pretrained
layer_histories = ppvae.pretrain(pretrained, data.train, epochs=PRETRAIN_EPOCHS, lr=3e-3,
                                 progress=False)
assert all(h.train_elbo[-1] > h.train_elbo[0] for h in layer_histories)  # each layer learned
every_row = torch.arange(N)
acc_pre = finetune(copy.deepcopy(pretrained), every_row, FINETUNE_EPOCHS)
acc_rand = finetune(copy.deepcopy(random_init), every_row, FINETUNE_EPOCHS)
print(f"all {N} labels, test accuracy: logistic regression {acc_logreg:.3f}, "
      f"stack pretrained + fine-tuned {acc_pre:.3f}, stack from random init {acc_rand:.3f}")
if not SMALL:  # the stack beats a linear classifier; this alone says nothing of pretraining
    assert acc_pre > acc_logreg

# %% [markdown]
# With only 50 labels (seeded subsets; the pretrained stack has seen all training images,
# without their labels), each classifier sees the same 50 labelled images:

# %%
scarce = []
for seed in range(SCARCE_SEEDS):
    rows = torch.randperm(N, generator=torch.Generator().manual_seed(100 + seed))[:N_LABELS]
    lr_small = LogisticRegression(max_iter=5000).fit(data.train[rows].numpy(),
                                                     data.train_labels[rows].numpy())
    scarce.append({
        "subset": seed,
        "logistic regression": lr_small.score(data.test.numpy(), data.test_labels.numpy()),
        "stack, random init": finetune(copy.deepcopy(random_init), rows, SCARCE_EPOCHS, seed),
        "stack, pretrained": finetune(copy.deepcopy(pretrained), rows, SCARCE_EPOCHS, seed),
    })
scarce = pd.DataFrame(scarce).set_index("subset")
diff = scarce["stack, pretrained"] - scarce["stack, random init"]
diff_se = diff.std() / math.sqrt(len(diff))
print(f"{N_LABELS} labels: pretrained - random init = {diff.mean():+.3f} "
      f"+- {diff_se:.3f} (mean +- SE over {len(diff)} subsets)")
if not SMALL:  # the stated conclusion: pretraining pays off when labels are scarce
    assert diff.mean() > 2 * diff_se, "the 50-label gain of pretraining exceeds 2 SE"
print(f"stacked autoencoder section: {time.perf_counter() - t_stack:.1f} s")
scarce.round(3)

# %%
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8), constrained_layout=True)
for depth, h in enumerate(layer_histories):
    d_in = pretrained.layers[depth][0].in_features
    sq_err = [-e - 0.5 * d_in * math.log(math.pi) for e in h.train_elbo]  # drop the constant
    ax1.plot(np.arange(1, h.epochs + 1), sq_err,
             label=f"layer {depth + 1}: reconstruct h({depth}), {d_in} values")
ax1.set_yscale("log")
ax1.set_xlabel("pretraining epoch")
ax1.set_ylabel("squared error per image (epoch mean)")
ax1.set_title("Greedy layer-wise pretraining")
ax1.legend()
names = ["logistic regression", "stack, random init", "stack, pretrained"]
full = [acc_logreg, acc_rand, acc_pre]
x = np.arange(3)
ax2.bar(x - 0.2, full, width=0.4, label=f"all {N} labels")
ax2.bar(x + 0.2, scarce[names].mean(), width=0.4, label=f"{N_LABELS} labels (mean)")
for i, name in enumerate(names):
    ax2.plot(np.full(len(scarce), i + 0.2), scarce[name], "k.", ms=5)
ax2.set_xticks(x, names)
ax2.set_ylim(0.6, 1.0)
ax2.set_ylabel("test accuracy (fraction of 359 digits)")
ax2.set_title("Classification; dots: label subsets")
ax2.legend(loc="lower right")
plt.show()

# %% [markdown]
# ## Summary
#
# * Each autoencoder is a Pyro program with a `Delta` guide, a flat prior, a reconstruction
#   likelihood and `pyro.factor` penalties; `Trace_ELBO`'s loss is $N$ times the textbook
#   objective (checked above for five members).
# * Linear AE: its excess error over PCA certifies the angle to the PCA subspace,
#   $\sin^2\theta_{\max} \le (E_{\text{AE}} - E_{\text{PCA}})/(\lambda_k - \lambda_{k+1})$.
# * Denoising AE: trained on masked inputs, it restores masked test digits better than the
#   vanilla AE of the same size.
# * Sparse AE: the KL penalty sets the average activation to $\rho$; the L1 penalty shrinks
#   the code norm and the number of active units.
# * Contractive AE: a small $\lambda$ buys a flatter encoder for little reconstruction error;
#   measured in units of the code's spread (the decoder is untied, so raw norms partly reflect
#   rescaling) the flattening is about half what the raw Jacobian norm suggests; larger
#   $\lambda$ moves along the trade-off curve.
# * Stacked AE: pretrained, then fine-tuned, it beats logistic regression on raw pixels with
#   all labels, as does the same stack fine-tuned from random weights, so with all labels
#   pretraining buys nothing measurable; it pays off when labels are scarce: with 50 labels
#   the pretrained stack's accuracy exceeds the random-init one's by more than two standard
#   errors over 10 label subsets (asserted at full size).
